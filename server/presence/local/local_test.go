package local_test

import (
	"testing"

	"github.com/chatd/chatd/server/presence"
	"github.com/chatd/chatd/server/presence/local"
	"github.com/chatd/chatd/server/presence/presencetest"
)

func factory(t *testing.T, n int) []presence.Engine {
	if n != 1 {
		t.Fatalf("the local engine is single-node; asked for %d servers", n)
	}
	return []presence.Engine{local.New()}
}

func TestConformance(t *testing.T) {
	presencetest.RunSingle(t, factory)
}

// TestCase_C201: a device that stops heartbeating without closing its
// stream goes offline within the grace period, last_active_at = its last
// heartbeat, and its stream is told to end.
func TestCase_C201(t *testing.T) {
	presencetest.TestSilentDevice(t, factory)
}
