// Package drain waits for calls in progress to finish: the Close of the
// in-process engines (presence/local, router/local), which count their
// calls in an atomic counter and refuse new ones once closed.
package drain

import (
	"runtime"
	"sync/atomic"
	"time"
)

// Wait returns once active is 0: it yields the processor for the first
// 100 checks, then sleeps 100µs between checks.
func Wait(active *atomic.Int64) {
	for i := 0; active.Load() != 0; i++ {
		if i < 100 {
			runtime.Gosched()
		} else {
			time.Sleep(100 * time.Microsecond)
		}
	}
}
