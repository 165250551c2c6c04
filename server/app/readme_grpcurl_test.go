package app_test

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
)

// TestREADMEGrpcurlChatStream (issue 11, item 9): the README's Chat
// stream by hand with grpcurl (not installed here, so not run as a
// command): the method it names exists, each frame it echoes is a valid
// ClientFrame in protojson (field names as grpcurl reads them, nothing
// unknown), and sent on a real stream in that order they are answered: a
// heartbeat reply and a SendAck of a message to bob.
func TestREADMEGrpcurlChatStream(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	block := regexp.MustCompile("(?s)```sh\n([^`]*chat\\.v1\\.ChatService/Chat[^`]*)```").FindSubmatch(readme)
	if block == nil {
		t.Fatal("README shows no grpcurl call of chat.v1.ChatService/Chat")
	}
	if !strings.Contains(string(block[1]), `-H "authorization: Bearer $TOKEN" -d @`) {
		t.Fatalf("the grpcurl call sends no token or reads no frames from stdin:\n%s", block[1])
	}
	if d := chatv1.ChatService_ServiceDesc; d.ServiceName+"/"+d.Streams[0].StreamName != "chat.v1.ChatService/Chat" {
		t.Fatalf("the stream is %s/%s, not the README's chat.v1.ChatService/Chat", d.ServiceName, d.Streams[0].StreamName)
	}
	var frames []*chatv1.ClientFrame
	for _, m := range regexp.MustCompile(`echo '([^']*)'`).FindAllSubmatch(block[1], -1) {
		f := &chatv1.ClientFrame{}
		if err := protojson.Unmarshal(m[1], f); err != nil {
			t.Fatalf("README frame %s: %v", m[1], err)
		}
		frames = append(frames, f)
	}
	if len(frames) < 2 {
		t.Fatalf("README echoes %d frames, want a heartbeat and a send", len(frames))
	}

	a := startApp(t, t.TempDir())
	cc := dial(t, a.GRPCAddr())
	carol := signUpLogIn(t, cc, "carol", "curl")
	signUpLogIn(t, cc, "bob", "phone")
	st := openStream(t, carol)
	for _, f := range frames {
		if err := st.s.Send(f); err != nil {
			t.Fatal(err)
		}
	}
	replies := map[uint64]*chatv1.ServerFrame{}
	for len(replies) < len(frames) {
		f, err := st.s.Recv()
		if err != nil {
			t.Fatalf("stream: %v (replies so far %v)", err, replies)
		}
		if f.GetFrameId() != 0 {
			replies[f.GetFrameId()] = f
		}
	}
	for _, f := range frames {
		r := replies[f.GetFrameId()]
		if r.GetError() != nil {
			t.Errorf("README frame %v answered %v", f, r.GetError())
		}
		if f.GetSend() != nil && r.GetSendAck().GetChannelId() != "dm:bob:carol" {
			t.Errorf("README send answered %v, want a SendAck in dm:bob:carol", r)
		}
	}
}
