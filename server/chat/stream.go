package chat

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"

	"go.opentelemetry.io/otel/attribute"
	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/chatd/chatd/server/auth"
	"github.com/chatd/chatd/server/deliver"
	"github.com/chatd/chatd/server/grpcerr"
	"github.com/chatd/chatd/server/hub"
	"github.com/chatd/chatd/server/presence"
	"github.com/chatd/chatd/server/router"
	"github.com/chatd/chatd/server/sequence"
	"github.com/chatd/chatd/server/store"
)

var (
	errNoPayload        = status.Error(codes.InvalidArgument, "frame has no payload")
	errAckBeyondHead    = status.Error(codes.FailedPrecondition, "ack beyond inbox head")
	errHeartbeatTimeout = status.Error(codes.Unavailable, "heartbeat timeout: no frame within the presence grace period; reconnect")
	errSyncLimit        = status.Error(codes.InvalidArgument, fmt.Sprintf("sync limit must be 0 (default %d) or 1 to %d", DefaultSyncLimit, MaxSyncLimit))
	errChannelMissing   = status.Error(codes.NotFound, "channel not found")
	errNotMember        = status.Error(codes.PermissionDenied, "not a member of the channel")
	errSelfDirect       = status.Error(codes.InvalidArgument, "cannot send a direct message to yourself")
	errUserMissing      = status.Error(codes.NotFound, "user not found")
	errUnknownDevice    = auth.ErrRevoked
	errSessionCheck     = status.Error(codes.Unavailable, "cannot verify session, retry")
	errSyncFailed       = status.Error(codes.Unavailable, "sync failed, retry")
)

// syncOp is a SyncRequest queued for the writer.
type syncOp struct {
	frameID uint64
	after   uint64
	limit   int
}

// sendReply marks a SendAck or send FrameError: after writing it the
// writer releases the send's in-flight slot. cmid is the request's
// client_message_id (see stream.pend).
type sendReply struct{ cmid string }

// maxHeldEchoes bounds the deliveries a writer holds back while it waits
// for the SendAck of the device's own send (see stream.held); beyond it
// they go out at once.
const maxHeldEchoes = 64

// stream is one device's Chat stream.
type stream struct {
	s      *Service
	gs     chatv1.ChatService_ChatServer
	ctx    context.Context
	p      auth.Principal
	sess   *hub.Session
	opened time.Time // for the log line of a stream the server ends

	// pc is the device's presence connection (nil without presence).
	pc *presence.Conn
	// lastLimited is when a frame of this stream was last rate limited
	// (unix ns; 0: never).
	lastLimited atomic.Int64

	// Reader state (reader goroutine only).
	key      string        // rate-limit key of the device: user 0x00 device
	inflight chan struct{} // semaphore of unacknowledged sends
	acked    uint64        // the device's cursor as of its last Ack (delivery markers)
	freshAt  int64         // unix ns of the reader's last handover (see readLoop)

	// Writer state (writer goroutine only).
	cursor, head uint64
	// d is the stream's delivery state: what has been sent, what is held
	// back (server/deliver owns the ordering rules).
	d *deliver.Stream

	// eof is set by the reader when the client half-closed (see read).
	eof atomic.Bool
	// ended is set when the handler is done with the stream (close): a
	// session closed later needs no watch (see sessionClosed).
	ended atomic.Bool

	// sent is what the writer sent in order and the device has not acked
	// yet: the reader's acks move the delivery markers from it, without
	// reading the inbox (shared by both goroutines; it locks itself).
	sent deliver.SentLog

	// One write for a send's echo and its SendAck. The sequencer routes a
	// committed message (its echo to the sending device among the
	// deliveries) and then answers the send, microseconds apart; written
	// as they come, the echo and the SendAck are two HTTP/2 flushes, two
	// write syscalls. So while a send of this stream is unanswered, the
	// writer holds back the echo of that send (and the deliveries queued
	// after it, to keep their order) until the SendAck is popped, then
	// writes them and the SendAck together: the same frames in the same
	// order as before, in one flush. pend counts this stream's submitted,
	// unanswered client_message_ids (reader adds, writer removes; nil until
	// the first send); held is writer-only.
	pendMu sync.Mutex
	pend   map[string]int
	held   []*chatv1.ServerFrame
}

