package pebble

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chatd/chatd/server/store"
)

// TestBlockCacheSurvivesMemtables: pebble reserves the memory of its
// memtables inside the block cache, so a cache sized without them holds
// no block at all once the memtables have grown, and every point read
// (a dedup lookup per send) decodes index and filter blocks from disk.
// After enough appends to fill several memtables, repeated lookups must
// be served from the cache.
func TestBlockCacheSurvivesMemtables(t *testing.T) {
	s, err := Open(t.TempDir(), WithCacheSize(1<<20), WithMemTableSize(1<<20))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	text := strings.Repeat("x", 200)
	n := 0
	for range 200 { // 200 batches x 64 messages x ~500 B: several 1 MiB memtables
		var b store.Batch
		for range 64 {
			n++
			u, ch, cm := fmt.Sprintf("u%03d", n%100), fmt.Sprintf("c%03d", n%300), fmt.Sprintf("m%08d", n)
			b.Messages = append(b.Messages, &store.Message{ChannelID: ch, MessageID: uint64(n), SenderID: u, SenderDeviceID: "d",
				ClientMessageID: cm, Text: text, CreatedAt: time.UnixMilli(int64(n)), Kind: store.KindText})
			b.Inbox = append(b.Inbox, store.InboxEntry{UserID: u, Seq: uint64(n), ChannelID: ch, MessageID: uint64(n)})
			b.Dedup = append(b.Dedup, store.Dedup{SenderID: u, ClientMessageID: cm, ChannelID: ch, MessageID: uint64(n), CreatedAt: time.UnixMilli(int64(n))})
		}
		if err := s.AppendBatch(ctx, &b); err != nil {
			t.Fatal(err)
		}
	}
	// Settle the tables (flush, then compact everything) so that no
	// compaction replaces them while the lookups run.
	if err := s.db.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := s.db.Compact(ctx, []byte{0}, []byte{0xff}, false); err != nil {
		t.Fatal(err)
	}
	if tables := s.db.Metrics().Total().TablesCount; tables == 0 {
		t.Fatal("no sstables: the test reads nothing from tables")
	}
	lookups := func() {
		for i := range 2000 {
			if _, err := s.LookupDedup(ctx, fmt.Sprintf("u%03d", i%100), fmt.Sprintf("missing%d", i)); !errors.Is(err, store.ErrNotFound) {
				t.Fatal(err)
			}
		}
	}
	lookups() // the first read of each block misses
	m0 := s.db.Metrics().BlockCache
	lookups() // the same lookups again: from the cache
	m1 := s.db.Metrics().BlockCache
	hits, misses := m1.Hits-m0.Hits, m1.Misses-m0.Misses
	if hits == 0 || misses > hits/10 {
		t.Fatalf("block cache during 2,000 lookups: %d hits, %d misses (cache holds %d blocks, %d bytes): the memtables' reservation left no room for blocks",
			hits, misses, m1.Count, m1.Size)
	}
}
