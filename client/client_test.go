package client_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/chatd/chatd/client"
	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/chatd/chatd/server/app"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// These tests run the SDK against a whole chat server (server/app) on
// loopback with a pebble store in a temporary directory.

const password = "correct horse battery"

func startServer(t *testing.T, cfg app.Config) *app.App {
	t.Helper()
	cfg.GRPCAddr = "127.0.0.1:0"
	cfg.HTTPAddr = "127.0.0.1:0"
	cfg.DataDir = t.TempDir()
	cfg.Logger = slog.New(slog.DiscardHandler)
	a, err := app.New(cfg)
	if err != nil {
		t.Fatalf("app.New: %v", err)
	}
	a.Start()
	t.Cleanup(func() { a.Close() })
	return a
}

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// newUser signs up and logs in a user on its own client.
func newUser(t *testing.T, ctx context.Context, addr, name string, opts ...client.Option) *client.Client {
	t.Helper()
	c, err := client.Dial(addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.SignUp(ctx, name, password, strings.ToUpper(name)); err != nil {
		t.Fatalf("SignUp(%s): %v", name, err)
	}
	if _, err := c.LogIn(ctx, name, password, name+"-device"); err != nil {
		t.Fatalf("LogIn(%s): %v", name, err)
	}
	return c
}

// aliceAndBob starts a server and returns a test context and the logged-in
// clients of alice and bob.
func aliceAndBob(t *testing.T) (context.Context, *client.Client, *client.Client) {
	t.Helper()
	a := startServer(t, app.Config{})
	ctx := testContext(t)
	return ctx, newUser(t, ctx, a.GRPCAddr(), "alice"), newUser(t, ctx, a.GRPCAddr(), "bob")
}

func connect(t *testing.T, ctx context.Context, c *client.Client, opts ...client.SessionOption) *client.Session {
	t.Helper()
	s, err := c.Connect(ctx, opts...)
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// next returns the next live delivery or fails the test.
func next(t *testing.T, ctx context.Context, s *client.Session) *chatv1.Delivery {
	t.Helper()
	select {
	case d, ok := <-s.Deliveries():
		if !ok {
			t.Fatalf("session ended: %v", s.Err())
		}
		return d
	case <-ctx.Done():
		t.Fatalf("no delivery: %v", ctx.Err())
	}
	return nil
}

func TestLogInAuthenticatesCalls(t *testing.T) {
	a := startServer(t, app.Config{})
	ctx := testContext(t)
	c, err := client.Dial(a.GRPCAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	if _, err := c.Account().ListDevices(ctx, &chatv1.ListDevicesRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("ListDevices without token: %v, want Unauthenticated", err)
	}
	if _, err := c.Connect(ctx); status.Code(err) != codes.Unauthenticated || !errors.Is(err, client.ErrNoToken) {
		t.Fatalf("Connect without token: %v, want ErrNoToken", err)
	}
	if _, err := c.SignUp(ctx, "alice", password, "Alice"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.SignUp(ctx, "alice", password, "Alice"); status.Code(err) != codes.AlreadyExists {
		t.Fatalf("second SignUp: %v, want AlreadyExists", err)
	}
	if _, err := c.LogIn(ctx, "alice", "wrong password", "laptop"); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("LogIn with a wrong password: %v, want Unauthenticated", err)
	}
	if c.Token() != "" {
		t.Fatal("a failed LogIn stored a token")
	}
	resp, err := c.LogIn(ctx, "alice", password, "laptop")
	if err != nil {
		t.Fatal(err)
	}
	if c.Token() == "" || c.Token() != resp.GetAccessToken() {
		t.Fatal("LogIn did not store the token")
	}
	devs, err := c.Account().ListDevices(ctx, &chatv1.ListDevicesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(devs.GetDevices()) != 1 || devs.GetDevices()[0].GetDeviceId() != resp.GetDeviceId() || !devs.GetDevices()[0].GetCurrent() {
		t.Fatalf("devices = %v, want the one logged-in device %s", devs.GetDevices(), resp.GetDeviceId())
	}

	s := connect(t, ctx, c)
	w := s.Welcome()
	if w.GetUserId() != "alice" || w.GetDeviceId() != resp.GetDeviceId() || w.GetServerId() != a.ServerID() {
		t.Fatalf("Welcome = %v", w)
	}
	if _, err := s.Heartbeat(ctx); err != nil {
		t.Fatalf("Heartbeat: %v", err)
	}

	c.SetToken("not-a-token")
	if _, err := c.Connect(ctx); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("Connect with a bad token: %v, want Unauthenticated", err)
	}
}

func TestLiveDeliveryAndIdempotentSend(t *testing.T) {
	ctx, alice, bob := aliceAndBob(t)
	as := connect(t, ctx, alice)
	bs := connect(t, ctx, bob)
	if as.Behind() || bs.Behind() {
		t.Fatal("new devices are behind")
	}

	ack, err := as.Send(ctx, client.SendParams{ToUser: "bob", Text: "hello bob", ClientMessageID: "m-1"})
	if err != nil {
		t.Fatal(err)
	}
	if ack.GetChannelId() != client.DirectChannelID("alice", "bob") || ack.GetMessageId() == 0 || ack.GetDuplicate() {
		t.Fatalf("ack = %v", ack)
	}

	d := next(t, ctx, bs)
	m := d.GetMessage()
	if d.GetInboxSeq() != 1 || m.GetText() != "hello bob" || m.GetSenderId() != "alice" ||
		m.GetChannelId() != ack.GetChannelId() || m.GetMessageId() != ack.GetMessageId() {
		t.Fatalf("bob got %v", d)
	}
	// The sender's device receives its own message too, with its key.
	own := next(t, ctx, as)
	if own.GetMessage().GetClientMessageId() != "m-1" || own.GetMessage().GetMessageId() != ack.GetMessageId() {
		t.Fatalf("alice's own delivery = %v", own)
	}

	// A resend with the same key returns the original ack and delivers
	// nothing: bob's next delivery is the next message.
	dup, err := as.Send(ctx, client.SendParams{ChannelID: ack.GetChannelId(), Text: "hello bob", ClientMessageID: "m-1"})
	if err != nil {
		t.Fatal(err)
	}
	if !dup.GetDuplicate() || dup.GetMessageId() != ack.GetMessageId() {
		t.Fatalf("resend ack = %v, want duplicate of %d", dup, ack.GetMessageId())
	}
	if _, err := as.Send(ctx, client.SendParams{ChannelID: ack.GetChannelId(), Text: "second"}); err != nil {
		t.Fatal(err)
	}
	if d := next(t, ctx, bs); d.GetInboxSeq() != 2 || d.GetMessage().GetText() != "second" {
		t.Fatalf("bob's second delivery = %v", d)
	}
	if bs.LastSeq() != 2 {
		t.Fatalf("LastSeq = %d, want 2", bs.LastSeq())
	}
}

func TestSyncAllAckAndResume(t *testing.T) {
	ctx, alice, bob := aliceAndBob(t)
	as := connect(t, ctx, alice)
	for i := 1; i <= 5; i++ {
		if _, err := as.Send(ctx, client.SendParams{ToUser: "bob", Text: fmt.Sprint("offline ", i)}); err != nil {
			t.Fatal(err)
		}
	}

	bs := connect(t, ctx, bob)
	if w := bs.Welcome(); w.GetCursor() != 0 || w.GetHeadSeq() != 5 || !bs.Behind() {
		t.Fatalf("Welcome = %v, want cursor 0, head 5", w)
	}
	// A callback error stops SyncAll; that delivery is offered again later.
	var got []uint64
	boom := errors.New("disk full")
	last, err := bs.SyncAll(ctx, 2, func(d *chatv1.Delivery) error {
		if d.GetInboxSeq() == 3 {
			return boom
		}
		got = append(got, d.GetInboxSeq())
		return nil
	})
	if !errors.Is(err, boom) || last != 2 {
		t.Fatalf("SyncAll = %d, %v; want 2, %v", last, err, boom)
	}
	last, err = bs.SyncAll(ctx, 2, func(d *chatv1.Delivery) error {
		if want := fmt.Sprint("offline ", d.GetInboxSeq()); d.GetMessage().GetText() != want {
			t.Errorf("seq %d text %q, want %q", d.GetInboxSeq(), d.GetMessage().GetText(), want)
		}
		got = append(got, d.GetInboxSeq())
		return nil
	})
	if err != nil || last != 5 {
		t.Fatalf("SyncAll = %d, %v; want 5", last, err)
	}
	if fmt.Sprint(got) != "[1 2 3 4 5]" {
		t.Fatalf("synced seqs %v, want [1 2 3 4 5]", got)
	}
	cur, err := bs.Ack(ctx, last)
	if err != nil || cur != 5 || bs.Cursor() != 5 {
		t.Fatalf("Ack(5) = %d, %v; Cursor %d", cur, err, bs.Cursor())
	}

	// Synced: the next message arrives live.
	if _, err := as.Send(ctx, client.SendParams{ToUser: "bob", Text: "live"}); err != nil {
		t.Fatal(err)
	}
	if d := next(t, ctx, bs); d.GetInboxSeq() != 6 || d.GetMessage().GetText() != "live" {
		t.Fatalf("live delivery = %v", d)
	}
	bs.Close()
	if !errors.Is(bs.Err(), client.ErrClosed) {
		t.Fatalf("Err after Close = %v", bs.Err())
	}
	if _, err := bs.Send(ctx, client.SendParams{ToUser: "alice", Text: "x"}); !errors.Is(err, client.ErrClosed) {
		t.Fatalf("Send after Close = %v, want ErrClosed", err)
	}

	// The server kept the acked cursor (5): seq 6 comes again on sync.
	bs2 := connect(t, ctx, bob)
	if w := bs2.Welcome(); w.GetCursor() != 5 || w.GetHeadSeq() != 6 {
		t.Fatalf("second Welcome = %v, want cursor 5, head 6", w)
	}
	var again []string
	if _, err := bs2.SyncAll(ctx, 0, func(d *chatv1.Delivery) error {
		again = append(again, d.GetMessage().GetText())
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(again) != 1 || again[0] != "live" {
		t.Fatalf("second sync got %q, want [live]", again)
	}
}

func TestFrameErrorsKeepTheStreamOpen(t *testing.T) {
	a := startServer(t, app.Config{})
	ctx := testContext(t)
	alice := newUser(t, ctx, a.GRPCAddr(), "alice")
	as := connect(t, ctx, alice)

	if _, err := as.Send(ctx, client.SendParams{ToUser: "nobody", Text: "hi"}); status.Code(err) != codes.NotFound {
		t.Errorf("send to an unknown user: %v, want NotFound", err)
	}
	if _, err := as.Send(ctx, client.SendParams{ToUser: "alice", Text: "   "}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("send of blank text: %v, want InvalidArgument", err)
	}
	if _, err := as.Send(ctx, client.SendParams{ChannelID: "g:does-not-exist", Text: "hi"}); status.Code(err) != codes.NotFound {
		t.Errorf("send to an unknown group: %v, want NotFound", err)
	}
	if _, err := as.Sync(ctx, 0, 5000); status.Code(err) != codes.InvalidArgument {
		t.Errorf("sync with limit 5000: %v, want InvalidArgument", err)
	}
	if _, err := as.Heartbeat(ctx); err != nil {
		t.Fatalf("stream unusable after frame errors: %v", err)
	}
	if as.Err() != nil {
		t.Fatalf("session ended: %v", as.Err())
	}
}

func TestTypingEvents(t *testing.T) {
	ctx, alice, bob := aliceAndBob(t)
	as := connect(t, ctx, alice)
	bs := connect(t, ctx, bob)
	ack, err := as.Send(ctx, client.SendParams{ToUser: "bob", Text: "hi"})
	if err != nil {
		t.Fatal(err)
	}
	if err := bs.Typing(ctx, ack.GetChannelId()); err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-as.TypingEvents():
		if ev.GetUserId() != "bob" || ev.GetChannelId() != ack.GetChannelId() {
			t.Fatalf("typing event = %v", ev)
		}
	case <-ctx.Done():
		t.Fatal("no typing event")
	}
}

func TestPipelinedSendsArriveInOrder(t *testing.T) {
	ctx, alice, bob := aliceAndBob(t)
	as := connect(t, ctx, alice)

	const n = 150
	pending := make([]*client.PendingSend, n)
	for i := range pending {
		p, err := as.SendAsync(ctx, client.SendParams{ToUser: "bob", Text: fmt.Sprint("msg ", i)})
		if err != nil {
			t.Fatal(err)
		}
		pending[i] = p
	}
	var prev uint64
	for i, p := range pending {
		ack, err := p.Wait(ctx)
		if err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
		if ack.GetClientMessageId() != p.ClientMessageID() || ack.GetMessageId() <= prev {
			t.Fatalf("ack %d = %v (previous message_id %d)", i, ack, prev)
		}
		prev = ack.GetMessageId()
	}

	bs := connect(t, ctx, bob)
	i := 0
	last, err := bs.SyncAll(ctx, 40, func(d *chatv1.Delivery) error {
		if d.GetInboxSeq() != uint64(i+1) || d.GetMessage().GetText() != fmt.Sprint("msg ", i) {
			return fmt.Errorf("delivery %d = %v", i, d)
		}
		i++
		return nil
	})
	if err != nil || last != n || i != n {
		t.Fatalf("SyncAll = %d, %v after %d deliveries; want %d", last, err, i, n)
	}
}

func TestGroupMessages(t *testing.T) {
	a := startServer(t, app.Config{})
	ctx := testContext(t)
	alice := newUser(t, ctx, a.GRPCAddr(), "alice")
	bob := newUser(t, ctx, a.GRPCAddr(), "bob")
	carol := newUser(t, ctx, a.GRPCAddr(), "carol")
	resp, err := alice.Chat().CreateGroup(ctx, &chatv1.CreateGroupRequest{Name: "team", MemberIds: []string{"bob", "carol"}})
	if err != nil {
		t.Fatal(err)
	}
	gid := resp.GetChannel().GetChannelId()
	if !strings.HasPrefix(gid, "g:") {
		t.Fatalf("group id %q", gid)
	}
	bs := connect(t, ctx, bob)
	cs := connect(t, ctx, carol)
	// Group creation may have put SYSTEM messages in the inboxes: catch up.
	for _, s := range []*client.Session{bs, cs} {
		if _, err := s.SyncAll(ctx, 0, func(*chatv1.Delivery) error { return nil }); err != nil {
			t.Fatal(err)
		}
	}
	as := connect(t, ctx, alice)
	if _, err := as.Send(ctx, client.SendParams{ChannelID: gid, Text: "standup"}); err != nil {
		t.Fatal(err)
	}
	for _, s := range []*client.Session{bs, cs} {
		d := next(t, ctx, s)
		if d.GetMessage().GetChannelId() != gid || d.GetMessage().GetText() != "standup" {
			t.Fatalf("%s got %v", s.Welcome().GetUserId(), d)
		}
	}
}

func TestAutoAckAdvancesCursor(t *testing.T) {
	ctx, alice, bob := aliceAndBob(t)
	as := connect(t, ctx, alice)
	bs := connect(t, ctx, bob, client.WithAutoAck(0))
	for i := range 3 {
		if _, err := as.Send(ctx, client.SendParams{ToUser: "bob", Text: fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
	}
	for range 3 {
		next(t, ctx, bs)
	}
	// The background acker confirms seq 3 without any Ack call.
	for bs.Cursor() != 3 {
		select {
		case <-ctx.Done():
			t.Fatalf("cursor stayed at %d, want 3", bs.Cursor())
		case <-time.After(10 * time.Millisecond):
		}
	}
	devs, err := bob.Account().ListDevices(ctx, &chatv1.ListDevicesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if c := devs.GetDevices()[0].GetCursor(); c != 3 {
		t.Fatalf("stored cursor %d, want 3", c)
	}
}

// WithAutoAck(interval) acks without asking for a reply; an ack the
// server refuses (here: the frame rate limit, after a burst of typing
// frames) is sent again, so the cursor still reaches the last delivery
// (found by the tryout: a refused no-reply ack was never retried when no
// later delivery came).
func TestAutoAckIntervalRetriesRefusedAck(t *testing.T) {
	a := startServer(t, app.Config{FrameRate: 20, FrameBurst: 10})
	ctx := testContext(t)
	alice, bob := newUser(t, ctx, a.GRPCAddr(), "alice"), newUser(t, ctx, a.GRPCAddr(), "bob")
	as := connect(t, ctx, alice)
	bs := connect(t, ctx, bob, client.WithAutoAck(100*time.Millisecond))
	stored := func() uint64 {
		devs, err := bob.Account().ListDevices(ctx, &chatv1.ListDevicesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		return devs.GetDevices()[0].GetCursor()
	}
	waitStored := func(want uint64) {
		t.Helper()
		for stored() != want {
			select {
			case <-ctx.Done():
				t.Fatalf("stored cursor %d, want %d", stored(), want)
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	if _, err := as.Send(ctx, client.SendParams{ToUser: "bob", Text: "one"}); err != nil {
		t.Fatal(err)
	}
	ch := next(t, ctx, bs).GetMessage().GetChannelId()
	waitStored(1)
	time.Sleep(200 * time.Millisecond) // past the acker's interval
	// Use up bob's frame budget, then a delivery: its ack is refused.
	for range 30 {
		if err := bs.Typing(ctx, ch); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := as.Send(ctx, client.SendParams{ToUser: "bob", Text: "two"}); err != nil {
		t.Fatal(err)
	}
	next(t, ctx, bs)
	waitStored(2)
}

func TestLogOutEndsStreamUnauthenticated(t *testing.T) {
	a := startServer(t, app.Config{})
	ctx := testContext(t)
	alice := newUser(t, ctx, a.GRPCAddr(), "alice")
	as := connect(t, ctx, alice)
	if err := alice.LogOut(ctx); err != nil {
		t.Fatal(err)
	}
	if alice.Token() != "" {
		t.Fatal("LogOut kept the token")
	}
	select {
	case <-as.Done():
	case <-ctx.Done():
		t.Fatal("stream still open after LogOut")
	}
	if status.Code(as.Err()) != codes.Unauthenticated {
		t.Fatalf("Err = %v, want Unauthenticated", as.Err())
	}
}

func TestServerShutdownEndsStreamUnavailable(t *testing.T) {
	a := startServer(t, app.Config{})
	ctx := testContext(t)
	alice := newUser(t, ctx, a.GRPCAddr(), "alice")
	as := connect(t, ctx, alice)
	go a.Close()
	select {
	case <-as.Done():
	case <-ctx.Done():
		t.Fatal("stream still open after server shutdown")
	}
	if status.Code(as.Err()) != codes.Unavailable {
		t.Fatalf("Err = %v, want Unavailable", as.Err())
	}
	if _, ok := <-as.Deliveries(); ok {
		t.Fatal("Deliveries not closed")
	}
}

// A device that reads too slowly is disconnected with ResourceExhausted (its
// server-side queue overflows) and recovers everything by sync.
func TestSlowConsumerIsDisconnectedAndRecoversBySync(t *testing.T) {
	a := startServer(t, app.Config{SendQueue: 16, FrameRate: 1e6, FrameBurst: 1 << 20})
	ctx := testContext(t)
	alice := newUser(t, ctx, a.GRPCAddr(), "alice")
	// Fixed 64 KiB flow-control windows (no BDP growth): the server can only
	// have a few 16 KiB frames in flight to bob before its queue fills.
	bob := newUser(t, ctx, a.GRPCAddr(), "bob", client.WithDialOptions(
		grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10)))
	as := connect(t, ctx, alice, client.WithDeliveryBuffer(4096))
	bs := connect(t, ctx, bob, client.WithDeliveryBuffer(1))

	// Alice sends one message at a time (her own stream carries a SendAck
	// and her own copy of each message, and its queue is small too).
	text := strings.Repeat("x", 16<<10)
	const n = 200
	for i := range n {
		if _, err := as.Send(ctx, client.SendParams{ToUser: "bob", Text: fmt.Sprint(i+1, text)}); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
		select {
		case <-as.Deliveries():
		case <-ctx.Done():
			t.Fatal("alice did not get her own message")
		}
	}
	// Bob only now starts reading: what the server managed to push before
	// it gave up, then the end of the stream.
	got := 0
	for range bs.Deliveries() {
		got++
	}
	if status.Code(bs.Err()) != codes.ResourceExhausted {
		t.Fatalf("Err = %v after %d deliveries, want ResourceExhausted", bs.Err(), got)
	}
	if client.IsEvicted(bs.Err()) || client.Reason(bs.Err()) != client.ReasonSlowConsumer {
		t.Fatalf("an overflow reads as an eviction: reason %q", client.Reason(bs.Err()))
	}
	if got >= n || bs.LastSeq() != uint64(got) {
		t.Fatalf("got %d live deliveries, LastSeq %d; want fewer than %d, equal", got, bs.LastSeq(), n)
	}

	bs2 := connect(t, ctx, bob, client.WithResumeAfter(bs.LastSeq()))
	next := uint64(got + 1)
	last, err := bs2.SyncAll(ctx, 0, func(d *chatv1.Delivery) error {
		if d.GetInboxSeq() != next || !strings.HasPrefix(d.GetMessage().GetText(), fmt.Sprint(next, "x")) {
			return fmt.Errorf("seq %d has text %.10q..., want seq %d", d.GetInboxSeq(), d.GetMessage().GetText(), next)
		}
		next++
		return nil
	})
	if err != nil || last != n {
		t.Fatalf("SyncAll after reconnect = %d, %v; want %d", last, err, n)
	}
}

// TestSendInvalidUTF8: a field that is not valid UTF-8 is refused before
// it reaches the stream (InvalidArgument naming the field), and the
// session keeps working.
func TestSendInvalidUTF8(t *testing.T) {
	a := startServer(t, app.Config{})
	ctx := testContext(t)
	alice := newUser(t, ctx, a.GRPCAddr(), "alice")
	newUser(t, ctx, a.GRPCAddr(), "bob")
	as := connect(t, ctx, alice)
	for _, p := range []client.SendParams{
		{ToUser: "bob", Text: "bad\xffutf8"},
		{ToUser: "b\xffob", Text: "hi"},
		{ToUser: "bob", Text: "hi", ClientMessageID: "\xfe"},
	} {
		_, err := as.Send(ctx, p)
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "not valid UTF-8") {
			t.Fatalf("Send(%q) = %v, want InvalidArgument naming invalid UTF-8", p, err)
		}
	}
	ack, err := as.Send(ctx, client.SendParams{ToUser: "bob", Text: "still fine"})
	if err != nil {
		t.Fatalf("send after the refused ones: %v", err)
	}
	// Every other frame and unary call: the field is named, the session
	// stays up.
	want := func(what, field string, err error) {
		t.Helper()
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), field+" is not valid UTF-8") {
			t.Fatalf("%s = %v, want InvalidArgument naming %s", what, err, field)
		}
	}
	_, err = as.Edit(ctx, client.EditParams{ChannelID: ack.GetChannelId(), MessageID: ack.GetMessageId(), Text: "e\xff"})
	want("Edit", "chat.v1.EditMessage.text", err)
	_, err = as.MarkRead(ctx, "dm:\xff", 1)
	want("MarkRead", "channel_id", err)
	want("Typing", "chat.v1.Typing.channel_id", as.Typing(ctx, "dm:\xff"))
	_, err = alice.Chat().CreateGroup(ctx, &chatv1.CreateGroupRequest{Name: "g\xff"})
	want("CreateGroup", "chat.v1.CreateGroupRequest.name", err)
	if as.Err() != nil {
		t.Fatalf("session ended: %v", as.Err())
	}
	if _, err := as.Send(ctx, client.SendParams{ToUser: "bob", Text: "and still fine"}); err != nil {
		t.Fatalf("send after the refused frames: %v", err)
	}
}

// TestEvictedStreamIsDistinguishable: past the server's per-device bound
// of streams, the oldest ends with ResourceExhausted carrying the reason
// STREAM_REPLACED, which IsEvicted recognises (an overflow, also
// ResourceExhausted, is not an eviction: see the slow consumer test).
func TestEvictedStreamIsDistinguishable(t *testing.T) {
	a := startServer(t, app.Config{MaxStreamsPerDevice: 2})
	ctx := testContext(t)
	alice := newUser(t, ctx, a.GRPCAddr(), "alice")
	oldest := connect(t, ctx, alice)
	second := connect(t, ctx, alice)
	_ = connect(t, ctx, alice)
	select {
	case <-oldest.Done():
	case <-ctx.Done():
		t.Fatal("oldest stream still open past the bound")
	}
	err := oldest.Err()
	if status.Code(err) != codes.ResourceExhausted || !client.IsEvicted(err) || client.Reason(err) != client.ReasonStreamReplaced {
		t.Fatalf("Err = %v (reason %q), want ResourceExhausted with reason %s", err, client.Reason(err), client.ReasonStreamReplaced)
	}
	select {
	case <-second.Done():
		t.Fatalf("a stream within the bound ended: %v", second.Err())
	default:
	}
}