// Chat serves one device's stream. See the proto for the protocol. The
// stream ends with Unauthenticated (no principal, token expired, device
// revoked: checked on every frame), ResourceExhausted (the send queue
// overflowed: the device is not reading; or the device opened more than
// the hub's per-device bound of streams and this is its oldest),
// Unavailable (server shutting down, or storage failing) or the client's
// cancellation; when the client half-closes, in-flight sends are
// acknowledged and the stream ends OK.
func (s *Service) Chat(gs chatv1.ChatService_ChatServer) (err error) {
	// The opening's work is in open and the end's in close, so that their
	// locals are not part of this frame: the handler goroutine waits in
	// writeLoop, under this frame, for the stream's whole life, and the
	// runtime shrinks a goroutine's stack only while a quarter of it is
	// enough (see docs/performance.md, "Issue 16: idle memory per
	// connection").
	st, err := s.open(gs)
	if err != nil {
		return err
	}
	ended := false // false in close: writeLoop panicked
	defer func() { st.close(err, ended) }()
	// Two goroutines per stream: the reader, and this handler goroutine,
	// which writes. The reader blocks in Recv, which only returns (for
	// good) once this handler has returned, so the writer must be the one
	// that can end the stream.
	go st.read()
	err = st.writeLoop()
	ended = true
	return err
}

// read runs the stream's reader until Recv fails or a frame ends the
// stream, and hands its end to the writer without a channel: an error
// closes the session with it (the writer then ends the stream with the
// session's error: the reader's, or whatever closed the session first, as
// an overflow while the reader waited), the client's half-close (io.EOF)
// sets eof and wakes the writer. So the writer's select waits on no
// channel of the reader's (each case waited on costs an idle stream a
// parked sudog).
//
// After a heartbeat the reader hands over to a fresh goroutine (at most
// once per freshReaderEvery): see readLoop.
func (st *stream) read() {
	err := st.readLoop()
	if err == errFreshReader {
		go st.read()
		return
	}
	if err == io.EOF {
		st.eof.Store(true)
		st.sess.Wake()
		return
	}
	st.sess.Close(err)
}

// watchExpiry makes the session close when the device misses its
// heartbeats (errHeartbeatTimeout) and when its token expires
// (auth.ErrExpired), and returns the token timer to stop (nil without an
// expiry): callbacks rather than channels in writeLoop's select, so that
// an idle stream parks on fewer of them. It is a function of its own
// (never inlined) to keep its temporaries out of writeLoop's frame.
//
//go:noinline
func (st *stream) watchExpiry() *time.Timer {
	sess := st.sess
	if st.pc != nil {
		st.pc.OnExpire(func() { sess.Close(errHeartbeatTimeout) })
	}
	if st.p.ExpiresAt.IsZero() {
		return nil
	}
	// One timer per stream, no goroutine: the stream ends at the moment
	// its token expires, not at its next frame.
	return time.AfterFunc(time.Until(st.p.ExpiresAt), func() { sess.Close(auth.ErrExpired) })
}

// open checks the stream's principal and device, reads its cursor and
// head, registers its session and presence, and returns the stream, or the
// status the stream ends with (nothing stays registered then). Call close
// when the stream ends.
func (s *Service) open(gs chatv1.ChatService_ChatServer) (*stream, error) {
	ctx := gs.Context()
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.validate(ctx, p); err != nil {
		return nil, err
	}
	// Cursor and head first, then register: every message committed after
	// the head read is either routed to the registered session or found by
	// the writer's second head read.
	dev, err := s.st.GetDevice(ctx, p.UserID, p.DeviceID)
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, errUnknownDevice
		}
		return nil, s.storeErr(ctx, "Chat.GetDevice", err)
	}
	// The stored device is read fresh here: a device revoked on another
	// server opens no stream even while this server's revocation cache
	// still trusts it.
	if dev.Revoked {
		return nil, errUnknownDevice
	}
	head, err := s.seq.Head(ctx, p.UserID)
	if err != nil {
		return nil, err
	}
	sess, err := s.hub.Register(ctx, p.UserID, p.DeviceID, s.sendQueue)
	if err != nil {
		return nil, err
	}
	// Presence: online from now on; a clean end (the client half-closed)
	// takes the device offline at once, any other end leaves it online for
	// the grace period so that a quick reconnect does not flap (close).
	var pc *presence.Conn
	if s.presence != nil {
		if pc, err = s.presence.Connect(ctx, p.UserID, p.DeviceID); err != nil {
			s.hub.Unregister(sess)
			return nil, err
		}
	}
	s.metrics.StreamsOpen.Inc()

	st := &stream{
		s: s, gs: gs, ctx: ctx, p: p, sess: sess,
		key:      p.UserID + "\x00" + p.DeviceID,
		inflight: make(chan struct{}, s.inFlight),
		acked:    dev.Cursor,
		cursor:   dev.Cursor,
		head:     head,
		pc:       pc,
		opened:   time.Now(),
	}
	st.d = deliver.NewStream(deliver.Config{
		UserID: p.UserID, Send: st.send, Inbox: s.st, Heads: s.seq, Done: sess.Done(), Log: &st.sent,
	})
	if s.closeConn != nil {
		sess.OnClose(st.sessionClosed)
	}
	return st, nil
}

