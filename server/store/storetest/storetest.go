// Package storetest is the conformance suite every store.Store
// implementation must pass, and a shared benchmark set so that all
// implementations are measured the same way.
//
// Use it from the implementation's tests:
//
//	func TestConformance(t *testing.T) {
//		storetest.Run(t, func(t *testing.T) store.Store { return openFresh(t) })
//	}
//
//	func BenchmarkStore(b *testing.B) {
//		storetest.Bench(b, func(b *testing.B) store.Store { return openFresh(b) })
//	}
//
// Times written by the suite have millisecond precision (the documented
// precision of the store) and are compared with time.Time.Equal.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatd/chatd/server/store"
)

// base is the suite's reference time, ms precision.
var base = time.UnixMilli(1_750_000_000_000).UTC()

func at(sec int) time.Time { return base.Add(time.Duration(sec) * time.Second) }

// Run runs the conformance suite. open must return a fresh, empty store for
// each subtest; the suite closes it.
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s store.Store)
	}{
		{"Messages/RoundTrip", testMessageRoundTrip},
		{"Messages/LargeText64KiB", testLargeText},
		{"Messages/EmptyBatch", testEmptyBatch},
		{"Messages/IdempotentReplay", testIdempotentReplay},
		{"Messages/BatchVisibleAtomically", testBatchAtomicVisibility},
		{"Messages/LastIDsEmpty", testLastIDsEmpty},
		{"Messages/LastIDsPrefixIsolation", testLastIDsIsolation},
		{"Messages/NumericOrder", testNumericOrder},
		{"History/Empty", testHistoryEmpty},
		{"History/BackwardPaging", testHistoryBackward},
		{"History/ForwardPaging", testHistoryForward},
		{"History/LimitZero", testHistoryLimitZero},
		{"History/ChannelIsolation", testHistoryIsolation},
		{"Inbox/Paging", testInboxPaging},
		{"Inbox/JoinAcrossChannels", testInboxJoin},
		{"Inbox/UserIsolation", testInboxIsolation},
		{"Inbox/SpanningPartitions", testInboxSpanningPartitions},
		{"Inbox/HolesLargerThanPartition", testInboxHoles},
		{"Inbox/SyncFromEmptyPartition", testInboxSyncFromEmptyPartition},
		{"Inbox/LastSeqAcrossHoles", testInboxLastSeqAcrossHoles},
		{"Dedup/Lookup", testDedup},
		{"Dedup/Placements", testDedupPlacements},
		{"Dedup/Fingerprint", testDedupFingerprint},
		{"Inbox/EntryAt", testInboxEntryAt},
		{"Users/CreateGetUpdate", testUsers},
		{"Users/ConcurrentCreate", testUsersConcurrentCreate},
		{"Users/LookAlikeRefused", testUsersLookAlike},
		{"Users/LookAlikeConcurrentCreate", testUsersLookAlikeConcurrent},
		{"Devices/PutGetList", testDevices},
		{"Devices/PutKeepsCursor", testPutDeviceKeepsCursor},
		{"Devices/AdvanceCursor", testAdvanceCursor},
		{"Devices/AdvanceCursorConcurrent", testAdvanceCursorConcurrent},
		{"Contacts", testContacts},
		{"Channels/CreateGet", testChannelCreate},
		{"Channels/CreateGroupFull", testChannelCreateFull},
		{"Channels/AddMember", testAddMember},
		{"Channels/AddMemberAtLimit", testAddMemberLimit},
		{"Channels/AddMemberConcurrent", testAddMemberConcurrent},
		{"Channels/RemoveMember", testRemoveMember},
		{"Channels/ListUserChannelsActivity", testListUserChannels},
		{"Channels/ListUserChannelsPaging", testListUserChannelsPaging},
	}
	tests = append(tests, conversationTests...)
	tests = append(tests, pushTests...)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := open(t)
			defer func() {
				if err := s.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
			}()
			tc.fn(t, s)
		})
	}
}

// ------------------------------------------------------------- helpers

func msg(ch string, id uint64, sec int, text string) *store.Message {
	return &store.Message{
		ChannelID:       ch,
		MessageID:       id,
		SenderID:        "alice",
		SenderDeviceID:  "phone",
		ClientMessageID: fmt.Sprintf("c-%s-%d", ch, id),
		Text:            text,
		CreatedAt:       at(sec),
		Kind:            store.KindText,
	}
}

func appendMsgs(t testing.TB, s store.Store, msgs ...*store.Message) {
	t.Helper()
	if err := s.AppendBatch(context.Background(), &store.Batch{Messages: msgs}); err != nil {
		t.Fatalf("AppendBatch: %v", err)
	}
}

// channelOf writes messages ids 1..n (CreatedAt = id seconds) in ch.
func channelOf(t testing.TB, s store.Store, ch string, n int) {
	t.Helper()
	var msgs []*store.Message
	for i := 1; i <= n; i++ {
		msgs = append(msgs, msg(ch, uint64(i), i, fmt.Sprintf("m%d", i)))
	}
	appendMsgs(t, s, msgs...)
}

func eqMsg(t testing.TB, got, want *store.Message) {
	t.Helper()
	if got == nil {
		t.Fatalf("message %s/%d: got nil", want.ChannelID, want.MessageID)
	}
	if got.ChannelID != want.ChannelID || got.MessageID != want.MessageID ||
		got.SenderID != want.SenderID || got.SenderDeviceID != want.SenderDeviceID ||
		got.ClientMessageID != want.ClientMessageID || got.Text != want.Text ||
		!got.CreatedAt.Equal(want.CreatedAt) || got.Kind != want.Kind ||
		got.RefMessageID != want.RefMessageID || got.ForUser != want.ForUser {
		t.Fatalf("message mismatch:\n got  %+v\n want %+v", short(got), short(want))
	}
}

func short(m *store.Message) store.Message {
	c := *m
	if len(c.Text) > 64 {
		c.Text = c.Text[:64] + fmt.Sprintf("...(%d bytes)", len(m.Text))
	}
	return c
}

func ids(msgs []*store.Message) []uint64 {
	out := make([]uint64, 0, len(msgs))
	for _, m := range msgs {
		out = append(out, m.MessageID)
	}
	return out
}

func seqs(ds []store.Delivery) []uint64 {
	out := make([]uint64, 0, len(ds))
	for _, d := range ds {
		out = append(out, d.Seq)
	}
	return out
}

func span(lo, hi uint64) []uint64 {
	var out []uint64
	for i := lo; i <= hi; i++ {
		out = append(out, i)
	}
	return out
}

func history(t testing.TB, s store.Store, ch string, before, after uint64, limit int, wantIDs []uint64, wantMore bool) {
	t.Helper()
	msgs, more, err := s.History(context.Background(), ch, before, after, limit)
	if err != nil {
		t.Fatalf("History(%q, before=%d, after=%d, limit=%d): %v", ch, before, after, limit, err)
	}
	if got := ids(msgs); !slices.Equal(got, wantIDs) || more != wantMore {
		t.Fatalf("History(%q, before=%d, after=%d, limit=%d) = %v more=%v, want %v more=%v",
			ch, before, after, limit, got, more, wantIDs, wantMore)
	}
	for _, m := range msgs {
		if m.ChannelID != ch {
			t.Fatalf("History(%q) returned message of channel %q", ch, m.ChannelID)
		}
	}
}

func inbox(t testing.TB, s store.Store, user string, after uint64, limit int, wantSeqs []uint64, wantMore bool) []store.Delivery {
	t.Helper()
	ds, more, err := s.Inbox(context.Background(), user, after, limit)
	if err != nil {
		t.Fatalf("Inbox(%q, after=%d, limit=%d): %v", user, after, limit, err)
	}
	if got := seqs(ds); !slices.Equal(got, wantSeqs) || more != wantMore {
		t.Fatalf("Inbox(%q, after=%d, limit=%d) = %v more=%v, want %v more=%v",
			user, after, limit, got, more, wantSeqs, wantMore)
	}
	return ds
}

func wantErr(t testing.TB, what string, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("%s: got error %v, want %v", what, err, target)
	}
}

