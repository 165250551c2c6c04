package sequence_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/chatd/chatd/server/sequence"
	"github.com/chatd/chatd/server/sequence/sequencetest"
	"github.com/chatd/chatd/server/store"
)

// slowCommits wraps the real store and makes every AppendBatch take d
// longer, as a slow disk's fsync does: sends arriving meanwhile queue up.
type slowCommits struct {
	store.Messages
	d time.Duration
}

func (s slowCommits) AppendBatch(ctx context.Context, b *store.Batch) error {
	time.Sleep(s.d)
	return s.Messages.AppendBatch(ctx, b)
}

// Under load from several senders (sends arriving while a batch is being
// written) a batch waits up to CommitLinger for more sends, so a stream of
// sends 3 ms apart is written in a few commits rather than one per
// commit's duration. Without the linger each commit (10 ms here) takes
// what arrived during the previous one.
func TestCommitLingerGroupsSendsUnderLoad(t *testing.T) {
	for _, tc := range []struct {
		name   string
		linger time.Duration
		check  func(batches uint64) bool
		want   string
	}{
		{"off", 0, func(b uint64) bool { return b >= 5 }, ">= 5 (one per 10 ms commit, give or take)"},
		{"on", 100 * time.Millisecond, func(b uint64) bool { return b <= 3 }, "<= 3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := sequencetest.OpenPebble(t, t.TempDir())
			defer st.Close()
			seq := sequence.New(slowCommits{st, 10 * time.Millisecond}, nil, sequence.Options{CommitLinger: tc.linger})
			defer seq.Close()
			// 20 senders, one send each, 3 ms apart: 60 ms of sends.
			results := make(chan error, 20)
			for i := range 20 {
				seq.Submit(sequencetest.Req("g:1", fmt.Sprint("u", i), "c", "hi", fmt.Sprint("u", i), "bob"), func(r sequence.Result) { results <- r.Err })
				time.Sleep(3 * time.Millisecond)
			}
			for range 20 {
				if err := <-results; err != nil {
					t.Fatal(err)
				}
			}
			if b := seq.Stats().Batches; !tc.check(b) {
				t.Fatalf("20 sends 3 ms apart took %d batches, want %s", b, tc.want)
			}
		})
	}
}

// A lone sender that waits for each ack before its next send never
// lingers: nothing else arrives while its batch is written, so the linger
// would only add to every one of its sends (found by the first tryout:
// each send paid the whole linger). Nor does a send on an idle server.
func TestCommitLingerSpareLoneSender(t *testing.T) {
	st := sequencetest.OpenPebble(t, t.TempDir())
	defer st.Close()
	const linger = 100 * time.Millisecond
	seq := sequence.New(st, nil, sequence.Options{CommitLinger: linger})
	defer seq.Close()
	ctx := context.Background()
	t0 := time.Now()
	const n = 20
	for i := range n {
		if _, err := seq.Do(ctx, sequencetest.Req("g:1", "alice", fmt.Sprint("c", i), "hi", "alice", "bob")); err != nil {
			t.Fatal(err)
		}
	}
	// Lingering would take n x 100 ms = 2 s at least.
	if took := time.Since(t0); took >= n*linger/2 {
		t.Fatalf("%d sequential sends took %v: the lone sender lingered", n, took)
	}
	if b := seq.Stats().Batches; b != n {
		t.Fatalf("%d sequential sends in %d batches, want one each", n, b)
	}
}

// New clamps CommitLinger to MaxCommitLinger: a send arriving under load
// waits at most that long, whatever was configured.
func TestCommitLingerClamped(t *testing.T) {
	st := sequencetest.OpenPebble(t, t.TempDir())
	defer st.Close()
	seq := sequence.New(slowCommits{st, 10 * time.Millisecond}, nil, sequence.Options{CommitLinger: time.Hour})
	defer seq.Close()
	results := make(chan time.Duration, 4)
	for i := range 4 {
		t0 := time.Now()
		seq.Submit(sequencetest.Req("g:1", fmt.Sprint("u", i), "c", "hi", fmt.Sprint("u", i), "bob"), func(sequence.Result) { results <- time.Since(t0) })
		time.Sleep(3 * time.Millisecond)
	}
	for range 4 {
		select {
		case <-results:
		case <-time.After(10 * time.Second):
			t.Fatal("a send waited 10 s with CommitLinger 1h: not clamped")
		}
	}
}
