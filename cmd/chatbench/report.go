package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
)

// Report is what a run measured. It is printed as a table and written as
// JSON with --json.
type Report struct {
	Command     string         `json:"command"`
	Args        []string       `json:"args"`
	Started     time.Time      `json:"started"`
	Servers     []string       `json:"servers"`
	Interrupted bool           `json:"interrupted"`
	Workload    map[string]any `json:"workload"`
	// DurationSec is the measured phase (sending plus draining, or syncing).
	DurationSec float64 `json:"duration_s"`

	Sent       uint64 `json:"sent"`
	Accepted   uint64 `json:"accepted"`
	Duplicates uint64 `json:"duplicates"`
	Delivered  uint64 `json:"delivered"`
	Expected   uint64 `json:"expected_deliveries"`
	Echoes     uint64 `json:"echo_deliveries"`
	Synced     uint64 `json:"synced"`
	// Foreign counts deliveries of messages this run did not send (another
	// chatbench on the same users, or leftovers): a clean run has none.
	Foreign uint64 `json:"foreign_deliveries"`
	// Rates per second over SendSec (the sending phase).
	SendSec      float64 `json:"send_phase_s"`
	SendRate     float64 `json:"sent_per_s"`
	AcceptRate   float64 `json:"accepted_per_s"`
	DeliveryRate float64 `json:"delivered_per_s"`

	// Latency is send -> Delivery on another device; AckLatency send ->
	// SendAck (durably stored); ConnectLatency stream open -> Welcome.
	Latency        Percentiles `json:"delivery_latency"`
	AckLatency     Percentiles `json:"ack_latency"`
	ConnectLatency Percentiles `json:"connect_latency"`

	// ClientCPUCores is this process's CPU time over the measured phase /
	// wall time: the load generator shares the machine with the server.
	ClientCPUCores float64 `json:"client_cpu_cores"`
	// ServerCPUMsPerMsg and ClientCPUMsPerMsg are the CPU time of the
	// server (process_cpu_seconds_total, summed over a cluster) and of
	// chatbench over the measured phase divided by the accepted messages,
	// in ms (direct, group and pairs runs).
	ServerCPUMsPerMsg float64 `json:"server_cpu_ms_per_msg,omitempty"`
	ClientCPUMsPerMsg float64 `json:"client_cpu_ms_per_msg,omitempty"`
	// ProcessCPUMsPerMsg is the CPU time of each --extra-pid over the
	// measured phase per accepted message, in ms, by its name.
	ProcessCPUMsPerMsg map[string]float64 `json:"process_cpu_ms_per_msg,omitempty"`
	// CQLStatementsPerMsg and CQLRequestsPerMsg are the CQL statements
	// and requests (a batch is one request) the servers sent per accepted
	// message (cluster mode); CQLPerMsg splits the statements by verb and
	// table.
	CQLStatementsPerMsg float64            `json:"cql_statements_per_msg,omitempty"`
	CQLRequestsPerMsg   float64            `json:"cql_requests_per_msg,omitempty"`
	CQLPerMsg           map[string]float64 `json:"cql_statements_per_msg_by_statement,omitempty"`

	// Machine is the load of the whole (shared) machine: /proc/loadavg and
	// /proc/pressure/cpu ("some" avg10: % of time runnable tasks waited
	// for a CPU) at the start and the end of the run.
	Machine MachineLoad `json:"machine"`

	Errors      map[string]uint64 `json:"errors"`
	Server      *ServerFigures    `json:"server,omitempty"`
	Connections *ConnFigures      `json:"connections,omitempty"`
	Sync        *SyncFigures      `json:"sync,omitempty"`
	Series      []Sample          `json:"series"`
}

// ServerFigures are the server's own metrics over the measured phase
// (sums over a cluster).
type ServerFigures struct {
	// CPUCores is process_cpu_seconds_total's increase / wall time.
	CPUCores float64 `json:"cpu_cores"`
	// Before and After are the scraped series (see metrics.go).
	Before map[string]float64 `json:"before"`
	After  map[string]float64 `json:"after"`
	// MsgsPerBatch is the sequencer's mean group-commit size.
	MsgsPerBatch float64 `json:"msgs_per_batch,omitempty"`
}

