package pebble

import (
	"context"
	"testing"
	"time"

	"github.com/chatd/chatd/server/store"
)

// The push queue keeps its jobs across a reopen, in id order, and ids keep
// increasing after it (a job added after a restart never takes the id of
// one still queued).
func TestPushQueue(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := openT(t, dir)
	at := time.UnixMilli(1_750_000_000_000).UTC()
	jobs := []store.PushJob{
		{UserID: "bob", ChannelID: "dm:alice:bob", MessageID: 7, Committed: at, Due: at.Add(2 * time.Second)},
		{UserID: "carol", ChannelID: "g:x", MessageID: 8, Committed: at, Due: at, DeviceID: "phone", Attempt: 3},
		{UserID: "bob", ChannelID: "dm:alice:bob", MessageID: 9, Committed: at, Due: at},
	}
	if err := s.AddPushJobs(ctx, jobs); err != nil {
		t.Fatal(err)
	}
	if jobs[0].ID == 0 || jobs[1].ID != jobs[0].ID+1 || jobs[2].ID != jobs[1].ID+1 {
		t.Fatalf("ids %d %d %d", jobs[0].ID, jobs[1].ID, jobs[2].ID)
	}
	if err := s.DeletePushJobs(ctx, []uint64{jobs[0].ID, 12345}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openT(t, dir)
	defer s.Close()
	got, err := s.PushJobs(ctx, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0] != jobs[1] || got[1] != jobs[2] {
		t.Fatalf("after reopen: %+v, want %+v", got, jobs[1:])
	}
	more := []store.PushJob{{UserID: "dave", ChannelID: "g:y", MessageID: 1, Committed: at, Due: at}}
	if err := s.AddPushJobs(ctx, more); err != nil {
		t.Fatal(err)
	}
	if more[0].ID <= jobs[2].ID {
		t.Fatalf("id after reopen %d, want > %d", more[0].ID, jobs[2].ID)
	}
	if got, _ := s.PushJobs(ctx, 1); len(got) != 1 || got[0].ID != jobs[1].ID {
		t.Fatalf("PushJobs(limit 1) = %+v", got)
	}
}
