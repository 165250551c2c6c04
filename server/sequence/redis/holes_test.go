package redis_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/chatd/chatd/server/internal/testenv"
	seqredis "github.com/chatd/chatd/server/sequence/redis"
	"github.com/chatd/chatd/server/sequence/sequencetest"
)

// slowBounds is an in-memory BoundStore (a max register per key,
// linearizable) whose calls take a random 0-3 ms, so that allocators
// settling the same key interleave their Get and Reserve calls.
type slowBounds struct {
	mu sync.Mutex
	m  map[string]uint64
}

func (b *slowBounds) pause() { time.Sleep(time.Duration(rand.IntN(3000)) * time.Microsecond) }

func (b *slowBounds) Get(ctx context.Context, key string) (uint64, error) {
	b.pause()
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.m[key], nil
}

func (b *slowBounds) Reserve(ctx context.Context, key string, atLeast uint64) error {
	b.pause()
	b.mu.Lock()
	b.m[key] = max(b.m[key], atLeast)
	b.mu.Unlock()
	b.pause()
	return nil
}

// TestHoleBoundConcurrentInit: after Redis loses its data, several servers
// settle INIT for the same users at once, flush after flush. The hole a
// loss leaves in a user's seqs (first seq after it - last seq before it -
// 1) stays at most Step + n (n: the seqs one batch takes for the user),
// and the durable bound never runs more than Step + n ahead of the last
// allocated seq (no loser of the setup race leaves a higher bound behind
// for the next loss to jump to). Channel message ids run ahead of the
// clock by at most one ChannelStep per loss (the losses here come faster
// than ChannelStep, so they add up), not one per server.
func TestHoleBoundConcurrentInit(t *testing.T) {
	for _, perKey := range []bool{false, true} {
		t.Run(fmt.Sprintf("perKey=%v", perKey), func(t *testing.T) { testHoleBound(t, perKey) })
	}
}

func testHoleBound(t *testing.T, perKey bool) {
	pr := testenv.StartRedis(t)
	const (
		servers = 4
		step    = 1000
		n       = 2
		flushes = 8
	)
	cstep := time.Second
	bs := &slowBounds{m: map[string]uint64{}}
	var allocs []*seqredis.Allocator
	for range servers {
		c := newClient(t, pr.Addr())
		a := newAlloc(t, c, "holes:", seqredis.Config{Bounds: bs, Step: step, ChannelStep: cstep})
		if perKey {
			seqredis.ForcePerKey(a)
		}
		allocs = append(allocs, a)
	}
	admin := goredis.NewClient(&goredis.Options{Addr: pr.Addr()})
	t.Cleanup(func() { admin.Close() })
	var users []string
	for i := range 3 {
		users = append(users, sequencetest.Unique(fmt.Sprintf("h%d", i)))
	}
	ch := sequencetest.Unique("hch")
	ctx := context.Background()
	last := map[string]uint64{} // highest seq allocated so far
	worst := uint64(0)
	for round := range flushes + 1 {
		if round > 0 {
			if err := admin.FlushAll(ctx).Err(); err != nil {
				t.Fatal(err)
			}
		}
		type res struct {
			users map[string][2]uint64
			chID  uint64
			err   error
		}
		out := make([]res, servers)
		var wg sync.WaitGroup
		start := time.Now()
		for i, a := range allocs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				us := map[string]int{}
				for _, u := range users {
					us[u] = n
				}
				al, err := a.Allocate(ctx, time.Now(), map[string]int{ch: 1}, us)
				if err != nil {
					out[i].err = err
					return
				}
				out[i].users = map[string][2]uint64{}
				for u, r := range al.Users {
					out[i].users[u] = [2]uint64{r.First, r.Last}
				}
				out[i].chID = al.Channels[ch].First
				if err := a.Commit(ctx, al); err != nil {
					out[i].err = err
				}
			}()
		}
		wg.Wait()
		for _, o := range out {
			if o.err != nil {
				t.Fatalf("round %d: %v", round, o.err)
			}
			// Message ids: a loss resumes a channel at its durable bound,
			// at most ChannelStep ahead of the clock of the reservation,
			// so each loss adds at most one ChannelStep (+1 ms) to how
			// far ids run ahead of the clock; here all losses fall within
			// one ChannelStep.
			limit := int64(round+1)*(cstep.Milliseconds()+1) + int64(time.Since(start)/time.Millisecond)
			if ahead := int64(o.chID>>16) - start.UnixMilli(); ahead > limit {
				t.Errorf("round %d: message id %d ms ahead of the clock, more than %d ms (ChannelStep %v per loss)", round, ahead, limit, cstep)
			}
		}
		for _, u := range users {
			lo, hi := uint64(0), uint64(0)
			for _, o := range out {
				r := o.users[u]
				if lo == 0 || r[0] < lo {
					lo = r[0]
				}
				hi = max(hi, r[1])
			}
			if round > 0 {
				hole := lo - last[u] - 1
				worst = max(worst, hole)
				if hole > step+n {
					t.Errorf("round %d: %s jumped from %d to %d: a hole of %d, bound Step+n = %d", round, u, last[u], lo, hole, step+n)
				}
			}
			last[u] = hi
			b, _ := bs.Get(ctx, seqredis.BoundKeyUser(u))
			if b > hi+step+n {
				t.Errorf("round %d: %s: durable bound %d is %d above the last allocated seq %d (Step+n = %d)", round, u, b, b-hi, hi, step+n)
			}
		}
	}
	t.Logf("%d servers, %d flushes: largest hole %d (Step %d, n %d)", servers, flushes, worst, step, n)
}
