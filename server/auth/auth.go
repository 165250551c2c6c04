package auth

import (
	"context"
	"errors"
	"hash/maphash"
	"log/slog"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/chatd/chatd/server/store"
)

// Defaults for Config fields left zero.
const (
	DefaultTokenTTL           = 30 * 24 * time.Hour
	DefaultRevocationCacheTTL = 5 * time.Second
	// MinKeyLen is the shortest HMAC key New accepts, in bytes.
	MinKeyLen = 32
)

// Config configures an Authenticator.
type Config struct {
	// Key is the HMAC-SHA256 key tokens are signed with; at least MinKeyLen
	// (32) bytes. Every node of a cluster must use the same key.
	Key []byte
	// TokenTTL is how long an issued token stays valid; default 30 days.
	TokenTTL time.Duration
	// Devices is where Validate looks up whether a device is revoked.
	Devices store.Accounts
	// Public lists full gRPC method names ("/chat.v1.AccountService/LogIn")
	// that the interceptors let through without a token. Methods under
	// /grpc.health.v1. and /grpc.reflection. are always public.
	Public []string
	// RevocationCacheTTL is how long Validate trusts a device lookup;
	// default 5 s. A revocation made on another node becomes visible here
	// within this time; a local Revoke is visible at once.
	RevocationCacheTTL time.Duration
	// Now returns the current time for token expiry checks; default
	// time.Now. Tests use it to move the clock.
	Now func() time.Time
}

// Authenticator issues and verifies bearer tokens and tracks device
// revocation. It is safe for concurrent use.
type Authenticator struct {
	key      []byte
	ttl      time.Duration
	cacheTTL time.Duration
	devices  store.Accounts
	public   map[string]struct{}
	now      func() time.Time
	seed     maphash.Seed
	macPool  sync.Pool // of hash.Hash: HMAC-SHA256 keyed with key
	shards   [cacheShards]cacheShard
}

// New returns an Authenticator. It fails if Key is shorter than 32 bytes,
// Devices is nil, or a duration is negative.
func New(cfg Config) (*Authenticator, error) {
	if len(cfg.Key) < MinKeyLen {
		return nil, errors.New("auth: key must be at least 32 bytes")
	}
	if cfg.Devices == nil {
		return nil, errors.New("auth: Devices store is required")
	}
	if cfg.TokenTTL < 0 || cfg.RevocationCacheTTL < 0 {
		return nil, errors.New("auth: negative duration")
	}
	a := &Authenticator{
		key:      append([]byte(nil), cfg.Key...),
		ttl:      cfg.TokenTTL,
		cacheTTL: cfg.RevocationCacheTTL,
		devices:  cfg.Devices,
		public:   make(map[string]struct{}, len(cfg.Public)),
		now:      cfg.Now,
		seed:     maphash.MakeSeed(),
	}
	if a.ttl == 0 {
		a.ttl = DefaultTokenTTL
	}
	if a.cacheTTL == 0 {
		a.cacheTTL = DefaultRevocationCacheTTL
	}
	if a.now == nil {
		a.now = time.Now
	}
	for _, m := range cfg.Public {
		a.public[m] = struct{}{}
	}
	for i := range a.shards {
		a.shards[i].m = make(map[deviceKey]cacheEntry)
	}
	return a, nil
}

// TokenTTL returns the lifetime of the tokens Issue creates.
func (a *Authenticator) TokenTTL() time.Duration { return a.ttl }

// --- revocation cache ---

const (
	cacheShards        = 32
	maxEntriesPerShard = 4096 // bounds the cache at 131072 devices
)

type deviceKey struct{ user, device string }

type cacheEntry struct {
	checked    time.Time // when the store was last read (monotonic)
	revoked    bool      // sticky: once revoked, a device never comes back
	refreshing bool      // a store lookup for this entry is in flight
}

type cacheShard struct {
	mu sync.Mutex
	m  map[deviceKey]cacheEntry
}

func (a *Authenticator) shard(k deviceKey) *cacheShard {
	var h maphash.Hash
	h.SetSeed(a.seed)
	h.WriteString(k.user)
	h.WriteByte(0)
	h.WriteString(k.device)
	return &a.shards[h.Sum64()%cacheShards]
}

// put stores e under k, evicting stale entries (then arbitrary ones) when
// the shard is full. Caller holds s.mu.
func (s *cacheShard) put(k deviceKey, e cacheEntry, now time.Time, ttl time.Duration) {
	if _, ok := s.m[k]; !ok && len(s.m) >= maxEntriesPerShard {
		for dk, de := range s.m {
			if !de.refreshing && now.Sub(de.checked) >= ttl {
				delete(s.m, dk)
			}
		}
		for dk := range s.m {
			if len(s.m) < maxEntriesPerShard*3/4 {
				break
			}
			delete(s.m, dk)
		}
	}
	s.m[k] = e
}

var (
	errRevoked         = ErrRevoked
	errSessionCheck    = store.Errorf(store.CodeUnavailable, "cannot verify session, retry")
	errMissingToken    = store.Errorf(store.CodeUnauthenticated, "missing bearer token")
	errNotBearerScheme = store.Errorf(store.CodeUnauthenticated, "authorization must be \"Bearer <token>\"")
)

