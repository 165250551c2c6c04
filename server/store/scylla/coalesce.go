package scylla

import (
	"context"
	"sync"
	"time"

	"github.com/gocql/gocql"
)

// coalescer sends the small idempotent writes of concurrent callers
// (device cursors, receipt markers: one per ack) together, as group
// commit does for messages: the first caller with nothing in flight
// sends at once; callers arriving while a send is in flight queue, and
// the next send carries every queued write as one multi-partition
// unlogged batch (stmtWriter). Under load an ack then costs a fraction of
// a CQL request; alone it costs one, with no added wait.
//
// Every write it carries is idempotent and a max register (its value is
// its write timestamp, or a row with a range tombstone below it), so
// their order within and across batches does not matter.
type coalescer struct {
	s       *Store
	mu      sync.Mutex
	sending bool
	pending []*coalesced
}

type coalesced struct {
	groups [][]gocql.BatchEntry
	done   chan error
}

// write sends groups (each kept in one request) and waits for the result
// or ctx. After ctx ends the write may still be sent.
func (c *coalescer) write(ctx context.Context, groups ...[]gocql.BatchEntry) error {
	w := &coalesced{groups: groups, done: make(chan error, 1)}
	c.mu.Lock()
	c.pending = append(c.pending, w)
	if c.sending {
		c.mu.Unlock()
		select {
		case err := <-w.done:
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	c.sending = true
	c.mu.Unlock()
	c.flush(ctx)
	return <-w.done
}

// flush sends what is pending until nothing is; it runs on the caller
// that found no send in flight, and bounds each send by cfg.Timeout
// whatever that caller's context.
func (c *coalescer) flush(ctx context.Context) {
	ctx = context.WithoutCancel(ctx)
	for {
		c.mu.Lock()
		ws := c.pending
		c.pending = nil
		if len(ws) == 0 {
			c.sending = false
			c.mu.Unlock()
			return
		}
		c.mu.Unlock()
		var sw stmtWriter
		for _, w := range ws {
			for _, g := range w.groups {
				sw.add(g...)
			}
		}
		sctx, cancel := context.WithTimeout(ctx, c.s.cfg.Timeout*time.Duration(c.s.cfg.Retries+1))
		err := c.s.writeAll(sctx, &sw)
		cancel()
		for _, w := range ws {
			w.done <- err
		}
	}
}
