package chat

import (
	"math/rand/v2"
	"strings"
	"testing"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
)

func TestCheckText(t *testing.T) {
	ok := []string{"a", " a ", "line\nline", "tab\there", "crlf\r\n", "😀", "zwj 👩‍👩‍👧", "\u200bx", strings.Repeat("a", MaxTextBytes)}
	bad := []string{"", " ", "\t\n\r ", "\u200b\u200c\u200d\u2060\ufeff", "\u3000\u00a0", "a\x00", "a\x1b[31m", "a\x7f", "a\u0085", "a\u009f",
		"\xff", "a\xc0\xaf", strings.Repeat("a", MaxTextBytes+1)}
	for _, s := range ok {
		if err := checkText(s); err != nil {
			t.Errorf("checkText(%q): %v", s, err)
		}
	}
	for _, s := range bad {
		if err := checkText(s); err == nil {
			t.Errorf("checkText(%q) accepted", truncate(s, 20))
		}
	}
}

func TestCheckClientMessageID(t *testing.T) {
	for _, s := range []string{"a", "uuid-1234", "with space", "ünï", strings.Repeat("x", 64)} {
		if err := checkClientMessageID(s); err != nil {
			t.Errorf("%q: %v", s, err)
		}
	}
	for _, s := range []string{"", strings.Repeat("x", 65), "a\nb", "\xff", "a\u200bb"} {
		if err := checkClientMessageID(s); err == nil {
			t.Errorf("%q accepted", s)
		}
	}
}

func TestDirectChannelID(t *testing.T) {
	if directChannelID("bob", "alice") != "dm:alice:bob" || directChannelID("alice", "bob") != "dm:alice:bob" {
		t.Fatal("direct channel id not symmetric")
	}
}

// TestCodecNeverFails: whatever bytes arrive, a ClientFrame decodes (valid
// or marked malformed) and never panics; valid frames round-trip.
func TestCodecNeverFails(t *testing.T) {
	c := Codec()
	if c.Name() != "proto" {
		t.Fatal(c.Name())
	}
	valid := &chatv1.ClientFrame{FrameId: 42, Payload: &chatv1.ClientFrame_Send{Send: &chatv1.SendMessage{
		Target: &chatv1.SendMessage_ChannelId{ChannelId: "g:1"}, ClientMessageId: "c", Text: "héllo"}}}
	b, _ := proto.Marshal(valid)
	got := &chatv1.ClientFrame{}
	if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, got); err != nil || !proto.Equal(got, valid) {
		t.Fatalf("valid frame: %v %v", got, err)
	}
	if _, bad := malformed(got); bad {
		t.Fatal("valid frame marked malformed")
	}
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 20000 {
		var in []byte
		if i%2 == 0 { // mutate a valid frame
			in = append([]byte(nil), b...)
			in[r.IntN(len(in))] = byte(r.Uint32())
		} else {
			in = make([]byte, r.IntN(64))
			for j := range in {
				in[j] = byte(r.Uint32())
			}
		}
		f := &chatv1.ClientFrame{}
		if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(in)}, f); err != nil {
			t.Fatalf("Unmarshal(%x): %v", in, err)
		}
		if reason, bad := malformed(f); bad && (f.GetPayload() != nil || !strings.HasPrefix(reason, "malformed frame")) {
			t.Fatalf("malformed frame %x decoded as %v", in, f)
		}
	}
	// Other messages use the standard codec unchanged (errors included).
	sf := &chatv1.ServerFrame{}
	if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer([]byte{0xff})}, sf); err == nil {
		t.Fatal("ServerFrame junk accepted")
	}
	if encoding.GetCodecV2("proto") == nil {
		t.Fatal("standard codec missing")
	}
}
