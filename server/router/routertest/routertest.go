// Package routertest is the conformance suite of router.Router
// implementations.
//
// A Factory builds n routers ("nodes") that share one backend, router i
// calling handlers[i]. RunSingle needs n = 1 only (every implementation,
// router/local included, must pass it); RunMulti needs n = 3 (routers that
// move events between servers, e.g. router/redis). Run runs both.
//
// Routing is asynchronous in distributed implementations, so the suite
// waits (up to 10 s) for expected events; absence is checked after a later
// marker event has arrived on the same node plus a short settle time.
package routertest

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/chatd/chatd/server/router"
)

// Factory returns n routers sharing one backend; router i must call
// handlers[i] for the events routed to users attached on it. The suite
// closes every router it gets (once); the factory cleans up the backend
// (t.Cleanup).
type Factory func(t *testing.T, n int, handlers []router.Handler) []router.Router

// waitTimeout bounds every wait for an expected event.
const waitTimeout = 10 * time.Second

// settle is how long the suite keeps watching for an event that must not
// arrive, after a marker routed later has arrived.
const settle = 50 * time.Millisecond

// Run runs RunSingle and RunMulti.
func Run(t *testing.T, newNodes Factory) {
	t.Run("Single", func(t *testing.T) { RunSingle(t, newNodes) })
	t.Run("Multi", func(t *testing.T) { RunMulti(t, newNodes) })
}

// RunSingle runs the cases that need one node.
func RunSingle(t *testing.T, newNodes Factory) {
	t.Run("DeliveredOnce", func(t *testing.T) { testDeliveredOnce(t, newNodes) })
	t.Run("NotDeliveredAfterDetach", func(t *testing.T) { testNotAfterDetach(t, newNodes) })
	t.Run("OrderPerUser", func(t *testing.T) { testOrder(t, newNodes) })
	t.Run("ManyUsersConcurrently", func(t *testing.T) { testManyUsers(t, newNodes) })
	t.Run("UnattachedIsNoop", func(t *testing.T) { testUnattached(t, newNodes) })
	t.Run("CloseStopsHandler", func(t *testing.T) { testClose(t, newNodes, 1) })
}

// RunMulti runs the cases that need three nodes sharing a backend.
func RunMulti(t *testing.T, newNodes Factory) {
	t.Run("OnlyHoldingNode", func(t *testing.T) { testOnlyHoldingNode(t, newNodes) })
	t.Run("AttachedOnTwoNodes", func(t *testing.T) { testTwoNodes(t, newNodes) })
	t.Run("OrderAcrossNodes", func(t *testing.T) { testOrderAcrossNodes(t, newNodes) })
	t.Run("DetachOnOneNode", func(t *testing.T) { testDetachOnOneNode(t, newNodes) })
	t.Run("CloseStopsHandler", func(t *testing.T) { testClose(t, newNodes, 3) })
}

// sink records the events one node's handler received.
type sink struct {
	mu     sync.Mutex
	events map[string][]router.Event
	total  int
	closed atomic.Bool  // set by the suite right after Close returned
	late   atomic.Int64 // handler calls seen with closed set
}

func (s *sink) handle(ev router.Event) {
	if s.closed.Load() {
		s.late.Add(1)
	}
	s.mu.Lock()
	s.events[ev.UserID] = append(s.events[ev.UserID], ev)
	s.total++
	s.mu.Unlock()
}

// ids returns the frame ids received for user.
func (s *sink) ids(user string) []uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]uint64, 0, len(s.events[user]))
	for _, ev := range s.events[user] {
		out = append(out, ev.Frame.GetFrameId())
	}
	return out
}

func (s *sink) count(user string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.events[user])
}

type cluster struct {
	t       *testing.T
	routers []router.Router
	sinks   []*sink
	closed  []atomic.Bool
}

func start(t *testing.T, newNodes Factory, n int) *cluster {
	t.Helper()
	c := &cluster{t: t, sinks: make([]*sink, n), closed: make([]atomic.Bool, n)}
	hs := make([]router.Handler, n)
	for i := range n {
		s := &sink{events: make(map[string][]router.Event)}
		c.sinks[i] = s
		hs[i] = s.handle
	}
	c.routers = newNodes(t, n, hs)
	if len(c.routers) != n {
		t.Fatalf("factory returned %d routers, want %d", len(c.routers), n)
	}
	t.Cleanup(func() {
		for i := range c.routers {
			c.close(i)
		}
	})
	return c
}

