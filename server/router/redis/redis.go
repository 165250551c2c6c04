// Package redis is the router.Router of a cluster of chat servers sharing
// one Redis (a single instance or a Redis Cluster, through
// redis.UniversalClient).
//
// Every router is a node with an id ServerID/incarnation (the incarnation
// is random per New, so a restarted server never receives its previous
// life's routes). A node:
//
//   - keeps the users attached here in a local sharded set (no global lock);
//   - records them in Redis in one sorted set per user,
//     <prefix>route:{<user>}, member = node id, score = deadline (Unix ms);
//     Attach adds, Detach removes, and a refresher re-adds every local user
//     once per RouteTTL/3, spread evenly over that interval;
//   - proves it is alive with <prefix>alive:{<node>} (expiring after
//     ServerTTL on Redis's clock, renewed every ServerTTL/3) and lists
//     itself in <prefix>nodes, the registry every node reads to learn
//     which nodes are dead;
//   - receives events on its own channel <prefix>node:{<node>}, with
//     sharded pub/sub (SSUBSCRIBE/SPUBLISH, Redis 7+) or classic pub/sub
//     when the server has no sharded pub/sub or Config.Classic is set.
//
// Route delivers the events of users attached here to the Handler at once
// (no Redis round trip) and queues all events (bounded) for the node's
// publisher goroutine, so it never waits on Redis. The publisher takes
// everything queued, looks up every event's user (one pipelined ZRANGE per
// distinct user, no cache, so a route is visible to every node as soon as
// Attach returns), groups the events by destination node and publishes one
// message per node (pipelined) carrying all its events in order. Route
// members of dead nodes are ignored (fenced); members past their deadline
// are ignored and trimmed.
//
// Pub/sub is at most once: an event published while a node is
// reconnecting, or to a node that reads too slowly, is lost. That is
// accepted because the store is the source of truth: the chat stream fills
// gaps from the store and devices sync. See docs/routing.md.
package redis

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	goredis "github.com/redis/go-redis/v9"

	"github.com/chatd/chatd/server/router"
	"github.com/chatd/chatd/server/store"
)

// Defaults of Config.
const (
	DefaultPrefix    = "chatd:"
	DefaultRouteTTL  = 2 * time.Minute
	DefaultServerTTL = 10 * time.Second
)

// MaxPayload is the largest pub/sub message Route publishes, in bytes: a
// destination's events beyond it go in further messages (in order).
const MaxPayload = 256 << 10

// DefaultQueueSize is the default bound of Config.QueueSize, in events.
const DefaultQueueSize = 1 << 17

const (
	shardCount   = 64
	refreshChunk = 512              // ZADDs per pipeline of the refresher
	cleanupTime  = 10 * time.Second // bound of Close's best-effort cleanup
	cycleTime    = 5 * time.Second  // bound of one publisher cycle's Redis calls
	maxCycle     = 8192             // events per publisher cycle
	maxUserID    = 1024
)

var (
	// ErrClosed is returned by Attach and Route after Close (code
	// Unavailable).
	ErrClosed = store.Errorf(store.CodeUnavailable, "router closed")
	errUser   = store.Errorf(store.CodeInvalid, "router: user id must be 1-1024 bytes")
	errEvent  = store.Errorf(store.CodeInvalid, "router: every event needs a user id (1-1024 bytes) and either a frame or a device to revoke")
	errFull   = store.Errorf(store.CodeResourceExhausted, "router: publish queue full; events for other servers dropped (devices recover by sync)")
)

