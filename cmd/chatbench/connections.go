package main

import (
	"context"
	"fmt"
	"time"
)

// runConnections opens --conns idle Chat streams (as many devices as
// needed: --conns / --streams-per-device, --devices per user), each on its
// own TCP connection or --streams-per-conn of them multiplexed on one,
// keeps them heartbeating for --hold, and reports the server's memory per
// stream: the difference of the medians of --samples scrapes before
// opening and after holding, divided by the number opened.
func runConnections(ctx context.Context, b *bench) (*Report, error) {
	c := b.cfg
	rep := b.newReport()
	ndev := (c.conns + c.streamsPerDev - 1) / c.streamsPerDev
	nusers := (ndev + c.devices - 1) / c.devices
	ntcp := (c.conns + c.streamsPerConn - 1) / c.streamsPerConn
	rep.Workload = map[string]any{"conns": c.conns, "devices_per_user": c.devices, "streams_per_device": c.streamsPerDev,
		"streams_per_conn": c.streamsPerConn, "tcp_conns": ntcp, "users": nusers, "hold": c.hold.String()}
	toks, err := b.ensureTokens(ctx, nusers, c.devices)
	if err != nil {
		return rep, err
	}
	ips, err := b.localAddrs(ntcp)
	if err != nil {
		return rep, err
	}
	devs := make([]*device, c.conns)
	for i := range devs {
		di := i / c.streamsPerDev  // device token index
		ci := i / c.streamsPerConn // TCP connection index
		devs[i] = b.newDevice(i, di/c.devices, di%c.devices, toks[di], ipAt(ips, ci))
		if i%c.streamsPerConn != 0 {
			if err := devs[i].shareConn(devs[i-i%c.streamsPerConn]); err != nil {
				return rep, err
			}
		}
	}
	b.devices = devs

	before, err := b.scrapeMedian(ctx, c.samples, time.Second)
	if err != nil {
		return rep, fmt.Errorf("metrics: %w", err)
	}
	clientBefore := selfRSS()
	slabBefore := kernelSlab()
	start := time.Now()
	cpu0 := cpuTime()
	opened, err := b.openAll(ctx, devs, false)
	defer closeAll(devs)
	if err != nil && opened == 0 {
		return rep, err
	}
	var live []*device
	for _, d := range devs {
		if d.stream != nil {
			live = append(live, d)
		}
	}
	stopBG := b.background(live)
	defer stopBG()
	stopTick := b.ticker(ctx, func() string {
		b.sample(int64(len(live)))
		return fmt.Sprintf("%6.1fs holding %d streams, errors %d", time.Since(start).Seconds(), len(live), b.errorCount())
	})
	select {
	case <-ctx.Done():
	case <-time.After(c.hold):
	}
	after, aerr := b.scrapeMedian(ctx, c.samples, time.Second)
	clientAfter := selfRSS()
	slabAfter := kernelSlab()
	stopTick()
	wall := time.Since(start)
	rep.DurationSec = wall.Seconds()
	rep.ClientCPUCores = clientCPU(cpu0, wall)
	b.fill(rep, 0)
	if aerr != nil && ctx.Err() == nil {
		return rep, fmt.Errorf("metrics: %w", aerr)
	}
	cf := &ConnFigures{Opened: opened}
	if n := float64(opened); n > 0 {
		cf.ClientRSSPerConn = (clientAfter - clientBefore) / n
		cf.KernelSlabPerSocket = (slabAfter - slabBefore) / (2 * n)
		if before != nil && after != nil {
			per := func(k string) float64 { return (after[k] - before[k]) / n }
			cf.StreamsOpenDelta = after[mStreams] - before[mStreams]
			cf.HeapPerConn = per(mHeapInuse)
			cf.StackPerConn = per(mStackInuse)
			cf.HeapStackPerConn = cf.HeapPerConn + cf.StackPerConn
			cf.RSSPerConn = per(mRSS)
			cf.GoroutinesPer = per(mGoroutines)
			cf.FDsPerConn = per(mFDs)
			if _, ok := after[pidRSS]; ok {
				cf.ProcRSSPerConn = per(pidRSS)
			}
			rep.Server = serverFigures(before, after, wall)
		}
	}
	rep.Connections = cf
	return rep, nil
}
