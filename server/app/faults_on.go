//go:build chatd_faults

package app

import (
	"os"
	"strings"
	"syscall"

	"github.com/chatd/chatd/server/store"
	"github.com/chatd/chatd/server/store/scylla"
)

// faultHook, in a build with -tags chatd_faults (the cluster chaos tests
// build chatd so), reads CHATD_FAULT_KILL=<step>:<client_message_id>, with
// step one of dedup, messages, inbox: the process SIGKILLs itself right
// after AppendBatch completed that write step of a batch holding a send
// with that client_message_id, as a server dying between two writes.
// Never built into release binaries.
func faultHook() func(scylla.WriteStep, *store.Batch) {
	step, key, ok := strings.Cut(os.Getenv("CHATD_FAULT_KILL"), ":")
	if !ok || key == "" {
		return nil
	}
	return func(s scylla.WriteStep, b *store.Batch) {
		if s.String() != step {
			return
		}
		for _, d := range b.Dedup {
			if d.ClientMessageID == key {
				_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
				select {} // never returns: the process is gone
			}
		}
	}
}
