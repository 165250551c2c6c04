package sequence

import (
	"context"
	"errors"
	"hash/maphash"
	"strings"
	"sync"
	"time"

	"github.com/chatd/chatd/server/store"
)

// Range is an inclusive range of ids or seqs, [First, Last], First <= Last.
type Range struct{ First, Last uint64 }

// Len returns the number of values in r.
func (r Range) Len() uint64 { return r.Last - r.First + 1 }

// Allocation is the ids of one batch, as Allocator.Allocate returns them.
type Allocation struct {
	// Channels holds, per channel, as many consecutive message ids as
	// were asked for, all >= unix_ms<<16 of the allocation time and above
	// every id allocated before for the channel.
	Channels map[string]Range
	// Users holds, per user, as many consecutive inbox seqs as were asked
	// for, above every seq allocated before for the user.
	Users map[string]Range
	// Token is the allocator's own state of this allocation (e.g. the
	// epochs it was made in); the sequencer does not touch it.
	Token any
}

// ErrStale is matched (errors.Is) by the error Allocator.Commit returns
// when it lost the state of some users' seqs since Allocate (e.g. Redis
// lost its data, or the seqs were given up because the commit came after
// their deadline). The rows written under those seqs may be invisible to
// devices that already read past them; the caller must place the messages
// again under new seqs (Allocate, write the inbox rows again, Commit)
// before acknowledging them.
var ErrStale = errors.New("sequence: allocation is stale")

// StaleError is the ErrStale of Allocator.Commit: Users are the users whose
// seqs must be placed again. The seqs of every other user of the
// allocation are committed.
type StaleError struct{ Users []string }

func (e *StaleError) Error() string {
	return "sequence: allocation is stale for users " + strings.Join(e.Users, ", ")
}

// Is makes errors.Is(err, ErrStale) true.
func (e *StaleError) Is(target error) bool { return target == ErrStale }

// ClaimKey is the idempotency key of one send: (sender, client_message_id).
type ClaimKey struct{ SenderID, ClientMessageID string }

// Claims is the outcome of Allocator.Claim.
type Claims struct {
	// Lost holds the indexes, increasing, of the keys passed to Claim
	// that another claimer holds: their sends are in progress elsewhere.
	Lost []int
	// Token is the allocator's state of the claims won (for Release); the
	// sequencer does not touch it.
	Token any
}

// Allocator hands out message ids and inbox seqs to the sequencer, tells
// readers how far an inbox may be read, and (in a cluster) lets exactly one
// server store a send that several servers receive at once.
//
// The sequencer calls Claim, Release, Allocate, Commit and Abort from its
// one goroutine; Horizon is called by readers concurrently with them.
//
// Rules every implementation keeps:
//   - a message id or inbox seq is never allocated twice, also across
//     restarts of the server or of the allocator's backing service;
//   - per channel, message ids increase in allocation order and are at
//     least unix_ms<<16 of the now passed to Allocate;
//   - per user, seqs increase in allocation order;
//   - Horizon(u) = h means every seq <= h of u is either written to the
//     store (its batch's AppendBatch returned before Commit) or abandoned
//     forever (never written, or written by a batch that was never
//     acknowledged); h never decreases.
type Allocator interface {
	// Allocate reserves the ids of one batch: channels[c] message ids for
	// channel c and users[u] inbox seqs for user u (counts > 0). now is the
	// server clock. Errors: the allocation failed and nothing of it is
	// reserved (or what was is abandoned).
	Allocate(ctx context.Context, now time.Time, channels, users map[string]int) (*Allocation, error)
	// Commit marks the allocation's seqs as written; call it after the
	// batch's AppendBatch returned nil. A *StaleError (errors.Is ErrStale)
	// names users whose seqs must be placed again; other errors: nothing
	// is known, Commit may be retried (users already committed are not
	// committed twice).
	Commit(ctx context.Context, a *Allocation) error
	// Abort gives up an allocation whose write failed: its seqs become
	// holes that readers skip; they are never allocated again.
	Abort(ctx context.Context, a *Allocation)
	// Horizon returns the user's visible inbox head (0 for an empty
	// inbox): see the rules above. Readers never read past it.
	Horizon(ctx context.Context, userID string) (uint64, error)
	// Claim claims the keys of a batch's new sends before they are
	// looked up in the store and allocated, so that when retries of one
	// send reach several sequencers at the same time exactly one of them
	// stores it: a key is held by one claimer at a time, for at least
	// hold (the sequencer's StoreTimeout; implementations add a margin)
	// unless released, and then expires, so the claims of a server that
	// died do not outlive it for long. A nil *Claims means every key was
	// won (a single node needs no claims: its one sequencer goroutine
	// already serialises dedup). Errors: nothing is claimed.
	Claim(ctx context.Context, keys []ClaimKey, hold time.Duration) (*Claims, error)
	// Release gives back the claims c won, after their batch failed, so
	// that a retry may store the message at once. Failures are logged; the
	// claims then expire. c may be nil.
	Release(ctx context.Context, c *Claims)
}

