package chat

import (
	"context"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/chatd/chatd/server/sequence"
	"github.com/chatd/chatd/server/store"
)

// holding is an allocator that behaves as a second server would: when
// armed for a user it skips one inbox seq of that user's next allocation
// and keeps it pending (another server's uncommitted write), so the
// horizon stays below it until release. It wraps the single-node
// allocator; only the pending seq is simulated.
type holding struct {
	*sequence.LocalAllocator
	mu       sync.Mutex
	user     string // armed for this user's next allocation
	held     uint64 // the pending seq (0: none)
	heldUser string
}

func (h *holding) wrap(st store.Messages) sequence.Allocator {
	h.LocalAllocator = sequence.NewLocalAllocator(st)
	return h
}

func (h *holding) arm(user string) {
	h.mu.Lock()
	h.user = user
	h.mu.Unlock()
}

// pending returns the held seq.
func (h *holding) pending() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.held
}

// release ends the pending state (the seq was committed, or abandoned).
func (h *holding) release() {
	h.mu.Lock()
	h.held, h.heldUser = 0, ""
	h.mu.Unlock()
}

func (h *holding) Allocate(ctx context.Context, now time.Time, channels, users map[string]int) (*sequence.Allocation, error) {
	h.mu.Lock()
	u := h.user
	if users[u] == 0 {
		u = ""
	}
	h.user = ""
	h.mu.Unlock()
	if u == "" {
		return h.LocalAllocator.Allocate(ctx, now, channels, users)
	}
	more := make(map[string]int, len(users))
	for k, n := range users {
		more[k] = n
	}
	more[u]++
	a, err := h.LocalAllocator.Allocate(ctx, now, channels, more)
	if err != nil {
		return nil, err
	}
	r := a.Users[u]
	a.Users[u] = sequence.Range{First: r.First + 1, Last: r.Last}
	h.mu.Lock()
	h.held, h.heldUser = r.First, u
	h.mu.Unlock()
	return a, nil
}

func (h *holding) Horizon(ctx context.Context, userID string) (uint64, error) {
	v, err := h.LocalAllocator.Horizon(ctx, userID)
	h.mu.Lock()
	defer h.mu.Unlock()
	if err == nil && h.held != 0 && userID == h.heldUser {
		v = min(v, h.held-1)
	}
	return v, err
}

// elsewhere writes a message into u's inbox at seq as another server
// would (store first), and returns it.
func (e *env) elsewhere(u string, seq uint64, text string) sequence.Committed {
	e.t.Helper()
	m := &store.Message{ChannelID: "g:elsewhere", MessageID: uint64(time.Now().UnixMilli()) << 16, SenderID: "carol",
		Text: text, CreatedAt: time.Now().UTC().Truncate(time.Millisecond), Kind: store.KindText}
	c := sequence.Committed{Message: m, Inbox: []store.InboxEntry{{UserID: u, Seq: seq, ChannelID: m.ChannelID, MessageID: m.MessageID}}}
	if err := e.st.AppendBatch(context.Background(), &store.Batch{Messages: []*store.Message{m}, Inbox: c.Inbox}); err != nil {
		e.t.Fatal(err)
	}
	return c
}

func checkSeqs(t *testing.T, ds []*chatv1.Delivery, seqs []uint64, texts []string) {
	t.Helper()
	for i, d := range ds {
		if d.GetInboxSeq() != seqs[i] || d.GetMessage().GetText() != texts[i] {
			t.Fatalf("delivery %d: seq %d %q; want seq %d %q", i, d.GetInboxSeq(), d.GetMessage().GetText(), seqs[i], texts[i])
		}
	}
}

// TestParkedUntilPendingCommits: a live delivery whose predecessor seq is
// pending (another server's write) is held back, and sent right after the
// predecessor once that commits: in order, nothing lost, nothing twice.
func TestParkedUntilPendingCommits(t *testing.T) {
	hold := &holding{}
	e := newEnv(t, envConfig{alloc: hold.wrap})
	e.users("alice", "bob")
	alice, bob := e.open("alice", "d1"), e.open("bob", "d1")
	alice.ackOf(alice.sendTo("bob", "m1", "one"))
	checkSeqs(t, bob.deliveries(1), []uint64{1}, []string{"one"})

	hold.arm("bob")
	alice.ackOf(alice.sendTo("bob", "m2", "two")) // bob's seq 3; seq 2 pending
	if hold.pending() != 2 {
		t.Fatalf("held seq %d, want 2", hold.pending())
	}
	bob.quiet() // seq 3 was routed to bob's stream before alice's ack: parked
	// Beyond the horizon: acks are refused.
	bob.errOf(bob.ack(3), codes.FailedPrecondition)

	// The other server commits seq 2, then publishes it.
	c := e.elsewhere("bob", 2, "from elsewhere")
	hold.release()
	e.publish([]sequence.Committed{c})
	checkSeqs(t, bob.deliveries(2), []uint64{2, 3}, []string{"from elsewhere", "two"})
	if r := bob.reply(bob.ack(3)).GetAckResult(); r.GetCursor() != 3 {
		t.Fatalf("ack 3: %v", r)
	}
	alice.ackOf(alice.sendTo("bob", "m3", "three"))
	checkSeqs(t, bob.deliveries(1), []uint64{4}, []string{"three"})
	bob.quiet()
}

