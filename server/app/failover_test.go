package app_test

import (
	"context"
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/chatd/chatd/server/app"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
)

// startAppWith starts an in-process server on loopback ports with cfg
// (listeners, data dir and logger filled in).
func startAppWith(t *testing.T, cfg app.Config) *app.App {
	t.Helper()
	cfg.GRPCAddr, cfg.HTTPAddr, cfg.DataDir = "127.0.0.1:0", "127.0.0.1:0", t.TempDir()
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	a, err := app.New(cfg)
	if err != nil {
		t.Fatalf("app.New: %v", err)
	}
	a.Start()
	t.Cleanup(func() { _ = a.Close() })
	return a
}

// openErr opens a Chat stream for u and returns the error it fails with
// (nil if a Welcome arrives).
func openErr(u *user) error {
	ctx, cancel := context.WithTimeout(u.ctx(context.Background()), 10*time.Second)
	defer cancel()
	s, err := chatv1.NewChatServiceClient(u.cc).Chat(ctx)
	if err != nil {
		return err
	}
	_, err = s.Recv()
	return err
}

func retryDelay(err error) (time.Duration, bool) {
	for _, d := range status.Convert(err).Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			return ri.GetRetryDelay().AsDuration(), true
		}
	}
	return 0, false
}

// TestAdmission: past the token bucket's burst a new stream gets
// ResourceExhausted with a RetryInfo saying when a token is free; past
// the capacity, ResourceExhausted with a delay of 1-2 s; Discovery
// reports the capacity and load.
func TestAdmission(t *testing.T) {
	a := startAppWith(t, app.Config{StreamRate: 1, StreamBurst: 2})
	cc := dial(t, a.GRPCAddr())
	u := signUpLogIn(t, cc, "alice", "phone")
	for i := range 2 {
		if err := openErr(u); err != nil {
			t.Fatalf("stream %d within the burst: %v", i, err)
		}
	}
	err := openErr(u)
	d, ok := retryDelay(err)
	if status.Code(err) != codes.ResourceExhausted || !ok || d <= 0 || d > time.Second {
		t.Fatalf("past the burst: %v, retry delay %v %v (want ResourceExhausted, 0 < delay <= 1s)", err, d, ok)
	}

	b := startAppWith(t, app.Config{MaxStreams: 1})
	ccb := dial(t, b.GRPCAddr())
	v := signUpLogIn(t, ccb, "bob", "phone")
	openStream(t, v)
	err = openErr(v)
	d, ok = retryDelay(err)
	if status.Code(err) != codes.ResourceExhausted || !ok || d < time.Second || d >= 2*time.Second {
		t.Fatalf("past the capacity: %v, retry delay %v %v", err, d, ok)
	}
	resp, err := chatv1.NewDiscoveryServiceClient(ccb).GetEndpoints(context.Background(), &chatv1.GetEndpointsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if e := resp.GetEndpoints()[0]; e.GetCapacity() != 1 || e.GetLoad() != 1 || e.GetState() != chatv1.ServerState_SERVER_STATE_SERVING {
		t.Fatalf("endpoint %v", e)
	}
}

// TestAdminDrain: DrainServer on the admin listener (not on the public
// port) sends every open stream a Drain frame within the window, refuses
// new streams with Unavailable, takes the server out of Discovery, and
// the drain ends once the devices have left.
func TestAdminDrain(t *testing.T) {
	a := startAppWith(t, app.Config{AdminAddr: "127.0.0.1:0", DrainWindow: 2 * time.Second})
	cc := dial(t, a.GRPCAddr())
	u := signUpLogIn(t, cc, "alice", "phone")
	s1, s2 := openStream(t, u), openStream(t, logIn(t, cc, "alice", "laptop"))

	// The public port does not serve AdminService.
	if _, err := chatv1.NewAdminServiceClient(cc).DrainServer(context.Background(), &chatv1.DrainServerRequest{}); status.Code(err) != codes.Unimplemented {
		t.Fatalf("DrainServer on the public port: %v, want Unimplemented", err)
	}
	// The admin listener serves reflection, so that grpcurl needs no .proto
	// files for the command docs/operations.md shows.
	rs, err := reflectionpb.NewServerReflectionClient(dial(t, a.AdminAddr())).ServerReflectionInfo(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := rs.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	lr, err := rs.Recv()
	if err != nil {
		t.Fatalf("reflection on the admin listener: %v", err)
	}
	if !slices.ContainsFunc(lr.GetListServicesResponse().GetService(), func(s *reflectionpb.ServiceResponse) bool { return s.GetName() == "chat.v1.AdminService" }) {
		t.Fatalf("reflection lists %v, want chat.v1.AdminService", lr.GetListServicesResponse().GetService())
	}
	_ = rs.CloseSend()
	start := time.Now()
	resp, err := chatv1.NewAdminServiceClient(dial(t, a.AdminAddr())).DrainServer(context.Background(), &chatv1.DrainServerRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetStreams() != 2 || resp.GetWindowMs() != 2000 || resp.GetServerId() != a.ServerID() {
		t.Fatalf("DrainServer: %v", resp)
	}
	for _, st := range []*stream{s1, s2} {
		for {
			f, err := st.s.Recv()
			if err != nil {
				t.Fatalf("stream ended before a Drain frame: %v", err)
			}
			if dr := f.GetDrain(); dr != nil {
				if dr.GetServerId() != a.ServerID() || dr.GetReconnectDelayMs() > 500 {
					t.Fatalf("drain frame %v", dr)
				}
				break
			}
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("drain frame after %v, window 2s", d)
		}
	}
	if err := openErr(u); status.Code(err) != codes.Unavailable {
		t.Fatalf("new stream while draining: %v, want Unavailable", err)
	}
	if _, err := chatv1.NewDiscoveryServiceClient(cc).GetEndpoints(context.Background(), &chatv1.GetEndpointsRequest{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("Discovery while draining: %v, want Unavailable (no serving server)", err)
	}
	// The devices leave (half-close): the drain is over before its window.
	for _, st := range []*stream{s1, s2} {
		_ = st.s.CloseSend()
		for {
			if _, err := st.s.Recv(); err != nil {
				break
			}
		}
	}
	select {
	case <-a.Drained():
	case <-time.After(5 * time.Second):
		t.Fatal("drain not over 5 s after the devices left")
	}
}
