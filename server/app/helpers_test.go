package app_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/chatd/chatd/server/app"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
)

// startApp starts an in-process server on loopback ports with data in dir.
func startApp(t *testing.T, dir string) *app.App {
	t.Helper()
	a, err := app.New(app.Config{
		GRPCAddr: "127.0.0.1:0",
		HTTPAddr: "127.0.0.1:0",
		DataDir:  dir,
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatalf("app.New: %v", err)
	}
	a.Start()
	t.Cleanup(func() { _ = a.Close() })
	return a
}

func dial(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

// user is one logged-in device.
type user struct {
	name, token, device string
	cc                  *grpc.ClientConn
}

func (u *user) ctx(parent context.Context) context.Context {
	return metadata.AppendToOutgoingContext(parent, "authorization", "Bearer "+u.token)
}

func signUpLogIn(t *testing.T, cc *grpc.ClientConn, name, device string) *user {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	acc := chatv1.NewAccountServiceClient(cc)
	if _, err := acc.SignUp(ctx, &chatv1.SignUpRequest{Username: name, Password: "password-" + name, DisplayName: name}); err != nil {
		t.Fatalf("SignUp %s: %v", name, err)
	}
	return logIn(t, cc, name, device)
}

func logIn(t *testing.T, cc *grpc.ClientConn, name, device string) *user {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := chatv1.NewAccountServiceClient(cc).LogIn(ctx, &chatv1.LogInRequest{Username: name, Password: "password-" + name, DeviceName: device})
	if err != nil {
		t.Fatalf("LogIn %s: %v", name, err)
	}
	return &user{name: name, token: resp.GetAccessToken(), device: resp.GetDeviceId(), cc: cc}
}

// stream is an open Chat stream with its Welcome.
type stream struct {
	t       *testing.T
	s       chatv1.ChatService_ChatClient
	welcome *chatv1.Welcome
	cancel  context.CancelFunc
	nextID  atomic.Uint64
}

func openStream(t *testing.T, u *user) *stream {
	t.Helper()
	ctx, cancel := context.WithCancel(u.ctx(context.Background()))
	s, err := chatv1.NewChatServiceClient(u.cc).Chat(ctx)
	if err != nil {
		cancel()
		t.Fatalf("Chat: %v", err)
	}
	f, err := s.Recv()
	if err != nil {
		cancel()
		t.Fatalf("welcome: %v", err)
	}
	if f.GetWelcome() == nil {
		cancel()
		t.Fatalf("first frame is not a Welcome: %v", f)
	}
	st := &stream{t: t, s: s, welcome: f.GetWelcome(), cancel: cancel}
	t.Cleanup(cancel)
	return st
}

// send sends a message and waits for its SendAck, skipping other frames.
func (st *stream) send(to, cmid, text string) *chatv1.SendAck {
	st.t.Helper()
	id := st.nextID.Add(1)
	if err := st.s.Send(&chatv1.ClientFrame{FrameId: id, Payload: &chatv1.ClientFrame_Send{Send: &chatv1.SendMessage{
		Target: &chatv1.SendMessage_ToUser{ToUser: to}, ClientMessageId: cmid, Text: text}}}); err != nil {
		st.t.Fatalf("send: %v", err)
	}
	for {
		f, err := st.s.Recv()
		if err != nil {
			st.t.Fatalf("recv ack: %v", err)
		}
		if f.GetFrameId() != id {
			continue
		}
		if e := f.GetError(); e != nil {
			st.t.Fatalf("send error: %d %s", e.GetCode(), e.GetMessage())
		}
		return f.GetSendAck()
	}
}

// syncAll pages through the inbox after `after` and returns the deliveries.
func (st *stream) syncAll(after uint64, limit int32) []*chatv1.Delivery {
	st.t.Helper()
	var out []*chatv1.Delivery
	for {
		id := st.nextID.Add(1)
		if err := st.s.Send(&chatv1.ClientFrame{FrameId: id, Payload: &chatv1.ClientFrame_Sync{Sync: &chatv1.SyncRequest{AfterSeq: after, Limit: limit}}}); err != nil {
			st.t.Fatalf("sync: %v", err)
		}
		var page *chatv1.SyncPage
		for page == nil {
			f, err := st.s.Recv()
			if err != nil {
				st.t.Fatalf("recv sync page: %v", err)
			}
			if f.GetFrameId() == id {
				if e := f.GetError(); e != nil {
					st.t.Fatalf("sync error: %d %s", e.GetCode(), e.GetMessage())
				}
				page = f.GetSyncPage()
			}
		}
		out = append(out, page.GetDeliveries()...)
		after = page.GetNextAfterSeq()
		if !page.GetMore() {
			return out
		}
	}
}

func (st *stream) ack(seq uint64) uint64 {
	st.t.Helper()
	id := st.nextID.Add(1)
	if err := st.s.Send(&chatv1.ClientFrame{FrameId: id, Payload: &chatv1.ClientFrame_Ack{Ack: &chatv1.Ack{InboxSeq: seq}}}); err != nil {
		st.t.Fatalf("ack: %v", err)
	}
	for {
		f, err := st.s.Recv()
		if err != nil {
			st.t.Fatalf("recv ack result: %v", err)
		}
		if f.GetFrameId() == id {
			if e := f.GetError(); e != nil {
				st.t.Fatalf("ack error: %d %s", e.GetCode(), e.GetMessage())
			}
			return f.GetAckResult().GetCursor()
		}
	}
}

func texts(ds []*chatv1.Delivery) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.GetMessage().GetText()
	}
	return out
}

func seqsContiguous(ds []*chatv1.Delivery, after uint64) error {
	for i, d := range ds {
		if d.GetInboxSeq() != after+uint64(i)+1 {
			return fmt.Errorf("delivery %d has seq %d, want %d", i, d.GetInboxSeq(), after+uint64(i)+1)
		}
	}
	return nil
}

// withConn returns the same device on another connection (e.g. after a
// server restart).
func (u *user) withConn(cc *grpc.ClientConn) *user {
	c := *u
	c.cc = cc
	return &c
}

// flood sends n messages of ~60 KB to user to (client_message_ids
// cmidPrefix0, cmidPrefix1, ...; text i+1 followed by 60 KiB of 'x'), in
// windows of 4, waiting for each window's SendAcks (the sender's own
// stream's queue may be small too: it carries a SendAck and the sender's
// own copy of each message). A FrameError or a stream error fails the
// test.
func (st *stream) flood(to, cmidPrefix string, n int) {
	t := st.t
	t.Helper()
	text := strings.Repeat("x", 60<<10)
	for i := 0; i < n; i += 4 {
		for j := i; j < i+4; j++ {
			if err := st.s.Send(&chatv1.ClientFrame{FrameId: uint64(j + 1), Payload: &chatv1.ClientFrame_Send{Send: &chatv1.SendMessage{
				Target: &chatv1.SendMessage_ToUser{ToUser: to}, ClientMessageId: fmt.Sprint(cmidPrefix, j), Text: fmt.Sprint(j+1, text)}}}); err != nil {
				t.Fatal(err)
			}
		}
		for acks := 0; acks < 4; {
			f, err := st.s.Recv()
			if err != nil {
				t.Fatalf("sender after %d sends: %v", i, err)
			}
			if e := f.GetError(); e != nil {
				t.Fatalf("frame %d: %s", f.GetFrameId(), e.GetMessage())
			}
			if f.GetSendAck() != nil {
				acks++
			}
		}
	}
}
