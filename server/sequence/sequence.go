// Package sequence is the group-commit sequencer of the chat core: the one
// place where messages get their ids and inbox positions and become
// durable.
//
// One goroutine per server sequences. It takes queued requests in
// submission order (FIFO), up to Options.MaxBatch at a time, and for each
// one
//
//   - deduplicates it by (sender, client_message_id): earlier requests of
//     the same batch, then an in-memory LRU of recent sends, then the key
//     is claimed (Allocator.Claim: across servers in cluster mode, a no-op
//     on a single node) and looked up with store.LookupDedup (on a single
//     node that lookup is done before queueing instead, see "Dedup
//     pre-check" below). A duplicate
//     gets the original ack (Result.Duplicate) and stores nothing, if it
//     is the same message (same channel, kind, ref, for-user and text:
//     the record's fingerprint); a reuse of the key for a different
//     message fails with CodeFailedPrecondition and stores nothing either,
//     on every one of these paths; a send
//     whose key another server holds stores nothing either: it is answered
//     with that server's ack once its dedup row is in the store (or
//     Unavailable, "in progress; retry", after StoreTimeout);
//   - assigns a message_id (increasing per channel, >= unix_ms<<16) and
//     created_at (server clock, ms);
//   - assigns one inbox seq (increasing per user) per recipient user.
//
// The ids of a batch come from an Allocator in one call. The whole batch
// is then written with ONE store.AppendBatch (durable), confirmed to the
// allocator (Commit), and only then does the goroutine call publish (the
// fan-out) and each request's done callback, in submission order. If
// AppendBatch fails, every request of the batch fails with Unavailable and
// the allocation is aborted.
//
// # Dedup pre-check
//
// With the LocalAllocator (one sequencer writes the store) the store
// lookup of a send's dedup key is done by SubmitContext on the caller's
// goroutine, concurrently with other callers, instead of serially on the
// sequencer goroutine: a key found there is answered at once (done runs
// before SubmitContext returns) and never queued. A key not found is queued
// as pre-checked, and the sequencer then only checks the batch and its LRU,
// which holds every key committed since the pre-check as long as fewer than
// DedupCache/2 keys were put into it since (each commit or LRU hit puts
// one; a request waits behind at most QueueSize+MaxBatch others, 8,704 with
// the defaults, against 32,768); if more were (a Submit that blocked long
// on a full queue), the sequencer looks the key up in the store as before.
// In cluster mode there is no pre-check: another server may commit the key
// after it, unseen by this LRU, so the lookup stays after the claim.
//
// Allocators: LocalAllocator (the default) is the single-node one: ids
// from in-memory caches recovered from the store, dense seqs, and because
// one goroutine assigns and commits in order no reader ever sees inbox seq
// N+1 before N is durable. For several servers writing the same store,
// sequence/redis allocates from Redis with durable reserved bounds; seqs
// may then commit out of order and have holes, and readers stay at or below
// Head (the allocator's horizon). See docs/sequencing.md.
package sequence

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/chatd/chatd/server/internal/parallel"
	"github.com/chatd/chatd/server/store"
)

// lookupConcurrency bounds the store dedup lookups of one batch in flight.
const lookupConcurrency = 32

// dedupLookup is the outcome of one store.LookupDedup of a batch.
type dedupLookup struct {
	done bool // looked up (false: not needed)
	d    *store.Dedup
	err  error
}

// Defaults for Options fields left zero.
const (
	DefaultQueueSize  = 8192
	DefaultMaxBatch   = 512
	DefaultCacheLimit = 1 << 20
	DefaultDedupCache = 1 << 16
	// DefaultCommitLinger is the linger servers use (server/app); the zero
	// Options.CommitLinger means none. About two fsyncs of this project's
	// disk at p50 (0.4 ms each): at 1,000 msg/s it about halves the
	// commits, and costs a send at most this much latency, only under load.
	DefaultCommitLinger = time.Millisecond
	// MaxCommitLinger bounds Options.CommitLinger (New clamps to it): a
	// linger is a fraction of a send's latency budget, never seconds.
	MaxCommitLinger = 100 * time.Millisecond
)

// Options tune a Sequencer. Zero values take the defaults above.
type Options struct {
	// QueueSize bounds the number of submitted, not yet sequenced
	// requests; Submit blocks while the queue is full (backpressure).
	QueueSize int
	// MaxBatch is the largest number of requests written by one
	// AppendBatch.
	MaxBatch int
	// CommitLinger is how long a batch that is not full waits for more
	// requests before it is written, counted from when the sequencer took
	// its first request. It lingers only under load from several senders:
	// when the previous batch finished less than CommitLinger before that,
	// and it held more than one request or another one was queued by the
	// time it finished (so requests arrive independently of the commits).
	// A lone sender that waits for each ack before its next send never
	// waits, nor does an idle server. Each batch is one durable write (an
	// fsync on the embedded store, a CQL batch in a cluster), so at a
	// steady rate r a linger L writes about r·L+1 messages per commit
	// instead of about 1, for at most L more latency per send. Zero or
	// negative: no linger (a batch is written as soon as the queue is
	// empty); at most MaxCommitLinger. The group commit delays of
	// PostgreSQL (commit_delay, commit_siblings) and MySQL
	// (binlog_group_commit_sync_delay) work the same way.
	CommitLinger time.Duration
	// CacheLimit bounds each id cache of the default LocalAllocator
	// (channels' last message_id, users' last inbox seq), in entries. When
	// a cache grows past it, it is dropped and reloaded lazily from the
	// store. Ignored when Allocator is set.
	CacheLimit int
	// Allocator hands out ids and seqs; default a LocalAllocator on the
	// store (single node). In cluster mode use sequence/redis.
	Allocator Allocator
	// DedupCache is the number of recent (sender, client_message_id) pairs
	// remembered in memory, in front of store.LookupDedup.
	DedupCache int
	// Now is the server clock; default time.Now.
	Now func() time.Time
	// StoreTimeout bounds the work of one batch on the sequencer
	// goroutine (dedup claims and lookups, allocation, the store write,
	// the commit and its retries); default 10 s. It is also how long a
	// dedup claim is held at least, and how long a send whose claim
	// another server holds waits for that server's result. With
	// sequence/redis keep it below the allocator's PendingTTL.
	StoreTimeout time.Duration
	// OnBatch, if set, is called on the sequencer goroutine after every
	// successful commit with the number of requests in the batch, the
	// number of messages written and how long AppendBatch took. It must
	// not block (metrics hook).
	OnBatch func(requests, messages int, commit time.Duration)
	// Logger receives commit failures; default slog.Default().
	Logger *slog.Logger
	// Tracer, if set, records for every request submitted with a sampled
	// span in its context a "sequence" span (child of it: from submit to
	// the end of its batch) and a "store.commit" span (child of that: the
	// batch's AppendBatch), and hands the sequence span to publish
	// (Committed.Trace). nil: no tracing work at all.
	Tracer trace.Tracer
}

