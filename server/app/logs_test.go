package app_test

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatd/chatd/server/app"
	"github.com/chatd/chatd/server/tracing"
)

// syncBuffer is a bytes.Buffer safe for the server's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestLogsJSON (issue 17): the JSON log of a flow (start, sign-ups,
// log-ins, a send, a stream evicted by a newer one of its device, a
// graceful stop) has the operator's lines with their stable keys, every
// line is JSON, and no line holds a token, a password or a message text.
func TestLogsJSON(t *testing.T) {
	var buf syncBuffer
	log := slog.New(tracing.LogHandler(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})))
	a, err := app.New(app.Config{
		GRPCAddr:            "127.0.0.1:0",
		HTTPAddr:            "127.0.0.1:0",
		DataDir:             t.TempDir(),
		Logger:              log,
		MaxStreamsPerDevice: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	a.Start()
	cc := dial(t, a.GRPCAddr())
	alice := signUpLogIn(t, cc, "alice", "phone")
	bob := signUpLogIn(t, cc, "bob", "phone")
	const text = "the secret text of a message"
	first := openStream(t, alice)
	first.send("bob", "m1", text)
	openStream(t, alice) // evicts the first (one stream per device)
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(buf.String(), `"reason":"evicted"`) {
		if time.Now().After(deadline) {
			t.Fatalf("no eviction logged:\n%s", buf.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}

	out := buf.String()
	for _, secret := range []string{alice.token, bob.token, "password-alice", "password-bob", text} {
		if strings.Contains(out, secret) {
			t.Errorf("the log holds %q", secret)
		}
	}
	lines := map[string]map[string]any{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("not JSON: %q", l)
		}
		msg, _ := m["msg"].(string)
		if msg == "stream closed by server" && m["reason"] != "evicted" {
			continue // the second stream, closed at shutdown
		}
		lines[msg] = m
	}
	for msg, keys := range map[string][]string{
		"store opened":                {"store", "took_ms"},
		"config":                      {"store", "server_id", "grpc_addr", "http_addr", "token_ttl", "frame_rate", "unary_rate", "send_queue", "tracing", "drain_window", "allowed_origins", "push"},
		"chatd serving":               {"grpc", "http", "server_id"},
		"stream closed by server":     {"user_id", "device_id", "reason", "code", "open_ms"},
		"shutdown: streams closed":    {"streams"},
		"shutdown: sequencer flushed": {"queued", "messages_committed", "failed"},
		"chatd stopped":               {},
	} {
		m, ok := lines[msg]
		if !ok {
			t.Errorf("no %q line in:\n%s", msg, out)
			continue
		}
		for _, k := range keys {
			if _, ok := m[k]; !ok {
				t.Errorf("%q has no %q: %v", msg, k, m)
			}
		}
	}
	if m := lines["stream closed by server"]; m != nil && (m["user_id"] != "alice" || m["code"] != "ResourceExhausted") {
		t.Errorf("eviction line %v", m)
	}
	if m := lines["shutdown: sequencer flushed"]; m != nil && m["messages_committed"] != float64(1) {
		t.Errorf("sequencer line %v, want 1 message committed", m)
	}
}
