package main

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
)

// runSync measures catching up: --users devices (users 0..n-1) go
// offline, as many sender users (n..2n-1) send each of them --backlog
// messages (sender i to device i, --window in flight), then all of them
// come back at once, each on a new connection, and page through their
// inbox with SyncRequests of --page entries until the server says there
// is no more, and ack the last one. Reported: the fill rate, the time
// until every device has drained, deliveries synced per second, and the
// per-device drain time.
func runSync(ctx context.Context, b *bench) (*Report, error) {
	c := b.cfg
	n := c.users
	rep := b.newReport()
	rep.Workload = map[string]any{"devices": n, "backlog": c.backlog, "page": c.page, "window": c.window, "size": c.size}
	toks, err := b.ensureTokens(ctx, 2*n, 1)
	if err != nil {
		return rep, err
	}
	all, err := b.makeDevices(toks, 2*n, 1)
	if err != nil {
		return rep, err
	}
	receivers, senders := all[:n], all[n:]
	defer closeAll(all)

	// Receivers: up to date, then offline.
	if _, err := b.openAll(ctx, receivers, true); err != nil {
		return rep, err
	}
	closeAll(receivers)
	if _, err := b.openAll(ctx, senders, true); err != nil {
		return rep, err
	}
	for _, d := range senders {
		d.fanout = 1 // only the sender's own device is live
	}
	stopBG := b.background(senders)
	defer stopBG()

	// Fill the backlogs.
	b.resetCounters()
	b.logf("sync: sending %d messages to each of %d offline devices", c.backlog, n)
	text := b.text()
	fillStart := time.Now()
	stopTick := b.ticker(ctx, func() string { return b.sample(0) })
	var wg sync.WaitGroup
	for i, d := range senders {
		d.window = make(chan struct{}, c.window)
		to := receivers[i].username
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; k < c.backlog; k++ {
				select {
				case d.window <- struct{}{}:
				case <-ctx.Done():
					return
				case <-d.done:
					return
				}
				if err := d.send(&chatv1.SendMessage{Target: &chatv1.SendMessage_ToUser{ToUser: to}, Text: text}); err != nil {
					b.countErr(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	want := uint64(n * c.backlog)
	deadline := time.Now().Add(c.drain)
	for b.accepted.Load()+b.duplicates.Load()+b.errorCount() < want && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	fillSec := time.Since(fillStart).Seconds()
	stopTick()
	sf := &SyncFigures{Devices: n, Backlog: c.backlog, FillSec: fillSec}
	if fillSec > 0 {
		sf.FillRate = float64(b.accepted.Load()) / fillSec
	}
	rep.Sync = sf
	if ctx.Err() != nil {
		b.fill(rep, fillSec)
		return rep, nil
	}
	if got := b.accepted.Load(); got < want {
		b.fill(rep, fillSec)
		return rep, fmt.Errorf("backlog: %d of %d sends accepted", got, want)
	}
	stopBG()

	// Come back and sync.
	before, err := b.scrape(ctx)
	if err != nil {
		return rep, fmt.Errorf("metrics: %w", err)
	}
	b.seriesT0 = b.now()
	var pages atomic.Uint64
	var drain hist
	var incomplete atomic.Int64
	stopTick = b.ticker(ctx, func() string {
		b.sample(0)
		return fmt.Sprintf("%6.1fs synced %d of %d, pages %d, errors %d", (b.now() - b.seriesT0).Seconds(), b.synced.Load(), want, pages.Load(), b.errorCount())
	})
	start := time.Now()
	cpu0 := cpuTime()
	sem := make(chan struct{}, c.connectConc)
	for _, d := range receivers {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			t0 := time.Now()
			got, err := d.drain(ctx, &pages)
			if err != nil {
				if ctx.Err() == nil {
					b.countErr(err)
					b.logf("sync %s: %v", d.username, err)
				}
			}
			if got != c.backlog {
				incomplete.Add(1)
			}
			drain.Record(time.Since(t0))
		}()
	}
	wg.Wait()
	wall := time.Since(start)
	after, aerr := b.scrape(context.WithoutCancel(ctx))
	stopTick()
	b.fill(rep, fillSec)
	rep.DurationSec = wall.Seconds()
	rep.ClientCPUCores = clientCPU(cpu0, wall)
	sf.DrainSec = wall.Seconds()
	sf.SyncRate = float64(b.synced.Load()) / wall.Seconds()
	sf.Pages = pages.Load()
	sf.DeviceDrain = drain.Summary()
	sf.IncompleteDevs = int(incomplete.Load())
	if aerr == nil {
		rep.Server = serverFigures(before, after, wall)
	}
	if sf.IncompleteDevs > 0 && ctx.Err() == nil {
		return rep, fmt.Errorf("%d devices did not sync their whole backlog", sf.IncompleteDevs)
	}
	return rep, nil
}

// drain opens the device, syncs from its cursor until the server reports
// no more, checks that the seqs are dense, acks the last one and returns
// how many deliveries it got.
func (d *device) drain(ctx context.Context, pages *atomic.Uint64) (int, error) {
	if err := d.open(ctx); err != nil {
		return 0, err
	}
	after := d.welcome.GetCursor()
	got := 0
	for {
		page, err := d.sync(ctx, after, d.b.cfg.page)
		if err != nil {
			return got, err
		}
		pages.Add(1)
		for _, dl := range page.GetDeliveries() {
			if dl.GetInboxSeq() != after+1 {
				return got, fmt.Errorf("sync page: inbox_seq %d after %d (not dense)", dl.GetInboxSeq(), after)
			}
			after = dl.GetInboxSeq()
			got++
			d.b.synced.Add(1)
		}
		if !page.GetMore() {
			break
		}
		if page.GetNextAfterSeq() != after {
			return got, fmt.Errorf("sync page: next_after_seq %d, last seq %d", page.GetNextAfterSeq(), after)
		}
	}
	if got > 0 {
		err := d.sendFrame(&chatv1.ClientFrame{Payload: &chatv1.ClientFrame_Ack{Ack: &chatv1.Ack{InboxSeq: after}}}, kindAck)
		if err != nil {
			return got, err
		}
	}
	return got, nil
}