// Request asks to store one message in a channel and place it in the inbox
// of every recipient.
type Request struct {
	ChannelID      string
	SenderID       string // the sender's username
	SenderDeviceID string
	// ClientMessageID is the sender's idempotency key (1..64 bytes). Empty
	// disables deduplication (e.g. system messages).
	ClientMessageID string
	Text            string
	Kind            store.MessageKind // 0 means store.KindText
	RefMessageID    uint64
	// ForUser is copied to store.Message.ForUser (a "delete for me" row;
	// its Recipients are then that user only).
	ForUser string
	// Recipients are the users whose inboxes receive the message: every
	// member of the channel, the sender included (so the sender's other
	// devices, and the sending one, see it through the inbox). Duplicates
	// are ignored.
	Recipients []string
}

// Result is the outcome of one Request.
type Result struct {
	ChannelID       string
	MessageID       uint64
	CreatedAt       time.Time // server clock, ms precision, UTC
	ClientMessageID string
	// Duplicate is true when (sender, client_message_id) was seen before:
	// the fields above are those of the original message and nothing was
	// stored.
	Duplicate bool
	// Message is the stored message (nil for a duplicate or an error).
	Message *store.Message
	// Err is nil on success, otherwise a *store.Error: CodeUnavailable
	// (the store or the allocator failed, the sequencer is closed, or a
	// send with the same client_message_id is in progress on another
	// server and did not finish within StoreTimeout),
	// CodeFailedPrecondition (the client_message_id already names a
	// different message of the sender: another channel, kind, ref or
	// text; nothing was stored, see Fingerprint) or
	// CodeInvalid (a malformed request). A failed request was not
	// published; it may have been stored (a store write that failed half
	// way, or a commit the allocator could not confirm), so a retry with
	// the same client_message_id may return it as a duplicate.
	Err error
}

// Committed is one durably stored message with its inbox entries (one per
// recipient user, in recipient order), handed to the publish callback.
type Committed struct {
	Message *store.Message
	Inbox   []store.InboxEntry
	// Trace is the request's "sequence" span when it was traced (see
	// Options.Tracer); invalid otherwise.
	Trace trace.SpanContext
}

// Stats are cumulative counters of a Sequencer, safe to read at any time.
type Stats struct {
	Batches    uint64 // successful AppendBatch calls
	Messages   uint64 // messages stored
	Duplicates uint64 // requests answered from dedup
	Failed     uint64 // requests failed (store errors, closed)
	Queued     int    // requests waiting right now
}

// ErrClosed is the Result.Err of requests submitted after Close.
var ErrClosed = store.Errorf(store.CodeUnavailable, "sequencer closed: server shutting down, retry")

var (
	errCommit      = store.Errorf(store.CodeUnavailable, "message not stored: storage unavailable, retry with the same client_message_id")
	errUnconfirmed = store.Errorf(store.CodeUnavailable, "message not confirmed: sequencing unavailable, retry with the same client_message_id")
)

type item struct {
	req  *Request
	done func(Result)
	// prechecked: the key was not in the store when dedupPuts was mark
	// (see "Dedup pre-check").
	prechecked bool
	mark       uint64
	// The submitter's sampled span and when it was submitted (tracing
	// on only).
	span   trace.SpanContext
	queued time.Time
}

// Sequencer is the group-commit sequencer. Methods are safe for concurrent
// use.
type Sequencer struct {
	st      store.Messages
	alloc   Allocator
	publish func([]Committed)
	opts    Options
	log     *slog.Logger

	closeMu sync.RWMutex // RLock: Submit is enqueueing; Lock: Close
	closed  bool
	queue   chan item
	stopped chan struct{}

	batches, messages, duplicates, failed atomic.Uint64

	// Owned by the sequencer goroutine (reused by every batch).
	chCount, userCount map[string]int
	nextID, nextSeq    map[string]uint64
	dedup              *lru
	dedupPuts          atomic.Uint64 // entries put into dedup (commits, hits), ever
	precheck           bool          // single writer: dedup lookups before queueing
	lookups            []dedupLookup // per claimIdx: the batch's store dedup lookups
	claimKeys          []ClaimKey
	claimIdx           []int // claimKeys[i] is the key of batch[claimIdx[i]]

	// Waiters for sends claimed by another server (awaitOther).
	waitSlots chan struct{} // bounds the waiters
	waiters   sync.WaitGroup
	quit      chan struct{} // closed by Close: waiters answer at once
	quitOnce  sync.Once
}

