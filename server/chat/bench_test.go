package chat

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

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

// BenchmarkGroupFanout: the fan-out and write path of a group message,
// over real gRPC + pebble: one member sends into a group of 100, each
// member with one live device (the sender's own included) reading every
// frame. "one-at-a-time" sends the next message once the 100 deliveries
// of the last one arrived (the paced load of chatbench group, one message
// per group commit), "pipelined" sends them all at once (batches of many
// messages). An op is one message = 100 deliveries; per delivery it
// reports the process's CPU (server and clients together:
// cpu-ns/delivery), heap allocations (allocs/delivery) and write syscalls
// (writes/delivery, from /proc/self/io: how many frames go out per write;
// the clients' writes are the sends and window updates).
func BenchmarkGroupFanout(b *testing.B) {
	const members = 100
	e := newEnv(b, envConfig{frameRate: 1e9, frameBurst: 1 << 30, sendQueue: 1 << 16})
	names := make([]string, members)
	for i := range names {
		names[i] = fmt.Sprintf("m%03d", i)
	}
	e.users(names...)
	ch := e.group(names[0], names[1:]...)
	// delivered counts the deliveries; arrived is signalled when it
	// reaches want.
	var delivered, want atomic.Int64
	arrived := make(chan struct{}, 1)
	devs := make([]*dev, members)
	for i, n := range names {
		// Each device on its own connection, as devices are, with static
		// flow-control windows as the SDK's (no BDP ping per received
		// frame).
		cc, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithInitialWindowSize(4<<20), grpc.WithInitialConnWindowSize(4<<20))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { cc.Close() })
		d := e.openOn(chatv1.NewChatServiceClient(cc), n, "d", false)
		devs[i] = d
		go func() {
			for {
				f, err := d.stream.Recv()
				if err != nil {
					return
				}
				if f.GetDelivery() != nil && delivered.Add(1) == want.Load() {
					arrived <- struct{}{}
				}
			}
		}()
	}
	sender := devs[0]
	frameID := uint64(0)
	send := func() error {
		frameID++
		return sender.stream.Send(&chatv1.ClientFrame{FrameId: frameID, Payload: &chatv1.ClientFrame_Send{Send: &chatv1.SendMessage{
			Target: &chatv1.SendMessage_ChannelId{ChannelId: ch}, ClientMessageId: fmt.Sprint(frameID),
			Text: "see you at the station at half past six, bring the tickets"}}})
	}
	// waitDelivered waits until n deliveries arrived in all; expect(n)
	// must be called before the sends that make them up.
	expect := func(n int64) { want.Store(n) }
	waitDelivered := func(n int64) {
		for delivered.Load() < n {
			select {
			case <-arrived:
			case <-time.After(time.Minute):
				b.Fatalf("%d of %d deliveries", delivered.Load(), n)
			}
		}
	}
	run := func(b *testing.B, pipelined bool) {
		var ms0, ms1 runtime.MemStats
		runtime.ReadMemStats(&ms0)
		base := delivered.Load()
		w0, c0 := writeSyscalls(), processCPU()
		b.ResetTimer()
		if pipelined {
			expect(base + int64(members*b.N))
			go func() {
				for range b.N {
					if send() != nil {
						return
					}
				}
			}()
		} else {
			for i := range b.N {
				expect(base + int64(members*(i+1)))
				if err := send(); err != nil {
					b.Fatal(err)
				}
				waitDelivered(base + int64(members*(i+1)))
			}
		}
		waitDelivered(base + int64(members*b.N))
		b.StopTimer()
		cpu, writes := processCPU()-c0, writeSyscalls()-w0
		runtime.ReadMemStats(&ms1)
		n := float64(members * b.N)
		b.ReportMetric(float64(cpu.Nanoseconds())/n, "cpu-ns/delivery")
		b.ReportMetric(float64(ms1.Mallocs-ms0.Mallocs)/n, "allocs/delivery")
		b.ReportMetric(float64(writes)/n, "writes/delivery")
	}
	b.Run("one-at-a-time", func(b *testing.B) { run(b, false) })
	b.Run("pipelined", func(b *testing.B) { run(b, true) })
}

// writeSyscalls is this process's write syscalls so far (syscw of
// /proc/self/io; 0 where it cannot be read).
func writeSyscalls() int64 {
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "syscw: "); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	return 0
}