func noErr(t testing.TB, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// ------------------------------------------------------------- messages

func testMessageRoundTrip(t *testing.T, s store.Store) {
	ctx := context.Background()
	m1 := msg("g:team", 1, 1, "hello, 世界 👋")
	m2 := &store.Message{ChannelID: "g:team", MessageID: 2, SenderID: "zoë", SenderDeviceID: "日本",
		ClientMessageID: "cm:2", Text: "edited", CreatedAt: at(2), Kind: store.KindEdit, RefMessageID: 1}
	m3 := &store.Message{ChannelID: "g:team", MessageID: 3, SenderID: "system", Kind: store.KindSystem,
		Text: "zoë joined", CreatedAt: at(3)}
	noErr(t, "AppendBatch", s.AppendBatch(ctx, &store.Batch{Messages: []*store.Message{m1, m2, m3}}))
	for _, want := range []*store.Message{m1, m2, m3} {
		got, err := s.GetMessage(ctx, want.ChannelID, want.MessageID)
		noErr(t, "GetMessage", err)
		eqMsg(t, got, want)
	}
	_, err := s.GetMessage(ctx, "g:team", 4)
	wantErr(t, "GetMessage(unknown id)", err, store.ErrNotFound)
	_, err = s.GetMessage(ctx, "g:other", 1)
	wantErr(t, "GetMessage(unknown channel)", err, store.ErrNotFound)
	_, err = s.GetMessage(ctx, "g:team", 0)
	wantErr(t, "GetMessage(id 0)", err, store.ErrNotFound)
}

func testLargeText(t *testing.T, s store.Store) {
	ctx := context.Background()
	// 64 KiB of valid UTF-8 covering 1- to 4-byte runes, NUL included.
	var sb strings.Builder
	runes := []rune{0, 'a', '\n', 'é', '€', '日', '😀', 0x7f, 0x10FFFF}
	for i := 0; sb.Len() < 64<<10-4; i++ {
		sb.WriteRune(runes[i%len(runes)])
	}
	for sb.Len() < 64<<10 {
		sb.WriteByte('x')
	}
	text := sb.String()
	if len(text) != 64<<10 {
		t.Fatalf("test bug: text is %d bytes", len(text))
	}
	m := msg("d:alice:bob", 7, 1, text)
	appendMsgs(t, s, m)
	got, err := s.GetMessage(ctx, m.ChannelID, 7)
	noErr(t, "GetMessage", err)
	if got.Text != text {
		t.Fatalf("64 KiB text did not round-trip byte for byte (got %d bytes)", len(got.Text))
	}
	msgs, _, err := s.History(ctx, m.ChannelID, 0, 0, 10)
	noErr(t, "History", err)
	if len(msgs) != 1 || msgs[0].Text != text {
		t.Fatalf("History did not return the 64 KiB text intact")
	}
}

func testEmptyBatch(t *testing.T, s store.Store) {
	ctx := context.Background()
	noErr(t, "AppendBatch(empty)", s.AppendBatch(ctx, &store.Batch{}))
	history(t, s, "c", 0, 0, 10, nil, false)
}

func testIdempotentReplay(t *testing.T, s store.Store) {
	ctx := context.Background()
	b := &store.Batch{
		Messages: []*store.Message{msg("c1", 1, 1, "one"), msg("c1", 2, 2, "two"), msg("c2", 1, 3, "other")},
		Inbox: []store.InboxEntry{
			{UserID: "bob", Seq: 1, ChannelID: "c1", MessageID: 1},
			{UserID: "bob", Seq: 2, ChannelID: "c1", MessageID: 2},
			{UserID: "bob", Seq: 3, ChannelID: "c2", MessageID: 1},
			{UserID: "carol", Seq: 1, ChannelID: "c2", MessageID: 1},
		},
		Dedup: []store.Dedup{{SenderID: "alice", ClientMessageID: "x1", ChannelID: "c1", MessageID: 2, CreatedAt: at(2)}},
	}
	for i := 0; i < 3; i++ {
		noErr(t, "AppendBatch", s.AppendBatch(ctx, b))
	}
	history(t, s, "c1", 0, 0, 10, []uint64{1, 2}, false)
	history(t, s, "c2", 0, 0, 10, []uint64{1}, false)
	ds := inbox(t, s, "bob", 0, 10, []uint64{1, 2, 3}, false)
	eqMsg(t, ds[2].Message, b.Messages[2])
	inbox(t, s, "carol", 0, 10, []uint64{1}, false)
	last, err := s.LastMessageID(ctx, "c1")
	noErr(t, "LastMessageID", err)
	if last != 2 {
		t.Fatalf("LastMessageID after replay = %d, want 2", last)
	}
	seq, err := s.LastInboxSeq(ctx, "bob")
	noErr(t, "LastInboxSeq", err)
	if seq != 3 {
		t.Fatalf("LastInboxSeq after replay = %d, want 3", seq)
	}
	d, err := s.LookupDedup(ctx, "alice", "x1")
	noErr(t, "LookupDedup", err)
	if d.ChannelID != "c1" || d.MessageID != 2 {
		t.Fatalf("LookupDedup after replay = %+v", d)
	}
}

// testBatchAtomicVisibility: every part of a batch is readable once
// AppendBatch returns, and a concurrent reader never sees an inbox entry
// whose message is missing.
func testBatchAtomicVisibility(t *testing.T, s store.Store) {
	ctx := context.Background()
	const n = 40
	done := make(chan struct{})
	var readErr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			default:
			}
			ds, _, err := s.Inbox(ctx, "bob", 0, n)
			if err != nil {
				readErr = err
				return
			}
			for _, d := range ds {
				if d.Message == nil || d.Message.MessageID != d.Seq || d.Message.Text != fmt.Sprintf("m%d", d.Seq) {
					readErr = fmt.Errorf("seq %d delivered with message %+v", d.Seq, d.Message)
					return
				}
			}
		}
	}()
	for i := uint64(1); i <= n; i++ {
		m := msg("c", i, int(i), fmt.Sprintf("m%d", i))
		err := s.AppendBatch(ctx, &store.Batch{
			Messages: []*store.Message{m},
			Inbox:    []store.InboxEntry{{UserID: "bob", Seq: i, ChannelID: "c", MessageID: i}},
			Dedup:    []store.Dedup{{SenderID: "alice", ClientMessageID: m.ClientMessageID, ChannelID: "c", MessageID: i, CreatedAt: m.CreatedAt}},
		})
		noErr(t, "AppendBatch", err)
		// Everything is visible as soon as AppendBatch returned.
		got, err := s.GetMessage(ctx, "c", i)
		noErr(t, "GetMessage", err)
		eqMsg(t, got, m)
		if seq, err := s.LastInboxSeq(ctx, "bob"); err != nil || seq != i {
			t.Fatalf("LastInboxSeq = %d, %v; want %d", seq, err, i)
		}
		if d, err := s.LookupDedup(ctx, "alice", m.ClientMessageID); err != nil || d.MessageID != i {
			t.Fatalf("LookupDedup = %+v, %v; want message %d", d, err, i)
		}
	}
	close(done)
	wg.Wait()
	if readErr != nil {
		t.Fatalf("concurrent Inbox: %v", readErr)
	}
	inbox(t, s, "bob", 0, n, span(1, n), false)
}

func testLastIDsEmpty(t *testing.T, s store.Store) {
	ctx := context.Background()
	last, err := s.LastMessageID(ctx, "nobody")
	noErr(t, "LastMessageID", err)
	seq, err2 := s.LastInboxSeq(ctx, "nobody")
	noErr(t, "LastInboxSeq", err2)
	if last != 0 || seq != 0 {
		t.Fatalf("empty store: LastMessageID=%d LastInboxSeq=%d, want 0 0", last, seq)
	}
}

// testLastIDsIsolation: ids that are prefixes of each other (and contain
// ':' or non-ASCII) do not leak into each other's ranges.
func testLastIDsIsolation(t *testing.T, s store.Store) {
	ctx := context.Background()
	err := s.AppendBatch(ctx, &store.Batch{
		Messages: []*store.Message{
			msg("a", 5, 1, "x"), msg("ab", 9, 1, "x"), msg("a:b", 11, 1, "x"), msg("日本", 3, 1, "x"),
		},
		Inbox: []store.InboxEntry{
			{UserID: "zo", Seq: 4, ChannelID: "a", MessageID: 5},
			{UserID: "zoë", Seq: 7, ChannelID: "ab", MessageID: 9},
			{UserID: "zo:e", Seq: 8, ChannelID: "a:b", MessageID: 11},
		},
	})
	noErr(t, "AppendBatch", err)
	for ch, want := range map[string]uint64{"a": 5, "ab": 9, "a:b": 11, "日本": 3, "": 0, "a:": 0, "日": 0} {
		got, err := s.LastMessageID(ctx, ch)
		noErr(t, "LastMessageID", err)
		if got != want {
			t.Errorf("LastMessageID(%q) = %d, want %d", ch, got, want)
		}
	}
	for u, want := range map[string]uint64{"zo": 4, "zoë": 7, "zo:e": 8, "z": 0} {
		got, err := s.LastInboxSeq(ctx, u)
		noErr(t, "LastInboxSeq", err)
		if got != want {
			t.Errorf("LastInboxSeq(%q) = %d, want %d", u, got, want)
		}
	}
}

