package scylla

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/gocql/gocql"

	"github.com/chatd/chatd/server/internal/parallel"
	"github.com/chatd/chatd/server/store"
)

const (
	stmtInsertMessage = `INSERT INTO messages (channel_id, bucket, message_id, sender_id, sender_device_id, client_message_id, text, created_at, kind, ref_message_id, for_user) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`
	stmtInsertBucket  = `INSERT INTO channel_buckets (channel_id, bucket) VALUES (?, ?)`
	stmtInsertAct     = `INSERT INTO channel_activity (channel_id, message_id, created_at) VALUES (?, ?, ?)`
	stmtTrimAct       = `DELETE FROM channel_activity WHERE channel_id = ? AND message_id < ?`
	stmtInsertInbox   = `INSERT INTO inbox (user_id, bucket, seq, channel_id, message_id) VALUES (?, ?, ?, ?, ?)`
	stmtInsertDedup   = `INSERT INTO dedup (sender_id, client_message_id, channel_id, message_id, created_at, inbox_users, inbox_seqs, fingerprint) VALUES (?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?`

	msgCols = `message_id, sender_id, sender_device_id, client_message_id, text, created_at, kind, ref_message_id, for_user`

	stmtGetMessage     = `SELECT ` + msgCols + ` FROM messages WHERE channel_id = ? AND bucket = ? AND message_id = ?`
	stmtMessagesIn     = `SELECT ` + msgCols + ` FROM messages WHERE channel_id = ? AND bucket = ? AND message_id IN ?`
	stmtMsgsNewest     = `SELECT ` + msgCols + ` FROM messages WHERE channel_id = ? AND bucket = ? LIMIT ?`
	stmtMsgsBefore     = `SELECT ` + msgCols + ` FROM messages WHERE channel_id = ? AND bucket = ? AND message_id < ? LIMIT ?`
	stmtMsgsAfter      = `SELECT ` + msgCols + ` FROM messages WHERE channel_id = ? AND bucket = ? AND message_id > ? ORDER BY message_id ASC LIMIT ?`
	stmtBucketsDesc    = `SELECT bucket FROM channel_buckets WHERE channel_id = ?`
	stmtBucketsAtMost  = `SELECT bucket FROM channel_buckets WHERE channel_id = ? AND bucket <= ?`
	stmtBucketsAtLeast = `SELECT bucket FROM channel_buckets WHERE channel_id = ? AND bucket >= ? ORDER BY bucket ASC`
	stmtLastActivity   = `SELECT message_id FROM channel_activity WHERE channel_id = ? LIMIT 1`
	stmtInsertInboxIdx = `INSERT INTO inbox_buckets (user_id, bucket) VALUES (?, ?)`
	stmtInboxIdxFrom   = `SELECT bucket FROM inbox_buckets WHERE user_id = ? AND bucket >= ?`
	stmtInboxIdxDesc   = `SELECT bucket FROM inbox_buckets WHERE user_id = ? ORDER BY bucket DESC`
	stmtInboxLast      = `SELECT seq FROM inbox WHERE user_id = ? AND bucket = ? ORDER BY seq DESC LIMIT 1`
	stmtInboxAfter     = `SELECT seq, channel_id, message_id FROM inbox WHERE user_id = ? AND bucket = ? AND seq > ? LIMIT ?`
	stmtGetDedup       = `SELECT channel_id, message_id, created_at, inbox_users, inbox_seqs, fingerprint FROM dedup WHERE sender_id = ? AND client_message_id = ?`
	stmtInboxAt        = `SELECT channel_id, message_id FROM inbox WHERE user_id = ? AND bucket = ? AND seq = ?`
)

// Limits of the unlogged batches AppendBatch sends (one per write step,
// more when a step is larger, see stmtWriter): each stays below
// Cassandra's default batch_size_fail_threshold (50 KiB) unless one row
// alone is larger. No batchlog: unlogged batches are atomic per partition
// only, which is all AppendBatch relies on.
const (
	maxBatchStmts = 64
	maxBatchBytes = 40 << 10
	// maxInList bounds "message_id IN ?" lists (ScyllaDB's default
	// max_clustering_key_restrictions_per_query is 100).
	maxInList = 100
)

// ---------------------------------------------------------------- AppendBatch

