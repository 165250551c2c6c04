package pebble

import (
	"context"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"

	"github.com/chatd/chatd/server/store"
)

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

// InboxEntryAt returns the user's inbox entry at seq or store.ErrNotFound.
func (s *Store) InboxEntryAt(ctx context.Context, userID string, seq uint64) (*store.InboxEntry, error) {
	return getChecked(ctx, s, []string{userID}, appendKeyN(nil, tInbox, userID, seq), func(v []byte) (*store.InboxEntry, error) {
		ch, id, err := decodeRef(v, "")
		if err != nil {
			return nil, err
		}
		return &store.InboxEntry{UserID: userID, Seq: seq, ChannelID: ch, MessageID: id}, nil
	})
}
