package scylla

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/gocql/gocql"

	"github.com/chatd/chatd/server/internal/parallel"
	"github.com/chatd/chatd/server/store"
)

const (
	stmtCreateChannel = `INSERT INTO channel_members (channel_id, type, name, created_at, created_by, member_count) VALUES (?, ?, ?, ?, ?, ?) IF NOT EXISTS`
	stmtPutMember     = `INSERT INTO channel_members (channel_id, user_id, role, joined_at) VALUES (?, ?, ?, ?)`
	stmtAddMemberCAS  = `INSERT INTO channel_members (channel_id, user_id, role, joined_at) VALUES (?, ?, ?, ?) IF NOT EXISTS`
	stmtSetCountCAS   = `UPDATE channel_members SET member_count = ? WHERE channel_id = ? IF member_count = ?`
	stmtSetRoleCAS    = `UPDATE channel_members SET role = ? WHERE channel_id = ? AND user_id = ? IF EXISTS`
	stmtDelMemberCAS  = `DELETE FROM channel_members WHERE channel_id = ? AND user_id = ? IF EXISTS`
	stmtGetChannel    = `SELECT type, name, created_at, created_by FROM channel_members WHERE channel_id = ? LIMIT 1`
	stmtChannelCount  = `SELECT type, member_count FROM channel_members WHERE channel_id = ? LIMIT 1`
	stmtGetMember     = `SELECT role, joined_at FROM channel_members WHERE channel_id = ? AND user_id = ?`
	stmtListMembers   = `SELECT user_id, role, joined_at FROM channel_members WHERE channel_id = ?`
	stmtAddUserChan   = `INSERT INTO user_channels (user_id, channel_id) VALUES (?, ?)`
	stmtDelUserChan   = `DELETE FROM user_channels WHERE user_id = ? AND channel_id = ?`
	stmtUserChans     = `SELECT channel_id FROM user_channels WHERE user_id = ?`
	stmtActivity      = `SELECT message_id, created_at FROM channel_activity WHERE channel_id = ? LIMIT 1`
)

// casBatch executes a conditional single-partition batch of entries and
// reports whether it applied; row receives the current values when it did
// not.
func (s *Store) casBatch(ctx context.Context, row map[string]any, entries ...gocql.BatchEntry) (bool, error) {
	bt := s.batch(ctx)
	bt.Entries = entries
	applied, it, err := s.sess.Session.MapExecuteBatchCAS(bt, row)
	if it != nil {
		if cerr := it.Close(); err == nil {
			err = cerr
		}
	}
	return applied, err
}

// CreateChannel inserts ch with its initial members in one single-partition
// lightweight transaction (the channel fields are static columns of the
// members partition), then indexes the channel for each member
// (user_channels) and records its creation as activity.
// store.ErrAlreadyExists if the id is taken; store.ErrGroupFull if a group
// gets more than store.MaxGroupMembers distinct members (a member listed
// twice is stored once, last entry wins); ErrInvalidID for an empty channel
// or member id. Nothing is written on error, except that a failure after
// the transaction can leave some members unindexed (ListUserChannels does
// not list the channel for them until they are added again).
func (s *Store) CreateChannel(ctx context.Context, ch *store.Channel, members []store.Member) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	if ch.ID == "" {
		return invalid("channel id", "")
	}
	ms := make([]store.Member, 0, len(members))
	for _, m := range members {
		if m.UserID == "" {
			return invalid("member user id", "")
		}
		m.ChannelID = ch.ID
		if i := slices.IndexFunc(ms, func(o store.Member) bool { return o.UserID == m.UserID }); i >= 0 {
			ms[i] = m
		} else {
			ms = append(ms, m)
		}
	}
	if ch.Type == store.ChannelGroup && len(ms) > store.MaxGroupMembers {
		return store.ErrGroupFull
	}
	entries := make([]gocql.BatchEntry, 0, 1+len(ms))
	entries = append(entries, gocql.BatchEntry{Stmt: stmtCreateChannel,
		Args: []any{ch.ID, int8(ch.Type), ch.Name, ts(ch.CreatedAt), ch.CreatedBy, len(ms)}})
	for _, m := range ms {
		entries = append(entries, gocql.BatchEntry{Stmt: stmtPutMember, Args: []any{ch.ID, m.UserID, int8(m.Role), ts(m.JoinedAt)}})
	}
	created := false
	for attempt := 1; attempt <= maxCASAttempts && !created; attempt++ {
		row := map[string]any{}
		applied, err := s.casBatch(ctx, row, entries...)
		switch {
		case err == nil && applied:
			created = true
		case err == nil:
			if attempt > 1 && sameChannel(row, ch) {
				created = true // our earlier attempt applied
				break
			}
			return store.ErrAlreadyExists
		case casOutcomeUnknown(err):
			if err := casBackoff(ctx, attempt); err != nil {
				return err
			}
		default:
			return fmt.Errorf("scylla store: create channel: %w", err)
		}
	}
	if !created {
		return fmt.Errorf("%w: create channel %q", ErrContention, ch.ID)
	}
	err := parallel.Do(ctx, len(ms)+1, s.cfg.WriteConcurrency, func(ctx context.Context, i int) error {
		if i == len(ms) {
			return s.exec(ctx, stmtInsertAct, ch.ID, encID(0), ts(ch.CreatedAt))
		}
		return s.exec(ctx, stmtAddUserChan, ms[i].UserID, ch.ID)
	})
	if err != nil {
		return fmt.Errorf("scylla store: create channel %q: index members: %w", ch.ID, err)
	}
	return nil
}

