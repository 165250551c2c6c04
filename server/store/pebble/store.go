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
// fsyncs of concurrent commits (group commit). The one exception is
// AdvanceCursor, committed with pebble.NoSync: it is in the WAL (and seen
// by every reader) when the method returns, and on disk at the next synced
// commit or at Close, but a crash before either may lose the last advances.
// That only redelivers entries the device already received (clients dedup
// by inbox seq); every message itself was fsync'd by AppendBatch before it
// could be delivered and acked. Syncing every Ack put one fsync per ack in
// the queue of the WAL that the group commits of sends wait on.
//
// Check-then-write operations (CreateUser, UpdateDisplayName, PutDevice,
// AdvanceCursor, CreateChannel, AddMember, RemoveMember) hold one of 256
// striped mutexes chosen by hashing the row key; there is no global lock.
// AppendBatch takes no lock at all: the channel activity record is written
// with a Pebble merge operator that keeps the highest message_id, so
// concurrent or replayed batches never move it backwards.
package pebble

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

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
	db, err := pebble.Open(dir, po)
	if err != nil {
		return nil, fmt.Errorf("pebble store: open %s: %w", dir, err)
	}
	return &Store{db: db, seed: maphash.MakeSeed()}, nil
}

// Close waits for the calls in progress, then flushes and closes the
// database. Further calls return ErrClosed.
func (s *Store) Close() error {
	s.ops.Lock()
	defer s.ops.Unlock()
	if s.closed.Swap(true) {
		return ErrClosed
	}
	return s.db.Close()
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

// ---------------------------------------------------------------- Messages

// AppendBatch writes messages, inbox references, dedup records and the
// channels' activity in one Pebble batch committed with fsync. Rewriting
// the same rows is idempotent. A nil message or an id containing 0x00
// fails the whole batch (ErrInvalidID) and writes nothing.
func (s *Store) AppendBatch(ctx context.Context, b *store.Batch) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	defer s.ops.RUnlock()
	if b == nil {
		return nil
	}
	for _, m := range b.Messages {
		if m == nil {
			return errors.New("pebble store: nil message in batch")
		}
		if err := checkIDs(m.ChannelID); err != nil {
			return err
		}
	}
	for i := range b.Inbox {
		if err := checkIDs(b.Inbox[i].UserID, b.Inbox[i].ChannelID); err != nil {
			return err
		}
	}
	for i := range b.Dedup {
		d := &b.Dedup[i]
		if err := checkIDs(d.SenderID, d.ClientMessageID, d.ChannelID); err != nil {
			return err
		}
	}
	if len(b.Messages) == 0 && len(b.Inbox) == 0 && len(b.Dedup) == 0 {
		return nil
	}

	wb := s.db.NewBatch()
	defer wb.Close()
	var key, val []byte // Batch.Set copies, so the buffers are reused
	for i, m := range b.Messages {
		key = appendKeyN(key[:0], tMessage, m.ChannelID, m.MessageID)
		val = encodeMessage(val[:0], m)
		if err := wb.Set(key, val, nil); err != nil {
			return err
		}
		// Activity: one merge operand per channel, for its newest message
		// of this batch (batches hold few channels; a linear scan beats a
		// map).
		newest := true
		for j, o := range b.Messages {
			if j != i && o.ChannelID == m.ChannelID &&
				(o.MessageID > m.MessageID || (o.MessageID == m.MessageID && j > i)) {
				newest = false
				break
			}
		}
		if newest {
			key = append(append(key[:0], tActivity), m.ChannelID...)
			val = encodeActivity(val[:0], m.MessageID, m.CreatedAt)
			if err := wb.Merge(key, val, nil); err != nil {
				return err
			}
		}
		if isRevision(m) {
			key = appendRevisionKey(key[:0], m.ChannelID, m.RefMessageID, m.MessageID)
			val = encodeRevision(val[:0], m)
			if err := wb.Set(key, val, nil); err != nil {
				return err
			}
		}
	}
	for i := range b.Inbox {
		e := &b.Inbox[i]
		key = appendKeyN(key[:0], tInbox, e.UserID, e.Seq)
		val = encodeRef(val[:0], e.ChannelID, e.MessageID)
		if err := wb.Set(key, val, nil); err != nil {
			return err
		}
	}
	for i := range b.Dedup {
		d := &b.Dedup[i]
		key = appendKey2(key[:0], tDedup, d.SenderID, d.ClientMessageID)
		val = encodeDedup(val[:0], d)
		if err := wb.Set(key, val, nil); err != nil {
			return err
		}
	}
	return wb.Commit(pebble.Sync)
}

