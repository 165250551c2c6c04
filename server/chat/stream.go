package chat

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/chatd/chatd/server/auth"
	"github.com/chatd/chatd/server/deliver"
	"github.com/chatd/chatd/server/hub"
	"github.com/chatd/chatd/server/presence"
	"github.com/chatd/chatd/server/router"
	"github.com/chatd/chatd/server/sequence"
	"github.com/chatd/chatd/server/store"
)

// gapPage is the page size used to fill a gap in live delivery from the
// store.
const gapPage = 100

// maxParked bounds the live deliveries one stream holds while an earlier
// inbox seq is still pending (cluster mode); beyond it they are dropped
// and later read from the store.
const maxParked = 64

// recheckInterval is how often a stream waiting for pending inbox seqs
// asks for the horizon again.
const recheckInterval = 50 * time.Millisecond

var (
	errNoPayload        = status.Error(codes.InvalidArgument, "frame has no payload")
	errAckBeyondHead    = status.Error(codes.FailedPrecondition, "ack beyond inbox head")
	errHeartbeatTimeout = status.Error(codes.Unavailable, "heartbeat timeout: no frame within the presence grace period; reconnect")
	errSyncLimit        = status.Error(codes.InvalidArgument, fmt.Sprintf("sync limit must be 0 (default %d) or 1 to %d", DefaultSyncLimit, MaxSyncLimit))
	errChannelMissing   = status.Error(codes.NotFound, "channel not found")
	errNotMember        = status.Error(codes.PermissionDenied, "not a member of the channel")
	errSelfDirect       = status.Error(codes.InvalidArgument, "cannot send a direct message to yourself")
	errUserMissing      = status.Error(codes.NotFound, "user not found")
	errUnknownDevice    = status.Error(codes.Unauthenticated, "session revoked")
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
// writer releases the send's in-flight slot.
type sendReply struct{}

// stream is one device's Chat stream.
type stream struct {
	s    *Service
	gs   chatv1.ChatService_ChatServer
	ctx  context.Context
	p    auth.Principal
	sess *hub.Session

	// pc is the device's presence connection (nil without presence).
	pc *presence.Conn
	// lastLimited is when a frame of this stream was last rate limited
	// (unix ns; 0: never).
	lastLimited atomic.Int64

	// Reader state (reader goroutine only).
	key      string        // rate-limit key of the device: user 0x00 device
	inflight chan struct{} // semaphore of unacknowledged sends
	acked    uint64        // the device's cursor as of its last Ack (delivery markers)

	// Writer state (writer goroutine only).
	cursor, head uint64
	live         bool
	// sentUpTo: every inbox entry <= sentUpTo has been sent (or does not
	// exist: a hole below the horizon).
	sentUpTo uint64
	// Cluster mode: inbox seqs above the horizon (Sequencer.Head) may
	// commit out of order. parked holds live deliveries (ascending seq)
	// that cannot be sent yet because an earlier seq is still pending;
	// want is the highest seq known to be written and not yet sent. While
	// want > sentUpTo the writer asks for the horizon again every
	// recheckInterval (recheckC is then armed).
	parked   []parkedDelivery
	want     uint64
	recheck  *time.Timer
	recheckC <-chan time.Time
}

// parkedDelivery is a live Delivery frame waiting for the horizon.
type parkedDelivery struct {
	seq   uint64
	frame *chatv1.ServerFrame
}

// Chat serves one device's stream. See the proto for the protocol. The
// stream ends with Unauthenticated (no principal, token expired, device
// revoked: checked on every frame), ResourceExhausted (the send queue
// overflowed: the device is not reading; or the device opened more than
// the hub's per-device bound of streams and this is its oldest),
// Unavailable (server shutting down, or storage failing) or the client's
// cancellation; when the client half-closes, in-flight sends are
// acknowledged and the stream ends OK.
func (s *Service) Chat(gs chatv1.ChatService_ChatServer) error {
	ctx := gs.Context()
	p, err := principal(ctx)
	if err != nil {
		return err
	}
	if err := s.validate(ctx, p); err != nil {
		return err
	}
	// Cursor and head first, then register: every message committed after
	// the head read is either routed to the registered session or found by
	// the writer's second head read.
	dev, err := s.st.GetDevice(ctx, p.UserID, p.DeviceID)
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return errUnknownDevice
		}
		return s.storeErr(ctx, "Chat.GetDevice", err)
	}
	head, err := s.seq.Head(ctx, p.UserID)
	if err != nil {
		return err
	}
	sess, err := s.hub.Register(ctx, p.UserID, p.DeviceID, s.sendQueue)
	if err != nil {
		return err
	}
	defer s.hub.Unregister(sess)
	// Presence: online from now on; a clean end (the client half-closed)
	// takes the device offline at once, any other end leaves it online for
	// the grace period so that a quick reconnect does not flap.
	var pc *presence.Conn
	var expired <-chan struct{}
	clean := false
	if s.presence != nil {
		if pc, err = s.presence.Connect(ctx, p.UserID, p.DeviceID); err != nil {
			return err
		}
		expired = pc.Expired()
		defer func() { pc.Close(clean) }()
	}
	s.metrics.StreamsOpen.Inc()
	defer s.metrics.StreamsOpen.Dec()

	st := &stream{
		s: s, gs: gs, ctx: ctx, p: p, sess: sess,
		key:      p.UserID + "\x00" + p.DeviceID,
		inflight: make(chan struct{}, s.inFlight),
		acked:    dev.Cursor,
		cursor:   dev.Cursor,
		head:     head,
		pc:       pc,
	}
	// Two goroutines per stream: the reader, and this handler goroutine,
	// which writes. The reader blocks in Recv, which only returns (for
	// good) once this handler has returned, so the writer must be the one
	// that can end the stream.
	readerErr := make(chan error, 1)
	go func() { readerErr <- st.readLoop() }()
	err = st.writeLoop(readerErr, expired)
	clean = err == nil
	return err
}