// New starts a Sequencer writing to st. publish is called on the sequencer
// goroutine after every durable commit with the committed messages in
// order; it must not block (it hands events to the router). publish may be
// nil.
func New(st store.Messages, publish func(batch []Committed), opts Options) *Sequencer {
	if opts.QueueSize <= 0 {
		opts.QueueSize = DefaultQueueSize
	}
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = DefaultMaxBatch
	}
	if opts.CacheLimit <= 0 {
		opts.CacheLimit = DefaultCacheLimit
	}
	if opts.DedupCache <= 0 {
		opts.DedupCache = DefaultDedupCache
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	opts.CommitLinger = min(opts.CommitLinger, MaxCommitLinger)
	if opts.StoreTimeout <= 0 {
		opts.StoreTimeout = 10 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	alloc := opts.Allocator
	if alloc == nil {
		alloc = newLocal(st, opts.CacheLimit)
	}
	s := &Sequencer{
		st:        st,
		alloc:     alloc,
		publish:   publish,
		opts:      opts,
		log:       opts.Logger,
		queue:     make(chan item, opts.QueueSize),
		stopped:   make(chan struct{}),
		chCount:   make(map[string]int),
		userCount: make(map[string]int),
		nextID:    make(map[string]uint64),
		nextSeq:   make(map[string]uint64),
		dedup:     newLRU(opts.DedupCache),
		precheck:  isLocal(alloc),
		waitSlots: make(chan struct{}, maxWaiters),
		quit:      make(chan struct{}),
	}
	go s.run()
	return s
}

// Submit queues req; done is called exactly once, on the sequencer
// goroutine, after the request's batch is durable (or failed); for a send
// whose (sender, client_message_id) another server is storing at the same
// time (cluster mode) it is called later, on a goroutine of its own, with
// that server's ack or Unavailable; for a send already in the store
// (single node) it is called on the caller's goroutine, with the original
// ack (Duplicate), before Submit returns. done must not block. Requests are
// sequenced in the order Submit is called (FIFO), so one caller's
// consecutive submissions keep their order. Submit blocks
// while the queue is full. After Close, done is called at once with
// ErrClosed. req must not be modified after Submit.
func (s *Sequencer) Submit(req *Request, done func(Result)) {
	_ = s.SubmitContext(context.Background(), req, done)
}

// SubmitContext is Submit that stops waiting for queue space when ctx ends:
// it then returns ctx's error (context.Canceled or DeadlineExceeded)
// and done is never called. On a nil return done will be called exactly
// once.
func (s *Sequencer) SubmitContext(ctx context.Context, req *Request, done func(Result)) error {
	if done == nil {
		done = func(Result) {}
	}
	it := item{req: req, done: done}
	if s.opts.Tracer != nil {
		if sc := trace.SpanContextFromContext(ctx); sc.IsSampled() {
			it.span, it.queued = sc, time.Now()
		}
	}
	if s.precheck && req.ClientMessageID != "" && req.ChannelID != "" && req.SenderID != "" {
		// Dedup pre-check (see the package doc): mark is read before the
		// lookup, so a commit the lookup misses is put after mark.
		mark := s.dedupPuts.Load()
		d, err := s.st.LookupDedup(ctx, req.SenderID, req.ClientMessageID)
		switch {
		case err == nil:
			if err := CheckReuse(req, d); err != nil {
				s.failed.Add(1)
				done(Result{ChannelID: req.ChannelID, ClientMessageID: req.ClientMessageID, Err: err})
				return nil
			}
			s.duplicates.Add(1)
			done(dupResult(*d))
			return nil
		case errors.Is(err, store.ErrNotFound):
			it.prechecked, it.mark = true, mark
		}
		// Other errors: the sequencer looks it up again.
	}
	s.closeMu.RLock()
	if s.closed {
		s.closeMu.RUnlock()
		s.failed.Add(1)
		done(Result{ChannelID: req.ChannelID, ClientMessageID: req.ClientMessageID, Err: ErrClosed})
		return nil
	}
	select {
	case s.queue <- it:
		s.closeMu.RUnlock()
		return nil
	default:
	}
	select {
	case s.queue <- it:
		s.closeMu.RUnlock()
		return nil
	case <-ctx.Done():
		s.closeMu.RUnlock()
		return ctx.Err()
	}
}

// Do submits req and waits for its Result. If ctx ends first it returns
// ctx's error (the request may still be committed later).
// Otherwise it returns the Result and Result.Err.
func (s *Sequencer) Do(ctx context.Context, req *Request) (Result, error) {
	ch := make(chan Result, 1)
	if err := s.SubmitContext(ctx, req, func(r Result) { ch <- r }); err != nil {
		return Result{}, err
	}
	select {
	case r := <-ch:
		return r, r.Err
	case <-ctx.Done():
		return Result{}, ctx.Err()
	}
}

// Head returns the user's inbox horizon (0 for an empty inbox): every seq
// <= Head is either readable by store.Inbox or a hole that will never be
// written, and Head never decreases. With the LocalAllocator it is the
// newest committed seq (read from the store); in cluster mode entries
// above it may exist and must not be read yet. Errors: CodeUnavailable if
// the allocator or the store fails; ctx's error if it ended.
func (s *Sequencer) Head(ctx context.Context, userID string) (uint64, error) {
	h, err := s.alloc.Horizon(ctx, userID)
	if err != nil {
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		return 0, store.Errorf(store.CodeUnavailable, "inbox head unavailable, retry")
	}
	return h, nil
}

// Stats returns the cumulative counters.
func (s *Sequencer) Stats() Stats {
	return Stats{
		Batches:    s.batches.Load(),
		Messages:   s.messages.Load(),
		Duplicates: s.duplicates.Load(),
		Failed:     s.failed.Load(),
		Queued:     len(s.queue),
	}
}

// Close stops accepting requests, sequences and commits everything already
// queued (calling publish and done as usual), then stops the goroutine.
// Requests submitted afterwards fail with ErrClosed. Safe to call more than
// once.
func (s *Sequencer) Close() {
	s.closeMu.Lock()
	if !s.closed {
		s.closed = true
		close(s.queue)
	}
	s.closeMu.Unlock()
	<-s.stopped
	s.quitOnce.Do(func() { close(s.quit) })
	s.waiters.Wait()
}

func (s *Sequencer) run() {
	defer close(s.stopped)
	batch := make([]item, 0, s.opts.MaxBatch)
	linger := s.opts.CommitLinger
	var timer *time.Timer
	if linger > 0 {
		timer = time.NewTimer(linger)
		timer.Stop()
		defer timer.Stop()
	}
	var finished time.Time // when the previous batch was done
	loaded := false        // it held several requests, or more were queued by its end
	for {
		it, ok := <-s.queue
		if !ok {
			return
		}
		batch = append(batch[:0], it)
		open := true
	drain:
		for len(batch) < s.opts.MaxBatch {
			select {
			case it, ok := <-s.queue:
				if !ok {
					open = false
					break drain
				}
				batch = append(batch, it)
			default:
				break drain
			}
		}
		if linger > 0 && loaded && open && len(batch) < s.opts.MaxBatch && time.Since(finished) < linger {
			batch = s.linger(batch, timer, linger)
		}
		s.process(batch)
		if linger > 0 {
			finished = time.Now()
			loaded = len(batch) > 1 || len(s.queue) > 0
		}
		clear(batch) // drop references for the GC
	}
}

// linger adds to batch the requests that arrive within d (until the batch
// is full or the queue closes) and returns it. t is the sequencer's
// stopped timer; it is stopped again on return.
func (s *Sequencer) linger(batch []item, t *time.Timer, d time.Duration) []item {
	t.Reset(d)
	defer t.Stop()
	for len(batch) < s.opts.MaxBatch {
		select {
		case it, ok := <-s.queue:
			if !ok {
				return batch
			}
			batch = append(batch, it)
		case <-t.C:
			return batch
		}
	}
	return batch
}

// pending is the per-request state of one batch.
type pending struct {
	res    Result
	dupOf  int  // index of the earlier request in the batch it duplicates, or -1
	commit int  // index into committed, or -1
	fresh  bool // a new message: gets ids in this batch
	wait   bool // another server holds its claim: answered by awaitOther
	// clash: the request at dupOf has the same key but other content.
	clash bool
	// found is the send recorded in the store under the request's key
	// (looked up after the claim), if any.
	found *store.Dedup
	// repair: the send is in the store but some of its rows are missing
	// (a server died in the middle of its batch): they are written in
	// this batch, the missing inbox placements under new seqs.
	repair *incomplete
}

// maxReplace bounds how often one batch is placed again after stale
// commits before it fails.
const maxReplace = 3

func (s *Sequencer) process(batch []item) {
	ctx, cancel := context.WithTimeout(context.Background(), s.opts.StoreTimeout)
	defer cancel()

	ps := make([]pending, len(batch))
	var (
		b         store.Batch
		committed []Committed
		inBatch   map[dedupKey]int // dedup key -> index in batch
		failErr   error
		entries   int
		claims    *Claims
		waiting   bool // some request waits for another server's send
	)
	now := s.opts.Now()
	nowMS := now.UnixMilli()
	if nowMS < 0 {
		nowMS = 0
	}
	createdAt := time.UnixMilli(nowMS).UTC()
	clear(s.chCount)
	clear(s.userCount)

	// Validate and deduplicate: earlier requests of the batch, the LRU,
	// then (after claiming the keys across servers) the store.
	s.claimKeys, s.claimIdx = s.claimKeys[:0], s.claimIdx[:0]
	for i := range batch {
		req := batch[i].req
		p := &ps[i]
		p.dupOf, p.commit = -1, -1
		p.res.ChannelID = req.ChannelID
		p.res.ClientMessageID = req.ClientMessageID
		if req.ChannelID == "" || req.SenderID == "" {
			p.res.Err = store.Errorf(store.CodeInvalid, "sequence: request without channel or sender")
			continue
		}
		if req.ClientMessageID != "" {
			k := dedupKey{req.SenderID, req.ClientMessageID}
			if j, ok := inBatch[k]; ok {
				p.dupOf = j
				p.clash = Fingerprint(req) != Fingerprint(batch[j].req)
				continue
			}
			if d, ok := s.dedup.get(k); ok {
				s.dedupPuts.Add(1) // a hit may move it to the new generation
				if err := CheckReuse(req, &d); err != nil {
					p.res.Err = err
					continue
				}
				p.res = dupResult(d)
				continue
			}
			if inBatch == nil {
				inBatch = make(map[dedupKey]int)
			}
			inBatch[k] = i
			s.claimKeys = append(s.claimKeys, ClaimKey{req.SenderID, req.ClientMessageID})
			s.claimIdx = append(s.claimIdx, i)
		}
		p.fresh = true
	}
	if len(s.claimKeys) > 0 {
		claims, failErr = s.alloc.Claim(ctx, s.claimKeys, s.opts.StoreTimeout)
		if failErr == nil && claims != nil {
			// Sends in progress on another server: answered by a waiter
			// once that server's dedup row is in the store.
			for _, li := range claims.Lost {
				if li < 0 || li >= len(s.claimIdx) {
					failErr = fmt.Errorf("sequence: allocator lost claim %d of %d", li, len(s.claimIdx))
					break
				}
				p := &ps[s.claimIdx[li]]
				p.fresh, p.wait = false, true
				waiting = true
			}
		}
	}
	// The store lookups of the batch's new keys run concurrently: one
	// round trip of latency per batch instead of one per send (in cluster
	// mode every new send is looked up here, see "Dedup pre-check").
	if failErr == nil && len(s.claimIdx) > 0 {
		s.lookups = slices.Grow(s.lookups[:0], len(s.claimIdx))[:len(s.claimIdx)]
		clear(s.lookups)
		_ = parallel.Do(ctx, len(s.claimIdx), lookupConcurrency, func(ctx context.Context, j int) error {
			i := s.claimIdx[j]
			if !ps[i].fresh {
				return nil
			}
			if it := &batch[i]; it.prechecked && s.dedupPuts.Load()-it.mark <= uint64(s.dedup.half) {
				return nil // not in the store at the pre-check; the LRU has every commit since
			}
			req := batch[i].req
			d, err := s.st.LookupDedup(ctx, req.SenderID, req.ClientMessageID)
			s.lookups[j] = dedupLookup{done: true, d: d, err: err}
			return nil
		})
	}
	for j, i := range s.claimIdx {
		p := &ps[i]
		if failErr != nil {
			break
		}
		if !p.fresh || !s.lookups[j].done {
			continue
		}
		req := batch[i].req
		d, err := s.lookups[j].d, s.lookups[j].err
		switch {
		case err == nil:
			p.fresh = false
			p.found = d
			if err := CheckReuse(req, d); err != nil {
				// Another message's key: nothing is stored, and the
				// other send is not repaired with this one's content.
				p.res.Err = err
				continue
			}
			if !s.precheck && len(d.Inbox) > 0 {
				// Another server's batch may have died half way: every
				// row of the send must be there before it counts as sent.
				inc, err := s.findMissing(ctx, d)
				if err != nil {
					failErr = err
					break
				}
				if inc != nil {
					inc.req = req
					p.repair = inc
					p.res = dupResult(*d)
					continue
				}
			}
			s.dedup.put(dedupKey{req.SenderID, req.ClientMessageID}, *d)
			s.dedupPuts.Add(1)
			p.res = dupResult(*d)
		case errors.Is(err, store.ErrNotFound):
		default:
			failErr = err
		}
	}

	// Give back at once the claims of sends refused for reusing a key:
	// they stored nothing, and the key's own message may need a retry to
	// complete it (see KeyReleaser).
	if kr, ok := s.alloc.(KeyReleaser); ok && failErr == nil && claims != nil {
		var refused []ClaimKey
		for _, i := range s.claimIdx {
			if p := &ps[i]; p.found != nil && p.res.Err != nil {
				refused = append(refused, ClaimKey{batch[i].req.SenderID, batch[i].req.ClientMessageID})
			}
		}
		if len(refused) > 0 {
			kr.ReleaseKeys(ctx, claims, refused)
		}
	}

	// Count the ids the new messages need.
	for i := range batch {
		if failErr != nil {
			break
		}
		p := &ps[i]
		if p.repair != nil {
			for _, k := range p.repair.missing {
				s.userCount[p.repair.d.Inbox[k].UserID]++
				entries++
			}
			continue
		}
		if !p.fresh {
			continue
		}
		req := batch[i].req
		s.chCount[req.ChannelID]++
		for ri, u := range req.Recipients {
			if u == "" || seen(req.Recipients[:ri], u) {
				continue
			}
			s.userCount[u]++
			entries++
		}
	}

	// Allocate the ids and assign them in submission order.
	var a *Allocation
	if failErr == nil && (len(s.chCount) > 0 || len(s.userCount) > 0) {
		a, failErr = s.alloc.Allocate(ctx, now, s.chCount, s.userCount)
		if failErr == nil {
			if failErr = checkAllocation(a, s.chCount, s.userCount); failErr != nil {
				s.abort(a)
			}
		}
	}
	if failErr == nil && a != nil {
		clear(s.nextID)
		clear(s.nextSeq)
		for ch, r := range a.Channels {
			s.nextID[ch] = r.First
		}
		for u, r := range a.Users {
			s.nextSeq[u] = r.First
		}
		b.Messages = make([]*store.Message, 0, len(batch))
		b.Inbox = make([]store.InboxEntry, 0, entries) // never reallocated: committed[].Inbox point into it
		committed = make([]Committed, 0, len(batch))
		for i := range batch {
			p := &ps[i]
			if p.repair != nil {
				committed = s.placeRepair(p, &b, committed)
				continue
			}
			if !p.fresh {
				continue
			}
			req := batch[i].req
			id := s.nextID[req.ChannelID]
			s.nextID[req.ChannelID] = id + 1
			kind := req.Kind
			if kind == 0 {
				kind = store.KindText
			}
			m := &store.Message{
				ChannelID:       req.ChannelID,
				MessageID:       id,
				SenderID:        req.SenderID,
				SenderDeviceID:  req.SenderDeviceID,
				ClientMessageID: req.ClientMessageID,
				Text:            req.Text,
				CreatedAt:       createdAt,
				Kind:            kind,
				RefMessageID:    req.RefMessageID,
				ForUser:         req.ForUser,
			}
			start := len(b.Inbox)
			for ri, u := range req.Recipients {
				if u == "" || seen(req.Recipients[:ri], u) {
					continue
				}
				seq := s.nextSeq[u]
				s.nextSeq[u] = seq + 1
				b.Inbox = append(b.Inbox, store.InboxEntry{UserID: u, Seq: seq, ChannelID: req.ChannelID, MessageID: id})
			}
			b.Messages = append(b.Messages, m)
			if req.ClientMessageID != "" {
				d := store.Dedup{
					SenderID: req.SenderID, ClientMessageID: req.ClientMessageID,
					ChannelID: req.ChannelID, MessageID: id, CreatedAt: createdAt,
					Fingerprint: Fingerprint(req),
				}
				if !s.precheck {
					// Cluster: the store's batch is not atomic; record
					// where the message goes, so a retry can check it.
					d.Inbox = placements(b.Inbox[start:])
				}
				b.Dedup = append(b.Dedup, d)
			}
			p.commit = len(committed)
			committed = append(committed, Committed{Message: m, Inbox: b.Inbox[start:len(b.Inbox):len(b.Inbox)]})
			p.res = Result{ChannelID: req.ChannelID, MessageID: id, CreatedAt: createdAt, ClientMessageID: req.ClientMessageID, Message: m}
		}
	}

	failure := errCommit
	var t0 time.Time
	var took time.Duration
	if failErr == nil && (len(b.Messages) > 0 || len(b.Inbox) > 0) {
		t0 = time.Now()
		failErr = s.st.AppendBatch(ctx, &b)
		took = time.Since(t0)
		if failErr != nil {
			s.abort(a)
		} else if failErr = s.commit(ctx, a, &b); failErr != nil {
			failure = errUnconfirmed
		} else {
			s.batches.Add(1)
			s.messages.Add(uint64(len(b.Messages)))
			if s.opts.OnBatch != nil {
				s.opts.OnBatch(len(batch), len(b.Messages), took)
			}
		}
	}
	spans := s.traceBatch(batch, ps, committed, t0, took, failErr)
	defer endSpans(spans)
	if failErr != nil {
		s.log.Error("sequence: commit failed; failing batch", "requests", len(batch), "err", failErr)
		s.release(claims)
		// The batch may be in the store without its keys in the LRU: make
		// every pending pre-check stale, so those requests look again.
		s.dedupPuts.Add(uint64(s.dedup.half) + 1)
		s.failed.Add(uint64(len(batch)))
		for i := range batch {
			batch[i].done(Result{ChannelID: ps[i].res.ChannelID, ClientMessageID: ps[i].res.ClientMessageID, Err: failure})
		}
		return
	}
	for _, d := range b.Dedup {
		s.dedup.put(dedupKey{d.SenderID, d.ClientMessageID}, d)
	}
	s.dedupPuts.Add(uint64(len(b.Dedup)))
	if len(committed) > 0 && s.publish != nil {
		s.publish(committed)
	}
	for i := range batch {
		p := &ps[i]
		if waiting && (p.wait || p.dupOf >= 0 && ps[p.dupOf].wait) {
			s.awaitOther(batch[i])
			continue
		}
		if p.dupOf >= 0 {
			p.res = s.inBatchDup(batch[i].req, p, &ps[p.dupOf])
		}
		if p.res.Duplicate {
			s.duplicates.Add(1)
		}
		if p.res.Err != nil {
			s.failed.Add(1)
		}
		batch[i].done(p.res)
	}
}

// traceBatch starts the spans of the traced requests of a batch (none
// when tracing is off or no request was traced): a "sequence" span per
// request from its submit time, and under it a "store.commit" span of the
// batch's write (if there was one), ended now. The sequence spans end
// when the batch is done (endSpans); their contexts go to publish in
// Committed.Trace.
func (s *Sequencer) traceBatch(batch []item, ps []pending, committed []Committed, t0 time.Time, took time.Duration, failErr error) []trace.Span {
	if s.opts.Tracer == nil {
		return nil
	}
	var spans []trace.Span
	for i := range batch {
		it := &batch[i]
		if !it.span.IsValid() {
			continue
		}
		ctx, sp := s.opts.Tracer.Start(trace.ContextWithSpanContext(context.Background(), it.span), "sequence",
			trace.WithTimestamp(it.queued),
			trace.WithAttributes(attribute.Int("chat.batch.requests", len(batch)), attribute.String("chat.channel_id", it.req.ChannelID)))
		if !t0.IsZero() {
			_, c := s.opts.Tracer.Start(ctx, "store.commit", trace.WithTimestamp(t0),
				trace.WithAttributes(attribute.Int("chat.batch.messages", len(committed))))
			if failErr != nil {
				c.SetStatus(codes.Error, failErr.Error())
			}
			c.End(trace.WithTimestamp(t0.Add(took)))
		}
		if failErr != nil {
			sp.SetStatus(codes.Error, failErr.Error())
		}
		if c := ps[i].commit; c >= 0 && c < len(committed) {
			committed[c].Trace = sp.SpanContext()
		}
		spans = append(spans, sp)
	}
	return spans
}

func endSpans(spans []trace.Span) {
	for _, sp := range spans {
		sp.End()
	}
}

// inBatchDup answers req (pending p), whose key an earlier request o of
// the same batch carried: o's answer when both are the same message (a
// duplicate of what o stored or found, or o's error); otherwise req is
// compared with the send recorded before the batch, if o found one (req
// may be the genuine retry and o the reuse), else with o's new message.
func (s *Sequencer) inBatchDup(req *Request, p, o *pending) Result {
	r := o.res
	switch {
	case !p.clash && r.Err != nil:
		return Result{ChannelID: req.ChannelID, ClientMessageID: req.ClientMessageID, Err: r.Err}
	case !p.clash:
		return Result{ChannelID: r.ChannelID, MessageID: r.MessageID, CreatedAt: r.CreatedAt, ClientMessageID: r.ClientMessageID, Duplicate: true}
	case o.found != nil:
		if err := CheckReuse(req, o.found); err != nil {
			return Result{ChannelID: req.ChannelID, ClientMessageID: req.ClientMessageID, Err: err}
		}
		return dupResult(*o.found)
	case r.Err == nil && r.MessageID != 0:
		return Result{ChannelID: req.ChannelID, ClientMessageID: req.ClientMessageID, Err: errReused(req, &store.Dedup{ChannelID: r.ChannelID, MessageID: r.MessageID})}
	default:
		return Result{ChannelID: req.ChannelID, ClientMessageID: req.ClientMessageID, Err: errReused(req, nil)}
	}
}

// checkAllocation verifies that a holds exactly the ids asked for.
func checkAllocation(a *Allocation, channels, users map[string]int) error {
	if a == nil || len(a.Channels) != len(channels) || len(a.Users) != len(users) {
		return errors.New("sequence: allocator returned a different set of channels or users")
	}
	for ch, n := range channels {
		if r, ok := a.Channels[ch]; !ok || r.Last < r.First || r.Len() != uint64(n) {
			return fmt.Errorf("sequence: allocator returned %+v for %d ids of channel %q", r, n, ch)
		}
	}
	for u, n := range users {
		if r, ok := a.Users[u]; !ok || r.Last < r.First || r.Len() != uint64(n) {
			return fmt.Errorf("sequence: allocator returned %+v for %d seqs of user %q", r, n, u)
		}
	}
	return nil
}

// abort gives up a (if any) with a context of its own: the batch's may
// have ended.
func (s *Sequencer) abort(a *Allocation) {
	if a == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), abortTimeout)
	defer cancel()
	s.alloc.Abort(ctx, a)
}

