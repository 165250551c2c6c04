// Package local is the in-process presence.Engine of a single-node server.
// Users' records (devices up, last active time, hide_presence flag) live in
// 64 sharded maps; a change calls the subscribers' functions synchronously,
// in order per user, from the goroutine that made it.
//
// A user's record is kept after they go offline (for last_active_at), about
// 100 bytes per user who was ever online since the process started.
package local

import (
	"context"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"

	"github.com/chatd/chatd/server/internal/drain"
	"github.com/chatd/chatd/server/presence"
)

const shards = 64

type record struct {
	devices    map[string]struct{}
	lastActive time.Time
	hidden     bool
	hiddenSet  bool
	version    uint64
	subs       map[uint64]func(presence.Presence)
}

type shard struct {
	mu    sync.Mutex
	users map[string]*record
}

// Engine is the single-node engine. It is safe for concurrent use.
type Engine struct {
	seed   maphash.Seed
	shards [shards]shard
	nextID atomic.Uint64
	active atomic.Int64 // fan-outs in progress
	closed atomic.Bool
}

var _ presence.Engine = (*Engine)(nil)

// New returns an empty Engine.
func New() *Engine {
	e := &Engine{seed: maphash.MakeSeed()}
	for i := range e.shards {
		e.shards[i].users = make(map[string]*record)
	}
	return e
}

func (e *Engine) shard(userID string) *shard {
	return &e.shards[maphash.String(e.seed, userID)%shards]
}

// get returns the record, creating it; s.mu is held.
func (s *shard) get(userID string) *record {
	r := s.users[userID]
	if r == nil {
		r = &record{}
		s.users[userID] = r
	}
	return r
}

func (r *record) state(userID string) presence.Presence {
	return presence.Presence{
		UserID:       userID,
		Online:       len(r.devices) > 0,
		LastActiveAt: r.lastActive,
		Hidden:       r.hidden,
		Version:      r.version,
	}
}

// publish calls every subscriber of the record; s.mu is held, which keeps
// changes of one user in order.
func (e *Engine) publish(r *record, p presence.Presence) {
	if len(r.subs) == 0 {
		return
	}
	e.active.Add(1)
	defer e.active.Add(-1)
	if e.closed.Load() {
		return
	}
	for _, fn := range r.subs {
		fn(p)
	}
}

// touch moves lastActive to at (truncated to milliseconds, the precision
// of every engine) if later.
func (r *record) touch(at time.Time) {
	at = time.UnixMilli(at.UnixMilli())
	if at.After(r.lastActive) {
		r.lastActive = at
	}
}

// Up implements presence.Engine. Errors: presence.ErrClosed.
func (e *Engine) Up(_ context.Context, userID, deviceID string, at time.Time, hidden bool) (bool, error) {
	if e.closed.Load() {
		return false, presence.ErrClosed
	}
	s := e.shard(userID)
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.get(userID)
	if !r.hiddenSet {
		r.hidden, r.hiddenSet = hidden, true
	}
	if _, ok := r.devices[deviceID]; ok {
		return false, nil
	}
	if r.devices == nil {
		r.devices = make(map[string]struct{}, 1)
	}
	r.devices[deviceID] = struct{}{}
	r.touch(at)
	if len(r.devices) != 1 {
		return false, nil
	}
	r.version = presence.NextVersion(r.version, time.Now())
	if !r.hidden {
		e.publish(r, r.state(userID))
	}
	return true, nil
}

// Down implements presence.Engine. Errors: presence.ErrClosed.
func (e *Engine) Down(_ context.Context, userID, deviceID string, lastActive time.Time) (bool, error) {
	return e.down(userID, deviceID, lastActive)
}

// Remove implements presence.Engine: on a single node it is Down. Errors:
// presence.ErrClosed.
func (e *Engine) Remove(_ context.Context, userID, deviceID string, at time.Time) (bool, error) {
	return e.down(userID, deviceID, at)
}

func (e *Engine) down(userID, deviceID string, lastActive time.Time) (bool, error) {
	if e.closed.Load() {
		return false, presence.ErrClosed
	}
	s := e.shard(userID)
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.users[userID]
	if r == nil {
		return false, nil
	}
	if _, ok := r.devices[deviceID]; !ok {
		return false, nil
	}
	delete(r.devices, deviceID)
	r.touch(lastActive)
	if len(r.devices) != 0 {
		return false, nil
	}
	r.devices = nil
	r.version = presence.NextVersion(r.version, time.Now())
	if !r.hidden {
		e.publish(r, r.state(userID))
	}
	return true, nil
}

// SetHidden implements presence.Engine. Errors: presence.ErrClosed.
func (e *Engine) SetHidden(_ context.Context, userID string, hidden bool) error {
	if e.closed.Load() {
		return presence.ErrClosed
	}
	s := e.shard(userID)
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.get(userID)
	r.hidden, r.hiddenSet = hidden, true
	r.version = presence.NextVersion(r.version, time.Now())
	e.publish(r, r.state(userID))
	return nil
}

// Get implements presence.Engine. Errors: presence.ErrClosed.
func (e *Engine) Get(_ context.Context, userIDs []string) ([]presence.Presence, error) {
	if e.closed.Load() {
		return nil, presence.ErrClosed
	}
	out := make([]presence.Presence, len(userIDs))
	for i, id := range userIDs {
		s := e.shard(id)
		s.mu.Lock()
		if r := s.users[id]; r != nil {
			out[i] = r.state(id)
		} else {
			out[i] = presence.Presence{UserID: id}
		}
		s.mu.Unlock()
	}
	return out, nil
}

// Subscribe implements presence.Engine: fn is called synchronously by the
// goroutine making a change, with the user's shard locked. Errors:
// presence.ErrClosed.
func (e *Engine) Subscribe(_ context.Context, userIDs []string, fn func(presence.Presence)) (func(), error) {
	if e.closed.Load() {
		return nil, presence.ErrClosed
	}
	id := e.nextID.Add(1)
	for _, u := range userIDs {
		s := e.shard(u)
		s.mu.Lock()
		r := s.get(u)
		if r.subs == nil {
			r.subs = make(map[uint64]func(presence.Presence), 1)
		}
		r.subs[id] = fn
		s.mu.Unlock()
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			for _, u := range userIDs {
				s := e.shard(u)
				s.mu.Lock()
				if r := s.users[u]; r != nil {
					delete(r.subs, id)
					if len(r.subs) == 0 {
						r.subs = nil
						if len(r.devices) == 0 && r.lastActive.IsZero() && !r.hiddenSet {
							delete(s.users, u) // nothing worth keeping
						}
					}
				}
				s.mu.Unlock()
			}
		})
	}, nil
}

// Close stops the engine; it waits for fan-outs in progress. Safe to call
// more than once; must not be called from a subscriber's fn.
func (e *Engine) Close() error {
	e.closed.Store(true)
	drain.Wait(&e.active)
	return nil
}
