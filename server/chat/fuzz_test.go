package chat

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/chatd/chatd/server/store"
)

// Fuzz targets of the Chat stream's input: whole frames through the real
// codec, handler and pebble store, and the validators. `go test` runs the
// seeds below and testdata/fuzz/<Target>/ as regression tests; see
// docs/testing.md for running them as fuzzers.

// Channels the fuzzed device (alice) is a member of, or not.
const (
	fuzzOwnGroup      = "g:00000000000000000000000000000001" // alice (owner), bob
	fuzzStrangerGroup = "g:00000000000000000000000000000002" // bob (owner), carol
	fuzzDirect        = "dm:alice:bob"
)

// fuzzHeartbeatID is the frame id of the heartbeat that follows each fuzzed
// frame: its HeartbeatAck shows the stream survived the frame.
const fuzzHeartbeatID = 1<<63 + 0x5eed

// fuzzRaw sends and receives encoded bytes (the client side of a stream
// that carries frames built by hand).
type fuzzRaw struct{}

func (fuzzRaw) Name() string { return "proto" }

func (fuzzRaw) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(v.([]byte))}, nil
}

func (fuzzRaw) Unmarshal(data mem.BufferSlice, v any) error {
	*(v.(*[]byte)) = data.Materialize()
	return nil
}

func frameBytes(f *chatv1.ClientFrame) []byte {
	b, err := proto.Marshal(f)
	if err != nil {
		panic(err)
	}
	return b
}

func sendFrame(id uint64, m *chatv1.SendMessage) []byte {
	return frameBytes(&chatv1.ClientFrame{FrameId: id, Payload: &chatv1.ClientFrame_Send{Send: m}})
}

func toUser(u, cmid, text string) *chatv1.SendMessage {
	return &chatv1.SendMessage{Target: &chatv1.SendMessage_ToUser{ToUser: u}, ClientMessageId: cmid, Text: text}
}

func inChannel(ch, cmid, text string) *chatv1.SendMessage {
	return &chatv1.SendMessage{Target: &chatv1.SendMessage_ChannelId{ChannelId: ch}, ClientMessageId: cmid, Text: text}
}

