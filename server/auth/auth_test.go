package auth_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/chatd/chatd/server/auth"
	"github.com/chatd/chatd/server/grpcerr"
	"github.com/chatd/chatd/server/internal/grpctest"
	"github.com/chatd/chatd/server/store"
	"github.com/chatd/chatd/server/store/pebble"
	"golang.org/x/crypto/argon2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
)

var testKey = bytes.Repeat([]byte{7}, 32)

func openStore(t testing.TB) *pebble.Store {
	t.Helper()
	st, err := pebble.Open(t.TempDir(), pebble.WithCacheSize(1<<20), pebble.WithMemTableSize(1<<20))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func newAuth(t testing.TB, cfg auth.Config) *auth.Authenticator {
	t.Helper()
	if cfg.Key == nil {
		cfg.Key = testKey
	}
	a, err := auth.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// wantCode: err, returned by auth, has the domain code and (if msg is set)
// that message.
func wantCode(t *testing.T, err error, code store.Code, msg string) {
	t.Helper()
	if store.ErrorCode(err) != code || (msg != "" && store.ErrorMessage(err) != msg) {
		t.Fatalf("got %v (%s), want %s %q", err, store.ErrorCode(err), code, msg)
	}
}

// wantWire: err, received over gRPC, has the status the edge maps the
// domain code to and (if msg is set) that message.
func wantWire(t *testing.T, err error, code store.Code, msg string) {
	t.Helper()
	st := grpcerr.Convert(err)
	if st.Code() != grpcerr.CodeOf(code) || (msg != "" && st.Message() != msg) {
		t.Fatalf("got %v, want %v (%s) %q", err, grpcerr.CodeOf(code), code, msg)
	}
}

// --- passwords ---

var phcRe = regexp.MustCompile(`^\$argon2id\$v=19\$m=19456,t=2,p=1\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}$`)

func TestHashPassword(t *testing.T) {
	h1, err := auth.HashPassword("correct horse")
	if err != nil {
		t.Fatal(err)
	}
	h2, _ := auth.HashPassword("correct horse")
	if !phcRe.Match(h1) {
		t.Fatalf("hash %q is not a PHC argon2id string with the OWASP parameters", h1)
	}
	if bytes.Equal(h1, h2) {
		t.Fatal("two hashes of one password are equal: salt is not random")
	}
	for _, tc := range []struct {
		pw   string
		want bool
	}{{"correct horse", true}, {"correct horsE", false}, {"", false}, {"correct horse ", false}} {
		ok, err := auth.CheckPassword(h1, tc.pw)
		if err != nil || ok != tc.want {
			t.Errorf("CheckPassword(%q) = %v, %v; want %v", tc.pw, ok, err, tc.want)
		}
	}
}

// A hash stored with other parameters (an older or tuned configuration)
// still verifies: the parameters are read from the string.
func TestCheckPasswordOtherParameters(t *testing.T) {
	salt := []byte("0123456789abcdefXYZ")
	key := argon2.IDKey([]byte("hunter22"), salt, 1, 8192, 2, 24)
	enc := base64.RawStdEncoding
	h := fmt.Sprintf("$argon2id$v=19$m=8192,t=1,p=2$%s$%s", enc.EncodeToString(salt), enc.EncodeToString(key))
	if ok, err := auth.CheckPassword([]byte(h), "hunter22"); !ok || err != nil {
		t.Fatalf("other parameters: %v, %v", ok, err)
	}
	if ok, err := auth.CheckPassword([]byte(h), "hunter23"); ok || err != nil {
		t.Fatalf("wrong password accepted: %v, %v", ok, err)
	}
}

func TestCheckPasswordMalformed(t *testing.T) {
	good, _ := auth.HashPassword("pw")
	parts := strings.Split(string(good), "$")
	for name, h := range map[string]string{
		"empty":        "",
		"argon2i":      strings.Replace(string(good), "argon2id", "argon2i", 1),
		"version":      strings.Replace(string(good), "v=19", "v=16", 1),
		"huge memory":  strings.Replace(string(good), "m=19456", "m=4294967295", 1),
		"zero time":    strings.Replace(string(good), "t=2", "t=0", 1),
		"huge time":    strings.Replace(string(good), "t=2", "t=1000", 1),
		"zero threads": strings.Replace(string(good), "p=1", "p=0", 1),
		"unknown key":  strings.Replace(string(good), "p=1", "x=1", 1),
		"bad salt":     strings.Join([]string{"", parts[1], parts[2], parts[3], "!!", parts[5]}, "$"),
		"short tag":    strings.Join([]string{"", parts[1], parts[2], parts[3], parts[4], "AAAA"}, "$"),
		"extra field":  string(good) + "$x",
	} {
		if ok, err := auth.CheckPassword([]byte(h), "pw"); ok || err != auth.ErrMalformedHash {
			t.Errorf("%s: got %v, %v; want ErrMalformedHash", name, ok, err)
		}
	}
}

// --- tokens ---

func TestIssueParse(t *testing.T) {
	a := newAuth(t, auth.Config{Devices: openStore(t), TokenTTL: time.Hour})
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	tok, exp, err := a.Issue("zoë", "dev1", now)
	if err != nil {
		t.Fatal(err)
	}
	if !exp.Equal(now.Add(time.Hour)) {
		t.Fatalf("expiresAt %v, want %v", exp, now.Add(time.Hour))
	}
	if !strings.HasPrefix(tok, "v1.") || len(tok) > auth.MaxTokenLen {
		t.Fatalf("token shape: %q", tok)
	}
	p, err := a.Parse(tok, now.Add(59*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if p.UserID != "zoë" || p.DeviceID != "dev1" || !p.ExpiresAt.Equal(exp) {
		t.Fatalf("principal %+v", p)
	}
	_, err = a.Parse(tok, now.Add(time.Hour))
	wantCode(t, err, store.CodeUnauthenticated, "token expired")

	other := newAuth(t, auth.Config{Key: bytes.Repeat([]byte{8}, 32), Devices: openStore(t)})
	_, err = other.Parse(tok, now)
	wantCode(t, err, store.CodeUnauthenticated, "bad signature")

	// Tampering with any byte of the payload breaks the signature.
	dot := strings.LastIndexByte(tok, '.')
	for i := len("v1."); i < dot; i++ {
		b := []byte(tok)
		b[i] = map[bool]byte{true: 'A', false: 'B'}[b[i] != 'A']
		if _, err := a.Parse(string(b), now); store.ErrorCode(err) != store.CodeUnauthenticated {
			t.Fatalf("tampered byte %d accepted: %v", i, err)
		}
	}
	// A forged payload naming another user, with the original MAC.
	forged := "v1." + base64.RawURLEncoding.EncodeToString([]byte("\x03bob\x04dev1\x00\x00")) + tok[dot:]
	_, err = a.Parse(forged, now)
	wantCode(t, err, store.CodeUnauthenticated, "bad signature")
}

func TestParseMalformed(t *testing.T) {
	a := newAuth(t, auth.Config{Devices: openStore(t)})
	now := time.Now()
	tok, _, _ := a.Issue("alice", "d", now)
	for name, s := range map[string]string{
		"empty":       "",
		"no version":  strings.TrimPrefix(tok, "v1."),
		"v2":          "v2" + tok[2:],
		"no mac":      tok[:strings.LastIndexByte(tok, '.')],
		"short mac":   tok[:len(tok)-2],
		"bad base64":  tok[:len(tok)-1] + "*",
		"too long":    tok + strings.Repeat("A", auth.MaxTokenLen),
		"only prefix": "v1.",
		"two dots":    "v1..",
	} {
		_, err := a.Parse(s, now)
		if store.ErrorCode(err) != store.CodeUnauthenticated || store.ErrorMessage(err) != "malformed token" {
			t.Errorf("%s: got %v, want Unauthenticated \"malformed token\"", name, err)
		}
	}
	if _, _, err := a.Issue("", "d", now); err == nil {
		t.Error("Issue with empty user id succeeded")
	}
}

func FuzzParse(f *testing.F) {
	a, _ := auth.New(auth.Config{Key: testKey, Devices: nopAccounts{}})
	tok, _, _ := a.Issue("alice", "dev", time.Unix(0, 0))
	f.Add(tok)
	f.Add("v1.AAAA.AAAA")
	f.Add("v1.")
	f.Fuzz(func(t *testing.T, s string) {
		p, err := a.Parse(s, time.Unix(0, 0))
		if err == nil && (p.UserID == "" || p.DeviceID == "") {
			t.Fatalf("accepted %q with empty ids", s)
		}
		if err != nil && store.ErrorCode(err) != store.CodeUnauthenticated {
			t.Fatalf("non-Unauthenticated error %v", err)
		}
	})
}

// nopAccounts satisfies store.Accounts for FuzzParse, which never reaches
// the store (Parse does not look devices up).
type nopAccounts struct{ store.Accounts }

// --- validation and revocation ---

func putDevice(t *testing.T, st store.Accounts, user, dev string, revoked bool) {
	t.Helper()
	err := st.PutDevice(context.Background(), &store.Device{UserID: user, DeviceID: dev, Name: "n", CreatedAt: time.Now(), LastSeenAt: time.Now(), Revoked: revoked})
	if err != nil {
		t.Fatal(err)
	}
}

func TestValidate(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	// RevocationCacheTTL of 1ns: every Validate reads the store.
	a := newAuth(t, auth.Config{Devices: st, RevocationCacheTTL: time.Nanosecond})
	putDevice(t, st, "alice", "d1", false)
	future := time.Now().Add(time.Hour)

	if err := a.Validate(ctx, auth.Principal{UserID: "alice", DeviceID: "d1", ExpiresAt: future}); err != nil {
		t.Fatalf("live device: %v", err)
	}
	wantCode(t, a.Validate(ctx, auth.Principal{UserID: "alice", DeviceID: "d1", ExpiresAt: time.Now().Add(-time.Second)}),
		store.CodeUnauthenticated, "token expired")
	wantCode(t, a.Validate(ctx, auth.Principal{UserID: "alice", DeviceID: "nope", ExpiresAt: future}),
		store.CodeUnauthenticated, "session revoked")
	wantCode(t, a.Validate(ctx, auth.Principal{UserID: "bob", DeviceID: "d1", ExpiresAt: future}),
		store.CodeUnauthenticated, "session revoked")

	// Revoked in the store by another node: seen once the cache entry is
	// stale (here: at once).
	putDevice(t, st, "alice", "d1", true)
	wantCode(t, a.Validate(ctx, auth.Principal{UserID: "alice", DeviceID: "d1", ExpiresAt: future}),
		store.CodeUnauthenticated, "session revoked")
}

func TestRevokeIsImmediateDespiteCache(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	a := newAuth(t, auth.Config{Devices: st, RevocationCacheTTL: time.Hour})
	putDevice(t, st, "alice", "d1", false)
	putDevice(t, st, "alice", "d2", false)
	p1 := auth.Principal{UserID: "alice", DeviceID: "d1", ExpiresAt: time.Now().Add(time.Hour)}
	p2 := auth.Principal{UserID: "alice", DeviceID: "d2", ExpiresAt: time.Now().Add(time.Hour)}
	if err := a.Validate(ctx, p1); err != nil { // now cached as live for 1h
		t.Fatal(err)
	}
	a.Revoke("alice", "d1")
	wantCode(t, a.Validate(ctx, p1), store.CodeUnauthenticated, "session revoked")
	if err := a.Validate(ctx, p2); err != nil {
		t.Fatalf("revoking d1 affected d2: %v", err)
	}
	// The store still says live, the 1h cache entry says revoked: revoked
	// is sticky.
	if err := a.Validate(ctx, p1); store.ErrorCode(err) != store.CodeUnauthenticated {
		t.Fatalf("revocation forgotten: %v", err)
	}
}

func TestValidateConcurrent(t *testing.T) {
	st := openStore(t)
	a := newAuth(t, auth.Config{Devices: st, RevocationCacheTTL: time.Nanosecond})
	for i := range 8 {
		putDevice(t, st, "u", fmt.Sprint("d", i), false)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8*200)
	for i := range 8 {
		wg.Go(func() {
			p := auth.Principal{UserID: "u", DeviceID: fmt.Sprint("d", i), ExpiresAt: time.Now().Add(time.Hour)}
			for range 200 {
				if err := a.Validate(context.Background(), p); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("live device rejected under concurrency: %v", err)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	if _, err := auth.New(auth.Config{Key: make([]byte, 31), Devices: nopAccounts{}}); err == nil {
		t.Error("31-byte key accepted")
	}
	if _, err := auth.New(auth.Config{Key: testKey}); err == nil {
		t.Error("nil Devices accepted")
	}
	a := newAuth(t, auth.Config{Devices: nopAccounts{}})
	if a.TokenTTL() != 30*24*time.Hour {
		t.Errorf("default TTL %v", a.TokenTTL())
	}
}

// --- keys ---

func TestLoadOrCreateKey(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "token.key")
	k1, err := auth.LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(k1) != 32 || bytes.Equal(k1, make([]byte, 32)) {
		t.Fatalf("key %x", k1)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", fi.Mode().Perm())
	}
	k2, err := auth.LoadOrCreateKey(path)
	if err != nil || !bytes.Equal(k1, k2) {
		t.Fatalf("reload: %x, %v; want %x", k2, err, k1)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("leftover files: %v", entries)
	}
	short := filepath.Join(dir, "short.key")
	os.WriteFile(short, []byte("tooshort"), 0o600)
	if _, err := auth.LoadOrCreateKey(short); err == nil {
		t.Fatal("short key file accepted")
	}

	// Concurrent first start: everyone gets the same key.
	path2 := filepath.Join(dir, "race.key")
	keys := make([][]byte, 8)
	var wg sync.WaitGroup
	for i := range keys {
		wg.Go(func() {
			k, err := auth.LoadOrCreateKey(path2)
			if err != nil {
				t.Error(err)
			}
			keys[i] = k
		})
	}
	wg.Wait()
	for _, k := range keys[1:] {
		if !bytes.Equal(k, keys[0]) {
			t.Fatal("concurrent LoadOrCreateKey returned different keys")
		}
	}
}

// --- interceptors over real gRPC ---

// probe is a ChatService whose handlers report the Principal the
// interceptors put in the context; Chat validates it on every frame as a
// long-lived stream handler must.
type probe struct {
	chatv1.UnimplementedChatServiceServer
	a *auth.Authenticator
}

func (p probe) GetChannel(ctx context.Context, _ *chatv1.GetChannelRequest) (*chatv1.GetChannelResponse, error) {
	pr, ok := auth.FromContext(ctx)
	if !ok {
		return nil, store.Errorf(store.CodeInternal, "no principal")
	}
	return &chatv1.GetChannelResponse{Channel: &chatv1.Channel{ChannelId: pr.UserID + "/" + pr.DeviceID}}, nil
}

func (p probe) Chat(stream chatv1.ChatService_ChatServer) error {
	pr, ok := auth.FromContext(stream.Context())
	if !ok {
		return store.Errorf(store.CodeInternal, "no principal")
	}
	if err := stream.Send(&chatv1.ServerFrame{Payload: &chatv1.ServerFrame_Welcome{Welcome: &chatv1.Welcome{UserId: pr.UserID, DeviceId: pr.DeviceID}}}); err != nil {
		return err
	}
	for {
		f, err := stream.Recv()
		if err != nil {
			return err
		}
		if err := p.a.Validate(stream.Context(), pr); err != nil {
			return err
		}
		if err := stream.Send(&chatv1.ServerFrame{FrameId: f.GetFrameId()}); err != nil {
			return err
		}
	}
}

func serve(t *testing.T, a *auth.Authenticator) *grpc.ClientConn {
	t.Helper()
	srv := grpc.NewServer( // as server/app installs them: grpcerr first
		grpc.ChainUnaryInterceptor(grpcerr.UnaryServerInterceptor(), a.UnaryInterceptor()),
		grpc.ChainStreamInterceptor(grpcerr.StreamServerInterceptor(), a.StreamInterceptor()))
	chatv1.RegisterChatServiceServer(srv, probe{a: a})
	healthpb.RegisterHealthServer(srv, health.NewServer())
	return grpctest.Serve(t, srv)
}

func bearer(ctx context.Context, tok string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
}

func TestInterceptors(t *testing.T) {
	st := openStore(t)
	a := newAuth(t, auth.Config{Devices: st, Public: []string{chatv1.ChatService_ListChannels_FullMethodName}})
	cc := serve(t, a)
	c := chatv1.NewChatServiceClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	putDevice(t, st, "alice", "d1", false)
	tok, _, err := a.Issue("alice", "d1", time.Now())
	if err != nil {
		t.Fatal(err)
	}

	// Unary: principal reaches the handler.
	resp, err := c.GetChannel(bearer(ctx, tok), &chatv1.GetChannelRequest{})
	if err != nil || resp.GetChannel().GetChannelId() != "alice/d1" {
		t.Fatalf("GetChannel: %v, %v", resp, err)
	}
	// Lower-case scheme is accepted too (RFC 7235: case-insensitive).
	lower := metadata.AppendToOutgoingContext(ctx, "authorization", "bearer "+tok)
	if _, err := c.GetChannel(lower, &chatv1.GetChannelRequest{}); err != nil {
		t.Fatalf("lower-case scheme: %v", err)
	}
	_, err = c.GetChannel(ctx, &chatv1.GetChannelRequest{})
	wantWire(t, err, store.CodeUnauthenticated, "missing bearer token")
	basic := metadata.AppendToOutgoingContext(ctx, "authorization", "Basic YWxpY2U6cHc=")
	_, err = c.GetChannel(basic, &chatv1.GetChannelRequest{})
	wantWire(t, err, store.CodeUnauthenticated, "")
	_, err = c.GetChannel(bearer(ctx, tok[:len(tok)-3]+"AAA"), &chatv1.GetChannelRequest{})
	wantWire(t, err, store.CodeUnauthenticated, "bad signature")
	_, err = c.GetChannel(bearer(ctx, "garbage"), &chatv1.GetChannelRequest{})
	wantWire(t, err, store.CodeUnauthenticated, "malformed token")
	expired, _, _ := a.Issue("alice", "d1", time.Now().Add(-31*24*time.Hour))
	_, err = c.GetChannel(bearer(ctx, expired), &chatv1.GetChannelRequest{})
	wantWire(t, err, store.CodeUnauthenticated, "token expired")

	// Public methods and health pass without a token (the probe answers
	// Unimplemented for ListChannels: the call reached the handler).
	_, err = c.ListChannels(ctx, &chatv1.ListChannelsRequest{})
	if c := grpcerr.Code(err).String(); c != "Unimplemented" {
		t.Fatalf("public ListChannels: %v, want Unimplemented", err)
	}
	if _, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("health without token: %v", err)
	}

	// Stream: principal in stream.Context(); no token: refused at open.
	s, err := c.Chat(ctx)
	if err == nil {
		_, err = s.Recv()
	}
	wantWire(t, err, store.CodeUnauthenticated, "missing bearer token")

	s, err = c.Chat(bearer(ctx, tok))
	if err != nil {
		t.Fatal(err)
	}
	w, err := s.Recv()
	if err != nil || w.GetWelcome().GetUserId() != "alice" || w.GetWelcome().GetDeviceId() != "d1" {
		t.Fatalf("welcome %v, %v", w, err)
	}
	if err := s.Send(&chatv1.ClientFrame{FrameId: 1}); err != nil {
		t.Fatal(err)
	}
	if f, err := s.Recv(); err != nil || f.GetFrameId() != 1 {
		t.Fatalf("frame before revoke: %v, %v", f, err)
	}
	// Revoked while the stream is open: the next frame fails.
	a.Revoke("alice", "d1")
	if err := s.Send(&chatv1.ClientFrame{FrameId: 2}); err != nil {
		t.Fatal(err)
	}
	_, err = s.Recv()
	wantWire(t, err, store.CodeUnauthenticated, "session revoked")
	_, err = c.GetChannel(bearer(ctx, tok), &chatv1.GetChannelRequest{})
	wantWire(t, err, store.CodeUnauthenticated, "session revoked")
}

func BenchmarkValidateCached(b *testing.B) {
	st := openStore(b)
	a := newAuth(b, auth.Config{Devices: st, RevocationCacheTTL: time.Hour})
	st.PutDevice(context.Background(), &store.Device{UserID: "u", DeviceID: "d", CreatedAt: time.Now()})
	p := auth.Principal{UserID: "u", DeviceID: "d", ExpiresAt: time.Now().Add(time.Hour)}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := a.Validate(context.Background(), p); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkParse(b *testing.B) {
	a := newAuth(b, auth.Config{Devices: nopAccounts{}})
	tok, _, _ := a.Issue("alice", "0123456789abcdef0123456789abcdef", time.Now())
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := a.Parse(tok, now); err != nil {
			b.Fatal(err)
		}
	}
}