func appendKeyN(k []byte, t byte, a string, n uint64) []byte {
	k = append(k, t)
	k = append(k, a...)
	k = append(k, 0)
	return append(k, byte(n>>56), byte(n>>48), byte(n>>40), byte(n>>32),
		byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
}

func appendKey2(k []byte, t byte, a, b string) []byte {
	k = append(k, t)
	k = append(k, a...)
	k = append(k, 0)
	return append(k, b...)
}

// LastMessageID returns the highest message_id of the channel, 0 if none.
func (s *Store) LastMessageID(ctx context.Context, channelID string) (uint64, error) {
	if err := s.check(ctx); err != nil {
		return 0, err
	}
	defer s.ops.RUnlock()
	if err := checkIDs(channelID); err != nil {
		return 0, err
	}
	return s.lastUnder(tMessage, channelID)
}

// LastInboxSeq returns the highest inbox seq of the user, 0 if none.
func (s *Store) LastInboxSeq(ctx context.Context, userID string) (uint64, error) {
	if err := s.check(ctx); err != nil {
		return 0, err
	}
	defer s.ops.RUnlock()
	if err := checkIDs(userID); err != nil {
		return 0, err
	}
	return s.lastUnder(tInbox, userID)
}

// GetMessage returns one message or store.ErrNotFound.
func (s *Store) GetMessage(ctx context.Context, channelID string, messageID uint64) (*store.Message, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	defer s.ops.RUnlock()
	if err := checkIDs(channelID); err != nil {
		return nil, err
	}
	return getAs(s, keyN(tMessage, channelID, messageID), func(v []byte) (*store.Message, error) { return decodeMessage(channelID, messageID, v) })
}

// History returns up to limit messages of the channel in ascending
// message_id order, reading forward from after (exclusive) if after > 0,
// else backward from before (exclusive; 0 = newest). more reports whether
// further messages exist in the reading direction. limit <= 0 returns no
// messages; more then reports whether any exist in that direction.
func (s *Store) History(ctx context.Context, channelID string, before, after uint64, limit int) ([]*store.Message, bool, error) {
	if err := s.check(ctx); err != nil {
		return nil, false, err
	}
	defer s.ops.RUnlock()
	if err := checkIDs(channelID); err != nil {
		return nil, false, err
	}
	limit = max(limit, 0)
	lo, hi := prefixBounds(tMessage, channelID)
	plen := len(lo)
	if after > 0 {
		if after == ^uint64(0) {
			return nil, false, nil
		}
		lo = keyN(tMessage, channelID, after+1)
	} else if before > 0 {
		hi = keyN(tMessage, channelID, before)
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return nil, false, err
	}
	defer it.Close()
	var msgs []*store.Message
	if limit > 0 {
		msgs = make([]*store.Message, 0, min(limit, 256))
	}
	more := false
	valid := it.Last
	step := it.Prev
	if after > 0 {
		valid, step = it.First, it.Next
	}
	for ok := valid(); ok; ok = step() {
		if len(msgs) == limit {
			more = true
			break
		}
		k := it.Key()
		if len(k) != plen+8 {
			return nil, false, errCorrupt
		}
		v, err := it.ValueAndErr()
		if err != nil {
			return nil, false, err
		}
		m, err := decodeMessage(channelID, beUint64(k[plen:]), v)
		if err != nil {
			return nil, false, err
		}
		msgs = append(msgs, m)
	}
	if err := it.Error(); err != nil {
		return nil, false, err
	}
	if after == 0 {
		slices.Reverse(msgs)
	}
	return msgs, more, nil
}

// Inbox returns up to limit deliveries of the user with seq > afterSeq in
// ascending seq order, each joined with its message, and whether more
// remain. limit <= 0 returns none; more then reports whether any exist. An
// inbox entry whose message is missing is an error (AppendBatch writes
// both atomically).
func (s *Store) Inbox(ctx context.Context, userID string, afterSeq uint64, limit int) ([]store.Delivery, bool, error) {
	if err := s.check(ctx); err != nil {
		return nil, false, err
	}
	defer s.ops.RUnlock()
	if err := checkIDs(userID); err != nil {
		return nil, false, err
	}
	if afterSeq == ^uint64(0) {
		return nil, false, nil
	}
	limit = max(limit, 0)
	lo, hi := prefixBounds(tInbox, userID)
	plen := len(lo)
	lo = keyN(tInbox, userID, afterSeq+1)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return nil, false, err
	}
	defer it.Close()
	type ref struct {
		seq uint64
		ch  string
		id  uint64
	}
	var refs []ref
	if limit > 0 {
		refs = make([]ref, 0, min(limit, 256))
	}
	more := false
	for ok := it.First(); ok; ok = it.Next() {
		if len(refs) == limit {
			more = true
			break
		}
		k := it.Key()
		if len(k) != plen+8 {
			return nil, false, errCorrupt
		}
		v, err := it.ValueAndErr()
		if err != nil {
			return nil, false, err
		}
		prev := ""
		if len(refs) > 0 {
			prev = refs[len(refs)-1].ch
		}
		ch, id, err := decodeRef(v, prev)
		if err != nil {
			return nil, false, err
		}
		refs = append(refs, ref{seq: beUint64(k[plen:]), ch: ch, id: id})
	}
	if err := it.Error(); err != nil {
		return nil, false, err
	}
	if len(refs) == 0 {
		return nil, more, nil
	}
	ds := make([]store.Delivery, len(refs))
	var key []byte
	for i, r := range refs {
		key = appendKeyN(key[:0], tMessage, r.ch, r.id)
		v, closer, err := s.db.Get(key)
		var m *store.Message
		if err == nil {
			m, err = decodeMessage(r.ch, r.id, v)
			closer.Close()
		} else if errors.Is(err, pebble.ErrNotFound) {
			err = store.ErrNotFound
		}
		if err != nil {
			return nil, false, fmt.Errorf("pebble store: inbox %q seq %d -> message %q/%d: %w", userID, r.seq, r.ch, r.id, err)
		}
		ds[i] = store.Delivery{Seq: r.seq, Message: m}
	}
	return ds, more, nil
}

