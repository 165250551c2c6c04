package storetest

import (
	"context"
	"fmt"
	"slices"
	"testing"

	"github.com/chatd/chatd/server/store"
)

// Inbox seqs are not dense in the cluster: a user's seqs jump after the
// allocator loses its Redis state (by up to a Step, 10,000 by default,
// per loss; losses add up) and skip abandoned allocations. The cases below
// place seqs across and over whole partitions of a store that splits an
// inbox into partitions of PartitionSeqs seqs (store/scylla does, with
// this size); for a store that does not, they are plain gaps.

// PartitionSeqs is the inbox partition size the hole cases are built
// around (store/scylla.InboxBucketSeqs).
const PartitionSeqs = 100_000

// place writes one message per seq (channel "c", message_id = seq) and
// the user's inbox entries, all in one batch.
func place(t testing.TB, s store.Store, user string, qs ...uint64) {
	t.Helper()
	b := &store.Batch{}
	for _, q := range qs {
		b.Messages = append(b.Messages, msg("c", q, int(q%1000), fmt.Sprintf("m%d", q)))
		b.Inbox = append(b.Inbox, store.InboxEntry{UserID: user, Seq: q, ChannelID: "c", MessageID: q})
	}
	noErr(t, "AppendBatch", s.AppendBatch(context.Background(), b))
}

// readAll pages through the user's inbox after after with the given limit
// and returns the seqs, checking every delivery's message.
func readAll(t testing.TB, s store.Store, user string, after uint64, limit int) []uint64 {
	t.Helper()
	var got []uint64
	for page := 0; ; page++ {
		if page > 1000 {
			t.Fatalf("Inbox(%q) after %d, limit %d: paging does not end", user, after, limit)
		}
		ds, more, err := s.Inbox(context.Background(), user, after, limit)
		noErr(t, "Inbox", err)
		for _, d := range ds {
			if d.Message == nil || d.Message.MessageID != d.Seq || d.Message.Text != fmt.Sprintf("m%d", d.Seq) {
				t.Fatalf("Inbox(%q): seq %d with message %+v", user, d.Seq, d.Message)
			}
			got = append(got, d.Seq)
		}
		if !more {
			return got
		}
		if len(ds) == 0 {
			t.Fatalf("Inbox(%q) after %d: more without entries", user, after)
		}
		after = ds[len(ds)-1].Seq
	}
}

func lastSeq(t testing.TB, s store.Store, user string, want uint64) {
	t.Helper()
	got, err := s.LastInboxSeq(context.Background(), user)
	noErr(t, "LastInboxSeq", err)
	if got != want {
		t.Fatalf("LastInboxSeq(%q) = %d, want %d", user, got, want)
	}
}

const P = PartitionSeqs

// testInboxSpanningPartitions: seqs on both sides of partition boundaries,
// some written by one batch, read with every page size.
func testInboxSpanningPartitions(t *testing.T, s store.Store) {
	all := []uint64{1, 2, P - 2, P - 1, P, P + 1, 2*P - 1, 2 * P, 2*P + 1, 3*P - 1, 3 * P}
	place(t, s, "bob", all[:5]...)
	place(t, s, "bob", all[5:]...)
	for _, limit := range []int{1, 2, 3, 5, 100} {
		if got := readAll(t, s, "bob", 0, limit); !slices.Equal(got, all) {
			t.Fatalf("limit %d: %v, want %v", limit, got, all)
		}
	}
	inbox(t, s, "bob", P-2, 2, []uint64{P - 1, P}, true)
	inbox(t, s, "bob", P-1, 1, []uint64{P}, true)
	inbox(t, s, "bob", 2*P-1, 100, []uint64{2 * P, 2*P + 1, 3*P - 1, 3 * P}, false)
	inbox(t, s, "bob", 3*P, 10, nil, false)
	lastSeq(t, s, "bob", 3*P)
}

