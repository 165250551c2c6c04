package chat

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/chatd/chatd/server/store"
)

// TestReceiptsAndUnreadDirect: alice sends 10 messages to bob; bob's phone
// receives and acks them (alice sees "delivered"); bob reads on his laptop
// (alice sees "read"; bob's phone gets unread 0 without doing anything).
func TestReceiptsAndUnreadDirect(t *testing.T) {
	e := newEnv(t, envConfig{})
	e.users("alice", "bob")
	alice := e.open("alice", "a-phone")
	phone := e.open("bob", "b-phone")
	laptop := e.open("bob", "b-laptop")
	const ch = "dm:alice:bob"

	acks := []*chatv1.SendAck{alice.ackOf(alice.sendTo("bob", "first", "hello"))}
	acks = append(acks, alice.sendN(ch, 9, "m")...)
	last := acks[9].GetMessageId()

	// Before bob's devices ack anything, nothing is delivered.
	r, err := e.client.GetReceipts(e.ctx("alice", "a-phone"), &chatv1.GetReceiptsRequest{ChannelId: ch})
	if err != nil {
		t.Fatal(err)
	}
	for _, rc := range r.GetReceipts() {
		if rc.GetUserId() == "bob" && (rc.GetDeliveredUpTo() != 0 || rc.GetReadUpTo() != 0) {
			t.Fatalf("bob's markers before any ack: %v", rc)
		}
	}

	ds := phone.deliveries(10)
	if got := ds[9].GetMessage().GetMessageId(); got != last {
		t.Fatalf("phone's last delivery %d, want %d", got, last)
	}
	phone.reply(phone.ack(ds[9].GetInboxSeq()))
	alice.receiptWhere("bob delivered", func(r *chatv1.ReceiptEvent) bool {
		return r.GetChannelId() == ch && r.GetUserId() == "bob" && r.GetDeliveredUpTo() == last && r.GetReadUpTo() == 0
	})

	chs, first := e.channels("bob", "b-phone")
	if c := chs[ch]; c.GetUnreadCount() != 10 || c.GetReadUpTo() != 0 || first.GetTotalUnread() != 10 {
		t.Fatalf("bob's phone before reading: unread %d read %d total %d", c.GetUnreadCount(), c.GetReadUpTo(), first.GetTotalUnread())
	}
	if lm := chs[ch].GetLastMessage(); lm.GetMessageId() != last || lm.GetText() != "m 8" {
		t.Fatalf("last_message = %v", lm)
	}

	// Bob reads on his laptop.
	ev := laptop.unreadOf(laptop.markRead(ch, 0))
	if ev.GetChannelId() != ch || ev.GetUnreadCount() != 0 || ev.GetReadUpTo() != last || ev.GetTotalUnread() != 0 {
		t.Fatalf("laptop's UnreadEvent: %v", ev)
	}
	alice.receiptWhere("bob read", func(r *chatv1.ReceiptEvent) bool {
		return r.GetUserId() == "bob" && r.GetReadUpTo() == last && r.GetDeliveredUpTo() == last
	})
	pev := phone.unreadWhere("pushed to the phone", func(u *chatv1.UnreadEvent) bool { return u.GetChannelId() == ch })
	if pev.GetUnreadCount() != 0 || pev.GetReadUpTo() != last || pev.GetTotalUnread() != 0 {
		t.Fatalf("phone's UnreadEvent: %v", pev)
	}
	chs, first = e.channels("bob", "b-phone")
	if c := chs[ch]; c.GetUnreadCount() != 0 || c.GetReadUpTo() != last || first.GetTotalUnread() != 0 {
		t.Fatalf("bob's phone after reading on the laptop: %v total %d", c, first.GetTotalUnread())
	}

	// Alice's view: her own messages are never unread for her; bob's
	// markers are in her channel list and in GetReceipts.
	chs, first = e.channels("alice", "a-phone")
	c := chs[ch]
	if c.GetUnreadCount() != 0 || first.GetTotalUnread() != 0 {
		t.Fatalf("alice's unread: %d total %d", c.GetUnreadCount(), first.GetTotalUnread())
	}
	if len(c.GetReceipts()) != 1 || c.GetReceipts()[0].GetUserId() != "bob" || c.GetReceipts()[0].GetReadUpTo() != last {
		t.Fatalf("alice's channel receipts: %v", c.GetReceipts())
	}
	r, err = e.client.GetReceipts(e.ctx("alice", "a-phone"), &chatv1.GetReceiptsRequest{ChannelId: ch})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.GetReceipts()) != 2 || r.GetReceipts()[1].GetUserId() != "bob" ||
		r.GetReceipts()[1].GetDeliveredUpTo() != last || r.GetReceipts()[1].GetReadUpTo() != last {
		t.Fatalf("GetReceipts: %v", r.GetReceipts())
	}

	// A new message is unread again; reading is idempotent and never moves
	// the marker back.
	n := alice.ackOf(alice.sendIn(ch, "m-10", "one more"))
	phone.deliveries(1)
	if chs, first = e.channels("bob", "b-phone"); chs[ch].GetUnreadCount() != 1 || first.GetTotalUnread() != 1 {
		t.Fatalf("after one more: %v", chs[ch])
	}
	ev = phone.unreadOf(phone.markRead(ch, acks[3].GetMessageId()))
	if ev.GetReadUpTo() != last || ev.GetUnreadCount() != 1 {
		t.Fatalf("marking an older message read moved the marker: %v", ev)
	}
	resp, err := e.client.MarkRead(e.ctx("bob", "b-phone"), &chatv1.MarkReadRequest{ChannelId: ch, MessageId: n.GetMessageId()})
	if err != nil || resp.GetUnread().GetUnreadCount() != 0 || resp.GetUnread().GetReadUpTo() != n.GetMessageId() {
		t.Fatalf("MarkRead RPC: %v %v", resp, err)
	}
	// The RPC pushes to every device of the user, the calling one included.
	laptop.unreadWhere("after the RPC", func(u *chatv1.UnreadEvent) bool { return u.GetReadUpTo() == n.GetMessageId() })
	phone.unreadWhere("after the RPC", func(u *chatv1.UnreadEvent) bool { return u.GetReadUpTo() == n.GetMessageId() })

	// Errors.
	phone.errOf(phone.markRead(ch, n.GetMessageId()+1), codes.FailedPrecondition)
	phone.errOf(phone.markRead("g:nope", 0), codes.NotFound)
	phone.errOf(phone.markRead("", 0), codes.InvalidArgument)
	e.users("carol")
	_, err = e.client.MarkRead(e.ctx("carol", "c1"), &chatv1.MarkReadRequest{ChannelId: ch})
	wantCode(t, "MarkRead by a non-member", err, codes.PermissionDenied)
	_, err = e.client.GetReceipts(e.ctx("carol", "c1"), &chatv1.GetReceiptsRequest{ChannelId: ch})
	wantCode(t, "GetReceipts by a non-member", err, codes.PermissionDenied)
}

