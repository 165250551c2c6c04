package chat

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/chatd/chatd/server/store"
)

// TestCase_C001: a send retried 3 times with the same client_message_id
// after reconnects is stored once, every ack carries the same message_id,
// and recipients get it once.
func TestCase_C001(t *testing.T) {
	e := newEnv(t, envConfig{})
	e.users("alice", "bob")
	b := e.open("bob", "b1")

	// First attempt: the connection drops before the ack is read.
	a := e.open("alice", "a1")
	a.sendTo("bob", "retry-1", "are you there?")
	a.close()

	var first *chatv1.SendAck
	for i := range 3 {
		a = e.open("alice", "a1")
		ack := a.ackOf(a.sendTo("bob", "retry-1", "are you there?"))
		if first == nil {
			first = ack
		}
		if ack.GetMessageId() != first.GetMessageId() || !ack.GetCreatedAt().AsTime().Equal(first.GetCreatedAt().AsTime()) ||
			ack.GetChannelId() != "dm:alice:bob" || ack.GetClientMessageId() != "retry-1" {
			t.Fatalf("attempt %d: ack %v, first %v", i, ack, first)
		}
		// The dropped first attempt may or may not have been committed;
		// from the second retry on, every answer is a duplicate.
		if i > 0 && !ack.GetDuplicate() {
			t.Fatalf("attempt %d: not marked duplicate: %v", i, ack)
		}
		a.close()
	}
	dl := b.deliveries(1)[0]
	if dl.GetMessage().GetMessageId() != first.GetMessageId() || dl.GetInboxSeq() != 1 {
		t.Fatalf("bob got %v", dl)
	}
	b.quiet()
	ctx := context.Background()
	msgs, _, err := e.st.History(ctx, "dm:alice:bob", 0, 0, 100)
	if err != nil || len(msgs) != 1 || msgs[0].MessageID != first.GetMessageId() {
		t.Fatalf("stored %d messages (%v)", len(msgs), err)
	}
	for _, u := range []string{"alice", "bob"} {
		if h, _ := e.st.LastInboxSeq(ctx, u); h != 1 {
			t.Fatalf("%s inbox head %d, want 1", u, h)
		}
	}
}

// TestCase_C002: 50 messages in one channel and 30 in three others arrive
// while the device is offline; sync with page size 24 returns all 80 once,
// in order per channel, the last page has more=false, and an ack of the
// last seq sets the cursor to the newest.
func TestCase_C002(t *testing.T) {
	e := newEnv(t, envConfig{})
	e.users("bob", "alice", "carol", "dave", "erin")
	g1 := e.group("carol", "bob")
	g2 := e.group("dave", "bob")
	g3 := e.group("erin", "bob")
	// Send from four devices concurrently so the channels interleave.
	type plan struct {
		user, target string
		n            int
		direct       bool
	}
	plans := []plan{{"alice", "bob", 50, true}, {"carol", g1, 10, false}, {"dave", g2, 10, false}, {"erin", g3, 10, false}}
	devs := make([]*dev, len(plans))
	for i, p := range plans {
		devs[i] = e.open(p.user, "d1")
	}
	var wg sync.WaitGroup
	for i, p := range plans {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := devs[i]
			for j := range p.n {
				f := &chatv1.SendMessage{ClientMessageId: fmt.Sprint(j), Text: fmt.Sprintf("%s %d", p.user, j)}
				if p.direct {
					f.Target = &chatv1.SendMessage_ToUser{ToUser: p.target}
				} else {
					f.Target = &chatv1.SendMessage_ChannelId{ChannelId: p.target}
				}
				if err := d.stream.Send(&chatv1.ClientFrame{FrameId: uint64(j + 1), Payload: &chatv1.ClientFrame_Send{Send: f}}); err != nil {
					t.Errorf("send: %v", err)
				}
			}
		}()
	}
	wg.Wait()
	for i, p := range plans {
		devs[i].ackOf(uint64(p.n)) // FIFO: the last ack means all are stored
	}

	b := e.open("bob", "phone")
	if b.welcome.GetCursor() != 0 || b.welcome.GetHeadSeq() != 80 {
		t.Fatalf("welcome %v", b.welcome)
	}
	all, pages := b.syncAll(0, 24)
	if len(pages) != 4 || len(all) != 80 {
		t.Fatalf("%d deliveries in %d pages, want 80 in 4", len(all), len(pages))
	}
	for i, p := range pages {
		if p.GetMore() != (i < 3) {
			t.Fatalf("page %d more=%v", i, p.GetMore())
		}
	}
	next := map[string]int{}
	lastID := map[string]uint64{}
	for i, dl := range all {
		if dl.GetInboxSeq() != uint64(i+1) {
			t.Fatalf("delivery %d has seq %d", i, dl.GetInboxSeq())
		}
		m := dl.GetMessage()
		var who string
		var j int
		fmt.Sscanf(m.GetText(), "%s %d", &who, &j)
		if j != next[who] || m.GetMessageId() <= lastID[m.GetChannelId()] {
			t.Fatalf("out of order in %s: %q (want %s %d)", m.GetChannelId(), m.GetText(), who, next[who])
		}
		next[who]++
		lastID[m.GetChannelId()] = m.GetMessageId()
	}
	if len(lastID) != 4 {
		t.Fatalf("channels %v", lastID)
	}
	if r := b.reply(b.ack(all[79].GetInboxSeq())).GetAckResult(); r.GetCursor() != 80 {
		t.Fatalf("ack result %v", r)
	}
	b.quiet() // synced: no live duplicates of what the sync returned
	if dv, _ := e.st.GetDevice(context.Background(), "bob", "phone"); dv.Cursor != 80 {
		t.Fatalf("stored cursor %d", dv.Cursor)
	}
}

