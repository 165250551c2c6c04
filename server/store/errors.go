package store

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Code classifies a domain error: what went wrong, in terms a caller can
// act on. The gRPC edge (server/grpcerr) maps each Code to one gRPC code;
// engines and services below it never see gRPC types.
type Code string

// The codes of the domain. The gRPC code each one maps to is in the table
// of server/grpcerr.
const (
	CodeInvalid            Code = "invalid"             // the input breaks a rule
	CodeUnauthenticated    Code = "unauthenticated"     // no valid credentials
	CodePermissionDenied   Code = "permission_denied"   // authenticated, not allowed
	CodeNotFound           Code = "not_found"           // the thing does not exist
	CodeAlreadyExists      Code = "already_exists"      // conflict: it exists already
	CodeFailedPrecondition Code = "failed_precondition" // the state does not allow it
	CodeResourceExhausted  Code = "resource_exhausted"  // a limit or quota is reached
	CodeUnavailable        Code = "unavailable"         // transient: retry
	CodeCanceled           Code = "canceled"            // the caller gave up
	CodeDeadlineExceeded   Code = "deadline_exceeded"   // the caller's deadline passed
	CodeInternal           Code = "internal"            // a bug or an unexpected failure
)

// Error is a domain error with a code and a message a client may see (the
// edge sends Message as it is, with the code's gRPC counterpart). Err is
// an optional cause, for errors.Is/As and logs; it is never sent.
//
// Reason, when set, is a stable machine-readable name of this particular
// cause (UPPER_SNAKE_CASE, e.g. ReasonStreamReplaced), for clients that
// must tell it apart from other errors of the same code; the edge sends it
// as a google.rpc.ErrorInfo detail (server/grpcerr). Reasons are part of
// the API: once published, one is never renamed.
//
// Field, when set, names the request field that broke a rule (the proto
// field name, a path such as "send.text" for a nested one, "*" for the
// whole body); the edge sends it as a google.rpc.BadRequest field
// violation. RetryAfter, when positive, is how long the client should wait
// before retrying (a rate limit); the edge sends it as a
// google.rpc.RetryInfo detail.
type Error struct {
	Code       Code
	Message    string
	Err        error
	Reason     string
	Field      string
	RetryAfter time.Duration
}

// Reasons of the errors that carry one (Error.Reason). They are documented
// in proto/chat/v1/chat.proto, where clients read them.
const (
	// ReasonStreamReplaced: the device opened a newer Chat stream and has
	// too many; this one, its oldest, was closed. Do not reconnect it.
	ReasonStreamReplaced = "STREAM_REPLACED"
	// ReasonTokenExpired: the stream's bearer token expired.
	ReasonTokenExpired = "TOKEN_EXPIRED"
	// ReasonDeviceRevoked: the device was logged out (by itself or by
	// another device of the user).
	ReasonDeviceRevoked = "DEVICE_REVOKED"
	// ReasonRateLimited: too many calls or frames; wait RetryAfter (a
	// google.rpc.RetryInfo) before retrying.
	ReasonRateLimited = "RATE_LIMITED"
	// ReasonSlowConsumer: the stream's send queue overflowed (the device
	// did not read fast enough); reconnect and sync.
	ReasonSlowConsumer = "SLOW_CONSUMER"
	// ReasonServerShutdown: the server is stopping; reconnect (to another
	// server, see Discovery).
	ReasonServerShutdown = "SERVER_SHUTDOWN"
)

// Errorf returns an *Error with code and the formatted message.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// WithReason returns a copy of e with Reason set to reason.
func (e *Error) WithReason(reason string) *Error {
	c := *e
	c.Reason = reason
	return &c
}

// WithField returns a copy of e with Field set to field.
func (e *Error) WithField(field string) *Error {
	c := *e
	c.Field = field
	return &c
}

// WithRetryAfter returns a copy of e with RetryAfter set to d.
func (e *Error) WithRetryAfter(d time.Duration) *Error {
	c := *e
	c.RetryAfter = d
	return &c
}

// Error returns the message, followed by the cause if there is one.
func (e *Error) Error() string {
	if e.Err != nil {
		return e.Message + ": " + e.Err.Error()
	}
	return e.Message
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// ErrorCode returns the code of err: "" for nil; the Code of the first
// *Error in err's chain; for the sentinels, CodeNotFound (ErrNotFound),
// CodeAlreadyExists (ErrAlreadyExists), CodeFailedPrecondition
// (ErrGroupFull), CodeInvalid (ErrInvalidUsername); CodeCanceled and
// CodeDeadlineExceeded for the context errors; CodeInternal otherwise.
func ErrorCode(err error) Code {
	var e *Error
	switch {
	case err == nil:
		return ""
	case errors.As(err, &e):
		return e.Code
	case errors.Is(err, ErrNotFound):
		return CodeNotFound
	case errors.Is(err, ErrAlreadyExists):
		return CodeAlreadyExists
	case errors.Is(err, ErrGroupFull):
		return CodeFailedPrecondition
	case errors.Is(err, ErrInvalidUsername):
		return CodeInvalid
	case errors.Is(err, context.Canceled):
		return CodeCanceled
	case errors.Is(err, context.DeadlineExceeded):
		return CodeDeadlineExceeded
	}
	return CodeInternal
}

// ErrorMessage returns the client-visible message of err: the Message of
// the first *Error in its chain, "" for nil, "internal error" otherwise
// (the text of other errors is not for clients).
func ErrorMessage(err error) string {
	var e *Error
	switch {
	case err == nil:
		return ""
	case errors.As(err, &e):
		return e.Message
	}
	return "internal error"
}
