package pebble

import (
	"context"

	"github.com/cockroachdb/pebble/v2"

	"github.com/chatd/chatd/server/store"
)

// AdvanceCursor sets the device cursor to max(current, seq) and returns
// the result; store.ErrNotFound for an unknown device. The write is not
// fsync'd (pebble.NoSync): it survives Close, and a crash may roll the
// cursor back to an earlier advance, which only causes redelivery.
func (s *Store) AdvanceCursor(ctx context.Context, userID, deviceID string, seq uint64) (uint64, error) {
	if err := s.check(ctx); err != nil {
		return 0, err
	}
	defer s.ops.RUnlock()
	if err := checkIDs(userID, deviceID); err != nil {
		return 0, err
	}
	key := key2(tDevice, userID, deviceID)
	defer s.lock(key).Unlock()
	var d *store.Device
	err := s.get(key, func(v []byte) (err error) {
		d, err = decodeDevice(userID, deviceID, v)
		return err
	})
	if err != nil {
		return 0, err
	}
	if seq <= d.Cursor {
		return d.Cursor, nil
	}
	d.Cursor = seq
	// NoSync: see "Durability and concurrency" in the package doc.
	if err := s.db.Set(key, encodeDevice(d), pebble.NoSync); err != nil {
		return 0, err
	}
	return seq, nil
}
