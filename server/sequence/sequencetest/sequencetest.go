// Package sequencetest is the behavioural suite every sequence.Allocator
// passes when it drives a sequence.Sequencer on a real store: ids increase,
// seqs increase and are never reused, dedup survives restarts, failed
// commits leave nothing acknowledged behind, and the horizon (Head) covers
// exactly what is readable.
package sequencetest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chatd/chatd/server/sequence"
	"github.com/chatd/chatd/server/store"
	"github.com/chatd/chatd/server/store/pebble"
)

// Harness describes the allocator under test.
type Harness struct {
	// New returns an allocator for a sequencer on st. Two calls on the
	// same store stand for a restart of the server (same Redis, same
	// durable bounds).
	New func(t testing.TB, st store.Messages) sequence.Allocator
	// Dense: the allocator hands out seqs without holes (LocalAllocator).
	Dense bool
}

// Run runs the suite. Every test uses user and channel names of its own,
// so allocators backed by shared services do not see each other's state.
func Run(t *testing.T, h Harness) {
	t.Run("IDsSeqsAndHead", func(t *testing.T) { testIDsSeqsAndHead(t, h) })
	t.Run("FIFOAndGroupCommit", func(t *testing.T) { testFIFO(t, h) })
	t.Run("DedupAcrossRestart", func(t *testing.T) { testDedup(t, h) })
	t.Run("KeyReusedForAnotherMessage", func(t *testing.T) { testKeyReuse(t, h) })
	t.Run("RestartNeverGoesBackwards", func(t *testing.T) { testRestart(t, h) })
	t.Run("CommitFailure", func(t *testing.T) { testCommitFailure(t, h) })
	t.Run("CloseDrains", func(t *testing.T) { testClose(t, h) })
	t.Run("PublishBeforeDone", func(t *testing.T) { testPublishBeforeDone(t, h) })
}

// Unique returns base with a random suffix.
func Unique(base string) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return base + "-" + hex.EncodeToString(b[:])
}

// OpenPebble opens a pebble store in dir, closed when t ends.
func OpenPebble(t testing.TB, dir string) *pebble.Store {
	t.Helper()
	st, err := pebble.Open(dir, pebble.WithLogger(nil))
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// Recorder collects published batches.
type Recorder struct {
	mu      sync.Mutex
	Batches [][]sequence.Committed
	msgs    int
}

// Publish is a sequencer publish callback.
func (r *Recorder) Publish(b []sequence.Committed) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Batches = append(r.Batches, b)
	r.msgs += len(b)
}

// CheckOrder fails t unless the published messages came in increasing
// message id order.
func (r *Recorder) CheckOrder(t testing.TB) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	var last uint64
	for _, b := range r.Batches {
		for _, c := range b {
			if c.Message.MessageID <= last {
				t.Fatal("published out of order")
			}
			last = c.Message.MessageID
		}
	}
}

// Count returns the number of published messages.
func (r *Recorder) Count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.msgs
}

// Req is a send request from sender's first device ("<sender>-d1").
func Req(ch, sender, cmid, text string, recipients ...string) *sequence.Request {
	return &sequence.Request{ChannelID: ch, SenderID: sender, SenderDeviceID: sender + "-d1", ClientMessageID: cmid, Text: text, Recipients: recipients}
}

