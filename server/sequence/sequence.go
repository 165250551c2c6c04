// Package sequence is the group-commit sequencer of the chat core: the one
// place where messages get their ids and inbox positions and become
// durable.
//
// One goroutine owns the id caches. It takes queued requests in submission
// order (FIFO), up to Options.MaxBatch at a time, and for each one
//
//   - deduplicates it by (sender, client_message_id): earlier requests of
//     the same batch, then an in-memory LRU of recent sends, then
//     store.LookupDedup. A duplicate gets the original ack
//     (Result.Duplicate) and stores nothing;
//   - assigns message_id = max(last_message_id(channel)+1, unix_ms<<16) and
//     created_at (server clock, ms);
//   - assigns one inbox seq (last+1, dense) per recipient user.
//
// The whole batch is then written with ONE store.AppendBatch (durable).
// Only after it returns does the goroutine call publish (the fan-out) and
// then each request's done callback, in submission order. Because a single
// goroutine assigns and commits in order, no reader ever sees inbox seq N+1
// before N is durable. If AppendBatch fails, every request of the batch
// fails with Unavailable and the id caches are dropped (reloaded from the
// store on next use), so nothing uncommitted is ever visible.
//
// The last message_id of a channel and the last inbox seq of a user are
// recovered from the store (LastMessageID, LastInboxSeq) the first time they
// are needed after start, so ids never go backwards across restarts.
package sequence

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/chatd/chatd/server/store"
)

// Defaults for Options fields left zero.
const (
	DefaultQueueSize  = 8192
	DefaultMaxBatch   = 512
	DefaultCacheLimit = 1 << 20
	DefaultDedupCache = 1 << 16
)

// Options tune a Sequencer. Zero values take the defaults above.
type Options struct {
	// QueueSize bounds the number of submitted, not yet sequenced
	// requests; Submit blocks while the queue is full (backpressure).
	QueueSize int
	// MaxBatch is the largest number of requests written by one
	// AppendBatch.
	MaxBatch int
	// CacheLimit bounds each id cache (channels' last message_id, users'
	// last inbox seq), in entries. When a cache grows past it, it is
	// dropped and reloaded lazily from the store.
	CacheLimit int
	// DedupCache is the number of recent (sender, client_message_id) pairs
	// remembered in memory, in front of store.LookupDedup.
	DedupCache int
	// Now is the server clock; default time.Now.
	Now func() time.Time
	// StoreTimeout bounds each store call made by the sequencer goroutine;
	// default 10 s.
	StoreTimeout time.Duration
	// OnBatch, if set, is called on the sequencer goroutine after every
	// successful commit with the number of requests in the batch, the
	// number of messages written and how long AppendBatch took. It must
	// not block (metrics hook).
	OnBatch func(requests, messages int, commit time.Duration)
	// Logger receives commit failures; default slog.Default().
	Logger *slog.Logger
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
	// Err is nil on success, otherwise a gRPC status error: Unavailable
	// (the store failed or the sequencer is closed) or InvalidArgument (a
	// malformed request). Nothing of a failed request is visible.
	Err error
}

