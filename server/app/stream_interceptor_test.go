package app

import (
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/chatd/chatd/server/auth"
	"github.com/chatd/chatd/server/hub"
	"github.com/chatd/chatd/server/ratelimit"
	"github.com/chatd/chatd/server/store"
	"github.com/chatd/chatd/server/store/pebble"
)

// ctxStream is a grpc.ServerStream that only has a context: the
// interceptor reads nothing else, and the handlers below read only that.
type ctxStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s ctxStream) Context() context.Context { return s.ctx }

// testAuth is an Authenticator over a real store holding user u1's device
// d1, and a token of that device.
func testAuth(t *testing.T) (*auth.Authenticator, string) {
	t.Helper()
	st, err := pebble.Open(t.TempDir(), pebble.WithCacheSize(1<<20), pebble.WithMemTableSize(1<<20))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	now := time.Now()
	if err := st.PutDevice(context.Background(), &store.Device{UserID: "u1", DeviceID: "d1", Name: "n", CreatedAt: now, LastSeenAt: now}); err != nil {
		t.Fatal(err)
	}
	au, err := auth.New(auth.Config{Key: make([]byte, auth.MinKeyLen), Devices: st, TokenTTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	tok, _, err := au.Issue("u1", "d1", now)
	if err != nil {
		t.Fatal(err)
	}
	return au, tok
}

// TestStreamInterceptor checks that the one-frame stream interceptor keeps
// the chain's order and outcomes: authentication before the handler (the
// principal in its context), the rate limit of stream opens, admission of
// Chat streams, panics recovered as Internal, domain errors mapped to
// statuses (also the interceptor's own).
func TestStreamInterceptor(t *testing.T) {
	au, tok := testAuth(t)
	a := &App{auth: au, hub: hub.New(hub.Config{}), cfg: Config{MaxStreams: 1}}
	var panics []any
	onPanic := func(_ context.Context, p any) error {
		panics = append(panics, p)
		return status.Error(codes.Internal, "internal error")
	}
	lim := ratelimit.New(1e-6, 3) // 3 stream opens, then none
	icpt := a.streamInterceptor(onPanic, lim)
	withToken := metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer "+tok))
	chat := &grpc.StreamServerInfo{FullMethod: chatv1.ChatService_Chat_FullMethodName}

	// No token: Unauthenticated, the handler is not called.
	called := false
	err := icpt(nil, ctxStream{ctx: context.Background()}, chat, func(any, grpc.ServerStream) error { called = true; return nil })
	if status.Code(err) != codes.Unauthenticated || called {
		t.Fatalf("no token: %v (handler called: %v), want Unauthenticated before the handler", err, called)
	}
	// A panic in the handler: Internal, through onPanic; the principal is
	// in the handler's context.
	err = icpt(nil, ctxStream{ctx: withToken}, chat, func(_ any, ss grpc.ServerStream) error {
		if p, ok := auth.FromContext(ss.Context()); !ok || p.UserID != "u1" {
			t.Errorf("handler context principal %+v, %v; want u1", p, ok)
		}
		panic("boom")
	})
	if status.Code(err) != codes.Internal || len(panics) != 1 || panics[0] != "boom" {
		t.Fatalf("panic: %v (onPanic got %v), want Internal via onPanic(boom)", err, panics)
	}
	// A domain error from the handler becomes its status. (This open is
	// admitted: the hub has no stream, below MaxStreams.)
	err = icpt(nil, ctxStream{ctx: withToken}, chat, func(any, grpc.ServerStream) error {
		return store.Errorf(store.CodeNotFound, "no such thing")
	})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("domain error: %v, want NotFound", err)
	}
	// The rate limit of stream opens (3 per user) is spent: the 4th open is
	// ResourceExhausted, as a status (grpcerr applies to it too).
	err = icpt(nil, ctxStream{ctx: withToken}, chat, func(any, grpc.ServerStream) error { return nil })
	if err != nil {
		t.Fatalf("3rd open: %v", err)
	}
	err = icpt(nil, ctxStream{ctx: withToken}, chat, func(any, grpc.ServerStream) error { called = true; return nil })
	if _, ok := status.FromError(err); !ok || status.Code(err) != codes.ResourceExhausted || called {
		t.Fatalf("4th open: %v (handler called: %v), want a ResourceExhausted status before the handler", err, called)
	}
	var se *store.Error
	if errors.As(err, &se) {
		t.Fatalf("4th open: %T reached the client unmapped", err)
	}
}

// TestStreamInterceptorAdmission checks that a Chat stream past the
// admission rate is refused with ResourceExhausted, and that other streams
// are not subject to admission.
func TestStreamInterceptorAdmission(t *testing.T) {
	au, tok := testAuth(t)
	a := &App{auth: au, hub: hub.New(hub.Config{}), cfg: Config{StreamRate: 1e-6, StreamBurst: 1}}
	icpt := a.streamInterceptor(func(context.Context, any) error { return nil }, ratelimit.New(1000, 1000))
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer "+tok))
	ok := func(any, grpc.ServerStream) error { return nil }
	chat := &grpc.StreamServerInfo{FullMethod: chatv1.ChatService_Chat_FullMethodName}
	if err := icpt(nil, ctxStream{ctx: ctx}, chat, ok); err != nil {
		t.Fatalf("1st Chat: %v, want admitted", err)
	}
	err := icpt(nil, ctxStream{ctx: ctx}, chat, ok)
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("2nd Chat past the admission rate: %v, want ResourceExhausted", err)
	}
	if err := icpt(nil, ctxStream{ctx: ctx}, &grpc.StreamServerInfo{FullMethod: "/chat.v1.Other/Stream"}, ok); err != nil {
		t.Fatalf("another stream past the Chat admission rate: %v, want admitted", err)
	}
}
