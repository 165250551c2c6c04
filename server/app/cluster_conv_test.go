package app_test

// Conversation state on the cluster (docs/conversation.md): receipts,
// unread counts on every device, edits and deletes, with the users'
// devices on different chatd processes of one keyspace and one Redis.
// Reuses the cluster helpers of cluster_test.go.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// convDev is a device whose stream keeps every delivery and every pushed
// ReceiptEvent and UnreadEvent (the cluster device type drops pushes).
type convDev struct {
	t      *testing.T
	u      *user
	server string
	s      chatv1.ChatService_ChatClient
	cancel context.CancelFunc
	w      *chatv1.Welcome
	sendMu sync.Mutex
	nextID atomic.Uint64

	mu         sync.Mutex
	waiters    map[uint64]chan *chatv1.ServerFrame
	deliveries []*chatv1.Delivery
	receipts   []*chatv1.ReceiptEvent
	unread     []*chatv1.UnreadEvent
	changed    chan struct{}
	done       chan struct{}
	err        error
}

// openConv logs name in as a new device through server (unless u is
// given) and opens its stream there, syncing what it missed.
func openConv(t *testing.T, c *cluster, u *user, name, devName, server string) *convDev {
	t.Helper()
	if u == nil {
		u = logIn(t, c.cc(server), name, devName)
	}
	ctx, cancel := context.WithCancel(u.ctx(context.Background()))
	s, err := chatv1.NewChatServiceClient(c.cc(server)).Chat(ctx)
	if err != nil {
		cancel()
		t.Fatalf("%s: Chat on %s: %v", name, server, err)
	}
	f, err := s.Recv()
	if err != nil || f.GetWelcome() == nil {
		cancel()
		t.Fatalf("%s: welcome on %s: %v %v", name, server, f, err)
	}
	d := &convDev{t: t, u: u, server: server, s: s, cancel: cancel, w: f.GetWelcome(),
		waiters: map[uint64]chan *chatv1.ServerFrame{}, changed: make(chan struct{}), done: make(chan struct{})}
	t.Cleanup(cancel)
	go d.readLoop()
	go d.heartbeats(time.Duration(d.w.GetHeartbeatIntervalMs()) * time.Millisecond)
	after := d.w.GetCursor()
	for {
		f, err := d.call(&chatv1.ClientFrame{Payload: &chatv1.ClientFrame_Sync{Sync: &chatv1.SyncRequest{AfterSeq: after}}})
		if err != nil {
			t.Fatalf("%s: sync: %v", d.label(), err)
		}
		p := f.GetSyncPage()
		d.record(func() { d.deliveries = append(d.deliveries, p.GetDeliveries()...) })
		after = p.GetNextAfterSeq()
		if !p.GetMore() {
			return d
		}
	}
}

func (d *convDev) label() string { return d.u.name + "/" + d.u.device + "@" + d.server }

func (d *convDev) record(fn func()) {
	d.mu.Lock()
	fn()
	close(d.changed)
	d.changed = make(chan struct{})
	d.mu.Unlock()
}

func (d *convDev) readLoop() {
	defer close(d.done)
	for {
		f, err := d.s.Recv()
		if err != nil {
			d.mu.Lock()
			d.err = err
			d.mu.Unlock()
			return
		}
		if id := f.GetFrameId(); id != 0 {
			d.mu.Lock()
			ch := d.waiters[id]
			delete(d.waiters, id)
			d.mu.Unlock()
			if ch != nil {
				ch <- f
			}
			continue
		}
		switch p := f.GetPayload().(type) {
		case *chatv1.ServerFrame_Delivery:
			d.record(func() { d.deliveries = append(d.deliveries, p.Delivery) })
		case *chatv1.ServerFrame_Receipt:
			d.record(func() { d.receipts = append(d.receipts, p.Receipt) })
		case *chatv1.ServerFrame_Unread:
			d.record(func() { d.unread = append(d.unread, p.Unread) })
		}
	}
}

