package scylla

import (
	"context"
	"slices"
	"strings"
	"time"

	"github.com/gocql/gocql"

	"github.com/chatd/chatd/server/store"
)

const (
	stmtInsertRevision = `INSERT INTO message_revisions (channel_id, bucket, ref_message_id, message_id, kind, sender_id, for_user, text, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`
	stmtRevisionsIn    = `SELECT ref_message_id, message_id, kind, sender_id, for_user, text, created_at FROM message_revisions WHERE channel_id = ? AND bucket = ? AND ref_message_id >= ? AND ref_message_id <= ?`
	stmtBucketsBetween = `SELECT bucket FROM channel_buckets WHERE channel_id = ? AND bucket >= ? AND bucket <= ? ORDER BY bucket ASC`

	stmtInsertMarker = `INSERT INTO receipts (channel_id, user_id, marker, message_id) VALUES (?, ?, ?, ?)`
	stmtTrimMarker   = `DELETE FROM receipts WHERE channel_id = ? AND user_id = ? AND marker = ? AND message_id < ?`
	stmtUserMarkers  = `SELECT marker, message_id FROM receipts WHERE channel_id = ? AND user_id = ?`
	stmtChanMarkers  = `SELECT user_id, marker, message_id FROM receipts WHERE channel_id = ?`

	stmtSetHideReceipts = `UPDATE user_settings SET hide_read_receipts = ? WHERE user_id = ?`
	stmtGetHideReceipts = `SELECT hide_read_receipts FROM user_settings WHERE user_id = ?`
)

// isRevision reports whether AppendBatch indexes m in message_revisions.
func isRevision(m *store.Message) bool {
	return (m.Kind == store.KindEdit || m.Kind == store.KindDelete) && m.RefMessageID > 0
}

func revisionArgs(m *store.Message) []any {
	return []any{m.ChannelID, messageBucket(m.RefMessageID), encID(m.RefMessageID), encID(m.MessageID),
		int8(m.Kind), m.SenderID, m.ForUser, m.Text, ts(m.CreatedAt)}
}

