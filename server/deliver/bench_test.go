package deliver_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/chatd/chatd/server/deliver"
	"github.com/chatd/chatd/server/router"
	"github.com/chatd/chatd/server/sequence"
	"github.com/chatd/chatd/server/store"
)

// BenchmarkDeliverInOrder: the hot path, a live delivery right after the
// last one sent (what every routed message takes on a healthy stream).
func BenchmarkDeliverInOrder(b *testing.B) {
	in, h := newInbox(), &heads{}
	sent := 0
	s := deliver.NewStream(deliver.Config{UserID: user, Inbox: in, Heads: h,
		Send: func(f *chatv1.ServerFrame) error { sent++; return nil }})
	defer s.Stop()
	if err := s.Start(b.Context(), 0, 0); err != nil {
		b.Fatal(err)
	}
	frames := make([]*chatv1.ServerFrame, 1024)
	for i := range frames {
		frames[i] = live(0)
	}
	q := uint64(0)
	b.ReportAllocs()
	for b.Loop() {
		q++
		f := frames[q%uint64(len(frames))]
		f.GetDelivery().InboxSeq = q
		if err := s.Deliver(b.Context(), f); err != nil {
			b.Fatal(err)
		}
	}
	if uint64(sent) != q {
		b.Fatalf("sent %d of %d", sent, q)
	}
}

// discard is a router that drops what it is given.
type discard struct{}

func (discard) Attach(context.Context, string) error        { return nil }
func (discard) Detach(context.Context, string) error        { return nil }
func (discard) Close() error                                { return nil }
func (discard) Route(context.Context, []router.Event) error { return nil }

// BenchmarkPublishFanout: the publisher turning one committed group
// message into the Delivery frames of its 100 members (what the
// sequencer's callback builds per commit); per delivery.
func BenchmarkPublishFanout(b *testing.B) {
	pub := deliver.NewPublisher(discard{}, nil)
	m := &store.Message{ChannelID: "g.01J9ZK3V5Q8Y2N7C4B6X1W0R9T", MessageID: 1, SenderID: "alice",
		Text: "see you at the station at half past six, bring the tickets", CreatedAt: time.Now(), Kind: store.KindText}
	inbox := make([]store.InboxEntry, 100)
	for i := range inbox {
		inbox[i] = store.InboxEntry{UserID: fmt.Sprintf("user-%03d", i), Seq: uint64(1000 + i)}
	}
	batch := []sequence.Committed{{Message: m, Inbox: inbox}}
	b.ReportAllocs()
	for b.Loop() {
		pub(batch)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(inbox)), "ns/delivery")
}
