// Package redis is the cluster-mode sequence.Allocator: message ids and
// inbox seqs for several chat servers writing the same channels and
// inboxes, allocated in Redis and made safe against Redis losing its data
// by durable reserved bounds (BoundStore, on CQL) and against out-of-order
// commits by a per-inbox horizon.
//
// It owns the Redis half only: it imports go-redis and must not import a
// database driver (gocql, pebble). The BoundStore interface is declared
// here, by its user; its CQL implementation lives with the schema in
// server/store/scylla (Store.Bounds).
//
// Per inbox (user) and per channel, Redis holds the last allocated value;
// Redis functions allocate atomically:
//
//   - Allocate: one round trip per batch. On one Redis, one function call
//     allocates the whole batch (all channels and users, or nothing), so
//     that for two messages of one channel every member's inbox seq order
//     is their message_id order whatever servers allocated them; on Redis
//     Cluster one call per channel and per user (one slot each), without
//     that guarantee. A user's seqs are recorded as pending with a
//     deadline (Config.PendingTTL, Redis clock).
//   - Commit: one pipelined round trip per batch; removes the pending
//     entries. An entry that is gone (expired and trimmed, or Redis lost
//     it) reports the user stale: the sequencer then places the messages
//     again under new seqs before it acks.
//   - Horizon(u) = lowest pending seq - 1, or the last allocated seq: the
//     highest seq below which every seq is written or abandoned. Expired
//     pending entries (a server died between allocation and commit) are
//     dropped, so the horizon moves past them after PendingTTL.
//   - Claim: one round trip per batch with new sends (SET NX PX per
//     (sender, client_message_id), in one cclaim call on one Redis): only
//     one server at a time stores a send that reaches several at once.
//
// Durability: every allocated value is within a bound that is stored in
// the BoundStore before use, reserved Config.Step seqs ahead (per user) or
// Config.ChannelStep of message-id time ahead (per channel). When a Redis
// hash is missing or was written by another Redis process (a restart,
// FLUSHALL, a replica promoted with replication lag) it is set up again at
// the durable bound with a new epoch (INIT), so values are never reused
// and commits of the old epoch come back stale.
//
// See docs/sequencing.md for the rules, costs and failure cases.
package redis

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/chatd/chatd/server/internal/parallel"
	"github.com/chatd/chatd/server/sequence"
	"github.com/chatd/chatd/server/store"
)

// Defaults of Config.
const (
	DefaultPrefix      = "chatd:seq:"
	DefaultStep        = 10_000
	DefaultChannelStep = time.Minute
	DefaultPendingTTL  = 15 * time.Second

	// MaxStep bounds Config.Step, and so the hole each loss of Redis
	// leaves in a user's seqs (at most Step + the user's seqs of one
	// batch). No reader depends on it: stores read across holes of any
	// size (the cluster store through its partition index).
	MaxStep = 50_000
)

// Config configures New.
type Config struct {
	// Client is the Redis (7 or later: Redis functions) of the cluster: a
	// *goredis.Client, *goredis.ClusterClient or failover client. Required.
	Client goredis.UniversalClient
	// Bounds is the durable floor. Required; in chatd the scylla store's
	// seq_bounds table (store/scylla.Store.Bounds).
	Bounds BoundStore
	// Floor, if set, is also consulted when a Redis hash is set up
	// (LastInboxSeq, LastMessageID): allocation then also starts above
	// what the store holds, which covers data written before the bounds
	// existed (e.g. by a single-node sequencer on the same store).
	Floor store.Messages
	// Prefix starts every Redis key; default DefaultPrefix.
	Prefix string
	// Step is how many inbox seqs of a user are reserved at a time (one
	// BoundStore.Reserve per Step seqs); default 10,000, at most MaxStep.
	// After Redis loses a user's hash the user's seqs continue up to
	// Step + n above the last one allocated (n: the user's seqs in the
	// batch that reserved last), however many servers set the hash up at
	// once: a hole readers skip. Repeated losses add their holes up.
	Step uint64
	// ChannelStep is how far ahead of the clock a channel's message ids
	// are reserved (one BoundStore.Reserve per ChannelStep of a busy
	// channel, and one per message of a channel idle for longer); default
	// 1 minute, at least 1 s. After Redis loses a channel's hash, a
	// channel that was active within the last ChannelStep continues at its
	// bound, so its next message ids may run up to ChannelStep ahead of
	// their created_at (one ChannelStep more per further loss within that
	// time).
	ChannelStep time.Duration
	// PendingTTL is how long an allocated seq may stay uncommitted before
	// readers skip it (the allocating server is taken for dead); default
	// 15 s, at least 100 ms. Keep it above the sequencer's StoreTimeout: a
	// commit after the deadline re-places its messages (duplicates some
	// devices see) instead of just confirming them.
	PendingTTL time.Duration
	// LeaseTTL is how long this server's allocator counts as alive after
	// its last lease renewal (renewed every LeaseTTL/5); default
	// DefaultLeaseTTL (1.5 s), at least 100 ms. When it lapses (the server
	// died, hung or lost Redis), the other servers fence it: readers pass
	// its pending seqs and its dedup claims can be taken over at once,
	// instead of after PendingTTL and the claim TTL (see lease.go). A
	// server stalled for longer is fenced while alive: its commits come
	// back stale and it places those messages again.
	LeaseTTL time.Duration
	// Logger; default slog.Default().
	Logger *slog.Logger
}

