package client

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
)

// These tests drive the hand-over of sync pages and live deliveries with
// frames in a chosen wire order. The test plays the reader (dispatch) and
// the hand-over goroutine (pump); SyncAll runs in its own goroutine and
// its requests are taken from the writer queue.

func msgDelivery(seq, id uint64) *chatv1.Delivery {
	return &chatv1.Delivery{InboxSeq: seq, Message: &chatv1.Message{ChannelId: "dm:a:b", MessageId: id, Text: fmt.Sprint("m", id)}}
}

func liveFrame(seq uint64) *chatv1.ServerFrame {
	return &chatv1.ServerFrame{Payload: &chatv1.ServerFrame_Delivery{Delivery: msgDelivery(seq, 1000+seq)}}
}

// pageFrame is the reply to frame id: the entries from..to (none if from >
// to), next_after_seq next.
func pageFrame(id, from, to, next uint64, more bool) *chatv1.ServerFrame {
	p := &chatv1.SyncPage{More: more, NextAfterSeq: next}
	for q := from; q <= to; q++ {
		p.Deliveries = append(p.Deliveries, msgDelivery(q, 1000+q))
	}
	return &chatv1.ServerFrame{FrameId: id, Payload: &chatv1.ServerFrame_SyncPage{SyncPage: p}}
}

// syncRun is a SyncAll running in the background.
type syncRun struct {
	handed []uint64 // seqs passed to fn
	last   uint64
	err    error
	done   chan struct{}
}

// startSyncAll runs SyncAll; fn fails at seq failAt (0: never) and checks
// that nothing reached Deliveries while a page is being handed over.
func startSyncAll(t *testing.T, ctx context.Context, s *Session, limit int32, failAt uint64) *syncRun {
	t.Helper()
	r := &syncRun{done: make(chan struct{})}
	go func() {
		defer close(r.done)
		r.last, r.err = s.SyncAll(ctx, limit, func(d *chatv1.Delivery) error {
			if n := len(s.deliveries); n != 0 {
				return fmt.Errorf("%d live deliveries handed over before sync entry %d", n, d.GetInboxSeq())
			}
			if d.GetInboxSeq() == failAt {
				return errBoom
			}
			r.handed = append(r.handed, d.GetInboxSeq())
			return nil
		})
	}()
	return r
}

var errBoom = errors.New("boom")

// nextSync takes SyncAll's next request from the writer queue.
func nextSync(t *testing.T, s *Session, wantAfter uint64) uint64 {
	t.Helper()
	select {
	case of := <-s.out:
		if got := of.frame.GetSync().GetAfterSeq(); of.frame.GetSync() == nil || got != wantAfter {
			t.Fatalf("request %v, want a SyncRequest after %d", of.frame, wantAfter)
		}
		return of.frame.GetFrameId()
	case <-time.After(10 * time.Second): // a hang, not a timing assertion
		t.Fatal("SyncAll sent no request")
	}
	return 0
}

func (r *syncRun) wait(t *testing.T) {
	t.Helper()
	select {
	case <-r.done:
	case <-time.After(10 * time.Second):
		t.Fatal("SyncAll did not return")
	}
}

func seqRange(from, to uint64) string {
	var q []uint64
	for i := from; i <= to; i++ {
		q = append(q, i)
	}
	return fmt.Sprint(q)
}

