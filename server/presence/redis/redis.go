// Package redis is the presence.Engine shared by the servers of a cluster
// through Redis (7.0 or later: sharded pub/sub).
//
// Per user: one hash (devices up per server instance, last active time,
// hide_presence flag, version) changed atomically by Lua scripts that also
// SPUBLISH the change on the user's channel; the hash and the channel share
// the user id as hash tag, so they live on one shard. A server SSUBSCRIBEs
// to a user's channel while one of its clients watches that user (one
// subscription per user per server, however many watchers).
//
// Per server instance (a server process; a new one at every start and
// after a lost lease): a lease key with expiry renewed every RenewInterval,
// a set of the users it has devices up for, and an entry in the instance
// registry. Every server sweeps the registry every SweepInterval; an
// instance whose lease has expired is dead (killed, partitioned, frozen):
// the first sweeper to win SET NX on its clean lock takes all its devices
// down (users with no device left elsewhere go offline, last active = the
// dead instance's last renewal) and removes it. Nothing scans users or
// devices periodically: the cost grows with changes and dead servers.
//
// Delivery is at most once (Redis pub/sub); when the subscriber connection
// is re-established the engine re-reads the watched users and reports
// their current state (presence.Presence.Version orders the reports).
//
// Only a single Redis endpoint (*redis.Client: standalone, or a Sentinel
// failover client) is supported: the one subscriber connection carries the
// channels of every slot.
package redis

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/chatd/chatd/server/presence"
	"github.com/chatd/chatd/server/store"
)

// Defaults of Config.
const (
	DefaultPrefix      = "presence:"
	DefaultLeaseTTL    = 15 * time.Second
	DefaultLastSeenTTL = 30 * 24 * time.Hour
)