// testInboxHoles: the seqs of a user near a partition boundary jump into
// the next partition (cursor 90,010, next seq 100,011, as after a loss of
// Redis), then over a whole partition (350,000) and over ten (1,350,000).
// Every page reaches the next entry however many partitions lie between.
func testInboxHoles(t *testing.T, s store.Store) {
	low := span(90_000, 90_010)
	place(t, s, "bob", low...)
	place(t, s, "bob", P+11, P+12, P+13)
	place(t, s, "bob", 3*P+50_000, 3*P+50_001)
	place(t, s, "bob", 13*P+50_000)
	all := append(slices.Clone(low), P+11, P+12, P+13, 3*P+50_000, 3*P+50_001, 13*P+50_000)
	for _, limit := range []int{1, 2, 4, 100} {
		if got := readAll(t, s, "bob", 0, limit); !slices.Equal(got, all) {
			t.Fatalf("limit %d: %v, want %v", limit, got, all)
		}
	}
	inbox(t, s, "bob", 90_010, 100, []uint64{P + 11, P + 12, P + 13, 3*P + 50_000, 3*P + 50_001, 13*P + 50_000}, false)
	inbox(t, s, "bob", 90_010, 1, []uint64{P + 11}, true)
	inbox(t, s, "bob", P+13, 1, []uint64{3*P + 50_000}, true)
	inbox(t, s, "bob", P+13, 2, []uint64{3*P + 50_000, 3*P + 50_001}, true)
	inbox(t, s, "bob", 3*P+50_001, 5, []uint64{13*P + 50_000}, false)
	inbox(t, s, "bob", 90_010, 0, nil, true)
	inbox(t, s, "bob", 3*P+50_001, 0, nil, true)
	inbox(t, s, "bob", 13*P+50_000, 0, nil, false)
	inbox(t, s, "bob", 13*P+50_000, 5, nil, false)
	// A hole in the middle of the seqs read at once: several partitions
	// written by one batch, with empty partitions between them.
	place(t, s, "carol", 5, P+5, 4*P+5, 9*P+5)
	if got := readAll(t, s, "carol", 0, 3); !slices.Equal(got, []uint64{5, P + 5, 4*P + 5, 9*P + 5}) {
		t.Fatalf("carol: %v", got)
	}
}

// testInboxSyncFromEmptyPartition: a sync whose after_seq lies in a
// partition that holds nothing past it, or nothing at all.
func testInboxSyncFromEmptyPartition(t *testing.T, s store.Store) {
	place(t, s, "bob", P+11, 3*P+50_000, 13*P+50_000)
	inbox(t, s, "bob", P+11, 10, []uint64{3*P + 50_000, 13*P + 50_000}, false)  // partition 1 has nothing past after
	inbox(t, s, "bob", 2*P+5, 10, []uint64{3*P + 50_000, 13*P + 50_000}, false) // partition 2 is empty
	inbox(t, s, "bob", 3*P+50_000, 1, []uint64{13*P + 50_000}, false)
	inbox(t, s, "bob", 10*P, 1, []uint64{13*P + 50_000}, false) // partition 10 is empty
	inbox(t, s, "bob", 0, 1, []uint64{P + 11}, true)            // partition 0 is empty
	inbox(t, s, "bob", 50, 10, []uint64{P + 11, 3*P + 50_000, 13*P + 50_000}, false)
	inbox(t, s, "bob", 13*P+50_001, 10, nil, false)
	inbox(t, s, "bob", 20*P, 10, nil, false)
}

// testInboxLastSeqAcrossHoles: LastInboxSeq finds the last seq whatever
// partitions are empty below it, and grows as later ones fill.
func testInboxLastSeqAcrossHoles(t *testing.T, s store.Store) {
	place(t, s, "bob", 3*P+50_000) // no entry in partitions 0 to 2
	lastSeq(t, s, "bob", 3*P+50_000)
	place(t, s, "bob", 13*P+50_000)
	lastSeq(t, s, "bob", 13*P+50_000)
	place(t, s, "bob", 13*P+50_001, 40*P)
	lastSeq(t, s, "bob", 40*P)
	place(t, s, "carol", 90_010, P+11)
	lastSeq(t, s, "carol", P+11)
	lastSeq(t, s, "dave", 0)
}