// The case: a device resumes after seq 13 with head 25; the last
// page (14..25) is followed at once by live 26 and 27. The page reaches
// SyncAll's callback before anything reaches Deliveries, and nothing is
// skipped, whichever goroutine runs first.
func TestLastSyncPageIsHandedOverBeforeLiveDeliveries(t *testing.T) {
	s := newDetachedSession(&chatv1.Welcome{Cursor: 13, HeadSeq: 25}, sessionOptions{deliveryBuffer: 16})
	r := startSyncAll(t, context.Background(), s, 0, 0)
	id := nextSync(t, s, 13)
	s.dispatch(pageFrame(id, 14, 25, 25, false))
	s.dispatch(liveFrame(26))
	s.dispatch(liveFrame(27))
	pump(s)
	r.wait(t)
	if r.err != nil || fmt.Sprint(r.handed) != seqRange(14, 25) || r.last != 25 {
		t.Fatalf("SyncAll = %d, %v; handed %v; want 25, nil, 14..25", r.last, r.err, r.handed)
	}
	if got := drain(s.deliveries); fmt.Sprint(got) != "[26 27]" {
		t.Fatalf("Deliveries got %v, want [26 27]", got)
	}
	if s.LastSeq() != 27 || s.Stats().HeldBackDeliveries != 0 {
		t.Fatalf("LastSeq %d, held back %d; want 27, 0", s.LastSeq(), s.Stats().HeldBackDeliveries)
	}
}

// A live delivery between two pages (the stream was already live, ahead of
// where the sync started) is not handed over before the entries of the
// next page: the pages bring it.
func TestLiveDeliveryBetweenPagesWaitsForThePages(t *testing.T) {
	s := newDetachedSession(&chatv1.Welcome{}, sessionOptions{deliveryBuffer: 16})
	r := startSyncAll(t, context.Background(), s, 2, 0)
	id := nextSync(t, s, 0)
	s.dispatch(pageFrame(id, 1, 2, 2, true))
	s.dispatch(liveFrame(5))
	pump(s)
	id = nextSync(t, s, 2)
	s.dispatch(pageFrame(id, 3, 5, 5, false))
	s.dispatch(liveFrame(6))
	pump(s)
	r.wait(t)
	if r.err != nil || fmt.Sprint(r.handed) != seqRange(1, 5) {
		t.Fatalf("SyncAll = %v; handed %v; want 1..5", r.err, r.handed)
	}
	if got := drain(s.deliveries); fmt.Sprint(got) != "[6]" {
		t.Fatalf("Deliveries got %v, want [6]", got)
	}
	if n := s.Stats().HeldBackDeliveries; n != 1 {
		t.Fatalf("held back %d, want 1 (seq 5, handed over by the page)", n)
	}
}

// A stream that opened live (cursor at the head) sends what was committed
// while it opened as live deliveries, and the server leaves those out of
// a later sync page (a page never repeats what the stream sent live). The
// SDK's SyncAll, already running, must hand them over: they were lost
// when held-back deliveries were dropped in favour of the pages.
func TestLiveDeliveryBeforeAPageThatOmitsIt(t *testing.T) {
	s := newDetachedSession(&chatv1.Welcome{Cursor: 10, HeadSeq: 10}, sessionOptions{deliveryBuffer: 16})
	r := startSyncAll(t, context.Background(), s, 0, 0)
	id := nextSync(t, s, 10)
	s.dispatch(liveFrame(11)) // the stream's start-up fill, before the page
	s.dispatch(liveFrame(12))
	s.dispatch(pageFrame(id, 13, 13, 13, false)) // 11 and 12 left out: already sent
	s.dispatch(liveFrame(14))
	pump(s)
	r.wait(t)
	if r.err != nil || fmt.Sprint(r.handed) != seqRange(11, 13) {
		t.Fatalf("SyncAll = %v; handed %v; want 11..13", r.err, r.handed)
	}
	if got := drain(s.deliveries); fmt.Sprint(got) != "[14]" || s.LastSeq() != 14 {
		t.Fatalf("Deliveries got %v, LastSeq %d; want [14], 14", got, s.LastSeq())
	}
}

// More live deliveries during a SyncAll than the session holds back: the
// SyncAll ends with ErrSyncOverrun (reconnect), never with a silent gap.
func TestSyncOverrunAsksForAReconnect(t *testing.T) {
	s := newDetachedSession(&chatv1.Welcome{Cursor: 1, HeadSeq: 1}, sessionOptions{deliveryBuffer: 2})
	r := startSyncAll(t, context.Background(), s, 0, 0)
	id := nextSync(t, s, 1)
	for q := uint64(2); q < uint64(3+handQueue); q++ {
		s.dispatch(liveFrame(q))
		pump(s)
	}
	s.dispatch(pageFrame(id, 1, 0, 1, false))
	pump(s)
	r.wait(t)
	if !errors.Is(r.err, ErrSyncOverrun) {
		t.Fatalf("SyncAll = %v, want ErrSyncOverrun", r.err)
	}
	if got := drain(s.deliveries); len(got) != 0 {
		t.Fatalf("Deliveries got %v after an overrun; want nothing (a gap)", got)
	}
}

