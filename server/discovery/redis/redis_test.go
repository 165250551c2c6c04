package redis

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/chatd/chatd/server/discovery"
	"github.com/chatd/chatd/server/internal/testenv"
	goredis "github.com/redis/go-redis/v9"
)

// testClient returns a client of the shared test Redis (testenv.RedisAddr:
// skipped, or a failure with CI=true, without one).
func testClient(t *testing.T) goredis.UniversalClient {
	t.Helper()
	c := goredis.NewClient(&goredis.Options{Addr: testenv.RedisAddr(t)})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func prefix(t *testing.T) string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return "test-disc-" + hex.EncodeToString(b) + ":"
}

func ids(eps []*chatv1.Endpoint) []string {
	var out []string
	for _, e := range eps {
		out = append(out, e.GetServerId())
	}
	slices.Sort(out)
	return out
}

// server is one registered test server whose load and state the test sets.
type server struct {
	id    string
	load  atomic.Uint64
	drain atomic.Bool
	reg   *Registry
}

func (s *server) self() *chatv1.Endpoint {
	st := chatv1.ServerState_SERVER_STATE_SERVING
	if s.drain.Load() {
		st = chatv1.ServerState_SERVER_STATE_DRAINING
	}
	return &chatv1.Endpoint{ServerId: s.id, GrpcAddress: s.id + ":9090", HttpAddress: s.id + ":8080",
		Zone: "z-" + s.id, Capacity: 100, Load: s.load.Load(), State: st, Version: "test"}
}

// TestRegistry: every server sees every live record (load, zone, state)
// within a beat; a draining server is ranked by nobody the moment it
// beats; a graceful stop leaves at once; a server that stops beating
// (killed) drops out within its TTL.
func TestRegistry(t *testing.T) {
	c := testClient(t)
	ctx := context.Background()
	p := prefix(t)
	t.Cleanup(func() {
		_ = c.Del(ctx, "{"+p+"endpoints}", "{"+p+"endpoints}:s1", "{"+p+"endpoints}:s2", "{"+p+"endpoints}:s3").Err()
	})
	srv := map[string]*server{}
	for i, id := range []string{"s1", "s2", "s3"} {
		s := &server{id: id}
		s.load.Store(uint64(10 * (i + 1)))
		r, err := New(ctx, Config{Client: c, Prefix: p, Interval: 100 * time.Millisecond, TTL: 600 * time.Millisecond, Self: s.self})
		if err != nil {
			t.Fatal(err)
		}
		s.reg = r
		srv[id] = s
		t.Cleanup(func() { _ = r.Close() })
	}
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("not within 5 s: %s", what)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	rank := func(id string) []string {
		return ids(discovery.Rank(srv[id].reg.View(), "", nil))
	}
	waitFor("s1 sees all three", func() bool { return slices.Equal(rank("s1"), []string{"s1", "s2", "s3"}) })
	for _, e := range srv["s1"].reg.View().Servers {
		if e.GetServerId() == "s2" && (e.GetLoad() != 20 || e.GetZone() != "z-s2" || e.GetCapacity() != 100 || e.GetVersion() != "test") {
			t.Fatalf("s2 as s1 sees it: %v", e)
		}
	}

	// Draining: its own view drops it at its Beat, the others' at their next.
	srv["s2"].drain.Store(true)
	if err := srv["s2"].reg.Beat(ctx); err != nil {
		t.Fatal(err)
	}
	if got := rank("s2"); slices.Contains(got, "s2") {
		t.Fatalf("draining s2 ranks itself: %v", got)
	}
	waitFor("s1 stops ranking draining s2", func() bool { return slices.Equal(rank("s1"), []string{"s1", "s3"}) })

	// A graceful stop leaves the list at once (for the others: at their next beat).
	if err := srv["s2"].reg.Close(); err != nil {
		t.Fatal(err)
	}
	waitFor("s2 gone from s1's view", func() bool { return len(srv["s1"].reg.View().Servers) == 2 })

	// A server that dies drops out when its lease lapses.
	died := time.Now()
	srv["s3"].reg.kill()
	waitFor("dead s3 dropped", func() bool { return slices.Equal(rank("s1"), []string{"s1"}) })
	if d := time.Since(died); d > 2*time.Second {
		t.Errorf("dead server listed for %v after its death (TTL 600ms)", d)
	}
}

// TestRegistryStaleView: when the registry cannot reach Redis for longer
// than the TTL, it ranks only itself (the others' leases may have lapsed).
func TestRegistryStaleView(t *testing.T) {
	r := &Registry{cfg: Config{TTL: time.Second, Self: (&server{id: "me"}).self}}
	r.view.Store(discovery.NewView([]*chatv1.Endpoint{{ServerId: "other"}, {ServerId: "me"}}))
	r.fresh.Store(time.Now().Add(-2 * time.Second).UnixNano())
	if got := ids(r.View().Servers); !slices.Equal(got, []string{"me"}) {
		t.Fatalf("stale view: %v", got)
	}
	r.fresh.Store(time.Now().UnixNano())
	if got := ids(r.View().Servers); len(got) != 2 {
		t.Fatalf("fresh view: %v", got)
	}
}