const abortTimeout = 2 * time.Second

// release gives back the claims of a failed batch (if any), with a
// context of its own.
func (s *Sequencer) release(c *Claims) {
	if c == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), abortTimeout)
	defer cancel()
	s.alloc.Release(ctx, c)
}

// maxWaiters bounds the requests waiting at once for a send of the same
// (sender, client_message_id) in progress on another server; beyond it
// they are answered errInProgress at once.
const maxWaiters = 1024

// Polling of the store by a waiter: first at once, then with a delay
// that doubles from waitPollMin up to waitPollMax, for StoreTimeout.
const (
	waitPollMin = 5 * time.Millisecond
	waitPollMax = 250 * time.Millisecond
)

var errInProgress = store.Errorf(store.CodeUnavailable, "a send with this client_message_id is in progress; retry")

// awaitOther answers it, whose (sender, client_message_id) another
// server has claimed, on a goroutine of its own (the sequencer goroutine
// never waits). It polls the store: once that server's send is complete
// (its dedup record and, in a cluster, every row the record names) it
// answers with the original ack (Duplicate). Between polls it tries to
// claim the key again: if the claim is free (the other server's batch
// failed and released it) or its holder is dead (Allocator.Claim takes
// over a fenced server's claims), it gives the claim back and submits the
// request again, so the send is stored, or completed, at once instead of
// after the claim expires. If neither happens within StoreTimeout it
// answers errInProgress. Close makes waiters look once more and answer at
// once.
func (s *Sequencer) awaitOther(it item) {
	req := it.req
	select {
	case s.waitSlots <- struct{}{}:
	default:
		s.failed.Add(1)
		it.done(Result{ChannelID: req.ChannelID, ClientMessageID: req.ClientMessageID, Err: errInProgress})
		return
	}
	s.waiters.Add(1)
	go func() {
		defer func() {
			<-s.waitSlots
			s.waiters.Done()
		}()
		deadline := time.Now().Add(s.opts.StoreTimeout)
		delay := waitPollMin
		var lastClaim time.Time
		for {
			ctx, cancel := context.WithDeadline(context.Background(), deadline.Add(time.Second))
			d, err := s.st.LookupDedup(ctx, req.SenderID, req.ClientMessageID)
			if err == nil && len(d.Inbox) > 0 && CheckReuse(req, d) == nil {
				// Answer only once every row of the send is there: a
				// record alone may be the trace of a batch that died.
				if inc, cerr := s.findMissing(ctx, d); cerr != nil || inc != nil {
					err = store.ErrNotFound
				}
			}
			if err == nil {
				cancel()
				if err := CheckReuse(req, d); err != nil {
					s.failed.Add(1)
					it.done(Result{ChannelID: req.ChannelID, ClientMessageID: req.ClientMessageID, Err: err})
					return
				}
				s.duplicates.Add(1)
				it.done(dupResult(*d))
				return
			}
			if time.Since(lastClaim) >= claimRetry && !s.isClosed() {
				lastClaim = time.Now()
				c, cerr := s.alloc.Claim(ctx, []ClaimKey{{req.SenderID, req.ClientMessageID}}, s.opts.StoreTimeout)
				if cerr == nil && (c == nil || len(c.Lost) == 0) {
					// Ours now: let the sequencer store or complete it
					// under a claim of its own.
					s.alloc.Release(ctx, c)
					cancel()
					if s.SubmitContext(context.Background(), req, it.done) != nil {
						it.done(Result{ChannelID: req.ChannelID, ClientMessageID: req.ClientMessageID, Err: errInProgress})
					}
					return
				}
			}
			cancel()
			left := time.Until(deadline)
			if left <= 0 {
				break
			}
			t := time.NewTimer(min(delay, left))
			select {
			case <-t.C:
			case <-s.quit:
				t.Stop()
				deadline = time.Now() // one more look, then answer
			}
			delay = min(2*delay, waitPollMax)
		}
		s.failed.Add(1)
		it.done(Result{ChannelID: req.ChannelID, ClientMessageID: req.ClientMessageID, Err: errInProgress})
	}()
}

