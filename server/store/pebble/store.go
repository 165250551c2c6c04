// Package pebble implements store.Store on an embedded Pebble LSM
// (github.com/cockroachdb/pebble/v2): the single-node default of chatd.
//
// # Key layout
//
// Every key starts with a one-byte table prefix. Ids are raw UTF-8 bytes
// terminated by 0x00 when another component follows (ids never contain
// 0x00; methods reject such ids with ErrInvalidID), numbers are big-endian
// uint64 so that byte order equals numeric order:
//
//	m channel_id 0x00 be64(message_id)    -> message (sender, text, ...)
//	i user_id 0x00 be64(seq)              -> inbox reference (channel_id, message_id)
//	d sender_id 0x00 client_message_id    -> dedup (channel_id, message_id, created_at)
//	u user_id                             -> user
//	v user_id 0x00 device_id              -> device (incl. cursor)
//	c user_id 0x00 contact_id             -> empty
//	h channel_id                          -> channel
//	g channel_id 0x00 user_id             -> member (role, joined_at)
//	r user_id 0x00 channel_id             -> empty (reverse index of g)
//	a channel_id                          -> activity: be64(last message_id), be64(unix ms)
//	k channel_id 0x00 user_id 0x00 marker -> be64(message_id): receipts
//	x channel_id 0x00 be64(ref) be64(id)  -> revision (kind, sender, for_user, text, created_at)
//	s user_id                             -> conversation settings (hide read receipts)
//	P user_id 0x00 device_id              -> push target (kind, address, keys, topic, ...)
//	M user_id 0x00 channel_id             -> channel mute (until, absent = forever)
//	S user_id                             -> push settings (previews)
//	Q be64(id)                            -> queued push job (store.PushQueue)
//
// Values are protobuf wire format (protowire) without the fields already in
// the key; times have millisecond precision and are returned in UTC. An
// inbox entry holds only a reference; Inbox joins it with the message by a
// point Get, so a message's text is stored once however many inboxes it
// reaches.
//
// # Durability and concurrency
//
// Every write is one Pebble batch committed with pebble.Sync, so it is on
// disk when the method returns; Pebble's commit pipeline coalesces the WAL
// fsyncs of concurrent commits (group commit). One exception is
// AdvanceCursor, committed with pebble.NoSync: it is in the WAL (and seen
// by every reader) when the method returns, and on disk at the next synced
// commit or at Close, but a crash before either may lose the last advances.
// That only redelivers entries the device already received (clients dedup
// by inbox seq); every message itself was fsync'd by AppendBatch before it
// could be delivered and acked. Syncing every Ack put one fsync per ack in
// the queue of the WAL that the group commits of sends wait on.
// AdvanceReceipts that moves only delivery markers (what each Ack does) is
// committed the same way: a crash may roll a delivery marker back to an
// earlier ack, which the device's next ack moves again; a batch that moves
// a read marker (MarkRead) is fsync'd.
//
// Check-then-write operations (CreateUser, UpdateDisplayName, PutDevice,
// AdvanceCursor, CreateChannel, AddMember, RemoveMember) hold one of 256
// striped mutexes chosen by hashing the row key; there is no global lock.
// AppendBatch takes no lock at all: the channel activity record is written
// with a Pebble merge operator that keeps the highest message_id, so
// concurrent or replayed batches never move it backwards.
//
// # Files and imports
//
// One file per concern, as in store/scylla: store.go (Open, Close, the
// key-value helpers), codec.go (keys and values), messages.go
// (AppendBatch, History, ...), inbox.go, dedup.go, cursors.go,
// accounts.go (users, devices, contacts), channels.go (channels,
// members), conversation.go (receipts, revisions, settings), push.go (push targets,
// mutes, push settings, the push queue). The package
// speaks Pebble only: it must not import gRPC, CQL or Redis packages, nor
// any chatd package but store.
package pebble

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"

	"github.com/chatd/chatd/server/store"
)

// ErrClosed is returned by every method after Close.
var ErrClosed = errors.New("pebble store: closed")

// Store is a store.Store on a Pebble database. It is safe for concurrent
// use.
type Store struct {
	db     *pebble.DB
	closed atomic.Bool
	// ops is read-locked by every call while it runs and write-locked by
	// Close: a call racing with Close gets ErrClosed instead of touching a
	// closed database (which panics in Pebble).
	ops   sync.RWMutex
	seed  maphash.Seed
	locks [256]sync.Mutex
	// createMu serialises CreateUser: a user and its skeleton record are
	// two keys that no stripe of locks covers together.
	createMu sync.Mutex
	dir      string
	log      *slog.Logger
	flushed  flushes
	// pushMu guards the push queue's id counter, read from the highest
	// stored id on first use.
	pushMu     sync.Mutex
	pushID     uint64
	pushIDRead bool
}