// Config configures New.
type Config struct {
	// Client is the Redis connection: a *redis.Client (one server, or
	// Sentinel failover) or a *redis.ClusterClient, as made by
	// redis.NewUniversalClient. Required. Close does not close it.
	Client goredis.UniversalClient
	// ServerID names this server (e.g. host:port): 1-128 bytes without
	// '{', '}' or '/'. Required.
	ServerID string
	// Handler receives the events of users attached here; it must not
	// block. Required.
	Handler router.Handler
	// Prefix starts every key and channel name (default DefaultPrefix); no
	// '{' or '}'. Servers that route to each other use the same Prefix.
	Prefix string
	// RouteTTL is how long a route entry lives without a refresh (default
	// DefaultRouteTTL); each node refreshes its users' entries every
	// RouteTTL/3. It bounds how long a route lost in Redis (a restarted
	// Redis Cluster shard) stays lost and how long a stale entry of a live
	// node lingers. Server clocks must agree to well within RouteTTL/3.
	RouteTTL time.Duration
	// ServerTTL is how long a node counts as alive after its last
	// heartbeat, on Redis's clock (default DefaultServerTTL); heartbeats
	// go every ServerTTL/3. Routes of a node dead for ServerTTL are
	// ignored by the other nodes within one more heartbeat.
	ServerTTL time.Duration
	// QueueSize bounds the events waiting for the publisher (default
	// DefaultQueueSize). When it is full, Route drops the events' remote
	// part and returns ResourceExhausted.
	QueueSize int
	// Classic forces classic PUBLISH/SUBSCRIBE. By default sharded pub/sub
	// is used, and classic only when the server lacks SSUBSCRIBE (Redis
	// < 7). All servers sharing a Prefix must use the same kind.
	Classic bool
	// Logger (default slog.Default()).
	Logger *slog.Logger
	// Registerer, if not nil, receives the Stats as chatd_router_*
	// Prometheus metrics.
	Registerer prometheus.Registerer
}

// Stats are the router's counters since New.
type Stats struct {
	LocalEvents   uint64 // events handed to the Handler by Route (users attached here)
	QueueDrops    uint64 // events not queued for other nodes because the queue was full
	EncodeErrors  uint64 // event copies not sent because their frame could not be encoded
	RemoteEvents  uint64 // event copies published to other nodes
	Messages      uint64 // pub/sub messages published
	Unheard       uint64 // messages no subscriber received (the node was gone)
	PublishErrors uint64 // failed publishes (their events are lost)
	LookupErrors  uint64 // failed route lookups (those events are lost)
	Received      uint64 // events received from Redis and handed to the Handler
	NotAttached   uint64 // events received for users no longer attached here (dropped)
	Malformed     uint64 // undecodable messages received (dropped)
	Resubscribes  uint64 // times the subscription was re-established after a break
	Trimmed       uint64 // route sets trimmed of members past their deadline
	Refreshed     uint64 // route entries re-added by the refresher
	Losses        uint64 // times this node found its Redis state lost and re-added every route
}

type counters struct {
	local, remote, messages, unheard, pubErr, lookupErr, received, notAttached,
	malformed, resubscribes, trimmed, refreshed, losses, queueDrops, encodeErr atomic.Uint64
}

type shard struct {
	mu    sync.RWMutex
	users map[string]struct{}
}

// Router routes events between nodes through Redis. It is safe for
// concurrent use.
type Router struct {
	c         goredis.UniversalClient
	h         router.Handler
	log       *slog.Logger
	serverID  string
	nodeID    string
	prefix    string
	channel   string // this node's inbound channel
	aliveKey  string
	nodesKey  string
	routeTTL  time.Duration
	serverTTL time.Duration
	sharded   bool

	seed   maphash.Seed
	shards [shardCount]shard

	dead atomic.Pointer[map[string]struct{}] // nodes found dead by the last heartbeat

	psMu sync.Mutex
	ps   *goredis.PubSub

	qmu      sync.Mutex
	pending  []router.Event // queued for the publisher, in Route order
	queued   uint64         // events ever queued; guarded by qmu
	handled  atomic.Uint64  // events the publisher is done with
	maxQueue int
	wake     chan struct{} // cap 1: pending is not empty
	pubStop  chan struct{} // closed: drain (or not, see drain) and exit
	pubDone  chan struct{}
	drain    bool

	active    atomic.Int64 // Route calls delivering locally or queueing
	closed    atomic.Bool
	stop      chan struct{}
	refresh   chan struct{} // asks the refresher for a full pass
	wg        sync.WaitGroup
	closeOnce sync.Once

	n counters
}

var _ router.Router = (*Router)(nil)

