package scylla

import (
	"context"
	"sync"
	"time"

	"github.com/gocql/gocql"
)

// coalescer sends the small idempotent writes of concurrent callers
// (device cursors, receipt markers: one per ack) together, as group
// commit does for messages: a write with nothing in flight is sent at
// once; writes arriving while a send is in flight queue, and the next
// send carries every queued write as one multi-partition unlogged batch
// (stmtWriter). Under load an ack then costs a fraction of
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
	if !c.sending {
		c.sending = true
		go c.run()
	}
	c.mu.Unlock()
	select {
	case err := <-w.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// run sends what is pending until nothing is, then ends: a goroutine
// exists only while there are writes, and no caller is kept sending
// others' writes. Each send is bounded by cfg.Timeout per attempt.
func (c *coalescer) run() {
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
		sctx, cancel := context.WithTimeout(context.Background(), c.s.cfg.Timeout*time.Duration(c.s.cfg.Retries+1))
		err := c.s.writeAll(sctx, &sw)
		cancel()
		for _, w := range ws {
			w.done <- err
		}
	}
}