// testNumericOrder: message ids sort numerically, not lexically, across
// byte boundaries.
func testNumericOrder(t *testing.T, s store.Store) {
	ctx := context.Background()
	want := []uint64{1, 2, 255, 256, 257, 65535, 65536, 1 << 32, 1<<40 + 3, 1<<63 + 5}
	var msgs []*store.Message
	for i := len(want) - 1; i >= 0; i-- { // inserted in reverse
		msgs = append(msgs, msg("c", want[i], i, fmt.Sprint(want[i])))
	}
	appendMsgs(t, s, msgs...)
	history(t, s, "c", 0, 0, 100, want, false)
	history(t, s, "c", 0, 256, 3, []uint64{257, 65535, 65536}, true)
	history(t, s, "c", 1<<32, 0, 2, []uint64{65535, 65536}, true)
	last, err := s.LastMessageID(ctx, "c")
	noErr(t, "LastMessageID", err)
	if last != 1<<63+5 {
		t.Fatalf("LastMessageID = %d, want %d", last, uint64(1<<63+5))
	}
}

// ------------------------------------------------------------- history

func testHistoryEmpty(t *testing.T, s store.Store) {
	history(t, s, "c", 0, 0, 10, nil, false)
	history(t, s, "c", 5, 0, 10, nil, false)
	history(t, s, "c", 0, 5, 10, nil, false)
}

func testHistoryBackward(t *testing.T, s store.Store) {
	channelOf(t, s, "c", 10)
	history(t, s, "c", 0, 0, 3, []uint64{8, 9, 10}, true)
	history(t, s, "c", 8, 0, 3, []uint64{5, 6, 7}, true)
	history(t, s, "c", 5, 0, 3, []uint64{2, 3, 4}, true)
	history(t, s, "c", 2, 0, 3, []uint64{1}, false)
	history(t, s, "c", 1, 0, 3, nil, false)
	// limit equal to what remains: no more.
	history(t, s, "c", 4, 0, 3, []uint64{1, 2, 3}, false)
	history(t, s, "c", 0, 0, 10, span(1, 10), false)
	history(t, s, "c", 0, 0, 100, span(1, 10), false)
	history(t, s, "c", 0, 0, 9, span(2, 10), true)
	history(t, s, "c", 0, 0, 1, []uint64{10}, true)
	// before beyond the newest reads from the newest.
	history(t, s, "c", 1000, 0, 2, []uint64{9, 10}, true)
	// Walk all pages with limit 4 and check every message once, in order.
	var all []uint64
	before := uint64(0)
	for pages := 0; ; pages++ {
		if pages > 10 {
			t.Fatal("backward paging does not terminate")
		}
		msgs, more, err := s.History(context.Background(), "c", before, 0, 4)
		noErr(t, "History", err)
		all = append(ids(msgs), all...)
		if !more {
			break
		}
		before = msgs[0].MessageID
	}
	if !slices.Equal(all, span(1, 10)) {
		t.Fatalf("backward pages joined = %v", all)
	}
}

func testHistoryForward(t *testing.T, s store.Store) {
	channelOf(t, s, "c", 10)
	history(t, s, "c", 0, 3, 3, []uint64{4, 5, 6}, true)
	history(t, s, "c", 0, 6, 3, []uint64{7, 8, 9}, true)
	history(t, s, "c", 0, 7, 3, []uint64{8, 9, 10}, false)
	history(t, s, "c", 0, 9, 5, []uint64{10}, false)
	history(t, s, "c", 0, 10, 5, nil, false)
	history(t, s, "c", 0, 1000, 5, nil, false)
	history(t, s, "c", 0, 1, 100, span(2, 10), false)
	// after wins over before.
	history(t, s, "c", 5, 2, 2, []uint64{3, 4}, true)
	history(t, s, "c", 5, 2, 100, span(3, 10), false)
	// Forward paging from the oldest message (after == 0 would read
	// backward, so the walk starts after message 1).
	all := []uint64{1}
	after := uint64(1)
	for pages := 0; ; pages++ {
		if pages > 10 {
			t.Fatal("forward paging does not terminate")
		}
		msgs, more, err := s.History(context.Background(), "c", 0, after, 4)
		noErr(t, "History", err)
		all = append(all, ids(msgs)...)
		if !more {
			break
		}
		after = msgs[len(msgs)-1].MessageID
	}
	if !slices.Equal(all, span(1, 10)) {
		t.Fatalf("forward pages joined = %v", all)
	}
}

// testHistoryLimitZero: limit 0 returns no messages; more reports whether
// any exist in the reading direction.
func testHistoryLimitZero(t *testing.T, s store.Store) {
	history(t, s, "c", 0, 0, 0, nil, false)
	channelOf(t, s, "c", 3)
	history(t, s, "c", 0, 0, 0, nil, true)
	history(t, s, "c", 1, 0, 0, nil, false)
	history(t, s, "c", 0, 2, 0, nil, true)
	history(t, s, "c", 0, 3, 0, nil, false)
}

func testHistoryIsolation(t *testing.T, s store.Store) {
	channelOf(t, s, "a", 3)
	channelOf(t, s, "ab", 5)
	channelOf(t, s, "a:b", 4)
	channelOf(t, s, "日本", 2)
	history(t, s, "a", 0, 0, 10, span(1, 3), false)
	history(t, s, "a", 0, 1, 10, span(2, 3), false)
	history(t, s, "ab", 0, 0, 10, span(1, 5), false)
	history(t, s, "a:b", 0, 0, 10, span(1, 4), false)
	history(t, s, "日本", 0, 0, 10, span(1, 2), false)
	history(t, s, "a:", 0, 0, 10, nil, false)
	history(t, s, "日", 0, 0, 10, nil, false)
}

// ------------------------------------------------------------- inbox

// inboxOf writes n messages in channel "c" and places message i at seq i in
// the user's inbox, in batches of 3.
func inboxOf(t testing.TB, s store.Store, user string, n int) {
	t.Helper()
	for lo := 1; lo <= n; lo += 3 {
		b := &store.Batch{}
		for i := lo; i < lo+3 && i <= n; i++ {
			b.Messages = append(b.Messages, msg("c", uint64(i), i, fmt.Sprintf("m%d", i)))
			b.Inbox = append(b.Inbox, store.InboxEntry{UserID: user, Seq: uint64(i), ChannelID: "c", MessageID: uint64(i)})
		}
		noErr(t, "AppendBatch", s.AppendBatch(context.Background(), b))
	}
}

func testInboxPaging(t *testing.T, s store.Store) {
	inbox(t, s, "bob", 0, 10, nil, false)
	inbox(t, s, "bob", 0, 0, nil, false)
	inboxOf(t, s, "bob", 10)
	ds := inbox(t, s, "bob", 0, 4, span(1, 4), true)
	for _, d := range ds {
		eqMsg(t, d.Message, msg("c", d.Seq, int(d.Seq), fmt.Sprintf("m%d", d.Seq)))
	}
	inbox(t, s, "bob", 4, 4, span(5, 8), true)
	inbox(t, s, "bob", 8, 4, span(9, 10), false)
	inbox(t, s, "bob", 6, 4, span(7, 10), false) // exactly the rest
	inbox(t, s, "bob", 10, 4, nil, false)
	inbox(t, s, "bob", 1000, 4, nil, false)
	inbox(t, s, "bob", 0, 100, span(1, 10), false)
	inbox(t, s, "bob", 0, 1, []uint64{1}, true)
	inbox(t, s, "bob", 0, 0, nil, true)
	inbox(t, s, "bob", 9, 0, nil, true)
	inbox(t, s, "bob", 10, 0, nil, false)
	seq, err := s.LastInboxSeq(context.Background(), "bob")
	noErr(t, "LastInboxSeq", err)
	if seq != 10 {
		t.Fatalf("LastInboxSeq = %d, want 10", seq)
	}
}

// testInboxJoin: entries reference messages of several channels, including
// messages written by an earlier batch; the message text is joined in.
func testInboxJoin(t *testing.T, s store.Store) {
	ctx := context.Background()
	old := msg("d:bob:zoë", 1, 1, "earlier")
	appendMsgs(t, s, old)
	m1 := msg("g:team", 41, 2, "team news")
	m2 := msg("日本", 7, 3, "こんにちは")
	err := s.AppendBatch(ctx, &store.Batch{
		Messages: []*store.Message{m1, m2},
		Inbox: []store.InboxEntry{
			{UserID: "zoë", Seq: 1, ChannelID: "d:bob:zoë", MessageID: 1},
			{UserID: "zoë", Seq: 2, ChannelID: "g:team", MessageID: 41},
			{UserID: "zoë", Seq: 3, ChannelID: "日本", MessageID: 7},
		},
	})
	noErr(t, "AppendBatch", err)
	ds := inbox(t, s, "zoë", 0, 10, []uint64{1, 2, 3}, false)
	eqMsg(t, ds[0].Message, old)
	eqMsg(t, ds[1].Message, m1)
	eqMsg(t, ds[2].Message, m2)
	ds = inbox(t, s, "zoë", 1, 1, []uint64{2}, true)
	eqMsg(t, ds[0].Message, m1)
}