// New registers a node for cfg.ServerID, subscribes to its channel and
// starts its heartbeat and route refresher. It fails (without side effects
// beyond an expiring alive key) when the config is invalid or Redis does
// not answer within ctx.
func New(ctx context.Context, cfg Config) (*Router, error) {
	if cfg.Client == nil || cfg.Handler == nil {
		return nil, errors.New("router/redis: Config.Client and Config.Handler are required")
	}
	if cfg.ServerID == "" || len(cfg.ServerID) > 128 || strings.ContainsAny(cfg.ServerID, "{}/") {
		return nil, fmt.Errorf("router/redis: ServerID %q must be 1-128 bytes without '{', '}' or '/'", cfg.ServerID)
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if strings.ContainsAny(cfg.Prefix, "{}") {
		return nil, fmt.Errorf("router/redis: Prefix %q must not contain '{' or '}'", cfg.Prefix)
	}
	if cfg.RouteTTL == 0 {
		cfg.RouteTTL = DefaultRouteTTL
	}
	if cfg.ServerTTL == 0 {
		cfg.ServerTTL = DefaultServerTTL
	}
	if cfg.RouteTTL < 30*time.Millisecond || cfg.ServerTTL < 30*time.Millisecond {
		return nil, errors.New("router/redis: RouteTTL and ServerTTL must be at least 30ms")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = DefaultQueueSize
	}
	var inc [6]byte
	_, _ = rand.Read(inc[:])
	nodeID := cfg.ServerID + "/" + hex.EncodeToString(inc[:])
	r := &Router{
		c:         cfg.Client,
		h:         cfg.Handler,
		log:       cfg.Logger,
		serverID:  cfg.ServerID,
		nodeID:    nodeID,
		prefix:    cfg.Prefix,
		channel:   channelName(cfg.Prefix, nodeID),
		aliveKey:  cfg.Prefix + "alive:{" + nodeID + "}",
		nodesKey:  cfg.Prefix + "nodes",
		routeTTL:  cfg.RouteTTL,
		serverTTL: cfg.ServerTTL,
		seed:      maphash.MakeSeed(),
		stop:      make(chan struct{}),
		refresh:   make(chan struct{}, 1),
		maxQueue:  cfg.QueueSize,
		wake:      make(chan struct{}, 1),
		pubStop:   make(chan struct{}),
		pubDone:   make(chan struct{}),
	}
	for i := range r.shards {
		r.shards[i].users = make(map[string]struct{})
	}
	r.dead.Store(&map[string]struct{}{})

	ps, sharded, err := r.subscribe(ctx, !cfg.Classic)
	if err != nil {
		return nil, err
	}
	r.ps, r.sharded = ps, sharded
	if _, err := r.heartbeat(ctx); err != nil {
		_ = ps.Close()
		return nil, fmt.Errorf("router/redis: register node: %w", err)
	}
	if cfg.Registerer != nil {
		r.register(cfg.Registerer)
	}
	r.wg.Add(3)
	go r.receiveLoop()
	go r.heartbeatLoop()
	go r.refreshLoop()
	go r.publishLoop()
	r.log.Info("router/redis: node started", "node", nodeID, "sharded_pubsub", sharded)
	return r, nil
}

func channelName(prefix, node string) string { return prefix + "node:{" + node + "}" }

func (r *Router) routeKey(user string) string { return r.prefix + "route:{" + user + "}" }

// NodeID returns this node's id: ServerID/incarnation.
func (r *Router) NodeID() string { return r.nodeID }

// Sharded reports whether the node uses sharded pub/sub.
func (r *Router) Sharded() bool { return r.sharded }

// Stats returns the counters.
func (r *Router) Stats() Stats {
	n := &r.n
	return Stats{
		LocalEvents: n.local.Load(), RemoteEvents: n.remote.Load(), Messages: n.messages.Load(),
		Unheard: n.unheard.Load(), PublishErrors: n.pubErr.Load(), LookupErrors: n.lookupErr.Load(),
		Received: n.received.Load(), NotAttached: n.notAttached.Load(), Malformed: n.malformed.Load(),
		Resubscribes: n.resubscribes.Load(), Trimmed: n.trimmed.Load(), Refreshed: n.refreshed.Load(),
		Losses: n.losses.Load(), QueueDrops: n.queueDrops.Load(),
		EncodeErrors: n.encodeErr.Load(),
	}
}

// subscribe opens this node's subscription and waits for Redis to confirm
// it. With sharded set it tries SSUBSCRIBE first and falls back to
// SUBSCRIBE when the server does not know the command.
func (r *Router) subscribe(ctx context.Context, sharded bool) (*goredis.PubSub, bool, error) {
	var ps *goredis.PubSub
	if sharded {
		ps = r.c.SSubscribe(ctx, r.channel)
	} else {
		ps = r.c.Subscribe(ctx, r.channel)
	}
	msg, err := ps.Receive(ctx)
	if err == nil {
		if _, ok := msg.(*goredis.Subscription); !ok {
			err = fmt.Errorf("unexpected %T", msg)
		}
	}
	if err != nil {
		_ = ps.Close()
		if sharded && strings.Contains(strings.ToLower(err.Error()), "unknown command") {
			r.log.Info("router/redis: no sharded pub/sub (Redis < 7): using classic pub/sub", "err", err)
			return r.subscribe(ctx, false)
		}
		return nil, false, fmt.Errorf("router/redis: subscribe %s: %w", r.channel, err)
	}
	return ps, sharded, nil
}

func (r *Router) shard(user string) *shard {
	return &r.shards[maphash.String(r.seed, user)%shardCount]
}

func (r *Router) attached(user string) bool {
	s := r.shard(user)
	s.mu.RLock()
	_, ok := s.users[user]
	s.mu.RUnlock()
	return ok
}

func unavailable(op string, err error) error {
	// The message names the cause already (and always has: it is what a
	// client sees), so the cause is not kept a second time as Err.
	return store.Errorf(store.CodeUnavailable, "router: redis %s: %v", op, err)
}

func validUser(u string) bool { return u != "" && len(u) <= maxUserID }

// Attach marks userID as connected here and records the route in Redis
// (one ZADD) before returning, so any Route that starts after Attach
// returns, on any node, finds this node. Errors: InvalidArgument for an
// empty or over-long user id, Unavailable after Close or when Redis fails
// (then nothing changed here).
func (r *Router) Attach(ctx context.Context, userID string) error {
	if !validUser(userID) {
		return errUser
	}
	if r.closed.Load() {
		return ErrClosed
	}
	s := r.shard(userID)
	s.mu.Lock()
	_, was := s.users[userID]
	s.users[userID] = struct{}{}
	s.mu.Unlock()
	deadline := time.Now().Add(r.routeTTL).UnixMilli()
	if err := r.c.ZAdd(ctx, r.routeKey(userID), goredis.Z{Score: float64(deadline), Member: r.nodeID}).Err(); err != nil {
		if !was {
			s.mu.Lock()
			delete(s.users, userID)
			s.mu.Unlock()
		}
		return unavailable("attach", err)
	}
	return nil
}

// Detach marks userID as no longer connected here: from its return on,
// this node's Handler gets no event for the user. It then removes the
// route in Redis (one ZREM); if that fails (Unavailable) the entry expires
// after RouteTTL and meanwhile costs only useless publishes. InvalidArgument
// for an empty or over-long user id.
func (r *Router) Detach(ctx context.Context, userID string) error {
	if !validUser(userID) {
		return errUser
	}
	s := r.shard(userID)
	s.mu.Lock()
	delete(s.users, userID)
	s.mu.Unlock()
	if r.closed.Load() {
		return nil // Close removes the routes
	}
	if err := r.c.ZRem(ctx, r.routeKey(userID), r.nodeID).Err(); err != nil {
		return unavailable("detach", err)
	}
	return nil
}

// Route delivers events to every node where their user is attached:
// synchronously to this node's Handler (users attached here, in order),
// and through Redis to the other nodes: the events are queued (bounded)
// for this node's publisher goroutine, so Route never waits on Redis and
// ctx is not used. Events of one user routed by one goroutine arrive in
// order on every node. Events of users attached nowhere are dropped (not
// an error); so are remote events when Redis fails (counted in Stats;
// devices recover by sync). Errors: InvalidArgument (and nothing routed)
// when an event has no user id or no frame; Unavailable after Close;
// ResourceExhausted when the queue is full (the local part was delivered,
// the remote part dropped).
func (r *Router) Route(_ context.Context, events []router.Event) error {
	for i := range events {
		if !validUser(events[i].UserID) || (events[i].Frame == nil) == (events[i].RevokeDeviceID == "") {
			return errEvent
		}
	}
	if len(events) == 0 {
		return nil
	}
	r.active.Add(1)
	if r.closed.Load() {
		r.active.Add(-1)
		return ErrClosed
	}
	var local uint64
	for i := range events {
		if r.attached(events[i].UserID) {
			r.h(events[i])
			local++
		}
	}
	r.n.local.Add(local)
	queued := r.enqueue(events)
	r.active.Add(-1)
	if !queued {
		r.n.queueDrops.Add(uint64(len(events)))
		return errFull
	}
	return nil
}

// enqueue copies events to the publisher's queue unless it would exceed
// maxQueue events.
func (r *Router) enqueue(events []router.Event) bool {
	r.qmu.Lock()
	if len(r.pending)+len(events) > r.maxQueue {
		r.qmu.Unlock()
		return false
	}
	r.pending = append(r.pending, events...)
	r.queued += uint64(len(events))
	r.qmu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
	return true
}

// publishLoop is the publisher: it takes everything queued (so many small
// Route calls share one round trip) and routes it, maxCycle events at a
// time, in queue order. When Close stops it, it routes what is left
// (bounded by cleanupTime) and exits; when Kill stops it, it drops it.
func (r *Router) publishLoop() {
	defer close(r.pubDone)
	var (
		work     []router.Event
		lastWarn time.Time
		deadline time.Time // set once Close asked for the final drain
	)
	stopped := func() bool {
		select {
		case <-r.pubStop:
			return true
		default:
			return false
		}
	}
	for {
		if !stopped() {
			select {
			case <-r.wake:
			case <-r.pubStop:
			}
		}
		if stopped() {
			if !r.drain {
				return
			}
			if deadline.IsZero() {
				deadline = time.Now().Add(cleanupTime)
			}
		}
		r.qmu.Lock()
		work, r.pending = r.pending, work[:0]
		r.qmu.Unlock()
		if len(work) == 0 {
			if stopped() {
				return // drained
			}
			continue
		}
		for i := 0; i < len(work); i += maxCycle {
			if stopped() && (!r.drain || time.Now().After(deadline)) {
				break // killed, or the drain ran out of time: drop the rest
			}
			d := time.Now().Add(cycleTime)
			if !deadline.IsZero() && deadline.Before(d) {
				d = deadline
			}
			ctx, cancel := context.WithDeadline(context.Background(), d)
			chunk := work[i:min(i+maxCycle, len(work))]
			err := r.routeRemote(ctx, chunk)
			cancel()
			r.handled.Add(uint64(len(chunk)))
			if err != nil && time.Since(lastWarn) > 10*time.Second {
				lastWarn = time.Now()
				r.log.Warn("router/redis: routing to other servers failed; their devices will sync", "node", r.nodeID, "err", err)
			}
		}
		clear(work) // drop the frames
		if !deadline.IsZero() && time.Now().After(deadline) {
			return
		}
	}
}

// lookup is one distinct user of a Route call.
type lookup struct {
	key   string
	cmd   *goredis.ZSliceCmd
	dests []string
}

var batchPool = sync.Pool{New: func() any { return new(batch) }}

func (r *Router) routeRemote(ctx context.Context, events []router.Event) error {
	// 1. Look every distinct user up, in one pipeline.
	idx := make(map[string]int, len(events))
	lookups := make([]lookup, 0, len(events))
	pipe := r.c.Pipeline()
	for i := range events {
		u := events[i].UserID
		if _, ok := idx[u]; !ok {
			idx[u] = len(lookups)
			key := r.routeKey(u)
			lookups = append(lookups, lookup{key: key, cmd: pipe.ZRangeWithScores(ctx, key, 0, -1)})
		}
	}
	if _, err := pipe.Exec(ctx); err != nil && ctx.Err() != nil {
		r.n.lookupErr.Add(uint64(len(lookups)))
		return unavailable("lookup", err)
	}

	// 2. Choose destinations: skip this node (Route served it), dead nodes
	// (their members expire and are trimmed like any other) and expired
	// members, which are trimmed.
	now := float64(time.Now().UnixMilli())
	dead := *r.dead.Load()
	pipe = r.c.Pipeline()
	var lookupErr error
	for li := range lookups {
		l := &lookups[li]
		zs, err := l.cmd.Result()
		if err != nil {
			r.n.lookupErr.Add(1)
			lookupErr = err
			continue
		}
		expired := false
		for _, z := range zs {
			node, _ := z.Member.(string)
			switch {
			case z.Score < now:
				expired = true
			case node != r.nodeID && !isDead(dead, node):
				l.dests = append(l.dests, node)
			}
		}
		if expired {
			pipe.ZRemRangeByScore(ctx, l.key, "-inf", "("+strconv.FormatInt(int64(now), 10))
			r.n.trimmed.Add(1)
		}
	}

	// 3. One batch per destination node, events in the order given.
	var (
		dests     []string
		batches   []*batch
		destIdx   map[string]int
		encodeErr error
		copies    uint64
	)
	for i := range events {
		for _, d := range lookups[idx[events[i].UserID]].dests {
			bi := -1
			if destIdx != nil {
				if j, ok := destIdx[d]; ok {
					bi = j
				}
			} else {
				for j, dd := range dests { // few destinations: a linear scan
					if dd == d {
						bi = j
						break
					}
				}
			}
			if bi < 0 {
				bi = len(dests)
				dests = append(dests, d)
				b := batchPool.Get().(*batch)
				b.reset()
				batches = append(batches, b)
				switch {
				case destIdx != nil:
					destIdx[d] = bi
				case len(dests) > 16: // many destinations: a map
					destIdx = make(map[string]int, 2*len(dests))
					for j, dd := range dests {
						destIdx[dd] = j
					}
				}
			}
			if err := batches[bi].add(&events[i], MaxPayload); err != nil {
				encodeErr = err // this copy is skipped; the others go
				r.n.encodeErr.Add(1)
				continue
			}
			copies++
		}
	}
	r.n.remote.Add(copies)
	defer func() {
		for _, b := range batches {
			if cap(b.buf) <= 2*MaxPayload {
				batchPool.Put(b)
			}
		}
	}()

	// 4. Publish (and trim) in one pipeline.
	var pubs []*goredis.IntCmd
	for bi, b := range batches {
		b.cut()
		ch := channelName(r.prefix, dests[bi])
		for _, p := range b.payloads {
			if r.sharded {
				pubs = append(pubs, pipe.SPublish(ctx, ch, p))
			} else {
				pubs = append(pubs, pipe.Publish(ctx, ch, p))
			}
		}
	}
	if encodeErr != nil {
		r.log.Warn("router/redis: a frame could not be encoded; not sent to other servers", "node", r.nodeID, "err", encodeErr)
	}
	if pipe.Len() == 0 {
		if lookupErr != nil {
			return unavailable("lookup", lookupErr)
		}
		return nil
	}
	_, _ = pipe.Exec(ctx)
	var pubErr error
	for _, c := range pubs {
		n, err := c.Result()
		switch {
		case err != nil:
			r.n.pubErr.Add(1)
			pubErr = err
		case n == 0:
			r.n.unheard.Add(1)
		}
		r.n.messages.Add(1)
	}
	if pubErr != nil {
		return unavailable("publish", pubErr)
	}
	if lookupErr != nil {
		return unavailable("lookup", lookupErr)
	}
	return nil
}

func isDead(dead map[string]struct{}, node string) bool {
	if len(dead) == 0 {
		return false
	}
	_, ok := dead[node]
	return ok
}

// receiveLoop reads this node's channel until Close and hands each event
// of a user attached here to the Handler. go-redis re-dials and
// re-subscribes after a broken connection; a connection silent for
// healthEvery is pinged, and replaced when the ping gets no answer.
func (r *Router) receiveLoop() {
	defer r.wg.Done()
	healthEvery := min(r.serverTTL, 5*time.Second)
	ctx := context.Background()
	var (
		scratch  []router.Event
		pinged   bool
		backoff  time.Duration
		lastWarn time.Time
	)
	for {
		r.psMu.Lock()
		ps := r.ps
		r.psMu.Unlock()
		if ps == nil {
			return
		}
		msg, err := ps.ReceiveTimeout(ctx, healthEvery)
		if r.closed.Load() {
			return
		}
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				if !pinged {
					pinged = true
					_ = ps.Ping(ctx)
					continue
				}
				// No answer to the ping: replace the connection.
				r.log.Warn("router/redis: subscription silent; reconnecting", "node", r.nodeID)
				r.resubscribe() // on failure go-redis re-dials the old one
				pinged = false
				continue
			}
			if time.Since(lastWarn) > 10*time.Second {
				lastWarn = time.Now()
				r.log.Warn("router/redis: subscription broken; reconnecting (events published meanwhile are lost)", "node", r.nodeID, "err", err)
			}
			backoff = min(max(2*backoff, 10*time.Millisecond), time.Second)
			select {
			case <-r.stop:
				return
			case <-time.After(backoff):
			}
			continue
		}
		pinged, backoff = false, 0
		switch m := msg.(type) {
		case *goredis.Subscription:
			switch m.Kind {
			case "subscribe", "ssubscribe":
				// The first confirmation was read by subscribe: this one
				// follows a reconnect by go-redis.
				r.n.resubscribes.Add(1)
			case "sunsubscribe", "unsubscribe":
				// Redis dropped the subscription (in a cluster, the
				// channel's slot moved to another shard): subscribe again,
				// which finds the new owner.
				r.log.Warn("router/redis: unsubscribed by Redis (slot moved?); subscribing again", "node", r.nodeID)
				for wait := 10 * time.Millisecond; !r.resubscribe(); wait = min(2*wait, time.Second) {
					select {
					case <-r.stop:
						return
					case <-time.After(wait):
					}
				}
			}
		case *goredis.Message:
			scratch = r.deliver(m.Payload, scratch[:0])
		}
	}
}

