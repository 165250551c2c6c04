// Package app assembles a chat server, in New's order: it opens the store,
// binds the listeners, builds the engines (hub, router, sequencer,
// presence tracker; in-process on a single node, on Redis in a cluster),
// builds the services (auth, chat, account, presence, discovery) and the
// gRPC and HTTP servers, which Start serves: gRPC with reflection and the
// standard health service, HTTP with the REST gateway, OpenAPI, health and
// Prometheus metrics. cmd/chatd is a thin flag layer over Config, and
// tests start whole servers with it.
//
// Config holds every knob with zero meaning the default; the defaults of
// a component's knobs are constants of that component (presence, hub,
// chat, auth, store/scylla), the server-wide ones are this package's.
//
// app is the only package that knows every other one; nothing imports it
// but cmd/chatd and tests.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	chatd "github.com/chatd/chatd"
	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/chatd/chatd/server/account"
	"github.com/chatd/chatd/server/admission"
	"github.com/chatd/chatd/server/auth"
	"github.com/chatd/chatd/server/chat"
	"github.com/chatd/chatd/server/deliver"
	"github.com/chatd/chatd/server/discovery"
	discoveryredis "github.com/chatd/chatd/server/discovery/redis"
	"github.com/chatd/chatd/server/grpcerr"
	"github.com/chatd/chatd/server/hub"
	"github.com/chatd/chatd/server/presence"
	"github.com/chatd/chatd/server/presence/presencesvc"
	"github.com/chatd/chatd/server/push"
	"github.com/chatd/chatd/server/ratelimit"
	"github.com/chatd/chatd/server/router"
	"github.com/chatd/chatd/server/sequence"
	"github.com/chatd/chatd/server/store"
	"github.com/chatd/chatd/server/store/pebble"
	"github.com/chatd/chatd/server/store/scylla"
	"github.com/chatd/chatd/server/tracing"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	goredis "github.com/redis/go-redis/v9"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
)

// Message size limits. A Chat frame carries at most 65536 bytes of text;
// the receive limit leaves room for the envelope so that an oversized text
// reaches validation (and gets InvalidArgument naming the limit) instead of
// killing the stream.
const (
	maxRecvMsgBytes = 256 << 10
	maxSendMsgBytes = 16 << 20
)

// Static HTTP/2 receive windows of the gRPC server (grpc.InitialWindowSize,
// grpc.InitialConnWindowSize). Set, they turn off grpc-go's BDP estimator,
// which otherwise answers the first DATA frame after each round trip with
// a WINDOW_UPDATE and a PING that the client acks: on a chat stream, whose
// frames are small and spaced out, that is nearly every frame a device
// sends, a write and a read of the server's each (docs/performance.md,
// issue 16). A stream's window holds one largest frame (maxRecvMsgBytes);
// what a client may have unread at the server is bounded by them.
const (
	streamRecvWindow = maxRecvMsgBytes
	connRecvWindow   = 4 * maxRecvMsgBytes
)

// publicMethods need no bearer token.
var publicMethods = []string{
	chatv1.AccountService_SignUp_FullMethodName,
	chatv1.AccountService_LogIn_FullMethodName,
	chatv1.DiscoveryService_GetEndpoints_FullMethodName,
}

// App is one running chat server.
type App struct {
	cfg Config
	log *slog.Logger

	tracing *tracing.Provider // off unless cfg.Tracing says where to export

	store    store.Store
	seq      *sequence.Sequencer
	router   router.Router
	hub      *hub.Hub
	presence *presence.Tracker
	auth     *auth.Authenticator
	authRef  atomic.Pointer[auth.Authenticator] // auth, for the hub's router goroutine
	chat     *chat.Service
	chatRef  atomic.Pointer[chat.Service] // chat, for the push dispatcher's worker
	push     *push.Dispatcher             // nil when push is off
	// pushAccount is what the AccountService knows of push (providers on,
	// allow-list, VAPID public key).
	pushAccount account.PushConfig
	health      *health.Server
	registry    *prometheus.Registry

	closers        []func() error              // cluster clients, closed after the router
	redis          goredis.UniversalClient     // cluster mode only
	registryCloser func() error                // cluster: leaves the Discovery list
	registryBeat   func(context.Context) error // cluster: publishes the record now
	draining       atomic.Bool                 // DRAINING: no new streams, devices told to move
	admission      *admission.Controller
	discReg        discovery.Registry
	drainOnce      sync.Once
	drained        chan struct{} // closed when a drain is over
	hurry          chan struct{} // closed by Hurry: stop waiting for the drain
	hurryOnce      sync.Once
	drainStreams   int          // streams open when the drain began
	adminLis       net.Listener // nil unless Config.AdminAddr
	adminServer    *grpc.Server

	grpcLis, httpLis net.Listener
	// grpcConns and httpConns are the same listeners: their open
	// connections, to end a stream stuck on a client that does not read
	// (chat.Config.CloseConn).
	grpcConns, httpConns *connTracker
	grpcServer           *grpc.Server
	httpServer           *http.Server
	pprofLis             net.Listener // nil unless Config.PprofAddr
	pprofServer          *http.Server
	gatewayConn          *grpc.ClientConn
	webStreams           webStreams // grpc-web WebSocket calls in progress (grpcweb.go)

	serveErr  chan error
	closeOnce sync.Once
	closeErr  error
}

