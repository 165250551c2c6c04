package redis

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"testing"
	"time"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
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
	return out
}

func TestRegistryListsLiveServersLeastLoadedFirst(t *testing.T) {
	c := testClient(t)
	ctx := context.Background()
	p := prefix(t)
	loads := map[string]uint64{"s1": 30, "s2": 10, "s3": 20}
	regs := map[string]*Registry{}
	for _, id := range []string{"s1", "s2", "s3"} {
		load := loads[id]
		r, err := New(ctx, Config{Client: c, Prefix: p, TTL: 900 * time.Millisecond, CacheTTL: time.Nanosecond,
			Self: &chatv1.Endpoint{ServerId: id, GrpcAddress: id + ":9090", HttpAddress: id + ":8080"},
			Load: func() uint64 { return load }})
		if err != nil {
			t.Fatal(err)
		}
		regs[id] = r
		t.Cleanup(func() { _ = r.Close() })
	}
	eps, err := regs["s1"].Endpoints(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if got := ids(eps); len(got) != 3 || got[0] != "s2" || got[1] != "s3" || got[2] != "s1" {
		t.Fatalf("endpoints %v, want [s2 s3 s1] (least loaded first)", got)
	}
	if eps[0].GetGrpcAddress() != "s2:9090" || eps[0].GetLoad() != 10 {
		t.Fatalf("endpoint %v", eps[0])
	}

	// A graceful stop leaves the list at once.
	if err := regs["s2"].Close(); err != nil {
		t.Fatal(err)
	}
	eps, _ = regs["s1"].Endpoints(ctx, "")
	if got := ids(eps); len(got) != 2 || got[0] != "s3" {
		t.Fatalf("after closing s2: %v", got)
	}

	// A server that dies drops out when its lease expires; the others stay
	// (they renew every TTL/3).
	regs["s3"].kill()
	deadline := time.Now().Add(10 * time.Second)
	for {
		eps, _ = regs["s1"].Endpoints(ctx, "")
		if got := ids(eps); len(got) == 1 && got[0] == "s1" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("dead s3 still listed: %v", ids(eps))
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Clean up the test's keys.
	_ = c.Del(ctx, "{"+p+"endpoints}", "{"+p+"endpoints}:s1", "{"+p+"endpoints}:s3").Err()
}