// TestCase_C004: 100 sends pipelined into a group without waiting are
// seen by every device in send order with increasing message ids.
func TestCase_C004(t *testing.T) {
	e := newEnv(t, envConfig{})
	names := []string{"ann", "ben", "cid", "dan"}
	e.users(names...)
	g := e.group("ann", names[1:]...)
	devs := e.openAll(names, "d1")
	devs = append(devs, e.open("ann", "d2"), e.open("ben", "d2"))
	sender := devs[0]
	batchesBefore := e.seq.Stats().Batches
	for i := range 100 {
		sender.sendIn(g, fmt.Sprint("p", i), fmt.Sprint(i))
	}
	var last uint64
	for i := range 100 {
		a := sender.ackOf(uint64(i + 1))
		if a.GetMessageId() <= last {
			t.Fatalf("ack %d: id %d after %d", i, a.GetMessageId(), last)
		}
		last = a.GetMessageId()
	}
	for _, d := range devs {
		var prev uint64
		for i, dl := range d.deliveries(100) {
			m := dl.GetMessage()
			if m.GetText() != fmt.Sprint(i) || m.GetMessageId() <= prev || dl.GetInboxSeq() != uint64(i+1) {
				t.Fatalf("%s/%s: delivery %d = %q id %d seq %d", d.user, d.device, i, m.GetText(), m.GetMessageId(), dl.GetInboxSeq())
			}
			prev = m.GetMessageId()
		}
		d.quiet()
	}
	t.Logf("100 pipelined sends committed in %d batches", e.seq.Stats().Batches-batchesBefore)
}

