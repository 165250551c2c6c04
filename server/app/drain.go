package app

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"time"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/chatd/chatd/server/discovery"
	"github.com/chatd/chatd/server/hub"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
)

// Draining moves this server's devices to the others before it stops:
//
//  1. the server marks itself DRAINING: admission refuses every new Chat
//     stream (Unavailable), health reports NOT_SERVING (/readyz fails), and
//     the Discovery record says DRAINING at once (a beat right now: this
//     server stops ranking itself, the others within their next beat, 1 s);
//  2. over the first drainSpread of the window it sends every open stream
//     a Drain frame, evenly spaced, each with a small jittered reconnect
//     delay and the best endpoints for it (Discovery's ranking, without
//     this server), so its devices arrive elsewhere as a trickle that the
//     others' admission control lets through, not as a stampede;
//  3. when every stream is gone, or the window is over, it stops as Close
//     does: what is left is closed with Unavailable, in-flight unary calls
//     and sends finish, the sequencer flushes its last group commit.

// drainSpread is the part of the drain window over which Drain frames are
// sent; the rest leaves the last devices time to move.
const drainSpread = 0.7

// drainJitter bounds the jittered reconnect delay in a Drain frame.
const drainJitter = 500 * time.Millisecond

// drainEndpoints is how many endpoints a Drain frame names.
const drainEndpoints = 3

// Drain starts draining (see above) and returns at once; Drained is closed
// when the drain is over and the server may stop. Calling it again does
// nothing. It returns the streams open when the drain began.
func (a *App) Drain() int {
	n := 0
	a.drainOnce.Do(func() {
		a.draining.Store(true)
		a.admission.Drain()
		a.health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
		if a.registryBeat != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			if err := a.registryBeat(ctx); err != nil {
				a.log.Warn("drain: publishing DRAINING failed; the others learn it when the lease lapses", "err", err)
			}
			cancel()
		}
		sessions := a.hub.Sessions()
		n = len(sessions)
		a.drainStreams = n
		a.log.Info("draining", "streams", n, "window", a.cfg.DrainWindow)
		go a.drain(sessions)
	})
	return n
}

// Hurry cuts a drain short: Run stops waiting for the drain window and
// closes at once as Close does (the streams left end with Unavailable,
// in-flight sends finish, the sequencer flushes its last group commit, so
// nothing acknowledged is lost). chatd calls it on a second SIGTERM or
// SIGINT, as operators expect of a second Ctrl-C. Safe to call more than
// once, and before a drain (the next drain then ends at once).
func (a *App) Hurry() { a.hurryOnce.Do(func() { close(a.hurry) }) }

// Drained is closed when a drain has moved every device off or its window
// is over.
func (a *App) Drained() <-chan struct{} { return a.drained }

func (a *App) drain(sessions []*hub.Session) {
	defer close(a.drained)
	start := time.Now()
	end := start.Add(a.cfg.DrainWindow)
	spread := time.Duration(float64(a.cfg.DrainWindow) * drainSpread)
	rand.Shuffle(len(sessions), func(i, j int) { sessions[i], sessions[j] = sessions[j], sessions[i] })
	for i, s := range sessions {
		if len(sessions) > 1 {
			at := start.Add(spread * time.Duration(i) / time.Duration(len(sessions)))
			if d := time.Until(at); d > 0 {
				time.Sleep(d)
			}
		}
		// The view is refreshed every second; it lists this server as
		// DRAINING unless the beat at the start failed, so drop it anyway.
		eps := slices.DeleteFunc(discovery.Rank(a.discReg.View(), a.cfg.Zone, nil), func(e *chatv1.Endpoint) bool {
			return e.GetServerId() == a.cfg.ServerID
		})
		if len(eps) > drainEndpoints {
			eps = eps[:drainEndpoints]
		}
		s.TryEnqueue(hub.Item{Frame: &chatv1.ServerFrame{Payload: &chatv1.ServerFrame_Drain{Drain: &chatv1.Drain{
			ReconnectDelayMs: uint32(rand.N(drainJitter) / time.Millisecond),
			Endpoints:        eps,
			ServerId:         a.cfg.ServerID,
		}}}})
	}
	for a.hub.Count() > 0 && time.Now().Before(end) {
		time.Sleep(50 * time.Millisecond)
	}
	a.log.Info("drain over", "streams_left", a.hub.Count(), "took", time.Since(start).Round(time.Millisecond))
}

// adminService is AdminService, served only on the admin listener.
type adminService struct {
	chatv1.UnimplementedAdminServiceServer
	a *App
}

// DrainServer starts the drain (see App.Drain); the server exits when it is
// over, as after SIGTERM.
func (s adminService) DrainServer(context.Context, *chatv1.DrainServerRequest) (*chatv1.DrainServerResponse, error) {
	s.a.Drain()
	return &chatv1.DrainServerResponse{
		ServerId: s.a.cfg.ServerID,
		Streams:  uint64(s.a.drainStreams),
		WindowMs: uint64(s.a.cfg.DrainWindow / time.Millisecond),
	}, nil
}

// listenAdmin binds the admin listener (Config.AdminAddr) and builds its
// gRPC server: AdminService only, with the same error mapping.
func (a *App) listenAdmin() error {
	if a.cfg.AdminAddr == "" {
		return nil
	}
	l, err := net.Listen("tcp", a.cfg.AdminAddr)
	if err != nil {
		return fmt.Errorf("listen admin %s: %w", a.cfg.AdminAddr, err)
	}
	a.adminLis = l
	a.adminServer = grpc.NewServer()
	chatv1.RegisterAdminServiceServer(a.adminServer, adminService{a: a})
	reflection.Register(a.adminServer) // grpcurl works on it without the .proto files
	return nil
}

// AdminAddr is the bound admin address ("" without an admin listener).
func (a *App) AdminAddr() string {
	if a.adminLis == nil {
		return ""
	}
	return a.adminLis.Addr().String()
}
