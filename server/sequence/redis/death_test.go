package redis_test

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/chatd/chatd/server/internal/testenv"
	"github.com/chatd/chatd/server/sequence"
	seqredis "github.com/chatd/chatd/server/sequence/redis"
	"github.com/chatd/chatd/server/sequence/sequencetest"
	"github.com/chatd/chatd/server/store"
	"github.com/chatd/chatd/server/store/scylla"
)

// stopAt is a fault hook for the cluster store: the first batch that
// holds the send key reaches step and its writer stops there for good, as
// if its server had been SIGKILLed between two write steps.
type stopAt struct {
	step    scylla.WriteStep
	key     string // client_message_id of the send that dies
	once    sync.Once
	reached chan struct{}
	release chan struct{} // closed at the end of the test: the writer then fails
}

func (s *stopAt) hook(step scylla.WriteStep, b *store.Batch) {
	if step != s.step {
		return
	}
	for _, d := range b.Dedup {
		if d.ClientMessageID == s.key {
			hit := false
			s.once.Do(func() { hit = true })
			if hit {
				close(s.reached)
				<-s.release
			}
			return
		}
	}
}

// TestServerDeathMidBatch kills a server's writer after each write step of
// the cluster store (dedup records, messages, inbox rows) while it stores a
// group message, then stops its allocator's lease (the process is gone).
// Another server must then, well within the TTLs that used to bound it:
//
//   - deliver its own later message to the members (the horizon passes the
//     dead server's pending seqs once its lease lapsed), and
//   - answer the sender's resend with the original message_id, storing
//     what the dead batch did not (its message row, its inbox rows),
//
// and every member's inbox must hold the message exactly once, under one
// message_id, in the channel's history exactly once.
func TestServerDeathMidBatch(t *testing.T) {
	addr := redisAddr(t)
	shared := cluster(t)
	for _, step := range []scylla.WriteStep{scylla.StepDedup, scylla.StepMessages, scylla.StepInbox} {
		t.Run(step.String(), func(t *testing.T) {
			prefix := testPrefix(t, addr)
			ctx := context.Background()
			fault := &stopAt{step: step, key: "m1", reached: make(chan struct{}), release: make(chan struct{})}
			hooked, err := scylla.Open(ctx, scylla.Config{Hosts: testenv.CQLHosts(t), Keyspace: testKeyspace.Name(t), Timeout: 20 * time.Second,
				Logger: slog.New(slog.DiscardHandler), AfterWriteStep: fault.hook})
			if err != nil {
				t.Fatal(err)
			}
			defer func() {
				hooked.Close() // the stopped writer's next write fails
				close(fault.release)
			}()
			// Default PendingTTL (15 s) and StoreTimeout (10 s): without
			// fencing, the horizon would wait 15 s and the resend 25 s.
			lease := 300 * time.Millisecond
			allocA := newAlloc(t, newClient(t, addr), prefix, seqredis.Config{LeaseTTL: lease})
			allocB := newAlloc(t, newClient(t, addr), prefix, seqredis.Config{LeaseTTL: lease})
			defer allocB.Close()
			sA := sequence.New(hooked, nil, sequence.Options{Allocator: allocA, Logger: slog.New(slog.DiscardHandler)})
			sB := sequence.New(shared, nil, sequence.Options{Allocator: allocB, Logger: slog.New(slog.DiscardHandler)})
			defer sB.Close()

			alice, bob, carol := sequencetest.Unique("alice"), sequencetest.Unique("bob"), sequencetest.Unique("carol")
			members := []string{alice, bob, carol}
			ch := sequencetest.Unique("g")
			// Every member has an entry before the one that dies.
			first, err := sB.Do(ctx, &sequence.Request{ChannelID: ch, SenderID: bob, ClientMessageID: "m0", Text: "before", Recipients: members})
			if err != nil {
				t.Fatal(err)
			}
			m1 := &sequence.Request{ChannelID: ch, SenderID: alice, ClientMessageID: "m1", Text: "dies with its server", Recipients: members}
			sA.Submit(m1, func(r sequence.Result) {})
			select {
			case <-fault.reached:
			case <-time.After(20 * time.Second):
				t.Fatal("the batch never reached the fault")
			}
			died := time.Now()
			allocA.Close() // the process is gone: its lease is no longer renewed

			// A later message from another server, and the horizon of
			// every member passing it (the dead server's seqs come first).
			m2, err := sB.Do(ctx, &sequence.Request{ChannelID: ch, SenderID: carol, ClientMessageID: "m2", Text: "after", Recipients: members})
			if err != nil {
				t.Fatal(err)
			}
			var visible time.Duration
			for deadline := died.Add(10 * time.Second); ; {
				all := true
				for _, u := range members {
					h, err := sB.Head(ctx, u)
					if err != nil {
						t.Fatal(err)
					}
					if h < m2inbox(t, ctx, shared, u, m2.MessageID, ch) {
						all = false
					}
				}
				if all {
					visible = time.Since(died)
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("the horizon did not pass the dead server's seqs within 10 s (PendingTTL is 15 s): fencing did not release them")
				}
				time.Sleep(20 * time.Millisecond)
			}

			// The sender resends m1 to the surviving server.
			t0 := time.Now()
			r, err := sB.Do(ctx, m1)
			answered := time.Since(t0)
			if err != nil {
				t.Fatalf("resend after the death (%v): %v", step, err)
			}
			if answered > 8*time.Second {
				t.Fatalf("resend answered after %v: the dead server's claim was not taken over", answered)
			}
			t.Logf("step %v: later message visible %v after the death; resend answered in %v (duplicate=%v)", step, visible.Round(time.Millisecond), answered.Round(time.Millisecond), r.Duplicate)
			if step != scylla.StepDedup && !r.Duplicate {
				t.Fatalf("resend: %+v; the dead batch had recorded the send, want its ack (Duplicate)", r)
			}
			// A second resend is a plain duplicate of the same message.
			r2, err := sB.Do(ctx, m1)
			if err != nil || !r2.Duplicate || r2.MessageID != r.MessageID {
				t.Fatalf("second resend: %+v, %v; want the duplicate of %d", r2, err, r.MessageID)
			}

			// Every member: m0, m1, m2 exactly once each, m1 under one id.
			for _, u := range members {
				ds := inboxUpToHead(t, ctx, sB, shared, u)
				count := map[string]int{}
				ids := map[uint64]bool{}
				for _, d := range ds {
					if d.Message.ChannelID != ch {
						continue
					}
					count[d.Message.ClientMessageID]++
					if d.Message.ClientMessageID == "m1" {
						ids[d.Message.MessageID] = true
					}
				}
				if count["m0"] != 1 || count["m1"] != 1 || count["m2"] != 1 || len(ids) != 1 || !ids[r.MessageID] {
					t.Fatalf("%s's inbox: %v, m1 under ids %v (ack %d); want each message once", u, count, ids, r.MessageID)
				}
			}
			hist, _, err := shared.History(ctx, ch, 0, 0, 100)
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			for _, m := range hist {
				if m.ClientMessageID == "m1" {
					n++
				}
			}
			if n != 1 || len(hist) != 3 {
				t.Fatalf("history holds %d messages, m1 %d times; want 3 and once (first id %d)", len(hist), n, first.MessageID)
			}
			t.Logf("survivor's allocator: %+v", allocB.Stats())
		})
	}
}

// inboxUpToHead reads u's whole inbox up to the horizon, as a device that
// follows it.
func inboxUpToHead(t *testing.T, ctx context.Context, s *sequence.Sequencer, st store.Messages, u string) []store.Delivery {
	t.Helper()
	h, err := s.Head(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	var out []store.Delivery
	var after uint64
	for {
		ds, more, err := st.Inbox(ctx, u, after, 100)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range ds {
			if d.Seq <= h {
				out = append(out, d)
			}
			after = d.Seq
		}
		if !more || len(ds) == 0 {
			return out
		}
	}
}

// m2inbox returns the seq of message id in u's inbox (read without the
// horizon), failing the test if it is absent.
func m2inbox(t *testing.T, ctx context.Context, st store.Messages, u string, id uint64, ch string) uint64 {
	t.Helper()
	ds, _, err := st.Inbox(ctx, u, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range ds {
		if d.Message.ChannelID == ch && d.Message.MessageID == id {
			return d.Seq
		}
	}
	t.Fatalf("message %d not in %s's inbox", id, u)
	return 0
}
