package redis

import "context"

// BoundStore is the durable floor of the allocator: per key, a bound that
// only grows. Every id the allocator hands out is within the bound of its
// key at the time, and the bound is durable before the id is used, so
// after Redis loses its data allocation resumes above Get and nothing is
// reused. Implementations must be safe for concurrent use and
// linearizable per key: a Get that starts after a Reserve returned sees
// at least its value.
//
// chatd's implementation is the CQL table seq_bounds of the scylla store
// (store/scylla.Store.Bounds); this package declares the interface, as its
// user, and speaks only Redis.
type BoundStore interface {
	// Reserve raises the key's bound to at least atLeast (1 <= atLeast <
	// 2^63) durably. Errors: nothing is known; retrying is safe.
	Reserve(ctx context.Context, key string, atLeast uint64) error
	// Get returns the key's bound, 0 if none was ever reserved.
	Get(ctx context.Context, key string) (uint64, error)
}
