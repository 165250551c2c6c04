package pebble

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/chatd/chatd/server/store"
	"github.com/chatd/chatd/server/store/storetest"
)

var quiet = WithLogger(slog.New(slog.DiscardHandler))

func openT(tb testing.TB, dir string) *Store {
	tb.Helper()
	s, err := Open(dir, quiet, WithCacheSize(8<<20), WithMemTableSize(4<<20))
	if err != nil {
		tb.Fatalf("Open: %v", err)
	}
	return s
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return openT(t, t.TempDir()) })
}

func BenchmarkStore(b *testing.B) {
	storetest.Bench(b, func(b *testing.B) store.Store {
		s, err := Open(b.TempDir(), quiet)
		if err != nil {
			b.Fatal(err)
		}
		return s
	})
}

// TestReopen writes every kind of row, closes the store, opens the same
// directory again and reads everything back.
func TestReopen(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	now := time.UnixMilli(1_750_000_000_123).UTC()
	s := openT(t, dir)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(s.CreateUser(ctx, &store.User{ID: "zoë", DisplayName: "Zoë", PasswordHash: []byte("h"), CreatedAt: now}))
	must(s.PutDevice(ctx, &store.Device{UserID: "zoë", DeviceID: "phone", Name: "P", CreatedAt: now}))
	_, err := s.AdvanceCursor(ctx, "zoë", "phone", 2)
	must(err)
	must(s.AddContact(ctx, "zoë", "bob"))
	must(s.CreateChannel(ctx, &store.Channel{ID: "g:1", Type: store.ChannelGroup, Name: "G", CreatedAt: now, CreatedBy: "zoë"},
		[]store.Member{{ChannelID: "g:1", UserID: "zoë", Role: store.RoleOwner, JoinedAt: now}}))
	var msgs []*store.Message
	var inbox []store.InboxEntry
	for i := uint64(1); i <= 3; i++ {
		msgs = append(msgs, &store.Message{ChannelID: "g:1", MessageID: i, SenderID: "zoë", Text: fmt.Sprint("m", i), CreatedAt: now.Add(time.Duration(i) * time.Second), Kind: store.KindText})
		inbox = append(inbox, store.InboxEntry{UserID: "zoë", Seq: i + 10, ChannelID: "g:1", MessageID: i})
	}
	must(s.AppendBatch(ctx, &store.Batch{Messages: msgs, Inbox: inbox,
		Dedup: []store.Dedup{{SenderID: "zoë", ClientMessageID: "c3", ChannelID: "g:1", MessageID: 3, CreatedAt: now}}}))
	must(s.Close())
	if err := s.Close(); !errors.Is(err, ErrClosed) {
		t.Fatalf("second Close = %v, want ErrClosed", err)
	}
	if _, err := s.GetUser(ctx, "zoë"); !errors.Is(err, ErrClosed) {
		t.Fatalf("GetUser after Close = %v, want ErrClosed", err)
	}

	s = openT(t, dir)
	defer s.Close()
	if id, err := s.LastMessageID(ctx, "g:1"); err != nil || id != 3 {
		t.Fatalf("LastMessageID after reopen = %d, %v; want 3", id, err)
	}
	if seq, err := s.LastInboxSeq(ctx, "zoë"); err != nil || seq != 13 {
		t.Fatalf("LastInboxSeq after reopen = %d, %v; want 13", seq, err)
	}
	ds, more, err := s.Inbox(ctx, "zoë", 10, 10)
	must(err)
	if len(ds) != 3 || more || ds[2].Message.Text != "m3" || !ds[2].Message.CreatedAt.Equal(now.Add(3*time.Second)) {
		t.Fatalf("Inbox after reopen = %+v more=%v", ds, more)
	}
	if u, err := s.GetUser(ctx, "zoë"); err != nil || u.DisplayName != "Zoë" || !u.CreatedAt.Equal(now) {
		t.Fatalf("GetUser after reopen = %+v, %v", u, err)
	}
	if d, err := s.GetDevice(ctx, "zoë", "phone"); err != nil || d.Cursor != 2 {
		t.Fatalf("GetDevice after reopen = %+v, %v", d, err)
	}
	if ok, err := s.IsContact(ctx, "zoë", "bob"); err != nil || !ok {
		t.Fatalf("IsContact after reopen = %v, %v", ok, err)
	}
	if d, err := s.LookupDedup(ctx, "zoë", "c3"); err != nil || d.MessageID != 3 {
		t.Fatalf("LookupDedup after reopen = %+v, %v", d, err)
	}
	if m, err := s.GetMember(ctx, "g:1", "zoë"); err != nil || m.Role != store.RoleOwner {
		t.Fatalf("GetMember after reopen = %+v, %v", m, err)
	}
	chs, err := s.ListUserChannels(ctx, "zoë", 0, 10)
	must(err)
	if len(chs) != 1 || chs[0].LastMessageID != 3 || !chs[0].LastActivity.Equal(now.Add(3*time.Second)) {
		t.Fatalf("ListUserChannels after reopen = %+v", chs)
	}
}

