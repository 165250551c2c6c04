package app

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/chatd/chatd/server/auth"
	"github.com/chatd/chatd/server/chat"
	"github.com/chatd/chatd/server/hub"
	"github.com/chatd/chatd/server/presence"
	"github.com/chatd/chatd/server/push"
	"github.com/chatd/chatd/server/push/webpush"
	"github.com/chatd/chatd/server/sequence"
	"github.com/chatd/chatd/server/store/scylla"
	"github.com/chatd/chatd/server/tracing"
	"golang.org/x/oauth2"
)

// Store kinds.
const (
	StorePebble = "pebble"
	StoreScylla = "scylla"
)

// Defaults of the Config fields that configure the server as a whole (its
// listeners and gRPC server). The defaults of a component's knobs live
// with the component (presence, hub, chat, auth, store/scylla); Defaults
// reads them from there, and cmd/chatd's flags read Defaults.
const (
	DefaultGRPCAddr             = ":9090"
	DefaultHTTPAddr             = ":8080"
	DefaultDataDir              = "./data"
	DefaultUnaryRate            = 50 // unary calls per second per user or client IP
	DefaultUnaryBurst           = 100
	DefaultUnaryTimeout         = 15 * time.Second
	DefaultMaxConcurrentStreams = 64 // HTTP/2 streams per connection
	DefaultShutdownTimeout      = 10 * time.Second
	DefaultDrainWindow          = 30 * time.Second
)

// MinSendQueue is the smallest SendQueue Validate accepts, in frames.
const MinSendQueue = 16

