package presence_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chatd/chatd/server/presence"
	"github.com/chatd/chatd/server/presence/local"
)

// flaky injects failures into a real engine: the next failUp Up calls and
// failDown Down calls fail (Redis down, a timeout).
type flaky struct {
	presence.Engine
	failUp, failDown atomic.Int32
}

var errInjected = errors.New("injected engine failure")

func (f *flaky) Up(ctx context.Context, u, d string, at time.Time, hidden bool) (bool, error) {
	if f.failUp.Add(-1) >= 0 {
		return false, errInjected
	}
	return f.Engine.Up(ctx, u, d, at, hidden)
}

func (f *flaky) Down(ctx context.Context, u, d string, last time.Time) (bool, error) {
	if f.failDown.Add(-1) >= 0 {
		return false, errInjected
	}
	return f.Engine.Down(ctx, u, d, last)
}

func waitOnline(t *testing.T, e presence.Engine, user string, want bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ps, err := e.Get(context.Background(), []string{user})
		if err != nil {
			t.Fatal(err)
		}
		if ps[0].Online == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s online=%v, want %v after 10s", user, ps[0].Online, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestTrackerRetries: failed engine calls are retried until the engine
// agrees with the device's state; Connect does not fail for them.
func TestTrackerRetries(t *testing.T) {
	f := &flaky{Engine: local.New()}
	f.failUp.Store(3)
	f.failDown.Store(2)
	tr, err := presence.NewTracker(presence.TrackerConfig{
		Engine: f, HeartbeatInterval: 50 * time.Millisecond, Grace: 10 * time.Second,
		RetryInterval: 10 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	c, err := tr.Connect(context.Background(), "alice", "phone")
	if err != nil {
		t.Fatalf("Connect failed for an engine failure: %v", err)
	}
	waitOnline(t, f, "alice", true)
	c.Close(true)
	waitOnline(t, f, "alice", false)
	if d, n := tr.Stats(); d != 0 || n != 0 {
		t.Fatalf("tracker holds %d devices, %d conns", d, n)
	}
}

// BenchmarkBeat is the per-frame cost of a heartbeat.
func BenchmarkBeat(b *testing.B) {
	tr, err := presence.NewTracker(presence.TrackerConfig{Engine: local.New()})
	if err != nil {
		b.Fatal(err)
	}
	defer tr.Close()
	c, err := tr.Connect(context.Background(), "alice", "phone")
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			c.Beat()
		}
	})
}

// BenchmarkConnectedDevice reports the memory one connected device costs
// (Tracker and local engine) and the time of Connect.
func BenchmarkConnectedDevice(b *testing.B) {
	tr, err := presence.NewTracker(presence.TrackerConfig{Engine: local.New()})
	if err != nil {
		b.Fatal(err)
	}
	defer tr.Close()
	ids := make([]string, b.N)
	for i := range ids {
		ids[i] = fmt.Sprintf("user%09d", i)
	}
	conns := make([]*presence.Conn, b.N)
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	b.ResetTimer()
	for i := range b.N {
		c, err := tr.Connect(context.Background(), ids[i], "phone")
		if err != nil {
			b.Fatal(err)
		}
		conns[i] = c
	}
	b.StopTimer()
	runtime.GC()
	runtime.ReadMemStats(&after)
	b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(b.N), "heap-bytes/device")
	runtime.KeepAlive(conns)
}

// TestOnExpire: the callback of a silent stream runs once, when its Conn
// expires (as Expired is closed, which a later Expired call still sees);
// one set after the expiry runs at once; a cleanly closed stream's never
// runs.
func TestOnExpire(t *testing.T) {
	tr, err := presence.NewTracker(presence.TrackerConfig{
		Engine: local.New(), HeartbeatInterval: 20 * time.Millisecond, Grace: 100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	ctx := context.Background()
	silent, err := tr.Connect(ctx, "alice", "phone")
	if err != nil {
		t.Fatal(err)
	}
	clean, err := tr.Connect(ctx, "bob", "phone")
	if err != nil {
		t.Fatal(err)
	}
	var calls, cleanCalls atomic.Int32
	fired := make(chan struct{})
	silent.OnExpire(func() {
		if calls.Add(1) == 1 {
			close(fired)
		}
	})
	clean.OnExpire(func() { cleanCalls.Add(1) })
	clean.Close(true)
	select {
	case <-fired:
	case <-time.After(10 * time.Second):
		t.Fatal("OnExpire not called within 10s of a 100ms grace")
	}
	select {
	case <-silent.Expired(): // made after the expiry: closed already
	default:
		t.Fatal("Expired not closed after OnExpire ran")
	}
	late := make(chan struct{})
	silent.OnExpire(func() { close(late) })
	select {
	case <-late:
	default:
		t.Fatal("OnExpire on an expired Conn did not run at once")
	}
	time.Sleep(300 * time.Millisecond)
	if n := calls.Load(); n != 1 {
		t.Fatalf("OnExpire callback ran %d times, want 1", n)
	}
	if n := cleanCalls.Load(); n != 0 {
		t.Fatalf("OnExpire of a cleanly closed Conn ran %d times", n)
	}
}