// TestParkedUntilPendingExpires: the pending seq is abandoned (its server
// died): once the horizon passes it, the parked delivery goes out and the
// hole is skipped. The routed event of the lost seq never comes; the
// writer's recheck finds the horizon moved.
func TestParkedUntilPendingExpires(t *testing.T) {
	hold := &holding{}
	e := newEnv(t, envConfig{alloc: hold.wrap})
	e.users("alice", "bob")
	alice, bob := e.open("alice", "d1"), e.open("bob", "d1")
	alice.ackOf(alice.sendTo("bob", "m1", "one"))
	checkSeqs(t, bob.deliveries(1), []uint64{1}, []string{"one"})

	hold.arm("bob")
	alice.ackOf(alice.sendTo("bob", "m2", "two"))
	bob.quiet()
	hold.release() // abandoned: nothing at seq 2
	checkSeqs(t, bob.deliveries(1), []uint64{3}, []string{"two"})
	alice.ackOf(alice.sendTo("bob", "m3", "three"))
	checkSeqs(t, bob.deliveries(1), []uint64{4}, []string{"three"})
	bob.quiet()
}

// pendingSeq2 returns an env where alice has sent bob "one" (seq 1) and
// "two" while bob's seq 2 was held: "two" is committed at seq 3, and seq 2
// is pending until hold.release.
func pendingSeq2(t *testing.T) (*holding, *env) {
	t.Helper()
	hold := &holding{}
	e := newEnv(t, envConfig{alloc: hold.wrap})
	e.users("alice", "bob")
	alice := e.open("alice", "d1")
	alice.ackOf(alice.sendTo("bob", "m1", "one"))
	hold.arm("bob")
	alice.ackOf(alice.sendTo("bob", "m2", "two"))
	return hold, e
}

// TestSyncStopsAtHorizon: a device that syncs while a seq is pending gets
// the entries up to the horizon only (more = false); the committed entry
// above the pending seq was published before the device connected, and
// still reaches it live, after the pending one, once the horizon passes.
func TestSyncStopsAtHorizon(t *testing.T) {
	hold, e := pendingSeq2(t) // seq 3 committed, 2 pending

	bob := e.open("bob", "d1")
	if w := bob.welcome; w.GetHeadSeq() != 1 || w.GetCursor() != 0 {
		t.Fatalf("welcome %v: head must be the horizon 1", w)
	}
	ds, pages := bob.syncAll(0, 10)
	checkSeqs(t, ds, []uint64{1}, []string{"one"})
	if p := pages[len(pages)-1]; p.GetMore() || p.GetNextAfterSeq() != 1 {
		t.Fatalf("last page %v", p)
	}
	bob.quiet()

	c := e.elsewhere("bob", 2, "from elsewhere")
	hold.release()
	e.publish([]sequence.Committed{c})
	checkSeqs(t, bob.deliveries(2), []uint64{2, 3}, []string{"from elsewhere", "two"})
	bob.quiet()
}

// TestSyncSkipsHoles: an abandoned seq is a hole that sync skips, and the
// last page's next_after_seq is the horizon.
func TestSyncSkipsHoles(t *testing.T) {
	hold, e := pendingSeq2(t) // seq 3 committed, 2 pending
	hold.release()            // seq 2 abandoned
	bob := e.open("bob", "d1")
	ds, pages := bob.syncAll(0, 1)
	checkSeqs(t, ds, []uint64{1, 3}, []string{"one", "two"})
	if p := pages[len(pages)-1]; p.GetMore() || p.GetNextAfterSeq() != 3 {
		t.Fatalf("last page %v", p)
	}
	// After a hole the page says so: from seq 1 the next entry is 3.
	f := bob.reply(bob.sync(1, 10)).GetSyncPage()
	if len(f.GetDeliveries()) != 1 || f.GetDeliveries()[0].GetInboxSeq() != 3 || f.GetMore() {
		t.Fatalf("page after 1: %v", f)
	}
}
