// Package ratelimit limits request rates per key (a user id or a client IP)
// with token buckets held in a sharded map of bounded size, and provides a
// gRPC interceptor that applies it. Its error is a *store.Error; it does
// not import gRPC status or codes.
package ratelimit

import (
	"context"
	"hash/maphash"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/chatd/chatd/server/auth"
	"github.com/chatd/chatd/server/store"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
)

const (
	numShards = 64
	// MaxKeysPerShard bounds memory: a shard holds at most this many
	// buckets (64 shards: 262144 keys, roughly 40 MB in the worst case).
	MaxKeysPerShard = 4096
	// sweepAt is the shard size at which an insert first sweeps idle
	// buckets.
	sweepAt = 1024
)

// Limiter is a set of token buckets, one per key, each refilling at
// perSecond tokens per second up to burst tokens. Keys that stay idle long
// enough for their bucket to fill again are forgotten (a forgotten key
// starts again with a full bucket, which is the same state). It is safe for
// concurrent use; keys hash to 64 independently locked shards.
type Limiter struct {
	limit  rate.Limit
	burst  int
	seed   maphash.Seed
	shards [numShards]shard
}

type shard struct {
	mu        sync.Mutex
	m         map[string]*rate.Limiter
	nextSweep int // sweep idle buckets when len(m) reaches this
	_         [40]byte
}

// New returns a Limiter allowing each key perSecond requests per second on
// average and bursts of up to burst requests. perSecond <= 0 with burst <= 0
// denies everything; rate.Inf (math.Inf) allows everything.
func New(perSecond float64, burst int) *Limiter {
	l := &Limiter{limit: rate.Limit(perSecond), burst: burst, seed: maphash.MakeSeed()}
	for i := range l.shards {
		l.shards[i].m = make(map[string]*rate.Limiter)
		l.shards[i].nextSweep = sweepAt
	}
	return l
}

// Allow reports whether one request for key may proceed now, taking a token
// from key's bucket if so.
func (l *Limiter) Allow(key string) bool { return l.AllowAt(key, time.Now()) }

// AllowAt is Allow at the given instant (for tests and callers that already
// hold the time). Instants must not go backwards by more than the refill
// interval for a key.
func (l *Limiter) AllowAt(key string, now time.Time) bool {
	s := &l.shards[maphash.String(l.seed, key)%numShards]
	s.mu.Lock()
	b, ok := s.m[key]
	if !ok {
		if len(s.m) >= s.nextSweep {
			s.sweep(now, l.burst)
		}
		b = rate.NewLimiter(l.limit, l.burst)
		s.m[key] = b
	}
	allowed := b.AllowN(now, 1)
	s.mu.Unlock()
	return allowed
}

// sweep drops the buckets that are full again (idle keys). If the shard is
// still at MaxKeysPerShard it drops arbitrary buckets down to 3/4 of it:
// those keys get a fresh bucket, so under a flood of distinct keys the
// limiter errs towards allowing. Caller holds s.mu.
func (s *shard) sweep(now time.Time, burst int) {
	for k, b := range s.m {
		if b.TokensAt(now) >= float64(burst) {
			delete(s.m, k)
		}
	}
	if len(s.m) >= MaxKeysPerShard {
		for k := range s.m {
			if len(s.m) < MaxKeysPerShard*3/4 {
				break
			}
			delete(s.m, k)
		}
	}
	// Amortise: the next sweep waits until the shard doubles (bounded by
	// the hard cap), so a shard full of busy keys is not swept per insert.
	s.nextSweep = max(sweepAt, min(2*len(s.m), MaxKeysPerShard))
}

// Len returns the number of keys currently tracked.
func (l *Limiter) Len() int {
	n := 0
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		n += len(s.m)
		s.mu.Unlock()
	}
	return n
}

// KeyFunc returns the rate-limit key of a call; "" exempts the call.
type KeyFunc func(ctx context.Context, fullMethod string) string

