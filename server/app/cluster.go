package app

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/chatd/chatd/server/presence"
	presencelocal "github.com/chatd/chatd/server/presence/local"
	presenceredis "github.com/chatd/chatd/server/presence/redis"
	"github.com/chatd/chatd/server/router"
	"github.com/chatd/chatd/server/router/local"
	redisrouter "github.com/chatd/chatd/server/router/redis"
	"github.com/chatd/chatd/server/sequence"
	seqredis "github.com/chatd/chatd/server/sequence/redis"
	"github.com/chatd/chatd/server/store/scylla"
	goredis "github.com/redis/go-redis/v9"
)

// engines are the pieces that differ between a single node and a cluster:
// the router between servers, the id allocator and the presence engine.
type engines struct {
	router    router.Router
	allocator sequence.Allocator // nil: the sequencer's LocalAllocator
	presence  presence.Engine
	redis     goredis.UniversalClient // nil on a single node
	// closers run after the router, in order (Redis clients last).
	closers []func() error
}

// newEngines builds the single-node engines (in-process) or, for the
// scylla store, the cluster engines on Redis. handler receives the events
// routed to this server.
func (a *App) newEngines(ctx context.Context, handler router.Handler) (*engines, error) {
	cfg := a.cfg
	if cfg.Store != StoreScylla {
		return &engines{router: local.New(handler), presence: presencelocal.New()}, nil
	}
	sc, ok := a.store.(*scylla.Store)
	if !ok {
		return nil, errors.New("cluster mode needs the scylla store")
	}
	if err := sc.RegisterMetrics(a.registry); err != nil {
		return nil, fmt.Errorf("cql metrics: %w", err)
	}
	e := &engines{}
	fail := func(err error) (*engines, error) {
		for _, c := range e.closers {
			_ = c()
		}
		return nil, err
	}
	// One client for routing and id allocation: a single node or, with
	// several addresses, Redis Cluster (hash-tagged keys keep each script on
	// one slot).
	rc := goredis.NewUniversalClient(&goredis.UniversalOptions{Addrs: cfg.RedisAddrs})
	e.closers = append(e.closers, rc.Close)
	e.redis = rc
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := rc.Ping(pctx).Err(); err != nil {
		return fail(fmt.Errorf("redis %v: %w", cfg.RedisAddrs, err))
	}
	alloc, err := seqredis.New(pctx, seqredis.Config{
		Client: rc,
		Prefix: cfg.RedisPrefix + "seq:",
		Bounds: sc.Bounds(),
		Floor:  sc,
		Logger: cfg.Logger,
	})
	if err != nil {
		return fail(fmt.Errorf("id allocator: %w", err))
	}
	e.allocator = alloc
	// Stop renewing the allocator's lease before the client closes.
	e.closers = append([]func() error{alloc.Close}, e.closers...)
	r, err := redisrouter.New(pctx, redisrouter.Config{
		Client:     rc,
		Prefix:     cfg.RedisPrefix,
		ServerID:   cfg.ServerID,
		Handler:    handler,
		Logger:     cfg.Logger,
		Registerer: a.registry,
	})
	if err != nil {
		return fail(fmt.Errorf("router: %w", err))
	}
	e.router = r
	// The presence engine takes one Redis node (sharded pub/sub on it).
	single, ok := rc.(*goredis.Client)
	if !ok {
		_ = r.Close()
		return fail(errors.New("presence on Redis Cluster is not supported yet: give --redis a single address"))
	}
	pe, err := presenceredis.New(pctx, presenceredis.Config{Client: single, Prefix: cfg.RedisPrefix + "presence:", ServerID: cfg.ServerID, Logger: cfg.Logger})
	if err != nil {
		_ = r.Close()
		return fail(fmt.Errorf("presence engine: %w", err))
	}
	e.presence = pe
	return e, nil
}
