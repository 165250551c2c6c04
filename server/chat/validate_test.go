package chat

import (
	"math/rand/v2"
	"strings"
	"testing"
	"unicode"

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

// TestCheckTextInvisible: a text made only of characters that render as
// nothing is refused, whichever such character it is. It walks every range
// of the Unicode properties that define "renders as nothing"
// (White_Space, the format characters Cf, Default_Ignorable_Code_Point's
// other members, the variation selectors, the noncharacters) rather than a
// list of examples: one character alone, a run of them, and each beside a
// visible letter (then accepted, unless it is a control character).
func TestCheckTextInvisible(t *testing.T) {
	tables := map[string]*unicode.RangeTable{
		"White_Space":                        unicode.White_Space,
		"Cf":                                 unicode.Cf,
		"Other_Default_Ignorable_Code_Point": unicode.Other_Default_Ignorable_Code_Point,
		"Variation_Selector":                 unicode.Variation_Selector,
		"Noncharacter_Code_Point":            unicode.Noncharacter_Code_Point,
	}
	for name, tab := range tables {
		n := 0
		var all strings.Builder
		forEachRune(tab, func(r rune) {
			n++
			s := string(r)
			all.WriteString(s)
			if err := checkText(s); err == nil {
				t.Errorf("%s: a text of only U+%04X accepted", name, r)
			}
			if err := checkText(s + s + " " + s); err == nil {
				t.Errorf("%s: a text of only U+%04X and spaces accepted", name, r)
			}
			if isControl(r) {
				return // refused as a control character whatever surrounds it
			}
			if err := checkText("a" + s); err != nil {
				t.Errorf("%s: \"a\" + U+%04X refused: %v", name, r, err)
			}
		})
		if n == 0 {
			t.Fatalf("%s: empty table", name)
		}
		if err := checkText(all.String()); err == nil {
			t.Errorf("%s: a text of all %d characters accepted", name, n)
		}
	}
	// The two characters of the report, and their neighbours.
	for _, s := range []string{"\u200e", "\u200f", "\u200d", "\u200e\u200f\u200e", "\u2066\u2069", "\ufe0f", "\U000E0020", "\u3164", "\u115f\u1160", "\u180e", "\u034f", "\u00ad",
		"\u0301", "\u0301\u0308", "\u2800", "\u0378"} { // lone marks, the braille blank, unassigned (a tryout)
		if err := checkText(s); err != errTextEmpty {
			t.Errorf("checkText(%+q) = %v, want %v", s, err, errTextEmpty)
		}
	}
	// Group names follow the same rule.
	for _, s := range []string{"\u2800", "\u0301\u0301", "\u200d"} {
		if checkGroupName(s) == nil {
			t.Errorf("checkGroupName(%+q) accepted", s)
		}
	}
	// Visible text keeps its marks and joiners.
	for _, s := range []string{"\u200eshalom\u200f", "👍🏽", "❤\ufe0f", "क्\u200dष", "🏳\ufe0f\u200d🌈", "e\u0301"} {
		if err := checkText(s); err != nil {
			t.Errorf("checkText(%+q): %v", s, err)
		}
	}
}

// forEachRune calls f for every code point of tab except surrogates
// (which valid UTF-8 cannot carry).
func forEachRune(tab *unicode.RangeTable, f func(rune)) {
	for _, r16 := range tab.R16 {
		for r := rune(r16.Lo); r <= rune(r16.Hi); r += rune(r16.Stride) {
			if r < 0xD800 || r > 0xDFFF {
				f(r)
			}
		}
	}
	for _, r32 := range tab.R32 {
		for r := rune(r32.Lo); r <= rune(r32.Hi); r += rune(r32.Stride) {
			f(r)
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
