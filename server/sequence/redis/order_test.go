package redis_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chatd/chatd/server/sequence"
	seqredis "github.com/chatd/chatd/server/sequence/redis"
	"github.com/chatd/chatd/server/sequence/sequencetest"
	"github.com/chatd/chatd/server/store"
)

// TestSuitePerKey runs the allocator suite on the per-key allocation path
// (the one used on Redis Cluster).
func TestSuitePerKey(t *testing.T) {
	addr := redisAddr(t)
	c := newClient(t, addr)
	prefix := testPrefix(t, addr)
	sequencetest.Run(t, sequencetest.Harness{
		New: func(t testing.TB, _ store.Messages) sequence.Allocator {
			a := newAlloc(t, c, prefix, seqredis.Config{})
			seqredis.ForcePerKey(a)
			return a
		},
	})
}

// TestChannelOrderAcrossServers: two servers allocate the messages of the
// same channels for the same users at the same moment, on channels that
// are new (their hashes must be set up: INIT) and with users whose bound
// must be raised every few seqs (RESERVE). For every user and channel the
// inbox seq order of the channel's messages is their message_id order.
func TestChannelOrderAcrossServers(t *testing.T) {
	addr := redisAddr(t)
	prefix := testPrefix(t, addr)
	var allocs []*seqredis.Allocator
	for range 2 {
		allocs = append(allocs, newAlloc(t, newClient(t, addr), prefix, seqredis.Config{Step: 3}))
	}
	users := []string{sequencetest.Unique("a"), sequencetest.Unique("b"), sequencetest.Unique("c")}
	ctx := context.Background()
	want := map[string]int{}
	for _, u := range users {
		want[u] = 1
	}
	// Every user's hash exists: only channels are new, users reserve.
	if al, err := allocs[0].Allocate(ctx, time.Now(), nil, want); err != nil {
		t.Fatal(err)
	} else if err := allocs[0].Commit(ctx, al); err != nil {
		t.Fatal(err)
	}
	type placed struct{ seq, id uint64 }
	got := map[string][]placed{} // user + channel -> placements
	var mu sync.Mutex
	const rounds = 60
	for r := range rounds {
		ch := sequencetest.Unique(fmt.Sprint("g", r))
		start := make(chan struct{})
		var wg sync.WaitGroup
		for _, a := range allocs {
			wg.Go(func() {
				<-start
				al, err := a.Allocate(ctx, time.Now(), map[string]int{ch: 2}, map[string]int{users[0]: 2, users[1]: 2, users[2]: 2})
				if err != nil {
					t.Error(err)
					return
				}
				if err := a.Commit(ctx, al); err != nil {
					t.Error(err)
				}
				mu.Lock()
				defer mu.Unlock()
				for _, u := range users {
					for i := range uint64(2) {
						got[u+" "+ch] = append(got[u+" "+ch], placed{al.Users[u].First + i, al.Channels[ch].First + i})
					}
				}
			})
		}
		close(start)
		wg.Wait()
	}
	bad := 0
	for k, ps := range got {
		slices.SortFunc(ps, func(a, b placed) int { return int(int64(a.seq - b.seq)) })
		for i := 1; i < len(ps); i++ {
			if ps[i].id <= ps[i-1].id {
				bad++
				if bad < 5 {
					t.Errorf("%s: message_id %d at seq %d after message_id %d at seq %d", k, ps[i].id, ps[i].seq, ps[i-1].id, ps[i-1].seq)
				}
			}
		}
	}
	if bad > 0 {
		t.Fatalf("%d placements out of channel order", bad)
	}
	var st seqredis.Stats
	for _, a := range allocs {
		s := a.Stats()
		st.Inits += s.Inits
		st.Reserves += s.Reserves
	}
	if st.Inits < rounds || st.Reserves < rounds {
		t.Fatalf("only %d channel setups and %d reservations in %d rounds: the race was not exercised", st.Inits, st.Reserves, rounds)
	}
	t.Logf("%d rounds, %d hashes set up, %d reservations", rounds, st.Inits, st.Reserves)
}

