package chat

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
)

// TestClientMessageIDReusedForAnotherMessage (issue 11, item 3): key K to
// bob with text A, then K to carol with text B, is refused with
// FailedPrecondition naming the clash, and carol receives nothing; the
// same send again is still a duplicate; an edit that reuses a send's key
// is refused too (an edit's own retry stays a duplicate).
func TestClientMessageIDReusedForAnotherMessage(t *testing.T) {
	e := newEnv(t, envConfig{})
	e.users("alice", "bob", "carol")
	a := e.open("alice", "a1")
	first := a.ackOf(a.sendTo("bob", "K", "text A"))
	fe := a.errOf(a.sendTo("carol", "K", "text B"), codes.FailedPrecondition)
	if !strings.Contains(fe.GetMessage(), "client_message_id reused for a different message") {
		t.Fatalf("reuse for carol: %q; want it to name the clash", fe.GetMessage())
	}
	a.errOf(a.sendTo("bob", "K", "text B"), codes.FailedPrecondition)
	a.errOf(a.sendTo("carol", "K", "text A"), codes.FailedPrecondition)
	if again := a.ackOf(a.sendTo("bob", "K", "text A")); !again.GetDuplicate() || again.GetMessageId() != first.GetMessageId() {
		t.Fatalf("the same send again: %v; want the duplicate of %v", again, first)
	}
	ch := first.GetChannelId()
	if fe := a.errOf(a.edit(ch, first.GetMessageId(), "K", "text A"), codes.FailedPrecondition); !strings.Contains(fe.GetMessage(), `"K" already names`) {
		t.Fatalf("edit reusing K: %q; want it to name the key", fe.GetMessage())
	}
	ed := a.ackOf(a.edit(ch, first.GetMessageId(), "E", "text A!"))
	if again := a.ackOf(a.edit(ch, first.GetMessageId(), "E", "text A!")); !again.GetDuplicate() || again.GetMessageId() != ed.GetMessageId() {
		t.Fatalf("edit retried: %v; want the duplicate of %v", again, ed)
	}
	a.errOf(a.edit(ch, first.GetMessageId(), "E", "text A?"), codes.FailedPrecondition)

	c := e.open("carol", "c1")
	if all, _ := c.syncAll(0, 100); len(all) != 0 {
		t.Fatalf("carol received %d messages; want none", len(all))
	}
}