type partKey struct {
	id     string
	bucket int64
}

// chunk is a run of rows of one partition written as one request.
type chunk struct {
	part partKey
	idx  []int // indices into Batch.Messages or Batch.Inbox
}

// AppendBatch writes the batch durably (acknowledged by cfg.Consistency
// replicas) in three ordered steps, each one multi-partition unlogged
// batch (several, sent concurrently, when a step exceeds maxBatchStmts
// or maxBatchBytes; see stmtWriter):
//
//  1. the dedup records, with their placements (TTL cfg.DedupTTL);
//  2. the messages, their channels' bucket index rows and activity rows,
//     the revision index rows of EDIT and DELETE messages, and the inbox
//     partition index rows (inbox_buckets) this process has not written;
//  3. the inbox entries (a user's entries in its lower inbox partition
//     before those in the next one, when a batch spans two).
//
// A group commit of n messages is thus three CQL requests, not ~5n.
//
// It is atomic only per partition. If it returns an error (or the server
// dies during it), a prefix of the steps (and part of the failing step)
// may be stored: a dedup record without its message or inbox entries, a
// message without inbox entries, never an inbox entry without its message
// nor a message (of a send with a client_message_id) without its dedup
// record. So a message never becomes visible to devices while its
// client_message_id is unknown, and a retry finds the record and, from
// its placements, what is missing (store.Batch). Every row is keyed by its
// id, so writing the same batch again (or the ids again with new content)
// converges.
//
// Errors: ErrInvalidID for an empty channel, user or sender id or an inbox
// seq >= 2^63 (nothing written); a nil message; driver errors (timeouts,
// unavailable) after the configured retries.
func (s *Store) AppendBatch(ctx context.Context, b *store.Batch) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	if b == nil || len(b.Messages) == 0 && len(b.Inbox) == 0 && len(b.Dedup) == 0 {
		return nil
	}
	for _, m := range b.Messages {
		if m == nil {
			return errors.New("scylla store: nil message in batch")
		}
		if m.ChannelID == "" {
			return invalid("channel id", "")
		}
	}
	for i := range b.Inbox {
		e := &b.Inbox[i]
		if e.UserID == "" {
			return invalid("user id", "")
		}
		if e.Seq > maxSeq {
			return fmt.Errorf("%w: inbox seq %d >= 2^63", ErrInvalidID, e.Seq)
		}
	}
	for i := range b.Dedup {
		if b.Dedup[i].SenderID == "" {
			return invalid("sender id", "")
		}
	}

	// Step 1: dedup records, so that nothing of a send is visible before
	// its client_message_id is known.
	if len(b.Dedup) > 0 {
		var w stmtWriter
		for i := range b.Dedup {
			w.add(gocql.BatchEntry{Stmt: stmtInsertDedup, Args: dedupArgs(&b.Dedup[i], s.ttl), Idempotent: true})
		}
		if err := s.writeAll(ctx, &w); err != nil {
			return fmt.Errorf("scylla store: append dedup: %w", err)
		}
	}
	s.afterStep(StepDedup, b)

	// Step 2: messages, bucket index, activity, revisions, and the inbox
	// partition index rows this process has not written yet (durable
	// before step 3 writes an inbox row in them, see Inbox).
	var w stmtWriter
	var bucketRows, idxRows []bucketKey
	for i := range b.Inbox {
		k := bucketKey{b.Inbox[i].UserID, inboxBucket(b.Inbox[i].Seq)}
		if !s.inboxParts.has(k) && !slices.Contains(idxRows, k) {
			idxRows = append(idxRows, k)
			w.add(gocql.BatchEntry{Stmt: stmtInsertInboxIdx, Args: []any{k.channel, k.bucket}, Idempotent: true})
		}
	}
	if len(b.Messages) > 0 {
		type act struct {
			ch string
			m  *store.Message
		}
		var acts []act
		for _, m := range b.Messages {
			w.add(gocql.BatchEntry{Stmt: stmtInsertMessage, Args: messageArgs(m), Idempotent: true})
			if isRevision(m) {
				w.add(gocql.BatchEntry{Stmt: stmtInsertRevision, Args: revisionArgs(m), Idempotent: true})
			}
			k := bucketKey{m.ChannelID, messageBucket(m.MessageID)}
			if !s.buckets.has(k) && !slices.Contains(bucketRows, k) {
				bucketRows = append(bucketRows, k)
				w.add(gocql.BatchEntry{Stmt: stmtInsertBucket, Args: []any{k.channel, k.bucket}, Idempotent: true})
			}
			found := false
			for i := range acts {
				if acts[i].ch == m.ChannelID {
					found = true
					if m.MessageID >= acts[i].m.MessageID {
						acts[i].m = m
					}
					break
				}
			}
			if !found {
				acts = append(acts, act{m.ChannelID, m})
			}
		}
		for _, a := range acts {
			// The insert and its trim stay in one request (one mutation of
			// the partition): the trim alone would leave no activity row.
			w.add(gocql.BatchEntry{Stmt: stmtInsertAct, Args: []any{a.ch, encID(a.m.MessageID), ts(a.m.CreatedAt)}, Idempotent: true},
				gocql.BatchEntry{Stmt: stmtTrimAct, Args: []any{a.ch, encID(a.m.MessageID)}, Idempotent: true})
		}
	}
	if err := s.writeAll(ctx, &w); err != nil {
		if len(b.Messages) == 0 {
			return fmt.Errorf("scylla store: append inbox index: %w", err)
		}
		return fmt.Errorf("scylla store: append messages: %w", err)
	}
	for _, k := range bucketRows {
		s.buckets.add(k)
	}
	for _, k := range idxRows {
		s.inboxParts.add(k)
	}
	s.afterStep(StepMessages, b)

	// Step 3: inbox entries; a user's next inbox partition only after its
	// lower one, so that a partial failure never leaves a gap at a
	// partition boundary (see Inbox and LastInboxSeq).
	if len(b.Inbox) > 0 {
		first, later := chunkInbox(b.Inbox)
		for _, cs := range [][]chunk{first, later} {
			var w stmtWriter
			for _, c := range cs {
				for _, i := range c.idx {
					w.add(gocql.BatchEntry{Stmt: stmtInsertInbox, Args: inboxArgs(&b.Inbox[i]), Idempotent: true})
				}
			}
			if err := s.writeAll(ctx, &w); err != nil {
				return fmt.Errorf("scylla store: append inbox: %w", err)
			}
		}
	}

	s.afterStep(StepInbox, b)
	return nil
}