// Revisions returns the channel's revisions with RefMessageID in [from,
// to], ordered by (RefMessageID, MessageID). It reads the channel's
// non-empty buckets in that range (channel_buckets), then one range read
// of message_revisions per bucket: two reads for a page within one
// 10-day bucket.
func (s *Store) Revisions(ctx context.Context, channelID string, from, to uint64) ([]store.Revision, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	if channelID == "" {
		return nil, invalid("channel id", "")
	}
	if from > to {
		return nil, nil
	}
	lo, hi := messageBucket(from), messageBucket(to)
	var buckets []int64
	if lo == hi {
		buckets = []int64{lo}
	} else {
		q := s.q(ctx, stmtBucketsBetween, channelID, lo, hi)
		it := q.PageSize(256).Iter()
		var b int64
		for it.Scan(&b) {
			buckets = append(buckets, b)
		}
		err := it.Close()
		q.Release()
		if err != nil {
			return nil, err
		}
	}
	var out []store.Revision
	for _, b := range buckets {
		q := s.q(ctx, stmtRevisionsIn, channelID, b, encID(from), encID(to))
		it := q.PageSize(1000).Iter()
		var (
			ref, id              int64
			kind                 int8
			sender, forUser, txt string
			created              time.Time
		)
		for it.Scan(&ref, &id, &kind, &sender, &forUser, &txt, &created) {
			out = append(out, store.Revision{
				ChannelID: channelID, RefMessageID: decID(ref), MessageID: decID(id),
				Kind: store.MessageKind(kind), SenderID: sender, ForUser: forUser, Text: txt, CreatedAt: utc(created),
			})
		}
		err := it.Close()
		q.Release()
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// AdvanceReceipts raises the given markers without reading them: each
// marker write inserts the row (channel, user, marker, value) and deletes
// the rows of lower value with a range tombstone, in the same request
// (one mutation of the partition). The tombstone covers only values below
// the one written with it, so the highest value ever written survives any
// order of concurrent or replayed writes (a max register without a
// lightweight transaction). The writes of concurrent calls go together
// as multi-partition unlogged batches (coalescer): one request for many
// acks under load.
func (s *Store) AdvanceReceipts(ctx context.Context, rs []store.Receipt) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	var groups [][]gocql.BatchEntry
	for i := range rs {
		r := &rs[i]
		if r.ChannelID == "" || r.UserID == "" {
			return invalid("channel or user id", r.ChannelID+"/"+r.UserID)
		}
		for _, m := range [...]struct {
			kind int8
			v    uint64
		}{{store.MarkerDelivered, r.DeliveredUpTo}, {store.MarkerRead, r.ReadUpTo}, {store.MarkerReadShown, r.ReadShownUpTo}} {
			if m.v == 0 {
				continue
			}
			groups = append(groups, []gocql.BatchEntry{
				{Stmt: stmtInsertMarker, Args: []any{r.ChannelID, r.UserID, m.kind, encID(m.v)}, Idempotent: true},
				{Stmt: stmtTrimMarker, Args: []any{r.ChannelID, r.UserID, m.kind, encID(m.v)}, Idempotent: true}})
		}
	}
	if len(groups) == 0 {
		return nil
	}
	return s.coal.write(ctx, groups...)
}

func applyMarker(r *store.Receipt, kind int8, v uint64) {
	switch kind {
	case store.MarkerDelivered:
		r.DeliveredUpTo = max(r.DeliveredUpTo, v)
	case store.MarkerRead:
		r.ReadUpTo = max(r.ReadUpTo, v)
	case store.MarkerReadShown:
		r.ReadShownUpTo = max(r.ReadShownUpTo, v)
	}
}

// GetReceipt returns the user's markers in the channel (zero if none):
// the highest live row of each marker. One single-partition read.
func (s *Store) GetReceipt(ctx context.Context, channelID, userID string) (store.Receipt, error) {
	r := store.Receipt{ChannelID: channelID, UserID: userID}
	if err := s.check(ctx); err != nil {
		return r, err
	}
	if channelID == "" || userID == "" {
		return r, nil
	}
	q := s.q(ctx, stmtUserMarkers, channelID, userID)
	it := q.Iter()
	var kind int8
	var v int64
	for it.Scan(&kind, &v) {
		applyMarker(&r, kind, decID(v))
	}
	err := it.Close()
	q.Release()
	return r, err
}

// ListReceipts returns the markers of every user of the channel that has
// any, in ascending user id order. One single-partition read.
func (s *Store) ListReceipts(ctx context.Context, channelID string) ([]store.Receipt, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	if channelID == "" {
		return nil, nil
	}
	q := s.q(ctx, stmtChanMarkers, channelID)
	it := q.PageSize(1000).Iter()
	var out []store.Receipt
	var user string
	var kind int8
	var v int64
	for it.Scan(&user, &kind, &v) {
		if n := len(out); n == 0 || out[n-1].UserID != user {
			out = append(out, store.Receipt{ChannelID: channelID, UserID: user})
		}
		applyMarker(&out[len(out)-1], kind, decID(v))
	}
	err := it.Close()
	q.Release()
	if err != nil {
		return nil, err
	}
	// Clustering order is CQL text order (UTF-8 bytes): already sorted.
	slices.SortStableFunc(out, func(a, b store.Receipt) int { return strings.Compare(a.UserID, b.UserID) })
	return out, nil
}

// SetReadReceiptsHidden records the setting (a plain last-write-wins
// cell).
func (s *Store) SetReadReceiptsHidden(ctx context.Context, userID string, hidden bool) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	if userID == "" {
		return invalid("user id", "")
	}
	return s.exec(ctx, stmtSetHideReceipts, hidden, userID)
}

// ReadReceiptsHidden reports the setting (false if never set).
func (s *Store) ReadReceiptsHidden(ctx context.Context, userID string) (bool, error) {
	if err := s.check(ctx); err != nil {
		return false, err
	}
	if userID == "" {
		return false, nil
	}
	var hidden bool
	_, err := s.scan1(ctx, stmtGetHideReceipts, []any{userID}, &hidden)
	return hidden, err
}
