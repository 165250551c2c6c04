// Package scylla implements store.Store on ScyllaDB (or any server of the
// CQL protocol: development and CI run Apache Cassandra 5.0, see
// scripts/services.sh): the storage of chatd's cluster mode.
//
// It uses github.com/scylladb/gocqlx/v3 on the ScyllaDB fork of gocql
// (shard-aware routing: each request goes to the connection of the CPU
// shard that owns the partition). Design notes, the schema and the
// consistency model are in docs/scylla.md; the short version:
//
//   - Messages live in partitions (channel_id, bucket) with bucket = 10 days
//     of message_id time, clustered by message_id descending, so no
//     partition grows without bound. A per-channel list of non-empty
//     buckets (channel_buckets) lets History jump over idle periods and
//     stop at the channel's first bucket.
//   - Inboxes live in partitions (user_id, seq / 100000), clustered by seq.
//   - message_id columns store id XOR 2^63 as bigint, so that signed CQL
//     order equals unsigned order over the whole uint64 range. Inbox seqs
//     and cursors are stored as they are and must be below 2^63.
//   - AppendBatch is idempotent and ordered in three steps (dedup records,
//     then messages, then inbox entries), each step one multi-partition
//     unlogged batch (more when it exceeds the batch limits), so a group
//     commit is three CQL requests. An error may leave a prefix of
//     the steps written; the caller acks nothing in that case and a replay
//     rewrites the same rows.
//   - Check-and-insert operations use lightweight transactions (Paxos):
//     CreateUser, UpdateDisplayName, CreateChannel, AddMember, RemoveMember.
//     The hot path (AppendBatch, Inbox, History, AdvanceCursor) uses none.
//
// It owns the CQL schema (migrations/, Migrate) and every CQL statement of
// chatd, including the seq_bounds table behind the cluster id allocator's
// BoundStore (bounds.go, Store.Bounds). It speaks CQL only: it must not
// import gRPC, Pebble or Redis packages, nor any chatd package but store.
package scylla

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"regexp"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gocql/gocql"
	"github.com/scylladb/gocqlx/v3"

	"github.com/chatd/chatd/server/store"
)

// Errors returned (wrapped) by the store in addition to the store
// sentinels.
var (
	// ErrClosed is returned by every method after Close.
	ErrClosed = errors.New("scylla store: closed")
	// ErrInvalidID: an id that must be a partition key is empty, or an
	// inbox seq is 2^63 or more. Nothing is written.
	ErrInvalidID = errors.New("scylla store: invalid id")
	// ErrContention: a lightweight transaction lost too many rounds against
	// concurrent writers of the same partition (or timed out repeatedly);
	// nothing or everything of the operation happened, and retrying it is
	// safe. Map it to codes.Unavailable or codes.Aborted.
	ErrContention = errors.New("scylla store: too much contention, retry")
)

