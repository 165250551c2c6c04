package push_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/chatd/chatd/server/hub"
	"github.com/chatd/chatd/server/push"
	"github.com/chatd/chatd/server/router/local"
	"github.com/chatd/chatd/server/sequence"
	"github.com/chatd/chatd/server/store"
	"github.com/chatd/chatd/server/store/pebble"
)

// BenchmarkCommittedAllOnline is what enabling push adds to the commit
// path of a 1:1 message when every recipient is online: the dispatcher's
// hook over one committed batch of 35 messages (the mean group commit of
// the 1:1 maximum in docs/performance.md), each to its sender and one
// recipient, with the real hub answering HasStream. Reported per message.
func BenchmarkCommittedAllOnline(b *testing.B) {
	h := hub.New(hub.Config{})
	h.SetRouter(local.New(h.Deliver))
	ctx := context.Background()
	const users = 100
	for i := range users {
		if _, err := h.Register(ctx, fmt.Sprintf("u%d", i), "d", 0); err != nil {
			b.Fatal(err)
		}
	}
	st, err := pebble.Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	d, err := push.New(push.Config{Store: st, Queue: st, HasStream: h.HasStream,
		Unread: func(context.Context, string, string) (uint32, uint32, error) { return 0, 0, nil }})
	if err != nil {
		b.Fatal(err)
	}
	const batchLen = 35
	batch := make([]sequence.Committed, batchLen)
	now := time.Now()
	for i := range batch {
		from, to := fmt.Sprintf("u%d", i%users), fmt.Sprintf("u%d", (i+1)%users)
		batch[i] = sequence.Committed{
			Message: &store.Message{ChannelID: "dm:" + from + ":" + to, MessageID: uint64(i + 1), SenderID: from, Kind: store.KindText, CreatedAt: now},
			Inbox:   []store.InboxEntry{{UserID: from, Seq: 1}, {UserID: to, Seq: 1}},
		}
	}
	b.ReportAllocs()
	for b.Loop() {
		d.Committed(batch)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batchLen), "ns/msg")
}
