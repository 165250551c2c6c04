package main

import (
	"bytes"
	"context"
	"encoding/json"
	"image/png"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chatd/chatd/server/app"
)

// startServer runs an in-process chatd on loopback with the limits raised
// as for a benchmark.
func startServer(t *testing.T) *app.App {
	t.Helper()
	a, err := app.New(app.Config{
		GRPCAddr:   "127.0.0.1:0",
		HTTPAddr:   "127.0.0.1:0",
		DataDir:    t.TempDir(),
		UnaryRate:  100000,
		UnaryBurst: 100000,
		FrameRate:  100000,
		FrameBurst: 100000,
		Logger:     slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatalf("app.New: %v", err)
	}
	a.Start()
	t.Cleanup(func() { _ = a.Close() })
	return a
}

type env struct {
	t     *testing.T
	a     *app.App
	dir   string
	cache string
}

func newEnv(t *testing.T) *env {
	dir := t.TempDir()
	return &env{t: t, a: startServer(t), dir: dir, cache: filepath.Join(dir, "tokens.json")}
}

// run runs a subcommand against the server and returns its JSON report,
// the path of its plot and what it printed on stderr.
func (e *env) run(cmd string, args ...string) (*Report, string, string) {
	e.t.Helper()
	jsonPath := filepath.Join(e.dir, cmd+".json")
	plotPath := filepath.Join(e.dir, cmd+".png")
	full := append([]string{cmd,
		"--servers", e.a.GRPCAddr(),
		"--metrics", "http://" + e.a.HTTPAddr() + "/metrics",
		"--server-pid", "1", // any live pid: VmRSS is read from /proc
		"--token-cache", e.cache,
		"--user-prefix", "tb",
		"--json", jsonPath, "--plot", plotPath,
	}, args...)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	if code := run(ctx, full, &stdout, &stderr); code != 0 {
		e.t.Fatalf("chatbench %v: exit %d\nstdout:\n%s\nstderr:\n%s", full, code, stdout.String(), stderr.String())
	}
	e.t.Logf("chatbench %s:\n%s", cmd, stdout.String())
	b, err := os.ReadFile(jsonPath)
	if err != nil {
		e.t.Fatal(err)
	}
	var r Report
	if err := json.Unmarshal(b, &r); err != nil {
		e.t.Fatalf("report JSON: %v", err)
	}
	if r.Command != cmd {
		e.t.Errorf("report command %q, want %q", r.Command, cmd)
	}
	if !strings.Contains(stdout.String(), "chatbench "+cmd) {
		e.t.Errorf("table lacks its title:\n%s", stdout.String())
	}
	return &r, plotPath, stderr.String()
}

func checkPNG(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("plot %s: %v", path, err)
	}
	if b := img.Bounds(); b.Dx() < 100 || b.Dy() < 100 {
		t.Errorf("plot is %v", b)
	}
}

func checkNoErrors(t *testing.T, r *Report) {
	t.Helper()
	if len(r.Errors) != 0 {
		t.Errorf("errors: %v", r.Errors)
	}
	if r.Interrupted {
		t.Error("report says interrupted")
	}
}

// checkLoad checks a direct or group report: every send accepted, every
// expected delivery received, latencies recorded, server figures present.
func checkLoad(t *testing.T, r *Report, fanout uint64) {
	t.Helper()
	checkNoErrors(t, r)
	if r.Sent == 0 {
		t.Fatal("nothing sent")
	}
	if r.Accepted != r.Sent || r.Duplicates != 0 {
		t.Errorf("sent %d, accepted %d, duplicates %d", r.Sent, r.Accepted, r.Duplicates)
	}
	if r.Expected != r.Accepted*fanout {
		t.Errorf("expected deliveries %d, want accepted %d x fan-out %d", r.Expected, r.Accepted, fanout)
	}
	if r.Foreign != 0 {
		t.Errorf("%d deliveries not sent by this run", r.Foreign)
	}
	if r.Delivered != r.Expected {
		t.Errorf("delivered %d, expected %d", r.Delivered, r.Expected)
	}
	if r.Latency.Count != r.Delivered-r.Echoes {
		t.Errorf("latency samples %d, want deliveries to other devices %d", r.Latency.Count, r.Delivered-r.Echoes)
	}
	if r.AckLatency.Count != r.Accepted {
		t.Errorf("ack latency samples %d, want %d", r.AckLatency.Count, r.Accepted)
	}
	l := r.Latency
	if !(l.P50 <= l.P90 && l.P90 <= l.P99 && l.P99 <= l.P999 && l.P999 <= l.Max && l.Max > 0) {
		t.Errorf("latency percentiles out of order: %+v", l)
	}
	if r.Server == nil || r.Server.After[mAccepted]-r.Server.Before[mAccepted] < float64(r.Accepted) {
		t.Errorf("server figures missing or short of %d accepted: %+v", r.Accepted, r.Server)
	}
	if len(r.Series) == 0 {
		t.Error("no progress samples")
	}
}