// Config configures Open and Migrate.
type Config struct {
	// Hosts are the initial contact points, "host" or "host:port"
	// (default port 9042). Required.
	Hosts []string
	// Keyspace holds every table. Letters, digits and '_', at most 48
	// characters. Default "chatd".
	Keyspace string
	// LocalDC, if set, makes the host policy DC-aware: requests go to
	// replicas in LocalDC first. Use it with LOCAL_* consistencies and
	// NetworkTopologyStrategy.
	LocalDC string
	// Consistency of every read and write. Default gocql.LocalQuorum:
	// with a replication factor of 3, reads see every acknowledged write
	// while one replica per DC is down.
	Consistency gocql.Consistency
	// SerialConsistency of lightweight transactions. Default
	// gocql.LocalSerial.
	SerialConsistency gocql.Consistency
	// Timeout is the client-side limit for one request (one attempt).
	// Default 6 s, above the server's own timeouts (ScyllaDB: 2 s writes,
	// 5 s reads by default) so that the server reports its typed timeout
	// first.
	Timeout time.Duration
	// ConnectTimeout limits dialing and connection setup. Default 5 s.
	ConnectTimeout time.Duration
	// NumConns is the number of connections per host (ScyllaDB: per
	// shard). Default 2.
	NumConns int
	// Retries is the number of retries of a failed idempotent request
	// (timeouts, unavailable, connection errors), with exponential backoff
	// from 50 ms to 1 s and jitter. Default 3; negative: none.
	// Lightweight transactions are never retried by the driver once they
	// may have executed; the store resolves their outcome itself.
	Retries int
	// WriteCoalesceWait is how long the driver holds a request to write
	// it together with others on the same connection (gocql's
	// WriteCoalesceWaitTime, whose own default is 200 µs). Default 0: off,
	// each request is written at once. The store already sends few, large
	// requests (one batch per write step, coalesced acks), so the
	// coalescer saved few writes and cost a timer and two goroutine
	// wake-ups per flush: with it, the client spent 0.30–0.42 ms of CPU per
	// message of the pairs shape at 500 msg/s in BenchmarkCQLFloor/chatd,
	// without it 0.20–0.26 ms, the CQL server's CPU level. In chatd the
	// quicker round trips also shrink the group commits, so the cluster's
	// CPU per message stayed level while send → delivery p50 fell from
	// 14.6 to 5.0 ms (docs/performance.md, "The floor").
	WriteCoalesceWait time.Duration
	// WriteConcurrency bounds the requests one AppendBatch keeps in
	// flight. Default 32.
	WriteConcurrency int
	// DedupTTL is how long a dedup record (sender, client_message_id)
	// lives: the idempotency window of retried sends. Default 7 days.
	DedupTTL time.Duration
	// Logger receives the driver's log and the store's warnings. Default
	// slog.Default().
	Logger *slog.Logger
	// AfterWriteStep, if set, is called by AppendBatch after each of its
	// write steps completed (StepDedup, StepMessages, StepInbox) with the
	// batch. For fault-injection tests only (a hook that stops the writer
	// there simulates a server dying between two steps); nil in
	// production.
	AfterWriteStep func(step WriteStep, b *store.Batch)
}

// WriteStep names one ordered step of AppendBatch.
type WriteStep int

// The steps of AppendBatch, in the order they are written.
const (
	StepDedup    WriteStep = iota + 1 // dedup records (with placements)
	StepMessages                      // messages, bucket index, activity, revisions
	StepInbox                         // inbox entries
)

func (w WriteStep) String() string {
	switch w {
	case StepDedup:
		return "dedup"
	case StepMessages:
		return "messages"
	case StepInbox:
		return "inbox"
	}
	return "step?"
}

// Defaults of Config.
const (
	DefaultKeyspace         = "chatd"
	DefaultTimeout          = 6 * time.Second
	DefaultConnectTimeout   = 5 * time.Second
	DefaultNumConns         = 2
	DefaultRetries          = 3
	DefaultWriteConcurrency = 32
	DefaultDedupTTL         = 7 * 24 * time.Hour
	// DefaultConsistency and DefaultSerialConsistency are the defaults of
	// Config.Consistency and Config.SerialConsistency.
	DefaultConsistency       = gocql.LocalQuorum
	DefaultSerialConsistency = gocql.LocalSerial
)

var keyspaceRE = regexp.MustCompile(`^[A-Za-z0-9_]{1,48}$`)