// New builds a server in four steps (open the store, bind the listeners,
// build the engines, build the services and their servers) and binds both
// listeners (so GRPCAddr and HTTPAddr are known), but serves nothing until
// Start. Each step only uses what the steps before it built.
func New(cfg Config) (*App, error) {
	cfg = cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	a := &App{cfg: cfg, log: cfg.Logger, serveErr: make(chan error, 2), drained: make(chan struct{}), hurry: make(chan struct{})}
	a.registry = prometheus.NewRegistry()
	a.registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for _, step := range []func() error{
		a.openStore,     // the store in DataDir, or the cluster store
		a.listen,        // gRPC, HTTP and pprof listeners; the server id
		a.buildEngines,  // hub, router, sequencer, presence tracker
		a.buildServices, // auth and the gRPC services on the gRPC server
		a.newHTTPServer, // REST gateway, OpenAPI, health, metrics
	} {
		if err := step(); err != nil {
			a.closeResources()
			return nil, err
		}
	}
	return a, nil
}

// openStore creates the data directory and opens the configured store.
func (a *App) openStore() error {
	if err := os.MkdirAll(a.cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	t0 := time.Now()
	st, err := openStore(a.cfg)
	if err != nil {
		return err
	}
	a.store = st
	// The embedded store replays its write-ahead log in Open: this is how
	// long recovery took.
	a.log.Info("store opened", "store", a.cfg.Store, "took_ms", time.Since(t0).Milliseconds())
	return nil
}

// listen binds the listeners; the server id defaults to the host name and
// the bound gRPC port.
func (a *App) listen() error {
	var err error
	l, err := net.Listen("tcp", a.cfg.GRPCAddr)
	if err != nil {
		return fmt.Errorf("listen gRPC %s: %w", a.cfg.GRPCAddr, err)
	}
	a.grpcConns = trackConns(l)
	a.grpcLis = a.grpcConns
	if l, err = net.Listen("tcp", a.cfg.HTTPAddr); err != nil {
		return fmt.Errorf("listen HTTP %s: %w", a.cfg.HTTPAddr, err)
	}
	a.httpConns = trackConns(l)
	a.httpLis = a.httpConns
	if err := a.listenPprof(); err != nil {
		return err
	}
	if err := a.listenAdmin(); err != nil {
		return err
	}
	if a.cfg.ServerID == "" {
		host, _ := os.Hostname()
		_, port, _ := net.SplitHostPort(a.grpcLis.Addr().String())
		a.cfg.ServerID = host + ":" + port
	}
	return nil
}

// buildEngines builds the message path below the services, each piece
// after what it needs: the hub; the router, whose Handler is the hub's
// Deliver, registered with the hub (SetRouter); the sequencer, publishing
// through the router with deliver's publisher; the presence tracker.
// newEngines (cluster.go) picks the in-process engines or, for the scylla
// store, the cluster engines on Redis.
func (a *App) buildEngines() error {
	cfg := a.cfg
	a.hub = hub.New(hub.Config{
		MaxStreamsPerDevice: cfg.MaxStreamsPerDevice,
		Logger:              cfg.Logger,
		// A revocation routed from another server: the authenticator (built
		// later, in buildServices) refuses the device's tokens here at once.
		OnRevoke: func(userID, deviceID string) {
			if au := a.authRef.Load(); au != nil {
				au.Revoke(userID, deviceID)
			}
		},
	})
	eng, err := a.newEngines(context.Background(), a.hub.Deliver)
	if err != nil {
		return err
	}
	a.router, a.closers, a.redis = eng.router, eng.closers, eng.redis
	a.hub.SetRouter(a.router)
	tcfg := cfg.Tracing
	tcfg.ServerID = cfg.ServerID
	tcfg.Logger = a.log
	if a.tracing, err = tracing.New(tcfg); err != nil {
		return fmt.Errorf("tracing: %w", err)
	}
	tracer := a.tracing.Tracer(tracerName) // nil when off
	publish, err := a.buildPush(deliver.NewTracedPublisher(a.router, cfg.Logger, tracer))
	if err != nil {
		return err
	}
	a.seq = sequence.New(a.store, publish, sequence.Options{Allocator: eng.allocator, Logger: cfg.Logger, Tracer: tracer, CommitLinger: cfg.CommitLinger})
	a.presence, err = presence.NewTracker(presence.TrackerConfig{
		Engine:            eng.presence,
		Hidden:            presence.StoreHidden(a.store),
		HeartbeatInterval: cfg.HeartbeatInterval,
		Grace:             cfg.PresenceGrace,
		Logger:            cfg.Logger,
	})
	if err != nil {
		return fmt.Errorf("presence: %w", err)
	}
	return nil
}

// presenceHookTimeout bounds the presence update that follows a log-out or
// a hide_presence change.
const presenceHookTimeout = 5 * time.Second

// buildServices builds the authenticator and the gRPC services on the
// engines, and registers them (with health and reflection) on the gRPC
// server.
func (a *App) buildServices() error {
	cfg := a.cfg
	keyFile := cfg.TokenKeyFile
	if keyFile == "" {
		keyFile = filepath.Join(cfg.DataDir, "token.key")
	}
	key, err := auth.LoadOrCreateKey(keyFile)
	if err != nil {
		return fmt.Errorf("token key: %w", err)
	}
	a.auth, err = auth.New(auth.Config{Key: key, TokenTTL: cfg.TokenTTL, Devices: a.store, Public: publicMethods})
	if err != nil {
		return fmt.Errorf("auth: %w", err)
	}
	a.authRef.Store(a.auth)

	a.chat = chat.New(chat.Config{
		Store:      a.store,
		Sequencer:  a.seq,
		Hub:        a.hub,
		Router:     a.router,
		Sessions:   a.auth,
		ServerID:   cfg.ServerID,
		Presence:   a.presence,
		EditWindow: cfg.EditWindow,
		WriteStall: cfg.WriteStall,
		CloseConn: func(ctx context.Context) bool {
			return closeStreamConn(ctx, a.grpcConns, a.httpConns)
		},
		SendQueue:  cfg.SendQueue,
		FrameRate:  cfg.FrameRate,
		FrameBurst: cfg.FrameBurst,
		Registerer: a.registry,
		Tracer:     a.tracing.Tracer(tracerName),
		Logger:     cfg.Logger,
	})
	a.chatRef.Store(a.chat)
	accountSvc := account.New(account.Config{
		Store: a.store,
		Auth:  a.auth,
		Push:  a.pushAccount,
		OnLogout: func(userID, deviceID string) {
			// This server's streams of the device end now; the other
			// servers holding the user learn it from a revocation event on
			// the user's routes (within a routing hop, well under a second).
			a.hub.KillDevice(userID, deviceID, hub.ErrRevoked)
			ctx, cancel := context.WithTimeout(context.Background(), presenceHookTimeout)
			defer cancel()
			if err := a.router.Route(ctx, []router.Event{{UserID: userID, RevokeDeviceID: deviceID}}); err != nil {
				a.log.Warn("routing a device revocation failed: its streams on other servers end at their next frame, once the revocation cache expires",
					"user_id", userID, "device_id", deviceID, "err", err)
			}
			_ = a.presence.Logout(ctx, userID, deviceID)
		},
		OnPresenceHidden: func(userID string, hidden bool) {
			ctx, cancel := context.WithTimeout(context.Background(), presenceHookTimeout)
			defer cancel()
			_ = a.presence.SetHidden(ctx, userID, hidden)
		},
	})
	presenceSvc, err := presencesvc.New(presencesvc.Config{Engine: a.presence.Engine(), Store: a.store, Sessions: a.auth, Logger: cfg.Logger})
	if err != nil {
		return fmt.Errorf("presence service: %w", err)
	}
	disc, err := a.newDiscovery()
	if err != nil {
		return err
	}

	a.grpcServer = a.newGRPCServer()
	chatv1.RegisterChatServiceServer(a.grpcServer, a.chat)
	chatv1.RegisterAccountServiceServer(a.grpcServer, accountSvc)
	chatv1.RegisterDiscoveryServiceServer(a.grpcServer, disc)
	chatv1.RegisterPresenceServiceServer(a.grpcServer, presenceSvc)
	a.health = health.NewServer()
	healthpb.RegisterHealthServer(a.grpcServer, a.health)
	reflection.Register(a.grpcServer)
	return nil
}

// newDiscovery returns the Discovery service: this server alone, or (in
// cluster mode) the servers heartbeating in Redis, this one included.
func (a *App) newDiscovery() (*discovery.Service, error) {
	cfg := a.cfg
	var reg discovery.Registry = discovery.Local{Self: a.selfRecord}
	if a.redis != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		dr, err := discoveryredis.New(ctx, discoveryredis.Config{Client: a.redis, Prefix: cfg.RedisPrefix, Self: a.selfRecord, Logger: cfg.Logger})
		cancel()
		if err != nil {
			return nil, fmt.Errorf("discovery: %w", err)
		}
		a.registryCloser, a.registryBeat, reg = dr.Close, dr.Beat, dr
		// Discovery hands this record to clients of every server: an
		// address to listen on (":9090") names the client's own machine.
		// Only this server's answers can repair it (from the host the
		// client reached it by); the others' cannot.
		self := a.selfRecord()
		if discovery.Unspecified(self.GetGrpcAddress()) || discovery.Unspecified(self.GetHttpAddress()) {
			a.log.Warn("cluster: this server's Discovery record names an address to listen on, not one to dial (no host, 0.0.0.0 or ::): other servers' Discovery answers will hand it to clients, who cannot reach it; set --advertise-grpc and --advertise-http to addresses clients can dial",
				"grpc_address", self.GetGrpcAddress(), "http_address", self.GetHttpAddress())
		}
	}
	a.discReg = reg
	return discovery.New(discovery.Config{Registry: reg, Zone: cfg.Zone, ServerID: cfg.ServerID, Logger: cfg.Logger}), nil
}

