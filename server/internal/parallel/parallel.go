// Package parallel runs a bounded number of calls at once: the fan-out
// the store and the allocator use for independent writes and reads
// (golang.org/x/sync/errgroup underneath). It knows nothing of chat.
package parallel

import (
	"context"

	"golang.org/x/sync/errgroup"
)

// Do runs fn(ctx, i) for i in [0, n) with at most limit calls at once
// (limit < 1 counts as 1) and returns the first error; after it, the
// other calls see a canceled ctx and no new ones start. n == 1 runs on
// the caller's goroutine.
func Do(ctx context.Context, n, limit int, fn func(ctx context.Context, i int) error) error {
	if n == 1 {
		return fn(ctx, 0)
	}
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(max(limit, 1))
	for i := range n {
		if ctx.Err() != nil {
			break // an earlier call failed: start no more
		}
		g.Go(func() error { return fn(ctx, i) })
	}
	return g.Wait()
}
