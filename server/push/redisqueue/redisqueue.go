// Package redisqueue is the push queue of a cluster (store.PushQueue on
// Redis): one Redis Stream that every server appends to, read through one
// consumer group in which each server is a consumer. A server reads the
// entries pending for it and new ones, and claims (XAUTOCLAIM) the
// entries another consumer has held longer than ClaimIdle: those of a
// server that died before it sent and acknowledged them.
//
// What Redis loss means: the queue is as durable as the Redis it lives
// in. With AOF (appendfsync everysec) a Redis crash loses at most the last
// second of queued pushes; a Redis that is flushed or replaced loses every
// queued push (the messages themselves are in ScyllaDB and reach the
// devices by sync when they come back; only the notification is lost).
// A failover to a replica may lose the entries the replica had not
// received yet, and deliver entries twice whose acknowledgement it had
// not received.
//
// It speaks Redis only (go-redis); it imports no other storage.
package redisqueue

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/chatd/chatd/server/store"
)

// Defaults of Config.
const (
	// DefaultClaimIdle is how long an entry may stay pending at another
	// consumer before this one claims it. It must exceed the longest send
	// (a push's TTL bounds it; sends time out well before).
	DefaultClaimIdle = time.Minute
	// DefaultMaxLen caps the stream (approximately, MAXLEN ~): the oldest
	// entries are trimmed beyond it, bounding Redis memory if no server
	// consumes.
	DefaultMaxLen = 1_000_000
)

// Config configures a Queue.
type Config struct {
	// Client is the Redis client. Required.
	Client goredis.UniversalClient
	// Key is the stream's key (e.g. "chatd:chat:push"). Required.
	Key string
	// Consumer names this server in the consumer group (its server id).
	// Required.
	Consumer string
	// ClaimIdle: zero means DefaultClaimIdle.
	ClaimIdle time.Duration
	// MaxLen: zero means DefaultMaxLen.
	MaxLen int64
}

// group is the consumer group's name.
const group = "push"

// Queue is a store.PushQueue on a Redis Stream. It is safe for concurrent
// use.
type Queue struct {
	cfg Config
}

var _ store.PushQueue = (*Queue)(nil)

// New creates the consumer group if it does not exist (MKSTREAM) and
// returns the Queue.
func New(ctx context.Context, cfg Config) (*Queue, error) {
	if cfg.Client == nil || cfg.Key == "" || cfg.Consumer == "" {
		return nil, errors.New("redisqueue: Client, Key and Consumer are required")
	}
	if cfg.ClaimIdle == 0 {
		cfg.ClaimIdle = DefaultClaimIdle
	}
	if cfg.MaxLen == 0 {
		cfg.MaxLen = DefaultMaxLen
	}
	err := cfg.Client.XGroupCreateMkStream(ctx, cfg.Key, group, "0").Err()
	if err != nil && !strings.Contains(err.Error(), "BUSYGROUP") {
		return nil, fmt.Errorf("redisqueue: create group: %w", err)
	}
	return &Queue{cfg: cfg}, nil
}

// Stream entry ids ("<ms>-<seq>") map to store.PushJob ids as ms<<20 |
// seq, which keeps their order; seq stays far below 2^20 (it counts the
// entries added in one millisecond).
func toID(s string) (uint64, error) {
	ms, seq, ok := strings.Cut(s, "-")
	if !ok {
		return 0, fmt.Errorf("redisqueue: entry id %q", s)
	}
	m, err1 := strconv.ParseUint(ms, 10, 44)
	q, err2 := strconv.ParseUint(seq, 10, 20)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("redisqueue: entry id %q out of range", s)
	}
	return m<<20 | q, nil
}

func fromID(id uint64) string { return fmt.Sprintf("%d-%d", id>>20, id&(1<<20-1)) }

func fields(j *store.PushJob) map[string]any {
	return map[string]any{
		"u": j.UserID, "c": j.ChannelID, "m": j.MessageID,
		"t": j.Committed.UnixMilli(), "d": j.Due.UnixMilli(),
		"v": j.DeviceID, "a": j.Attempt,
	}
}

