package deliver

import (
	"context"
	"log/slog"

	"google.golang.org/protobuf/types/known/timestamppb"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/chatd/chatd/server/router"
	"github.com/chatd/chatd/server/sequence"
	"github.com/chatd/chatd/server/store"
)

// NewPublisher returns a sequencer publish callback: it routes through r
// one Delivery frame per recipient user of every committed message (with
// that user's inbox_seq), in commit order, all of a batch in one Route
// call. It never blocks on a device; a routing error is logged (the
// devices recover by sync). logger may be nil (slog.Default()).
func NewPublisher(r router.Router, logger *slog.Logger) func([]sequence.Committed) {
	if logger == nil {
		logger = slog.Default()
	}
	return func(batch []sequence.Committed) {
		n := 0
		for i := range batch {
			n += len(batch[i].Inbox)
		}
		if n == 0 {
			return
		}
		events := make([]router.Event, 0, n)
		for i := range batch {
			msg := MessageProto(batch[i].Message)
			for _, e := range batch[i].Inbox {
				events = append(events, router.Event{
					UserID: e.UserID,
					Frame: &chatv1.ServerFrame{Payload: &chatv1.ServerFrame_Delivery{
						Delivery: &chatv1.Delivery{InboxSeq: e.Seq, Message: msg},
					}},
				})
			}
		}
		if err := r.Route(context.Background(), events); err != nil {
			logger.Warn("chat: routing deliveries failed; devices will sync", "events", len(events), "err", err)
		}
	}
}

// MessageProto converts a stored message to its wire form.
func MessageProto(m *store.Message) *chatv1.Message {
	return &chatv1.Message{
		ChannelId:       m.ChannelID,
		MessageId:       m.MessageID,
		SenderId:        m.SenderID,
		SenderDeviceId:  m.SenderDeviceID,
		ClientMessageId: m.ClientMessageID,
		Text:            m.Text,
		CreatedAt:       timestamppb.New(m.CreatedAt),
		Kind:            chatv1.MessageKind(m.Kind),
		RefMessageId:    m.RefMessageID,
		ForUser:         m.ForUser,
	}
}

// DeliveryFrame is the live Delivery frame of an inbox entry.
func DeliveryFrame(d store.Delivery) *chatv1.ServerFrame {
	return &chatv1.ServerFrame{Payload: &chatv1.ServerFrame_Delivery{
		Delivery: &chatv1.Delivery{InboxSeq: d.Seq, Message: MessageProto(d.Message)},
	}}
}
