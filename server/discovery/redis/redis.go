// Package redis is the cluster discovery.Registry: every chat server
// heartbeats its record (a chatv1.Endpoint: addresses, zone, capacity,
// open streams, state, version) into Redis under a lease, and reads every
// live record back in the same beat, so the view that GetEndpoints ranks
// is at most one Interval old and costs no Redis round trip per call. A
// server that stops beating drops out when its lease lapses (TTL, default
// 3 s); one that stops gracefully removes itself at once (Close), and one
// that starts draining says so at once (Beat).
//
// Keys (one hash tag, so Redis Cluster keeps them on one slot):
//
//	{<prefix>endpoints}      ZSET  server_id → lease deadline (Redis clock, ms)
//	{<prefix>endpoints}:<id> STRING the chatv1.Endpoint (protobuf), with PX = TTL
//
// Cost per server per Interval (1 s): TIME, one MULTI (SET, ZADD,
// ZREMRANGEBYSCORE), one ZRANGEBYSCORE and one MGET of the live records.
package redis

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/chatd/chatd/server/discovery"
	goredis "github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"
)

// Defaults of Config.
const (
	DefaultPrefix   = "chatd:"
	DefaultInterval = time.Second
	DefaultTTL      = 3 * time.Second
)

// Config configures a Registry.
type Config struct {
	// Client is the cluster's Redis. Required; not closed by the Registry.
	Client goredis.UniversalClient
	// Self returns this server's current record (server_id and addresses
	// required; load and state as of now). Required; called once per beat.
	Self func() *chatv1.Endpoint
	// Prefix starts every key; default DefaultPrefix.
	Prefix string
	// Interval between beats (and view refreshes); default DefaultInterval.
	Interval time.Duration
	// TTL is the lease: a server that has not beaten for TTL is not
	// listed. Default DefaultTTL; at least 2 Intervals.
	TTL time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Registry implements discovery.Registry on Redis.
type Registry struct {
	cfg     Config
	zkey    string
	id      string
	stop    chan struct{}
	stopped chan struct{}
	once    sync.Once
	beatMu  sync.Mutex // one beat at a time

	view  atomic.Pointer[discovery.View]
	fresh atomic.Int64 // unix ns of the last successful read of the records
}

// New registers this server (one beat before it returns, so that it is
// listed at once) and keeps beating until Close.
func New(ctx context.Context, cfg Config) (*Registry, error) {
	if cfg.Client == nil || cfg.Self == nil || cfg.Self().GetServerId() == "" {
		return nil, errors.New("discovery/redis: Config.Client and Config.Self (with a server id) are required")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.TTL <= 0 {
		cfg.TTL = DefaultTTL
	}
	cfg.TTL = max(cfg.TTL, 2*cfg.Interval)
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	r := &Registry{
		cfg:     cfg,
		zkey:    "{" + cfg.Prefix + "endpoints}",
		id:      cfg.Self().GetServerId(),
		stop:    make(chan struct{}),
		stopped: make(chan struct{}),
	}
	r.view.Store(discovery.NewView([]*chatv1.Endpoint{cfg.Self()}))
	if err := r.Beat(ctx); err != nil {
		return nil, fmt.Errorf("discovery/redis: register: %w", err)
	}
	go r.loop()
	return r, nil
}

func (r *Registry) key(id string) string { return r.zkey + ":" + id }

// Beat writes this server's record now, extends its lease and refreshes
// the view. It runs every Interval; call it directly when the record
// changed in a way others must learn at once (the server started
// draining). Errors are Redis's; the previous view stays.
func (r *Registry) Beat(ctx context.Context) error {
	r.beatMu.Lock()
	defer r.beatMu.Unlock()
	self := r.cfg.Self()
	b, err := proto.Marshal(self)
	if err != nil {
		return err
	}
	now, err := r.cfg.Client.Time(ctx).Result()
	if err != nil {
		return err
	}
	ms := now.UnixMilli()
	var live *goredis.StringSliceCmd
	_, err = r.cfg.Client.TxPipelined(ctx, func(p goredis.Pipeliner) error {
		p.Set(ctx, r.key(r.id), b, r.cfg.TTL)
		p.ZAdd(ctx, r.zkey, goredis.Z{Score: float64(now.Add(r.cfg.TTL).UnixMilli()), Member: r.id})
		p.ZRemRangeByScore(ctx, r.zkey, "-inf", "("+strconv.FormatInt(ms, 10))
		live = p.ZRangeByScore(ctx, r.zkey, &goredis.ZRangeBy{Min: strconv.FormatInt(ms, 10), Max: "+inf"})
		return nil
	})
	if err != nil {
		return err
	}
	servers := []*chatv1.Endpoint{self}
	var keys []string
	for _, id := range live.Val() {
		if id != r.id {
			keys = append(keys, r.key(id))
		}
	}
	if len(keys) > 0 {
		vals, err := r.cfg.Client.MGet(ctx, keys...).Result()
		if err != nil {
			return err
		}
		for _, v := range vals {
			s, ok := v.(string)
			if !ok {
				continue // the record expired between the two reads
			}
			e := &chatv1.Endpoint{}
			if proto.Unmarshal([]byte(s), e) != nil || e.GetServerId() == "" {
				continue
			}
			servers = append(servers, e)
		}
	}
	slices.SortFunc(servers, func(a, b *chatv1.Endpoint) int {
		if a.GetServerId() < b.GetServerId() {
			return -1
		}
		return 1
	})
	r.view.Store(discovery.NewView(servers))
	r.fresh.Store(time.Now().UnixNano())
	return nil
}

func (r *Registry) loop() {
	defer close(r.stopped)
	t := time.NewTicker(r.cfg.Interval)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-r.stop:
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), r.cfg.TTL)
			err := r.Beat(ctx)
			cancel()
			if err != nil && !failing {
				r.cfg.Logger.Warn("discovery/redis: heartbeat failed", "err", err)
			} else if err == nil && failing {
				r.cfg.Logger.Info("discovery/redis: heartbeat recovered")
			}
			failing = err != nil
		}
	}
}

// View implements discovery.Registry: the servers read at the last beat,
// with this server's record as of that beat. When no beat has succeeded
// for TTL (Redis unreachable), the others' leases may have lapsed
// unnoticed: the view is this server alone (current record).
func (r *Registry) View() *discovery.View {
	if time.Since(time.Unix(0, r.fresh.Load())) > r.cfg.TTL {
		return discovery.NewView([]*chatv1.Endpoint{r.cfg.Self()})
	}
	return r.view.Load()
}

// Close stops beating and removes this server from the list, so clients
// stop being sent to it (graceful shutdown). Safe to call more than once.
func (r *Registry) Close() error {
	var err error
	r.once.Do(func() {
		close(r.stop)
		<-r.stopped
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err = r.cfg.Client.TxPipelined(ctx, func(p goredis.Pipeliner) error {
			p.ZRem(ctx, r.zkey, r.id)
			p.Del(ctx, r.key(r.id))
			return nil
		})
	})
	return err
}

// kill stops beating without deregistering (tests: a server that died).
func (r *Registry) kill() {
	r.once.Do(func() {
		close(r.stop)
		<-r.stopped
	})
}