// deliver decodes one message and hands its events to the Handler.
func (r *Router) deliver(payload string, scratch []router.Event) []router.Event {
	evs, err := decodeBatch(payload, scratch)
	if err != nil {
		if r.n.malformed.Add(1) <= 10 {
			r.log.Warn("router/redis: dropped a malformed message", "node", r.nodeID, "bytes", len(payload))
		}
		return evs
	}
	var got, dropped uint64
	for i := range evs {
		if r.attached(evs[i].UserID) {
			r.h(evs[i])
			got++
		} else {
			dropped++
		}
		evs[i] = router.Event{}
	}
	r.n.received.Add(got)
	r.n.notAttached.Add(dropped)
	return evs
}

// resubscribe replaces the subscription with a new one (on a cluster,
// after reloading the slot map). It reports false when that failed (the
// old subscription is kept) and true when it succeeded or the router is
// closed.
func (r *Router) resubscribe() bool {
	ctx, cancel := context.WithTimeout(context.Background(), r.serverTTL)
	defer cancel()
	if cc, ok := r.c.(*goredis.ClusterClient); ok {
		cc.ReloadState(ctx)
	}
	ps, _, err := r.subscribe(ctx, r.sharded)
	r.psMu.Lock()
	defer r.psMu.Unlock()
	if r.ps == nil { // closed meanwhile
		if ps != nil {
			_ = ps.Close()
		}
		return true
	}
	if err != nil {
		r.log.Warn("router/redis: resubscribe failed; retrying", "node", r.nodeID, "err", err)
		return false
	}
	_ = r.ps.Close()
	r.ps = ps
	r.n.resubscribes.Add(1)
	r.log.Info("router/redis: subscribed again (Redis reachable)", "node", r.nodeID)
	return true
}