// Committed is one durably stored message with its inbox entries (one per
// recipient user, in recipient order), handed to the publish callback.
type Committed struct {
	Message *store.Message
	Inbox   []store.InboxEntry
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
var ErrClosed = status.Error(codes.Unavailable, "sequencer closed: server shutting down, retry")

var errCommit = status.Error(codes.Unavailable, "message not stored: storage unavailable, retry with the same client_message_id")

type item struct {
	req  *Request
	done func(Result)
}

// Sequencer is the group-commit sequencer. Methods are safe for concurrent
// use.
type Sequencer struct {
	st      store.Messages
	publish func([]Committed)
	opts    Options
	log     *slog.Logger

	closeMu sync.RWMutex // RLock: Submit is enqueueing; Lock: Close
	closed  bool
	queue   chan item
	stopped chan struct{}

	batches, messages, duplicates, failed atomic.Uint64

	// Owned by the sequencer goroutine.
	lastMsg map[string]uint64
	lastSeq map[string]uint64
	dedup   *lru
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
	if opts.StoreTimeout <= 0 {
		opts.StoreTimeout = 10 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	s := &Sequencer{
		st:      st,
		publish: publish,
		opts:    opts,
		log:     opts.Logger,
		queue:   make(chan item, opts.QueueSize),
		stopped: make(chan struct{}),
		lastMsg: make(map[string]uint64),
		lastSeq: make(map[string]uint64),
		dedup:   newLRU(opts.DedupCache),
	}
	go s.run()
	return s
}

// Submit queues req; done is called exactly once, on the sequencer
// goroutine, after the request's batch is durable (or failed). done must
// not block. Requests are sequenced in the order Submit is called (FIFO),
// so one caller's consecutive submissions keep their order. Submit blocks
// while the queue is full. After Close, done is called at once with
// ErrClosed. req must not be modified after Submit.
func (s *Sequencer) Submit(req *Request, done func(Result)) {
	_ = s.SubmitContext(context.Background(), req, done)
}

// SubmitContext is Submit that stops waiting for queue space when ctx ends:
// it then returns ctx's error as a status (Canceled or DeadlineExceeded)
// and done is never called. On a nil return done will be called exactly
// once.
func (s *Sequencer) SubmitContext(ctx context.Context, req *Request, done func(Result)) error {
	if done == nil {
		done = func(Result) {}
	}
	s.closeMu.RLock()
	if s.closed {
		s.closeMu.RUnlock()
		s.failed.Add(1)
		done(Result{ChannelID: req.ChannelID, ClientMessageID: req.ClientMessageID, Err: ErrClosed})
		return nil
	}
	select {
	case s.queue <- item{req, done}:
		s.closeMu.RUnlock()
		return nil
	default:
	}
	select {
	case s.queue <- item{req, done}:
		s.closeMu.RUnlock()
		return nil
	case <-ctx.Done():
		s.closeMu.RUnlock()
		return status.FromContextError(ctx.Err()).Err()
	}
}

// Do submits req and waits for its Result. If ctx ends first it returns
// ctx's error as a status (the request may still be committed later).
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
		return Result{}, status.FromContextError(ctx.Err()).Err()
	}
}