// claimRetry is how often a waiter tries to claim the key it waits for.
const claimRetry = 200 * time.Millisecond

// isClosed reports whether Close was called.
func (s *Sequencer) isClosed() bool {
	s.closeMu.RLock()
	defer s.closeMu.RUnlock()
	return s.closed
}

// commit confirms the written batch b to the allocator. Users whose seqs
// went stale get new seqs: their inbox rows are written again under them
// (the old rows stay; see docs/sequencing.md) and committed, at most
// maxReplace times. Other errors are retried with backoff until ctx ends.
// It updates b.Inbox in place, so the Committed entries handed to publish
// carry the final seqs.
func (s *Sequencer) commit(ctx context.Context, a *Allocation, b *store.Batch) error {
	backoff := 20 * time.Millisecond
	for replaced := 0; ; {
		err := s.alloc.Commit(ctx, a)
		if err == nil {
			return nil
		}
		if errors.Is(err, ErrStale) {
			var users []string
			var se *StaleError
			if errors.As(err, &se) {
				users = se.Users
			} else {
				for u := range a.Users {
					users = append(users, u)
				}
			}
			if replaced >= maxReplace {
				return err
			}
			replaced++
			s.log.Warn("sequence: inbox seqs went stale before commit; placing the messages again", "users", len(users), "err", err)
			a2, err := s.replace(ctx, users, b)
			if err != nil {
				return err
			}
			a = a2
			continue
		}
		if ctx.Err() != nil {
			s.abort(a)
			return err
		}
		s.log.Warn("sequence: commit not confirmed; retrying", "err", err)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			s.abort(a)
			return err
		}
		backoff = min(2*backoff, time.Second)
	}
}

