package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Server metrics read from chatd's Prometheus endpoint (/metrics on its
// HTTP port). Names are the Go and process collectors' and chatd's own.
const (
	mHeapInuse  = "go_memstats_heap_inuse_bytes"
	mStackInuse = "go_memstats_stack_inuse_bytes"
	mSys        = "go_memstats_sys_bytes"
	mRSS        = "process_resident_memory_bytes"
	mCPU        = "process_cpu_seconds_total"
	mFDs        = "process_open_fds"
	mGoroutines = "go_goroutines"
	mStreams    = "chatd_streams_open"
	mSessions   = "chatd_hub_sessions"
	mAccepted   = "chatd_messages_accepted_total"
	mDelivered  = "chatd_deliveries_sent_total"
	mSynced     = "chatd_deliveries_synced_total"
	mBatches    = "chatd_sequencer_batches_total"
	mSeqMsgs    = "chatd_sequencer_messages_total"
	mOverflows  = "chatd_send_queue_overflows_total"
	// pidRSS is the VmRSS of --server-pid from /proc (not a Prometheus name).
	pidRSS = "proc_vmrss_bytes"
	// mCQLStatements and mCQLRequests are labelled ({statement="..."}): the
	// scrape keeps every series, keyed by name and labels.
	mCQLStatements = "chatd_cql_statements_total"
	mCQLRequests   = "chatd_cql_requests_total"
	// extraCPUPrefix + name is the CPU seconds (utime+stime from
	// /proc/<pid>/stat) of an --extra-pid (not a Prometheus name).
	extraCPUPrefix = "proc_cpu_seconds:"
)

// wantLabelled are the labelled series kept from a scrape (each label set
// under its own key, e.g. chatd_cql_statements_total{statement="INSERT inbox"}).
var wantLabelled = map[string]bool{mCQLStatements: true, mCQLRequests: true}

// wantMetrics are the series kept from a scrape (others are dropped).
var wantMetrics = map[string]bool{
	mHeapInuse: true, mStackInuse: true, mSys: true, mRSS: true, mCPU: true, mFDs: true,
	mGoroutines: true, mStreams: true, mSessions: true, mAccepted: true, mDelivered: true,
	mSynced: true, mBatches: true, mSeqMsgs: true, mOverflows: true,
}

// parseMetrics reads the Prometheus text format and returns the unlabelled
// samples named in wantMetrics.
func parseMetrics(r io.Reader) (map[string]float64, error) {
	out := make(map[string]float64)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		var name, rest string
		var ok bool
		if i := strings.IndexByte(line, '{'); i > 0 && wantLabelled[line[:i]] {
			j := strings.LastIndexByte(line, '}')
			if j < i {
				continue
			}
			name, rest, ok = line[:j+1], line[j+1:], true
		} else {
			name, rest, ok = strings.Cut(line, " ")
			if !ok || !wantMetrics[name] {
				continue
			}
		}
		val, _, _ := strings.Cut(strings.TrimSpace(rest), " ")
		v, err := strconv.ParseFloat(val, 64)
		if err != nil {
			return nil, fmt.Errorf("metric %s: %w", name, err)
		}
		out[name] = v
	}
	return out, sc.Err()
}

// scrapeOne fetches one server's /metrics.
func scrapeOne(ctx context.Context, url string) (map[string]float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: HTTP %s", url, resp.Status)
	}
	return parseMetrics(resp.Body)
}

// procRSS returns the VmRSS of pid in bytes, from /proc/<pid>/status.
func procRSS(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) < 1 {
				break
			}
			kb, err := strconv.ParseFloat(f[0], 64)
			if err != nil {
				return 0, err
			}
			return kb * 1024, nil
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}

// scrape reads every server's metrics and the RSS of every --server-pid and
// returns their sums (a cluster reports totals). It is nil with no
// --metrics and no --server-pid.
func (b *bench) scrape(ctx context.Context) (map[string]float64, error) {
	if len(b.cfg.metrics) == 0 && len(b.cfg.serverPIDs) == 0 && len(b.cfg.extraPIDs) == 0 {
		return nil, nil
	}
	sum := make(map[string]float64)
	for _, u := range b.cfg.metrics {
		m, err := scrapeOne(ctx, u)
		if err != nil {
			return nil, err
		}
		for k, v := range m {
			sum[k] += v
		}
	}
	for _, pid := range b.cfg.serverPIDs {
		v, err := procRSS(pid)
		if err != nil {
			return nil, err
		}
		sum[pidRSS] += v
	}
	for _, p := range b.cfg.extraPIDs {
		v, err := procCPU(p.pid)
		if err != nil {
			return nil, fmt.Errorf("--extra-pid %s=%d: %w", p.name, p.pid, err)
		}
		sum[extraCPUPrefix+p.name] += v
	}
	return sum, nil
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat's times: 100 on
// every Linux architecture Go supports (sysconf(_SC_CLK_TCK)).
const clockTicks = 100

// procCPU returns the user+system CPU seconds of pid (all its threads),
// from fields 14 and 15 of /proc/<pid>/stat.
func procCPU(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+1:])) // f[0] is field 3 (state)
	if len(f) < 13 {
		return 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	return float64(ut+st) / clockTicks, nil
}

// scrapeMedian takes n scrapes every interval and returns, per series, the
// median: a single scrape of heap figures can land just before or after a
// garbage collection.
func (b *bench) scrapeMedian(ctx context.Context, n int, every time.Duration) (map[string]float64, error) {
	var all []map[string]float64
	for i := 0; i < n; i++ {
		if i > 0 {
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(every):
			}
		}
		m, err := b.scrape(ctx)
		if err != nil || m == nil {
			return m, err
		}
		all = append(all, m)
	}
	out := make(map[string]float64)
	for k := range all[0] {
		vs := make([]float64, 0, len(all))
		for _, m := range all {
			vs = append(vs, m[k])
		}
		sort.Float64s(vs)
		out[k] = vs[len(vs)/2]
	}
	return out, nil
}

// selfRSS is this process's VmRSS in bytes (0 if unknown).
func selfRSS() float64 {
	v, _ := procRSS(os.Getpid())
	return v
}

// procFDLimit is the soft "Max open files" of pid, from /proc/<pid>/limits.
func procFDLimit(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "Max open files"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				return strconv.ParseUint(f[0], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("no open-file limit in /proc/%d/limits", pid)
}

// kernelSlab is the kernel's slab memory (/proc/meminfo Slab) in bytes:
// socket, inode and file structures live there.
func kernelSlab() float64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "Slab:"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				kb, _ := strconv.ParseFloat(f[0], 64)
				return kb * 1024
			}
		}
	}
	return 0
}
