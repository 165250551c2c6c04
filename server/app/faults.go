//go:build !chatd_faults

package app

import (
	"github.com/chatd/chatd/server/store"
	"github.com/chatd/chatd/server/store/scylla"
)

// faultHook is the cluster store's fault-injection hook: none in a normal
// build. See faults_on.go (-tags chatd_faults) for the test build.
func faultHook() func(scylla.WriteStep, *store.Batch) { return nil }
