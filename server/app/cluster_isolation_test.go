package app_test

import (
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
