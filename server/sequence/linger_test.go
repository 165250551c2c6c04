package sequence_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/chatd/chatd/server/sequence"
	"github.com/chatd/chatd/server/sequence/sequencetest"
)

// Under load (requests arriving while the previous batch was just
// written) a batch waits up to CommitLinger for more requests, so a trickle
// of sends, each one alone in the queue, is written in a few commits
// rather than one each. Without the linger each is its own batch.
func TestCommitLingerGroupsATrickle(t *testing.T) {
	for _, tc := range []struct {
		name   string
		linger time.Duration
		check  func(batches uint64) bool
		want   string
	}{
		{"off", 0, func(b uint64) bool { return b >= 8 }, ">= 8 (about one per send; fewer only when a commit took longer than the gaps)"},
		{"on", 500 * time.Millisecond, func(b uint64) bool { return b <= 5 }, "<= 5"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := sequencetest.OpenPebble(t, t.TempDir())
			defer st.Close()
			seq := sequence.New(st, nil, sequence.Options{CommitLinger: tc.linger})
			defer seq.Close()
			ctx := context.Background()
			// An idle sequencer does not linger: the first send is written
			// at once (far sooner than the linger).
			t0 := time.Now()
			if _, err := seq.Do(ctx, sequencetest.Req("g:1", "alice", "first", "hi", "alice", "bob")); err != nil {
				t.Fatal(err)
			}
			if tc.linger > 0 && time.Since(t0) >= tc.linger {
				t.Fatalf("first send on an idle sequencer took %v: it lingered", time.Since(t0))
			}
			before := seq.Stats().Batches
			// 20 sends 10 ms apart, each alone in the queue when it comes.
			results := make(chan error, 20)
			for i := range 20 {
				seq.Submit(sequencetest.Req("g:1", "alice", fmt.Sprintf("c%d", i), "hi", "alice", "bob"), func(r sequence.Result) { results <- r.Err })
				time.Sleep(10 * time.Millisecond)
			}
			for range 20 {
				if err := <-results; err != nil {
					t.Fatal(err)
				}
			}
			if b := seq.Stats().Batches - before; !tc.check(b) {
				t.Fatalf("20 sends 10 ms apart took %d batches, want %s", b, tc.want)
			}
		})
	}
}
