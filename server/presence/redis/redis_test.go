package redis_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/chatd/chatd/server/internal/testenv"
	"github.com/chatd/chatd/server/presence"
	"github.com/chatd/chatd/server/presence/presencetest"
	predis "github.com/chatd/chatd/server/presence/redis"
)

// Timing of the test engines: a killed server's devices go offline within
// about LeaseTTL + SweepInterval.
const (
	leaseTTL = 300 * time.Millisecond
	sweep    = 100 * time.Millisecond
)

// client returns a client of the shared test Redis (testenv.RedisAddr:
// skipped, or a failure with CI=true, without one), closed at the end of
// the test.
func client(t *testing.T, name string) *goredis.Client {
	t.Helper()
	c := goredis.NewClient(&goredis.Options{Addr: testenv.RedisAddr(t), ClientName: name})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func randHex() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// backend is a fresh key prefix on the test Redis, deleted at the end.
func backend(t *testing.T) string {
	t.Helper()
	prefix := "ptest:" + randHex() + ":"
	admin := client(t, "presence-test-admin")
	t.Cleanup(func() {
		ctx := context.Background()
		iter := admin.Scan(ctx, 0, prefix+"*", 500).Iterator()
		var keys []string
		for iter.Next(ctx) {
			keys = append(keys, iter.Val())
		}
		if len(keys) > 0 {
			admin.Del(ctx, keys...)
		}
	})
	return prefix
}

func newEngine(t *testing.T, prefix string, i int, c *goredis.Client) *predis.Engine {
	t.Helper()
	if c == nil {
		c = client(t, fmt.Sprintf("presence-test-%s-%d", randHex(), i))
	}
	e, err := predis.New(context.Background(), predis.Config{
		Client: c, ServerID: fmt.Sprintf("server%d", i), Prefix: prefix,
		LeaseTTL: leaseTTL, RenewInterval: leaseTTL / 3, SweepInterval: sweep,
	})
	if err != nil {
		t.Fatalf("redis presence engine: %v", err)
	}
	return e
}

func factory(t *testing.T, n int) []presence.Engine {
	prefix := backend(t)
	out := make([]presence.Engine, n)
	for i := range out {
		out[i] = newEngine(t, prefix, i, nil)
	}
	return out
}

func TestConformance(t *testing.T) {
	presencetest.Run(t, factory)
}

// TestCase_C201: a device that stops heartbeating without closing its
// stream goes offline within the grace period, last_active_at = its last
// heartbeat.
func TestCase_C201(t *testing.T) {
	presencetest.TestSilentDevice(t, factory)
}

// TestCase_C202: alice is connected to server A; A is killed (no Down, no
// lease renewal, no cleanup); her contacts' server B sees her offline
// within the grace period (here: lease 300 ms + sweep 100 ms).
func TestCase_C202(t *testing.T) {
	presencetest.TestKilledServer(t, factory)
}

// countHook counts the commands a client sends (pipelined ones included).
type countHook struct{ n atomic.Int64 }

func (h *countHook) DialHook(next goredis.DialHook) goredis.DialHook { return next }
func (h *countHook) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook {
	return func(ctx context.Context, cmd goredis.Cmder) error {
		h.n.Add(1)
		return next(ctx, cmd)
	}
}
func (h *countHook) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []goredis.Cmder) error {
		h.n.Add(int64(len(cmds)))
		return next(ctx, cmds)
	}
}

// idleCommands connects users users (each heartbeating), lets the server
// idle for a few grace periods and returns the Redis commands it sent
// meanwhile.
func idleCommands(t *testing.T, users int) int64 {
	prefix := backend(t)
	c := client(t, "presence-test-count-"+randHex())
	hook := &countHook{}
	c.AddHook(hook)
	s := presencetest.Servers(t, func(*testing.T, int) []presence.Engine {
		return []presence.Engine{newEngine(t, prefix, 0, c)}
	}, 1)[0]
	var stops []func()
	for i := range users {
		conn := presencetest.Connect(t, s, fmt.Sprintf("u%04d", i), "phone")
		stops = append(stops, presencetest.Beating(conn))
	}
	defer func() {
		for _, stop := range stops {
			stop()
		}
	}()
	before := hook.n.Load()
	time.Sleep(4 * presencetest.Grace)
	return hook.n.Load() - before
}