// ConnFigures is the connections run's result: server bytes per open
// stream (each on its own TCP connection), from the difference of the
// medians before and after opening them.
type ConnFigures struct {
	Opened           int     `json:"opened"`
	StreamsOpenDelta float64 `json:"streams_open_delta"`
	HeapPerConn      float64 `json:"heap_inuse_bytes_per_conn"`
	StackPerConn     float64 `json:"stack_inuse_bytes_per_conn"`
	HeapStackPerConn float64 `json:"heap_plus_stack_bytes_per_conn"`
	RSSPerConn       float64 `json:"rss_bytes_per_conn"`
	ProcRSSPerConn   float64 `json:"proc_vmrss_bytes_per_conn,omitempty"`
	GoroutinesPer    float64 `json:"goroutines_per_conn"`
	FDsPerConn       float64 `json:"fds_per_conn"`
	ClientRSSPerConn float64 `json:"client_rss_bytes_per_conn"`
	// KernelSlabPerSocket is the machine's slab growth / (2 x opened): on
	// loopback both ends of every connection are sockets of this machine.
	// Other activity on the machine adds noise.
	KernelSlabPerSocket float64 `json:"kernel_slab_bytes_per_socket"`
}

// minConnsForMemory is the fewest streams whose memory per stream the
// report presents without a warning.
const minConnsForMemory = 1000

// SyncFigures is the sync run's result.
type SyncFigures struct {
	Devices        int         `json:"devices"`
	Backlog        int         `json:"backlog_per_device"`
	FillSec        float64     `json:"fill_s"`
	FillRate       float64     `json:"fill_msgs_per_s"`
	DrainSec       float64     `json:"drain_s"`
	SyncRate       float64     `json:"synced_per_s"`
	Pages          uint64      `json:"pages"`
	DeviceDrain    Percentiles `json:"device_drain"`
	IncompleteDevs int         `json:"incomplete_devices"`
}

// Sample is one progress tick: cumulative counters at T seconds.
type Sample struct {
	T         float64 `json:"t_s"`
	Sent      uint64  `json:"sent"`
	Accepted  uint64  `json:"accepted"`
	Delivered uint64  `json:"delivered"`
	Synced    uint64  `json:"synced"`
	P99       float64 `json:"p99_ms"`
	Errors    uint64  `json:"errors"`
	Open      int64   `json:"open,omitempty"`
}

func (b *bench) newReport() *Report {
	return &Report{
		Started: b.epoch, Servers: b.cfg.servers, Errors: b.errorMap(),
		Workload: map[string]any{},
	}
}

// fill copies the counters and histograms into r.
func (b *bench) fill(r *Report, sendSec float64) {
	r.Sent, r.Accepted, r.Duplicates = b.sent.Load(), b.accepted.Load(), b.duplicates.Load()
	r.Delivered, r.Expected, r.Echoes, r.Synced = b.delivered.Load(), b.expected.Load(), b.echoes.Load(), b.synced.Load()
	r.Foreign = b.foreign.Load()
	r.SendSec = sendSec
	if sendSec > 0 {
		r.SendRate = float64(r.Sent) / sendSec
		r.AcceptRate = float64(r.Accepted) / sendSec
		r.DeliveryRate = float64(r.Delivered) / sendSec
	}
	r.Latency, r.AckLatency, r.ConnectLatency = b.lat.Summary(), b.ackLat.Summary(), b.conLat.Summary()
	r.Errors = b.errorMap()
	b.seriesMu.Lock()
	r.Series = append([]Sample(nil), b.series...)
	b.seriesMu.Unlock()
}

