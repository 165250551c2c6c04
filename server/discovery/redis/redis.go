// Package redis is the cluster discovery.Registry: every chat server
// registers its advertised endpoint and load in Redis under a lease that it
// renews, and GetEndpoints lists the live servers, least loaded first. A
// server that dies drops out when its lease expires (TTL, default 15 s).
//
// Keys (one hash tag, so Redis Cluster keeps them on one slot):
//
//	{<prefix>endpoints}      ZSET  server_id → lease deadline (Redis clock, ms)
//	{<prefix>endpoints}:<id> STRING the chatv1.Endpoint (protobuf), with PX = TTL
//
// Cost: one pipelined ZADD+SET per server per Interval; a lookup is one
// ZRANGEBYSCORE and one MGET, cached in the server for CacheTTL (1 s).
package redis

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"sync"
	"time"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	goredis "github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"
)

// Defaults of Config.
const (
	DefaultPrefix   = "chatd:"
	DefaultTTL      = 15 * time.Second
	DefaultCacheTTL = time.Second
)

// Config configures a Registry.
type Config struct {
	// Client is the cluster's Redis. Required; not closed by the Registry.
	Client goredis.UniversalClient
	// Self is this server's advertised endpoint (server_id and addresses).
	// Required.
	Self *chatv1.Endpoint
	// Load reports this server's connected devices; may be nil.
	Load func() uint64
	// Prefix starts every key; default DefaultPrefix.
	Prefix string
	// TTL is the lease: a server not renewed for TTL is not listed.
	// Default 15 s; renewed every TTL/3.
	TTL time.Duration
	// CacheTTL is how long a lookup result is reused; default 1 s.
	CacheTTL time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Registry implements discovery.Registry on Redis.
type Registry struct {
	cfg     Config
	zkey    string
	stop    chan struct{}
	stopped chan struct{}
	once    sync.Once

	mu       sync.Mutex
	cached   []*chatv1.Endpoint
	cachedAt time.Time
}

// New registers this server (one renewal before it returns, so that it is
// listed at once) and keeps renewing its lease until Close.
func New(ctx context.Context, cfg Config) (*Registry, error) {
	if cfg.Client == nil || cfg.Self.GetServerId() == "" {
		return nil, errors.New("discovery/redis: Config.Client and Config.Self.ServerId are required")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if cfg.TTL <= 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.CacheTTL <= 0 {
		cfg.CacheTTL = DefaultCacheTTL
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	r := &Registry{
		cfg:     cfg,
		zkey:    "{" + cfg.Prefix + "endpoints}",
		stop:    make(chan struct{}),
		stopped: make(chan struct{}),
	}
	if err := r.renew(ctx); err != nil {
		return nil, fmt.Errorf("discovery/redis: register: %w", err)
	}
	go r.loop()
	return r, nil
}

func (r *Registry) key(id string) string { return r.zkey + ":" + id }

// renew writes this server's endpoint and extends its lease.
func (r *Registry) renew(ctx context.Context) error {
	e := proto.Clone(r.cfg.Self).(*chatv1.Endpoint)
	if r.cfg.Load != nil {
		e.Load = r.cfg.Load()
	}
	b, err := proto.Marshal(e)
	if err != nil {
		return err
	}
	now, err := r.cfg.Client.Time(ctx).Result()
	if err != nil {
		return err
	}
	deadline := now.Add(r.cfg.TTL).UnixMilli()
	_, err = r.cfg.Client.TxPipelined(ctx, func(p goredis.Pipeliner) error {
		p.Set(ctx, r.key(e.GetServerId()), b, r.cfg.TTL)
		p.ZAdd(ctx, r.zkey, goredis.Z{Score: float64(deadline), Member: e.GetServerId()})
		p.ZRemRangeByScore(ctx, r.zkey, "-inf", "("+strconv.FormatInt(now.UnixMilli(), 10))
		return nil
	})
	return err
}

func (r *Registry) loop() {
	defer close(r.stopped)
	t := time.NewTicker(r.cfg.TTL / 3)
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), r.cfg.TTL/3)
			if err := r.renew(ctx); err != nil {
				r.cfg.Logger.Warn("discovery/redis: lease renewal failed", "err", err)
			}
			cancel()
		}
	}
}

// Endpoints returns the servers whose lease is live, least loaded first
// (ties by server id). username is not used: any server may hold any
// device, routing brings messages to it.
func (r *Registry) Endpoints(ctx context.Context, _ string) ([]*chatv1.Endpoint, error) {
	r.mu.Lock()
	if r.cached != nil && time.Since(r.cachedAt) < r.cfg.CacheTTL {
		out := r.cached
		r.mu.Unlock()
		return out, nil
	}
	r.mu.Unlock()

	now, err := r.cfg.Client.Time(ctx).Result()
	if err != nil {
		return nil, err
	}
	ids, err := r.cfg.Client.ZRangeByScore(ctx, r.zkey, &goredis.ZRangeBy{
		Min: strconv.FormatInt(now.UnixMilli(), 10), Max: "+inf",
	}).Result()
	if err != nil {
		return nil, err
	}
	var out []*chatv1.Endpoint
	if len(ids) > 0 {
		keys := make([]string, len(ids))
		for i, id := range ids {
			keys[i] = r.key(id)
		}
		vals, err := r.cfg.Client.MGet(ctx, keys...).Result()
		if err != nil {
			return nil, err
		}
		for _, v := range vals {
			s, ok := v.(string)
			if !ok {
				continue // lease key expired between the two reads
			}
			e := &chatv1.Endpoint{}
			if proto.Unmarshal([]byte(s), e) != nil {
				continue
			}
			out = append(out, e)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].GetLoad() != out[j].GetLoad() {
			return out[i].GetLoad() < out[j].GetLoad()
		}
		return out[i].GetServerId() < out[j].GetServerId()
	})
	r.mu.Lock()
	r.cached, r.cachedAt = out, time.Now()
	r.mu.Unlock()
	return out, nil
}

// Close stops renewing and removes this server from the list, so clients
// stop being sent to it (used on graceful shutdown).
func (r *Registry) Close() error {
	var err error
	r.once.Do(func() {
		close(r.stop)
		<-r.stopped
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		id := r.cfg.Self.GetServerId()
		_, err = r.cfg.Client.TxPipelined(ctx, func(p goredis.Pipeliner) error {
			p.ZRem(ctx, r.zkey, id)
			p.Del(ctx, r.key(id))
			return nil
		})
	})
	return err
}

// kill stops renewing without deregistering (tests: a server that died).
func (r *Registry) kill() {
	r.once.Do(func() {
		close(r.stop)
		<-r.stopped
	})
}
