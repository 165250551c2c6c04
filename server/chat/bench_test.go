package chat

import (
	"context"
	"fmt"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
)

func benchSend(b *testing.B, group bool) {
	benchSendWith(b, group, nil)
}

func benchSendWith(b *testing.B, group bool, tracer trace.Tracer) {
	e := newEnv(b, envConfig{frameRate: 1e9, frameBurst: 1 << 30, tracer: tracer})
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

// BenchmarkPipelinedDirectSendTracing: BenchmarkPipelinedDirectSend with
// tracing on (every send sampled, spans to an exporter that drops them):
// what tracing costs when on. Off is BenchmarkPipelinedDirectSend itself
// (a nil tracer: no span work at all); docs/operations.md has the figures.
func BenchmarkPipelinedDirectSendTracing(b *testing.B) {
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(tracetest.NewNoopExporter()))
	b.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	benchSendWith(b, false, tp.Tracer("bench"))
}
