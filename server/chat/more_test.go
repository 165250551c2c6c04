package chat

import (
	"errors"
	"github.com/chatd/chatd/server/hub"
	"github.com/chatd/chatd/server/router/local"

	"context"
	"fmt"
	"github.com/chatd/chatd/server/grpcerr"
	"github.com/chatd/chatd/server/store"
	"google.golang.org/grpc/status"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/chatd/chatd/server/router"
)

// clock is a test clock: the real time plus an adjustable offset.
type clock struct{ offset atomic.Int64 }

func (c *clock) now() time.Time          { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *clock) advance(d time.Duration) { c.offset.Add(int64(d)) }

// TestGapFilledFromStore: routed deliveries that get lost are recovered
// from the store by the writer, so the device still sees every seq once and
// in order.
func TestGapFilledFromStore(t *testing.T) {
	e := newEnv(t, envConfig{drop: func(ev router.Event) bool {
		q := ev.Frame.GetDelivery().GetInboxSeq()
		return ev.UserID == "bob" && q%3 != 1 // lose two of every three
	}})
	e.users("alice", "bob")
	a, b := e.open("alice", "a1"), e.open("bob", "b1")
	const n = 31 // the last one (31 % 3 == 1) is routed
	for i := range n {
		a.sendTo("bob", fmt.Sprint(i), fmt.Sprint(i))
	}
	a.ackOf(n)
	for i, dl := range b.deliveries(n) {
		if dl.GetInboxSeq() != uint64(i+1) || dl.GetMessage().GetText() != fmt.Sprint(i) {
			t.Fatalf("delivery %d: %v", i, dl)
		}
	}
	b.quiet()
}

// TestTokenExpiryOnFrame: an expired token ends an open stream at its next
// frame.
func TestTokenExpiryOnFrame(t *testing.T) {
	var c clock
	e := newEnv(t, envConfig{authNow: c.now})
	e.users("alice")
	a := e.open("alice", "a1")
	a.reply(a.heartbeat())
	c.advance(31 * 24 * time.Hour)
	a.heartbeat()
	if st := a.ended(); st.Code() != codes.Unauthenticated {
		t.Fatalf("after expiry: %v", st)
	}
}

// TestTyping: a typing frame reaches the other members' devices and the
// sender's other devices, not the sending device; repeats within 2 s are
// dropped.
func TestTyping(t *testing.T) {
	var c clock
	e := newEnv(t, envConfig{now: c.now})
	e.users("alice", "bob", "carol")
	g := e.group("alice", "bob", "carol")
	a1, a2 := e.open("alice", "a1"), e.open("alice", "a2")
	b, cr := e.open("bob", "b1"), e.open("carol", "c1")
	typing := func() {
		a1.sendFrame(&chatv1.ClientFrame{FrameId: a1.frameID(), Payload: &chatv1.ClientFrame_Typing{Typing: &chatv1.Typing{ChannelId: g}}})
	}
	start := c.now()
	typing()
	typing() // within 2 s: dropped
	for _, d := range []*dev{a2, b, cr} {
		f := d.next()
		te := f.GetTyping()
		if te == nil || te.GetChannelId() != g || te.GetUserId() != "alice" {
			t.Fatalf("%s/%s got %v", d.user, d.device, f)
		}
		if exp := te.GetExpiresAt().AsTime(); exp.Before(start.Add(TypingTTL-time.Second)) || exp.After(start.Add(TypingTTL+time.Minute)) {
			t.Fatalf("expires_at %v", exp)
		}
	}
	checkNoTyping := func(d *dev) {
		t.Helper()
		d.reply(d.heartbeat())
		for _, f := range d.pending {
			if f.GetTyping() != nil {
				t.Fatalf("%s/%s: extra typing event", d.user, d.device)
			}
		}
	}
	a1.reply(a1.heartbeat()) // the second typing frame has been processed
	for _, d := range []*dev{a1, a2, b, cr} {
		checkNoTyping(d)
	}
	c.advance(3 * time.Second)
	typing()
	if f := b.next(); f.GetTyping() == nil {
		t.Fatalf("after 3 s: %v", f)
	}
	// Typing is never stored.
	if h, _ := e.st.LastInboxSeq(context.Background(), "bob"); h != 0 {
		t.Fatalf("bob's inbox head %d", h)
	}
}