// chatFrameSeeds are encoded ClientFrames: every payload, and the frames of
// ../shared/cases/input.md (C101-C106) that a single frame can carry.
func chatFrameSeeds() [][]byte {
	emoji := strings.Repeat("\U0001F600", MaxTextBytes/4)
	var markerFrame []byte // a client-sent "malformed" marker (stripped)
	markerFrame = protowire.AppendTag(markerFrame, 1, protowire.VarintType)
	markerFrame = protowire.AppendVarint(markerFrame, 5)
	markerFrame = protowire.AppendTag(markerFrame, malformedField, protowire.BytesType)
	markerFrame = protowire.AppendString(markerFrame, "malformed frame: forged")
	return [][]byte{
		// Every payload, valid.
		sendFrame(1, toUser("bob", "c-1", "hello bob")),
		sendFrame(2, inChannel(fuzzOwnGroup, "c-2", "hello group")),
		sendFrame(3, inChannel(fuzzDirect, "c-3", "hello again")),
		frameBytes(&chatv1.ClientFrame{FrameId: 4, Payload: &chatv1.ClientFrame_Ack{Ack: &chatv1.Ack{InboxSeq: 1}}}),
		frameBytes(&chatv1.ClientFrame{FrameId: 5, Payload: &chatv1.ClientFrame_Sync{Sync: &chatv1.SyncRequest{AfterSeq: 0, Limit: 2}}}),
		frameBytes(&chatv1.ClientFrame{FrameId: 6, Payload: &chatv1.ClientFrame_Typing{Typing: &chatv1.Typing{ChannelId: fuzzOwnGroup}}}),
		frameBytes(&chatv1.ClientFrame{FrameId: 7, Payload: &chatv1.ClientFrame_Heartbeat{Heartbeat: &chatv1.Heartbeat{}}}),
		frameBytes(&chatv1.ClientFrame{FrameId: 8, Payload: &chatv1.ClientFrame_MarkRead{MarkRead: &chatv1.MarkRead{ChannelId: fuzzDirect}}}),
		frameBytes(&chatv1.ClientFrame{FrameId: 9, Payload: &chatv1.ClientFrame_Edit{Edit: &chatv1.EditMessage{ChannelId: fuzzDirect, MessageId: 1, ClientMessageId: "e-1", Text: "edited"}}}),
		frameBytes(&chatv1.ClientFrame{FrameId: 10, Payload: &chatv1.ClientFrame_Delete{Delete: &chatv1.DeleteMessage{ChannelId: fuzzDirect, MessageId: 1, ClientMessageId: "d-1", ForMe: true}}}),
		// C101: exactly the limit in 4-byte emoji; one byte over.
		sendFrame(11, toUser("bob", "c101-ok", emoji)),
		sendFrame(12, toUser("bob", "c101-over", emoji+"x")),
		// C102: invalid UTF-8 (a lone continuation byte, an overlong
		// encoding) built by hand; only white space and zero-width
		// characters.
		rawSend(13, "bob", "c102-utf8", []byte("hi \x80 \xc0\xaf")),
		rawSend(14, "bob\xff", "c102-user", []byte("hi")),
		sendFrame(15, toUser("bob", "c102-blank", " \t\n\u200b\u200c\u200d\u2060\ufeff\u3000 ")),
		// C103: no payload; a channel that does not exist; an ack far in
		// the future; negative and absurd sync page sizes.
		frameBytes(&chatv1.ClientFrame{FrameId: 16}),
		sendFrame(17, inChannel("g:ffffffffffffffffffffffffffffffff", "c103-nf", "anyone?")),
		frameBytes(&chatv1.ClientFrame{FrameId: 18, Payload: &chatv1.ClientFrame_Ack{Ack: &chatv1.Ack{InboxSeq: 1 << 62}}}),
		frameBytes(&chatv1.ClientFrame{FrameId: 19, Payload: &chatv1.ClientFrame_Sync{Sync: &chatv1.SyncRequest{Limit: -1}}}),
		frameBytes(&chatv1.ClientFrame{FrameId: 20, Payload: &chatv1.ClientFrame_Sync{Sync: &chatv1.SyncRequest{AfterSeq: 1<<64 - 1, Limit: 1<<31 - 1}}}),
		// C105: usernames differing by case and normalisation (the caller
		// itself, and bob), and one of 1,000 characters.
		sendFrame(21, toUser("ALICE", "c105-self", "me?")),
		sendFrame(22, toUser("Bob", "c105-case", "case")),
		sendFrame(23, toUser("zoe\u0308", "c105-nfd", "nfd")),
		sendFrame(24, toUser(strings.Repeat("b", 1000), "c105-long", "long")),
		// C106: a group the caller is not a member of.
		sendFrame(25, inChannel(fuzzStrangerGroup, "c106-send", "let me in")),
		frameBytes(&chatv1.ClientFrame{FrameId: 26, Payload: &chatv1.ClientFrame_Typing{Typing: &chatv1.Typing{ChannelId: fuzzStrangerGroup}}}),
		frameBytes(&chatv1.ClientFrame{FrameId: 27, Payload: &chatv1.ClientFrame_MarkRead{MarkRead: &chatv1.MarkRead{ChannelId: fuzzStrangerGroup}}}),
		frameBytes(&chatv1.ClientFrame{FrameId: 28, Payload: &chatv1.ClientFrame_Delete{Delete: &chatv1.DeleteMessage{ChannelId: fuzzStrangerGroup, MessageId: 1, ClientMessageId: "c106-del"}}}),
		// Wire-level oddities: a forged malformed marker, truncated and
		// empty frames, a bad client_message_id.
		markerFrame,
		sendFrame(29, toUser("bob", "c-1", "hello bob"))[:9],
		{},
		sendFrame(30, toUser("bob", strings.Repeat("x", 65), "cmid too long")),
	}
}

