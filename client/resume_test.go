package client_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/chatd/chatd/client"
	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/chatd/chatd/server/app"
)

// handedLog records what a device's application was handed, across
// sessions, and checks the SDK's promise as it goes: inbox seqs strictly
// increasing and (on a single node, where the inbox has no holes) with no
// seq skipped, every message once, message ids increasing per channel.
type handedLog struct {
	t       *testing.T
	last    uint64 // highest inbox_seq handed over
	seqs    int
	msgs    map[msgKey]uint64 // message -> the seq it was handed under
	perChan map[string]uint64 // channel -> last message_id handed
}

type msgKey struct {
	channel string
	id      uint64
}

func newHandedLog(t *testing.T) *handedLog {
	return &handedLog{t: t, msgs: map[msgKey]uint64{}, perChan: map[string]uint64{}}
}

func (h *handedLog) add(d *chatv1.Delivery, how string) error {
	seq, m := d.GetInboxSeq(), d.GetMessage()
	if seq != h.last+1 {
		return fmt.Errorf("%s handed seq %d after %d (seqs %d..%d never reached the application, or came twice)", how, seq, h.last, h.last+1, seq-1)
	}
	k := msgKey{m.GetChannelId(), m.GetMessageId()}
	if prev, ok := h.msgs[k]; ok {
		return fmt.Errorf("%s handed message %v again under seq %d (first under %d)", how, k, seq, prev)
	}
	if m.GetMessageId() <= h.perChan[k.channel] {
		return fmt.Errorf("%s handed message %d of %s after %d (out of channel order)", how, m.GetMessageId(), k.channel, h.perChan[k.channel])
	}
	h.last, h.seqs = seq, h.seqs+1
	h.msgs[k] = seq
	h.perChan[k.channel] = m.GetMessageId()
	return nil
}

// TestResumeUnderLiveTraffic reconnects a device again and again while two
// senders keep its inbox busy (a direct channel and a group), so that the
// server's last SyncPage of each resume is followed at once by live
// deliveries on the wire. Every message must reach the application exactly
// once, in order, through SyncAll's callback or Deliveries, and no inbox
// seq may be skipped (issue 15, defect 1: the last page was dropped when
// the reader handled the first live delivery before SyncAll walked it).
func TestResumeUnderLiveTraffic(t *testing.T) {
	// No rate limits: the senders pipeline, and bob opens a stream (a
	// rate-limited call) every few deliveries.
	a := startServer(t, app.Config{FrameRate: 1e6, FrameBurst: 1 << 20, UnaryRate: 1e6, UnaryBurst: 1 << 20})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	alice := newUser(t, ctx, a.GRPCAddr(), "alice")
	bob := newUser(t, ctx, a.GRPCAddr(), "bob")
	carol := newUser(t, ctx, a.GRPCAddr(), "carol")
	g, err := carol.Chat().CreateGroup(ctx, &chatv1.CreateGroupRequest{Name: "team", MemberIds: []string{"bob", "alice"}})
	if err != nil {
		t.Fatal(err)
	}
	gid := g.GetChannel().GetChannelId()

	// The senders keep sending until bob has resumed this often (each
	// resume is one chance for the race), at least minPerSender each.
	const wantRounds, minPerSender = 300, 200
	var (
		mu    sync.Mutex
		acked []msgKey
		wg    sync.WaitGroup
	)
	stop, sendersDone := make(chan struct{}), make(chan struct{})
	send := func(c *client.Client, p client.SendParams) {
		defer wg.Done()
		s, err := c.Connect(ctx, client.WithMaxInFlight(16))
		if err != nil {
			t.Error(err)
			return
		}
		defer s.Close()
		go func() {
			for range s.Deliveries() { // the sender's own copies
			}
		}()
		var pending []*client.PendingSend
	sending:
		for i := 0; ; i++ {
			if i >= minPerSender {
				select {
				case <-stop:
					break sending
				default:
				}
			}
			p.Text = fmt.Sprint("m", i)
			ps, err := s.SendAsync(ctx, p)
			if err != nil {
				if ctx.Err() == nil {
					t.Errorf("send %d: %v", i, err)
				}
				return
			}
			pending = append(pending, ps)
		}
		for i, ps := range pending {
			ack, err := ps.Wait(ctx)
			if err != nil {
				if ctx.Err() == nil {
					t.Errorf("send %d: %v", i, err)
				}
				return
			}
			mu.Lock()
			acked = append(acked, msgKey{ack.GetChannelId(), ack.GetMessageId()})
			mu.Unlock()
		}
	}
	wg.Add(2)
	go send(alice, client.SendParams{ToUser: "bob"})
	go send(carol, client.SendParams{ChannelID: gid})
	go func() { wg.Wait(); close(sendersDone) }()
	defer func() { cancel(); <-sendersDone }() // no sender outlives the test

	// Bob's device: resume, take a few live deliveries, go away without
	// acking everything (so most resumes start behind the head), repeat.
	log := newHandedLog(t)
	var resume uint64
	rounds, behind := 0, 0
	session := func(final bool) (ended bool) {
		t.Helper()
		s, err := bob.Connect(ctx, client.WithResumeAfter(resume))
		if err != nil {
			t.Fatalf("round %d: Connect: %v", rounds, err)
		}
		defer s.Close()
		rounds++
		if s.Behind() {
			behind++
		}
		if _, err := s.SyncAll(ctx, 0, func(d *chatv1.Delivery) error { return log.add(d, "SyncAll") }); err != nil {
			t.Fatalf("round %d: SyncAll: %v", rounds, err)
		}
		if rounds%3 == 0 {
			if _, err := s.Ack(ctx, log.last); err != nil {
				t.Fatalf("round %d: Ack: %v", rounds, err)
			}
		}
		resume = log.last
		if final {
			return true
		}
	live:
		for range 3 {
			select {
			case d, ok := <-s.Deliveries():
				if !ok {
					break live // e.g. a slow consumer's stream ended: resume
				}
				if err := log.add(d, "Deliveries"); err != nil {
					t.Fatalf("round %d: %v", rounds, err)
				}
			case <-sendersDone:
				ended = true
				break live
			case <-ctx.Done():
				t.Fatalf("round %d: %v", rounds, ctx.Err())
			}
		}
		// Resume after what the application took, not LastSeq: deliveries
		// still buffered in the channel are not processed.
		resume = log.last
		return ended
	}
	for rounds < wantRounds && !session(false) {
	}
	close(stop)
	<-sendersDone
	if t.Failed() {
		return
	}
	session(true) // everything is sent: this resume must reach the head

	s := connect(t, ctx, bob)
	if head := s.Welcome().GetHeadSeq(); log.last != head {
		t.Fatalf("handed up to seq %d, inbox head %d", log.last, head)
	}
	for _, k := range acked {
		if _, ok := log.msgs[k]; !ok {
			t.Errorf("acknowledged message %v never reached bob's application", k)
		}
	}
	if len(acked) < 2*minPerSender {
		t.Fatalf("%d sends acknowledged, want at least %d", len(acked), 2*minPerSender)
	}
	t.Logf("%d rounds (%d resumed behind the head), %d deliveries handed over", rounds, behind, log.seqs)
}
