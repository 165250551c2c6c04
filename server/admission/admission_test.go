package admission

import (
	"errors"
	"testing"
	"time"

	"github.com/chatd/chatd/server/store"
)

// TestRate: a burst is admitted, the next stream is refused with the time
// until the bucket has a token, refused streams take no token, and the
// bucket refills at the rate.
func TestRate(t *testing.T) {
	c := New(Config{Rate: 10, Burst: 5})
	now := time.Unix(1000, 0)
	for i := range 5 {
		if d, err := c.Admit(now); err != nil {
			t.Fatalf("stream %d of the burst: %v (retry %v)", i, err, d)
		}
	}
	for range 3 { // refusals take no token: the delay stays 100 ms
		d, err := c.Admit(now)
		if !errors.Is(err, ErrRate) || store.ErrorCode(err) != store.CodeResourceExhausted {
			t.Fatalf("past the burst: %v", err)
		}
		if d < 90*time.Millisecond || d > 110*time.Millisecond {
			t.Fatalf("retry delay %v, want ~100ms at 10/s", d)
		}
	}
	if _, err := c.Admit(now.Add(100 * time.Millisecond)); err != nil {
		t.Fatalf("after 100 ms at 10/s: %v", err)
	}
	// Over one simulated second at most rate+burst are admitted.
	admitted := 0
	for ms := range 1000 {
		if _, err := c.Admit(now.Add(time.Second + time.Duration(ms)*time.Millisecond)); err == nil {
			admitted++
		}
	}
	if admitted < 10 || admitted > 15 {
		t.Fatalf("%d admitted in a second at 10/s burst 5", admitted)
	}
}

// TestCapacityAndDraining: at capacity a stream is refused with a delay
// of 1-2 s; a draining controller refuses everything with Unavailable.
func TestCapacityAndDraining(t *testing.T) {
	open := 3
	c := New(Config{Capacity: 3, Streams: func() int { return open }})
	d, err := c.Admit(time.Now())
	if !errors.Is(err, ErrCapacity) || d < FullRetry || d >= 2*FullRetry {
		t.Fatalf("at capacity: %v, retry %v", err, d)
	}
	open = 2
	if _, err := c.Admit(time.Now()); err != nil {
		t.Fatalf("below capacity: %v", err)
	}
	c.Drain()
	if _, err := c.Admit(time.Now()); !errors.Is(err, ErrDraining) || store.ErrorCode(err) != store.CodeUnavailable {
		t.Fatalf("draining: %v", err)
	}
	if _, err := New(Config{}).Admit(time.Now()); err != nil {
		t.Fatalf("no bounds: %v", err)
	}
}