func testInboxIsolation(t *testing.T, s store.Store) {
	inboxOf(t, s, "bo", 2)
	err := s.AppendBatch(context.Background(), &store.Batch{Inbox: []store.InboxEntry{
		{UserID: "bob", Seq: 1, ChannelID: "c", MessageID: 2},
		{UserID: "bo:b", Seq: 5, ChannelID: "c", MessageID: 1},
	}})
	noErr(t, "AppendBatch", err)
	inbox(t, s, "bo", 0, 10, []uint64{1, 2}, false)
	ds := inbox(t, s, "bob", 0, 10, []uint64{1}, false)
	if ds[0].Message.MessageID != 2 {
		t.Fatalf("bob seq 1 -> message %d, want 2", ds[0].Message.MessageID)
	}
	inbox(t, s, "bo:b", 0, 10, []uint64{5}, false)
	inbox(t, s, "b", 0, 10, nil, false)
}

// ------------------------------------------------------------- dedup

func testDedup(t *testing.T, s store.Store) {
	ctx := context.Background()
	d := store.Dedup{SenderID: "zoë", ClientMessageID: "c:1", ChannelID: "g:日本", MessageID: 77, CreatedAt: at(5)}
	noErr(t, "AppendBatch", s.AppendBatch(ctx, &store.Batch{Dedup: []store.Dedup{d}}))
	got, err := s.LookupDedup(ctx, "zoë", "c:1")
	noErr(t, "LookupDedup", err)
	if got.SenderID != d.SenderID || got.ClientMessageID != d.ClientMessageID || got.ChannelID != d.ChannelID ||
		got.MessageID != d.MessageID || !got.CreatedAt.Equal(d.CreatedAt) {
		t.Fatalf("LookupDedup = %+v, want %+v", got, d)
	}
	for _, k := range [][2]string{{"zoë", "c:2"}, {"zo", "c:1"}, {"zoë", "c"}, {"alice", "c:1"}} {
		_, err := s.LookupDedup(ctx, k[0], k[1])
		wantErr(t, fmt.Sprintf("LookupDedup(%q, %q)", k[0], k[1]), err, store.ErrNotFound)
	}
}

// testDedupFingerprint: a record keeps its content fingerprint, the whole
// 64 bits (the high bit too: the cluster store keeps it in a signed
// column), through a rewrite with new placements; a record written without
// one reads back as 0 (unknown).
func testDedupFingerprint(t *testing.T, s store.Store) {
	ctx := context.Background()
	for i, fp := range []uint64{1, 0x8000_0000_0000_0001, ^uint64(0), 0x1234_5678_9abc_def0} {
		k := fmt.Sprint("fp-", i)
		d := store.Dedup{SenderID: "alice", ClientMessageID: k, ChannelID: "dm:alice:bob", MessageID: uint64(10 + i), CreatedAt: at(i), Fingerprint: fp}
		noErr(t, "AppendBatch", s.AppendBatch(ctx, &store.Batch{Dedup: []store.Dedup{d}}))
		got, err := s.LookupDedup(ctx, "alice", k)
		noErr(t, "LookupDedup", err)
		if got.Fingerprint != fp || got.MessageID != d.MessageID {
			t.Fatalf("LookupDedup(%s) = %+v, want fingerprint %#x", k, got, fp)
		}
		d.Inbox = []store.Placement{{UserID: "bob", Seq: 3}}
		noErr(t, "AppendBatch again", s.AppendBatch(ctx, &store.Batch{Dedup: []store.Dedup{d}}))
		if got, err := s.LookupDedup(ctx, "alice", k); err != nil || got.Fingerprint != fp || len(got.Inbox) != 1 {
			t.Fatalf("LookupDedup(%s) after rewrite = %+v, %v; want fingerprint %#x", k, got, err, fp)
		}
	}
	d := store.Dedup{SenderID: "alice", ClientMessageID: "no-fp", ChannelID: "dm:alice:bob", MessageID: 99, CreatedAt: at(9)}
	noErr(t, "AppendBatch", s.AppendBatch(ctx, &store.Batch{Dedup: []store.Dedup{d}}))
	if got, err := s.LookupDedup(ctx, "alice", "no-fp"); err != nil || got.Fingerprint != 0 {
		t.Fatalf("LookupDedup without fingerprint = %+v, %v; want fingerprint 0", got, err)
	}
}

// testDedupPlacements: a record keeps where its message was placed, in
// order, and writing it again with new placements (a send placed again)
// replaces them.
func testDedupPlacements(t *testing.T, s store.Store) {
	ctx := context.Background()
	d := store.Dedup{SenderID: "alice", ClientMessageID: "k1", ChannelID: "g:1", MessageID: 9, CreatedAt: at(1),
		Inbox: []store.Placement{{UserID: "carol", Seq: 7}, {UserID: "alice", Seq: 100_000}, {UserID: "bob", Seq: 1}}}
	noErr(t, "AppendBatch", s.AppendBatch(ctx, &store.Batch{Dedup: []store.Dedup{d}}))
	got, err := s.LookupDedup(ctx, "alice", "k1")
	noErr(t, "LookupDedup", err)
	if fmt.Sprint(got.Inbox) != fmt.Sprint(d.Inbox) {
		t.Fatalf("LookupDedup placements = %v, want %v", got.Inbox, d.Inbox)
	}
	d.Inbox = []store.Placement{{UserID: "carol", Seq: 7}, {UserID: "alice", Seq: 100_000}, {UserID: "bob", Seq: 12}}
	noErr(t, "AppendBatch again", s.AppendBatch(ctx, &store.Batch{Dedup: []store.Dedup{d}}))
	got, err = s.LookupDedup(ctx, "alice", "k1")
	noErr(t, "LookupDedup", err)
	if fmt.Sprint(got.Inbox) != fmt.Sprint(d.Inbox) {
		t.Fatalf("LookupDedup placements after rewrite = %v, want %v", got.Inbox, d.Inbox)
	}
	d2 := store.Dedup{SenderID: "alice", ClientMessageID: "k2", ChannelID: "g:1", MessageID: 10, CreatedAt: at(2)}
	noErr(t, "AppendBatch", s.AppendBatch(ctx, &store.Batch{Dedup: []store.Dedup{d2}}))
	if got, err := s.LookupDedup(ctx, "alice", "k2"); err != nil || len(got.Inbox) != 0 {
		t.Fatalf("LookupDedup without placements = %+v, %v", got, err)
	}
}

// testInboxEntryAt: a point read of one inbox position, on both sides of
// an inbox partition boundary of the cluster store.
func testInboxEntryAt(t *testing.T, s store.Store) {
	ctx := context.Background()
	appendMsgs(t, s, msg("c", 1, 1, "a"), msg("d", 2, 2, "b"))
	noErr(t, "AppendBatch", s.AppendBatch(ctx, &store.Batch{Inbox: []store.InboxEntry{
		{UserID: "bob", Seq: 3, ChannelID: "c", MessageID: 1},
		{UserID: "bob", Seq: 100_001, ChannelID: "d", MessageID: 2},
	}}))
	for _, tc := range []struct {
		seq uint64
		ch  string
		id  uint64
	}{{3, "c", 1}, {100_001, "d", 2}} {
		e, err := s.InboxEntryAt(ctx, "bob", tc.seq)
		noErr(t, "InboxEntryAt", err)
		if e.UserID != "bob" || e.Seq != tc.seq || e.ChannelID != tc.ch || e.MessageID != tc.id {
			t.Fatalf("InboxEntryAt(bob, %d) = %+v", tc.seq, e)
		}
	}
	for _, k := range []struct {
		u   string
		seq uint64
	}{{"bob", 2}, {"bob", 4}, {"bob", 100_000}, {"alice", 3}, {"bo", 3}} {
		_, err := s.InboxEntryAt(ctx, k.u, k.seq)
		wantErr(t, fmt.Sprintf("InboxEntryAt(%q, %d)", k.u, k.seq), err, store.ErrNotFound)
	}
}

// ------------------------------------------------------------- users