// selfRecord is this server's Discovery record as of now.
func (a *App) selfRecord() *chatv1.Endpoint {
	st := chatv1.ServerState_SERVER_STATE_SERVING
	if a.draining.Load() {
		st = chatv1.ServerState_SERVER_STATE_DRAINING
	}
	return &chatv1.Endpoint{
		ServerId:    a.cfg.ServerID,
		GrpcAddress: firstNonEmpty(a.cfg.AdvertiseGRPC, a.grpcLis.Addr().String()),
		HttpAddress: firstNonEmpty(a.cfg.AdvertiseHTTP, a.httpLis.Addr().String()),
		Load:        uint64(a.hub.Count()),
		Zone:        a.cfg.Zone,
		Capacity:    uint64(a.cfg.MaxStreams),
		State:       st,
		Version:     a.cfg.Version,
	}
}

// admit refuses a new Chat stream that admission does not admit (see
// server/admission): ResourceExhausted with a RetryInfo detail (rate,
// capacity), or Unavailable (draining). Other streams pass.
func (a *App) admit(fullMethod string) error {
	if fullMethod != chatv1.ChatService_Chat_FullMethodName {
		return nil
	}
	d, err := a.admission.Admit(time.Now())
	if err != nil {
		var se *store.Error
		if errors.As(err, &se) {
			return se.WithRetryAfter(d) // grpcerr.Status adds the RetryInfo
		}
		return err
	}
	return nil
}