// SendParallel is the body of a parallel send benchmark: b.RunParallel
// with parallelism goroutines per CPU, each a sender of its own
// (sender(id), id counting from 1) sending "hello world" in channel(id)
// to itself and others. It stops b's timer and reports msgs/batch.
func SendParallel(b *testing.B, seq *sequence.Sequencer, parallelism int, sender, channel func(id int64) string, others ...string) {
	var n atomic.Int64
	b.ReportAllocs()
	b.SetParallelism(parallelism)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		id := n.Add(1)
		sender := sender(id)
		ch := channel(id)
		recipients := append([]string{sender}, others...)
		i := 0
		for pb.Next() {
			i++
			_, err := seq.Do(context.Background(), &sequence.Request{ChannelID: ch, SenderID: sender, ClientMessageID: fmt.Sprint(i), Text: "hello world", Recipients: recipients})
			if err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	s := seq.Stats()
	b.ReportMetric(float64(s.Messages)/float64(max(s.Batches, 1)), "msgs/batch")
}

func newSeq(t testing.TB, h Harness, st store.Messages, publish func([]sequence.Committed), o sequence.Options) *sequence.Sequencer {
	o.Allocator = h.New(t, st)
	return sequence.New(st, publish, o)
}

// CheckInbox reads u's whole inbox up to Head and checks that seqs
// strictly increase (densely from 1 if dense) and that Head is the last
// one. It returns the deliveries.
func CheckInbox(t testing.TB, ctx context.Context, seq *sequence.Sequencer, st store.Messages, u string, dense bool) []store.Delivery {
	t.Helper()
	head, err := seq.Head(ctx, u)
	if err != nil {
		t.Fatalf("Head(%s): %v", u, err)
	}
	var all []store.Delivery
	after := uint64(0)
	for {
		ds, more, err := st.Inbox(ctx, u, after, 1000)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, ds...)
		if !more || len(ds) == 0 {
			break
		}
		after = ds[len(ds)-1].Seq
	}
	var prev uint64
	for i, d := range all {
		if d.Seq <= prev || (dense && d.Seq != uint64(i+1)) {
			t.Fatalf("inbox(%s)[%d]: seq %d after %d (dense=%v)", u, i, d.Seq, prev, dense)
		}
		prev = d.Seq
	}
	if prev > head {
		t.Fatalf("inbox(%s) holds seq %d above Head %d after every commit", u, prev, head)
	}
	if dense && head != prev {
		t.Fatalf("Head(%s) = %d, last seq %d", u, head, prev)
	}
	return all
}

func testIDsSeqsAndHead(t *testing.T, h Harness) {
	st := OpenPebble(t, t.TempDir())
	defer st.Close()
	var rec Recorder
	seq := newSeq(t, h, st, rec.Publish, sequence.Options{})
	defer seq.Close()
	ctx := context.Background()
	alice, bob, carol, dave := Unique("alice"), Unique("bob"), Unique("carol"), Unique("dave")
	ch := Unique("g")

	before := uint64(time.Now().UnixMilli()) << 16
	var prev uint64
	for i := range 20 {
		r, err := seq.Do(ctx, Req(ch, alice, fmt.Sprintf("c%d", i), fmt.Sprintf("hello %d", i), alice, bob, carol, bob))
		if err != nil {
			t.Fatal(err)
		}
		if r.Duplicate || r.MessageID <= prev || r.MessageID < before {
			t.Fatalf("message %d: id %d (prev %d, floor %d) dup=%v", i, r.MessageID, prev, before, r.Duplicate)
		}
		prev = r.MessageID
	}
	for _, u := range []string{alice, bob, carol} {
		ds := CheckInbox(t, ctx, seq, st, u, h.Dense)
		if len(ds) != 20 {
			t.Fatalf("inbox(%s): %d entries", u, len(ds))
		}
		for i, d := range ds {
			if d.Message.Text != fmt.Sprintf("hello %d", i) {
				t.Fatalf("inbox(%s)[%d] = %q", u, i, d.Message.Text)
			}
		}
		if hd, _ := seq.Head(ctx, u); hd != ds[19].Seq {
			t.Fatalf("Head(%s) = %d after all commits, last seq %d", u, hd, ds[19].Seq)
		}
	}
	if hd, err := seq.Head(ctx, dave); err != nil || hd != 0 {
		t.Fatalf("head of an empty inbox = %d, %v", hd, err)
	}
	if rec.Count() != 20 {
		t.Fatalf("published %d messages, want 20", rec.Count())
	}
	for _, b := range rec.Batches {
		for _, c := range b {
			if len(c.Inbox) != 3 {
				t.Fatalf("committed message has %d inbox entries, want 3", len(c.Inbox))
			}
		}
	}
}

