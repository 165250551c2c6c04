package chat

import (
	"fmt"
	"testing"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
)

func benchSend(b *testing.B, group bool) {
	e := newEnv(b, envConfig{frameRate: 1e9, frameBurst: 1 << 30})
	e.users("alice", "bob", "carol")
	target := "bob"
	if group {
		target = e.group("alice", "bob", "carol")
	}
	a := e.open("alice", "a1")
	e.open("bob", "b1") // a live recipient device
	b.ReportAllocs()
	b.ResetTimer()
	go func() {
		for i := 0; i < b.N; i++ {
			f := &chatv1.SendMessage{ClientMessageId: fmt.Sprint(i), Text: "hello, world"}
			if group {
				f.Target = &chatv1.SendMessage_ChannelId{ChannelId: target}
			} else {
				f.Target = &chatv1.SendMessage_ToUser{ToUser: target}
			}
			if err := a.stream.Send(&chatv1.ClientFrame{FrameId: uint64(i + 1), Payload: &chatv1.ClientFrame_Send{Send: f}}); err != nil {
				return
			}
		}
	}()
	acks := 0
	for acks < b.N {
		if a.next().GetSendAck() != nil {
			acks++
		}
	}
	b.StopTimer()
	st := e.seq.Stats()
	b.ReportMetric(float64(st.Messages)/float64(max(st.Batches, 1)), "msgs/batch")
}

// BenchmarkPipelinedDirectSend: one device pipelining sends to a user over
// real gRPC + pebble (acks counted; 2 inbox entries per message).
func BenchmarkPipelinedDirectSend(b *testing.B) { benchSend(b, false) }

// BenchmarkPipelinedGroupSend: the same into a 3-member group.
func BenchmarkPipelinedGroupSend(b *testing.B) { benchSend(b, true) }