// replace allocates new seqs for users' entries of b (keeping their
// order), writes those inbox rows and returns the new allocation, not yet
// committed.
func (s *Sequencer) replace(ctx context.Context, users []string, b *store.Batch) (*Allocation, error) {
	counts := make(map[string]int, len(users))
	for _, u := range users {
		counts[u] = 0
	}
	for _, e := range b.Inbox {
		if _, ok := counts[e.UserID]; ok {
			counts[e.UserID]++
		}
	}
	for u, n := range counts {
		if n == 0 {
			delete(counts, u)
		}
	}
	if len(counts) == 0 {
		return nil, errors.New("sequence: allocator reported stale users that are not in the batch")
	}
	a, err := s.alloc.Allocate(ctx, s.opts.Now(), nil, counts)
	if err != nil {
		return nil, err
	}
	if err := checkAllocation(a, nil, counts); err != nil {
		s.abort(a)
		return nil, err
	}
	next := make(map[string]uint64, len(a.Users))
	for u, r := range a.Users {
		next[u] = r.First
	}
	rows := make([]store.InboxEntry, 0, len(b.Inbox))
	type msgKey struct {
		ch string
		id uint64
	}
	var moved map[msgKey]bool
	for i := range b.Inbox {
		e := &b.Inbox[i]
		if seq, ok := next[e.UserID]; ok {
			e.Seq = seq
			next[e.UserID] = seq + 1
			rows = append(rows, *e)
			if moved == nil {
				moved = make(map[msgKey]bool)
			}
			moved[msgKey{e.ChannelID, e.MessageID}] = true
		}
	}
	// The dedup records of the moved messages name their new placements
	// (written before the rows, as in every batch).
	var dedups []store.Dedup
	for i := range b.Dedup {
		d := &b.Dedup[i]
		if len(d.Inbox) == 0 || !moved[msgKey{d.ChannelID, d.MessageID}] {
			continue
		}
		d.Inbox = d.Inbox[:0]
		for _, e := range b.Inbox {
			if e.ChannelID == d.ChannelID && e.MessageID == d.MessageID {
				d.Inbox = append(d.Inbox, store.Placement{UserID: e.UserID, Seq: e.Seq})
			}
		}
		dedups = append(dedups, *d)
	}
	if err := s.st.AppendBatch(ctx, &store.Batch{Inbox: rows, Dedup: dedups}); err != nil {
		s.abort(a)
		return nil, err
	}
	return a, nil
}

