package routertest_test

import (
	"context"
	"sync"
	"testing"

	"github.com/chatd/chatd/server/router"
	"github.com/chatd/chatd/server/router/local"
	"github.com/chatd/chatd/server/router/routertest"
)

// bus is an in-memory backend shared by several nodes, used to check that
// the multi-node cases of the suite are satisfiable: each node is a
// router/local Router, and Route on any node forwards to every node.
type bus struct {
	mu    sync.Mutex
	nodes []*local.Router
}

type node struct {
	*local.Router
	b *bus
}

func (n node) Route(ctx context.Context, events []router.Event) error {
	n.b.mu.Lock()
	defer n.b.mu.Unlock()
	for _, r := range n.b.nodes {
		_ = r.Route(ctx, events) // a closed node drops
	}
	return nil
}

func TestSuiteOnInMemoryBus(t *testing.T) {
	routertest.Run(t, func(t *testing.T, n int, handlers []router.Handler) []router.Router {
		b := &bus{}
		out := make([]router.Router, n)
		for i := range n {
			r := local.New(handlers[i])
			b.nodes = append(b.nodes, r)
			out[i] = node{Router: r, b: b}
		}
		return out
	})
}