func testFIFO(t *testing.T, h Harness) {
	st := OpenPebble(t, t.TempDir())
	defer st.Close()
	var rec Recorder
	seq := newSeq(t, h, st, rec.Publish, sequence.Options{})
	alice, bob := Unique("alice"), Unique("bob")
	ch := Unique("g")
	const n = 1000
	results := SubmitN(seq, n, ch, alice, alice, bob)
	batches := seq.Stats().Batches
	CheckFIFO(t, results)
	ds := CheckInbox(t, context.Background(), seq, st, bob, h.Dense)
	seq.Close()
	if len(ds) != n {
		t.Fatalf("bob's inbox: %d entries", len(ds))
	}
	CheckDeliveries(t, ds, results)
	if batches >= n {
		t.Fatalf("%d batches for %d pipelined requests: no group commit", batches, n)
	}
	rec.CheckOrder(t)
}

// SubmitN submits n pipelined requests from one goroutine, the i-th with
// client_message_id "m<i>" and text "<i>", and returns their results once
// all are done.
func SubmitN(seq *sequence.Sequencer, n int, ch, sender string, recipients ...string) []sequence.Result {
	results := make([]sequence.Result, n)
	var wg sync.WaitGroup
	wg.Add(n)
	for i := range n {
		seq.Submit(Req(ch, sender, fmt.Sprintf("m%d", i), fmt.Sprint(i), recipients...), func(r sequence.Result) {
			results[i] = r
			wg.Done()
		})
	}
	wg.Wait()
	return results
}

// CheckFIFO fails t if a result is an error, or its message id is not
// above the previous result's.
func CheckFIFO(t testing.TB, results []sequence.Result) {
	t.Helper()
	for i := range results {
		if results[i].Err != nil {
			t.Fatal(results[i].Err)
		}
		if i > 0 && results[i].MessageID <= results[i-1].MessageID {
			t.Fatalf("request %d got id %d <= previous %d", i, results[i].MessageID, results[i-1].MessageID)
		}
	}
}

// CheckDeliveries fails t unless ds[i] is the message of results[i] with
// text "<i>" (SubmitN's), for every i of ds.
func CheckDeliveries(t testing.TB, ds []store.Delivery, results []sequence.Result) {
	t.Helper()
	for i, d := range ds {
		if d.Message.Text != fmt.Sprint(i) || d.Message.MessageID != results[i].MessageID {
			t.Fatalf("inbox[%d] = %q id %d; want %d id %d", i, d.Message.Text, d.Message.MessageID, i, results[i].MessageID)
		}
	}
}