// LookupDedup returns the recorded send or store.ErrNotFound.
func (s *Store) LookupDedup(ctx context.Context, senderID, clientMessageID string) (*store.Dedup, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	defer s.ops.RUnlock()
	if err := checkIDs(senderID, clientMessageID); err != nil {
		return nil, err
	}
	return getAs(s, key2(tDedup, senderID, clientMessageID), func(v []byte) (*store.Dedup, error) { return decodeDedup(senderID, clientMessageID, v) })
}

// InboxEntryAt returns the user's inbox entry at seq or store.ErrNotFound.
func (s *Store) InboxEntryAt(ctx context.Context, userID string, seq uint64) (*store.InboxEntry, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	defer s.ops.RUnlock()
	if err := checkIDs(userID); err != nil {
		return nil, err
	}
	return getAs(s, appendKeyN(nil, tInbox, userID, seq), func(v []byte) (*store.InboxEntry, error) {
		ch, id, err := decodeRef(v, "")
		if err != nil {
			return nil, err
		}
		return &store.InboxEntry{UserID: userID, Seq: seq, ChannelID: ch, MessageID: id}, nil
	})
}

// ---------------------------------------------------------------- Accounts

// CreateUser inserts u; store.ErrAlreadyExists if u.ID is taken.
func (s *Store) CreateUser(ctx context.Context, u *store.User) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	defer s.ops.RUnlock()
	if err := checkIDs(u.ID); err != nil {
		return err
	}
	key := key1(tUser, u.ID)
	defer s.lock(key).Unlock()
	ok, err := s.exists(key)
	if err != nil {
		return err
	}
	if ok {
		return store.ErrAlreadyExists
	}
	return s.set(key, encodeUser(u))
}

// GetUser returns the user or store.ErrNotFound.
func (s *Store) GetUser(ctx context.Context, userID string) (*store.User, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	defer s.ops.RUnlock()
	if err := checkIDs(userID); err != nil {
		return nil, err
	}
	return getAs(s, key1(tUser, userID), func(v []byte) (*store.User, error) { return decodeUser(userID, v) })
}

// UpdateDisplayName changes a user's display name; store.ErrNotFound.
func (s *Store) UpdateDisplayName(ctx context.Context, userID, displayName string) error {
	return s.updateUser(ctx, userID, func(u *store.User) { u.DisplayName = displayName })
}