// sessionClosed runs when the stream's session closes. The writer then
// ends the stream, unless it is blocked in grpc-go's Send on the flow
// control of a client that stopped reading (its transport still answers
// pings): if the handler has not returned WriteStall later, the stream's
// connection is closed, which fails that Send.
func (st *stream) sessionClosed() {
	if st.ended.Load() {
		return
	}
	time.AfterFunc(st.s.stall, func() {
		if st.ended.Load() {
			return
		}
		if st.s.closeConn(st.ctx) {
			st.s.metrics.WriteStalls.Inc()
			st.s.log.Warn("stream stuck writing to a client that does not read; its connection closed",
				"user_id", st.p.UserID, "device_id", st.p.DeviceID, "reason", closeReason(st.sess.Err(), grpcerr.Code(st.sess.Err())), "stall", st.s.stall)
		}
	})
}

// close logs a stream the server ended and releases what open
// registered. err is the status the stream ends with, ended false when
// the writer did not return (it panicked). A clean end (ended, err nil:
// the client half-closed) takes the device offline at once; any other
// leaves it online for the grace period.
func (st *stream) close(err error, ended bool) {
	st.ended.Store(true)
	if ended {
		st.s.logClosed(st.ctx, st.p, err, time.Since(st.opened))
	}
	st.s.metrics.StreamsOpen.Dec()
	if st.pc != nil {
		st.pc.Close(ended && err == nil)
	}
	st.s.hub.Unregister(st.sess)
}

// logClosed logs a stream the server ended (not one the client closed or
// cancelled): who, why (reason: slow_consumer, token_expired, revoked,
// evicted, rate_limited, heartbeat_timeout, server_shutdown, or the gRPC
// code in snake case) and after how long.
func (s *Service) logClosed(ctx context.Context, p auth.Principal, err error, open time.Duration) {
	if err == nil {
		return
	}
	code := grpcerr.Code(err)
	if code == codes.Canceled || errors.Is(err, context.Canceled) {
		return
	}
	s.log.InfoContext(ctx, "stream closed by server",
		"user_id", p.UserID, "device_id", p.DeviceID,
		"reason", closeReason(err, code), "code", code.String(), "open_ms", open.Milliseconds())
}

// closeReason names why the server ended a stream, for logs.
func closeReason(err error, code codes.Code) string {
	switch grpcerr.Reason(err) {
	case store.ReasonSlowConsumer:
		return "slow_consumer"
	case store.ReasonTokenExpired:
		return "token_expired"
	case store.ReasonDeviceRevoked:
		return "revoked"
	case store.ReasonStreamReplaced:
		return "evicted"
	case store.ReasonRateLimited:
		return "rate_limited"
	case store.ReasonServerShutdown:
		return "server_shutdown"
	}
	if errors.Is(err, errHeartbeatTimeout) {
		return "heartbeat_timeout"
	}
	var b strings.Builder
	for i, r := range code.String() {
		if i > 0 && r >= 'A' && r <= 'Z' {
			b.WriteByte('_')
		}
		b.WriteRune(unicode.ToLower(r))
	}
	return b.String()
}

// endStatus is the error the stream ends with once its session is closed.
// A send queue that overflowed while the device was being rate limited was
// filled by the replies to its rejected frames: say so, rather than that
// the device is not reading.
func (st *stream) endStatus() error {
	err := st.sess.Err()
	if errors.Is(err, hub.ErrOverflow) {
		if t := st.lastLimited.Load(); t != 0 && time.Since(time.Unix(0, t)) < 2*time.Second {
			return grpcerr.Status(store.Errorf(store.CodeResourceExhausted,
				"frame rate exceeded: at most %g frames/s (burst %d), and the replies to the rejected frames filled the send queue; slow down and reconnect",
				st.s.frameRate, st.s.burst).WithReason(store.ReasonRateLimited).WithRetryAfter(st.s.frameInterval()))
		}
	}
	return err
}

// validate re-checks the principal; a failure ends the stream.
func (s *Service) validate(ctx context.Context, p auth.Principal) error {
	if s.sessions == nil {
		return nil
	}
	err := s.sessions.Validate(ctx, p)
	if err == nil {
		return nil
	}
	switch grpcerr.Code(err) {
	case codes.Unauthenticated, codes.Canceled, codes.DeadlineExceeded:
		return err
	}
	return errSessionCheck
}

// ------------------------------------------------------------------ writer

func (st *stream) send(f *chatv1.ServerFrame) error {
	// Nothing goes out once the token has expired, even when the expiry
	// timer has not been taken yet (the writer's select picks any ready
	// case): the stream ends instead.
	if st.p.Expired(time.Now()) {
		return auth.ErrExpired
	}
	// Nor once the session is closed (the device was logged out, or
	// evicted): the stream ends with the session's error.
	if st.sess.Err() != nil {
		return st.endStatus()
	}
	if err := st.gs.Send(f); err != nil {
		if st.sess.Err() != nil {
			// The session closed while this Send was blocked (and its
			// connection was closed, see sessionClosed): why it closed.
			return st.endStatus()
		}
		return err
	}
	if f.GetDelivery() != nil {
		st.s.metrics.DeliveriesSent.Inc()
	}
	return nil
}

