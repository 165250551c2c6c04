package redisqueue_test

import (
	"context"
	"testing"
	"time"

	"github.com/chatd/chatd/server/internal/redistest"
	"github.com/chatd/chatd/server/internal/testenv"
	"github.com/chatd/chatd/server/push/redisqueue"
	"github.com/chatd/chatd/server/store"
)

// Two servers share the stream: each reads only what it took; a job that
// server s1 took and never acknowledged (s1 died) is claimed by s2 once it
// has been idle ClaimIdle, and an acknowledged job is gone for everyone.
func TestQueue_ClaimFromDeadConsumer(t *testing.T) {
	c := redistest.Client(t, testenv.RedisAddr(t))
	prefix := redistest.NewPrefix("pushqueue")
	t.Cleanup(func() { _ = redistest.DeletePrefix(c, prefix) })
	ctx := context.Background()
	mk := func(consumer string) *redisqueue.Queue {
		q, err := redisqueue.New(ctx, redisqueue.Config{Client: c, Key: prefix + "push", Consumer: consumer, ClaimIdle: 300 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		return q
	}
	s1, s2 := mk("s1"), mk("s2")
	at := time.UnixMilli(1_750_000_000_000).UTC()
	jobs := []store.PushJob{
		{UserID: "bob", ChannelID: "dm:alice:bob", MessageID: 7, Committed: at, Due: at.Add(2 * time.Second)},
		{UserID: "carol", ChannelID: "g:x", MessageID: 8, Committed: at, Due: at, DeviceID: "phone", Attempt: 2},
	}
	if err := s1.AddPushJobs(ctx, jobs); err != nil {
		t.Fatal(err)
	}
	if jobs[0].ID == 0 || jobs[1].ID <= jobs[0].ID {
		t.Fatalf("ids %d %d", jobs[0].ID, jobs[1].ID)
	}
	got, err := s1.PushJobs(ctx, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0] != jobs[0] || got[1] != jobs[1] {
		t.Fatalf("s1 read %+v, want %+v", got, jobs)
	}
	// s1 still holds them: reading again returns them again (pending).
	if again, _ := s1.PushJobs(ctx, 10); len(again) != 2 {
		t.Fatalf("s1 pending %d, want 2", len(again))
	}
	// s2 sees nothing while s1's claim is fresh.
	if other, _ := s2.PushJobs(ctx, 10); len(other) != 0 {
		t.Fatalf("s2 read %+v while s1 holds them", other)
	}
	// s1 sends and acknowledges the first, then dies.
	if err := s1.DeletePushJobs(ctx, []uint64{jobs[0].ID}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(400 * time.Millisecond)
	claimed, err := s2.PushJobs(ctx, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(claimed) != 1 || claimed[0] != jobs[1] {
		t.Fatalf("s2 claimed %+v, want only %+v", claimed, jobs[1])
	}
	if err := s2.DeletePushJobs(ctx, []uint64{jobs[1].ID}); err != nil {
		t.Fatal(err)
	}
	if n := c.XLen(ctx, prefix+"push").Val(); n != 0 {
		t.Fatalf("stream holds %d entries after both were acknowledged", n)
	}
}