var _ store.Store = (*Store)(nil)

type config struct {
	logger       *slog.Logger
	cacheSize    int64
	memTableSize uint64
}

// Option configures Open.
type Option func(*config)

// WithLogger sends Pebble's log output to l (info messages at debug level,
// errors at error level). nil discards it. Default: slog.Default().
func WithLogger(l *slog.Logger) Option {
	return func(c *config) {
		if l == nil {
			l = slog.New(slog.DiscardHandler)
		}
		c.logger = l
	}
}

// memTableStopWrites is how many memtables may queue before writes stall.
const memTableStopWrites = 4

// WithCacheSize sets the block cache size in bytes (default 64 MiB), on
// top of the memtables that pebble accounts in the same cache.
func WithCacheSize(bytes int64) Option {
	return func(c *config) {
		if bytes > 0 {
			c.cacheSize = bytes
		}
	}
}

// WithMemTableSize sets the memtable size in bytes (default 32 MiB).
func WithMemTableSize(bytes uint64) Option {
	return func(c *config) {
		if bytes > 0 {
			c.memTableSize = bytes
		}
	}
}

// Open opens (creating if needed) the store in directory dir.
//
// Pebble options, tuned for an append-heavy log with point reads:
//   - 64 MiB block cache (WithCacheSize), plus room in it for the
//     memtables that pebble reserves there;
//   - 32 MiB memtables (WithMemTableSize), so bursts of appends are absorbed
//     in memory and flushed in large sorted runs, with up to 4 queued
//     memtables before writes stall;
//   - 10-bit bloom filters on every level, because GetMessage, the inbox
//     join and the account lookups are point Gets;
//   - the newest on-disk format; the activity merge operator.
func Open(dir string, opts ...Option) (*Store, error) {
	cfg := config{logger: slog.Default(), cacheSize: 64 << 20, memTableSize: 32 << 20}
	for _, o := range opts {
		o(&cfg)
	}
	// Pebble accounts its memtables inside the block cache: every memtable
	// it allocates (up to MemTableStopWritesThreshold of them, plus one it
	// keeps for reuse) reserves its size there (pebble db.go, newMemTable:
	// Cache.Reserve). A cache no larger than those memtables holds no block
	// once they have grown, and every point read decodes its index and
	// filter blocks from disk again (measured: 10x slower dedup lookups).
	// So the cache is sized for both: cacheSize is left for blocks.
	cache := pebble.NewCache(cfg.cacheSize + int64(cfg.memTableSize)*(memTableStopWrites+1))
	defer cache.Unref()
	po := &pebble.Options{
		Cache:                       cache,
		MemTableSize:                cfg.memTableSize,
		MemTableStopWritesThreshold: memTableStopWrites,
		FormatMajorVersion:          pebble.FormatNewest,
		Merger:                      activityMerger,
		Logger:                      slogLogger{cfg.logger},
	}
	for i := range po.Levels {
		po.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
	}
	s := &Store{seed: maphash.MakeSeed(), dir: dir, log: cfg.logger}
	po.EventListener = s.flushed.listener()
	walN, walBytes := walFiles(dir)
	t0 := time.Now()
	db, err := pebble.Open(dir, po)
	if err != nil {
		if isLockBusy(err) {
			return nil, lockedError(dir, err)
		}
		return nil, fmt.Errorf("pebble store: open %s: %w", dir, err)
	}
	s.db = db
	s.opened(walN, walBytes, time.Since(t0))
	return s, nil
}

// Close waits for the calls in progress, then flushes and closes the
// database. Further calls return ErrClosed.
func (s *Store) Close() error {
	s.ops.Lock()
	defer s.ops.Unlock()
	if s.closed.Swap(true) {
		return ErrClosed
	}
	return s.closeDB()
}

// slogLogger adapts slog to pebble.Logger.
type slogLogger struct{ l *slog.Logger }

func (g slogLogger) Infof(format string, args ...any) {
	if g.l.Enabled(context.Background(), slog.LevelDebug) {
		g.l.Debug("pebble: " + fmt.Sprintf(format, args...))
	}
}

