package scylla

import (
	"testing"
	"time"
)

// The driver's write coalescer is off unless configured (Config.WriteCoalesceWait:
// gocql's own default of 200 µs cost the client ~0.15 ms of CPU per message).
func TestWriteCoalesceWait(t *testing.T) {
	for _, tc := range []struct{ set, want time.Duration }{
		{0, 0},
		{-time.Millisecond, 0},
		{200 * time.Microsecond, 200 * time.Microsecond},
	} {
		c, err := Config{Hosts: []string{"127.0.0.1"}, WriteCoalesceWait: tc.set}.withDefaults()
		if err != nil {
			t.Fatal(err)
		}
		if got := c.cluster(c.Keyspace).WriteCoalesceWaitTime; got != tc.want {
			t.Errorf("WriteCoalesceWait %v: driver's WriteCoalesceWaitTime = %v, want %v", tc.set, got, tc.want)
		}
	}
}
