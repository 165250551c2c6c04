package redis

import (
	"context"
	_ "embed"
	"errors"
	"fmt"

	"github.com/gocql/gocql"
	"github.com/scylladb/gocqlx/v3"
)

// BoundStore is the durable floor of the allocator: per key, a bound that
// only grows. Every id the allocator hands out is within the bound of its
// key at the time, and the bound is durable before the id is used, so
// after Redis loses its data allocation resumes above Get and nothing is
// reused. Implementations must be safe for concurrent use and
// linearizable per key: a Get that starts after a Reserve returned sees
// at least its value.
type BoundStore interface {
	// Reserve raises the key's bound to at least atLeast (1 <= atLeast <
	// 2^63) durably. Errors: nothing is known; retrying is safe.
	Reserve(ctx context.Context, key string, atLeast uint64) error
	// Get returns the key's bound, 0 if none was ever reserved.
	Get(ctx context.Context, key string) (uint64, error)
}

// SchemaCQL creates the table of CQLBounds (the file seq_bounds.cql). It
// must run in the keyspace of the session given to NewCQLBounds; it is
// idempotent.
//
//go:embed seq_bounds.cql
var SchemaCQL string

// ErrForeignWrite is returned (wrapped) by CQLBounds.Get for a row that
// was written without USING TIMESTAMP <bound>: its bound can no longer be
// trusted to be the highest ever reserved. Allocation for the key fails
// until an operator repairs the row (see docs/sequencing.md).
var ErrForeignWrite = errors.New("seq_bounds: row written with a foreign timestamp")

// CQLBounds is a BoundStore in the CQL table seq_bounds (ScyllaDB or
// Cassandra).
//
// The bound is a grow-only (max) register: Reserve writes the bound with
// the cell's write timestamp set to the bound itself, so the highest bound
// ever written wins by the database's last-write-wins rule whatever the
// order of concurrent writers (equal timestamps carry equal values). That
// is one plain write per reservation at the session's consistency
// (LOCAL_QUORUM in chatd), idempotent, with no lightweight transaction:
// cheap enough for the channels, whose bounds are reserved in time steps
// and so once per message of a channel idle for longer than a step. Get is
// one read at the session's consistency.
type CQLBounds struct {
	sess gocqlx.Session
}

var _ BoundStore = (*CQLBounds)(nil)

// NewCQLBounds returns the BoundStore on sess, whose keyspace holds the
// seq_bounds table (SchemaCQL).
func NewCQLBounds(sess gocqlx.Session) *CQLBounds { return &CQLBounds{sess: sess} }

const (
	stmtBoundGet     = `SELECT bound, WRITETIME(bound) FROM seq_bounds WHERE key = ?`
	stmtBoundReserve = `UPDATE seq_bounds USING TIMESTAMP ? SET bound = ? WHERE key = ?`
)

// Get implements BoundStore.
func (b *CQLBounds) Get(ctx context.Context, key string) (uint64, error) {
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

// Reserve implements BoundStore.
func (b *CQLBounds) Reserve(ctx context.Context, key string, atLeast uint64) error {
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