func testDedup(t *testing.T, h Harness) {
	dir := t.TempDir()
	st := OpenPebble(t, dir)
	var rec Recorder
	seq := newSeq(t, h, st, rec.Publish, sequence.Options{})
	ctx := context.Background()
	alice, bob := Unique("alice"), Unique("bob")
	ch := Unique("dm")

	const n = 30
	results := make([]sequence.Result, n)
	var wg sync.WaitGroup
	wg.Add(n)
	for i := range n {
		seq.Submit(Req(ch, alice, "same", "hello", alice, bob), func(r sequence.Result) {
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
		if r.Err != nil || !r.Duplicate || r.MessageID != results[0].MessageID || !r.CreatedAt.Equal(results[0].CreatedAt) {
			t.Fatalf("repeat %d: %+v, original %+v", i, r, results[0])
		}
	}
	seq.Close()
	st.Close()

	st = OpenPebble(t, dir)
	defer st.Close()
	rec = Recorder{}
	seq = newSeq(t, h, st, rec.Publish, sequence.Options{})
	defer seq.Close()
	r, err := seq.Do(ctx, Req(ch, alice, "same", "hello", alice, bob))
	if err != nil || !r.Duplicate || r.MessageID != results[0].MessageID {
		t.Fatalf("after restart: %+v %v, want duplicate of %+v", r, err, results[0])
	}
	ds := CheckInbox(t, ctx, seq, st, bob, h.Dense)
	if len(ds) != 1 || rec.Count() != 0 {
		t.Fatalf("bob has %d entries (want 1), published %d (want 0)", len(ds), rec.Count())
	}
}

func testRestart(t *testing.T, h Harness) {
	dir := t.TempDir()
	ctx := context.Background()
	alice := Unique("alice")
	ch := Unique("g")
	future := time.Now().Add(time.Hour)
	st := OpenPebble(t, dir)
	seq := newSeq(t, h, st, nil, sequence.Options{Now: func() time.Time { return future }})
	var last uint64
	for i := range 5 {
		r, err := seq.Do(ctx, Req(ch, alice, fmt.Sprint("a", i), "x", alice))
		if err != nil {
			t.Fatal(err)
		}
		last = r.MessageID
	}
	hd1, _ := seq.Head(ctx, alice)
	seq.Close()
	st.Close()

	st = OpenPebble(t, dir)
	defer st.Close()
	seq = newSeq(t, h, st, nil, sequence.Options{}) // real clock: an hour behind
	defer seq.Close()
	r, err := seq.Do(ctx, Req(ch, alice, "b0", "y", alice))
	if err != nil {
		t.Fatal(err)
	}
	if r.MessageID <= last || (h.Dense && r.MessageID != last+1) {
		t.Fatalf("after restart id %d, last before %d", r.MessageID, last)
	}
	hd2, _ := seq.Head(ctx, alice)
	if hd2 <= hd1 || (h.Dense && hd2 != 6) {
		t.Fatalf("head %d after restart, %d before", hd2, hd1)
	}
	CheckInbox(t, ctx, seq, st, alice, h.Dense)
}

// Failing wraps a store and fails AppendBatch while Fail is set (a disk
// or cluster failure cannot be provoked on demand).
type Failing struct {
	store.Messages
	Fail atomic.Bool
}

// AppendBatch implements store.Messages.
func (f *Failing) AppendBatch(ctx context.Context, b *store.Batch) error {
	if f.Fail.Load() {
		return errors.New("disk on fire")
	}
	return f.Messages.AppendBatch(ctx, b)
}

func testCommitFailure(t *testing.T, h Harness) {
	st := OpenPebble(t, t.TempDir())
	defer st.Close()
	f := &Failing{Messages: st}
	var rec Recorder
	seq := newSeq(t, h, f, rec.Publish, sequence.Options{})
	defer seq.Close()
	ctx := context.Background()
	alice, bob := Unique("alice"), Unique("bob")
	ch := Unique("g")

	ok1, err := seq.Do(ctx, Req(ch, alice, "1", "one", alice, bob))
	if err != nil {
		t.Fatal(err)
	}
	f.Fail.Store(true)
	for i := range 3 {
		_, err := seq.Do(ctx, Req(ch, alice, fmt.Sprint("bad", i), "lost", alice, bob))
		if store.ErrorCode(err) != store.CodeUnavailable {
			t.Fatalf("failed commit: %v, want Unavailable", err)
		}
	}
	// Aborted seqs never hold the horizon back.
	if hd, err := seq.Head(ctx, bob); err != nil || hd < 1 {
		t.Fatalf("head after failures %d, %v", hd, err)
	}
	f.Fail.Store(false)
	ok2, err := seq.Do(ctx, Req(ch, alice, "bad0", "retried", alice, bob))
	if err != nil || ok2.Duplicate {
		t.Fatalf("retry after failure: %+v %v (must not be a duplicate: nothing was stored)", ok2, err)
	}
	if ok2.MessageID <= ok1.MessageID {
		t.Fatal("id went backwards")
	}
	ds := CheckInbox(t, ctx, seq, st, bob, h.Dense)
	if len(ds) != 2 || ds[1].Message.Text != "retried" {
		t.Fatalf("bob's inbox after failure: %+v", ds)
	}
	if hd, _ := seq.Head(ctx, bob); hd != ds[1].Seq {
		t.Fatalf("head %d, last entry %d", hd, ds[1].Seq)
	}
	if rec.Count() != 2 {
		t.Fatalf("published %d, want 2 (failed batches are never published)", rec.Count())
	}
	if s := seq.Stats(); s.Failed != 3 {
		t.Fatalf("stats %+v", s)
	}
}

func testClose(t *testing.T, h Harness) {
	st := OpenPebble(t, t.TempDir())
	defer st.Close()
	seq := newSeq(t, h, st, nil, sequence.Options{QueueSize: 16})
	alice := Unique("alice")
	ch := Unique("g")
	var okCount atomic.Int32
	const n = 200
	var wg sync.WaitGroup
	wg.Add(n)
	go func() {
		for i := range n {
			seq.Submit(Req(ch, alice, fmt.Sprint(i), "x", alice), func(r sequence.Result) {
				if r.Err == nil {
					okCount.Add(1)
				} else if !errors.Is(r.Err, sequence.ErrClosed) {
					t.Errorf("unexpected error %v", r.Err)
				}
				wg.Done()
			})
		}
	}()
	time.Sleep(time.Millisecond)
	seq.Close()
	wg.Wait()
	ds, _, err := st.Inbox(context.Background(), alice, 0, n+1)
	if err != nil || len(ds) != int(okCount.Load()) {
		t.Fatalf("stored %d, acknowledged %d (%v)", len(ds), okCount.Load(), err)
	}
	if _, err := seq.Do(context.Background(), Req(ch, alice, "late", "x", alice)); !errors.Is(err, sequence.ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}
}

func testPublishBeforeDone(t *testing.T, h Harness) {
	st := OpenPebble(t, t.TempDir())
	defer st.Close()
	var published atomic.Int64
	seq := newSeq(t, h, st, func(b []sequence.Committed) { published.Add(int64(len(b))) }, sequence.Options{})
	defer seq.Close()
	alice := Unique("alice")
	ch := Unique("g")
	for i := range 30 {
		if _, err := seq.Do(context.Background(), Req(ch, alice, fmt.Sprint(i), "x", alice)); err != nil {
			t.Fatal(err)
		}
		if published.Load() < int64(i+1) {
			t.Fatalf("done of message %d ran before its publish", i)
		}
	}
}

// IsReuse reports whether r is the refusal of a client_message_id reused
// for a different message: FailedPrecondition naming the clash, nothing
// stored.
func IsReuse(r sequence.Result) bool {
	return r.Err != nil && store.ErrorCode(r.Err) == store.CodeFailedPrecondition &&
		strings.Contains(r.Err.Error(), "client_message_id reused for a different message") && r.MessageID == 0 && !r.Duplicate
}

// testKeyReuse: a client_message_id that already names a message of its
// sender is refused (FailedPrecondition, nothing stored) when sent again
// with another channel, text, kind or ref, and answered as a duplicate
// when sent again as it was; on every dedup path: the in-memory LRU, the
// store (after a restart, with an empty LRU), and an earlier request of
// the same batch (held back behind a blocked publish).
func testKeyReuse(t *testing.T, h Harness) {
	dir := t.TempDir()
	st := OpenPebble(t, dir)
	gate := make(chan struct{})
	var gated atomic.Bool
	var msgs atomic.Int64
	publish := func(b []sequence.Committed) {
		if gated.Load() {
			<-gate
		}
		msgs.Add(int64(len(b)))
	}
	seq := newSeq(t, h, st, publish, sequence.Options{})
	ctx := context.Background()
	alice, bob, carol := Unique("alice"), Unique("bob"), Unique("carol")
	dmBob, dmCarol := Unique("dm-bob"), Unique("dm-carol")
	orig := Req(dmBob, alice, "k", "text A", alice, bob)
	first, err := seq.Do(ctx, orig)
	if err != nil || first.Duplicate {
		t.Fatalf("first send: %+v, %v", first, err)
	}
	variants := func() map[string]*sequence.Request {
		edit := Req(dmBob, alice, "k", "text A", alice, bob)
		edit.Kind, edit.RefMessageID = store.KindEdit, first.MessageID
		ref := Req(dmBob, alice, "k", "text A", alice, bob)
		ref.RefMessageID = 7
		return map[string]*sequence.Request{
			"other channel":          Req(dmCarol, alice, "k", "text A", alice, carol),
			"other channel and text": Req(dmCarol, alice, "k", "text B", alice, carol),
			"other text":             Req(dmBob, alice, "k", "text B", alice, bob),
			"other kind and ref":     edit,
			"other ref":              ref,
		}
	}
	check := func(path string) {
		t.Helper()
		for name, req := range variants() {
			r, _ := seq.Do(ctx, req)
			if !IsReuse(r) {
				t.Errorf("%s, %s: %+v; want FailedPrecondition \"client_message_id reused for a different message\"", path, name, r)
			}
		}
		r, err := seq.Do(ctx, Req(dmBob, alice, "k", "text A", alice, bob))
		if err != nil || !r.Duplicate || r.MessageID != first.MessageID {
			t.Errorf("%s, the same send again: %+v, %v; want a duplicate of %d", path, r, err, first.MessageID)
		}
	}
	check("LRU")
	seq.Close()
	st.Close()

	st = OpenPebble(t, dir)
	defer st.Close()
	seq = newSeq(t, h, st, publish, sequence.Options{})
	defer seq.Close()
	check("store after restart")

	// The same batch: a blocker holds the sequencer in publish while the
	// others queue up, so they are taken in one batch: a new key with two
	// contents (the first stored, the second refused), and the stored key
	// reused then retried (refused, then a duplicate).
	gated.Store(true)
	blocked := make(chan sequence.Result, 1)
	seq.Submit(Req(dmBob, alice, "blocker", "b", alice, bob), func(r sequence.Result) { blocked <- r })
	time.Sleep(50 * time.Millisecond)
	gated.Store(false)
	reqs := []*sequence.Request{
		Req(dmBob, alice, "k2", "new A", alice, bob),
		Req(dmCarol, alice, "k2", "new B", alice, carol),
		Req(dmCarol, alice, "k", "text B", alice, carol),
		Req(dmBob, alice, "k", "text A", alice, bob),
		Req(dmBob, alice, "k2", "new A", alice, bob),
	}
	res := make([]chan sequence.Result, len(reqs))
	for i, req := range reqs {
		res[i] = make(chan sequence.Result, 1)
		seq.Submit(req, func(r sequence.Result) { res[i] <- r })
	}
	close(gate)
	<-blocked
	got := make([]sequence.Result, len(reqs))
	for i := range reqs {
		got[i] = <-res[i]
	}
	if got[0].Err != nil || got[0].Duplicate {
		t.Errorf("batch: new key: %+v", got[0])
	}
	if !IsReuse(got[1]) {
		t.Errorf("batch: new key with other content: %+v; want refused", got[1])
	}
	if !IsReuse(got[2]) {
		t.Errorf("batch: stored key with other content: %+v; want refused", got[2])
	}
	if !got[3].Duplicate || got[3].Err != nil || got[3].MessageID != first.MessageID {
		t.Errorf("batch: stored key, same content: %+v; want a duplicate of %d", got[3], first.MessageID)
	}
	if !got[4].Duplicate || got[4].Err != nil || got[4].MessageID != got[0].MessageID {
		t.Errorf("batch: new key, same content again: %+v; want a duplicate of %+v", got[4], got[0])
	}
	if ds := CheckInbox(t, ctx, seq, st, carol, h.Dense); len(ds) != 0 {
		t.Errorf("carol's inbox holds %d entries, want none: every send to her reused a key", len(ds))
	}
	if ds := CheckInbox(t, ctx, seq, st, bob, h.Dense); len(ds) != 3 {
		t.Errorf("bob's inbox holds %d entries, want 3 (k, blocker, k2)", len(ds))
	}
	if n := msgs.Load(); n != 3 {
		t.Errorf("published %d messages, want 3", n)
	}
}