// Config is everything chatd needs to start. A zero field means its
// default, named in the field's doc (Defaults fills them in); cmd/chatd's
// flags start from the same values.
type Config struct {
	// GRPCAddr is the gRPC listener (Chat stream and all services); zero
	// means DefaultGRPCAddr. Use "127.0.0.1:0" in tests.
	GRPCAddr string
	// HTTPAddr is the HTTP listener: REST gateway under /v1/,
	// /openapi.json, /healthz, /readyz, /metrics, grpc-web (and over
	// WebSocket) for every gRPC service, and the web app at /. Zero means
	// DefaultHTTPAddr.
	HTTPAddr string
	// DataDir holds the embedded store and the token signing key. Zero
	// means DefaultDataDir.
	DataDir string

	// Store is StorePebble (the embedded single-node store in DataDir,
	// and the zero value's meaning) or StoreScylla (ScyllaDB/Cassandra:
	// cluster mode, which also needs RedisAddrs).
	Store string
	// Scylla configures the scylla store (Hosts, Keyspace, Consistency,
	// ...); its zero fields take scylla.Config's defaults.
	Scylla scylla.Config
	// RedisAddrs are the Redis (or Redis Cluster) addresses used in
	// cluster mode for routing, id allocation and presence.
	RedisAddrs []string
	// RedisPrefix starts every Redis key and channel of this deployment, so
	// that deployments sharing a Redis never see each other's routes, ids
	// or presence. Zero means "chatd:<keyspace>:".
	RedisPrefix string
	// ServerID names this server in a cluster and in Welcome frames. Zero
	// means the host name and the bound gRPC port.
	ServerID string
	// AdvertiseGRPC and AdvertiseHTTP are the addresses the Discovery
	// service hands to clients. Zero means the bound listener addresses;
	// when those listen on every interface (":9090"), this server answers
	// with the host the client reached it by and the bound port (see
	// discovery.Service.GetEndpoints). A cluster must set them.
	AdvertiseGRPC string
	AdvertiseHTTP string
	// Zone names this server's zone (e.g. a cloud availability zone):
	// Discovery lists a client's own zone first, and a request without a
	// zone hint gets this one. Zero: no zone.
	Zone string
	// Version is the build version this server reports in Discovery.
	Version string
	// MaxStreams is this server's capacity in Chat streams: past it new
	// streams get ResourceExhausted with a retry delay, and Discovery
	// never ranks it first. Zero means no bound.
	MaxStreams int
	// StreamRate and StreamBurst are the admission token bucket: new Chat
	// streams per second this server accepts, and the burst above it;
	// past it a new stream gets ResourceExhausted with the delay after
	// which a token is free. Zero StreamRate means no bound; zero
	// StreamBurst means max(1, StreamRate).
	StreamRate  float64
	StreamBurst int
	// DrainWindow is how long a drain (SIGTERM, or AdminService.DrainServer)
	// spreads its devices' moves over before it closes what is left. Zero
	// means DefaultDrainWindow.
	DrainWindow time.Duration
	// CommitLinger is how long the sequencer's group commit waits for more
	// sends, under load only (see sequence.Options.CommitLinger): fewer
	// fsyncs per message for at most this much latency. Zero means
	// sequence.DefaultCommitLinger; negative turns it off; Validate
	// refuses more than sequence.MaxCommitLinger.
	CommitLinger time.Duration
	// AdminAddr, if set, serves AdminService (DrainServer) on a gRPC
	// listener of its own; bind it to loopback or a private network. Zero:
	// no admin listener.
	AdminAddr string

	// TokenTTL is the lifetime of a device's bearer token. Zero means
	// auth.DefaultTokenTTL.
	TokenTTL time.Duration
	// TokenKeyFile is the HMAC key used to sign tokens (32 random bytes,
	// created if missing). Zero means DataDir/token.key. Every server of a
	// cluster must share it.
	TokenKeyFile string

	// HeartbeatInterval is what clients are told (in Welcome) to send
	// heartbeats at. Zero means presence.DefaultHeartbeatInterval.
	HeartbeatInterval time.Duration
	// PresenceGrace is how long a device counts as online after its last
	// heartbeat or frame; a stream silent that long is closed. Zero means
	// presence.DefaultGrace; it must exceed HeartbeatInterval.
	PresenceGrace time.Duration
	// EditWindow is how long after sending its author may edit a message.
	// Zero means chat.DefaultEditWindow.
	EditWindow time.Duration
	// WriteStall is how long a Chat stream's writer may stay blocked on a
	// client that does not read after the stream was ended (slow consumer,
	// revocation, token expiry, heartbeat timeout) before the server closes
	// its connection. Zero means chat.DefaultWriteStall.
	WriteStall time.Duration
	// SendQueue is the per-stream bounded send queue, in frames, at least
	// MinSendQueue. Zero means hub.DefaultQueueSize. A device whose queue
	// overflows is disconnected with ResourceExhausted and recovers by
	// sync.
	SendQueue int
	// MaxStreamsPerDevice bounds the Chat streams one device holds on this
	// server; one more closes its oldest (ResourceExhausted). Zero means
	// hub.DefaultMaxStreamsPerDevice.
	MaxStreamsPerDevice int
	// FrameRate and FrameBurst bound the frames per second a device may send
	// on its stream. Zero means chat.DefaultFrameRate and
	// chat.DefaultFrameBurst.
	FrameRate  float64
	FrameBurst int
	// UnaryRate and UnaryBurst bound unary calls per second per user (or per
	// client IP before log-in). Zero means DefaultUnaryRate and
	// DefaultUnaryBurst.
	UnaryRate  float64
	UnaryBurst int
	// UnaryTimeout is the deadline given to unary calls that arrive without
	// one (and the cap for those that ask for more). Zero means
	// DefaultUnaryTimeout.
	UnaryTimeout time.Duration
	// MaxConcurrentStreams per HTTP/2 connection (CVE-2023-44487 rapid reset
	// mitigation). Zero means DefaultMaxConcurrentStreams.
	MaxConcurrentStreams uint32
	// Tracing exports OpenTelemetry spans (OTLP/gRPC to Tracing.Endpoint);
	// the zero value is off, and off costs nothing. ServerID is filled in.
	Tracing tracing.Config
	// AllowedOrigins are the browser origins (scheme://host[:port]) other
	// than chatd's own page that may call it through grpc-web (CORS) and
	// grpc-web over WebSocket; "*" allows any. Zero: same origin only.
	AllowedOrigins []string
	// PprofAddr, if set, serves net/http/pprof's /debug/pprof/ on a
	// listener of its own (host:port; bind it to loopback). Zero: off.
	PprofAddr string
	// ShutdownTimeout bounds the graceful stop. Zero means
	// DefaultShutdownTimeout.
	ShutdownTimeout time.Duration

	// Push configures push notifications (docs/push.md).
	Push PushConfig

	// Logger; zero means slog.Default().
	Logger *slog.Logger
}

// PushConfig configures push notifications: the providers' credentials
// (a provider without them is off, and the server says so at start-up),
// the Web Push endpoint allow-list and the dispatcher's knobs.
type PushConfig struct {
	// Off turns push off entirely (no dispatcher, every target refused).
	Off bool
	// VAPIDKeyFile holds the Web Push VAPID key pair, created if missing.
	// Zero means DataDir/vapid.json. Every server of a cluster needs the
	// same file.
	VAPIDKeyFile string
	// VAPIDSubject is the VAPID sub claim (mailto: or https: URI). Zero
	// means webpush.DefaultSubject.
	VAPIDSubject string
	// WebPushHosts is the allow-list of Web Push endpoint hosts ("*."
	// prefix: any subdomain). Zero means push.DefaultWebPushHosts.
	WebPushHosts []string
	// Window is the collapse window. Zero means push.DefaultCollapseWindow.
	Window time.Duration
	// TTL is how long a push is worth sending. Zero means push.DefaultTTL.
	TTL time.Duration
	// Concurrency bounds the sends in flight per provider. Zero means
	// push.DefaultConcurrency.
	Concurrency int
	// HTTPClient, if set, sends the Web Push requests (tests: a client
	// that trusts their TLS push service). No flag.
	HTTPClient *http.Client

	// FCMCredentialsFile is the Firebase service account key (JSON);
	// zero turns FCM off. FCMProjectID overrides the project of the
	// credentials. FCMEndpoint and FCMTokenSource (no flags) point the SDK
	// at a test server.
	FCMCredentialsFile string
	FCMProjectID       string
	FCMEndpoint        string
	FCMTokenSource     oauth2.TokenSource

	// APNsKeyFile is the .p8 token signing key, APNsKeyID its key id and
	// APNsTeamID the Apple team id; without all three APNs is off.
	// APNsHost and APNsHTTPClient (no flags) point it at a test server.
	APNsKeyFile    string
	APNsKeyID      string
	APNsTeamID     string
	APNsHost       string
	APNsHTTPClient *http.Client
}

