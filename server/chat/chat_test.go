package chat

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
)

// TestDirectMessage: a 1:1 send reaches the recipient's two devices and the
// sender's other device exactly once; the sender gets its SendAck and its
// own Delivery.
func TestDirectMessage(t *testing.T) {
	e := newEnv(t, envConfig{})
	e.users("alice", "bob")
	a1, a2 := e.open("alice", "a1"), e.open("alice", "a2")
	b1, b2 := e.open("bob", "b1"), e.open("bob", "b2")
	if w := a1.welcome; w.GetUserId() != "alice" || w.GetDeviceId() != "a1" || w.GetCursor() != 0 || w.GetHeadSeq() != 0 ||
		w.GetHeartbeatIntervalMs() != 25000 || w.GetServerId() != "test-1" {
		t.Fatalf("welcome %v", w)
	}

	id := a1.sendTo("Bob", "m1", "hello bob") // to_user is canonicalised
	ack := a1.ackOf(id)
	if ack.GetChannelId() != "dm:alice:bob" || ack.GetClientMessageId() != "m1" || ack.GetDuplicate() || ack.GetMessageId() == 0 || ack.GetCreatedAt() == nil {
		t.Fatalf("ack %v", ack)
	}
	for _, d := range []*dev{a1, a2, b1, b2} {
		dl := d.deliveries(1)[0]
		m := dl.GetMessage()
		if dl.GetInboxSeq() != 1 || m.GetMessageId() != ack.GetMessageId() || m.GetText() != "hello bob" ||
			m.GetSenderId() != "alice" || m.GetSenderDeviceId() != "a1" || m.GetChannelId() != "dm:alice:bob" ||
			m.GetKind() != chatv1.MessageKind_MESSAGE_KIND_TEXT || m.GetClientMessageId() != "m1" {
			t.Fatalf("%s/%s got %v", d.user, d.device, dl)
		}
	}
	// Bob answers in the channel; inbox seqs continue per user.
	id = b2.sendIn("dm:alice:bob", "r1", "hi alice")
	b2.ackOf(id)
	for _, d := range []*dev{a1, a2, b1, b2} {
		if dl := d.deliveries(1)[0]; dl.GetInboxSeq() != 2 || dl.GetMessage().GetText() != "hi alice" {
			t.Fatalf("%s/%s got %v", d.user, d.device, dl)
		}
	}
	for _, d := range []*dev{a1, a2, b1, b2} {
		d.quiet()
	}
	// A device that connects now starts at the head with its cursor 0.
	b3 := e.open("bob", "b3")
	if b3.welcome.GetHeadSeq() != 2 || b3.welcome.GetCursor() != 0 {
		t.Fatalf("welcome %v", b3.welcome)
	}
}

func TestGroupOfFive(t *testing.T) {
	e := newEnv(t, envConfig{})
	names := []string{"ann", "ben", "cid", "dan", "eve"}
	e.users(names...)
	g := e.group("ann", "ben", "cid", "dan", "eve")
	devs := e.openAll(names, "d1")
	for i, d := range devs {
		d.ackOf(d.sendIn(g, "x", fmt.Sprintf("from %s", names[i])))
	}
	for _, d := range devs {
		ds := d.deliveries(5)
		seen := map[string]bool{}
		for i, dl := range ds {
			if dl.GetInboxSeq() != uint64(i+1) {
				t.Fatalf("%s: seq %d at %d", d.user, dl.GetInboxSeq(), i)
			}
			seen[dl.GetMessage().GetText()] = true
		}
		if len(seen) != 5 {
			t.Fatalf("%s saw %v", d.user, seen)
		}
		d.quiet()
	}
}

