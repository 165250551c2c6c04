// Package chat implements chat.v1.ChatService: the Chat stream of every
// device (send, deliver, sync, ack, typing, heartbeat) and the unary RPCs
// that manage group channels and read history.
//
// Message path: a Send frame is validated, its channel and members are
// resolved, and it is submitted to the group-commit sequencer
// (server/sequence) without waiting, so a device's pipelined sends are
// committed together and in order. After the batch is durable the
// sequencer calls its publish callback (server/deliver's publisher, which
// server/app gives it), which routes one Delivery frame per recipient user
// (carrying that user's inbox_seq) through the router to the hubs holding
// the users' devices, and then the sender gets its SendAck.
//
// Delivery on the wire is server/deliver's: each stream's writer goroutine
// owns a deliver.Stream and hands it the routed Delivery frames and the
// device's sync requests, in queue order, so sync pages and live
// deliveries carry each inbox entry once and in order. This package maps
// the deliverer's errors to gRPC statuses and FrameErrors, and the domain
// errors of the engines (*store.Error) through server/grpcerr's table.
package chat

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/chatd/chatd/server/auth"
	"github.com/chatd/chatd/server/deliver"
	"github.com/chatd/chatd/server/grpcerr"
	"github.com/chatd/chatd/server/hub"
	"github.com/chatd/chatd/server/presence"
	"github.com/chatd/chatd/server/ratelimit"
	"github.com/chatd/chatd/server/router"
	"github.com/chatd/chatd/server/sequence"
	"github.com/chatd/chatd/server/store"
)

// Defaults for Config fields left zero, and fixed limits. The defaults of
// what other packages own are theirs: the heartbeat interval is
// presence.DefaultHeartbeatInterval, the send queue hub.DefaultQueueSize.
const (
	DefaultFrameRate   = 200 // client frames per second per device
	DefaultFrameBurst  = 400
	DefaultMaxInFlight = 256 // unacknowledged sends per stream
	// DefaultWriteStall is how long a stream's writer may stay blocked
	// writing to a client that does not read after its session closed,
	// before its connection is closed (Config.WriteStall, CloseConn).
	DefaultWriteStall = 10 * time.Second

	// MaxTextBytes is the largest message text, in bytes of UTF-8.
	MaxTextBytes = 65536
	// MaxClientMessageIDBytes bounds SendMessage.client_message_id.
	MaxClientMessageIDBytes = 64
	// DefaultSyncLimit and MaxSyncLimit bound SyncRequest.limit.
	DefaultSyncLimit = 100
	MaxSyncLimit     = 1000
	// MaxSyncPageBytes bounds the encoded size of one SyncPage so that it
	// fits grpc-go's default 4 MiB client receive limit; a page holds at
	// least one delivery and says more=true when it was cut short.
	MaxSyncPageBytes = deliver.MaxSyncPageBytes
	// TypingTTL is how long a typing indicator is shown (TypingEvent.expires_at).
	TypingTTL = 6 * time.Second
	// TypingMinInterval: typing frames of one device for one channel closer
	// together than this are dropped silently.
	TypingMinInterval = 2 * time.Second
	// MaxGroupNameChars bounds a group's name, in characters.
	MaxGroupNameChars = 100
)

// SessionValidator re-checks a stream's principal (token expiry, device
// revocation) on every frame. *auth.Authenticator implements it.
type SessionValidator interface {
	// Validate returns nil if the principal may go on, else a status error
	// (Unauthenticated when expired or revoked).
	Validate(ctx context.Context, p auth.Principal) error
}