// writeLoop sends the Welcome, catches the device up and then writes
// every queued item until the stream ends: it returns the status the
// stream ends with (nil when the client half-closed and everything in
// flight was acknowledged and written). The reader's end, a missed
// heartbeat and the token's expiry reach it through the session (see read
// and watchExpiry).
func (st *stream) writeLoop() error {
	if err := st.sendWelcome(); err != nil {
		return err
	}
	defer st.d.Stop()
	if t := st.watchExpiry(); t != nil {
		defer t.Stop()
	}
	// Up to date: live from the head (the deliverer sends what was
	// committed between the head read and the registration). Behind: the
	// device syncs first.
	if err := st.d.Start(st.ctx, st.cursor, st.head); err != nil {
		return st.deliverErr(err, true)
	}
	// closing: the client half-closed. The stream ends OK once every send
	// in flight has its reply written (the writer releases a send's slot
	// after writing its reply) and what was queued by then is sent.
	closing := false
	for {
		if !closing && st.eof.Load() {
			closing = true
		}
		if closing && len(st.inflight) == 0 {
			return st.drain()
		}
		select {
		case <-st.sess.Done():
			return st.endStatus()
		case <-st.ctx.Done():
			return status.FromContextError(st.ctx.Err()).Err()
		case <-st.d.Recheck():
			if err := st.d.Advance(st.ctx); err != nil {
				return st.deliverErr(err, false)
			}
		case <-st.sess.Ready():
			if err := st.drain(); err != nil {
				return err
			}
		}
	}
}

// sendWelcome sends the stream's first frame. It is a function of its own
// (never inlined) to keep its temporaries out of writeLoop's frame, under
// which the handler goroutine waits for the stream's whole life.
//
//go:noinline
func (st *stream) sendWelcome() error {
	s := st.s
	return st.send(&chatv1.ServerFrame{Payload: &chatv1.ServerFrame_Welcome{Welcome: &chatv1.Welcome{
		UserId:              st.p.UserID,
		DeviceId:            st.p.DeviceID,
		Cursor:              st.cursor,
		HeadSeq:             st.head,
		HeartbeatIntervalMs: uint32(s.heartbeat / time.Millisecond),
		ServerId:            s.serverID,
	}}})
}

// drain writes every item queued now, in order.
func (st *stream) drain() error {
	for {
		select {
		case <-st.sess.Done():
			return st.endStatus()
		default:
		}
		it, ok := st.sess.Pop()
		if !ok {
			return nil
		}
		if err := st.handleItem(it); err != nil {
			return err
		}
	}
}

func (st *stream) handleItem(it hub.Item) error {
	switch op := it.Op.(type) {
	case nil:
	case syncOp:
		return st.doSync(op)
	case sendReply:
		var err error
		if st.answered(op.cmid) {
			err = st.flushHeld()
		}
		if err == nil {
			err = st.send(it.Frame)
		}
		<-st.inflight
		return err
	default:
		return nil
	}
	if d := it.Frame.GetDelivery(); d != nil {
		if len(st.held) > 0 || st.ownPending(d.GetMessage()) {
			if len(st.held) < maxHeldEchoes {
				st.held = append(st.held, it.Frame)
				return nil
			}
			if err := st.flushHeld(); err != nil {
				return err
			}
		}
		if err := st.d.Deliver(st.ctx, it.Frame); err != nil {
			return st.deliverErr(err, false)
		}
		return nil
	}
	return st.send(it.Frame)
}

// pending notes a request of this stream submitted under cmid (reader).
func (st *stream) pending(cmid string) {
	st.pendMu.Lock()
	if st.pend == nil {
		st.pend = make(map[string]int)
	}
	st.pend[cmid]++
	st.pendMu.Unlock()
}

// unpend forgets one submission of cmid (reader, writer, or the
// sequencer's callback when the stream is closing).
func (st *stream) unpend(cmid string) {
	st.pendMu.Lock()
	if n := st.pend[cmid]; n > 1 {
		st.pend[cmid] = n - 1
	} else {
		delete(st.pend, cmid)
	}
	st.pendMu.Unlock()
}

// answered is unpend on the writer when the reply to cmid is popped: it
// reports whether held deliveries must now go out, before that reply: the
// one that started the hold is the echo of this send (the same
// client_message_id: its reply comes first, also when the key is in
// flight more than once), or no longer waits for an unanswered send.
func (st *stream) answered(cmid string) bool {
	st.unpend(cmid)
	if len(st.held) == 0 {
		return false
	}
	m := st.held[0].GetDelivery().GetMessage()
	return m.GetClientMessageId() == cmid || !st.ownPending(m)
}