// TestCase_C006: in a 100-member group one device stops reading. Its
// stream is closed with ResourceExhausted, the others receive everything,
// and the stuck device reconnects and syncs everything.
func TestCase_C006(t *testing.T) {
	const queue = 32
	e := newEnv(t, envConfig{sendQueue: queue})
	names := make([]string, 100)
	for i := range names {
		names[i] = fmt.Sprintf("member%02d", i)
	}
	e.users(names...)
	g := e.group(names[0], names[1:]...)
	sender := e.open(names[0], "sender")
	healthy := e.openAll(names[:99], "d1")
	stuck := e.openStuck(names[99], "d1")

	// Send 1 KiB messages, one at a time, each only when every healthy
	// device has nearly caught up (so only the stuck one can overflow),
	// until the stuck session overflowed, then 10 more.
	text := strings.Repeat("x", 1024)
	sent, extra := 0, -1
	for extra != 0 {
		if sent == 3000 {
			t.Fatal("no overflow after 3000 messages")
		}
		for _, d := range healthy {
			for d.delivered.Load() < int64(sent-queue/4) {
				time.Sleep(100 * time.Microsecond)
			}
		}
		sent++
		sender.ackOf(sender.sendIn(g, fmt.Sprint(sent), text))
		if extra < 0 && e.hub.Overflows() > 0 {
			extra = 10
		}
		if extra > 0 {
			extra--
		}
	}
	t.Logf("stuck session overflowed; %d messages sent", sent)
	if e.hub.Overflows() != 1 {
		t.Fatalf("%d sessions overflowed, want only the stuck one", e.hub.Overflows())
	}
	for _, d := range healthy {
		ds := d.deliveries(sent)
		for i, dl := range ds {
			if dl.GetInboxSeq() != uint64(i+1) {
				t.Fatalf("%s: delivery %d has seq %d", d.user, i, dl.GetInboxSeq())
			}
		}
	}
	// The stuck device reads what was buffered, then the status.
	stuck.startReader()
	if st := stuck.ended(); st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), "send queue overflow") {
		t.Fatalf("stuck stream ended with %v", st)
	}
	// Reconnect and sync everything.
	again := e.open(names[99], "d1")
	if again.welcome.GetHeadSeq() != uint64(sent) {
		t.Fatalf("welcome %v, want head %d", again.welcome, sent)
	}
	all, _ := again.syncAll(again.welcome.GetCursor(), 1000)
	if len(all) != sent {
		t.Fatalf("synced %d of %d", len(all), sent)
	}
	for i, dl := range all {
		if dl.GetInboxSeq() != uint64(i+1) || dl.GetMessage().GetText() != text {
			t.Fatalf("sync[%d] = seq %d", i, dl.GetInboxSeq())
		}
	}
}

// TestCase_C101: a text of exactly 65536 bytes (4-byte emoji) is stored
// and delivered byte for byte; 65537 bytes get InvalidArgument naming the
// limit, nothing is stored, and the stream goes on.
func TestCase_C101(t *testing.T) {
	e := newEnv(t, envConfig{})
	e.users("alice", "bob")
	a, b := e.open("alice", "a1"), e.open("bob", "b1")
	max := strings.Repeat("\U0001F600", 65536/4)
	if len(max) != 65536 {
		t.Fatal(len(max))
	}
	ack := a.ackOf(a.sendTo("bob", "big", max))
	if dl := b.deliveries(1)[0]; dl.GetMessage().GetText() != max {
		t.Fatalf("delivered text differs (%d bytes)", len(dl.GetMessage().GetText()))
	}
	m, err := e.st.GetMessage(context.Background(), ack.GetChannelId(), ack.GetMessageId())
	if err != nil || m.Text != max {
		t.Fatalf("stored text differs: %v", err)
	}
	fe := a.errOf(a.sendTo("bob", "too-big", max+"a"), codes.InvalidArgument)
	if !strings.Contains(fe.GetMessage(), "65536") {
		t.Fatalf("error does not name the limit: %q", fe.GetMessage())
	}
	if h, _ := e.st.LastInboxSeq(context.Background(), "bob"); h != 1 {
		t.Fatalf("bob's head %d after the rejected send", h)
	}
	a.ackOf(a.sendTo("bob", "small", "still here"))
	if dl := b.deliveries(1)[0]; dl.GetMessage().GetText() != "still here" {
		t.Fatalf("got %v", dl)
	}
}

// rawCodec sends and receives already encoded bytes.
type rawCodec struct{}

func (rawCodec) Name() string { return "proto" }

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(v.([]byte))}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	*(v.(*[]byte)) = data.Materialize()
	return nil
}

// rawSend builds a ClientFrame{frame_id, send{to_user, client_message_id,
// text}} by hand, with text bytes as given (possibly invalid UTF-8, which
// no protobuf library encodes). The cases and the fuzz seeds use it.
func rawSend(frameID uint64, toUser, cmid string, text []byte) []byte {
	var send []byte
	send = protowire.AppendTag(send, 1, protowire.BytesType)
	send = protowire.AppendString(send, toUser)
	send = protowire.AppendTag(send, 3, protowire.BytesType)
	send = protowire.AppendString(send, cmid)
	send = protowire.AppendTag(send, 4, protowire.BytesType)
	send = protowire.AppendBytes(send, text)
	var f []byte
	f = protowire.AppendTag(f, 1, protowire.VarintType)
	f = protowire.AppendVarint(f, frameID)
	f = protowire.AppendTag(f, 2, protowire.BytesType)
	f = protowire.AppendBytes(f, send)
	return f
}

