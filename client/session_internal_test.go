package client

import (
	"context"
	"errors"
	"regexp"
	"testing"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// These tests drive the session's demultiplexer directly with server frames:
// no stream, no server. End-to-end behaviour is tested against a real
// server in client_test.go.

func deliveryFrame(seq uint64) *chatv1.ServerFrame {
	return &chatv1.ServerFrame{Payload: &chatv1.ServerFrame_Delivery{Delivery: &chatv1.Delivery{
		InboxSeq: seq,
		Message:  &chatv1.Message{ChannelId: "dm:a:b", Text: "m"},
	}}}
}

// pump hands over what the reader queued (a detached session has no
// hand-over goroutine).
func pump(s *Session) {
	for {
		select {
		case it := <-s.hand:
			s.handOver(it)
		default:
			return
		}
	}
}

func drain(ch <-chan *chatv1.Delivery) []uint64 {
	var got []uint64
	for {
		select {
		case d := <-ch:
			got = append(got, d.GetInboxSeq())
		default:
			return got
		}
	}
}

func TestDispatchDeduplicatesDeliveries(t *testing.T) {
	s := newDetachedSession(&chatv1.Welcome{Cursor: 5, HeadSeq: 5}, sessionOptions{deliveryBuffer: 16})
	for _, seq := range []uint64{3, 5, 6, 6, 7, 4, 8} {
		s.dispatch(deliveryFrame(seq))
	}
	pump(s)
	got := drain(s.deliveries)
	want := []uint64{6, 7, 8}
	if len(got) != len(want) {
		t.Fatalf("delivered %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("delivered %v, want %v", got, want)
		}
	}
	if n := s.Stats().DuplicateDeliveries; n != 4 {
		t.Errorf("DuplicateDeliveries = %d, want 4", n)
	}
	if s.LastSeq() != 8 {
		t.Errorf("LastSeq = %d, want 8", s.LastSeq())
	}
}

// In a cluster a message can sit in the inbox under two seqs (a stale
// commit re-placed it, docs/sequencing.md): it is delivered once.
func TestDispatchDeduplicatesMessageUnderTwoSeqs(t *testing.T) {
	s := newDetachedSession(&chatv1.Welcome{}, sessionOptions{deliveryBuffer: 16})
	msg := func(seq, id uint64) *chatv1.ServerFrame {
		return &chatv1.ServerFrame{Payload: &chatv1.ServerFrame_Delivery{Delivery: &chatv1.Delivery{
			InboxSeq: seq, Message: &chatv1.Message{ChannelId: "dm:a:b", MessageId: id, Text: "m"},
		}}}
	}
	for _, f := range []*chatv1.ServerFrame{msg(1, 100), msg(2, 101), msg(5, 100), msg(6, 102)} {
		s.dispatch(f)
	}
	pump(s)
	got := drain(s.deliveries)
	if len(got) != 3 || got[0] != 1 || got[1] != 2 || got[2] != 6 {
		t.Fatalf("delivered seqs %v, want [1 2 6] (message 100 once)", got)
	}
	if s.LastSeq() != 6 || s.Stats().DuplicateDeliveries != 1 {
		t.Fatalf("LastSeq %d, duplicates %d", s.LastSeq(), s.Stats().DuplicateDeliveries)
	}
}

func TestResumeAfterRaisesDedupWatermark(t *testing.T) {
	s := newDetachedSession(&chatv1.Welcome{Cursor: 2, HeadSeq: 9}, sessionOptions{deliveryBuffer: 16, resumeAfter: 7})
	if s.LastSeq() != 7 {
		t.Fatalf("LastSeq = %d, want 7", s.LastSeq())
	}
	for seq := uint64(3); seq <= 9; seq++ {
		s.dispatch(deliveryFrame(seq))
	}
	pump(s)
	if got := drain(s.deliveries); len(got) != 2 || got[0] != 8 || got[1] != 9 {
		t.Fatalf("delivered %v, want [8 9]", got)
	}
}

func TestDispatchRoutesRepliesByFrameID(t *testing.T) {
	s := newDetachedSession(&chatv1.Welcome{}, sessionOptions{maxInFlight: 8})
	ctx := context.Background()
	ack1, err := s.enqueue(ctx, &chatv1.ClientFrame{Payload: &chatv1.ClientFrame_Ack{Ack: &chatv1.Ack{InboxSeq: 1}}}, true)
	if err != nil {
		t.Fatal(err)
	}
	send, err := s.SendAsync(ctx, SendParams{ToUser: "bob", Text: "hi"})
	if err != nil {
		t.Fatal(err)
	}
	bad, err := s.SendAsync(ctx, SendParams{ChannelID: "g:x", Text: "hi", ClientMessageID: "k1"})
	if err != nil {
		t.Fatal(err)
	}
	// The writer is not running: the frames wait in the queue, in order,
	// with distinct frame ids.
	var ids []uint64
	for range 3 {
		of := <-s.out
		ids = append(ids, of.frame.GetFrameId())
	}
	if ids[0] == 0 || ids[0] == ids[1] || ids[1] == ids[2] {
		t.Fatalf("frame ids %v are not distinct and non-zero", ids)
	}
	if len(send.ClientMessageID()) != 32 || bad.ClientMessageID() != "k1" {
		t.Fatalf("client message ids %q, %q", send.ClientMessageID(), bad.ClientMessageID())
	}

	// Replies arrive out of order; an unknown frame id is ignored.
	s.dispatch(&chatv1.ServerFrame{FrameId: 999, Payload: &chatv1.ServerFrame_SendAck{SendAck: &chatv1.SendAck{}}})
	s.dispatch(&chatv1.ServerFrame{FrameId: ids[2], Payload: &chatv1.ServerFrame_Error{Error: &chatv1.FrameError{
		Code: int32(codes.NotFound), Message: "no such channel",
	}}})
	s.dispatch(&chatv1.ServerFrame{FrameId: ids[1], Payload: &chatv1.ServerFrame_SendAck{SendAck: &chatv1.SendAck{
		ChannelId: "dm:alice:bob", MessageId: 42, ClientMessageId: send.ClientMessageID(),
	}}})
	s.dispatch(&chatv1.ServerFrame{FrameId: ids[0], Payload: &chatv1.ServerFrame_AckResult{AckResult: &chatv1.AckResult{Cursor: 1}}})

	got, err := send.Wait(ctx)
	if err != nil || got.GetMessageId() != 42 || got.GetChannelId() != "dm:alice:bob" {
		t.Fatalf("send.Wait = %v, %v", got, err)
	}
	if _, err := bad.Wait(ctx); status.Code(err) != codes.NotFound || status.Convert(err).Message() != "no such channel" {
		t.Fatalf("bad.Wait error = %v, want NotFound: no such channel", err)
	}
	f, err := ack1.wait(ctx)
	if err != nil || f.GetAckResult().GetCursor() != 1 {
		t.Fatalf("ack reply = %v, %v", f, err)
	}
	if s.Cursor() != 1 {
		t.Errorf("Cursor = %d, want 1", s.Cursor())
	}
	if n := len(s.calls); n != 0 {
		t.Errorf("%d calls still registered", n)
	}
	if n := len(s.inflight); n != 0 {
		t.Errorf("%d in-flight slots still taken", n)
	}
}

func TestReplyOfWrongTypeIsInternal(t *testing.T) {
	s := newDetachedSession(&chatv1.Welcome{}, sessionOptions{maxInFlight: 1})
	ctx := context.Background()
	p, err := s.SendAsync(ctx, SendParams{ToUser: "bob", Text: "hi"})
	if err != nil {
		t.Fatal(err)
	}
	of := <-s.out
	s.dispatch(&chatv1.ServerFrame{FrameId: of.frame.GetFrameId(), Payload: &chatv1.ServerFrame_AckResult{AckResult: &chatv1.AckResult{}}})
	if _, err := p.Wait(ctx); status.Code(err) != codes.Internal {
		t.Fatalf("Wait error = %v, want Internal", err)
	}
}

func TestMaxInFlightBlocksUntilReply(t *testing.T) {
	s := newDetachedSession(&chatv1.Welcome{}, sessionOptions{maxInFlight: 1})
	p, err := s.SendAsync(context.Background(), SendParams{ToUser: "bob", Text: "1"})
	if err != nil {
		t.Fatal(err)
	}
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.SendAsync(canceled, SendParams{ToUser: "bob", Text: "2"}); !errors.Is(err, context.Canceled) {
		t.Fatalf("second SendAsync error = %v, want context.Canceled", err)
	}
	of := <-s.out
	s.dispatch(&chatv1.ServerFrame{FrameId: of.frame.GetFrameId(), Payload: &chatv1.ServerFrame_SendAck{SendAck: &chatv1.SendAck{}}})
	<-p.Done()
	if _, err := s.SendAsync(context.Background(), SendParams{ToUser: "bob", Text: "3"}); err != nil {
		t.Fatalf("SendAsync after the reply: %v", err)
	}
}

func TestSendParamsValidation(t *testing.T) {
	s := newDetachedSession(&chatv1.Welcome{}, sessionOptions{maxInFlight: 1})
	for _, p := range []SendParams{{Text: "x"}, {ToUser: "a", ChannelID: "g:b", Text: "x"}} {
		if _, err := s.SendAsync(context.Background(), p); status.Code(err) != codes.InvalidArgument {
			t.Errorf("SendAsync(%+v) error = %v, want InvalidArgument", p, err)
		}
	}
	if len(s.out) != 0 {
		t.Fatal("an invalid send was queued")
	}
}

func TestEndFailsWaitersAndClosesChannels(t *testing.T) {
	s := newDetachedSession(&chatv1.Welcome{}, sessionOptions{maxInFlight: 4, deliveryBuffer: 4})
	ctx := context.Background()
	p, err := s.SendAsync(ctx, SendParams{ToUser: "bob", Text: "hi"})
	if err != nil {
		t.Fatal(err)
	}
	s.dispatch(deliveryFrame(1))
	endErr := status.Error(codes.ResourceExhausted, "slow consumer")
	s.end(endErr)
	s.wg.Add(1)
	s.handLoop() // hands over what came before the end, then closes Deliveries

	if _, err := p.Wait(ctx); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("pending send error = %v, want ResourceExhausted", err)
	}
	if status.Code(s.Err()) != codes.ResourceExhausted {
		t.Fatalf("Err = %v", s.Err())
	}
	// Buffered deliveries are still readable, then the channel is closed.
	if d, ok := <-s.Deliveries(); !ok || d.GetInboxSeq() != 1 {
		t.Fatalf("first delivery = %v, %v", d, ok)
	}
	if _, ok := <-s.Deliveries(); ok {
		t.Fatal("Deliveries not closed")
	}
	if _, ok := <-s.TypingEvents(); ok {
		t.Fatal("TypingEvents not closed")
	}
	if _, err := s.Sync(ctx, 0, 10); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("Sync after end = %v", err)
	}
	if err := s.Typing(ctx, "dm:a:b"); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("Typing after end = %v", err)
	}
}