// TestConcurrentRetrySameKey: the same send (sender, client_message_id)
// reaches two servers at the same moment, again and again. Exactly one of
// them stores it; both answer with its message_id (the other as a
// duplicate), and the recipient's inbox holds every message once.
// Also on the per-key path (Redis Cluster: one SET NX PX per key).
func TestConcurrentRetrySameKey(t *testing.T) {
	t.Run("one-redis", func(t *testing.T) { testConcurrentRetry(t, false) })
	t.Run("per-key", func(t *testing.T) { testConcurrentRetry(t, true) })
}

func testConcurrentRetry(t *testing.T, perKey bool) {
	addr := redisAddr(t)
	st := cluster(t)
	prefix := testPrefix(t, addr)
	var seqs []*sequence.Sequencer
	for range 2 {
		a := newAlloc(t, newClient(t, addr), prefix, seqredis.Config{})
		if perKey {
			seqredis.ForcePerKey(a)
		}
		seq := sequence.New(st, nil, sequence.Options{Allocator: a})
		t.Cleanup(seq.Close)
		seqs = append(seqs, seq)
	}
	alice, bob := sequencetest.Unique("alice"), sequencetest.Unique("bob")
	ch := sequencetest.Unique("dm")
	ctx := context.Background()
	const n = 20
	for i := range n {
		req := &sequence.Request{ChannelID: ch, SenderID: alice, ClientMessageID: fmt.Sprint("race-", i), Text: "raced", Recipients: []string{alice, bob}}
		res := make([]sequence.Result, 2)
		var wg sync.WaitGroup
		for j, seq := range seqs {
			wg.Go(func() {
				c, cancel := context.WithTimeout(ctx, 30*time.Second)
				defer cancel()
				r, err := seq.Do(c, req)
				if err != nil {
					t.Errorf("%s on server %d: %v", req.ClientMessageID, j, err)
				}
				res[j] = r
			})
		}
		wg.Wait()
		if res[0].MessageID != res[1].MessageID || res[0].Duplicate == res[1].Duplicate {
			t.Errorf("%s: answered %d (duplicate %v) and %d (duplicate %v); want one message, one duplicate",
				req.ClientMessageID, res[0].MessageID, res[0].Duplicate, res[1].MessageID, res[1].Duplicate)
		}
	}
	ds, _, err := st.Inbox(ctx, bob, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) != n {
		t.Fatalf("bob's inbox holds %d messages, want %d", len(ds), n)
	}
}

// TestClaimOfDeadServerExpires: a server claimed a send and died. A retry
// elsewhere stores nothing while the claim lives: it waits for the dead
// server's dedup row without holding up other sends of its sequencer, and
// answers Unavailable ("in progress"); once the claim expired a retry
// stores the message.
func TestClaimOfDeadServerExpires(t *testing.T) {
	addr := redisAddr(t)
	prefix := testPrefix(t, addr)
	pst := sequencetest.OpenPebble(t, t.TempDir())
	defer pst.Close()
	o := seqredis.Config{PendingTTL: 100 * time.Millisecond}
	dead := newAlloc(t, newClient(t, addr), prefix, o)
	ctx := context.Background()
	alice, bob := sequencetest.Unique("alice"), sequencetest.Unique("bob")
	req := &sequence.Request{ChannelID: sequencetest.Unique("dm"), SenderID: alice, ClientMessageID: "m1", Text: "hi", Recipients: []string{alice, bob}}
	c, err := dead.Claim(ctx, []sequence.ClaimKey{{SenderID: alice, ClientMessageID: "m1"}}, 2*time.Second)
	if err != nil || c == nil || len(c.Lost) != 0 {
		t.Fatalf("claim: %+v, %v", c, err)
	}

	// Server 1 waits (up to its StoreTimeout, 30 s) for the dead server's
	// row; meanwhile it sequences other sends; Close ends the wait.
	s1 := sequence.New(pst, nil, sequence.Options{Allocator: newAlloc(t, newClient(t, addr), prefix, o), StoreTimeout: 30 * time.Second})
	waited := make(chan sequence.Result, 1)
	s1.Submit(req, func(r sequence.Result) { waited <- r })
	other := &sequence.Request{ChannelID: sequencetest.Unique("g"), SenderID: alice, ClientMessageID: "other", Text: "meanwhile", Recipients: []string{alice}}
	if _, err := s1.Do(ctx, other); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-waited:
		t.Fatalf("answered while the claim is held and no row exists: %+v", r)
	default:
	}
	s1.Close()
	if r := <-waited; store.ErrorCode(r.Err) != store.CodeUnavailable || !strings.Contains(r.Err.Error(), "in progress") {
		t.Fatalf("send while another server holds its claim: %+v, want Unavailable (in progress)", r)
	}

	// Server 2: retries until the claim expired (hold + PendingTTL).
	s2 := sequence.New(pst, nil, sequence.Options{Allocator: newAlloc(t, newClient(t, addr), prefix, o), StoreTimeout: 200 * time.Millisecond})
	defer s2.Close()
	deadline := time.Now().Add(30 * time.Second)
	for {
		r, err := s2.Do(ctx, req)
		if err == nil {
			if r.Duplicate {
				t.Fatal("stored by nobody, answered as a duplicate")
			}
			break
		}
		if store.ErrorCode(err) != store.CodeUnavailable || time.Now().After(deadline) {
			t.Fatalf("the dead server's claim did not expire: %v", err)
		}
	}
	ds, _, err := pst.Inbox(ctx, bob, 0, 10)
	if err != nil || len(ds) != 1 {
		t.Fatalf("bob's inbox: %d entries, %v; want 1", len(ds), err)
	}
}