func TestCreateGroupValidation(t *testing.T) {
	e := newEnv(t, envConfig{})
	e.users("alice", "bob", "carol")
	ctx := e.ctx("alice", "a1")
	for _, c := range []struct {
		req  *chatv1.CreateGroupRequest
		code codes.Code
		msg  string
	}{
		{&chatv1.CreateGroupRequest{Name: ""}, codes.InvalidArgument, "group name"},
		{&chatv1.CreateGroupRequest{Name: "   \u200b"}, codes.InvalidArgument, "group name"},
		{&chatv1.CreateGroupRequest{Name: strings.Repeat("é", 101)}, codes.InvalidArgument, "group name"},
		{&chatv1.CreateGroupRequest{Name: "a\x07b"}, codes.InvalidArgument, "group name"},
		{&chatv1.CreateGroupRequest{Name: "ok", MemberIds: []string{"no way"}}, codes.InvalidArgument, "no way"},
		{&chatv1.CreateGroupRequest{Name: "ok", MemberIds: []string{"bob", "ghost"}}, codes.NotFound, "ghost"},
	} {
		_, err := e.client.CreateGroup(ctx, c.req)
		if statusCode(err) != c.code || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("CreateGroup(%v): %v, want %v mentioning %q", c.req, err, c.code, c.msg)
		}
	}
	resp, err := e.client.CreateGroup(ctx, &chatv1.CreateGroupRequest{Name: strings.Repeat("é", 100), MemberIds: []string{"Bob", "bob", "ALICE", "carol"}})
	if err != nil {
		t.Fatal(err)
	}
	ch := resp.GetChannel()
	if !strings.HasPrefix(ch.GetChannelId(), "g:") || len(ch.GetChannelId()) != 34 || ch.GetType() != chatv1.ChannelType_CHANNEL_TYPE_GROUP {
		t.Fatalf("channel %v", ch)
	}
	roles := map[string]chatv1.MemberRole{}
	for _, m := range ch.GetMembers() {
		roles[m.GetUserId()] = m.GetRole()
	}
	if len(roles) != 3 || roles["alice"] != chatv1.MemberRole_MEMBER_ROLE_OWNER || roles["bob"] != chatv1.MemberRole_MEMBER_ROLE_MEMBER {
		t.Fatalf("members %v", roles)
	}
	if _, err := e.client.CreateGroup(context.Background(), &chatv1.CreateGroupRequest{Name: "x"}); statusCode(err) != codes.Unauthenticated {
		t.Fatalf("without token: %v", err)
	}
}

