package scylla

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/gocql/gocql"

	"github.com/chatd/chatd/server/store"
)

const (
	stmtCreateUser    = `INSERT INTO users (user_id, display_name, password_hash, created_at, presence_hidden) VALUES (?, ?, ?, ?, ?) IF NOT EXISTS`
	stmtGetUser       = `SELECT display_name, password_hash, created_at, presence_hidden FROM users WHERE user_id = ?`
	stmtUpdateName    = `UPDATE users SET display_name = ? WHERE user_id = ? IF EXISTS`
	stmtUpdateHidden  = `UPDATE users SET presence_hidden = ? WHERE user_id = ? IF EXISTS`
	stmtPutDevice     = `INSERT INTO devices (user_id, device_id, name, created_at, last_seen_at, revoked) VALUES (?, ?, ?, ?, ?, ?)`
	stmtSetCursor     = `UPDATE devices USING TIMESTAMP ? SET cursor = ? WHERE user_id = ? AND device_id = ?`
	stmtGetCursor     = `SELECT cursor FROM devices WHERE user_id = ? AND device_id = ?`
	devCols           = `device_id, name, created_at, last_seen_at, revoked, cursor`
	stmtGetDevice     = `SELECT ` + devCols + ` FROM devices WHERE user_id = ? AND device_id = ?`
	stmtListDevices   = `SELECT ` + devCols + ` FROM devices WHERE user_id = ?`
	stmtAddContact    = `INSERT INTO contacts (user_id, contact_id) VALUES (?, ?)`
	stmtRemoveContact = `DELETE FROM contacts WHERE user_id = ? AND contact_id = ?`
	stmtListContacts  = `SELECT contact_id FROM contacts WHERE user_id = ?`
	stmtIsContact     = `SELECT contact_id FROM contacts WHERE user_id = ? AND contact_id = ?`

	stmtReserveSkel  = `INSERT INTO username_skeletons (skeleton, user_id, reserved_at) VALUES (?, ?, ?) IF NOT EXISTS`
	stmtTakeOverSkel = `UPDATE username_skeletons SET user_id = ?, reserved_at = ? WHERE skeleton = ? IF user_id = ?`
	stmtReleaseSkel  = `DELETE FROM username_skeletons WHERE skeleton = ? IF user_id = ?`
)

// staleReservation is how old a skeleton reservation whose user does not
// exist must be before another creation may take it over: far longer than
// one CreateUser between its two writes.
const staleReservation = time.Minute

// CreateUser inserts u; store.ErrAlreadyExists if u.ID is taken,
// store.ErrUsernameLookAlike if another user holds u.ID's
// store.UsernameSkeleton. It first reserves the skeleton in
// username_skeletons with a lightweight transaction (INSERT ... IF NOT
// EXISTS), then inserts the user row with another (INSERT ... IF NOT
// EXISTS on users): of concurrent look-alike creations only the one that
// reserved the skeleton goes on. If the user row cannot be written and no
// user of that id exists, the reservation is released (DELETE ... IF
// user_id = u.ID); if a user of that id does exist (the same id created
// concurrently, or an account from before skeletons were recorded), the
// reservation is kept: it names that user, whose skeleton it is. A
// reservation whose user does not exist after staleReservation (a creation
// that died between the two writes) is taken over. An unknown outcome
// (timeout) is retried; ErrInvalidID for an empty id; ErrContention after
// too many unknown outcomes.
func (s *Store) CreateUser(ctx context.Context, u *store.User) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	if u.ID == "" {
		return invalid("user id", "")
	}
	skel := store.UsernameSkeleton(u.ID)
	if err := s.reserveSkeleton(ctx, skel, u.ID); err != nil {
		return err
	}
	err := s.insertUser(ctx, u)
	if err == nil || errors.Is(err, store.ErrAlreadyExists) {
		return err
	}
	// The user row was not written (or its outcome is unknown): release the
	// reservation unless the user exists after all. Best effort, on a
	// context of its own: ctx may be what ended.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.Timeout)
	defer cancel()
	if _, gerr := s.GetUser(rctx, u.ID); errors.Is(gerr, store.ErrNotFound) {
		q := s.lwt(rctx, stmtReleaseSkel, skel, u.ID)
		_, _ = q.MapScanCAS(map[string]any{})
		q.Release()
	}
	return err
}