// Config configures a Service.
type Config struct {
	// Store is the durable store. Required.
	Store store.Store
	// Sequencer commits messages; its publish callback must be the
	// function deliver.NewPublisher returns for the same Router. Required.
	Sequencer *sequence.Sequencer
	// Hub holds this server's streams; it must be the Router's Handler.
	// Required.
	Hub *hub.Hub
	// Router routes deliveries and typing events. Required.
	Router router.Router
	// Sessions re-validates the principal on every client frame. nil
	// disables the per-frame check (the interceptor still checks when the
	// stream opens).
	Sessions SessionValidator
	// Canonical maps a username to the user id; default
	// store.CanonicalUsername with its error as an InvalidArgument status.
	// Errors must be InvalidArgument statuses.
	Canonical func(string) (string, error)
	// ServerID names this server in Welcome.
	ServerID string
	// HeartbeatInterval is sent in Welcome. Ignored when Presence is set
	// (the tracker's interval is sent); zero means
	// presence.DefaultHeartbeatInterval.
	HeartbeatInterval time.Duration
	// Presence, if not nil, tracks the device's presence: online while the
	// stream is open and frames (heartbeats or any other) arrive; a stream
	// silent for the tracker's grace period is ended with Unavailable.
	Presence *presence.Tracker
	// SendQueue is the bounded send queue of each stream (its hub
	// session), in frames; zero means hub.DefaultQueueSize. A stream whose
	// queue overflows is closed with ResourceExhausted.
	SendQueue int
	// FrameRate and FrameBurst are the token bucket of client frames per
	// device, shared by the device's streams (frames/s, burst); zero means
	// DefaultFrameRate and DefaultFrameBurst. A frame beyond it gets
	// FrameError ResourceExhausted and is dropped.
	FrameRate  float64
	FrameBurst int
	// MaxInFlight bounds the sends of one stream that are submitted but
	// not yet acknowledged; the stream stops reading frames while it is
	// reached. Zero means DefaultMaxInFlight.
	MaxInFlight int
	// EditWindow is how long after sending its author may edit a message;
	// zero means DefaultEditWindow. Edits later fail with
	// FailedPrecondition. Deletes have no window.
	EditWindow time.Duration
	// CloseConn, if not nil, closes the connection that carries the
	// stream of ctx and reports whether it knew it (server/app tracks its
	// listeners' connections). A stream whose session was closed (slow
	// consumer, revocation, token expiry, heartbeat timeout, eviction)
	// but whose writer is still blocked WriteStall later — in grpc-go's
	// Send, on the flow control of a client that stopped reading — is
	// ended that way: grpc-go has no way to end one stream from outside
	// its handler. nil: such a stream stays until the client reads or its
	// connection ends.
	CloseConn func(ctx context.Context) bool
	// WriteStall is how long a stream's writer may stay blocked after its
	// session closed before CloseConn; zero means DefaultWriteStall.
	WriteStall time.Duration
	// Now is the clock for typing expiry, heartbeat acks and the edit
	// window; default time.Now.
	Now func() time.Time
	// Registerer, if not nil, receives the service's Prometheus metrics.
	Registerer prometheus.Registerer
	// Logger; default slog.Default().
	Logger *slog.Logger
	// Tracer, if set, records a "chat.send" span per send, edit or delete
	// frame (from the frame until its reply is queued), the parent of the
	// sequencer's spans (sequence.Options.Tracer). nil: no tracing work.
	Tracer trace.Tracer
}

// Service implements chatv1.ChatServiceServer. It is safe for concurrent
// use. Register it behind the auth interceptors (they put the
// auth.Principal in the context) on a grpc.Server created with
// grpc.ForceServerCodecV2(chat.Codec()).
type Service struct {
	chatv1.UnimplementedChatServiceServer

	st        store.Store
	seq       *sequence.Sequencer
	hub       *hub.Hub
	router    router.Router
	presence  *presence.Tracker
	sessions  SessionValidator
	canonical func(string) (string, error)
	serverID  string
	heartbeat time.Duration
	sendQueue int
	frameRate float64
	burst     int
	inFlight  int
	editWin   time.Duration
	closeConn func(ctx context.Context) bool
	stall     time.Duration
	now       func() time.Time
	log       *slog.Logger
	tracer    trace.Tracer
	metrics   *Metrics
	frames    *ratelimit.Limiter // client frames per device
	typing    *ratelimit.Limiter // typing frames per device and channel
	users     *knownSet          // user ids known to exist (see cache.go)
	directs   *knownSet          // direct channel ids known to exist
}

