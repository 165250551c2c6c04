package main

import (
	"context"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
)

// startRelay serves the relay (with a commit log in a temporary file when
// durable) and AccountService on a loopback listener and returns a client
// connection to it.
func startRelay(t *testing.T, durable bool) (*grpc.ClientConn, *prometheus.Registry) {
	t.Helper()
	var cl *commitLog
	reg := prometheus.NewRegistry()
	m := newRelayMetrics(reg)
	if durable {
		var err error
		cl, err = openCommitLog(filepath.Join(t.TempDir(), "log"), 1<<20, defaultCommitLinger, m)
		if err != nil {
			t.Fatal(err)
		}
	}
	gs := grpc.NewServer()
	chatv1.RegisterChatServiceServer(gs, newRelay(30*time.Second, cl))
	chatv1.RegisterAccountServiceServer(gs, accountSrv{})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc, reg
}

type testStream struct {
	t      *testing.T
	s      grpc.BidiStreamingClient[chatv1.ClientFrame, chatv1.ServerFrame]
	device string
}

// open logs username in and opens its Chat stream with the token, as
// chatd's clients send it; it checks the Welcome.
func open(t *testing.T, ctx context.Context, cc *grpc.ClientConn, username string) *testStream {
	t.Helper()
	li, err := chatv1.NewAccountServiceClient(cc).LogIn(ctx, &chatv1.LogInRequest{Username: username, Password: "x", DeviceName: "d1"})
	if err != nil {
		t.Fatal(err)
	}
	s, err := chatv1.NewChatServiceClient(cc).Chat(metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+li.GetAccessToken()))
	if err != nil {
		t.Fatal(err)
	}
	ts := &testStream{t: t, s: s, device: li.GetDeviceId()}
	w := ts.recv().GetWelcome()
	if w.GetUserId() != username || w.GetDeviceId() != li.GetDeviceId() {
		t.Fatalf("%s: Welcome %v", username, w)
	}
	return ts
}

func (ts *testStream) send(f *chatv1.ClientFrame) {
	ts.t.Helper()
	if err := ts.s.Send(f); err != nil {
		ts.t.Fatal(err)
	}
}

func (ts *testStream) recv() *chatv1.ServerFrame {
	ts.t.Helper()
	f, err := ts.s.Recv()
	if err != nil {
		ts.t.Fatal(err)
	}
	return f
}

// heartbeat sends a Heartbeat and returns every frame received before its
// HeartbeatAck: a barrier, since the relay queues a stream's frames in
// order.
func (ts *testStream) heartbeat(id uint64) []*chatv1.ServerFrame {
	ts.t.Helper()
	ts.send(&chatv1.ClientFrame{FrameId: id, Payload: &chatv1.ClientFrame_Heartbeat{Heartbeat: &chatv1.Heartbeat{}}})
	var before []*chatv1.ServerFrame
	for {
		f := ts.recv()
		if f.GetHeartbeatAck() != nil && f.GetFrameId() == id {
			return before
		}
		before = append(before, f)
	}
}