func TestFullDeliveryChannelBlocksUntilCanceled(t *testing.T) {
	s := newDetachedSession(&chatv1.Welcome{}, sessionOptions{deliveryBuffer: 1})
	s.handOver(handItem{d: deliveryFrame(1).GetDelivery()})
	done := make(chan struct{})
	go func() {
		s.handOver(handItem{d: deliveryFrame(2).GetDelivery()}) // blocks: the channel holds seq 1
		close(done)
	}()
	s.cancel()
	<-done
	// seq 2 was not handed over, so it is not counted as seen.
	if s.LastSeq() != 1 {
		t.Fatalf("LastSeq = %d, want 1", s.LastSeq())
	}
}

func TestTypingEventsDropWhenFull(t *testing.T) {
	s := newDetachedSession(&chatv1.Welcome{}, sessionOptions{typingBuffer: 2})
	for range 5 {
		s.dispatch(&chatv1.ServerFrame{Payload: &chatv1.ServerFrame_Typing{Typing: &chatv1.TypingEvent{ChannelId: "g:x", UserId: "bob"}}})
	}
	if len(s.typing) != 2 || s.Stats().DroppedTypingEvents != 3 {
		t.Fatalf("buffered %d, dropped %d; want 2 and 3", len(s.typing), s.Stats().DroppedTypingEvents)
	}
}

