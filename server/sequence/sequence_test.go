package sequence_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chatd/chatd/server/sequence"
	"github.com/chatd/chatd/server/sequence/sequencetest"
	"github.com/chatd/chatd/server/store"
)

func TestIDsSeqsAndStore(t *testing.T) {
	st := sequencetest.OpenPebble(t, t.TempDir())
	defer st.Close()
	var rec sequencetest.Recorder
	seq := sequence.New(st, rec.Publish, sequence.Options{})
	defer seq.Close()
	ctx := context.Background()

	before := uint64(time.Now().UnixMilli()) << 16
	var prev uint64
	for i := range 20 {
		r, err := seq.Do(ctx, sequencetest.Req("g:1", "alice", fmt.Sprintf("c%d", i), fmt.Sprintf("hello %d", i), "alice", "bob", "carol", "bob"))
		if err != nil {
			t.Fatal(err)
		}
		if r.Duplicate || r.MessageID <= prev || r.MessageID < before {
			t.Fatalf("message %d: id %d (prev %d, floor %d) dup=%v", i, r.MessageID, prev, before, r.Duplicate)
		}
		if r.CreatedAt.IsZero() || r.CreatedAt.Nanosecond()%int(time.Millisecond) != 0 {
			t.Fatalf("created_at %v not ms precision", r.CreatedAt)
		}
		prev = r.MessageID
	}
	for _, u := range []string{"alice", "bob", "carol"} {
		h, err := seq.Head(ctx, u)
		if err != nil || h != 20 {
			t.Fatalf("head(%s) = %d, %v; want 20", u, h, err)
		}
		ds, more, err := st.Inbox(ctx, u, 0, 100)
		if err != nil || more || len(ds) != 20 {
			t.Fatalf("inbox(%s): %d entries more=%v err=%v", u, len(ds), more, err)
		}
		for i, d := range ds {
			if d.Seq != uint64(i+1) || d.Message.Text != fmt.Sprintf("hello %d", i) {
				t.Fatalf("inbox(%s)[%d] = seq %d %q", u, i, d.Seq, d.Message.Text)
			}
		}
	}
	if h, _ := seq.Head(ctx, "dave"); h != 0 {
		t.Fatalf("head of empty inbox = %d", h)
	}
	if rec.Count() != 20 {
		t.Fatalf("published %d messages, want 20", rec.Count())
	}
	// Each committed message carries one inbox entry per distinct recipient.
	for _, b := range rec.Batches {
		for _, c := range b {
			if len(c.Inbox) != 3 {
				t.Fatalf("committed message has %d inbox entries, want 3 (duplicate recipient ignored)", len(c.Inbox))
			}
		}
	}
	if s := seq.Stats(); s.Messages != 20 || s.Batches == 0 || s.Batches > 20 {
		t.Fatalf("stats %+v", s)
	}
}

// TestFIFOAndGroupCommit: many pipelined submissions from one goroutine are
// committed in submission order, in fewer batches than requests.
func TestFIFOAndGroupCommit(t *testing.T) {
	st := sequencetest.OpenPebble(t, t.TempDir())
	defer st.Close()
	var rec sequencetest.Recorder
	seq := sequence.New(st, rec.Publish, sequence.Options{})
	const n = 2000
	results := sequencetest.SubmitN(seq, n, "g:fifo", "alice", "alice", "bob")
	seq.Close()
	sequencetest.CheckFIFO(t, results)
	ds, _, err := st.Inbox(context.Background(), "bob", 0, n+1)
	if err != nil || len(ds) != n {
		t.Fatalf("bob's inbox: %d, %v", len(ds), err)
	}
	sequencetest.CheckDeliveries(t, ds, results)
	if b := seq.Stats().Batches; b >= n {
		t.Fatalf("%d batches for %d pipelined requests: no group commit", b, n)
	}
	// Published in commit order.
	rec.CheckOrder(t)
}

