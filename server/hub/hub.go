// Package hub holds this server's connected device sessions (one per open
// Chat stream) and fans routed events out to them.
//
// Sessions are kept in 256 shards keyed by user id, each with its own
// RWMutex: there is no global lock. The first session of a user on this
// server Attaches the user to the router, the last one to go Detaches it.
// The router is built after the hub (its Handler is the hub's Deliver) and
// registered with SetRouter before the first session; Config holds the
// other knobs, zero meaning the default.
//
// Every session has a bounded send queue drained by its stream's writer.
// Deliver (the router.Handler) never blocks: when a session's queue is
// full, that session is closed with ErrOverflow (CodeResourceExhausted,
// "send queue overflow: the device is not reading; reconnect and sync")
// and the others go on; the device recovers what it missed by sync.
//
// Its errors are *store.Error values; it must not import gRPC status or
// codes (the stream's edge, server/chat, maps them).
package hub

import (
	"context"
	"hash/maphash"
	"log/slog"
	"sync"
	"sync/atomic"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/chatd/chatd/server/router"
	"github.com/chatd/chatd/server/store"
)

// DefaultQueueSize is the send queue length of a session, in frames, when
// Register is given 0.
const DefaultQueueSize = 1024

const shardCount = 256

// OverflowMessage is the message of ErrOverflow.
const OverflowMessage = "send queue overflow: the device is not reading; reconnect and sync"

var (
	// ErrOverflow (CodeResourceExhausted) closes a session whose send
	// queue overflowed.
	ErrOverflow = store.Errorf(store.CodeResourceExhausted, OverflowMessage).WithReason(store.ReasonSlowConsumer)
	// ErrTooManyStreams (CodeResourceExhausted) closes the oldest session
	// of a device that opened more than the allowed number of streams. Its
	// Reason, store.ReasonStreamReplaced, tells clients not to reconnect
	// (the client sees it as an ErrorInfo detail of the status).
	ErrTooManyStreams = store.Errorf(store.CodeResourceExhausted, TooManyStreamsMessage).WithReason(store.ReasonStreamReplaced)

	// ErrRevoked (CodeUnauthenticated "device logged out", reason
	// store.ReasonDeviceRevoked) closes the sessions of a device that was
	// logged out (KillDevice, or a revocation event routed here).
	ErrRevoked = store.Errorf(store.CodeUnauthenticated, "device logged out").WithReason(store.ReasonDeviceRevoked)

	errShutdown = store.Errorf(store.CodeUnavailable, "server shutting down, reconnect")
	errAttach   = store.Errorf(store.CodeUnavailable, "cannot attach the session, retry")
	errClosed   = store.Errorf(store.CodeUnavailable, "session closed")
	errEnded    = store.Errorf(store.CodeCanceled, "stream ended")
)

// closeErr holds why a session (or the hub) was closed.
type closeErr struct{ err error }

// Item is one entry of a session's send queue: a frame to send, or an
// operation that the session's writer executes in queue order (opaque to
// the hub; e.g. a sync request of the chat service).
type Item struct {
	Frame *chatv1.ServerFrame
	Op    any
}

// Config configures a Hub. Zero values take the defaults stated on each
// field.
type Config struct {
	// MaxStreamsPerDevice bounds the sessions one device may hold on this
	// server; zero (or negative) means DefaultMaxStreamsPerDevice.
	// Registering one more closes the device's oldest session with
	// ResourceExhausted (see TooManyStreamsMessage): a client that
	// reconnects before the server has noticed its old connection is gone
	// keeps working, and one device token cannot pile up streams (~44 KB
	// each with its connection, docs/performance.md).
	MaxStreamsPerDevice int
	// OnRevoke, if set, is called (from Deliver, so it must not block)
	// for every revocation event (router.Event.RevokeDeviceID) this server
	// receives, after the device's sessions here are closed; app uses it
	// to mark the device revoked in this server's authenticator at once.
	OnRevoke func(userID, deviceID string)
	// OnOverflow, if set, is called (once per session, from the goroutine
	// that found the queue full) when a session is closed for overflow. It
	// must not block.
	OnOverflow func(userID, deviceID string)
	// Logger; zero means slog.Default().
	Logger *slog.Logger
}