// heartbeat renews this node's alive key and registry entry and learns
// which registered nodes are dead (their alive key expired). It reports
// lost when the alive key was missing although this node had registered:
// Redis lost its data (restart, flush, failover) or this node was silent
// too long and its routes may have expired.
func (r *Router) heartbeat(ctx context.Context) (lost bool, err error) {
	now := time.Now().UnixMilli()
	pipe := r.c.Pipeline()
	created := pipe.SetArgs(ctx, r.aliveKey, "1", goredis.SetArgs{Mode: "NX", TTL: r.serverTTL})
	pipe.PExpire(ctx, r.aliveKey, r.serverTTL)
	pipe.ZAdd(ctx, r.nodesKey, goredis.Z{Score: float64(now), Member: r.nodeID})
	// A dead node stays listed (and fenced) until its routes have expired.
	forget := now - (2*r.routeTTL + r.serverTTL).Milliseconds()
	pipe.ZRemRangeByScore(ctx, r.nodesKey, "-inf", strconv.FormatInt(forget, 10))
	list := pipe.ZRange(ctx, r.nodesKey, 0, -1)
	_, _ = pipe.Exec(ctx)
	if err := created.Err(); err != nil && err != goredis.Nil {
		return false, err
	}
	lost = created.Err() == nil
	nodes, err := list.Result()
	if err != nil {
		return lost, err
	}
	pipe = r.c.Pipeline()
	var others []string
	var exists []*goredis.IntCmd
	for _, n := range nodes {
		if n != r.nodeID {
			others = append(others, n)
			exists = append(exists, pipe.Exists(ctx, r.prefix+"alive:{"+n+"}"))
		}
	}
	if len(exists) > 0 {
		_, _ = pipe.Exec(ctx)
	}
	dead := make(map[string]struct{})
	for i, c := range exists {
		n, err := c.Result()
		if err != nil {
			return lost, err
		}
		if n == 0 {
			dead[others[i]] = struct{}{}
		}
	}
	if old := r.dead.Load(); old != nil {
		for n := range dead {
			if _, was := (*old)[n]; !was {
				r.log.Info("router/redis: node fenced (its alive key expired): its routes are ignored", "node", r.nodeID, "dead_node", n)
			}
		}
	}
	r.dead.Store(&dead)
	return lost, nil
}

