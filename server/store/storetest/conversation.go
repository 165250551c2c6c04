package storetest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"

	"github.com/chatd/chatd/server/store"
)

// conversationTests are the conformance cases of store.Conversations and
// of the ForUser field of messages.
var conversationTests = []struct {
	name string
	fn   func(t *testing.T, s store.Store)
}{
	{"Messages/ForUserRoundTrip", testForUserRoundTrip},
	{"Revisions/IndexedByAppendBatch", testRevisionsIndexed},
	{"Revisions/AcrossBuckets", testRevisionsAcrossBuckets},
	{"Revisions/IdempotentReplay", testRevisionsReplay},
	{"Receipts/Monotonic", testReceiptsMonotonic},
	{"Receipts/ListAndIsolation", testReceiptsList},
	{"Receipts/LargeIDs", testReceiptsLargeIDs},
	{"Receipts/Concurrent", testReceiptsConcurrent},
	{"Settings/ReadReceiptsHidden", testReadReceiptsHidden},
}

// rid is a realistic message_id: unix ms << 16 | counter, sec seconds
// after the suite's base time.
func rid(sec int, counter uint64) uint64 {
	return uint64(at(sec).UnixMilli())<<16 | counter
}

func eqRevisions(t testing.TB, what string, got, want []store.Revision) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d revisions %+v, want %d %+v", what, len(got), got, len(want), want)
	}
	for i := range got {
		g, w := got[i], want[i]
		if g.ChannelID != w.ChannelID || g.RefMessageID != w.RefMessageID || g.MessageID != w.MessageID ||
			g.Kind != w.Kind || g.SenderID != w.SenderID || g.ForUser != w.ForUser || g.Text != w.Text ||
			!g.CreatedAt.Equal(w.CreatedAt) {
			t.Fatalf("%s: revision %d = %+v, want %+v", what, i, g, w)
		}
	}
}

func revisionOf(m *store.Message) store.Revision {
	return store.Revision{ChannelID: m.ChannelID, RefMessageID: m.RefMessageID, MessageID: m.MessageID,
		Kind: m.Kind, SenderID: m.SenderID, ForUser: m.ForUser, Text: m.Text, CreatedAt: m.CreatedAt}
}

func edit(ch string, id, ref uint64, sec int, text string) *store.Message {
	m := msg(ch, id, sec, text)
	m.Kind, m.RefMessageID = store.KindEdit, ref
	return m
}

func del(ch string, id, ref uint64, sec int, forUser string) *store.Message {
	m := msg(ch, id, sec, "")
	m.Kind, m.RefMessageID, m.ForUser = store.KindDelete, ref, forUser
	if forUser != "" {
		m.SenderID = forUser
	}
	return m
}

func testForUserRoundTrip(t *testing.T, s store.Store) {
	ctx := context.Background()
	const ch = "dm:alice:bob"
	m1 := msg(ch, rid(1, 0), 1, "hello")
	d := del(ch, rid(2, 0), m1.MessageID, 2, "bob")
	noErr(t, "AppendBatch", s.AppendBatch(ctx, &store.Batch{
		Messages: []*store.Message{m1, d},
		Inbox: []store.InboxEntry{
			{UserID: "alice", Seq: 1, ChannelID: ch, MessageID: m1.MessageID},
			{UserID: "bob", Seq: 1, ChannelID: ch, MessageID: m1.MessageID},
			{UserID: "bob", Seq: 2, ChannelID: ch, MessageID: d.MessageID},
		},
	}))
	got, err := s.GetMessage(ctx, ch, d.MessageID)
	noErr(t, "GetMessage", err)
	eqMsg(t, got, d)
	if got.ForUser != "bob" {
		t.Fatalf("GetMessage ForUser = %q, want bob", got.ForUser)
	}
	got, err = s.GetMessage(ctx, ch, m1.MessageID)
	noErr(t, "GetMessage", err)
	if got.ForUser != "" {
		t.Fatalf("text message ForUser = %q, want empty", got.ForUser)
	}
	msgs, _, err := s.History(ctx, ch, 0, 0, 10)
	noErr(t, "History", err)
	if len(msgs) != 2 || msgs[1].ForUser != "bob" || msgs[0].ForUser != "" {
		t.Fatalf("History ForUser: %+v", msgs)
	}
	ds := inbox(t, s, "bob", 0, 10, []uint64{1, 2}, false)
	if ds[1].Message.ForUser != "bob" || ds[1].Message.Kind != store.KindDelete || ds[1].Message.RefMessageID != m1.MessageID {
		t.Fatalf("Inbox join lost the delete row's fields: %+v", ds[1].Message)
	}
}