// TestCase_C204: Bob has two devices; ten messages arrive; he reads them
// on device A. Device B's unread count for that channel becomes 0 as
// well, without B reading anything: live (an UnreadEvent) and on its next
// ListChannels, also for a device B that was offline meanwhile.
func TestCase_C204(t *testing.T) {
	e := newEnv(t, envConfig{})
	e.users("alice", "bob")
	alice := e.open("alice", "a1")
	a := e.open("bob", "device-a")
	b := e.open("bob", "device-b")
	alice.ackOf(alice.sendTo("bob", "x", "first"))
	const ch = "dm:alice:bob"
	acks := alice.sendN(ch, 9, "c204")
	last := acks[8].GetMessageId()
	b.deliveries(10)
	a.deliveries(10)
	chs, _ := e.channels("bob", "device-b")
	if chs[ch].GetUnreadCount() != 10 {
		t.Fatalf("device B before: unread %d", chs[ch].GetUnreadCount())
	}

	if ev := a.unreadOf(a.markRead(ch, last)); ev.GetUnreadCount() != 0 {
		t.Fatalf("device A: %v", ev)
	}
	ev := b.unreadWhere("C204", func(u *chatv1.UnreadEvent) bool { return u.GetChannelId() == ch })
	if ev.GetUnreadCount() != 0 || ev.GetTotalUnread() != 0 || ev.GetReadUpTo() != last {
		t.Fatalf("device B's UnreadEvent: %v", ev)
	}
	chs, first := e.channels("bob", "device-b")
	if chs[ch].GetUnreadCount() != 0 || first.GetTotalUnread() != 0 {
		t.Fatalf("device B after: unread %d total %d", chs[ch].GetUnreadCount(), first.GetTotalUnread())
	}

	// A third device that was offline sees the same when it comes back.
	b.close()
	alice.sendN(ch, 2, "later")
	a.deliveries(2)
	a.unreadOf(a.markRead(ch, 0))
	c := e.open("bob", "device-b")
	if c.welcome.GetHeadSeq() <= c.welcome.GetCursor() {
		t.Fatalf("device B should be behind: %v", c.welcome)
	}
	chs, first = e.channels("bob", "device-b")
	if chs[ch].GetUnreadCount() != 0 || first.GetTotalUnread() != 0 {
		t.Fatalf("device B after reconnecting: unread %d total %d", chs[ch].GetUnreadCount(), first.GetTotalUnread())
	}
}

