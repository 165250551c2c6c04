// Command grpcfloor is a bare grpc-go server of chat.v1's ChatService, for
// measuring the memory floor of an idle Chat stream that grpc-go allows:
// the same wire protocol and client (chatbench connections) as chatd,
// none of chatd's state. It is a measuring tool, not a server to deploy.
//
// Its Chat handler sends a Welcome and then, on the handler goroutine,
// receives frames and answers each heartbeat with a HeartbeatAck (--mode
// recv: one goroutine of its own per stream, the least a grpc-go bidi
// handler can hold), or does the same on a second goroutine while the
// handler waits in a select (--mode two: chatd's shape before issue 16).
// AccountService's SignUp and LogIn answer at once (any name, any
// password, a fixed token) so that chatbench can set up its devices; the
// Chat stream does not check the token.
//
// Usage:
//
//	grpcfloor --grpc-addr 127.0.0.1:9490 --http-addr 127.0.0.1:8490 [grpc options]
//	chatbench connections --servers 127.0.0.1:9490 --metrics http://127.0.0.1:8490/metrics ...
//
// The HTTP address serves /metrics (the Go and process collectors, as
// chatd's) and /debug/pprof/.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/types/known/timestamppb"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
)

func main() {
	grpcAddr := flag.String("grpc-addr", "127.0.0.1:9490", "gRPC listen address")
	httpAddr := flag.String("http-addr", "127.0.0.1:8490", "HTTP listen address (/metrics, /debug/pprof/)")
	mode := flag.String("mode", "recv", "recv: the handler goroutine receives (one goroutine per stream); two: a reader goroutine receives while the handler waits (chatd's shape before issue 16)")
	chatdOpts := flag.Bool("chatd-options", false, "chatd's transport options: static windows 256 KiB per stream, 1 MiB per connection; keepalive 60 s/20 s; max 64 concurrent streams")
	readBuf := flag.Int("read-buffer", -1, "grpc.ReadBufferSize in bytes (-1: grpc's default, 32 KiB; 0: unbuffered reads)")
	writeBuf := flag.Int("write-buffer", -1, "grpc.WriteBufferSize in bytes (-1: grpc's default, 32 KiB; 0: every frame written at once)")
	shared := flag.Bool("shared-write-buffer", true, "grpc.SharedWriteBuffer (grpc's default since 1.7x: true)")
	window := flag.Int("window", 0, "grpc.InitialWindowSize in bytes, static (0: grpc's default, 64 KiB with BDP estimation)")
	connWindow := flag.Int("conn-window", 0, "grpc.InitialConnWindowSize in bytes, static (0: grpc's default)")
	workers := flag.Uint("stream-workers", 0, "grpc.NumStreamWorkers (0: a goroutine per stream, grpc's default)")
	heartbeat := flag.Duration("heartbeat", 30*time.Second, "heartbeat interval named in the Welcome")
	flag.Parse()

	var opts []grpc.ServerOption
	if *chatdOpts {
		opts = append(opts,
			grpc.MaxConcurrentStreams(64),
			grpc.InitialWindowSize(256<<10),
			grpc.InitialConnWindowSize(1<<20),
			grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 20 * time.Second, PermitWithoutStream: true}),
			grpc.KeepaliveParams(keepalive.ServerParameters{Time: 60 * time.Second, Timeout: 20 * time.Second}),
			grpc.ConnectionTimeout(10*time.Second))
	}
	if *readBuf >= 0 {
		opts = append(opts, grpc.ReadBufferSize(*readBuf))
	}
	if *writeBuf >= 0 {
		opts = append(opts, grpc.WriteBufferSize(*writeBuf))
	}
	opts = append(opts, grpc.SharedWriteBuffer(*shared)) //nolint:staticcheck // measured on purpose
	if *window > 0 {
		opts = append(opts, grpc.InitialWindowSize(int32(*window)))
	}
	if *connWindow > 0 {
		opts = append(opts, grpc.InitialConnWindowSize(int32(*connWindow)))
	}
	if *workers > 0 {
		opts = append(opts, grpc.NumStreamWorkers(uint32(*workers)))
	}
	if *mode != "recv" && *mode != "two" {
		log.Fatalf("grpcfloor: --mode must be recv or two, not %q", *mode)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	go func() { log.Fatal(http.ListenAndServe(*httpAddr, mux)) }()

	gs := grpc.NewServer(opts...)
	chatv1.RegisterChatServiceServer(gs, &chatSrv{mode: *mode, heartbeat: *heartbeat})
	chatv1.RegisterAccountServiceServer(gs, &accountSrv{})
	lis, err := net.Listen("tcp", *grpcAddr)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Fprintf(os.Stderr, "grpcfloor: gRPC %s, HTTP %s, mode %s, options %v\n", lis.Addr(), *httpAddr, *mode, os.Args[1:])
	log.Fatal(gs.Serve(lis))
}

type accountSrv struct {
	chatv1.UnimplementedAccountServiceServer
}

func (accountSrv) SignUp(context.Context, *chatv1.SignUpRequest) (*chatv1.SignUpResponse, error) {
	return &chatv1.SignUpResponse{}, nil
}

func (accountSrv) LogIn(_ context.Context, r *chatv1.LogInRequest) (*chatv1.LogInResponse, error) {
	return &chatv1.LogInResponse{AccessToken: "grpcfloor", DeviceId: r.GetUsername() + "/" + r.GetDeviceName()}, nil
}

type chatSrv struct {
	chatv1.UnimplementedChatServiceServer
	mode      string
	heartbeat time.Duration
}

func (c *chatSrv) Chat(gs chatv1.ChatService_ChatServer) error {
	err := gs.Send(&chatv1.ServerFrame{Payload: &chatv1.ServerFrame_Welcome{Welcome: &chatv1.Welcome{
		UserId: "u", DeviceId: "d", HeartbeatIntervalMs: uint32(c.heartbeat / time.Millisecond), ServerId: "grpcfloor",
	}}})
	if err != nil {
		return err
	}
	if c.mode == "recv" {
		return recvLoop(gs, gs.Send)
	}
	// two: the reader hands replies to the handler goroutine, which writes.
	out := make(chan *chatv1.ServerFrame, 1)
	done := make(chan error, 1)
	go func() {
		done <- recvLoop(gs, func(f *chatv1.ServerFrame) error {
			select {
			case out <- f:
				return nil
			case <-gs.Context().Done():
				return gs.Context().Err()
			}
		})
	}()
	for {
		select {
		case f := <-out:
			if err := gs.Send(f); err != nil {
				return err
			}
		case err := <-done:
			return err
		case <-gs.Context().Done():
			return gs.Context().Err()
		}
	}
}

// recvLoop receives frames until the stream ends and answers heartbeats.
func recvLoop(gs chatv1.ChatService_ChatServer, reply func(*chatv1.ServerFrame) error) error {
	for {
		f, err := gs.Recv()
		if err != nil {
			return err
		}
		if f.GetHeartbeat() != nil {
			if err := reply(&chatv1.ServerFrame{FrameId: f.GetFrameId(), Payload: &chatv1.ServerFrame_HeartbeatAck{
				HeartbeatAck: &chatv1.HeartbeatAck{ServerTime: timestamppb.Now()},
			}}); err != nil {
				return err
			}
		}
	}
}