func testRevisionsIndexed(t *testing.T, s store.Store) {
	ctx := context.Background()
	const ch, other = "g:conv", "g:other"
	m1, m2, m3 := msg(ch, rid(1, 0), 1, "one"), msg(ch, rid(1, 1), 1, "two"), msg(ch, rid(2, 0), 2, "three")
	appendMsgs(t, s, m1, m2, m3)
	none, err := s.Revisions(ctx, ch, 0, ^uint64(0))
	noErr(t, "Revisions", err)
	if len(none) != 0 {
		t.Fatalf("Revisions without edits = %+v", none)
	}
	e1 := edit(ch, rid(3, 0), m1.MessageID, 3, "one, edited")
	e2 := edit(ch, rid(4, 0), m1.MessageID, 4, "one, edited again")
	d2 := del(ch, rid(4, 1), m2.MessageID, 4, "")
	d3 := del(ch, rid(5, 0), m3.MessageID, 5, "carol")
	sys := msg(ch, rid(5, 1), 5, "carol joined")
	sys.Kind = store.KindSystem
	oe := edit(other, rid(3, 0), m1.MessageID, 3, "another channel")
	noErr(t, "AppendBatch", s.AppendBatch(ctx, &store.Batch{Messages: []*store.Message{e1, e2, d2, d3, sys, oe}}))

	all, err := s.Revisions(ctx, ch, 0, ^uint64(0))
	noErr(t, "Revisions", err)
	eqRevisions(t, "Revisions(all)", all, []store.Revision{revisionOf(e1), revisionOf(e2), revisionOf(d2), revisionOf(d3)})
	got, err := s.Revisions(ctx, ch, m2.MessageID, m3.MessageID)
	noErr(t, "Revisions", err)
	eqRevisions(t, "Revisions(m2..m3)", got, []store.Revision{revisionOf(d2), revisionOf(d3)})
	got, err = s.Revisions(ctx, ch, m1.MessageID, m1.MessageID)
	noErr(t, "Revisions", err)
	eqRevisions(t, "Revisions(m1)", got, []store.Revision{revisionOf(e1), revisionOf(e2)})
	got, err = s.Revisions(ctx, ch, m1.MessageID+1, m2.MessageID-1)
	noErr(t, "Revisions", err)
	eqRevisions(t, "Revisions(between)", got, nil)
	got, err = s.Revisions(ctx, ch, m3.MessageID, m1.MessageID)
	noErr(t, "Revisions", err)
	eqRevisions(t, "Revisions(from > to)", got, nil)
	got, err = s.Revisions(ctx, other, 0, ^uint64(0))
	noErr(t, "Revisions", err)
	eqRevisions(t, "Revisions(other channel)", got, []store.Revision{revisionOf(oe)})
	got, err = s.Revisions(ctx, "g:none", 0, ^uint64(0))
	noErr(t, "Revisions", err)
	eqRevisions(t, "Revisions(unknown channel)", got, nil)
	// The rows themselves are ordinary messages too.
	history(t, s, ch, 0, 0, 10, []uint64{m1.MessageID, m2.MessageID, m3.MessageID, e1.MessageID, e2.MessageID, d2.MessageID, d3.MessageID, sys.MessageID}, false)
	last, err := s.LastMessageID(ctx, ch)
	noErr(t, "LastMessageID", err)
	if last != sys.MessageID {
		t.Fatalf("LastMessageID = %d, want %d", last, sys.MessageID)
	}
}

func testRevisionsAcrossBuckets(t *testing.T, s store.Store) {
	ctx := context.Background()
	const ch = "dm:a:b"
	day := 24 * 60 * 60
	// Messages 25 days apart (the cluster store partitions by 10 days),
	// each edited 40 days later.
	var want []store.Revision
	var msgs []*store.Message
	for i := range 4 {
		m := msg(ch, rid(i*25*day, 0), i*25*day, fmt.Sprint("m", i))
		e := edit(ch, rid(i*25*day+40*day, 1), m.MessageID, i*25*day+40*day, fmt.Sprint("m", i, " edited"))
		msgs = append(msgs, m, e)
		want = append(want, revisionOf(e))
	}
	appendMsgs(t, s, msgs...)
	got, err := s.Revisions(ctx, ch, 0, ^uint64(0))
	noErr(t, "Revisions", err)
	eqRevisions(t, "Revisions(all)", got, want)
	got, err = s.Revisions(ctx, ch, want[1].RefMessageID, want[2].RefMessageID)
	noErr(t, "Revisions", err)
	eqRevisions(t, "Revisions(1..2)", got, want[1:3])
	got, err = s.Revisions(ctx, ch, want[1].RefMessageID+1, want[3].RefMessageID)
	noErr(t, "Revisions", err)
	eqRevisions(t, "Revisions(after 1..3)", got, want[2:])
}