// streamInterceptor runs the stream interceptors' checks in one function,
// in the order a chain would: domain errors → statuses (grpcerr), panic
// recovery (onPanic), authentication, the per-user rate limit of stream
// opens (lim), admission of Chat streams (admit). One frame instead of a
// chain of five matters for memory: a Chat stream's handler goroutine
// waits under these frames for the stream's whole life, and with a chain
// its stack needs more than 4 KB when it waits, so the runtime cannot
// shrink it below 16 KB once a busy moment grew it (a stack shrinks only
// while a quarter of it is enough); see docs/performance.md, "Idle
// connections".
func (a *App) streamInterceptor(onPanic func(context.Context, any) error, lim *ratelimit.Limiter) grpc.StreamServerInterceptor {
	a.admission = admission.New(admission.Config{
		Rate: a.cfg.StreamRate, Burst: a.cfg.StreamBurst,
		Capacity: a.cfg.MaxStreams, Streams: a.hub.Count,
	})
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
		ctx := ss.Context()
		defer func() {
			if p := recover(); p != nil {
				err = onPanic(ctx, p)
			}
			err = grpcerr.Status(err)
		}()
		if ss, err = a.auth.Stream(ss, info.FullMethod); err != nil {
			return err
		}
		if err = lim.CheckStream(ss.Context(), info.FullMethod, nil); err != nil { // stream opens, not frames
			return err
		}
		if err = a.admit(info.FullMethod); err != nil { // new Chat streams: rate, capacity, draining
			return err
		}
		return handler(srv, ss)
	}
}