func TestDedup(t *testing.T) {
	dir := t.TempDir()
	st := sequencetest.OpenPebble(t, dir)
	var rec sequencetest.Recorder
	seq := sequence.New(st, rec.Publish, sequence.Options{})
	ctx := context.Background()

	// Same key submitted several times back to back: the first one is
	// stored, all others (in the same batch or not) are duplicates of it.
	const n = 50
	results := make([]sequence.Result, n)
	var wg sync.WaitGroup
	wg.Add(n)
	for i := range n {
		seq.Submit(sequencetest.Req("dm:alice:bob", "alice", "same", "hello", "alice", "bob"), func(r sequence.Result) {
			results[i] = r
			wg.Done()
		})
	}
	wg.Wait()
	if results[0].Duplicate || results[0].Err != nil {
		t.Fatalf("first: %+v", results[0])
	}
	for i := 1; i < n; i++ {
		r := results[i]
		if r.Err != nil || !r.Duplicate || r.MessageID != results[0].MessageID || !r.CreatedAt.Equal(results[0].CreatedAt) || r.ChannelID != "dm:alice:bob" {
			t.Fatalf("repeat %d: %+v, original %+v", i, r, results[0])
		}
	}
	// Another sender may use the same client_message_id.
	r, err := seq.Do(ctx, sequencetest.Req("dm:alice:bob", "bob", "same", "from bob", "alice", "bob"))
	if err != nil || r.Duplicate {
		t.Fatalf("other sender: %+v %v", r, err)
	}
	if rec.Count() != 2 {
		t.Fatalf("published %d, want 2", rec.Count())
	}
	seq.Close()
	st.Close()

	// After a restart the dedup comes from the store.
	st = sequencetest.OpenPebble(t, dir)
	defer st.Close()
	rec = sequencetest.Recorder{}
	seq = sequence.New(st, rec.Publish, sequence.Options{})
	defer seq.Close()
	r, err = seq.Do(ctx, sequencetest.Req("dm:alice:bob", "alice", "same", "hello", "alice", "bob"))
	if err != nil || !r.Duplicate || r.MessageID != results[0].MessageID || !r.CreatedAt.Equal(results[0].CreatedAt) {
		t.Fatalf("after restart: %+v %v, want duplicate of %+v", r, err, results[0])
	}
	ds, _, _ := st.Inbox(ctx, "bob", 0, 100)
	if len(ds) != 2 || rec.Count() != 0 {
		t.Fatalf("bob has %d entries (want 2), published %d (want 0)", len(ds), rec.Count())
	}
}

// TestRestartNeverGoesBackwards: ids and seqs continue after a restart even
// when the clock went backwards.
func TestRestartNeverGoesBackwards(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	future := time.Now().Add(time.Hour)
	st := sequencetest.OpenPebble(t, dir)
	seq := sequence.New(st, nil, sequence.Options{Now: func() time.Time { return future }})
	var last uint64
	for i := range 5 {
		r, err := seq.Do(ctx, sequencetest.Req("g:r", "alice", fmt.Sprint("a", i), "x", "alice"))
		if err != nil {
			t.Fatal(err)
		}
		last = r.MessageID
	}
	seq.Close()
	st.Close()

	st = sequencetest.OpenPebble(t, dir)
	defer st.Close()
	seq = sequence.New(st, nil, sequence.Options{}) // real clock: an hour behind
	defer seq.Close()
	r, err := seq.Do(ctx, sequencetest.Req("g:r", "alice", "b0", "y", "alice"))
	if err != nil {
		t.Fatal(err)
	}
	if r.MessageID != last+1 {
		t.Fatalf("after restart id %d, want %d", r.MessageID, last+1)
	}
	if h, _ := seq.Head(ctx, "alice"); h != 6 {
		t.Fatalf("head %d, want 6", h)
	}
}

// failing wraps the real store and fails AppendBatch on demand (a disk
// failure cannot be provoked on a tmpfs).
type failing struct {
	store.Messages
	fail atomic.Bool
}

func (f *failing) AppendBatch(ctx context.Context, b *store.Batch) error {
	if f.fail.Load() {
		return errors.New("disk on fire")
	}
	return f.Messages.AppendBatch(ctx, b)
}

func TestCommitFailureHidesEverything(t *testing.T) {
	st := sequencetest.OpenPebble(t, t.TempDir())
	defer st.Close()
	f := &failing{Messages: st}
	var rec sequencetest.Recorder
	seq := sequence.New(f, rec.Publish, sequence.Options{})
	defer seq.Close()
	ctx := context.Background()

	ok1, err := seq.Do(ctx, sequencetest.Req("g:f", "alice", "1", "one", "alice", "bob"))
	if err != nil {
		t.Fatal(err)
	}
	f.fail.Store(true)
	for i := range 3 {
		_, err := seq.Do(ctx, sequencetest.Req("g:f", "alice", fmt.Sprint("bad", i), "lost", "alice", "bob"))
		if store.ErrorCode(err) != store.CodeUnavailable {
			t.Fatalf("failed commit: %v, want Unavailable", err)
		}
	}
	f.fail.Store(false)
	ok2, err := seq.Do(ctx, sequencetest.Req("g:f", "alice", "bad0", "retried", "alice", "bob"))
	if err != nil || ok2.Duplicate {
		t.Fatalf("retry after failure: %+v %v (must not be a duplicate: nothing was stored)", ok2, err)
	}
	if ok2.MessageID <= ok1.MessageID {
		t.Fatal("id went backwards")
	}
	ds, _, _ := st.Inbox(ctx, "bob", 0, 100)
	if len(ds) != 2 || ds[0].Seq != 1 || ds[1].Seq != 2 || ds[1].Message.Text != "retried" {
		t.Fatalf("bob's inbox after failure: %+v (want dense seqs 1,2)", ds)
	}
	if rec.Count() != 2 {
		t.Fatalf("published %d, want 2 (failed batches are never published)", rec.Count())
	}
	if s := seq.Stats(); s.Failed != 3 {
		t.Fatalf("stats %+v", s)
	}
}