func TestDirectPacedAndCachedTokens(t *testing.T) {
	e := newEnv(t)
	r, plot, stderr := e.run("direct", "--users", "4", "--devices", "2", "--rate", "300", "--duration", "1500ms")
	checkLoad(t, r, 4)
	checkPNG(t, plot)
	if !strings.Contains(stderr, "setup: 8 of 8 device tokens") {
		t.Errorf("first run did not set up 8 devices:\n%s", stderr)
	}
	if r.Echoes != r.Accepted {
		t.Errorf("deliveries to the sending device %d, want one per message = %d", r.Echoes, r.Accepted)
	}
	// A second run reuses the cached tokens: no sign-up or log-in.
	r, _, stderr = e.run("direct", "--users", "4", "--devices", "2", "--rate", "0", "--window", "2", "--duration", "1s")
	checkLoad(t, r, 4)
	if strings.Contains(stderr, "setup:") {
		t.Errorf("second run logged in again:\n%s", stderr)
	}
}

// TestPairs checks the pairs shape: every send from a sender reaches its
// own receiver (and the sender's device), the pacer keeps the rate, and
// the CPU per message is reported.
func TestPairs(t *testing.T) {
	e := newEnv(t)
	r, plot, _ := e.run("pairs", "--pairs", "5", "--rate", "200", "--duration", "1500ms")
	checkLoad(t, r, 2)
	checkPNG(t, plot)
	if r.Echoes != r.Accepted {
		t.Errorf("deliveries to the sending device %d, want one per message = %d", r.Echoes, r.Accepted)
	}
	if r.Sent < 100 {
		t.Errorf("sent %d at 200/s for 1.5s, want at least 100", r.Sent)
	}
	if r.ServerCPUMsPerMsg <= 0 || r.ClientCPUMsPerMsg <= 0 {
		t.Errorf("CPU per message: server %v ms, chatbench %v ms", r.ServerCPUMsPerMsg, r.ClientCPUMsPerMsg)
	}
}

func TestGroup(t *testing.T) {
	e := newEnv(t)
	r, plot, _ := e.run("group", "--groups", "2", "--group-size", "3", "--devices", "1", "--rate", "0", "--window", "2", "--duration", "1s")
	checkLoad(t, r, 3)
	checkPNG(t, plot)
}

func TestSync(t *testing.T) {
	e := newEnv(t)
	r, plot, _ := e.run("sync", "--users", "2", "--backlog", "150", "--page", "100")
	checkNoErrors(t, r)
	checkPNG(t, plot)
	s := r.Sync
	if s == nil {
		t.Fatal("no sync figures")
	}
	if r.Synced != 300 || s.IncompleteDevs != 0 {
		t.Errorf("synced %d (want 300), incomplete devices %d", r.Synced, s.IncompleteDevs)
	}
	if s.Pages != 4 { // two pages of 100 + 50 per device
		t.Errorf("pages %d, want 4", s.Pages)
	}
	if s.DeviceDrain.Count != 2 || s.SyncRate <= 0 || s.FillRate <= 0 {
		t.Errorf("sync figures: %+v", s)
	}
	if r.Server == nil || r.Server.After[mSynced]-r.Server.Before[mSynced] != 300 {
		t.Errorf("server synced deliveries: %+v", r.Server)
	}
}

func TestConnections(t *testing.T) {
	e := newEnv(t)
	// 20 connections from two source addresses (127.0.0.2, 127.0.0.3), two
	// streams per device token.
	r, plot, _ := e.run("connections", "--conns", "20", "--streams-per-device", "2", "--conns-per-addr", "10",
		"--hold", "500ms", "--samples", "1", "--heartbeat", "100ms")
	checkNoErrors(t, r)
	checkPNG(t, plot)
	c := r.Connections
	if c == nil || c.Opened != 20 || c.StreamsOpenDelta != 20 {
		t.Fatalf("connections: %+v", c)
	}
	if r.ConnectLatency.Count != 20 {
		t.Errorf("connect latencies %d, want 20", r.ConnectLatency.Count)
	}
	if c.FDsPerConn < 0.99 {
		t.Errorf("server fds per connection %.2f: each stream should have its own connection", c.FDsPerConn)
	}
	if r.Server == nil || r.Server.After[pidRSS] <= 0 {
		t.Errorf("no VmRSS read: %+v", r.Server)
	}
}

// TestConnectionsMultiplexed: 20 streams, 5 per TCP connection, all
// open and heartbeating on 4 server-side connections.
func TestConnectionsMultiplexed(t *testing.T) {
	e := newEnv(t)
	r, _, _ := e.run("connections", "--conns", "20", "--streams-per-conn", "5",
		"--hold", "500ms", "--samples", "1", "--heartbeat", "100ms")
	checkNoErrors(t, r)
	c := r.Connections
	if c == nil || c.Opened != 20 || c.StreamsOpenDelta != 20 {
		t.Fatalf("connections: %+v", c)
	}
	// 4 connections for 20 streams: 0.2 descriptors per stream, where
	// one connection per stream would be >= 1. The server opens a few
	// files of its own meanwhile (the store's, the metrics scrape): 4–5
	// here, hence the margin.
	if c.FDsPerConn < 0.15 || c.FDsPerConn > 0.7 {
		t.Errorf("server fds per stream %.2f, want ~0.2 (5 streams per connection)", c.FDsPerConn)
	}
	if got := r.Workload["tcp_conns"]; got != float64(4) && got != 4 {
		t.Errorf("workload tcp_conns = %v, want 4", got)
	}
}

