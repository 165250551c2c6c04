package app

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/chatd/chatd/server/hub"
	"github.com/chatd/chatd/server/store/scylla"
)

// Store kinds.
const (
	StorePebble = "pebble"
	StoreScylla = "scylla"
)

// Config is everything chatd needs to start. Zero values take the defaults
// documented on each field (see Defaults).
type Config struct {
	// GRPCAddr is the gRPC listener (Chat stream and all services),
	// default ":9090". Use "127.0.0.1:0" in tests.
	GRPCAddr string
	// HTTPAddr is the HTTP listener: REST gateway under /v1/,
	// /openapi.json, /healthz, /readyz and /metrics. Default ":8080".
	HTTPAddr string
	// DataDir holds the embedded store and the token signing key.
	// Default "./data".
	DataDir string

	// Store is "pebble" (the embedded single-node store in DataDir, the
	// default) or "scylla" (ScyllaDB/Cassandra: cluster mode, which also
	// needs RedisAddrs).
	Store string
	// Scylla configures the scylla store (Hosts, Keyspace, Consistency,
	// ...); see scylla.Config for the defaults.
	Scylla scylla.Config
	// RedisAddrs are the Redis (or Redis Cluster) addresses used in
	// cluster mode for routing, id allocation and presence.
	RedisAddrs []string
	// RedisPrefix starts every Redis key and channel of this deployment, so
	// that deployments sharing a Redis never see each other's routes, ids
	// or presence. Default "chatd:<keyspace>:".
	RedisPrefix string
	// ServerID names this server in a cluster and in Welcome frames.
	// Default: the host name and gRPC port.
	ServerID string
	// AdvertiseGRPC and AdvertiseHTTP are the addresses the Discovery
	// service hands to clients. Default: the bound listener addresses.
	AdvertiseGRPC string
	AdvertiseHTTP string

	// TokenTTL is the lifetime of a device's bearer token. Default 720h.
	TokenTTL time.Duration
	// TokenKeyFile is the HMAC key used to sign tokens (32 random bytes,
	// created if missing). Default DataDir/token.key. Every server of a
	// cluster must share it.
	TokenKeyFile string

	// HeartbeatInterval is what clients are told to send heartbeats at.
	// Default 25s.
	HeartbeatInterval time.Duration
	// PresenceGrace is how long a device counts as online after its last
	// heartbeat or frame; a stream silent that long is closed. Default 60s
	// (Centrifugo's default expiry); must exceed HeartbeatInterval.
	PresenceGrace time.Duration
	// EditWindow is how long after sending its author may edit a message.
	// Default 48h.
	EditWindow time.Duration
	// SendQueue is the per-stream bounded send queue, in frames.
	// Default 1024. A device whose queue overflows is disconnected with
	// ResourceExhausted and recovers by sync.
	SendQueue int
	// MaxStreamsPerDevice bounds the Chat streams one device holds on this
	// server; one more closes its oldest (ResourceExhausted). Default 4.
	MaxStreamsPerDevice int
	// FrameRate and FrameBurst bound the frames per second a device may send
	// on its stream. Defaults 200 and 400.
	FrameRate  float64
	FrameBurst int
	// UnaryRate and UnaryBurst bound unary calls per second per user (or per
	// client IP before log-in). Defaults 50 and 100.
	UnaryRate  float64
	UnaryBurst int
	// UnaryTimeout is the deadline given to unary calls that arrive without
	// one (and the cap for those that ask for more). Default 15s.
	UnaryTimeout time.Duration
	// MaxConcurrentStreams per HTTP/2 connection (CVE-2023-44487 rapid reset
	// mitigation). Default 64.
	MaxConcurrentStreams uint32
	// PprofAddr, if set, serves net/http/pprof's /debug/pprof/ on a
	// listener of its own (host:port; bind it to loopback). Default off.
	PprofAddr string
	// ShutdownTimeout bounds the graceful stop. Default 10s.
	ShutdownTimeout time.Duration

	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Defaults returns c with every zero field set to its default.
func (c Config) Defaults() Config {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&c.GRPCAddr, ":9090")
	def(&c.HTTPAddr, ":8080")
	def(&c.DataDir, "./data")
	def(&c.Store, StorePebble)
	if c.RedisPrefix == "" {
		ks := c.Scylla.Keyspace
		if ks == "" {
			ks = scylla.DefaultKeyspace
		}
		c.RedisPrefix = "chatd:" + ks + ":"
	}
	if c.TokenTTL == 0 {
		c.TokenTTL = 30 * 24 * time.Hour
	}
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = 25 * time.Second
	}
	if c.PresenceGrace == 0 {
		c.PresenceGrace = 60 * time.Second
	}
	if c.EditWindow == 0 {
		c.EditWindow = 48 * time.Hour
	}
	if c.MaxStreamsPerDevice == 0 {
		c.MaxStreamsPerDevice = hub.DefaultMaxStreamsPerDevice
	}
	if c.SendQueue == 0 {
		c.SendQueue = 1024
	}
	if c.FrameRate == 0 {
		c.FrameRate = 200
	}
	if c.FrameBurst == 0 {
		c.FrameBurst = 400
	}
	if c.UnaryRate == 0 {
		c.UnaryRate = 50
	}
	if c.UnaryBurst == 0 {
		c.UnaryBurst = 100
	}
	if c.UnaryTimeout == 0 {
		c.UnaryTimeout = 15 * time.Second
	}
	if c.MaxConcurrentStreams == 0 {
		c.MaxConcurrentStreams = 64
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = 10 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// Validate reports a configuration that cannot work.
func (c Config) Validate() error {
	var errs []error
	if c.TokenTTL < time.Minute {
		errs = append(errs, fmt.Errorf("token TTL %s is under 1m", c.TokenTTL))
	}
	if c.HeartbeatInterval < 100*time.Millisecond {
		errs = append(errs, fmt.Errorf("heartbeat interval %s is under 100ms", c.HeartbeatInterval))
	}
	if c.PresenceGrace <= c.HeartbeatInterval {
		errs = append(errs, fmt.Errorf("presence grace %s must exceed the heartbeat interval %s", c.PresenceGrace, c.HeartbeatInterval))
	}
	if c.MaxStreamsPerDevice < 1 {
		errs = append(errs, fmt.Errorf("max streams per device %d is under 1", c.MaxStreamsPerDevice))
	}
	if c.SendQueue < 16 {
		errs = append(errs, fmt.Errorf("send queue %d is under 16 frames", c.SendQueue))
	}
	switch c.Store {
	case StorePebble:
	case StoreScylla:
		if len(c.Scylla.Hosts) == 0 {
			errs = append(errs, errors.New("store scylla needs at least one scylla host"))
		}
		if len(c.RedisAddrs) == 0 {
			errs = append(errs, errors.New("store scylla (cluster mode) needs redis"))
		}
	default:
		errs = append(errs, fmt.Errorf("unknown store %q (pebble or scylla)", c.Store))
	}
	if strings.ContainsAny(c.RedisPrefix, "{}") {
		errs = append(errs, fmt.Errorf("redis prefix %q must not contain braces (they are Redis Cluster hash tags)", c.RedisPrefix))
	}
	if c.FrameRate <= 0 || c.FrameBurst < 1 || c.UnaryRate <= 0 || c.UnaryBurst < 1 {
		errs = append(errs, errors.New("rate limits must be positive"))
	}
	return errors.Join(errs...)
}
