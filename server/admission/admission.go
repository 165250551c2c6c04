// Package admission decides whether this server accepts a new Chat
// stream: a token bucket bounds the rate of new streams (so that the
// devices of a failed server, arriving all at once, queue instead of
// toppling the next server: the field notes' "outages cascade"), a
// capacity bounds the open streams, and a draining server accepts none.
// A refusal says when to retry.
//
// Its errors are *store.Error values; it does not import gRPC status or
// codes (server/app attaches the retry delay as a google.rpc.RetryInfo
// detail through server/grpcerr).
package admission

import (
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/chatd/chatd/server/store"
	"golang.org/x/time/rate"
)

// Refusals. The rate and capacity refusals are ResourceExhausted and come
// with a retry delay; the draining one is Unavailable (go elsewhere now).
var (
	ErrRate     = store.Errorf(store.CodeResourceExhausted, "server busy: too many new streams, retry after the delay given")
	ErrCapacity = store.Errorf(store.CodeResourceExhausted, "server full: at its stream capacity, retry after the delay given (or another server)")
	ErrDraining = store.Errorf(store.CodeUnavailable, "server draining: connect to another server (ask Discovery)")
)

// FullRetry is the base retry delay of a capacity refusal; the delay
// given is FullRetry plus up to FullRetry of jitter.
const FullRetry = time.Second

// Config configures a Controller. Zero values mean "no bound".
type Config struct {
	// Rate is new streams per second; 0: no bound.
	Rate float64
	// Burst is the bucket size; 0 means max(1, Rate).
	Burst int
	// Capacity is the most open streams; 0: no bound. Streams reports the
	// open streams (required with Capacity).
	Capacity int
	Streams  func() int
}

// Controller admits new streams. It is safe for concurrent use; Admit
// takes one lock (the bucket's) and only when Rate is set.
type Controller struct {
	lim      *rate.Limiter // nil: no rate bound
	capacity int
	streams  func() int
	draining atomic.Bool
}

// New returns a Controller for cfg.
func New(cfg Config) *Controller {
	c := &Controller{capacity: cfg.Capacity, streams: cfg.Streams}
	if cfg.Rate > 0 {
		burst := cfg.Burst
		if burst <= 0 {
			burst = max(1, int(cfg.Rate))
		}
		c.lim = rate.NewLimiter(rate.Limit(cfg.Rate), burst)
	}
	if c.streams == nil {
		c.capacity = 0
	}
	return c
}

// Drain makes every later Admit fail with ErrDraining.
func (c *Controller) Drain() { c.draining.Store(true) }

// Admit takes a token for one new stream at now. It returns nil, or the
// refusal and how long the client should wait before it retries:
// ErrDraining (0: retry elsewhere at once), ErrCapacity (FullRetry plus
// jitter) or ErrRate (when the bucket next has a token, at least 1 ms).
// A refused stream takes no token.
func (c *Controller) Admit(now time.Time) (time.Duration, error) {
	if c.draining.Load() {
		return 0, ErrDraining
	}
	if c.capacity > 0 && c.streams() >= c.capacity {
		return FullRetry + rand.N(FullRetry), ErrCapacity
	}
	if c.lim == nil {
		return 0, nil
	}
	r := c.lim.ReserveN(now, 1)
	if !r.OK() {
		return time.Second, ErrRate
	}
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return max(d, time.Millisecond), ErrRate
	}
	return 0, nil
}