// Validate re-checks an already parsed Principal; it is cheap enough to call
// on every frame of a long-lived stream (grpc-go checks per-RPC credentials
// only when a stream opens). It returns nil if the token has not expired
// and the device is neither revoked nor unknown; otherwise a *store.Error
// with CodeUnauthenticated ("token expired" or "session revoked").
// Device lookups are cached for RevocationCacheTTL; while one lookup of a
// device is in flight, concurrent callers use the previous answer. If the
// store fails and no answer is cached it returns CodeUnavailable (or the
// context's error).
func (a *Authenticator) Validate(ctx context.Context, p Principal) error {
	if !a.now().Before(p.ExpiresAt) {
		return errExpired
	}
	k := deviceKey{p.UserID, p.DeviceID}
	s := a.shard(k)
	now := time.Now()
	s.mu.Lock()
	e, ok := s.m[k]
	if ok && (e.revoked || e.refreshing || now.Sub(e.checked) < a.cacheTTL) {
		s.mu.Unlock()
		if e.revoked {
			return errRevoked
		}
		return nil
	}
	if ok {
		e.refreshing = true
		s.m[k] = e
	}
	s.mu.Unlock()

	d, err := a.devices.GetDevice(ctx, p.UserID, p.DeviceID)
	revoked := false
	switch {
	case err == nil:
		revoked = d.Revoked
	case errors.Is(err, store.ErrNotFound):
		revoked = true
	default:
		s.mu.Lock()
		if cur, ok := s.m[k]; ok {
			cur.refreshing = false
			s.m[k] = cur
		}
		s.mu.Unlock()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		slog.Error("auth: device lookup failed", "user_id", p.UserID, "device_id", p.DeviceID, "err", err)
		return errSessionCheck
	}

	s.mu.Lock()
	cur := s.m[k] // a concurrent Revoke may have set revoked meanwhile
	s.put(k, cacheEntry{checked: now, revoked: revoked || cur.revoked}, now, a.cacheTTL)
	revoked = revoked || cur.revoked
	s.mu.Unlock()
	if revoked {
		return errRevoked
	}
	return nil
}

// Revoke marks the device revoked in this process's cache at once, so that
// the next Validate of any of its tokens returns Unauthenticated. The
// durable revocation (store.Device.Revoked) is the caller's job; other
// nodes see it within RevocationCacheTTL.
func (a *Authenticator) Revoke(userID, deviceID string) {
	k := deviceKey{userID, deviceID}
	s := a.shard(k)
	now := time.Now()
	s.mu.Lock()
	s.put(k, cacheEntry{checked: now, revoked: true}, now, a.cacheTTL)
	s.mu.Unlock()
}

// --- interceptors ---

// IsPublic reports whether fullMethod needs no token: it is listed in
// Config.Public or belongs to grpc.health.v1 or grpc.reflection.
func (a *Authenticator) IsPublic(fullMethod string) bool {
	if _, ok := a.public[fullMethod]; ok {
		return true
	}
	return strings.HasPrefix(fullMethod, "/grpc.health.v1.") ||
		strings.HasPrefix(fullMethod, "/grpc.reflection.")
}

// Authenticate reads the "authorization: Bearer <token>" metadata of an
// incoming gRPC context, parses and validates the token and returns its
// Principal. Errors as Parse and Validate, plus CodeUnauthenticated "missing
// bearer token" when there is no authorization metadata.
func (a *Authenticator) Authenticate(ctx context.Context) (Principal, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get("authorization")
	if len(vals) == 0 || vals[0] == "" {
		return Principal{}, errMissingToken
	}
	v := vals[0]
	const scheme = "bearer "
	if len(v) <= len(scheme) || !strings.EqualFold(v[:len(scheme)], scheme) {
		return Principal{}, errNotBearerScheme
	}
	p, err := a.Parse(strings.TrimSpace(v[len(scheme):]), a.now())
	if err != nil {
		return Principal{}, err
	}
	if err := a.Validate(ctx, p); err != nil {
		return Principal{}, err
	}
	return p, nil
}

// UnaryInterceptor authenticates every unary call except public methods
// (see IsPublic) and passes the handler a context carrying the Principal
// (FromContext). A missing, malformed, forged, expired or revoked token
// fails the call with CodeUnauthenticated before the handler runs (a
// *store.Error: grpcerr's interceptor, installed before this one, turns it
// into the Unauthenticated status).
func (a *Authenticator) UnaryInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if a.IsPublic(info.FullMethod) {
			return handler(ctx, req)
		}
		p, err := a.Authenticate(ctx)
		if err != nil {
			return nil, err
		}
		return handler(NewContext(ctx, p), req)
	}
}

// StreamInterceptor authenticates a stream when it opens, like
// UnaryInterceptor; the handler's stream.Context() carries the Principal.
// Long-lived stream handlers must call Validate on every frame they accept.
func (a *Authenticator) StreamInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ss, err := a.Stream(ss, info.FullMethod)
		if err != nil {
			return err
		}
		return handler(srv, ss)
	}
}

// Stream is StreamInterceptor's check as a function, for a server that
// runs its stream checks in one interceptor: it authenticates a stream of
// fullMethod when it opens and returns ss with the Principal in its
// Context (ss itself for a public method), or Authenticate's error.
func (a *Authenticator) Stream(ss grpc.ServerStream, fullMethod string) (grpc.ServerStream, error) {
	if a.IsPublic(fullMethod) {
		return ss, nil
	}
	p, err := a.Authenticate(ss.Context())
	if err != nil {
		return nil, err
	}
	return &principalStream{ServerStream: ss, ctx: NewContext(ss.Context(), p)}, nil
}

type principalStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *principalStream) Context() context.Context { return s.ctx }