// ownPending reports whether m is the echo of a send of this stream still
// waiting for its SendAck (writer).
func (st *stream) ownPending(m *chatv1.Message) bool {
	if m.GetSenderDeviceId() != st.p.DeviceID || m.GetSenderId() != st.p.UserID {
		return false
	}
	st.pendMu.Lock()
	n := st.pend[m.GetClientMessageId()]
	st.pendMu.Unlock()
	return n > 0
}

// flushHeld writes the held deliveries, in order (writer).
func (st *stream) flushHeld() error {
	held := st.held
	st.held = st.held[:0]
	for i, f := range held {
		held[i] = nil
		if err := st.d.Deliver(st.ctx, f); err != nil {
			return st.deliverErr(err, false)
		}
	}
	return nil
}

// doSync answers a SyncRequest with one page of the inbox (see
// deliver.Stream.Sync). A failure to read the horizon or the inbox is
// answered with FrameError Unavailable and the stream goes on.
func (st *stream) doSync(op syncOp) error {
	s := st.s
	n, err := st.d.Sync(st.ctx, op.frameID, op.after, op.limit)
	var de *deliver.Error
	if errors.As(err, &de) {
		if de.Kind == deliver.ErrInbox {
			s.storeErr(st.ctx, "Chat.Sync", de.Err)
		}
		return st.send(frameError(op.frameID, errSyncFailed))
	}
	if err != nil {
		return err
	}
	s.metrics.SyncPages.Inc()
	s.metrics.DeliveriesSynced.Add(float64(n))
	return nil
}

// deliverErr maps an error of the deliverer to the status the stream ends
// with. starting: the error came from the catch-up when the stream opened,
// where a failed horizon read ends the stream with the sequencer's status.
func (st *stream) deliverErr(err error, starting bool) error {
	var de *deliver.Error
	switch {
	case errors.Is(err, deliver.ErrClosed):
		return st.sess.Err()
	case errors.As(err, &de) && de.Kind == deliver.ErrHorizon:
		if starting {
			return de.Err
		}
		st.s.log.Warn("chat: reading the inbox horizon failed", "user_id", st.p.UserID, "err", de.Err)
		return errSyncFailed
	case errors.As(err, &de) && de.Kind == deliver.ErrInbox:
		st.s.storeErr(st.ctx, "Chat.fill", de.Err)
		return errSyncFailed
	}
	return err // the stream's own send error
}

// ------------------------------------------------------------------ reader

// errFreshReader: readLoop returns it to have read continue on a fresh
// goroutine.
var errFreshReader = errors.New("chat: reader continues on a fresh goroutine")

// freshReaderEvery bounds how often a reader hands over to a fresh
// goroutine after a heartbeat (a variable for tests).
var freshReaderEvery = time.Second

// readLoop reads and handles frames until Recv fails or a frame ends the
// stream (its error), or returns errFreshReader after a heartbeat.
//
// Why: the reader rests in grpc's Recv under ~2 KB of grpc's frames, plus
// the runtime's 800-byte guard, more than a quarter of an 8 KB stack, so
// once the handling of a frame has grown its stack to 8 KB (a heartbeat's
// session check reads the device from the store once per
// RevocationCacheTTL, and now and then that read needs more than 4 KB) the
// runtime can never shrink it back, and the 4 KB slot it left stays free
// in its stack span: ~8 KB more for the stream's whole life. A fresh
// goroutine starts from the runtime's 2 KB stack and the grown one is
// freed. Only after a heartbeat, the frame of an idle device, and at most
// once per freshReaderEvery, so the message path never pays for it; the
// handover keeps the frames in order (the next Recv is on the new
// goroutine, after this one is done with the frame).
func (st *stream) readLoop() error {
	for {
		f, err := st.gs.Recv()
		if err != nil {
			return err
		}
		if st.pc != nil {
			st.pc.Beat() // any frame shows the device is alive
		}
		if err := st.handleFrame(f); err != nil {
			return err
		}
		if _, hb := f.GetPayload().(*chatv1.ClientFrame_Heartbeat); hb {
			if now := time.Now().UnixNano(); now-st.freshAt >= int64(freshReaderEvery) {
				st.freshAt = now
				return errFreshReader
			}
		}
	}
}

// reply queues a frame for the writer, waiting while the queue is full.
func (st *stream) reply(f *chatv1.ServerFrame) error {
	return st.sess.Enqueue(st.ctx, hub.Item{Frame: f})
}

func (st *stream) replyErr(frameID uint64, err error) error {
	st.s.metrics.FrameErrors.WithLabelValues(grpcerr.Code(err).String()).Inc()
	return st.reply(frameError(frameID, err))
}

