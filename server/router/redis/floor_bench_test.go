package redis_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/chatd/chatd/server/router"
)

// BenchmarkRouteFloor measures the least a cross-server delivery costs
// through Redis (docs/performance.md, "Cost per message", the floor): one
// router publishes deliveries to 250 users attached on another (both in
// this process, on the test Redis), in Route calls of ROUTE_FLOOR_BATCH
// events (default 20, the pairs shape's group commit at 500 msg/s), paced
// to ROUTE_FLOOR_RATE events a second (default 500, one cross-server
// delivery per message of the pairs shape); -benchtime=10000x runs 20 s.
// It reports this process's CPU per event ("routers-ms/event": both ends,
// the publisher's route lookup and PUBLISH and the subscriber's decode)
// and, with REDIS_SERVER_PID set, the Redis server's ("redis-ms/event",
// from /proc/<pid>/stat utime+stime, clock ticks of 10 ms).
func BenchmarkRouteFloor(b *testing.B) {
	atoi := func(name string, def int) int {
		if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n > 0 {
			return n
		}
		return def
	}
	rate, batch := atoi("ROUTE_FLOOR_RATE", 500), atoi("ROUTE_FLOOR_BATCH", 20)
	addr := redisAddr(b)
	prefix := testPrefix(b, addr)
	var got atomic.Int64
	src := newNode(b, newClient(b, addr), prefix, "src", func(router.Event) {}, nodeOpts{})
	defer src.Close()
	dst := newNode(b, newClient(b, addr), prefix, "dst", func(router.Event) { got.Add(1) }, nodeOpts{})
	defer dst.Close()
	const users = 250
	ctx := context.Background()
	for u := range users {
		if err := dst.Attach(ctx, fmt.Sprint("u", u)); err != nil {
			b.Fatal(err)
		}
	}
	pid := os.Getenv("REDIS_SERVER_PID")
	procCPU := func() time.Duration {
		if pid == "" {
			return 0
		}
		raw, err := os.ReadFile("/proc/" + pid + "/stat")
		if err != nil {
			b.Fatal(err)
		}
		s := string(raw)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		return time.Duration(ut+st) * 10 * time.Millisecond
	}
	selfCPU := func() time.Duration {
		var ru syscall.Rusage
		_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	time.Sleep(time.Second)
	interval := time.Duration(batch) * time.Second / time.Duration(rate)
	r0, c0 := procCPU(), selfCPU()
	b.ResetTimer()
	next := time.Now()
	sent := 0
	for sent < b.N {
		if d := time.Until(next); d > 0 {
			time.Sleep(d)
		}
		next = next.Add(interval)
		evs := make([]router.Event, min(batch, b.N-sent))
		for j := range evs {
			k := sent + j
			evs[j] = router.Event{UserID: fmt.Sprint("u", k%users), Frame: &chatv1.ServerFrame{Payload: &chatv1.ServerFrame_Delivery{Delivery: &chatv1.Delivery{
				InboxSeq: uint64(1000 + k), Message: &chatv1.Message{
					ChannelId: "dm:u1:u2", MessageId: 1<<40 + uint64(k), SenderId: "u1", SenderDeviceId: "d1",
					Text: strings.Repeat("x", 100), CreatedAt: timestamppb.Now(),
				},
			}}}}
		}
		if err := src.Route(ctx, evs); err != nil {
			b.Fatal(err)
		}
		sent += len(evs)
	}
	deadline := time.Now().Add(10 * time.Second)
	for got.Load() < int64(b.N) && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	b.StopTimer()
	if got.Load() != int64(b.N) {
		b.Fatalf("delivered %d of %d", got.Load(), b.N)
	}
	b.ReportMetric(float64(selfCPU()-c0)/float64(time.Millisecond)/float64(b.N), "routers-ms/event")
	if pid != "" {
		b.ReportMetric(float64(procCPU()-r0)/float64(time.Millisecond)/float64(b.N), "redis-ms/event")
	}
}