// TestCase_C102: a hand-built frame with invalid UTF-8 in text, and a text
// of only white space, zero-width or other invisible characters (U+200E
// alone), get InvalidArgument; the
// stream stays usable and nothing is stored.
func TestCase_C102(t *testing.T) {
	e := newEnv(t, envConfig{})
	e.users("alice", "bob")
	ctx, cancel := context.WithCancel(e.ctx("alice", "a1"))
	defer cancel()
	cs, err := e.cc.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true},
		chatv1.ChatService_Chat_FullMethodName, grpc.ForceCodecV2(rawCodec{}))
	if err != nil {
		t.Fatal(err)
	}
	recv := func() *chatv1.ServerFrame {
		t.Helper()
		var b []byte
		if err := cs.RecvMsg(&b); err != nil {
			t.Fatalf("recv: %v", err)
		}
		f := &chatv1.ServerFrame{}
		if err := proto.Unmarshal(b, f); err != nil {
			t.Fatal(err)
		}
		return f
	}
	if w := recv(); w.GetWelcome() == nil {
		t.Fatalf("first frame %v", w)
	}
	// Invalid UTF-8 (a lone continuation byte and an overlong encoding).
	if err := cs.SendMsg(rawSend(7, "bob", "bad-1", []byte("hi \x80 \xc0\xaf"))); err != nil {
		t.Fatal(err)
	}
	f := recv()
	if f.GetFrameId() != 7 || codes.Code(f.GetError().GetCode()) != codes.InvalidArgument ||
		!strings.Contains(f.GetError().GetMessage(), "UTF-8") {
		t.Fatalf("reply to invalid UTF-8: %v", f)
	}
	// A frame that is not protobuf at all (truncated field) after a frame_id.
	junk := protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.VarintType), 8)
	junk = append(protowire.AppendTag(junk, 2, protowire.BytesType), 0x50, 0x01)
	if err := cs.SendMsg(junk); err != nil {
		t.Fatal(err)
	}
	if f := recv(); f.GetFrameId() != 8 || codes.Code(f.GetError().GetCode()) != codes.InvalidArgument ||
		!strings.Contains(f.GetError().GetMessage(), "malformed frame") {
		t.Fatalf("reply to junk: %v", f)
	}
	// Only white space and zero-width characters.
	if err := cs.SendMsg(rawSend(9, "bob", "blank-1", []byte(" \t\n\u200b\u200c\u200d\u2060\ufeff\u3000 "))); err != nil {
		t.Fatal(err)
	}
	if f := recv(); f.GetFrameId() != 9 || codes.Code(f.GetError().GetCode()) != codes.InvalidArgument {
		t.Fatalf("reply to blank text: %v", f)
	}
	// Only invisible format characters: left-to-right marks (issue 11
	// item 6), isolates, a variation selector, a Hangul filler.
	for i, text := range []string{"\u200e", "\u200e\u200f\u2066\u2069", "\ufe0f", "\u3164"} {
		id := uint64(90 + i)
		if err := cs.SendMsg(rawSend(id, "bob", fmt.Sprintf("invisible-%d", i), []byte(text))); err != nil {
			t.Fatal(err)
		}
		if f := recv(); f.GetFrameId() != id || codes.Code(f.GetError().GetCode()) != codes.InvalidArgument ||
			!strings.Contains(f.GetError().GetMessage(), "no visible character") {
			t.Fatalf("reply to invisible text %+q: %v", text, f)
		}
	}
	// A client-sent "malformed" marker in a valid frame is ignored.
	hb, _ := proto.Marshal(&chatv1.ClientFrame{FrameId: 10, Payload: &chatv1.ClientFrame_Heartbeat{Heartbeat: &chatv1.Heartbeat{}}})
	hb = protowire.AppendString(protowire.AppendTag(hb, malformedField, protowire.BytesType), "fake")
	if err := cs.SendMsg(hb); err != nil {
		t.Fatal(err)
	}
	if f := recv(); f.GetFrameId() != 10 || f.GetHeartbeatAck() == nil {
		t.Fatalf("heartbeat reply %v", f)
	}
	// The stream still works for a valid send.
	if err := cs.SendMsg(rawSend(11, "bob", "good-1", []byte("valid ✓"))); err != nil {
		t.Fatal(err)
	}
	for {
		f := recv()
		if f.GetFrameId() == 11 {
			if f.GetSendAck() == nil {
				t.Fatalf("valid send: %v", f)
			}
			break
		}
	}
	msgs, _, _ := e.st.History(context.Background(), "dm:alice:bob", 0, 0, 10)
	if len(msgs) != 1 || msgs[0].Text != "valid ✓" {
		t.Fatalf("stored %d messages", len(msgs))
	}
}

