package push_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chatd/chatd/server/push"
	"github.com/chatd/chatd/server/sequence"
	"github.com/chatd/chatd/server/store"
	"github.com/chatd/chatd/server/store/pebble"
)

// fakeProvider records sends and answers with answer (nil: accepted),
// holding each send for hold.
type fakeProvider struct {
	kind     store.PushKind
	hold     time.Duration
	answer   func(n *push.Notification) error
	mu       sync.Mutex
	sent     []push.Notification
	inFlight atomic.Int32
	maxSeen  atomic.Int32
}

func (f *fakeProvider) Kind() store.PushKind { return f.kind }

func (f *fakeProvider) Send(ctx context.Context, n *push.Notification) error {
	cur := f.inFlight.Add(1)
	defer f.inFlight.Add(-1)
	for {
		m := f.maxSeen.Load()
		if cur <= m || f.maxSeen.CompareAndSwap(m, cur) {
			break
		}
	}
	select {
	case <-time.After(f.hold):
	case <-ctx.Done():
		return ctx.Err()
	}
	f.mu.Lock()
	f.sent = append(f.sent, *n)
	f.mu.Unlock()
	if f.answer != nil {
		return f.answer(n)
	}
	return nil
}

func (f *fakeProvider) count() int { f.mu.Lock(); defer f.mu.Unlock(); return len(f.sent) }

type rig struct {
	st *pebble.Store
	d  *push.Dispatcher
}

func newRig(t *testing.T, cfg push.Config) *rig {
	t.Helper()
	st, err := pebble.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	cfg.Store, cfg.Queue = st, st
	if cfg.HasStream == nil {
		cfg.HasStream = func(string) bool { return false }
	}
	cfg.Unread = func(context.Context, string, string) (uint32, uint32, error) { return 1, 1, nil }
	cfg.Poll = 10 * time.Millisecond
	d, err := push.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	d.Start()
	t.Cleanup(d.Close)
	return &rig{st: st, d: d}
}

func (r *rig) target(t *testing.T, user, device string, kind store.PushKind) {
	t.Helper()
	if err := r.st.PutPushTarget(context.Background(), &store.PushTarget{UserID: user, DeviceID: device, Kind: kind, Address: user + "-" + device}); err != nil {
		t.Fatal(err)
	}
}

