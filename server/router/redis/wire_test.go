package redis

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/chatd/chatd/server/router"
)

func delivery(seq uint64, text string) *chatv1.ServerFrame {
	return &chatv1.ServerFrame{FrameId: seq, Payload: &chatv1.ServerFrame_Delivery{Delivery: &chatv1.Delivery{
		InboxSeq: seq, Message: &chatv1.Message{ChannelId: "dm:a:b", MessageId: seq << 16, SenderId: "a", Text: text},
	}}}
}

func encode(t testing.TB, evs []router.Event, max int) [][]byte {
	t.Helper()
	b := new(batch)
	for i := range evs {
		if err := b.add(&evs[i], max); err != nil {
			t.Fatalf("add: %v", err)
		}
	}
	b.cut()
	return b.payloads
}

func decodeAll(t testing.TB, payloads [][]byte) []router.Event {
	t.Helper()
	var out []router.Event
	for _, p := range payloads {
		var err error
		if out, err = decodeBatch(string(p), out); err != nil {
			t.Fatalf("decode: %v", err)
		}
	}
	return out
}

func TestWireRoundTrip(t *testing.T) {
	typing := &chatv1.ServerFrame{Payload: &chatv1.ServerFrame_Typing{Typing: &chatv1.TypingEvent{ChannelId: "g1", UserId: "carol"}}}
	evs := []router.Event{
		{UserID: "alice", Frame: delivery(1, "hi"), SkipDeviceID: "phone"},
		{UserID: "bob", Frame: typing},
		{UserID: "dave", Frame: typing},
		{UserID: "carol", Frame: typing, SkipDeviceID: "laptop"},
		{UserID: "alice", Frame: delivery(2, strings.Repeat("x", 300))},
		{UserID: "bob", Frame: typing}, // shared again after another frame
	}
	for _, max := range []int{MaxPayload, 64} { // 64: one event per payload
		payloads := encode(t, evs, max)
		if max == MaxPayload && len(payloads) != 1 {
			t.Fatalf("max %d: %d payloads, want 1", max, len(payloads))
		}
		for _, p := range payloads {
			if n := len(decodeAll(t, [][]byte{p})); len(p) > max && n != 1 {
				t.Fatalf("max %d: a payload of %d bytes holds %d events", max, len(p), n)
			}
		}
		if max == 64 && len(payloads) < 3 {
			t.Fatalf("max %d: %d payloads, want the batch cut", max, len(payloads))
		}
		got := decodeAll(t, payloads)
		if len(got) != len(evs) {
			t.Fatalf("max %d: decoded %d events, want %d", max, len(got), len(evs))
		}
		for i := range evs {
			if got[i].UserID != evs[i].UserID || got[i].SkipDeviceID != evs[i].SkipDeviceID || !proto.Equal(got[i].Frame, evs[i].Frame) {
				t.Fatalf("max %d: event %d = %+v, want %+v", max, i, got[i], evs[i])
			}
		}
		if max == MaxPayload && got[1].Frame != got[2].Frame {
			t.Fatalf("a frame shared by consecutive events was decoded twice")
		}
	}
}

func TestWireCutKeepsBigEventWhole(t *testing.T) {
	big := delivery(1, strings.Repeat("y", 4000))
	payloads := encode(t, []router.Event{{UserID: "a", Frame: big}, {UserID: "b", Frame: big}}, 1000)
	if len(payloads) != 2 {
		t.Fatalf("%d payloads, want 2 (each over max alone)", len(payloads))
	}
	got := decodeAll(t, payloads)
	if len(got) != 2 || !proto.Equal(got[1].Frame, big) {
		t.Fatalf("decoded %+v", got)
	}
}