func (c Config) withDefaults() (Config, error) {
	if len(c.Hosts) == 0 {
		return c, errors.New("scylla store: Config.Hosts is empty")
	}
	if c.Keyspace == "" {
		c.Keyspace = DefaultKeyspace
	}
	if !keyspaceRE.MatchString(c.Keyspace) {
		return c, fmt.Errorf("scylla store: invalid keyspace name %q", c.Keyspace)
	}
	if c.Consistency == 0 {
		c.Consistency = DefaultConsistency
	}
	if c.SerialConsistency == 0 {
		c.SerialConsistency = DefaultSerialConsistency
	}
	if c.Timeout <= 0 {
		c.Timeout = DefaultTimeout
	}
	if c.ConnectTimeout <= 0 {
		c.ConnectTimeout = DefaultConnectTimeout
	}
	if c.NumConns <= 0 {
		c.NumConns = DefaultNumConns
	}
	if c.Retries == 0 {
		c.Retries = DefaultRetries
	} else if c.Retries < 0 {
		c.Retries = 0
	}
	if c.WriteCoalesceWait < 0 {
		c.WriteCoalesceWait = 0
	}
	if c.WriteConcurrency <= 0 {
		c.WriteConcurrency = DefaultWriteConcurrency
	}
	if c.DedupTTL <= 0 {
		c.DedupTTL = DefaultDedupTTL
	}
	if c.DedupTTL < time.Second {
		c.DedupTTL = time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c, nil
}

// cluster builds the driver configuration; keyspace may be "" (no
// keyspace, for Migrate's CREATE KEYSPACE).
func (c Config) cluster(keyspace string) *gocql.ClusterConfig {
	cl := gocql.NewCluster(c.Hosts...)
	cl.Keyspace = keyspace
	cl.Consistency = c.Consistency
	cl.SerialConsistency = c.SerialConsistency
	cl.Timeout = c.Timeout
	cl.ReadTimeout = c.Timeout
	cl.WriteTimeout = c.Timeout
	cl.ConnectTimeout = c.ConnectTimeout
	cl.NumConns = c.NumConns
	cl.WriteCoalesceWaitTime = c.WriteCoalesceWait
	cl.MaxWaitSchemaAgreement = 2 * time.Minute
	var fallback gocql.HostSelectionPolicy
	if c.LocalDC != "" {
		fallback = gocql.DCAwareRoundRobinPolicy(c.LocalDC)
	} else {
		fallback = gocql.RoundRobinHostPolicy()
	}
	// Token-aware: every request goes to a replica of its partition
	// (shard-aware on ScyllaDB), saving the coordinator hop.
	cl.PoolConfig.HostSelectionPolicy = gocql.TokenAwareHostPolicy(fallback)
	cl.RetryPolicy = &gocql.ExponentialBackoffRetryPolicy{NumRetries: c.Retries, Min: 50 * time.Millisecond, Max: time.Second}
	cl.ReconnectionPolicy = &gocql.ExponentialReconnectionPolicy{MaxRetries: 10, InitialInterval: 100 * time.Millisecond, MaxInterval: 10 * time.Second}
	cl.Logger = slogStdLogger{c.Logger}
	return cl
}

// Store is a store.Store on a CQL cluster. It is safe for concurrent use.
type Store struct {
	cfg     Config
	sess    gocqlx.Session
	closed  atomic.Bool
	buckets bucketCache
	// inboxParts remembers the inbox_buckets rows (user, partition) this
	// process has written (bucketKey.channel holds the user id).
	inboxParts bucketCache
	// cursors remembers device cursors for AdvanceCursor.
	cursors cursorCache
	// coal sends the per-ack writes of concurrent callers together.
	coal  coalescer
	ttl   int // dedup TTL in seconds
	stats *stmtStats
}

var _ store.Store = (*Store)(nil)

// Open connects to the cluster and returns a Store on cfg.Keyspace, whose
// schema must exist (Migrate). It fails if no host answers within
// cfg.ConnectTimeout, if ctx ends first, or if the keyspace or its tables
// are missing.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	stats := &stmtStats{}
	cl := cfg.cluster(cfg.Keyspace)
	cl.QueryObserver, cl.BatchObserver = stats, stats
	sess, err := connect(ctx, cl)
	if err != nil {
		return nil, err
	}
	// Fail early and clearly on a keyspace without the schema.
	var n int
	err = sess.Session.Query(`SELECT count(*) FROM system_schema.tables WHERE keyspace_name = ? AND table_name IN ('messages', 'inbox', 'inbox_buckets', 'channel_members', 'receipts', 'message_revisions', 'username_skeletons')`,
		cfg.Keyspace).WithContext(ctx).Scan(&n)
	if err == nil && n != 7 {
		err = fmt.Errorf("keyspace %s lacks the chatd schema (run Migrate)", cfg.Keyspace)
	}
	if err != nil {
		sess.Close()
		return nil, fmt.Errorf("scylla store: open: %w", err)
	}
	st := &Store{cfg: cfg, sess: sess, stats: stats, ttl: int(cfg.DedupTTL / time.Second)}
	st.coal.s = st
	return st, nil
}