func (a *App) newGRPCServer() *grpc.Server {
	lim := ratelimit.New(a.cfg.UnaryRate, a.cfg.UnaryBurst)
	onPanic := func(ctx context.Context, p any) error {
		a.log.ErrorContext(ctx, "panic in handler", "panic", p, "stack", string(debug.Stack()))
		return status.Error(codes.Internal, "internal error")
	}
	rec := recovery.WithRecoveryHandlerContext(onPanic)
	return grpc.NewServer(
		grpc.ForceServerCodecV2(chat.Codec()),
		grpc.MaxConcurrentStreams(a.cfg.MaxConcurrentStreams),
		grpc.MaxRecvMsgSize(maxRecvMsgBytes),
		grpc.MaxSendMsgSize(maxSendMsgBytes),
		grpc.InitialWindowSize(streamRecvWindow),
		grpc.InitialConnWindowSize(connRecvWindow),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 20 * time.Second, PermitWithoutStream: true}),
		// Server pings detect half-open connections (a device that vanished
		// without a FIN) within Time+Timeout.
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 60 * time.Second, Timeout: 20 * time.Second}),
		grpc.ConnectionTimeout(10*time.Second),
		grpc.ChainUnaryInterceptor(
			grpcerr.UnaryServerInterceptor(), // domain errors → statuses, for every interceptor below too
			recovery.UnaryServerInterceptor(rec),
			deadlineInterceptor(a.cfg.UnaryTimeout),
			a.auth.UnaryInterceptor(),
			ratelimit.UnaryInterceptor(lim, nil), // per user, or per client IP before log-in
		),
		grpc.StreamInterceptor(a.streamInterceptor(onPanic, lim)),
		a.traceHandler(),
	)
}

// logConfig logs the configuration the server runs with, once, at start:
// stable keys, no secrets (the token key file's path, never the key).
func (a *App) logConfig() {
	c := a.cfg
	tracingTo := "off"
	if c.Tracing.Endpoint != "" {
		tracingTo = c.Tracing.Endpoint
	} else if c.Tracing.Exporter != nil {
		tracingTo = "exporter"
	}
	a.log.Info("config",
		"store", c.Store, "server_id", c.ServerID, "data_dir", c.DataDir,
		"grpc_addr", a.GRPCAddr(), "http_addr", a.HTTPAddr(), "pprof_addr", a.PprofAddr(),
		"scylla_hosts", strings.Join(c.Scylla.Hosts, ","), "scylla_keyspace", c.Scylla.Keyspace,
		"redis_addrs", strings.Join(c.RedisAddrs, ","), "redis_prefix", c.RedisPrefix,
		"token_key_file", c.TokenKeyFile, "token_ttl", c.TokenTTL.String(),
		"heartbeat_interval", c.HeartbeatInterval.String(), "presence_grace", c.PresenceGrace.String(),
		"edit_window", c.EditWindow.String(), "write_stall", c.WriteStall.String(), "max_streams_per_device", c.MaxStreamsPerDevice,
		"send_queue", c.SendQueue, "frame_rate", c.FrameRate, "frame_burst", c.FrameBurst,
		"unary_rate", c.UnaryRate, "unary_burst", c.UnaryBurst, "unary_timeout", c.UnaryTimeout.String(),
		"max_concurrent_streams", c.MaxConcurrentStreams, "shutdown_timeout", c.ShutdownTimeout.String(),
		"zone", c.Zone, "max_streams", c.MaxStreams, "stream_rate", c.StreamRate, "stream_burst", c.StreamBurst,
		"drain_window", c.DrainWindow.String(), "admin_addr", c.AdminAddr, "commit_linger", c.CommitLinger.String(),
		"allowed_origins", strings.Join(c.AllowedOrigins, ","),
		"push", !c.Push.Off, "push_webpush_hosts", strings.Join(c.Push.WebPushHosts, ","),
		"push_collapse_window", c.Push.Window.String(), "push_ttl", c.Push.TTL.String(), "push_concurrency", c.Push.Concurrency,
		"tracing", tracingTo)
}