func TestWireMalformed(t *testing.T) {
	good := encode(t, []router.Event{{UserID: "a", Frame: delivery(1, "hi")}, {UserID: "b", Frame: delivery(2, "yo")}}, MaxPayload)[0]
	cases := map[string][]byte{
		"empty":          nil,
		"bad version":    append([]byte{9}, good[1:]...),
		"truncated":      good[:len(good)-3],
		"entry no user":  {wireVersion, 0x0a, 0x02, 0x1a, 0x00},
		"entry no frame": {wireVersion, 0x0a, 0x03, 0x0a, 0x01, 'a'},
		"dangling ref":   {wireVersion, 0x0a, 0x05, 0x0a, 0x01, 'a', 0x20, 0x00},
		"bad frame":      {wireVersion, 0x0a, 0x06, 0x0a, 0x01, 'a', 0x1a, 0x01, 0xff},
		"length beyond":  {wireVersion, 0x0a, 0x7f, 0x0a},
	}
	for name, p := range cases {
		prefix := []router.Event{{UserID: "keep"}}
		out, err := decodeBatch(string(p), prefix)
		if err == nil {
			t.Errorf("%s: decoded %d events, want an error", name, len(out))
		}
		if len(out) != 1 || out[0].UserID != "keep" {
			t.Errorf("%s: output changed on error: %+v", name, out)
		}
	}
	// Unknown fields are skipped.
	withUnknown := append([]byte{wireVersion, 0x78, 0x05}, good[1:]...) // field 15 varint 5
	if out, err := decodeBatch(string(withUnknown), nil); err != nil || len(out) != 2 {
		t.Fatalf("unknown field: %v, %d events", err, len(out))
	}
}

func FuzzDecodeBatch(f *testing.F) {
	for _, p := range encode(f, []router.Event{
		{UserID: "a", Frame: delivery(1, "hi"), SkipDeviceID: "d"},
		{UserID: "b", Frame: delivery(1, "hi")},
		{UserID: "b", RevokeDeviceID: "phone"},
	}, MaxPayload) {
		f.Add(p)
	}
	f.Add([]byte{wireVersion, 0x0a, 0x05, 0x0a, 0x01, 'a', 0x20, 0x00})
	f.Fuzz(func(t *testing.T, p []byte) {
		out, err := decodeBatch(string(p), nil)
		if err != nil {
			return
		}
		for _, ev := range out {
			// Exactly one of a frame and a device to revoke.
			if ev.UserID == "" || (ev.Frame == nil) == (ev.RevokeDeviceID == "") {
				t.Fatalf("decoded an invalid event %+v", ev)
			}
		}
	})
}

func BenchmarkWire(b *testing.B) {
	evs := make([]router.Event, 64)
	for i := range evs {
		evs[i] = router.Event{UserID: "user" + string(rune('a'+i%26)), Frame: delivery(uint64(i), "hello there")}
	}
	bt := new(batch)
	var out []router.Event
	b.ReportAllocs()
	for b.Loop() {
		bt.reset()
		for i := range evs {
			_ = bt.add(&evs[i], MaxPayload)
		}
		bt.cut()
		out, _ = decodeBatch(string(bt.payloads[0]), out[:0])
	}
	b.ReportMetric(float64(b.N*len(evs))/b.Elapsed().Seconds(), "events/s")
}

// TestWireRevoke: a revocation (no frame) round-trips in a payload of its
// own, between the deliveries around it, in order.
func TestWireRevoke(t *testing.T) {
	evs := []router.Event{
		{UserID: "alice", Frame: delivery(1, "one")},
		{UserID: "alice", RevokeDeviceID: "phone"},
		{UserID: "bob", Frame: delivery(2, "two")},
	}
	payloads := encode(t, evs, MaxPayload)
	if len(payloads) != 3 {
		t.Fatalf("%d payloads, want the revocation alone in the second of 3", len(payloads))
	}
	if one, err := decodeBatch(string(payloads[1]), nil); err != nil || len(one) != 1 || one[0].RevokeDeviceID != "phone" || one[0].Frame != nil {
		t.Fatalf("revocation payload: %v %v", one, err)
	}
	out := decodeAll(t, payloads)
	if len(out) != 3 || out[0].Frame == nil || out[1].UserID != "alice" || out[1].RevokeDeviceID != "phone" || out[2].UserID != "bob" {
		t.Fatalf("decoded %v", out)
	}
}
