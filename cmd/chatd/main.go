// Command chatd is the chat server. With no flags it runs a complete
// single-node server on its embedded store: gRPC on :9090, HTTP (REST
// gateway, /openapi.json, /healthz, /metrics) on :8080, data in ./data.
//
// Every flag can also be set by an environment variable: CHATD_ followed by
// the flag name in upper case with '-' as '_' (e.g. CHATD_GRPC_ADDR). A flag
// on the command line wins over the environment.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/chatd/chatd/server/app"
	"github.com/chatd/chatd/server/store/scylla"
	"github.com/chatd/chatd/server/tracing"
	"github.com/gocql/gocql"
	"google.golang.org/grpc/grpclog"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	cmd := "serve"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "serve", "migrate":
	case "version":
		fmt.Fprintln(stdout, "chatd", version)
		return 0
	case "help":
		cmd, args = "serve", []string{"-h"}
	default:
		fmt.Fprintf(stderr, "chatd: unknown command %q (commands: serve, migrate, version, help)\n", cmd)
		return 2
	}
	o, err := parseFlags(cmd, args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "chatd:", err)
		return 2
	}
	cfg := o.cfg
	cfg.Version = version
	cfg.Logger = newLogger(stderr, o.logLevel, o.logFormat)
	slog.SetDefault(cfg.Logger)
	grpclog.SetLoggerV2(app.GRPCLogger(cfg.Logger)) // grpc-go's and grpc-web's lines in the same format

	// The first SIGINT or SIGTERM drains (--drain-window); a second one cuts
	// the drain short and stops at once (still flushing what was accepted).
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	second := make(chan struct{})
	go func() {
		<-sigs
		stop()
		<-sigs
		close(second)
	}()
	if cmd == "migrate" {
		if err := app.Migrate(ctx, cfg, o.replicationClass, o.replicationFactor); err != nil {
			cfg.Logger.Error("migrate failed", "err", err)
			return 1
		}
		cfg.Logger.Info("schema is up to date", "keyspace", cfg.Scylla.Keyspace)
		return 0
	}
	a, err := app.New(cfg)
	if err != nil {
		cfg.Logger.Error("start failed", "err", err)
		return 1
	}
	go func() {
		select {
		case <-second:
			a.Hurry()
		case <-a.Drained():
		}
	}()
	if err := a.Run(ctx); err != nil {
		cfg.Logger.Error("chatd stopped with error", "err", err)
		return 1
	}
	return 0
}

var version = "dev"

type options struct {
	cfg                 app.Config
	logLevel, logFormat string
	replicationClass    string
	replicationFactor   int
}