func (c *cluster) close(i int) {
	if c.closed[i].CompareAndSwap(false, true) {
		if err := c.routers[i].Close(); err != nil {
			c.t.Errorf("Close node %d: %v", i, err)
		}
	}
}

func (c *cluster) attach(node int, user string) {
	c.t.Helper()
	if err := c.routers[node].Attach(context.Background(), user); err != nil {
		c.t.Fatalf("Attach(%s) on node %d: %v", user, node, err)
	}
}

func (c *cluster) detach(node int, user string) {
	c.t.Helper()
	if err := c.routers[node].Detach(context.Background(), user); err != nil {
		c.t.Fatalf("Detach(%s) on node %d: %v", user, node, err)
	}
}

func ev(user string, id uint64) router.Event {
	return router.Event{UserID: user, Frame: &chatv1.ServerFrame{FrameId: id}}
}

func (c *cluster) route(node int, events ...router.Event) {
	c.t.Helper()
	if err := c.routers[node].Route(context.Background(), events); err != nil {
		c.t.Fatalf("Route on node %d: %v", node, err)
	}
}

// waitCount waits until node has received at least n events for user.
func (c *cluster) waitCount(node int, user string, n int) {
	c.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for c.sinks[node].count(user) < n {
		if time.Now().After(deadline) {
			c.t.Fatalf("node %d: user %s got %d events, want %d (after %v)", node, user, c.sinks[node].count(user), n, waitTimeout)
		}
		time.Sleep(time.Millisecond)
	}
}

func seqIDs(from, to uint64) []uint64 {
	var out []uint64
	for i := from; i <= to; i++ {
		out = append(out, i)
	}
	return out
}

func (c *cluster) expect(node int, user string, want []uint64) {
	c.t.Helper()
	if got := c.sinks[node].ids(user); !slices.Equal(got, want) {
		c.t.Fatalf("node %d: user %s received frame ids %v, want %v", node, user, got, want)
	}
}

func testDeliveredOnce(t *testing.T, newNodes Factory) {
	c := start(t, newNodes, 1)
	c.attach(0, "alice")
	e := ev("alice", 1)
	e.SkipDeviceID = "phone"
	c.route(0, e)
	c.waitCount(0, "alice", 1)
	c.route(0, ev("alice", 2)) // marker: a duplicate of 1 would arrive before it
	c.waitCount(0, "alice", 2)
	time.Sleep(settle)
	c.expect(0, "alice", []uint64{1, 2})
	got := c.sinks[0].events["alice"][0]
	if got.UserID != "alice" || got.SkipDeviceID != "phone" || got.Frame.GetFrameId() != 1 {
		t.Fatalf("event fields not preserved: %+v", got)
	}
}

func testNotAfterDetach(t *testing.T, newNodes Factory) {
	c := start(t, newNodes, 1)
	c.attach(0, "alice")
	c.attach(0, "marker")
	c.route(0, ev("alice", 1))
	c.waitCount(0, "alice", 1)
	c.detach(0, "alice")
	c.route(0, ev("alice", 2))
	c.route(0, ev("marker", 1))
	c.waitCount(0, "marker", 1)
	time.Sleep(settle)
	c.expect(0, "alice", []uint64{1})
	// Attaching again resumes delivery.
	c.attach(0, "alice")
	c.route(0, ev("alice", 3))
	c.waitCount(0, "alice", 2)
	c.expect(0, "alice", []uint64{1, 3})
}

func testOrder(t *testing.T, newNodes Factory) {
	c := start(t, newNodes, 1)
	c.attach(0, "alice")
	// 500 single-event Route calls, then 500 events in batches of 50.
	for i := uint64(1); i <= 500; i++ {
		c.route(0, ev("alice", i))
	}
	for i := uint64(501); i <= 1000; i += 50 {
		batch := make([]router.Event, 0, 50)
		for j := i; j < i+50; j++ {
			batch = append(batch, ev("alice", j))
		}
		c.route(0, batch...)
	}
	c.waitCount(0, "alice", 1000)
	c.expect(0, "alice", seqIDs(1, 1000))
}