// handleFrame processes one client frame. It returns an error only to end
// the stream; frame-level failures are answered with FrameError.
func (st *stream) handleFrame(f *chatv1.ClientFrame) error {
	s := st.s
	if err := s.validate(st.ctx, st.p); err != nil {
		return err
	}
	id := f.GetFrameId()
	if !s.frames.AllowAt(st.key, s.now()) {
		st.lastLimited.Store(time.Now().UnixNano())
		s.metrics.Frames.WithLabelValues("rate_limited").Inc()
		return st.replyErr(id, store.Errorf(store.CodeResourceExhausted,
			"frame rate exceeded: at most %g frames/s (burst %d); frame dropped", s.frameRate, s.burst).
			WithReason(store.ReasonRateLimited).WithRetryAfter(s.frameInterval()))
	}
	if reason, bad := malformed(f); bad {
		s.metrics.Frames.WithLabelValues("malformed").Inc()
		return st.replyErr(id, status.Error(codes.InvalidArgument, reason))
	}
	switch p := f.GetPayload().(type) {
	case *chatv1.ClientFrame_Send:
		s.metrics.Frames.WithLabelValues("send").Inc()
		return st.handleSend(id, p.Send)
	case *chatv1.ClientFrame_Ack:
		s.metrics.Frames.WithLabelValues("ack").Inc()
		return st.handleAck(id, p.Ack)
	case *chatv1.ClientFrame_Sync:
		s.metrics.Frames.WithLabelValues("sync").Inc()
		limit := int(p.Sync.GetLimit())
		if limit == 0 {
			limit = DefaultSyncLimit
		}
		if limit < 0 || limit > MaxSyncLimit {
			return st.replyErr(id, errSyncLimit)
		}
		return st.sess.Enqueue(st.ctx, hub.Item{Op: syncOp{frameID: id, after: p.Sync.GetAfterSeq(), limit: limit}})
	case *chatv1.ClientFrame_Typing:
		s.metrics.Frames.WithLabelValues("typing").Inc()
		return st.handleTyping(id, p.Typing)
	case *chatv1.ClientFrame_Heartbeat:
		s.metrics.Frames.WithLabelValues("heartbeat").Inc()
		return st.reply(&chatv1.ServerFrame{FrameId: id, Payload: &chatv1.ServerFrame_HeartbeatAck{
			HeartbeatAck: &chatv1.HeartbeatAck{ServerTime: timestamppb.New(s.now())},
		}})
	case *chatv1.ClientFrame_MarkRead:
		s.metrics.Frames.WithLabelValues("mark_read").Inc()
		return st.handleMarkRead(id, p.MarkRead)
	case *chatv1.ClientFrame_Edit:
		s.metrics.Frames.WithLabelValues("edit").Inc()
		return st.handleEdit(id, p.Edit)
	case *chatv1.ClientFrame_Delete:
		s.metrics.Frames.WithLabelValues("delete").Inc()
		return st.handleDelete(id, p.Delete)
	default:
		s.metrics.Frames.WithLabelValues("empty").Inc()
		return st.replyErr(id, errNoPayload)
	}
}

func (st *stream) handleAck(id uint64, a *chatv1.Ack) error {
	s := st.s
	head, err := s.seq.Head(st.ctx, st.p.UserID)
	if err != nil {
		return st.replyErr(id, err)
	}
	if a.GetInboxSeq() > head {
		return st.replyErr(id, errAckBeyondHead)
	}
	cur, err := s.st.AdvanceCursor(st.ctx, st.p.UserID, st.p.DeviceID, a.GetInboxSeq())
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return errUnknownDevice
		}
		return st.replyErr(id, s.storeErr(st.ctx, "Chat.AdvanceCursor", err))
	}
	if !a.GetNoReply() {
		if err := st.reply(&chatv1.ServerFrame{FrameId: id, Payload: &chatv1.ServerFrame_AckResult{AckResult: &chatv1.AckResult{Cursor: cur}}}); err != nil {
			return err
		}
	}
	if cur > st.acked {
		prev := st.acked
		st.acked = cur
		s.noteDelivered(st.ctx, st.p.UserID, prev, cur, &st.sent)
	} else {
		st.sent.Acked(cur, cur) // forget what the device has
	}
	return nil
}

func (st *stream) handleSend(id uint64, m *chatv1.SendMessage) error {
	s := st.s
	ctx, span := st.startSpan("chat.send")
	if err := checkClientMessageID(m.GetClientMessageId()); err != nil {
		return st.replyErr(id, endSpan(span, grpcerr.WithField(err, "send.client_message_id")))
	}
	if err := checkText(m.GetText()); err != nil {
		return st.replyErr(id, endSpan(span, grpcerr.WithField(err, "send.text")))
	}
	channelID, members, err := s.resolveTarget(ctx, st.p.UserID, m)
	if err != nil {
		return st.replyErr(id, endSpan(span, err))
	}
	return st.submitTraced(ctx, span, id, &sequence.Request{
		ChannelID:       channelID,
		SenderID:        st.p.UserID,
		SenderDeviceID:  st.p.DeviceID,
		ClientMessageID: m.GetClientMessageId(),
		Text:            m.GetText(),
		Kind:            store.KindText,
		Recipients:      members,
	})
}