func parse(msg goredis.XMessage) (store.PushJob, error) {
	id, err := toID(msg.ID)
	if err != nil {
		return store.PushJob{}, err
	}
	str := func(k string) string { s, _ := msg.Values[k].(string); return s }
	num := func(k string) uint64 { n, _ := strconv.ParseUint(str(k), 10, 64); return n }
	ms := func(k string) time.Time { n, _ := strconv.ParseInt(str(k), 10, 64); return time.UnixMilli(n).UTC() }
	return store.PushJob{ID: id, UserID: str("u"), ChannelID: str("c"), MessageID: num("m"),
		Committed: ms("t"), Due: ms("d"), DeviceID: str("v"), Attempt: uint32(num("a"))}, nil
}

// AddPushJobs appends the jobs in one pipeline (XADD ... MAXLEN ~) and
// sets their IDs. They are in Redis (and its AOF, per its fsync policy)
// when it returns.
func (q *Queue) AddPushJobs(ctx context.Context, jobs []store.PushJob) error {
	if len(jobs) == 0 {
		return nil
	}
	cmds := make([]*goredis.StringCmd, len(jobs))
	_, err := q.cfg.Client.Pipelined(ctx, func(p goredis.Pipeliner) error {
		for i := range jobs {
			cmds[i] = p.XAdd(ctx, &goredis.XAddArgs{Stream: q.cfg.Key, MaxLen: q.cfg.MaxLen, Approx: true, Values: fields(&jobs[i])})
		}
		return nil
	})
	if err != nil {
		return err
	}
	for i, c := range cmds {
		if jobs[i].ID, err = toID(c.Val()); err != nil {
			return err
		}
	}
	return nil
}

// PushJobs returns up to limit jobs this consumer holds, in id order: the
// entries already pending for it, the entries of other consumers idle
// longer than ClaimIdle (XAUTOCLAIM: a dead server's), and new entries
// (XREADGROUP >, which makes them pending for it). An entry stays pending
// until DeletePushJobs acknowledges it.
func (q *Queue) PushJobs(ctx context.Context, limit int) ([]store.PushJob, error) {
	c, key := q.cfg.Client, q.cfg.Key
	var msgs []goredis.XMessage
	read := func(id string, count int) error {
		res, err := c.XReadGroup(ctx, &goredis.XReadGroupArgs{Group: group, Consumer: q.cfg.Consumer,
			Streams: []string{key, id}, Count: int64(count), Block: -1}).Result()
		if errors.Is(err, goredis.Nil) {
			return nil
		}
		if err != nil {
			return err
		}
		for _, s := range res {
			for _, m := range s.Messages {
				if m.Values != nil { // an entry trimmed while pending has none
					msgs = append(msgs, m)
				}
			}
		}
		return nil
	}
	if err := read("0", limit); err != nil { // pending for this consumer
		return nil, fmt.Errorf("redisqueue: read pending: %w", err)
	}
	if len(msgs) < limit {
		claimed, _, err := c.XAutoClaim(ctx, &goredis.XAutoClaimArgs{Stream: key, Group: group, Consumer: q.cfg.Consumer,
			MinIdle: q.cfg.ClaimIdle, Start: "0-0", Count: int64(limit - len(msgs))}).Result()
		if err != nil && !errors.Is(err, goredis.Nil) {
			return nil, fmt.Errorf("redisqueue: autoclaim: %w", err)
		}
		msgs = append(msgs, claimed...)
	}
	if len(msgs) < limit {
		if err := read(">", limit-len(msgs)); err != nil {
			return nil, fmt.Errorf("redisqueue: read new: %w", err)
		}
	}
	out := make([]store.PushJob, 0, len(msgs))
	seen := make(map[string]bool, len(msgs))
	for _, m := range msgs {
		if seen[m.ID] {
			continue
		}
		seen[m.ID] = true
		j, err := parse(m)
		if err != nil {
			return nil, err
		}
		out = append(out, j)
	}
	sortJobs(out)
	return out, nil
}

func sortJobs(js []store.PushJob) {
	for i := 1; i < len(js); i++ {
		for k := i; k > 0 && js[k].ID < js[k-1].ID; k-- {
			js[k], js[k-1] = js[k-1], js[k]
		}
	}
}

// DeletePushJobs acknowledges and deletes the entries (XACK, XDEL in one
// pipeline).
func (q *Queue) DeletePushJobs(ctx context.Context, ids []uint64) error {
	if len(ids) == 0 {
		return nil
	}
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = fromID(id)
	}
	_, err := q.cfg.Client.Pipelined(ctx, func(p goredis.Pipeliner) error {
		p.XAck(ctx, q.cfg.Key, group, s...)
		p.XDel(ctx, q.cfg.Key, s...)
		return nil
	})
	return err
}