// sameChannel reports whether the row returned by a failed transaction is
// the channel ch (created by an earlier attempt whose outcome was unknown).
func sameChannel(row map[string]any, ch *store.Channel) bool {
	typ, _ := row["type"].(int8)
	name, _ := row["name"].(string)
	by, _ := row["created_by"].(string)
	at, _ := row["created_at"].(time.Time)
	return typ == int8(ch.Type) && name == ch.Name && by == ch.CreatedBy && at.Equal(truncMS(ch.CreatedAt))
}

// GetChannel returns the channel or store.ErrNotFound.
func (s *Store) GetChannel(ctx context.Context, channelID string) (*store.Channel, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	if channelID == "" {
		return nil, store.ErrNotFound
	}
	var typ *int8
	var created time.Time
	c := &store.Channel{ID: channelID}
	ok, err := s.scan1(ctx, stmtGetChannel, []any{channelID}, &typ, &c.Name, &created, &c.CreatedBy)
	if err != nil {
		return nil, err
	}
	if !ok || typ == nil {
		return nil, store.ErrNotFound
	}
	c.Type = store.ChannelType(*typ)
	c.CreatedAt = utc(created)
	return c, nil
}

// channelCount returns whether the channel exists and its member count.
func (s *Store) channelCount(ctx context.Context, channelID string) (exists bool, count int, err error) {
	var typ *int8
	var n *int
	ok, err := s.scan1(ctx, stmtChannelCount, []any{channelID}, &typ, &n)
	if err != nil || !ok || typ == nil {
		return false, 0, err
	}
	if n != nil {
		count = *n
	}
	return true, count, nil
}

// AddMember adds m, or updates the role of an existing member (keeping its
// JoinedAt), then indexes the channel for the user (user_channels).
//
// A new member is inserted by a single-partition lightweight transaction
// that also moves the channel's member_count from the value read to that
// value + 1 (IF member_count = n): concurrent AddMember/RemoveMember calls
// of the channel are serialised, so with max > 0 the group never exceeds
// max members (store.ErrGroupFull when it holds max already). Lost rounds
// are retried with a short random backoff. store.ErrNotFound if the
// channel does not exist; ErrInvalidID for an empty user id;
// ErrContention after too many lost rounds.
func (s *Store) AddMember(ctx context.Context, m store.Member, max int) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	if m.ChannelID == "" {
		return store.ErrNotFound
	}
	if m.UserID == "" {
		return invalid("member user id", "")
	}
	maybeApplied := false // an earlier round's outcome is unknown
	for attempt := 1; attempt <= maxCASAttempts; attempt++ {
		if attempt > 1 {
			if err := casBackoff(ctx, attempt); err != nil {
				return err
			}
		}
		exists, count, err := s.channelCount(ctx, m.ChannelID)
		if err != nil {
			return err
		}
		if !exists {
			return store.ErrNotFound
		}
		var role *int8
		var joined time.Time
		isMember, err := s.scan1(ctx, stmtGetMember, []any{m.ChannelID, m.UserID}, &role, &joined)
		if err != nil {
			return err
		}
		if isMember {
			if !maybeApplied && (role == nil || *role != int8(m.Role)) {
				q := s.lwt(ctx, stmtSetRoleCAS, int8(m.Role), m.ChannelID, m.UserID)
				applied, err := q.MapScanCAS(map[string]any{})
				q.Release()
				switch {
				case err == nil && !applied:
					continue // removed meanwhile: add again
				case err != nil && casOutcomeUnknown(err):
					continue // re-read (the update is idempotent)
				case err != nil:
					return fmt.Errorf("scylla store: add member: %w", err)
				}
			}
			return s.exec(ctx, stmtAddUserChan, m.UserID, m.ChannelID)
		}
		if max > 0 && count >= max {
			return store.ErrGroupFull
		}
		applied, err := s.casBatch(ctx, map[string]any{},
			gocql.BatchEntry{Stmt: stmtSetCountCAS, Args: []any{count + 1, m.ChannelID, count}},
			gocql.BatchEntry{Stmt: stmtAddMemberCAS, Args: []any{m.ChannelID, m.UserID, int8(m.Role), ts(m.JoinedAt)}})
		switch {
		case err == nil && applied:
			return s.exec(ctx, stmtAddUserChan, m.UserID, m.ChannelID)
		case err == nil:
			// Lost the round (count moved or the member appeared): re-read.
		case casOutcomeUnknown(err):
			maybeApplied = true
		default:
			return fmt.Errorf("scylla store: add member: %w", err)
		}
	}
	return fmt.Errorf("%w: add member %q to %q", ErrContention, m.UserID, m.ChannelID)
}