func parseFlags(cmd string, args []string, stderr io.Writer) (options, error) {
	var o options
	c := &o.cfg
	// Every default is the one app.Config (and the component it configures)
	// has for a zero field: d.
	d := app.Config{}.Defaults()
	fs := flag.NewFlagSet("chatd "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)

	// Storage and cluster flags: shared by serve and migrate.
	fs.StringVar(&c.Store, "store", d.Store, "pebble (embedded, single node, in --data-dir) or scylla (cluster mode: ScyllaDB/Cassandra + Redis)")
	scyllaHosts := fs.String("scylla-hosts", "127.0.0.1:9042", "comma-separated ScyllaDB/Cassandra contact points, host[:port] (store scylla)")
	fs.StringVar(&c.Scylla.Keyspace, "scylla-keyspace", scylla.DefaultKeyspace, "keyspace of every table (store scylla)")
	fs.StringVar(&c.Scylla.LocalDC, "scylla-local-dc", "", "prefer replicas in this datacenter (DC-aware, token-aware routing)")
	consistency := fs.String("scylla-consistency", scylla.DefaultConsistency.String(), "consistency level of reads and writes")
	fs.DurationVar(&c.Scylla.Timeout, "scylla-timeout", scylla.DefaultTimeout, "client-side timeout of one CQL request")
	redisAddrs := fs.String("redis", "", "comma-separated Redis addresses (one node, or Redis Cluster seeds); required by store scylla")
	fs.StringVar(&c.RedisPrefix, "redis-prefix", "", "prefix of every Redis key of this deployment, so that deployments sharing a Redis stay apart (default \"chatd:<scylla-keyspace>:\")")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	logFormat := fs.String("log-format", "text", "text or json")

	var maxStreams *uint
	allowedOrigins := new(string)
	var webPushHosts *string
	if cmd == "migrate" {
		fs.StringVar(&o.replicationClass, "replication-class", "SimpleStrategy", "keyspace replication: SimpleStrategy or NetworkTopologyStrategy (the factor then applies to every datacenter)")
		fs.IntVar(&o.replicationFactor, "replication-factor", 3, "replicas of every row (1 for a single-node development cluster)")
	} else {
		fs.StringVar(&c.GRPCAddr, "grpc-addr", d.GRPCAddr, "gRPC listen address (Chat stream, all services, reflection, health)")
		fs.StringVar(&c.HTTPAddr, "http-addr", d.HTTPAddr, "HTTP listen address (REST gateway /v1/, /openapi.json, /healthz, /readyz, /metrics, grpc-web, the web app at /)")
		fs.StringVar(&c.DataDir, "data-dir", d.DataDir, "directory of the embedded store and the token key")
		fs.StringVar(&c.ServerID, "server-id", "", "name of this server, unique in a cluster (default: hostname:grpc-port)")
		fs.StringVar(&c.AdvertiseGRPC, "advertise-grpc", "", "gRPC address handed to clients by Discovery (default: the bound address; on every interface, the host the client reached this server by; a cluster must set it)")
		fs.StringVar(&c.AdvertiseHTTP, "advertise-http", "", "HTTP address handed to clients by Discovery (default: the bound address; on every interface, the host the client reached this server by; a cluster must set it)")
		fs.StringVar(&c.TokenKeyFile, "token-key-file", "", "32-byte HMAC key for bearer tokens, created if missing; every server of a cluster needs the same key (default: <data-dir>/token.key)")
		fs.DurationVar(&c.TokenTTL, "token-ttl", d.TokenTTL, "lifetime of a device's bearer token")
		fs.DurationVar(&c.HeartbeatInterval, "heartbeat-interval", d.HeartbeatInterval, "heartbeat interval clients are told (in the stream's Welcome) to use")
		fs.DurationVar(&c.PresenceGrace, "presence-grace", d.PresenceGrace, "a device counts as online this long after its last heartbeat or frame; a stream silent that long is closed (must exceed --heartbeat-interval)")
		fs.DurationVar(&c.EditWindow, "edit-window", d.EditWindow, "how long after sending its author may edit a message")
		fs.DurationVar(&c.WriteStall, "write-stall", d.WriteStall, "how long a stream ended by the server (slow consumer, revocation, expiry, heartbeat timeout) may stay blocked writing to a client that does not read before its connection is closed (0: the default)")
		fs.IntVar(&c.MaxStreamsPerDevice, "max-streams-per-device", d.MaxStreamsPerDevice, "Chat streams one device may hold on this server; one more closes its oldest (ResourceExhausted)")
		fs.IntVar(&c.SendQueue, "send-queue", d.SendQueue, fmt.Sprintf("per-stream send queue in frames (at least %d);", app.MinSendQueue)+" a device that overflows it is disconnected (ResourceExhausted) and recovers by sync")
		fs.Float64Var(&c.FrameRate, "frame-rate", d.FrameRate, "frames per second a device may send on its Chat stream")
		fs.IntVar(&c.FrameBurst, "frame-burst", d.FrameBurst, "burst of frames a device may send above frame-rate")
		fs.Float64Var(&c.UnaryRate, "unary-rate", d.UnaryRate, "unary calls per second per user (per client IP before log-in)")
		fs.IntVar(&c.UnaryBurst, "unary-burst", d.UnaryBurst, "burst of unary calls above unary-rate")
		fs.DurationVar(&c.UnaryTimeout, "unary-timeout", d.UnaryTimeout, "deadline of unary calls")
		maxStreams = fs.Uint("max-concurrent-streams", uint(d.MaxConcurrentStreams), "HTTP/2 streams per connection (rapid-reset mitigation)")
		fs.StringVar(&c.Tracing.Endpoint, "otlp-endpoint", d.Tracing.Endpoint, "export OpenTelemetry traces by OTLP/gRPC (plaintext) to this collector, e.g. 127.0.0.1:4317; off by default")
		allowedOrigins = fs.String("allowed-origins", "", "comma-separated browser origins (scheme://host[:port]) besides chatd's own page that may call grpc-web and its WebSocket; '*' allows any (default: same origin only)")
		fs.StringVar(&c.PprofAddr, "pprof-addr", "", "serve Go profiles (/debug/pprof/) on this address, e.g. 127.0.0.1:6060; a listener of its own, off by default: never expose it publicly")
		fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", d.ShutdownTimeout, "bound on the graceful stop after the drain window")
		fs.StringVar(&c.Zone, "zone", d.Zone, "this server's zone (e.g. an availability zone): Discovery lists a client's own zone first")
		fs.IntVar(&c.MaxStreams, "max-streams", d.MaxStreams, "capacity in Chat streams: past it new streams get ResourceExhausted with a retry delay, and Discovery never ranks this server first (0: no bound)")
		fs.Float64Var(&c.StreamRate, "stream-rate", d.StreamRate, "admission: new Chat streams per second this server accepts (token bucket; 0: no bound); past it ResourceExhausted with a retry delay")
		fs.IntVar(&c.StreamBurst, "stream-burst", d.StreamBurst, "admission: burst of new Chat streams above --stream-rate (0: max(1, stream-rate))")
		fs.DurationVar(&c.DrainWindow, "drain-window", d.DrainWindow, "on SIGTERM or an admin drain, spread the devices' moves to other servers over this long, then close what is left")
		fs.DurationVar(&c.CommitLinger, "commit-linger", d.CommitLinger, "under load from several senders, a group commit waits this long for more sends before its fsync: fewer fsyncs per message for at most this much latency (0: the default; negative: off; at most 100ms)")
		fs.StringVar(&c.AdminAddr, "admin-addr", d.AdminAddr, "serve AdminService (DrainServer) on this gRPC address, e.g. 127.0.0.1:9190; off by default: never expose it publicly")
		// Push notifications (docs/push.md).
		fs.BoolVar(&c.Push.Off, "push-off", false, "turn push notifications off")
		fs.StringVar(&c.Push.VAPIDKeyFile, "vapid-key-file", "", "Web Push VAPID key pair (JSON), created if missing; every server of a cluster needs the same file (default: <data-dir>/vapid.json)")
		fs.StringVar(&c.Push.VAPIDSubject, "vapid-subject", d.Push.VAPIDSubject, "VAPID sub claim: a mailto: or https: URI where push services can reach the operator")
		webPushHosts = fs.String("push-webpush-hosts", strings.Join(d.Push.WebPushHosts, ","), "comma-separated allow-list of Web Push endpoint hosts (\"*.\" matches any subdomain); endpoints elsewhere are refused (SSRF)")
		fs.DurationVar(&c.Push.Window, "push-collapse-window", d.Push.Window, "pushes of one channel to one device within this window become one")
		fs.DurationVar(&c.Push.TTL, "push-ttl", d.Push.TTL, "a push not accepted by its provider within this time after the message is dropped")
		fs.IntVar(&c.Push.Concurrency, "push-concurrency", d.Push.Concurrency, "requests in flight per push provider")
		fs.StringVar(&c.Push.FCMCredentialsFile, "fcm-credentials-file", "", "Firebase service account key (JSON) for FCM; without it FCM is off")
		fs.StringVar(&c.Push.FCMProjectID, "fcm-project-id", "", "Firebase project id (default: the one in the credentials)")
		fs.StringVar(&c.Push.APNsKeyFile, "apns-key-file", "", "APNs token signing key (.p8); APNs is off without it, --apns-key-id and --apns-team-id")
		fs.StringVar(&c.Push.APNsKeyID, "apns-key-id", "", "key id of --apns-key-file (10 characters, from the Apple developer account)")
		fs.StringVar(&c.Push.APNsTeamID, "apns-team-id", "", "Apple developer team id (the iss of the provider token)")
	}
	fs.Usage = func() {
		if cmd == "migrate" {
			fmt.Fprintf(stderr, "Usage: chatd migrate --store scylla [flags]\n\n"+
				"Creates or upgrades the cluster schema (keyspace and tables) with\n"+
				"versioned migrations; safe to run again. Flags may also be set by\n"+
				"CHATD_<FLAG> environment variables.\n\nFlags:\n")
		} else {
			fmt.Fprintf(stderr, "Usage: chatd [serve] [flags]\n       chatd migrate --store scylla [flags]\n       chatd version\n\n"+
				"Runs a chat server. With no flags: a complete single-node server on the\n"+
				"embedded store. Cluster mode: --store scylla --scylla-hosts H1,H2\n"+
				"--scylla-keyspace chat --redis ADDR (run 'chatd migrate' with the same\n"+
				"store flags first). Every flag may also be set by the environment\n"+
				"variable CHATD_<FLAG> (upper case, '-' as '_'), e.g. CHATD_GRPC_ADDR=:9090.\n\nFlags:\n")
		}
		fs.PrintDefaults()
	}
	if err := applyEnv(fs, os.LookupEnv); err != nil {
		return o, err
	}
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if maxStreams != nil {
		c.MaxConcurrentStreams = uint32(*maxStreams)
	}
	if webPushHosts != nil {
		c.Push.WebPushHosts = splitList(*webPushHosts)
	}
	// Zero means "the default" in app.Config; on the command line it is a
	// mistake, not a request for the default.
	if cmd != "migrate" && c.MaxStreamsPerDevice < 1 {
		return o, fmt.Errorf("--max-streams-per-device must be at least 1, got %d", c.MaxStreamsPerDevice)
	}
	if cmd != "migrate" && c.SendQueue < app.MinSendQueue {
		return o, fmt.Errorf("--send-queue must be at least %d frames, got %d", app.MinSendQueue, c.SendQueue)
	}
	c.Scylla.Hosts = splitList(*scyllaHosts)
	c.RedisAddrs = splitList(*redisAddrs)
	c.AllowedOrigins = splitList(*allowedOrigins)
	cl, err := gocql.ParseConsistencyWrapper(*consistency)
	if err != nil {
		return o, fmt.Errorf("--scylla-consistency: %w", err)
	}
	c.Scylla.Consistency = cl
	if *logFormat != "text" && *logFormat != "json" {
		return o, fmt.Errorf("--log-format must be text or json, got %q", *logFormat)
	}
	o.logLevel, o.logFormat = *logLevel, *logFormat
	return o, nil
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// applyEnv sets each flag from CHATD_<NAME> when that variable is set.
func applyEnv(fs *flag.FlagSet, lookup func(string) (string, bool)) error {
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		name := "CHATD_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := lookup(name); ok {
			if err := f.Value.Set(v); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: %w", name, v, err))
			}
		}
	})
	return errors.Join(errs...)
}

func newLogger(w io.Writer, level, format string) *slog.Logger {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		lv = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: lv}
	// Records logged with a traced context carry trace_id and span_id.
	if format == "json" {
		return slog.New(tracing.LogHandler(slog.NewJSONHandler(w, opts)))
	}
	return slog.New(tracing.LogHandler(slog.NewTextHandler(w, opts)))
}
