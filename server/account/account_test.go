package account_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/chatd/chatd/server/account"
	"github.com/chatd/chatd/server/auth"
	"github.com/chatd/chatd/server/grpcerr"
	"github.com/chatd/chatd/server/internal/grpctest"
	"github.com/chatd/chatd/server/store"
	"github.com/chatd/chatd/server/store/pebble"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

var testKey = bytes.Repeat([]byte{42}, 32)

// clock is a movable time source shared by the Authenticator and the
// Service.
type clock struct{ ns atomic.Int64 }

func newClock() *clock { c := &clock{}; c.ns.Store(time.Now().UnixNano()); return c }

func (c *clock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *clock) Advance(d time.Duration) { c.ns.Add(int64(d)) }
func (c *clock) Set(t time.Time)         { c.ns.Store(t.UnixNano()) }

type logouts struct {
	mu   sync.Mutex
	list []string
}

func (l *logouts) add(u, d string) { l.mu.Lock(); l.list = append(l.list, u+"/"+d); l.mu.Unlock() }
func (l *logouts) get() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.list...)
}

type env struct {
	st      *pebble.Store
	auth    *auth.Authenticator
	svc     *account.Service
	clk     *clock
	logouts *logouts
	c       chatv1.AccountServiceClient
	ctx     context.Context
}

type opts struct {
	st          *pebble.Store
	cacheTTL    time.Duration
	maxDevices  int
	maxContacts int
	push        account.PushConfig
}

