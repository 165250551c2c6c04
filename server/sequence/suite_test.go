package sequence_test

import (
	"testing"

	"github.com/chatd/chatd/server/sequence"
	"github.com/chatd/chatd/server/sequence/sequencetest"
	"github.com/chatd/chatd/server/store"
)

// TestLocalAllocatorSuite runs the allocator suite against the single-node
// allocator (the same suite runs against sequence/redis).
func TestLocalAllocatorSuite(t *testing.T) {
	sequencetest.Run(t, sequencetest.Harness{
		New:   func(_ testing.TB, st store.Messages) sequence.Allocator { return sequence.NewLocalAllocator(st) },
		Dense: true,
	})
}
