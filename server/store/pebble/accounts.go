package pebble

import (
	"context"
	"errors"
	"slices"

	"github.com/cockroachdb/pebble/v2"

	"github.com/chatd/chatd/server/store"
)

// CreateUser inserts u; store.ErrAlreadyExists if u.ID is taken,
// store.ErrUsernameLookAlike if another user has u.ID's
// store.UsernameSkeleton. The user and its skeleton record (key tSkeleton
// skeleton -> user id) are written in one synced batch, and creations are
// serialised (createMu), so the check and the insert are atomic.
func (s *Store) CreateUser(ctx context.Context, u *store.User) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	defer s.ops.RUnlock()
	if err := checkIDs(u.ID); err != nil {
		return err
	}
	skel := key1(tSkeleton, store.UsernameSkeleton(u.ID))
	s.createMu.Lock()
	defer s.createMu.Unlock()
	key := key1(tUser, u.ID)
	defer s.lock(key).Unlock()
	if err := s.absent(key); err != nil {
		return err
	}
	owner := ""
	err := s.get(skel, func(v []byte) error {
		owner = string(v)
		return nil
	})
	switch {
	case err == nil && owner != u.ID:
		return store.ErrUsernameLookAlike
	case err != nil && !errors.Is(err, store.ErrNotFound):
		return err
	}
	wb := s.db.NewBatch()
	defer wb.Close()
	if err := wb.Set(key, encodeUser(u), nil); err != nil {
		return err
	}
	if err := wb.Set(skel, []byte(u.ID), nil); err != nil {
		return err
	}
	return wb.Commit(pebble.Sync)
}

// GetUser returns the user or store.ErrNotFound.
func (s *Store) GetUser(ctx context.Context, userID string) (*store.User, error) {
	return getChecked(ctx, s, []string{userID}, key1(tUser, userID), func(v []byte) (*store.User, error) { return decodeUser(userID, v) })
}

// UpdateDisplayName changes a user's display name; store.ErrNotFound.
func (s *Store) UpdateDisplayName(ctx context.Context, userID, displayName string) error {
	return s.updateUser(ctx, userID, func(u *store.User) { u.DisplayName = displayName })
}

// SetPresenceHidden changes whether the user hides their presence;
// store.ErrNotFound.
func (s *Store) SetPresenceHidden(ctx context.Context, userID string, hidden bool) error {
	return s.updateUser(ctx, userID, func(u *store.User) { u.PresenceHidden = hidden })
}

// updateUser applies change to the stored user under the user's lock.
func (s *Store) updateUser(ctx context.Context, userID string, change func(*store.User)) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	defer s.ops.RUnlock()
	if err := checkIDs(userID); err != nil {
		return err
	}
	key := key1(tUser, userID)
	defer s.lock(key).Unlock()
	var u *store.User
	err := s.get(key, func(v []byte) (err error) {
		u, err = decodeUser(userID, v)
		return err
	})
	if err != nil {
		return err
	}
	change(u)
	return s.set(key, encodeUser(u))
}

// PutDevice inserts or replaces a device, keeping the stored cursor (only
// AdvanceCursor changes it; a new device starts at d.Cursor).
func (s *Store) PutDevice(ctx context.Context, d *store.Device) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	defer s.ops.RUnlock()
	if err := checkIDs(d.UserID, d.DeviceID); err != nil {
		return err
	}
	key := key2(tDevice, d.UserID, d.DeviceID)
	defer s.lock(key).Unlock()
	nd := *d
	err := s.get(key, func(v []byte) error {
		old, err := decodeDevice(d.UserID, d.DeviceID, v)
		nd.Cursor = old.Cursor
		return err
	})
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	return s.set(key, encodeDevice(&nd))
}

// GetDevice returns the device or store.ErrNotFound.
func (s *Store) GetDevice(ctx context.Context, userID, deviceID string) (*store.Device, error) {
	return getChecked(ctx, s, []string{userID, deviceID}, key2(tDevice, userID, deviceID), func(v []byte) (*store.Device, error) { return decodeDevice(userID, deviceID, v) })
}

// ListDevices returns the user's devices, revoked ones included, ordered by
// CreatedAt (then device id).
func (s *Store) ListDevices(ctx context.Context, userID string) ([]*store.Device, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	defer s.ops.RUnlock()
	if err := checkIDs(userID); err != nil {
		return nil, err
	}
	var ds []*store.Device
	err := s.scan(tDevice, userID, func(sfx, v []byte) error {
		d, err := decodeDevice(userID, string(sfx), v)
		ds = append(ds, d)
		return err
	})
	if err != nil {
		return nil, err
	}
	slices.SortStableFunc(ds, func(a, b *store.Device) int { return a.CreatedAt.Compare(b.CreatedAt) })
	return ds, nil
}

// AddContact records contactID as a contact of userID (idempotent).
func (s *Store) AddContact(ctx context.Context, userID, contactID string) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	defer s.ops.RUnlock()
	if err := checkIDs(userID, contactID); err != nil {
		return err
	}
	return s.set(key2(tContact, userID, contactID), nil)
}

// RemoveContact removes it (idempotent).
func (s *Store) RemoveContact(ctx context.Context, userID, contactID string) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	defer s.ops.RUnlock()
	if err := checkIDs(userID, contactID); err != nil {
		return err
	}
	return s.db.Delete(key2(tContact, userID, contactID), pebble.Sync)
}

// ListContacts returns userID's contacts in ascending id (byte) order.
func (s *Store) ListContacts(ctx context.Context, userID string) ([]string, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	defer s.ops.RUnlock()
	if err := checkIDs(userID); err != nil {
		return nil, err
	}
	var ids []string
	err := s.scan(tContact, userID, func(sfx, _ []byte) error {
		ids = append(ids, string(sfx))
		return nil
	})
	if err != nil {
		return nil, err
	}
	return ids, nil
}

// IsContact reports whether userID has contactID as a contact.
func (s *Store) IsContact(ctx context.Context, userID, contactID string) (bool, error) {
	if err := s.check(ctx); err != nil {
		return false, err
	}
	defer s.ops.RUnlock()
	if err := checkIDs(userID, contactID); err != nil {
		return false, err
	}
	return s.exists(key2(tContact, userID, contactID))
}