func testManyUsers(t *testing.T, newNodes Factory) {
	c := start(t, newNodes, 1)
	const users, per = 50, 200
	for u := range users {
		c.attach(0, fmt.Sprint("user", u))
	}
	var wg sync.WaitGroup
	for u := range users {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := fmt.Sprint("user", u)
			for i := uint64(1); i <= per; i++ {
				if err := c.routers[0].Route(context.Background(), []router.Event{ev(name, i)}); err != nil {
					t.Errorf("Route: %v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	for u := range users {
		name := fmt.Sprint("user", u)
		c.waitCount(0, name, per)
		c.expect(0, name, seqIDs(1, per))
	}
}

func testUnattached(t *testing.T, newNodes Factory) {
	c := start(t, newNodes, 1)
	c.attach(0, "marker")
	if err := c.routers[0].Route(context.Background(), []router.Event{ev("nobody", 1), ev("marker", 1)}); err != nil {
		t.Fatalf("Route to an unattached user: %v, want nil", err)
	}
	c.waitCount(0, "marker", 1)
	time.Sleep(settle)
	if n := c.sinks[0].count("nobody"); n != 0 {
		t.Fatalf("unattached user received %d events", n)
	}
	// Detach of a user never attached is harmless too.
	if err := c.routers[0].Detach(context.Background(), "never"); err != nil {
		t.Fatalf("Detach of an unattached user: %v", err)
	}
}

// testClose: once Close returns, the closed node's handler is never called,
// even while events for its users keep being routed (on it, and on the
// other nodes when n > 1).
func testClose(t *testing.T, newNodes Factory, n int) {
	c := start(t, newNodes, n)
	target := n - 1 // the node that closes
	s := c.sinks[target]
	c.attach(target, "alice")
	c.route(0, ev("alice", 1))
	c.waitCount(target, "alice", 1)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	for node := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := uint64(2); ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				// Errors after Close are allowed on the closed node.
				_ = c.routers[node].Route(context.Background(), []router.Event{ev("alice", i)})
				if i%64 == 0 {
					time.Sleep(100 * time.Microsecond)
				}
			}
		}()
	}
	time.Sleep(5 * time.Millisecond)
	c.close(target)
	s.closed.Store(true) // any handler call from now on is a violation
	time.Sleep(settle)
	close(stop)
	wg.Wait()
	if late := s.late.Load(); late != 0 {
		t.Fatalf("handler called %d times after Close returned", late)
	}
}

func testOnlyHoldingNode(t *testing.T, newNodes Factory) {
	c := start(t, newNodes, 3)
	c.attach(2, "alice")
	for node := range 3 {
		c.attach(node, "marker")
	}
	c.route(0, ev("alice", 1))
	c.waitCount(2, "alice", 1)
	c.route(0, ev("marker", 1))
	for node := range 3 {
		c.waitCount(node, "marker", 1)
	}
	time.Sleep(settle)
	c.expect(2, "alice", []uint64{1})
	c.expect(0, "alice", nil)
	c.expect(1, "alice", nil)
}

func testTwoNodes(t *testing.T, newNodes Factory) {
	c := start(t, newNodes, 3)
	c.attach(1, "alice")
	c.attach(2, "alice")
	c.attach(0, "marker")
	c.route(0, ev("alice", 1), ev("alice", 2))
	c.waitCount(1, "alice", 2)
	c.waitCount(2, "alice", 2)
	c.route(1, ev("alice", 3), ev("marker", 1))
	c.waitCount(1, "alice", 3)
	c.waitCount(2, "alice", 3)
	c.waitCount(0, "marker", 1)
	time.Sleep(settle)
	c.expect(1, "alice", []uint64{1, 2, 3})
	c.expect(2, "alice", []uint64{1, 2, 3})
	c.expect(0, "alice", nil)
}

func testOrderAcrossNodes(t *testing.T, newNodes Factory) {
	c := start(t, newNodes, 3)
	c.attach(1, "alice")
	c.attach(2, "bob")
	for i := uint64(1); i <= 1000; i++ {
		c.route(0, ev("alice", i), ev("bob", i))
	}
	c.waitCount(1, "alice", 1000)
	c.waitCount(2, "bob", 1000)
	c.expect(1, "alice", seqIDs(1, 1000))
	c.expect(2, "bob", seqIDs(1, 1000))
}

func testDetachOnOneNode(t *testing.T, newNodes Factory) {
	c := start(t, newNodes, 3)
	c.attach(1, "alice")
	c.attach(2, "alice")
	c.attach(2, "marker")
	c.route(0, ev("alice", 1))
	c.waitCount(1, "alice", 1)
	c.waitCount(2, "alice", 1)
	c.detach(2, "alice")
	c.route(0, ev("alice", 2), ev("marker", 1))
	c.waitCount(1, "alice", 2)
	c.waitCount(2, "marker", 1)
	time.Sleep(settle)
	c.expect(1, "alice", []uint64{1, 2})
	c.expect(2, "alice", []uint64{1})
}