// submit hands the request of frame id (a send, edit or delete) to the
// sequencer without waiting, in one of the stream's in-flight slots
// (bounding its unacknowledged sends), and queues the frame's SendAck, or
// its FrameError, to the writer once the batch has committed.
func (st *stream) submit(id uint64, req *sequence.Request) error {
	return st.submitTraced(st.ctx, nil, id, req)
}

// startSpan starts a span of a frame when tracing is on: its context (the
// stream's when off) and the span (nil when off).
func (st *stream) startSpan(name string) (context.Context, trace.Span) {
	if st.s.tracer == nil {
		return st.ctx, nil
	}
	return st.s.tracer.Start(st.ctx, name, trace.WithAttributes(attribute.String("chat.user_id", st.p.UserID)))
}

// endSpan ends span (if any) with err as its status, and returns err.
func endSpan(span trace.Span, err error) error {
	if span != nil {
		if err != nil {
			span.SetStatus(otelcodes.Error, grpcerr.Code(err).String())
		}
		span.End()
	}
	return err
}

// submitTraced is submit under ctx; span (may be nil) ends when the
// frame's reply is queued.
func (st *stream) submitTraced(ctx context.Context, span trace.Span, id uint64, req *sequence.Request) error {
	s := st.s
	select {
	case st.inflight <- struct{}{}:
	case <-st.sess.Done():
		return endSpan(span, st.sess.Err())
	case <-st.ctx.Done():
		return endSpan(span, status.FromContextError(st.ctx.Err()).Err())
	}
	t0 := time.Now()
	cmid := req.ClientMessageID
	st.pending(cmid)
	err := s.seq.SubmitContext(ctx, req, func(r sequence.Result) {
		defer endSpan(span, r.Err)
		// On the sequencer goroutine: never block. The in-flight slot is
		// released by the writer once the reply is on the wire, so a
		// device that pipelines sends faster than it reads is slowed down
		// (its reader waits) instead of overflowing its queue.
		var f *chatv1.ServerFrame
		if r.Err != nil {
			s.metrics.FrameErrors.WithLabelValues(grpcerr.Code(r.Err).String()).Inc()
			f = frameError(id, r.Err)
		} else {
			if r.Duplicate {
				s.metrics.Duplicates.Inc()
			} else {
				s.metrics.MessagesAccepted.Inc()
			}
			s.metrics.SendLatency.Observe(time.Since(t0).Seconds())
			f = &chatv1.ServerFrame{FrameId: id, Payload: &chatv1.ServerFrame_SendAck{SendAck: sendAckOf(r)}}
		}
		if !st.sess.TryEnqueue(hub.Item{Frame: f, Op: sendReply{cmid: cmid}}) {
			st.unpend(cmid)
			<-st.inflight // the stream is closing: nobody will write it
		}
	})
	if err != nil {
		st.unpend(cmid)
		<-st.inflight
		return endSpan(span, err)
	}
	return nil
}

// sendAckOf is the SendAck of a committed (or duplicate) request.
func sendAckOf(r sequence.Result) *chatv1.SendAck {
	return &chatv1.SendAck{
		ChannelId:       r.ChannelID,
		MessageId:       r.MessageID,
		CreatedAt:       timestamppb.New(r.CreatedAt),
		ClientMessageId: r.ClientMessageID,
		Duplicate:       r.Duplicate,
	}
}

// resolveTarget returns the channel a send goes to and its members (user
// ids, the sender included). A direct channel is created on first use.
// Errors: InvalidArgument (bad target), NotFound (no such user or
// channel), PermissionDenied (not a member), Internal.
func (s *Service) resolveTarget(ctx context.Context, sender string, m *chatv1.SendMessage) (string, []string, error) {
	switch t := m.GetTarget().(type) {
	case *chatv1.SendMessage_ToUser:
		peer, err := s.peer(ctx, sender, t.ToUser)
		if err != nil {
			return "", nil, err
		}
		id, err := s.ensureDirect(ctx, sender, peer)
		if err != nil {
			return "", nil, err
		}
		return id, []string{sender, peer}, nil
	case *chatv1.SendMessage_ChannelId:
		if err := checkChannelID(t.ChannelId); err != nil {
			return "", nil, err
		}
		// One read: the member list says whether the sender is a member;
		// only a sender not in it (rare) costs the reads that say why.
		for range 2 {
			ms, err := s.st.ListMembers(ctx, t.ChannelId)
			if err != nil {
				return "", nil, s.storeErr(ctx, "Send.ListMembers", err)
			}
			ids := make([]string, len(ms))
			in := false
			for i := range ms {
				ids[i] = ms[i].UserID
				in = in || ids[i] == sender
			}
			if in {
				return t.ChannelId, ids, nil
			}
			if _, err := s.memberOf(ctx, t.ChannelId, sender); err != nil {
				return "", nil, err
			}
			// Joined between the two reads: read the list again.
		}
		return "", nil, errNotMember
	default:
		return "", nil, errNoTarget
	}
}

