// Package local is the in-process router.Router of a single-node server:
// Route hands each event synchronously to the Handler when the event's user
// is attached, and drops it otherwise.
package local

import (
	"context"
	"hash/maphash"
	"sync"
	"sync/atomic"

	"github.com/chatd/chatd/server/internal/drain"
	"github.com/chatd/chatd/server/router"
	"github.com/chatd/chatd/server/store"
)

const shards = 64

type shard struct {
	mu    sync.RWMutex
	users map[string]struct{}
}

// Router is the single-node router. It is safe for concurrent use; there
// is no global lock (attached users are kept in 64 sharded sets).
type Router struct {
	h      router.Handler
	seed   maphash.Seed
	shards [shards]shard
	active atomic.Int64 // Route calls in progress
	closed atomic.Bool
}

var _ router.Router = (*Router)(nil)

// ErrClosed is returned by Attach and Route after Close (code Unavailable).
var ErrClosed = store.Errorf(store.CodeUnavailable, "router closed")

// New returns a Router that calls h for events of attached users. h must
// not block and must not call back into the Router synchronously.
func New(h router.Handler) *Router {
	r := &Router{h: h, seed: maphash.MakeSeed()}
	for i := range r.shards {
		r.shards[i].users = make(map[string]struct{})
	}
	return r
}

func (r *Router) shard(userID string) *shard {
	return &r.shards[maphash.String(r.seed, userID)%shards]
}

// Attach marks userID as connected here. Reference counting is the
// caller's job (see router.Router): one Attach per user is enough. Returns
// ErrClosed after Close.
func (r *Router) Attach(_ context.Context, userID string) error {
	if r.closed.Load() {
		return ErrClosed
	}
	s := r.shard(userID)
	s.mu.Lock()
	s.users[userID] = struct{}{}
	s.mu.Unlock()
	return nil
}

// Detach marks userID as no longer connected here. Never fails.
func (r *Router) Detach(_ context.Context, userID string) error {
	s := r.shard(userID)
	s.mu.Lock()
	delete(s.users, userID)
	s.mu.Unlock()
	return nil
}

// Attached reports whether userID is attached.
func (r *Router) Attached(userID string) bool {
	s := r.shard(userID)
	s.mu.RLock()
	_, ok := s.users[userID]
	s.mu.RUnlock()
	return ok
}

// Route calls the Handler, synchronously and in order, for every event
// whose user is attached; events of other users are dropped (not an
// error). Returns ErrClosed after Close (and calls nothing).
func (r *Router) Route(_ context.Context, events []router.Event) error {
	r.active.Add(1)
	defer r.active.Add(-1)
	if r.closed.Load() {
		return ErrClosed
	}
	for i := range events {
		if r.Attached(events[i].UserID) {
			r.h(events[i])
		}
	}
	return nil
}

// Close stops routing: once it returns, the Handler is never called again.
// It waits for Route calls in progress. Safe to call more than once; must
// not be called from within the Handler.
func (r *Router) Close() error {
	r.closed.Store(true)
	drain.Wait(&r.active)
	return nil
}
