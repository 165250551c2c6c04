// Command grpcfloor is a bare grpc-go server of chat.v1's ChatService, for
// measuring the floors grpc-go allows: the same wire protocol and client
// (chatbench) as chatd, none of chatd's state. It is a measuring tool, not
// a server to deploy.
//
// --mode recv and --mode two measure the memory of an idle Chat stream:
// the Chat handler sends a Welcome and then, on the handler goroutine,
// receives frames and answers each heartbeat with a HeartbeatAck (recv:
// one goroutine of its own per stream, the least a grpc-go bidi handler
// can hold), or does the same on a second goroutine while the handler
// waits in a select (two: chatd's shape before issue 16).
//
// --mode relay measures the CPU per message of the pairs shape
// (`chatbench pairs`): it serves what chatd sends there, from memory, with
// chatd's goroutines per stream — a reader goroutine handling the
// client's frames and the handler goroutine writing from a bounded queue
// (1,024 frames; a stream that overflows it ends) — so that the floor is
// comparable. The token names the user; a SendMessage to_user gets a
// message_id in its direct channel and a seq in each inbox, its Delivery
// goes to the recipient's streams and the echo to the sender's, the echo
// and the SendAck queued together (one flush, as chatd writes them); an
// Ack moves the device's cursor, is answered with AckResult unless
// no_reply, and sends each author of the newly acked messages one
// delivered ReceiptEvent per channel (chatd's noteDelivered); heartbeats
// are answered; a SyncRequest gets an empty last page (no history:
// a device is live from its inbox head). Without --fsync-file the reader
// numbers, delivers and answers a send at once; with it every send is
// appended to that file and made durable by fdatasync in group commits on
// one goroutine (lingering under load from several senders as chatd's
// sequencer does, --commit-linger) before it is delivered and answered.
// The commits are counted under chatd's metric names
// (chatd_sequencer_batches_total, chatd_sequencer_messages_total) so that
// chatbench reports messages per commit.
//
// AccountService's SignUp and LogIn answer at once (any name, any
// password); LogIn's token is "<username>/<device name>", also the device
// id. The relay reads it from the stream's "authorization: Bearer" metadata
// as chatd's clients send it; the other modes do not check it.
//
// Usage:
//
//	grpcfloor --grpc-addr 127.0.0.1:21490 --http-addr 127.0.0.1:21480 [--mode relay [--fsync-file F]] [grpc options]
//	chatbench pairs --servers 127.0.0.1:21490 --metrics http://127.0.0.1:21480/metrics ...
//
// The HTTP address serves /metrics (the Go and process collectors, as
// chatd's) and /debug/pprof/. docs/performance.md has the figures
// ("Issue 16: idle memory per connection, and the floor grpc-go allows";
// "The floor: a bare grpc-go relay on the same shape") and
// scripts/bench/floor.sh runs the relay against chatd.
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
	mode := flag.String("mode", "recv", "recv: the handler goroutine receives (one goroutine per stream); two: a reader goroutine receives while the handler waits (chatd's shape before issue 16); relay: serve chatbench pairs from memory (see the package doc)")
	fsyncFile := flag.String("fsync-file", "", "relay: make every send durable in this file (created, truncated, filled with --log-size zeros) with an fdatasync per group commit before delivering it ('': no durability)")
	logSize := flag.Int64("log-size", defaultLogSize, "relay: size of the --fsync-file ring in bytes")
	linger := flag.Duration("commit-linger", defaultCommitLinger, "relay with --fsync-file: how long a group commit waits for more sends under load from several senders, as chatd's --commit-linger (0: none)")
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
	if *mode != "recv" && *mode != "two" && *mode != "relay" {
		log.Fatalf("grpcfloor: --mode must be recv, two or relay, not %q", *mode)
	}
	if *fsyncFile != "" && *mode != "relay" {
		log.Fatalf("grpcfloor: --fsync-file needs --mode relay")
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)

	gs := grpc.NewServer(opts...)
	if *mode == "relay" {
		var cl *commitLog
		if *fsyncFile != "" {
			var err error
			if cl, err = openCommitLog(*fsyncFile, *logSize, *linger, newRelayMetrics(reg)); err != nil {
				log.Fatal(err)
			}
		}
		chatv1.RegisterChatServiceServer(gs, newRelay(*heartbeat, cl))
	} else {
		chatv1.RegisterChatServiceServer(gs, &chatSrv{mode: *mode, heartbeat: *heartbeat})
	}
	chatv1.RegisterAccountServiceServer(gs, &accountSrv{})
	lis, err := net.Listen("tcp", *grpcAddr)
	if err != nil {
		log.Fatal(err)
	}
	// /metrics answers once the gRPC port listens (and the commit log is
	// ready): a script may wait for it.
	go func() { log.Fatal(http.ListenAndServe(*httpAddr, mux)) }()
	fmt.Fprintf(os.Stderr, "grpcfloor: gRPC %s, HTTP %s, mode %s, pid %d, options %v\n", lis.Addr(), *httpAddr, *mode, os.Getpid(), os.Args[1:])
	log.Fatal(gs.Serve(lis))
}

type accountSrv struct {
	chatv1.UnimplementedAccountServiceServer
}

func (accountSrv) SignUp(context.Context, *chatv1.SignUpRequest) (*chatv1.SignUpResponse, error) {
	return &chatv1.SignUpResponse{}, nil
}

func (accountSrv) LogIn(_ context.Context, r *chatv1.LogInRequest) (*chatv1.LogInResponse, error) {
	tok := relayToken(r.GetUsername(), r.GetDeviceName())
	return &chatv1.LogInResponse{AccessToken: tok, DeviceId: tok}, nil
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