// Stats are cumulative counters of an Allocator.
type Stats struct {
	Inits    uint64 // Redis hashes set up from the durable bound
	Reserves uint64 // BoundStore.Reserve calls
	Stale    uint64 // users reported stale by Commit
	// FencedPending counts pending entries of dead instances that
	// Horizon dropped; FencedClaims dedup claims of dead instances that
	// Claim took over.
	FencedPending, FencedClaims uint64
}

// Allocator is the Redis sequence.Allocator. It is safe for concurrent use.
type Allocator struct {
	rdb    goredis.UniversalClient
	bounds BoundStore
	floor  store.Messages
	prefix string
	step   uint64
	cstep  int64 // ms
	ttl    int64 // ms
	log    *slog.Logger
	// perKey: allocate with one call per key (Redis Cluster, Ring), not
	// one atomic call per batch.
	perKey bool
	// inst is this allocator's instance id (lease.go): it marks its
	// pending entries and prefixes the values of its dedup claims; claimN
	// makes each claim value unique.
	inst   atomic.Pointer[string]
	claimN atomic.Uint64
	// dead is the sorted list of dead (fenced) instances, from the last
	// lease renewal.
	dead      atomic.Pointer[[]string]
	leaseTTL  time.Duration
	stop      chan struct{}
	leaseDone chan struct{}
	closeOnce sync.Once

	inits, reserves, stale      atomic.Uint64
	fencedPending, fencedClaims atomic.Uint64
}

var _ sequence.Allocator = (*Allocator)(nil)
var _ sequence.KeyReleaser = (*Allocator)(nil)