// failOnce is a store whose next AppendBatch fails while armed.
type failOnce struct {
	store.Messages
	armed atomic.Bool
}

func (f *failOnce) AppendBatch(ctx context.Context, b *store.Batch) error {
	if f.armed.CompareAndSwap(true, false) {
		return errors.New("disk on fire")
	}
	return f.Messages.AppendBatch(ctx, b)
}

// TestFailedBatchReleasesClaim: a send whose batch failed on one server is
// retried on another at once: the failed batch gave its claim back, so
// the retry stores the message (not "in progress").
func TestFailedBatchReleasesClaim(t *testing.T) {
	addr := redisAddr(t)
	prefix := testPrefix(t, addr)
	pst := sequencetest.OpenPebble(t, t.TempDir())
	defer pst.Close()
	f := &failOnce{Messages: pst}
	s1 := sequence.New(f, nil, sequence.Options{Allocator: newAlloc(t, newClient(t, addr), prefix, seqredis.Config{})})
	defer s1.Close()
	s2 := sequence.New(pst, nil, sequence.Options{Allocator: newAlloc(t, newClient(t, addr), prefix, seqredis.Config{}), StoreTimeout: time.Second})
	defer s2.Close()
	ctx := context.Background()
	alice, bob := sequencetest.Unique("alice"), sequencetest.Unique("bob")
	req := &sequence.Request{ChannelID: sequencetest.Unique("dm"), SenderID: alice, ClientMessageID: "m1", Text: "hi", Recipients: []string{alice, bob}}
	f.armed.Store(true)
	if _, err := s1.Do(ctx, req); store.ErrorCode(err) != store.CodeUnavailable {
		t.Fatalf("send on the failing server: %v, want Unavailable", err)
	}
	r, err := s2.Do(ctx, req)
	if err != nil || r.Duplicate {
		t.Fatalf("retry on the other server: %+v, %v; want a new message", r, err)
	}
	r2, err := s1.Do(ctx, req)
	if err != nil || !r2.Duplicate || r2.MessageID != r.MessageID {
		t.Fatalf("retry on the first server: %+v, %v; want the duplicate of %d", r2, err, r.MessageID)
	}
}