// TestNoPeriodicScan: an idle server's Redis traffic (lease renewals and
// sweeps) does not grow with the users online and heartbeating.
func TestNoPeriodicScan(t *testing.T) {
	few := idleCommands(t, 2)
	many := idleCommands(t, 300)
	t.Logf("commands while idle for %s: %d with 2 users online, %d with 300", 4*presencetest.Grace, few, many)
	if many > few+20 || many > 100 {
		t.Fatalf("idle traffic grows with users: %d commands with 2 users, %d with 300", few, many)
	}
}

// TestLeaseLost: server A's lease expires while A is alive (a long pause);
// B cleans A's old instance, A re-registers its devices under a new one:
// alice ends up online, not stuck offline.
func TestLeaseLost(t *testing.T) {
	prefix := backend(t)
	admin := client(t, "presence-test-admin")
	ss := presencetest.Servers(t, func(*testing.T, int) []presence.Engine {
		return []presence.Engine{newEngine(t, prefix, 0, nil), newEngine(t, prefix, 1, nil)}
	}, 2)
	a, b := ss[0], ss[1]
	ea := a.E.(*predis.Engine)
	c := presencetest.Connect(t, a, "alice", "phone")
	stop := presencetest.Beating(c)
	defer stop()
	old := ea.Instance()
	if err := admin.Del(context.Background(), prefix+"lease:"+old).Err(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for ea.Instance() == old {
		if time.Now().After(deadline) {
			t.Fatal("A did not notice its lost lease")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Make sure the old instance has been cleaned (by either sweeper).
	for {
		n, err := admin.ZScore(context.Background(), prefix+"instances", old).Result()
		if err == goredis.Nil {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("old instance still registered (score %v)", n)
		}
		_ = b.E.(*predis.Engine).Sweep(context.Background())
		time.Sleep(10 * time.Millisecond)
	}
	if p := presencetest.Get(t, b, "alice"); !p.Online {
		t.Fatalf("alice offline after A re-registered: %+v", p)
	}
	c.Close(true)
	if p := presencetest.Get(t, b, "alice"); p.Online {
		t.Fatalf("alice online after a clean close: %+v", p)
	}
}

// TestSubscriberReconnect: the subscriber connection of server B is killed
// while alice comes online on A; B's watcher still learns it (the engine
// re-reads watched users when its subscriptions are confirmed again).
func TestSubscriberReconnect(t *testing.T) {
	prefix := backend(t)
	admin := client(t, "presence-test-admin")
	name := "presence-test-sub-" + randHex()
	ss := presencetest.Servers(t, func(*testing.T, int) []presence.Engine {
		return []presence.Engine{newEngine(t, prefix, 0, nil), newEngine(t, prefix, 1, client(t, name))}
	}, 2)
	a, b := ss[0], ss[1]
	w := presencetest.Watch(t, b, "alice")
	// Find and kill B's pub/sub connection.
	list, err := admin.ClientList(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	killed := 0
	for _, line := range strings.Split(list, "\n") {
		if !strings.Contains(line, " name="+name+" ") || !strings.Contains(line, "sub=") {
			continue
		}
		var id, ssub string
		for _, f := range strings.Fields(line) {
			if v, ok := strings.CutPrefix(f, "id="); ok {
				id = v
			}
			if v, ok := strings.CutPrefix(f, "ssub="); ok {
				ssub = v
			}
		}
		if ssub != "" && ssub != "0" {
			if err := admin.Do(context.Background(), "CLIENT", "KILL", "ID", id).Err(); err != nil {
				t.Fatal(err)
			}
			killed++
		}
	}
	if killed != 1 {
		t.Fatalf("killed %d subscriber connections of B, want 1:\n%s", killed, list)
	}
	c := presencetest.Connect(t, a, "alice", "phone")
	w.Wait(t, "alice", "online after B's subscriber reconnected", func(p presence.Presence) bool { return p.Online })
	c.Close(true)
	w.Wait(t, "alice", "offline", func(p presence.Presence) bool { return !p.Online })
}

func TestConfigErrors(t *testing.T) {
	c := client(t, "presence-test-config")
	for _, cfg := range []predis.Config{
		{ServerID: "x"},
		{Client: c},
		{Client: c, ServerID: "a|b"},
		{Client: c, ServerID: "x", LeaseTTL: time.Second, RenewInterval: 2 * time.Second},
	} {
		if e, err := predis.New(context.Background(), cfg); err == nil {
			_ = e.Close()
			t.Fatalf("New(%+v) succeeded", cfg)
		}
	}
}
