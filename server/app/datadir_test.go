package app_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// logLines returns the JSON log lines of stderr whose msg starts with
// prefix.
func logLines(t *testing.T, stderr, prefix string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, l := range strings.Split(stderr, "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil && strings.HasPrefix(fmt.Sprint(m["msg"]), prefix) {
			out = append(out, m)
		}
	}
	return out
}

// TestDataDirLockedAndRecoveryLogs (issue 11, item 12), with the real
// binary: a second chatd on a data directory in use exits at once saying
// the directory is locked by another chatd and naming its pid (not
// "resource temporarily unavailable" alone); after kill -9 the next start
// logs a structured recovery line (the previous pid, the write-ahead log
// replayed, how long it took); a graceful shutdown logs what it flushed
// and how long it took, and the start after it is a clean open.
func TestDataDirLockedAndRecoveryLogs(t *testing.T) {
	dir := t.TempDir()
	p := startChatd(t, dir, "--log-format", "json")
	cc := dial(t, p.grpc)
	alice := signUpLogIn(t, cc, "alice", "phone")
	signUpLogIn(t, cc, "bob", "phone")
	as := openStream(t, alice)
	for i := range 20 {
		as.send("bob", fmt.Sprint("m", i), fmt.Sprint("message ", i))
	}

	second := exec.Command(chatdBinary(t), "--data-dir", dir, "--grpc-addr", "127.0.0.1:"+freePort(t), "--http-addr", "127.0.0.1:"+freePort(t))
	var stderr bytes.Buffer
	second.Stderr = &stderr
	done := make(chan error, 1)
	if err := second.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- second.Wait() }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatalf("a second chatd on the same data directory ran\n%s", &stderr)
		}
	case <-time.After(30 * time.Second):
		_ = second.Process.Kill()
		t.Fatalf("a second chatd on the same data directory did not exit\n%s", &stderr)
	}
	want := fmt.Sprintf("is in use by another chatd (pid %d)", p.cmd.Process.Pid)
	if !strings.Contains(stderr.String(), want) {
		t.Fatalf("second chatd's error does not say %q:\n%s", want, &stderr)
	}

	// kill -9, then start again: a recovery line.
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	p.wait(t)
	p2 := startChatd(t, dir, "--log-format", "json")
	rec := logLines(t, p2.stderr.String(), "pebble store: recovered after an unclean shutdown")
	if len(rec) != 1 {
		t.Fatalf("no recovery log line after kill -9:\n%s", p2.stderr)
	}
	r := rec[0]
	if r["level"] != "WARN" || r["previous_pid"] != float64(p.cmd.Process.Pid) || r["wal_bytes"].(float64) <= 0 || r["took"] == nil {
		t.Fatalf("recovery line %v: want WARN, previous_pid %d, the WAL replayed and how long it took", r, p.cmd.Process.Pid)
	}

	// Graceful shutdown: what was flushed.
	as2 := openStream(t, alice.withConn(dial(t, p2.grpc)))
	as2.send("bob", "after", "after the recovery")
	if err := p2.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := p2.wait(t); err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, p2.stderr)
	}
	closed := logLines(t, p2.stderr.String(), "pebble store: closed cleanly")
	if len(closed) != 1 || closed[0]["flushed_bytes"].(float64) <= 0 || closed[0]["took"] == nil {
		t.Fatalf("no clean-close line with what was flushed:\n%s", p2.stderr)
	}

	p3 := startChatd(t, dir, "--log-format", "json")
	if len(logLines(t, p3.stderr.String(), "pebble store: recovered")) != 0 || len(logLines(t, p3.stderr.String(), "pebble store: opened")) != 1 {
		t.Fatalf("start after a graceful shutdown: want a clean open, no recovery:\n%s", p3.stderr)
	}
}