// DefaultMaxStreamsPerDevice is the default of Config.MaxStreamsPerDevice.
const DefaultMaxStreamsPerDevice = 4

// TooManyStreamsMessage is the message of ErrTooManyStreams.
const TooManyStreamsMessage = "this device opened a newer stream and has too many: the oldest is closed (a device needs one stream)"

// Hub is the set of this server's sessions. It is safe for concurrent use.
type Hub struct {
	r          router.Router
	seed       maphash.Seed
	shards     [shardCount]shard
	count      atomic.Int64
	overflows  atomic.Uint64
	shutdown   atomic.Pointer[closeErr]
	onOverflow func(userID, deviceID string)
	onRevoke   func(userID, deviceID string)
	log        *slog.Logger
	// maxPerDevice bounds the sessions of one device (Config.MaxStreamsPerDevice).
	maxPerDevice int
}

type shard struct {
	mu    sync.RWMutex
	users map[string]*entry
}

// entry is one user's sessions on this server.
type entry struct {
	sessions []*Session // copy-on-write; read under shard RLock, iterated without

	attachMu sync.Mutex // serialises Attach/Detach of this user
	attached bool       // guarded by attachMu
}

// New returns an empty Hub. Its router is set with SetRouter before the
// first Register: the router takes the hub's Deliver as its Handler, so it
// is built after the hub.
func New(cfg Config) *Hub {
	h := &Hub{seed: maphash.MakeSeed(), log: cfg.Logger, maxPerDevice: cfg.MaxStreamsPerDevice, onOverflow: cfg.OnOverflow, onRevoke: cfg.OnRevoke}
	if h.log == nil {
		h.log = slog.Default()
	}
	if h.maxPerDevice < 1 {
		h.maxPerDevice = DefaultMaxStreamsPerDevice
	}
	for i := range h.shards {
		h.shards[i].users = make(map[string]*entry)
	}
	return h
}

// SetRouter sets the router the hub attaches its users to (the first
// session of a user here Attaches it, the last one to go Detaches it). It
// must be called once, before the first Register; the router's Handler is
// the hub's Deliver:
//
//	h := hub.New(hub.Config{})
//	h.SetRouter(local.New(h.Deliver))
func (h *Hub) SetRouter(r router.Router) {
	if r == nil || h.r != nil {
		panic("hub: SetRouter needs a router and is called once")
	}
	h.r = r
}

func (h *Hub) shard(userID string) *shard {
	return &h.shards[maphash.String(h.seed, userID)%shardCount]
}

// Session is one connected device (one Chat stream).
//
// Its send queue is a ring buffer bounded by the queue size but allocated
// lazily (it grows by doubling and is released when it drains), so an idle
// session costs a few hundred bytes however large its bound.
type Session struct {
	userID, deviceID string
	hub              *Hub
	done             chan struct{}
	closeOnce        sync.Once
	closed           atomic.Pointer[closeErr]
	removed          atomic.Bool

	mu    sync.Mutex
	buf   []Item        // ring; len(buf) is the current capacity
	head  int           // index of the oldest item
	n     int           // items queued
	max   int           // bound
	ready chan struct{} // cap 1: signalled when an item is pushed
	// space (cap 1) is signalled when an item is popped; made by the first
	// Enqueue that finds the queue full (most sessions never do), nil
	// until then. Guarded by mu.
	space chan struct{}
	// onClose runs once when the session closes (see OnClose). Guarded
	// by mu.
	onClose func()
}

// initialQueue is the ring's first allocation, in items.
const initialQueue = 8

// UserID returns the session's user.
func (s *Session) UserID() string { return s.userID }

// DeviceID returns the session's device.
func (s *Session) DeviceID() string { return s.deviceID }

// Ready is signalled (capacity 1) whenever an item is queued; the writer
// then calls Pop until it reports false.
func (s *Session) Ready() <-chan struct{} { return s.ready }