func testUsers(t *testing.T, s store.Store) {
	ctx := context.Background()
	for _, id := range []string{"zoë", "日本", "a:b", "alice"} {
		u := &store.User{ID: id, DisplayName: "Name of " + id, PasswordHash: []byte("$argon2id$v=19$m=65536,t=1,p=4$c2FsdA$aGFzaA\x00\xff"), CreatedAt: at(1)}
		noErr(t, "CreateUser "+id, s.CreateUser(ctx, u))
		got, err := s.GetUser(ctx, id)
		noErr(t, "GetUser "+id, err)
		if got.ID != id || got.DisplayName != u.DisplayName || string(got.PasswordHash) != string(u.PasswordHash) || !got.CreatedAt.Equal(u.CreatedAt) {
			t.Fatalf("GetUser(%q) = %+v, want %+v", id, got, u)
		}
	}
	err := s.CreateUser(ctx, &store.User{ID: "zoë", DisplayName: "impostor", PasswordHash: []byte("x"), CreatedAt: at(9)})
	wantErr(t, "CreateUser(duplicate)", err, store.ErrAlreadyExists)
	got, err := s.GetUser(ctx, "zoë")
	noErr(t, "GetUser", err)
	if got.DisplayName != "Name of zoë" || !got.CreatedAt.Equal(at(1)) {
		t.Fatalf("duplicate CreateUser changed the user: %+v", got)
	}
	_, err = s.GetUser(ctx, "zo")
	wantErr(t, "GetUser(unknown)", err, store.ErrNotFound)
	_, err = s.GetUser(ctx, "zoë2")
	wantErr(t, "GetUser(unknown)", err, store.ErrNotFound)

	noErr(t, "UpdateDisplayName", s.UpdateDisplayName(ctx, "zoë", "Zoë Ω"))
	got, err = s.GetUser(ctx, "zoë")
	noErr(t, "GetUser", err)
	if got.DisplayName != "Zoë Ω" || string(got.PasswordHash) == "" || !got.CreatedAt.Equal(at(1)) {
		t.Fatalf("after UpdateDisplayName: %+v", got)
	}
	other, err := s.GetUser(ctx, "alice")
	noErr(t, "GetUser", err)
	if other.DisplayName != "Name of alice" {
		t.Fatalf("UpdateDisplayName touched another user: %+v", other)
	}
	wantErr(t, "UpdateDisplayName(unknown)", s.UpdateDisplayName(ctx, "nobody", "x"), store.ErrNotFound)
	_, err = s.GetUser(ctx, "nobody")
	wantErr(t, "GetUser after failed update", err, store.ErrNotFound)

	if got.PresenceHidden {
		t.Fatalf("new user hides presence: %+v", got)
	}
	noErr(t, "SetPresenceHidden", s.SetPresenceHidden(ctx, "zoë", true))
	got, err = s.GetUser(ctx, "zoë")
	noErr(t, "GetUser", err)
	if !got.PresenceHidden || got.DisplayName != "Zoë Ω" || string(got.PasswordHash) == "" {
		t.Fatalf("after SetPresenceHidden(true): %+v", got)
	}
	noErr(t, "SetPresenceHidden", s.SetPresenceHidden(ctx, "zoë", false))
	if got, _ = s.GetUser(ctx, "zoë"); got.PresenceHidden {
		t.Fatalf("after SetPresenceHidden(false): %+v", got)
	}
	wantErr(t, "SetPresenceHidden(unknown)", s.SetPresenceHidden(ctx, "nobody", true), store.ErrNotFound)
}

func testUsersConcurrentCreate(t *testing.T, s store.Store) {
	ctx := context.Background()
	const n = 16
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = s.CreateUser(ctx, &store.User{ID: "racer", DisplayName: fmt.Sprint(i), CreatedAt: at(i)})
		}()
	}
	wg.Wait()
	winner := -1
	for i, err := range errs {
		switch {
		case err == nil:
			if winner >= 0 {
				t.Fatalf("CreateUser succeeded twice (%d and %d)", winner, i)
			}
			winner = i
		case !errors.Is(err, store.ErrAlreadyExists):
			t.Fatalf("CreateUser: %v", err)
		}
	}
	if winner < 0 {
		t.Fatal("no CreateUser succeeded")
	}
	u, err := s.GetUser(ctx, "racer")
	noErr(t, "GetUser", err)
	if u.DisplayName != fmt.Sprint(winner) {
		t.Fatalf("stored user %q, but the winner was %d", u.DisplayName, winner)
	}
}

// testUsersLookAlike: CreateUser refuses a user whose UsernameSkeleton is
// an existing user's (store.ErrUsernameLookAlike, which is
// ErrAlreadyExists) and stores nothing of it; a different skeleton, and the
// same id again (ErrAlreadyExists, not the look-alike error), behave as
// before.
func testUsersLookAlike(t *testing.T, s store.Store) {
	ctx := context.Background()
	for _, id := range []string{"alice", "mary", "bob", "ape"} {
		noErr(t, "CreateUser "+id, s.CreateUser(ctx, &store.User{ID: id, DisplayName: id, CreatedAt: at(1)}))
	}
	for _, id := range []string{"\u0430lice", "rnary", "b0b", "\u0430\u0440\u0435", "a1ice"} {
		err := s.CreateUser(ctx, &store.User{ID: id, DisplayName: "impostor", CreatedAt: at(2)})
		wantErr(t, "CreateUser(look-alike "+id+")", err, store.ErrUsernameLookAlike)
		wantErr(t, "CreateUser(look-alike "+id+")", err, store.ErrAlreadyExists)
		_, err = s.GetUser(ctx, id)
		wantErr(t, "GetUser(refused look-alike "+id+")", err, store.ErrNotFound)
	}
	err := s.CreateUser(ctx, &store.User{ID: "alice", DisplayName: "again", CreatedAt: at(3)})
	wantErr(t, "CreateUser(same id)", err, store.ErrAlreadyExists)
	if errors.Is(err, store.ErrUsernameLookAlike) {
		t.Fatalf("CreateUser(same id) = %v, want plain ErrAlreadyExists", err)
	}
	for _, id := range []string{"alicia", "marry", "bab"} {
		noErr(t, "CreateUser "+id, s.CreateUser(ctx, &store.User{ID: id, DisplayName: id, CreatedAt: at(4)}))
	}
	if u, err := s.GetUser(ctx, "alice"); err != nil || u.DisplayName != "alice" {
		t.Fatalf("GetUser(alice) = %+v, %v", u, err)
	}
}

// testUsersLookAlikeConcurrent: look-alike ids created at once; exactly one
// succeeds, the others get ErrAlreadyExists (look-alike or same id).
func testUsersLookAlikeConcurrent(t *testing.T, s store.Store) {
	ctx := context.Background()
	ids := []string{"paypal", "p\u0430ypal", "payp\u0430l", "p\u0430yp\u0430l", "paypal", "pay\u0440al"}
	errs := make([]error, len(ids))
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = s.CreateUser(ctx, &store.User{ID: id, DisplayName: fmt.Sprint(i), CreatedAt: at(i)})
		}()
	}
	wg.Wait()
	winners := 0
	for i, err := range errs {
		switch {
		case err == nil:
			winners++
			if u, gerr := s.GetUser(ctx, ids[i]); gerr != nil || u.DisplayName != fmt.Sprint(i) {
				t.Fatalf("winner %q: GetUser = %+v, %v", ids[i], u, gerr)
			}
		case !errors.Is(err, store.ErrAlreadyExists):
			t.Fatalf("CreateUser(%q): %v", ids[i], err)
		}
	}
	if winners != 1 {
		t.Fatalf("%d of %d look-alike CreateUser calls succeeded, want 1 (%v)", winners, len(ids), errs)
	}
	n := 0
	for _, id := range ids[1:] {
		if id == ids[0] {
			continue
		}
		if _, err := s.GetUser(ctx, id); err == nil {
			n++
		}
	}
	if _, err := s.GetUser(ctx, ids[0]); err == nil {
		n++
	}
	if n != 1 {
		t.Fatalf("%d look-alike users stored, want 1", n)
	}
}

// ------------------------------------------------------------- devices

func eqDevice(t testing.TB, got, want *store.Device) {
	t.Helper()
	if got.UserID != want.UserID || got.DeviceID != want.DeviceID || got.Name != want.Name ||
		!got.CreatedAt.Equal(want.CreatedAt) || !got.LastSeenAt.Equal(want.LastSeenAt) ||
		got.Revoked != want.Revoked || got.Cursor != want.Cursor {
		t.Fatalf("device mismatch:\n got  %+v\n want %+v", got, want)
	}
}

func testDevices(t *testing.T, s store.Store) {
	ctx := context.Background()
	devs := []*store.Device{ // device id order differs from CreatedAt order
		{UserID: "zoë", DeviceID: "a-laptop", Name: "Laptop", CreatedAt: at(30), LastSeenAt: at(40)},
		{UserID: "zoë", DeviceID: "z-phone", Name: "Phone 日本", CreatedAt: at(10), LastSeenAt: at(50), Revoked: true},
		{UserID: "zoë", DeviceID: "m:tablet", Name: "Tablet", CreatedAt: at(20)},
		{UserID: "zo", DeviceID: "other", Name: "Other", CreatedAt: at(1)},
	}
	for _, d := range devs {
		noErr(t, "PutDevice", s.PutDevice(ctx, d))
	}
	for _, d := range devs {
		got, err := s.GetDevice(ctx, d.UserID, d.DeviceID)
		noErr(t, "GetDevice", err)
		eqDevice(t, got, d)
	}
	_, err := s.GetDevice(ctx, "zoë", "nope")
	wantErr(t, "GetDevice(unknown device)", err, store.ErrNotFound)
	_, err = s.GetDevice(ctx, "nobody", "a-laptop")
	wantErr(t, "GetDevice(unknown user)", err, store.ErrNotFound)

	list, err := s.ListDevices(ctx, "zoë")
	noErr(t, "ListDevices", err)
	if len(list) != 3 {
		t.Fatalf("ListDevices(zoë) returned %d devices, want 3", len(list))
	}
	eqDevice(t, list[0], devs[1])
	eqDevice(t, list[1], devs[2])
	eqDevice(t, list[2], devs[0])
	list, err = s.ListDevices(ctx, "nobody")
	noErr(t, "ListDevices(unknown)", err)
	if len(list) != 0 {
		t.Fatalf("ListDevices(unknown) = %v", list)
	}

	// Replace: revoke the laptop.
	upd := *devs[0]
	upd.Revoked, upd.LastSeenAt, upd.Name = true, at(99), "Old laptop"
	noErr(t, "PutDevice(replace)", s.PutDevice(ctx, &upd))
	got, err := s.GetDevice(ctx, "zoë", "a-laptop")
	noErr(t, "GetDevice", err)
	eqDevice(t, got, &upd)
	list, err = s.ListDevices(ctx, "zoë")
	noErr(t, "ListDevices", err)
	if len(list) != 3 {
		t.Fatalf("replace duplicated a device: %d devices", len(list))
	}
}

