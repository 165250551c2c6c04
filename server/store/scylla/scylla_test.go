package scylla

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chatd/chatd/server/internal/parallel"
	"github.com/chatd/chatd/server/internal/testenv"
	"github.com/chatd/chatd/server/store"
	"github.com/chatd/chatd/server/store/storetest"
)

// The tests below need a CQL server (scripts/services.sh up starts one on
// 127.0.0.1:9042; CQL_HOSTS=host:port,... points elsewhere). Without one
// they are skipped, or fail when CI=true. All of them share one keyspace
// per package run (chatd_test_<random>, dropped at the end): creating a
// keyspace and its tables takes seconds on Cassandra, truncating the
// tables between subtests a fraction of that.

// hosts returns the CQL server's contact points (testenv: skipped, or a
// failure with CI=true, without one; skipped with -short).
func hosts(t testing.TB) []string {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: skipping tests that need a CQL server")
	}
	return testenv.CQLHosts(t)
}

func testConfig(t testing.TB, keyspace string) Config {
	return Config{Hosts: hosts(t), Keyspace: keyspace, Timeout: 20 * time.Second}
}

// testKeyspace is the package's shared keyspace, migrated on first use.
var testKeyspace = testenv.Keyspace{
	Prefix: "chatd_test_",
	Migrate: func(ctx context.Context, hosts []string, name string) error {
		return Migrate(ctx, Config{Hosts: hosts, Keyspace: name, Timeout: 30 * time.Second}, SimpleStrategy, 1)
	},
}

// keyspace returns the shared test keyspace (created once per package
// run).
func keyspace(t testing.TB) string {
	t.Helper()
	hosts(t)
	return testKeyspace.Name(t)
}

func TestMain(m *testing.M) {
	code := m.Run()
	testKeyspace.Drop()
	os.Exit(code)
}

var tableRE = regexp.MustCompile(`CREATE TABLE IF NOT EXISTS (\w+)`)

// tables lists the tables the migrations create.
func tables(t testing.TB) []string {
	var out []string
	err := fs.WalkDir(Migrations(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(Migrations(), p)
		for _, m := range tableRE.FindAllSubmatch(b, -1) {
			out = append(out, string(m[1]))
		}
		return err
	})
	if err != nil || len(out) == 0 {
		t.Fatalf("listing tables: %v %v", out, err)
	}
	return out
}