func connect(ctx context.Context, cl *gocql.ClusterConfig) (gocqlx.Session, error) {
	type result struct {
		s   gocqlx.Session
		err error
	}
	ch := make(chan result, 1)
	go func() {
		s, err := gocqlx.WrapSession(cl.CreateSession())
		ch <- result{s, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			return gocqlx.Session{}, fmt.Errorf("scylla store: connect %v: %w", cl.Hosts, r.err)
		}
		return r.s, nil
	case <-ctx.Done():
		go func() {
			if r := <-ch; r.err == nil {
				r.s.Close()
			}
		}()
		return gocqlx.Session{}, ctx.Err()
	}
}

// Close releases the connections. Further calls return ErrClosed.
func (s *Store) Close() error {
	if s.closed.Swap(true) {
		return ErrClosed
	}
	s.sess.Close()
	return nil
}

// Session returns the underlying session (for tools and tests).
func (s *Store) Session() gocqlx.Session { return s.sess }

func (s *Store) check(ctx context.Context) error {
	if s.closed.Load() {
		return ErrClosed
	}
	return ctx.Err()
}

// q builds an idempotent query bound to ctx. Every statement of this
// package is a constant string, so gocql prepares it once per host and
// then sends only the statement id and values.
func (s *Store) q(ctx context.Context, stmt string, args ...any) *gocql.Query {
	return s.sess.Session.Query(stmt, args...).WithContext(ctx).Idempotent(true)
}

// listStrings runs an idempotent query of one text column and returns its
// values in row order (nil if there are none).
func (s *Store) listStrings(ctx context.Context, stmt string, args ...any) ([]string, error) {
	q := s.q(ctx, stmt, args...)
	it := q.Iter()
	var ids []string
	var id string
	for it.Scan(&id) {
		ids = append(ids, id)
	}
	err := it.Close()
	q.Release()
	if err != nil {
		return nil, err
	}
	return ids, nil
}

// lwt builds a lightweight-transaction query (never retried by the
// driver once it may have executed).
func (s *Store) lwt(ctx context.Context, stmt string, args ...any) *gocql.Query {
	return s.sess.Session.Query(stmt, args...).WithContext(ctx).Idempotent(false)
}

// exec runs an idempotent write.
func (s *Store) exec(ctx context.Context, stmt string, args ...any) error {
	q := s.q(ctx, stmt, args...)
	err := q.Exec()
	q.Release()
	return err
}