var errLimited = store.Errorf(store.CodeResourceExhausted, "rate limit exceeded").WithReason(store.ReasonRateLimited)

// RetryAfter is how long a caller that was refused waits for the next
// token: one token interval (1/rate), at least a millisecond; zero for an
// unlimited Limiter. It is the google.rpc.RetryInfo of a refusal.
func (l *Limiter) RetryAfter() time.Duration {
	if l.limit == rate.Inf || l.limit <= 0 {
		return 0
	}
	return max(time.Millisecond, time.Duration(float64(time.Second)/float64(l.limit)))
}

// limited is the error of a refused call: CodeResourceExhausted, reason
// RATE_LIMITED, RetryAfter the token interval.
func (l *Limiter) limited() error { return errLimited.WithRetryAfter(l.RetryAfter()) }

// UnaryInterceptor rejects calls whose key has no token left with
// CodeResourceExhausted "rate limit exceeded", reason
// store.ReasonRateLimited and RetryAfter (a *store.Error: grpcerr's
// interceptor, installed before this one, turns it into the
// ResourceExhausted status). keyFn nil means DefaultKey. Put it after the
// auth interceptor so that the Principal is in the context.
func UnaryInterceptor(l *Limiter, keyFn func(ctx context.Context, fullMethod string) string) grpc.UnaryServerInterceptor {
	if keyFn == nil {
		keyFn = DefaultKey
	}
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if k := keyFn(ctx, info.FullMethod); k != "" && !l.Allow(k) {
			return nil, l.limited()
		}
		return handler(ctx, req)
	}
}

// StreamInterceptor is UnaryInterceptor for stream opens (not for the
// frames inside a stream).
func StreamInterceptor(l *Limiter, keyFn func(ctx context.Context, fullMethod string) string) grpc.StreamServerInterceptor {
	if keyFn == nil {
		keyFn = DefaultKey
	}
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if err := l.CheckStream(ss.Context(), info.FullMethod, keyFn); err != nil {
			return err
		}
		return handler(srv, ss)
	}
}

// CheckStream is StreamInterceptor's check as a function, for a server
// that runs its stream checks in one interceptor: nil when the stream of
// fullMethod may open, else the error StreamInterceptor returns (a
// *store.Error, CodeResourceExhausted with RetryAfter). It takes a token
// of the key's bucket. keyFn nil means DefaultKey.
func (l *Limiter) CheckStream(ctx context.Context, fullMethod string, keyFn func(ctx context.Context, fullMethod string) string) error {
	if keyFn == nil {
		keyFn = DefaultKey
	}
	if k := keyFn(ctx, fullMethod); k != "" && !l.Allow(k) {
		return l.limited()
	}
	return nil
}

// DefaultKey keys a call by "user:<user_id>" when the context carries an
// auth.Principal, else by "ip:<address>" of the peer. When the peer is a
// loopback address (the in-process REST gateway) the last entry of the
// x-forwarded-for metadata, which grpc-gateway sets to the HTTP client's
// address, is used instead. Calls with no known peer get "ip:unknown".
func DefaultKey(ctx context.Context, _ string) string {
	if p, ok := auth.FromContext(ctx); ok {
		return "user:" + p.UserID
	}
	pr, ok := peer.FromContext(ctx)
	if !ok || pr.Addr == nil {
		return "ip:unknown"
	}
	host := pr.Addr.String()
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if ip, err := netip.ParseAddr(host); err == nil && ip.IsLoopback() {
		if md, ok := metadata.FromIncomingContext(ctx); ok {
			if v := md.Get("x-forwarded-for"); len(v) > 0 {
				last := v[len(v)-1]
				if i := strings.LastIndexByte(last, ','); i >= 0 {
					last = last[i+1:]
				}
				if fwd, err := netip.ParseAddr(strings.TrimSpace(last)); err == nil {
					return "ip:" + fwd.String()
				}
			}
		}
	}
	return "ip:" + host
}
