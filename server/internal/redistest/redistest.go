// Package redistest holds the go-redis helpers of the tests that use the
// shared test Redis (testenv.RedisAddr): clients closed with the test, and
// key prefixes of a test's own whose keys are deleted when it ends. It is
// imported by tests only, and speaks Redis only (testenv speaks CQL).
package redistest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"testing"

	goredis "github.com/redis/go-redis/v9"
)

// Client returns a client of the Redis at addr, closed when t ends.
func Client(t testing.TB, addr string) *goredis.Client {
	c := goredis.NewClient(&goredis.Options{Addr: addr})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// NewPrefix returns "test:<name>:<random hex>:", a key prefix of t's own.
func NewPrefix(name string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return "test:" + name + ":" + hex.EncodeToString(b[:]) + ":"
}

// DeletePrefix deletes every key starting with prefix (the tests' stand-in
// for FLUSHALL, which a shared Redis does not allow), on every master of a
// cluster.
func DeletePrefix(c goredis.UniversalClient, prefix string) error {
	ctx := context.Background()
	del := func(ctx context.Context, c *goredis.Client) error {
		iter := c.Scan(ctx, 0, prefix+"*", 1000).Iterator()
		var keys []string
		for iter.Next(ctx) {
			keys = append(keys, iter.Val())
		}
		for _, k := range keys {
			_ = c.Del(ctx, k).Err()
		}
		return iter.Err()
	}
	switch c := c.(type) {
	case *goredis.ClusterClient:
		return c.ForEachMaster(ctx, del)
	case *goredis.Client:
		return del(ctx, c)
	default:
		return fmt.Errorf("unsupported client %T", c)
	}
}