func TestCloseDrainsAndRejects(t *testing.T) {
	st := sequencetest.OpenPebble(t, t.TempDir())
	defer st.Close()
	seq := sequence.New(st, nil, sequence.Options{QueueSize: 16})
	var okCount atomic.Int32
	const n = 200
	var wg sync.WaitGroup
	wg.Add(n)
	go func() {
		for i := range n {
			seq.Submit(sequencetest.Req("g:c", "alice", fmt.Sprint(i), "x", "alice"), func(r sequence.Result) {
				if r.Err == nil {
					okCount.Add(1)
				} else if !errors.Is(r.Err, sequence.ErrClosed) {
					t.Errorf("unexpected error %v", r.Err)
				}
				wg.Done()
			})
		}
	}()
	time.Sleep(time.Millisecond) // let some requests in; Close must be correct at any point
	seq.Close()
	wg.Wait() // every done is called exactly once (a hang here is the failure)
	h, err := st.LastInboxSeq(context.Background(), "alice")
	if err != nil || h != uint64(okCount.Load()) {
		t.Fatalf("stored %d, acknowledged %d", h, okCount.Load())
	}
	_, err = seq.Do(context.Background(), sequencetest.Req("g:c", "alice", "late", "x", "alice"))
	if !errors.Is(err, sequence.ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}
	seq.Close() // idempotent
}

func TestDoContext(t *testing.T) {
	st := sequencetest.OpenPebble(t, t.TempDir())
	defer st.Close()
	seq := sequence.New(st, nil, sequence.Options{})
	defer seq.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	// A cancelled context fails either when queueing or waiting; never hangs.
	_, err := seq.Do(ctx, sequencetest.Req("g:x", "alice", "1", "x", "alice"))
	if err != nil && store.ErrorCode(err) != store.CodeCanceled {
		t.Fatalf("Do with cancelled ctx: %v", err)
	}
	_, err = seq.Do(context.Background(), &sequence.Request{SenderID: "alice"})
	if store.ErrorCode(err) != store.CodeInvalid {
		t.Fatalf("request without channel: %v", err)
	}
}

func TestPublishBeforeDone(t *testing.T) {
	st := sequencetest.OpenPebble(t, t.TempDir())
	defer st.Close()
	var published atomic.Int64
	seq := sequence.New(st, func(b []sequence.Committed) { published.Add(int64(len(b))) }, sequence.Options{})
	defer seq.Close()
	for i := range 50 {
		r, err := seq.Do(context.Background(), sequencetest.Req("g:p", "alice", fmt.Sprint(i), "x", "alice"))
		if err != nil {
			t.Fatal(err)
		}
		if published.Load() < int64(i+1) {
			t.Fatalf("done of message %d ran before its publish", i)
		}
		_ = r
	}
}

// TestCacheLimit: a tiny id cache is dropped and reloaded without breaking
// monotonic ids or dense seqs.
func TestCacheLimit(t *testing.T) {
	st := sequencetest.OpenPebble(t, t.TempDir())
	defer st.Close()
	seq := sequence.New(st, nil, sequence.Options{CacheLimit: 2, DedupCache: 2})
	defer seq.Close()
	ctx := context.Background()
	last := map[string]uint64{}
	for i := range 60 {
		ch := fmt.Sprintf("g:%d", i%5)
		r, err := seq.Do(ctx, sequencetest.Req(ch, "alice", fmt.Sprint(i), "x", "alice", fmt.Sprint("u", i%7)))
		if err != nil {
			t.Fatal(err)
		}
		if r.MessageID <= last[ch] {
			t.Fatalf("%s: id %d after %d", ch, r.MessageID, last[ch])
		}
		last[ch] = r.MessageID
	}
	if h, _ := seq.Head(ctx, "alice"); h != 60 {
		t.Fatalf("alice head %d", h)
	}
	// Old dedup keys are still found (in the store).
	r, err := seq.Do(ctx, sequencetest.Req("g:0", "alice", "0", "x", "alice"))
	if err != nil || !r.Duplicate {
		t.Fatalf("old key: %+v %v", r, err)
	}
}