func (r *Router) heartbeatLoop() {
	defer r.wg.Done()
	t := time.NewTicker(r.serverTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), r.serverTTL/3)
		lost, err := r.heartbeat(ctx)
		cancel()
		if err != nil {
			r.log.Warn("router/redis: heartbeat failed", "node", r.nodeID, "err", err)
		}
		if lost {
			r.n.losses.Add(1)
			r.log.Warn("router/redis: this node's Redis state was lost (Redis restarted or flushed, or the node was silent too long); re-adding every route", "node", r.nodeID)
			select {
			case r.refresh <- struct{}{}:
			default:
			}
		}
	}
}

// refreshLoop re-adds every local user's route once per RouteTTL/3, a few
// shards at a time so the load is spread over the interval, and all of
// them at once when the heartbeat found the node's state lost.
func (r *Router) refreshLoop() {
	defer r.wg.Done()
	interval := r.routeTTL / 3
	tick := max(interval/shardCount, 5*time.Millisecond)
	step := int((int64(shardCount)*int64(tick) + int64(interval) - 1) / int64(interval))
	t := time.NewTicker(tick)
	defer t.Stop()
	next := 0
	var buf []string
	for {
		select {
		case <-r.stop:
			return
		case <-r.refresh:
			for i := range shardCount {
				buf = r.refreshShard(i, buf)
			}
		case <-t.C:
			for range step {
				buf = r.refreshShard(next, buf)
				next = (next + 1) % shardCount
			}
		}
	}
}

