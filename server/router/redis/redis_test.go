package redis_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	goredis "github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/types/known/timestamppb"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/chatd/chatd/server/internal/redistest"
	"github.com/chatd/chatd/server/internal/testenv"
	"github.com/chatd/chatd/server/router"
	redisrouter "github.com/chatd/chatd/server/router/redis"
	"github.com/chatd/chatd/server/router/routertest"
	"github.com/chatd/chatd/server/store"
)

// redisAddr is the shared test Redis (testenv.RedisAddr: skipped, or a
// failure with CI=true, without one).
func redisAddr(t testing.TB) string { return testenv.RedisAddr(t) }

func newClient(t testing.TB, addr string) *goredis.Client { return redistest.Client(t, addr) }

// testPrefix returns a key prefix of its own for t, whose keys are deleted
// when t ends (nothing else in the shared Redis is touched).
func testPrefix(t testing.TB, addr string) string {
	return testPrefixOn(t, func() goredis.UniversalClient { return goredis.NewClient(&goredis.Options{Addr: addr}) })
}

func testPrefixOn(t testing.TB, dial func() goredis.UniversalClient) string {
	prefix := redistest.NewPrefix("router")
	t.Cleanup(func() {
		c := dial()
		defer c.Close()
		deletePrefix(t, c, prefix)
	})
	return prefix
}

// deletePrefix deletes every key starting with prefix, on every master of
// a cluster (redistest.DeletePrefix).
func deletePrefix(t testing.TB, c goredis.UniversalClient, prefix string) {
	if err := redistest.DeletePrefix(c, prefix); err != nil {
		t.Errorf("delete %s*: %v", prefix, err)
	}
}

type nodeOpts struct {
	classic             bool
	routeTTL, serverTTL time.Duration
}