// SetPresenceHidden changes whether the user hides their presence;
// store.ErrNotFound.
func (s *Store) SetPresenceHidden(ctx context.Context, userID string, hidden bool) error {
	return s.updateUser(ctx, userID, func(u *store.User) { u.PresenceHidden = hidden })
}

// updateUser applies change to the stored user under the user's lock.
func (s *Store) updateUser(ctx context.Context, userID string, change func(*store.User)) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	defer s.ops.RUnlock()
	if err := checkIDs(userID); err != nil {
		return err
	}
	key := key1(tUser, userID)
	defer s.lock(key).Unlock()
	var u *store.User
	err := s.get(key, func(v []byte) (err error) {
		u, err = decodeUser(userID, v)
		return err
	})
	if err != nil {
		return err
	}
	change(u)
	return s.set(key, encodeUser(u))
}

// PutDevice inserts or replaces a device, keeping the stored cursor (only
// AdvanceCursor changes it; a new device starts at d.Cursor).
func (s *Store) PutDevice(ctx context.Context, d *store.Device) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	defer s.ops.RUnlock()
	if err := checkIDs(d.UserID, d.DeviceID); err != nil {
		return err
	}
	key := key2(tDevice, d.UserID, d.DeviceID)
	defer s.lock(key).Unlock()
	nd := *d
	err := s.get(key, func(v []byte) error {
		old, err := decodeDevice(d.UserID, d.DeviceID, v)
		nd.Cursor = old.Cursor
		return err
	})
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	return s.set(key, encodeDevice(&nd))
}

// GetDevice returns the device or store.ErrNotFound.
func (s *Store) GetDevice(ctx context.Context, userID, deviceID string) (*store.Device, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	defer s.ops.RUnlock()
	if err := checkIDs(userID, deviceID); err != nil {
		return nil, err
	}
	return getAs(s, key2(tDevice, userID, deviceID), func(v []byte) (*store.Device, error) { return decodeDevice(userID, deviceID, v) })
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

// ListDevices returns the user's devices, revoked ones included, ordered by
// CreatedAt (then device id).
func (s *Store) ListDevices(ctx context.Context, userID string) ([]*store.Device, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	defer s.ops.RUnlock()
	if err := checkIDs(userID); err != nil {
		return nil, err
	}
	var ds []*store.Device
	err := s.scan(tDevice, userID, func(sfx, v []byte) error {
		d, err := decodeDevice(userID, string(sfx), v)
		ds = append(ds, d)
		return err
	})
	if err != nil {
		return nil, err
	}
	slices.SortStableFunc(ds, func(a, b *store.Device) int { return a.CreatedAt.Compare(b.CreatedAt) })
	return ds, nil
}

// AdvanceCursor sets the device cursor to max(current, seq) and returns
// the result; store.ErrNotFound for an unknown device. The write is not
// fsync'd (pebble.NoSync): it survives Close, and a crash may roll the
// cursor back to an earlier advance, which only causes redelivery.
func (s *Store) AdvanceCursor(ctx context.Context, userID, deviceID string, seq uint64) (uint64, error) {
	if err := s.check(ctx); err != nil {
		return 0, err
	}
	defer s.ops.RUnlock()
	if err := checkIDs(userID, deviceID); err != nil {
		return 0, err
	}
	key := key2(tDevice, userID, deviceID)
	defer s.lock(key).Unlock()
	var d *store.Device
	err := s.get(key, func(v []byte) (err error) {
		d, err = decodeDevice(userID, deviceID, v)
		return err
	})
	if err != nil {
		return 0, err
	}
	if seq <= d.Cursor {
		return d.Cursor, nil
	}
	d.Cursor = seq
	// NoSync: see "Durability and concurrency" in the package doc.
	if err := s.db.Set(key, encodeDevice(d), pebble.NoSync); err != nil {
		return 0, err
	}
	return seq, nil
}

// AddContact records contactID as a contact of userID (idempotent).
func (s *Store) AddContact(ctx context.Context, userID, contactID string) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	defer s.ops.RUnlock()
	if err := checkIDs(userID, contactID); err != nil {
		return err
	}
	return s.set(key2(tContact, userID, contactID), nil)
}

// RemoveContact removes it (idempotent).
func (s *Store) RemoveContact(ctx context.Context, userID, contactID string) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	defer s.ops.RUnlock()
	if err := checkIDs(userID, contactID); err != nil {
		return err
	}
	return s.db.Delete(key2(tContact, userID, contactID), pebble.Sync)
}

