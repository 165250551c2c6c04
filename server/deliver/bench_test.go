package deliver_test

import (
	"testing"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/chatd/chatd/server/deliver"
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