// FuzzChatFrame sends one encoded ClientFrame on a fresh Chat stream of a
// server with the real codec, auth interceptor, handler, sequencer and
// pebble store, followed by a heartbeat. Whatever the bytes: the server
// does not panic, answers the heartbeat (the stream survives), answers
// errors with precise codes (never Internal or Unknown), and the stream
// ends OK when the client half-closes.
func FuzzChatFrame(f *testing.F) {
	for _, s := range chatFrameSeeds() {
		f.Add(s)
	}
	e := newEnv(f, envConfig{frameRate: 1e9, frameBurst: 1 << 30})
	e.users("alice", "bob", "carol", "zoë")
	bg := context.Background()
	now := time.Now().UTC()
	for _, g := range []struct {
		id             string
		owner, another string
	}{{fuzzOwnGroup, "alice", "bob"}, {fuzzStrangerGroup, "bob", "carol"}} {
		err := e.st.CreateChannel(bg, &store.Channel{ID: g.id, Type: store.ChannelGroup, Name: "fuzz", CreatedAt: now, CreatedBy: g.owner},
			[]store.Member{
				{ChannelID: g.id, UserID: g.owner, Role: store.RoleOwner, JoinedAt: now},
				{ChannelID: g.id, UserID: g.another, Role: store.RoleMember, JoinedAt: now},
			})
		if err != nil {
			f.Fatal(err)
		}
	}
	// A few messages, so that acks, syncs, edits and deletes have
	// something to act on.
	a := e.open("alice", "seed")
	a.ackOf(a.sendTo("bob", "seed-1", "hello bob"))
	a.ackOf(a.sendIn(fuzzOwnGroup, "seed-2", "hello group"))
	a.close()
	b := e.open("bob", "seed")
	b.ackOf(b.sendIn(fuzzStrangerGroup, "seed-3", "members only"))
	b.close()
	ctx := e.ctx("alice", "fuzz")
	heartbeat := frameBytes(&chatv1.ClientFrame{FrameId: fuzzHeartbeatID, Payload: &chatv1.ClientFrame_Heartbeat{Heartbeat: &chatv1.Heartbeat{}}})

	f.Fuzz(func(t *testing.T, frame []byte) {
		ctx, cancel := context.WithTimeout(ctx, wait)
		defer cancel()
		cs, err := e.cc.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true},
			chatv1.ChatService_Chat_FullMethodName, grpc.ForceCodecV2(fuzzRaw{}))
		if err != nil {
			t.Fatal(err)
		}
		recv := func() (*chatv1.ServerFrame, error) {
			var b []byte
			if err := cs.RecvMsg(&b); err != nil {
				return nil, err
			}
			sf := &chatv1.ServerFrame{}
			if err := proto.Unmarshal(b, sf); err != nil {
				t.Fatalf("server sent a frame that does not parse: %v", err)
			}
			return sf, nil
		}
		check := func(sf *chatv1.ServerFrame) {
			fe := sf.GetError()
			if fe == nil {
				return
			}
			switch c := codes.Code(fe.GetCode()); c {
			case codes.InvalidArgument, codes.NotFound, codes.PermissionDenied, codes.FailedPrecondition, codes.AlreadyExists:
			default:
				t.Fatalf("frame %x: FrameError %v %q, want a precise code", frame, c, fe.GetMessage())
			}
			if fe.GetMessage() == "" {
				t.Fatalf("frame %x: FrameError %v without a message", frame, codes.Code(fe.GetCode()))
			}
		}
		if w, err := recv(); err != nil || w.GetWelcome() == nil {
			t.Fatalf("first frame: %v %v", w, err)
		}
		if err := cs.SendMsg(frame); err != nil {
			t.Fatalf("send: %v", err)
		}
		if err := cs.SendMsg(heartbeat); err != nil {
			t.Fatalf("send heartbeat: %v", err)
		}
		for {
			sf, err := recv()
			if err != nil {
				t.Fatalf("frame %x ended the stream: %v", frame, err)
			}
			check(sf)
			if sf.GetFrameId() == fuzzHeartbeatID && sf.GetHeartbeatAck() != nil {
				break
			}
		}
		// Half-close: every send in flight is answered, then the stream
		// ends OK.
		if err := cs.CloseSend(); err != nil {
			t.Fatal(err)
		}
		for {
			sf, err := recv()
			if errors.Is(err, io.EOF) {
				return
			}
			if err != nil {
				t.Fatalf("frame %x: stream ended with %v, want OK after half-close", frame, status.Convert(err))
			}
			check(sf)
		}
	})
}