// RemoveMember removes a member and decrements the channel's member_count
// in one single-partition lightweight transaction, then drops the channel
// from the user's index. store.ErrNotFound if not a member (or no such
// channel); ErrContention after too many lost rounds.
func (s *Store) RemoveMember(ctx context.Context, channelID, userID string) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	if channelID == "" || userID == "" {
		return store.ErrNotFound
	}
	maybeApplied := false
	for attempt := 1; attempt <= maxCASAttempts; attempt++ {
		if attempt > 1 {
			if err := casBackoff(ctx, attempt); err != nil {
				return err
			}
		}
		exists, count, err := s.channelCount(ctx, channelID)
		if err != nil {
			return err
		}
		if !exists {
			return store.ErrNotFound
		}
		var role *int8
		isMember, err := s.scan1(ctx, stmtGetMember, []any{channelID, userID}, &role, new(time.Time))
		if err != nil {
			return err
		}
		if !isMember {
			// Not a member: make sure the reverse index agrees (repairs an
			// earlier interrupted removal).
			if err := s.exec(ctx, stmtDelUserChan, userID, channelID); err != nil {
				return err
			}
			if maybeApplied {
				return nil // our earlier round removed it
			}
			return store.ErrNotFound
		}
		applied, err := s.casBatch(ctx, map[string]any{},
			gocql.BatchEntry{Stmt: stmtSetCountCAS, Args: []any{max(count-1, 0), channelID, count}},
			gocql.BatchEntry{Stmt: stmtDelMemberCAS, Args: []any{channelID, userID}})
		switch {
		case err == nil && applied:
			return s.exec(ctx, stmtDelUserChan, userID, channelID)
		case err == nil:
		case casOutcomeUnknown(err):
			maybeApplied = true
		default:
			return fmt.Errorf("scylla store: remove member: %w", err)
		}
	}
	return fmt.Errorf("%w: remove member %q from %q", ErrContention, userID, channelID)
}

// GetMember returns the membership or store.ErrNotFound.
func (s *Store) GetMember(ctx context.Context, channelID, userID string) (*store.Member, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	if channelID == "" || userID == "" {
		return nil, store.ErrNotFound
	}
	var role *int8
	var joined time.Time
	ok, err := s.scan1(ctx, stmtGetMember, []any{channelID, userID}, &role, &joined)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, store.ErrNotFound
	}
	m := &store.Member{ChannelID: channelID, UserID: userID, JoinedAt: utc(joined)}
	if role != nil {
		m.Role = store.Role(*role)
	}
	return m, nil
}

// ListMembers returns all members in ascending user id (UTF-8 byte) order;
// empty for an unknown channel. One single-partition read.
func (s *Store) ListMembers(ctx context.Context, channelID string) ([]store.Member, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	if channelID == "" {
		return nil, nil
	}
	q := s.q(ctx, stmtListMembers, channelID)
	it := q.Iter()
	var ms []store.Member
	var uid string
	var role *int8
	var joined time.Time
	for it.Scan(&uid, &role, &joined) {
		if uid == "" {
			continue // the channel's static row alone (no members)
		}
		m := store.Member{ChannelID: channelID, UserID: uid, JoinedAt: utc(joined)}
		if role != nil {
			m.Role = store.Role(*role)
		}
		ms = append(ms, m)
		role = nil
	}
	err := it.Close()
	q.Release()
	if err != nil {
		return nil, err
	}
	return ms, nil
}

// ListUserChannels returns the channels userID belongs to in the order of
// store.PageByActivity (most recent activity first: the newest message's
// CreatedAt, or the channel's CreatedAt while it has no message),
// skipping the first offset and returning at most limit (limit <= 0:
// none).
//
// It reads the user's reverse index (user_channels) and one activity row
// per channel, concurrently, then sorts: O(n) reads and O(n log n) work in
// the user's channel count.
func (s *Store) ListUserChannels(ctx context.Context, userID string, offset, limit int) ([]store.ChannelActivity, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	offset = max(offset, 0)
	if limit <= 0 || userID == "" {
		return nil, nil
	}
	ids, err := s.listStrings(ctx, stmtUserChans, userID)
	if err != nil || offset >= len(ids) {
		return nil, err
	}
	acts := make([]store.ChannelActivity, len(ids))
	err = parallel.Do(ctx, len(ids), 16, func(ctx context.Context, i int) error {
		acts[i].ChannelID = ids[i]
		var mid int64
		var at time.Time
		ok, err := s.scan1(ctx, stmtActivity, []any{ids[i]}, &mid, &at)
		if err != nil || !ok {
			return err
		}
		acts[i].LastMessageID = decID(mid)
		acts[i].LastActivity = utc(at)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return store.PageByActivity(acts, offset, limit), nil
}