// TestCase_C103: bad frames get precise FrameErrors on an open stream; a
// 10,000-frame burst is rate limited without hurting another user, and
// goroutines and heap return near where they started.
func TestCase_C103(t *testing.T) {
	e := newEnv(t, envConfig{})
	e.users("alice", "bob")
	b := e.open("bob", "b1")
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	heapBefore, goroutinesBefore := ms.HeapInuse, runtime.NumGoroutine()

	a := e.open("alice", "a1")
	id := a.frameID()
	a.sendFrame(&chatv1.ClientFrame{FrameId: id})
	a.errOf(id, codes.InvalidArgument)
	a.errOf(a.sendIn("g:0123456789abcdef0123456789abcdef", "x", "hi"), codes.NotFound)
	if fe := a.errOf(a.ack(1<<40), codes.FailedPrecondition); fe.GetMessage() != "ack beyond inbox head" {
		t.Fatalf("ack error %q", fe.GetMessage())
	}
	for _, limit := range []int32{-1, 1000000} {
		if fe := a.errOf(a.sync(0, limit), codes.InvalidArgument); !strings.Contains(fe.GetMessage(), "1000") {
			t.Fatalf("sync limit %d: %q", limit, fe.GetMessage())
		}
	}
	// The typing of an unknown channel, too.
	id = a.frameID()
	a.sendFrame(&chatv1.ClientFrame{FrameId: id, Payload: &chatv1.ClientFrame_Typing{Typing: &chatv1.Typing{ChannelId: "g:nope"}}})
	a.errOf(id, codes.NotFound)

	// Burst: 10,000 heartbeats as fast as possible; every one is answered,
	// some with ResourceExhausted.
	const burst = 10000
	go func() {
		for range burst {
			if err := a.stream.Send(&chatv1.ClientFrame{FrameId: 1 << 20, Payload: &chatv1.ClientFrame_Heartbeat{Heartbeat: &chatv1.Heartbeat{}}}); err != nil {
				return
			}
		}
	}()
	limited, acked := 0, 0
	for limited+acked < burst {
		f := a.next()
		if f.GetFrameId() != 1<<20 {
			continue
		}
		switch {
		case f.GetHeartbeatAck() != nil:
			acked++
		case codes.Code(f.GetError().GetCode()) == codes.ResourceExhausted:
			limited++
		default:
			t.Fatalf("burst reply %v", f)
		}
	}
	if limited == 0 || acked == 0 {
		t.Fatalf("burst: %d acked, %d rate limited", acked, limited)
	}
	// Another user is served meanwhile and afterwards.
	b.reply(b.heartbeat())
	b.ackOf(b.sendTo("alice", "after-burst", "still fine"))
	a.close()
	a = nil

	// Goroutines and heap return near the start.
	waitFor(t, func() bool { return runtime.NumGoroutine() <= goroutinesBefore+2 && e.hub.Count() == 1 })
	runtime.GC()
	runtime.ReadMemStats(&ms)
	if grow := int64(ms.HeapInuse) - int64(heapBefore); grow > 32<<20 {
		t.Fatalf("heap in use grew by %d bytes", grow)
	}
	t.Logf("burst: %d acked, %d rate limited; goroutines %d -> %d", acked, limited, goroutinesBefore, runtime.NumGoroutine())
}