func (r *Router) refreshShard(i int, buf []string) []string {
	s := &r.shards[i]
	buf = buf[:0]
	s.mu.RLock()
	for u := range s.users {
		buf = append(buf, u)
	}
	s.mu.RUnlock()
	for len(buf) > 0 {
		select {
		case <-r.stop:
			return buf[:0]
		default:
		}
		n := min(len(buf), refreshChunk)
		deadline := float64(time.Now().Add(r.routeTTL).UnixMilli())
		ctx, cancel := context.WithTimeout(context.Background(), r.routeTTL/3)
		pipe := r.c.Pipeline()
		for _, u := range buf[:n] {
			pipe.ZAdd(ctx, r.routeKey(u), goredis.Z{Score: deadline, Member: r.nodeID})
		}
		if _, err := pipe.Exec(ctx); err != nil {
			r.log.Warn("router/redis: route refresh failed", "node", r.nodeID, "err", err)
		} else {
			r.n.refreshed.Add(uint64(n))
		}
		cancel()
		clear(buf[:n])
		buf = buf[n:]
	}
	return buf[:0]
}

// Close stops the node: once it returns the Handler is never called again.
// It stops the heartbeat and refresher, unsubscribes, waits for Route
// calls delivering locally, publishes the events still queued, then (best
// effort, each step bounded by 10 s) removes
// this node's routes and alive key, so other nodes stop publishing to it
// at once rather than after ServerTTL. Safe to call more than once; must
// not be called from the Handler. Always returns nil.
func (r *Router) Close() error {
	r.closeOnce.Do(func() { r.shutdown(true) })
	return nil
}

