package grpcerr_test

import (
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/chatd/chatd/server/grpcerr"
	"github.com/chatd/chatd/server/store"
)

// TestRetryDelay: a domain error with RetryAfter gets its code and a
// RetryInfo detail (keeping its ErrorInfo), which RetryDelay reads back;
// no delay, no detail.
func TestRetryDelay(t *testing.T) {
	e := store.Errorf(store.CodeResourceExhausted, "busy").WithReason("X")
	err := grpcerr.Status(e.WithRetryAfter(1500 * time.Millisecond))
	if grpcerr.Code(err) != codes.ResourceExhausted || grpcerr.Reason(err) != "X" {
		t.Fatalf("%v: code %v reason %q", err, grpcerr.Code(err), grpcerr.Reason(err))
	}
	if d, ok := grpcerr.RetryDelay(err); !ok || d != 1500*time.Millisecond {
		t.Fatalf("retry delay %v %v", d, ok)
	}
	if _, ok := grpcerr.RetryDelay(grpcerr.Status(e.WithRetryAfter(0))); ok {
		t.Fatal("a zero delay added a RetryInfo")
	}
}
