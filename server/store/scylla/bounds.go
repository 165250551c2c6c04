package scylla

import (
	"context"
	"errors"
	"fmt"

	"github.com/gocql/gocql"
	"github.com/scylladb/gocqlx/v3"
)

// ErrForeignWrite is returned (wrapped) by Bounds.Get for a row that was
// written without USING TIMESTAMP <bound>: its bound can no longer be
// trusted to be the highest ever reserved. Allocation for the key fails
// until an operator repairs the row (see docs/sequencing.md).
var ErrForeignWrite = errors.New("seq_bounds: row written with a foreign timestamp")

// Bounds is the durable floor of the cluster id allocator: it implements
// the BoundStore interface of server/sequence/redis (which declares it, as
// its user) on the table seq_bounds, created by migration
// 002_seq_bounds.cql.
//
// The bound is a grow-only (max) register: Reserve writes the bound with
// the cell's write timestamp set to the bound itself, so the highest bound
// ever written wins by the database's last-write-wins rule whatever the
// order of concurrent writers (equal timestamps carry equal values). That
// is one plain write per reservation at the session's consistency
// (LOCAL_QUORUM in chatd), idempotent, with no lightweight transaction:
// cheap enough for the channels, whose bounds are reserved in time steps
// and so once per message of a channel idle for longer than a step. Get is
// one read at the session's consistency. It is safe for concurrent use and
// linearizable per key at LOCAL_QUORUM.
type Bounds struct {
	sess gocqlx.Session
}

// Bounds returns the store's seq_bounds table as a BoundStore of
// server/sequence/redis. It shares the store's session: use it only while
// the store is open.
func (s *Store) Bounds() *Bounds { return &Bounds{sess: s.sess} }

const (
	stmtBoundGet     = `SELECT bound, WRITETIME(bound) FROM seq_bounds WHERE key = ?`
	stmtBoundReserve = `UPDATE seq_bounds USING TIMESTAMP ? SET bound = ? WHERE key = ?`
)

// Get returns the key's bound, 0 if none was ever reserved; ErrForeignWrite
// (wrapped) for a row written without the bound's timestamp.
func (b *Bounds) Get(ctx context.Context, key string) (uint64, error) {
	q := b.sess.Session.Query(stmtBoundGet, key).WithContext(ctx).Idempotent(true)
	var v, wt int64
	err := q.Scan(&v, &wt)
	q.Release()
	if errors.Is(err, gocql.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("seq_bounds: read %q: %w", key, err)
	}
	if v != wt || v < 0 {
		return 0, fmt.Errorf("%w: key %q bound %d writetime %d", ErrForeignWrite, key, v, wt)
	}
	return uint64(v), nil
}

// Reserve raises the key's bound to at least atLeast (1 <= atLeast <
// 2^63) durably. Errors: nothing is known; retrying is safe.
func (b *Bounds) Reserve(ctx context.Context, key string, atLeast uint64) error {
	if atLeast == 0 || atLeast >= 1<<63 {
		return fmt.Errorf("seq_bounds: bound %d of %q out of range", atLeast, key)
	}
	v := int64(atLeast)
	q := b.sess.Session.Query(stmtBoundReserve, v, v, key).WithContext(ctx).Idempotent(true)
	err := q.Exec()
	q.Release()
	if err != nil {
		return fmt.Errorf("seq_bounds: raise %q to %d: %w", key, atLeast, err)
	}
	return nil
}