// reserveSkeleton makes skel's row in username_skeletons name userID, or
// returns store.ErrUsernameLookAlike if it names another user that exists
// (or whose creation may still be under way).
func (s *Store) reserveSkeleton(ctx context.Context, skel, userID string) error {
	for attempt := 1; attempt <= maxCASAttempts; attempt++ {
		now := time.Now().UTC()
		q := s.lwt(ctx, stmtReserveSkel, skel, userID, ts(now))
		row := map[string]any{}
		applied, err := q.MapScanCAS(row)
		q.Release()
		switch {
		case err == nil && applied:
			return nil
		case err == nil:
			owner, _ := row["user_id"].(string)
			if owner == userID {
				return nil // ours (an earlier attempt), or the same id's
			}
			if _, gerr := s.GetUser(ctx, owner); gerr == nil {
				return store.ErrUsernameLookAlike
			} else if !errors.Is(gerr, store.ErrNotFound) {
				return gerr
			}
			reserved, _ := row["reserved_at"].(time.Time)
			if now.Sub(reserved) < staleReservation {
				return store.ErrUsernameLookAlike // a creation under way
			}
			// A reservation left by a creation that died: take it over
			// (only if it still names owner), then look again.
			q := s.lwt(ctx, stmtTakeOverSkel, userID, ts(now), skel, owner)
			_, err := q.MapScanCAS(map[string]any{})
			q.Release()
			if err != nil && !casOutcomeUnknown(err) {
				return fmt.Errorf("scylla store: create user: take over skeleton: %w", err)
			}
		case casOutcomeUnknown(err):
			if err := casBackoff(ctx, attempt); err != nil {
				return err
			}
		default:
			return fmt.Errorf("scylla store: create user: reserve skeleton: %w", err)
		}
	}
	return fmt.Errorf("%w: reserve the skeleton of user %q", ErrContention, userID)
}

// insertUser inserts u with an INSERT ... IF NOT EXISTS lightweight
// transaction; store.ErrAlreadyExists if u.ID is taken. If the outcome of
// the transaction is unknown (timeout), it is retried: finding a row equal
// to u then means the earlier attempt applied.
func (s *Store) insertUser(ctx context.Context, u *store.User) error {
	hash := u.PasswordHash
	if hash == nil {
		hash = []byte{}
	}
	for attempt := 1; attempt <= maxCASAttempts; attempt++ {
		q := s.lwt(ctx, stmtCreateUser, u.ID, u.DisplayName, hash, ts(u.CreatedAt), u.PresenceHidden)
		// A failed INSERT IF NOT EXISTS returns the existing row.
		row := map[string]any{}
		applied, err := q.MapScanCAS(row)
		q.Release()
		name, _ := row["display_name"].(string)
		ph, _ := row["password_hash"].([]byte)
		created, _ := row["created_at"].(time.Time)
		switch {
		case err == nil && applied:
			return nil
		case err == nil:
			if attempt > 1 && name == u.DisplayName && bytes.Equal(ph, hash) && created.Equal(truncMS(u.CreatedAt)) {
				return nil // our earlier attempt applied
			}
			return store.ErrAlreadyExists
		case casOutcomeUnknown(err):
			if err := casBackoff(ctx, attempt); err != nil {
				return err
			}
		default:
			return fmt.Errorf("scylla store: create user: %w", err)
		}
	}
	return fmt.Errorf("%w: create user %q", ErrContention, u.ID)
}

func truncMS(t time.Time) time.Time {
	if t.IsZero() {
		return t
	}
	return t.Truncate(time.Millisecond)
}

// GetUser returns the user or store.ErrNotFound.
func (s *Store) GetUser(ctx context.Context, userID string) (*store.User, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	if userID == "" {
		return nil, store.ErrNotFound
	}
	u := &store.User{ID: userID}
	var created time.Time
	ok, err := s.scan1(ctx, stmtGetUser, []any{userID}, &u.DisplayName, &u.PasswordHash, &created, &u.PresenceHidden)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, store.ErrNotFound
	}
	u.CreatedAt = utc(created)
	return u, nil
}

// UpdateDisplayName changes a user's display name with an UPDATE ... IF
// EXISTS lightweight transaction (users rows are only written by
// transactions, which keeps their order well defined); store.ErrNotFound
// for an unknown user. An unknown outcome is retried (the update is
// idempotent); ErrContention after too many.
func (s *Store) UpdateDisplayName(ctx context.Context, userID, displayName string) error {
	return s.updateUser(ctx, "update display name", stmtUpdateName, userID, displayName)
}