// serverFigures computes CPU use from two scrapes wall apart.
func serverFigures(before, after map[string]float64, wall time.Duration) *ServerFigures {
	if before == nil || after == nil {
		return nil
	}
	s := &ServerFigures{Before: before, After: after}
	if wall > 0 {
		s.CPUCores = (after[mCPU] - before[mCPU]) / wall.Seconds()
	}
	if nb := after[mBatches] - before[mBatches]; nb > 0 {
		s.MsgsPerBatch = (after[mSeqMsgs] - before[mSeqMsgs]) / nb
	}
	return s
}

// sample appends a progress sample and returns the progress line.
func (b *bench) sample(open int64) string {
	s := Sample{
		T: (b.now() - b.seriesT0).Seconds(), Sent: b.sent.Load(), Accepted: b.accepted.Load(),
		Delivered: b.delivered.Load(), Synced: b.synced.Load(),
		P99: ms(b.lat.Quantile(0.99)), Errors: b.errorCount(), Open: open,
	}
	b.seriesMu.Lock()
	var prev Sample
	if n := len(b.series); n > 0 {
		prev = b.series[n-1]
	}
	b.series = append(b.series, s)
	b.seriesMu.Unlock()
	dt := s.T - prev.T
	rate := func(a, p uint64) float64 {
		if dt <= 0 {
			return 0
		}
		return float64(a-p) / dt
	}
	return fmt.Sprintf("%6.1fs sent %d (%.0f/s) acked %d delivered %d (%.0f/s) p99 %.2fms errors %d",
		s.T, s.Sent, rate(s.Sent, prev.Sent), s.Accepted, s.Delivered, rate(s.Delivered, prev.Delivered), s.P99, s.Errors)
}