func testPutDeviceKeepsCursor(t *testing.T, s store.Store) {
	ctx := context.Background()
	d := &store.Device{UserID: "u", DeviceID: "d", Name: "n", CreatedAt: at(1)}
	noErr(t, "PutDevice", s.PutDevice(ctx, d))
	c, err := s.AdvanceCursor(ctx, "u", "d", 42)
	noErr(t, "AdvanceCursor", err)
	if c != 42 {
		t.Fatalf("AdvanceCursor = %d, want 42", c)
	}
	for _, cur := range []uint64{0, 7, 1000} {
		r := *d
		r.Name, r.Cursor, r.LastSeenAt = "renamed", cur, at(5)
		noErr(t, "PutDevice", s.PutDevice(ctx, &r))
		got, err := s.GetDevice(ctx, "u", "d")
		noErr(t, "GetDevice", err)
		if got.Cursor != 42 || got.Name != "renamed" || !got.LastSeenAt.Equal(at(5)) {
			t.Fatalf("PutDevice(cursor %d) on existing device: %+v, want cursor 42 kept", cur, got)
		}
	}
}

func testAdvanceCursor(t *testing.T, s store.Store) {
	ctx := context.Background()
	noErr(t, "PutDevice", s.PutDevice(ctx, &store.Device{UserID: "zoë", DeviceID: "日本", CreatedAt: at(1)}))
	noErr(t, "PutDevice", s.PutDevice(ctx, &store.Device{UserID: "zoë", DeviceID: "other", CreatedAt: at(2)}))
	steps := []struct{ seq, want uint64 }{{5, 5}, {3, 5}, {5, 5}, {6, 6}, {0, 6}, {100, 100}, {99, 100}}
	for _, st := range steps {
		got, err := s.AdvanceCursor(ctx, "zoë", "日本", st.seq)
		noErr(t, "AdvanceCursor", err)
		if got != st.want {
			t.Fatalf("AdvanceCursor(%d) = %d, want %d", st.seq, got, st.want)
		}
		d, err := s.GetDevice(ctx, "zoë", "日本")
		noErr(t, "GetDevice", err)
		if d.Cursor != st.want {
			t.Fatalf("after AdvanceCursor(%d) stored cursor = %d, want %d", st.seq, d.Cursor, st.want)
		}
	}
	d, err := s.GetDevice(ctx, "zoë", "other")
	noErr(t, "GetDevice", err)
	if d.Cursor != 0 {
		t.Fatalf("AdvanceCursor moved another device's cursor to %d", d.Cursor)
	}
	_, err = s.AdvanceCursor(ctx, "zoë", "nope", 1)
	wantErr(t, "AdvanceCursor(unknown device)", err, store.ErrNotFound)
	_, err = s.AdvanceCursor(ctx, "nobody", "日本", 1)
	wantErr(t, "AdvanceCursor(unknown user)", err, store.ErrNotFound)
	_, err = s.GetDevice(ctx, "zoë", "nope")
	wantErr(t, "AdvanceCursor must not create a device", err, store.ErrNotFound)
}

