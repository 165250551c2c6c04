package pebble

import (
	"context"
	"encoding/binary"
	"errors"
	"hash/maphash"
	"slices"

	"github.com/cockroachdb/pebble/v2"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/chatd/chatd/server/store"
)

// ------------------------------------------------------------ revisions

// isRevision reports whether AppendBatch indexes m as a revision.
func isRevision(m *store.Message) bool {
	return (m.Kind == store.KindEdit || m.Kind == store.KindDelete) && m.RefMessageID > 0
}

// appendRevisionKey builds x channel 0x00 be64(ref) be64(id).
func appendRevisionKey(k []byte, channelID string, ref, id uint64) []byte {
	k = append(k, tRevision)
	k = append(k, channelID...)
	k = append(k, 0)
	k = binary.BigEndian.AppendUint64(k, ref)
	return binary.BigEndian.AppendUint64(k, id)
}

// Revision value: 1 kind, 2 sender, 3 for_user, 4 text, 5 created_at.
func encodeRevision(b []byte, m *store.Message) []byte {
	b = appendUint(b, 1, uint64(m.Kind))
	b = appendString(b, 2, m.SenderID)
	b = appendString(b, 3, m.ForUser)
	b = appendString(b, 4, m.Text)
	return appendTime(b, 5, m.CreatedAt)
}

func decodeRevision(channelID string, ref, id uint64, b []byte) (store.Revision, error) {
	r := store.Revision{ChannelID: channelID, RefMessageID: ref, MessageID: id}
	err := walk(b, func(num protowire.Number, v uint64, p []byte) {
		switch num {
		case 1:
			r.Kind = store.MessageKind(v)
		case 2:
			r.SenderID = string(p)
		case 3:
			r.ForUser = string(p)
		case 4:
			r.Text = string(p)
		case 5:
			r.CreatedAt = decodeTime(v)
		}
	})
	return r, err
}

// Revisions returns the channel's revisions with RefMessageID in [from,
// to], ordered by (RefMessageID, MessageID). One range scan.
func (s *Store) Revisions(ctx context.Context, channelID string, from, to uint64) ([]store.Revision, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	defer s.ops.RUnlock()
	if err := checkIDs(channelID); err != nil {
		return nil, err
	}
	if from > to {
		return nil, nil
	}
	lo := appendRevisionKey(nil, channelID, from, 0)
	var hi []byte
	if to == ^uint64(0) {
		_, hi = prefixBounds(tRevision, channelID)
	} else {
		hi = appendRevisionKey(nil, channelID, to+1, 0)
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	plen := len(channelID) + 2
	var out []store.Revision
	for ok := it.First(); ok; ok = it.Next() {
		k := it.Key()
		if len(k) != plen+16 {
			return nil, errCorrupt
		}
		v, err := it.ValueAndErr()
		if err != nil {
			return nil, err
		}
		r, err := decodeRevision(channelID, beUint64(k[plen:]), beUint64(k[plen+8:]), v)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, it.Error()
}

// ------------------------------------------------------------ receipts

// receiptKey builds k channel 0x00 user 0x00 marker.
func receiptKey(channelID, userID string, marker byte) []byte {
	k := make([]byte, 0, 4+len(channelID)+len(userID))
	k = append(k, tReceipt)
	k = append(k, channelID...)
	k = append(k, 0)
	k = append(k, userID...)
	k = append(k, 0, marker)
	return k
}

type markerWrite struct {
	key []byte
	val uint64
}

// AdvanceReceipts raises the given markers to max(stored, given), in one
// batch: fsync'd when it moves a read marker, not fsync'd (pebble.NoSync,
// like AdvanceCursor) when it moves only delivery markers, which every
// Ack moves: see "Durability and concurrency" in the package doc. The
// read-modify-write of each marker holds its key's stripe lock (stripes
// locked in ascending order, so concurrent calls cannot deadlock).
func (s *Store) AdvanceReceipts(ctx context.Context, rs []store.Receipt) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	defer s.ops.RUnlock()
	var ws []markerWrite
	sync := false // only delivery markers: see the package doc
	for i := range rs {
		r := &rs[i]
		sync = sync || r.ReadUpTo > 0 || r.ReadShownUpTo > 0
		if r.ChannelID == "" || r.UserID == "" {
			return ErrInvalidID
		}
		if err := checkIDs(r.ChannelID, r.UserID); err != nil {
			return err
		}
		for _, m := range [...]struct {
			kind byte
			v    uint64
		}{{store.MarkerDelivered, r.DeliveredUpTo}, {store.MarkerRead, r.ReadUpTo}, {store.MarkerReadShown, r.ReadShownUpTo}} {
			if m.v > 0 {
				ws = append(ws, markerWrite{receiptKey(r.ChannelID, r.UserID, m.kind), m.v})
			}
		}
	}
	if len(ws) == 0 {
		return nil
	}
	stripes := make([]uint64, 0, len(ws))
	for _, w := range ws {
		stripes = append(stripes, s.stripe(w.key))
	}
	slices.Sort(stripes)
	stripes = slices.Compact(stripes)
	for _, i := range stripes {
		s.locks[i].Lock()
	}
	defer func() {
		for _, i := range stripes {
			s.locks[i].Unlock()
		}
	}()
	wb := s.db.NewBatch()
	defer wb.Close()
	n := 0
	for _, w := range ws {
		cur, err := s.marker(w.key)
		if err != nil {
			return err
		}
		if w.val <= cur {
			continue
		}
		if err := wb.Set(w.key, binary.BigEndian.AppendUint64(nil, w.val), nil); err != nil {
			return err
		}
		n++
	}
	if n == 0 {
		return nil
	}
	if !sync {
		return wb.Commit(pebble.NoSync)
	}
	return wb.Commit(pebble.Sync)
}

// stripe returns the index of key's stripe lock.
func (s *Store) stripe(key []byte) uint64 {
	return maphash.Bytes(s.seed, key) % uint64(len(s.locks))
}

// marker reads one marker value (0 if absent).
func (s *Store) marker(key []byte) (uint64, error) {
	var v uint64
	err := s.get(key, func(b []byte) error {
		if len(b) != 8 {
			return errCorrupt
		}
		v = binary.BigEndian.Uint64(b)
		return nil
	})
	if errors.Is(err, store.ErrNotFound) {
		return 0, nil
	}
	return v, err
}

// GetReceipt returns the user's markers in the channel (zero if none).
func (s *Store) GetReceipt(ctx context.Context, channelID, userID string) (store.Receipt, error) {
	r := store.Receipt{ChannelID: channelID, UserID: userID}
	if err := s.check(ctx); err != nil {
		return r, err
	}
	defer s.ops.RUnlock()
	if err := checkIDs(channelID, userID); err != nil {
		return r, err
	}
	lo := key2(tReceipt, channelID, userID)
	lo = append(lo, 0)
	hi := append(lo[:len(lo)-1:len(lo)-1], 1)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return r, err
	}
	defer it.Close()
	for ok := it.First(); ok; ok = it.Next() {
		k := it.Key()
		if len(k) != len(lo)+1 {
			return r, errCorrupt
		}
		v, err := it.ValueAndErr()
		if err != nil {
			return r, err
		}
		if err := setMarker(&r, k[len(k)-1], v); err != nil {
			return r, err
		}
	}
	return r, it.Error()
}