// TestGroupReadState: in a group of 5 the markers are per member.
func TestGroupReadState(t *testing.T) {
	e := newEnv(t, envConfig{})
	names := []string{"alice", "bob", "carol", "dave", "erin"}
	e.users(names...)
	g := e.group("alice", names[1:]...)
	devs := e.openAll(names, "d1")
	acks := devs[0].sendN(g, 3, "g")
	m1, m3 := acks[0].GetMessageId(), acks[2].GetMessageId()
	got := make([][]*chatv1.Delivery, len(devs))
	for i, d := range devs[1:] {
		got[i+1] = d.deliveries(3)
	}
	devs[1].unreadOf(devs[1].markRead(g, m1)) // bob read m1
	devs[2].unreadOf(devs[2].markRead(g, 0))  // carol read all
	// Dave's device only acks (delivered); erin does nothing.
	devs[3].reply(devs[3].ack(got[3][2].GetInboxSeq()))
	devs[0].receiptWhere("dave delivered", func(r *chatv1.ReceiptEvent) bool {
		return r.GetUserId() == "dave" && r.GetDeliveredUpTo() == m3 && r.GetReadUpTo() == 0
	})
	devs[0].receiptWhere("bob read", func(r *chatv1.ReceiptEvent) bool { return r.GetUserId() == "bob" && r.GetReadUpTo() == m1 })
	devs[0].receiptWhere("carol read", func(r *chatv1.ReceiptEvent) bool { return r.GetUserId() == "carol" && r.GetReadUpTo() == m3 })

	r, err := e.client.GetReceipts(e.ctx("erin", "d1"), &chatv1.GetReceiptsRequest{ChannelId: g})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][2]uint64{"alice": {0, 0}, "bob": {m1, m1}, "carol": {m3, m3}, "dave": {m3, 0}, "erin": {0, 0}}
	if len(r.GetReceipts()) != 5 {
		t.Fatalf("GetReceipts: %v", r.GetReceipts())
	}
	for i, rc := range r.GetReceipts() {
		if rc.GetUserId() != names[i] || [2]uint64{rc.GetDeliveredUpTo(), rc.GetReadUpTo()} != want[rc.GetUserId()] {
			t.Fatalf("receipt %d: %v, want %s %v", i, rc, names[i], want[names[i]])
		}
	}
	wantUnread := map[string]uint32{"alice": 0, "bob": 2, "carol": 0, "dave": 3, "erin": 3}
	for _, n := range names {
		chs, first := e.channels(n, "d1")
		if got := chs[g].GetUnreadCount(); got != wantUnread[n] || first.GetTotalUnread() != wantUnread[n] {
			t.Errorf("%s: unread %d total %d, want %d", n, got, first.GetTotalUnread(), wantUnread[n])
		}
	}

	// A member added later starts with nothing unread.
	e.users("frank")
	if _, err := e.client.AddMember(e.ctx("alice", "d1"), &chatv1.AddMemberRequest{ChannelId: g, UserId: "frank"}); err != nil {
		t.Fatal(err)
	}
	if chs, _ := e.channels("frank", "f1"); chs[g].GetUnreadCount() != 0 {
		t.Fatalf("new member: unread %d", chs[g].GetUnreadCount())
	}
	devs[1].ackOf(devs[1].sendIn(g, "after-frank", "welcome frank"))
	if chs, _ := e.channels("frank", "f1"); chs[g].GetUnreadCount() != 1 {
		t.Fatalf("new member after a message: unread %d", chs[g].GetUnreadCount())
	}
}