// afterStep calls the fault-injection hook, if any.
func (s *Store) afterStep(step WriteStep, b *store.Batch) {
	if s.cfg.AfterWriteStep != nil {
		s.cfg.AfterWriteStep(step, b)
	}
}

func dedupArgs(d *store.Dedup, ttl int) []any {
	var users []string
	var seqs []int64
	if len(d.Inbox) > 0 {
		users = make([]string, len(d.Inbox))
		seqs = make([]int64, len(d.Inbox))
		for i, p := range d.Inbox {
			users[i], seqs[i] = p.UserID, int64(p.Seq)
		}
	}
	return []any{d.SenderID, d.ClientMessageID, d.ChannelID, encID(d.MessageID), ts(d.CreatedAt), users, seqs, int64(d.Fingerprint), ttl}
}

func (s *Store) batch(ctx context.Context) *gocql.Batch {
	return s.sess.Session.Batch(gocql.UnloggedBatch).WithContext(ctx)
}

func messageArgs(m *store.Message) []any {
	return []any{m.ChannelID, messageBucket(m.MessageID), encID(m.MessageID), m.SenderID, m.SenderDeviceID,
		m.ClientMessageID, m.Text, ts(m.CreatedAt), int8(m.Kind), encID(m.RefMessageID), m.ForUser}
}

func inboxArgs(e *store.InboxEntry) []any {
	return []any{e.UserID, inboxBucket(e.Seq), int64(e.Seq), e.ChannelID, encID(e.MessageID)}
}