// Pop removes and returns the oldest queued item; false if the queue is
// empty. Only the session's writer calls it.
func (s *Session) Pop() (Item, bool) {
	s.mu.Lock()
	if s.n == 0 {
		if len(s.buf) > 4*initialQueue {
			s.buf, s.head = nil, 0 // release the memory of a burst
		}
		s.mu.Unlock()
		return Item{}, false
	}
	it := s.buf[s.head]
	s.buf[s.head] = Item{}
	s.head = (s.head + 1) % len(s.buf)
	s.n--
	space := s.space
	s.mu.Unlock()
	if space != nil {
		select {
		case space <- struct{}{}:
		default:
		}
	}
	return it, true
}

// Len returns the number of queued items.
func (s *Session) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n
}

// push appends it if there is room. Caller holds s.mu.
func (s *Session) push(it Item) bool {
	if s.n >= s.max {
		return false
	}
	if s.n == len(s.buf) {
		size := min(max(2*len(s.buf), initialQueue), s.max)
		nb := make([]Item, size)
		for i := range s.n {
			nb[i] = s.buf[(s.head+i)%len(s.buf)]
		}
		s.buf, s.head = nb, 0
	}
	s.buf[(s.head+s.n)%len(s.buf)] = it
	s.n++
	return true
}

func (s *Session) signalReady() {
	select {
	case s.ready <- struct{}{}:
	default:
	}
}

// Wake signals Ready without queueing an item, so that a writer waiting
// on Ready looks at state of its own (e.g. its reader ended); Pop then
// reports false if nothing is queued. It never blocks.
func (s *Session) Wake() { s.signalReady() }

// Done is closed when the session is closed.
func (s *Session) Done() <-chan struct{} { return s.done }

// Err returns why the session was closed (the error its stream ends
// with), nil while it is open.
func (s *Session) Err() error {
	if c := s.closed.Load(); c != nil {
		return c.err
	}
	return nil
}

// Close closes the session with err (the error its stream ends with; nil
// means CodeUnavailable "session closed"). The first Close wins; it
// returns whether this call closed the session. It does not remove the
// session from the hub: the stream does that with Unregister when it
// ends.
func (s *Session) Close(err error) bool {
	closed := false
	s.closeOnce.Do(func() {
		if err == nil {
			err = errClosed
		}
		s.closed.Store(&closeErr{err})
		close(s.done)
		closed = true
	})
	if closed {
		s.mu.Lock()
		f := s.onClose
		s.onClose = nil
		s.mu.Unlock()
		if f != nil {
			f()
		}
	}
	return closed
}