// KeyReleaser is implemented by allocators whose claims can be given back
// one key at a time. The sequencer uses it, when available, for a send it
// refused after winning its claim (a client_message_id reused for a
// different message): that send stored nothing, and holding its claim
// would keep the genuine retry of the key's message waiting until the
// claim expires.
type KeyReleaser interface {
	// ReleaseKeys gives back the claims of c on keys (keys c won; others
	// are ignored) and leaves the rest held. Failures are logged; the
	// claims then expire.
	ReleaseKeys(ctx context.Context, c *Claims, keys []ClaimKey)
}

// LocalAllocator is the single-node Allocator: it keeps each channel's
// last message id and each user's last inbox seq in memory, loaded from the
// store (LastMessageID, LastInboxSeq) the first time they are needed. Seqs
// are dense (1, 2, 3, ...; Abort drops the caches so that the seqs of a
// failed batch are handed out again: nothing of it was written), and
// Horizon is the store's last inbox seq, answered from memory: Commit
// records each user's last committed seq, and a user not recorded yet is
// read from the store once (see horizons).
//
// It relies on the sequencer's single goroutine committing batches in
// allocation order, so only one sequencer may use the store: it is not
// safe for several servers (use sequence/redis). Allocate, Commit and
// Abort must be called from one goroutine at a time; Horizon is safe for
// concurrent use.
type LocalAllocator struct {
	st      store.Messages
	limit   int
	lastMsg map[string]uint64
	lastSeq map[string]uint64
	heads   horizons
}

var _ Allocator = (*LocalAllocator)(nil)

// NewLocalAllocator returns the single-node allocator on st, with id
// caches of DefaultCacheLimit entries each.
func NewLocalAllocator(st store.Messages) *LocalAllocator {
	return newLocal(st, DefaultCacheLimit)
}

func newLocal(st store.Messages, limit int) *LocalAllocator {
	l := &LocalAllocator{st: st, limit: limit, lastMsg: make(map[string]uint64), lastSeq: make(map[string]uint64)}
	l.heads.init(limit)
	return l
}

// Allocate implements Allocator: message ids max(last+1, unix_ms<<16) and
// consecutive; seqs last+1 and consecutive. Errors are the store's (the
// caches are then dropped).
func (l *LocalAllocator) Allocate(ctx context.Context, now time.Time, channels, users map[string]int) (*Allocation, error) {
	nowMS := now.UnixMilli()
	if nowMS < 0 {
		nowMS = 0
	}
	floor := uint64(nowMS) << 16
	a := &Allocation{Channels: make(map[string]Range, len(channels)), Users: make(map[string]Range, len(users))}
	for ch, n := range channels {
		last, ok := l.lastMsg[ch]
		if !ok {
			v, err := l.st.LastMessageID(ctx, ch)
			if err != nil {
				l.reset()
				return nil, err
			}
			last = v
		}
		first := max(last+1, floor)
		r := Range{first, first + uint64(n) - 1}
		l.lastMsg[ch] = r.Last
		a.Channels[ch] = r
	}
	for u, n := range users {
		last, ok := l.lastSeq[u]
		if !ok {
			v, err := l.st.LastInboxSeq(ctx, u)
			if err != nil {
				l.reset()
				return nil, err
			}
			last = v
		}
		r := Range{last + 1, last + uint64(n)}
		l.lastSeq[u] = r.Last
		a.Users[u] = r
	}
	return a, nil
}