// tracerName names chatd's tracer (the instrumentation scope of its own
// spans).
const tracerName = "github.com/chatd/chatd"

// traceHandler is the gRPC server's OpenTelemetry stats handler (a span
// per RPC, the parent of chatd's own spans; traceparent read from the
// metadata) when tracing is on; an empty option otherwise.
func (a *App) traceHandler() grpc.ServerOption {
	if !a.tracing.Enabled() {
		return grpc.EmptyServerOption{}
	}
	return grpc.StatsHandler(otelgrpc.NewServerHandler(
		otelgrpc.WithTracerProvider(a.tracing.TracerProvider()),
		otelgrpc.WithPropagators(tracing.Propagator())))
}

func (a *App) newHTTPServer() error {
	dialOpts := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxSendMsgBytes)),
	}
	if a.tracing.Enabled() { // the REST call's trace continues in the gRPC call
		dialOpts = append(dialOpts, grpc.WithStatsHandler(otelgrpc.NewClientHandler(
			otelgrpc.WithTracerProvider(a.tracing.TracerProvider()),
			otelgrpc.WithPropagators(tracing.Propagator()))))
	}
	conn, err := grpc.NewClient(dialTarget(a.grpcLis.Addr()), dialOpts...)
	if err != nil {
		return fmt.Errorf("gateway dial: %w", err)
	}
	a.gatewayConn = conn
	routes, err := parseRESTRoutes(chatd.OpenAPI)
	if err != nil {
		return err
	}
	gw := runtime.NewServeMux(
		runtime.WithMarshalerOption(runtime.MIMEWildcard, &runtime.JSONPb{
			MarshalOptions:   protojson.MarshalOptions{EmitUnpopulated: false},
			UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: true},
		}),
		// 405 with Allow, not 501, for a method a path does not accept.
		runtime.WithRoutingErrorHandler(routes.routingErrors),
		// A form-encoded POST is not a GET in disguise: it gets the 405
		// of any other method (the fallback is for clients that cannot
		// send long GET URLs; ours send JSON).
		runtime.WithDisablePathLengthFallback(),
		// RFC 6750 challenges on 401; no Grpc-Metadata-Content-Type.
		runtime.WithErrorHandler(restErrors),
		runtime.WithOutgoingHeaderMatcher(restHeaders),
		// The Host a REST client reached this server by, for Discovery's
		// answer (discovery.HTTPHostKey): the gateway's own :authority is
		// the loopback it dials.
		runtime.WithMetadata(func(_ context.Context, r *http.Request) metadata.MD {
			return metadata.Pairs(discovery.HTTPHostKey, r.Host)
		}),
	)
	ctx := context.Background()
	for _, reg := range []func(context.Context, *runtime.ServeMux, *grpc.ClientConn) error{
		chatv1.RegisterAccountServiceHandler,
		chatv1.RegisterChatServiceHandler,
		chatv1.RegisterDiscoveryServiceHandler,
		chatv1.RegisterPresenceServiceHandler,
	} {
		if err := reg(ctx, gw, conn); err != nil {
			return fmt.Errorf("gateway: %w", err)
		}
	}
	mux := http.NewServeMux()
	var rest http.Handler = validUTF8(&restEdge{routes: routes, mux: gw, next: gw, maxBytes: maxRecvMsgBytes})
	if a.tracing.Enabled() { // a span per REST request (traceparent read)
		rest = otelhttp.NewHandler(rest, "rest",
			otelhttp.WithTracerProvider(a.tracing.TracerProvider()),
			otelhttp.WithPropagators(tracing.Propagator()))
	}
	mux.Handle("/v1/", rest)
	mux.HandleFunc("GET /openapi.json", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(chatd.OpenAPI)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		resp, err := a.health.Check(r.Context(), &healthpb.HealthCheckRequest{})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			http.Error(w, "not serving", http.StatusServiceUnavailable)
			return
		}
		if a.redis != nil { // cluster mode: sends need Redis (ids, routing)
			ctx, cancel := context.WithTimeout(r.Context(), time.Second)
			defer cancel()
			if err := a.redis.Ping(ctx).Err(); err != nil {
				http.Error(w, "redis unavailable", http.StatusServiceUnavailable)
				return
			}
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.registry, promhttp.HandlerOpts{Registry: a.registry}))
	a.mountWebApp(mux) // the web app at / (webapp.go)
	a.httpServer = &http.Server{
		Handler:           a.grpcWebHandler(mux), // grpc-web for browsers, the rest to mux (grpcweb.go)
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
	}
	return nil
}

