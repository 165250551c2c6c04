// Package auth authenticates devices: password hashing (argon2id), signed
// expiring bearer tokens bound to a device, revocation per device, and the
// gRPC interceptors that put the caller's Principal into the context.
// Its errors are *store.Error values (CodeUnauthenticated, or
// CodeUnavailable when a session cannot be checked); it does not import
// gRPC status or codes: grpcerr maps them at the edge.
package auth

import (
	"context"
	"time"
)

// Principal is the authenticated caller: one device of one user.
type Principal struct {
	UserID    string
	DeviceID  string
	ExpiresAt time.Time // when the bearer token stops being valid
}

type principalKey struct{}

// NewContext returns ctx carrying p.
func NewContext(ctx context.Context, p Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// FromContext returns the Principal that the interceptors stored in ctx.
func FromContext(ctx context.Context) (Principal, bool) {
	p, ok := ctx.Value(principalKey{}).(Principal)
	return p, ok
}