// Config configures an Engine. Zero values take the defaults.
type Config struct {
	// Client is the Redis connection. Required; the Engine does not close
	// it.
	Client *goredis.Client
	// ServerID names this server (instance ids are ServerID~random). It
	// must not contain '|'. Required.
	ServerID string
	// Prefix of every key and channel. Default "presence:".
	Prefix string
	// LeaseTTL is how long this server counts as alive after its last lease
	// renewal. Default 15 s. Devices of a killed server go offline within
	// LeaseTTL + SweepInterval (+ one script per user) of its last renewal;
	// keep that under the heartbeat grace period.
	LeaseTTL time.Duration
	// RenewInterval is how often the lease is renewed. Default LeaseTTL/3.
	RenewInterval time.Duration
	// SweepInterval is how often this server looks for dead instances
	// (jittered by up to 20%). Default LeaseTTL/3.
	SweepInterval time.Duration
	// LastSeenTTL is how long a user's record (last active time, flag) is
	// kept after they went offline. Default 30 days.
	LastSeenTTL time.Duration
	// CleanBatch is the number of users taken down per pipeline when
	// cleaning a dead instance. Default 256.
	CleanBatch int
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Engine is the Redis presence engine of one server. It is safe for
// concurrent use.
type Engine struct {
	rdb    *goredis.Client
	cfg    Config
	log    *slog.Logger
	prefix string
	inst   atomic.Pointer[string]

	seed  maphash.Seed
	local [localShards]localShard // devices up from this instance
	subs  [topicShards]topicShard // watched users' channels
	subID atomic.Uint64

	ps        *goredis.PubSub
	resyncMu  sync.Mutex
	resyncSet map[string]struct{} // channels to re-read
	resyncSig chan struct{}

	closed atomic.Bool
	stop   chan struct{}
	wg     sync.WaitGroup
}

var _ presence.Engine = (*Engine)(nil)

const (
	localShards = 64
	topicShards = 16
)

type localShard struct {
	mu    sync.Mutex
	users map[string]*localUser
}

// localUser is one user's devices up from this instance; its mutex
// serializes the user's Redis calls from this server.
type localUser struct {
	mu      sync.Mutex
	devices map[string]struct{}
	hidden  bool // as last given to Up
	gone    bool
}

type topicShard struct {
	mu     sync.RWMutex
	topics map[string]*topic // by channel
}

type topic struct {
	user string
	subs map[uint64]func(presence.Presence)
}

// New checks that Redis has sharded pub/sub (7.0+), loads the scripts,
// registers a new instance of cfg.ServerID (lease and registry entry),
// starts the renew, sweep and subscriber loops and returns the Engine.
// Errors: InvalidArgument for a bad Config; Redis errors.
func New(ctx context.Context, cfg Config) (*Engine, error) {
	if cfg.Client == nil {
		return nil, store.Errorf(store.CodeInvalid, "presence/redis: Config.Client is required")
	}
	if cfg.ServerID == "" || strings.Contains(cfg.ServerID, "|") {
		return nil, store.Errorf(store.CodeInvalid, "presence/redis: Config.ServerID must be non-empty and without '|'")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = DefaultLeaseTTL
	}
	if cfg.LeaseTTL < 10*time.Millisecond {
		return nil, store.Errorf(store.CodeInvalid, "presence/redis: LeaseTTL must be at least 10ms")
	}
	if cfg.RenewInterval <= 0 {
		cfg.RenewInterval = cfg.LeaseTTL / 3
	}
	if cfg.RenewInterval >= cfg.LeaseTTL {
		return nil, store.Errorf(store.CodeInvalid, "presence/redis: RenewInterval must be under LeaseTTL")
	}
	if cfg.SweepInterval <= 0 {
		cfg.SweepInterval = cfg.LeaseTTL / 3
	}
	if cfg.LastSeenTTL <= 0 {
		cfg.LastSeenTTL = DefaultLastSeenTTL
	}
	if cfg.CleanBatch <= 0 {
		cfg.CleanBatch = 256
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	e := &Engine{
		rdb:       cfg.Client,
		cfg:       cfg,
		log:       cfg.Logger,
		prefix:    cfg.Prefix,
		seed:      maphash.MakeSeed(),
		resyncSet: make(map[string]struct{}),
		resyncSig: make(chan struct{}, 1),
		stop:      make(chan struct{}),
	}
	for i := range e.local {
		e.local[i].users = make(map[string]*localUser)
	}
	for i := range e.subs {
		e.subs[i].topics = make(map[string]*topic)
	}
	// Sharded pub/sub (Redis 7.0+) is required; fail clearly without it.
	if err := e.rdb.SPublish(ctx, e.prefix+"probe", "").Err(); err != nil {
		return nil, fmt.Errorf("presence/redis: SPUBLISH failed (Redis 7.0 or later is required): %w", err)
	}
	for _, s := range scripts {
		if err := s.Load(ctx, e.rdb).Err(); err != nil {
			return nil, fmt.Errorf("presence/redis: load script: %w", err)
		}
	}
	inst := newInstanceID(cfg.ServerID)
	if err := e.register(ctx, inst); err != nil {
		return nil, err
	}
	e.inst.Store(&inst)

	e.ps = e.rdb.SSubscribe(context.Background())
	msgs := e.ps.ChannelWithSubscriptions(goredis.WithChannelSize(4096))
	e.wg.Add(4)
	go e.dispatchLoop(msgs)
	go e.resyncLoop()
	go e.renewLoop()
	go e.sweepLoop()
	return e, nil
}

func newInstanceID(serverID string) string {
	var b [8]byte
	_, _ = crand.Read(b[:])
	return serverID + "~" + hex.EncodeToString(b[:])
}

// Instance returns this server's current instance id.
func (e *Engine) Instance() string { return *e.inst.Load() }

// Key names.
func (e *Engine) userKey(u string) string     { return e.prefix + "u:{" + u + "}" }
func (e *Engine) channel(u string) string     { return e.prefix + "ch:{" + u + "}" }
func (e *Engine) registry() string            { return e.prefix + "instances" }
func (e *Engine) leaseKey(inst string) string { return e.prefix + "lease:" + inst }
func (e *Engine) usersKey(inst string) string { return e.prefix + "users:" + inst }
func (e *Engine) cleanKey(inst string) string { return e.prefix + "clean:" + inst }
func field(inst, device string) string        { return "c:" + inst + "|" + device }
func ms(t time.Time) int64                    { return t.UnixMilli() }

func (e *Engine) register(ctx context.Context, inst string) error {
	if err := e.rdb.Set(ctx, e.leaseKey(inst), "1", e.cfg.LeaseTTL).Err(); err != nil {
		return fmt.Errorf("presence/redis: lease: %w", err)
	}
	if err := e.rdb.ZAdd(ctx, e.registry(), goredis.Z{Score: float64(ms(time.Now())), Member: inst}).Err(); err != nil {
		return fmt.Errorf("presence/redis: register: %w", err)
	}
	return nil
}

func (e *Engine) localShard(u string) *localShard {
	return &e.local[maphash.String(e.seed, u)%localShards]
}

// lockLocal returns u's local entry locked (created if create).
func (e *Engine) lockLocal(u string, create bool) *localUser {
	s := e.localShard(u)
	for {
		s.mu.Lock()
		lu := s.users[u]
		if lu == nil {
			if !create {
				s.mu.Unlock()
				return nil
			}
			lu = &localUser{devices: make(map[string]struct{}, 1)}
			s.users[u] = lu
		}
		s.mu.Unlock()
		lu.mu.Lock()
		if !lu.gone {
			return lu
		}
		lu.mu.Unlock()
	}
}

// releaseLocal drops u's entry if empty (SREM from the instance's set);
// lu.mu is held.
func (e *Engine) releaseLocal(ctx context.Context, u string, lu *localUser) {
	if len(lu.devices) != 0 || lu.gone {
		return
	}
	lu.gone = true
	s := e.localShard(u)
	s.mu.Lock()
	if s.users[u] == lu {
		delete(s.users, u)
	}
	s.mu.Unlock()
	// A stale member is harmless (cleaning it is a no-op); a missing one
	// is not, so SREM only after the device's field is gone.
	if err := e.rdb.SRem(ctx, e.usersKey(e.Instance()), u).Err(); err != nil {
		e.log.Debug("presence/redis: srem", "user_id", u, "err", err)
	}
}

// pipe runs fn on a pipeline; if a script is missing (Redis restarted or
// SCRIPT FLUSH), it loads the scripts and runs fn once more.
func (e *Engine) pipe(ctx context.Context, fill func(goredis.Pipeliner)) ([]goredis.Cmder, error) {
	fn := func(p goredis.Pipeliner) error { fill(p); return nil }
	cmds, err := e.rdb.Pipelined(ctx, fn)
	if err != nil && goredis.HasErrorPrefix(firstErr(cmds, err), "NOSCRIPT") {
		for _, s := range scripts {
			if lerr := s.Load(ctx, e.rdb).Err(); lerr != nil {
				return cmds, lerr
			}
		}
		cmds, err = e.rdb.Pipelined(ctx, fn)
	}
	return cmds, err
}

func firstErr(cmds []goredis.Cmder, err error) error {
	for _, c := range cmds {
		if c.Err() != nil {
			return c.Err()
		}
	}
	return err
}

func (e *Engine) upArgs(u, device string, at time.Time, hidden bool) []any {
	h := "0"
	if hidden {
		h = "1"
	}
	return []any{field(e.Instance(), device), ms(at), h, e.channel(u)}
}

// Up implements presence.Engine. Errors: presence.ErrClosed, Redis errors.
func (e *Engine) Up(ctx context.Context, userID, deviceID string, at time.Time, hidden bool) (bool, error) {
	if e.closed.Load() {
		return false, presence.ErrClosed
	}
	lu := e.lockLocal(userID, true)
	defer lu.mu.Unlock()
	inst := e.Instance()
	var up *goredis.Cmd
	// SADD first: a server dying between the two leaves a harmless stale
	// member, never a field that no sweeper can find.
	_, err := e.pipe(ctx, func(p goredis.Pipeliner) {
		p.SAdd(ctx, e.usersKey(inst), userID)
		up = upScript.EvalSha(ctx, p, []string{e.userKey(userID)}, e.upArgs(userID, deviceID, at, hidden)...)
	})
	if err != nil {
		e.releaseLocal(ctx, userID, lu)
		return false, fmt.Errorf("presence/redis: up: %w", err)
	}
	lu.devices[deviceID] = struct{}{}
	lu.hidden = hidden
	n, _ := up.Int()
	return n == 1, nil
}

func (e *Engine) dropArgs(u, mode, pat string, last time.Time) []any {
	return []any{mode, pat, ms(last), e.channel(u), e.cfg.LastSeenTTL.Milliseconds()}
}

func (e *Engine) drop(ctx context.Context, u, mode, pat string, last time.Time) (bool, error) {
	var cmd *goredis.Cmd
	_, err := e.pipe(ctx, func(p goredis.Pipeliner) {
		cmd = dropScript.EvalSha(ctx, p, []string{e.userKey(u)}, e.dropArgs(u, mode, pat, last)...)
	})
	if err != nil {
		return false, err
	}
	n, _ := cmd.Int()
	return n == 1, nil
}

// Down implements presence.Engine. Errors: presence.ErrClosed, Redis
// errors.
func (e *Engine) Down(ctx context.Context, userID, deviceID string, lastActive time.Time) (bool, error) {
	if e.closed.Load() {
		return false, presence.ErrClosed
	}
	lu := e.lockLocal(userID, true)
	defer lu.mu.Unlock()
	changed, err := e.drop(ctx, userID, "f", field(e.Instance(), deviceID), lastActive)
	if err != nil {
		return false, fmt.Errorf("presence/redis: down: %w", err)
	}
	delete(lu.devices, deviceID)
	e.releaseLocal(ctx, userID, lu)
	return changed, nil
}

// Remove implements presence.Engine: it removes the device's fields of
// every instance. Errors: presence.ErrClosed, Redis errors.
func (e *Engine) Remove(ctx context.Context, userID, deviceID string, at time.Time) (bool, error) {
	if e.closed.Load() {
		return false, presence.ErrClosed
	}
	lu := e.lockLocal(userID, true)
	defer lu.mu.Unlock()
	changed, err := e.drop(ctx, userID, "d", deviceID, at)
	if err != nil {
		return false, fmt.Errorf("presence/redis: remove: %w", err)
	}
	delete(lu.devices, deviceID)
	e.releaseLocal(ctx, userID, lu)
	return changed, nil
}

// SetHidden implements presence.Engine. Errors: presence.ErrClosed, Redis
// errors.
func (e *Engine) SetHidden(ctx context.Context, userID string, hidden bool) error {
	if e.closed.Load() {
		return presence.ErrClosed
	}
	h := "0"
	if hidden {
		h = "1"
	}
	_, err := e.pipe(ctx, func(p goredis.Pipeliner) {
		hideScript.EvalSha(ctx, p, []string{e.userKey(userID)}, h, e.channel(userID), e.cfg.LastSeenTTL.Milliseconds())
	})
	if err != nil {
		return fmt.Errorf("presence/redis: set hidden: %w", err)
	}
	return nil
}

// Get implements presence.Engine: one pipelined HMGET per user, one round
// trip. Errors: presence.ErrClosed, Redis errors.
func (e *Engine) Get(ctx context.Context, userIDs []string) ([]presence.Presence, error) {
	if e.closed.Load() {
		return nil, presence.ErrClosed
	}
	return e.get(ctx, userIDs)
}

func (e *Engine) get(ctx context.Context, userIDs []string) ([]presence.Presence, error) {
	out := make([]presence.Presence, len(userIDs))
	if len(userIDs) == 0 {
		return out, nil
	}
	cmds := make([]*goredis.SliceCmd, len(userIDs))
	_, err := e.rdb.Pipelined(ctx, func(p goredis.Pipeliner) error {
		for i, u := range userIDs {
			cmds[i] = p.HMGet(ctx, e.userKey(u), "n", "last", "h", "ver")
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("presence/redis: get: %w", err)
	}
	for i, u := range userIDs {
		v := cmds[i].Val()
		out[i] = presence.Presence{
			UserID:       u,
			Online:       atoi(v[0]) > 0,
			LastActiveAt: msTime(atoi(v[1])),
			Hidden:       v[2] == "1",
			Version:      uint64(atoi(v[3])),
		}
	}
	return out, nil
}

func atoi(v any) int64 {
	s, _ := v.(string)
	n, _ := strconv.ParseInt(s, 10, 64)
	return n
}

func msTime(v int64) time.Time {
	if v <= 0 {
		return time.Time{}
	}
	return time.UnixMilli(v)
}

// parseChange decodes "<online>|<last ms>|<hidden>|<version>".
func parseChange(user, payload string) (presence.Presence, bool) {
	f := strings.Split(payload, "|")
	if len(f) != 4 {
		return presence.Presence{}, false
	}
	last, err1 := strconv.ParseInt(f[1], 10, 64)
	ver, err2 := strconv.ParseUint(f[3], 10, 64)
	if err1 != nil || err2 != nil {
		return presence.Presence{}, false
	}
	return presence.Presence{
		UserID:       user,
		Online:       f[0] == "1",
		LastActiveAt: msTime(last),
		Hidden:       f[2] == "1",
		Version:      ver,
	}, true
}

func (e *Engine) topicShard(ch string) *topicShard {
	return &e.subs[maphash.String(e.seed, ch)%topicShards]
}

// Subscribe implements presence.Engine. The first watcher of a user on
// this server SSUBSCRIBEs to the user's channel; when Redis confirms, the
// engine reads the user's state and reports it (so a change made between
// the caller's Get and the subscription taking effect is not lost). fn is
// called from the engine's dispatch and resync goroutines. Errors:
// presence.ErrClosed.
func (e *Engine) Subscribe(_ context.Context, userIDs []string, fn func(presence.Presence)) (func(), error) {
	if e.closed.Load() {
		return nil, presence.ErrClosed
	}
	id := e.subID.Add(1)
	chans := make([]string, len(userIDs))
	for i, u := range userIDs {
		chans[i] = e.channel(u)
	}
	// Group by shard; within a shard, the table change and the
	// (S)SUBSCRIBE command are made under the shard lock, so that commands
	// reach Redis in the order of the table changes.
	var byShard [topicShards][]int
	for i, ch := range chans {
		k := maphash.String(e.seed, ch) % topicShards
		byShard[k] = append(byShard[k], i)
	}
	for k := range byShard {
		if len(byShard[k]) == 0 {
			continue
		}
		s := &e.subs[k]
		var fresh []string
		s.mu.Lock()
		for _, i := range byShard[k] {
			t := s.topics[chans[i]]
			if t == nil {
				t = &topic{user: userIDs[i], subs: make(map[uint64]func(presence.Presence), 1)}
				s.topics[chans[i]] = t
				fresh = append(fresh, chans[i])
			}
			t.subs[id] = fn
		}
		if len(fresh) > 0 {
			// go-redis records the channels even if the write fails and
			// subscribes them again when it reconnects. Not the caller's
			// ctx: a canceled write on a healthy connection would leave
			// the channels recorded but never subscribed.
			wctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if err := e.ps.SSubscribe(wctx, fresh...); err != nil {
				e.log.Warn("presence/redis: ssubscribe", "channels", len(fresh), "err", err)
			}
			cancel()
		}
		s.mu.Unlock()
	}
	var once sync.Once
	return func() { once.Do(func() { e.unsubscribe(id, chans, byShard) }) }, nil
}

func (e *Engine) unsubscribe(id uint64, chans []string, byShard [topicShards][]int) {
	for k := range byShard {
		if len(byShard[k]) == 0 {
			continue
		}
		s := &e.subs[k]
		var gone []string
		s.mu.Lock()
		for _, i := range byShard[k] {
			t := s.topics[chans[i]]
			if t == nil {
				continue
			}
			delete(t.subs, id)
			if len(t.subs) == 0 {
				delete(s.topics, chans[i])
				gone = append(gone, chans[i])
			}
		}
		if len(gone) > 0 && !e.closed.Load() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if err := e.ps.SUnsubscribe(ctx, gone...); err != nil {
				e.log.Debug("presence/redis: sunsubscribe", "err", err)
			}
			cancel()
		}
		s.mu.Unlock()
	}
}

// deliver calls the watchers of ch with p.
func (e *Engine) deliver(ch string, p func(user string) (presence.Presence, bool)) {
	s := e.topicShard(ch)
	s.mu.RLock()
	defer s.mu.RUnlock()
	if e.closed.Load() {
		return
	}
	t := s.topics[ch]
	if t == nil {
		return
	}
	v, ok := p(t.user)
	if !ok {
		return
	}
	for _, fn := range t.subs {
		fn(v)
	}
}

func (e *Engine) dispatchLoop(msgs <-chan any) {
	defer e.wg.Done()
	for m := range msgs {
		switch m := m.(type) {
		case *goredis.Message:
			e.deliver(m.Channel, func(u string) (presence.Presence, bool) { return parseChange(u, m.Payload) })
		case *goredis.Subscription:
			if m.Kind == "ssubscribe" || m.Kind == "subscribe" {
				e.resyncMu.Lock()
				e.resyncSet[m.Channel] = struct{}{}
				e.resyncMu.Unlock()
				select {
				case e.resyncSig <- struct{}{}:
				default:
				}
			}
		}
	}
}

// resyncLoop reads the state of users whose subscription was (re)confirmed
// and reports it to their watchers, in pipelined batches.
func (e *Engine) resyncLoop() {
	defer e.wg.Done()
	const batch = 512
	for {
		select {
		case <-e.stop:
			return
		case <-e.resyncSig:
		}
		for {
			e.resyncMu.Lock()
			chans := make([]string, 0, min(batch, len(e.resyncSet)))
			for ch := range e.resyncSet {
				if len(chans) == batch {
					break
				}
				chans = append(chans, ch)
				delete(e.resyncSet, ch)
			}
			e.resyncMu.Unlock()
			if len(chans) == 0 {
				break
			}
			users := make([]string, 0, len(chans))
			keep := chans[:0]
			for _, ch := range chans {
				s := e.topicShard(ch)
				s.mu.RLock()
				if t := s.topics[ch]; t != nil {
					users = append(users, t.user)
					keep = append(keep, ch)
				}
				s.mu.RUnlock()
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			ps, err := e.get(ctx, users)
			cancel()
			if err != nil {
				if e.closed.Load() {
					return
				}
				e.log.Warn("presence/redis: resync", "users", len(users), "err", err)
				e.resyncMu.Lock()
				for _, ch := range keep {
					e.resyncSet[ch] = struct{}{}
				}
				e.resyncMu.Unlock()
				select {
				case <-e.stop:
					return
				case <-time.After(time.Second):
				}
				continue
			}
			for i, ch := range keep {
				p := ps[i]
				e.deliver(ch, func(u string) (presence.Presence, bool) { return p, u == p.UserID })
			}
		}
	}
}

func (e *Engine) renewLoop() {
	defer e.wg.Done()
	tick := time.NewTicker(e.cfg.RenewInterval)
	defer tick.Stop()
	for {
		select {
		case <-e.stop:
			return
		case <-tick.C:
		}
		if err := e.renew(); err != nil && !e.closed.Load() {
			e.log.Warn("presence/redis: lease renewal failed", "instance", e.Instance(), "err", err)
		}
	}
}

// renew extends the lease. If it has expired (this server was frozen or
// cut off longer than LeaseTTL), other servers may already have taken its
// devices down: it registers a new instance and brings every device it
// holds up again under it.
func (e *Engine) renew() error {
	ctx, cancel := context.WithTimeout(context.Background(), e.cfg.LeaseTTL)
	defer cancel()
	inst := e.Instance()
	ok, err := e.rdb.SetXX(ctx, e.leaseKey(inst), "1", e.cfg.LeaseTTL).Result()
	if err != nil {
		return err
	}
	if ok {
		return e.rdb.ZAdd(ctx, e.registry(), goredis.Z{Score: float64(ms(time.Now())), Member: inst}).Err()
	}
	next := newInstanceID(e.cfg.ServerID)
	if err := e.register(ctx, next); err != nil {
		return err
	}
	e.inst.Store(&next)
	e.log.Warn("presence/redis: lease lost; re-registering devices under a new instance", "old", inst, "new", next)
	now := time.Now()
	for i := range e.local {
		s := &e.local[i]
		s.mu.Lock()
		users := make([]string, 0, len(s.users))
		for u := range s.users {
			users = append(users, u)
		}
		s.mu.Unlock()
		for _, u := range users {
			lu := e.lockLocal(u, false)
			if lu == nil {
				continue
			}
			_, err := e.pipe(ctx, func(p goredis.Pipeliner) {
				p.SAdd(ctx, e.usersKey(next), u)
				for dev := range lu.devices {
					upScript.EvalSha(ctx, p, []string{e.userKey(u)}, e.upArgs(u, dev, now, lu.hidden)...)
				}
			})
			lu.mu.Unlock()
			if err != nil {
				return err
			}
		}
	}
	return nil
}

func (e *Engine) sweepLoop() {
	defer e.wg.Done()
	for {
		jitter := time.Duration(rand.Int64N(int64(e.cfg.SweepInterval)/5 + 1))
		t := time.NewTimer(e.cfg.SweepInterval - jitter)
		select {
		case <-e.stop:
			t.Stop()
			return
		case <-t.C:
		}
		if err := e.Sweep(context.Background()); err != nil && !e.closed.Load() {
			e.log.Warn("presence/redis: sweep failed", "err", err)
		}
	}
}

// Sweep looks for dead instances (registered, lease expired) and cleans
// those whose clean lock it wins; it returns how many it cleaned. The
// sweep loop calls it every SweepInterval; tests may call it directly.
// Cost: one ZRANGE and one EXISTS per registered instance, plus, per dead
// instance, one script per user it had devices up for.
func (e *Engine) Sweep(ctx context.Context) error {
	if e.closed.Load() {
		return presence.ErrClosed
	}
	ctx, cancel := context.WithTimeout(ctx, max(e.cfg.LeaseTTL, 5*time.Second))
	defer cancel()
	insts, err := e.rdb.ZRangeWithScores(ctx, e.registry(), 0, -1).Result()
	if err != nil {
		return err
	}
	self := e.Instance()
	exists := make([]*goredis.IntCmd, len(insts))
	_, err = e.rdb.Pipelined(ctx, func(p goredis.Pipeliner) error {
		for i, z := range insts {
			exists[i] = p.Exists(ctx, e.leaseKey(z.Member.(string)))
		}
		return nil
	})
	if err != nil {
		return err
	}
	var errs []error
	for i, z := range insts {
		inst := z.Member.(string)
		if inst == self || exists[i].Val() != 0 {
			continue
		}
		won, err := e.rdb.SetNX(ctx, e.cleanKey(inst), self, 2*e.cfg.LeaseTTL+time.Minute).Result()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !won {
			continue
		}
		if err := e.clean(ctx, inst, msTime(int64(z.Score))); err != nil {
			errs = append(errs, fmt.Errorf("clean %s: %w", inst, err))
			continue
		}
		e.log.Info("presence/redis: cleaned dead server instance", "instance", inst)
	}
	return errors.Join(errs...)
}

// clean takes every device of the dead instance down, then removes the
// instance.
func (e *Engine) clean(ctx context.Context, inst string, last time.Time) error {
	if last.IsZero() {
		last = time.Now()
	}
	prefix := "c:" + inst + "|"
	var cursor uint64
	for {
		users, next, err := e.rdb.SScan(ctx, e.usersKey(inst), cursor, "", int64(e.cfg.CleanBatch)).Result()
		if err != nil {
			return err
		}
		if len(users) > 0 {
			_, err = e.pipe(ctx, func(p goredis.Pipeliner) {
				for _, u := range users {
					dropScript.EvalSha(ctx, p, []string{e.userKey(u)}, e.dropArgs(u, "i", prefix, last)...)
				}
			})
			if err != nil {
				return err
			}
		}
		if next == 0 {
			break
		}
		cursor = next
	}
	_, err := e.rdb.Pipelined(ctx, func(p goredis.Pipeliner) error {
		p.Del(ctx, e.usersKey(inst))
		p.ZRem(ctx, e.registry(), inst)
		p.Del(ctx, e.cleanKey(inst))
		return nil
	})
	return err
}

// Close stops the loops and the subscriber connection. It writes nothing:
// this instance's devices stay up until its lease expires and another
// server cleans them (as after a crash), so that clients reconnecting
// elsewhere within LeaseTTL do not flap. No fn is called after Close
// returns. Safe to call more than once.
func (e *Engine) Close() error {
	if e.closed.Swap(true) {
		return nil
	}
	close(e.stop)
	err := e.ps.Close()
	e.wg.Wait()
	// Wait for deliveries in progress: they hold a topic shard's read lock.
	for i := range e.subs {
		e.subs[i].mu.Lock()
		e.subs[i].mu.Unlock()
	}
	return err
}