// peer canonicalises a to_user and checks that the user exists and is not
// the caller.
func (s *Service) peer(ctx context.Context, caller, username string) (string, error) {
	peer, err := s.canonical(username)
	if err != nil {
		if grpcerr.Code(err) == codes.InvalidArgument {
			return "", err
		}
		return "", status.Error(codes.InvalidArgument, "invalid username")
	}
	if peer == caller {
		return "", errSelfDirect
	}
	if s.users.has(peer) {
		return peer, nil // users are never deleted
	}
	if _, err := s.st.GetUser(ctx, peer); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return "", errUserMissing // not cached: a sign-up is seen at once
		}
		return "", s.storeErr(ctx, "GetUser", err)
	}
	s.users.add(peer)
	return peer, nil
}

// ensureDirect returns the id of the direct channel of a and b, creating
// it (with both as members) if needed. A direct channel and its members
// never change once created, so a channel seen once is remembered
// (s.directs) and later sends to it read nothing from the store.
func (s *Service) ensureDirect(ctx context.Context, a, b string) (string, error) {
	id := directChannelID(a, b)
	if s.directs.has(id) {
		return id, nil
	}
	if _, err := s.st.GetChannel(ctx, id); err == nil {
		s.directs.add(id)
		return id, nil
	} else if !errors.Is(err, store.ErrNotFound) {
		return "", s.storeErr(ctx, "GetChannel", err)
	}
	now := s.now().UTC()
	ch := &store.Channel{ID: id, Type: store.ChannelDirect, CreatedAt: now, CreatedBy: a}
	err := s.st.CreateChannel(ctx, ch, []store.Member{
		{ChannelID: id, UserID: a, Role: store.RoleMember, JoinedAt: now},
		{ChannelID: id, UserID: b, Role: store.RoleMember, JoinedAt: now},
	})
	if err != nil && !errors.Is(err, store.ErrAlreadyExists) {
		return "", s.storeErr(ctx, "CreateChannel", err)
	}
	s.directs.add(id)
	return id, nil
}

// memberOf returns the caller's membership of the channel. Errors:
// NotFound (no such channel), PermissionDenied (not a member), Internal.
func (s *Service) memberOf(ctx context.Context, channelID, userID string) (*store.Member, error) {
	m, err := s.st.GetMember(ctx, channelID, userID)
	if err == nil {
		return m, nil
	}
	if !errors.Is(err, store.ErrNotFound) {
		return nil, s.storeErr(ctx, "GetMember", err)
	}
	if _, err := s.channel(ctx, channelID); err != nil {
		return nil, err
	}
	return nil, errNotMember
}

// channel reads a channel from the store. Errors: NotFound (no such
// channel), Internal.
func (s *Service) channel(ctx context.Context, channelID string) (*store.Channel, error) {
	ch, err := s.st.GetChannel(ctx, channelID)
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, errChannelMissing
		}
		return nil, s.storeErr(ctx, "GetChannel", err)
	}
	return ch, nil
}

func (st *stream) handleTyping(id uint64, t *chatv1.Typing) error {
	s := st.s
	ch := t.GetChannelId()
	if err := checkChannelID(ch); err != nil {
		return st.replyErr(id, err)
	}
	if _, err := s.memberOf(st.ctx, ch, st.p.UserID); err != nil {
		return st.replyErr(id, err)
	}
	now := s.now()
	if !s.typing.AllowAt(st.key+"\x00"+ch, now) {
		return nil // ephemeral: extra ones are dropped silently
	}
	ms, err := s.st.ListMembers(st.ctx, ch)
	if err != nil {
		return st.replyErr(id, s.storeErr(st.ctx, "Typing.ListMembers", err))
	}
	f := &chatv1.ServerFrame{Payload: &chatv1.ServerFrame_Typing{Typing: &chatv1.TypingEvent{
		ChannelId: ch,
		UserId:    st.p.UserID,
		ExpiresAt: timestamppb.New(now.Add(TypingTTL)),
	}}}
	events := make([]router.Event, 0, len(ms))
	for _, m := range ms {
		ev := router.Event{UserID: m.UserID, Frame: f}
		if m.UserID == st.p.UserID {
			ev.SkipDeviceID = st.p.DeviceID
		}
		events = append(events, ev)
	}
	if err := s.router.Route(st.ctx, events); err != nil {
		s.log.Debug("chat: routing typing failed", "channel_id", ch, "err", err)
	}
	return nil
}