func (d *convDev) heartbeats(every time.Duration) {
	if every <= 0 {
		every = time.Second
	}
	tk := time.NewTicker(every)
	defer tk.Stop()
	for {
		select {
		case <-d.done:
			return
		case <-tk.C:
			d.sendMu.Lock()
			err := d.s.Send(&chatv1.ClientFrame{Payload: &chatv1.ClientFrame_Heartbeat{Heartbeat: &chatv1.Heartbeat{}}})
			d.sendMu.Unlock()
			if err != nil {
				return
			}
		}
	}
}

// call sends f and waits for its reply; a FrameError is a status error.
func (d *convDev) call(f *chatv1.ClientFrame) (*chatv1.ServerFrame, error) {
	id := d.nextID.Add(1)
	f.FrameId = id
	ch := make(chan *chatv1.ServerFrame, 1)
	d.mu.Lock()
	d.waiters[id] = ch
	d.mu.Unlock()
	d.sendMu.Lock()
	err := d.s.Send(f)
	d.sendMu.Unlock()
	if err != nil {
		return nil, err
	}
	select {
	case r := <-ch:
		if e := r.GetError(); e != nil {
			return nil, status.Error(codes.Code(e.GetCode()), e.GetMessage())
		}
		return r, nil
	case <-d.done:
		return nil, fmt.Errorf("%s: stream ended: %v", d.label(), d.err)
	case <-time.After(replyTimeout):
		return nil, fmt.Errorf("%s: no reply within %v", d.label(), replyTimeout)
	}
}

// waitFor waits until cond (called with d.mu held) holds.
func (d *convDev) waitFor(what string, cond func() bool) {
	d.t.Helper()
	deadline := time.After(replyTimeout)
	for {
		d.mu.Lock()
		ok, changed := cond(), d.changed
		d.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-changed:
		case <-d.done:
			d.t.Fatalf("%s: stream ended waiting for %s: %v", d.label(), what, d.err)
		case <-deadline:
			d.t.Fatalf("%s: no %s within %v", d.label(), what, replyTimeout)
		}
	}
}

func (d *convDev) waitDeliveries(n int) []*chatv1.Delivery {
	d.t.Helper()
	d.waitFor(fmt.Sprint(n, " deliveries"), func() bool { return len(d.deliveries) >= n })
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.deliveries)
}

func (d *convDev) waitReceipt(what string, pred func(*chatv1.ReceiptEvent) bool) {
	d.t.Helper()
	d.waitFor("receipt "+what, func() bool { return slices.ContainsFunc(d.receipts, pred) })
}

func (d *convDev) waitUnread(what string, pred func(*chatv1.UnreadEvent) bool) {
	d.t.Helper()
	d.waitFor("unread "+what, func() bool { return slices.ContainsFunc(d.unread, pred) })
}

func (d *convDev) send(channel, toUser, cmid, text string) *chatv1.SendAck {
	d.t.Helper()
	m := &chatv1.SendMessage{ClientMessageId: cmid, Text: text}
	if toUser != "" {
		m.Target = &chatv1.SendMessage_ToUser{ToUser: toUser}
	} else {
		m.Target = &chatv1.SendMessage_ChannelId{ChannelId: channel}
	}
	f, err := d.call(&chatv1.ClientFrame{Payload: &chatv1.ClientFrame_Send{Send: m}})
	if err != nil {
		d.t.Fatalf("%s: send: %v", d.label(), err)
	}
	return f.GetSendAck()
}

func (d *convDev) markRead(channel string, id uint64) *chatv1.UnreadEvent {
	d.t.Helper()
	f, err := d.call(&chatv1.ClientFrame{Payload: &chatv1.ClientFrame_MarkRead{MarkRead: &chatv1.MarkRead{ChannelId: channel, MessageId: id}}})
	if err != nil {
		d.t.Fatalf("%s: MarkRead: %v", d.label(), err)
	}
	return f.GetUnread()
}

func (d *convDev) revise(f *chatv1.ClientFrame) (*chatv1.SendAck, error) {
	r, err := d.call(f)
	if err != nil {
		return nil, err
	}
	return r.GetSendAck(), nil
}

