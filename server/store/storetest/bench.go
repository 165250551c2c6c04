package storetest

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/chatd/chatd/server/store"
)

// Bench runs the shared benchmarks. open must return a fresh, empty store
// for each sub-benchmark; Bench closes it.
//
//   - AppendBatch/msgs=N: one durable AppendBatch of N messages (100-byte
//     text), each with 2 inbox entries and a dedup record; reported per
//     batch, with msgs/s as a custom metric.
//   - InboxPage/limit=50: one Inbox read of 50 deliveries (entry scan plus
//     the join with each message) from an inbox of 1000 entries.
func Bench(b *testing.B, open func(b *testing.B) store.Store) {
	for _, n := range []int{1, 64} {
		b.Run(fmt.Sprintf("AppendBatch/msgs=%d", n), func(b *testing.B) {
			s := open(b)
			defer s.Close()
			benchAppend(b, s, n)
		})
	}
	b.Run("InboxPage/limit=50", func(b *testing.B) {
		s := open(b)
		defer s.Close()
		benchInbox(b, s, 1000, 50)
	})
}

var benchText = strings.Repeat("lorem ipsum ", 9)[:100]

// makeBatch builds a batch of n messages in channel ch with ids from id,
// each delivered to users u1 and u2 at seqs from seq.
func makeBatch(ch string, id, seq uint64, n int) *store.Batch {
	b := &store.Batch{
		Messages: make([]*store.Message, 0, n),
		Inbox:    make([]store.InboxEntry, 0, 2*n),
		Dedup:    make([]store.Dedup, 0, n),
	}
	for i := range uint64(n) {
		m := &store.Message{
			ChannelID: ch, MessageID: id + i, SenderID: "u1", SenderDeviceID: "d1",
			ClientMessageID: fmt.Sprintf("c%d", id+i), Text: benchText, CreatedAt: at(int(id + i)), Kind: store.KindText,
		}
		b.Messages = append(b.Messages, m)
		b.Inbox = append(b.Inbox,
			store.InboxEntry{UserID: "u1", Seq: seq + i, ChannelID: ch, MessageID: m.MessageID},
			store.InboxEntry{UserID: "u2", Seq: seq + i, ChannelID: ch, MessageID: m.MessageID})
		b.Dedup = append(b.Dedup, store.Dedup{SenderID: "u1", ClientMessageID: m.ClientMessageID, ChannelID: ch, MessageID: m.MessageID, CreatedAt: m.CreatedAt})
	}
	return b
}

func benchAppend(b *testing.B, s store.Store, n int) {
	ctx := context.Background()
	next := uint64(1)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		batch := makeBatch("g:bench", next, next, n)
		next += uint64(n)
		b.StartTimer()
		if err := s.AppendBatch(ctx, batch); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(int(next-1))/b.Elapsed().Seconds(), "msgs/s")
}

func benchInbox(b *testing.B, s store.Store, total, limit int) {
	ctx := context.Background()
	for id := 1; id <= total; id += 100 {
		if err := s.AppendBatch(ctx, makeBatch("g:bench", uint64(id), uint64(id), min(100, total-id+1))); err != nil {
			b.Fatal(err)
		}
	}
	after := uint64(0)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		ds, _, err := s.Inbox(ctx, "u2", after, limit)
		if err != nil {
			b.Fatal(err)
		}
		if len(ds) != limit && int(after)+limit <= total {
			b.Fatalf("Inbox returned %d deliveries, want %d", len(ds), limit)
		}
		after += uint64(limit)
		if int(after)+limit > total {
			after = 0
		}
	}
}
