package local_test

import (
	"testing"

	"github.com/chatd/chatd/server/router"
	"github.com/chatd/chatd/server/router/local"
	"github.com/chatd/chatd/server/router/routertest"
)

func TestConformance(t *testing.T) {
	routertest.RunSingle(t, func(t *testing.T, n int, handlers []router.Handler) []router.Router {
		if n != 1 {
			t.Fatalf("local router is single-node; asked for %d nodes", n)
		}
		return []router.Router{local.New(handlers[0])}
	})
}