// SetPresenceHidden changes whether the user hides their presence, like
// UpdateDisplayName; store.ErrNotFound for an unknown user.
func (s *Store) SetPresenceHidden(ctx context.Context, userID string, hidden bool) error {
	return s.updateUser(ctx, "set presence hidden", stmtUpdateHidden, userID, hidden)
}

// updateUser runs stmt (UPDATE users SET col = ? WHERE user_id = ? IF
// EXISTS) with value.
func (s *Store) updateUser(ctx context.Context, what, stmt, userID string, value any) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	if userID == "" {
		return store.ErrNotFound
	}
	for attempt := 1; attempt <= maxCASAttempts; attempt++ {
		q := s.lwt(ctx, stmt, value, userID)
		applied, err := q.MapScanCAS(map[string]any{})
		q.Release()
		switch {
		case err == nil && applied:
			return nil
		case err == nil:
			return store.ErrNotFound
		case casOutcomeUnknown(err):
			if err := casBackoff(ctx, attempt); err != nil {
				return err
			}
		default:
			return fmt.Errorf("scylla store: %s: %w", what, err)
		}
	}
	return fmt.Errorf("%w: %s of %q", ErrContention, what, userID)
}

// PutDevice inserts or replaces a device's name, times and revoked flag;
// the cursor column is not written, so an existing cursor is kept. For a
// new device with d.Cursor > 0 the cursor starts there (a read decides
// whether the device exists; the cursor write keeps the maximum either
// way). ErrInvalidID for an empty user id.
func (s *Store) PutDevice(ctx context.Context, d *store.Device) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	if d.UserID == "" {
		return invalid("user id", "")
	}
	newDevice := false
	if d.Cursor > 0 {
		var cur *int64
		ok, err := s.scan1(ctx, stmtGetCursor, []any{d.UserID, d.DeviceID}, &cur)
		if err != nil {
			return err
		}
		newDevice = !ok
	}
	if err := s.exec(ctx, stmtPutDevice, d.UserID, d.DeviceID, d.Name, ts(d.CreatedAt), ts(d.LastSeenAt), d.Revoked); err != nil {
		return err
	}
	if newDevice {
		c := min(d.Cursor, maxSeq)
		return s.exec(ctx, stmtSetCursor, int64(c), int64(c), d.UserID, d.DeviceID)
	}
	return nil
}

type devRow struct {
	id, name      string
	created, seen time.Time
	revoked       bool
	cursor        int64
}

func (r *devRow) dest() []any {
	return []any{&r.id, &r.name, &r.created, &r.seen, &r.revoked, &r.cursor}
}

func (r *devRow) device(userID string) *store.Device {
	return &store.Device{UserID: userID, DeviceID: r.id, Name: r.name, CreatedAt: utc(r.created),
		LastSeenAt: utc(r.seen), Revoked: r.revoked, Cursor: uint64(max(r.cursor, 0))}
}

// GetDevice returns the device or store.ErrNotFound.
func (s *Store) GetDevice(ctx context.Context, userID, deviceID string) (*store.Device, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	if userID == "" {
		return nil, store.ErrNotFound
	}
	var r devRow
	ok, err := s.scan1(ctx, stmtGetDevice, []any{userID, deviceID}, r.dest()...)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, store.ErrNotFound
	}
	return r.device(userID), nil
}

// ListDevices returns the user's devices, revoked ones included, ordered by
// CreatedAt (then device id).
func (s *Store) ListDevices(ctx context.Context, userID string) ([]*store.Device, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	if userID == "" {
		return nil, nil
	}
	q := s.q(ctx, stmtListDevices, userID)
	it := q.Iter()
	var ds []*store.Device
	var r devRow
	for it.Scan(r.dest()...) {
		ds = append(ds, r.device(userID))
		r = devRow{}
	}
	err := it.Close()
	q.Release()
	if err != nil {
		return nil, err
	}
	slices.SortStableFunc(ds, func(a, b *store.Device) int { return a.CreatedAt.Compare(b.CreatedAt) })
	return ds, nil
}