// Start serves both listeners in the background and marks the server
// SERVING. Errors from serving arrive on Wait.
func (a *App) Start() {
	go func() { a.serveErr <- a.grpcServer.Serve(a.grpcLis) }()
	go func() {
		err := a.httpServer.Serve(a.httpLis)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		a.serveErr <- err
	}()
	if a.pprofServer != nil {
		go func() { _ = a.pprofServer.Serve(a.pprofLis) }() // a profile listener failing does not stop the server
	}
	if a.adminServer != nil {
		go func() { _ = a.adminServer.Serve(a.adminLis) }()
	}
	if a.push != nil {
		a.push.Start()
	}
	a.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	a.logConfig()
	a.log.Info("chatd serving", "grpc", a.GRPCAddr(), "http", a.HTTPAddr(), "pprof", a.PprofAddr(), "server_id", a.cfg.ServerID, "data_dir", a.cfg.DataDir)
}

// Run starts the server and blocks until ctx is done or a drain is asked
// for (AdminService.DrainServer): it then drains (Drain: its devices move
// to other servers over the drain window), shuts down gracefully and
// returns nil. It also returns when a listener fails.
func (a *App) Run(ctx context.Context) error {
	a.Start()
	select {
	case <-ctx.Done():
		a.Drain()
		select {
		case <-a.Drained():
		case <-a.hurry:
			a.log.Info("drain cut short (second signal): closing the streams left now", "streams_left", a.hub.Count())
		}
		return a.Close()
	case <-a.drained:
		return a.Close()
	case err := <-a.serveErr:
		cerr := a.Close()
		if err != nil {
			return fmt.Errorf("serve: %w", err)
		}
		return cerr
	}
}

// GRPCAddr is the bound gRPC address (host:port).
func (a *App) GRPCAddr() string { return a.grpcLis.Addr().String() }

// HTTPAddr is the bound HTTP address (host:port).
func (a *App) HTTPAddr() string { return a.httpLis.Addr().String() }

// ServerID names this server.
func (a *App) ServerID() string { return a.cfg.ServerID }

// Store returns the server's store (for tests and tools).
func (a *App) Store() store.Store { return a.store }

// Close shuts down gracefully: health goes NOT_SERVING, every Chat stream is
// ended with Unavailable ("server shutting down, reconnect") so clients move
// elsewhere, in-flight unary calls finish (bounded by ShutdownTimeout), the
// sequencer flushes its last group commit, and the store closes. Safe to
// call more than once.
func (a *App) Close() error {
	a.closeOnce.Do(func() {
		if a.registryCloser != nil {
			_ = a.registryCloser() // clients stop being sent here first
		}
		a.health.Shutdown()
		streams := a.hub.Count()
		a.hub.Shutdown(store.Errorf(store.CodeUnavailable, "server shutting down, reconnect").WithReason(store.ReasonServerShutdown))
		a.webStreams.wait(webStreamDrain) // their Unavailable reaches browsers before GracefulStop
		a.log.Info("shutdown: streams closed", "streams", streams)
		stopped := make(chan struct{})
		go func() { a.grpcServer.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(a.cfg.ShutdownTimeout):
			a.log.Warn("graceful stop timed out; closing connections")
			a.grpcServer.Stop()
		}
		ctx, cancel := context.WithTimeout(context.Background(), a.cfg.ShutdownTimeout)
		defer cancel()
		_ = a.httpServer.Shutdown(ctx)
		if a.pprofServer != nil {
			_ = a.pprofServer.Close()
		}
		if a.adminServer != nil {
			a.adminServer.Stop()
		}
		a.closeErr = a.closeResources()
		// Flush buffered spans, for at most tracingFlushTimeout: a collector
		// that is down must not hold the exit for the whole shutdown timeout.
		tctx, tcancel := context.WithTimeout(ctx, tracingFlushTimeout)
		if err := a.tracing.Shutdown(tctx); err != nil {
			a.log.Warn("tracing: flushing spans failed", "err", err)
		}
		tcancel()
		a.log.Info("chatd stopped")
	})
	return a.closeErr
}

