package pebble

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/chatd/chatd/server/store"
)

// BenchmarkSendPathReads is the point reads of the send and ack paths
// (a dedup lookup that misses, a device cursor advance) against a store
// holding ~40k messages of the pairs load shape (1,000 users, 2 inbox rows
// and a dedup row per message, acks moving cursors and delivery markers)
// in its memtable, for two memtable sizes. A memtable seek walks a
// skiplist through the arena: cache misses, more of them the larger the
// arena.
func BenchmarkSendPathReads(b *testing.B) {
	for _, mt := range []uint64{32 << 20, 8 << 20, 4 << 20} {
		b.Run(fmt.Sprintf("memtable=%dMiB", mt>>20), func(b *testing.B) {
			s, err := Open(b.TempDir(), quiet, WithMemTableSize(mt))
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			ctx := context.Background()
			const users = 1000
			now := time.Now().UTC().Truncate(time.Millisecond)
			for u := range users {
				if err := s.PutDevice(ctx, &store.Device{UserID: fmt.Sprint("u", u), DeviceID: "d", Name: "bench", CreatedAt: now}); err != nil {
					b.Fatal(err)
				}
			}
			seq := make([]uint64, users)
			for i := 0; i < 40000; i += 8 {
				var bt store.Batch
				for k := i; k < i+8; k++ {
					from, to := k%(users/2), k%(users/2)+users/2
					ch := fmt.Sprintf("dm:u%d:u%d", from, to)
					id := uint64(k + 1)
					bt.Messages = append(bt.Messages, &store.Message{ChannelID: ch, MessageID: id, SenderID: fmt.Sprint("u", from), SenderDeviceID: "d",
						ClientMessageID: fmt.Sprint("cm", k), Text: string(make([]byte, 100)), CreatedAt: now, Kind: store.KindText})
					seq[from]++
					seq[to]++
					bt.Inbox = append(bt.Inbox, store.InboxEntry{UserID: fmt.Sprint("u", from), Seq: seq[from], ChannelID: ch, MessageID: id},
						store.InboxEntry{UserID: fmt.Sprint("u", to), Seq: seq[to], ChannelID: ch, MessageID: id})
					bt.Dedup = append(bt.Dedup, store.Dedup{SenderID: fmt.Sprint("u", from), ClientMessageID: fmt.Sprint("cm", k), ChannelID: ch, MessageID: id, CreatedAt: now})
				}
				if err := s.AppendBatch(ctx, &bt); err != nil {
					b.Fatal(err)
				}
				for k := i; k < i+8; k++ {
					to := k%(users/2) + users/2
					if _, err := s.AdvanceCursor(ctx, fmt.Sprint("u", to), "d", seq[to]); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportAllocs()
			b.ResetTimer()
			i := 0
			for b.Loop() {
				i++
				if _, err := s.LookupDedup(ctx, fmt.Sprint("u", i%users), fmt.Sprint("missing", i)); err != store.ErrNotFound {
					b.Fatal(err)
				}
				if _, err := s.AdvanceCursor(ctx, fmt.Sprint("u", i%users), "d", uint64(1e6+i)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