func testRevisionsReplay(t *testing.T, s store.Store) {
	ctx := context.Background()
	const ch = "dm:a:b"
	m := msg(ch, rid(1, 0), 1, "x")
	e := edit(ch, rid(2, 0), m.MessageID, 2, "y")
	for range 3 {
		appendMsgs(t, s, m, e)
	}
	got, err := s.Revisions(ctx, ch, 0, ^uint64(0))
	noErr(t, "Revisions", err)
	eqRevisions(t, "Revisions after replays", got, []store.Revision{revisionOf(e)})
}

func getReceipt(t testing.TB, s store.Store, ch, user string) store.Receipt {
	t.Helper()
	r, err := s.GetReceipt(context.Background(), ch, user)
	noErr(t, "GetReceipt", err)
	if r.ChannelID != ch || r.UserID != user {
		t.Fatalf("GetReceipt(%q, %q) names %q/%q", ch, user, r.ChannelID, r.UserID)
	}
	return r
}

func testReceiptsMonotonic(t *testing.T, s store.Store) {
	ctx := context.Background()
	const ch = "dm:alice:bob"
	if r := getReceipt(t, s, ch, "bob"); r.DeliveredUpTo != 0 || r.ReadUpTo != 0 || r.ReadShownUpTo != 0 {
		t.Fatalf("GetReceipt of nothing = %+v", r)
	}
	steps := []struct {
		in   store.Receipt
		want [3]uint64 // delivered, read, shown
	}{
		{store.Receipt{DeliveredUpTo: 10}, [3]uint64{10, 0, 0}},
		{store.Receipt{DeliveredUpTo: 7}, [3]uint64{10, 0, 0}},
		{store.Receipt{ReadUpTo: 5, ReadShownUpTo: 5}, [3]uint64{10, 5, 5}},
		{store.Receipt{DeliveredUpTo: 12, ReadUpTo: 12}, [3]uint64{12, 12, 5}},
		{store.Receipt{ReadUpTo: 3, ReadShownUpTo: 4}, [3]uint64{12, 12, 5}},
		{store.Receipt{}, [3]uint64{12, 12, 5}},
		{store.Receipt{ReadShownUpTo: 12}, [3]uint64{12, 12, 12}},
		{store.Receipt{DeliveredUpTo: 12, ReadUpTo: 12, ReadShownUpTo: 12}, [3]uint64{12, 12, 12}},
	}
	for i, st := range steps {
		in := st.in
		in.ChannelID, in.UserID = ch, "bob"
		noErr(t, "AdvanceReceipts", s.AdvanceReceipts(ctx, []store.Receipt{in}))
		r := getReceipt(t, s, ch, "bob")
		if got := [3]uint64{r.DeliveredUpTo, r.ReadUpTo, r.ReadShownUpTo}; got != st.want {
			t.Fatalf("step %d: after %+v markers = %v, want %v", i, st.in, got, st.want)
		}
	}
	if r := getReceipt(t, s, ch, "alice"); r.DeliveredUpTo != 0 || r.ReadUpTo != 0 {
		t.Fatalf("another user's markers moved: %+v", r)
	}
	noErr(t, "AdvanceReceipts(none)", s.AdvanceReceipts(ctx, nil))
	if err := s.AdvanceReceipts(ctx, []store.Receipt{{ChannelID: "", UserID: "bob", ReadUpTo: 1}}); err == nil {
		t.Fatal("AdvanceReceipts with an empty channel id succeeded")
	}
	if err := s.AdvanceReceipts(ctx, []store.Receipt{{ChannelID: ch, UserID: "", ReadUpTo: 1}}); err == nil {
		t.Fatal("AdvanceReceipts with an empty user id succeeded")
	}
}