// chunkInbox groups inbox entries by partition (runs of at most
// maxBatchStmts rows) and splits the chunks into those of each user's
// lowest partition in the batch and the rest.
func chunkInbox(es []store.InboxEntry) (first, later []chunk) {
	low := map[string]int64{}
	for i := range es {
		b := inboxBucket(es[i].Seq)
		if v, ok := low[es[i].UserID]; !ok || b < v {
			low[es[i].UserID] = b
		}
	}
	var all []chunk
	open := map[partKey]int{}
	for i := range es {
		p := partKey{es[i].UserID, inboxBucket(es[i].Seq)}
		j, ok := open[p]
		if !ok || len(all[j].idx) >= maxBatchStmts {
			all = append(all, chunk{part: p})
			j = len(all) - 1
			open[p] = j
		}
		all[j].idx = append(all[j].idx, i)
	}
	for _, c := range all {
		if c.part.bucket == low[c.part.id] {
			first = append(first, c)
		} else {
			later = append(later, c)
		}
	}
	return first, later
}

// ---------------------------------------------------------------- reads

// LastMessageID returns the highest message_id written to the channel (its
// activity row), 0 if none. One single-partition read.
func (s *Store) LastMessageID(ctx context.Context, channelID string) (uint64, error) {
	if err := s.check(ctx); err != nil {
		return 0, err
	}
	if channelID == "" {
		return 0, nil
	}
	var v int64
	ok, err := s.scan1(ctx, stmtLastActivity, []any{channelID}, &v)
	if err != nil || !ok {
		return 0, err
	}
	return decID(v), nil
}

// lastSeqIn returns the highest seq in one inbox partition.
func (s *Store) lastSeqIn(ctx context.Context, userID string, bucket int64) (uint64, bool, error) {
	var v int64
	ok, err := s.scan1(ctx, stmtInboxLast, []any{userID, bucket}, &v)
	return uint64(v), ok, err
}

// LastInboxSeq returns the highest inbox seq of the user, 0 if none.
//
// It walks the user's partition index (inbox_buckets) from the highest
// partition down and returns the last seq of the first one that holds a
// row: two single-partition reads (an indexed partition without rows is
// left by a batch that failed between its index and inbox writes; such a
// partition costs one more read). Seqs may jump over any number of
// partitions, so no search over partition numbers would do.
func (s *Store) LastInboxSeq(ctx context.Context, userID string) (uint64, error) {
	if err := s.check(ctx); err != nil {
		return 0, err
	}
	if userID == "" {
		return 0, nil
	}
	q := s.q(ctx, stmtInboxIdxDesc, userID).PageSize(16)
	defer q.Release()
	it := q.Iter()
	var b int64
	for it.Scan(&b) {
		v, ok, err := s.lastSeqIn(ctx, userID, b)
		if err != nil {
			it.Close()
			return 0, err
		}
		if ok {
			it.Close()
			return v, nil
		}
	}
	if err := it.Close(); err != nil {
		return 0, err
	}
	// No indexed partition holds a row: a new user, or one whose entries
	// were all written before the index existed (migration 004), when
	// partitions were contiguous from 0.
	return s.lastSeqContiguous(ctx, userID)
}

// lastSeqContiguous finds the last non-empty partition of an inbox whose
// partitions are contiguous from bucket 0 by exponential then binary
// search (two single-row reads below 100000 entries).
func (s *Store) lastSeqContiguous(ctx context.Context, userID string) (uint64, error) {
	best, ok, err := s.lastSeqIn(ctx, userID, 0)
	if err != nil || !ok {
		return 0, err
	}
	lo, hi := int64(0), int64(-1) // lo non-empty, hi empty (once found)
	for step := int64(1); hi < 0; step *= 2 {
		probe := lo + step
		if probe > maxSeq/InboxBucketSeqs {
			hi = maxSeq/InboxBucketSeqs + 1
			break
		}
		v, ok, err := s.lastSeqIn(ctx, userID, probe)
		if err != nil {
			return 0, err
		}
		if !ok {
			hi = probe
			break
		}
		lo, best = probe, v
	}
	for hi-lo > 1 {
		mid := lo + (hi-lo)/2
		v, ok, err := s.lastSeqIn(ctx, userID, mid)
		if err != nil {
			return 0, err
		}
		if ok {
			lo, best = mid, v
		} else {
			hi = mid
		}
	}
	return best, nil
}

// scanMessage reads one row of msgCols.
type msgRow struct {
	id, ref                               int64
	sender, device, client, text, forUser string
	created                               time.Time
	kind                                  int8
}

