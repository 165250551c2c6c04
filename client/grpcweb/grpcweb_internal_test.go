package grpcweb

import (
	"encoding/base64"
	"errors"
	"io"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// The trailers of a grpc-web response become the call's status as grpc-go
// makes them: code, message, and the details of grpc-status-details-bin
// (unpadded base64, as grpc-go writes it).
func TestTrailersToStatus(t *testing.T) {
	st, err := status.New(codes.Unauthenticated, "device revoked").WithDetails(&errdetails.ErrorInfo{Reason: "DEVICE_REVOKED", Domain: "chatd"})
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := proto.Marshal(st.Proto())
	bin := base64.RawStdEncoding.EncodeToString(raw)
	md, err := parseHeaders([]byte("grpc-status: 16\r\ngrpc-message: device revoked\r\ngrpc-status-details-bin: " + bin + "\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	got := status.Convert(statusOf(md))
	if got.Code() != codes.Unauthenticated || got.Message() != "device revoked" || len(got.Details()) != 1 ||
		got.Details()[0].(*errdetails.ErrorInfo).GetReason() != "DEVICE_REVOKED" {
		t.Fatalf("status %v details %v", got, got.Details())
	}

	md, _ = parseHeaders([]byte("grpc-status: 0\r\n"))
	if err := statusOf(md); !errors.Is(err, io.EOF) {
		t.Fatalf("OK trailers: %v, want io.EOF", err)
	}
	md, _ = parseHeaders([]byte("grpc-status: 14\r\ngrpc-message: shutting down\r\n"))
	if s := status.Convert(statusOf(md)); s.Code() != codes.Unavailable || s.Message() != "shutting down" {
		t.Fatalf("Unavailable trailers: %v", s)
	}
	md, _ = parseHeaders([]byte("content-type: application/grpc-web+proto\r\n"))
	if s := status.Convert(statusOf(md)); s.Code() != codes.Internal {
		t.Fatalf("trailers without grpc-status: %v, want Internal", s)
	}
}