// TestEditDeleteThroughSync: an edit and a delete (for everyone and for
// me) reach a device that was offline, through sync; history shows the
// current state; "for me" rows stay with their user.
func TestEditDeleteThroughSync(t *testing.T) {
	e := newEnv(t, envConfig{})
	e.users("alice", "bob")
	alice := e.open("alice", "a1")
	phone := e.open("bob", "phone")
	laptop := e.open("bob", "laptop")
	m1 := alice.ackOf(alice.sendTo("bob", "s0", "one")).GetMessageId()
	const ch = "dm:alice:bob"
	acks := alice.sendN(ch, 2, "s")
	m2, m3 := acks[0].GetMessageId(), acks[1].GetMessageId()
	ds := laptop.deliveries(3)
	laptop.reply(laptop.ack(ds[2].GetInboxSeq()))
	laptop.close()
	phone.deliveries(3)
	alice.deliveries(3)
	aliceHead := alice.welcome.GetHeadSeq() + 3

	ed := alice.ackOf(alice.edit(ch, m1, "e1", "one (fixed)"))
	alice.ackOf(alice.del(ch, m2, "d2", false))
	me := phone.ackOf(phone.del(ch, m3, "d3", true))
	// Bob's online phone gets them live.
	live := phone.deliveries(3)
	if live[0].GetMessage().GetKind() != chatv1.MessageKind_MESSAGE_KIND_EDIT || live[0].GetMessage().GetRefMessageId() != m1 ||
		live[0].GetMessage().GetText() != "one (fixed)" || live[0].GetMessage().GetMessageId() != ed.GetMessageId() {
		t.Fatalf("live edit: %v", live[0])
	}
	if live[1].GetMessage().GetKind() != chatv1.MessageKind_MESSAGE_KIND_DELETE || live[1].GetMessage().GetRefMessageId() != m2 || live[1].GetMessage().GetForUser() != "" {
		t.Fatalf("live delete: %v", live[1])
	}
	if live[2].GetMessage().GetForUser() != "bob" || live[2].GetMessage().GetRefMessageId() != m3 || live[2].GetMessage().GetMessageId() != me.GetMessageId() {
		t.Fatalf("live delete for me: %v", live[2])
	}

	// The laptop comes back and syncs.
	laptop = e.open("bob", "laptop")
	synced, _ := laptop.syncAll(laptop.welcome.GetCursor(), 0)
	if len(synced) != 3 {
		t.Fatalf("laptop synced %d entries: %v", len(synced), synced)
	}
	kinds := []chatv1.MessageKind{synced[0].GetMessage().GetKind(), synced[1].GetMessage().GetKind(), synced[2].GetMessage().GetKind()}
	if kinds[0] != chatv1.MessageKind_MESSAGE_KIND_EDIT || kinds[1] != chatv1.MessageKind_MESSAGE_KIND_DELETE ||
		kinds[2] != chatv1.MessageKind_MESSAGE_KIND_DELETE || synced[2].GetMessage().GetForUser() != "bob" {
		t.Fatalf("laptop synced %v", synced)
	}
	// Alice's inbox got the edit and the delete, not bob's "for me".
	alice.deliveries(2)
	alice.quiet()
	if h, err := e.seq.Head(context.Background(), "alice"); err != nil || h != aliceHead+2 {
		t.Fatalf("alice's head %d (%v), want %d", h, err, aliceHead+2)
	}

	// Folded history.
	bobView := e.history("bob", ch, false)
	if len(bobView) != 2 || bobView[0].GetMessageId() != m1 || !bobView[0].GetEdited() || bobView[0].GetText() != "one (fixed)" ||
		bobView[0].GetEditedAt() == nil || bobView[1].GetMessageId() != m2 || !bobView[1].GetDeleted() || bobView[1].GetText() != "" {
		t.Fatalf("bob's history: %v", bobView)
	}
	aliceView := e.history("alice", ch, false)
	if len(aliceView) != 3 || aliceView[2].GetMessageId() != m3 || aliceView[2].GetDeleted() || aliceView[2].GetText() != "s 1" {
		t.Fatalf("alice's history: %v", aliceView)
	}
	// Raw history: the rows, without other users' "for me" rows.
	if raw := e.history("alice", ch, true); len(raw) != 5 {
		t.Fatalf("alice's raw history: %d rows %v", len(raw), raw)
	}
	if raw := e.history("bob", ch, true); len(raw) != 6 || raw[5].GetForUser() != "bob" {
		t.Fatalf("bob's raw history: %d rows %v", len(raw), raw)
	}
	// Last message as each sees it.
	chs, _ := e.channels("bob", "phone")
	if lm := chs[ch].GetLastMessage(); lm.GetMessageId() != m2 || !lm.GetDeleted() {
		t.Fatalf("bob's last_message: %v", lm)
	}
	chs, _ = e.channels("alice", "a1")
	if lm := chs[ch].GetLastMessage(); lm.GetMessageId() != m3 {
		t.Fatalf("alice's last_message: %v", lm)
	}
	// Unread for bob: m1 (edited) counts once, m2 (deleted) and m3
	// (deleted for him) do not.
	chs, first := e.channels("bob", "laptop")
	if chs[ch].GetUnreadCount() != 1 || first.GetTotalUnread() != 1 {
		t.Fatalf("bob's unread: %d total %d", chs[ch].GetUnreadCount(), first.GetTotalUnread())
	}
}

