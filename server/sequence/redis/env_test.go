package redis_test

import (
	"context"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/chatd/chatd/server/internal/redistest"
	"github.com/chatd/chatd/server/internal/testenv"
	"github.com/chatd/chatd/server/sequence"
	seqredis "github.com/chatd/chatd/server/sequence/redis"
	"github.com/chatd/chatd/server/store/scylla"
)

// The tests need Redis (REDIS_ADDR, default 127.0.0.1:6379) and a CQL
// server (CQL_HOSTS, default 127.0.0.1:9042); scripts/services.sh up
// starts both. Without them the tests are skipped, or fail when CI=true.
// Keys in the shared Redis carry a prefix of their own per test and are
// deleted afterwards; tests that lose Redis data run a private
// redis-server. One keyspace per package run holds the chatd schema (its
// migrations create seq_bounds); it is dropped at the end.

// redisAddr is the shared test Redis (testenv.RedisAddr).
func redisAddr(t testing.TB) string { return testenv.RedisAddr(t) }

func newClient(t testing.TB, addr string) *goredis.Client { return redistest.Client(t, addr) }

// testPrefix returns a key prefix of its own for t; its keys are deleted
// when t ends.
func testPrefix(t testing.TB, addr string) string {
	prefix := redistest.NewPrefix("seq")
	t.Cleanup(func() {
		c := goredis.NewClient(&goredis.Options{Addr: addr})
		defer c.Close()
		_ = redistest.DeletePrefix(c, prefix)
	})
	return prefix
}

// ------------------------------------------------------------ CQL

var (
	storeOnce sync.Once
	ksStore   *scylla.Store
	storeErr  error
)

// testKeyspace holds the chatd schema (its migrations create seq_bounds).
var testKeyspace = testenv.Keyspace{
	Prefix: "chatd_seqtest_",
	Migrate: func(ctx context.Context, hosts []string, name string) error {
		return scylla.Migrate(ctx, scyllaConfig(hosts, name), scylla.SimpleStrategy, 1)
	},
}

func scyllaConfig(hosts []string, keyspace string) scylla.Config {
	return scylla.Config{Hosts: hosts, Keyspace: keyspace, Timeout: 20 * time.Second, Logger: slog.New(slog.DiscardHandler)}
}

// cluster returns the package's scylla store (the chatd schema, seq_bounds
// included, in a keyspace of this run).
func cluster(t testing.TB) *scylla.Store {
	t.Helper()
	ks := testKeyspace.Name(t)
	storeOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		ksStore, storeErr = scylla.Open(ctx, scyllaConfig(testenv.CQLHosts(t), ks))
	})
	if storeErr != nil {
		t.Fatalf("test keyspace: %v", storeErr)
	}
	return ksStore
}

// bounds returns the BoundStore chatd uses: the scylla store's seq_bounds
// table (created by its migrations).
func bounds(t testing.TB) seqredis.BoundStore {
	return cluster(t).Bounds()
}

func TestMain(m *testing.M) {
	code := m.Run()
	if ksStore != nil {
		ksStore.Close()
	}
	testKeyspace.Drop()
	os.Exit(code)
}

// newAlloc returns an allocator on the Redis at c.
func newAlloc(t testing.TB, c goredis.UniversalClient, prefix string, o seqredis.Config) *seqredis.Allocator {
	t.Helper()
	o.Client, o.Prefix = c, prefix
	if o.Bounds == nil {
		o.Bounds = bounds(t)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a, err := seqredis.New(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// recording wraps an allocator and records every range it allocated.
type recording struct {
	sequence.Allocator
	mu     sync.Mutex
	users  map[string][]sequence.Range
	chans  map[string][]sequence.Range
	after  map[string][]sequence.Range // user ranges allocated by calls that started after mark
	marked bool
}

func record(a sequence.Allocator) *recording {
	return &recording{Allocator: a, users: map[string][]sequence.Range{}, chans: map[string][]sequence.Range{}, after: map[string][]sequence.Range{}}
}

func (r *recording) Allocate(ctx context.Context, now time.Time, channels, users map[string]int) (*sequence.Allocation, error) {
	r.mu.Lock()
	marked := r.marked
	r.mu.Unlock()
	a, err := r.Allocator.Allocate(ctx, now, channels, users)
	if err != nil {
		return a, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for u, rg := range a.Users {
		r.users[u] = append(r.users[u], rg)
		if marked {
			r.after[u] = append(r.after[u], rg)
		}
	}
	for ch, rg := range a.Channels {
		r.chans[ch] = append(r.chans[ch], rg)
	}
	return a, nil
}

func (r *recording) mark() {
	r.mu.Lock()
	r.marked = true
	r.mu.Unlock()
}
