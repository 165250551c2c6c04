package chat

import (
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
)

// countingListener counts the Write calls (write syscalls: grpc flushes
// its buffer with one Write) of every connection it accepts, per
// connection in accept order.
type countingListener struct {
	net.Listener
	mu    sync.Mutex
	conns []*atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	n := new(atomic.Int64)
	l.mu.Lock()
	l.conns = append(l.conns, n)
	l.mu.Unlock()
	return &countingConn{Conn: c, writes: n}, nil
}

func (l *countingListener) total() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	var t int64
	for _, n := range l.conns {
		t += n.Load()
	}
	return t
}

type countingConn struct {
	net.Conn
	writes *atomic.Int64
}

func (c *countingConn) Write(b []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(b)
}

// A send's echo to the sending device and its SendAck leave in one write:
// the writer holds the echo back until the SendAck is popped (stream.held).
// Written as they come they are two flushes (two write syscalls) whenever
// the sequencer goroutine is paused between routing the batch and
// answering its sends, as it is on a loaded machine; the test pauses it
// 2 ms there on every batch. Every frame still arrives, in the order echo
// then SendAck. Only the sending device is connected (on its own
// connection), so every server write counted is its.
func TestEchoAndSendAckShareOneWrite(t *testing.T) {
	lis := &countingListener{}
	// Static flow-control windows on both sides, as server/app and the SDK
	// set them: no BDP pings, so every write counted carries frames.
	e := newEnv(t, envConfig{
		listener:     func(l net.Listener) net.Listener { lis.Listener = l; return lis },
		serverOpts:   []grpc.ServerOption{grpc.InitialWindowSize(256 << 10), grpc.InitialConnWindowSize(1 << 20)},
		afterPublish: func() { time.Sleep(2 * time.Millisecond) },
	})
	e.users("alice", "bob")
	a := e.openOn(staticClient(t, e.addr), "alice", "phone", true)
	// Warm up: the direct channel exists, the stream is live.
	a.ackOf(a.sendTo("bob", "warm", "hi"))
	a.deliveries(1)
	const n = 100
	before := lis.total()
	for i := range n {
		id := a.sendTo("bob", fmt.Sprintf("m%d", i), "hello")
		// The echo comes first, then the SendAck, as before.
		f := a.next()
		if f.GetDelivery().GetMessage().GetClientMessageId() != fmt.Sprintf("m%d", i) {
			t.Fatalf("send %d: first frame %v, want the echo", i, f)
		}
		if g := a.next(); g.GetFrameId() != id || g.GetSendAck() == nil {
			t.Fatalf("send %d: second frame %v, want the SendAck", i, g)
		}
	}
	writes := lis.total() - before
	t.Logf("%d sends: %d server writes (%.2f per send)", n, writes, float64(writes)/n)
	// One write per send; a few more when the transport's writer ran
	// between the two frames (a loaded machine). Without the hold: ~2.
	if writes > n*3/2 {
		t.Fatalf("%d server writes for %d sends: echo and SendAck were not written together", writes, n)
	}
}

// An Ack with no_reply moves the cursor like any ack but is answered only
// when it fails: no AckResult (one frame, one write less per background
// ack), and still a FrameError for an ack beyond the head.
func TestAckNoReply(t *testing.T) {
	e := newEnv(t, envConfig{})
	e.users("alice", "bob")
	a := e.open("alice", "phone")
	b := e.open("bob", "phone")
	for i := range 3 {
		a.ackOf(a.sendTo("bob", fmt.Sprintf("m%d", i), "hi"))
	}
	ds := b.deliveries(3)
	id := b.frameID()
	b.sendFrame(&chatv1.ClientFrame{FrameId: id, Payload: &chatv1.ClientFrame_Ack{Ack: &chatv1.Ack{InboxSeq: ds[1].GetInboxSeq(), NoReply: true}}})
	// A heartbeat after it: its reply comes after anything the ack caused.
	hb := b.heartbeat()
	for {
		f := b.next()
		if f.GetFrameId() == hb {
			break
		}
		if f.GetFrameId() == id {
			t.Fatalf("no_reply ack answered: %v", f)
		}
	}
	// The cursor moved: a reconnect's Welcome carries it.
	b.close()
	b2 := e.open("bob", "phone")
	if got := b2.welcome.GetCursor(); got != ds[1].GetInboxSeq() {
		t.Fatalf("cursor after a no_reply ack = %d, want %d", got, ds[1].GetInboxSeq())
	}
	// A failing one is still answered.
	id = b2.frameID()
	b2.sendFrame(&chatv1.ClientFrame{FrameId: id, Payload: &chatv1.ClientFrame_Ack{Ack: &chatv1.Ack{InboxSeq: 1 << 40, NoReply: true}}})
	b2.errOf(id, codes.FailedPrecondition)
}

