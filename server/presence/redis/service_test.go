package redis_test

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/chatd/chatd/server/auth"
	"github.com/chatd/chatd/server/grpcerr"
	"github.com/chatd/chatd/server/presence"
	"github.com/chatd/chatd/server/presence/presencesvc"
	"github.com/chatd/chatd/server/presence/presencetest"
	"github.com/chatd/chatd/server/store/pebble"
)

// asUser is a test interceptor that makes every call come from user.
func asUser(user string) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		return h(srv, &principalStream{ss, auth.NewContext(ss.Context(), auth.Principal{UserID: user, DeviceID: user + "-phone"})})
	}
}

type principalStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *principalStream) Context() context.Context { return s.ctx }

// TestCase_C202_Service is C202 end to end through the PresenceService:
// alice watches bob over gRPC on server B; bob is connected to server A;
// A is killed; alice's stream reports bob OFFLINE.
func TestCase_C202_Service(t *testing.T) {
	prefix := backend(t)
	ss := presencetest.Servers(t, func(*testing.T, int) []presence.Engine {
		return []presence.Engine{newEngine(t, prefix, 0, nil), newEngine(t, prefix, 1, nil)}
	}, 2)
	a, b := ss[0], ss[1]
	st, err := pebble.Open(t.TempDir(), pebble.WithCacheSize(1<<20), pebble.WithMemTableSize(1<<20))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := st.AddContact(ctx, "bob", "alice"); err != nil {
		t.Fatal(err)
	}
	svc, err := presencesvc.New(presencesvc.Config{Engine: b.T.Engine(), Store: st})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.ChainStreamInterceptor(grpcerr.StreamServerInterceptor(), asUser("alice")))
	chatv1.RegisterPresenceServiceServer(srv, svc)
	go srv.Serve(lis)
	defer srv.Stop()
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	s, err := chatv1.NewPresenceServiceClient(cc).Subscribe(ctx, &chatv1.SubscribeRequest{UserIds: []string{"bob"}})
	if err != nil {
		t.Fatal(err)
	}
	next := func() *chatv1.Presence {
		t.Helper()
		r, err := s.Recv()
		if err != nil {
			t.Fatalf("Recv: %v", err)
		}
		return r.GetPresence()
	}
	if p := next(); p.GetStatus() != chatv1.PresenceStatus_PRESENCE_STATUS_OFFLINE {
		t.Fatalf("initial: %v", p)
	}
	c := presencetest.Connect(t, a, "bob", "bob-phone")
	c.Beat()
	if p := next(); p.GetStatus() != chatv1.PresenceStatus_PRESENCE_STATUS_ONLINE {
		t.Fatalf("bob connected to A: %v", p)
	}
	killed := time.Now()
	a.Close() // like SIGKILL: no Down, no more lease renewals
	p := next()
	if p.GetStatus() != chatv1.PresenceStatus_PRESENCE_STATUS_OFFLINE || p.GetLastActiveAt() == nil {
		t.Fatalf("after A was killed: %v", p)
	}
	t.Logf("bob OFFLINE on alice's stream %s after server A was killed", time.Since(killed).Round(time.Millisecond))
}