// ListContacts returns userID's contacts in ascending id (byte) order.
func (s *Store) ListContacts(ctx context.Context, userID string) ([]string, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	defer s.ops.RUnlock()
	if err := checkIDs(userID); err != nil {
		return nil, err
	}
	var ids []string
	err := s.scan(tContact, userID, func(sfx, _ []byte) error {
		ids = append(ids, string(sfx))
		return nil
	})
	if err != nil {
		return nil, err
	}
	return ids, nil
}

// IsContact reports whether userID has contactID as a contact.
func (s *Store) IsContact(ctx context.Context, userID, contactID string) (bool, error) {
	if err := s.check(ctx); err != nil {
		return false, err
	}
	defer s.ops.RUnlock()
	if err := checkIDs(userID, contactID); err != nil {
		return false, err
	}
	return s.exists(key2(tContact, userID, contactID))
}

// ---------------------------------------------------------------- Channels

// CreateChannel inserts ch, its activity record (creation time) and its
// members atomically. store.ErrAlreadyExists if the id is taken,
// store.ErrGroupFull if a group gets more than store.MaxGroupMembers
// distinct members. A member listed twice is stored once (last entry wins).
func (s *Store) CreateChannel(ctx context.Context, ch *store.Channel, members []store.Member) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	defer s.ops.RUnlock()
	if err := checkIDs(ch.ID); err != nil {
		return err
	}
	for i := range members {
		if err := checkIDs(members[i].UserID); err != nil {
			return err
		}
	}
	if ch.Type == store.ChannelGroup && len(members) > store.MaxGroupMembers {
		distinct := make(map[string]struct{}, len(members))
		for i := range members {
			distinct[members[i].UserID] = struct{}{}
		}
		if len(distinct) > store.MaxGroupMembers {
			return store.ErrGroupFull
		}
	}
	key := key1(tChannel, ch.ID)
	defer s.lock(key).Unlock()
	ok, err := s.exists(key)
	if err != nil {
		return err
	}
	if ok {
		return store.ErrAlreadyExists
	}
	wb := s.db.NewBatch()
	defer wb.Close()
	if err := wb.Set(key, encodeChannel(ch), nil); err != nil {
		return err
	}
	if err := wb.Set(key1(tActivity, ch.ID), encodeActivity(nil, 0, ch.CreatedAt), nil); err != nil {
		return err
	}
	for i := range members {
		m := members[i]
		m.ChannelID = ch.ID
		if err := wb.Set(key2(tMember, ch.ID, m.UserID), encodeMember(&m), nil); err != nil {
			return err
		}
		if err := wb.Set(key2(tUserChannel, m.UserID, ch.ID), nil, nil); err != nil {
			return err
		}
	}
	return wb.Commit(pebble.Sync)
}

// GetChannel returns the channel or store.ErrNotFound.
func (s *Store) GetChannel(ctx context.Context, channelID string) (*store.Channel, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	defer s.ops.RUnlock()
	if err := checkIDs(channelID); err != nil {
		return nil, err
	}
	return getAs(s, key1(tChannel, channelID), func(v []byte) (*store.Channel, error) { return decodeChannel(channelID, v) })
}

// AddMember adds m, or updates the role of an existing member (keeping its
// JoinedAt). Adding a new member when the channel already holds max members
// returns store.ErrGroupFull (max <= 0: no limit); the count and the insert
// are atomic against concurrent AddMember/RemoveMember of the channel.
// store.ErrNotFound if the channel does not exist.
func (s *Store) AddMember(ctx context.Context, m store.Member, max int) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	defer s.ops.RUnlock()
	if err := checkIDs(m.ChannelID, m.UserID); err != nil {
		return err
	}
	chKey := key1(tChannel, m.ChannelID)
	defer s.lock(chKey).Unlock()
	ok, err := s.exists(chKey)
	if err != nil {
		return err
	}
	if !ok {
		return store.ErrNotFound
	}
	mKey := key2(tMember, m.ChannelID, m.UserID)
	var old *store.Member
	err = s.get(mKey, func(v []byte) (err error) {
		old, err = decodeMember(m.ChannelID, m.UserID, v)
		return err
	})
	switch {
	case err == nil:
		old.Role = m.Role
		return s.set(mKey, encodeMember(old))
	case !errors.Is(err, store.ErrNotFound):
		return err
	}
	if max > 0 {
		n := 0
		errFull := errors.New("full")
		err := s.scan(tMember, m.ChannelID, func(_, _ []byte) error {
			if n++; n >= max {
				return errFull
			}
			return nil
		})
		if errors.Is(err, errFull) {
			return store.ErrGroupFull
		}
		if err != nil {
			return err
		}
	}
	wb := s.db.NewBatch()
	defer wb.Close()
	if err := wb.Set(mKey, encodeMember(&m), nil); err != nil {
		return err
	}
	if err := wb.Set(key2(tUserChannel, m.UserID, m.ChannelID), nil, nil); err != nil {
		return err
	}
	return wb.Commit(pebble.Sync)
}

