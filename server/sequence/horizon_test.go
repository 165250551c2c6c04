package sequence_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/chatd/chatd/server/sequence"
	"github.com/chatd/chatd/server/sequence/sequencetest"
	"github.com/chatd/chatd/server/store"
)

// countingStore counts the store reads of the horizon.
type countingStore struct {
	store.Messages
	lastSeqReads atomic.Int64
}

func (c *countingStore) LastInboxSeq(ctx context.Context, userID string) (uint64, error) {
	c.lastSeqReads.Add(1)
	return c.Messages.LastInboxSeq(ctx, userID)
}

// TestHeadFromMemory: once a user's horizon is known (read once, or
// committed), Head answers from memory and still follows every commit.
func TestHeadFromMemory(t *testing.T) {
	pst := sequencetest.OpenPebble(t, t.TempDir())
	defer pst.Close()
	st := &countingStore{Messages: pst}
	seq := sequence.New(st, nil, sequence.Options{Allocator: sequence.NewLocalAllocator(st)})
	defer seq.Close()
	ctx := context.Background()
	if h, err := seq.Head(ctx, "bob"); err != nil || h != 0 {
		t.Fatalf("head of an empty inbox: %d, %v", h, err)
	}
	for i := range 10 {
		if _, err := seq.Do(ctx, sequencetest.Req("g:1", "alice", fmt.Sprint(i), "hi", "alice", "bob")); err != nil {
			t.Fatal(err)
		}
		if h, err := seq.Head(ctx, "bob"); err != nil || h != uint64(i+1) {
			t.Fatalf("head after %d commits: %d, %v", i+1, h, err)
		}
	}
	reads := st.lastSeqReads.Load()
	for range 100 {
		if h, _ := seq.Head(ctx, "alice"); h != 10 {
			t.Fatalf("alice head %d, want 10", h)
		}
	}
	if n := st.lastSeqReads.Load() - reads; n != 0 {
		t.Fatalf("100 heads of a committed user read the store %d times, want 0", n)
	}
}

// TestHeadNeverBackwards: with a cache so small that it is dropped all the
// time, concurrent readers of Head never see a user's horizon go down
// while batches commit.
func TestHeadNeverBackwards(t *testing.T) {
	st := sequencetest.OpenPebble(t, t.TempDir())
	defer st.Close()
	seq := sequence.New(st, nil, sequence.Options{CacheLimit: 2})
	defer seq.Close()
	ctx := context.Background()
	users := []string{"u0", "u1", "u2", "u3", "u4", "u5", "u6", "u7"}
	var stop atomic.Bool
	var wg sync.WaitGroup
	errs := make(chan error, len(users))
	for _, u := range users {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var last uint64
			for !stop.Load() {
				h, err := seq.Head(ctx, u)
				if err != nil {
					errs <- err
					return
				}
				if h < last {
					errs <- fmt.Errorf("%s: head %d after %d", u, h, last)
					return
				}
				last = h
			}
		}()
	}
	for i := range 100 {
		u := users[i%len(users)]
		if _, err := seq.Do(ctx, sequencetest.Req("g:"+u, u, fmt.Sprint(i), "x", u, users[(i+1)%len(users)])); err != nil {
			t.Fatal(err)
		}
	}
	stop.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for _, u := range users {
		h, _ := seq.Head(ctx, u)
		if want, _ := st.LastInboxSeq(ctx, u); h != want {
			t.Errorf("%s: head %d, store %d", u, h, want)
		}
	}
}

// BenchmarkHead is the head check of every Ack: the horizon of a user
// with committed messages.
func BenchmarkHead(b *testing.B) {
	st := sequencetest.OpenPebble(b, b.TempDir())
	defer st.Close()
	seq := sequence.New(st, nil, sequence.Options{})
	defer seq.Close()
	ctx := context.Background()
	const users = 1000
	for i := range users {
		if _, err := seq.Do(ctx, sequencetest.Req(fmt.Sprint("g:", i), fmt.Sprint("u", i), "m", "x", fmt.Sprint("u", i), fmt.Sprint("u", (i+1)%users))); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, err := seq.Head(ctx, fmt.Sprint("u", i%users)); err != nil {
				b.Error(err)
			}
			i++
		}
	})
}
