// Package presence tracks who is online: heartbeats of devices, last seen
// times, and the fan-out of status changes to contacts, across servers.
//
// It has two parts here, and a gRPC edge beside them:
//
//   - Engine is the backing system's half (one implementation per backing
//     system: presence/local in-process for a single node, presence/redis
//     between servers). It keeps, per user, the set of (server, device)
//     pairs that are up, the last active time and the hide_presence flag,
//     publishes a user's status changes to the servers whose clients watch
//     that user, and (redis) notices dead servers and takes their devices
//     down. It never sees heartbeats. Every implementation passes the
//     conformance suite in presence/presencetest.
//   - Tracker is this server's half: one Conn per open Chat stream, the
//     heartbeat deadlines of the devices connected here (one timer per
//     device, reset lazily), the grace period that damps flapping, and
//     retries of failed Engine calls. A heartbeat costs one atomic store.
//   - presence/presencesvc implements chat.v1.PresenceService (Subscribe,
//     GetPresence) on an Engine with the contact and hide_presence rules.
//
// This package owns the Engine interface, the Tracker and the presence
// timing defaults. It must not import generated code (gen/), auth,
// account or any gRPC service package, and no Redis or database driver
// (those belong to the engines: presence/redis), nor gRPC status or
// codes: its errors are *store.Error values (ErrClosed: CodeUnavailable;
// bad ids and configs: CodeInvalid), mapped to statuses at the edge.
//
// The state machine and the cost of one status change are described in
// docs/presence.md.
package presence

import (
	"context"
	"time"

	"github.com/chatd/chatd/server/store"
)

// Defaults of the timing knobs (Centrifugo's: refresh 25 s, expire 60 s).
const (
	// DefaultHeartbeatInterval is how often clients are told to send a
	// Heartbeat frame (Welcome.heartbeat_interval_ms).
	DefaultHeartbeatInterval = 25 * time.Second
	// DefaultGrace is how long a device stays online after its last
	// heartbeat (or other client frame) when nothing else is heard.
	DefaultGrace = 60 * time.Second
)

// Presence is the state of one user as an Engine reports it.
type Presence struct {
	// UserID is the user.
	UserID string
	// Online is true while at least one device of the user is up on any
	// server.
	Online bool
	// LastActiveAt is the last activity the engine recorded: while Online,
	// the latest device connect (or disconnect of another device); once
	// offline, the last heartbeat or frame of the last device to go, or the
	// clean close / logout time. Heartbeats of an online user do not move
	// it (they never leave the server). Millisecond precision; zero if
	// unknown.
	LastActiveAt time.Time
	// Hidden is the user's hide_presence flag: the user must be shown as
	// offline, without LastActiveAt, to everyone.
	Hidden bool
	// Version increases with every change of this user's record that
	// subscribers see (status or Hidden). A consumer that has seen version
	// v ignores reports with Version <= v: they are older. Versions are
	// derived from the clock (microseconds) and stay increasing across a
	// restart of the backing system that loses its data.
	Version uint64
}

// Visible returns the status and last active time that other users may
// see: a hidden user is offline with no last active time.
func (p Presence) Visible() (online bool, lastActiveAt time.Time) {
	if p.Hidden {
		return false, time.Time{}
	}
	return p.Online, p.LastActiveAt
}

// Engine is the backing system of presence. Methods are safe for
// concurrent use; the Tracker calls Up, Down and Remove for one user one
// at a time (never concurrently for the same user).
//
// Errors: ErrClosed after Close; context errors; errors of the backing
// system (wrapped; the Tracker logs and retries them).
type Engine interface {
	// Up records that deviceID of userID is connected to this server,
	// since at. If the user was offline, it becomes online (LastActiveAt =
	// at) and subscribers get the change, unless the user is hidden.
	// hidden is the user's hide_presence flag as the store has it; it is
	// used only if the engine holds no flag for the user (SetHidden is the
	// authority afterwards). Up of a device that is already up on this
	// server changes nothing. changed reports offline -> online.
	Up(ctx context.Context, userID, deviceID string, at time.Time, hidden bool) (changed bool, err error)
	// Down records that deviceID of userID is no longer connected to this
	// server; lastActive is its last heartbeat or activity. If it was the
	// user's last device on any server, the user becomes offline with
	// LastActiveAt = max(recorded, lastActive) and subscribers get the
	// change (unless hidden). Down of a device that is not up changes
	// nothing. changed reports online -> offline.
	Down(ctx context.Context, userID, deviceID string, lastActive time.Time) (changed bool, err error)
	// Remove takes deviceID of userID down on every server at once (log-out
	// or revocation), with last activity at. changed reports online ->
	// offline.
	Remove(ctx context.Context, userID, deviceID string, at time.Time) (changed bool, err error)
	// SetHidden sets the user's hide_presence flag and tells subscribers
	// (a change with the new Hidden and a new Version). Call it after the
	// store's SetPresenceHidden.
	SetHidden(ctx context.Context, userID string, hidden bool) error
	// Get returns the presence of each user, in the order given. A user the
	// engine knows nothing about is offline with zero LastActiveAt and
	// Version.
	Get(ctx context.Context, userIDs []string) ([]Presence, error)
	// Subscribe calls fn with every change of the given users' presence
	// made on any server, from now until cancel is called. It may also call
	// fn with a user's current state (e.g. after the engine reconnected to
	// its backing system): use Version to drop stale reports. fn may be
	// called from several goroutines at once; it must not block and must
	// not call back into the Engine. No fn call starts after cancel
	// returns.
	Subscribe(ctx context.Context, userIDs []string, fn func(Presence)) (cancel func(), err error)
	// Close stops the engine: no fn is called after it returns. Devices
	// still up are left to expire like those of a crashed server (redis:
	// other servers take them down after the lease expires), so that
	// clients reconnecting to another server do not flap.
	Close() error
}

// ErrClosed is returned after Close (code store.CodeUnavailable).
var ErrClosed = store.Errorf(store.CodeUnavailable, "presence: closed")

// NextVersion returns the version that follows prev at time now: the
// larger of prev+1 and now in Unix microseconds. Engines use it so that
// versions keep increasing after their state was lost.
func NextVersion(prev uint64, now time.Time) uint64 {
	v := uint64(now.UnixMicro())
	if v <= prev {
		v = prev + 1
	}
	return v
}
