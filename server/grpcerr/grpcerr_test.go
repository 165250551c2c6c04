package grpcerr_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/chatd/chatd/server/grpcerr"
	"github.com/chatd/chatd/server/store"
)

// TestTable: every domain code maps to its gRPC counterpart, with the
// message unchanged and the cause not sent.
func TestTable(t *testing.T) {
	for c, want := range map[store.Code]codes.Code{
		store.CodeInvalid:            codes.InvalidArgument,
		store.CodeUnauthenticated:    codes.Unauthenticated,
		store.CodePermissionDenied:   codes.PermissionDenied,
		store.CodeNotFound:           codes.NotFound,
		store.CodeAlreadyExists:      codes.AlreadyExists,
		store.CodeFailedPrecondition: codes.FailedPrecondition,
		store.CodeResourceExhausted:  codes.ResourceExhausted,
		store.CodeUnavailable:        codes.Unavailable,
		store.CodeCanceled:           codes.Canceled,
		store.CodeDeadlineExceeded:   codes.DeadlineExceeded,
		store.CodeInternal:           codes.Internal,
		"no such code":               codes.Unknown,
	} {
		err := &store.Error{Code: c, Message: "msg " + string(c), Err: errors.New("secret cause")}
		st := status.Convert(grpcerr.Status(fmt.Errorf("wrapped: %w", err)))
		if st.Code() != want || st.Message() != "msg "+string(c) {
			t.Errorf("%q: got %v %q, want %v %q", c, st.Code(), st.Message(), want, "msg "+string(c))
		}
		if grpcerr.Code(err) != want || grpcerr.CodeOf(c) != want {
			t.Errorf("%q: Code %v, CodeOf %v, want %v", c, grpcerr.Code(err), grpcerr.CodeOf(c), want)
		}
	}
}

// TestPassThrough: what is not a domain error keeps the meaning gRPC gave
// it before the table existed.
func TestPassThrough(t *testing.T) {
	if grpcerr.Status(nil) != nil || grpcerr.Code(nil) != codes.OK {
		t.Error("nil is not OK")
	}
	st := status.Error(codes.NotFound, "no such user")
	if grpcerr.Status(st) != st {
		t.Error("a status error was changed")
	}
	plain := errors.New("boom")
	if grpcerr.Status(plain) != plain || grpcerr.Code(plain) != codes.Unknown {
		t.Error("a plain error is not left to gRPC (Unknown)")
	}
	if grpcerr.Code(store.ErrNotFound) != codes.Unknown || grpcerr.Known(store.ErrNotFound) {
		t.Error("a bare sentinel is mapped: its text is not a client message")
	}
	for _, ce := range []error{context.Canceled, context.DeadlineExceeded} {
		want := status.FromContextError(ce)
		got := grpcerr.Convert(fmt.Errorf("x: %w", ce))
		if got.Code() != want.Code() {
			t.Errorf("%v: got %v, want %v", ce, got.Code(), want.Code())
		}
	}
	if !grpcerr.Known(store.Errorf(store.CodeUnavailable, "retry")) || !grpcerr.Known(st) || grpcerr.Known(status.Error(codes.Unknown, "x")) {
		t.Error("Known")
	}
}

func TestInterceptors(t *testing.T) {
	derr := store.Errorf(store.CodeResourceExhausted, "rate limit exceeded")
	_, err := grpcerr.UnaryServerInterceptor()(context.Background(), nil, &grpc.UnaryServerInfo{},
		func(context.Context, any) (any, error) { return nil, derr })
	if st := status.Convert(err); st.Code() != codes.ResourceExhausted || st.Message() != "rate limit exceeded" {
		t.Errorf("unary: %v", err)
	}
	resp, err := grpcerr.UnaryServerInterceptor()(context.Background(), nil, &grpc.UnaryServerInfo{},
		func(context.Context, any) (any, error) { return "ok", nil })
	if resp != "ok" || err != nil {
		t.Errorf("unary success: %v %v", resp, err)
	}
	err = grpcerr.StreamServerInterceptor()(nil, nil, &grpc.StreamServerInfo{},
		func(any, grpc.ServerStream) error { return store.Errorf(store.CodeUnauthenticated, "session revoked") })
	if st := status.Convert(err); st.Code() != codes.Unauthenticated || st.Message() != "session revoked" {
		t.Errorf("stream: %v", err)
	}
}

// TestReason: an *store.Error with a Reason becomes a status with a
// google.rpc.ErrorInfo detail {reason, domain "chatd"}, which Reason reads
// back (from the domain error and from the status a client receives);
// errors without one have no detail.
func TestReason(t *testing.T) {
	err := store.Errorf(store.CodeResourceExhausted, "replaced").WithReason(store.ReasonStreamReplaced)
	st := status.Convert(grpcerr.Status(fmt.Errorf("wrapped: %w", err)))
	if st.Code() != codes.ResourceExhausted || st.Message() != "replaced" {
		t.Fatalf("status %v", st)
	}
	var info *errdetails.ErrorInfo
	for _, d := range st.Details() {
		if i, ok := d.(*errdetails.ErrorInfo); ok {
			info = i
		}
	}
	if info == nil || info.GetReason() != store.ReasonStreamReplaced || info.GetDomain() != grpcerr.Domain || grpcerr.Domain != "chatd" {
		t.Fatalf("details %v, want ErrorInfo{%s, chatd}", st.Details(), store.ReasonStreamReplaced)
	}
	if got := grpcerr.Reason(st.Err()); got != store.ReasonStreamReplaced {
		t.Fatalf("Reason(status) = %q", got)
	}
	if got := grpcerr.Reason(err); got != store.ReasonStreamReplaced {
		t.Fatalf("Reason(domain error) = %q", got)
	}
	plain := status.Convert(grpcerr.Status(store.Errorf(store.CodeResourceExhausted, "overflow")))
	if len(plain.Details()) != 0 || grpcerr.Reason(plain.Err()) != "" {
		t.Fatalf("an error without a reason got details %v", plain.Details())
	}
}

// TestDetails (issue 17): a field and a retry delay of a domain error
// reach the client as google.rpc.BadRequest and google.rpc.RetryInfo,
// beside the ErrorInfo of its reason.
func TestDetails(t *testing.T) {
	err := store.Errorf(store.CodeResourceExhausted, "slow down").WithReason(store.ReasonRateLimited).
		WithRetryAfter(20 * time.Millisecond).WithField("send.text")
	st := status.Convert(grpcerr.Status(err))
	var info *errdetails.ErrorInfo
	var bad *errdetails.BadRequest
	var retry *errdetails.RetryInfo
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			info = d
		case *errdetails.BadRequest:
			bad = d
		case *errdetails.RetryInfo:
			retry = d
		}
	}
	if info.GetReason() != store.ReasonRateLimited || len(bad.GetFieldViolations()) != 1 ||
		bad.GetFieldViolations()[0].GetField() != "send.text" || bad.GetFieldViolations()[0].GetDescription() != "slow down" ||
		retry.GetRetryDelay().AsDuration() != 20*time.Millisecond {
		t.Fatalf("details %v", st.Details())
	}
	if ds := grpcerr.Details(store.Errorf(store.CodeInvalid, "plain")); len(ds) != 0 {
		t.Fatalf("a plain error got details %v", ds)
	}
}