func testAdvanceCursorConcurrent(t *testing.T, s store.Store) {
	ctx := context.Background()
	noErr(t, "PutDevice", s.PutDevice(ctx, &store.Device{UserID: "u", DeviceID: "d", CreatedAt: at(1)}))
	const workers, per = 12, 25
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			prev := uint64(0)
			for i := range per {
				seq := uint64((i*workers+w)*7%(workers*per)) + 1 // a permutation of 1..workers*per
				got, err := s.AdvanceCursor(ctx, "u", "d", seq)
				if err != nil {
					errs <- err
					return
				}
				if got < seq || got < prev {
					errs <- fmt.Errorf("AdvanceCursor(%d) = %d after %d: went backwards", seq, got, prev)
					return
				}
				prev = got
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	d, err := s.GetDevice(ctx, "u", "d")
	noErr(t, "GetDevice", err)
	if d.Cursor != workers*per {
		t.Fatalf("final cursor = %d, want %d", d.Cursor, workers*per)
	}
}

// ------------------------------------------------------------- contacts

func testContacts(t *testing.T, s store.Store) {
	ctx := context.Background()
	list := func(u string, want ...string) {
		t.Helper()
		got, err := s.ListContacts(ctx, u)
		noErr(t, "ListContacts", err)
		if !slices.Equal(got, want) {
			t.Fatalf("ListContacts(%q) = %q, want %q", u, got, want)
		}
	}
	is := func(u, c string, want bool) {
		t.Helper()
		got, err := s.IsContact(ctx, u, c)
		noErr(t, "IsContact", err)
		if got != want {
			t.Fatalf("IsContact(%q, %q) = %v, want %v", u, c, got, want)
		}
	}
	list("zoë")
	for _, c := range []string{"mallory", "bob", "日本", "bob", "b:ob", "zoë2"} {
		noErr(t, "AddContact", s.AddContact(ctx, "zoë", c))
	}
	want := []string{"b:ob", "bob", "mallory", "zoë2", "日本"}
	list("zoë", want...)
	is("zoë", "bob", true)
	is("zoë", "日本", true)
	is("zoë", "bo", false)
	is("bob", "zoë", false) // directional
	is("zo", "ë", false)
	list("bob")
	list("zo")

	noErr(t, "RemoveContact", s.RemoveContact(ctx, "zoë", "bob"))
	noErr(t, "RemoveContact(again)", s.RemoveContact(ctx, "zoë", "bob"))
	noErr(t, "RemoveContact(never added)", s.RemoveContact(ctx, "zoë", "carol"))
	noErr(t, "RemoveContact(unknown user)", s.RemoveContact(ctx, "nobody", "carol"))
	is("zoë", "bob", false)
	list("zoë", "b:ob", "mallory", "zoë2", "日本")
}

// ------------------------------------------------------------- channels

func members(ch string, users ...string) []store.Member {
	var ms []store.Member
	for i, u := range users {
		role := store.RoleMember
		if i == 0 {
			role = store.RoleOwner
		}
		ms = append(ms, store.Member{ChannelID: ch, UserID: u, Role: role, JoinedAt: at(i)})
	}
	return ms
}

func userN(i int) string { return fmt.Sprintf("user%03d", i) }

func groupOf(t testing.TB, s store.Store, id string, n int) {
	t.Helper()
	var users []string
	for i := range n {
		users = append(users, userN(i))
	}
	noErr(t, "CreateChannel", s.CreateChannel(context.Background(),
		&store.Channel{ID: id, Type: store.ChannelGroup, Name: id, CreatedAt: at(0), CreatedBy: userN(0)},
		members(id, users...)))
}

func memberIDs(t testing.TB, s store.Store, ch string) []string {
	t.Helper()
	ms, err := s.ListMembers(context.Background(), ch)
	noErr(t, "ListMembers", err)
	var out []string
	for _, m := range ms {
		if m.ChannelID != ch {
			t.Fatalf("ListMembers(%q) returned member of %q", ch, m.ChannelID)
		}
		out = append(out, m.UserID)
	}
	return out
}

func testChannelCreate(t *testing.T, s store.Store) {
	ctx := context.Background()
	ch := &store.Channel{ID: "g:日本", Type: store.ChannelGroup, Name: "Team 日本", CreatedAt: at(3), CreatedBy: "zoë"}
	ms := members("g:日本", "zoë", "bob", "alice", "a:b")
	noErr(t, "CreateChannel", s.CreateChannel(ctx, ch, ms))
	got, err := s.GetChannel(ctx, ch.ID)
	noErr(t, "GetChannel", err)
	if got.ID != ch.ID || got.Type != ch.Type || got.Name != ch.Name || !got.CreatedAt.Equal(ch.CreatedAt) || got.CreatedBy != ch.CreatedBy {
		t.Fatalf("GetChannel = %+v, want %+v", got, ch)
	}
	if ids := memberIDs(t, s, ch.ID); !slices.Equal(ids, []string{"a:b", "alice", "bob", "zoë"}) {
		t.Fatalf("ListMembers = %q", ids)
	}
	m, err := s.GetMember(ctx, ch.ID, "zoë")
	noErr(t, "GetMember", err)
	if m.ChannelID != ch.ID || m.UserID != "zoë" || m.Role != store.RoleOwner || !m.JoinedAt.Equal(at(0)) {
		t.Fatalf("GetMember = %+v", m)
	}
	_, err = s.GetMember(ctx, ch.ID, "carol")
	wantErr(t, "GetMember(non-member)", err, store.ErrNotFound)
	_, err = s.GetMember(ctx, "g:nope", "zoë")
	wantErr(t, "GetMember(unknown channel)", err, store.ErrNotFound)
	_, err = s.GetChannel(ctx, "g:日")
	wantErr(t, "GetChannel(unknown)", err, store.ErrNotFound)

	err = s.CreateChannel(ctx, &store.Channel{ID: ch.ID, Type: store.ChannelGroup, Name: "dup", CreatedAt: at(9)}, members(ch.ID, "mallory"))
	wantErr(t, "CreateChannel(duplicate)", err, store.ErrAlreadyExists)
	got, err = s.GetChannel(ctx, ch.ID)
	noErr(t, "GetChannel", err)
	if got.Name != ch.Name {
		t.Fatalf("duplicate CreateChannel changed the channel: %+v", got)
	}
	if ids := memberIDs(t, s, ch.ID); slices.Contains(ids, "mallory") {
		t.Fatalf("duplicate CreateChannel added members: %q", ids)
	}
	if chs, err := s.ListUserChannels(ctx, "mallory", 0, 10); err != nil || len(chs) != 0 {
		t.Fatalf("duplicate CreateChannel indexed channels for mallory: %v, %v", chs, err)
	}

	// Direct channel, no members, and ListMembers of unknown channel.
	noErr(t, "CreateChannel(direct)", s.CreateChannel(ctx,
		&store.Channel{ID: "d:alice:bob", Type: store.ChannelDirect, CreatedAt: at(1)}, members("d:alice:bob", "alice", "bob")))
	if ids := memberIDs(t, s, "d:alice:bob"); !slices.Equal(ids, []string{"alice", "bob"}) {
		t.Fatalf("ListMembers(direct) = %q", ids)
	}
	if ids := memberIDs(t, s, "g:nope"); len(ids) != 0 {
		t.Fatalf("ListMembers(unknown) = %q", ids)
	}
	noErr(t, "CreateChannel(no members)", s.CreateChannel(ctx, &store.Channel{ID: "g:empty", Type: store.ChannelGroup, CreatedAt: at(1)}, nil))
	if ids := memberIDs(t, s, "g:empty"); len(ids) != 0 {
		t.Fatalf("ListMembers(empty) = %q", ids)
	}
}

func testChannelCreateFull(t *testing.T, s store.Store) {
	ctx := context.Background()
	var users []string
	for i := range store.MaxGroupMembers + 1 {
		users = append(users, userN(i))
	}
	err := s.CreateChannel(ctx, &store.Channel{ID: "g:big", Type: store.ChannelGroup, CreatedAt: at(1)}, members("g:big", users...))
	wantErr(t, "CreateChannel(101 members)", err, store.ErrGroupFull)
	_, err = s.GetChannel(ctx, "g:big")
	wantErr(t, "GetChannel after ErrGroupFull", err, store.ErrNotFound)
	if ids := memberIDs(t, s, "g:big"); len(ids) != 0 {
		t.Fatalf("ErrGroupFull left %d members", len(ids))
	}
	if chs, err := s.ListUserChannels(ctx, userN(0), 0, 10); err != nil || len(chs) != 0 {
		t.Fatalf("ErrGroupFull left channels indexed: %v, %v", chs, err)
	}
	// Exactly the maximum is fine.
	noErr(t, "CreateChannel(100 members)", s.CreateChannel(ctx,
		&store.Channel{ID: "g:big", Type: store.ChannelGroup, CreatedAt: at(1)}, members("g:big", users[:store.MaxGroupMembers]...)))
	if ids := memberIDs(t, s, "g:big"); len(ids) != store.MaxGroupMembers {
		t.Fatalf("ListMembers = %d members, want %d", len(ids), store.MaxGroupMembers)
	}
}

func testAddMember(t *testing.T, s store.Store) {
	ctx := context.Background()
	groupOf(t, s, "g:1", 2)
	m := store.Member{ChannelID: "g:1", UserID: "zoë", Role: store.RoleMember, JoinedAt: at(50)}
	noErr(t, "AddMember", s.AddMember(ctx, m, store.MaxGroupMembers))
	got, err := s.GetMember(ctx, "g:1", "zoë")
	noErr(t, "GetMember", err)
	if got.Role != store.RoleMember || !got.JoinedAt.Equal(at(50)) || got.ChannelID != "g:1" || got.UserID != "zoë" {
		t.Fatalf("GetMember = %+v", got)
	}
	// Role update of an existing member.
	noErr(t, "AddMember(role update)", s.AddMember(ctx, store.Member{ChannelID: "g:1", UserID: "zoë", Role: store.RoleAdmin, JoinedAt: at(60)}, store.MaxGroupMembers))
	got, err = s.GetMember(ctx, "g:1", "zoë")
	noErr(t, "GetMember", err)
	if got.Role != store.RoleAdmin {
		t.Fatalf("role after update = %v, want admin", got.Role)
	}
	if ids := memberIDs(t, s, "g:1"); !slices.Equal(ids, []string{userN(0), userN(1), "zoë"}) {
		t.Fatalf("ListMembers = %q", ids)
	}
	chs, err := s.ListUserChannels(ctx, "zoë", 0, 10)
	noErr(t, "ListUserChannels", err)
	if len(chs) != 1 || chs[0].ChannelID != "g:1" {
		t.Fatalf("ListUserChannels(zoë) = %+v", chs)
	}
	err = s.AddMember(ctx, store.Member{ChannelID: "g:nope", UserID: "zoë", Role: store.RoleMember, JoinedAt: at(1)}, store.MaxGroupMembers)
	wantErr(t, "AddMember(unknown channel)", err, store.ErrNotFound)
	_, err = s.GetMember(ctx, "g:nope", "zoë")
	wantErr(t, "GetMember after failed AddMember", err, store.ErrNotFound)
}

func testAddMemberLimit(t *testing.T, s store.Store) {
	ctx := context.Background()
	groupOf(t, s, "g:full", store.MaxGroupMembers)
	err := s.AddMember(ctx, store.Member{ChannelID: "g:full", UserID: "late", Role: store.RoleMember, JoinedAt: at(1)}, store.MaxGroupMembers)
	wantErr(t, "AddMember(to full group)", err, store.ErrGroupFull)
	_, err = s.GetMember(ctx, "g:full", "late")
	wantErr(t, "GetMember after ErrGroupFull", err, store.ErrNotFound)
	if chs, err := s.ListUserChannels(ctx, "late", 0, 10); err != nil || len(chs) != 0 {
		t.Fatalf("ErrGroupFull indexed the channel for the user: %v, %v", chs, err)
	}
	// Updating the role of an existing member of a full group is no add.
	noErr(t, "AddMember(role update in full group)", s.AddMember(ctx,
		store.Member{ChannelID: "g:full", UserID: userN(5), Role: store.RoleAdmin, JoinedAt: at(1)}, store.MaxGroupMembers))
	m, err := s.GetMember(ctx, "g:full", userN(5))
	noErr(t, "GetMember", err)
	if m.Role != store.RoleAdmin {
		t.Fatalf("role = %v, want admin", m.Role)
	}
	if n := len(memberIDs(t, s, "g:full")); n != store.MaxGroupMembers {
		t.Fatalf("members = %d, want %d", n, store.MaxGroupMembers)
	}
	// A smaller max passed by the caller is honoured.
	groupOf(t, s, "g:small", 3)
	err = s.AddMember(ctx, store.Member{ChannelID: "g:small", UserID: "x", Role: store.RoleMember, JoinedAt: at(1)}, 3)
	wantErr(t, "AddMember(max 3, 3 members)", err, store.ErrGroupFull)
	noErr(t, "AddMember(max 4, 3 members)", s.AddMember(ctx, store.Member{ChannelID: "g:small", UserID: "x", Role: store.RoleMember, JoinedAt: at(1)}, 4))
}

func testAddMemberConcurrent(t *testing.T, s store.Store) {
	for round := range 10 {
		addMemberRace(t, s, fmt.Sprintf("g:race%d", round))
	}
}

// addMemberRace: 20 goroutines, released together, add distinct users to a
// group of 95 with max 100: exactly 5 succeed.
func addMemberRace(t *testing.T, s store.Store, ch string) {
	ctx := context.Background()
	const start, limit, adders = 95, 100, 20
	groupOf(t, s, ch, start)
	errs := make([]error, adders)
	var wg sync.WaitGroup
	release := make(chan struct{})
	for i := range adders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-release
			errs[i] = s.AddMember(ctx, store.Member{ChannelID: ch, UserID: fmt.Sprintf("new%02d", i), Role: store.RoleMember, JoinedAt: at(i)}, limit)
		}()
	}
	close(release)
	wg.Wait()
	ok, full := 0, 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case errors.Is(err, store.ErrGroupFull):
			full++
		default:
			t.Fatalf("AddMember: %v", err)
		}
	}
	if ok != limit-start || full != adders-(limit-start) {
		t.Fatalf("concurrent AddMember: %d added, %d ErrGroupFull; want %d and %d", ok, full, limit-start, adders-(limit-start))
	}
	ids := memberIDs(t, s, ch)
	if len(ids) != limit {
		t.Fatalf("members = %d, want %d", len(ids), limit)
	}
	for i, err := range errs {
		u := fmt.Sprintf("new%02d", i)
		if (err == nil) != slices.Contains(ids, u) {
			t.Fatalf("%s: AddMember error %v but member=%v", u, err, slices.Contains(ids, u))
		}
	}
}