// TestEditDeleteValidation: every refusal has its code and changes
// nothing; retries are idempotent.
func TestEditDeleteValidation(t *testing.T) {
	clk := &testClock{}
	e := newEnv(t, envConfig{now: clk.now})
	e.users("alice", "bob", "carol", "dave")
	alice := e.open("alice", "a1")
	bob := e.open("bob", "b1")
	const dm = "dm:alice:bob"
	a1 := alice.ackOf(alice.sendTo("bob", "a1", "alice's")).GetMessageId()
	b1 := bob.ackOf(bob.sendIn(dm, "b1", "bob's")).GetMessageId()
	ctxA, ctxB := e.ctx("alice", "a1"), e.ctx("bob", "b1")
	lastBefore := func() uint64 {
		id, err := e.st.LastMessageID(context.Background(), dm)
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	top := lastBefore()

	// Stream frames.
	alice.errOf(alice.edit(dm, b1, "x1", "not mine"), codes.PermissionDenied)
	alice.errOf(alice.edit(dm, b1+1000, "x2", "nothing"), codes.NotFound)
	alice.errOf(alice.edit(dm, 0, "x3", "zero"), codes.InvalidArgument)
	alice.errOf(alice.edit(dm, a1, "x4", "  "), codes.InvalidArgument)
	alice.errOf(alice.edit(dm, a1, "", "no cmid"), codes.InvalidArgument)
	alice.errOf(alice.edit("g:none", a1, "x5", "no channel"), codes.NotFound)
	alice.errOf(alice.del(dm, b1, "x6", false), codes.PermissionDenied)
	carol := e.open("carol", "c1")
	carol.errOf(carol.del(dm, a1, "x7", true), codes.PermissionDenied)
	carol.errOf(carol.edit(dm, a1, "x8", "intruder"), codes.PermissionDenied)
	// RPCs.
	_, err := e.client.EditMessage(ctxA, &chatv1.EditMessageRequest{ChannelId: dm, MessageId: b1, ClientMessageId: "r1", Text: "x"})
	wantCode(t, "EditMessage of another's message", err, codes.PermissionDenied)
	_, err = e.client.EditMessage(ctxA, &chatv1.EditMessageRequest{ChannelId: dm, MessageId: 12345, ClientMessageId: "r2", Text: "x"})
	wantCode(t, "EditMessage of an unknown message", err, codes.NotFound)
	_, err = e.client.DeleteMessage(ctxB, &chatv1.DeleteMessageRequest{ChannelId: dm, MessageId: a1, ClientMessageId: "r3"})
	wantCode(t, "DeleteMessage of another's message in a DM", err, codes.PermissionDenied)
	if got := lastBefore(); got != top {
		t.Fatalf("refused requests stored rows: last %d, was %d", got, top)
	}

	// Delete, then edit of the deleted message; retry of the delete.
	d := alice.ackOf(alice.del(dm, a1, "del-a1", false))
	again := alice.ackOf(alice.del(dm, a1, "del-a1", false))
	if !again.GetDuplicate() || again.GetMessageId() != d.GetMessageId() {
		t.Fatalf("retried delete: %v, first %v", again, d)
	}
	alice.errOf(alice.del(dm, a1, "del-a1-2", false), codes.FailedPrecondition)
	alice.errOf(alice.edit(dm, a1, "e-deleted", "too late"), codes.FailedPrecondition)
	bob.errOf(bob.del(dm, a1, "me-deleted", true), codes.FailedPrecondition)
	// Edit/delete rows themselves cannot be edited or deleted.
	alice.errOf(alice.edit(dm, d.GetMessageId(), "e-row", "x"), codes.FailedPrecondition)

	// Delete for me: another user's "for me" row is invisible.
	me := bob.ackOf(bob.del(dm, b1, "me-b1", true))
	alice.errOf(alice.del(dm, me.GetMessageId(), "x9", true), codes.NotFound)
	bob.errOf(bob.del(dm, b1, "me-b1-2", true), codes.FailedPrecondition)
	bob.errOf(bob.edit(dm, b1, "edit-hidden", "x"), codes.FailedPrecondition)
	// ... but alice may still delete bob's message for herself.
	alice.ackOf(alice.del(dm, b1, "a-me-b1", true))

	// The edit window.
	a2 := alice.ackOf(alice.sendIn(dm, "a2", "typo")).GetMessageId()
	for i := range MaxEditsPerMessage {
		alice.ackOf(alice.edit(dm, a2, fmt.Sprint("ed-", i), fmt.Sprint("fix ", i)))
	}
	alice.errOf(alice.edit(dm, a2, "ed-max", "one too many"), codes.FailedPrecondition)
	a3 := alice.ackOf(alice.sendIn(dm, "a3", "later")).GetMessageId()
	clk.advance(DefaultEditWindow - time.Minute)
	alice.ackOf(alice.edit(dm, a3, "in-window", "still fine"))
	clk.advance(2 * time.Minute)
	fe := alice.errOf(alice.edit(dm, a3, "out-window", "too late"), codes.FailedPrecondition)
	if !strings.Contains(fe.GetMessage(), "edit window") {
		t.Fatalf("window error: %v", fe)
	}
	_, err = e.client.EditMessage(ctxA, &chatv1.EditMessageRequest{ChannelId: dm, MessageId: a3, ClientMessageId: "r4", Text: "x"})
	wantCode(t, "EditMessage outside the window", err, codes.FailedPrecondition)
	// Deletes have no window.
	if _, err := e.client.DeleteMessage(ctxA, &chatv1.DeleteMessageRequest{ChannelId: dm, MessageId: a3, ClientMessageId: "r5"}); err != nil {
		t.Fatalf("late delete: %v", err)
	}

	// Groups: owner and admins delete anyone's message, members only
	// their own.
	g := e.group("alice", "bob", "carol", "dave")
	if _, err := e.client.AddMember(ctxA, &chatv1.AddMemberRequest{ChannelId: g, UserId: "bob", Role: chatv1.MemberRole_MEMBER_ROLE_ADMIN}); err != nil {
		t.Fatal(err)
	}
	c1 := carol.ackOf(carol.sendIn(g, "c1", "carol's")).GetMessageId()
	c2 := carol.ackOf(carol.sendIn(g, "c2", "carol's 2")).GetMessageId()
	dave := e.open("dave", "d1")
	dave.errOf(dave.del(g, c1, "dd1", false), codes.PermissionDenied)
	bob.ackOf(bob.del(g, c1, "bd1", false))
	if _, err := e.client.DeleteMessage(ctxA, &chatv1.DeleteMessageRequest{ChannelId: g, MessageId: c2, ClientMessageId: "ad2"}); err != nil {
		t.Fatalf("owner deletes a member's message: %v", err)
	}
	_, err = e.client.EditMessage(ctxA, &chatv1.EditMessageRequest{ChannelId: g, MessageId: c2, ClientMessageId: "ae2", Text: "x"})
	wantCode(t, "owner edits a member's message", err, codes.PermissionDenied)
}

// TestHiddenReadReceipts: a user who hides read receipts keeps their own
// unread counts, while others see no read marker move.
func TestHiddenReadReceipts(t *testing.T) {
	e := newEnv(t, envConfig{})
	e.users("alice", "bob")
	alice := e.open("alice", "a1")
	bob := e.open("bob", "b1")
	alice.ackOf(alice.sendTo("bob", "h0", "one"))
	const ch = "dm:alice:bob"
	m2 := alice.ackOf(alice.sendIn(ch, "h1", "two")).GetMessageId()
	if resp, err := e.client.SetReadReceipts(e.ctx("bob", "b1"), &chatv1.SetReadReceiptsRequest{HideReadReceipts: true}); err != nil || !resp.GetHideReadReceipts() {
		t.Fatalf("SetReadReceipts: %v %v", resp, err)
	}
	if ev := bob.unreadOf(bob.markRead(ch, 0)); ev.GetUnreadCount() != 0 || ev.GetReadUpTo() != m2 {
		t.Fatalf("bob's own state: %v", ev)
	}
	r := alice.receiptWhere("bob's receipt", func(r *chatv1.ReceiptEvent) bool { return r.GetUserId() == "bob" })
	if r.GetReadUpTo() != 0 || r.GetDeliveredUpTo() != m2 {
		t.Fatalf("alice sees %v", r)
	}
	rs, err := e.client.GetReceipts(e.ctx("alice", "a1"), &chatv1.GetReceiptsRequest{ChannelId: ch})
	if err != nil || rs.GetReceipts()[1].GetReadUpTo() != 0 {
		t.Fatalf("GetReceipts: %v %v", rs, err)
	}
	// Shown again: the next read is visible.
	if _, err := e.client.SetReadReceipts(e.ctx("bob", "b1"), &chatv1.SetReadReceiptsRequest{}); err != nil {
		t.Fatal(err)
	}
	m3 := alice.ackOf(alice.sendIn(ch, "h2", "three")).GetMessageId()
	bob.unreadOf(bob.markRead(ch, 0))
	alice.receiptWhere("bob reads again", func(r *chatv1.ReceiptEvent) bool { return r.GetUserId() == "bob" && r.GetReadUpTo() == m3 })
}

// TestHistoryFoldPaging: folded pages skip edit and delete rows and say
// where to continue, also when a page folds to nothing.
func TestHistoryFoldPaging(t *testing.T) {
	e := newEnv(t, envConfig{})
	e.users("alice", "bob")
	alice := e.open("alice", "a1")
	first := alice.ackOf(alice.sendTo("bob", "p0", "first")).GetMessageId()
	const ch = "dm:alice:bob"
	// 20 edits of the first message: the newest rows are all edits.
	for i := range 20 {
		alice.ackOf(alice.edit(ch, first, fmt.Sprint("pe", i), fmt.Sprint("first v", i)))
	}
	ctx := e.ctx("alice", "a1")
	resp, err := e.client.GetHistory(ctx, &chatv1.GetHistoryRequest{ChannelId: ch, PageSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	// Four reads of two rows: only edit rows, nothing to show yet.
	if len(resp.GetMessages()) != 0 || !resp.GetMore() || resp.GetNextMessageId() == 0 {
		t.Fatalf("first page: %v", resp)
	}
	var got []*chatv1.Message
	for resp.GetMore() {
		resp, err = e.client.GetHistory(ctx, &chatv1.GetHistoryRequest{ChannelId: ch, PageSize: 2, BeforeMessageId: resp.GetNextMessageId()})
		if err != nil {
			t.Fatal(err)
		}
		got = append(resp.GetMessages(), got...)
	}
	if len(got) != 1 || got[0].GetMessageId() != first || got[0].GetText() != "first v19" || !got[0].GetEdited() {
		t.Fatalf("folded history: %v", got)
	}
	// Forward paging from the start.
	resp, err = e.client.GetHistory(ctx, &chatv1.GetHistoryRequest{ChannelId: ch, PageSize: 5, AfterMessageId: 1})
	if err != nil || len(resp.GetMessages()) != 1 || resp.GetMessages()[0].GetText() != "first v19" {
		t.Fatalf("forward page: %v %v", resp, err)
	}
	if resp.GetMore() {
		for resp.GetMore() {
			resp, err = e.client.GetHistory(ctx, &chatv1.GetHistoryRequest{ChannelId: ch, PageSize: 5, AfterMessageId: resp.GetNextMessageId()})
			if err != nil || len(resp.GetMessages()) != 0 {
				t.Fatalf("forward page: %v %v", resp, err)
			}
		}
	}
}

// TestUnreadCapped: more than MaxUnreadScan rows after the read marker
// give a capped count of the scanned rows; a delete beyond the scanned
// rows of a message within them still counts.
func TestUnreadCapped(t *testing.T) {
	e := newEnv(t, envConfig{frameRate: 1e6, frameBurst: 1e6})
	e.users("alice", "bob")
	alice := e.open("alice", "a1")
	first := alice.ackOf(alice.sendTo("bob", "cap-first", "first")).GetMessageId()
	const ch = "dm:alice:bob"
	alice.sendN(ch, MaxUnreadScan+4, "cap")
	chs, resp := e.channels("bob", "b1")
	if c := chs[ch]; c.GetUnreadCount() != MaxUnreadScan || !c.GetUnreadCapped() || resp.GetTotalUnread() != MaxUnreadScan || !resp.GetTotalCapped() {
		t.Fatalf("capped: unread %d capped %v total %d capped %v", c.GetUnreadCount(), c.GetUnreadCapped(), resp.GetTotalUnread(), resp.GetTotalCapped())
	}
	alice.ackOf(alice.del(ch, first, "cap-del", false))
	if chs, _ = e.channels("bob", "b1"); chs[ch].GetUnreadCount() != MaxUnreadScan-1 || !chs[ch].GetUnreadCapped() {
		t.Fatalf("after deleting the first: unread %d", chs[ch].GetUnreadCount())
	}
	// Reading up to the newest clears it.
	resp2, err := e.client.MarkRead(e.ctx("bob", "b1"), &chatv1.MarkReadRequest{ChannelId: ch})
	if err != nil || resp2.GetUnread().GetUnreadCount() != 0 || resp2.GetUnread().GetUnreadCapped() || resp2.GetUnread().GetTotalCapped() {
		t.Fatalf("MarkRead: %v %v", resp2, err)
	}
}

// TestHistoryByteCap (issue 17): a page of 100 texts of 64 KiB (5.25 MB
// encoded) stops near MaxHistoryPageBytes, under the 4 MiB a gRPC client
// receives by default, and paging both ways still returns every message
// once, in order.
func TestHistoryByteCap(t *testing.T) {
	e := newEnv(t, envConfig{})
	e.users("alice", "bob")
	alice := e.open("alice", "a1")
	const ch, n = "dm:alice:bob", 100
	text := strings.Repeat("x", MaxTextBytes)
	ids := make([]uint64, n)
	for i := range n {
		ids[i] = alice.ackOf(alice.sendTo("bob", fmt.Sprint("big", i), text)).GetMessageId()
	}
	ctx := e.ctx("alice", "a1")
	for _, forward := range []bool{false, true} {
		var got []uint64
		req := &chatv1.GetHistoryRequest{ChannelId: ch, PageSize: n}
		if forward {
			req.AfterMessageId = ids[0] - 1
		}
		for pages := 0; ; pages++ {
			resp, err := e.client.GetHistory(ctx, req) // default 4 MiB receive limit
			if err != nil {
				t.Fatalf("forward %v, page %d: %v", forward, pages, err)
			}
			if s := proto.Size(resp); s > MaxHistoryPageBytes+MaxTextBytes {
				t.Fatalf("page of %d bytes", s)
			}
			var page []uint64
			for _, m := range resp.GetMessages() {
				page = append(page, m.GetMessageId())
			}
			if forward {
				got = append(got, page...)
				req.AfterMessageId = resp.GetNextMessageId()
			} else {
				got = append(page, got...)
				req.BeforeMessageId = resp.GetNextMessageId()
			}
			if !resp.GetMore() {
				break
			}
			if pages > n {
				t.Fatal("paging does not end")
			}
		}
		if !slices.Equal(got, ids) {
			t.Fatalf("forward %v: got %d ids %v, want %v", forward, len(got), got, ids)
		}
	}
}

// TestFrameErrorDetails (issue 17): a FrameError carries the google.rpc
// details of its error: a frame over the rate limit says RATE_LIMITED
// (ErrorInfo, domain chatd) and how long to wait (RetryInfo, 1/rate).
func TestFrameErrorDetails(t *testing.T) {
	e := newEnv(t, envConfig{frameRate: 10, frameBurst: 1})
	e.users("alice", "bob")
	alice := e.open("alice", "a1")
	alice.ackOf(alice.sendTo("bob", "r0", "one"))
	var fe *chatv1.FrameError
	for i := 1; fe == nil && i < 50; i++ {
		f := alice.reply(alice.sendTo("bob", fmt.Sprint("r", i), "again"))
		fe = f.GetError()
	}
	if fe == nil || codes.Code(fe.GetCode()) != codes.ResourceExhausted {
		t.Fatalf("no rate-limited FrameError: %v", fe)
	}
	var info errdetails.ErrorInfo
	var retry errdetails.RetryInfo
	for _, d := range fe.GetDetails() {
		switch {
		case d.MessageIs(&info):
			_ = d.UnmarshalTo(&info)
		case d.MessageIs(&retry):
			_ = d.UnmarshalTo(&retry)
		}
	}
	if info.GetReason() != store.ReasonRateLimited || info.GetDomain() != "chatd" || retry.GetRetryDelay().AsDuration() != 100*time.Millisecond {
		t.Fatalf("details %v", fe.GetDetails())
	}
}

// TestFrameErrorField (issue 17): a send refused for its text names the
// field in a google.rpc.BadRequest.
func TestFrameErrorField(t *testing.T) {
	e := newEnv(t, envConfig{})
	e.users("alice", "bob")
	alice := e.open("alice", "a1")
	for cmid, want := range map[string]string{"long": "send.text", "": "send.client_message_id"} {
		text := strings.Repeat("x", MaxTextBytes+1)
		if cmid == "" {
			text = "hi"
		}
		fe := alice.errOf(alice.sendTo("bob", cmid, text), codes.InvalidArgument)
		var bad errdetails.BadRequest
		for _, d := range fe.GetDetails() {
			if d.MessageIs(&bad) {
				_ = d.UnmarshalTo(&bad)
			}
		}
		if len(bad.GetFieldViolations()) != 1 || bad.GetFieldViolations()[0].GetField() != want ||
			bad.GetFieldViolations()[0].GetDescription() != fe.GetMessage() {
			t.Errorf("cmid %q: details %v, want the field %s", cmid, fe.GetDetails(), want)
		}
	}
}

// inboxCounter counts the chat service's inbox reads.
type inboxCounter struct {
	store.Store
	reads atomic.Int64
}

func (c *inboxCounter) Inbox(ctx context.Context, userID string, afterSeq uint64, limit int) ([]store.Delivery, bool, error) {
	c.reads.Add(1)
	return c.Store.Inbox(ctx, userID, afterSeq, limit)
}

// TestAckMarkersFromWhatWasSent: a device that acks what its stream was
// sent live moves its delivery markers (the sender sees "delivered")
// without the server reading the inbox back; an ack of entries sent
// before the stream opened still reads it.
func TestAckMarkersFromWhatWasSent(t *testing.T) {
	var counter *inboxCounter
	e := newEnv(t, envConfig{wrap: func(st store.Store) store.Store {
		counter = &inboxCounter{Store: st}
		return counter
	}})
	e.users("alice", "bob")
	alice := e.open("alice", "a-phone")
	bob := e.open("bob", "b-phone")
	const ch = "dm:alice:bob"
	acks := []*chatv1.SendAck{alice.ackOf(alice.sendTo("bob", "first", "hello"))}
	acks = append(acks, alice.sendN(ch, 4, "m")...)
	ds := bob.deliveries(5)
	before := counter.reads.Load()
	bob.reply(bob.ack(ds[2].GetInboxSeq()))
	alice.receiptWhere("bob delivered 3", func(r *chatv1.ReceiptEvent) bool {
		return r.GetUserId() == "bob" && r.GetDeliveredUpTo() == acks[2].GetMessageId()
	})
	bob.reply(bob.ack(ds[4].GetInboxSeq()))
	alice.receiptWhere("bob delivered 5", func(r *chatv1.ReceiptEvent) bool {
		return r.GetUserId() == "bob" && r.GetDeliveredUpTo() == acks[4].GetMessageId()
	})
	if n := counter.reads.Load() - before; n != 0 {
		t.Fatalf("two acks of live deliveries read the inbox %d times, want 0", n)
	}

	// A new stream of bob's that did not send these entries: its ack of
	// them reads the inbox.
	alice.sendN(ch, 2, "n")
	bob.deliveries(2)
	bob.close()
	bob2 := e.open("bob", "b-phone")
	before = counter.reads.Load()
	bob2.reply(bob2.ack(bob2.welcome.GetHeadSeq()))
	waitFor(t, func() bool { return counter.reads.Load() > before })
}