// scan1 reads the first row into dest; found is false if there is none.
func (s *Store) scan1(ctx context.Context, stmt string, args []any, dest ...any) (found bool, err error) {
	q := s.q(ctx, stmt, args...)
	err = q.Scan(dest...)
	q.Release()
	if errors.Is(err, gocql.ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// ------------------------------------------------------------ encodings

const signBit = 1 << 63

// encID maps a message_id to the stored bigint, preserving order.
func encID(id uint64) int64 { return int64(id ^ signBit) }

// decID is the inverse of encID.
func decID(v int64) uint64 { return uint64(v) ^ signBit }

// MessageBucketMillis is the time span of one message partition: 10 days
// of message_id time (message_id = unix_ms<<16 | counter). Changing it
// makes existing messages unreachable.
const MessageBucketMillis = 10 * 24 * 60 * 60 * 1000

// messageBucket returns the partition bucket of a message_id.
func messageBucket(id uint64) int64 { return int64((id >> 16) / MessageBucketMillis) }

// InboxBucketSeqs is the number of inbox seqs per inbox partition.
// Changing it makes existing inbox entries unreachable.
const InboxBucketSeqs = 100_000

// maxSeq is the largest inbox seq or cursor the store accepts: seqs are
// stored as bigint and cursors double as write timestamps.
const maxSeq = 1<<63 - 1

func inboxBucket(seq uint64) int64 { return int64(seq / InboxBucketSeqs) }

// ts converts a time to a CQL timestamp value: nil for the zero time
// (stored as null), else ms precision.
func ts(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t
}

// utc normalises a time read from the database (null -> zero time).
func utc(t time.Time) time.Time {
	if t.IsZero() {
		return time.Time{}
	}
	return t.UTC()
}

func invalid(what, id string) error {
	return fmt.Errorf("%w: empty %s %q", ErrInvalidID, what, id)
}

// ------------------------------------------------------------ helpers

// casOutcomeUnknown reports whether a lightweight transaction failed in a
// way that leaves its outcome unknown (it may or may not have applied).
func casOutcomeUnknown(err error) bool {
	var wt *gocql.RequestErrWriteTimeout
	if errors.As(err, &wt) {
		return true
	}
	var cu *gocql.RequestErrCASWriteUnknown
	if errors.As(err, &cu) {
		return true
	}
	var un *gocql.RequestErrUnavailable
	if errors.As(err, &un) {
		return true // not executed, retrying is safe
	}
	return errors.Is(err, gocql.ErrTimeoutNoResponse) || errors.Is(err, gocql.ErrConnectionClosed)
}

// maxCASAttempts bounds the rounds of one check-and-set operation.
const maxCASAttempts = 60

// casBackoff sleeps before round attempt (1-based) of a contended
// lightweight transaction: random 0..min(5*attempt, 50) ms.
func casBackoff(ctx context.Context, attempt int) error {
	d := time.Duration(rand.IntN(min(5*attempt, 50)+1)) * time.Millisecond
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// bucketCache remembers the (channel, bucket) rows of channel_buckets this
// process has written, so AppendBatch writes each once. Sharded, bounded:
// a shard that reaches its limit is cleared.
type bucketCache struct {
	shards [32]bucketShard
}

type bucketShard struct {
	mu sync.Mutex
	m  map[bucketKey]struct{}
}

type bucketKey struct {
	channel string
	bucket  int64
}

const bucketShardLimit = 4096

func (c *bucketCache) shard(k bucketKey) *bucketShard {
	h := uint32(2166136261)
	for i := 0; i < len(k.channel); i++ {
		h = (h ^ uint32(k.channel[i])) * 16777619
	}
	h ^= uint32(k.bucket)
	return &c.shards[h%uint32(len(c.shards))]
}

func (c *bucketCache) has(k bucketKey) bool {
	sh := c.shard(k)
	sh.mu.Lock()
	_, ok := sh.m[k]
	sh.mu.Unlock()
	return ok
}

func (c *bucketCache) add(k bucketKey) {
	sh := c.shard(k)
	sh.mu.Lock()
	if sh.m == nil || len(sh.m) >= bucketShardLimit {
		sh.m = make(map[bucketKey]struct{})
	}
	sh.m[k] = struct{}{}
	sh.mu.Unlock()
}

// slogStdLogger adapts slog to gocql.StdLogger (driver messages at info
// level).
type slogStdLogger struct{ l *slog.Logger }

func (g slogStdLogger) Print(v ...any) { g.l.Info("gocql: " + fmt.Sprint(v...)) }
func (g slogStdLogger) Printf(format string, v ...any) {
	g.l.Info("gocql: " + fmt.Sprintf(format, v...))
}
func (g slogStdLogger) Println(v ...any) { g.l.Info("gocql: " + fmt.Sprint(v...)) }
