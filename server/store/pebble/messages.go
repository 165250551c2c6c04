package pebble

import (
	"context"
	"errors"
	"slices"

	"github.com/cockroachdb/pebble/v2"

	"github.com/chatd/chatd/server/store"
)

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
	return getChecked(ctx, s, []string{channelID}, keyN(tMessage, channelID, messageID), func(v []byte) (*store.Message, error) { return decodeMessage(channelID, messageID, v) })
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
