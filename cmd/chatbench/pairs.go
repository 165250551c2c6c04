package main

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
)

// runPairs is the load shape of the peer comparisons (docs/performance.md):
// 2 x --pairs connections, --pairs sender -> receiver pairs of distinct
// users (user i sends to user pairs+i, one device each), each sender with
// at most one message in flight (it may send the next once its SendAck
// arrived), paced to --rate messages per second in total, --size bytes of
// text, every device acking what it received every --ack-interval.
//
// The pacer hands each due send to a sender with nothing in flight; when
// every sender is waiting for its SendAck the send is dropped and counted
// as lagged (the server is saturated at this rate). Reported besides the
// usual figures: server and chatbench CPU per accepted message.
func runPairs(ctx context.Context, b *bench) (*Report, error) {
	c := b.cfg
	n := c.pairs
	rep := b.newReport()
	rep.Workload = map[string]any{"pairs": n, "conns": 2 * n, "rate": c.rate, "duration": c.duration.String(), "size": c.size, "ack_interval": c.ackInterval.String(), "ack_aligned": c.ackAligned, "ack_reply": c.ackReply}
	toks, err := b.ensureTokens(ctx, 2*n, 1)
	if err != nil {
		return rep, err
	}
	devs, err := b.makeDevices(toks, 2*n, 1)
	if err != nil {
		return rep, err
	}
	senders := devs[:n]
	free := make(chan *device, n)
	names := make([]string, n)
	for i, d := range senders {
		d.fanout = 2 // the receiver and the sender's own device
		d.free = free
		names[i] = devs[n+i].username
	}
	for _, i := range rand.Perm(n) {
		free <- senders[i]
	}
	pick := func(d *device, _ *rand.Rand) *chatv1.SendMessage {
		return &chatv1.SendMessage{Target: &chatv1.SendMessage_ToUser{ToUser: names[d.idx]}}
	}
	rep, err = b.runLoad(ctx, rep, loadRun{devs: devs, senders: senders, pick: pick, free: free})
	rep.Workload["lagged_sends"] = b.lagged.Load()
	return rep, err
}

// pairsPaced issues sends at --rate per second in total, each to a sender
// taken from free (a sender goes back to free when its SendAck or
// FrameError arrives), through --workers goroutines. A due send that
// finds no free sender is dropped and counted in lagged.
func (b *bench) pairsPaced(ctx context.Context, wg *sync.WaitGroup, free chan *device, pick target, text string) {
	c := b.cfg
	jobs := make(chan *device, cap(free))
	for w := range c.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
			for d := range jobs {
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
				case d := <-free:
					jobs <- d // never blocks: at most cap(free) senders exist
					issued++
				default:
					// Every sender has a message in flight.
					b.lagged.Add(uint64(due - issued))
					issued = due
				}
			}
		}
	}()
}

// perMessage fills the CPU cost per accepted message of the server (from
// its process_cpu_seconds_total) and of chatbench itself, in ms.
func (r *Report) perMessage(clientCPU time.Duration) {
	if r.Accepted == 0 {
		return
	}
	if s := r.Server; s != nil {
		n := float64(r.Accepted)
		r.ServerCPUMsPerMsg = (s.After[mCPU] - s.Before[mCPU]) * 1000 / n
		for k, v := range s.After {
			d := v - s.Before[k]
			switch {
			case strings.HasPrefix(k, extraCPUPrefix):
				if r.ProcessCPUMsPerMsg == nil {
					r.ProcessCPUMsPerMsg = map[string]float64{}
				}
				r.ProcessCPUMsPerMsg[strings.TrimPrefix(k, extraCPUPrefix)] = d * 1000 / n
			case strings.HasPrefix(k, mCQLStatements+"{"):
				if d == 0 {
					continue
				}
				if r.CQLPerMsg == nil {
					r.CQLPerMsg = map[string]float64{}
				}
				r.CQLPerMsg[labelValue(k)] = d / n
				r.CQLStatementsPerMsg += d / n
			case strings.HasPrefix(k, mCQLRequests+"{"):
				r.CQLRequestsPerMsg += d / n
			}
		}
	}
	r.ClientCPUMsPerMsg = clientCPU.Seconds() * 1000 / float64(r.Accepted)
}

// labelValue returns the first label's value of a series key
// name{label="value"}.
func labelValue(k string) string {
	_, v, _ := strings.Cut(k, "\"")
	v, _, _ = strings.Cut(v, "\"")
	return v
}

func (r *Report) perMessageRow(row func(k, format string, a ...any)) {
	if r.Accepted == 0 || (r.ServerCPUMsPerMsg == 0 && r.ClientCPUMsPerMsg == 0) {
		return
	}
	row("CPU per message", "server %.3f ms, chatbench %.3f ms (CPU time over the measured phase / accepted)", r.ServerCPUMsPerMsg, r.ClientCPUMsPerMsg)
	if len(r.ProcessCPUMsPerMsg) > 0 {
		names := slices.Sorted(maps.Keys(r.ProcessCPUMsPerMsg))
		var ps []string
		sum := r.ServerCPUMsPerMsg
		for _, k := range names {
			ps = append(ps, fmt.Sprintf("%s %.3f ms", k, r.ProcessCPUMsPerMsg[k]))
			sum += r.ProcessCPUMsPerMsg[k]
		}
		row("CPU per message, others", "%s; with the servers %.3f ms", strings.Join(ps, ", "), sum)
	}
	if r.CQLStatementsPerMsg > 0 {
		names := slices.Sorted(maps.Keys(r.CQLPerMsg))
		var ps []string
		for _, k := range names {
			ps = append(ps, fmt.Sprintf("%s %.2f", k, r.CQLPerMsg[k]))
		}
		row("CQL per message", "%.2f statements in %.2f requests: %s", r.CQLStatementsPerMsg, r.CQLRequestsPerMsg, strings.Join(ps, ", "))
	}
}