func TestMembership(t *testing.T) {
	e := newEnv(t, envConfig{})
	e.users("owner", "admin", "member", "newbie", "other")
	g := e.group("owner", "member")
	own, adm, mem := e.ctx("owner", "d"), e.ctx("admin", "d"), e.ctx("member", "d")
	if _, err := e.client.AddMember(own, &chatv1.AddMemberRequest{ChannelId: g, UserId: "admin", Role: chatv1.MemberRole_MEMBER_ROLE_ADMIN}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.AddMember(adm, &chatv1.AddMemberRequest{ChannelId: g, UserId: "owner", Role: chatv1.MemberRole_MEMBER_ROLE_MEMBER}); err != nil {
		t.Fatal(err) // no-op: the owner keeps its role
	}
	if m, _ := e.st.GetMember(context.Background(), g, "owner"); m.Role != 3 {
		t.Fatalf("owner demoted to %d", m.Role)
	}
	for _, c := range []struct {
		ctx  context.Context
		req  *chatv1.AddMemberRequest
		code codes.Code
	}{
		{adm, &chatv1.AddMemberRequest{ChannelId: g, UserId: "ghost"}, codes.NotFound},
		{adm, &chatv1.AddMemberRequest{ChannelId: g, UserId: "newbie", Role: chatv1.MemberRole_MEMBER_ROLE_OWNER}, codes.InvalidArgument},
		{adm, &chatv1.AddMemberRequest{ChannelId: "g:missing", UserId: "newbie"}, codes.NotFound},
		{mem, &chatv1.AddMemberRequest{ChannelId: g, UserId: "newbie"}, codes.PermissionDenied},
		{adm, &chatv1.AddMemberRequest{ChannelId: g, UserId: ""}, codes.InvalidArgument},
	} {
		if _, err := e.client.AddMember(c.ctx, c.req); statusCode(err) != c.code {
			t.Errorf("AddMember(%v): %v, want %v", c.req, err, c.code)
		}
	}
	resp, err := e.client.AddMember(adm, &chatv1.AddMemberRequest{ChannelId: g, UserId: "newbie"})
	if err != nil || len(resp.GetChannel().GetMembers()) != 4 {
		t.Fatalf("admin adds: %v %v", resp, err)
	}
	// Direct channels are fixed.
	a := e.open("owner", "d")
	a.ackOf(a.sendTo("other", "1", "hi"))
	if _, err := e.client.AddMember(own, &chatv1.AddMemberRequest{ChannelId: "dm:other:owner", UserId: "newbie"}); statusCode(err) != codes.FailedPrecondition {
		t.Fatalf("add to direct: %v", err)
	}
	// Removal rules.
	for _, c := range []struct {
		ctx  context.Context
		user string
		code codes.Code
	}{
		{mem, "newbie", codes.PermissionDenied},
		{adm, "owner", codes.PermissionDenied},
		{adm, "other", codes.NotFound},
		{adm, "newbie", codes.OK},
		{mem, "member", codes.OK}, // leaving
		{mem, "member", codes.PermissionDenied},
	} {
		if _, err := e.client.RemoveMember(c.ctx, &chatv1.RemoveMemberRequest{ChannelId: g, UserId: c.user}); statusCode(err) != c.code {
			t.Errorf("RemoveMember(%s): %v, want %v", c.user, err, c.code)
		}
	}
	ms, _ := e.st.ListMembers(context.Background(), g)
	if len(ms) != 2 {
		t.Fatalf("members left: %v", ms)
	}
	// A removed member no longer receives the group's messages, nor may
	// it send.
	m, ad := e.open("member", "d"), e.open("admin", "d")
	a.ackOf(a.sendIn(g, "2", "members only"))
	if dl := ad.deliveries(1)[0]; dl.GetMessage().GetText() != "members only" {
		t.Fatalf("admin got %v", dl)
	}
	m.quiet()
	m.errOf(m.sendIn(g, "3", "x"), codes.PermissionDenied)
}

func TestChannelsAndHistory(t *testing.T) {
	e := newEnv(t, envConfig{})
	e.users("alice", "bob", "carol")
	a := e.open("alice", "a1")
	g := e.group("alice", "bob")
	var ids []uint64
	for i := range 7 {
		ids = append(ids, a.ackOf(a.sendIn(g, fmt.Sprint("g", i), fmt.Sprint("g", i))).GetMessageId())
	}
	time.Sleep(3 * time.Millisecond) // a later server millisecond: activity order is by time
	dmAck := a.ackOf(a.sendTo("carol", "d0", "to carol"))
	ctx := e.ctx("alice", "a1")

	// ListChannels: most recent first, paged.
	r1, err := e.client.ListChannels(ctx, &chatv1.ListChannelsRequest{PageSize: 1})
	if err != nil || len(r1.GetChannels()) != 1 || r1.GetNextPageToken() == "" {
		t.Fatalf("page 1: %v %v", r1, err)
	}
	dm := r1.GetChannels()[0]
	if dm.GetChannelId() != "dm:alice:carol" || dm.GetName() != "carol" || dm.GetType() != chatv1.ChannelType_CHANNEL_TYPE_DIRECT ||
		dm.GetLastMessageId() != dmAck.GetMessageId() || dm.GetLastActivityAt() == nil || len(dm.GetMembers()) != 2 {
		t.Fatalf("direct channel %v", dm)
	}
	r2, err := e.client.ListChannels(ctx, &chatv1.ListChannelsRequest{PageSize: 1, PageToken: r1.GetNextPageToken()})
	if err != nil || len(r2.GetChannels()) != 1 || r2.GetChannels()[0].GetChannelId() != g || r2.GetChannels()[0].GetLastMessageId() != ids[6] {
		t.Fatalf("page 2: %v %v", r2, err)
	}
	if r2.GetNextPageToken() != "" {
		r3, err := e.client.ListChannels(ctx, &chatv1.ListChannelsRequest{PageSize: 1, PageToken: r2.GetNextPageToken()})
		if err != nil || len(r3.GetChannels()) != 0 || r3.GetNextPageToken() != "" {
			t.Fatalf("page 3: %v %v", r3, err)
		}
	}
	for _, req := range []*chatv1.ListChannelsRequest{{PageSize: -1}, {PageSize: 501}, {PageToken: "garbage"}} {
		if _, err := e.client.ListChannels(ctx, req); statusCode(err) != codes.InvalidArgument {
			t.Errorf("ListChannels(%v): %v", req, err)
		}
	}
	// The other side sees the direct channel named after alice.
	rc, err := e.client.ListChannels(e.ctx("carol", "c1"), &chatv1.ListChannelsRequest{})
	if err != nil || len(rc.GetChannels()) != 1 || rc.GetChannels()[0].GetName() != "alice" {
		t.Fatalf("carol's channels: %v %v", rc, err)
	}
	gc, err := e.client.GetChannel(ctx, &chatv1.GetChannelRequest{ChannelId: g})
	if err != nil || gc.GetChannel().GetLastMessageId() != ids[6] || gc.GetChannel().GetName() != "group" {
		t.Fatalf("GetChannel: %v %v", gc, err)
	}
	if _, err := e.client.GetChannel(ctx, &chatv1.GetChannelRequest{ChannelId: "g:none"}); statusCode(err) != codes.NotFound {
		t.Fatalf("GetChannel missing: %v", err)
	}

	// GetHistory: backward pages from the newest, forward from an id.
	h, err := e.client.GetHistory(ctx, &chatv1.GetHistoryRequest{ChannelId: g, PageSize: 3})
	if err != nil || len(h.GetMessages()) != 3 || !h.GetMore() || h.GetMessages()[2].GetMessageId() != ids[6] || h.GetMessages()[0].GetMessageId() != ids[4] {
		t.Fatalf("newest page: %v %v", h, err)
	}
	h, err = e.client.GetHistory(ctx, &chatv1.GetHistoryRequest{ChannelId: g, BeforeMessageId: ids[4], PageSize: 10})
	if err != nil || len(h.GetMessages()) != 4 || h.GetMore() || h.GetMessages()[0].GetText() != "g0" {
		t.Fatalf("older page: %v %v", h, err)
	}
	h, err = e.client.GetHistory(ctx, &chatv1.GetHistoryRequest{ChannelId: g, AfterMessageId: ids[1], PageSize: 2})
	if err != nil || len(h.GetMessages()) != 2 || !h.GetMore() || h.GetMessages()[0].GetMessageId() != ids[2] {
		t.Fatalf("forward page: %v %v", h, err)
	}
	h, err = e.client.GetHistory(ctx, &chatv1.GetHistoryRequest{ToUser: "Carol"})
	if err != nil || len(h.GetMessages()) != 1 || h.GetMessages()[0].GetText() != "to carol" {
		t.Fatalf("history with carol: %v %v", h, err)
	}
	h, err = e.client.GetHistory(e.ctx("bob", "b1"), &chatv1.GetHistoryRequest{ToUser: "carol"})
	if err != nil || len(h.GetMessages()) != 0 {
		t.Fatalf("history of users who never talked: %v %v", h, err)
	}
	for _, req := range []*chatv1.GetHistoryRequest{
		{ChannelId: g, PageSize: 501}, {ChannelId: g, PageSize: -1}, {}, {ChannelId: g, ToUser: "bob"}, {ToUser: "alice"},
	} {
		if _, err := e.client.GetHistory(ctx, req); statusCode(err) != codes.InvalidArgument {
			t.Errorf("GetHistory(%v): %v", req, err)
		}
	}
	if _, err := e.client.GetHistory(ctx, &chatv1.GetHistoryRequest{ToUser: "ghost"}); statusCode(err) != codes.NotFound {
		t.Errorf("GetHistory ghost: %v", err)
	}
}

// TestRestart: after a restart on the same data, cursors, inbox seqs and
// message ids continue where they were.
func TestRestart(t *testing.T) {
	dir := t.TempDir()
	e := newEnv(t, envConfig{dir: dir})
	e.users("alice", "bob")
	a, b := e.open("alice", "a1"), e.open("bob", "b1")
	var last uint64
	for i := range 5 {
		last = a.ackOf(a.sendTo("bob", fmt.Sprint(i), "before")).GetMessageId()
	}
	b.deliveries(5)
	b.reply(b.ack(3))
	e.stop()

	e = newEnv(t, envConfig{dir: dir})
	b = e.open("bob", "b1")
	if b.welcome.GetCursor() != 3 || b.welcome.GetHeadSeq() != 5 {
		t.Fatalf("welcome after restart %v", b.welcome)
	}
	a = e.open("alice", "a1")
	if ack := a.ackOf(a.sendTo("bob", "0", "before")); !ack.GetDuplicate() {
		t.Fatalf("retry after restart not deduplicated: %v", ack)
	}
	ack := a.ackOf(a.sendTo("bob", "new", "after"))
	if ack.GetMessageId() <= last {
		t.Fatalf("message id %d after restart, last before %d", ack.GetMessageId(), last)
	}
	all, _ := b.syncAll(3, 100)
	if len(all) != 3 || all[2].GetInboxSeq() != 6 || all[2].GetMessage().GetText() != "after" {
		t.Fatalf("sync after restart: %v", all)
	}
}

// The owner cannot leave a group in which nobody else could then add or
// remove members; once another member is an admin, the owner may leave.
// Adding an existing admin again without a role keeps them an admin.
func TestOwnerLeavesOnlyWithAnAdmin(t *testing.T) {
	e := newEnv(t, envConfig{})
	e.users("alice", "bob", "carol")
	g := e.group("alice", "bob", "carol")
	leave := &chatv1.RemoveMemberRequest{ChannelId: g, UserId: "alice"}
	if _, err := e.client.RemoveMember(e.ctx("alice", "setup"), leave); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("owner leaving without an admin: %v, want FailedPrecondition", err)
	}
	if _, err := e.client.AddMember(e.ctx("alice", "setup"), &chatv1.AddMemberRequest{ChannelId: g, UserId: "bob", Role: chatv1.MemberRole_MEMBER_ROLE_ADMIN}); err != nil {
		t.Fatal(err)
	}
	// Re-adding bob without a role leaves him an admin.
	if _, err := e.client.AddMember(e.ctx("alice", "setup"), &chatv1.AddMemberRequest{ChannelId: g, UserId: "bob"}); err != nil {
		t.Fatal(err)
	}
	if m, err := e.st.GetMember(context.Background(), g, "bob"); err != nil || m.Role != store.RoleAdmin {
		t.Fatalf("bob after a role-less re-add: %+v %v", m, err)
	}
	if _, err := e.client.RemoveMember(e.ctx("alice", "setup"), leave); err != nil {
		t.Fatalf("owner leaving with an admin: %v", err)
	}
	if _, err := e.st.GetMember(context.Background(), g, "alice"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("alice still a member: %v", err)
	}
}

