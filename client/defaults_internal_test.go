package client

import (
	"testing"

	"github.com/chatd/chatd/server/presence"
)

// TestHeartbeatFallbackIsTheServerDefault: the interval a session uses
// when the Welcome names none is the server's default. Only this test
// imports the server package: the SDK itself does not.
func TestHeartbeatFallbackIsTheServerDefault(t *testing.T) {
	if defaultHeartbeat != presence.DefaultHeartbeatInterval {
		t.Fatalf("client defaultHeartbeat %v, server presence.DefaultHeartbeatInterval %v", defaultHeartbeat, presence.DefaultHeartbeatInterval)
	}
}