func (r *msgRow) dest() []any {
	return []any{&r.id, &r.sender, &r.device, &r.client, &r.text, &r.created, &r.kind, &r.ref, &r.forUser}
}

func (r *msgRow) message(channelID string) *store.Message {
	return &store.Message{
		ChannelID:       channelID,
		MessageID:       decID(r.id),
		SenderID:        r.sender,
		SenderDeviceID:  r.device,
		ClientMessageID: r.client,
		Text:            r.text,
		CreatedAt:       utc(r.created),
		Kind:            store.MessageKind(r.kind),
		RefMessageID:    decID(r.ref),
		ForUser:         r.forUser,
	}
}

// GetMessage returns one message or store.ErrNotFound. One
// single-partition read.
func (s *Store) GetMessage(ctx context.Context, channelID string, messageID uint64) (*store.Message, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	var r msgRow
	ok, err := s.scan1(ctx, stmtGetMessage, []any{channelID, messageBucket(messageID), encID(messageID)}, r.dest()...)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, store.ErrNotFound
	}
	return r.message(channelID), nil
}

// History returns up to limit messages of the channel in ascending
// message_id order: forward from after (exclusive) if after > 0, else
// backward from before (exclusive; 0 = from the newest). more reports
// whether further messages exist in the reading direction; limit <= 0
// returns none and more tells whether any exist.
//
// It walks the channel's non-empty buckets (channel_buckets) in the reading
// direction, reading at most limit+1 rows in total; it stops at the
// channel's first (or last) bucket, so empty periods cost nothing.
func (s *Store) History(ctx context.Context, channelID string, before, after uint64, limit int) ([]*store.Message, bool, error) {
	if err := s.check(ctx); err != nil {
		return nil, false, err
	}
	if channelID == "" {
		return nil, false, nil
	}
	limit = max(limit, 0)
	need := limit + 1
	forward := after > 0
	var bq *gocql.Query
	switch {
	case forward:
		if after == math.MaxUint64 {
			return nil, false, nil
		}
		bq = s.q(ctx, stmtBucketsAtLeast, channelID, messageBucket(after+1))
	case before > 0:
		bq = s.q(ctx, stmtBucketsAtMost, channelID, messageBucket(before-1))
	default:
		bq = s.q(ctx, stmtBucketsDesc, channelID)
	}
	it := bq.PageSize(64).Iter()
	var msgs []*store.Message
	var bucket int64
	for len(msgs) < need && it.Scan(&bucket) {
		var q *gocql.Query
		switch {
		case forward:
			q = s.q(ctx, stmtMsgsAfter, channelID, bucket, encID(after), need-len(msgs))
		case before > 0:
			q = s.q(ctx, stmtMsgsBefore, channelID, bucket, encID(before), need-len(msgs))
		default:
			q = s.q(ctx, stmtMsgsNewest, channelID, bucket, need-len(msgs))
		}
		mit := q.Iter()
		var r msgRow
		for mit.Scan(r.dest()...) {
			msgs = append(msgs, r.message(channelID))
		}
		err := mit.Close()
		q.Release()
		if err != nil {
			it.Close()
			bq.Release()
			return nil, false, err
		}
	}
	err := it.Close()
	bq.Release()
	if err != nil {
		return nil, false, err
	}
	more := len(msgs) > limit
	if more {
		msgs = msgs[:limit]
	}
	if !forward {
		slices.Reverse(msgs)
	}
	if len(msgs) == 0 {
		msgs = nil
	}
	return msgs, more, nil
}

type inboxRef struct {
	seq uint64
	ch  string
	id  uint64
}

