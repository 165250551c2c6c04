package chat

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/chatd/chatd/server/auth"
	"github.com/chatd/chatd/server/deliver"
	"github.com/chatd/chatd/server/router"
	"github.com/chatd/chatd/server/store"
)

var errReadBeyond = status.Error(codes.FailedPrecondition, "message_id is above the channel's newest message")

// markRead moves p's read marker (and delivery marker) of channelID
// forward to messageID (0: the channel's newest message), then routes an
// UnreadEvent to p's devices (except skipDevice, which gets the returned
// event as its reply) and a ReceiptEvent to the other members. Errors:
// InvalidArgument (channel_id), NotFound (channel), PermissionDenied (not
// a member), FailedPrecondition (message_id above the newest message),
// Internal.
func (s *Service) markRead(ctx context.Context, p auth.Principal, channelID string, messageID uint64, skipDevice string) (*chatv1.UnreadEvent, error) {
	if err := checkChannelID(channelID); err != nil {
		return nil, err
	}
	if _, err := s.memberOf(ctx, channelID, p.UserID); err != nil {
		return nil, err
	}
	last, err := s.st.LastMessageID(ctx, channelID)
	if err != nil {
		return nil, s.storeErr(ctx, "MarkRead.LastMessageID", err)
	}
	if messageID == 0 {
		messageID = last
	}
	if messageID > last {
		return nil, errReadBeyond
	}
	hidden := false
	if messageID > 0 {
		if hidden, err = s.st.ReadReceiptsHidden(ctx, p.UserID); err != nil {
			return nil, s.storeErr(ctx, "MarkRead.ReadReceiptsHidden", err)
		}
		r := store.Receipt{ChannelID: channelID, UserID: p.UserID, DeliveredUpTo: messageID, ReadUpTo: messageID}
		if !hidden {
			r.ReadShownUpTo = messageID
		}
		if err := s.st.AdvanceReceipts(ctx, []store.Receipt{r}); err != nil {
			return nil, s.storeErr(ctx, "MarkRead.AdvanceReceipts", err)
		}
	}
	ev, rc, err := s.unreadEvent(ctx, channelID, p.UserID)
	if err != nil {
		return nil, s.storeErr(ctx, "MarkRead.unread", err)
	}
	events := []router.Event{{UserID: p.UserID, SkipDeviceID: skipDevice,
		Frame: &chatv1.ServerFrame{Payload: &chatv1.ServerFrame_Unread{Unread: ev}}}}
	if messageID > 0 {
		ms, err := s.st.ListMembers(ctx, channelID)
		if err != nil {
			return nil, s.storeErr(ctx, "MarkRead.ListMembers", err)
		}
		rf := &chatv1.ServerFrame{Payload: &chatv1.ServerFrame_Receipt{Receipt: &chatv1.ReceiptEvent{
			ChannelId: channelID, UserId: p.UserID, DeliveredUpTo: rc.DeliveredUpTo, ReadUpTo: rc.ReadShownUpTo,
		}}}
		for _, m := range ms {
			if m.UserID != p.UserID {
				events = append(events, router.Event{UserID: m.UserID, Frame: rf})
			}
		}
	}
	if err := s.router.Route(ctx, events); err != nil {
		s.log.Debug("chat: routing read state failed; devices see it on their next ListChannels", "channel_id", channelID, "err", err)
	}
	return ev, nil
}

// MarkRead moves the caller's read marker of a channel forward (see the
// proto). Every device of the caller gets an UnreadEvent, the other
// members a ReceiptEvent. Errors: InvalidArgument, NotFound,
// PermissionDenied, FailedPrecondition (message_id above the channel's
// newest message).
func (s *Service) MarkRead(ctx context.Context, req *chatv1.MarkReadRequest) (*chatv1.MarkReadResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	ev, err := s.markRead(ctx, p, req.GetChannelId(), req.GetMessageId(), "")
	if err != nil {
		return nil, err
	}
	return &chatv1.MarkReadResponse{Unread: ev}, nil
}

// handleMarkRead answers a MarkRead frame with the UnreadEvent (the
// caller's other devices get it pushed).
func (st *stream) handleMarkRead(id uint64, m *chatv1.MarkRead) error {
	ev, err := st.s.markRead(st.ctx, st.p, m.GetChannelId(), m.GetMessageId(), st.p.DeviceID)
	if err != nil {
		return st.replyErr(id, err)
	}
	return st.reply(&chatv1.ServerFrame{FrameId: id, Payload: &chatv1.ServerFrame_Unread{Unread: ev}})
}

