package scylla

import (
	"context"
	"time"

	"github.com/chatd/chatd/server/store"
)

const (
	stmtPutPushTarget   = `INSERT INTO push_targets (user_id, device_id, kind, address, p256dh, auth, topic, sandbox, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`
	stmtGetPushTarget   = `SELECT kind, address, p256dh, auth, topic, sandbox, updated_at FROM push_targets WHERE user_id = ? AND device_id = ?`
	stmtPushTargetWrite = `SELECT address, WRITETIME(address) FROM push_targets WHERE user_id = ? AND device_id = ?`
	stmtDelPushTargetAt = `DELETE FROM push_targets USING TIMESTAMP ? WHERE user_id = ? AND device_id = ?`
	stmtDelPushTarget   = `DELETE FROM push_targets WHERE user_id = ? AND device_id = ?`
	stmtListPushTargets = `SELECT device_id, kind, address, p256dh, auth, topic, sandbox, updated_at FROM push_targets WHERE user_id = ?`
	stmtSetPushPreviews = `UPDATE user_settings SET push_previews = ? WHERE user_id = ?`
	stmtGetPushPreviews = `SELECT push_previews FROM user_settings WHERE user_id = ?`
	stmtSetMute         = `INSERT INTO channel_mutes (user_id, channel_id, until) VALUES (?, ?, ?)`
	stmtDelMute         = `DELETE FROM channel_mutes WHERE user_id = ? AND channel_id = ?`
	stmtListMutes       = `SELECT channel_id, until FROM channel_mutes WHERE user_id = ?`
)

// PutPushTarget writes the device's push target (one row, replacing every
// column).
func (s *Store) PutPushTarget(ctx context.Context, t *store.PushTarget) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	if t.UserID == "" || t.DeviceID == "" {
		return invalid("user or device id", t.UserID+"/"+t.DeviceID)
	}
	return s.exec(ctx, stmtPutPushTarget, t.UserID, t.DeviceID, int8(t.Kind), t.Address, t.P256dh, t.Auth, t.Topic, t.Sandbox, ts(t.UpdatedAt))
}

// GetPushTarget returns the device's push target or store.ErrNotFound.
func (s *Store) GetPushTarget(ctx context.Context, userID, deviceID string) (*store.PushTarget, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	if userID == "" || deviceID == "" {
		return nil, store.ErrNotFound
	}
	t := &store.PushTarget{UserID: userID, DeviceID: deviceID}
	var kind int8
	found, err := s.scan1(ctx, stmtGetPushTarget, []any{userID, deviceID}, &kind, &t.Address, &t.P256dh, &t.Auth, &t.Topic, &t.Sandbox, &t.UpdatedAt)
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, store.ErrNotFound
	}
	t.Kind, t.UpdatedAt = store.PushKind(kind), utc(t.UpdatedAt)
	return t, nil
}

// DeletePushTarget removes the device's push target. With an address it
// reads the stored address and its write time, and deletes USING
// TIMESTAMP that write time: the tombstone shadows exactly the cells it
// read, so a target written since (a later timestamp) survives without a
// lightweight transaction.
func (s *Store) DeletePushTarget(ctx context.Context, userID, deviceID, address string) (bool, error) {
	if err := s.check(ctx); err != nil {
		return false, err
	}
	if userID == "" || deviceID == "" {
		return false, invalid("user or device id", userID+"/"+deviceID)
	}
	var stored string
	var wt int64
	found, err := s.scan1(ctx, stmtPushTargetWrite, []any{userID, deviceID}, &stored, &wt)
	if err != nil || !found {
		return false, err
	}
	if address == "" {
		return true, s.exec(ctx, stmtDelPushTarget, userID, deviceID)
	}
	if stored != address {
		return false, nil
	}
	return true, s.exec(ctx, stmtDelPushTargetAt, wt, userID, deviceID)
}

// ListPushTargets returns the user's push targets by device id (the
// clustering order).
func (s *Store) ListPushTargets(ctx context.Context, userID string) ([]*store.PushTarget, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	if userID == "" {
		return nil, nil
	}
	q := s.q(ctx, stmtListPushTargets, userID)
	defer q.Release()
	it := q.Iter()
	var out []*store.PushTarget
	for {
		t := &store.PushTarget{UserID: userID}
		var kind int8
		if !it.Scan(&t.DeviceID, &kind, &t.Address, &t.P256dh, &t.Auth, &t.Topic, &t.Sandbox, &t.UpdatedAt) {
			break
		}
		t.Kind, t.UpdatedAt = store.PushKind(kind), utc(t.UpdatedAt)
		out = append(out, t)
	}
	return out, it.Close()
}

// SetPushPreviews records the setting (a last-write-wins cell of
// user_settings).
func (s *Store) SetPushPreviews(ctx context.Context, userID string, on bool) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	if userID == "" {
		return invalid("user id", "")
	}
	return s.exec(ctx, stmtSetPushPreviews, on, userID)
}

// PushPreviews reports the setting (false if never set).
func (s *Store) PushPreviews(ctx context.Context, userID string) (bool, error) {
	if err := s.check(ctx); err != nil {
		return false, err
	}
	if userID == "" {
		return false, nil
	}
	var on bool
	_, err := s.scan1(ctx, stmtGetPushPreviews, []any{userID}, &on)
	return on, err
}

// SetMute records the user's mute of m.ChannelID (until null = forever).
func (s *Store) SetMute(ctx context.Context, userID string, m store.Mute) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	if userID == "" || m.ChannelID == "" {
		return invalid("user or channel id", userID+"/"+m.ChannelID)
	}
	return s.exec(ctx, stmtSetMute, userID, m.ChannelID, ts(m.Until))
}

// DeleteMute removes the user's mute of the channel (idempotent).
func (s *Store) DeleteMute(ctx context.Context, userID, channelID string) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	if userID == "" || channelID == "" {
		return invalid("user or channel id", userID+"/"+channelID)
	}
	return s.exec(ctx, stmtDelMute, userID, channelID)
}

// ListMutes returns the user's mutes by channel id, expired ones included.
func (s *Store) ListMutes(ctx context.Context, userID string) ([]store.Mute, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	if userID == "" {
		return nil, nil
	}
	q := s.q(ctx, stmtListMutes, userID)
	defer q.Release()
	it := q.Iter()
	var out []store.Mute
	var m store.Mute
	var until time.Time
	for it.Scan(&m.ChannelID, &until) {
		m.Until = utc(until)
		out = append(out, m)
	}
	return out, it.Close()
}
