package hub_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/chatd/chatd/server/hub"
	"github.com/chatd/chatd/server/router"
	"github.com/chatd/chatd/server/router/local"
	"github.com/chatd/chatd/server/store"
)

func newHub(t *testing.T, cfg hub.Config) (*hub.Hub, *local.Router) {
	t.Helper()
	h := hub.New(cfg)
	r := local.New(h.Deliver)
	h.SetRouter(r)
	t.Cleanup(func() { r.Close() })
	return h, r
}

func register(t *testing.T, h *hub.Hub, user, device string, q int) *hub.Session {
	t.Helper()
	s, err := h.Register(context.Background(), user, device, q)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func frame(id uint64) *chatv1.ServerFrame { return &chatv1.ServerFrame{FrameId: id} }

func drain(s *hub.Session) []uint64 {
	var out []uint64
	for {
		it, ok := s.Pop()
		if !ok {
			return out
		}
		out = append(out, it.Frame.GetFrameId())
	}
}

func route(t *testing.T, r router.Router, evs ...router.Event) {
	t.Helper()
	if err := r.Route(context.Background(), evs); err != nil {
		t.Fatal(err)
	}
}

func TestDeliverSkipAndAttach(t *testing.T) {
	h, r := newHub(t, hub.Config{})
	if r.Attached("alice") {
		t.Fatal("attached before any session")
	}
	phone := register(t, h, "alice", "phone", 0)
	laptop := register(t, h, "alice", "laptop", 0)
	bob := register(t, h, "bob", "b1", 0)
	if !r.Attached("alice") || !r.Attached("bob") || h.Count() != 3 {
		t.Fatalf("attached alice=%v bob=%v count=%d", r.Attached("alice"), r.Attached("bob"), h.Count())
	}
	users := h.Users()
	slices.Sort(users)
	if !slices.Equal(users, []string{"alice", "bob"}) {
		t.Fatalf("users %v", users)
	}
	route(t, r, router.Event{UserID: "alice", Frame: frame(1)}, router.Event{UserID: "alice", Frame: frame(2), SkipDeviceID: "phone"})
	if got := drain(phone); !slices.Equal(got, []uint64{1}) {
		t.Fatalf("phone got %v", got)
	}
	if got := drain(laptop); !slices.Equal(got, []uint64{1, 2}) {
		t.Fatalf("laptop got %v", got)
	}
	if got := drain(bob); len(got) != 0 {
		t.Fatalf("bob got %v", got)
	}
	h.Unregister(phone)
	if !r.Attached("alice") {
		t.Fatal("detached while laptop is connected")
	}
	h.Unregister(laptop)
	h.Unregister(laptop) // idempotent
	if r.Attached("alice") || h.Count() != 1 {
		t.Fatalf("after last session: attached=%v count=%d", r.Attached("alice"), h.Count())
	}
	select {
	case <-phone.Done():
	default:
		t.Fatal("unregistered session still open")
	}
}

// TestOverflowClosesOnlySlowSession: a full queue closes that session with
// ResourceExhausted; Deliver never blocks and the other sessions get
// everything.
func TestOverflowClosesOnlySlowSession(t *testing.T) {
	var overflowed []string
	var mu sync.Mutex
	h, r := newHub(t, hub.Config{OnOverflow: func(u, d string) {
		mu.Lock()
		overflowed = append(overflowed, u+"/"+d)
		mu.Unlock()
	}})
	slow := register(t, h, "alice", "slow", 4)
	fast := register(t, h, "alice", "fast", 4)
	var got []uint64
	for i := uint64(1); i <= 100; i++ {
		route(t, r, router.Event{UserID: "alice", Frame: frame(i)}) // never blocks
		got = append(got, drain(fast)...)
	}
	if len(got) != 100 {
		t.Fatalf("fast session got %d frames", len(got))
	}
	select {
	case <-slow.Done():
	default:
		t.Fatal("slow session not closed")
	}
	st := slow.Err()
	if store.ErrorCode(st) != store.CodeResourceExhausted || st.Error() != hub.OverflowMessage || !errors.Is(st, hub.ErrOverflow) {
		t.Fatalf("slow session error %v", st)
	}
	if fast.Err() != nil {
		t.Fatalf("fast session closed: %v", fast.Err())
	}
	if h.Overflows() != 1 || len(overflowed) != 1 || overflowed[0] != "alice/slow" {
		t.Fatalf("overflows %d hook %v", h.Overflows(), overflowed)
	}
	// The closed session's stream unregisters it; alice stays attached.
	h.Unregister(slow)
	if !r.Attached("alice") {
		t.Fatal("alice detached")
	}
	// Enqueue on a closed session reports its error.
	if err := slow.Enqueue(context.Background(), hub.Item{Frame: frame(1)}); store.ErrorCode(err) != store.CodeResourceExhausted {
		t.Fatalf("Enqueue on closed session: %v", err)
	}
}

func TestKillDeviceAndShutdown(t *testing.T) {
	h, _ := newHub(t, hub.Config{})
	a1 := register(t, h, "alice", "d1", 0)
	a2 := register(t, h, "alice", "d2", 0)
	b1 := register(t, h, "bob", "d1", 0)
	if n := h.KillDevice("alice", "d1", store.Errorf(store.CodeUnauthenticated, "device logged out")); n != 1 {
		t.Fatalf("KillDevice closed %d", n)
	}
	if store.ErrorCode(a1.Err()) != store.CodeUnauthenticated || a2.Err() != nil || b1.Err() != nil {
		t.Fatalf("after KillDevice: %v %v %v", a1.Err(), a2.Err(), b1.Err())
	}
	h.Shutdown(store.Errorf(store.CodeUnavailable, "server shutting down, reconnect"))
	for _, s := range []*hub.Session{a2, b1} {
		if st := s.Err(); store.ErrorCode(st) != store.CodeUnavailable {
			t.Fatalf("after Shutdown: %v", st)
		}
	}
	if _, err := h.Register(context.Background(), "carol", "d1", 0); store.ErrorCode(err) != store.CodeUnavailable {
		t.Fatalf("Register after Shutdown: %v", err)
	}
}

// TestConcurrentRefcount: concurrent connects and disconnects of the same
// users leave the router attachment equal to "has a session".
func TestConcurrentRefcount(t *testing.T) {
	h, r := newHub(t, hub.Config{})
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 300 {
				user := fmt.Sprint("u", (g+i)%4)
				s, err := h.Register(context.Background(), user, fmt.Sprint("d", g), 0)
				if err != nil {
					t.Error(err)
					return
				}
				h.Deliver(router.Event{UserID: user, Frame: frame(uint64(i))})
				h.Unregister(s)
			}
		}()
	}
	// A few long-lived sessions.
	keep := register(t, h, "u1", "keeper", 0)
	wg.Wait()
	for u := range 4 {
		user := fmt.Sprint("u", u)
		if want := user == "u1"; r.Attached(user) != want {
			t.Fatalf("%s attached=%v want %v", user, r.Attached(user), want)
		}
	}
	if h.Count() != 1 {
		t.Fatalf("count %d", h.Count())
	}
	h.Unregister(keep)
	if r.Attached("u1") || len(h.Users()) != 0 {
		t.Fatalf("after all gone: attached=%v users=%v", r.Attached("u1"), h.Users())
	}
}