// FuzzCheckText checks the text validator against its specification:
// accepted texts are valid UTF-8, at most MaxTextBytes, without control
// characters other than \t \n \r, and with a visible character (one
// that no invisible Unicode property covers); every
// other text is refused with InvalidArgument.
func FuzzCheckText(f *testing.F) {
	emoji := strings.Repeat("\U0001F600", MaxTextBytes/4)
	for _, s := range []string{
		"hello", "a", " a ", "line\nline\r\n", "tab\there", "zwj 👩‍👩‍👧",
		emoji, emoji + "x", // C101
		"hi \x80 \xc0\xaf", "\xff", "\xed\xa0\x80", // C102: invalid UTF-8 (overlong, surrogate)
		" \t\n\u200b\u200c\u200d\u2060\ufeff\u3000 ", "\u00a0", "", // C102: nothing visible
		"a\x00", "a\x1b[31m", "a\x7f", "a\u0085", "a\u009f", "\u2028", "\u202e", "x\ufffd",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		err := checkText(s)
		want := textSpec(s)
		if (err == nil) != (want == nil) {
			t.Fatalf("checkText(%q) = %v, specification says %v", truncate(s, 40), err, want)
		}
		if err != nil && status.Code(err) != codes.InvalidArgument {
			t.Fatalf("checkText(%q) = %v, want InvalidArgument", truncate(s, 40), err)
		}
	})
}

// textSpec is the text rule written plainly (slow and obvious).
func textSpec(s string) error {
	if len(s) > MaxTextBytes {
		return errors.New("too long")
	}
	if !utf8.ValidString(s) {
		return errors.New("not UTF-8")
	}
	visible := false
	for _, r := range s {
		if r != '\t' && r != '\n' && r != '\r' && (r < 0x20 || (r >= 0x7f && r <= 0x9f)) {
			return errors.New("control character")
		}
		// Invisible by Unicode property (issue 11 item 6): white space,
		// controls, format characters, other default-ignorables,
		// variation selectors, noncharacters.
		if !unicode.In(r, unicode.White_Space, unicode.Cc, unicode.Cf, unicode.Other_Default_Ignorable_Code_Point,
			unicode.Variation_Selector, unicode.Noncharacter_Code_Point) &&
			unicode.In(r, unicode.L, unicode.N, unicode.P, unicode.S, unicode.Co) && r != '\u2800' {
			visible = true // a base character that shows on its own
		}
	}
	if !visible {
		return errors.New("nothing visible")
	}
	return nil
}

// FuzzIdentifiers checks the other validators of client input: a
// client_message_id, a channel_id, a group name and a username as the
// chat service sees it. Accepted values are valid UTF-8 within their byte
// bounds; refusals are InvalidArgument; a username is accepted exactly
// when store.CanonicalUsername accepts it, with the same id.
func FuzzIdentifiers(f *testing.F) {
	for _, s := range []string{
		"c-1", "uuid-1234", "with space", "ünï", strings.Repeat("x", 64), strings.Repeat("x", 65), "a\nb", "a\u200bb",
		fuzzOwnGroup, fuzzDirect, "dm:zoë:alice", "g:", "g: x", "",
		"Alice", "ALICE", "zoe\u0308", "zo\u00eb", "ａｌｉｃｅ", strings.Repeat("a", 1000), "a:b", "\xff\xfeabc", // C105
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for name, c := range map[string]struct {
			check    func(string) error
			maxBytes int
		}{
			"client_message_id": {checkClientMessageID, MaxClientMessageIDBytes},
			"channel_id":        {checkChannelID, maxChannelIDBytes},
			"group name":        {checkGroupName, 4 * MaxGroupNameChars},
		} {
			err := c.check(s)
			if err != nil && status.Code(err) != codes.InvalidArgument {
				t.Fatalf("%s %q: %v, want InvalidArgument", name, s, err)
			}
			if err == nil && (s == "" || len(s) > c.maxBytes || !utf8.ValidString(s)) {
				t.Fatalf("%s %q accepted", name, s)
			}
		}
		if err := checkGroupName(s); err == nil && utf8.RuneCountInString(s) > MaxGroupNameChars {
			t.Fatalf("group name of %d characters accepted", utf8.RuneCountInString(s))
		}
		id, err := canonicalUsername(s)
		want, werr := store.CanonicalUsername(s)
		if (err == nil) != (werr == nil) || id != want {
			t.Fatalf("canonicalUsername(%q) = %q, %v; store says %q, %v", s, id, err, want, werr)
		}
		if err != nil && status.Code(err) != codes.InvalidArgument {
			t.Fatalf("canonicalUsername(%q): %v, want InvalidArgument", s, err)
		}
		if err == nil {
			// An id is a valid client-facing name and fits a direct
			// channel id.
			if checkChannelID(directChannelID(id, id)) != nil {
				t.Fatalf("direct channel id of %q is invalid", id)
			}
		}
	})
}