// TestRejectsNUL: ids containing 0x00 are rejected with ErrInvalidID and
// nothing is written.
func TestRejectsNUL(t *testing.T) {
	ctx := context.Background()
	s := openT(t, t.TempDir())
	defer s.Close()
	bad := "a\x00b"
	err := s.AppendBatch(ctx, &store.Batch{
		Messages: []*store.Message{{ChannelID: "ok", MessageID: 1, Text: "x"}},
		Inbox:    []store.InboxEntry{{UserID: bad, Seq: 1, ChannelID: "ok", MessageID: 1}},
	})
	if !errors.Is(err, ErrInvalidID) {
		t.Fatalf("AppendBatch with NUL user id = %v, want ErrInvalidID", err)
	}
	if id, err := s.LastMessageID(ctx, "ok"); err != nil || id != 0 {
		t.Fatalf("rejected batch was partly written: LastMessageID = %d, %v", id, err)
	}
	checks := map[string]error{
		"CreateUser":    s.CreateUser(ctx, &store.User{ID: bad}),
		"PutDevice":     s.PutDevice(ctx, &store.Device{UserID: "u", DeviceID: bad}),
		"AddContact":    s.AddContact(ctx, "u", bad),
		"CreateChannel": s.CreateChannel(ctx, &store.Channel{ID: "c"}, []store.Member{{UserID: bad}}),
		"AddMember":     s.AddMember(ctx, store.Member{ChannelID: bad, UserID: "u"}, 10),
	}
	_, checks["History"] = func() (any, error) { _, _, err := s.History(ctx, bad, 0, 0, 1); return nil, err }()
	_, checks["GetUser"] = s.GetUser(ctx, bad)
	for name, err := range checks {
		if !errors.Is(err, ErrInvalidID) {
			t.Errorf("%s with NUL id = %v, want ErrInvalidID", name, err)
		}
	}
	if _, err := s.GetChannel(ctx, "c"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("rejected CreateChannel wrote the channel: %v", err)
	}
}

// TestCursorSurvivesClose: AdvanceCursor is not fsync'd, but a clean Close
// must still leave it on disk, also when it is the last write before the
// Close (no synced commit after it).
func TestCursorSurvivesClose(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := openT(t, dir)
	if err := s.CreateUser(ctx, &store.User{ID: "ann", DisplayName: "Ann", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutDevice(ctx, &store.Device{UserID: "ann", DeviceID: "d1", Name: "D", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	for _, seq := range []uint64{3, 7, 5, 42} {
		if _, err := s.AdvanceCursor(ctx, "ann", "d1", seq); err != nil {
			t.Fatal(err)
		}
	}
	if d, err := s.GetDevice(ctx, "ann", "d1"); err != nil || d.Cursor != 42 {
		t.Fatalf("GetDevice before Close = %+v, %v; want cursor 42", d, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openT(t, dir)
	defer s.Close()
	if d, err := s.GetDevice(ctx, "ann", "d1"); err != nil || d.Cursor != 42 {
		t.Fatalf("GetDevice after reopen = %+v, %v; want cursor 42", d, err)
	}
}