// RemoveMember removes a member; store.ErrNotFound if not a member.
func (s *Store) RemoveMember(ctx context.Context, channelID, userID string) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	defer s.ops.RUnlock()
	if err := checkIDs(channelID, userID); err != nil {
		return err
	}
	defer s.lock(key1(tChannel, channelID)).Unlock()
	mKey := key2(tMember, channelID, userID)
	ok, err := s.exists(mKey)
	if err != nil {
		return err
	}
	if !ok {
		return store.ErrNotFound
	}
	wb := s.db.NewBatch()
	defer wb.Close()
	if err := wb.Delete(mKey, nil); err != nil {
		return err
	}
	if err := wb.Delete(key2(tUserChannel, userID, channelID), nil); err != nil {
		return err
	}
	return wb.Commit(pebble.Sync)
}

// GetMember returns the membership or store.ErrNotFound.
func (s *Store) GetMember(ctx context.Context, channelID, userID string) (*store.Member, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	defer s.ops.RUnlock()
	if err := checkIDs(channelID, userID); err != nil {
		return nil, err
	}
	return getAs(s, key2(tMember, channelID, userID), func(v []byte) (*store.Member, error) { return decodeMember(channelID, userID, v) })
}

// ListMembers returns all members in ascending user id (byte) order; empty
// for an unknown channel.
func (s *Store) ListMembers(ctx context.Context, channelID string) ([]store.Member, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	defer s.ops.RUnlock()
	if err := checkIDs(channelID); err != nil {
		return nil, err
	}
	var ms []store.Member
	err := s.scan(tMember, channelID, func(sfx, v []byte) error {
		m, err := decodeMember(channelID, string(sfx), v)
		if err == nil {
			ms = append(ms, *m)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return ms, nil
}

// ListUserChannels returns the channels userID belongs to, most recent
// activity first (the newest message's CreatedAt, or the channel's
// CreatedAt while it has no message; ties by higher LastMessageID, then
// ascending channel id), skipping the first offset and returning at most
// limit (limit <= 0: none). It reads the user's reverse index and one
// activity record per channel, then sorts: O(n log n) in the user's
// channel count.
func (s *Store) ListUserChannels(ctx context.Context, userID string, offset, limit int) ([]store.ChannelActivity, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	defer s.ops.RUnlock()
	if err := checkIDs(userID); err != nil {
		return nil, err
	}
	offset = max(offset, 0)
	if limit <= 0 {
		return nil, nil
	}
	var ids []string
	err := s.scan(tUserChannel, userID, func(sfx, _ []byte) error {
		ids = append(ids, string(sfx))
		return nil
	})
	if err != nil || offset >= len(ids) {
		return nil, err
	}
	acts := make([]store.ChannelActivity, 0, len(ids))
	var key []byte
	for _, id := range ids {
		key = append(append(key[:0], tActivity), id...)
		a := store.ChannelActivity{ChannelID: id}
		err := s.get(key, func(v []byte) (err error) {
			a, err = decodeActivity(id, v)
			return err
		})
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return nil, err
		}
		acts = append(acts, a)
	}
	slices.SortFunc(acts, func(a, b store.ChannelActivity) int {
		if c := b.LastActivity.Compare(a.LastActivity); c != 0 {
			return c
		}
		if a.LastMessageID != b.LastMessageID {
			if a.LastMessageID > b.LastMessageID {
				return -1
			}
			return 1
		}
		return strings.Compare(a.ChannelID, b.ChannelID)
	})
	acts = acts[offset:]
	if len(acts) > limit {
		acts = acts[:limit]
	}
	return slices.Clip(acts), nil
}