// endStatus is the error the stream ends with once its session is closed.
// A send queue that overflowed while the device was being rate limited was
// filled by the replies to its rejected frames: say so, rather than that
// the device is not reading.
func (st *stream) endStatus() error {
	sst := st.sess.Status()
	if sst.Code() == codes.ResourceExhausted && sst.Message() == hub.OverflowMessage {
		if t := st.lastLimited.Load(); t != 0 && time.Since(time.Unix(0, t)) < 2*time.Second {
			return status.Errorf(codes.ResourceExhausted,
				"frame rate exceeded: at most %g frames/s (burst %d), and the replies to the rejected frames filled the send queue; slow down and reconnect",
				st.s.frameRate, st.s.burst)
		}
	}
	return sst.Err()
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
	switch status.Code(err) {
	case codes.Unauthenticated, codes.Canceled, codes.DeadlineExceeded:
		return err
	}
	return errSessionCheck
}

// ------------------------------------------------------------------ writer

func (st *stream) send(f *chatv1.ServerFrame) error {
	if err := st.gs.Send(f); err != nil {
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
// flight was acknowledged and written). readerErr delivers the reader's
// end; expired fires when the device missed its heartbeats.
func (st *stream) writeLoop(readerErr <-chan error, expired <-chan struct{}) error {
	s := st.s
	err := st.send(&chatv1.ServerFrame{Payload: &chatv1.ServerFrame_Welcome{Welcome: &chatv1.Welcome{
		UserId:              st.p.UserID,
		DeviceId:            st.p.DeviceID,
		Cursor:              st.cursor,
		HeadSeq:             st.head,
		HeartbeatIntervalMs: uint32(s.heartbeat / time.Millisecond),
		ServerId:            s.serverID,
	}}})
	if err != nil {
		return err
	}
	defer func() {
		if st.recheck != nil {
			st.recheck.Stop()
		}
	}()
	if st.cursor >= st.head {
		// Up to date: live from the head. Anything committed between the
		// head read and the registration was published before this stream
		// could receive it: read the head again and send what is missing,
		// and look for entries written above it (cluster mode: committed
		// while an earlier seq was pending, and published before this
		// stream could receive them).
		st.live, st.sentUpTo = true, st.head
		h, err := s.seq.Head(st.ctx, st.p.UserID)
		if err != nil {
			return err
		}
		if err := st.fillThrough(h, true); err != nil {
			return err
		}
		st.settle()
	}
	// closing: the client half-closed. The stream ends OK once every send
	// in flight has its reply written (the writer releases a send's slot
	// after writing its reply) and what was queued by then is sent.
	closing := false
	for {
		if closing && len(st.inflight) == 0 {
			return st.drain()
		}
		select {
		case <-st.sess.Done():
			return st.endStatus()
		case <-expired:
			return errHeartbeatTimeout
		case err := <-readerErr:
			if err != io.EOF {
				if st.sess.Status() != nil {
					return st.endStatus() // e.g. closed by overflow while the reader waited
				}
				return err
			}
			closing, readerErr = true, nil
		case <-st.ctx.Done():
			return status.FromContextError(st.ctx.Err()).Err()
		case <-st.recheckC:
			st.recheckC = nil
			if err := st.advance(); err != nil {
				return err
			}
		case <-st.sess.Ready():
			if err := st.drain(); err != nil {
				return err
			}
		}
	}
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
		err := st.send(it.Frame)
		<-st.inflight
		return err
	default:
		return nil
	}
	if d := it.Frame.GetDelivery(); d != nil {
		return st.deliver(it.Frame, d.GetInboxSeq())
	}
	return st.send(it.Frame)
}

// deliver sends a live Delivery with inbox seq q exactly once and in order.
// A delivery right after sentUpTo goes out at once. Before one further
// ahead, everything up to q-1 must be final (q-1 <= the horizon): the
// missing entries (a lost routed event) are then read from the store and
// holes skipped. Otherwise an earlier seq is still pending (another
// server has not committed it yet) and the delivery is parked until the
// horizon passes it.
func (st *stream) deliver(f *chatv1.ServerFrame, q uint64) error {
	if !st.live || q <= st.sentUpTo {
		return nil // behind (the device syncs) or already sent
	}
	if q == st.sentUpTo+1 {
		if err := st.send(f); err != nil {
			return err
		}
		st.sentUpTo = q
		return st.drainParked()
	}
	st.park(f, q)
	if st.recheckC != nil {
		return nil // already waiting for the horizon: the timer rechecks
	}
	return st.advance()
}

// park remembers a live delivery that cannot be sent yet.
func (st *stream) park(f *chatv1.ServerFrame, q uint64) {
	st.want = max(st.want, q)
	i, found := slices.BinarySearchFunc(st.parked, q, func(p parkedDelivery, q uint64) int { return cmp.Compare(p.seq, q) })
	if found || i >= maxParked {
		return // a duplicate, or beyond the buffer: read from the store later
	}
	if len(st.parked) == maxParked {
		st.parked = st.parked[:maxParked-1] // drop the highest: the store has it
	}
	st.parked = slices.Insert(st.parked, i, parkedDelivery{q, f})
}

// drainParked sends the parked deliveries that follow sentUpTo without a
// gap and drops those already sent; then waits for the rest.
func (st *stream) drainParked() error {
	for len(st.parked) > 0 && st.parked[0].seq <= st.sentUpTo+1 {
		p := st.parked[0]
		st.parked[0] = parkedDelivery{}
		st.parked = st.parked[1:]
		if p.seq <= st.sentUpTo {
			continue
		}
		if err := st.send(p.frame); err != nil {
			return err
		}
		st.sentUpTo = p.seq
	}
	st.settle()
	return nil
}

// advance reads the horizon and sends, in order, everything up to it
// (parked deliveries, and the store's entries in between) and the parked
// delivery right after it.
func (st *stream) advance() error {
	if !st.live || st.want <= st.sentUpTo {
		st.settle()
		return nil
	}
	h, err := st.s.seq.Head(st.ctx, st.p.UserID)
	if err != nil {
		st.s.log.Warn("chat: reading the inbox horizon failed", "user_id", st.p.UserID, "err", err)
		return errSyncFailed
	}
	for len(st.parked) > 0 {
		p := st.parked[0]
		if p.seq <= st.sentUpTo {
			st.parked = st.parked[1:]
			continue
		}
		if p.seq-1 > h {
			break
		}
		if err := st.fillThrough(p.seq-1, false); err != nil {
			return err
		}
		if err := st.send(p.frame); err != nil {
			return err
		}
		st.sentUpTo = p.seq
		st.parked[0] = parkedDelivery{}
		st.parked = st.parked[1:]
	}
	if err := st.fillThrough(h, false); err != nil {
		return err
	}
	st.settle()
	return nil
}

// settle drops parked deliveries already sent, and arms or stops the
// recheck timer: armed while something written is not sent yet.
func (st *stream) settle() {
	for len(st.parked) > 0 && st.parked[0].seq <= st.sentUpTo {
		st.parked[0] = parkedDelivery{}
		st.parked = st.parked[1:]
	}
	if len(st.parked) == 0 {
		st.parked = nil
	}
	if !st.live || st.want <= st.sentUpTo {
		st.want = 0
		if st.recheckC != nil {
			st.recheck.Stop()
			st.recheckC = nil
		}
		return
	}
	if st.recheckC == nil {
		if st.recheck == nil {
			st.recheck = time.NewTimer(recheckInterval)
		} else {
			st.recheck.Reset(recheckInterval)
		}
		st.recheckC = st.recheck.C
	}
}

// fillThrough sends, from the store and in order, the deliveries after
// sentUpTo up to target, which must be at most the horizon: every seq up
// to it is written or a hole, so afterwards sentUpTo = target. Entries
// found above target (written, maybe not final yet) raise want. With
// probe it reads the store once even when nothing is missing below
// target, to find such entries.
func (st *stream) fillThrough(target uint64, probe bool) error {
	for st.sentUpTo < target || probe {
		probe = false
		select {
		case <-st.sess.Done():
			return st.sess.Status().Err()
		default:
		}
		ds, more, err := st.s.st.Inbox(st.ctx, st.p.UserID, st.sentUpTo, gapPage)
		if err != nil {
			st.s.storeErr(st.ctx, "Chat.fill", err)
			return errSyncFailed
		}
		for _, d := range ds {
			if d.Seq <= st.sentUpTo {
				continue
			}
			if d.Seq > target {
				st.want = max(st.want, d.Seq)
				more = false
				break
			}
			if err := st.send(deliver.DeliveryFrame(d)); err != nil {
				return err
			}
			st.sentUpTo = d.Seq
		}
		if !more || len(ds) == 0 {
			break
		}
	}
	st.sentUpTo = max(st.sentUpTo, target)
	return nil
}

// doSync answers a SyncRequest with one page of the inbox and updates the
// delivery state: the device has (by its own claim) everything up to
// after_seq, and now everything up to the page's last seq; a last page
// (more == false) makes the stream live.
//
// The page never goes past the horizon H (Sequencer.Head, read before the
// store): entries above it may still be joined by earlier, pending seqs
// (cluster mode). more == true: the page was cut (limit or size) and the
// store may hold further entries up to H; ask again from next_after_seq.
// more == false: the device now has every entry up to H (next_after_seq
// is H when after_seq < H, so trailing holes are skipped); later entries
// come live on this stream.
func (st *stream) doSync(op syncOp) error {
	s := st.s
	h, err := s.seq.Head(st.ctx, st.p.UserID)
	if err != nil {
		return st.send(frameError(op.frameID, errSyncFailed))
	}
	ds, more, err := s.st.Inbox(st.ctx, st.p.UserID, op.after, op.limit)
	if err != nil {
		s.storeErr(st.ctx, "Chat.Sync", err)
		return st.send(frameError(op.frameID, errSyncFailed))
	}
	for i, d := range ds {
		if d.Seq > h {
			// Written but not final yet: it comes live (want makes the
			// writer wait for the horizon to pass it).
			st.want = max(st.want, d.Seq)
			ds, more = ds[:i], false
			break
		}
	}
	page := &chatv1.SyncPage{Deliveries: make([]*chatv1.Delivery, 0, len(ds)), More: more, NextAfterSeq: op.after}
	size := 0
	for i, d := range ds {
		pd := &chatv1.Delivery{InboxSeq: d.Seq, Message: deliver.MessageProto(d.Message)}
		size += proto.Size(pd) + 8
		if i > 0 && size > MaxSyncPageBytes {
			ds, page.More = ds[:i], true // the rest comes with the next page
			break
		}
		page.Deliveries = append(page.Deliveries, pd)
	}
	more = page.More
	last := op.after
	if len(ds) > 0 {
		last = ds[len(ds)-1].Seq
		page.NextAfterSeq = last
	}
	if !more {
		// The device has everything up to the horizon: the entries are in
		// this page or holes. (A cursor beyond the head is clamped so that
		// future seqs are not taken as already sent.)
		last = h
		if op.after < h {
			page.NextAfterSeq = h
		}
	}
	if err := st.send(&chatv1.ServerFrame{FrameId: op.frameID, Payload: &chatv1.ServerFrame_SyncPage{SyncPage: page}}); err != nil {
		return err
	}
	s.metrics.SyncPages.Inc()
	s.metrics.DeliveriesSynced.Add(float64(len(ds)))
	st.sentUpTo = max(st.sentUpTo, last)
	if !more {
		st.live = true
	}
	st.settle()
	return nil
}

// ------------------------------------------------------------------ reader

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
	}
}