func TestAckAsyncCoalesces(t *testing.T) {
	s := newDetachedSession(&chatv1.Welcome{Cursor: 3}, sessionOptions{})
	s.AckAsync(2) // below the cursor: nothing to do
	if len(s.ackKick) != 0 {
		t.Fatal("AckAsync below the cursor kicked the acker")
	}
	s.AckAsync(5)
	s.AckAsync(9)
	s.AckAsync(7)
	if s.ackWant.Load() != 9 || len(s.ackKick) != 1 {
		t.Fatalf("ackWant = %d, kicks = %d; want 9 and 1", s.ackWant.Load(), len(s.ackKick))
	}
}

func TestDirectChannelID(t *testing.T) {
	if got := DirectChannelID("bob", "alice"); got != "dm:alice:bob" {
		t.Errorf("DirectChannelID(bob, alice) = %q", got)
	}
	if got := DirectChannelID("alice", "bob"); got != "dm:alice:bob" {
		t.Errorf("DirectChannelID(alice, bob) = %q", got)
	}
}

func TestNewClientMessageID(t *testing.T) {
	re := regexp.MustCompile(`^[0-9a-f]{32}$`)
	a, b := NewClientMessageID(), NewClientMessageID()
	if !re.MatchString(a) || !re.MatchString(b) || a == b {
		t.Fatalf("ids %q, %q", a, b)
	}
}
