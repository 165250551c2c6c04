package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"time"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
)

func ipAt(ips []net.IP, i int) net.IP {
	if len(ips) == 0 {
		return nil
	}
	return ips[i%len(ips)]
}

// target picks what a device sends to next.
type target func(d *device, r *rand.Rand) *chatv1.SendMessage

// loadRun is a direct or group run once the devices exist.
type loadRun struct {
	devs    []*device
	senders []*device // devices that send (all of them unless set)
	pick    target
	// prepare, if set, runs once the devices are open and live.
	prepare func(context.Context) error
	// free, if set, holds the senders with no send in flight (pairs
	// mode): sends are paced to --rate and each goes to a free sender.
	free chan *device
}

// text returns the message text: --size bytes of printable ASCII.
func (b *bench) text() string {
	const pat = "chatbench load message 0123456789 abcdefghijklmnopqrstuvwxyz "
	return strings.Repeat(pat, b.cfg.size/len(pat)+1)[:b.cfg.size]
}

// runLoad opens the devices, sends for --duration (paced at --rate, or
// closed-loop with --window sends in flight per device at --rate 0),
// waits up to --drain for outstanding acks and deliveries, and reports.
func (b *bench) runLoad(ctx context.Context, rep *Report, lr loadRun) (*Report, error) {
	c := b.cfg
	devs := lr.devs
	opened, err := b.openAll(ctx, devs, true)
	defer closeAll(devs)
	if err != nil {
		return rep, err
	}
	if opened < len(devs) {
		return rep, fmt.Errorf("only %d of %d devices connected", opened, len(devs))
	}
	stopBG := b.background(devs)
	defer stopBG()
	if lr.prepare != nil {
		if err := lr.prepare(ctx); err != nil {
			return rep, err
		}
	}

	// Counters restart for the measured phase (catch-up and opens are not
	// part of it).
	b.resetCounters()
	before, err := b.scrape(ctx)
	if err != nil {
		return rep, fmt.Errorf("metrics: %w", err)
	}
	stopTick := b.ticker(ctx, func() string { return b.sample(0) })
	defer stopTick()

	senders := lr.senders
	if senders == nil {
		senders = devs
	}
	text := b.text()
	sendCtx, cancel := context.WithTimeout(ctx, c.duration)
	defer cancel()
	start := time.Now()
	cpu0 := cpuTime()
	var wg sync.WaitGroup
	if lr.free != nil {
		b.pairsPaced(sendCtx, &wg, lr.free, lr.pick, text)
	} else if c.rate > 0 {
		b.paced(sendCtx, &wg, senders, lr.pick, text)
	} else {
		for _, d := range senders {
			d.window = make(chan struct{}, c.window)
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := rand.New(rand.NewPCG(uint64(d.idx), uint64(time.Now().UnixNano())))
				for {
					select {
					case d.window <- struct{}{}:
					case <-sendCtx.Done():
						return
					case <-d.done:
						return
					}
					m := lr.pick(d, r)
					m.Text = text
					if err := d.send(m); err != nil {
						b.countErr(err)
						return
					}
				}
			}()
		}
	}
	<-sendCtx.Done()
	wg.Wait()
	sendSec := time.Since(start).Seconds()

	// Drain: acks for everything sent, deliveries for everything accepted.
	if ctx.Err() == nil {
		deadline := time.Now().Add(c.drain)
		for time.Now().Before(deadline) && ctx.Err() == nil {
			settled := b.accepted.Load()+b.duplicates.Load()+b.sendFailures() >= b.sent.Load()
			if settled && b.delivered.Load()-b.foreign.Load() >= b.expected.Load() {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	wall := time.Since(start)
	after, aerr := b.scrape(context.WithoutCancel(ctx))
	stopTick()
	rep.DurationSec = wall.Seconds()
	rep.ClientCPUCores = clientCPU(cpu0, wall)
	clientUsed := cpuTime() - cpu0
	b.fill(rep, sendSec)
	if aerr == nil {
		rep.Server = serverFigures(before, after, wall)
	}
	rep.perMessage(clientUsed)
	return rep, nil
}

// sendFailures counts sends answered with a FrameError (any code): every
// error counted during the load phase is one.
func (b *bench) sendFailures() uint64 { return b.errorCount() }

func (b *bench) resetCounters() {
	b.sent.Store(0)
	b.accepted.Store(0)
	b.duplicates.Store(0)
	b.delivered.Store(0)
	b.echoes.Store(0)
	b.expected.Store(0)
	b.foreign.Store(0)
	b.synced.Store(0)
	b.lat.reset()
	b.ackLat.reset()
	b.seriesMu.Lock()
	b.series = nil
	b.seriesMu.Unlock()
	b.epochReset()
}

// epochReset moves the time origin of the progress samples (not of the
// latencies, which are differences) to now.
func (b *bench) epochReset() { b.seriesT0 = b.now() }

// paced issues sends at --rate messages per second in total from random
// senders, through --workers goroutines. A sender that cannot keep up
// (the server applies backpressure) delays only its worker; the schedule
// is not caught up in bursts beyond one tick.
func (b *bench) paced(ctx context.Context, wg *sync.WaitGroup, senders []*device, pick target, text string) {
	c := b.cfg
	jobs := make(chan struct{}, c.workers*4)
	for w := range c.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
			for range jobs {
				d := senders[r.IntN(len(senders))]
				m := pick(d, r)
				m.Text = text
				if err := d.send(m); err != nil {
					select {
					case <-d.done:
					default:
						b.countErr(err)
					}
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(jobs)
		start := time.Now()
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		var issued float64
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			due := c.rate * time.Since(start).Seconds()
			for issued+1 <= due {
				select {
				case jobs <- struct{}{}:
					issued++
				case <-ctx.Done():
					return
				default:
					// Workers are all busy: the generator or the server is
					// saturated. Drop the backlog beyond this tick.
					b.lagged.Add(1)
					issued = due
				}
			}
		}
	}()
}

// runDirect: --users users with --devices devices each; each message goes
// from a random device to a random other user (its direct channel, created
// on first use).
func runDirect(ctx context.Context, b *bench) (*Report, error) {
	c := b.cfg
	rep := b.newReport()
	rep.Workload = map[string]any{"users": c.users, "devices": c.devices, "rate": c.rate, "duration": c.duration.String(), "size": c.size, "ack_interval": c.ackInterval.String(), "ack_aligned": c.ackAligned, "ack_reply": c.ackReply}
	if c.rate == 0 {
		rep.Workload["window"] = c.window
	}
	toks, err := b.ensureTokens(ctx, c.users, c.devices)
	if err != nil {
		return rep, err
	}
	devs, err := b.makeDevices(toks, c.users, c.devices)
	if err != nil {
		return rep, err
	}
	for _, d := range devs {
		d.fanout = uint64(2 * c.devices)
	}
	names := make([]string, c.users)
	for i := range names {
		names[i] = b.username(i)
	}
	peers := c.peers
	if peers <= 0 || peers > c.users-1 {
		peers = c.users - 1
	}
	rep.Workload["peers"] = peers
	pick := func(d *device, r *rand.Rand) *chatv1.SendMessage {
		to := (d.user + 1 + r.IntN(peers)) % c.users
		return &chatv1.SendMessage{Target: &chatv1.SendMessage_ToUser{ToUser: names[to]}}
	}
	rep, err = b.runLoad(ctx, rep, loadRun{devs: devs, pick: pick})
	rep.Workload["lagged_ticks"] = b.lagged.Load()
	return rep, err
}

// makeDevices builds one device per token, spread over source addresses.
func (b *bench) makeDevices(toks []cachedToken, users, devices int) ([]*device, error) {
	ips, err := b.localAddrs(len(toks))
	if err != nil {
		return nil, err
	}
	devs := make([]*device, len(toks))
	for i := range devs {
		devs[i] = b.newDevice(i, i/devices, i%devices, toks[i], ipAt(ips, i))
	}
	b.devices = devs
	return devs, nil
}
