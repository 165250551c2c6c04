package ratelimit

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chatd/chatd/server/auth"
	"github.com/chatd/chatd/server/grpcerr"
	"github.com/chatd/chatd/server/internal/grpctest"
	"github.com/chatd/chatd/server/store"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
)

func TestAllowBurstAndRefill(t *testing.T) {
	l := New(10, 3) // one token per 100 ms
	t0 := time.Unix(1000, 0)
	for i := range 3 {
		if !l.AllowAt("a", t0) {
			t.Fatalf("request %d within burst denied", i)
		}
	}
	if l.AllowAt("a", t0) {
		t.Fatal("4th request at the same instant allowed, burst is 3")
	}
	if !l.AllowAt("b", t0) {
		t.Fatal("other key denied: keys must have separate buckets")
	}
	if l.AllowAt("a", t0.Add(50*time.Millisecond)) {
		t.Fatal("allowed after half a refill interval")
	}
	if !l.AllowAt("a", t0.Add(100*time.Millisecond)) {
		t.Fatal("denied after one refill interval")
	}
}

func TestIdleKeysEvicted(t *testing.T) {
	l := New(1000, 1)
	t0 := time.Unix(1000, 0)
	n := numShards * (sweepAt + 200)
	for i := range n {
		l.AllowAt("k"+strconv.Itoa(i), t0)
	}
	if got := l.Len(); got != n {
		// Buckets are all empty at t0: nothing is idle, nothing evicted.
		t.Fatalf("Len = %d, want %d (busy keys must not be evicted below the cap)", got, n)
	}
	// One second later every bucket has refilled: the next inserts sweep.
	t1 := t0.Add(time.Second)
	for i := range n {
		l.AllowAt("new"+strconv.Itoa(i), t1)
	}
	if got := l.Len(); got >= 2*n {
		t.Fatalf("Len = %d after idle period: idle keys were not evicted", got)
	}
	// A swept key comes back with a full bucket (burst 1): allowed once.
	if !l.AllowAt("k0", t1) || l.AllowAt("k0", t1) {
		t.Fatal("re-created bucket does not behave like a fresh bucket of burst 1")
	}
}

func TestMemoryBoundedUnderDistinctKeyFlood(t *testing.T) {
	l := New(0.001, 1) // buckets never refill within the test
	t0 := time.Unix(1000, 0)
	for i := range numShards * MaxKeysPerShard * 2 {
		l.AllowAt("flood"+strconv.Itoa(i), t0)
	}
	if got, limit := l.Len(), numShards*MaxKeysPerShard; got > limit {
		t.Fatalf("Len = %d exceeds the cap %d", got, limit)
	}
}

func TestDefaultKey(t *testing.T) {
	ctx := context.Background()
	if got := DefaultKey(ctx, "/x"); got != "ip:unknown" {
		t.Fatalf("no peer: %q", got)
	}
	remote := peer.NewContext(ctx, &peer.Peer{Addr: &net.TCPAddr{IP: net.ParseIP("203.0.113.7"), Port: 4242}})
	if got := DefaultKey(remote, "/x"); got != "ip:203.0.113.7" {
		t.Fatalf("remote peer: %q", got)
	}
	// A remote client cannot choose its key with x-forwarded-for.
	spoof := metadata.NewIncomingContext(remote, metadata.Pairs("x-forwarded-for", "198.51.100.1"))
	if got := DefaultKey(spoof, "/x"); got != "ip:203.0.113.7" {
		t.Fatalf("x-forwarded-for from a remote peer trusted: %q", got)
	}
	// From loopback (the gateway) the last forwarded address counts.
	lo := peer.NewContext(ctx, &peer.Peer{Addr: &net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 1}})
	gw := metadata.NewIncomingContext(lo, metadata.Pairs("x-forwarded-for", "10.0.0.1, 198.51.100.9"))
	if got := DefaultKey(gw, "/x"); got != "ip:198.51.100.9" {
		t.Fatalf("gateway peer: %q", got)
	}
	authed := auth.NewContext(remote, auth.Principal{UserID: "alice", DeviceID: "d"})
	if got := DefaultKey(authed, "/x"); got != "user:alice" {
		t.Fatalf("authenticated: %q", got)
	}
}

// TestUnaryInterceptor runs a real gRPC server (the health service) behind
// the interceptor on loopback.
func TestUnaryInterceptor(t *testing.T) {
	l := New(0.001, 2)
	var keys atomic.Int32
	keyFn := func(ctx context.Context, m string) string {
		keys.Add(1)
		if md, _ := metadata.FromIncomingContext(ctx); len(md.Get("exempt")) > 0 {
			return ""
		}
		return DefaultKey(ctx, m)
	}
	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(grpcerr.UnaryServerInterceptor(), UnaryInterceptor(l, keyFn))) // as server/app
	healthpb.RegisterHealthServer(srv, health.NewServer())
	cc := grpctest.Serve(t, srv)
	hc := healthpb.NewHealthClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	for i := range 2 {
		if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
			t.Fatalf("call %d within burst: %v", i, err)
		}
	}
	_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
	if st := grpcerr.Convert(err); st.Code() != grpcerr.CodeOf(store.CodeResourceExhausted) || st.Message() != "rate limit exceeded" {
		t.Fatalf("3rd call: got %v, want ResourceExhausted \"rate limit exceeded\"", err)
	}
	if got := l.Len(); got != 1 {
		t.Fatalf("limiter tracks %d keys, want 1 (the loopback client ip)", got)
	}
	exempt := metadata.AppendToOutgoingContext(ctx, "exempt", "1")
	if _, err := hc.Check(exempt, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("empty key must exempt the call: %v", err)
	}
	if keys.Load() != 4 {
		t.Fatalf("key function called %d times, want 4", keys.Load())
	}
}

func BenchmarkAllowParallel(b *testing.B) {
	for _, nkeys := range []int{1, 1024, 100000} {
		b.Run(fmt.Sprintf("keys=%d", nkeys), func(b *testing.B) {
			l := New(1e9, 1<<30)
			keys := make([]string, nkeys)
			for i := range keys {
				keys[i] = "user:" + strconv.Itoa(i)
			}
			var seq atomic.Uint64
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				i := int(seq.Add(7919))
				for pb.Next() {
					l.Allow(keys[i%nkeys])
					i++
				}
			})
		})
	}
}
