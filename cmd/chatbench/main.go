// Command chatbench is chatd's load generator. It drives one running chatd
// (or a cluster: --servers A,B,C spreads devices across them) through the
// real gRPC Chat stream with many simulated users and devices from one
// process, and reports throughput, end-to-end delivery latency, errors by
// gRPC code and the server's own CPU and memory figures (from /metrics).
//
// Subcommands:
//
//	setup        create the users and device tokens a later run needs
//	connections  open N idle streams; server memory per connection
//	direct       1:1 messages between random pairs
//	pairs        the peer comparisons' shape: fixed sender -> receiver pairs, one in flight each
//	group        messages to groups of --group-size members
//	sync         devices come back after --backlog messages and sync them
//
// Run "chatbench <subcommand> -h" for the flags. Raise chatd's limits for a
// benchmark (one process simulates many users from one address):
//
//	chatd --unary-rate 100000 --unary-burst 100000 \
//	      --frame-rate 100000 --frame-burst 100000
//
// Users are named <--user-prefix>-<n> with a fixed password and are reused
// across runs; each simulated device logs in once (argon2id costs tens of
// milliseconds of server CPU) and its token is kept in --token-cache, so a
// repeated run starts at once.
//
// The table goes to stdout, a progress line to stderr once a second;
// --json and --plot write the report as JSON and a PNG. Ctrl-C stops the
// run and reports the figures so far.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

const usage = `Usage: chatbench <subcommand> [flags]

Subcommands:
  setup        create users and device tokens (cached in --token-cache)
  connections  open --conns idle streams; server memory per connection
  direct       1:1 messages between random pairs at --rate (0: as fast as acked)
  pairs        --pairs fixed sender -> receiver pairs, one send in flight each, at --rate
  group        messages to --groups groups of --group-size members
  sync         devices come back after --backlog messages and sync them

"chatbench <subcommand> -h" lists its flags.
`

// run executes one subcommand and returns the process exit code: 0 on a
// completed run, 1 on a failed one, 2 on bad usage. An interrupted run
// (ctx canceled) still prints its report and returns 0.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, usage)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	cmd, args := args[0], args[1:]
	var mode modeFunc
	switch cmd {
	case "setup":
		mode = runSetup
	case "connections":
		mode = runConnections
	case "direct":
		mode = runDirect
	case "pairs":
		mode = runPairs
	case "group":
		mode = runGroup
	case "sync":
		mode = runSync
	default:
		fmt.Fprintf(stderr, "chatbench: unknown subcommand %q\n\n%s", cmd, usage)
		return 2
	}
	cfg, err := parseFlags(cmd, args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "chatbench:", err)
		return 2
	}
	b := newBench(cfg, stderr)
	if b.tokens, err = loadTokenCache(cfg.tokenCache); err != nil {
		fmt.Fprintln(stderr, "chatbench:", err)
		return 1
	}
	if cfg.cpuProfile != "" {
		f, err := os.Create(cfg.cpuProfile)
		if err != nil {
			fmt.Fprintln(stderr, "chatbench:", err)
			return 1
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(stderr, "chatbench:", err)
			return 1
		}
		defer pprof.StopCPUProfile()
	}
	load0, press0 := machineLoad()
	rep, err := mode(ctx, b)
	if rep != nil {
		load1, press1 := machineLoad()
		rep.Machine = MachineLoad{CPUs: runtime.NumCPU(), LoadAvg1Start: load0, LoadAvg1End: load1, CPUPressureStart: press0, CPUPressureEnd: press1}
		rep.Command = cmd
		rep.Args = args
		rep.Interrupted = ctx.Err() != nil
		if werr := b.writeReport(rep, stdout); werr != nil {
			fmt.Fprintln(stderr, "chatbench:", werr)
			if err == nil {
				err = werr
			}
		}
	}
	if err != nil && ctx.Err() == nil {
		fmt.Fprintln(stderr, "chatbench:", err)
		return 1
	}
	return 0
}

type modeFunc func(context.Context, *bench) (*Report, error)