// GetReceipts returns the markers of every member of a channel in
// ascending user id order (zero markers for members without any);
// read_up_to is the marker other members may see (it stays behind while
// the member hides read receipts). Errors: InvalidArgument, NotFound,
// PermissionDenied.
func (s *Service) GetReceipts(ctx context.Context, req *chatv1.GetReceiptsRequest) (*chatv1.GetReceiptsResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	ch := req.GetChannelId()
	if err := checkChannelID(ch); err != nil {
		return nil, err
	}
	if _, err := s.memberOf(ctx, ch, p.UserID); err != nil {
		return nil, err
	}
	ms, err := s.st.ListMembers(ctx, ch)
	if err != nil {
		return nil, s.storeErr(ctx, "GetReceipts.ListMembers", err)
	}
	rs, err := s.st.ListReceipts(ctx, ch)
	if err != nil {
		return nil, s.storeErr(ctx, "GetReceipts.ListReceipts", err)
	}
	byUser := make(map[string]store.Receipt, len(rs))
	for _, r := range rs {
		byUser[r.UserID] = r
	}
	resp := &chatv1.GetReceiptsResponse{Receipts: make([]*chatv1.ReceiptEvent, 0, len(ms))}
	for _, m := range ms {
		r := byUser[m.UserID]
		resp.Receipts = append(resp.Receipts, &chatv1.ReceiptEvent{
			ChannelId: ch, UserId: m.UserID, DeliveredUpTo: r.DeliveredUpTo, ReadUpTo: r.ReadShownUpTo,
		})
	}
	return resp, nil
}

// SetReadReceipts records whether the caller hides their read receipts.
// While hidden, MarkRead moves the caller's own read marker (their unread
// counts) but not the one other members see; showing them again lets it
// catch up at the caller's next MarkRead of each channel.
func (s *Service) SetReadReceipts(ctx context.Context, req *chatv1.SetReadReceiptsRequest) (*chatv1.SetReadReceiptsResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.st.SetReadReceiptsHidden(ctx, p.UserID, req.GetHideReadReceipts()); err != nil {
		return nil, s.storeErr(ctx, "SetReadReceiptsHidden", err)
	}
	return &chatv1.SetReadReceiptsResponse{HideReadReceipts: req.GetHideReadReceipts()}, nil
}

// noteDelivered runs after a device of user acked its inbox up to cur
// (from prev): for every channel with entries by other users in (prev,
// cur] (at most the newest MaxDeliveredScan entries), it raises the user's
// delivery marker to the highest message_id acked there and routes a
// ReceiptEvent (read_up_to 0: unchanged) to the authors of those entries.
// The entries come from sent (what the device's stream sent it, when that
// covers the range) or else from the inbox. Failures are logged: delivery
// markers are advisory and the next ack moves them again.
func (s *Service) noteDelivered(ctx context.Context, user string, prev, cur uint64, sent *deliver.SentLog) {
	if cur <= prev {
		return
	}
	from := prev
	if cur-prev > MaxDeliveredScan {
		from = cur - MaxDeliveredScan
	}
	var ents []deliver.SentEntry
	ok := false
	if sent != nil {
		ents, ok = sent.Acked(from, cur)
	}
	if !ok {
		ds, _, err := s.st.Inbox(ctx, user, from, int(cur-from))
		if err != nil {
			if !errors.Is(err, context.Canceled) {
				s.log.Warn("chat: reading acked inbox entries failed; delivery markers not moved", "user_id", user, "err", err)
			}
			return
		}
		ents = make([]deliver.SentEntry, 0, len(ds))
		for _, d := range ds {
			if d.Seq > cur {
				break
			}
			m := d.Message
			ents = append(ents, deliver.SentEntry{Seq: d.Seq, ChannelID: m.ChannelID, MessageID: m.MessageID, SenderID: m.SenderID})
		}
	}
	type chState struct {
		top     uint64
		authors []string
	}
	var order []string
	chans := map[string]*chState{}
	for _, m := range ents {
		if m.SenderID == user {
			continue
		}
		c := chans[m.ChannelID]
		if c == nil {
			c = &chState{}
			chans[m.ChannelID] = c
			order = append(order, m.ChannelID)
		}
		c.top = max(c.top, m.MessageID)
		if !contains(c.authors, m.SenderID) {
			c.authors = append(c.authors, m.SenderID)
		}
	}
	if len(order) == 0 {
		return
	}
	rs := make([]store.Receipt, 0, len(order))
	for _, ch := range order {
		rs = append(rs, store.Receipt{ChannelID: ch, UserID: user, DeliveredUpTo: chans[ch].top})
	}
	if err := s.st.AdvanceReceipts(ctx, rs); err != nil {
		s.log.Warn("chat: moving delivery markers failed", "user_id", user, "err", err)
		return
	}
	var events []router.Event
	for _, ch := range order {
		c := chans[ch]
		f := &chatv1.ServerFrame{Payload: &chatv1.ServerFrame_Receipt{Receipt: &chatv1.ReceiptEvent{
			ChannelId: ch, UserId: user, DeliveredUpTo: c.top,
		}}}
		for _, a := range c.authors {
			events = append(events, router.Event{UserID: a, Frame: f})
		}
	}
	if err := s.router.Route(ctx, events); err != nil {
		s.log.Debug("chat: routing delivery receipts failed", "user_id", user, "err", err)
	}
}

// startMarkers sets a new member's markers to the channel's newest
// message, so that the history from before they joined is not unread.
func (s *Service) startMarkers(ctx context.Context, channelID, userID string) error {
	last, err := s.st.LastMessageID(ctx, channelID)
	if err != nil || last == 0 {
		return err
	}
	return s.st.AdvanceReceipts(ctx, []store.Receipt{{
		ChannelID: channelID, UserID: userID, DeliveredUpTo: last, ReadUpTo: last, ReadShownUpTo: last,
	}})
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
