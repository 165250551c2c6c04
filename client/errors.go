package client

import (
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/status"
)

// ErrorDomain is the google.rpc.ErrorInfo domain of the reasons chatd
// puts on some statuses (see Reason).
const ErrorDomain = "chatd"

// Reasons a status from chatd may carry (Reason). They are stable: see
// the ChatService.Chat comment in proto/chat/v1/chat.proto.
const (
	// ReasonStreamReplaced (ResourceExhausted): the same device opened a
	// newer Chat stream and has more than the server allows; this one, its
	// oldest, was closed. Reconnecting would only evict the next one: do
	// not reconnect it (IsEvicted).
	ReasonStreamReplaced = "STREAM_REPLACED"
	// ReasonTokenExpired (Unauthenticated): the device's token expired;
	// log in again.
	ReasonTokenExpired = "TOKEN_EXPIRED"
	// ReasonDeviceRevoked (Unauthenticated): the device was logged out, by
	// itself or by another device of the user; log in again.
	ReasonDeviceRevoked = "DEVICE_REVOKED"
	// ReasonSlowConsumer (ResourceExhausted): the stream's send queue
	// overflowed; reconnect and sync.
	ReasonSlowConsumer = "SLOW_CONSUMER"
	// ReasonRateLimited (ResourceExhausted): too many calls, stream opens
	// or frames; wait the RetryInfo delay before retrying.
	ReasonRateLimited = "RATE_LIMITED"
	// ReasonServerShutdown (Unavailable): the server is stopping;
	// reconnect (through Discovery).
	ReasonServerShutdown = "SERVER_SHUTDOWN"
)

// Reason returns the reason of the google.rpc.ErrorInfo detail (of domain
// ErrorDomain) of err's gRPC status, or "" when it has none.
func Reason(err error) string {
	st, ok := status.FromError(err)
	if !ok || st == nil {
		return ""
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == ErrorDomain {
			return info.GetReason()
		}
	}
	return ""
}

// IsEvicted reports whether err ended a stream because the same device
// opened a newer one (ReasonStreamReplaced). A client must not reconnect
// after it: the newer stream would be evicted in turn, and so on.
func IsEvicted(err error) bool { return Reason(err) == ReasonStreamReplaced }