func BenchmarkDeliver(b *testing.B) {
	h := hub.New(hub.Config{})
	r := local.New(h.Deliver)
	h.SetRouter(r)
	defer r.Close()
	const users = 1000
	sessions := make([]*hub.Session, 0, users)
	for i := range users {
		s, _ := h.Register(context.Background(), fmt.Sprint("u", i), "d", 4096)
		sessions = append(sessions, s)
	}
	f := frame(1)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			i++
			h.Deliver(router.Event{UserID: sessions[i%users].UserID(), Frame: f})
			if i%1000 == 0 {
				for _, s := range sessions {
					drain(s)
				}
			}
		}
	})
}

// TestQueueRing: the lazily grown ring keeps FIFO order across growth and
// wrap-around, and a blocking Enqueue waits for room.
func TestQueueRing(t *testing.T) {
	h, _ := newHub(t, hub.Config{})
	s := register(t, h, "alice", "d", 20)
	var want, got []uint64
	id := uint64(0)
	push := func(n int) {
		for range n {
			id++
			if !s.TryEnqueue(hub.Item{Frame: frame(id)}) {
				t.Fatalf("TryEnqueue %d failed (len %d)", id, s.Len())
			}
			want = append(want, id)
		}
	}
	pop := func(n int) {
		for range n {
			it, ok := s.Pop()
			if !ok {
				t.Fatal("Pop on a non-empty queue failed")
			}
			got = append(got, it.Frame.GetFrameId())
		}
	}
	push(15)
	pop(10)
	push(15) // wraps and grows to the bound
	pop(3)
	push(3)
	if s.Len() != 20 {
		t.Fatalf("len %d", s.Len())
	}
	done := make(chan error, 1)
	go func() { done <- s.Enqueue(context.Background(), hub.Item{Frame: frame(id + 1)}) }()
	select {
	case err := <-done:
		t.Fatalf("Enqueue on a full queue returned %v", err)
	case <-time.After(20 * time.Millisecond):
	}
	pop(1)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	want = append(want, id+1)
	pop(20)
	if _, ok := s.Pop(); ok {
		t.Fatal("Pop on an empty queue")
	}
	if !slices.Equal(got, want) {
		t.Fatalf("order %v, want %v", got, want)
	}
	// Enqueue gives up with the context.
	for range 20 {
		s.TryEnqueue(hub.Item{Frame: frame(0)})
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Enqueue(ctx, hub.Item{}); store.ErrorCode(err) != store.CodeCanceled {
		t.Fatalf("Enqueue with cancelled ctx: %v", err)
	}
	if s.Err() != nil {
		t.Fatal("a blocking Enqueue must not close the session")
	}
}

// BenchmarkFanout100: one group message fanned out to 100 members, one
// device each, through the local router into the devices' send queues
// (what the sequencer does after a group commit). One op = 100 deliveries.
func BenchmarkFanout100(b *testing.B) {
	h := hub.New(hub.Config{})
	r := local.New(h.Deliver)
	h.SetRouter(r)
	defer r.Close()
	const members = 100
	sessions := make([]*hub.Session, members)
	events := make([]router.Event, members)
	f := frame(1)
	for i := range members {
		s, err := h.Register(context.Background(), fmt.Sprint("m", i), "d", 4096)
		if err != nil {
			b.Fatal(err)
		}
		sessions[i] = s
		events[i] = router.Event{UserID: s.UserID(), Frame: f}
	}
	ctx := context.Background()
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		if err := r.Route(ctx, events); err != nil {
			b.Fatal(err)
		}
		if n++; n%1000 == 0 {
			for _, s := range sessions {
				drain(s)
			}
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n*members), "ns/delivery")
}

