package presencesvc_test

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/chatd/chatd/server/auth"
	"github.com/chatd/chatd/server/grpcerr"
	"github.com/chatd/chatd/server/internal/grpctest"
	"github.com/chatd/chatd/server/presence"
	"github.com/chatd/chatd/server/presence/local"
	"github.com/chatd/chatd/server/presence/presencesvc"
	"github.com/chatd/chatd/server/store"
	"github.com/chatd/chatd/server/store/pebble"
)

// env is a PresenceService served over real gRPC on 127.0.0.1:0 behind the
// real auth interceptors, on a real pebble store and the local engine.
type env struct {
	st    *pebble.Store
	auth  *auth.Authenticator
	tr    *presence.Tracker
	c     chatv1.PresenceServiceClient
	ctx   context.Context
	token map[string]string
}

// Users: alice watches. bob and zoe have alice as a contact; carol has
// not (a stranger to alice). alice has added bob, carol and zoe. zoe
// hides her presence.
func newEnv(t *testing.T, maxUsers int) *env {
	return newEnvRecheck(t, maxUsers, 0)
}

func newEnvRecheck(t *testing.T, maxUsers int, recheck time.Duration) *env {
	t.Helper()
	st, err := pebble.Open(t.TempDir(), pebble.WithCacheSize(1<<20), pebble.WithMemTableSize(1<<20))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	e := &env{st: st, ctx: ctx, token: map[string]string{}}
	a, err := auth.New(auth.Config{Key: bytes.Repeat([]byte{7}, 32), Devices: st})
	if err != nil {
		t.Fatal(err)
	}
	e.auth = a
	now := time.Now()
	for _, u := range []string{"alice", "bob", "carol", "zoe"} {
		if err := st.CreateUser(ctx, &store.User{ID: u, DisplayName: u, PasswordHash: []byte("x"), CreatedAt: now}); err != nil {
			t.Fatal(err)
		}
		if err := st.PutDevice(ctx, &store.Device{UserID: u, DeviceID: u + "-phone", Name: "phone", CreatedAt: now, LastSeenAt: now}); err != nil {
			t.Fatal(err)
		}
		tok, _, err := a.Issue(u, u+"-phone", now)
		if err != nil {
			t.Fatal(err)
		}
		e.token[u] = tok
	}
	for _, c := range [][2]string{{"bob", "alice"}, {"zoe", "alice"}, {"alice", "bob"}, {"alice", "carol"}, {"alice", "zoe"}} {
		if err := st.AddContact(ctx, c[0], c[1]); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.SetPresenceHidden(ctx, "zoe", true); err != nil {
		t.Fatal(err)
	}
	tr, err := presence.NewTracker(presence.TrackerConfig{
		Engine: local.New(), Hidden: presence.StoreHidden(st),
		HeartbeatInterval: 50 * time.Millisecond, Grace: 300 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	e.tr = tr
	svc, err := presencesvc.New(presencesvc.Config{Engine: tr.Engine(), Store: st, MaxUsers: maxUsers, RecheckInterval: recheck, Sessions: a})
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer( // interceptors as server/app installs them
		grpc.ChainUnaryInterceptor(grpcerr.UnaryServerInterceptor(), a.UnaryInterceptor()),
		grpc.ChainStreamInterceptor(grpcerr.StreamServerInterceptor(), a.StreamInterceptor()))
	chatv1.RegisterPresenceServiceServer(srv, svc)
	cc := grpctest.Serve(t, srv)
	e.c = chatv1.NewPresenceServiceClient(cc)
	return e
}

func (e *env) as(user string) context.Context {
	return metadata.AppendToOutgoingContext(e.ctx, "authorization", "Bearer "+e.token[user])
}

func (e *env) connect(t *testing.T, user string) *presence.Conn {
	t.Helper()
	c, err := e.tr.Connect(e.ctx, user, user+"-phone")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func wantCode(t *testing.T, err error, code codes.Code, contains string) {
	t.Helper()
	st := status.Convert(err)
	if st.Code() != code || !strings.Contains(st.Message(), contains) {
		t.Fatalf("got %v, want %v containing %q", err, code, contains)
	}
}

func get(t *testing.T, e *env, as string, ids ...string) []*chatv1.Presence {
	t.Helper()
	r, err := e.c.GetPresence(e.as(as), &chatv1.GetPresenceRequest{UserIds: ids})
	if err != nil {
		t.Fatalf("GetPresence(%v) as %s: %v", ids, as, err)
	}
	return r.GetPresences()
}

const (
	online  = chatv1.PresenceStatus_PRESENCE_STATUS_ONLINE
	offline = chatv1.PresenceStatus_PRESENCE_STATUS_OFFLINE
)

func TestGetPresence(t *testing.T) {
	e := newEnv(t, 0)
	ps := get(t, e, "alice", "bob")
	if len(ps) != 1 || ps[0].GetUserId() != "bob" || ps[0].GetStatus() != offline || ps[0].GetLastActiveAt() != nil {
		t.Fatalf("bob before connecting: %v", ps)
	}
	before := time.Now().Truncate(time.Millisecond)
	c := e.connect(t, "bob")
	ps = get(t, e, "alice", "Bob", "bob", "alice") // canonicalised, duplicates once, self allowed
	if len(ps) != 2 || ps[0].GetUserId() != "bob" || ps[0].GetStatus() != online || ps[1].GetUserId() != "alice" {
		t.Fatalf("after bob connected: %v", ps)
	}
	if at := ps[0].GetLastActiveAt().AsTime(); at.Before(before) || at.After(time.Now()) {
		t.Fatalf("bob's last_active_at %v, connected at %v", at, before)
	}
	c.Close(true)
	ps = get(t, e, "alice", "bob")
	if ps[0].GetStatus() != offline || ps[0].GetLastActiveAt() == nil {
		t.Fatalf("bob after a clean close: %v", ps)
	}
	// Empty user_ids: the contacts who have alice as a contact (not carol).
	ps = get(t, e, "alice")
	if len(ps) != 2 || ps[0].GetUserId() != "bob" || ps[1].GetUserId() != "zoe" {
		t.Fatalf("all contacts: %v", ps)
	}
}

func TestBadInput(t *testing.T) {
	e := newEnv(t, 3)
	_, err := e.c.GetPresence(e.ctx, &chatv1.GetPresenceRequest{UserIds: []string{"bob"}})
	wantCode(t, err, codes.Unauthenticated, "")
	_, err = e.c.GetPresence(e.as("alice"), &chatv1.GetPresenceRequest{UserIds: []string{"bob", ""}})
	wantCode(t, err, codes.InvalidArgument, "user_ids[1]")
	_, err = e.c.GetPresence(e.as("alice"), &chatv1.GetPresenceRequest{UserIds: []string{"bob", "a b"}})
	wantCode(t, err, codes.InvalidArgument, "user_ids[1]")
	_, err = e.c.GetPresence(e.as("alice"), &chatv1.GetPresenceRequest{UserIds: []string{strings.Repeat("x", 10000)}})
	wantCode(t, err, codes.InvalidArgument, "user_ids[0]")
	_, err = e.c.GetPresence(e.as("alice"), &chatv1.GetPresenceRequest{UserIds: []string{"bob", "zoe", "alice", "bob"}})
	wantCode(t, err, codes.InvalidArgument, "at most 3")
	s, err := e.c.Subscribe(e.as("alice"), &chatv1.SubscribeRequest{UserIds: []string{"a:b"}})
	if err == nil {
		_, err = s.Recv()
	}
	wantCode(t, err, codes.InvalidArgument, "user_ids[0]")
}

// TestCase_C106 (presence part): a user who is not a contact of another
// (has not been added by them) cannot see or subscribe to their presence;
// unknown users look the same as strangers.
func TestCase_C106(t *testing.T) {
	e := newEnv(t, 0)
	e.connect(t, "carol")
	_, err := e.c.GetPresence(e.as("alice"), &chatv1.GetPresenceRequest{UserIds: []string{"carol"}})
	wantCode(t, err, codes.PermissionDenied, `"carol"`)
	_, err = e.c.GetPresence(e.as("alice"), &chatv1.GetPresenceRequest{UserIds: []string{"bob", "carol"}})
	wantCode(t, err, codes.PermissionDenied, `"carol"`)
	_, err = e.c.GetPresence(e.as("alice"), &chatv1.GetPresenceRequest{UserIds: []string{"nobody"}})
	wantCode(t, err, codes.PermissionDenied, `"nobody"`)
	// bob has alice as a contact, not carol: carol may not see bob.
	_, err = e.c.GetPresence(e.as("carol"), &chatv1.GetPresenceRequest{UserIds: []string{"bob"}})
	wantCode(t, err, codes.PermissionDenied, `"bob"`)
	// alice has carol as a contact: carol may see alice (not the reverse).
	if ps := get(t, e, "carol", "alice"); len(ps) != 1 {
		t.Fatalf("carol sees alice: %v", ps)
	}
	for _, ids := range [][]string{{"carol"}, {"bob", "carol"}} {
		s, err := e.c.Subscribe(e.as("alice"), &chatv1.SubscribeRequest{UserIds: ids})
		if err == nil {
			_, err = s.Recv()
		}
		wantCode(t, err, codes.PermissionDenied, `"carol"`)
	}
	// carol's own "all contacts" stream holds nobody (no one added her).
	ps := get(t, e, "carol")
	if len(ps) != 0 {
		t.Fatalf("carol's contacts' presence: %v", ps)
	}
}

// recv reads the next message of s within 10 s.
func recv(t *testing.T, s chatv1.PresenceService_SubscribeClient) *chatv1.Presence {
	t.Helper()
	type res struct {
		m   *chatv1.SubscribeResponse
		err error
	}
	ch := make(chan res, 1)
	go func() { m, err := s.Recv(); ch <- res{m, err} }()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("Recv: %v", r.err)
		}
		return r.m.GetPresence()
	case <-time.After(10 * time.Second):
		t.Fatal("no presence within 10s")
		return nil
	}
}

func subscribe(t *testing.T, e *env, as string, ids ...string) chatv1.PresenceService_SubscribeClient {
	t.Helper()
	ctx, cancel := context.WithCancel(e.as(as))
	t.Cleanup(cancel)
	s, err := e.c.Subscribe(ctx, &chatv1.SubscribeRequest{UserIds: ids})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestSubscribe(t *testing.T) {
	e := newEnv(t, 0)
	s := subscribe(t, e, "alice", "bob")
	if p := recv(t, s); p.GetUserId() != "bob" || p.GetStatus() != offline {
		t.Fatalf("initial: %v", p)
	}
	c := e.connect(t, "bob")
	if p := recv(t, s); p.GetUserId() != "bob" || p.GetStatus() != online || p.GetLastActiveAt() == nil {
		t.Fatalf("after connect: %v", p)
	}
	c.Beat()
	c.Close(true)
	p := recv(t, s)
	if p.GetStatus() != offline || p.GetLastActiveAt().AsTime().UnixMilli() < c.LastActive().UnixMilli() {
		t.Fatalf("after close: %v (last beat %v)", p, c.LastActive())
	}
}

func TestSubscribeAllContacts(t *testing.T) {
	e := newEnv(t, 0)
	e.connect(t, "carol") // a contact of alice's who has not added her
	s := subscribe(t, e, "alice")
	got := map[string]chatv1.PresenceStatus{}
	for range 2 {
		p := recv(t, s)
		got[p.GetUserId()] = p.GetStatus()
	}
	if len(got) != 2 || got["bob"] != offline || got["zoe"] != offline {
		t.Fatalf("initial presences: %v", got)
	}
	c := e.connect(t, "bob")
	if p := recv(t, s); p.GetUserId() != "bob" || p.GetStatus() != online {
		t.Fatalf("next: %v (carol must never appear)", p)
	}
	c.Close(true)
	if p := recv(t, s); p.GetUserId() != "bob" || p.GetStatus() != offline {
		t.Fatalf("next: %v", p)
	}
}

func TestHiddenUser(t *testing.T) {
	e := newEnv(t, 0)
	s := subscribe(t, e, "alice", "zoe", "bob")
	for range 2 {
		recv(t, s)
	}
	z := e.connect(t, "zoe")
	ps := get(t, e, "alice", "zoe")
	if ps[0].GetStatus() != offline || ps[0].GetLastActiveAt() != nil {
		t.Fatalf("hidden zoe, connected: %v", ps[0])
	}
	// zoe shows herself: store first, then the tracker tells watchers.
	if err := e.st.SetPresenceHidden(e.ctx, "zoe", false); err != nil {
		t.Fatal(err)
	}
	if err := e.tr.SetHidden(e.ctx, "zoe", false); err != nil {
		t.Fatal(err)
	}
	if p := recv(t, s); p.GetUserId() != "zoe" || p.GetStatus() != online || p.GetLastActiveAt() == nil {
		t.Fatalf("zoe visible: %v", p)
	}
	if err := e.st.SetPresenceHidden(e.ctx, "zoe", true); err != nil {
		t.Fatal(err)
	}
	if err := e.tr.SetHidden(e.ctx, "zoe", true); err != nil {
		t.Fatal(err)
	}
	if p := recv(t, s); p.GetUserId() != "zoe" || p.GetStatus() != offline || p.GetLastActiveAt() != nil {
		t.Fatalf("zoe hidden again: %v", p)
	}
	z.Close(true)
	b := e.connect(t, "bob") // marker: nothing about zoe comes before it
	if p := recv(t, s); p.GetUserId() != "bob" || p.GetStatus() != online {
		t.Fatalf("after the hidden zoe left: %v", p)
	}
	b.Close(true)
}

func TestContactRemovedWhileSubscribed(t *testing.T) {
	e := newEnvRecheck(t, 0, time.Nanosecond)
	s := subscribe(t, e, "alice", "bob", "zoe")
	for range 2 {
		recv(t, s)
	}
	b := e.connect(t, "bob")
	if p := recv(t, s); p.GetUserId() != "bob" || p.GetStatus() != online {
		t.Fatalf("bob online: %v", p)
	}
	if err := e.st.RemoveContact(e.ctx, "bob", "alice"); err != nil {
		t.Fatal(err)
	}
	b.Close(true)
	if p := recv(t, s); p.GetUserId() != "bob" || p.GetStatus() != offline || p.GetLastActiveAt() != nil {
		t.Fatalf("after bob removed alice: %v", p)
	}
	b = e.connect(t, "bob")
	b.Close(true)
	// zoe unhides and connects: the next message is hers, nothing of bob's.
	if err := e.st.SetPresenceHidden(e.ctx, "zoe", false); err != nil {
		t.Fatal(err)
	}
	if err := e.tr.SetHidden(e.ctx, "zoe", false); err != nil {
		t.Fatal(err)
	}
	e.connect(t, "zoe")
	if p := recv(t, s); p.GetUserId() != "zoe" || p.GetStatus() != online {
		t.Fatalf("next message: %v, want zoe online", p)
	}
}

// TestSlowSubscriber: a subscriber that does not read never holds up the
// fan-out; when it reads again it gets the latest state.
func TestSlowSubscriber(t *testing.T) {
	e := newEnv(t, 0)
	s := subscribe(t, e, "alice", "bob")
	recv(t, s)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 3000 {
			c, err := e.tr.Connect(e.ctx, "bob", fmt.Sprintf("d%d", i%3))
			if err != nil {
				t.Error(err)
				return
			}
			c.Close(true)
		}
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("6000 changes did not finish: the fan-out is blocked by a subscriber")
	}
	final := get(t, e, "alice", "bob")[0]
	n := 0
	for {
		p := recv(t, s)
		n++
		if p.GetStatus() == offline && p.GetLastActiveAt().AsTime().Equal(final.GetLastActiveAt().AsTime()) {
			break
		}
	}
	t.Logf("received %d messages for 6000 changes", n)
}

func TestConfigErrors(t *testing.T) {
	if _, err := presencesvc.New(presencesvc.Config{}); err == nil {
		t.Fatal("New without engine and store succeeded")
	}
	if _, err := presence.NewTracker(presence.TrackerConfig{}); err == nil {
		t.Fatal("NewTracker without engine succeeded")
	}
	if _, err := presence.NewTracker(presence.TrackerConfig{Engine: local.New(), HeartbeatInterval: time.Minute, Grace: time.Second}); err == nil {
		t.Fatal("NewTracker with grace under the interval succeeded")
	}
}

// endOf waits for the stream's end and returns its status; a message
// received first is an error (Unknown, naming it).
func endOf(t *testing.T, s chatv1.PresenceService_SubscribeClient) *status.Status {
	t.Helper()
	ch := make(chan error, 1)
	go func() {
		m, err := s.Recv()
		if err == nil {
			err = fmt.Errorf("unexpected presence %v", m.GetPresence())
		}
		ch <- err
	}()
	select {
	case err := <-ch:
		return status.Convert(err)
	case <-time.After(10 * time.Second):
		t.Fatal("stream still open after 10s")
		return nil
	}
}

// TestSubscribeEndsWhenTokenExpires: a Subscribe stream ends with
// Unauthenticated (reason TOKEN_EXPIRED) at the moment its token expires,
// with nothing to send meanwhile.
func TestSubscribeEndsWhenTokenExpires(t *testing.T) {
	e := newEnv(t, 0)
	const ttl = time.Second
	short, err := auth.New(auth.Config{Key: bytes.Repeat([]byte{7}, 32), Devices: e.st, TokenTTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	issued := time.Now()
	tok, expires, err := short.Issue("alice", "alice-phone", issued)
	if err != nil {
		t.Fatal(err)
	}
	e.token["alice"] = tok
	s := subscribe(t, e, "alice", "bob")
	recv(t, s)
	st := endOf(t, s)
	if st.Code() != codes.Unauthenticated || grpcerr.Reason(st.Err()) != store.ReasonTokenExpired {
		t.Fatalf("ended with %v (reason %q), want Unauthenticated TOKEN_EXPIRED", st, grpcerr.Reason(st.Err()))
	}
	// Measured against the expiry the token carries (its clock precision
	// can put it a fraction of a millisecond before issued+ttl).
	if now := time.Now(); now.Before(expires) || now.After(expires.Add(time.Second)) {
		t.Fatalf("ended at %v, %v after issue, want at the token's expiry %v", now, now.Sub(issued), expires)
	}
}

// TestSubscribeRevokedSendsNothing: once the caller's device is revoked,
// the next change is not sent: the stream ends with Unauthenticated.
func TestSubscribeRevokedSendsNothing(t *testing.T) {
	e := newEnv(t, 0)
	s := subscribe(t, e, "alice", "bob")
	recv(t, s)
	e.auth.Revoke("alice", "alice-phone")
	c := e.connect(t, "bob")
	defer c.Close(true)
	st := endOf(t, s)
	if st.Code() != codes.Unauthenticated || grpcerr.Reason(st.Err()) != store.ReasonDeviceRevoked {
		t.Fatalf("ended with %v, want Unauthenticated DEVICE_REVOKED (and no presence)", st)
	}
}
