package chat

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
)

// testClock is a service clock that tests can move forward.
type testClock struct{ offset atomic.Int64 }

func (c *testClock) now() time.Time          { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *testClock) advance(d time.Duration) { c.offset.Add(int64(d)) }

func (d *dev) markRead(channel string, messageID uint64) uint64 {
	id := d.frameID()
	d.sendFrame(&chatv1.ClientFrame{FrameId: id, Payload: &chatv1.ClientFrame_MarkRead{MarkRead: &chatv1.MarkRead{ChannelId: channel, MessageId: messageID}}})
	return id
}

func (d *dev) edit(channel string, messageID uint64, cmid, text string) uint64 {
	id := d.frameID()
	d.sendFrame(&chatv1.ClientFrame{FrameId: id, Payload: &chatv1.ClientFrame_Edit{Edit: &chatv1.EditMessage{
		ChannelId: channel, MessageId: messageID, ClientMessageId: cmid, Text: text}}})
	return id
}

func (d *dev) del(channel string, messageID uint64, cmid string, forMe bool) uint64 {
	id := d.frameID()
	d.sendFrame(&chatv1.ClientFrame{FrameId: id, Payload: &chatv1.ClientFrame_Delete{Delete: &chatv1.DeleteMessage{
		ChannelId: channel, MessageId: messageID, ClientMessageId: cmid, ForMe: forMe}}})
	return id
}

// unreadOf waits for the UnreadEvent answering frame id.
func (d *dev) unreadOf(id uint64) *chatv1.UnreadEvent {
	d.t.Helper()
	f := d.reply(id)
	if f.GetUnread() == nil {
		d.t.Fatalf("%s/%s: reply to %d is not an UnreadEvent: %v", d.user, d.device, id, f)
	}
	return f.GetUnread()
}

// waitFrame reads until a frame matching pred arrives (pending first) and
// returns it; frames read on the way are kept for later.
func (d *dev) waitFrame(what string, pred func(*chatv1.ServerFrame) bool) *chatv1.ServerFrame {
	d.t.Helper()
	for i, f := range d.pending {
		if pred(f) {
			d.pending = append(d.pending[:i:i], d.pending[i+1:]...)
			return f
		}
	}
	var skipped []*chatv1.ServerFrame
	defer func() { d.pending = append(d.pending, skipped...) }()
	timeout := time.After(wait)
	for {
		select {
		case f, ok := <-d.frames:
			if !ok {
				d.t.Fatalf("%s/%s: stream ended waiting for %s: %v", d.user, d.device, what, <-d.end)
			}
			if pred(f) {
				return f
			}
			skipped = append(skipped, f)
		case <-timeout:
			d.t.Fatalf("%s/%s: no %s within %v", d.user, d.device, what, wait)
		}
	}
}

// receiptWhere waits for a pushed ReceiptEvent matching pred.
func (d *dev) receiptWhere(what string, pred func(*chatv1.ReceiptEvent) bool) *chatv1.ReceiptEvent {
	d.t.Helper()
	return d.waitFrame("receipt "+what, func(f *chatv1.ServerFrame) bool {
		return f.GetReceipt() != nil && pred(f.GetReceipt())
	}).GetReceipt()
}

// unreadWhere waits for a pushed UnreadEvent matching pred.
func (d *dev) unreadWhere(what string, pred func(*chatv1.UnreadEvent) bool) *chatv1.UnreadEvent {
	d.t.Helper()
	return d.waitFrame("unread "+what, func(f *chatv1.ServerFrame) bool {
		return f.GetFrameId() == 0 && f.GetUnread() != nil && pred(f.GetUnread())
	}).GetUnread()
}

// channels returns the ListChannels view of (user, device), all pages.
func (e *env) channels(user, device string) (map[string]*chatv1.Channel, *chatv1.ListChannelsResponse) {
	e.t.Helper()
	out := map[string]*chatv1.Channel{}
	var first *chatv1.ListChannelsResponse
	token := ""
	for {
		resp, err := e.client.ListChannels(e.ctx(user, device), &chatv1.ListChannelsRequest{PageToken: token})
		if err != nil {
			e.t.Fatalf("ListChannels(%s/%s): %v", user, device, err)
		}
		if first == nil {
			first = resp
		}
		for _, c := range resp.GetChannels() {
			out[c.GetChannelId()] = c
		}
		if token = resp.GetNextPageToken(); token == "" {
			return out, first
		}
	}
}

// history returns the folded (or raw) history of a channel for a user.
func (e *env) history(user, channel string, raw bool) []*chatv1.Message {
	e.t.Helper()
	var out []*chatv1.Message
	before := uint64(0)
	for {
		resp, err := e.client.GetHistory(e.ctx(user, "hist"), &chatv1.GetHistoryRequest{ChannelId: channel, BeforeMessageId: before, PageSize: 500, Raw: raw})
		if err != nil {
			e.t.Fatalf("GetHistory(%s, %s): %v", user, channel, err)
		}
		out = append(resp.GetMessages(), out...)
		if !resp.GetMore() {
			return out
		}
		before = resp.GetNextMessageId()
	}
}

func wantCode(t testing.TB, what string, err error, code codes.Code) {
	t.Helper()
	if statusCode(err) != code {
		t.Fatalf("%s: got %v, want %v", what, err, code)
	}
}

// sendN sends n texts from d into channel and returns their acks.
func (d *dev) sendN(channel string, n int, prefix string) []*chatv1.SendAck {
	d.t.Helper()
	ids := make([]uint64, n)
	for i := range n {
		ids[i] = d.sendIn(channel, fmt.Sprintf("%s-%d", prefix, i), fmt.Sprintf("%s %d", prefix, i))
	}
	acks := make([]*chatv1.SendAck, n)
	for i, id := range ids {
		acks[i] = d.ackOf(id)
	}
	return acks
}