func (d *convDev) edit(channel string, id uint64, cmid, text string) (*chatv1.SendAck, error) {
	return d.revise(&chatv1.ClientFrame{Payload: &chatv1.ClientFrame_Edit{Edit: &chatv1.EditMessage{ChannelId: channel, MessageId: id, ClientMessageId: cmid, Text: text}}})
}

func (d *convDev) del(channel string, id uint64, cmid string, forMe bool) (*chatv1.SendAck, error) {
	return d.revise(&chatv1.ClientFrame{Payload: &chatv1.ClientFrame_Delete{Delete: &chatv1.DeleteMessage{ChannelId: channel, MessageId: id, ClientMessageId: cmid, ForMe: forMe}}})
}

func (d *convDev) ack(seq uint64) {
	d.t.Helper()
	if _, err := d.call(&chatv1.ClientFrame{Payload: &chatv1.ClientFrame_Ack{Ack: &chatv1.Ack{InboxSeq: seq}}}); err != nil {
		d.t.Fatalf("%s: ack %d: %v", d.label(), seq, err)
	}
}

func (d *convDev) close() {
	d.cancel()
	<-d.done
}

// rpc returns a ChatService client on server and u's context.
func rpc(c *cluster, u *user, server string) (chatv1.ChatServiceClient, context.Context) {
	ctx, cancel := context.WithTimeout(u.ctx(context.Background()), replyTimeout)
	c.t.Cleanup(cancel)
	return chatv1.NewChatServiceClient(c.cc(server)), ctx
}

// channelsOf returns u's ListChannels view through server.
func channelsOf(t *testing.T, c *cluster, u *user, server string) (map[string]*chatv1.Channel, *chatv1.ListChannelsResponse) {
	t.Helper()
	cl, ctx := rpc(c, u, server)
	resp, err := cl.ListChannels(ctx, &chatv1.ListChannelsRequest{})
	if err != nil {
		t.Fatalf("ListChannels(%s@%s): %v", u.name, server, err)
	}
	if resp.GetNextPageToken() != "" {
		t.Fatalf("ListChannels(%s): more than one page", u.name)
	}
	out := map[string]*chatv1.Channel{}
	for _, ch := range resp.GetChannels() {
		out[ch.GetChannelId()] = ch
	}
	return out, resp
}