// BenchmarkOneInFlightDirectSend: the pairs shape's send path for one
// device: send, wait for the SendAck, send the next, with a live
// recipient device; over real gRPC (static windows, as server/app and the
// SDK set them) and pebble. Reports the server's write syscalls per send
// (the sender's echo + SendAck, the recipient's delivery: 2 when the echo
// and the SendAck share a flush) and the process's CPU per send (server
// and client together).
func BenchmarkOneInFlightDirectSend(b *testing.B) {
	lis := &countingListener{}
	e := newEnv(b, envConfig{
		frameRate: 1e9, frameBurst: 1 << 30,
		listener:   func(l net.Listener) net.Listener { lis.Listener = l; return lis },
		serverOpts: []grpc.ServerOption{grpc.InitialWindowSize(256 << 10), grpc.InitialConnWindowSize(1 << 20)},
	})
	e.users("alice", "bob")
	// One connection per device, as on the pairs shape.
	a := e.openOn(staticClient(b, e.addr), "alice", "a1", true)
	bob := e.openOn(staticClient(b, e.addr), "bob", "b1", true)
	a.ackOf(a.sendTo("bob", "warm", "hi"))
	bob.deliveries(1)
	b.ReportAllocs()
	w0, c0 := lis.total(), processCPU()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		a.ackOf(a.sendTo("bob", fmt.Sprint(i), "hello, world"))
	}
	bob.deliveries(b.N)
	b.StopTimer()
	b.ReportMetric(float64(lis.total()-w0)/float64(b.N), "server-writes/op")
	b.ReportMetric(float64((processCPU()-c0).Nanoseconds())/float64(b.N), "cpu-ns/op")
}

// staticClient is a client on a connection of its own with the static
// 4 MiB windows the SDK sets (no BDP pings).
func staticClient(t testing.TB, addr string) chatv1.ChatServiceClient {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(4<<20), grpc.WithInitialConnWindowSize(4<<20))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return chatv1.NewChatServiceClient(cc)
}

// The same client_message_id sent twice in a row (a resend before the
// first reply): the echo still comes before the first SendAck (found by
// the tryout: the held echo waited for both replies, so the first SendAck
// overtook its echo).
func TestEchoBeforeSendAckWhenKeyInFlightTwice(t *testing.T) {
	e := newEnv(t, envConfig{afterPublish: func() { time.Sleep(2 * time.Millisecond) }})
	e.users("alice", "bob")
	a := e.open("alice", "phone")
	a.ackOf(a.sendTo("bob", "warm", "hi"))
	a.deliveries(1)
	for i := range 20 {
		cmid := fmt.Sprintf("dup-%d", i)
		id1 := a.sendTo("bob", cmid, "hello")
		id2 := a.sendTo("bob", cmid, "hello")
		var order []string
		for len(order) < 3 {
			f := a.next()
			switch {
			case f.GetDelivery() != nil:
				order = append(order, "echo")
			case f.GetFrameId() == id1:
				order = append(order, "ack1")
			case f.GetFrameId() == id2:
				if !f.GetSendAck().GetDuplicate() {
					t.Fatalf("second send of %s: %v, want a duplicate SendAck", cmid, f)
				}
				order = append(order, "ack2")
			}
		}
		// The duplicate may be answered from the store as soon as the
		// first is durable, even before the first's echo is routed; but
		// the first's SendAck never overtakes its echo.
		if slices.Index(order, "echo") > slices.Index(order, "ack1") {
			t.Fatalf("%s sent twice: frames %v: the SendAck came before its echo", cmid, order)
		}
	}
}
