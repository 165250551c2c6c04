package chat

import (
	"testing"
	"time"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/types/known/timestamppb"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
)

// BenchmarkDecodeSendFrame: the server's codec decoding one client Send
// frame (a 60-byte text), as grpc hands it over.
func BenchmarkDecodeSendFrame(b *testing.B) {
	c := Codec()
	data, err := c.Marshal(&chatv1.ClientFrame{FrameId: 42, Payload: &chatv1.ClientFrame_Send{Send: &chatv1.SendMessage{
		Target:          &chatv1.SendMessage_ToUser{ToUser: "bob"},
		ClientMessageId: "0b8e3c9a-6f1d-4a57-9a2e-9d1f7c3b2a10",
		Text:            "see you at the station at half past six, bring the tickets",
	}}})
	if err != nil {
		b.Fatal(err)
	}
	raw := data.Materialize()
	b.SetBytes(int64(len(raw)))
	b.ReportAllocs()
	for b.Loop() {
		var f chatv1.ClientFrame
		if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(raw)}, &f); err != nil {
			b.Fatal(err)
		}
		if f.GetSend() == nil {
			b.Fatal("not a send")
		}
	}
}

// BenchmarkEncodeDelivery: the server's codec encoding one Delivery frame
// (the same message as it reaches a recipient).
func BenchmarkEncodeDelivery(b *testing.B) {
	c := Codec()
	f := &chatv1.ServerFrame{Payload: &chatv1.ServerFrame_Delivery{Delivery: &chatv1.Delivery{InboxSeq: 123456, Message: &chatv1.Message{
		ChannelId:       "d.01J9ZK3V5Q8Y2N7C4B6X1W0R9T.01J9ZK3V5Q8Y2N7C4B6X1W0R9U",
		MessageId:       0x0192_5e4b_3c2a_0001,
		SenderId:        "01J9ZK3V5Q8Y2N7C4B6X1W0R9T",
		SenderDeviceId:  "01J9ZK41M2P3Q4R5S6T7V8W9X0",
		ClientMessageId: "0b8e3c9a-6f1d-4a57-9a2e-9d1f7c3b2a10",
		Text:            "see you at the station at half past six, bring the tickets",
		CreatedAt:       timestamppb.New(time.UnixMilli(1764400000000)),
		Kind:            chatv1.MessageKind_MESSAGE_KIND_TEXT,
	}}}}
	b.ReportAllocs()
	for b.Loop() {
		data, err := c.Marshal(f)
		if err != nil {
			b.Fatal(err)
		}
		b.SetBytes(int64(data.Len()))
		data.Free()
	}
}