// TestKeyReuseWhileClaimed: a send whose client_message_id another server
// holds waits for that server's record (awaitOther); when the record is of
// a different message (another channel or text) the waiter refuses the
// send with FailedPrecondition instead of answering the other message's
// ack, and a waiter with the same message gets the duplicate.
func TestKeyReuseWhileClaimed(t *testing.T) {
	addr := redisAddr(t)
	prefix := testPrefix(t, addr)
	pst := sequencetest.OpenPebble(t, t.TempDir())
	defer pst.Close()
	other := newAlloc(t, newClient(t, addr), prefix, seqredis.Config{})
	ctx := context.Background()
	alice, bob, carol := sequencetest.Unique("alice"), sequencetest.Unique("bob"), sequencetest.Unique("carol")
	orig := sequencetest.Req(sequencetest.Unique("dm"), alice, "k", "text A", alice, bob)
	if c, err := other.Claim(ctx, []sequence.ClaimKey{{SenderID: alice, ClientMessageID: "k"}}, 5*time.Second); err != nil || c == nil || len(c.Lost) != 0 {
		t.Fatalf("claim: %+v, %v", c, err)
	}
	s1 := sequence.New(pst, nil, sequence.Options{Allocator: newAlloc(t, newClient(t, addr), prefix, seqredis.Config{}), StoreTimeout: 5 * time.Second})
	defer s1.Close()
	reuse := sequencetest.Req(sequencetest.Unique("dm"), alice, "k", "text B", alice, carol)
	reused, retried := make(chan sequence.Result, 1), make(chan sequence.Result, 1)
	s1.Submit(reuse, func(r sequence.Result) { reused <- r })
	s1.Submit(orig, func(r sequence.Result) { retried <- r })
	time.Sleep(50 * time.Millisecond) // both wait for the other server
	// The other server's send lands (a record without placements: checked
	// as it is).
	const id = 42 << 16
	if err := pst.AppendBatch(ctx, &store.Batch{Dedup: []store.Dedup{{
		SenderID: alice, ClientMessageID: "k", ChannelID: orig.ChannelID, MessageID: id,
		CreatedAt: time.Now(), Fingerprint: sequence.Fingerprint(orig),
	}}}); err != nil {
		t.Fatal(err)
	}
	if r := <-reused; !sequencetest.IsReuse(r) {
		t.Errorf("reuse for another message while claimed: %+v; want FailedPrecondition", r)
	}
	if r := <-retried; r.Err != nil || !r.Duplicate || r.MessageID != id {
		t.Errorf("the same send while claimed: %+v; want a duplicate of %d", r, uint64(id))
	}
	if ds, _, err := pst.Inbox(ctx, carol, 0, 10); err != nil || len(ds) != 0 {
		t.Errorf("carol's inbox: %d entries, %v; want none", len(ds), err)
	}
}

// TestKeyReuseOfIncompleteSend: a cluster record whose rows are partly
// missing (its server died mid-batch) is completed by a retry of the same
// send, never by a send that reuses its key for another message: that one
// is refused and writes nothing, and the record stays for the genuine
// retry, which completes it.
func TestKeyReuseOfIncompleteSend(t *testing.T) {
	addr := redisAddr(t)
	prefix := testPrefix(t, addr)
	pst := sequencetest.OpenPebble(t, t.TempDir())
	defer pst.Close()
	s := sequence.New(pst, nil, sequence.Options{Allocator: newAlloc(t, newClient(t, addr), prefix, seqredis.Config{})})
	defer s.Close()
	ctx := context.Background()
	alice, bob := sequencetest.Unique("alice"), sequencetest.Unique("bob")
	orig := sequencetest.Req(sequencetest.Unique("dm"), alice, "k", "text A", alice, bob)
	const id = 43 << 16
	// Only the dedup record was written (step 1), placing the message at
	// seqs that were never written.
	if err := pst.AppendBatch(ctx, &store.Batch{Dedup: []store.Dedup{{
		SenderID: alice, ClientMessageID: "k", ChannelID: orig.ChannelID, MessageID: id, CreatedAt: time.Now(),
		Inbox: []store.Placement{{UserID: alice, Seq: 1}, {UserID: bob, Seq: 1}}, Fingerprint: sequence.Fingerprint(orig),
	}}}); err != nil {
		t.Fatal(err)
	}
	reuse := sequencetest.Req(orig.ChannelID, alice, "k", "text B", alice, bob)
	if r, _ := s.Do(ctx, reuse); !sequencetest.IsReuse(r) {
		t.Fatalf("reuse of an incomplete send's key: %+v; want FailedPrecondition", r)
	}
	if _, err := pst.GetMessage(ctx, orig.ChannelID, id); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("the refused send wrote the message row (%v)", err)
	}
	if ds, _, err := pst.Inbox(ctx, bob, 0, 10); err != nil || len(ds) != 0 {
		t.Fatalf("bob's inbox after the refused send: %d entries, %v; want none", len(ds), err)
	}
	r, err := s.Do(ctx, orig)
	if err != nil || !r.Duplicate || r.MessageID != id {
		t.Fatalf("the genuine retry: %+v, %v; want the duplicate of %d", r, err, uint64(id))
	}
	m, err := pst.GetMessage(ctx, orig.ChannelID, id)
	if err != nil || m.Text != "text A" {
		t.Fatalf("completed message: %+v, %v; want text A", m, err)
	}
}