// message commits one text message from alice to user at created.
func (r *rig) message(user string, id uint64, created time.Time) {
	r.d.Committed([]sequence.Committed{{
		Message: &store.Message{ChannelID: "dm:alice:" + user, MessageID: id, SenderID: "alice", Kind: store.KindText, Text: "hi", CreatedAt: created},
		Inbox:   []store.InboxEntry{{UserID: "alice", Seq: id}, {UserID: user, Seq: id}},
	}})
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func queued(t *testing.T, st *pebble.Store) []store.PushJob {
	t.Helper()
	js, err := st.PushJobs(context.Background(), 100)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// A message older than the TTL is dropped, never sent.
func TestDispatcher_TTLDrop(t *testing.T) {
	p := &fakeProvider{kind: store.PushFCM}
	r := newRig(t, push.Config{Providers: []push.Provider{p}, Window: time.Millisecond, TTL: time.Minute})
	r.target(t, "bob", "phone", store.PushFCM)
	r.message("bob", 1, time.Now().Add(-2*time.Minute))
	r.message("carol", 2, time.Now()) // no target: dropped too
	waitUntil(t, "queue drained", func() bool { return len(queued(t, r.st)) == 0 })
	if p.count() != 0 {
		t.Fatalf("sent %d pushes of an expired message", p.count())
	}
}

// The sender's own message, a non-text row and an online recipient are
// never queued.
func TestDispatcher_CommitFilter(t *testing.T) {
	p := &fakeProvider{kind: store.PushFCM}
	r := newRig(t, push.Config{Providers: []push.Provider{p}, Window: time.Hour,
		HasStream: func(u string) bool { return u == "online" }})
	r.message("online", 1, time.Now())
	r.d.Committed([]sequence.Committed{{
		Message: &store.Message{ChannelID: "dm:alice:bob", MessageID: 2, SenderID: "alice", Kind: store.KindEdit, CreatedAt: time.Now()},
		Inbox:   []store.InboxEntry{{UserID: "bob", Seq: 2}},
	}})
	r.message("bob", 3, time.Now())
	waitUntil(t, "bob's job queued", func() bool { return len(queued(t, r.st)) == 1 })
	time.Sleep(50 * time.Millisecond)
	js := queued(t, r.st)
	if len(js) != 1 || js[0].UserID != "bob" || js[0].MessageID != 3 {
		t.Fatalf("queued %+v, want only bob's job for message 3 (not alice's own, not the edit, not the online user)", js)
	}
}

// Gone deletes exactly the target that was sent to; a retry is queued for
// that one device, not before Retry-After.
func TestDispatcher_GoneAndRetry(t *testing.T) {
	var calls atomic.Int32
	p := &fakeProvider{kind: store.PushAPNs, answer: func(n *push.Notification) error {
		switch n.Target.DeviceID {
		case "old-phone":
			return &push.Error{Status: 410, Reason: "Unregistered", Gone: true}
		case "ipad":
			if calls.Add(1) == 1 {
				return &push.Error{Status: 503, Retry: true, RetryAfter: 1500 * time.Millisecond}
			}
		}
		return nil
	}}
	r := newRig(t, push.Config{Providers: []push.Provider{p}, Window: time.Millisecond})
	r.target(t, "bob", "old-phone", store.PushAPNs)
	r.target(t, "bob", "ipad", store.PushAPNs)
	start := time.Now()
	r.message("bob", 1, start)
	waitUntil(t, "the retry delivered", func() bool { return calls.Load() == 2 })
	ts, _ := r.st.ListPushTargets(context.Background(), "bob")
	if len(ts) != 1 || ts[0].DeviceID != "ipad" {
		t.Fatalf("targets %+v, want only the ipad's", ts)
	}
	p.mu.Lock()
	var ipad []time.Duration
	for _, n := range p.sent {
		if n.Target.DeviceID == "ipad" {
			ipad = append(ipad, time.Since(start))
		}
	}
	p.mu.Unlock()
	if len(ipad) != 2 {
		t.Fatalf("ipad got %d sends, want 2", len(ipad))
	}
	if elapsed := time.Since(start); elapsed < 1500*time.Millisecond {
		t.Fatalf("retried after %v, before Retry-After 1.5s", elapsed)
	}
	waitUntil(t, "queue drained", func() bool { return len(queued(t, r.st)) == 0 })
}

// A slow provider holds at most Concurrency sends, and a fast provider's
// pushes go out meanwhile.
func TestDispatcher_SlowProviderBounded(t *testing.T) {
	slow := &fakeProvider{kind: store.PushAPNs, hold: 300 * time.Millisecond}
	fast := &fakeProvider{kind: store.PushFCM}
	r := newRig(t, push.Config{Providers: []push.Provider{slow, fast}, Window: time.Millisecond, Concurrency: 2})
	const users = 8
	for i := range users {
		u := fmt.Sprintf("u%d", i)
		kind := store.PushAPNs
		if i%2 == 1 {
			kind = store.PushFCM
		}
		r.target(t, u, "d", kind)
		r.message(u, uint64(i+1), time.Now())
	}
	waitUntil(t, "the fast provider's pushes", func() bool { return fast.count() == users/2 })
	if slow.count() == users/2 {
		t.Fatal("the slow provider finished first: the test shows nothing")
	}
	waitUntil(t, "the slow provider's pushes", func() bool { return slow.count() == users/2 })
	if m := slow.maxSeen.Load(); m > 2 {
		t.Fatalf("%d sends in flight to one provider, bound 2", m)
	}
}

func TestBackoff(t *testing.T) {
	for a := uint32(1); a < 40; a++ {
		d := push.Backoff(a)
		want := push.BaseBackoff << min(a-1, 20)
		if want > push.MaxBackoff || want <= 0 {
			want = push.MaxBackoff
		}
		if d < want/2 || d > want {
			t.Fatalf("Backoff(%d) = %v, want in [%v, %v]", a, d, want/2, want)
		}
	}
}

// Close cancels a send that hangs past CloseGrace and leaves its job
// queued for the next start.
func TestDispatcher_CloseLeavesHungSendQueued(t *testing.T) {
	st, err := pebble.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	hung := &fakeProvider{kind: store.PushFCM, hold: time.Hour}
	d, err := push.New(push.Config{Store: st, Queue: st, Providers: []push.Provider{hung}, Window: time.Millisecond, Poll: 10 * time.Millisecond,
		HasStream: func(string) bool { return false },
		Unread:    func(context.Context, string, string) (uint32, uint32, error) { return 1, 1, nil }})
	if err != nil {
		t.Fatal(err)
	}
	d.Start()
	r := &rig{st: st, d: d}
	r.target(t, "bob", "phone", store.PushFCM)
	r.message("bob", 1, time.Now())
	waitUntil(t, "the send started", func() bool { return hung.inFlight.Load() == 1 })
	t0 := time.Now()
	d.Close()
	if el := time.Since(t0); el > push.CloseGrace+2*time.Second {
		t.Fatalf("Close took %v", el)
	}
	if js := queued(t, st); len(js) != 1 || js[0].UserID != "bob" {
		t.Fatalf("queue after Close: %+v, want bob's job kept", js)
	}
}

// stallQueue is the rig's queue with one read held back: after armed is
// set, the next PushJobs that finds jobs returns them only after a
// DeletePushJobs has completed (and the sender has had time to clear its
// in-flight marks), as a slow queue read racing a send that finishes.
type stallQueue struct {
	store.PushQueue
	armed   atomic.Bool
	deleted chan struct{}
}

func (q *stallQueue) PushJobs(ctx context.Context, limit int) ([]store.PushJob, error) {
	js, err := q.PushQueue.PushJobs(ctx, limit)
	if len(js) > 0 && q.armed.CompareAndSwap(true, false) {
		<-q.deleted
		time.Sleep(50 * time.Millisecond)
	}
	return js, err
}

func (q *stallQueue) DeletePushJobs(ctx context.Context, ids []uint64) error {
	err := q.PushQueue.DeletePushJobs(ctx, ids)
	select {
	case q.deleted <- struct{}{}:
	default:
	}
	return err
}

// A queue read that started while a group was being sent, and returns
// after that send deleted the group's jobs, must not send the group
// again (seen end to end in TestCluster_Push/BurstCollapses: a third push
// from two servers, the Redis read racing the send's XACK).
func TestDispatcher_ReadRacingSendNoDuplicate(t *testing.T) {
	st, err := pebble.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	q := &stallQueue{PushQueue: st, deleted: make(chan struct{}, 1)}
	p := &fakeProvider{kind: store.PushFCM, hold: 50 * time.Millisecond}
	p.answer = func(*push.Notification) error { return nil }
	d, err := push.New(push.Config{Store: st, Queue: q, Providers: []push.Provider{&armingProvider{p, q}},
		HasStream: func(string) bool { return false },
		Unread:    func(context.Context, string, string) (uint32, uint32, error) { return 1, 1, nil },
		Poll:      10 * time.Millisecond, Window: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	d.Start()
	t.Cleanup(d.Close)
	r := &rig{st: st, d: d}
	r.target(t, "bob", "phone", store.PushFCM)
	r.message("bob", 1, time.Now())
	waitUntil(t, "the push sent", func() bool { return p.count() >= 1 })
	waitUntil(t, "queue drained", func() bool { return len(queued(t, st)) == 0 })
	time.Sleep(200 * time.Millisecond)
	if n := p.count(); n != 1 {
		t.Fatalf("%d sends of one push, want 1", n)
	}
}

// armingProvider arms the stall of q when a send starts, so the worker's
// next read overlaps the send.
type armingProvider struct {
	*fakeProvider
	q *stallQueue
}

func (a *armingProvider) Send(ctx context.Context, n *push.Notification) error {
	a.q.armed.Store(true)
	return a.fakeProvider.Send(ctx, n)
}