// AdvanceCursor sets the device cursor to max(current, seq) and returns the
// result; store.ErrNotFound for an unknown device, ErrInvalidID for seq >=
// 2^63.
//
// No lightweight transaction: the cursor cell is written with the write
// timestamp equal to its value, so among concurrent or reordered writes
// the highest cursor wins on every replica (ties carry equal values).
//
// The store remembers, for cursorCacheTTL, the cursor it last read or
// wrote for each device (devices are never deleted, so a device seen once
// exists): an ack then costs one write (seq above it; concurrent calls'
// writes go together, see coalescer) or no request at all (seq at or
// below it) instead of a read and a write. Only when another
// process (another chatd of the cluster) advanced the same device's
// cursor within that time can the result be below the stored cursor (it
// is then max(seq, the cursor this process knew)); the stored cursor is
// never lowered. Otherwise, and on a cache miss: one read (existence and
// current value) and at most one write.
func (s *Store) AdvanceCursor(ctx context.Context, userID, deviceID string, seq uint64) (uint64, error) {
	if err := s.check(ctx); err != nil {
		return 0, err
	}
	if seq > maxSeq {
		return 0, fmt.Errorf("%w: cursor %d >= 2^63", ErrInvalidID, seq)
	}
	if userID == "" {
		return 0, store.ErrNotFound
	}
	key := userID + "\x00" + deviceID
	c, known := s.cursors.get(key, time.Now())
	if !known {
		var cur *int64
		ok, err := s.scan1(ctx, stmtGetCursor, []any{userID, deviceID}, &cur)
		if err != nil {
			return 0, err
		}
		if !ok {
			return 0, store.ErrNotFound
		}
		if cur != nil && *cur > 0 {
			c = uint64(*cur)
		}
	}
	if seq <= c {
		if !known {
			s.cursors.put(key, c, time.Now())
		}
		return c, nil
	}
	err := s.coal.write(ctx, []gocql.BatchEntry{{Stmt: stmtSetCursor, Args: []any{int64(seq), int64(seq), userID, deviceID}, Idempotent: true}})
	if err != nil {
		return 0, err
	}
	s.cursors.put(key, seq, time.Now())
	return seq, nil
}

// cursorCacheTTL is how long AdvanceCursor trusts the cursor it last read
// or wrote for a device before reading it again.
const cursorCacheTTL = 30 * time.Second

// cursorCache maps "user\x00device" to the cursor this process last read
// or wrote, with the time it did. Sharded, bounded: a shard that reaches
// its limit is cleared.
type cursorCache struct {
	shards [32]cursorShard
}

type cursorShard struct {
	mu sync.Mutex
	m  map[string]cursorEntry
}

type cursorEntry struct {
	cursor uint64
	at     time.Time
}

const cursorShardLimit = 1 << 14

func (c *cursorCache) shard(k string) *cursorShard {
	h := uint32(2166136261)
	for i := 0; i < len(k); i++ {
		h = (h ^ uint32(k[i])) * 16777619
	}
	return &c.shards[h%uint32(len(c.shards))]
}

func (c *cursorCache) get(k string, now time.Time) (uint64, bool) {
	sh := c.shard(k)
	sh.mu.Lock()
	e, ok := sh.m[k]
	sh.mu.Unlock()
	if !ok || now.Sub(e.at) > cursorCacheTTL {
		return 0, false
	}
	return e.cursor, true
}

func (c *cursorCache) put(k string, cursor uint64, now time.Time) {
	sh := c.shard(k)
	sh.mu.Lock()
	if sh.m == nil || len(sh.m) >= cursorShardLimit {
		sh.m = make(map[string]cursorEntry)
	}
	if e, ok := sh.m[k]; !ok || cursor >= e.cursor || now.Sub(e.at) > cursorCacheTTL {
		sh.m[k] = cursorEntry{cursor, now}
	}
	sh.mu.Unlock()
}

// AddContact records that userID has contactID as a contact (idempotent).
func (s *Store) AddContact(ctx context.Context, userID, contactID string) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	if userID == "" {
		return invalid("user id", "")
	}
	return s.exec(ctx, stmtAddContact, userID, contactID)
}

// RemoveContact removes it (idempotent).
func (s *Store) RemoveContact(ctx context.Context, userID, contactID string) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	if userID == "" {
		return nil
	}
	return s.exec(ctx, stmtRemoveContact, userID, contactID)
}

// ListContacts returns userID's contacts in ascending id (UTF-8 byte)
// order.
func (s *Store) ListContacts(ctx context.Context, userID string) ([]string, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	if userID == "" {
		return nil, nil
	}
	return s.listStrings(ctx, stmtListContacts, userID)
}

// IsContact reports whether userID has contactID as a contact.
func (s *Store) IsContact(ctx context.Context, userID, contactID string) (bool, error) {
	if err := s.check(ctx); err != nil {
		return false, err
	}
	if userID == "" {
		return false, nil
	}
	var id string
	return s.scan1(ctx, stmtIsContact, []any{userID, contactID}, &id)
}
