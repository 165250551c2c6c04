package main

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestServers: "chatctl servers" needs no log-in and lists what Discovery
// recommends: with --json one Endpoint object a line, else a line per
// server with its zone, streams and state.
func TestServers(t *testing.T) {
	a := startServer(t, "127.0.0.1:0", t.TempDir())
	c := newCLI(t, a.GRPCAddr())
	var ep map[string]any
	out := c.ok("--json", "servers")
	if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &ep); err != nil {
		t.Fatalf("servers --json: %q: %v", out, err)
	}
	if ep["serverId"] != a.ServerID() || ep["grpcAddress"] != a.GRPCAddr() || ep["state"] != "SERVER_STATE_SERVING" {
		t.Fatalf("servers --json: %v", ep)
	}
	out = c.ok("servers", "--zone", "z1")
	if !strings.Contains(out, a.ServerID()) || !strings.Contains(out, "zone=-") || !strings.Contains(out, "streams=0") || !strings.Contains(out, "SERVING") {
		t.Fatalf("servers: %q", out)
	}
}