// Defaults returns c with every zero field set to its default.
func (c Config) Defaults() Config {
	orDefault(&c.GRPCAddr, DefaultGRPCAddr)
	orDefault(&c.HTTPAddr, DefaultHTTPAddr)
	orDefault(&c.DataDir, DefaultDataDir)
	orDefault(&c.Store, StorePebble)
	if c.RedisPrefix == "" {
		ks := c.Scylla.Keyspace
		if ks == "" {
			ks = scylla.DefaultKeyspace
		}
		c.RedisPrefix = "chatd:" + ks + ":"
	}
	orDefault(&c.TokenTTL, auth.DefaultTokenTTL)
	orDefault(&c.HeartbeatInterval, presence.DefaultHeartbeatInterval)
	orDefault(&c.PresenceGrace, presence.DefaultGrace)
	orDefault(&c.EditWindow, chat.DefaultEditWindow)
	orDefault(&c.WriteStall, chat.DefaultWriteStall)
	orDefault(&c.MaxStreamsPerDevice, hub.DefaultMaxStreamsPerDevice)
	orDefault(&c.SendQueue, hub.DefaultQueueSize)
	orDefault(&c.FrameRate, chat.DefaultFrameRate)
	orDefault(&c.FrameBurst, chat.DefaultFrameBurst)
	orDefault(&c.UnaryRate, DefaultUnaryRate)
	orDefault(&c.UnaryBurst, DefaultUnaryBurst)
	orDefault(&c.UnaryTimeout, DefaultUnaryTimeout)
	orDefault(&c.MaxConcurrentStreams, DefaultMaxConcurrentStreams)
	orDefault(&c.ShutdownTimeout, DefaultShutdownTimeout)
	orDefault(&c.DrainWindow, DefaultDrainWindow)
	orDefault(&c.CommitLinger, sequence.DefaultCommitLinger)
	orDefault(&c.Push.VAPIDSubject, webpush.DefaultSubject)
	if c.Push.WebPushHosts == nil {
		c.Push.WebPushHosts = push.DefaultWebPushHosts
	}
	orDefault(&c.Push.Window, push.DefaultCollapseWindow)
	orDefault(&c.Push.TTL, push.DefaultTTL)
	orDefault(&c.Push.Concurrency, push.DefaultConcurrency)
	orDefault(&c.Logger, slog.Default())
	return c
}

// orDefault sets *v to def when *v is the zero value.
func orDefault[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
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
	if c.SendQueue < MinSendQueue {
		errs = append(errs, fmt.Errorf("send queue %d is under %d frames", c.SendQueue, MinSendQueue))
	}
	if c.WriteStall < 0 {
		errs = append(errs, fmt.Errorf("write stall %s is negative", c.WriteStall))
	}
	for _, o := range c.AllowedOrigins {
		if err := checkOrigin(o); err != nil {
			errs = append(errs, err)
		}
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
	if c.CommitLinger > sequence.MaxCommitLinger {
		errs = append(errs, fmt.Errorf("commit linger %v is above %v: it is added to a send's latency under load", c.CommitLinger, sequence.MaxCommitLinger))
	}
	if c.MaxStreams < 0 || c.StreamRate < 0 || c.StreamBurst < 0 || c.DrainWindow < 0 {
		errs = append(errs, errors.New("max streams, stream rate, stream burst and drain window must not be negative"))
	}
	if c.Push.Window < 0 || c.Push.TTL < time.Second || c.Push.Concurrency < 1 {
		errs = append(errs, errors.New("push: window must be >= 0, ttl >= 1s, concurrency >= 1"))
	}
	if c.FrameRate <= 0 || c.FrameBurst < 1 || c.UnaryRate <= 0 || c.UnaryBurst < 1 {
		errs = append(errs, errors.New("rate limits must be positive"))
	}
	return errors.Join(errs...)
}
