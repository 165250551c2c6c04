package client

import (
	"context"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// Conversation state on the Chat stream: read markers, receipts, edits and
// deletes (docs/conversation.md).
//
// The server pushes two kinds of events besides deliveries:
//   - ReceiptEvent (Session.Receipts): a member's delivery or read marker
//     of a channel moved. Markers only grow; apply them as
//     max(known, received), since events may arrive out of order, and
//     treat 0 as "not in this event".
//   - UnreadEvent (Session.UnreadEvents): the user's read marker of a
//     channel moved, from any of the user's devices, with the resulting
//     unread count of that channel and in total. Apply one only if its
//     read_up_to is at least the one you hold for that channel.
//
// The authoritative counts are those of ListChannels (Channel.unread_count,
// ListChannelsResponse.total_unread): the server computes them from the
// stored rows. Between two of them an application may count a delivered
// text message of another user, after the read marker, as one more unread.

// WithEventBuffer sets the capacity of the Receipts and UnreadEvents
// channels (default DefaultEventBuffer, minimum 1). Events that do not fit
// are dropped (counted in SessionStats); GetReceipts and ListChannels
// return the current state.
func WithEventBuffer(n int) SessionOption {
	return func(o *sessionOptions) { o.eventBuffer = max(n, 1) }
}

// Receipts returns the ReceiptEvents pushed to this device: other
// members' delivery and read markers of the user's channels. The channel
// is bounded (WithEventBuffer) and closed when the session ends.
func (s *Session) Receipts() <-chan *chatv1.ReceiptEvent { return s.receipts }

// UnreadEvents returns the UnreadEvents pushed to this device when the
// user's read marker of a channel moved (MarkRead on another device, or
// the MarkRead RPC). The reply to this session's own MarkRead is returned
// by MarkRead, not sent here. Bounded (WithEventBuffer), closed when the
// session ends.
func (s *Session) UnreadEvents() <-chan *chatv1.UnreadEvent { return s.unread }

// MarkRead marks channelID read up to and including messageID (0: up to
// the channel's newest message) and returns the resulting read state; the
// user's other devices get it as an UnreadEvent, the other members a
// ReceiptEvent. Read markers never move backwards. Errors (status codes):
// InvalidArgument (channel id), NotFound (no such channel),
// PermissionDenied (not a member), FailedPrecondition (messageID above the
// channel's newest message), the session's end error, or ctx's error.
func (s *Session) MarkRead(ctx context.Context, channelID string, messageID uint64) (*chatv1.UnreadEvent, error) {
	f, err := s.roundTrip(ctx, &chatv1.ClientFrame{Payload: &chatv1.ClientFrame_MarkRead{
		MarkRead: &chatv1.MarkRead{ChannelId: channelID, MessageId: messageID},
	}})
	if err != nil {
		return nil, err
	}
	ev := f.GetUnread()
	if ev == nil {
		return nil, unexpectedReply(f, "UnreadEvent")
	}
	return ev, nil
}

// EditParams describes an edit of one of the user's text messages.
type EditParams struct {
	ChannelID string
	MessageID uint64
	// Text replaces the message's text (validated like a send).
	Text string
	// ClientMessageID is the idempotency key (1..64 bytes); random if
	// empty.
	ClientMessageID string
}

// Edit replaces the text of one of the user's messages (within the
// server's edit window, 48 h by default) and returns the ack of the new
// EDIT row, which every member's devices receive as a delivery (kind
// EDIT, ref_message_id = MessageID). Errors: InvalidArgument, NotFound
// (no such channel or message), PermissionDenied (not a member, not the
// author), FailedPrecondition (outside the edit window, the message is
// deleted or not a text message, too many edits), the session's end
// error, or ctx's error.
func (s *Session) Edit(ctx context.Context, p EditParams) (*chatv1.SendAck, error) {
	if p.ClientMessageID == "" {
		p.ClientMessageID = NewClientMessageID()
	}
	return s.revision(ctx, &chatv1.ClientFrame{Payload: &chatv1.ClientFrame_Edit{Edit: &chatv1.EditMessage{
		ChannelId: p.ChannelID, MessageId: p.MessageID, ClientMessageId: p.ClientMessageID, Text: p.Text,
	}}})
}

// DeleteParams describes a delete of a text message.
type DeleteParams struct {
	ChannelID string
	MessageID uint64
	// ForMe deletes the message for the user only (any member may);
	// otherwise it is deleted for everyone (its author, or a group's
	// owner or admin).
	ForMe bool
	// ClientMessageID is the idempotency key (1..64 bytes); random if
	// empty.
	ClientMessageID string
}

// Delete deletes a message and returns the ack of the new DELETE row
// (delivered to every member's devices, or with ForMe only to the user's
// own devices, with for_user set). Errors: InvalidArgument, NotFound,
// PermissionDenied (not a member; deleting someone else's message for
// everyone without being a group owner or admin), FailedPrecondition
// (already deleted, not a text message), the session's end error, or
// ctx's error.
func (s *Session) Delete(ctx context.Context, p DeleteParams) (*chatv1.SendAck, error) {
	if p.ClientMessageID == "" {
		p.ClientMessageID = NewClientMessageID()
	}
	return s.revision(ctx, &chatv1.ClientFrame{Payload: &chatv1.ClientFrame_Delete{Delete: &chatv1.DeleteMessage{
		ChannelId: p.ChannelID, MessageId: p.MessageID, ClientMessageId: p.ClientMessageID, ForMe: p.ForMe,
	}}})
}

func (s *Session) revision(ctx context.Context, f *chatv1.ClientFrame) (*chatv1.SendAck, error) {
	reply, err := s.roundTrip(ctx, f)
	if err != nil {
		return nil, err
	}
	ack := reply.GetSendAck()
	if ack == nil {
		return nil, unexpectedReply(reply, "SendAck")
	}
	return ack, nil
}

// ApplyRevision applies a delivered EDIT or DELETE row to a message the
// application holds (matched by channel and ref_message_id), the way the
// server folds history for viewer: an edit by the author replaces the
// text and sets edited/edited_at; a delete for everyone makes a tombstone
// (deleted, empty text). It returns the updated message (a copy), and
// hide=true for a delete for the viewer only (drop the message). Rows
// that do not apply to m (another message, an edit by someone else,
// another user's "for me" row) return m unchanged.
func ApplyRevision(m *chatv1.Message, rev *chatv1.Message, viewer string) (out *chatv1.Message, hide bool, err error) {
	if m == nil || rev == nil {
		return m, false, status.Error(codes.InvalidArgument, "client: nil message")
	}
	if rev.GetChannelId() != m.GetChannelId() || rev.GetRefMessageId() != m.GetMessageId() {
		return m, false, nil
	}
	switch rev.GetKind() {
	case chatv1.MessageKind_MESSAGE_KIND_EDIT:
		if rev.GetSenderId() != m.GetSenderId() || m.GetDeleted() {
			return m, false, nil
		}
		if m.GetEdited() && m.GetEditedAt() != nil && rev.GetCreatedAt() != nil &&
			rev.GetCreatedAt().AsTime().Before(m.GetEditedAt().AsTime()) {
			return m, false, nil // an older edit arriving late
		}
		c := cloneMessage(m)
		c.Text, c.Edited, c.EditedAt = rev.GetText(), true, rev.GetCreatedAt()
		return c, false, nil
	case chatv1.MessageKind_MESSAGE_KIND_DELETE:
		switch rev.GetForUser() {
		case "":
			c := cloneMessage(m)
			c.Text, c.Deleted, c.Edited, c.EditedAt = "", true, false, nil
			return c, false, nil
		case viewer:
			return m, true, nil
		}
	}
	return m, false, nil
}

func cloneMessage(m *chatv1.Message) *chatv1.Message {
	return proto.Clone(m).(*chatv1.Message)
}