// tracingFlushTimeout bounds the flush of buffered spans at shutdown.
const tracingFlushTimeout = 2 * time.Second

func (a *App) closeResources() error {
	var errs []error
	if a.registryCloser != nil {
		errs = append(errs, a.registryCloser())
	}
	if a.gatewayConn != nil {
		errs = append(errs, a.gatewayConn.Close())
	}
	if a.seq != nil {
		queued := a.seq.Stats().Queued
		a.seq.Close() // commits what is queued
		st := a.seq.Stats()
		a.log.Info("shutdown: sequencer flushed", "queued", queued, "messages_committed", st.Messages, "failed", st.Failed)
	}
	if a.push != nil {
		a.push.Close() // after the sequencer: its last commits are queued
	}
	if a.presence != nil {
		errs = append(errs, a.presence.Close())
	}
	if a.router != nil {
		errs = append(errs, a.router.Close())
	}
	for _, c := range a.closers {
		errs = append(errs, c())
	}
	if a.store != nil {
		errs = append(errs, a.store.Close())
	}
	for _, l := range []net.Listener{a.grpcLis, a.httpLis, a.pprofLis, a.adminLis} {
		if l != nil {
			_ = l.Close()
		}
	}
	return errors.Join(errs...)
}

// validUTF8 answers 400 (gRPC InvalidArgument) to a request whose decoded
// path or query is not valid UTF-8: proto3 strings must be UTF-8, and the
// gateway would otherwise fail while encoding the gRPC request (500).
func validUTF8(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ok := utf8.ValidString(r.URL.Path)
		if ok && r.URL.RawQuery != "" {
			q, err := url.ParseQuery(r.URL.RawQuery)
			ok = err == nil
			for k, vs := range q {
				ok = ok && utf8.ValidString(k)
				for _, v := range vs {
					ok = ok && utf8.ValidString(v)
				}
			}
		}
		if !ok {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write([]byte(`{"code":3,"message":"path or query is not valid UTF-8 (or not a valid query string)","details":[]}` + "\n"))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// openStore opens the configured store.
func openStore(cfg Config) (store.Store, error) {
	switch cfg.Store {
	case StoreScylla:
		sc := cfg.Scylla
		if sc.Logger == nil {
			sc.Logger = cfg.Logger
		}
		if sc.AfterWriteStep == nil {
			sc.AfterWriteStep = faultHook() // nil unless built with -tags chatd_faults
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		st, err := scylla.Open(ctx, sc)
		if err != nil {
			return nil, fmt.Errorf("open scylla store (run 'chatd migrate' first?): %w", err)
		}
		return st, nil
	default:
		st, err := pebble.Open(filepath.Join(cfg.DataDir, "store"), pebble.WithLogger(cfg.Logger))
		if err != nil {
			return nil, fmt.Errorf("open store: %w", err)
		}
		return st, nil
	}
}

// Migrate creates or upgrades the cluster schema (keyspace and tables) with
// the given replication; idempotent. The embedded store needs none.
func Migrate(ctx context.Context, cfg Config, replicationClass string, replicationFactor int) error {
	cfg = cfg.Defaults()
	if cfg.Store != StoreScylla {
		return fmt.Errorf("store %q needs no migration", cfg.Store)
	}
	return scylla.Migrate(ctx, cfg.Scylla, replicationClass, replicationFactor)
}

// deadlineInterceptor gives every unary call a deadline of at most d.
func deadlineInterceptor(d time.Duration) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		ctx, cancel := context.WithTimeout(ctx, d)
		defer cancel()
		return handler(ctx, req)
	}
}

func dialTarget(addr net.Addr) string {
	s := addr.String()
	if strings.HasPrefix(s, "[::]:") {
		return "127.0.0.1:" + strings.TrimPrefix(s, "[::]:")
	}
	if strings.HasPrefix(s, "0.0.0.0:") {
		return "127.0.0.1:" + strings.TrimPrefix(s, "0.0.0.0:")
	}
	return s
}

func firstNonEmpty(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
