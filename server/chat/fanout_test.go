package chat

import (
	"context"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/chatd/chatd/server/store"
)

// memberReads counts the store's membership reads.
type memberReads struct {
	store.Store
	getMember, listMembers atomic.Int64
}

func (m *memberReads) GetMember(ctx context.Context, channelID, userID string) (*store.Member, error) {
	m.getMember.Add(1)
	return m.Store.GetMember(ctx, channelID, userID)
}

func (m *memberReads) ListMembers(ctx context.Context, channelID string) ([]store.Member, error) {
	m.listMembers.Add(1)
	return m.Store.ListMembers(ctx, channelID)
}

// TestGroupSendReadsMembersOnce: a member's send into a group reads the
// membership once (the member list, which also says the sender is in
// it), not the sender's membership and then the list; a non-member's
// send is still refused with PermissionDenied, and one into a channel
// that does not exist with NotFound.
func TestGroupSendReadsMembersOnce(t *testing.T) {
	var counter *memberReads
	e := newEnv(t, envConfig{wrap: func(st store.Store) store.Store {
		counter = &memberReads{Store: st}
		return counter
	}})
	e.users("alice", "bob", "carol", "mallory")
	g := e.group("alice", "bob", "carol")
	alice := e.open("alice", "a1")
	bob := e.open("bob", "b1")
	g0, l0 := counter.getMember.Load(), counter.listMembers.Load()
	alice.ackOf(alice.sendIn(g, "m1", "hello"))
	alice.ackOf(alice.sendIn(g, "m2", "again"))
	if n, l := counter.getMember.Load()-g0, counter.listMembers.Load()-l0; n != 0 || l != 2 {
		t.Fatalf("two group sends: %d GetMember and %d ListMembers reads, want 0 and 2", n, l)
	}
	if ds := bob.deliveries(2); ds[0].GetMessage().GetText() != "hello" || ds[1].GetMessage().GetText() != "again" {
		t.Fatalf("bob got %v", ds)
	}
	m := e.open("mallory", "m1")
	m.errOf(m.sendIn(g, "x", "let me in"), codes.PermissionDenied)
	m.errOf(m.sendIn("g.nosuchchannel", "y", "hello?"), codes.NotFound)
}