// openClean opens a Store on the shared keyspace after truncating every
// table, so each caller starts empty. Callers run sequentially.
func openClean(t testing.TB) *Store {
	t.Helper()
	ks := keyspace(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := Open(ctx, testConfig(t, ks))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	tbs := tables(t)
	err = parallel.Do(ctx, len(tbs), len(tbs), func(ctx context.Context, i int) error {
		return s.sess.Session.Query("TRUNCATE " + tbs[i]).WithContext(ctx).Exec()
	})
	if err != nil {
		s.Close()
		t.Fatalf("truncate: %v", err)
	}
	return s
}

func TestConformance(t *testing.T) {
	hosts(t)
	storetest.Run(t, func(t *testing.T) store.Store { return openClean(t) })
}

func BenchmarkStore(b *testing.B) {
	storetest.Bench(b, func(b *testing.B) store.Store { return openClean(b) })
}

func TestMigrateIdempotent(t *testing.T) {
	ks := keyspace(t)
	ctx := context.Background()
	// Applying again is a no-op; a different replication leaves the
	// existing keyspace as it is.
	if err := Migrate(ctx, Config{Hosts: hosts(t), Keyspace: ks, Timeout: 30 * time.Second}, NetworkTopologyStrategy, 3); err != nil {
		t.Fatalf("second Migrate: %v", err)
	}
	s := openClean(t)
	defer s.Close()
	var class string
	var repl map[string]string
	err := s.sess.Session.Query(`SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = ?`, ks).Scan(&repl)
	if err != nil {
		t.Fatal(err)
	}
	class = repl["class"]
	if !strings.HasSuffix(class, "SimpleStrategy") || repl["replication_factor"] != "1" {
		t.Fatalf("replication after second Migrate = %v", repl)
	}
	// Open refuses a keyspace without the schema.
	if _, err := Open(ctx, testConfig(t, "system_traces")); err == nil || !strings.Contains(err.Error(), "Migrate") {
		t.Errorf("Open(keyspace without schema) = %v", err)
	}
	for _, bad := range []struct {
		class string
		rf    int
		ks    string
	}{{"EverywhereStrategy", 1, "x"}, {SimpleStrategy, 0, "x"}, {SimpleStrategy, 1, "bad-name"}, {SimpleStrategy, 1, "x; DROP"}} {
		if err := Migrate(ctx, Config{Hosts: hosts(t), Keyspace: bad.ks}, bad.class, bad.rf); err == nil {
			t.Errorf("Migrate(%q, %q, %d) succeeded", bad.ks, bad.class, bad.rf)
		}
	}
}

// realID builds a message_id the way the sequencer does.
func realID(t time.Time, counter uint16) uint64 { return uint64(t.UnixMilli())<<16 | uint64(counter) }

// TestHistoryAcrossBuckets: History pages over messages spread across
// several 10-day partitions with empty months between them, in both
// directions, and stops at the channel's first and last bucket.
func TestHistoryAcrossBuckets(t *testing.T) {
	s := openClean(t)
	defer s.Close()
	ctx := context.Background()
	t0 := time.UnixMilli(1_760_000_000_000).UTC()
	var want []uint64
	var msgs []*store.Message
	for i, days := range []int{0, 0, 1, 9, 10, 11, 45, 46, 90, 200, 300, 400, 400} {
		at := t0.Add(time.Duration(days) * 24 * time.Hour).Add(time.Duration(i) * time.Second)
		id := realID(at, uint16(i))
		want = append(want, id)
		msgs = append(msgs, &store.Message{ChannelID: "g:spread", MessageID: id, SenderID: "alice", Text: fmt.Sprint(i), CreatedAt: at, Kind: store.KindText})
	}
	if err := s.AppendBatch(ctx, &store.Batch{Messages: msgs}); err != nil {
		t.Fatal(err)
	}
	buckets := map[int64]bool{}
	for _, id := range want {
		buckets[messageBucket(id)] = true
	}
	if len(buckets) < 7 {
		t.Fatalf("test bug: messages span only %d buckets", len(buckets))
	}
	for _, limit := range []int{1, 2, 3, 5, 100} {
		// Backward from the newest.
		var got []uint64
		before := uint64(0)
		for page := 0; ; page++ {
			if page > len(want) {
				t.Fatalf("limit %d: backward paging does not end", limit)
			}
			ms, more, err := s.History(ctx, "g:spread", before, 0, limit)
			if err != nil {
				t.Fatal(err)
			}
			if len(ms) > limit {
				t.Fatalf("limit %d: page of %d", limit, len(ms))
			}
			ids := make([]uint64, len(ms))
			for i, m := range ms {
				ids[i] = m.MessageID
			}
			got = append(ids, got...)
			if !more {
				break
			}
			before = ms[0].MessageID
		}
		if !slices.Equal(got, want) {
			t.Fatalf("limit %d: backward pages = %v, want %v", limit, got, want)
		}
		// Forward from the first.
		got = []uint64{want[0]}
		after := want[0]
		for page := 0; ; page++ {
			if page > len(want) {
				t.Fatalf("limit %d: forward paging does not end", limit)
			}
			ms, more, err := s.History(ctx, "g:spread", 0, after, limit)
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range ms {
				got = append(got, m.MessageID)
			}
			if !more {
				break
			}
			after = ms[len(ms)-1].MessageID
		}
		if !slices.Equal(got, want) {
			t.Fatalf("limit %d: forward pages = %v, want %v", limit, got, want)
		}
	}
	// Before the first message and after the last: nothing, no more.
	if ms, more, err := s.History(ctx, "g:spread", want[0], 0, 10); err != nil || len(ms) != 0 || more {
		t.Fatalf("History(before first) = %d, %v, %v", len(ms), more, err)
	}
	if ms, more, err := s.History(ctx, "g:spread", 0, want[len(want)-1], 10); err != nil || len(ms) != 0 || more {
		t.Fatalf("History(after last) = %d, %v, %v", len(ms), more, err)
	}
	if last, err := s.LastMessageID(ctx, "g:spread"); err != nil || last != want[len(want)-1] {
		t.Fatalf("LastMessageID = %d, %v", last, err)
	}
}

// TestInboxAcrossPartitions: an inbox spanning several 100000-seq
// partitions reads across the boundaries, and LastInboxSeq finds the last
// partition (the conformance suite's Inbox cases cover holes over whole
// partitions).
func TestInboxAcrossPartitions(t *testing.T) {
	s := openClean(t)
	defer s.Close()
	ctx := context.Background()
	seqs := []uint64{1, 2, 99_999, 100_000, 150_000, 199_999, 200_000, 299_999, 300_000, 300_001, 399_999, 420_000, 499_999, 500_000, 500_007}
	b := &store.Batch{Messages: []*store.Message{{ChannelID: "c", MessageID: 1, SenderID: "a", Text: "x", CreatedAt: time.UnixMilli(1), Kind: store.KindText}}}
	for _, q := range seqs {
		b.Inbox = append(b.Inbox, store.InboxEntry{UserID: "bob", Seq: q, ChannelID: "c", MessageID: 1})
	}
	if err := s.AppendBatch(ctx, b); err != nil {
		t.Fatal(err)
	}
	last, err := s.LastInboxSeq(ctx, "bob")
	if err != nil || last != 500_007 {
		t.Fatalf("LastInboxSeq = %d, %v; want 500007", last, err)
	}
	for _, limit := range []int{1, 2, 3, 7, 100} {
		var got []uint64
		after := uint64(0)
		for page := 0; ; page++ {
			if page > len(seqs) {
				t.Fatalf("limit %d: paging does not end", limit)
			}
			ds, more, err := s.Inbox(ctx, "bob", after, limit)
			if err != nil {
				t.Fatal(err)
			}
			for _, d := range ds {
				if d.Message == nil || d.Message.Text != "x" {
					t.Fatalf("seq %d without its message", d.Seq)
				}
				got = append(got, d.Seq)
			}
			if !more {
				break
			}
			after = ds[len(ds)-1].Seq
		}
		if !slices.Equal(got, seqs) {
			t.Fatalf("limit %d: pages = %v, want %v", limit, got, seqs)
		}
	}
	if ds, more, err := s.Inbox(ctx, "bob", 99_998, 2); err != nil || len(ds) != 2 || ds[1].Seq != 100_000 || !more {
		t.Fatalf("Inbox(after 99998, 2) = %v, %v, %v", ds, more, err)
	}
}

// TestInboxUnindexedPartitions: partitions written before the partition
// index existed (rows without inbox_buckets rows, contiguous from 0) are
// still read, up to the first indexed one and across the holes after it;
// LastInboxSeq finds the last seq of such an inbox.
func TestInboxUnindexedPartitions(t *testing.T) {
	s := openClean(t)
	defer s.Close()
	ctx := context.Background()
	m := &store.Message{ChannelID: "c", MessageID: 1, SenderID: "a", Text: "x", CreatedAt: time.UnixMilli(1), Kind: store.KindText}
	if err := s.AppendBatch(ctx, &store.Batch{Messages: []*store.Message{m}}); err != nil {
		t.Fatal(err)
	}
	old := []uint64{5, 99_999, 100_001, 199_999, 200_003} // partitions 0-2 as the old AppendBatch left them: the last seq of a partition exists when the next has entries
	for _, u := range []string{"bob", "carol"} {
		for _, q := range old {
			if err := s.exec(ctx, stmtInsertInbox, inboxArgs(&store.InboxEntry{UserID: u, Seq: q, ChannelID: "c", MessageID: 1})...); err != nil {
				t.Fatal(err)
			}
		}
	}
	if last, err := s.LastInboxSeq(ctx, "carol"); err != nil || last != 200_003 {
		t.Fatalf("LastInboxSeq(carol) = %d, %v; want 200003", last, err)
	}
	// bob goes on with the new version: partition 2 gets its index row,
	// then seqs jump over partitions 3 to 5.
	newer := []uint64{200_004, 650_000}
	for _, q := range newer {
		if err := s.AppendBatch(ctx, &store.Batch{Inbox: []store.InboxEntry{{UserID: "bob", Seq: q, ChannelID: "c", MessageID: 1}}}); err != nil {
			t.Fatal(err)
		}
	}
	all := append(slices.Clone(old), newer...)
	for _, limit := range []int{1, 2, 3, 100} {
		var got []uint64
		after := uint64(0)
		for page := 0; page <= len(all); page++ {
			ds, more, err := s.Inbox(ctx, "bob", after, limit)
			if err != nil {
				t.Fatal(err)
			}
			for _, d := range ds {
				got = append(got, d.Seq)
			}
			if !more {
				break
			}
			after = ds[len(ds)-1].Seq
		}
		if !slices.Equal(got, all) {
			t.Fatalf("limit %d: %v, want %v", limit, got, all)
		}
	}
	if last, err := s.LastInboxSeq(ctx, "bob"); err != nil || last != 650_000 {
		t.Fatalf("LastInboxSeq(bob) = %d, %v; want 650000", last, err)
	}
}

// TestDedupExpires: dedup records vanish after Config.DedupTTL.
func TestDedupExpires(t *testing.T) {
	s0 := openClean(t)
	s0.Close()
	cfg := testConfig(t, keyspace(t))
	cfg.DedupTTL = time.Second
	ctx := context.Background()
	s, err := Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	d := store.Dedup{SenderID: "a", ClientMessageID: "c1", ChannelID: "c", MessageID: 5, CreatedAt: time.UnixMilli(1_750_000_000_000)}
	if err := s.AppendBatch(ctx, &store.Batch{Dedup: []store.Dedup{d}}); err != nil {
		t.Fatal(err)
	}
	got, err := s.LookupDedup(ctx, "a", "c1")
	if err != nil || got.MessageID != 5 || !got.CreatedAt.Equal(d.CreatedAt) {
		t.Fatalf("LookupDedup = %+v, %v", got, err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := s.LookupDedup(ctx, "a", "c1")
		if errors.Is(err, store.ErrNotFound) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatal("dedup record still there 30 s after its 1 s TTL")
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// TestInvalidAndClosed: empty partition-key ids and seqs >= 2^63 are
// rejected without writing; a closed store refuses work.
func TestInvalidAndClosed(t *testing.T) {
	s := openClean(t)
	ctx := context.Background()
	bad := []*store.Batch{
		{Messages: []*store.Message{{ChannelID: "", MessageID: 1}}},
		{Messages: []*store.Message{{ChannelID: "ok", MessageID: 1}}, Inbox: []store.InboxEntry{{UserID: "", Seq: 1, ChannelID: "ok", MessageID: 1}}},
		{Messages: []*store.Message{{ChannelID: "ok", MessageID: 1}}, Inbox: []store.InboxEntry{{UserID: "u", Seq: 1 << 63, ChannelID: "ok", MessageID: 1}}},
		{Dedup: []store.Dedup{{SenderID: "", ClientMessageID: "x"}}},
	}
	for i, b := range bad {
		if err := s.AppendBatch(ctx, b); !errors.Is(err, ErrInvalidID) {
			t.Errorf("batch %d: err = %v, want ErrInvalidID", i, err)
		}
	}
	if last, err := s.LastMessageID(ctx, "ok"); err != nil || last != 0 {
		t.Fatalf("a rejected batch wrote: LastMessageID = %d, %v", last, err)
	}
	if err := s.CreateUser(ctx, &store.User{ID: ""}); !errors.Is(err, ErrInvalidID) {
		t.Errorf("CreateUser(empty) = %v", err)
	}
	if err := s.CreateChannel(ctx, &store.Channel{ID: "", Type: store.ChannelGroup}, nil); !errors.Is(err, ErrInvalidID) {
		t.Errorf("CreateChannel(empty) = %v", err)
	}
	if err := s.PutDevice(ctx, &store.Device{UserID: "u", DeviceID: "d"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AdvanceCursor(ctx, "u", "d", 1<<63); !errors.Is(err, ErrInvalidID) {
		t.Errorf("AdvanceCursor(2^63) = %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); !errors.Is(err, ErrClosed) {
		t.Errorf("second Close = %v", err)
	}
	if _, err := s.GetUser(ctx, "u"); !errors.Is(err, ErrClosed) {
		t.Errorf("GetUser after Close = %v", err)
	}
	if err := s.AppendBatch(ctx, &store.Batch{Messages: []*store.Message{{ChannelID: "c", MessageID: 1}}}); !errors.Is(err, ErrClosed) {
		t.Errorf("AppendBatch after Close = %v", err)
	}
}

// ------------------------------------------------------------ unit tests (no server)

func TestEncIDOrder(t *testing.T) {
	ids := []uint64{0, 1, 255, 1 << 32, 1<<63 - 1, 1 << 63, 1<<63 + 5, 1<<64 - 1}
	for i := range ids {
		if decID(encID(ids[i])) != ids[i] {
			t.Fatalf("decID(encID(%d)) = %d", ids[i], decID(encID(ids[i])))
		}
		if i > 0 && encID(ids[i-1]) >= encID(ids[i]) {
			t.Fatalf("encID(%d) = %d >= encID(%d) = %d", ids[i-1], encID(ids[i-1]), ids[i], encID(ids[i]))
		}
	}
}

func TestBuckets(t *testing.T) {
	t0 := time.UnixMilli(1_760_000_000_000)
	a, b := realID(t0, 0), realID(t0.Add(10*24*time.Hour), 0)
	if messageBucket(b)-messageBucket(a) != 1 {
		t.Fatalf("10 days apart: buckets %d and %d", messageBucket(a), messageBucket(b))
	}
	if messageBucket(a) != messageBucket(realID(t0, 65535)) {
		t.Fatal("the counter bits changed the bucket")
	}
	if messageBucket(1<<64-1) < 0 {
		t.Fatal("bucket of the largest id overflows")
	}
	if inboxBucket(99_999) != 0 || inboxBucket(100_000) != 1 {
		t.Fatal("inbox bucket boundary")
	}
}

// TestChunkInboxOrder: a user's entries in its next partition go in the
// second step; chunks hold one partition and at most maxBatchStmts rows.
func TestChunkInboxOrder(t *testing.T) {
	var es []store.InboxEntry
	for q := uint64(99_990); q < 100_010; q++ {
		es = append(es, store.InboxEntry{UserID: "a", Seq: q})
	}
	for q := uint64(1); q <= 70; q++ {
		es = append(es, store.InboxEntry{UserID: "b", Seq: q})
	}
	first, later := chunkInbox(es)
	count := func(cs []chunk) (n int) {
		for _, c := range cs {
			if len(c.idx) > maxBatchStmts {
				t.Fatalf("chunk of %d rows", len(c.idx))
			}
			for _, i := range c.idx {
				if (partKey{es[i].UserID, inboxBucket(es[i].Seq)}) != c.part {
					t.Fatalf("chunk %v holds a row of another partition", c.part)
				}
			}
			n += len(c.idx)
		}
		return n
	}
	if n1, n2 := count(first), count(later); n1 != 10+70 || n2 != 10 {
		t.Fatalf("first step %d rows, second %d; want 80 and 10", n1, n2)
	}
	for _, c := range later {
		if c.part != (partKey{"a", 1}) {
			t.Fatalf("second step holds %v", c.part)
		}
	}
}

// TestAppendBatchRequests: a group commit is one request per write step
// (a few more when a step exceeds the batch limits), every row readable
// after it, and batches near the size limits are accepted by the server
// (Cassandra fails a batch over batch_size_fail_threshold, 50 KiB).
func TestAppendBatchRequests(t *testing.T) {
	s := openClean(t)
	defer s.Close()
	ctx := context.Background()
	requests := func() (n uint64) {
		r, _ := s.StatementCounts()
		for _, v := range r {
			n += v
		}
		return n
	}
	// 20 sends to 20 channels (a pairs-shaped group commit): 20 dedup
	// records, 20 messages with bucket and activity rows, 40 inbox rows.
	build := func(n int, text string, base uint64) *store.Batch {
		b := &store.Batch{}
		for i := range n {
			ch := fmt.Sprintf("ch%d", i)
			id := base + uint64(i)
			m := &store.Message{ChannelID: ch, MessageID: id, SenderID: fmt.Sprintf("u%d", i), SenderDeviceID: "d", ClientMessageID: fmt.Sprintf("c%d-%d", i, id), Text: text, CreatedAt: time.UnixMilli(int64(id >> 16)).UTC(), Kind: store.KindText}
			b.Messages = append(b.Messages, m)
			in := []store.Placement{{UserID: m.SenderID, Seq: id}, {UserID: fmt.Sprintf("v%d", i), Seq: id}}
			for _, p := range in {
				b.Inbox = append(b.Inbox, store.InboxEntry{UserID: p.UserID, Seq: p.Seq, ChannelID: ch, MessageID: id})
			}
			b.Dedup = append(b.Dedup, store.Dedup{SenderID: m.SenderID, ClientMessageID: m.ClientMessageID, ChannelID: ch, MessageID: id, CreatedAt: m.CreatedAt, Inbox: in})
		}
		return b
	}
	base := uint64(time.Now().UnixMilli()) << 16
	r0 := requests()
	if err := s.AppendBatch(ctx, build(20, strings.Repeat("t", 100), base)); err != nil {
		t.Fatal(err)
	}
	// 3 steps; the first write of 20 channels' bucket rows and 40 inbox
	// partitions' index rows makes step 2 larger than one batch.
	if n := requests() - r0; n > 6 {
		t.Fatalf("a batch of 20 sends took %d CQL requests, want at most 6", n)
	}
	r0 = requests()
	if err := s.AppendBatch(ctx, build(20, strings.Repeat("t", 100), base+100)); err != nil {
		t.Fatal(err)
	}
	if n := requests() - r0; n != 3 {
		t.Fatalf("a second batch of 20 sends took %d CQL requests, want 3 (one per step)", n)
	}
	// The largest batch the sequencer writes (512 sends) with large texts:
	// split below the server's limits, every row stored.
	big := build(512, strings.Repeat("x", 2000), base+1000)
	if err := s.AppendBatch(ctx, big); err != nil {
		t.Fatalf("large batch: %v", err)
	}
	for _, m := range big.Messages {
		got, err := s.GetMessage(ctx, m.ChannelID, m.MessageID)
		if err != nil || got.Text != m.Text {
			t.Fatalf("message %s/%d after a large batch: %v", m.ChannelID, m.MessageID, err)
		}
	}
	for _, e := range big.Inbox {
		got, err := s.InboxEntryAt(ctx, e.UserID, e.Seq)
		if err != nil || got.MessageID != e.MessageID {
			t.Fatalf("inbox %s/%d after a large batch: %+v %v", e.UserID, e.Seq, got, err)
		}
	}
	for _, d := range big.Dedup {
		got, err := s.LookupDedup(ctx, d.SenderID, d.ClientMessageID)
		if err != nil || got.MessageID != d.MessageID {
			t.Fatalf("dedup %s/%s after a large batch: %v", d.SenderID, d.ClientMessageID, err)
		}
	}
}

// TestAdvanceCursorRequests: once a device's cursor is known, an ack that
// advances it is one write and an ack at or below it no request; the
// stored cursor never goes down, also when another process (another
// Store) advanced it meanwhile.
func TestAdvanceCursorRequests(t *testing.T) {
	s := openClean(t)
	defer s.Close()
	ctx := context.Background()
	if err := s.PutDevice(ctx, &store.Device{UserID: "u", DeviceID: "d", Name: "n", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	count := func() (n uint64) {
		r, _ := s.StatementCounts()
		for _, v := range r {
			n += v
		}
		return n
	}
	adv := func(st *Store, seq, want uint64, wantReq uint64) {
		t.Helper()
		r0 := count()
		got, err := st.AdvanceCursor(ctx, "u", "d", seq)
		if err != nil || got != want {
			t.Fatalf("AdvanceCursor(%d) = %d, %v; want %d", seq, got, err, want)
		}
		if st == s {
			if n := count() - r0; n != wantReq {
				t.Fatalf("AdvanceCursor(%d) took %d CQL requests, want %d", seq, n, wantReq)
			}
		}
	}
	adv(s, 5, 5, 2) // unknown: read, write
	adv(s, 9, 9, 1) // known: write only
	adv(s, 7, 9, 0) // at or below: nothing
	adv(s, 10, 10, 1)
	other, err := Open(ctx, testConfig(t, keyspace(t)))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	adv(other, 20, 20, 0) // another process reads 10, writes 20
	adv(s, 15, 15, 1)     // this one writes 15 at timestamp 15: below 20, it loses
	d, err := s.GetDevice(ctx, "u", "d")
	if err != nil || d.Cursor != 20 {
		t.Fatalf("stored cursor = %+v, %v; want 20", d, err)
	}
	if _, err := s.AdvanceCursor(ctx, "u", "nope", 3); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("unknown device: %v, want ErrNotFound", err)
	}
}

// TestCoalescedAckWrites: concurrent cursor and receipt writes (the
// per-ack writes) go together in multi-partition batches, each stored.
func TestCoalescedAckWrites(t *testing.T) {
	s := openClean(t)
	defer s.Close()
	ctx := context.Background()
	const n = 200
	for i := range n {
		if err := s.PutDevice(ctx, &store.Device{UserID: fmt.Sprintf("u%d", i), DeviceID: "d", Name: "n", CreatedAt: time.Now()}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.AdvanceCursor(ctx, fmt.Sprintf("u%d", i), "d", 1); err != nil {
			t.Fatal(err)
		}
	}
	requests := func() (n uint64) {
		r, _ := s.StatementCounts()
		for _, v := range r {
			n += v
		}
		return n
	}
	r0 := requests()
	err := parallel.Do(ctx, n, n, func(ctx context.Context, i int) error {
		u := fmt.Sprintf("u%d", i)
		if c, err := s.AdvanceCursor(ctx, u, "d", uint64(100+i)); err != nil || c != uint64(100+i) {
			return fmt.Errorf("AdvanceCursor(%s) = %d, %v", u, c, err)
		}
		return s.AdvanceReceipts(ctx, []store.Receipt{{ChannelID: fmt.Sprintf("c%d", i%7), UserID: u, DeliveredUpTo: uint64(1000 + i), ReadUpTo: uint64(500 + i)}})
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := requests() - r0; got >= 2*n {
		t.Errorf("%d concurrent acks took %d CQL requests, want fewer than %d", n, got, 2*n)
	}
	for i := range n {
		u := fmt.Sprintf("u%d", i)
		d, err := s.GetDevice(ctx, u, "d")
		if err != nil || d.Cursor != uint64(100+i) {
			t.Fatalf("%s cursor = %+v, %v; want %d", u, d, err, 100+i)
		}
		r, err := s.GetReceipt(ctx, fmt.Sprintf("c%d", i%7), u)
		if err != nil || r.DeliveredUpTo != uint64(1000+i) || r.ReadUpTo != uint64(500+i) {
			t.Fatalf("%s receipt = %+v, %v", u, r, err)
		}
	}
}