// TestCluster_Conversation: on three servers, alice (s1) sends 10
// messages to bob; bob's phone (s2) receives them and alice sees
// "delivered"; bob reads on his laptop (s3): alice sees "read" and the
// phone shows 0 unread without doing anything (C204). In a group of 5
// spread over the servers the read state per member is right. An edit
// and deletes (for everyone, for me) reach a device that was offline,
// through sync on another server. Then a randomized mix of operations
// from all servers keeps every device's unread counts equal to a model.
func TestCluster_Conversation(t *testing.T) {
	c := newCluster(t, []string{"s1", "s2", "s3"})
	names := []string{"alice", "bob", "carol", "dave", "erin"}
	setup := signUpAll(t, c.cc("s1"), names...)

	alice := openConv(t, c, nil, "alice", "a-phone", "s1")
	phone := openConv(t, c, nil, "bob", "b-phone", "s2")
	laptop := openConv(t, c, nil, "bob", "b-laptop", "s3")
	dmCh := dmChannel("alice", "bob")

	acks := []*chatv1.SendAck{alice.send("", "bob", "dm-0", "hello 0")}
	for i := 1; i < 10; i++ {
		acks = append(acks, alice.send(dmCh, "", fmt.Sprint("dm-", i), fmt.Sprint("hello ", i)))
	}
	last := acks[9].GetMessageId()

	ds := phone.waitDeliveries(10)
	phone.ack(ds[9].GetInboxSeq())
	alice.waitReceipt("bob delivered", func(r *chatv1.ReceiptEvent) bool {
		return r.GetChannelId() == dmCh && r.GetUserId() == "bob" && r.GetDeliveredUpTo() == last
	})
	if chs, resp := channelsOf(t, c, phone.u, "s2"); chs[dmCh].GetUnreadCount() != 10 || resp.GetTotalUnread() != 10 {
		t.Fatalf("bob's phone before reading: %v total %d", chs[dmCh], resp.GetTotalUnread())
	}

	ev := laptop.markRead(dmCh, 0)
	if ev.GetUnreadCount() != 0 || ev.GetReadUpTo() != last || ev.GetTotalUnread() != 0 {
		t.Fatalf("laptop's UnreadEvent: %v", ev)
	}
	alice.waitReceipt("bob read", func(r *chatv1.ReceiptEvent) bool { return r.GetUserId() == "bob" && r.GetReadUpTo() == last })
	phone.waitUnread("C204", func(u *chatv1.UnreadEvent) bool {
		return u.GetChannelId() == dmCh && u.GetUnreadCount() == 0 && u.GetReadUpTo() == last && u.GetTotalUnread() == 0
	})
	for _, srv := range []string{"s1", "s2", "s3"} {
		if chs, resp := channelsOf(t, c, phone.u, srv); chs[dmCh].GetUnreadCount() != 0 || chs[dmCh].GetReadUpTo() != last || resp.GetTotalUnread() != 0 {
			t.Fatalf("bob's phone via %s after reading on the laptop: %v total %d", srv, chs[dmCh], resp.GetTotalUnread())
		}
	}
	cl, ctx := rpc(c, setup["alice"], "s3")
	rs, err := cl.GetReceipts(ctx, &chatv1.GetReceiptsRequest{ChannelId: dmCh})
	if err != nil || len(rs.GetReceipts()) != 2 || rs.GetReceipts()[1].GetReadUpTo() != last || rs.GetReceipts()[1].GetDeliveredUpTo() != last {
		t.Fatalf("GetReceipts: %v %v", rs, err)
	}

	// A group of 5 spread over the servers.
	g := createGroup(t, setup["alice"], "five", names[1:]...).channel
	dave := openConv(t, c, nil, "dave", "d-phone", "s1")
	gacks := []*chatv1.SendAck{
		alice.send(g, "", "g-0", "g 0"), alice.send(g, "", "g-1", "g 1"), alice.send(g, "", "g-2", "g 2"),
	}
	m1, m3 := gacks[0].GetMessageId(), gacks[2].GetMessageId()
	cl, ctx = rpc(c, setup["bob"], "s2")
	if _, err := cl.MarkRead(ctx, &chatv1.MarkReadRequest{ChannelId: g, MessageId: m1}); err != nil {
		t.Fatal(err)
	}
	cl, ctx = rpc(c, setup["carol"], "s3")
	if _, err := cl.MarkRead(ctx, &chatv1.MarkReadRequest{ChannelId: g}); err != nil {
		t.Fatal(err)
	}
	dd := dave.waitDeliveries(3)
	dave.ack(dd[2].GetInboxSeq())
	alice.waitReceipt("dave delivered", func(r *chatv1.ReceiptEvent) bool { return r.GetUserId() == "dave" && r.GetDeliveredUpTo() == m3 })
	alice.waitReceipt("carol read", func(r *chatv1.ReceiptEvent) bool { return r.GetUserId() == "carol" && r.GetReadUpTo() == m3 })
	cl, ctx = rpc(c, setup["erin"], "s2")
	rs, err = cl.GetReceipts(ctx, &chatv1.GetReceiptsRequest{ChannelId: g})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][2]uint64{"alice": {0, 0}, "bob": {m1, m1}, "carol": {m3, m3}, "dave": {m3, 0}, "erin": {0, 0}}
	for _, r := range rs.GetReceipts() {
		if [2]uint64{r.GetDeliveredUpTo(), r.GetReadUpTo()} != want[r.GetUserId()] {
			t.Errorf("group receipt %v, want %v", r, want[r.GetUserId()])
		}
	}
	wantUnread := map[string]uint32{"alice": 0, "bob": 2, "carol": 0, "dave": 3, "erin": 3}
	for i, n := range names {
		srv := []string{"s1", "s2", "s3"}[i%3]
		if chs, _ := channelsOf(t, c, setup[n], srv); chs[g].GetUnreadCount() != wantUnread[n] {
			t.Errorf("%s via %s: group unread %d, want %d", n, srv, chs[g].GetUnreadCount(), wantUnread[n])
		}
	}

	// Edit and deletes reach bob's laptop, offline meanwhile, through sync
	// on another server.
	lds := laptop.waitDeliveries(13) // the 10 direct messages and the 3 of the group
	laptop.ack(lds[12].GetInboxSeq())
	laptop.close()
	ed, err := alice.edit(dmCh, acks[0].GetMessageId(), "ed-0", "hello 0, edited")
	if err != nil {
		t.Fatal(err)
	}
	cl, ctx = rpc(c, setup["alice"], "s2")
	dl, err := cl.DeleteMessage(ctx, &chatv1.DeleteMessageRequest{ChannelId: dmCh, MessageId: acks[1].GetMessageId(), ClientMessageId: "del-1"})
	if err != nil {
		t.Fatal(err)
	}
	me, err := phone.del(dmCh, acks[2].GetMessageId(), "me-2", true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := phone.edit(dmCh, acks[3].GetMessageId(), "not-mine", "x"); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("bob edits alice's message: %v", err)
	}
	laptop = openConv(t, c, laptop.u, "bob", "b-laptop", "s1")
	got := map[uint64]*chatv1.Message{}
	for _, d := range laptop.waitDeliveries(0) {
		got[d.GetMessage().GetMessageId()] = d.GetMessage()
	}
	for _, w := range []struct {
		id   uint64
		kind chatv1.MessageKind
		ref  uint64
		user string
	}{
		{ed.GetMessageId(), chatv1.MessageKind_MESSAGE_KIND_EDIT, acks[0].GetMessageId(), ""},
		{dl.GetAck().GetMessageId(), chatv1.MessageKind_MESSAGE_KIND_DELETE, acks[1].GetMessageId(), ""},
		{me.GetMessageId(), chatv1.MessageKind_MESSAGE_KIND_DELETE, acks[2].GetMessageId(), "bob"},
	} {
		m := got[w.id]
		if m == nil || m.GetKind() != w.kind || m.GetRefMessageId() != w.ref || m.GetForUser() != w.user {
			t.Fatalf("laptop synced %v for row %d, want kind %v ref %d for_user %q", m, w.id, w.kind, w.ref, w.user)
		}
	}
	cl, ctx = rpc(c, setup["bob"], "s3")
	h, err := cl.GetHistory(ctx, &chatv1.GetHistoryRequest{ChannelId: dmCh, PageSize: 500})
	if err != nil {
		t.Fatal(err)
	}
	if len(h.GetMessages()) != 9 || h.GetMessages()[0].GetText() != "hello 0, edited" || !h.GetMessages()[0].GetEdited() ||
		!h.GetMessages()[1].GetDeleted() || h.GetMessages()[2].GetMessageId() != acks[3].GetMessageId() {
		t.Fatalf("bob's folded history: %v", h.GetMessages())
	}

	conversationMix(t, c, setup, g, 150)
}