// After SyncAll failed part-way, live deliveries are held back (handing
// them over would skip the entries not handed over) until a later SyncAll
// reaches the end; a SyncAll that gave up before its reply came does not
// stall the hand-over.
func TestSyncAllErrorHoldsBackLiveDeliveries(t *testing.T) {
	s := newDetachedSession(&chatv1.Welcome{HeadSeq: 5}, sessionOptions{deliveryBuffer: 16})
	r := startSyncAll(t, context.Background(), s, 0, 3)
	id := nextSync(t, s, 0)
	s.dispatch(pageFrame(id, 1, 5, 5, false))
	s.dispatch(liveFrame(6))
	pump(s)
	r.wait(t)
	if !errors.Is(r.err, errBoom) || r.last != 2 || fmt.Sprint(r.handed) != "[1 2]" {
		t.Fatalf("SyncAll = %d, %v; handed %v; want 2, boom, [1 2]", r.last, r.err, r.handed)
	}
	if got := drain(s.deliveries); len(got) != 0 || s.LastSeq() != 2 {
		t.Fatalf("Deliveries got %v, LastSeq %d after the failed sync; want none, 2", got, s.LastSeq())
	}

	// A SyncAll whose context ends before its reply arrives.
	ctx, cancel := context.WithCancel(context.Background())
	r = startSyncAll(t, ctx, s, 0, 0)
	id = nextSync(t, s, 2)
	cancel()
	r.wait(t)
	if !errors.Is(r.err, context.Canceled) {
		t.Fatalf("canceled SyncAll = %v", r.err)
	}
	s.dispatch(pageFrame(id, 3, 6, 6, false)) // nobody takes it
	s.dispatch(liveFrame(7))
	pump(s)

	r = startSyncAll(t, context.Background(), s, 0, 0)
	id = nextSync(t, s, 2)
	s.dispatch(pageFrame(id, 3, 7, 7, false))
	s.dispatch(liveFrame(8))
	pump(s)
	r.wait(t)
	if r.err != nil || fmt.Sprint(r.handed) != seqRange(3, 7) {
		t.Fatalf("SyncAll = %v; handed %v; want 3..7", r.err, r.handed)
	}
	if got := drain(s.deliveries); fmt.Sprint(got) != "[8]" || s.LastSeq() != 8 {
		t.Fatalf("Deliveries got %v, LastSeq %d; want [8], 8", got, s.LastSeq())
	}
	if n := s.Stats().HeldBackDeliveries; n != 2 {
		t.Fatalf("held back %d, want 2 (seqs 6 and 7)", n)
	}
}