// TestCase_C104: a group holds at most 100 members, also under concurrent
// adds.
func TestCase_C104(t *testing.T) {
	e := newEnv(t, envConfig{})
	names := make([]string, 110)
	for i := range names {
		names[i] = fmt.Sprintf("user%03d", i)
	}
	e.users(names...)
	ctx := e.ctx(names[0], "d1")
	_, err := e.client.CreateGroup(ctx, &chatv1.CreateGroupRequest{Name: "too big", MemberIds: names[1:101]})
	if statusCode(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "at most 100 members") {
		t.Fatalf("101 members: %v", err)
	}
	for round := range 5 {
		resp, err := e.client.CreateGroup(ctx, &chatv1.CreateGroupRequest{Name: "almost full", MemberIds: names[1:99]})
		if err != nil {
			t.Fatal(err)
		}
		g := resp.GetChannel().GetChannelId()
		if n := len(resp.GetChannel().GetMembers()); n != 99 {
			t.Fatalf("created with %d members", n)
		}
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errs[i] = e.client.AddMember(ctx, &chatv1.AddMemberRequest{ChannelId: g, UserId: names[99+i]})
			}()
		}
		wg.Wait()
		ok, full := 0, 0
		for _, err := range errs {
			switch statusCode(err) {
			case codes.OK:
				ok++
			case codes.FailedPrecondition:
				full++
			default:
				t.Fatalf("round %d: %v", round, err)
			}
		}
		if ok != 1 || full != 1 {
			t.Fatalf("round %d: %d adds succeeded, %d failed; want 1 and 1", round, ok, full)
		}
		ms, _ := e.st.ListMembers(context.Background(), g)
		if len(ms) != 100 {
			t.Fatalf("round %d: %d members", round, len(ms))
		}
		_, err = e.client.AddMember(ctx, &chatv1.AddMemberRequest{ChannelId: g, UserId: names[105]})
		if statusCode(err) != codes.FailedPrecondition {
			t.Fatalf("add to a full group: %v", err)
		}
	}
}

// TestCase_C106: a stranger can neither send to, read, inspect nor join a
// group.
func TestCase_C106(t *testing.T) {
	e := newEnv(t, envConfig{})
	e.users("alice", "bob", "mallory")
	g := e.group("alice", "bob")
	a := e.open("alice", "a1")
	a.ackOf(a.sendIn(g, "1", "secret"))
	m := e.open("mallory", "m1")
	m.errOf(m.sendIn(g, "x", "let me in"), codes.PermissionDenied)
	id := m.frameID()
	m.sendFrame(&chatv1.ClientFrame{FrameId: id, Payload: &chatv1.ClientFrame_Typing{Typing: &chatv1.Typing{ChannelId: g}}})
	m.errOf(id, codes.PermissionDenied)

	ctx := e.ctx("mallory", "m1")
	if _, err := e.client.GetHistory(ctx, &chatv1.GetHistoryRequest{ChannelId: g}); statusCode(err) != codes.PermissionDenied {
		t.Fatalf("GetHistory: %v", err)
	}
	if _, err := e.client.GetChannel(ctx, &chatv1.GetChannelRequest{ChannelId: g}); statusCode(err) != codes.PermissionDenied {
		t.Fatalf("GetChannel: %v", err)
	}
	if _, err := e.client.AddMember(ctx, &chatv1.AddMemberRequest{ChannelId: g, UserId: "mallory"}); statusCode(err) != codes.PermissionDenied {
		t.Fatalf("AddMember self: %v", err)
	}
	if _, err := e.client.RemoveMember(ctx, &chatv1.RemoveMemberRequest{ChannelId: g, UserId: "bob"}); statusCode(err) != codes.PermissionDenied {
		t.Fatalf("RemoveMember: %v", err)
	}
	// A plain member may not add either.
	if _, err := e.client.AddMember(e.ctx("bob", "b1"), &chatv1.AddMemberRequest{ChannelId: g, UserId: "mallory"}); statusCode(err) != codes.PermissionDenied {
		t.Fatalf("member adds: %v", err)
	}
	// Nothing changed; mallory received nothing.
	if ms, _ := e.st.ListMembers(context.Background(), g); len(ms) != 2 {
		t.Fatalf("members %v", ms)
	}
	if _, err := e.st.GetMember(context.Background(), g, "mallory"); !errors.Is(err, store.ErrNotFound) {
		t.Fatal("mallory became a member")
	}
	if h, _ := e.st.LastInboxSeq(context.Background(), "mallory"); h != 0 {
		t.Fatalf("mallory's inbox head %d", h)
	}
	m.quiet()
}