// conversationMix runs n random operations (sends, reads, edits, deletes
// for everyone and for me) by alice, bob and carol from their devices on
// s1, s2 and s3, and checks every 50 operations that ListChannels on every
// server shows each user the unread counts of a model.
func conversationMix(t *testing.T, c *cluster, setup map[string]*user, group string, n int) {
	rng := rand.New(rand.NewPCG(42, 7))
	users := []string{"alice", "bob", "carol"}
	servers := []string{"s1", "s2", "s3"}
	devs := map[string][]*convDev{}
	for _, u := range users {
		for i, srv := range servers {
			devs[u] = append(devs[u], openConv(t, c, nil, u, fmt.Sprint(u, "-mix", i), srv))
		}
	}
	type msg struct {
		id       uint64
		sender   string
		deleted  bool
		hiddenBy map[string]bool
		edits    int
	}
	type chanState struct {
		members []string
		msgs    []*msg
		last    uint64
	}
	// Start from what the servers say (the scenario before left state).
	chans := map[string]*chanState{group: {members: []string{"alice", "bob", "carol", "dave", "erin"}}}
	read := map[string]map[string]uint64{}
	for _, u := range users {
		read[u] = map[string]uint64{}
		cl, ctx := rpc(c, setup[u], "s1")
		if _, err := cl.MarkRead(ctx, &chatv1.MarkReadRequest{ChannelId: group}); err != nil {
			t.Fatal(err)
		}
		rc, err := cl.GetReceipts(ctx, &chatv1.GetReceiptsRequest{ChannelId: group})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rc.GetReceipts() {
			if r.GetUserId() == u {
				read[u][group] = r.GetReadUpTo()
				chans[group].last = max(chans[group].last, r.GetReadUpTo())
			}
		}
	}
	unread := func(u, ch string) int {
		k := 0
		for _, m := range chans[ch].msgs {
			if m.id > read[u][ch] && m.sender != u && !m.deleted && !m.hiddenBy[u] {
				k++
			}
		}
		return k
	}
	check := func(step int) {
		t.Helper()
		for _, u := range users {
			for _, srv := range servers {
				chs, _ := channelsOf(t, c, setup[u], srv)
				if got, want := chs[group].GetUnreadCount(), unread(u, group); got != uint32(want) {
					t.Fatalf("step %d: %s via %s: group unread %d, model %d", step, u, srv, got, want)
				}
				if got := chs[group].GetReadUpTo(); got != read[u][group] {
					t.Fatalf("step %d: %s via %s: read_up_to %d, model %d", step, u, srv, got, read[u][group])
				}
			}
		}
	}
	cs := chans[group]
	for step := 1; step <= n; step++ {
		u := users[rng.IntN(len(users))]
		d := devs[u][rng.IntN(len(servers))]
		cmid := fmt.Sprint("mix-", step)
		switch r := rng.IntN(100); {
		case r < 45:
			ack := d.send(group, "", cmid, fmt.Sprint("mix ", step))
			cs.msgs = append(cs.msgs, &msg{id: ack.GetMessageId(), sender: u, hiddenBy: map[string]bool{}})
			cs.last = ack.GetMessageId()
		case r < 70:
			var to uint64
			if len(cs.msgs) > 0 && rng.IntN(3) > 0 {
				to = cs.msgs[rng.IntN(len(cs.msgs))].id
			}
			ev := d.markRead(group, to)
			if to == 0 {
				to = cs.last
			}
			read[u][group] = max(read[u][group], to)
			if ev.GetReadUpTo() != read[u][group] || ev.GetUnreadCount() != uint32(unread(u, group)) {
				t.Fatalf("step %d: %s MarkRead(%d): %v, model read %d unread %d", step, u, to, ev, read[u][group], unread(u, group))
			}
		case r < 80:
			i := slices.IndexFunc(cs.msgs, func(m *msg) bool { return m.sender == u && !m.deleted && !m.hiddenBy[u] && m.edits < 20 })
			if i < 0 {
				continue
			}
			ack, err := d.edit(group, cs.msgs[i].id, cmid, "edited")
			if err != nil {
				t.Fatalf("step %d: edit: %v", step, err)
			}
			cs.msgs[i].edits++
			cs.last = ack.GetMessageId()
		case r < 90:
			// alice owns the group: she deletes anyone's message.
			var cands []*msg
			for _, m := range cs.msgs {
				if !m.deleted && (m.sender == u || u == "alice") {
					cands = append(cands, m)
				}
			}
			if len(cands) == 0 {
				continue
			}
			m := cands[rng.IntN(len(cands))]
			ack, err := d.del(group, m.id, cmid, false)
			if err != nil {
				t.Fatalf("step %d: delete: %v", step, err)
			}
			m.deleted = true
			cs.last = ack.GetMessageId()
		default:
			var cands []*msg
			for _, m := range cs.msgs {
				if !m.deleted && !m.hiddenBy[u] {
					cands = append(cands, m)
				}
			}
			if len(cands) == 0 {
				continue
			}
			m := cands[rng.IntN(len(cands))]
			ack, err := d.del(group, m.id, cmid, true)
			if err != nil {
				t.Fatalf("step %d: delete for me: %v", step, err)
			}
			m.hiddenBy[u] = true
			cs.last = ack.GetMessageId()
		}
		if step%50 == 0 {
			check(step)
		}
	}
	check(n)
}