func (g slogLogger) Errorf(format string, args ...any) {
	g.l.Error("pebble: " + fmt.Sprintf(format, args...))
}

// Fatalf is called by Pebble on unrecoverable conditions (e.g. a disk stall
// or corruption); like Pebble's default logger it exits the process.
func (g slogLogger) Fatalf(format string, args ...any) {
	g.l.Error("pebble fatal: " + fmt.Sprintf(format, args...))
	os.Exit(1)
}

// check starts a call: it fails with ErrClosed after Close, or with
// ctx's error; on success the caller holds ops' read lock until it
// returns (Close waits for it, so no call touches a closed database).
func (s *Store) check(ctx context.Context) error {
	s.ops.RLock()
	if s.closed.Load() {
		s.ops.RUnlock()
		return ErrClosed
	}
	if err := ctx.Err(); err != nil {
		s.ops.RUnlock()
		return err
	}
	return nil
}

// lock locks the stripe of key and returns its mutex for unlocking.
func (s *Store) lock(key []byte) *sync.Mutex {
	mu := &s.locks[maphash.Bytes(s.seed, key)%uint64(len(s.locks))]
	mu.Lock()
	return mu
}

// get calls fn with the value of key; store.ErrNotFound if absent. The value
// is only valid during fn.
func (s *Store) get(key []byte, fn func(v []byte) error) error {
	v, closer, err := s.db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return store.ErrNotFound
	}
	if err != nil {
		return err
	}
	defer closer.Close()
	return fn(v)
}

// getChecked is a point read of the Store API: it checks the store and
// ctx (s.check), then ids (checkIDs), then reads key and decodes its value
// (getAs); store.ErrNotFound if the key is absent.
func getChecked[T any](ctx context.Context, s *Store, ids []string, key []byte, decode func(v []byte) (T, error)) (T, error) {
	if err := s.check(ctx); err != nil {
		var zero T
		return zero, err
	}
	defer s.ops.RUnlock()
	if err := checkIDs(ids...); err != nil {
		var zero T
		return zero, err
	}
	return getAs(s, key, decode)
}

// getAs reads key and decodes its value; store.ErrNotFound if absent.
func getAs[T any](s *Store, key []byte, decode func(v []byte) (T, error)) (T, error) {
	var out T
	err := s.get(key, func(v []byte) (err error) {
		out, err = decode(v)
		return err
	})
	if err != nil {
		var zero T
		return zero, err
	}
	return out, nil
}

// absent returns store.ErrAlreadyExists if key exists (the caller holds
// its lock), or the read's error.
func (s *Store) absent(key []byte) error {
	ok, err := s.exists(key)
	if err == nil && ok {
		err = store.ErrAlreadyExists
	}
	return err
}

func (s *Store) exists(key []byte) (bool, error) {
	err := s.get(key, func([]byte) error { return nil })
	if errors.Is(err, store.ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// set writes one key durably.
func (s *Store) set(key, value []byte) error {
	return s.db.Set(key, value, pebble.Sync)
}

// lastUnder returns the be64 suffix of the last key under t a 0x00, or 0.
func (s *Store) lastUnder(t byte, a string) (uint64, error) {
	lo, hi := prefixBounds(t, a)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return 0, err
	}
	var n uint64
	if it.Last() {
		k := it.Key()
		if len(k) != len(lo)+8 {
			it.Close()
			return 0, errCorrupt
		}
		n = beUint64(k[len(lo):])
	}
	if err := it.Close(); err != nil {
		return 0, err
	}
	return n, nil
}

func beUint64(b []byte) uint64 {
	return uint64(b[0])<<56 | uint64(b[1])<<48 | uint64(b[2])<<40 | uint64(b[3])<<32 |
		uint64(b[4])<<24 | uint64(b[5])<<16 | uint64(b[6])<<8 | uint64(b[7])
}

// scan calls fn with the suffix (after t a 0x00) and value of every key
// under t a 0x00, in key order. Both are only valid during fn.
func (s *Store) scan(t byte, a string, fn func(suffix, v []byte) error) error {
	lo, hi := prefixBounds(t, a)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return err
	}
	for ok := it.First(); ok; ok = it.Next() {
		v, err := it.ValueAndErr()
		if err == nil {
			err = fn(it.Key()[len(lo):], v)
		}
		if err != nil {
			it.Close()
			return err
		}
	}
	return it.Close()
}