// ListReceipts returns the markers of every user of the channel that has
// any, in ascending user id (byte) order. One range scan.
func (s *Store) ListReceipts(ctx context.Context, channelID string) ([]store.Receipt, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	defer s.ops.RUnlock()
	if err := checkIDs(channelID); err != nil {
		return nil, err
	}
	var out []store.Receipt
	err := s.scan(tReceipt, channelID, func(sfx, v []byte) error {
		// sfx = user 0x00 marker
		if len(sfx) < 3 || sfx[len(sfx)-2] != 0 {
			return errCorrupt
		}
		user := sfx[:len(sfx)-2]
		if n := len(out); n == 0 || out[n-1].UserID != string(user) {
			out = append(out, store.Receipt{ChannelID: channelID, UserID: string(user)})
		}
		return setMarker(&out[len(out)-1], sfx[len(sfx)-1], v)
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func setMarker(r *store.Receipt, kind byte, v []byte) error {
	if len(v) != 8 {
		return errCorrupt
	}
	x := binary.BigEndian.Uint64(v)
	switch kind {
	case store.MarkerDelivered:
		r.DeliveredUpTo = x
	case store.MarkerRead:
		r.ReadUpTo = x
	case store.MarkerReadShown:
		r.ReadShownUpTo = x
	}
	return nil
}

// ------------------------------------------------------------ settings

// SetReadReceiptsHidden records the user's read-receipt setting durably.
func (s *Store) SetReadReceiptsHidden(ctx context.Context, userID string, hidden bool) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	defer s.ops.RUnlock()
	if userID == "" {
		return ErrInvalidID
	}
	if err := checkIDs(userID); err != nil {
		return err
	}
	var v []byte
	if hidden {
		v = appendUint(v, 1, 1)
	}
	return s.set(key1(tSetting, userID), v)
}

// ReadReceiptsHidden reports the user's read-receipt setting.
func (s *Store) ReadReceiptsHidden(ctx context.Context, userID string) (bool, error) {
	if err := s.check(ctx); err != nil {
		return false, err
	}
	defer s.ops.RUnlock()
	if err := checkIDs(userID); err != nil {
		return false, err
	}
	hidden := false
	err := s.get(key1(tSetting, userID), func(v []byte) error {
		return walk(v, func(num protowire.Number, x uint64, _ []byte) {
			if num == 1 {
				hidden = x != 0
			}
		})
	})
	if errors.Is(err, store.ErrNotFound) {
		return false, nil
	}
	return hidden, err
}