// config is every flag of every subcommand (each subcommand registers the
// ones it uses).
type config struct {
	cmd string

	// Common.
	servers        []string
	grpcWeb        []string // HTTP addresses: Chat streams over grpc-web WebSocket instead of gRPC
	metrics        []string
	serverPIDs     []int
	userPrefix     string
	password       string
	tokenCache     string
	setupConc      int
	connectConc    int
	localAddrs     []string
	connsPerAddr   int
	jsonOut        string
	cpuProfile     string
	plotOut        string
	quiet          bool
	connectTimeout time.Duration

	// Workload.
	users          int
	devices        int
	conns          int
	streamsPerDev  int
	streamsPerConn int
	hold           time.Duration
	samples        int
	duration       time.Duration
	rate           float64
	window         int
	workers        int
	size           int
	drain          time.Duration
	ackInterval    time.Duration
	ackAligned     bool
	ackReply       bool
	peers          int
	pairs          int
	extraPIDs      []namedPID
	groups         int
	groupSize      int
	backlog        int
	page           int
	heartbeatEvery time.Duration
}

func parseFlags(cmd string, args []string, stderr io.Writer) (*config, error) {
	c := &config{cmd: cmd}
	fs := flag.NewFlagSet("chatbench "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var servers, metrics, pids, extra, local, grpcWeb string
	fs.StringVar(&servers, "servers", "127.0.0.1:9090", "comma-separated chatd gRPC addresses; devices are spread across them round-robin")
	fs.StringVar(&grpcWeb, "grpcweb", "", "comma-separated chatd HTTP addresses (e.g. 127.0.0.1:8080): open the Chat streams over grpc-web's WebSocket transport there, as browsers do, instead of native gRPC (unary calls stay on --servers); device i uses the i-th address round-robin")
	fs.StringVar(&metrics, "metrics", "", "comma-separated chatd /metrics URLs (e.g. http://127.0.0.1:8080/metrics) for server CPU and memory; summed over a cluster")
	fs.StringVar(&pids, "server-pid", "", "comma-separated chatd process ids: also read their VmRSS from /proc")
	fs.StringVar(&extra, "extra-pid", "", "comma-separated name=pid of other processes of the deployment (e.g. redis=123,cassandra=456): report each one's CPU per message, from /proc/<pid>/stat")
	fs.StringVar(&c.userPrefix, "user-prefix", "cb", "user names are <prefix>-<n>; the same prefix reuses users and tokens across runs")
	fs.StringVar(&c.password, "password", "chatbench-password", "password of the simulated users")
	fs.StringVar(&c.tokenCache, "token-cache", "chatbench-tokens.json", "file caching device tokens across runs (\"\" to disable)")
	fs.IntVar(&c.setupConc, "setup-concurrency", 8, "concurrent sign-ups and log-ins during setup")
	fs.IntVar(&c.connectConc, "connect-concurrency", 100, "concurrent stream opens")
	fs.StringVar(&local, "local-addrs", "auto", "comma-separated source IPs for connections, round-robin (\"auto\": 127.0.0.2, 127.0.0.3, ... when more than --conns-per-addr connections go to loopback; \"\" the kernel's choice)")
	fs.IntVar(&c.connsPerAddr, "conns-per-addr", 25000, "connections per source IP when --local-addrs=auto (a source IP has ~28k ephemeral ports)")
	fs.StringVar(&c.jsonOut, "json", "", "write the report as JSON to this file")
	fs.StringVar(&c.cpuProfile, "cpuprofile", "", "write chatbench's own CPU profile (go tool pprof) to this file")
	fs.StringVar(&c.plotOut, "plot", "", "write a PNG plot (latency distribution, throughput over time) to this file")
	fs.BoolVar(&c.quiet, "quiet", false, "no progress line")
	fs.DurationVar(&c.connectTimeout, "connect-timeout", 30*time.Second, "bound on opening one stream (until its Welcome)")
	fs.DurationVar(&c.heartbeatEvery, "heartbeat", 0, "heartbeat interval (0: the server's, from Welcome)")

	switch cmd {
	case "setup":
		fs.IntVar(&c.users, "users", 100, "users to create")
		fs.IntVar(&c.devices, "devices", 1, "devices (log-ins) per user")
	case "connections":
		fs.IntVar(&c.conns, "conns", 1000, "Chat streams to open, each on its own TCP connection unless --streams-per-conn")
		fs.IntVar(&c.devices, "devices", 1, "devices per user")
		fs.IntVar(&c.streamsPerDev, "streams-per-device", 1, "streams per device token; >1 saves log-ins at large --conns")
		fs.IntVar(&c.streamsPerConn, "streams-per-conn", 1, "streams multiplexed on one TCP connection (HTTP/2); >1 measures more streams than the open-file limit allows connections (at most chatd's --max-concurrent-streams, 64)")
		fs.DurationVar(&c.hold, "hold", 20*time.Second, "how long to hold the streams open (heartbeating) before measuring")
		fs.IntVar(&c.samples, "samples", 5, "metric scrapes (1 s apart) whose median is taken before and after")
	case "direct", "group":
		if cmd == "direct" {
			fs.IntVar(&c.users, "users", 100, "users; every message goes from a random device to one of its user's --peers")
			fs.IntVar(&c.peers, "peers", 10, "each user n talks to users n+1..n+peers (mod users), as people talk to a few contacts; 0: to any user")
		} else {
			fs.IntVar(&c.groups, "groups", 10, "groups (disjoint member sets)")
			fs.IntVar(&c.groupSize, "group-size", 10, "members per group, the creator included (chatd allows 100)")
		}
		fs.IntVar(&c.devices, "devices", 1, "devices per user (all connected)")
		fs.DurationVar(&c.duration, "duration", 30*time.Second, "how long to send")
		fs.Float64Var(&c.rate, "rate", 1000, "messages per second in total (0: every sending device keeps --window sends in flight)")
		fs.IntVar(&c.window, "window", 4, "sends in flight per device with --rate 0")
		fs.IntVar(&c.workers, "workers", 64, "sending goroutines with --rate > 0")
		fs.IntVar(&c.size, "size", 100, "message text size in bytes")
		fs.DurationVar(&c.drain, "drain", 15*time.Second, "after sending, wait at most this long for outstanding acks and deliveries")
		fs.DurationVar(&c.ackInterval, "ack-interval", time.Second, "each device acks its highest received inbox_seq this often (0: never)")
		fs.BoolVar(&c.ackAligned, "ack-aligned", false, "every device acks at the same moment of --ack-interval (a burst), instead of each on its own phase as independent devices do")
		fs.BoolVar(&c.ackReply, "ack-reply", false, "acks ask for an AckResult (without it they set Ack.no_reply, as the SDK's periodic auto-ack does)")
	case "pairs":
		fs.IntVar(&c.pairs, "pairs", 500, "sender -> receiver pairs of distinct users (2 x pairs connections)")
		fs.DurationVar(&c.duration, "duration", 30*time.Second, "how long to send")
		fs.Float64Var(&c.rate, "rate", 1000, "messages per second in total (each sender has at most one in flight)")
		fs.IntVar(&c.workers, "workers", 4, "sending goroutines")
		fs.IntVar(&c.size, "size", 100, "message text size in bytes")
		fs.DurationVar(&c.drain, "drain", 15*time.Second, "after sending, wait at most this long for outstanding acks and deliveries")
		fs.DurationVar(&c.ackInterval, "ack-interval", time.Second, "each device acks its highest received inbox_seq this often (0: never)")
		fs.BoolVar(&c.ackAligned, "ack-aligned", false, "every device acks at the same moment of --ack-interval (a burst), instead of each on its own phase as independent devices do")
		fs.BoolVar(&c.ackReply, "ack-reply", false, "acks ask for an AckResult (without it they set Ack.no_reply, as the SDK's periodic auto-ack does)")
	case "sync":
		fs.IntVar(&c.users, "users", 10, "devices that come back and sync (one user each); as many sender users send them the backlog")
		fs.IntVar(&c.backlog, "backlog", 1000, "messages waiting for each syncing device")
		fs.IntVar(&c.page, "page", 1000, "sync page size (1..1000)")
		fs.IntVar(&c.window, "window", 64, "sends in flight per sender while filling the backlog")
		fs.IntVar(&c.size, "size", 100, "message text size in bytes")
		fs.DurationVar(&c.drain, "drain", 30*time.Second, "bound on waiting for the backlog's acks")
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	c.servers = splitList(servers)
	c.grpcWeb = splitList(grpcWeb)
	c.metrics = splitList(metrics)
	for _, p := range splitList(pids) {
		n, err := strconv.Atoi(p)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("--server-pid: bad pid %q", p)
		}
		c.serverPIDs = append(c.serverPIDs, n)
	}
	for _, p := range splitList(extra) {
		name, v, ok := strings.Cut(p, "=")
		n, err := strconv.Atoi(v)
		if !ok || name == "" || err != nil || n <= 0 {
			return nil, fmt.Errorf("--extra-pid: want name=pid, got %q", p)
		}
		c.extraPIDs = append(c.extraPIDs, namedPID{name, n})
	}
	if local == "auto" {
		c.localAddrs = []string{"auto"}
	} else {
		c.localAddrs = splitList(local)
	}
	return c, c.validate()
}

func (c *config) validate() error {
	var errs []error
	check := func(ok bool, format string, a ...any) {
		if !ok {
			errs = append(errs, fmt.Errorf(format, a...))
		}
	}
	check(len(c.servers) > 0, "--servers: at least one address")
	check(c.setupConc >= 1 && c.connectConc >= 1, "concurrency flags must be >= 1")
	check(c.connsPerAddr >= 1, "--conns-per-addr must be >= 1")
	check(c.ackInterval >= 0, "--ack-interval must be >= 0 (0: never ack)")
	check(c.devices >= 0 && c.devices <= 100, "--devices must be 1..100 (chatd keeps 100 devices per user)")
	switch c.cmd {
	case "setup":
		check(c.users >= 1 && c.devices >= 1, "--users and --devices must be >= 1")
	case "connections":
		check(c.conns >= 1, "--conns must be >= 1")
		check(c.devices >= 1 && c.streamsPerDev >= 1, "--devices and --streams-per-device must be >= 1")
		check(c.streamsPerConn >= 1 && c.streamsPerConn <= 64, "--streams-per-conn must be 1..64 (chatd's --max-concurrent-streams default)")
		check(c.samples >= 1, "--samples must be >= 1")
	case "direct":
		check(c.users >= 2, "--users must be >= 2")
		check(c.peers >= 0, "--peers must be >= 0")
	case "group":
		check(c.groups >= 1, "--groups must be >= 1")
		check(c.groupSize >= 2 && c.groupSize <= 100, "--group-size must be 2..100")
	case "pairs":
		check(c.pairs >= 1, "--pairs must be >= 1")
		check(c.duration > 0, "--duration must be > 0")
		check(c.rate > 0, "--rate must be > 0")
		check(c.workers >= 1, "--workers must be >= 1")
		check(c.size >= 1 && c.size <= 65536, "--size must be 1..65536 bytes")
	case "sync":
		check(c.users >= 1, "--users must be >= 1")
		check(c.backlog >= 1, "--backlog must be >= 1")
		check(c.page >= 1 && c.page <= 1000, "--page must be 1..1000")
		check(c.window >= 1, "--window must be >= 1")
	}
	if c.cmd == "direct" || c.cmd == "group" {
		check(c.devices >= 1, "--devices must be >= 1")
		check(c.duration > 0, "--duration must be > 0")
		check(c.rate >= 0, "--rate must be >= 0")
		check(c.window >= 1 && c.workers >= 1, "--window and --workers must be >= 1")
		check(c.size >= 1 && c.size <= 65536, "--size must be 1..65536 bytes")
	}
	if c.cmd == "sync" {
		check(c.size >= 1 && c.size <= 65536, "--size must be 1..65536 bytes")
	}
	return errors.Join(errs...)
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

// namedPID is one --extra-pid.
type namedPID struct {
	name string
	pid  int
}