func (b *bench) writeReport(r *Report, w io.Writer) error {
	printTable(r, w)
	if b.cfg.jsonOut != "" {
		buf, err := json.MarshalIndent(r, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(b.cfg.jsonOut, append(buf, '\n'), 0o644); err != nil {
			return err
		}
	}
	if b.cfg.plotOut != "" {
		if err := writePlot(b, r, b.cfg.plotOut); err != nil {
			return fmt.Errorf("plot: %w", err)
		}
	}
	return nil
}

func mib(v float64) string { return fmt.Sprintf("%.1f MiB", v/(1<<20)) }

func printTable(r *Report, w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(k string, format string, a ...any) {
		fmt.Fprintf(tw, "%s\t"+format+"\n", append([]any{k}, a...)...)
	}
	title := "chatbench " + r.Command
	if r.Interrupted {
		title += " (interrupted)"
	}
	fmt.Fprintln(tw, title)
	row("servers", "%s", strings.Join(r.Servers, ","))
	keys := make([]string, 0, len(r.Workload))
	for k := range r.Workload {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var wl []string
	for _, k := range keys {
		wl = append(wl, fmt.Sprintf("%s=%v", k, r.Workload[k]))
	}
	row("workload", "%s", strings.Join(wl, " "))
	row("client", "%s GOMAXPROCS=%d", runtime.Version(), runtime.GOMAXPROCS(0))
	m := r.Machine
	row("machine load", "%d CPUs; load average %.2f -> %.2f; CPU pressure %.0f%% -> %.0f%%", m.CPUs, m.LoadAvg1Start, m.LoadAvg1End, m.CPUPressureStart, m.CPUPressureEnd)
	row("duration", "%.2fs", r.DurationSec)
	if r.Sent > 0 || r.Delivered > 0 {
		row("sent", "%d (%.0f/s over %.2fs)", r.Sent, r.SendRate, r.SendSec)
		row("accepted", "%d (%.0f/s), %d duplicates", r.Accepted, r.AcceptRate, r.Duplicates)
		row("delivered", "%d (%.0f/s) of %d expected, %d to the sending device, %d not sent by this run", r.Delivered, r.DeliveryRate, r.Expected, r.Echoes, r.Foreign)
	}
	pct := func(name string, p Percentiles) {
		if p.Count == 0 {
			return
		}
		row(name, "p50 %.2f  p90 %.2f  p99 %.2f  p99.9 %.2f  max %.2f ms  (n=%d, mean %.2f)", p.P50, p.P90, p.P99, p.P999, p.Max, p.Count, p.Mean)
	}
	pct("delivery latency", r.Latency)
	pct("ack latency", r.AckLatency)
	pct("connect latency", r.ConnectLatency)
	if s := r.Sync; s != nil {
		row("sync", "%d devices x %d backlog: filled in %.2fs (%.0f msgs/s)", s.Devices, s.Backlog, s.FillSec, s.FillRate)
		row("sync drain", "%d deliveries in %.3fs = %.0f/s, %d pages, %d devices incomplete", r.Synced, s.DrainSec, s.SyncRate, s.Pages, s.IncompleteDevs)
		pct("device drain time", s.DeviceDrain)
	}
	if c := r.Connections; c != nil {
		row("connections", "%d opened, server streams_open +%.0f", c.Opened, c.StreamsOpenDelta)
		if c.Opened < minConnsForMemory {
			row("note", "under %d streams the per-stream memory below is noise (the heap moves by more than they cost): use --conns 10000", minConnsForMemory)
		}
		row("server per conn", "heap %.0f B + stack %.0f B = %.0f B; RSS %.0f B; %.2f goroutines, %.2f fds", c.HeapPerConn, c.StackPerConn, c.HeapStackPerConn, c.RSSPerConn, c.GoroutinesPer, c.FDsPerConn)
		if c.ProcRSSPerConn != 0 {
			row("server VmRSS per conn", "%.0f B", c.ProcRSSPerConn)
		}
		row("client RSS per conn", "%.0f B", c.ClientRSSPerConn)
		row("kernel slab per socket", "%.0f B (machine-wide, both ends counted)", c.KernelSlabPerSocket)
	}
	if s := r.Server; s != nil {
		a := s.After
		row("server CPU", "%.2f cores", s.CPUCores)
		row("server memory", "heap in use %s, stacks %s, RSS %s, goroutines %.0f", mib(a[mHeapInuse]), mib(a[mStackInuse]), mib(a[mRSS]), a[mGoroutines])
		if s.MsgsPerBatch > 0 {
			row("group commit", "%.1f messages per batch", s.MsgsPerBatch)
		}
	}
	if r.ClientCPUCores > 0 {
		row("chatbench CPU", "%.2f cores", r.ClientCPUCores)
	}
	r.perMessageRow(row)
	if len(r.Errors) == 0 {
		row("errors", "none")
	} else {
		keys := make([]string, 0, len(r.Errors))
		for k := range r.Errors {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var es []string
		for _, k := range keys {
			es = append(es, fmt.Sprintf("%s=%d", k, r.Errors[k]))
		}
		row("errors", "%s", strings.Join(es, " "))
	}
	tw.Flush()
}

// cpuTime is this process's user+system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// clientCPU returns the cores this process used since cpu0, over wall.
func clientCPU(cpu0 time.Duration, wall time.Duration) float64 {
	if wall <= 0 {
		return 0
	}
	return (cpuTime() - cpu0).Seconds() / wall.Seconds()
}

// MachineLoad is the shared machine's load around a run.
type MachineLoad struct {
	CPUs             int     `json:"cpus"`
	LoadAvg1Start    float64 `json:"loadavg1_start"`
	LoadAvg1End      float64 `json:"loadavg1_end"`
	CPUPressureStart float64 `json:"cpu_pressure_some_avg10_start"`
	CPUPressureEnd   float64 `json:"cpu_pressure_some_avg10_end"`
}

// machineLoad reads the 1-minute load average and the CPU pressure
// (zeros where /proc lacks them).
func machineLoad() (load1, pressure float64) {
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(b)); len(f) > 0 {
			load1, _ = strconv.ParseFloat(f[0], 64)
		}
	}
	if b, err := os.ReadFile("/proc/pressure/cpu"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if !strings.HasPrefix(line, "some ") {
				continue
			}
			for _, kv := range strings.Fields(line) {
				if v, ok := strings.CutPrefix(kv, "avg10="); ok {
					pressure, _ = strconv.ParseFloat(v, 64)
				}
			}
		}
	}
	return load1, pressure
}