// Commit implements Allocator; it never fails. It records the users'
// horizons (the batch is written: its seqs are final) and bounds the
// caches.
func (l *LocalAllocator) Commit(_ context.Context, a *Allocation) error {
	for u, r := range a.Users {
		l.heads.raise(u, r.Last)
	}
	if len(l.lastMsg) > l.limit {
		l.lastMsg = make(map[string]uint64)
	}
	if len(l.lastSeq) > l.limit {
		l.lastSeq = make(map[string]uint64)
	}
	return nil
}

// Abort implements Allocator: it forgets every id handed out (the caches
// are reloaded from the store), so the failed batch leaves no gap.
func (l *LocalAllocator) Abort(context.Context, *Allocation) { l.reset() }

func (l *LocalAllocator) reset() {
	l.lastMsg = make(map[string]uint64)
	l.lastSeq = make(map[string]uint64)
}

// Claim implements Allocator: one sequencer writes the store, so every key
// is won (nil) and nothing is held.
func (l *LocalAllocator) Claim(context.Context, []ClaimKey, time.Duration) (*Claims, error) {
	return nil, nil
}

// Release implements Allocator: a no-op.
func (l *LocalAllocator) Release(context.Context, *Claims) {}

// Horizon implements Allocator: the store's last inbox seq of the user,
// from memory once known (Commit keeps it current); the first call for a
// user not committed to since the cache was last dropped reads the store.
// Errors are the store's.
func (l *LocalAllocator) Horizon(ctx context.Context, userID string) (uint64, error) {
	if h, ok := l.heads.get(userID); ok {
		return h, nil
	}
	return l.heads.load(userID, func() (uint64, error) { return l.st.LastInboxSeq(ctx, userID) })
}

// horizons is LocalAllocator's memory of the users' horizons: sharded
// maps (readers of different users rarely share a lock), each shard
// dropped whole when it outgrows its part of the cache limit. A value is
// only ever raised: Commit raises it to the last seq of a written batch.
// A user not in memory is read from the store while its shard is locked,
// so no Commit runs between that read and keeping its result: the value
// kept is the newest, and a horizon never goes backwards.
type horizons struct {
	shards [horizonShards]horizonShard
}

const horizonShards = 64

type horizonShard struct {
	mu    sync.RWMutex
	m     map[string]uint64
	limit int
}

func (h *horizons) init(limit int) {
	per := max(limit/horizonShards, 1)
	for i := range h.shards {
		h.shards[i].m = make(map[string]uint64)
		h.shards[i].limit = per
	}
}

func (h *horizons) shard(user string) *horizonShard {
	return &h.shards[maphash.String(horizonSeed, user)%horizonShards]
}

var horizonSeed = maphash.MakeSeed()

func (h *horizons) get(user string) (uint64, bool) {
	sh := h.shard(user)
	sh.mu.RLock()
	v, ok := sh.m[user]
	sh.mu.RUnlock()
	return v, ok
}

// load returns the user's horizon, reading it with read (the store) and
// keeping it if it is not in memory; the shard stays locked meanwhile.
func (h *horizons) load(user string, read func() (uint64, error)) (uint64, error) {
	sh := h.shard(user)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if v, ok := sh.m[user]; ok {
		return v, nil
	}
	v, err := read()
	if err != nil {
		return 0, err
	}
	sh.put(user, v)
	return v, nil
}

// raise sets the user's horizon to max(current, v).
func (h *horizons) raise(user string, v uint64) {
	sh := h.shard(user)
	sh.mu.Lock()
	if cur, ok := sh.m[user]; !ok || v > cur {
		sh.put(user, v)
	}
	sh.mu.Unlock()
}

func (sh *horizonShard) put(user string, v uint64) {
	if _, ok := sh.m[user]; !ok && len(sh.m) >= sh.limit {
		sh.m = make(map[string]uint64)
	}
	sh.m[user] = v
}