func testReceiptsList(t *testing.T, s store.Store) {
	ctx := context.Background()
	const ch = "g:receipts"
	rs, err := s.ListReceipts(ctx, ch)
	noErr(t, "ListReceipts", err)
	if len(rs) != 0 {
		t.Fatalf("ListReceipts of nothing = %+v", rs)
	}
	// One call spanning two channels and several users; prefixes of each
	// other ("bob", "bob2") and non-ASCII ids stay apart.
	noErr(t, "AdvanceReceipts", s.AdvanceReceipts(ctx, []store.Receipt{
		{ChannelID: ch, UserID: "bob2", DeliveredUpTo: 30},
		{ChannelID: ch, UserID: "bob", DeliveredUpTo: 20, ReadUpTo: 15, ReadShownUpTo: 15},
		{ChannelID: ch, UserID: "zoë", ReadUpTo: 9},
		{ChannelID: ch, UserID: "alice", DeliveredUpTo: 40, ReadUpTo: 40, ReadShownUpTo: 1},
		{ChannelID: ch + "x", UserID: "bob", DeliveredUpTo: 99},
		{ChannelID: "g:recei", UserID: "bob", DeliveredUpTo: 98},
	}))
	rs, err = s.ListReceipts(ctx, ch)
	noErr(t, "ListReceipts", err)
	want := []store.Receipt{
		{ChannelID: ch, UserID: "alice", DeliveredUpTo: 40, ReadUpTo: 40, ReadShownUpTo: 1},
		{ChannelID: ch, UserID: "bob", DeliveredUpTo: 20, ReadUpTo: 15, ReadShownUpTo: 15},
		{ChannelID: ch, UserID: "bob2", DeliveredUpTo: 30},
		{ChannelID: ch, UserID: "zoë", ReadUpTo: 9},
	}
	if !slices.Equal(rs, want) {
		t.Fatalf("ListReceipts = %+v\nwant %+v", rs, want)
	}
	if r := getReceipt(t, s, ch+"x", "bob"); r.DeliveredUpTo != 99 {
		t.Fatalf("other channel: %+v", r)
	}
	if r := getReceipt(t, s, ch, "bob"); r != want[1] {
		t.Fatalf("GetReceipt(bob) = %+v, want %+v", r, want[1])
	}
}

func testReceiptsLargeIDs(t *testing.T, s store.Store) {
	ctx := context.Background()
	const ch = "dm:a:b"
	// Unsigned order over the whole range: ids with the top bit set are
	// above every id without it.
	vals := []uint64{1 << 62, 1<<63 + 5, 1<<63 - 1, ^uint64(0) - 1, 1 << 63, ^uint64(0), 7}
	var best uint64
	for _, v := range vals {
		noErr(t, "AdvanceReceipts", s.AdvanceReceipts(ctx, []store.Receipt{{ChannelID: ch, UserID: "a", ReadUpTo: v}}))
		best = max(best, v)
		if r := getReceipt(t, s, ch, "a"); r.ReadUpTo != best {
			t.Fatalf("after %d: read = %d, want %d", v, r.ReadUpTo, best)
		}
	}
}

func testReceiptsConcurrent(t *testing.T, s store.Store) {
	ctx := context.Background()
	const ch = "g:race"
	const workers, per = 8, 20
	users := []string{"u1", "u2"}
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	maxes := make([][2]uint64, workers) // per worker, per user: highest read written
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for range per {
				u := rng.IntN(len(users))
				v := rid(rng.IntN(1000), rng.Uint64N(1<<16))
				r := store.Receipt{ChannelID: ch, UserID: users[u], ReadUpTo: v, DeliveredUpTo: v / 2}
				if err := s.AdvanceReceipts(ctx, []store.Receipt{r}); err != nil {
					errs <- err
					return
				}
				maxes[w][u] = max(maxes[w][u], v)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for u, user := range users {
		var want uint64
		for w := range workers {
			want = max(want, maxes[w][u])
		}
		r := getReceipt(t, s, ch, user)
		if r.ReadUpTo != want || r.DeliveredUpTo != want/2 {
			t.Fatalf("%s: read %d delivered %d, want %d and %d", user, r.ReadUpTo, r.DeliveredUpTo, want, want/2)
		}
	}
}

func testReadReceiptsHidden(t *testing.T, s store.Store) {
	ctx := context.Background()
	hidden, err := s.ReadReceiptsHidden(ctx, "alice")
	noErr(t, "ReadReceiptsHidden", err)
	if hidden {
		t.Fatal("hidden by default")
	}
	for _, v := range []bool{true, true, false, true} {
		noErr(t, "SetReadReceiptsHidden", s.SetReadReceiptsHidden(ctx, "alice", v))
		got, err := s.ReadReceiptsHidden(ctx, "alice")
		noErr(t, "ReadReceiptsHidden", err)
		if got != v {
			t.Fatalf("after Set(%v): %v", v, got)
		}
	}
	other, err := s.ReadReceiptsHidden(ctx, "alice2")
	noErr(t, "ReadReceiptsHidden", err)
	if other {
		t.Fatal("the setting leaked to another user")
	}
}