// OnClose makes f run once when the session closes, on the goroutine that
// closes it (at once, on this one, if it is closed already). f must not
// block. A later OnClose replaces an f that has not run.
func (s *Session) OnClose(f func()) {
	s.mu.Lock()
	if s.closed.Load() == nil {
		s.onClose = f
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	f()
}

// TryEnqueue adds it to the send queue without blocking. If the queue is
// full the session is closed with ErrOverflow and
// TryEnqueue returns false; it also returns false if the session is
// closed.
func (s *Session) TryEnqueue(it Item) bool {
	select {
	case <-s.done:
		return false
	default:
	}
	s.mu.Lock()
	ok := s.push(it)
	s.mu.Unlock()
	if ok {
		s.signalReady()
		return true
	}
	if s.Close(ErrOverflow) {
		s.hub.overflows.Add(1)
		if s.hub.onOverflow != nil {
			s.hub.onOverflow(s.userID, s.deviceID)
		}
	}
	return false
}

// Enqueue adds it to the send queue, waiting for room while the queue is
// full. It returns the session's Err if the session closes first, or
// ctx's error if ctx ends first.
func (s *Session) Enqueue(ctx context.Context, it Item) error {
	for {
		select {
		case <-s.done:
			return s.Err()
		default:
		}
		s.mu.Lock()
		ok := s.push(it)
		room := s.n < s.max
		if !ok && s.space == nil {
			s.space = make(chan struct{}, 1)
		}
		space := s.space
		s.mu.Unlock()
		if ok {
			s.signalReady()
			if room && space != nil { // pass a wake-up on to another waiter
				select {
				case space <- struct{}{}:
				default:
				}
			}
			return nil
		}
		select {
		case <-space:
		case <-s.done:
			return s.Err()
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Register adds a session for (userID, deviceID) with a send queue of
// queueSize frames (0 = DefaultQueueSize) and, for the user's first
// session here, attaches the user to the router. Errors: the Shutdown
// error once the hub is shut down; CodeUnavailable when the router cannot
// attach. Several sessions of the same device may coexist (each receives
// every event). The caller must call Unregister when the stream ends.
func (h *Hub) Register(ctx context.Context, userID, deviceID string, queueSize int) (*Session, error) {
	if c := h.shutdown.Load(); c != nil {
		return nil, c.err
	}
	if queueSize <= 0 {
		queueSize = DefaultQueueSize
	}
	s := &Session{userID: userID, deviceID: deviceID, hub: h, max: queueSize,
		done: make(chan struct{}), ready: make(chan struct{}, 1)}
	sh := h.shard(userID)
	sh.mu.Lock()
	e := sh.users[userID]
	if e == nil {
		e = &entry{}
		sh.users[userID] = e
	}
	e.sessions = append(e.sessions[:len(e.sessions):len(e.sessions)], s)
	// Past the bound, the device's oldest open session goes (sessions are
	// in registration order, so it is never s: the bound is at least 1).
	var oldest *Session
	open := 0
	for _, o := range e.sessions {
		if o.deviceID == deviceID && o.Err() == nil {
			if open++; oldest == nil {
				oldest = o
			}
		}
	}
	sh.mu.Unlock()
	h.count.Add(1)
	if open > h.maxPerDevice {
		oldest.Close(ErrTooManyStreams)
	}

	if err := h.reconcile(ctx, userID, sh, e); err != nil {
		h.Unregister(s)
		return nil, err
	}
	// A Shutdown racing with this Register must not miss the session.
	if c := h.shutdown.Load(); c != nil {
		s.Close(c.err)
	}
	return s, nil
}

// Unregister removes s from the hub (idempotent) and, when it was the
// user's last session here, detaches the user from the router. It also
// closes s if it is still open.
func (h *Hub) Unregister(s *Session) {
	s.Close(errEnded)
	if !s.removed.CompareAndSwap(false, true) {
		return
	}
	sh := h.shard(s.userID)
	sh.mu.Lock()
	e := sh.users[s.userID]
	if e != nil {
		ns := make([]*Session, 0, len(e.sessions))
		for _, o := range e.sessions {
			if o != s {
				ns = append(ns, o)
			}
		}
		e.sessions = ns
	}
	sh.mu.Unlock()
	h.count.Add(-1)
	if e != nil {
		// Detach uses a fresh context: the stream's may be cancelled.
		_ = h.reconcile(context.Background(), s.userID, sh, e)
	}
}

// reconcile brings the router's attachment of userID in line with whether
// e has sessions, serialised per user, and drops e from the shard once it
// is empty and detached.
func (h *Hub) reconcile(ctx context.Context, userID string, sh *shard, e *entry) error {
	e.attachMu.Lock()
	defer e.attachMu.Unlock()
	sh.mu.RLock()
	want := len(e.sessions) > 0
	sh.mu.RUnlock()
	if h.r == nil {
		panic("hub: Register before SetRouter (a wiring bug)")
	}
	var err error
	switch {
	case want && !e.attached:
		if err = h.r.Attach(ctx, userID); err != nil {
			h.log.Warn("hub: router attach failed", "user_id", userID, "err", err)
			err = errAttach
		} else {
			e.attached = true
		}
	case !want && e.attached:
		if derr := h.r.Detach(ctx, userID); derr != nil {
			// The router still routes the user here: harmless (Deliver
			// finds no session), and cleaned up by the next Attach/Detach.
			h.log.Warn("hub: router detach failed", "user_id", userID, "err", derr)
		}
		e.attached = false
	}
	if !e.attached {
		sh.mu.Lock()
		if len(e.sessions) == 0 && sh.users[userID] == e {
			delete(sh.users, userID)
		}
		sh.mu.Unlock()
	}
	return err
}

func (h *Hub) sessionsOf(userID string) []*Session {
	sh := h.shard(userID)
	sh.mu.RLock()
	var ss []*Session
	if e := sh.users[userID]; e != nil {
		ss = e.sessions
	}
	sh.mu.RUnlock()
	return ss
}

// Deliver is the router.Handler: it enqueues ev.Frame, without blocking,
// on every open session of ev.UserID except those of device
// ev.SkipDeviceID. A session whose queue is full is closed with
// ResourceExhausted; the others are unaffected. A revocation event
// (ev.RevokeDeviceID) closes that device's sessions with ErrRevoked and
// calls Config.OnRevoke.
func (h *Hub) Deliver(ev router.Event) {
	if ev.RevokeDeviceID != "" {
		h.KillDevice(ev.UserID, ev.RevokeDeviceID, ErrRevoked)
		if h.onRevoke != nil {
			h.onRevoke(ev.UserID, ev.RevokeDeviceID)
		}
		return
	}
	for _, s := range h.sessionsOf(ev.UserID) {
		if ev.SkipDeviceID != "" && s.deviceID == ev.SkipDeviceID {
			continue
		}
		s.TryEnqueue(Item{Frame: ev.Frame})
	}
}

// KillDevice closes every session of (userID, deviceID) with err (e.g.
// CodeUnauthenticated "device logged out") and returns how many it closed.
func (h *Hub) KillDevice(userID, deviceID string, err error) int {
	n := 0
	for _, s := range h.sessionsOf(userID) {
		if s.deviceID == deviceID && s.Close(err) {
			n++
		}
	}
	return n
}

// KillUser closes every session of userID with err and returns how many it
// closed.
func (h *Hub) KillUser(userID string, err error) int {
	n := 0
	for _, s := range h.sessionsOf(userID) {
		if s.Close(err) {
			n++
		}
	}
	return n
}

// Shutdown closes every session with err (nil means CodeUnavailable
// "server shutting down, reconnect") and makes later Register calls fail
// with it. Safe to call more than once (the first error stays).
func (h *Hub) Shutdown(err error) {
	if err == nil {
		err = errShutdown
	}
	h.shutdown.CompareAndSwap(nil, &closeErr{err})
	err = h.shutdown.Load().err
	for i := range h.shards {
		sh := &h.shards[i]
		sh.mu.RLock()
		var all []*Session
		for _, e := range sh.users {
			all = append(all, e.sessions...)
		}
		sh.mu.RUnlock()
		for _, s := range all {
			s.Close(err)
		}
	}
}

// Sessions returns every registered session, in no particular order (a
// drain walks them to move their devices off).
func (h *Hub) Sessions() []*Session {
	var all []*Session
	for i := range h.shards {
		sh := &h.shards[i]
		sh.mu.RLock()
		for _, e := range sh.users {
			all = append(all, e.sessions...)
		}
		sh.mu.RUnlock()
	}
	return all
}

// Count returns the number of registered sessions (connected devices).
func (h *Hub) Count() int { return int(h.count.Load()) }

// Overflows returns how many sessions were closed for queue overflow.
func (h *Hub) Overflows() uint64 { return h.overflows.Load() }

// Users returns the users with at least one session here, in no
// particular order.
func (h *Hub) Users() []string {
	var out []string
	for i := range h.shards {
		sh := &h.shards[i]
		sh.mu.RLock()
		for u, e := range sh.users {
			if len(e.sessions) > 0 {
				out = append(out, u)
			}
		}
		sh.mu.RUnlock()
	}
	return out
}

// Devices returns the device ids of userID's sessions here (a device with
// two streams appears twice).
func (h *Hub) Devices(userID string) []string {
	ss := h.sessionsOf(userID)
	out := make([]string, 0, len(ss))
	for _, s := range ss {
		out = append(out, s.deviceID)
	}
	return out
}

// HasStream reports whether userID has at least one open session here:
// one read-locked map lookup, no allocation (the push dispatcher asks it
// for every recipient of every committed message).
func (h *Hub) HasStream(userID string) bool {
	sh := h.shard(userID)
	sh.mu.RLock()
	e := sh.users[userID]
	ok := e != nil && len(e.sessions) > 0
	sh.mu.RUnlock()
	return ok
}
