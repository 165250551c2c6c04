package redis_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

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

func need(t testing.TB, msg string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

func redisAddr(t testing.TB) string {
	t.Helper()
	addr := os.Getenv("REDIS_ADDR")
	if addr == "" {
		addr = "127.0.0.1:6379"
	}
	c := goredis.NewClient(&goredis.Options{Addr: addr, MaxRetries: -1})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		need(t, fmt.Sprintf("no Redis at %s (set REDIS_ADDR, or run scripts/services.sh up): %v", addr, err))
	}
	return addr
}

func newClient(t testing.TB, addr string) *goredis.Client {
	c := goredis.NewClient(&goredis.Options{Addr: addr})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// testPrefix returns a key prefix of its own for t; its keys are deleted
// when t ends.
func testPrefix(t testing.TB, addr string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	prefix := "test:seq:" + hex.EncodeToString(b[:]) + ":"
	t.Cleanup(func() {
		c := goredis.NewClient(&goredis.Options{Addr: addr})
		defer c.Close()
		ctx := context.Background()
		iter := c.Scan(ctx, 0, prefix+"*", 1000).Iterator()
		var keys []string
		for iter.Next(ctx) {
			keys = append(keys, iter.Val())
		}
		for _, k := range keys {
			_ = c.Del(ctx, k).Err()
		}
	})
	return prefix
}

// privateRedis is a redis-server process of one test, without
// persistence, on a free port.
type privateRedis struct {
	t    testing.TB
	port int
	cmd  *exec.Cmd
}

func startPrivateRedis(t testing.TB) *privateRedis {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		need(t, "redis-server not installed (scripts/services.sh installs it)")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	r := &privateRedis{t: t, port: port}
	r.start()
	t.Cleanup(r.stop)
	return r
}

func (r *privateRedis) addr() string { return fmt.Sprintf("127.0.0.1:%d", r.port) }

func (r *privateRedis) start() {
	r.t.Helper()
	r.cmd = exec.Command("redis-server", "--port", fmt.Sprint(r.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", r.t.TempDir())
	r.cmd.Stdout, r.cmd.Stderr = io.Discard, io.Discard
	if err := r.cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	c := goredis.NewClient(&goredis.Options{Addr: r.addr(), MaxRetries: -1})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("private redis-server on %d did not start: %v", r.port, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop kills the process (a crash: nothing is saved).
func (r *privateRedis) stop() {
	if r.cmd != nil && r.cmd.Process != nil {
		_ = r.cmd.Process.Kill()
		_ = r.cmd.Wait()
		r.cmd = nil
	}
}

// ------------------------------------------------------------ CQL

var (
	cqlOnce  sync.Once
	cqlHosts []string
	cqlErr   string
	ksOnce   sync.Once
	ksName   string
	ksErr    error
	ksStore  *scylla.Store
)

const needCQL = "CQL server required: run scripts/services.sh up (or set CQL_HOSTS)"

func hosts(t testing.TB) []string {
	t.Helper()
	cqlOnce.Do(func() {
		if v := os.Getenv("CQL_HOSTS"); v != "" {
			for _, h := range strings.Split(v, ",") {
				if h = strings.TrimSpace(h); h != "" {
					cqlHosts = append(cqlHosts, h)
				}
			}
		} else {
			cqlHosts = []string{"127.0.0.1:9042"}
		}
		for _, h := range cqlHosts {
			addr := h
			if _, _, err := net.SplitHostPort(h); err != nil {
				addr = net.JoinHostPort(h, "9042")
			}
			c, err := net.DialTimeout("tcp", addr, 2*time.Second)
			if err == nil {
				c.Close()
				return
			}
			cqlErr = fmt.Sprintf("%s (%s: %v)", needCQL, addr, err)
		}
	})
	if cqlErr != "" {
		need(t, cqlErr)
	}
	return cqlHosts
}

// cluster returns the package's scylla store (the chatd schema, seq_bounds
// included, in a keyspace of this run).
func cluster(t testing.TB) *scylla.Store {
	t.Helper()
	h := hosts(t)
	ksOnce.Do(func() {
		var b [4]byte
		_, _ = rand.Read(b[:])
		ksName = "chatd_seqtest_" + hex.EncodeToString(b[:])
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		cfg := scylla.Config{Hosts: h, Keyspace: ksName, Timeout: 20 * time.Second, Logger: slog.New(slog.DiscardHandler)}
		if ksErr = scylla.Migrate(ctx, cfg, scylla.SimpleStrategy, 1); ksErr != nil {
			return
		}
		ksStore, ksErr = scylla.Open(ctx, cfg)
	})
	if ksErr != nil {
		t.Fatalf("test keyspace: %v", ksErr)
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
		// Dropped on the store's own session: this package speaks no CQL.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		if err := ksStore.Session().ContextQuery(ctx, "DROP KEYSPACE IF EXISTS "+ksName, nil).ExecRelease(); err != nil {
			fmt.Fprintf(os.Stderr, "drop keyspace %s: %v\n", ksName, err)
		}
		cancel()
		ksStore.Close()
	}
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