// TestOfflineSync: a device that was offline is not sent live deliveries
// until its sync reaches the head; then it is live; acks move its cursor.
func TestOfflineSync(t *testing.T) {
	e := newEnv(t, envConfig{})
	e.users("alice", "carol")
	a := e.open("alice", "a1")
	for i := range 10 {
		a.ackOf(a.sendTo("carol", fmt.Sprint("m", i), fmt.Sprint("msg ", i)))
	}
	c := e.open("carol", "c1")
	if c.welcome.GetCursor() != 0 || c.welcome.GetHeadSeq() != 10 {
		t.Fatalf("welcome %v", c.welcome)
	}
	// Sent while carol is behind: not pushed live, found by sync.
	a.ackOf(a.sendTo("carol", "m10", "msg 10"))
	c.quiet()
	all, pages := c.syncAll(c.welcome.GetCursor(), 4)
	if len(all) != 11 || len(pages) != 3 || pages[2].GetMore() {
		t.Fatalf("sync: %d deliveries in %d pages", len(all), len(pages))
	}
	for i, dl := range all {
		if dl.GetInboxSeq() != uint64(i+1) || dl.GetMessage().GetText() != fmt.Sprint("msg ", i) {
			t.Fatalf("sync[%d] = %v", i, dl)
		}
	}
	// Now live.
	a.ackOf(a.sendTo("carol", "m11", "msg 11"))
	if dl := c.deliveries(1)[0]; dl.GetInboxSeq() != 12 {
		t.Fatalf("live after sync: %v", dl)
	}
	c.quiet()
	if r := c.reply(c.ack(12)).GetAckResult(); r.GetCursor() != 12 {
		t.Fatalf("ack result %v", r)
	}
	c.close()
	c2 := e.open("carol", "c1")
	if c2.welcome.GetCursor() != 12 || c2.welcome.GetHeadSeq() != 12 {
		t.Fatalf("welcome after reconnect %v", c2.welcome)
	}
	// Cursors never move backwards.
	if r := c2.reply(c2.ack(3)).GetAckResult(); r.GetCursor() != 12 {
		t.Fatalf("ack 3 after 12: %v", r)
	}
}