// WithResumeFrom carries the memory of handed-over messages to the next
// session, up to where the application resumes: a message placed again
// under a new seq is not handed over a second time after a reconnect.
func TestResumeFromRemembersMessages(t *testing.T) {
	prev := newDetachedSession(&chatv1.Welcome{}, sessionOptions{deliveryBuffer: 16})
	for _, d := range []*chatv1.Delivery{msgDelivery(1, 100), msgDelivery(2, 101), msgDelivery(3, 102)} {
		prev.dispatch(&chatv1.ServerFrame{Payload: &chatv1.ServerFrame_Delivery{Delivery: d}})
	}
	pump(prev)
	// The application processed seqs 1 and 2 only.
	s := newDetachedSession(&chatv1.Welcome{}, sessionOptions{deliveryBuffer: 16, resumeFrom: prev, resumeAfter: 2, resumeSet: true})
	if s.LastSeq() != 2 {
		t.Fatalf("LastSeq = %d, want 2", s.LastSeq())
	}
	for _, d := range []*chatv1.Delivery{msgDelivery(3, 102), msgDelivery(4, 100), msgDelivery(5, 103)} {
		s.dispatch(&chatv1.ServerFrame{Payload: &chatv1.ServerFrame_Delivery{Delivery: d}})
	}
	pump(s)
	if got := drain(s.deliveries); fmt.Sprint(got) != "[3 5]" {
		t.Fatalf("delivered %v, want [3 5] (message 102 again: not processed; 100 under seq 4: a repeat)", got)
	}
	if s2 := newDetachedSession(&chatv1.Welcome{}, sessionOptions{resumeFrom: prev}); s2.LastSeq() != 3 {
		t.Fatalf("LastSeq = %d, want prev's 3", s2.LastSeq())
	}
	// WithResumeAfter(0): the application processed nothing of prev's.
	s3 := newDetachedSession(&chatv1.Welcome{}, sessionOptions{resumeFrom: prev, resumeSet: true, deliveryBuffer: 4})
	s3.dispatch(&chatv1.ServerFrame{Payload: &chatv1.ServerFrame_Delivery{Delivery: msgDelivery(1, 100)}})
	pump(s3)
	if got := drain(s3.deliveries); s3.LastSeq() != 1 || len(got) != 1 {
		t.Fatalf("after WithResumeAfter(0): delivered %v, LastSeq %d; want [1], 1", got, s3.LastSeq())
	}
}

// The memory of handed-over messages holds recentCap keys, also when a key
// was forgotten and remembered again.
func TestRecentMessagesBounded(t *testing.T) {
	var r recentMessages
	m := func(id uint64) *chatv1.Message { return &chatv1.Message{ChannelId: "g:x", MessageId: id} }
	if r.seen(m(1), 1) || !r.seen(m(1), 2) {
		t.Fatal("message 1 not remembered")
	}
	r.forget(m(1))
	if r.seen(m(1), 3) {
		t.Fatal("forgotten message 1 still remembered")
	}
	for id := uint64(2); id < recentCap; id++ { // slots 2 to the last
		r.seen(m(id), id+2)
	}
	// Slot 0 held message 1 before it was forgotten: reusing it must not
	// drop message 1, remembered again in slot 1.
	r.seen(m(recentCap), recentCap+2)
	if !r.seen(m(1), 0) {
		t.Fatal("message 1 dropped with the slot it was forgotten from")
	}
	for id := uint64(recentCap + 1); id <= 3*recentCap; id++ {
		r.seen(m(id), id+2)
	}
	if len(r.set) != recentCap {
		t.Fatalf("%d keys remembered, want %d", len(r.set), recentCap)
	}
	if r.seen(m(3*recentCap), 0) != true || r.seen(m(2), 0) != false {
		t.Fatal("not the newest recentCap messages")
	}
}

// At the end of a session a delivery that no longer fits in Deliveries is
// dropped (and not counted in LastSeq); no later delivery may then be
// placed, even if the application made room meanwhile: that would leave a
// gap the application cannot see (LastSeq would pass the dropped seq).
func TestNoGapAfterADeliveryDroppedAtTheEnd(t *testing.T) {
	s := newDetachedSession(&chatv1.Welcome{}, sessionOptions{deliveryBuffer: 1})
	s.dispatch(liveFrame(1))
	s.dispatch(liveFrame(2))
	s.dispatch(liveFrame(3))
	s.cancel()           // the session ended
	s.handOver(<-s.hand) // 1 fits
	s.handOver(<-s.hand) // 2 does not: dropped
	if got := drain(s.deliveries); fmt.Sprint(got) != "[1]" {
		t.Fatalf("Deliveries got %v, want [1]", got)
	}
	s.handOver(<-s.hand) // room again, but 3 would leave a gap
	if got := drain(s.deliveries); len(got) != 0 || s.LastSeq() != 1 {
		t.Fatalf("after the drop: Deliveries got %v, LastSeq %d; want nothing, 1", got, s.LastSeq())
	}
}
