package pebble

import (
	"context"
	"encoding/binary"
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

// --- push queue: Q be64(id) -> 1 user, 2 channel, 3 message_id, 4 committed,
// 5 due, 6 device, 7 attempt.

var _ store.PushQueue = (*Store)(nil)

func pushJobKey(id uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte{tPushQueue}, id)
}

func encodePushJob(j *store.PushJob) []byte {
	var b []byte
	b = appendString(b, 1, j.UserID)
	b = appendString(b, 2, j.ChannelID)
	b = appendUint(b, 3, j.MessageID)
	b = appendTime(b, 4, j.Committed)
	b = appendTime(b, 5, j.Due)
	b = appendString(b, 6, j.DeviceID)
	return appendUint(b, 7, uint64(j.Attempt))
}

func decodePushJob(id uint64, b []byte) (store.PushJob, error) {
	j := store.PushJob{ID: id}
	err := walk(b, func(num protowire.Number, v uint64, p []byte) {
		switch num {
		case 1:
			j.UserID = string(p)
		case 2:
			j.ChannelID = string(p)
		case 3:
			j.MessageID = v
		case 4:
			j.Committed = decodeTime(v)
		case 5:
			j.Due = decodeTime(v)
		case 6:
			j.DeviceID = string(p)
		case 7:
			j.Attempt = uint32(v)
		}
	})
	return j, err
}

// nextPushJobID returns the next queue id: one more than the highest
// stored, read once per Store, then counted in memory.
func (s *Store) nextPushJobIDs(n int) (uint64, error) {
	s.pushMu.Lock()
	defer s.pushMu.Unlock()
	if !s.pushIDRead {
		it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{tPushQueue}, UpperBound: []byte{tPushQueue + 1}})
		if err != nil {
			return 0, err
		}
		if it.Last() {
			if k := it.Key(); len(k) == 9 {
				s.pushID = beUint64(k[1:])
			}
		}
		if err := it.Close(); err != nil {
			return 0, err
		}
		s.pushIDRead = true
	}
	first := s.pushID + 1
	s.pushID += uint64(n)
	return first, nil
}

// AddPushJobs writes the jobs in one batch without waiting for a sync
// (pebble.NoSync): they are in the WAL at once and on disk with the next
// synced commit (every AppendBatch syncs).
func (s *Store) AddPushJobs(ctx context.Context, jobs []store.PushJob) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	defer s.ops.RUnlock()
	if len(jobs) == 0 {
		return nil
	}
	first, err := s.nextPushJobIDs(len(jobs))
	if err != nil {
		return err
	}
	wb := s.db.NewBatch()
	defer wb.Close()
	for i := range jobs {
		jobs[i].ID = first + uint64(i)
		if err := wb.Set(pushJobKey(jobs[i].ID), encodePushJob(&jobs[i]), nil); err != nil {
			return err
		}
	}
	return wb.Commit(pebble.NoSync)
}

// PushJobs returns up to limit jobs, oldest first.
func (s *Store) PushJobs(ctx context.Context, limit int) ([]store.PushJob, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	defer s.ops.RUnlock()
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{tPushQueue}, UpperBound: []byte{tPushQueue + 1}})
	if err != nil {
		return nil, err
	}
	var out []store.PushJob
	for ok := it.First(); ok && len(out) < limit; ok = it.Next() {
		k := it.Key()
		if len(k) != 9 {
			it.Close()
			return nil, errCorrupt
		}
		v, err := it.ValueAndErr()
		if err != nil {
			it.Close()
			return nil, err
		}
		j, err := decodePushJob(beUint64(k[1:]), v)
		if err != nil {
			it.Close()
			return nil, err
		}
		out = append(out, j)
	}
	return out, it.Close()
}

// DeletePushJobs removes the jobs in one synced batch.
func (s *Store) DeletePushJobs(ctx context.Context, ids []uint64) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	defer s.ops.RUnlock()
	if len(ids) == 0 {
		return nil
	}
	wb := s.db.NewBatch()
	defer wb.Close()
	for _, id := range ids {
		if err := wb.Delete(pushJobKey(id), nil); err != nil {
			return err
		}
	}
	return wb.Commit(pebble.Sync)
}