func testRemoveMember(t *testing.T, s store.Store) {
	ctx := context.Background()
	groupOf(t, s, "g:r", store.MaxGroupMembers)
	noErr(t, "RemoveMember", s.RemoveMember(ctx, "g:r", userN(7)))
	_, err := s.GetMember(ctx, "g:r", userN(7))
	wantErr(t, "GetMember after remove", err, store.ErrNotFound)
	ids := memberIDs(t, s, "g:r")
	if len(ids) != store.MaxGroupMembers-1 || slices.Contains(ids, userN(7)) {
		t.Fatalf("ListMembers after remove: %d members, contains removed: %v", len(ids), slices.Contains(ids, userN(7)))
	}
	if !slices.IsSorted(ids) {
		t.Fatalf("ListMembers not in ascending order: %q", ids)
	}
	if chs, err := s.ListUserChannels(ctx, userN(7), 0, 10); err != nil || len(chs) != 0 {
		t.Fatalf("ListUserChannels after remove = %v, %v", chs, err)
	}
	wantErr(t, "RemoveMember(again)", s.RemoveMember(ctx, "g:r", userN(7)), store.ErrNotFound)
	wantErr(t, "RemoveMember(never member)", s.RemoveMember(ctx, "g:r", "stranger"), store.ErrNotFound)
	wantErr(t, "RemoveMember(unknown channel)", s.RemoveMember(ctx, "g:nope", userN(1)), store.ErrNotFound)
	// The freed seat can be taken, then the group is full again.
	noErr(t, "AddMember(freed seat)", s.AddMember(ctx, store.Member{ChannelID: "g:r", UserID: "newcomer", Role: store.RoleMember, JoinedAt: at(1)}, store.MaxGroupMembers))
	err = s.AddMember(ctx, store.Member{ChannelID: "g:r", UserID: "one-too-many", Role: store.RoleMember, JoinedAt: at(1)}, store.MaxGroupMembers)
	wantErr(t, "AddMember(full again)", err, store.ErrGroupFull)
}

func activity(t testing.TB, s store.Store, user string, offset, limit int) []store.ChannelActivity {
	t.Helper()
	chs, err := s.ListUserChannels(context.Background(), user, offset, limit)
	noErr(t, "ListUserChannels", err)
	return chs
}

func channelIDs(chs []store.ChannelActivity) []string {
	var out []string
	for _, c := range chs {
		out = append(out, c.ChannelID)
	}
	return out
}

func testListUserChannels(t *testing.T, s store.Store) {
	ctx := context.Background()
	if chs := activity(t, s, "zoë", 0, 10); len(chs) != 0 {
		t.Fatalf("ListUserChannels(no channels) = %v", chs)
	}
	// Channels created at t=10,20,30,40; zoë is in all but "g:other".
	create := func(id string, sec int, users ...string) {
		t.Helper()
		noErr(t, "CreateChannel", s.CreateChannel(ctx, &store.Channel{ID: id, Type: store.ChannelGroup, CreatedAt: at(sec)}, members(id, users...)))
	}
	create("g:1", 10, "zoë", "bob")
	create("d:bob:zoë", 20, "bob", "zoë")
	create("g:other", 25, "bob")
	create("g:日本", 30, "zoë")
	create("g:4", 40, "alice", "zoë")

	check := func(want []string) []store.ChannelActivity {
		t.Helper()
		chs := activity(t, s, "zoë", 0, 10)
		if got := channelIDs(chs); !slices.Equal(got, want) {
			t.Fatalf("ListUserChannels(zoë) = %q, want %q", got, want)
		}
		return chs
	}
	// No messages yet: ordered by creation, newest first.
	chs := check([]string{"g:4", "g:日本", "d:bob:zoë", "g:1"})
	for _, c := range chs {
		if c.LastMessageID != 0 {
			t.Fatalf("channel %s without messages has LastMessageID %d", c.ChannelID, c.LastMessageID)
		}
	}
	// A batch with two messages in g:1: activity moves to the newest one.
	appendMsgs(t, s, msg("g:1", 2, 101, "b"), msg("g:1", 1, 100, "a"))
	chs = check([]string{"g:1", "g:4", "g:日本", "d:bob:zoë"})
	if chs[0].LastMessageID != 2 || !chs[0].LastActivity.Equal(at(101)) {
		t.Fatalf("g:1 activity = %+v, want message 2 at %v", chs[0], at(101))
	}
	// A message in d:bob:zoë moves it first; g:other does not show up.
	appendMsgs(t, s, msg("d:bob:zoë", 1, 200, "hi"), msg("g:other", 1, 300, "x"))
	chs = check([]string{"d:bob:zoë", "g:1", "g:4", "g:日本"})
	if chs[0].LastMessageID != 1 || !chs[0].LastActivity.Equal(at(200)) {
		t.Fatalf("d:bob:zoë activity = %+v", chs[0])
	}
	// Replaying an older batch of g:1 does not move its activity.
	appendMsgs(t, s, msg("g:1", 1, 100, "a"))
	chs = check([]string{"d:bob:zoë", "g:1", "g:4", "g:日本"})
	if chs[1].LastMessageID != 2 || !chs[1].LastActivity.Equal(at(101)) {
		t.Fatalf("replay moved g:1 activity to %+v", chs[1])
	}
	// Separate batches, newest last.
	appendMsgs(t, s, msg("g:日本", 1, 400, "x"))
	appendMsgs(t, s, msg("g:日本", 2, 401, "y"))
	check([]string{"g:日本", "d:bob:zoë", "g:1", "g:4"})
	// bob sees his channels, including g:other.
	if got := channelIDs(activity(t, s, "bob", 0, 10)); !slices.Equal(got, []string{"g:other", "d:bob:zoë", "g:1"}) {
		t.Fatalf("ListUserChannels(bob) = %q", got)
	}
	// Removing zoë from a channel drops it from her list.
	noErr(t, "RemoveMember", s.RemoveMember(ctx, "g:1", "zoë"))
	check([]string{"g:日本", "d:bob:zoë", "g:4"})
	// Joining an existing channel lists it at its activity.
	noErr(t, "AddMember", s.AddMember(ctx, store.Member{ChannelID: "g:other", UserID: "zoë", Role: store.RoleMember, JoinedAt: at(500)}, store.MaxGroupMembers))
	check([]string{"g:日本", "g:other", "d:bob:zoë", "g:4"})
}

func testListUserChannelsPaging(t *testing.T, s store.Store) {
	ctx := context.Background()
	const n = 12
	var want []string
	for i := range n {
		id := fmt.Sprintf("c:%02d", i)
		noErr(t, "CreateChannel", s.CreateChannel(ctx, &store.Channel{ID: id, Type: store.ChannelGroup, CreatedAt: at(i)}, members(id, "u")))
		want = append([]string{id}, want...) // newest first
	}
	var got []string
	for off := 0; off < n+5; off += 5 {
		page := channelIDs(activity(t, s, "u", off, 5))
		if len(page) > 5 {
			t.Fatalf("page at offset %d has %d channels, limit 5", off, len(page))
		}
		got = append(got, page...)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("pages joined = %q, want %q", got, want)
	}
	if page := channelIDs(activity(t, s, "u", 3, 2)); !slices.Equal(page, want[3:5]) {
		t.Fatalf("offset 3 limit 2 = %q, want %q", page, want[3:5])
	}
	if page := channelIDs(activity(t, s, "u", n-1, 10)); !slices.Equal(page, want[n-1:]) {
		t.Fatalf("last page = %q, want %q", page, want[n-1:])
	}
	if page := activity(t, s, "u", n, 10); len(page) != 0 {
		t.Fatalf("offset past the end = %v", page)
	}
	if page := activity(t, s, "u", 100, 10); len(page) != 0 {
		t.Fatalf("offset far past the end = %v", page)
	}
}