// A send queue that overflows while the device is being rate limited is
// reported as the rate limit, not as a device that does not read.
func TestOverflowWhileRateLimitedNamesTheRateLimit(t *testing.T) {
	h := hub.New(hub.Config{})
	h.SetRouter(local.New(func(router.Event) {}))
	sess, err := h.Register(context.Background(), "alice", "a1", 16)
	if err != nil {
		t.Fatal(err)
	}
	st := &stream{s: &Service{frameRate: 200, burst: 400}, sess: sess}
	sess.Close(hub.ErrOverflow)
	if err := st.endStatus(); !strings.Contains(status.Convert(err).Message(), hub.OverflowMessage) {
		t.Fatalf("overflow without rate limiting: %v", err)
	}
	st.lastLimited.Store(time.Now().UnixNano())
	err = st.endStatus()
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(status.Convert(err).Message(), "frame rate exceeded: at most 200 frames/s") {
		t.Fatalf("overflow while rate limited: %v", err)
	}
}

// TestTooManyStreamsPerDevice: one device token opening stream after
// stream does not pile them up: past hub.DefaultMaxStreamsPerDevice the
// oldest ends with ResourceExhausted, the newest works and gets the
// device's messages.
func TestTooManyStreamsPerDevice(t *testing.T) {
	e := newEnv(t, envConfig{})
	e.users("alice", "bob")
	var ds []*dev
	for range hub.DefaultMaxStreamsPerDevice {
		ds = append(ds, e.open("alice", "a1"))
	}
	newest := e.open("alice", "a1")
	st := ds[0].ended()
	if st.Code() != codes.ResourceExhausted || st.Message() != hub.TooManyStreamsMessage {
		t.Fatalf("oldest stream ended with %v, want ResourceExhausted %q", st, hub.TooManyStreamsMessage)
	}
	// Distinguishable from an overflow (also ResourceExhausted): the
	// status carries ErrorInfo{reason: STREAM_REPLACED, domain: chatd}.
	if r := grpcerr.Reason(st.Err()); r != store.ReasonStreamReplaced {
		t.Fatalf("evicted stream's reason %q (details %v), want %q", r, st.Details(), store.ReasonStreamReplaced)
	}
	b := e.open("bob", "b1")
	b.ackOf(b.sendTo("alice", "m1", "hi"))
	if got := newest.deliveries(1); got[0].GetMessage().GetText() != "hi" {
		t.Fatalf("newest stream got %v", got)
	}
	for _, d := range ds[1:] {
		if got := d.deliveries(1); got[0].GetMessage().GetText() != "hi" {
			t.Fatalf("a stream within the bound got %v", got)
		}
	}
}
