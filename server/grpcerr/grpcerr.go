// Package grpcerr is the gRPC edge's one table from domain error codes
// (store.Code) to gRPC status codes, and the server interceptors that
// apply it to every handler's error.
//
// Engines and services below the edge return *store.Error values (and
// the store sentinels and context errors); the gRPC services, their
// interceptors and server/app turn them into statuses here, so the code
// and message a client sees are chosen in one place.
//
// It imports only server/store and gRPC; every gRPC service and app may
// import it, nothing below the edge may.
package grpcerr

import (
	"context"
	"errors"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/chatd/chatd/server/store"
)

// Domain is the ErrorInfo domain of the reasons chatd sends (see Status).
const Domain = "chatd"

// codeOf is the mapping table: every store.Code and its gRPC code.
var codeOf = map[store.Code]codes.Code{
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
}

// CodeOf returns the gRPC code of a domain code (Unknown for a code not in
// the table).
func CodeOf(c store.Code) codes.Code {
	if gc, ok := codeOf[c]; ok {
		return gc
	}
	return codes.Unknown
}

// Status returns err as a gRPC status error:
//   - nil for nil;
//   - for an *store.Error in err's chain, its Code's gRPC code with its
//     Message (the cause is not sent) and its Details (ErrorInfo,
//     BadRequest, RetryInfo);
//   - a gRPC status error unchanged;
//   - for context.Canceled / DeadlineExceeded, Canceled / DeadlineExceeded
//     (as status.FromContextError, and as gRPC does for a handler's
//     context error);
//   - any other error unchanged: gRPC reports it as Unknown with its text,
//     as it always has. Services map the store sentinels themselves, with
//     the message they choose.
func Status(err error) error {
	if err == nil {
		return nil
	}
	var e *store.Error
	if errors.As(err, &e) {
		st := status.New(CodeOf(e.Code), e.Message)
		if ds := Details(e); len(ds) > 0 {
			if d, derr := st.WithDetails(ds...); derr == nil {
				st = d
			}
		}
		return st.Err()
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return status.FromContextError(err).Err()
	}
	return err
}

// Details returns the google.rpc error details of a domain error, the one
// table of what a client reads besides the code and message:
//   - google.rpc.ErrorInfo {reason: e.Reason, domain: Domain} when e has
//     a Reason;
//   - google.rpc.BadRequest with one field violation {field: e.Field,
//     description: e.Message} when e.Field is set;
//   - google.rpc.RetryInfo {retry_delay: e.RetryAfter} when it is positive.
func Details(e *store.Error) []protoadapt.MessageV1 {
	var ds []protoadapt.MessageV1
	if e.Reason != "" {
		ds = append(ds, &errdetails.ErrorInfo{Reason: e.Reason, Domain: Domain})
	}
	if e.Field != "" {
		ds = append(ds, &errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{
			{Field: e.Field, Description: e.Message},
		}})
	}
	if e.RetryAfter > 0 {
		ds = append(ds, &errdetails.RetryInfo{RetryDelay: durationpb.New(e.RetryAfter)})
	}
	return ds
}

// Convert is Status as a *status.Status (OK for nil).
func Convert(err error) *status.Status { return status.Convert(Status(err)) }

// Reason returns the google.rpc.ErrorInfo reason of err (of domain
// Domain) as a client sees it: the Reason of an *store.Error, or the
// ErrorInfo detail of a status; "" when there is none.
func Reason(err error) string {
	st, ok := status.FromError(Status(err))
	if !ok {
		return ""
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == Domain {
			return info.GetReason()
		}
	}
	return ""
}

// Code returns the gRPC code a client sees for err: OK for nil, Unknown
// for an error Status leaves unchanged.
func Code(err error) codes.Code { return status.Code(Status(err)) }

// Known reports whether err carries a code and message meant for the
// client: an *store.Error, or a gRPC status other than Unknown. Other
// errors (store sentinels, driver errors) are the service's to log and
// map.
func Known(err error) bool {
	var e *store.Error
	if errors.As(err, &e) {
		return true
	}
	_, ok := status.FromError(err)
	return ok && status.Code(err) != codes.Unknown
}

// UnaryServerInterceptor maps the error of every unary call (of the
// handler and of the interceptors after this one) with Status. Install it
// first in the chain.
func UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		resp, err := handler(ctx, req)
		return resp, Status(err)
	}
}

// StreamServerInterceptor is UnaryServerInterceptor for streams: the error
// a stream ends with.
func StreamServerInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		return Status(handler(srv, ss))
	}
}
