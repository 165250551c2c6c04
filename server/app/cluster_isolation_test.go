package app_test

import (
	"context"
	"net/http"

	goredis "github.com/redis/go-redis/v9"
	"testing"
	"time"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
)

// TestCluster_DeploymentsSharingRedisStayApart: two deployments (two
// keyspaces) on one Redis. Their Redis keys carry different prefixes
// (default "chatd:<keyspace>:"), so a message for bob in deployment A never
// reaches the bob of deployment B.
func TestCluster_DeploymentsSharingRedisStayApart(t *testing.T) {
	a := newCluster(t, []string{"a1"})
	b := newCluster(t, nil)
	b.redis = a.redis // the same Redis, another keyspace
	b.start("b1")

	aliceA := signUpLogIn(t, a.cc("a1"), "alice", "phone")
	bobA := signUpLogIn(t, a.cc("a1"), "bob", "phone")
	bobB := signUpLogIn(t, b.cc("b1"), "bob", "phone")

	sa := openStream(t, bobA)
	sb := openStream(t, bobB)
	got := make(chan *chatv1.Delivery, 16)
	go func() {
		for {
			f, err := sb.s.Recv()
			if err != nil {
				return
			}
			if d := f.GetDelivery(); d != nil {
				got <- d
			}
		}
	}()

	as := openStream(t, aliceA)
	as.send("bob", "secret-1", "for deployment A's bob only")
	for {
		f, err := sa.s.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if f.GetDelivery() != nil {
			break // A's bob has it
		}
	}
	select {
	case d := <-got:
		t.Fatalf("deployment B's bob received %q from deployment A", d.GetMessage().GetText())
	case <-time.After(2 * time.Second):
	}
	if h := openStream(t, bobB).welcome.GetHeadSeq(); h != 0 {
		t.Fatalf("deployment B's bob has an inbox head of %d", h)
	}
}

// TestCluster_ReadyzFollowsRedis: in cluster mode a server without Redis
// cannot sequence messages, so /readyz says 503 and a load balancer sends
// clients elsewhere.
func TestCluster_ReadyzFollowsRedis(t *testing.T) {
	c := newCluster(t, []string{"s1"})
	ready := func() int {
		resp, err := http.Get("http://" + c.servers["s1"].http + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := ready(); code != http.StatusOK {
		t.Fatalf("/readyz with Redis up: %d", code)
	}
	rc := goredis.NewClient(&goredis.Options{Addr: c.redis})
	defer rc.Close()
	_ = rc.ShutdownNoSave(context.Background()).Err() // the connection drops: an error is expected
	if code := ready(); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz with Redis down: %d, want 503", code)
	}
}