func newNode(t testing.TB, c goredis.UniversalClient, prefix string, id string, h router.Handler, o nodeOpts) *redisrouter.Router {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := redisrouter.New(ctx, redisrouter.Config{
		Client: c, ServerID: id, Handler: h, Prefix: prefix,
		RouteTTL: o.routeTTL, ServerTTL: o.serverTTL, Classic: o.classic,
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatalf("New(%s): %v", id, err)
	}
	return r
}

func factory(o nodeOpts) routertest.Factory {
	return func(t *testing.T, n int, handlers []router.Handler) []router.Router {
		addr := redisAddr(t)
		prefix := testPrefix(t, addr)
		out := make([]router.Router, n)
		for i := range n {
			r := newNode(t, newClient(t, addr), prefix, fmt.Sprint("node", i), handlers[i], o)
			if r.Sharded() == o.classic {
				t.Fatalf("Sharded() = %v with Classic %v on a Redis 7 server", r.Sharded(), o.classic)
			}
			out[i] = r
		}
		return out
	}
}

func TestConformanceSharded(t *testing.T) { routertest.Run(t, factory(nodeOpts{})) }

// The Stats are exported as Prometheus metrics.
func TestMetrics(t *testing.T) {
	addr := redisAddr(t)
	prefix := testPrefix(t, addr)
	reg := prometheus.NewRegistry()
	ctx := context.Background()
	a, err := redisrouter.New(ctx, redisrouter.Config{
		Client: newClient(t, addr), ServerID: "a", Handler: newRecorder().handle, Prefix: prefix,
		Logger: slog.New(slog.DiscardHandler), Registerer: reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if err := a.Attach(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	if err := a.Route(ctx, []router.Event{ev("alice", 1), ev("alice", 2)}); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			got[mf.GetName()] = m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	if got["chatd_router_local_events_total"] != 2 || len(got) != 15 {
		t.Fatalf("metrics %v", got)
	}
}

func TestConformanceClassic(t *testing.T) { routertest.Run(t, factory(nodeOpts{classic: true})) }

// TestConformanceCluster runs the suite on a Redis Cluster named by
// REDIS_CLUSTER_ADDRS (comma-separated seeds), with sharded and classic
// pub/sub. Skipped when unset.
func TestConformanceCluster(t *testing.T) {
	env := os.Getenv("REDIS_CLUSTER_ADDRS")
	if env == "" {
		t.Skip("set REDIS_CLUSTER_ADDRS to run against a Redis Cluster")
	}
	addrs := strings.Split(env, ",")
	dialCluster := func() *goredis.ClusterClient { return goredis.NewClusterClient(&goredis.ClusterOptions{Addrs: addrs}) }
	dial := func() goredis.UniversalClient { return dialCluster() }
	for _, classic := range []bool{false, true} {
		t.Run(fmt.Sprint("classic=", classic), func(t *testing.T) {
			routertest.Run(t, func(t *testing.T, n int, handlers []router.Handler) []router.Router {
				prefix := testPrefixOn(t, dial)
				out := make([]router.Router, n)
				for i := range n {
					c := dial()
					t.Cleanup(func() { _ = c.Close() })
					out[i] = newNode(t, c, prefix, fmt.Sprint("node", i), handlers[i], nodeOpts{classic: classic})
				}
				return out
			})
		})
	}
	t.Run("SlotMigration", func(t *testing.T) { testSlotMigration(t, dialCluster) })
	// Keys of many users spread over the shards.
	c := dialCluster()
	defer c.Close()
	prefix := testPrefixOn(t, dial)
	r := newNode(t, c, prefix, "spread", newRecorder().handle, nodeOpts{})
	defer r.Close()
	ctx := context.Background()
	for u := range 64 {
		if err := r.Attach(ctx, fmt.Sprint("user", u)); err != nil {
			t.Fatal(err)
		}
	}
	masters := 0
	var mu sync.Mutex
	_ = c.ForEachMaster(ctx, func(ctx context.Context, m *goredis.Client) error {
		keys, _ := m.Keys(ctx, prefix+"route:*").Result()
		mu.Lock()
		defer mu.Unlock()
		if len(keys) > 0 {
			masters++
		}
		return nil
	})
	if masters < 2 {
		t.Fatalf("route keys on %d master(s), want them spread", masters)
	}
}

// testSlotMigration moves the slot of a node's channel (and alive key) to
// another shard: Redis drops the node's sharded subscription, and the node
// subscribes again on the new owner.
func testSlotMigration(t *testing.T, dial func() *goredis.ClusterClient) {
	ctx := context.Background()
	c := dial()
	defer c.Close()
	prefix := testPrefixOn(t, func() goredis.UniversalClient { return dial() })
	recB := newRecorder()
	a := newNode(t, dial(), prefix, "a", newRecorder().handle, nodeOpts{})
	defer a.Close()
	cb := dial()
	defer cb.Close()
	b := newNode(t, cb, prefix, "b", recB.handle, nodeOpts{})
	defer b.Close()
	if err := b.Attach(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	slot, err := c.ClusterKeySlot(ctx, b.Channel()).Result()
	if err != nil {
		t.Fatal(err)
	}
	// Find the slot's owner and another master.
	var src, dst *goredis.Client
	var srcID, dstID string
	var masters []*goredis.Client
	slots, err := c.ClusterSlots(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, sr := range slots {
		if int64(sr.Start) <= slot && slot <= int64(sr.End) {
			src = goredis.NewClient(&goredis.Options{Addr: sr.Nodes[0].Addr})
			srcID = sr.Nodes[0].ID
		}
	}
	for _, sr := range slots {
		if sr.Nodes[0].ID != srcID && dst == nil {
			dst = goredis.NewClient(&goredis.Options{Addr: sr.Nodes[0].Addr})
			dstID = sr.Nodes[0].ID
		}
		masters = append(masters, goredis.NewClient(&goredis.Options{Addr: sr.Nodes[0].Addr}))
	}
	defer func() {
		for _, m := range append(masters, src, dst) {
			_ = m.Close()
		}
	}()
	if src == nil || dst == nil {
		t.Skip("need two masters")
	}
	host, port, _ := net.SplitHostPort(dst.Options().Addr)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(dst.Do(ctx, "CLUSTER", "SETSLOT", slot, "IMPORTING", srcID).Err())
	must(src.Do(ctx, "CLUSTER", "SETSLOT", slot, "MIGRATING", dstID).Err())
	keys, err := src.ClusterGetKeysInSlot(ctx, int(slot), 1000).Result()
	must(err)
	if len(keys) > 0 {
		args := []any{"MIGRATE", host, port, "", 0, 5000, "KEYS"}
		for _, k := range keys {
			args = append(args, k)
		}
		must(src.Do(ctx, args...).Err())
	}
	must(dst.Do(ctx, "CLUSTER", "SETSLOT", slot, "NODE", dstID).Err())
	must(src.Do(ctx, "CLUSTER", "SETSLOT", slot, "NODE", dstID).Err())
	for _, m := range masters {
		_ = m.Do(ctx, "CLUSTER", "SETSLOT", slot, "NODE", dstID).Err()
	}
	var id uint64
	eventually(t, "delivery after the slot moved", func() bool {
		id++
		_ = a.Route(ctx, []router.Event{ev("alice", id)})
		time.Sleep(20 * time.Millisecond)
		return recB.has("alice", id)
	})
}

// recorder is a Handler that records frame ids per user.
type recorder struct {
	mu  sync.Mutex
	ids map[string][]uint64
	n   atomic.Int64
}

func newRecorder() *recorder { return &recorder{ids: make(map[string][]uint64)} }

func (r *recorder) handle(ev router.Event) {
	r.mu.Lock()
	r.ids[ev.UserID] = append(r.ids[ev.UserID], ev.Frame.GetFrameId())
	r.mu.Unlock()
	r.n.Add(1)
}

func (r *recorder) has(user string, id uint64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Contains(r.ids[user], id)
}

func ev(user string, id uint64) router.Event {
	return router.Event{UserID: user, Frame: &chatv1.ServerFrame{FrameId: id}}
}

// eventually polls cond every 20ms for up to 10 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// spy subscribes to a node's channel from outside, to see what is
// published to it after the node died.
type spy struct {
	t      *testing.T
	c      *goredis.Client
	ps     *goredis.PubSub
	ch     string
	marker int
}

func newSpy(t *testing.T, c *goredis.Client, channel string) *spy {
	ps := c.SSubscribe(context.Background(), channel)
	if _, err := ps.Receive(context.Background()); err != nil {
		t.Fatalf("spy subscribe: %v", err)
	}
	t.Cleanup(func() { _ = ps.Close() })
	return &spy{t: t, c: c, ps: ps, ch: channel}
}

// published reports whether anything but the spy's own marker reached the
// channel before a marker published now (after whatever the caller
// routed and waited for with WaitPublished).
func (s *spy) published() bool {
	s.t.Helper()
	s.marker++
	mark := fmt.Sprint("marker-", s.marker)
	if err := s.c.SPublish(context.Background(), s.ch, mark).Err(); err != nil {
		s.t.Fatalf("spy publish: %v", err)
	}
	other := false
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		m, err := s.ps.ReceiveMessage(ctx)
		cancel()
		if err != nil {
			s.t.Fatalf("spy receive: %v", err)
		}
		if m.Payload == mark {
			return other
		}
		other = true
	}
}

// A node that dies without Close is fenced once its alive key expires
// (ServerTTL), long before its routes expire (RouteTTL): the other nodes
// stop publishing to it.
func TestDeadNodeIsFenced(t *testing.T) {
	addr := redisAddr(t)
	prefix := testPrefix(t, addr)
	o := nodeOpts{serverTTL: 300 * time.Millisecond, routeTTL: time.Minute}
	recB := newRecorder()
	a := newNode(t, newClient(t, addr), prefix, "a", newRecorder().handle, o)
	defer a.Close()
	b := newNode(t, newClient(t, addr), prefix, "b", recB.handle, o)
	ctx := context.Background()
	if err := b.Attach(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	test := newClient(t, addr)
	s := newSpy(t, test, b.Channel())
	if err := a.Route(ctx, []router.Event{ev("alice", 1)}); err != nil {
		t.Fatal(err)
	}
	a.WaitPublished()
	if !s.published() {
		t.Fatal("the spy saw nothing routed to a live node")
	}
	eventually(t, "live node receives", func() bool { return recB.has("alice", 1) })

	b.Kill()
	var id uint64 = 1
	eventually(t, "dead node fenced", func() bool {
		id++
		if err := a.Route(ctx, []router.Event{ev("alice", id)}); err != nil {
			t.Fatal(err)
		}
		a.WaitPublished()
		return !s.published()
	})
	// Fenced, not expired: the route entry is still there.
	zs, err := test.ZRange(ctx, b.RouteKey("alice"), 0, -1).Result()
	if err != nil || !slices.Contains(zs, b.NodeID()) {
		t.Fatalf("route set %v, %v: want the dead node's entry kept until RouteTTL", zs, err)
	}
	if recB.has("alice", id) {
		t.Fatal("a killed node's handler was called")
	}
}

// A dead node's route entries expire after RouteTTL: they are then
// ignored and trimmed by the next lookup.
func TestDeadNodeRoutesExpire(t *testing.T) {
	addr := redisAddr(t)
	prefix := testPrefix(t, addr)
	// ServerTTL long: only the route deadline can stop publishing.
	o := nodeOpts{serverTTL: time.Minute, routeTTL: 600 * time.Millisecond}
	a := newNode(t, newClient(t, addr), prefix, "a", newRecorder().handle, o)
	defer a.Close()
	b := newNode(t, newClient(t, addr), prefix, "b", newRecorder().handle, o)
	ctx := context.Background()
	if err := b.Attach(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	test := newClient(t, addr)
	s := newSpy(t, test, b.Channel())
	b.Kill()
	if err := a.Route(ctx, []router.Event{ev("alice", 1)}); err != nil {
		t.Fatal(err)
	}
	a.WaitPublished()
	if !s.published() {
		t.Fatal("published nothing to a node whose route has not expired")
	}
	var id uint64 = 1
	eventually(t, "expired route ignored", func() bool {
		id++
		if err := a.Route(ctx, []router.Event{ev("alice", id)}); err != nil {
			t.Fatal(err)
		}
		a.WaitPublished()
		return !s.published()
	})
	eventually(t, "expired route trimmed", func() bool {
		n, err := test.Exists(ctx, b.RouteKey("alice")).Result()
		return err == nil && n == 0
	})
	if a.Stats().Trimmed == 0 {
		t.Fatal("Stats().Trimmed = 0")
	}
}

// Losing every key (Redis restarted without persistence, or flushed; here
// the prefix's keys are deleted) is noticed by the heartbeat, which makes
// each node re-add all its routes at once.
func TestRedisLossRecoveredByHeartbeat(t *testing.T) {
	addr := redisAddr(t)
	prefix := testPrefix(t, addr)
	o := nodeOpts{serverTTL: 300 * time.Millisecond, routeTTL: time.Minute}
	recB := newRecorder()
	a := newNode(t, newClient(t, addr), prefix, "a", newRecorder().handle, o)
	defer a.Close()
	b := newNode(t, newClient(t, addr), prefix, "b", recB.handle, o)
	defer b.Close()
	ctx := context.Background()
	for _, u := range []string{"alice", "bob"} {
		if err := b.Attach(ctx, u); err != nil {
			t.Fatal(err)
		}
	}
	test := newClient(t, addr)
	deletePrefix(t, test, prefix)
	if n, _ := test.Exists(ctx, b.RouteKey("alice")).Result(); n != 0 {
		t.Fatal("route not deleted")
	}
	var id uint64
	eventually(t, "routes re-established", func() bool {
		id++
		if err := a.Route(ctx, []router.Event{ev("alice", id), ev("bob", id)}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
		return recB.has("alice", id) && recB.has("bob", id)
	})
	if b.Stats().Losses == 0 {
		t.Fatal("Stats().Losses = 0 after the keys were lost")
	}
}

// Route entries lost alone (a Redis Cluster shard restarted, the node's
// alive key on another shard) come back with the periodic refresh.
func TestLostRoutesRecoveredByRefresh(t *testing.T) {
	addr := redisAddr(t)
	prefix := testPrefix(t, addr)
	o := nodeOpts{serverTTL: time.Minute, routeTTL: 900 * time.Millisecond}
	recB := newRecorder()
	a := newNode(t, newClient(t, addr), prefix, "a", newRecorder().handle, o)
	defer a.Close()
	b := newNode(t, newClient(t, addr), prefix, "b", recB.handle, o)
	defer b.Close()
	ctx := context.Background()
	if err := b.Attach(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	test := newClient(t, addr)
	if err := test.Del(ctx, b.RouteKey("alice")).Err(); err != nil {
		t.Fatal(err)
	}
	var id uint64
	eventually(t, "route refreshed", func() bool {
		id++
		if err := a.Route(ctx, []router.Event{ev("alice", id)}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
		return recB.has("alice", id)
	})
	if b.Stats().Refreshed == 0 || b.Stats().Losses != 0 {
		t.Fatalf("stats %+v: want refreshes and no loss", b.Stats())
	}
}

// A stale route entry (a failed Detach, or a refresh racing with Detach)
// costs a publish but never reaches the Handler: a node hands over only
// events of users attached on it.
func TestStaleRouteNotDelivered(t *testing.T) {
	addr := redisAddr(t)
	prefix := testPrefix(t, addr)
	recB := newRecorder()
	a := newNode(t, newClient(t, addr), prefix, "a", newRecorder().handle, nodeOpts{})
	defer a.Close()
	b := newNode(t, newClient(t, addr), prefix, "b", recB.handle, nodeOpts{})
	defer b.Close()
	ctx := context.Background()
	if err := b.Attach(ctx, "marker"); err != nil {
		t.Fatal(err)
	}
	test := newClient(t, addr)
	deadline := float64(time.Now().Add(time.Minute).UnixMilli())
	if err := test.ZAdd(ctx, b.RouteKey("ghost"), goredis.Z{Score: deadline, Member: b.NodeID()}).Err(); err != nil {
		t.Fatal(err)
	}
	if err := a.Route(ctx, []router.Event{ev("ghost", 1), ev("marker", 1)}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "marker", func() bool { return recB.has("marker", 1) })
	if recB.has("ghost", 1) {
		t.Fatal("an event for a user not attached here reached the Handler")
	}
	if n := b.Stats().NotAttached; n != 1 {
		t.Fatalf("Stats().NotAttached = %d, want 1", n)
	}
}

// proxy is a TCP forwarder to Redis that the test can cut.
type proxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  []net.Conn
	refuse bool
	hold   bool
	delay  atomic.Int64 // ns added before forwarding each read towards Redis
}

func newProxy(t *testing.T, target string) *proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target}
	t.Cleanup(func() { _ = ln.Close(); p.cut(false) })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			refuse, hold := p.refuse, p.hold
			if hold { // accept, never answer
				p.conns = append(p.conns, c)
			}
			p.mu.Unlock()
			if refuse {
				_ = c.Close()
				continue
			}
			if hold {
				continue
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				_ = c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, u)
			p.mu.Unlock()
			go func() { p.forward(u, c); _ = u.Close() }()
			go func() { _, _ = io.Copy(c, u); _ = c.Close() }()
		}
	}()
	return p
}

// forward copies from src to dst, each read delayed by p.delay.
func (p *proxy) forward(dst io.Writer, src io.Reader) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if d := p.delay.Load(); d > 0 {
				time.Sleep(time.Duration(d))
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// cut closes every open connection; with refuse, new ones are closed at
// once until the next cut.
func (p *proxy) cut(refuse bool) { p.cutHold(refuse, false) }

// cutHold is cut, with hold: new connections are accepted and never
// answered (a hung Redis) until the next cut.
func (p *proxy) cutHold(refuse, hold bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.conns = nil
	p.refuse, p.hold = refuse, hold
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

// A broken subscription is re-established by go-redis: routing to the
// node works again afterwards.
func TestSubscriberReconnects(t *testing.T) {
	addr := redisAddr(t)
	prefix := testPrefix(t, addr)
	p := newProxy(t, addr)
	recB := newRecorder()
	a := newNode(t, newClient(t, addr), prefix, "a", newRecorder().handle, nodeOpts{})
	defer a.Close()
	b := newNode(t, newClient(t, p.addr()), prefix, "b", recB.handle, nodeOpts{})
	defer b.Close()
	ctx := context.Background()
	if err := b.Attach(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	p.cut(false) // drops b's subscription and its pooled connections
	var id uint64
	eventually(t, "delivery after reconnect", func() bool {
		id++
		if err := a.Route(ctx, []router.Event{ev("alice", id)}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
		return recB.has("alice", id)
	})
	if b.Stats().Resubscribes == 0 {
		t.Fatal("Stats().Resubscribes = 0")
	}
}

// Events of users attached here reach the Handler before Route returns,
// even when Redis does not answer (the remote part fails later, in the
// publisher, and is counted).
func TestLocalDeliveryWithoutRedis(t *testing.T) {
	addr := redisAddr(t)
	prefix := testPrefix(t, addr)
	p := newProxy(t, addr)
	rec := newRecorder()
	c := goredis.NewClient(&goredis.Options{Addr: p.addr(), MaxRetries: -1, DialTimeout: time.Second})
	defer c.Close()
	a := newNode(t, c, prefix, "a", rec.handle, nodeOpts{})
	defer a.Close()
	ctx := context.Background()
	if err := a.Attach(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	p.cut(true)
	if err := a.Route(ctx, []router.Event{ev("alice", 1), ev("alice", 2)}); err != nil {
		t.Fatalf("Route with Redis cut: %v", err)
	}
	if !rec.has("alice", 1) || !rec.has("alice", 2) {
		t.Fatal("local events not delivered synchronously")
	}
	if st := a.Stats(); st.LocalEvents != 2 {
		t.Fatalf("stats %+v", st)
	}
	eventually(t, "lookup error counted", func() bool { return a.Stats().LookupErrors > 0 })
	// Attach fails cleanly without Redis: the user is not attached.
	if err := a.Attach(ctx, "bob"); store.ErrorCode(err) != store.CodeUnavailable {
		t.Fatalf("Attach with Redis cut: %v, want Unavailable", err)
	}
	p.cut(false)
	if err := a.Route(ctx, []router.Event{ev("bob", 1)}); err != nil {
		t.Fatal(err)
	}
	if rec.has("bob", 1) {
		t.Fatal("a user whose Attach failed received an event")
	}
}

// A hung Redis never blocks Route: once the queue is full the remote part
// is dropped with ResourceExhausted, and local delivery goes on.
func TestHungRedisDoesNotBlockRoute(t *testing.T) {
	addr := redisAddr(t)
	prefix := testPrefix(t, addr)
	p := newProxy(t, addr)
	rec := newRecorder()
	c := goredis.NewClient(&goredis.Options{Addr: p.addr(), MaxRetries: -1})
	defer c.Close()
	ctx := context.Background()
	a, err := redisrouter.New(ctx, redisrouter.Config{
		Client: c, ServerID: "a", Handler: rec.handle, Prefix: prefix, QueueSize: 10,
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Attach(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	p.cutHold(false, true)
	var full error
	var id uint64
	for range 20 {
		evs := make([]router.Event, 5)
		for j := range evs {
			id++
			evs[j] = ev("alice", id)
		}
		if err := a.Route(ctx, evs); err != nil {
			full = err
			break
		}
	}
	if store.ErrorCode(full) != store.CodeResourceExhausted {
		t.Fatalf("Route with Redis hung: %v, want ResourceExhausted once the queue is full", full)
	}
	for i := uint64(1); i <= id; i++ {
		if !rec.has("alice", i) {
			t.Fatalf("local event %d not delivered", i)
		}
	}
	if a.Stats().QueueDrops != 5 {
		t.Fatalf("QueueDrops = %d, want 5", a.Stats().QueueDrops)
	}
	p.cut(false) // un-hang, so Close is quick
	a.Close()
}

// Events still queued when Close is called are published before it
// returns. A slow link to Redis keeps most of them queued until then.
func TestCloseFlushesQueue(t *testing.T) {
	addr := redisAddr(t)
	prefix := testPrefix(t, addr)
	p := newProxy(t, addr)
	recB := newRecorder()
	a := newNode(t, newClient(t, p.addr()), prefix, "a", newRecorder().handle, nodeOpts{})
	b := newNode(t, newClient(t, addr), prefix, "b", recB.handle, nodeOpts{})
	defer b.Close()
	ctx := context.Background()
	if err := b.Attach(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	p.delay.Store(int64(20 * time.Millisecond))
	const n, per = 2000, 10
	for i := uint64(1); i <= n; i += per {
		evs := make([]router.Event, 0, per)
		for j := i; j < i+per; j++ {
			evs = append(evs, ev("alice", j))
		}
		if err := a.Route(ctx, evs); err != nil {
			t.Fatal(err)
		}
	}
	if got := recB.n.Load(); got == n {
		t.Log("everything was published before Close: the test proves little this time")
	}
	a.Close()
	p.delay.Store(0)
	eventually(t, "all queued events delivered", func() bool { return recB.n.Load() == n })
}

func TestBadInput(t *testing.T) {
	addr := redisAddr(t)
	prefix := testPrefix(t, addr)
	rec := newRecorder()
	a := newNode(t, newClient(t, addr), prefix, "a", rec.handle, nodeOpts{})
	defer a.Close()
	ctx := context.Background()
	if err := a.Attach(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	for name, evs := range map[string][]router.Event{
		"no user":  {ev("alice", 1), {Frame: &chatv1.ServerFrame{}}},
		"no frame": {ev("alice", 1), {UserID: "alice"}},
	} {
		if err := a.Route(ctx, evs); store.ErrorCode(err) != store.CodeInvalid {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
	if n := rec.n.Load(); n != 0 {
		t.Fatalf("a rejected Route delivered %d events", n)
	}
	for _, u := range []string{"", string(make([]byte, 1025))} {
		if err := a.Attach(ctx, u); store.ErrorCode(err) != store.CodeInvalid {
			t.Errorf("Attach(%d bytes): %v, want InvalidArgument", len(u), err)
		}
		if err := a.Detach(ctx, u); store.ErrorCode(err) != store.CodeInvalid {
			t.Errorf("Detach(%d bytes): %v, want InvalidArgument", len(u), err)
		}
	}
	for _, cfg := range []redisrouter.Config{
		{Client: newClient(t, addr), Handler: rec.handle},
		{Client: newClient(t, addr), Handler: rec.handle, ServerID: "a{b}"},
		{Client: newClient(t, addr), Handler: rec.handle, ServerID: "a/b"},
		{Client: newClient(t, addr), ServerID: "a"},
		{Handler: rec.handle, ServerID: "a"},
		{Client: newClient(t, addr), Handler: rec.handle, ServerID: "a", Prefix: "x{"},
		{Client: newClient(t, addr), Handler: rec.handle, ServerID: "a", RouteTTL: time.Millisecond},
	} {
		if r, err := redisrouter.New(ctx, cfg); err == nil {
			r.Close()
			t.Errorf("New(%+v) succeeded", cfg)
		}
	}
	// Garbage published on a node's channel is dropped, and the node
	// goes on.
	test := newClient(t, addr)
	for _, g := range []string{"", "\x01\x0a\x7f", "not a batch", "\x01\x0a\x03\x0a\x01a"} {
		if err := test.SPublish(ctx, a.Channel(), g).Err(); err != nil {
			t.Fatal(err)
		}
	}
	b := newNode(t, newClient(t, addr), prefix, "b", newRecorder().handle, nodeOpts{})
	defer b.Close()
	if err := b.Route(ctx, []router.Event{ev("alice", 7)}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "delivery after garbage", func() bool { return rec.has("alice", 7) })
	if m := a.Stats().Malformed; m != 4 {
		t.Fatalf("Stats().Malformed = %d, want 4", m)
	}
}

// One user attached on 20 nodes: every node gets every event, in order.
func TestManyNodes(t *testing.T) {
	addr := redisAddr(t)
	prefix := testPrefix(t, addr)
	c := newClient(t, addr)
	const nodes = 20
	recs := make([]*recorder, nodes)
	rs := make([]*redisrouter.Router, nodes)
	ctx := context.Background()
	for i := range nodes {
		recs[i] = newRecorder()
		rs[i] = newNode(t, c, prefix, fmt.Sprint("n", i), recs[i].handle, nodeOpts{})
		defer rs[i].Close()
		if err := rs[i].Attach(ctx, "alice"); err != nil {
			t.Fatal(err)
		}
	}
	var evs []router.Event
	for id := uint64(1); id <= 50; id++ {
		evs = append(evs, ev("alice", id), ev("bob", id))
	}
	if err := rs[0].Route(ctx, evs); err != nil {
		t.Fatal(err)
	}
	for i := range nodes {
		eventually(t, fmt.Sprint("node ", i), func() bool { return recs[i].n.Load() == 50 })
		recs[i].mu.Lock()
		got := recs[i].ids["alice"]
		recs[i].mu.Unlock()
		for j, id := range got {
			if id != uint64(j+1) {
				t.Fatalf("node %d got %v", i, got)
			}
		}
	}
}

// An event whose frame cannot be encoded (invalid UTF-8 in a string
// field) is skipped; the other events of the same cycle still go.
func TestUnencodableFrameSkipped(t *testing.T) {
	addr := redisAddr(t)
	prefix := testPrefix(t, addr)
	recB := newRecorder()
	a := newNode(t, newClient(t, addr), prefix, "a", newRecorder().handle, nodeOpts{})
	defer a.Close()
	b := newNode(t, newClient(t, addr), prefix, "b", recB.handle, nodeOpts{})
	defer b.Close()
	ctx := context.Background()
	if err := b.Attach(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	bad := &chatv1.ServerFrame{FrameId: 2, Payload: &chatv1.ServerFrame_Typing{Typing: &chatv1.TypingEvent{ChannelId: "\xff"}}}
	if err := a.Route(ctx, []router.Event{ev("alice", 1), {UserID: "alice", Frame: bad}, ev("alice", 3)}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "good events", func() bool { return recB.has("alice", 1) && recB.has("alice", 3) })
	if recB.has("alice", 2) || a.Stats().EncodeErrors != 1 {
		t.Fatalf("bad frame delivered=%v, EncodeErrors=%d", recB.has("alice", 2), a.Stats().EncodeErrors)
	}
}

// Close removes the node's routes and alive key, and later calls fail
// with Unavailable.
func TestCloseCleansUp(t *testing.T) {
	addr := redisAddr(t)
	prefix := testPrefix(t, addr)
	a := newNode(t, newClient(t, addr), prefix, "a", newRecorder().handle, nodeOpts{})
	ctx := context.Background()
	for _, u := range []string{"alice", "bob"} {
		if err := a.Attach(ctx, u); err != nil {
			t.Fatal(err)
		}
	}
	test := newClient(t, addr)
	if n, _ := test.Exists(ctx, a.RouteKey("alice"), a.RouteKey("bob"), a.AliveKey()).Result(); n != 3 {
		t.Fatalf("%d of 3 keys exist before Close", n)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if n, _ := test.Exists(ctx, a.RouteKey("alice"), a.RouteKey("bob"), a.AliveKey()).Result(); n != 0 {
		t.Fatalf("%d keys left after Close", n)
	}
	if err := a.Route(ctx, []router.Event{ev("alice", 1)}); !errors.Is(err, redisrouter.ErrClosed) {
		t.Fatalf("Route after Close: %v", err)
	}
	if err := a.Attach(ctx, "alice"); !errors.Is(err, redisrouter.ErrClosed) {
		t.Fatalf("Attach after Close: %v", err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
}

// BenchmarkRoute measures events/s from one router to users attached on
// another (both in this process, on the test Redis): Route calls of
// `batch` events, from `par` goroutines, each event for another of 16,384
// users (so a publisher cycle of up to 8,192 events looks every user up:
// no help from deduplication). The time runs until the last event has
// reached the other router's Handler.
func BenchmarkRoute(b *testing.B) {
	for _, bc := range []struct{ batch, par int }{{1, 1}, {1, 16}, {64, 1}, {64, 16}} {
		b.Run(fmt.Sprintf("batch=%d/goroutines=%d", bc.batch, bc.par), func(b *testing.B) {
			benchRoute(b, bc.batch, bc.par)
		})
	}
}

func benchRoute(b *testing.B, batch, par int) {
	addr := redisAddr(b)
	prefix := testPrefix(b, addr)
	var got atomic.Int64
	src := newNode(b, newClient(b, addr), prefix, "src", func(router.Event) {}, nodeOpts{})
	defer src.Close()
	dst := newNode(b, newClient(b, addr), prefix, "dst", func(router.Event) { got.Add(1) }, nodeOpts{})
	defer dst.Close()
	const users = 16384
	ctx := context.Background()
	var awg sync.WaitGroup
	for g := range 32 {
		awg.Add(1)
		go func() {
			defer awg.Done()
			for u := g; u < users; u += 32 {
				if err := dst.Attach(ctx, fmt.Sprint("u", u)); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	awg.Wait()
	names := make([]string, users)
	for u := range names {
		names[u] = fmt.Sprint("u", u)
	}
	// Distinct frames (as deliveries are: each carries its user's
	// inbox_seq), so none is sent by reference.
	frames := make([]*chatv1.ServerFrame, 4099)
	for i := range frames {
		frames[i] = &chatv1.ServerFrame{Payload: &chatv1.ServerFrame_Delivery{Delivery: &chatv1.Delivery{
			InboxSeq: uint64(1000 + i), Message: &chatv1.Message{
				ChannelId: "dm:u1:u2", MessageId: 1<<40 + uint64(i), SenderId: "u1", SenderDeviceId: "d1",
				Text: "hello, how are you? see you at eight", CreatedAt: timestamppb.Now(),
			},
		}}}
	}
	calls := max(b.N/batch, 1)
	var next, full atomic.Int64
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for range par {
		wg.Add(1)
		go func() {
			defer wg.Done()
			evs := make([]router.Event, batch)
			for {
				i := next.Add(1)
				if i > int64(calls) {
					return
				}
				for j := range evs {
					k := int(i)*batch + j
					evs[j] = router.Event{UserID: names[k%users], Frame: frames[k%len(frames)]}
				}
				for {
					err := src.Route(ctx, evs)
					if store.ErrorCode(err) == store.CodeResourceExhausted {
						full.Add(1) // queue full: back off, as a sustained load would
						time.Sleep(100 * time.Microsecond)
						continue
					}
					if err != nil {
						b.Error(err)
						return
					}
					break
				}
			}
		}()
	}
	wg.Wait()
	want := int64(calls * batch)
	deadline := time.Now().Add(30 * time.Second)
	for got.Load() < want && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	el := time.Since(start)
	b.ReportMetric(float64(got.Load())/el.Seconds(), "events/s")
	b.ReportMetric(float64(want-got.Load()), "lost")
	b.ReportMetric(float64(full.Load()), "queue-full")
}
