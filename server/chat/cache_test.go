package chat

import (
	"context"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
)

// TestKnownSet_BoundedAndRecent: the set never holds more than its
// capacity, and a key that keeps being used survives any number of
// insertions of others.
func TestKnownSet_BoundedAndRecent(t *testing.T) {
	const capacity = 256
	k := newKnownSet(capacity)
	if k.has("hot") {
		t.Fatal("empty set has a key")
	}
	k.add("hot")
	for i := range 100 * capacity {
		k.add(fmt.Sprintf("k%d", i))
		if !k.has("hot") {
			t.Fatalf("hot key evicted after %d insertions", i+1)
		}
		if n := k.len(); n > capacity {
			t.Fatalf("set holds %d keys, capacity %d", n, capacity)
		}
	}
	if k.has("k0") {
		t.Fatal("an old cold key is still held")
	}
	if !k.has(fmt.Sprintf("k%d", 100*capacity-1)) {
		t.Fatal("the newest key is missing")
	}
}

// TestSendCache_UserSignsUpAfterNotFound: a send to a user who does not
// exist yet fails with NotFound and is not remembered; once the user signs
// up, the next send succeeds and both the user and the direct channel are
// cached; later sends to the known peer still reach them.
func TestSendCache_UserSignsUpAfterNotFound(t *testing.T) {
	e := newEnv(t, envConfig{})
	e.users("alice")
	a := e.open("alice", "a1")
	a.errOf(a.sendTo("bob", "1", "hi"), codes.NotFound)
	if e.svc.users.has("bob") {
		t.Fatal("a missing user was cached")
	}
	e.users("bob")
	b := e.open("bob", "b1")
	a.ackOf(a.sendTo("bob", "2", "hi again"))
	if !e.svc.users.has("bob") || !e.svc.directs.has(directChannelID("alice", "bob")) {
		t.Fatal("bob or the direct channel not cached after a send")
	}
	a.ackOf(a.sendTo("bob", "3", "third"))
	ds := b.deliveries(2)
	if ds[0].GetMessage().GetText() != "hi again" || ds[1].GetMessage().GetText() != "third" {
		t.Fatalf("bob got %q, %q", ds[0].GetMessage().GetText(), ds[1].GetMessage().GetText())
	}
	if h, _ := e.st.LastInboxSeq(context.Background(), "bob"); h != 2 {
		t.Fatalf("bob's head %d, want 2", h)
	}
}
