package chat

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
)

func testMessage(text string) *chatv1.Message {
	return &chatv1.Message{
		ChannelId:       "g.01J9ZK3V5Q8Y2N7C4B6X1W0R9T",
		MessageId:       0x0192_5e4b_3c2a_0001,
		SenderId:        "01J9ZK3V5Q8Y2N7C4B6X1W0R9T",
		SenderDeviceId:  "01J9ZK41M2P3Q4R5S6T7V8W9X0",
		ClientMessageId: "0b8e3c9a-6f1d-4a57-9a2e-9d1f7c3b2a10",
		Text:            text,
		CreatedAt:       timestamppb.New(time.UnixMilli(1764400000000)),
		Kind:            chatv1.MessageKind_MESSAGE_KIND_TEXT,
	}
}

func deliveryOf(frameID, seq uint64, m *chatv1.Message) *chatv1.ServerFrame {
	return &chatv1.ServerFrame{FrameId: frameID, Payload: &chatv1.ServerFrame_Delivery{Delivery: &chatv1.Delivery{InboxSeq: seq, Message: m}}}
}

func marshalBytes(t testing.TB, c encoding.CodecV2, v any) []byte {
	t.Helper()
	data, err := c.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return data.Materialize()
}

// TestDeliveryEncodingMatchesProto: the Delivery frames the codec builds
// around a shared Message encoding are byte for byte proto.Marshal's, the
// first time (encoded) and the second (cached), and decode to the frame;
// other frames go through the standard codec.
func TestDeliveryEncodingMatchesProto(t *testing.T) {
	long := testMessage(strings.Repeat("é", 5000)) // lengths of 2- and 3-byte varints
	withUnknown := deliveryOf(0, 9, testMessage("x"))
	withUnknown.ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 99, protowire.VarintType), 1))
	msgUnknown := testMessage("y")
	msgUnknown.ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 98, protowire.VarintType), 7))
	frames := map[string]*chatv1.ServerFrame{
		"live":               deliveryOf(0, 42, testMessage("hello")),
		"seq zero":           deliveryOf(0, 0, testMessage("hello")),
		"frame id":           deliveryOf(1<<40, 1<<33, testMessage("hello")),
		"long text":          deliveryOf(0, 300, long),
		"empty message":      deliveryOf(0, 5, &chatv1.Message{}),
		"no message":         deliveryOf(0, 5, nil),
		"no delivery":        {Payload: &chatv1.ServerFrame_Delivery{}},
		"frame unknown":      withUnknown,
		"message unknown":    deliveryOf(0, 6, msgUnknown),
		"send ack":           {FrameId: 3, Payload: &chatv1.ServerFrame_SendAck{SendAck: &chatv1.SendAck{ChannelId: "c", MessageId: 1}}},
		"edit, ref and user": deliveryOf(0, 77, &chatv1.Message{ChannelId: "c", Kind: chatv1.MessageKind_MESSAGE_KIND_EDIT, RefMessageId: 12, ForUser: "bob", Text: "fixed"}),
	}
	c := Codec()
	for name, f := range frames {
		t.Run(name, func(t *testing.T) {
			want, err := proto.Marshal(f)
			if err != nil {
				t.Fatal(err)
			}
			for round := range 2 {
				got := marshalBytes(t, c, f)
				if !bytes.Equal(got, want) {
					t.Fatalf("round %d: encoding differs from proto.Marshal:\n got %x\nwant %x", round, got, want)
				}
				var back chatv1.ServerFrame
				if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(got)}, &back); err != nil {
					t.Fatal(err)
				}
				if !proto.Equal(&back, f) {
					t.Fatalf("round %d: decoded %v, want %v", round, &back, f)
				}
			}
		})
	}
}

// TestDeliveryFanoutSharesEncoding: 100 Delivery frames of one Message
// (a group fan-out) each decode to their own inbox_seq and the message,
// and the message was encoded once: every frame carries the cached
// encoding.
func TestDeliveryFanoutSharesEncoding(t *testing.T) {
	c := Codec().(codec)
	m := testMessage("to the group")
	var first []byte
	for seq := uint64(1); seq <= 100; seq++ {
		got := marshalBytes(t, c, deliveryOf(0, seq, m))
		var back chatv1.ServerFrame
		if err := proto.Unmarshal(got, &back); err != nil {
			t.Fatal(err)
		}
		if back.GetDelivery().GetInboxSeq() != seq || !proto.Equal(back.GetDelivery().GetMessage(), m) {
			t.Fatalf("frame %d decoded as %v", seq, &back)
		}
		enc, _ := c.msgs.encoding(m)
		if first == nil {
			first = enc
		} else if &enc[0] != &first[0] {
			t.Fatalf("frame %d: the message was encoded again", seq)
		}
	}
}

// BenchmarkEncodeFanout: encoding the 100 Delivery frames of one group
// message (one Message, 100 inbox seqs), per delivery: "proto" encodes
// every frame whole (the standard codec), "shared" is the server's codec,
// which encodes the Message once and builds each frame around it. An op
// is one message (its 100 frames); ns/delivery and the allocations per op
// (divide by 100) are the figures.
func BenchmarkEncodeFanout(b *testing.B) {
	for _, bc := range []struct {
		name string
		c    encoding.CodecV2
	}{{"proto", encoding.GetCodecV2("proto")}, {"shared", Codec()}} {
		b.Run(bc.name, func(b *testing.B) {
			frames := make([]*chatv1.ServerFrame, 100)
			for i := range frames {
				frames[i] = deliveryOf(0, uint64(1000+i), nil)
			}
			b.ReportAllocs()
			n := 0
			for b.Loop() {
				// A new message each time, as each group message is.
				m := testMessage("see you at the station at half past six, bring the tickets")
				for _, f := range frames {
					f.GetDelivery().Message = m
				}
				for _, f := range frames {
					data, err := bc.c.Marshal(f)
					if err != nil {
						b.Fatal(err)
					}
					data.Free()
				}
				n += len(frames)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n), "ns/delivery")
		})
	}
}