func (r *Router) shutdown(cleanup bool) {
	r.closed.Store(true)
	close(r.stop)
	r.psMu.Lock()
	if r.ps != nil {
		_ = r.ps.Close()
		r.ps = nil
	}
	r.psMu.Unlock()
	r.wg.Wait()
	for i := 0; r.active.Load() != 0; i++ {
		if i < 100 {
			runtime.Gosched()
		} else {
			time.Sleep(100 * time.Microsecond)
		}
	}
	// No Route queues any more: publish what is queued (unless killed).
	r.drain = cleanup
	close(r.pubStop)
	<-r.pubDone
	if !cleanup {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTime)
	defer cancel()
	// Dead first: other nodes stop publishing here at their next heartbeat
	// even if removing the routes fails half way.
	if err := r.c.Del(ctx, r.aliveKey).Err(); err != nil {
		r.log.Warn("router/redis: close: remove alive key", "node", r.nodeID, "err", err)
	}
	var users []string
	for i := range r.shards {
		s := &r.shards[i]
		s.mu.Lock()
		for u := range s.users {
			users = append(users, u)
		}
		clear(s.users)
		s.mu.Unlock()
	}
	for len(users) > 0 && ctx.Err() == nil {
		n := min(len(users), refreshChunk)
		pipe := r.c.Pipeline()
		for _, u := range users[:n] {
			pipe.ZRem(ctx, r.routeKey(u), r.nodeID)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			r.log.Warn("router/redis: close: remove routes (they expire after RouteTTL)", "node", r.nodeID, "err", err)
			break
		}
		users = users[n:]
	}
	r.log.Info("router/redis: node closed", "node", r.nodeID)
}