// TestMaxStreamsPerDevice: a device's sessions beyond the bound close
// the oldest open one (ResourceExhausted); other devices of the user and
// other users are untouched; a closed session no longer counts.
func TestMaxStreamsPerDevice(t *testing.T) {
	h, _ := newHub(t, hub.Config{MaxStreamsPerDevice: 2})
	a1 := register(t, h, "alice", "phone", 8)
	a2 := register(t, h, "alice", "phone", 8)
	laptop := register(t, h, "alice", "laptop", 8)
	bob := register(t, h, "bob", "phone", 8)
	if a1.Err() != nil || a2.Err() != nil {
		t.Fatal("closed within the bound")
	}
	a3 := register(t, h, "alice", "phone", 8)
	st := a1.Err()
	if st == nil || store.ErrorCode(st) != store.CodeResourceExhausted || st.Error() != hub.TooManyStreamsMessage {
		t.Fatalf("oldest session of the device: status %v, want ResourceExhausted %q", st, hub.TooManyStreamsMessage)
	}
	for name, s := range map[string]*hub.Session{"second": a2, "newest": a3, "other device": laptop, "other user": bob} {
		if s.Err() != nil {
			t.Errorf("%s session closed: %v", name, s.Err())
		}
	}
	// a1 is closed but not yet unregistered: it must not count, so a
	// fourth session evicts exactly one more (a2), not a3.
	a4 := register(t, h, "alice", "phone", 8)
	if a2.Err() == nil || a3.Err() != nil || a4.Err() != nil {
		t.Fatalf("after a fourth: a2 %v, a3 %v, a4 %v; want only a2 closed", a2.Err(), a3.Err(), a4.Err())
	}
	// Deliveries still reach the open sessions of the device.
	h.Deliver(router.Event{UserID: "alice", Frame: frame(7)})
	for name, s := range map[string]*hub.Session{"a3": a3, "a4": a4, "laptop": laptop} {
		if got := drain(s); len(got) != 1 || got[0] != 7 {
			t.Errorf("%s got %v, want [7]", name, got)
		}
	}
}