// TestExactlyOnceUnderConcurrency: several senders pipeline into one group
// while every recipient device asserts contiguous inbox seqs without
// duplicates, each sender's messages in its send order.
func TestExactlyOnceUnderConcurrency(t *testing.T) {
	e := newEnv(t, envConfig{})
	names := []string{"snd0", "snd1", "snd2", "snd3", "rcv0", "rcv1"}
	e.users(names...)
	g := e.group("snd0", names[1:]...)
	recv := e.openAll(names, "main")
	recv = append(recv, e.open("rcv1", "second"))
	const per = 100
	senders := make([]*dev, 4)
	for i := range senders {
		senders[i] = e.open(names[i], "sender")
	}
	var wg sync.WaitGroup
	for i, s := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range per {
				if err := s.stream.Send(&chatv1.ClientFrame{FrameId: uint64(j + 1), Payload: &chatv1.ClientFrame_Send{Send: &chatv1.SendMessage{
					Target: &chatv1.SendMessage_ChannelId{ChannelId: g}, ClientMessageId: fmt.Sprint(j), Text: fmt.Sprintf("%d/%d", i, j)}}}); err != nil {
					t.Errorf("send: %v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	total := len(senders) * per
	for _, d := range recv {
		ds := d.deliveries(total)
		next := make([]int, len(senders))
		var lastID uint64
		for k, dl := range ds {
			if dl.GetInboxSeq() != uint64(k+1) {
				t.Fatalf("%s/%s: delivery %d has seq %d", d.user, d.device, k, dl.GetInboxSeq())
			}
			if dl.GetMessage().GetMessageId() <= lastID {
				t.Fatalf("%s/%s: message ids not increasing", d.user, d.device)
			}
			lastID = dl.GetMessage().GetMessageId()
			var si, sj int
			fmt.Sscanf(dl.GetMessage().GetText(), "%d/%d", &si, &sj)
			if sj != next[si] {
				t.Fatalf("%s/%s: sender %d message %d arrived, want %d", d.user, d.device, si, sj, next[si])
			}
			next[si]++
		}
		d.quiet()
	}
	for _, s := range senders {
		for j := range per {
			if a := s.ackOf(uint64(j + 1)); a.GetDuplicate() {
				t.Fatalf("ack %v", a)
			}
		}
	}
}

// TestConnectDuringTraffic: devices connecting while messages flow get
// every message exactly once and in order through sync + live.
func TestConnectDuringTraffic(t *testing.T) {
	e := newEnv(t, envConfig{})
	e.users("alice", "bob")
	a := e.open("alice", "a1")
	const total = 400
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range total {
			if err := a.stream.Send(&chatv1.ClientFrame{FrameId: uint64(i + 1), Payload: &chatv1.ClientFrame_Send{Send: &chatv1.SendMessage{
				Target: &chatv1.SendMessage_ToUser{ToUser: "bob"}, ClientMessageId: fmt.Sprint(i), Text: fmt.Sprint(i)}}}); err != nil {
				t.Errorf("send: %v", err)
				return
			}
		}
	}()
	type client struct {
		d     *dev
		order []uint64
	}
	var clients []*client
	add := func(c *client, dl *chatv1.Delivery) {
		if n := len(c.order); n > 0 && dl.GetInboxSeq() != c.order[n-1]+1 {
			t.Fatalf("bob/%s: seq %d after %d", c.d.device, dl.GetInboxSeq(), c.order[n-1])
		}
		c.order = append(c.order, dl.GetInboxSeq())
	}
	for k := range 6 {
		b := e.open("bob", fmt.Sprint("b", k))
		c := &client{d: b}
		clients = append(clients, c)
		// Standard client: sync from the cursor, then take live deliveries.
		if b.welcome.GetHeadSeq() > b.welcome.GetCursor() {
			all, _ := b.syncAll(b.welcome.GetCursor(), 7)
			for _, dl := range all {
				add(c, dl)
			}
		}
	}
	<-done
	a.ackOf(total) // the last ack: every message is committed
	for _, c := range clients {
		if len(c.order) > 0 && c.order[0] != 1 {
			t.Fatalf("bob/%s starts at %d", c.d.device, c.order[0])
		}
		for _, dl := range c.d.deliveries(total - len(c.order)) {
			add(c, dl)
		}
		c.d.quiet()
	}
}

func TestHeartbeatAndNoPayload(t *testing.T) {
	e := newEnv(t, envConfig{})
	e.users("alice")
	a := e.open("alice", "a1")
	f := a.reply(a.heartbeat())
	if f.GetHeartbeatAck().GetServerTime() == nil {
		t.Fatalf("heartbeat reply %v", f)
	}
	id := a.frameID()
	a.sendFrame(&chatv1.ClientFrame{FrameId: id})
	if fe := a.errOf(id, codes.InvalidArgument); fe.GetMessage() != "frame has no payload" {
		t.Fatalf("no payload: %v", fe)
	}
	// Half-close: the stream ends OK.
	a.stream.CloseSend()
	if st := a.ended(); st.Code() != codes.OK {
		t.Fatalf("after CloseSend: %v", st)
	}
}

// TestHalfCloseFlushesAcks: a client that pipelines sends and half-closes
// still gets every ack before the stream ends.
func TestHalfCloseFlushesAcks(t *testing.T) {
	e := newEnv(t, envConfig{})
	e.users("alice", "bob")
	a := e.open("alice", "a1")
	for i := range 50 {
		a.sendTo("bob", fmt.Sprint(i), "x")
	}
	a.stream.CloseSend()
	for i := range 50 {
		a.ackOf(uint64(i + 1))
	}
	if st := a.ended(); st.Code() != codes.OK {
		t.Fatalf("end: %v", st)
	}
}

// TestSendValidation covers send-level errors that keep the stream open.
func TestSendValidation(t *testing.T) {
	e := newEnv(t, envConfig{})
	e.users("alice", "bob")
	a := e.open("alice", "a1")
	cases := []struct {
		name string
		send *chatv1.SendMessage
		code codes.Code
		msg  string
	}{
		{"no target", &chatv1.SendMessage{ClientMessageId: "1", Text: "x"}, codes.InvalidArgument, "to_user or channel_id"},
		{"no cmid", &chatv1.SendMessage{Target: &chatv1.SendMessage_ToUser{ToUser: "bob"}, Text: "x"}, codes.InvalidArgument, "client_message_id"},
		{"long cmid", &chatv1.SendMessage{Target: &chatv1.SendMessage_ToUser{ToUser: "bob"}, ClientMessageId: strings.Repeat("x", 65), Text: "x"}, codes.InvalidArgument, "client_message_id"},
		{"control cmid", &chatv1.SendMessage{Target: &chatv1.SendMessage_ToUser{ToUser: "bob"}, ClientMessageId: "a\x01", Text: "x"}, codes.InvalidArgument, "client_message_id"},
		{"empty text", &chatv1.SendMessage{Target: &chatv1.SendMessage_ToUser{ToUser: "bob"}, ClientMessageId: "1", Text: ""}, codes.InvalidArgument, "empty"},
		{"control text", &chatv1.SendMessage{Target: &chatv1.SendMessage_ToUser{ToUser: "bob"}, ClientMessageId: "1", Text: "a\x00b"}, codes.InvalidArgument, "control"},
		{"C1 text", &chatv1.SendMessage{Target: &chatv1.SendMessage_ToUser{ToUser: "bob"}, ClientMessageId: "1", Text: "a\u0085b"}, codes.InvalidArgument, "control"},
		{"bad username", &chatv1.SendMessage{Target: &chatv1.SendMessage_ToUser{ToUser: "no way"}, ClientMessageId: "1", Text: "x"}, codes.InvalidArgument, "username"},
		{"unknown user", &chatv1.SendMessage{Target: &chatv1.SendMessage_ToUser{ToUser: "zed"}, ClientMessageId: "1", Text: "x"}, codes.NotFound, "user not found"},
		{"self", &chatv1.SendMessage{Target: &chatv1.SendMessage_ToUser{ToUser: "ALICE"}, ClientMessageId: "1", Text: "x"}, codes.InvalidArgument, "yourself"},
		{"bad channel id", &chatv1.SendMessage{Target: &chatv1.SendMessage_ChannelId{ChannelId: "g:\x00"}, ClientMessageId: "1", Text: "x"}, codes.InvalidArgument, "channel_id"},
	}
	for _, c := range cases {
		id := a.frameID()
		a.sendFrame(&chatv1.ClientFrame{FrameId: id, Payload: &chatv1.ClientFrame_Send{Send: c.send}})
		fe := a.errOf(id, c.code)
		if !strings.Contains(fe.GetMessage(), c.msg) {
			t.Errorf("%s: message %q, want it to mention %q", c.name, fe.GetMessage(), c.msg)
		}
	}
	// Tabs and new lines are fine; the stream still works; nothing else
	// was stored.
	a.ackOf(a.sendTo("bob", "ok", "line 1\n\tline 2\r\n"))
	if h, _ := e.st.LastInboxSeq(context.Background(), "bob"); h != 1 {
		t.Fatalf("bob's head %d, want 1", h)
	}
	if _, err := e.st.GetChannel(context.Background(), "dm:alice:zed"); err == nil {
		t.Fatal("channel created for an unknown user")
	}
}

// TestRevokedDeviceStreamEnds: revocation is checked on every frame.
func TestRevokedDeviceStreamEnds(t *testing.T) {
	e := newEnv(t, envConfig{})
	e.users("alice")
	a := e.open("alice", "a1")
	a.reply(a.heartbeat())
	e.auth.Revoke("alice", "a1")
	a.heartbeat()
	if st := a.ended(); st.Code() != codes.Unauthenticated {
		t.Fatalf("after revoke: %v", st)
	}
	if e.hub.Count() != 0 {
		// The session is unregistered when the stream ends.
		waitFor(t, func() bool { return e.hub.Count() == 0 })
	}
}

// TestLogoutKillsStream: hub.KillDevice ends the stream with the status.
func TestKillDevice(t *testing.T) {
	e := newEnv(t, envConfig{})
	e.users("alice")
	a1, a2 := e.open("alice", "a1"), e.open("alice", "a2")
	waitFor(t, func() bool { return e.hub.Count() == 2 })
	if n := e.hub.KillDevice("alice", "a1", statusNew(codes.Unauthenticated, "device logged out")); n != 1 {
		t.Fatalf("killed %d", n)
	}
	if st := a1.ended(); st.Code() != codes.Unauthenticated || st.Message() != "device logged out" {
		t.Fatalf("a1: %v", st)
	}
	a2.reply(a2.heartbeat())
	e.hub.Shutdown(statusNew(codes.Unavailable, "server shutting down, reconnect"))
	if st := a2.ended(); st.Code() != codes.Unavailable {
		t.Fatalf("a2 after shutdown: %v", st)
	}
}

// A sync page is cut by encoded size (MaxSyncPageBytes) so that it fits a
// client's default 4 MiB receive limit, however large the requested limit.
func TestSyncPageBoundedByBytes(t *testing.T) {
	e := newEnv(t, envConfig{})
	e.users("alice", "bob")
	a := e.open("alice", "a1")
	big := strings.Repeat("x", MaxTextBytes)
	const n = 80 // 80 × 64 KiB = 5 MiB in all
	for i := range n {
		a.ackOf(a.sendTo("bob", fmt.Sprintf("big-%d", i), big))
	}
	b := e.open("bob", "b1")
	ds, pages := b.syncAll(0, MaxSyncLimit)
	if len(ds) != n {
		t.Fatalf("synced %d deliveries, want %d", len(ds), n)
	}
	if len(pages) < 2 {
		t.Fatalf("%d deliveries came in %d page(s), want a cut by size", n, len(pages))
	}
	for i, p := range pages {
		if sz := proto.Size(p); sz > MaxSyncPageBytes+64<<10 {
			t.Fatalf("page %d is %d bytes", i, sz)
		}
		if p.GetMore() != (i < len(pages)-1) {
			t.Fatalf("page %d more=%v", i, p.GetMore())
		}
	}
	for i, d := range ds {
		if d.GetInboxSeq() != uint64(i+1) {
			t.Fatalf("delivery %d has seq %d", i, d.GetInboxSeq())
		}
	}
}

// TestSyncAfterLiveDoesNotRepeat (issue 11 item 1): a device that got seq
// N live and then asks to sync from N-1 does not get N again on the same
// stream; a new stream (a reconnect) syncs from its cursor as before.
func TestSyncAfterLiveDoesNotRepeat(t *testing.T) {
	e := newEnv(t, envConfig{})
	e.users("alice", "bob")
	a, b := e.open("alice", "a1"), e.open("bob", "b1")
	for i := range 3 {
		a.ackOf(a.sendTo("bob", fmt.Sprint("m", i), fmt.Sprint("msg ", i)))
	}
	if ds := b.deliveries(3); ds[2].GetInboxSeq() != 3 {
		t.Fatalf("live: %v", ds)
	}
	p := b.reply(b.sync(2, 10)).GetSyncPage()
	if len(p.GetDeliveries()) != 0 || p.GetMore() || p.GetNextAfterSeq() != 3 {
		t.Fatalf("sync after 2 on a live stream: %v; want no delivery, more false, next 3", p)
	}
	ds, _ := b.syncAll(0, 10)
	if len(ds) != 0 {
		t.Fatalf("sync from 0 on a stream that got 1..3 live repeated %v", ds)
	}
	b.quiet()

	b2 := e.open("bob", "b1")
	if ds, _ := b2.syncAll(b2.welcome.GetCursor(), 10); len(ds) != 3 {
		t.Fatalf("a new stream synced %d deliveries, want the 3 un-acked ones", len(ds))
	}
}

// TestReaderHandover: with the reader handing over to a fresh goroutine
// after every heartbeat, alice's reader runs on another goroutine after her
// heartbeats (bob's, who sent none, on the same), heartbeats interleaved
// with sends are all answered, the messages arrive in order, exactly one
// reader runs per open stream, and a half-close still ends the stream OK.
func TestReaderHandover(t *testing.T) {
	defer func(d time.Duration) { freshReaderEvery = d }(freshReaderEvery)
	freshReaderEvery = 0
	e := newEnv(t, envConfig{})
	e.users("alice", "bob")
	a := e.open("alice", "a1")
	b := e.open("bob", "b1")
	before := readerIDs(t, 2)
	const n = 30
	var hbs, sends []uint64
	for i := range n {
		hbs = append(hbs, a.heartbeat())
		sends = append(sends, a.sendTo("bob", fmt.Sprint(i), fmt.Sprint("m", i)))
	}
	for i := range n {
		if f := a.reply(hbs[i]); f.GetHeartbeatAck() == nil {
			t.Fatalf("reply to heartbeat %d: %v", i, f)
		}
		a.ackOf(sends[i])
	}
	ds := b.deliveries(n)
	for i, d := range ds {
		if got, want := d.GetMessage().GetText(), fmt.Sprint("m", i); got != want {
			t.Fatalf("delivery %d: %q, want %q", i, got, want)
		}
	}
	after := readerIDs(t, 2)
	same := 0
	for id := range after {
		if before[id] {
			same++
		}
	}
	if same != 1 {
		t.Fatalf("readers %v before the heartbeats, %v after: %d the same, want 1 (bob's)", before, after, same)
	}
	a.stream.CloseSend()
	if st := a.ended(); st.Code() != codes.OK {
		t.Fatalf("after CloseSend: %v", st)
	}
}

// readerIDs returns the ids of the goroutines running a stream's
// readLoop, once there are want of them (failing the test if that takes
// over 5 s: more or fewer readers than open streams).
func readerIDs(t *testing.T, want int) map[string]bool {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		buf := make([]byte, 1<<20)
		for {
			n := runtime.Stack(buf, true)
			if n < len(buf) {
				buf = buf[:n]
				break
			}
			buf = make([]byte, 2*len(buf))
		}
		ids := map[string]bool{}
		for _, g := range strings.Split(string(buf), "\n\n") {
			if strings.Contains(g, "chat.(*stream).readLoop(") {
				ids[strings.Fields(g)[1]] = true // "goroutine N [...]:"
			}
		}
		if len(ids) == want {
			return ids
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d stream readers running, want %d", len(ids), want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