// incomplete is a send found in the store whose batch did not finish (see
// findMissing): what must still be written.
type incomplete struct {
	req     *Request
	d       *store.Dedup
	missing []int          // indexes into d.Inbox whose row is absent
	msg     *store.Message // the stored message, nil if its row is absent
}

// maxCheckReads bounds the concurrent point reads of findMissing.
const maxCheckReads = 16

// findMissing checks that every row of the send recorded by d was written:
// its message and the inbox row of each placement. It returns nil if so.
// The cluster store writes dedup, then messages, then inbox rows, so a
// server that died in the middle of a batch leaves a record whose rows are
// partly missing; the rows that exist are visible to devices (their seqs
// were abandoned and readers passed them), so only the missing ones are
// placed again, under new seqs, and no device sees the message twice.
// Errors: the store failed.
func (s *Sequencer) findMissing(ctx context.Context, d *store.Dedup) (*incomplete, error) {
	var msg *store.Message
	absent := make([]bool, len(d.Inbox))
	err := parallel.Do(ctx, len(d.Inbox)+1, maxCheckReads, func(ctx context.Context, i int) error {
		if i == len(d.Inbox) {
			m, err := s.st.GetMessage(ctx, d.ChannelID, d.MessageID)
			if err == nil {
				msg = m
			} else if !errors.Is(err, store.ErrNotFound) {
				return err
			}
			return nil
		}
		pl := d.Inbox[i]
		e, err := s.st.InboxEntryAt(ctx, pl.UserID, pl.Seq)
		switch {
		case errors.Is(err, store.ErrNotFound):
			absent[i] = true
		case err != nil:
			return err
		case e.ChannelID != d.ChannelID || e.MessageID != d.MessageID:
			// Another message at that seq: the placement is not ours.
			absent[i] = true
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	inc := &incomplete{d: d, msg: msg}
	for k, a := range absent {
		if a {
			inc.missing = append(inc.missing, k)
		}
	}
	if msg != nil && len(inc.missing) == 0 {
		return nil, nil
	}
	return inc, nil
}

// placeRepair adds to b what p.repair lacks: the message row if absent,
// the missing inbox placements under the seqs allocated for this batch,
// and the dedup record with its new placements (written first). The
// repaired placements are published like a new message's; the sender gets
// the original ack (Duplicate).
func (s *Sequencer) placeRepair(p *pending, b *store.Batch, committed []Committed) []Committed {
	inc := p.repair
	req, d := inc.req, *inc.d
	m := inc.msg
	if m == nil {
		kind := req.Kind
		if kind == 0 {
			kind = store.KindText
		}
		m = &store.Message{
			ChannelID: d.ChannelID, MessageID: d.MessageID, SenderID: req.SenderID,
			SenderDeviceID: req.SenderDeviceID, ClientMessageID: req.ClientMessageID,
			Text: req.Text, CreatedAt: d.CreatedAt.UTC(), Kind: kind,
			RefMessageID: req.RefMessageID, ForUser: req.ForUser,
		}
		b.Messages = append(b.Messages, m)
	}
	d.Inbox = slices.Clone(d.Inbox)
	start := len(b.Inbox)
	for _, k := range inc.missing {
		u := d.Inbox[k].UserID
		seq := s.nextSeq[u]
		s.nextSeq[u] = seq + 1
		d.Inbox[k].Seq = seq
		b.Inbox = append(b.Inbox, store.InboxEntry{UserID: u, Seq: seq, ChannelID: d.ChannelID, MessageID: d.MessageID})
	}
	b.Dedup = append(b.Dedup, d)
	p.commit = len(committed)
	s.log.Warn("sequence: completing a send whose batch did not finish (its server died or failed mid-write)",
		"channel", d.ChannelID, "message_id", d.MessageID, "replaced_inbox_entries", len(inc.missing), "message_row_rewritten", inc.msg == nil)
	return append(committed, Committed{Message: m, Inbox: b.Inbox[start:len(b.Inbox):len(b.Inbox)]})
}

// placements lists where entries place their message.
func placements(entries []store.InboxEntry) []store.Placement {
	out := make([]store.Placement, len(entries))
	for i, e := range entries {
		out[i] = store.Placement{UserID: e.UserID, Seq: e.Seq}
	}
	return out
}

// isLocal reports whether a is the single-node allocator, i.e. this
// sequencer is the only writer of the store.
func isLocal(a Allocator) bool {
	_, ok := a.(*LocalAllocator)
	return ok
}

func seen(list []string, u string) bool {
	for _, v := range list {
		if v == u {
			return true
		}
	}
	return false
}

func dupResult(d store.Dedup) Result {
	return Result{ChannelID: d.ChannelID, MessageID: d.MessageID, CreatedAt: d.CreatedAt.UTC(), ClientMessageID: d.ClientMessageID, Duplicate: true}
}

// Fingerprint identifies the content of req's message: a 64-bit FNV-1a
// hash of its channel, kind (0 counts as KindText), ref, for-user and
// text, each length-prefixed so that no two distinct tuples share an
// encoding. Stable across processes and versions (it is stored with the
// dedup record); never 0, which means "unknown" in a store.Dedup.
func Fingerprint(req *Request) uint64 {
	kind := req.Kind
	if kind == 0 {
		kind = store.KindText
	}
	h := fnv.New64a()
	var n [binary.MaxVarintLen64]byte
	field := func(s string) {
		h.Write(n[:binary.PutUvarint(n[:], uint64(len(s)))])
		h.Write([]byte(s))
	}
	field(req.ChannelID)
	h.Write(n[:binary.PutUvarint(n[:], uint64(kind))])
	h.Write(n[:binary.PutUvarint(n[:], req.RefMessageID)])
	field(req.ForUser)
	field(req.Text)
	if v := h.Sum64(); v != 0 {
		return v
	}
	return 1
}

// reused returns the error for req when d, the recorded send of its
// (sender, client_message_id), is a different message (see errReused); nil
// when it is the same message, or when d has no fingerprint (recorded
// before fingerprints existed: answered as a duplicate, as before).
func CheckReuse(req *Request, d *store.Dedup) error {
	if d.Fingerprint == 0 || d.Fingerprint == Fingerprint(req) {
		return nil
	}
	return errReused(req, d)
}

// errReused is the FailedPrecondition answer to a send whose
// client_message_id already names a different message of the same sender
// (another channel or other content): nothing of it is stored. d is the
// recorded send, nil for an earlier send of the same batch.
func errReused(req *Request, d *store.Dedup) error {
	if d == nil {
		return store.Errorf(store.CodeFailedPrecondition,
			"client_message_id reused for a different message: %q already names another send in progress (other channel or content); use a new client_message_id for a new message", req.ClientMessageID)
	}
	return store.Errorf(store.CodeFailedPrecondition,
		"client_message_id reused for a different message: %q already names message %d in %s (other channel or content); use a new client_message_id for a new message", req.ClientMessageID, d.MessageID, d.ChannelID)
}