func BenchmarkAssign(b *testing.B) {
	// Id assignment and commit of pipelined sends into one channel with 3
	// recipients (one group commit per drained batch).
	st := sequencetest.OpenPebble(b, b.TempDir())
	defer st.Close()
	seq := sequence.New(st, nil, sequence.Options{})
	defer seq.Close()
	recipients := []string{"alice", "bob", "carol"}
	var wg sync.WaitGroup
	b.ReportAllocs()
	b.ResetTimer()
	wg.Add(b.N)
	for i := 0; i < b.N; i++ {
		seq.Submit(&sequence.Request{ChannelID: "g:bench", SenderID: "alice", ClientMessageID: fmt.Sprint(i), Text: "hello world", Recipients: recipients},
			func(sequence.Result) { wg.Done() })
	}
	wg.Wait()
	b.StopTimer()
	s := seq.Stats()
	b.ReportMetric(float64(s.Messages)/float64(max(s.Batches, 1)), "msgs/batch")
}

func BenchmarkSubmitParallel(b *testing.B) {
	// Throughput with many concurrent senders in many channels.
	st := sequencetest.OpenPebble(b, b.TempDir())
	defer st.Close()
	seq := sequence.New(st, nil, sequence.Options{})
	defer seq.Close()
	sequencetest.SendParallel(b, seq, 16,
		func(id int64) string { return fmt.Sprint("u", id) },
		func(id int64) string { return fmt.Sprint("g:", id%8) },
		"bob", "carol")
}

// TestPrecheckAnswersStoredDuplicate: on a single node a retry of a send
// already in the store is answered on the caller's goroutine, before
// Submit returns, with the original ack, and stores nothing.
func TestPrecheckAnswersStoredDuplicate(t *testing.T) {
	st := sequencetest.OpenPebble(t, t.TempDir())
	defer st.Close()
	var rec sequencetest.Recorder
	seq := sequence.New(st, rec.Publish, sequence.Options{})
	defer seq.Close()
	orig, err := seq.Do(context.Background(), sequencetest.Req("g:1", "alice", "x", "hello", "alice", "bob"))
	if err != nil {
		t.Fatal(err)
	}
	var got sequence.Result
	called := false
	seq.Submit(sequencetest.Req("g:1", "alice", "x", "hello", "alice", "bob"), func(r sequence.Result) { got, called = r, true })
	if !called {
		t.Fatal("a stored duplicate was queued instead of answered at once")
	}
	if !got.Duplicate || got.MessageID != orig.MessageID || !got.CreatedAt.Equal(orig.CreatedAt) || got.Err != nil {
		t.Fatalf("duplicate result %+v, original %+v", got, orig)
	}
	if s := seq.Stats(); s.Messages != 1 || s.Duplicates != 1 {
		t.Fatalf("stats %+v, want 1 message and 1 duplicate", s)
	}
}

// TestPrecheckRace: retries whose pre-check ran before the original was
// committed are still answered as duplicates, by the LRU (default size)
// and, when more keys than the LRU holds were committed in between, by a
// store lookup on the sequencer goroutine. Each case blocks the sequencer
// in publish so that every request below is pre-checked before any of
// them commits; MaxBatch 1 puts each in a batch of its own.
func TestPrecheckRace(t *testing.T) {
	for _, c := range []struct {
		name    string
		cache   int
		fillers int
	}{{"lru", 0, 3}, {"evicted", 2, 8}} {
		t.Run(c.name, func(t *testing.T) {
			st := sequencetest.OpenPebble(t, t.TempDir())
			defer st.Close()
			gate := make(chan struct{})
			var once sync.Once
			var mu sync.Mutex
			var msgs int
			seq := sequence.New(st, func(b []sequence.Committed) {
				once.Do(func() { <-gate })
				mu.Lock()
				msgs += len(b)
				mu.Unlock()
			}, sequence.Options{MaxBatch: 1, DedupCache: c.cache})
			defer seq.Close()
			results := make(chan sequence.Result, 2+c.fillers)
			done := func(r sequence.Result) { results <- r }
			seq.Submit(sequencetest.Req("g:1", "alice", "blocker", "b", "alice"), func(sequence.Result) {})
			seq.Submit(sequencetest.Req("g:1", "alice", "x", "first", "alice"), done)
			for i := range c.fillers {
				seq.Submit(sequencetest.Req("g:1", "alice", fmt.Sprint("f", i), "f", "alice"), func(sequence.Result) {})
			}
			seq.Submit(sequencetest.Req("g:1", "alice", "x", "first", "alice"), done)
			close(gate)
			first, retry := <-results, <-results
			if first.Err != nil || first.Duplicate || retry.Err != nil || !retry.Duplicate || retry.MessageID != first.MessageID {
				t.Fatalf("first %+v, retry %+v: want the retry to be a duplicate of the first", first, retry)
			}
			seq.Close()
			if want := 2 + c.fillers; msgs != want {
				t.Fatalf("%d messages stored, want %d", msgs, want)
			}
		})
	}
}