// newEnv serves a real AccountService over gRPC on 127.0.0.1:0 behind the
// real auth interceptors, on a real pebble store.
func newEnv(t *testing.T, o opts) *env {
	t.Helper()
	e := &env{clk: newClock(), logouts: &logouts{}, st: o.st}
	if e.st == nil {
		st, err := pebble.Open(t.TempDir(), pebble.WithCacheSize(1<<20), pebble.WithMemTableSize(1<<20))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		e.st = st
	}
	a, err := auth.New(auth.Config{
		Key: testKey, TokenTTL: 24 * time.Hour, Devices: e.st,
		Public: account.PublicMethods, RevocationCacheTTL: o.cacheTTL, Now: e.clk.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	e.auth = a
	e.svc = account.New(account.Config{
		Store: e.st, Auth: a, OnLogout: e.logouts.add, Now: e.clk.Now,
		MaxDevices: o.maxDevices, MaxContacts: o.maxContacts, Push: o.push,
	})
	srv := grpc.NewServer( // interceptors as server/app installs them
		grpc.ChainUnaryInterceptor(grpcerr.UnaryServerInterceptor(), a.UnaryInterceptor()),
		grpc.ChainStreamInterceptor(grpcerr.StreamServerInterceptor(), a.StreamInterceptor()))
	chatv1.RegisterAccountServiceServer(srv, e.svc)
	cc := grpctest.Serve(t, srv)
	e.c = chatv1.NewAccountServiceClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	e.ctx = ctx
	return e
}

func (e *env) as(tok string) context.Context {
	return metadata.AppendToOutgoingContext(e.ctx, "authorization", "Bearer "+tok)
}

func (e *env) signUp(t *testing.T, user, pw, name string) *chatv1.Profile {
	t.Helper()
	r, err := e.c.SignUp(e.ctx, &chatv1.SignUpRequest{Username: user, Password: pw, DisplayName: name})
	if err != nil {
		t.Fatalf("SignUp(%q): %v", user, err)
	}
	return r.GetProfile()
}

func (e *env) logIn(t *testing.T, user, pw, dev string) *chatv1.LogInResponse {
	t.Helper()
	r, err := e.c.LogIn(e.ctx, &chatv1.LogInRequest{Username: user, Password: pw, DeviceName: dev})
	if err != nil {
		t.Fatalf("LogIn(%q): %v", user, err)
	}
	return r
}

func wantStatus(t *testing.T, err error, code codes.Code, msgContains string) {
	t.Helper()
	st := status.Convert(err)
	if st.Code() != code || !strings.Contains(st.Message(), msgContains) {
		t.Fatalf("got %v, want %v containing %q", err, code, msgContains)
	}
}

const pw = "correct horse battery"

func TestSignUpLogInLogOut(t *testing.T) {
	e := newEnv(t, opts{})
	p := e.signUp(t, "Alice", pw, "  Alice Liddell ")
	if p.GetUserId() != "alice" || p.GetDisplayName() != "Alice Liddell" || p.GetCreatedAt() == nil {
		t.Fatalf("profile %v", p)
	}
	li := e.logIn(t, "ALICE", pw, "alice-phone")
	if li.GetUserId() != "alice" || len(li.GetDeviceId()) != 32 || li.GetAccessToken() == "" {
		t.Fatalf("LogIn %v", li)
	}
	if got := li.GetExpiresAt().AsTime(); got.Sub(e.clk.Now()) < 23*time.Hour || got.Sub(e.clk.Now()) > 24*time.Hour {
		t.Fatalf("expires_at %v, want ~24h from now", got)
	}
	ld, err := e.c.ListDevices(e.as(li.GetAccessToken()), &chatv1.ListDevicesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(ld.GetDevices()) != 1 {
		t.Fatalf("devices %v", ld.GetDevices())
	}
	d := ld.GetDevices()[0]
	if d.GetDeviceId() != li.GetDeviceId() || d.GetName() != "alice-phone" || !d.GetCurrent() ||
		d.GetCreatedAt() == nil || d.GetLastSeenAt() == nil {
		t.Fatalf("device %v", d)
	}

	// Calls without a token are refused by the interceptor.
	_, err = e.c.ListDevices(e.ctx, &chatv1.ListDevicesRequest{})
	wantStatus(t, err, codes.Unauthenticated, "missing bearer token")

	if _, err := e.c.LogOut(e.as(li.GetAccessToken()), &chatv1.LogOutRequest{}); err != nil {
		t.Fatal(err)
	}
	if got := e.logouts.get(); len(got) != 1 || got[0] != "alice/"+li.GetDeviceId() {
		t.Fatalf("OnLogout calls %v", got)
	}
	_, err = e.c.ListDevices(e.as(li.GetAccessToken()), &chatv1.ListDevicesRequest{})
	wantStatus(t, err, codes.Unauthenticated, "session revoked")
	dev, err := e.st.GetDevice(e.ctx, "alice", li.GetDeviceId())
	if err != nil || !dev.Revoked {
		t.Fatalf("store device after log-out: %+v, %v", dev, err)
	}

	// A new log-in works; the revoked device is not listed.
	li2 := e.logIn(t, "alice", pw, "alice-laptop")
	ld, err = e.c.ListDevices(e.as(li2.GetAccessToken()), &chatv1.ListDevicesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(ld.GetDevices()) != 1 || ld.GetDevices()[0].GetDeviceId() != li2.GetDeviceId() {
		t.Fatalf("devices after re-login %v", ld.GetDevices())
	}
}

func TestLogInFailures(t *testing.T) {
	e := newEnv(t, opts{})
	e.signUp(t, "alice", pw, "Alice")
	_, errWrong := e.c.LogIn(e.ctx, &chatv1.LogInRequest{Username: "alice", Password: "wrong password", DeviceName: "d"})
	_, errUnknown := e.c.LogIn(e.ctx, &chatv1.LogInRequest{Username: "nobody", Password: pw, DeviceName: "d"})
	_, errInvalid := e.c.LogIn(e.ctx, &chatv1.LogInRequest{Username: "a:b", Password: pw, DeviceName: "d"})
	for _, err := range []error{errWrong, errUnknown, errInvalid} {
		wantStatus(t, err, codes.Unauthenticated, "invalid username or password")
	}
	if status.Convert(errWrong).Message() != status.Convert(errUnknown).Message() {
		t.Fatal("wrong password and unknown user must be indistinguishable")
	}
	_, err := e.c.LogIn(e.ctx, &chatv1.LogInRequest{Username: "alice", Password: pw, DeviceName: ""})
	wantStatus(t, err, codes.InvalidArgument, "device name must be 1 to 64 characters")
	_, err = e.c.LogIn(e.ctx, &chatv1.LogInRequest{Username: "alice", Password: pw, DeviceName: strings.Repeat("d", 65)})
	wantStatus(t, err, codes.InvalidArgument, "device name must be 1 to 64 characters")
	_, err = e.c.LogIn(e.ctx, &chatv1.LogInRequest{Username: "alice", Password: strings.Repeat("p", 2000), DeviceName: "d"})
	wantStatus(t, err, codes.InvalidArgument, "at most 1024 bytes")
	devs, _ := e.st.ListDevices(e.ctx, "alice")
	if len(devs) != 0 {
		t.Fatalf("failed log-ins created devices: %v", devs)
	}
}

func TestTokenExpiry(t *testing.T) {
	e := newEnv(t, opts{})
	e.signUp(t, "alice", pw, "Alice")
	li := e.logIn(t, "alice", pw, "phone")
	if _, err := e.c.ListDevices(e.as(li.GetAccessToken()), &chatv1.ListDevicesRequest{}); err != nil {
		t.Fatal(err)
	}
	e.clk.Advance(24 * time.Hour) // TokenTTL
	_, err := e.c.ListDevices(e.as(li.GetAccessToken()), &chatv1.ListDevicesRequest{})
	wantStatus(t, err, codes.Unauthenticated, "token expired")

	// A token issued with a clock in the past is born expired.
	e.clk.Set(time.Now().Add(-25 * time.Hour))
	old := e.logIn(t, "alice", pw, "old-clock")
	e.clk.Set(time.Now())
	_, err = e.c.GetProfile(e.as(old.GetAccessToken()), &chatv1.GetProfileRequest{Username: "alice"})
	wantStatus(t, err, codes.Unauthenticated, "token expired")
}

func TestTamperedToken(t *testing.T) {
	e := newEnv(t, opts{})
	e.signUp(t, "alice", pw, "Alice")
	e.signUp(t, "bob", pw, "Bob")
	li := e.logIn(t, "alice", pw, "phone")
	tok := li.GetAccessToken()
	// Change one payload character.
	b := []byte(tok)
	i := len("v1.") + 2
	if b[i] == 'x' {
		b[i] = 'y'
	} else {
		b[i] = 'x'
	}
	_, err := e.c.ListDevices(e.as(string(b)), &chatv1.ListDevicesRequest{})
	wantStatus(t, err, codes.Unauthenticated, "")
	// A token signed with another key.
	other, _ := auth.New(auth.Config{Key: bytes.Repeat([]byte{1}, 32), Devices: e.st})
	forged, _, _ := other.Issue("bob", li.GetDeviceId(), time.Now())
	_, err = e.c.ListDevices(e.as(forged), &chatv1.ListDevicesRequest{})
	wantStatus(t, err, codes.Unauthenticated, "bad signature")
	// A validly signed token for a device that does not exist.
	ghost, _, _ := e.auth.Issue("alice", "0000", time.Now())
	_, err = e.c.ListDevices(e.as(ghost), &chatv1.ListDevicesRequest{})
	wantStatus(t, err, codes.Unauthenticated, "session revoked")
}

// TestRevokedOnOtherNode: two nodes share one store; a log-out on node A is
// seen by node B once its revocation cache entry is stale.
func TestRevokedOnOtherNode(t *testing.T) {
	a := newEnv(t, opts{cacheTTL: time.Nanosecond})
	b := newEnv(t, opts{st: a.st, cacheTTL: time.Nanosecond})
	a.signUp(t, "alice", pw, "Alice")
	li := a.logIn(t, "alice", pw, "phone")
	if _, err := b.c.ListDevices(b.as(li.GetAccessToken()), &chatv1.ListDevicesRequest{}); err != nil {
		t.Fatalf("node B rejects a node A token: %v", err)
	}
	if _, err := a.c.LogOut(a.as(li.GetAccessToken()), &chatv1.LogOutRequest{}); err != nil {
		t.Fatal(err)
	}
	_, err := b.c.ListDevices(b.as(li.GetAccessToken()), &chatv1.ListDevicesRequest{})
	wantStatus(t, err, codes.Unauthenticated, "session revoked")
}

func TestCase_C105(t *testing.T) {
	e := newEnv(t, opts{})
	e.signUp(t, "Alice", pw, "Alice")
	e.signUp(t, "zoë", pw, "Zoë") // NFC
	for _, dup := range []string{"alice", "ALICE", "aLiCe", "ａｌｉｃｅ" /* fullwidth */, "zoe\u0308" /* NFD */, "ZOË"} {
		_, err := e.c.SignUp(e.ctx, &chatv1.SignUpRequest{Username: dup, Password: pw, DisplayName: "X"})
		wantStatus(t, err, codes.AlreadyExists, "username is taken")
	}
	// Look-alikes (UTS #39 confusable skeleton): whole-script Cyrillic,
	// digits for letters, "rn" for "m".
	e.signUp(t, "mary", pw, "Mary")
	for _, alike := range []string{"\u0430\u04cf\u0456\u0441\u0435" /* Cyrillic аӏісе */, "a1ice", "A1ICE", "rnary", "RNARY"} {
		_, err := e.c.SignUp(e.ctx, &chatv1.SignUpRequest{Username: alike, Password: pw, DisplayName: "X"})
		wantStatus(t, err, codes.AlreadyExists, "looks like an existing username")
	}

	rejected := []struct {
		name string
		req  *chatv1.SignUpRequest
		msg  string
	}{
		{"empty display name", &chatv1.SignUpRequest{Username: "carol1", Password: pw, DisplayName: ""},
			"display name must be 1 to 64 characters"},
		{"blank display name", &chatv1.SignUpRequest{Username: "carol2", Password: pw, DisplayName: " \t\u3000 "},
			"display name must be 1 to 64 characters"},
		{"joiner-only display name", &chatv1.SignUpRequest{Username: "carol10", Password: pw, DisplayName: "\u200d"},
			"display name must be 1 to 64 characters"},
		{"filler-only display name", &chatv1.SignUpRequest{Username: "carol11", Password: pw, DisplayName: "\u3164\u115f"},
			"display name must be 1 to 64 characters"},
		{"1000-char display name", &chatv1.SignUpRequest{Username: "carol3", Password: pw, DisplayName: strings.Repeat("é", 1000)},
			"display name must be 1 to 64 characters"},
		{"65-char display name", &chatv1.SignUpRequest{Username: "carol4", Password: pw, DisplayName: strings.Repeat("x", 65)},
			"display name must be 1 to 64 characters"},
		{"control char in display name", &chatv1.SignUpRequest{Username: "carol5", Password: pw, DisplayName: "a\x00b"},
			"control or format characters"},
		{"bidi override in display name", &chatv1.SignUpRequest{Username: "carol6", Password: pw, DisplayName: "abc\u202Edef"},
			"control or format characters"},
		{"1-char password", &chatv1.SignUpRequest{Username: "carol7", Password: "x", DisplayName: "Carol"},
			"password must be 8 to 1024 bytes"},
		{"7-byte password", &chatv1.SignUpRequest{Username: "carol8", Password: "1234567", DisplayName: "Carol"},
			"password must be 8 to 1024 bytes"},
		{"10000-char password", &chatv1.SignUpRequest{Username: "carol9", Password: strings.Repeat("p", 10000), DisplayName: "Carol"},
			"password must be 8 to 1024 bytes"},
		{"2-char username", &chatv1.SignUpRequest{Username: "ca", Password: pw, DisplayName: "Carol"},
			"username must be 3 to 32 characters"},
		{"33-char username", &chatv1.SignUpRequest{Username: strings.Repeat("c", 33), Password: pw, DisplayName: "Carol"},
			"username must be 3 to 32 characters"},
		{"colon in username", &chatv1.SignUpRequest{Username: "car:ol", Password: pw, DisplayName: "Carol"},
			"letters, digits, '.', '_' or '-'"},
		{"space in username", &chatv1.SignUpRequest{Username: "car ol", Password: pw, DisplayName: "Carol"},
			"letters, digits, '.', '_' or '-'"},
		{"NUL in username", &chatv1.SignUpRequest{Username: "car\x00ol", Password: pw, DisplayName: "Carol"},
			"letters, digits, '.', '_' or '-'"},
		{"empty username", &chatv1.SignUpRequest{Username: "", Password: pw, DisplayName: "Carol"},
			"username must be 3 to 32 characters"},
		{"mixed-script username", &chatv1.SignUpRequest{Username: "c\u0430rol", Password: pw, DisplayName: "Carol"},
			"mixes the scripts Cyrillic, Latin"},
		{"option-like username", &chatv1.SignUpRequest{Username: "-rf", Password: pw, DisplayName: "Carol"},
			"must not begin with '-'"},
		{"punctuation-only username", &chatv1.SignUpRequest{Username: "...", Password: pw, DisplayName: "Carol"},
			"letter or a digit"},
	}
	for _, tc := range rejected {
		_, err := e.c.SignUp(e.ctx, tc.req)
		st := status.Convert(err)
		if st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), tc.msg) {
			t.Errorf("%s: got %v, want InvalidArgument containing %q", tc.name, err, tc.msg)
		}
	}
	// No account exists for any rejected sign-up.
	for _, tc := range rejected {
		if id, err := store.CanonicalUsername(tc.req.Username); err == nil {
			if _, err := e.st.GetUser(e.ctx, id); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("%s: rejected sign-up left user %q (err %v)", tc.name, id, err)
			}
		}
	}
	// Limits are inclusive: 64 characters, 8 and 1024 bytes pass.
	e.signUp(t, "dave", "12345678", strings.Repeat("é", 64))
	e.signUp(t, "erin", strings.Repeat("p", 1024), "👩‍👩‍👧 Erin") // ZWJ emoji sequence
	e.signUp(t, strings.Repeat("f", 32), pw, "F")
}

func TestCase_C106_Devices(t *testing.T) {
	e := newEnv(t, opts{})
	e.signUp(t, "alice", pw, "Alice")
	e.signUp(t, "bob", pw, "Bob")
	a1 := e.logIn(t, "alice", pw, "alice-phone")
	a2 := e.logIn(t, "alice", pw, "alice-laptop")
	b1 := e.logIn(t, "bob", pw, "bob-phone")

	// ListDevicesRequest has no field at all: no way to name another user.
	if n := (&chatv1.ListDevicesRequest{}).ProtoReflect().Descriptor().Fields().Len(); n != 0 {
		t.Fatalf("ListDevicesRequest has %d fields; it must not take a user", n)
	}
	ld, err := e.c.ListDevices(e.as(b1.GetAccessToken()), &chatv1.ListDevicesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(ld.GetDevices()) != 1 || ld.GetDevices()[0].GetDeviceId() != b1.GetDeviceId() ||
		ld.GetDevices()[0].GetName() != "bob-phone" || !ld.GetDevices()[0].GetCurrent() {
		t.Fatalf("bob's ListDevices returned %v, want only bob-phone", ld.GetDevices())
	}
	ld, err = e.c.ListDevices(e.as(a2.GetAccessToken()), &chatv1.ListDevicesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, d := range ld.GetDevices() {
		got[d.GetDeviceId()] = d.GetCurrent()
	}
	if len(got) != 2 || got[a1.GetDeviceId()] || !got[a2.GetDeviceId()] {
		t.Fatalf("alice's devices %v: want her two, current=laptop", ld.GetDevices())
	}
}

func TestProfilesAndContacts(t *testing.T) {
	e := newEnv(t, opts{maxContacts: 2})
	e.signUp(t, "alice", pw, "Alice")
	e.signUp(t, "bob", pw, "Bob")
	e.signUp(t, "carol", pw, "Carol")
	e.signUp(t, "dave", pw, "Dave")
	ctx := e.as(e.logIn(t, "alice", pw, "phone").GetAccessToken())

	gp, err := e.c.GetProfile(ctx, &chatv1.GetProfileRequest{Username: "BOB"})
	if err != nil || gp.GetProfile().GetUserId() != "bob" || gp.GetProfile().GetDisplayName() != "Bob" {
		t.Fatalf("GetProfile: %v, %v", gp, err)
	}
	_, err = e.c.GetProfile(ctx, &chatv1.GetProfileRequest{Username: "nobody"})
	wantStatus(t, err, codes.NotFound, "user not found")
	_, err = e.c.GetProfile(ctx, &chatv1.GetProfileRequest{Username: "no/body"})
	wantStatus(t, err, codes.InvalidArgument, "username must be")

	up, err := e.c.UpdateProfile(ctx, &chatv1.UpdateProfileRequest{DisplayName: " Alice L. "})
	if err != nil || up.GetProfile().GetDisplayName() != "Alice L." {
		t.Fatalf("UpdateProfile: %v, %v", up, err)
	}
	_, err = e.c.UpdateProfile(ctx, &chatv1.UpdateProfileRequest{DisplayName: ""})
	wantStatus(t, err, codes.InvalidArgument, "display name")
	if u, _ := e.st.GetUser(e.ctx, "alice"); u.DisplayName != "Alice L." {
		t.Fatalf("rejected update changed the name to %q", u.DisplayName)
	}
	// hide_presence alone leaves the display name as it is.
	up, err = e.c.UpdateProfile(ctx, &chatv1.UpdateProfileRequest{HidePresence: proto.Bool(true)})
	if err != nil || !up.GetProfile().GetHidePresence() || up.GetProfile().GetDisplayName() != "Alice L." {
		t.Fatalf("UpdateProfile(hide_presence): %v, %v", up, err)
	}
	if u, _ := e.st.GetUser(e.ctx, "alice"); !u.PresenceHidden {
		t.Fatal("hide_presence not stored")
	}
	up, err = e.c.UpdateProfile(ctx, &chatv1.UpdateProfileRequest{HidePresence: proto.Bool(false), DisplayName: "Alice"})
	if err != nil || up.GetProfile().GetHidePresence() || up.GetProfile().GetDisplayName() != "Alice" {
		t.Fatalf("UpdateProfile(show, rename): %v, %v", up, err)
	}

	ac, err := e.c.AddContact(ctx, &chatv1.AddContactRequest{Username: "Bob"})
	if err != nil || ac.GetContact().GetUserId() != "bob" {
		t.Fatalf("AddContact: %v, %v", ac, err)
	}
	if _, err := e.c.AddContact(ctx, &chatv1.AddContactRequest{Username: "bob"}); err != nil {
		t.Fatalf("AddContact again (idempotent): %v", err)
	}
	_, err = e.c.AddContact(ctx, &chatv1.AddContactRequest{Username: "ALICE"})
	wantStatus(t, err, codes.InvalidArgument, "yourself")
	_, err = e.c.AddContact(ctx, &chatv1.AddContactRequest{Username: "nobody"})
	wantStatus(t, err, codes.NotFound, "user not found")
	if _, err := e.c.AddContact(ctx, &chatv1.AddContactRequest{Username: "carol"}); err != nil {
		t.Fatal(err)
	}
	_, err = e.c.AddContact(ctx, &chatv1.AddContactRequest{Username: "dave"})
	wantStatus(t, err, codes.ResourceExhausted, "at most 2")

	lc, err := e.c.ListContacts(ctx, &chatv1.ListContactsRequest{})
	if err != nil || len(lc.GetContacts()) != 2 || lc.GetContacts()[0].GetUserId() != "bob" ||
		lc.GetContacts()[1].GetDisplayName() != "Carol" {
		t.Fatalf("ListContacts: %v, %v", lc, err)
	}
	if _, err := e.c.RemoveContact(ctx, &chatv1.RemoveContactRequest{Username: "BOB"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.RemoveContact(ctx, &chatv1.RemoveContactRequest{Username: "bob"}); err != nil {
		t.Fatalf("RemoveContact again (idempotent): %v", err)
	}
	_, err = e.c.RemoveContact(ctx, &chatv1.RemoveContactRequest{Username: "x"})
	wantStatus(t, err, codes.InvalidArgument, "username must be")
	lc, err = e.c.ListContacts(ctx, &chatv1.ListContactsRequest{})
	if err != nil || len(lc.GetContacts()) != 1 || lc.GetContacts()[0].GetUserId() != "carol" {
		t.Fatalf("ListContacts after remove: %v, %v", lc, err)
	}
	// Contacts are per user: bob's list is empty.
	bctx := e.as(e.logIn(t, "bob", pw, "phone").GetAccessToken())
	lc, err = e.c.ListContacts(bctx, &chatv1.ListContactsRequest{})
	if err != nil || len(lc.GetContacts()) != 0 {
		t.Fatalf("bob's contacts: %v, %v", lc, err)
	}
}

func TestMaxDevicesRevokesOldest(t *testing.T) {
	e := newEnv(t, opts{maxDevices: 2})
	e.signUp(t, "alice", pw, "Alice")
	d1 := e.logIn(t, "alice", pw, "one")
	e.clk.Advance(time.Second)
	d2 := e.logIn(t, "alice", pw, "two")
	e.clk.Advance(time.Second)
	d3 := e.logIn(t, "alice", pw, "three")
	_, err := e.c.ListDevices(e.as(d1.GetAccessToken()), &chatv1.ListDevicesRequest{})
	wantStatus(t, err, codes.Unauthenticated, "session revoked")
	if got := e.logouts.get(); len(got) != 1 || got[0] != "alice/"+d1.GetDeviceId() {
		t.Fatalf("OnLogout calls %v", got)
	}
	ld, err := e.c.ListDevices(e.as(d3.GetAccessToken()), &chatv1.ListDevicesRequest{})
	if err != nil || len(ld.GetDevices()) != 2 || ld.GetDevices()[0].GetDeviceId() != d2.GetDeviceId() {
		t.Fatalf("devices %v, %v", ld.GetDevices(), err)
	}
}

// Handlers called without the interceptor (a wiring mistake) refuse to run.
func TestNoPrincipal(t *testing.T) {
	e := newEnv(t, opts{})
	ctx := context.Background()
	_, err := e.svc.ListDevices(ctx, &chatv1.ListDevicesRequest{})
	wantStatus(t, err, codes.Unauthenticated, "")
	_, err = e.svc.LogOut(ctx, &chatv1.LogOutRequest{})
	wantStatus(t, err, codes.Unauthenticated, "")
	_, err = e.svc.AddContact(ctx, &chatv1.AddContactRequest{Username: "bob"})
	wantStatus(t, err, codes.Unauthenticated, "")
}

// Store failures become Internal "internal error", with no store detail.
func TestStoreFailureIsInternal(t *testing.T) {
	e := newEnv(t, opts{})
	e.signUp(t, "alice", pw, "Alice")
	ctx := auth.NewContext(context.Background(), auth.Principal{UserID: "alice", DeviceID: "d", ExpiresAt: time.Now().Add(time.Hour)})
	e.st.Close()
	_, err := e.svc.ListContacts(ctx, &chatv1.ListContactsRequest{})
	if st := status.Convert(err); st.Code() != codes.Internal || st.Message() != "internal error" {
		t.Fatalf("got %v, want Internal \"internal error\"", err)
	}
	_, err = e.svc.SignUp(ctx, &chatv1.SignUpRequest{Username: "bob", Password: pw, DisplayName: "Bob"})
	if st := status.Convert(err); st.Code() != codes.Internal || st.Message() != "internal error" {
		t.Fatalf("got %v, want Internal \"internal error\"", err)
	}
}

// TestRevokeDevice: a device logs out another device of its user (its
// token fails, OnLogout closes its streams), then "everywhere else"; it
// can never revoke another user's device (NotFound, as an unknown one).
func TestRevokeDevice(t *testing.T) {
	e := newEnv(t, opts{})
	e.signUp(t, "alice", "password-a", "Alice")
	e.signUp(t, "bob", "password-b", "Bob")
	laptop := e.logIn(t, "alice", "password-a", "laptop")
	phone := e.logIn(t, "alice", "password-a", "phone")
	tablet := e.logIn(t, "alice", "password-a", "tablet")
	bob := e.logIn(t, "bob", "password-b", "bob-phone")

	_, err := e.c.RevokeDevice(e.as(bob.GetAccessToken()), &chatv1.RevokeDeviceRequest{DeviceId: laptop.GetDeviceId()})
	wantStatus(t, err, codes.NotFound, "device not found")
	_, err = e.c.RevokeDevice(e.as(laptop.GetAccessToken()), &chatv1.RevokeDeviceRequest{})
	wantStatus(t, err, codes.InvalidArgument, "device_id")
	if _, err := e.c.ListDevices(e.as(laptop.GetAccessToken()), &chatv1.ListDevicesRequest{}); err != nil {
		t.Fatalf("bob's attempt hurt alice's laptop: %v", err)
	}

	if _, err := e.c.RevokeDevice(e.as(laptop.GetAccessToken()), &chatv1.RevokeDeviceRequest{DeviceId: phone.GetDeviceId()}); err != nil {
		t.Fatal(err)
	}
	_, err = e.c.ListDevices(e.as(phone.GetAccessToken()), &chatv1.ListDevicesRequest{})
	wantStatus(t, err, codes.Unauthenticated, "session revoked")
	if got := e.logouts.get(); len(got) != 1 || got[0] != "alice/"+phone.GetDeviceId() {
		t.Fatalf("OnLogout calls %v", got)
	}
	// Again: already revoked, succeeds without another OnLogout.
	if _, err := e.c.RevokeDevice(e.as(laptop.GetAccessToken()), &chatv1.RevokeDeviceRequest{DeviceId: phone.GetDeviceId()}); err != nil {
		t.Fatal(err)
	}

	resp, err := e.c.RevokeOtherDevices(e.as(laptop.GetAccessToken()), &chatv1.RevokeOtherDevicesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if ids := resp.GetRevokedDeviceIds(); len(ids) != 1 || ids[0] != tablet.GetDeviceId() {
		t.Fatalf("RevokeOtherDevices revoked %v, want only the tablet", ids)
	}
	_, err = e.c.ListDevices(e.as(tablet.GetAccessToken()), &chatv1.ListDevicesRequest{})
	wantStatus(t, err, codes.Unauthenticated, "session revoked")
	devs, err := e.c.ListDevices(e.as(laptop.GetAccessToken()), &chatv1.ListDevicesRequest{})
	if err != nil || len(devs.GetDevices()) != 1 || !devs.GetDevices()[0].GetCurrent() {
		t.Fatalf("alice's devices after revoking the others: %v %v", devs, err)
	}
	if _, err := e.c.ListDevices(e.as(bob.GetAccessToken()), &chatv1.ListDevicesRequest{}); err != nil {
		t.Fatalf("bob's device was revoked: %v", err)
	}
}
