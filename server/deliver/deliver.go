// Package deliver owns delivery: it turns committed messages into
// per-device deliveries, in inbox order and exactly once per stream.
//
// It has two halves:
//
//   - NewPublisher is the sequencer's publish callback: after a batch is
//     durable it routes one Delivery frame per recipient user (carrying
//     that user's inbox_seq) to the servers holding the user's devices.
//     Routing is a wake-up, at most once; the inbox is the truth.
//   - Stream is the writer side of one device stream. It sends a live
//     Delivery only when its inbox_seq follows the last one sent, drops
//     the ones already sent, fills gaps (a lost routed event) from the
//     inbox up to the horizon, parks deliveries that run ahead of a seq
//     still pending on another server, and answers sync requests page by
//     page so that sync and live deliveries together carry each inbox
//     entry once.
//
// A transport (the native gRPC Chat stream in server/chat, a grpc-web
// stream) gives a Stream a function that writes one frame, an inbox
// reader and the horizon; it feeds it the routed Delivery frames and the
// device's sync requests from its single writer goroutine.
//
// This package must not import google.golang.org/grpc or its status and
// codes packages: its errors are the sentinels below (ErrHorizon, ErrInbox,
// ErrClosed), and the edge maps them to a status. It may use the generated
// protobuf message types of gen/chat/v1 for the frames it builds.
package deliver

import (
	"context"
	"errors"
	"time"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/chatd/chatd/server/store"
)

// SendFunc writes one frame on the device's stream. The Stream calls it
// only from the goroutine that calls the Stream's methods, in the order
// the frames must reach the device; it must not keep f after returning.
// A non-nil error ends the stream: the Stream returns it unchanged and
// keeps no record of f as sent.
type SendFunc func(f *chatv1.ServerFrame) error

// InboxReader reads a user's inbox. store.Messages (and so store.Store)
// implements it.
type InboxReader interface {
	// Inbox returns up to limit deliveries of the user with seq > afterSeq
	// in ascending seq order, and whether more may remain. It returns only
	// entries that are durably written. Entries above the user's horizon
	// may be among them (written, while an earlier seq is still pending).
	Inbox(ctx context.Context, userID string, afterSeq uint64, limit int) (ds []store.Delivery, more bool, err error)
}

// HeadReader reads a user's inbox horizon. *sequence.Sequencer implements
// it (Head).
type HeadReader interface {
	// Head returns the user's horizon: every inbox seq at or below it is
	// written, or a hole that will never be written. It never moves
	// backwards. On a single node it is the last committed seq; in a
	// cluster, seqs above it may still be pending on another server.
	Head(ctx context.Context, userID string) (uint64, error)
}

var (
	// ErrHorizon: reading the horizon failed.
	ErrHorizon = errors.New("deliver: reading the inbox horizon failed")
	// ErrInbox: reading the inbox failed.
	ErrInbox = errors.New("deliver: reading the inbox failed")
	// ErrClosed: the stream's Done channel closed while the Stream was
	// filling a gap from the inbox.
	ErrClosed = errors.New("deliver: stream closed")
)

// Error is the error a Stream returns when a reader fails. errors.Is
// matches both Kind (ErrHorizon or ErrInbox) and the reader's own error;
// Err is that error, for the edge to log or map.
type Error struct {
	Kind error // ErrHorizon or ErrInbox
	Err  error // the reader's error
}

func (e *Error) Error() string { return e.Kind.Error() + ": " + e.Err.Error() }

// Unwrap returns Kind and Err.
func (e *Error) Unwrap() []error { return []error{e.Kind, e.Err} }

// Limits of a Stream.
const (
	// GapPage is the page size used to fill a gap in live delivery from
	// the inbox.
	GapPage = 100
	// MaxParked bounds the live deliveries one stream holds while an
	// earlier inbox seq is still pending (cluster mode); beyond it they
	// are dropped and later read from the inbox.
	MaxParked = 64
	// DefaultRecheckInterval is how often a stream waiting for pending
	// inbox seqs asks for the horizon again (Config.RecheckInterval).
	DefaultRecheckInterval = 50 * time.Millisecond
	// MaxSyncPageBytes bounds the encoded size of one SyncPage so that it
	// fits grpc-go's default 4 MiB client receive limit; a page holds at
	// least one delivery and says more=true when it was cut short.
	MaxSyncPageBytes = 3 << 20
)