// New checks cfg and loads the Redis functions (on every master of a
// cluster). Errors: invalid Config, Redis unreachable or older than 7.
func New(ctx context.Context, cfg Config) (*Allocator, error) {
	if cfg.Client == nil || cfg.Bounds == nil {
		return nil, errors.New("sequence/redis: Config.Client and Config.Bounds are required")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if cfg.Step == 0 {
		cfg.Step = DefaultStep
	}
	if cfg.Step > MaxStep {
		return nil, fmt.Errorf("sequence/redis: Step %d above %d", cfg.Step, MaxStep)
	}
	if cfg.ChannelStep == 0 {
		cfg.ChannelStep = DefaultChannelStep
	}
	if cfg.ChannelStep < time.Second {
		return nil, fmt.Errorf("sequence/redis: ChannelStep %v below 1s", cfg.ChannelStep)
	}
	if cfg.PendingTTL == 0 {
		cfg.PendingTTL = DefaultPendingTTL
	}
	if cfg.PendingTTL < 100*time.Millisecond {
		return nil, fmt.Errorf("sequence/redis: PendingTTL %v below 100ms", cfg.PendingTTL)
	}
	if cfg.LeaseTTL == 0 {
		cfg.LeaseTTL = DefaultLeaseTTL
	}
	if cfg.LeaseTTL < 100*time.Millisecond {
		return nil, fmt.Errorf("sequence/redis: LeaseTTL %v below 100ms", cfg.LeaseTTL)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	a := &Allocator{
		rdb:    cfg.Client,
		bounds: cfg.Bounds,
		floor:  cfg.Floor,
		prefix: cfg.Prefix,
		step:   cfg.Step,
		cstep:  cfg.ChannelStep.Milliseconds(),
		ttl:    cfg.PendingTTL.Milliseconds(),
		log:    cfg.Logger,

		leaseTTL:  cfg.LeaseTTL,
		stop:      make(chan struct{}),
		leaseDone: make(chan struct{}),
	}
	inst := newEpoch()
	a.inst.Store(&inst)
	a.dead.Store(&[]string{})
	switch cfg.Client.(type) {
	case *goredis.ClusterClient, *goredis.Ring:
		a.perKey = true
	}
	if err := a.load(ctx); err != nil {
		return nil, err
	}
	if err := a.renewLease(ctx); err != nil {
		return nil, fmt.Errorf("sequence/redis: lease: %w", err)
	}
	go a.leaseLoop()
	return a, nil
}

// Stats returns the cumulative counters.
func (a *Allocator) Stats() Stats {
	return Stats{Inits: a.inits.Load(), Reserves: a.reserves.Load(), Stale: a.stale.Load(),
		FencedPending: a.fencedPending.Load(), FencedClaims: a.fencedClaims.Load()}
}

// load loads the function library on every master.
func (a *Allocator) load(ctx context.Context) error {
	fn := func(ctx context.Context, c *goredis.Client) error { return c.FunctionLoadReplace(ctx, library).Err() }
	var err error
	switch c := a.rdb.(type) {
	case *goredis.ClusterClient:
		err = c.ForEachMaster(ctx, fn)
	case *goredis.Ring:
		err = c.ForEachShard(ctx, fn)
	default:
		err = a.rdb.FunctionLoadReplace(ctx, library).Err()
	}
	if err != nil {
		return fmt.Errorf("sequence/redis: load functions: %w", err)
	}
	return nil
}

func isNoFunction(err error) bool {
	return err != nil && strings.Contains(err.Error(), "Function not found")
}

// ------------------------------------------------------------ keys

func (a *Allocator) userKeys(u string) []string {
	h := a.prefix + "{u:" + u + "}"
	return []string{h, h + ":p"}
}

func (a *Allocator) chanKey(ch string) []string {
	return []string{a.prefix + "{c:" + ch + "}"}
}

// BoundKeyUser and BoundKeyChannel are the BoundStore keys of a user's
// inbox seqs and of a channel's message ids (a bound in unix ms).
func BoundKeyUser(userID string) string       { return "u:" + userID }
func BoundKeyChannel(channelID string) string { return "c:" + channelID }

func newEpoch() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// msgID composes a message id from (unix ms, counter).
func msgID(ms, k int64) uint64 { return uint64(ms)<<16 | uint64(k) }

// ------------------------------------------------------------ allocate

// token is the Allocation.Token: the epoch of each user's seqs and the
// users whose commit is settled.
type token struct {
	epochs  map[string]string
	settled map[string]bool
	stale   []string
}

// userState is one user's work in Allocate.
type userState struct {
	n     int
	bound uint64 // raise the Redis bound to it (0: no)
	init  *initArgs
}

type initArgs struct {
	cur, bound uint64
	epoch      string
}

// chanState is one channel's work in Allocate.
type chanState struct {
	n     int
	bound int64 // raise the Redis bound to it (ms; 0: no)
	init  *chanInit
}

type chanInit struct {
	ms, k, bound int64
}

// maxRounds bounds the Redis round trips of one Allocate (an INIT or
// RESERVE answer costs one more).
const maxRounds = 5

// boundConcurrency bounds the BoundStore calls one Allocate runs at once.
const boundConcurrency = 16

// Allocate implements sequence.Allocator: one Redis round trip, plus one
// (and BoundStore calls) when a hash must be set up or a bound reserved.
// On one Redis (any client but a *goredis.ClusterClient or *goredis.Ring)
// the whole batch is allocated by one atomic function call, so that for
// two messages of one channel every member's seq order is their
// message_id order, whichever servers allocated them; on Redis Cluster one
// call per key (see docs/sequencing.md, "Channel order in an inbox").
// Errors: Redis or the BoundStore failed; what was allocated is aborted.
func (a *Allocator) Allocate(ctx context.Context, now time.Time, channels, users map[string]int) (*sequence.Allocation, error) {
	nowMS := max(now.UnixMilli(), 0)
	res := &sequence.Allocation{
		Channels: make(map[string]sequence.Range, len(channels)),
		Users:    make(map[string]sequence.Range, len(users)),
	}
	tok := &token{epochs: make(map[string]string, len(users))}
	res.Token = tok
	todoC := make(map[string]*chanState, len(channels))
	for ch, n := range channels {
		todoC[ch] = &chanState{n: n}
	}
	todoU := make(map[string]*userState, len(users))
	for u, n := range users {
		todoU[u] = &userState{n: n}
	}
	var err error
	if a.perKey {
		err = a.allocatePerKey(ctx, nowMS, todoC, todoU, res, tok)
	} else {
		err = a.allocateBatch(ctx, nowMS, todoC, todoU, res, tok)
	}
	if err != nil {
		a.Abort(context.WithoutCancel(ctx), res)
		return nil, err
	}
	return res, nil
}

// needs is what one round's answers asked to settle before the next.
type needs struct {
	initC, reserveC, initU, reserveU []string
}

func (n *needs) reset() {
	n.initC, n.reserveC, n.initU, n.reserveU = n.initC[:0], n.reserveC[:0], n.initU[:0], n.reserveU[:0]
}

func (n *needs) empty() bool {
	return len(n.initC)+len(n.reserveC)+len(n.initU)+len(n.reserveU) == 0
}

// note records one key's INIT or RESERVE answer (v: the needed value of a
// RESERVE) and sets the bound to reserve. It reports false for another
// status.
func (a *Allocator) note(nd *needs, nowMS int64, ch, u, status string, v any, todoC map[string]*chanState, todoU map[string]*userState) bool {
	switch {
	case ch != "" && status == "RESERVE":
		todoC[ch].bound = max(toInt(v), nowMS) + a.cstep
		nd.reserveC = append(nd.reserveC, ch)
	case ch != "" && status == "INIT":
		nd.initC = append(nd.initC, ch)
	case u != "" && status == "RESERVE":
		todoU[u].bound = uint64(toInt(v)) + a.step
		nd.reserveU = append(nd.reserveU, u)
	case u != "" && status == "INIT":
		nd.initU = append(nd.initU, u)
	default:
		return false
	}
	return true
}

// allocateBatch allocates the whole batch with one balloc call per round:
// all of it or, when some key must be set up or its bound reserved,
// nothing (those are settled, then the next round tries again with every
// key). The uinit and cinit calls ride in the next round's pipeline.
func (a *Allocator) allocateBatch(ctx context.Context, nowMS int64, todoC map[string]*chanState, todoU map[string]*userState, res *sequence.Allocation, tok *token) error {
	chans := make([]string, 0, len(todoC))
	for ch := range todoC {
		chans = append(chans, ch)
	}
	users := make([]string, 0, len(todoU))
	for u := range todoU {
		users = append(users, u)
	}
	keys := make([]string, 0, len(chans)+2*len(users))
	args := make([]any, 0, 5+2*len(chans)+2*len(users))
	for _, ch := range chans {
		keys = append(keys, a.chanKey(ch)...)
	}
	for _, u := range users {
		keys = append(keys, a.userKeys(u)...)
	}
	var nd needs
	reloaded := false
	for round := 0; ; round++ {
		if round == maxRounds {
			return errors.New("sequence/redis: allocation did not settle (Redis reset repeatedly?)")
		}
		args = append(args[:0], len(chans), len(users), nowMS, a.ttl, a.instance())
		for _, ch := range chans {
			args = append(args, todoC[ch].n, todoC[ch].bound)
		}
		for _, u := range users {
			args = append(args, todoU[u].n, todoU[u].bound)
		}
		pipe := a.rdb.Pipeline()
		for ch, st := range todoC {
			if st.init != nil {
				pipe.FCall(ctx, fnChanInit, a.chanKey(ch), st.init.ms, st.init.k, st.init.bound)
				st.init = nil
			}
		}
		for u, st := range todoU {
			if st.init != nil {
				pipe.FCall(ctx, fnUserInit, a.userKeys(u), st.init.cur, st.init.bound, st.init.epoch)
				st.init = nil
			}
		}
		cmd := pipe.FCall(ctx, fnBatchAlloc, keys, args...)
		if _, err := pipe.Exec(ctx); isNoFunction(err) && !reloaded {
			// Redis restarted without its functions: load them and go
			// round again (the hashes were lost too: INIT next).
			reloaded = true
			if err := a.load(ctx); err != nil {
				return err
			}
			continue
		}
		v, err := cmd.Slice()
		if err != nil {
			return fmt.Errorf("sequence/redis: allocate: %w", err)
		}
		status, _ := v[0].(string)
		switch {
		case status == "OK" && len(v) == 1+4*len(chans)+3*len(users):
			for i, ch := range chans {
				o := 1 + 4*i
				res.Channels[ch] = sequence.Range{First: msgID(toInt(v[o]), toInt(v[o+1])), Last: msgID(toInt(v[o+2]), toInt(v[o+3]))}
			}
			for j, u := range users {
				o := 1 + 4*len(chans) + 3*j
				ep, _ := v[o].(string)
				res.Users[u] = sequence.Range{First: uint64(toInt(v[o+1])), Last: uint64(toInt(v[o+2]))}
				tok.epochs[u] = ep
			}
			return nil
		case status == "NEED" && len(v) == 1+2*(len(chans)+len(users)):
		default:
			return fmt.Errorf("sequence/redis: allocate: unexpected reply %v", v)
		}
		nd.reset()
		for i := range len(chans) + len(users) {
			s, _ := v[1+2*i].(string)
			if s == "OK" {
				continue
			}
			var ch, u string
			if i < len(chans) {
				ch = chans[i]
			} else {
				u = users[i-len(chans)]
			}
			if !a.note(&nd, nowMS, ch, u, s, v[2+2*i], todoC, todoU) {
				return fmt.Errorf("sequence/redis: allocate: unexpected reply %v", v)
			}
		}
		if nd.empty() {
			return fmt.Errorf("sequence/redis: allocate: unexpected reply %v", v)
		}
		if err := a.settle(ctx, nowMS, &nd, todoC, todoU); err != nil {
			return err
		}
	}
}

// allocatePerKey pipelines one function call per channel and per user
// (Redis Cluster: the keys live on different slots). Keys that answered
// INIT or RESERVE are settled and go round again, so their values may be
// allocated after another server's whole allocation: see Allocate.
func (a *Allocator) allocatePerKey(ctx context.Context, nowMS int64, todoC map[string]*chanState, todoU map[string]*userState, res *sequence.Allocation, tok *token) error {
	type call struct {
		ch, u string
		cmd   *goredis.Cmd
	}
	calls := make([]call, 0, len(todoC)+len(todoU))
	var nd needs
	reloaded := false
	for round := 0; len(todoC)+len(todoU) > 0; round++ {
		if round == maxRounds {
			return errors.New("sequence/redis: allocation did not settle (Redis reset repeatedly?)")
		}
		calls = calls[:0]
		pipe := a.rdb.Pipeline()
		for ch, st := range todoC {
			keys := a.chanKey(ch)
			if st.init != nil {
				pipe.FCall(ctx, fnChanInit, keys, st.init.ms, st.init.k, st.init.bound)
				st.init = nil
			}
			calls = append(calls, call{ch: ch, cmd: pipe.FCall(ctx, fnChanAlloc, keys, st.n, nowMS, st.bound)})
		}
		for u, st := range todoU {
			keys := a.userKeys(u)
			if st.init != nil {
				pipe.FCall(ctx, fnUserInit, keys, st.init.cur, st.init.bound, st.init.epoch)
				st.init = nil
			}
			calls = append(calls, call{u: u, cmd: pipe.FCall(ctx, fnUserAlloc, keys, st.n, a.ttl, st.bound, a.instance())})
		}
		if _, err := pipe.Exec(ctx); isNoFunction(err) && !reloaded {
			// Redis restarted without its functions (or a new node):
			// load them; the calls that failed are retried below.
			reloaded = true
			if err := a.load(ctx); err != nil {
				return err
			}
		}
		var firstErr error
		nd.reset()
		for _, c := range calls {
			v, err := c.cmd.Slice()
			if err != nil {
				if !isNoFunction(err) && firstErr == nil {
					firstErr = err
				}
				continue
			}
			status, _ := v[0].(string)
			switch {
			case c.ch != "" && status == "OK" && len(v) == 5:
				res.Channels[c.ch] = sequence.Range{First: msgID(toInt(v[1]), toInt(v[2])), Last: msgID(toInt(v[3]), toInt(v[4]))}
				delete(todoC, c.ch)
			case c.u != "" && status == "OK" && len(v) == 4:
				ep, _ := v[1].(string)
				res.Users[c.u] = sequence.Range{First: uint64(toInt(v[2])), Last: uint64(toInt(v[3]))}
				tok.epochs[c.u] = ep
				delete(todoU, c.u)
			case status == "RESERVE" && len(v) == 2 || status == "INIT":
				var need any
				if len(v) == 2 {
					need = v[1]
				}
				a.note(&nd, nowMS, c.ch, c.u, status, need, todoC, todoU)
			default:
				if firstErr == nil {
					firstErr = fmt.Errorf("unexpected reply %v", v)
				}
			}
		}
		if firstErr != nil {
			return fmt.Errorf("sequence/redis: allocate: %w", firstErr)
		}
		if err := a.settle(ctx, nowMS, &nd, todoC, todoU); err != nil {
			return err
		}
	}
	return nil
}

// settle does, durably, what the last round's INIT and RESERVE answers
// asked for (concurrently, up to boundConcurrency BoundStore calls at a
// time): a reservation for each RESERVE, and the setup of each INIT key
// (its init args then ride in the next round). An INIT reads the durable
// bound and reserves nothing; its key answers RESERVE in the next round.
// So every reservation starts from a value the key's Redis hash holds
// (the last allocated seq, or the last id's ms), and after a loss of
// Redis the values resume at most Step + n seqs (ChannelStep + the
// batch's ids) above the last ones allocated, however many servers set
// the key up at once (see docs/sequencing.md, "Steps").
func (a *Allocator) settle(ctx context.Context, nowMS int64, nd *needs, todoC map[string]*chanState, todoU map[string]*userState) error {
	nC, nU := len(nd.initC)+len(nd.reserveC), len(nd.initU)+len(nd.reserveU)
	if nC+nU == 0 {
		return nil
	}
	err := parallel.Do(ctx, nC+nU, boundConcurrency, func(ctx context.Context, i int) error {
		switch {
		case i < len(nd.initC):
			ch := nd.initC[i]
			st := todoC[ch]
			in, err := a.channelInit(ctx, ch)
			if err != nil {
				return err
			}
			st.init = in
			return nil
		case i < nC:
			ch := nd.reserveC[i-len(nd.initC)]
			return a.reserve(ctx, BoundKeyChannel(ch), uint64(todoC[ch].bound))
		case i < nC+len(nd.initU):
			// The hash is set up at the bound read, reserving nothing:
			// the next round answers RESERVE, which reserves from the
			// hash's own last seq. Reserving here (from the bound read)
			// let a server that read a bound just raised by another
			// server's INIT raise it a Step further, and a loser of the
			// uinit race leave that raise behind for the next loss to
			// jump to: holes of several Steps per loss.
			u := nd.initU[i-nC]
			cur, err := a.durableSeq(ctx, u)
			if err != nil {
				return err
			}
			todoU[u].init = &initArgs{cur: cur, bound: cur, epoch: newEpoch()}
			return nil
		default:
			u := nd.reserveU[i-nC-len(nd.initU)]
			return a.reserve(ctx, BoundKeyUser(u), todoU[u].bound)
		}
	})
	if err != nil {
		return fmt.Errorf("sequence/redis: reserve: %w", err)
	}
	a.inits.Add(uint64(len(nd.initC) + len(nd.initU)))
	return nil
}

func (a *Allocator) reserve(ctx context.Context, key string, atLeast uint64) error {
	a.reserves.Add(1)
	return a.bounds.Reserve(ctx, key, atLeast)
}

// channelInit returns where a channel's hash is set up: after the last id
// the durable bound allows (and after the store's last id if Config.Floor
// is set), with that bound and no reservation (the next round answers
// RESERVE and reserves from the clock and the hash's last id; see
// settle).
func (a *Allocator) channelInit(ctx context.Context, ch string) (*chanInit, error) {
	b, err := a.bounds.Get(ctx, BoundKeyChannel(ch))
	if err != nil {
		return nil, err
	}
	// Every id ever allocated is <= (b+1)<<16 - 1.
	last := uint64(0)
	if b > 0 {
		last = (b+1)<<16 - 1
	}
	if a.floor != nil {
		l, err := a.floor.LastMessageID(ctx, ch)
		if err != nil {
			return nil, err
		}
		last = max(last, l)
	}
	return &chanInit{ms: int64(last >> 16), k: int64(last & 0xffff), bound: int64(last >> 16)}, nil
}

// durableSeq is where a user's seqs resume when the Redis hash is set up:
// the durable bound (>= every seq ever allocated), and the store's last
// seq if Config.Floor is set.
func (a *Allocator) durableSeq(ctx context.Context, u string) (uint64, error) {
	cur, err := a.bounds.Get(ctx, BoundKeyUser(u))
	if err != nil {
		return 0, err
	}
	if a.floor != nil {
		last, err := a.floor.LastInboxSeq(ctx, u)
		if err != nil {
			return 0, err
		}
		cur = max(cur, last)
	}
	return cur, nil
}

func toInt(v any) int64 {
	switch x := v.(type) {
	case int64:
		return x
	case string:
		var n int64
		_, _ = fmt.Sscan(x, &n)
		return n
	}
	return 0
}

// ------------------------------------------------------------ commit, abort

// Commit implements sequence.Allocator: one pipelined round trip. Users
// whose pending entry is gone are returned in a *sequence.StaleError;
// other errors leave the unsettled users for a retry.
func (a *Allocator) Commit(ctx context.Context, al *sequence.Allocation) error {
	tok, ok := al.Token.(*token)
	if !ok {
		return errors.New("sequence/redis: Commit of an allocation not made by this allocator")
	}
	if tok.settled == nil {
		tok.settled = make(map[string]bool, len(al.Users))
	}
	type call struct {
		u   string
		cmd *goredis.Cmd
	}
	var calls []call
	pipe := a.rdb.Pipeline()
	for u, r := range al.Users {
		if tok.settled[u] {
			continue
		}
		calls = append(calls, call{u, pipe.FCall(ctx, fnUserCommit, a.userKeys(u), tok.epochs[u], r.First)})
	}
	var firstErr error
	if len(calls) > 0 {
		if _, err := pipe.Exec(ctx); isNoFunction(err) {
			_ = a.load(ctx) // the hashes were lost with the functions: STALE next time
		}
	}
	for _, c := range calls {
		v, err := c.cmd.Text()
		switch {
		case err != nil:
			if firstErr == nil {
				firstErr = err
			}
		case v == "OK":
			tok.settled[c.u] = true
		case v == "STALE":
			tok.settled[c.u] = true
			tok.stale = append(tok.stale, c.u)
		default:
			if firstErr == nil {
				firstErr = fmt.Errorf("unexpected reply %q", v)
			}
		}
	}
	if firstErr != nil {
		return fmt.Errorf("sequence/redis: commit: %w", firstErr)
	}
	if len(tok.stale) > 0 {
		a.stale.Add(uint64(len(tok.stale)))
		err := &sequence.StaleError{Users: tok.stale}
		tok.stale = nil
		return err
	}
	return nil
}

// Abort implements sequence.Allocator: the pending entries are removed, so
// readers skip the seqs at once. Errors are logged; the entries then
// expire after PendingTTL.
func (a *Allocator) Abort(ctx context.Context, al *sequence.Allocation) {
	tok, ok := al.Token.(*token)
	if !ok || len(al.Users) == 0 {
		return
	}
	pipe := a.rdb.Pipeline()
	n := 0
	for u, r := range al.Users {
		if tok.settled[u] {
			continue
		}
		pipe.FCall(ctx, fnUserAbort, a.userKeys(u), tok.epochs[u], r.First)
		n++
	}
	if n == 0 {
		return
	}
	if _, err := pipe.Exec(ctx); err != nil {
		a.log.Warn("sequence/redis: abort failed; the seqs expire after PendingTTL", "users", n, "err", err)
	}
}

// ------------------------------------------------------------ dedup claims

// claimToken is the Claims.Token: the value of the claims won and their
// keys.
type claimToken struct {
	value string
	keys  []string
}

func (a *Allocator) claimKey(k sequence.ClaimKey) string {
	return a.prefix + "{u:" + k.SenderID + "}:d:" + k.ClientMessageID
}

// Claim implements sequence.Allocator: one round trip. Each key is set
// with SET <prefix>{u:<sender>}:d:<client_message_id> <value> NX PX <ttl>,
// ttl = hold + Config.PendingTTL (25 s with the defaults): the claim
// outlives the claimer's batch (at most hold) by the time a stalled write
// may still land. On one Redis one cclaim call does all of them; on Redis
// Cluster one SET per key is pipelined. The value is unique per call.
// Errors: Redis failed; the keys won are released.
func (a *Allocator) Claim(ctx context.Context, keys []sequence.ClaimKey, hold time.Duration) (*sequence.Claims, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	ttl := max(hold, 0) + time.Duration(a.ttl)*time.Millisecond
	value := a.instance() + ":" + strconv.FormatUint(a.claimN.Add(1), 36)
	names := make([]string, len(keys))
	for i, k := range keys {
		names[i] = a.claimKey(k)
	}
	won := make([]bool, len(keys))
	var firstErr error
	args := a.deadArgs([]any{value, ttl.Milliseconds()})
	fenced := len(args) > 2
	if a.perKey && !fenced {
		cmds := make([]*goredis.BoolCmd, len(keys))
		pipe := a.rdb.Pipeline()
		for i, n := range names {
			cmds[i] = pipe.SetNX(ctx, n, value, ttl)
		}
		_, _ = pipe.Exec(ctx)
		for i, cmd := range cmds {
			ok, err := cmd.Result()
			if err != nil && firstErr == nil {
				firstErr = err
			}
			won[i] = err == nil && ok
		}
	} else {
		// One cclaim for all keys on one Redis; on Redis Cluster (only
		// while some instance is fenced) one per key, pipelined.
		groups := [][]string{names}
		if a.perKey {
			groups = make([][]string, len(names))
			for i := range names {
				groups[i] = names[i : i+1]
			}
		}
		v, err := a.claimCalls(ctx, groups, args)
		switch {
		case err != nil:
			firstErr = err
		case len(v) != len(keys):
			firstErr = fmt.Errorf("unexpected reply %v", v)
		default:
			for i, x := range v {
				won[i] = x != 0
				if x == 2 {
					a.fencedClaims.Add(1)
				}
			}
		}
	}
	c := &sequence.Claims{}
	tok := &claimToken{value: value, keys: make([]string, 0, len(keys))}
	c.Token = tok
	for i, w := range won {
		if w {
			tok.keys = append(tok.keys, names[i])
		} else {
			c.Lost = append(c.Lost, i)
		}
	}
	if firstErr != nil {
		a.Release(context.WithoutCancel(ctx), c)
		return nil, fmt.Errorf("sequence/redis: claim: %w", firstErr)
	}
	return c, nil
}

// claimCalls runs one cclaim per group of keys (pipelined) and returns
// the per-key answers in order.
func (a *Allocator) claimCalls(ctx context.Context, groups [][]string, args []any) ([]int64, error) {
	for attempt := 0; ; attempt++ {
		pipe := a.rdb.Pipeline()
		cmds := make([]*goredis.Cmd, len(groups))
		for i, g := range groups {
			cmds[i] = pipe.FCall(ctx, fnClaim, g, args...)
		}
		_, _ = pipe.Exec(ctx)
		var out []int64
		var err error
		for _, c := range cmds {
			var v []int64
			if v, err = c.Int64Slice(); err != nil {
				break
			}
			out = append(out, v...)
		}
		if isNoFunction(err) && attempt == 0 {
			if err = a.load(ctx); err == nil {
				continue
			}
		}
		return out, err
	}
}

// Release implements sequence.Allocator: one pipelined round trip, a
// compare-and-delete per claim won (a claim that expired and was taken by
// another claimer is left alone).
func (a *Allocator) Release(ctx context.Context, c *sequence.Claims) {
	if c == nil {
		return
	}
	tok, ok := c.Token.(*claimToken)
	if !ok || len(tok.keys) == 0 {
		return
	}
	pipe := a.rdb.Pipeline()
	for _, k := range tok.keys {
		pipe.FCall(ctx, fnClaimRelease, []string{k}, tok.value)
	}
	if _, err := pipe.Exec(ctx); err != nil && !isNoFunction(err) {
		// (Functions missing: Redis restarted, the claims are gone too.)
		a.log.Warn("sequence/redis: releasing dedup claims failed; they expire", "claims", len(tok.keys), "err", err)
	}
}

// ReleaseKeys implements sequence.KeyReleaser: gives back c's claims on
// keys only (compare-and-delete, as Release).
func (a *Allocator) ReleaseKeys(ctx context.Context, c *sequence.Claims, keys []sequence.ClaimKey) {
	if c == nil || len(keys) == 0 {
		return
	}
	tok, ok := c.Token.(*claimToken)
	if !ok || len(tok.keys) == 0 {
		return
	}
	sub := &claimToken{value: tok.value}
	for _, k := range keys {
		if name := a.claimKey(k); slices.Contains(tok.keys, name) {
			sub.keys = append(sub.keys, name)
		}
	}
	a.Release(ctx, &sequence.Claims{Token: sub})
}

// ------------------------------------------------------------ horizon

// Horizon implements sequence.Allocator: one Redis round trip (plus a
// BoundStore read when the user's hash must be set up).
func (a *Allocator) Horizon(ctx context.Context, userID string) (uint64, error) {
	keys := a.userKeys(userID)
	for attempt := 0; attempt < 4; attempt++ {
		v, err := a.rdb.FCall(ctx, fnUserHorizon, keys, a.deadArgs(nil)...).Slice()
		if isNoFunction(err) {
			if err := a.load(ctx); err != nil {
				return 0, err
			}
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("sequence/redis: horizon: %w", err)
		}
		if s, _ := v[0].(string); s == "OK" && len(v) == 3 {
			if n := toInt(v[2]); n > 0 {
				a.fencedPending.Add(uint64(n))
			}
			return uint64(toInt(v[1])), nil
		}
		// INIT: set the hash up at the durable bound (no reservation:
		// the next allocation reserves).
		cur, err := a.durableSeq(ctx, userID)
		if err != nil {
			return 0, fmt.Errorf("sequence/redis: horizon: %w", err)
		}
		if err := a.rdb.FCall(ctx, fnUserInit, keys, cur, cur, newEpoch()).Err(); err != nil && !isNoFunction(err) {
			return 0, fmt.Errorf("sequence/redis: horizon: %w", err)
		}
		a.inits.Add(1)
	}
	return 0, errors.New("sequence/redis: horizon did not settle")
}

// ------------------------------------------------------------ helpers
