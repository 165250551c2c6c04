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
	"time"

	"github.com/chatd/chatd/server/app"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		switch args[0] {
		case "serve":
			args = args[1:]
		case "version":
			fmt.Fprintln(stdout, "chatd", version)
			return 0
		case "help":
			args = []string{"-h"}
		default:
			fmt.Fprintf(stderr, "chatd: unknown command %q (commands: serve, version, help)\n", args[0])
			return 2
		}
	}
	cfg, logLevel, logFormat, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "chatd:", err)
		return 2
	}
	cfg.Logger = newLogger(stderr, logLevel, logFormat)
	slog.SetDefault(cfg.Logger)

	a, err := app.New(cfg)
	if err != nil {
		cfg.Logger.Error("start failed", "err", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := a.Run(ctx); err != nil {
		cfg.Logger.Error("chatd stopped with error", "err", err)
		return 1
	}
	return 0
}

var version = "dev"

func parseFlags(args []string, stderr io.Writer) (app.Config, string, string, error) {
	var c app.Config
	fs := flag.NewFlagSet("chatd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.GRPCAddr, "grpc-addr", ":9090", "gRPC listen address (Chat stream, all services, reflection, health)")
	fs.StringVar(&c.HTTPAddr, "http-addr", ":8080", "HTTP listen address (REST gateway /v1/, /openapi.json, /healthz, /readyz, /metrics)")
	fs.StringVar(&c.DataDir, "data-dir", "./data", "directory of the embedded store and the token key")
	fs.StringVar(&c.ServerID, "server-id", "", "name of this server (default: hostname:grpc-port)")
	fs.StringVar(&c.AdvertiseGRPC, "advertise-grpc", "", "gRPC address handed to clients by Discovery (default: the bound address)")
	fs.StringVar(&c.AdvertiseHTTP, "advertise-http", "", "HTTP address handed to clients by Discovery (default: the bound address)")
	fs.StringVar(&c.TokenKeyFile, "token-key-file", "", "32-byte HMAC key for bearer tokens, created if missing; share it across a cluster (default: <data-dir>/token.key)")
	fs.DurationVar(&c.TokenTTL, "token-ttl", 30*24*time.Hour, "lifetime of a device's bearer token")
	fs.DurationVar(&c.HeartbeatInterval, "heartbeat-interval", 25*time.Second, "heartbeat interval clients are told to use")
	fs.IntVar(&c.SendQueue, "send-queue", 1024, "per-stream send queue in frames; a device that overflows it is disconnected (ResourceExhausted) and recovers by sync")
	fs.Float64Var(&c.FrameRate, "frame-rate", 200, "frames per second a device may send on its Chat stream")
	fs.IntVar(&c.FrameBurst, "frame-burst", 400, "burst of frames a device may send above frame-rate")
	fs.Float64Var(&c.UnaryRate, "unary-rate", 50, "unary calls per second per user (per client IP before log-in)")
	fs.IntVar(&c.UnaryBurst, "unary-burst", 100, "burst of unary calls above unary-rate")
	fs.DurationVar(&c.UnaryTimeout, "unary-timeout", 15*time.Second, "deadline of unary calls")
	maxStreams := fs.Uint("max-concurrent-streams", 64, "HTTP/2 streams per connection (rapid-reset mitigation)")
	fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", 10*time.Second, "bound on the graceful stop after SIGTERM")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	logFormat := fs.String("log-format", "text", "text or json")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: chatd [serve] [flags]\n       chatd version\n\n"+
			"Runs a chat server. With no flags: a complete single-node server on the\n"+
			"embedded store. Every flag may also be set by the environment variable\n"+
			"CHATD_<FLAG> (upper case, '-' as '_'), e.g. CHATD_GRPC_ADDR=:9090.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := applyEnv(fs, os.LookupEnv); err != nil {
		return c, "", "", err
	}
	if err := fs.Parse(args); err != nil {
		return c, "", "", err
	}
	if fs.NArg() > 0 {
		return c, "", "", fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	c.MaxConcurrentStreams = uint32(*maxStreams)
	return c, *logLevel, *logFormat, nil
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
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