func TestRelayPair(t *testing.T) {
	for _, durable := range []bool{false, true} {
		name := "memory"
		if durable {
			name = "fsync"
		}
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			cc, reg := startRelay(t, durable)
			alice, bob := open(t, ctx, cc, "alice"), open(t, ctx, cc, "bob")

			const n = 3
			for i := uint64(1); i <= n; i++ {
				cmid := "c" + string(rune('0'+i))
				alice.send(&chatv1.ClientFrame{FrameId: 100 + i, Payload: &chatv1.ClientFrame_Send{Send: &chatv1.SendMessage{
					Target: &chatv1.SendMessage_ToUser{ToUser: "bob"}, ClientMessageId: cmid, Text: "hi"}}})
				// The sender: its echo (seq i of its own inbox), then the SendAck.
				echo := alice.recv().GetDelivery()
				if echo.GetInboxSeq() != i || echo.GetMessage().GetClientMessageId() != cmid || echo.GetMessage().GetSenderDeviceId() != alice.device {
					t.Fatalf("send %d: echo %v", i, echo)
				}
				f := alice.recv()
				ack := f.GetSendAck()
				if f.GetFrameId() != 100+i || ack.GetClientMessageId() != cmid || ack.GetMessageId() != i || ack.GetChannelId() != "dm:alice:bob" || ack.GetCreatedAt() == nil {
					t.Fatalf("send %d: SendAck frame %v", i, f)
				}
			}
			// The recipient: each message exactly once, in seq order.
			got := bob.heartbeat(1)
			if len(got) != n {
				t.Fatalf("bob got %d frames before the HeartbeatAck, want %d: %v", len(got), n, got)
			}
			for i, f := range got {
				d := f.GetDelivery()
				msg := d.GetMessage()
				if d.GetInboxSeq() != uint64(i+1) || msg.GetMessageId() != uint64(i+1) || msg.GetSenderId() != "alice" ||
					msg.GetSenderDeviceId() != alice.device || msg.GetText() != "hi" || msg.GetCreatedAt() == nil {
					t.Fatalf("bob's frame %d: %v", i, f)
				}
			}
			// A background ack: no AckResult, a delivered receipt to the author.
			bob.send(&chatv1.ClientFrame{FrameId: 2, Payload: &chatv1.ClientFrame_Ack{Ack: &chatv1.Ack{InboxSeq: n, NoReply: true}}})
			if got := bob.heartbeat(3); len(got) != 0 {
				t.Fatalf("a no_reply ack was answered: %v", got)
			}
			r := alice.recv().GetReceipt()
			if r.GetUserId() != "bob" || r.GetDeliveredUpTo() != n || r.GetChannelId() != "dm:alice:bob" {
				t.Fatalf("receipt %v", r)
			}
			// An ack asking for a reply, and one beyond the head.
			bob.send(&chatv1.ClientFrame{FrameId: 4, Payload: &chatv1.ClientFrame_Ack{Ack: &chatv1.Ack{InboxSeq: n}}})
			bob.send(&chatv1.ClientFrame{FrameId: 5, Payload: &chatv1.ClientFrame_Ack{Ack: &chatv1.Ack{InboxSeq: n + 1}}})
			got = bob.heartbeat(6)
			want := []*chatv1.ServerFrame{
				{FrameId: 4, Payload: &chatv1.ServerFrame_AckResult{AckResult: &chatv1.AckResult{Cursor: n}}},
				frameError(5, errBeyondHead),
			}
			if len(got) != len(want) || !proto.Equal(got[0], want[0]) || !proto.Equal(got[1], want[1]) {
				t.Fatalf("acks answered %v, want %v", got, want)
			}
			// The sender acks its echoes: no receipt to itself.
			alice.send(&chatv1.ClientFrame{FrameId: 7, Payload: &chatv1.ClientFrame_Ack{Ack: &chatv1.Ack{InboxSeq: n, NoReply: true}}})
			if got := alice.heartbeat(8); len(got) != 0 {
				t.Fatalf("alice's ack of her echoes: %v", got)
			}
			if durable {
				if b, msgs := counter(t, reg, "chatd_sequencer_batches_total"), counter(t, reg, "chatd_sequencer_messages_total"); b < 1 || b > n || msgs != n {
					t.Fatalf("commits: %v batches, %v messages; want 1..%d, %d", b, msgs, n, n)
				}
			}
		})
	}
}

// counter returns the value of the counter name in reg.
func counter(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

func TestRelayNeedsToken(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cc, _ := startRelay(t, false)
	s, err := chatv1.NewChatServiceClient(cc).Chat(ctx)
	if err == nil {
		_, err = s.Recv()
	}
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("a stream without a token: %v, want Unauthenticated", err)
	}
}
