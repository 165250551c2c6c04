package client_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/chatd/chatd/client"
	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/chatd/chatd/server/app"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func nextReceipt(t *testing.T, ctx context.Context, s *client.Session, pred func(*chatv1.ReceiptEvent) bool) *chatv1.ReceiptEvent {
	t.Helper()
	for {
		select {
		case r, ok := <-s.Receipts():
			if !ok {
				t.Fatalf("session ended: %v", s.Err())
			}
			if pred(r) {
				return r
			}
		case <-ctx.Done():
			t.Fatalf("no matching receipt: %v", ctx.Err())
		}
	}
}

// TestConversationSDK: receipts, unread events, edits and deletes through
// the SDK against a whole server.
func TestConversationSDK(t *testing.T) {
	a := startServer(t, app.Config{})
	ctx := testContext(t)
	alice := newUser(t, ctx, a.GRPCAddr(), "alice")
	bobPhone := newUser(t, ctx, a.GRPCAddr(), "bob")
	bobLaptop, err := client.Dial(a.GRPCAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer bobLaptop.Close()
	if _, err := bobLaptop.LogIn(ctx, "bob", password, "bob-laptop"); err != nil {
		t.Fatal(err)
	}
	as := connect(t, ctx, alice)
	phone := connect(t, ctx, bobPhone, client.WithAutoAck(0))
	laptop := connect(t, ctx, bobLaptop)

	var last *chatv1.SendAck
	for i := range 3 {
		if last, err = as.Send(ctx, client.SendParams{ToUser: "bob", Text: fmt.Sprint("hello ", i)}); err != nil {
			t.Fatal(err)
		}
	}
	ch := last.GetChannelId()
	var held []*chatv1.Message
	for range 3 {
		held = append(held, next(t, ctx, phone).GetMessage())
	}
	// The phone acks automatically: alice sees "delivered".
	nextReceipt(t, ctx, as, func(r *chatv1.ReceiptEvent) bool {
		return r.GetUserId() == "bob" && r.GetDeliveredUpTo() == last.GetMessageId()
	})
	// Bob reads on the laptop: alice sees "read", the phone gets 0 unread.
	ev, err := laptop.MarkRead(ctx, ch, 0)
	if err != nil || ev.GetUnreadCount() != 0 || ev.GetReadUpTo() != last.GetMessageId() {
		t.Fatalf("MarkRead: %v %v", ev, err)
	}
	nextReceipt(t, ctx, as, func(r *chatv1.ReceiptEvent) bool {
		return r.GetUserId() == "bob" && r.GetReadUpTo() == last.GetMessageId()
	})
	select {
	case u := <-phone.UnreadEvents():
		if u.GetChannelId() != ch || u.GetUnreadCount() != 0 || u.GetTotalUnread() != 0 {
			t.Fatalf("phone's UnreadEvent: %v", u)
		}
	case <-ctx.Done():
		t.Fatal("no UnreadEvent on the phone")
	}
	if _, err := laptop.MarkRead(ctx, ch, last.GetMessageId()+1); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("MarkRead beyond the newest: %v", err)
	}

	// Edit and delete; the phone folds the delivered rows like the server.
	if _, err := as.Edit(ctx, client.EditParams{ChannelID: ch, MessageID: held[0].GetMessageId(), Text: "hello, edited"}); err != nil {
		t.Fatal(err)
	}
	if _, err := as.Delete(ctx, client.DeleteParams{ChannelID: ch, MessageID: held[1].GetMessageId()}); err != nil {
		t.Fatal(err)
	}
	if _, err := phone.Delete(ctx, client.DeleteParams{ChannelID: ch, MessageID: held[2].GetMessageId(), ForMe: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := phone.Edit(ctx, client.EditParams{ChannelID: ch, MessageID: held[0].GetMessageId(), Text: "not mine"}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("editing alice's message: %v", err)
	}
	var shown []*chatv1.Message
	revs := []*chatv1.Message{next(t, ctx, phone).GetMessage(), next(t, ctx, phone).GetMessage(), next(t, ctx, phone).GetMessage()}
	for _, m := range held {
		hide := false
		for _, r := range revs {
			var h bool
			if m, h, err = client.ApplyRevision(m, r, "bob"); err != nil {
				t.Fatal(err)
			}
			hide = hide || h
		}
		if !hide {
			shown = append(shown, m)
		}
	}
	hist, err := bobPhone.Chat().GetHistory(ctx, &chatv1.GetHistoryRequest{ChannelId: ch})
	if err != nil {
		t.Fatal(err)
	}
	if len(shown) != 2 || len(hist.GetMessages()) != 2 {
		t.Fatalf("folded on the phone %v, server %v", shown, hist.GetMessages())
	}
	for i, m := range hist.GetMessages() {
		s := shown[i]
		if s.GetMessageId() != m.GetMessageId() || s.GetText() != m.GetText() || s.GetEdited() != m.GetEdited() || s.GetDeleted() != m.GetDeleted() {
			t.Fatalf("message %d: phone %v, server %v", i, s, m)
		}
	}
	if !shown[0].GetEdited() || shown[0].GetText() != "hello, edited" || !shown[1].GetDeleted() {
		t.Fatalf("folded: %v", shown)
	}
	// Receipts via the RPC.
	rs, err := alice.Chat().GetReceipts(ctx, &chatv1.GetReceiptsRequest{ChannelId: ch})
	if err != nil || len(rs.GetReceipts()) != 2 || rs.GetReceipts()[1].GetReadUpTo() != last.GetMessageId() {
		t.Fatalf("GetReceipts: %v %v", rs, err)
	}
}

func TestApplyRevision(t *testing.T) {
	m := &chatv1.Message{ChannelId: "dm:a:b", MessageId: 10, SenderId: "a", Text: "hi", Kind: chatv1.MessageKind_MESSAGE_KIND_TEXT}
	edit := func(sender string, ref uint64) *chatv1.Message {
		return &chatv1.Message{ChannelId: "dm:a:b", MessageId: 20, SenderId: sender, Text: "hello", Kind: chatv1.MessageKind_MESSAGE_KIND_EDIT, RefMessageId: ref}
	}
	del := func(forUser string) *chatv1.Message {
		return &chatv1.Message{ChannelId: "dm:a:b", MessageId: 30, SenderId: "b", Kind: chatv1.MessageKind_MESSAGE_KIND_DELETE, RefMessageId: 10, ForUser: forUser}
	}
	cases := []struct {
		name     string
		rev      *chatv1.Message
		text     string
		edited   bool
		deleted  bool
		hide     bool
		viewer   string
		original bool
	}{
		{name: "edit by the author", rev: edit("a", 10), text: "hello", edited: true, viewer: "b"},
		{name: "edit by someone else", rev: edit("b", 10), text: "hi", viewer: "b", original: true},
		{name: "edit of another message", rev: edit("a", 11), text: "hi", viewer: "b", original: true},
		{name: "delete for everyone", rev: del(""), deleted: true, viewer: "b"},
		{name: "delete for the viewer", rev: del("b"), text: "hi", hide: true, viewer: "b", original: true},
		{name: "delete for another user", rev: del("c"), text: "hi", viewer: "b", original: true},
	}
	for _, c := range cases {
		got, hide, err := client.ApplyRevision(m, c.rev, c.viewer)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if got.GetText() != c.text || got.GetEdited() != c.edited || got.GetDeleted() != c.deleted || hide != c.hide {
			t.Errorf("%s: %v hide=%v", c.name, got, hide)
		}
		if c.original != (got == m) {
			t.Errorf("%s: returned a copy %v, want original %v", c.name, got != m, c.original)
		}
	}
	if m.GetText() != "hi" || m.GetEdited() || m.GetDeleted() {
		t.Fatalf("ApplyRevision changed its input: %v", m)
	}
	if _, _, err := client.ApplyRevision(nil, edit("a", 10), "b"); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("nil message: %v", err)
	}
}