func TestSetupAndUsage(t *testing.T) {
	e := newEnv(t)
	r, _, _ := e.run("setup", "--users", "3", "--devices", "2")
	checkNoErrors(t, r)
	tc, err := loadTokenCache(e.cache)
	if err != nil {
		t.Fatal(err)
	}
	if len(tc.m) != 6 {
		t.Errorf("token cache has %d entries, want 6", len(tc.m))
	}
	for _, args := range [][]string{
		nil, {"nosuch"}, {"direct", "--users", "1"}, {"group", "--group-size", "101"},
		{"sync", "--page", "0"}, {"connections", "--conns", "0"}, {"direct", "extra"},
	} {
		var out, errb bytes.Buffer
		if code := run(context.Background(), args, &out, &errb); code != 2 {
			t.Errorf("chatbench %v: exit %d, want 2", args, code)
		}
	}
}

func TestInterruptReportsSoFar(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithCancel(context.Background())
	jsonPath := filepath.Join(e.dir, "int.json")
	go func() { time.Sleep(1500 * time.Millisecond); cancel() }()
	var out, errb bytes.Buffer
	code := run(ctx, []string{"direct", "--servers", e.a.GRPCAddr(), "--token-cache", e.cache, "--user-prefix", "tint",
		"--users", "2", "--rate", "100", "--duration", "1m", "--json", jsonPath}, &out, &errb)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	b, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	var r Report
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	if !r.Interrupted || r.Sent == 0 || !strings.Contains(out.String(), "(interrupted)") {
		t.Errorf("interrupted %v, sent %d:\n%s", r.Interrupted, r.Sent, out.String())
	}
}

func TestHistQuantiles(t *testing.T) {
	var h hist
	r := rand.New(rand.NewPCG(1, 2))
	vals := make([]time.Duration, 100000)
	for i := range vals {
		// Log-uniform from 1 µs to 10 s.
		vals[i] = time.Duration(math.Pow(10, 3+7*r.Float64()))
		h.Record(vals[i])
	}
	slices.Sort(vals)
	for _, q := range []float64{0.5, 0.9, 0.99, 0.999} {
		exact := vals[int(math.Ceil(q*float64(len(vals))))-1]
		got := h.Quantile(q)
		if rel := math.Abs(float64(got-exact)) / float64(exact); rel > 1.0/128 {
			t.Errorf("q%.3f: %v, exact %v (%.2f%% off)", q, got, exact, 100*rel)
		}
	}
	if h.Quantile(1) != vals[len(vals)-1] {
		t.Errorf("max %v, want %v", h.Quantile(1), vals[len(vals)-1])
	}
	for _, v := range []uint64{0, 1, 255, 256, 257, 1 << 20, 1<<63 + 12345, math.MaxUint64} {
		i := histIndex(v)
		if i < 0 || i >= histBuckets {
			t.Fatalf("index of %d: %d out of range", v, i)
		}
		if mid := histValue(i); v >= 256 && math.Abs(float64(mid)-float64(v))/float64(v) > 1.0/128 {
			t.Errorf("bucket of %d has midpoint %d", v, mid)
		}
	}
}

// TestClusterFigures: the CQL counters are kept per statement label, an
// --extra-pid's CPU is read from /proc, and both become per-message
// figures.
func TestClusterFigures(t *testing.T) {
	in := "# HELP x\nchatd_cql_statements_total{statement=\"INSERT inbox\"} 40\nchatd_cql_statements_total{statement=\"SELECT dedup\"} 10\nchatd_cql_requests_total{statement=\"INSERT inbox\"} 5\nprocess_cpu_seconds_total 2\nother_total{a=\"b\"} 3\n"
	m, err := parseMetrics(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if m[`chatd_cql_statements_total{statement="INSERT inbox"}`] != 40 || m[mCPU] != 2 || len(m) != 4 {
		t.Fatalf("parsed %v", m)
	}
	cpu, err := procCPU(os.Getpid())
	if err != nil || cpu < 0 {
		t.Fatalf("procCPU: %v %v", cpu, err)
	}
	before := map[string]float64{`chatd_cql_statements_total{statement="INSERT inbox"}`: 0, extraCPUPrefix + "redis": 1}
	r := &Report{Accepted: 10, Server: &ServerFigures{Before: before, After: m}}
	r.Server.After[extraCPUPrefix+"redis"] = 1.5
	r.perMessage(0)
	if r.CQLStatementsPerMsg != 5 || r.CQLPerMsg["SELECT dedup"] != 1 || r.CQLRequestsPerMsg != 0.5 || r.ProcessCPUMsPerMsg["redis"] != 50 {
		t.Fatalf("per message: %+v %v %v", r.CQLPerMsg, r.CQLRequestsPerMsg, r.ProcessCPUMsPerMsg)
	}
}
