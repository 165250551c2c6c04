package deliver

import (
	"context"
	"log/slog"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
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
	return NewTracedPublisher(r, logger, nil)
}

// NewTracedPublisher is NewPublisher that, with a tracer, records under
// the "sequence" span of a traced message (sequence.Committed.Trace) a
// "route" span (the batch's deliveries built) and under it a "deliver"
// span (Router.Route: handed to this server's streams or to its peers);
// the other traced messages of the batch are linked. tracer nil: no
// tracing work.
func NewTracedPublisher(r router.Router, logger *slog.Logger, tracer trace.Tracer) func([]sequence.Committed) {
	if logger == nil {
		logger = slog.Default()
	}
	return func(batch []sequence.Committed) {
		ctx := context.Background()
		if tracer != nil {
			var route trace.Span
			if ctx, route = startRoute(tracer, batch); route != nil {
				defer route.End()
			}
		}
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
				events = append(events, router.Event{UserID: e.UserID, Frame: newDeliveryFrame(e.Seq, msg)})
			}
		}
		if tracer != nil && trace.SpanContextFromContext(ctx).IsValid() {
			var sp trace.Span
			ctx, sp = tracer.Start(ctx, "deliver", trace.WithAttributes(attribute.Int("chat.events", len(events))))
			defer sp.End()
		}
		if err := r.Route(ctx, events); err != nil {
			logger.WarnContext(ctx, "chat: routing deliveries failed; devices will sync", "events", len(events), "err", err)
		}
	}
}

// startRoute starts the "route" span of a batch under its first traced
// message's sequence span, linking the others; no span (ctx unchanged,
// nil) when no message was traced.
func startRoute(tracer trace.Tracer, batch []sequence.Committed) (context.Context, trace.Span) {
	var parent trace.SpanContext
	var links []trace.Link
	for i := range batch {
		if sc := batch[i].Trace; sc.IsValid() {
			if !parent.IsValid() {
				parent = sc
			} else {
				links = append(links, trace.Link{SpanContext: sc})
			}
		}
	}
	if !parent.IsValid() {
		return context.Background(), nil
	}
	return tracer.Start(trace.ContextWithSpanContext(context.Background(), parent), "route",
		trace.WithLinks(links...), trace.WithAttributes(attribute.Int("chat.batch.messages", len(batch))))
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
	return newDeliveryFrame(d.Seq, MessageProto(d.Message))
}

// deliveryFrameAlloc is a Delivery frame's three parts in one allocation
// (a fan-out builds one frame per member).
type deliveryFrameAlloc struct {
	frame   chatv1.ServerFrame
	payload chatv1.ServerFrame_Delivery
	d       chatv1.Delivery
}

// newDeliveryFrame is the Delivery frame of inbox seq of msg (shared, not
// copied), allocated at once.
func newDeliveryFrame(seq uint64, msg *chatv1.Message) *chatv1.ServerFrame {
	a := &deliveryFrameAlloc{}
	a.d.InboxSeq, a.d.Message = seq, msg
	a.payload.Delivery = &a.d
	a.frame.Payload = &a.payload
	return &a.frame
}
