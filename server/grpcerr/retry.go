package grpcerr

import (
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/status"
)

// RetryDelay returns the retry_delay of err's google.rpc.RetryInfo detail,
// and whether it has one.
func RetryDelay(err error) (time.Duration, bool) {
	st, ok := status.FromError(Status(err))
	if !ok {
		return 0, false
	}
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			return ri.GetRetryDelay().AsDuration(), true
		}
	}
	return 0, false
}

// WithField returns err as Status makes it, with a google.rpc.BadRequest
// detail naming field (the request field at fault, a proto field path
// such as "send.text") and the status message as its description,
// besides any detail it already has. For a domain error prefer
// store.Error.WithField; this is for the services' own status errors. An
// empty field, or an err Status leaves as a plain error, returns
// Status(err) unchanged.
func WithField(err error, field string) error {
	err = Status(err)
	st, ok := status.FromError(err)
	if !ok || st == nil || field == "" {
		return err
	}
	v := &errdetails.BadRequest_FieldViolation{Field: field, Description: st.Message()}
	if ds, derr := st.WithDetails(&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{v}}); derr == nil {
		return ds.Err()
	}
	return err
}
