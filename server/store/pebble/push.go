package pebble

import (
	"context"
	"errors"

	"github.com/cockroachdb/pebble/v2"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/chatd/chatd/server/store"
)

// --- push target: 1 kind, 2 address, 3 p256dh, 4 auth, 5 topic, 6 sandbox,
// 7 updated_at. user_id and device_id live in the key.

func encodePushTarget(t *store.PushTarget) []byte {
	var b []byte
	b = appendUint(b, 1, uint64(t.Kind))
	b = appendString(b, 2, t.Address)
	b = appendString(b, 3, t.P256dh)
	b = appendString(b, 4, t.Auth)
	b = appendString(b, 5, t.Topic)
	if t.Sandbox {
		b = appendUint(b, 6, 1)
	}
	return appendTime(b, 7, t.UpdatedAt)
}

func decodePushTarget(userID, deviceID string, b []byte) (*store.PushTarget, error) {
	t := &store.PushTarget{UserID: userID, DeviceID: deviceID}
	err := walk(b, func(num protowire.Number, v uint64, p []byte) {
		switch num {
		case 1:
			t.Kind = store.PushKind(v)
		case 2:
			t.Address = string(p)
		case 3:
			t.P256dh = string(p)
		case 4:
			t.Auth = string(p)
		case 5:
			t.Topic = string(p)
		case 6:
			t.Sandbox = v != 0
		case 7:
			t.UpdatedAt = decodeTime(v)
		}
	})
	return t, err
}

// nonEmpty returns ErrInvalidID for an empty id, then checkIDs' answer.
func nonEmpty(ids ...string) error {
	for _, id := range ids {
		if id == "" {
			return ErrInvalidID
		}
	}
	return checkIDs(ids...)
}

// PutPushTarget writes the device's push target durably, replacing any.
func (s *Store) PutPushTarget(ctx context.Context, t *store.PushTarget) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	defer s.ops.RUnlock()
	if err := nonEmpty(t.UserID, t.DeviceID); err != nil {
		return err
	}
	key := key2(tPushTarget, t.UserID, t.DeviceID)
	defer s.lock(key).Unlock()
	return s.set(key, encodePushTarget(t))
}

// GetPushTarget returns the device's push target or store.ErrNotFound.
func (s *Store) GetPushTarget(ctx context.Context, userID, deviceID string) (*store.PushTarget, error) {
	return getChecked(ctx, s, []string{userID, deviceID}, key2(tPushTarget, userID, deviceID), func(v []byte) (*store.PushTarget, error) {
		return decodePushTarget(userID, deviceID, v)
	})
}

// DeletePushTarget removes the device's push target (only one at address,
// unless address is ""), under the key's lock so that the comparison and
// the delete are atomic against PutPushTarget.
func (s *Store) DeletePushTarget(ctx context.Context, userID, deviceID, address string) (bool, error) {
	if err := s.check(ctx); err != nil {
		return false, err
	}
	defer s.ops.RUnlock()
	if err := nonEmpty(userID, deviceID); err != nil {
		return false, err
	}
	key := key2(tPushTarget, userID, deviceID)
	defer s.lock(key).Unlock()
	t, err := getAs(s, key, func(v []byte) (*store.PushTarget, error) { return decodePushTarget(userID, deviceID, v) })
	if errors.Is(err, store.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if address != "" && t.Address != address {
		return false, nil
	}
	if err := s.db.Delete(key, pebble.Sync); err != nil {
		return false, err
	}
	return true, nil
}

// ListPushTargets returns the user's push targets by device id.
func (s *Store) ListPushTargets(ctx context.Context, userID string) ([]*store.PushTarget, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	defer s.ops.RUnlock()
	if err := checkIDs(userID); err != nil {
		return nil, err
	}
	var out []*store.PushTarget
	err := s.scan(tPushTarget, userID, func(suffix, v []byte) error {
		t, err := decodePushTarget(userID, string(suffix), v)
		if err == nil {
			out = append(out, t)
		}
		return err
	})
	return out, err
}

// SetPushPreviews records the user's previews setting durably.
func (s *Store) SetPushPreviews(ctx context.Context, userID string, on bool) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	defer s.ops.RUnlock()
	if err := nonEmpty(userID); err != nil {
		return err
	}
	var v []byte
	if on {
		v = appendUint(v, 1, 1)
	}
	return s.set(key1(tPushSetting, userID), v)
}

// PushPreviews reports the user's previews setting (false if never set).
func (s *Store) PushPreviews(ctx context.Context, userID string) (bool, error) {
	on, err := getChecked(ctx, s, []string{userID}, key1(tPushSetting, userID), func(v []byte) (bool, error) {
		on := false
		err := walk(v, func(num protowire.Number, x uint64, _ []byte) {
			if num == 1 {
				on = x != 0
			}
		})
		return on, err
	})
	if errors.Is(err, store.ErrNotFound) {
		return false, nil
	}
	return on, err
}

// --- mute: 1 until (absent: forever).

// SetMute records the user's mute of m.ChannelID durably.
func (s *Store) SetMute(ctx context.Context, userID string, m store.Mute) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	defer s.ops.RUnlock()
	if err := nonEmpty(userID, m.ChannelID); err != nil {
		return err
	}
	return s.set(key2(tMute, userID, m.ChannelID), appendTime(nil, 1, m.Until))
}

// DeleteMute removes the user's mute of the channel (idempotent).
func (s *Store) DeleteMute(ctx context.Context, userID, channelID string) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	defer s.ops.RUnlock()
	if err := nonEmpty(userID, channelID); err != nil {
		return err
	}
	return s.db.Delete(key2(tMute, userID, channelID), pebble.Sync)
}

// ListMutes returns the user's mutes by channel id, expired ones included.
func (s *Store) ListMutes(ctx context.Context, userID string) ([]store.Mute, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	defer s.ops.RUnlock()
	if err := checkIDs(userID); err != nil {
		return nil, err
	}
	var out []store.Mute
	err := s.scan(tMute, userID, func(suffix, v []byte) error {
		m := store.Mute{ChannelID: string(suffix)}
		err := walk(v, func(num protowire.Number, x uint64, _ []byte) {
			if num == 1 {
				m.Until = decodeTime(x)
			}
		})
		out = append(out, m)
		return err
	})
	return out, err
}
