package chat

import (
	"context"
	"fmt"
	"sync"
	"syscall"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/chatd/chatd/server/sequence"
	"github.com/chatd/chatd/server/store"
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

// BenchmarkAck: the ack path of one device (Ack frame -> head check,
// cursor advance, delivery markers, AckResult) over real gRPC + pebble,
// one ack per delivered message, as a device acking once a second does
// at about one message a second. The messages are committed (and
// delivered live) in rounds of 500 outside the timer.
func BenchmarkAck(b *testing.B) {
	e := newEnv(b, envConfig{frameRate: 1e9, frameBurst: 1 << 30})
	e.users("alice", "bob")
	bob := e.open("bob", "b1")
	ch := directChannelID("alice", "bob")
	if _, err := e.seq.Do(b.Context(), &sequence.Request{ChannelID: ch, SenderID: "alice", SenderDeviceID: "a1",
		ClientMessageID: "first", Text: "hi", Kind: store.KindText, Recipients: []string{"alice", "bob"}}); err != nil {
		b.Fatal(err)
	}
	seq := uint64(0)
	next := func() {
		for bob.next().GetDelivery() == nil {
		}
	}
	next()
	seq++
	const round = 500
	var cpu time.Duration
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; {
		b.StopTimer()
		n := min(round, b.N-i)
		var wg sync.WaitGroup
		wg.Add(n)
		for k := range n {
			e.seq.Submit(&sequence.Request{ChannelID: ch, SenderID: "alice", SenderDeviceID: "a1",
				ClientMessageID: fmt.Sprint(i + k), Text: "hello, world", Kind: store.KindText, Recipients: []string{"alice", "bob"}},
				func(sequence.Result) { wg.Done() })
		}
		wg.Wait()
		for range n {
			next()
		}
		b.StartTimer()
		c0 := processCPU()
		for range n {
			seq++
			id := bob.ack(seq)
			for {
				f := bob.next()
				if f.GetFrameId() == id {
					if f.GetAckResult().GetCursor() != seq {
						b.Fatalf("ack %d: %v", seq, f)
					}
					break
				}
			}
		}
		cpu += processCPU() - c0
		i += n
	}
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
}

// processCPU is the CPU time (user + system) of this process so far: the
// server and the client of a benchmark together.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
