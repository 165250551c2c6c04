package parallel

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
)

func TestDo(t *testing.T) {
	var running, peak, calls atomic.Int32
	err := Do(context.Background(), 50, 4, func(ctx context.Context, i int) error {
		n := running.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		calls.Add(1)
		running.Add(-1)
		return nil
	})
	if err != nil || calls.Load() != 50 || peak.Load() > 4 {
		t.Fatalf("err %v, %d calls, %d at once; want nil, 50, at most 4", err, calls.Load(), peak.Load())
	}
	boom := errors.New("boom")
	var after atomic.Int32
	err = Do(context.Background(), 1000, 1, func(ctx context.Context, i int) error {
		if i == 3 {
			return boom
		}
		if i > 3 {
			after.Add(1)
		}
		return nil
	})
	if !errors.Is(err, boom) || after.Load() > 1 {
		t.Fatalf("err %v, %d calls started after the failure; want boom and at most 1", err, after.Load())
	}
}
