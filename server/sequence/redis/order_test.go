package redis_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
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