var _ chatv1.ChatServiceServer = (*Service)(nil)

// New returns a Service. It panics if Store, Sequencer, Hub or Router is nil
// (a wiring bug).
func New(cfg Config) *Service {
	if cfg.Store == nil || cfg.Sequencer == nil || cfg.Hub == nil || cfg.Router == nil {
		panic("chat: Config.Store, Sequencer, Hub and Router are required")
	}
	s := &Service{
		st:        cfg.Store,
		seq:       cfg.Sequencer,
		hub:       cfg.Hub,
		router:    cfg.Router,
		sessions:  cfg.Sessions,
		canonical: cfg.Canonical,
		serverID:  cfg.ServerID,
		heartbeat: cfg.HeartbeatInterval,
		presence:  cfg.Presence,
		sendQueue: cfg.SendQueue,
		frameRate: cfg.FrameRate,
		burst:     cfg.FrameBurst,
		inFlight:  cfg.MaxInFlight,
		editWin:   cfg.EditWindow,
		closeConn: cfg.CloseConn,
		stall:     cfg.WriteStall,
		now:       cfg.Now,
		log:       cfg.Logger,
		tracer:    cfg.Tracer,
		users:     newKnownSet(knownUsersCap),
		directs:   newKnownSet(knownDirectsCap),
	}
	if s.canonical == nil {
		s.canonical = canonicalUsername
	}
	if s.presence != nil {
		s.heartbeat = s.presence.HeartbeatInterval()
	}
	if s.heartbeat <= 0 {
		s.heartbeat = presence.DefaultHeartbeatInterval
	}
	if s.frameRate <= 0 {
		s.frameRate = DefaultFrameRate
	}
	if s.burst <= 0 {
		s.burst = DefaultFrameBurst
	}
	if s.inFlight <= 0 {
		s.inFlight = DefaultMaxInFlight
	}
	if s.editWin <= 0 {
		s.editWin = DefaultEditWindow
	}
	if s.stall <= 0 {
		s.stall = DefaultWriteStall
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.metrics = newMetrics(cfg.Registerer, cfg.Sequencer, cfg.Hub, s.log)
	s.frames = ratelimit.New(s.frameRate, s.burst)
	s.typing = ratelimit.New(float64(time.Second)/float64(TypingMinInterval), 1)
	return s
}

// Metrics returns the service's metrics (registered with Config.Registerer
// if one was given).
func (s *Service) Metrics() *Metrics { return s.metrics }

// frameInterval is the time one frame token takes to refill (1/frame
// rate): the RetryInfo of a frame refused by the rate limit.
func (s *Service) frameInterval() time.Duration {
	return max(time.Millisecond, time.Duration(float64(time.Second)/s.frameRate))
}

func frameError(frameID uint64, err error) *chatv1.ServerFrame {
	st := grpcerr.Convert(err)
	return &chatv1.ServerFrame{FrameId: frameID, Payload: &chatv1.ServerFrame_Error{
		Error: &chatv1.FrameError{Code: int32(st.Code()), Message: st.Message(), Details: st.Proto().GetDetails()},
	}}
}

var (
	errNoPrincipal = status.Error(codes.Unauthenticated, "missing bearer token")
	errInternal    = status.Error(codes.Internal, "internal error")
)

func principal(ctx context.Context) (auth.Principal, error) {
	p, ok := auth.FromContext(ctx)
	if !ok || p.UserID == "" || p.DeviceID == "" {
		return auth.Principal{}, errNoPrincipal
	}
	return p, nil
}

// storeErr turns an unexpected store error into the status the client
// sees (never the internal text): a domain error or status as it is
// (grpcerr.Known), else the context's status if it ended, else Internal.
// The cause is logged.
func (s *Service) storeErr(ctx context.Context, op string, err error) error {
	if grpcerr.Known(err) {
		return err
	}
	if ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
		return status.FromContextError(ctx.Err()).Err()
	}
	s.log.ErrorContext(ctx, "chat: store operation failed", "op", op, "err", err)
	return errInternal
}
