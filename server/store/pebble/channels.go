package pebble

import (
	"context"
	"errors"

	"github.com/cockroachdb/pebble/v2"

	"github.com/chatd/chatd/server/store"
)

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
	if err := s.absent(key); err != nil {
		return err
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
	return getChecked(ctx, s, []string{channelID}, key1(tChannel, channelID), func(v []byte) (*store.Channel, error) { return decodeChannel(channelID, v) })
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
	return getChecked(ctx, s, []string{channelID, userID}, key2(tMember, channelID, userID), func(v []byte) (*store.Member, error) { return decodeMember(channelID, userID, v) })
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

// ListUserChannels returns the channels userID belongs to in the order of
// store.PageByActivity (most recent activity first: the newest message's
// CreatedAt, or the channel's CreatedAt while it has no message),
// skipping the first offset and returning at most limit (limit <= 0:
// none). It reads the user's reverse index and one activity record per
// channel, then sorts: O(n log n) in the user's channel count.
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
	return store.PageByActivity(acts, offset, limit), nil
}