// reply queues a frame for the writer, waiting while the queue is full.
func (st *stream) reply(f *chatv1.ServerFrame) error {
	return st.sess.Enqueue(st.ctx, hub.Item{Frame: f})
}

func (st *stream) replyErr(frameID uint64, err error) error {
	st.s.metrics.FrameErrors.WithLabelValues(status.Code(err).String()).Inc()
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
		return st.replyErr(id, status.Errorf(codes.ResourceExhausted,
			"frame rate exceeded: at most %g frames/s (burst %d); frame dropped", s.frameRate, s.burst))
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
	if err := st.reply(&chatv1.ServerFrame{FrameId: id, Payload: &chatv1.ServerFrame_AckResult{AckResult: &chatv1.AckResult{Cursor: cur}}}); err != nil {
		return err
	}
	if cur > st.acked {
		prev := st.acked
		st.acked = cur
		s.noteDelivered(st.ctx, st.p.UserID, prev, cur)
	}
	return nil
}

func (st *stream) handleSend(id uint64, m *chatv1.SendMessage) error {
	s := st.s
	if err := checkClientMessageID(m.GetClientMessageId()); err != nil {
		return st.replyErr(id, err)
	}
	if err := checkText(m.GetText()); err != nil {
		return st.replyErr(id, err)
	}
	channelID, members, err := s.resolveTarget(st.ctx, st.p.UserID, m)
	if err != nil {
		return st.replyErr(id, err)
	}
	// Bound the unacknowledged sends of this stream.
	select {
	case st.inflight <- struct{}{}:
	case <-st.sess.Done():
		return st.sess.Status().Err()
	case <-st.ctx.Done():
		return status.FromContextError(st.ctx.Err()).Err()
	}
	req := &sequence.Request{
		ChannelID:       channelID,
		SenderID:        st.p.UserID,
		SenderDeviceID:  st.p.DeviceID,
		ClientMessageID: m.GetClientMessageId(),
		Text:            m.GetText(),
		Kind:            store.KindText,
		Recipients:      members,
	}
	t0 := time.Now()
	err = s.seq.SubmitContext(st.ctx, req, func(r sequence.Result) {
		// On the sequencer goroutine: never block. The in-flight slot is
		// released by the writer once the reply is on the wire, so a
		// device that pipelines sends faster than it reads is slowed down
		// (its reader waits) instead of overflowing its queue.
		var f *chatv1.ServerFrame
		if r.Err != nil {
			s.metrics.FrameErrors.WithLabelValues(status.Code(r.Err).String()).Inc()
			f = frameError(id, r.Err)
		} else {
			if r.Duplicate {
				s.metrics.Duplicates.Inc()
			} else {
				s.metrics.MessagesAccepted.Inc()
			}
			s.metrics.SendLatency.Observe(time.Since(t0).Seconds())
			f = &chatv1.ServerFrame{FrameId: id, Payload: &chatv1.ServerFrame_SendAck{SendAck: &chatv1.SendAck{
				ChannelId:       r.ChannelID,
				MessageId:       r.MessageID,
				CreatedAt:       timestamppb.New(r.CreatedAt),
				ClientMessageId: r.ClientMessageID,
				Duplicate:       r.Duplicate,
			}}}
		}
		if !st.sess.TryEnqueue(hub.Item{Frame: f, Op: sendReply{}}) {
			<-st.inflight // the stream is closing: nobody will write it
		}
	})
	if err != nil {
		<-st.inflight
		return err
	}
	return nil
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
		if _, err := s.memberOf(ctx, t.ChannelId, sender); err != nil {
			return "", nil, err
		}
		ms, err := s.st.ListMembers(ctx, t.ChannelId)
		if err != nil {
			return "", nil, s.storeErr(ctx, "Send.ListMembers", err)
		}
		ids := make([]string, len(ms))
		for i := range ms {
			ids[i] = ms[i].UserID
		}
		return t.ChannelId, ids, nil
	default:
		return "", nil, errNoTarget
	}
}

// peer canonicalises a to_user and checks that the user exists and is not
// the caller.
func (s *Service) peer(ctx context.Context, caller, username string) (string, error) {
	peer, err := s.canonical(username)
	if err != nil {
		if status.Code(err) == codes.InvalidArgument {
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
	if _, err := s.st.GetChannel(ctx, channelID); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, errChannelMissing
		}
		return nil, s.storeErr(ctx, "GetChannel", err)
	}
	return nil, errNotMember
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