// TestGroupMembersCountedDistinct (issue 11 item 4): member lists are
// counted after canonicalising and de-duplicating, in CreateGroup and in
// AddMember alike; only the raw request size has a cap of its own, and
// refusing it says so rather than blaming the member limit.
func TestGroupMembersCountedDistinct(t *testing.T) {
	e := newEnv(t, envConfig{})
	names := make([]string, 102)
	for i := range names {
		names[i] = fmt.Sprintf("user%03d", i)
	}
	e.users(names...)
	ctx := e.ctx(names[0], "d1")
	fullwidth := func(s string) string {
		var b strings.Builder
		for _, r := range s {
			b.WriteRune(r - 0x21 + 0xFF01)
		}
		return b.String()
	}

	// 5,000 copies of one name: too big a request, not too many members.
	_, err := e.client.CreateGroup(ctx, &chatv1.CreateGroupRequest{Name: "copies", MemberIds: slices.Repeat([]string{"user001"}, 5000)})
	if statusCode(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "member_ids") ||
		strings.Contains(err.Error(), "at most 100 members") {
		t.Fatalf("5,000 copies of one name: %v", err)
	}

	// 99 distinct others, each three times in three spellings, and the
	// caller twice: 100 members.
	var raw []string
	for _, n := range names[1:100] {
		raw = append(raw, n, strings.ToUpper(n), fullwidth(n))
	}
	raw = append(raw, strings.ToUpper(names[0]), names[0])
	resp, err := e.client.CreateGroup(ctx, &chatv1.CreateGroupRequest{Name: "full", MemberIds: raw})
	if err != nil {
		t.Fatalf("%d entries naming 100 members: %v", len(raw), err)
	}
	g := resp.GetChannel().GetChannelId()
	if n := len(resp.GetChannel().GetMembers()); n != store.MaxGroupMembers {
		t.Fatalf("created with %d members, want %d", n, store.MaxGroupMembers)
	}

	// One more distinct name among the duplicates: 101 members.
	_, err = e.client.CreateGroup(ctx, &chatv1.CreateGroupRequest{Name: "101", MemberIds: append(raw, fullwidth(names[100]))})
	if statusCode(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "at most 100 members") {
		t.Fatalf("101 distinct members among duplicates: %v", err)
	}

	// AddMember on the full group: an existing member under another
	// spelling (a role change) and the owner are not new members.
	if _, err := e.client.AddMember(ctx, &chatv1.AddMemberRequest{ChannelId: g, UserId: fullwidth(strings.ToUpper(names[5])), Role: chatv1.MemberRole_MEMBER_ROLE_ADMIN}); err != nil {
		t.Fatalf("role change of an existing member in a full group: %v", err)
	}
	if _, err := e.client.AddMember(ctx, &chatv1.AddMemberRequest{ChannelId: g, UserId: strings.ToUpper(names[0])}); err != nil {
		t.Fatalf("re-adding the owner to a full group: %v", err)
	}
	if m, err := e.st.GetMember(context.Background(), g, names[5]); err != nil || m.Role != store.RoleAdmin {
		t.Fatalf("member %s: %+v %v", names[5], m, err)
	}
	_, err = e.client.AddMember(ctx, &chatv1.AddMemberRequest{ChannelId: g, UserId: strings.ToUpper(names[101])})
	if statusCode(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "at most 100 members") {
		t.Fatalf("a new member in a full group: %v", err)
	}
	if ms, _ := e.st.ListMembers(context.Background(), g); len(ms) != store.MaxGroupMembers {
		t.Fatalf("%d members", len(ms))
	}
}