// Head returns the user's newest committed inbox seq (0 if the inbox is
// empty). It reads the durable store, so every seq <= Head is readable by
// store.Inbox. Errors: Unavailable if the store fails.
func (s *Sequencer) Head(ctx context.Context, userID string) (uint64, error) {
	h, err := s.st.LastInboxSeq(ctx, userID)
	if err != nil {
		if ctx.Err() != nil {
			return 0, status.FromContextError(ctx.Err()).Err()
		}
		return 0, status.Error(codes.Unavailable, "inbox head unavailable, retry")
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
}

func (s *Sequencer) run() {
	defer close(s.stopped)
	batch := make([]item, 0, s.opts.MaxBatch)
	for {
		it, ok := <-s.queue
		if !ok {
			return
		}
		batch = append(batch[:0], it)
	drain:
		for len(batch) < s.opts.MaxBatch {
			select {
			case it, ok := <-s.queue:
				if !ok {
					break drain
				}
				batch = append(batch, it)
			default:
				break drain
			}
		}
		s.process(batch)
		clear(batch) // drop references for the GC
	}
}

// pending is the per-request state of one batch.
type pending struct {
	res    Result
	dupOf  int // index of the earlier request in the batch it duplicates, or -1
	commit int // index into committed, or -1
}

func (s *Sequencer) process(batch []item) {
	ctx, cancel := context.WithTimeout(context.Background(), s.opts.StoreTimeout)
	defer cancel()

	ps := make([]pending, len(batch))
	var (
		b         store.Batch
		committed []Committed
		inBatch   map[dedupKey]int // dedup key -> index in batch
		failErr   error
	)
	b.Messages = make([]*store.Message, 0, len(batch))
	committed = make([]Committed, 0, len(batch))
	now := s.opts.Now()
	nowMS := now.UnixMilli()
	if nowMS < 0 {
		nowMS = 0
	}
	createdAt := time.UnixMilli(nowMS).UTC()
	floor := uint64(nowMS) << 16

	for i := range batch {
		req := batch[i].req
		p := &ps[i]
		p.dupOf, p.commit = -1, -1
		p.res.ChannelID = req.ChannelID
		p.res.ClientMessageID = req.ClientMessageID
		if failErr != nil {
			continue
		}
		if req.ChannelID == "" || req.SenderID == "" {
			p.res.Err = status.Error(codes.InvalidArgument, "sequence: request without channel or sender")
			continue
		}
		// Deduplicate.
		if req.ClientMessageID != "" {
			k := dedupKey{req.SenderID, req.ClientMessageID}
			if j, ok := inBatch[k]; ok {
				p.dupOf = j
				continue
			}
			if d, ok := s.dedup.get(k); ok {
				p.res = dupResult(d)
				continue
			}
			d, err := s.st.LookupDedup(ctx, req.SenderID, req.ClientMessageID)
			switch {
			case err == nil:
				s.dedup.put(k, *d)
				p.res = dupResult(*d)
				continue
			case errors.Is(err, store.ErrNotFound):
			default:
				failErr = err
				continue
			}
			if inBatch == nil {
				inBatch = make(map[dedupKey]int)
			}
			inBatch[k] = i
		}
		// Assign the message id.
		last, err := s.lastMessageID(ctx, req.ChannelID)
		if err != nil {
			failErr = err
			continue
		}
		id := max(last+1, floor)
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
		}
		// Assign inbox seqs.
		start := len(b.Inbox)
		for ri, u := range req.Recipients {
			if u == "" || seen(req.Recipients[:ri], u) {
				continue
			}
			seq, err := s.lastInboxSeq(ctx, u)
			if err != nil {
				failErr = err
				break
			}
			seq++
			s.lastSeq[u] = seq
			b.Inbox = append(b.Inbox, store.InboxEntry{UserID: u, Seq: seq, ChannelID: req.ChannelID, MessageID: id})
		}
		if failErr != nil {
			continue
		}
		s.lastMsg[req.ChannelID] = id
		b.Messages = append(b.Messages, m)
		if req.ClientMessageID != "" {
			b.Dedup = append(b.Dedup, store.Dedup{
				SenderID: req.SenderID, ClientMessageID: req.ClientMessageID,
				ChannelID: req.ChannelID, MessageID: id, CreatedAt: createdAt,
			})
		}
		p.commit = len(committed)
		committed = append(committed, Committed{Message: m, Inbox: b.Inbox[start:len(b.Inbox):len(b.Inbox)]})
		p.res = Result{ChannelID: req.ChannelID, MessageID: id, CreatedAt: createdAt, ClientMessageID: req.ClientMessageID, Message: m}
	}

	if failErr == nil && len(b.Messages) > 0 {
		t0 := time.Now()
		failErr = s.st.AppendBatch(ctx, &b)
		if failErr == nil {
			s.batches.Add(1)
			s.messages.Add(uint64(len(b.Messages)))
			if s.opts.OnBatch != nil {
				s.opts.OnBatch(len(batch), len(b.Messages), time.Since(t0))
			}
		}
	}
	if failErr != nil {
		s.log.Error("sequence: commit failed; failing batch", "requests", len(batch), "err", failErr)
		// Nothing of this batch is visible: forget every id handed out.
		s.lastMsg = make(map[string]uint64)
		s.lastSeq = make(map[string]uint64)
		s.failed.Add(uint64(len(batch)))
		for i := range batch {
			batch[i].done(Result{ChannelID: ps[i].res.ChannelID, ClientMessageID: ps[i].res.ClientMessageID, Err: errCommit})
		}
		return
	}
	for _, d := range b.Dedup {
		s.dedup.put(dedupKey{d.SenderID, d.ClientMessageID}, d)
	}
	if len(s.lastMsg) > s.opts.CacheLimit {
		s.lastMsg = make(map[string]uint64)
	}
	if len(s.lastSeq) > s.opts.CacheLimit {
		s.lastSeq = make(map[string]uint64)
	}
	if len(committed) > 0 && s.publish != nil {
		s.publish(committed)
	}
	for i := range batch {
		p := &ps[i]
		if p.dupOf >= 0 {
			o := ps[p.dupOf].res
			p.res = Result{ChannelID: o.ChannelID, MessageID: o.MessageID, CreatedAt: o.CreatedAt, ClientMessageID: o.ClientMessageID, Duplicate: true}
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

func (s *Sequencer) lastMessageID(ctx context.Context, channelID string) (uint64, error) {
	if v, ok := s.lastMsg[channelID]; ok {
		return v, nil
	}
	v, err := s.st.LastMessageID(ctx, channelID)
	if err != nil {
		return 0, err
	}
	s.lastMsg[channelID] = v
	return v, nil
}

func (s *Sequencer) lastInboxSeq(ctx context.Context, userID string) (uint64, error) {
	if v, ok := s.lastSeq[userID]; ok {
		return v, nil
	}
	v, err := s.st.LastInboxSeq(ctx, userID)
	if err != nil {
		return 0, err
	}
	s.lastSeq[userID] = v
	return v, nil
}