// Inbox returns up to limit deliveries of the user with seq > afterSeq in
// ascending seq order, each joined with its message, and whether more
// remain; limit <= 0 returns none and more tells whether any exist.
//
// It reads the entries from the partition of afterSeq+1 and, if the page
// is not full, from the user's later partitions listed in inbox_buckets
// (a user's seqs may jump over whole partitions: holes of any size cost
// one index read, never a read per empty partition); then it joins the
// messages with one "IN" read per message partition, concurrently. An
// entry whose message is missing (lost data: AppendBatch writes messages
// first) is skipped with a warning rather than blocking the user's sync.
func (s *Store) Inbox(ctx context.Context, userID string, afterSeq uint64, limit int) ([]store.Delivery, bool, error) {
	if err := s.check(ctx); err != nil {
		return nil, false, err
	}
	if userID == "" || afterSeq >= maxSeq {
		return nil, false, nil
	}
	limit = max(limit, 0)
	need := limit + 1
	var refs []inboxRef
	readPart := func(b int64) error {
		q := s.q(ctx, stmtInboxAfter, userID, b, int64(afterSeq), need-len(refs))
		it := q.Iter()
		var seq, id int64
		var ch string
		for it.Scan(&seq, &ch, &id) {
			refs = append(refs, inboxRef{uint64(seq), ch, decID(id)})
		}
		err := it.Close()
		q.Release()
		return err
	}
	cur := inboxBucket(afterSeq + 1)
	if err := readPart(cur); err != nil {
		return nil, false, err
	}
	if len(refs) < need {
		// The page goes on in the user's next partitions that exist
		// (inbox_buckets), however far the seqs jumped. A partition with
		// rows but no index row was written before the index existed
		// (migration 004): such partitions are contiguous (the old
		// AppendBatch filled them in order), so its successor is read
		// directly, as the old Inbox did.
		q := s.q(ctx, stmtInboxIdxFrom, userID, cur).PageSize(16)
		it := q.Iter()
		var ib int64
		have := it.Scan(&ib) // ib: the next index row not yet passed
		indexed := have && ib == cur
		if indexed {
			have = it.Scan(&ib)
		}
		for len(refs) < need {
			n := len(refs)
			switch {
			case !indexed && n > 0 && refs[n-1].seq/InboxBucketSeqs == uint64(cur):
				cur++ // an unindexed (older) partition with rows
				indexed = have && ib == cur
			case have:
				cur, indexed = ib, true
			default:
				n = -1
			}
			if n < 0 {
				break
			}
			if indexed {
				have = it.Scan(&ib)
			}
			if err := readPart(cur); err != nil {
				it.Close()
				q.Release()
				return nil, false, err
			}
		}
		err := it.Close()
		q.Release()
		if err != nil {
			return nil, false, err
		}
	}
	more := len(refs) > limit
	if more {
		refs = refs[:limit]
	}
	if len(refs) == 0 {
		return nil, more, nil
	}

	// Join: group message ids by message partition.
	type group struct {
		p   partKey
		ids []int64
	}
	var groups []group
	for _, r := range refs {
		p := partKey{r.ch, messageBucket(r.id)}
		j := -1
		for k := range groups {
			if groups[k].p == p && len(groups[k].ids) < maxInList {
				j = k
				break
			}
		}
		if j < 0 {
			groups = append(groups, group{p: p})
			j = len(groups) - 1
		}
		if !slices.Contains(groups[j].ids, encID(r.id)) {
			groups[j].ids = append(groups[j].ids, encID(r.id))
		}
	}
	type msgKey struct {
		ch string
		id uint64
	}
	found := make([][]*store.Message, len(groups))
	err := parallel.Do(ctx, len(groups), s.cfg.WriteConcurrency, func(ctx context.Context, i int) error {
		g := groups[i]
		q := s.q(ctx, stmtMessagesIn, g.p.id, g.p.bucket, g.ids)
		it := q.Iter()
		var r msgRow
		for it.Scan(r.dest()...) {
			found[i] = append(found[i], r.message(g.p.id))
		}
		err := it.Close()
		q.Release()
		return err
	})
	if err != nil {
		return nil, false, err
	}
	byKey := make(map[msgKey]*store.Message, len(refs))
	for _, ms := range found {
		for _, m := range ms {
			byKey[msgKey{m.ChannelID, m.MessageID}] = m
		}
	}
	ds := make([]store.Delivery, 0, len(refs))
	for _, r := range refs {
		m := byKey[msgKey{r.ch, r.id}]
		if m == nil {
			s.cfg.Logger.Warn("scylla store: inbox entry without its message; skipped",
				"user", userID, "seq", r.seq, "channel", r.ch, "message_id", r.id)
			continue
		}
		ds = append(ds, store.Delivery{Seq: r.seq, Message: m})
	}
	return ds, more, nil
}