// TestMaxStreamsPerDeviceDefault: without the option the bound is
// DefaultMaxStreamsPerDevice.
func TestMaxStreamsPerDeviceDefault(t *testing.T) {
	h, _ := newHub(t, hub.Config{})
	var ss []*hub.Session
	for range hub.DefaultMaxStreamsPerDevice + 1 {
		ss = append(ss, register(t, h, "alice", "phone", 8))
	}
	if ss[0].Err() == nil {
		t.Fatal("the oldest session survived one over the default bound")
	}
	for _, s := range ss[1:] {
		if s.Err() != nil {
			t.Fatalf("a session within the bound closed: %v", s.Err())
		}
	}
}

// TestWake: Wake signals Ready with nothing queued (Pop then reports
// false), never blocks, and does not queue or lose items.
func TestWake(t *testing.T) {
	h, _ := newHub(t, hub.Config{})
	s := register(t, h, "u", "d", 4)
	s.Wake()
	s.Wake() // a second one before the writer looks: no block
	select {
	case <-s.Ready():
	default:
		t.Fatal("Ready not signalled by Wake")
	}
	if it, ok := s.Pop(); ok {
		t.Fatalf("Pop after Wake returned an item: %+v", it)
	}
	if !s.TryEnqueue(hub.Item{Frame: frame(7)}) {
		t.Fatal("TryEnqueue failed")
	}
	s.Wake()
	<-s.Ready()
	if it, ok := s.Pop(); !ok || it.Frame.GetFrameId() != 7 {
		t.Fatalf("Pop = %+v, %v; want frame 7", it, ok)
	}
}

// TestOnClose: the callback runs exactly once when the session closes
// (also when registered after the close, at once), and never while it is
// open.
func TestOnClose(t *testing.T) {
	h, _ := newHub(t, hub.Config{})
	s := register(t, h, "u", "d", 4)
	var n atomic.Int32
	s.OnClose(func() { n.Add(1) })
	if n.Load() != 0 {
		t.Fatal("ran while open")
	}
	s.Close(nil)
	s.Close(nil)
	if n.Load() != 1 {
		t.Fatalf("ran %d times after two closes, want 1", n.Load())
	}
	s.OnClose(func() { n.Add(10) }) // already closed: at once
	if n.Load() != 11 {
		t.Fatalf("late OnClose: n = %d, want 11", n.Load())
	}
	// Concurrent close and registration: exactly once either way.
	for range 200 {
		s := register(t, h, "u", "d", 4)
		var m atomic.Int32
		done := make(chan struct{})
		go func() { s.Close(nil); close(done) }()
		s.OnClose(func() { m.Add(1) })
		<-done
		if m.Load() != 1 {
			t.Fatalf("concurrent: ran %d times", m.Load())
		}
		h.Unregister(s)
	}
}
