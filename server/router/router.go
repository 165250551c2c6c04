// Package router moves events between the chat servers that hold devices'
// streams. A server Attaches a user while at least one of the user's devices
// is connected to it; Route hands an event for a user to every server that
// has the user attached (this one included), whose Handler then delivers it
// to the local streams.
//
// Routing is a wake-up, at most once: the durable store is the source of
// truth, and a device that misses a routed event recovers it by sync.
//
// Implementations: router/local (in-process, single node) and router/redis
// (between servers). Both pass the conformance suite in router/routertest.
package router

import (
	"context"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
)

// Event is one frame for every connected device of a user.
type Event struct {
	// UserID is the receiving user.
	UserID string
	// Frame is pushed to the user's devices as is. It must not be modified
	// after Route is called: it may be shared between devices.
	Frame *chatv1.ServerFrame
	// SkipDeviceID, if set, names a device that must not receive the frame
	// (e.g. the device that caused it).
	SkipDeviceID string
	// RevokeDeviceID, if set, makes this a control event without a Frame:
	// the device RevokeDeviceID of UserID was logged out, and every server
	// holding the user closes that device's streams (with Unauthenticated)
	// and treats its tokens as revoked at once. It travels the user's
	// routes like any event, so it reaches exactly the servers where the
	// user has a stream.
	RevokeDeviceID string
}

// Handler receives the events routed to users attached on this server. It
// must not block: it hands the event to bounded per-device queues.
type Handler func(Event)

// Router routes events between servers.
type Router interface {
	// Attach marks userID as having a device on this server. Calls are
	// reference counted by the caller: Attach is called for the first
	// device of a user on this server and Detach for the last.
	Attach(ctx context.Context, userID string) error
	// Detach reverses Attach.
	Detach(ctx context.Context, userID string) error
	// Route delivers events to the servers holding their users, in order
	// per user for events routed from one goroutine.
	Route(ctx context.Context, events []Event) error
	// Close stops the router; no Handler call happens after it returns.
	Close() error
}