// LookupDedup returns the recorded send for (senderID, clientMessageID)
// within the dedup window (cfg.DedupTTL), or store.ErrNotFound.
func (s *Store) LookupDedup(ctx context.Context, senderID, clientMessageID string) (*store.Dedup, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	d := &store.Dedup{SenderID: senderID, ClientMessageID: clientMessageID}
	var id int64
	var created time.Time
	var users []string
	var seqs []int64
	var fp *int64 // null in records written before migration 007
	ok, err := s.scan1(ctx, stmtGetDedup, []any{senderID, clientMessageID}, &d.ChannelID, &id, &created, &users, &seqs, &fp)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, store.ErrNotFound
	}
	d.MessageID = decID(id)
	d.CreatedAt = utc(created)
	if fp != nil {
		d.Fingerprint = uint64(*fp)
	}
	if len(users) > 0 && len(users) == len(seqs) {
		d.Inbox = make([]store.Placement, len(users))
		for i := range users {
			d.Inbox[i] = store.Placement{UserID: users[i], Seq: uint64(seqs[i])}
		}
	}
	return d, nil
}

// InboxEntryAt returns the user's inbox entry at seq or store.ErrNotFound:
// one single-row read.
func (s *Store) InboxEntryAt(ctx context.Context, userID string, seq uint64) (*store.InboxEntry, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	if userID == "" || seq > maxSeq {
		return nil, store.ErrNotFound
	}
	e := &store.InboxEntry{UserID: userID, Seq: seq}
	var id int64
	ok, err := s.scan1(ctx, stmtInboxAt, []any{userID, inboxBucket(seq), int64(seq)}, &e.ChannelID, &id)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, store.ErrNotFound
	}
	e.MessageID = decID(id)
	return e, nil
}

// ---------------------------------------------------------------- writer

// stmtWriter collects the statements of one write step. writeAll sends
// them as few multi-partition unlogged batches as the batch limits allow
// (maxBatchStmts statements, about maxBatchBytes bytes each): one request
// per step for a typical group commit instead of one per partition,
// which is what the CQL server's CPU per message is made of. An unlogged
// batch is atomic per partition only, exactly like the concurrent
// single-partition writes it replaces: after an error any subset of its
// partitions may be written, and the steps' order is what the guarantees
// of AppendBatch rest on.
type stmtWriter struct {
	groups [][]gocql.BatchEntry // each group goes in one request
	sizes  []int
	n      int // statements
}

// add appends statements that must go in the same request (one
// partition's insert and trim: one mutation).
func (w *stmtWriter) add(es ...gocql.BatchEntry) {
	// Cassandra measures a batch by its mutations' data size, which is
	// several times the values' bytes (measured on 5.0: ~400 B per inbox
	// row, ~1.9 KiB per message with its activity row and trim): count
	// 200 B per statement and 64 B per value on top of the values.
	size := 0
	for _, e := range es {
		size += 200
		for _, a := range e.Args {
			size += 64
			switch v := a.(type) {
			case string:
				size += len(v)
			case []string:
				for _, x := range v {
					size += len(x) + 64
				}
			case []int64:
				size += 72 * len(v)
			}
		}
	}
	w.groups = append(w.groups, es)
	w.sizes = append(w.sizes, size)
	w.n += len(es)
}

// writeAll sends w's statements, the chunks concurrently (at most
// cfg.WriteConcurrency at once), and returns the first error.
func (s *Store) writeAll(ctx context.Context, w *stmtWriter) error {
	if w.n == 0 {
		return nil
	}
	var chunks [][]gocql.BatchEntry
	var cur []gocql.BatchEntry
	size := 0
	for i, g := range w.groups {
		if len(cur) > 0 && (len(cur)+len(g) > maxBatchStmts || size+w.sizes[i] > maxBatchBytes) {
			chunks = append(chunks, cur)
			cur, size = nil, 0
		}
		cur = append(cur, g...)
		size += w.sizes[i]
	}
	chunks = append(chunks, cur)
	return parallel.Do(ctx, len(chunks), s.cfg.WriteConcurrency, func(ctx context.Context, i int) error {
		c := chunks[i]
		if len(c) == 1 {
			return s.exec(ctx, c[0].Stmt, c[0].Args...)
		}
		bt := s.batch(ctx)
		bt.Entries = c
		return s.sess.Session.ExecuteBatch(bt)
	})
}
