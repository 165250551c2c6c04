package main

import (
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
)

// relayQueueSize bounds each stream's outgoing queue, in frames, as
// chatd's hub.DefaultQueueSize does; a stream whose queue is full ends
// with ResourceExhausted (chatd ends a device that does not read the same
// way).
const relayQueueSize = 1024

var (
	errNoToken     = status.Error(codes.Unauthenticated, "no bearer token in the authorization metadata")
	errOverflow    = status.Error(codes.ResourceExhausted, "send queue overflow: the device does not read")
	errBeyondHead  = status.Error(codes.FailedPrecondition, "ack beyond inbox head")
	errBadTarget   = status.Error(codes.InvalidArgument, "send: only to_user is served by the relay")
	errSelf        = status.Error(codes.InvalidArgument, "cannot send a direct message to yourself")
	errUnsupported = status.Error(codes.Unimplemented, "frame kind not served by the relay")
	errCommit      = status.Error(codes.Unavailable, "commit log write or fdatasync failed; retry")
)

// relay is the --mode relay ChatService: the frames chatd sends on the
// pairs shape (docs/performance.md, "The floor: a bare grpc-go relay on
// the same shape"), from memory, with chatd's goroutines per stream (a
// reader and the handler goroutine writing from a bounded queue). With a
// commit log (--fsync-file) every send is made durable by a group commit
// on one goroutine before it is delivered and answered, as chatd's
// sequencer does; without one the reader delivers and answers inline.
type relay struct {
	chatv1.UnimplementedChatServiceServer
	heartbeat time.Duration
	log       *commitLog // nil: no durability

	mu    sync.Mutex
	users map[string]*relayUser
	chans map[string]*relayChannel
}

// relayUser is one user's inbox head and open streams.
type relayUser struct {
	id      string
	mu      sync.Mutex // orders seq assignment and the enqueues of deliveries
	head    uint64     // the last inbox seq assigned
	streams []*relayStream
}

// relayChannel is a direct channel's last message_id.
type relayChannel struct {
	id   string
	mu   sync.Mutex
	last uint64
}

func newRelay(heartbeat time.Duration, log *commitLog) *relay {
	return &relay{heartbeat: heartbeat, log: log, users: map[string]*relayUser{}, chans: map[string]*relayChannel{}}
}

func (r *relay) user(id string) *relayUser {
	r.mu.Lock()
	u := r.users[id]
	if u == nil {
		u = &relayUser{id: id}
		r.users[id] = u
	}
	r.mu.Unlock()
	return u
}

func (r *relay) channel(a, b string) *relayChannel {
	if b < a {
		a, b = b, a
	}
	id := "dm:" + a + ":" + b
	r.mu.Lock()
	c := r.chans[id]
	if c == nil {
		c = &relayChannel{id: id}
		r.chans[id] = c
	}
	r.mu.Unlock()
	return c
}

// relayToken is the access token LogIn returns: it names the user and the
// device ("<username>/<device name>"); it is also the device id.
func relayToken(username, device string) string { return username + "/" + device }

// principal reads the bearer token of the stream's metadata, as chatd's
// clients send it ("authorization: Bearer <token>"): the user and device.
func principal(ctx context.Context) (user, device string, err error) {
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get("authorization") {
		tok, ok := strings.CutPrefix(v, "Bearer ")
		if !ok {
			continue
		}
		if u, _, ok := strings.Cut(tok, "/"); ok && u != "" {
			return u, tok, nil
		}
	}
	return "", "", errNoToken
}

// relayStream is one device's Chat stream: the reader goroutine handles
// the client's frames, the handler goroutine writes what is queued.
type relayStream struct {
	r      *relay
	gs     chatv1.ChatService_ChatServer
	u      *relayUser
	device string

	qmu   sync.Mutex
	q     []*chatv1.ServerFrame
	spare []*chatv1.ServerFrame // the writer's drained buffer, reused
	dead  bool
	ready chan struct{} // 1: something was queued
	done  chan struct{} // closed on overflow

	// sent is what the writer wrote and the device has not acked yet
	// (seq order): an ack turns it into delivery receipts to the authors,
	// as chatd's deliver.SentLog does. Unbounded for a device that never
	// acks (chatd bounds its log and reads the inbox past it): a
	// measuring tool's shortcut.
	smu  sync.Mutex
	sent []sentEntry

	cursor uint64 // the device's last ack (reader only)
}

type sentEntry struct {
	seq           uint64
	channel, from string
	msgID         uint64
}

// Chat serves one device's stream: Welcome, then a reader goroutine and
// this goroutine writing.
func (r *relay) Chat(gs chatv1.ChatService_ChatServer) error {
	user, device, err := principal(gs.Context())
	if err != nil {
		return err
	}
	st := &relayStream{r: r, gs: gs, u: r.user(user), device: device, ready: make(chan struct{}, 1), done: make(chan struct{})}
	st.u.mu.Lock()
	head := st.u.head
	st.u.streams = append(st.u.streams, st)
	st.u.mu.Unlock()
	defer st.leave()
	// The relay keeps no history: a device is live from its inbox head.
	st.cursor = head
	if err := gs.Send(&chatv1.ServerFrame{Payload: &chatv1.ServerFrame_Welcome{Welcome: &chatv1.Welcome{
		UserId: user, DeviceId: device, Cursor: head, HeadSeq: head,
		HeartbeatIntervalMs: uint32(r.heartbeat / time.Millisecond), ServerId: "grpcfloor",
	}}}); err != nil {
		return err
	}
	readerErr := make(chan error, 1)
	go func() { readerErr <- st.readLoop() }()
	return st.writeLoop(readerErr)
}

func (st *relayStream) leave() {
	u := st.u
	u.mu.Lock()
	for i, s := range u.streams {
		if s == st {
			u.streams = append(u.streams[:i], u.streams[i+1:]...)
			break
		}
	}
	u.mu.Unlock()
}

// enqueue appends frames to the stream's queue and wakes its writer; on
// overflow the stream ends.
func (st *relayStream) enqueue(fs ...*chatv1.ServerFrame) {
	st.qmu.Lock()
	if st.dead {
		st.qmu.Unlock()
		return
	}
	if len(st.q)+len(fs) > relayQueueSize {
		st.dead = true
		st.qmu.Unlock()
		close(st.done)
		return
	}
	st.q = append(st.q, fs...)
	st.qmu.Unlock()
	select {
	case st.ready <- struct{}{}:
	default:
	}
}

func (st *relayStream) writeLoop(readerErr <-chan error) error {
	ctx := st.gs.Context()
	for {
		select {
		case <-st.ready:
			st.qmu.Lock()
			batch := st.q
			st.q = st.spare[:0]
			st.qmu.Unlock()
			for i, f := range batch {
				batch[i] = nil
				if d := f.GetDelivery(); d != nil {
					m := d.GetMessage()
					st.smu.Lock()
					st.sent = append(st.sent, sentEntry{seq: d.GetInboxSeq(), channel: m.GetChannelId(), from: m.GetSenderId(), msgID: m.GetMessageId()})
					st.smu.Unlock()
				}
				if err := st.gs.Send(f); err != nil {
					return err
				}
			}
			st.spare = batch[:0]
		case err := <-readerErr:
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		case <-st.done:
			return errOverflow
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		}
	}
}

func (st *relayStream) readLoop() error {
	for {
		f, err := st.gs.Recv()
		if err != nil {
			return err
		}
		id := f.GetFrameId()
		switch p := f.GetPayload().(type) {
		case *chatv1.ClientFrame_Send:
			st.handleSend(id, p.Send)
		case *chatv1.ClientFrame_Ack:
			st.handleAck(id, p.Ack)
		case *chatv1.ClientFrame_Heartbeat:
			st.enqueue(&chatv1.ServerFrame{FrameId: id, Payload: &chatv1.ServerFrame_HeartbeatAck{
				HeartbeatAck: &chatv1.HeartbeatAck{ServerTime: timestamppb.Now()}}})
		case *chatv1.ClientFrame_Sync:
			// No history: every page is the last, and empty.
			st.enqueue(&chatv1.ServerFrame{FrameId: id, Payload: &chatv1.ServerFrame_SyncPage{
				SyncPage: &chatv1.SyncPage{NextAfterSeq: p.Sync.GetAfterSeq()}}})
		default:
			st.enqueue(frameError(id, errUnsupported))
		}
	}
}

func frameError(id uint64, err error) *chatv1.ServerFrame {
	s, _ := status.FromError(err)
	return &chatv1.ServerFrame{FrameId: id, Payload: &chatv1.ServerFrame_Error{Error: &chatv1.FrameError{Code: int32(s.Code()), Message: s.Message()}}}
}

// send is one accepted SendMessage on its way to the recipients.
type send struct {
	from    *relayStream
	frameID uint64
	to      *relayUser
	ch      *relayChannel
	cmid    string
	text    string
	at      time.Time
	msgID   uint64
	seqs    [2]uint64 // the recipient's and the sender's inbox seq
}

func (st *relayStream) handleSend(id uint64, m *chatv1.SendMessage) {
	to := m.GetToUser()
	switch {
	case to == "":
		st.enqueue(frameError(id, errBadTarget))
		return
	case to == st.u.id:
		st.enqueue(frameError(id, errSelf))
		return
	}
	r := st.r
	s := &send{from: st, frameID: id, to: r.user(to), ch: r.channel(st.u.id, to), cmid: m.GetClientMessageId(), text: m.GetText()}
	if r.log != nil {
		r.log.submit(s)
		return
	}
	// No durability: number, deliver and answer at once, on the reader.
	s.at = time.Now()
	s.route(true)
}

// number assigns the message_id in the channel and a seq in each inbox
// (the committer, before the commit: it alone numbers and routes, in
// order).
func (s *send) number() {
	s.ch.mu.Lock()
	s.ch.last++
	s.msgID = s.ch.last
	s.ch.mu.Unlock()
	for i, u := range [2]*relayUser{s.to, s.from.u} {
		u.mu.Lock()
		u.head++
		s.seqs[i] = u.head
		u.mu.Unlock()
	}
}

// route queues the Delivery to the recipient's streams and to the
// sender's, and the SendAck right after the echo on the sending stream
// (one wake-up, one flush: the same frames chatd writes). With assign it
// numbers the message too, under the channel's lock and each user's, so
// that concurrent readers queue every user's deliveries in seq order and
// every channel's in message_id order; without, s was numbered (and
// made durable) by the committer, which routes in numbering order.
func (s *send) route(assign bool) {
	if assign {
		s.ch.mu.Lock()
		defer s.ch.mu.Unlock()
		s.ch.last++
		s.msgID = s.ch.last
	}
	msg := &chatv1.Message{
		ChannelId: s.ch.id, MessageId: s.msgID, SenderId: s.from.u.id, SenderDeviceId: s.from.device,
		ClientMessageId: s.cmid, Text: s.text, CreatedAt: timestamppb.New(s.at), Kind: chatv1.MessageKind_MESSAGE_KIND_TEXT,
	}
	ack := &chatv1.ServerFrame{FrameId: s.frameID, Payload: &chatv1.ServerFrame_SendAck{SendAck: &chatv1.SendAck{
		ChannelId: s.ch.id, MessageId: s.msgID, CreatedAt: msg.CreatedAt, ClientMessageId: s.cmid}}}
	for i, u := range [2]*relayUser{s.to, s.from.u} {
		u.mu.Lock()
		if assign {
			u.head++
			s.seqs[i] = u.head
		}
		f := &chatv1.ServerFrame{Payload: &chatv1.ServerFrame_Delivery{Delivery: &chatv1.Delivery{InboxSeq: s.seqs[i], Message: msg}}}
		for _, st := range u.streams {
			if st == s.from {
				st.enqueue(f, ack)
				ack = nil
			} else {
				st.enqueue(f)
			}
		}
		u.mu.Unlock()
	}
	if ack != nil { // the sending stream has left
		s.from.enqueue(ack)
	}
}

// handleAck advances the device's cursor, answers it unless no_reply, and
// sends each author of the newly acked messages a delivered ReceiptEvent
// per channel, as chatd's noteDelivered does.
func (st *relayStream) handleAck(id uint64, a *chatv1.Ack) {
	seq := a.GetInboxSeq()
	st.u.mu.Lock()
	head := st.u.head
	st.u.mu.Unlock()
	if seq > head {
		st.enqueue(frameError(id, errBeyondHead))
		return
	}
	prev := st.cursor
	st.cursor = max(st.cursor, seq)
	if !a.GetNoReply() {
		st.enqueue(&chatv1.ServerFrame{FrameId: id, Payload: &chatv1.ServerFrame_AckResult{AckResult: &chatv1.AckResult{Cursor: st.cursor}}})
	}
	if st.cursor <= prev {
		return
	}
	cur := st.cursor
	type top struct {
		channel string
		msgID   uint64
		authors []string
	}
	var tops []top
	st.smu.Lock()
	n := 0
	for _, e := range st.sent {
		if e.seq > cur {
			break
		}
		n++
		if e.from == st.u.id {
			continue
		}
		i := 0
		for i < len(tops) && tops[i].channel != e.channel {
			i++
		}
		if i == len(tops) {
			tops = append(tops, top{channel: e.channel})
		}
		tops[i].msgID = max(tops[i].msgID, e.msgID)
		found := false
		for _, a := range tops[i].authors {
			found = found || a == e.from
		}
		if !found {
			tops[i].authors = append(tops[i].authors, e.from)
		}
	}
	st.sent = append(st.sent[:0], st.sent[n:]...)
	st.smu.Unlock()
	for _, t := range tops {
		f := &chatv1.ServerFrame{Payload: &chatv1.ServerFrame_Receipt{Receipt: &chatv1.ReceiptEvent{
			ChannelId: t.channel, UserId: st.u.id, DeliveredUpTo: t.msgID}}}
		for _, a := range t.authors {
			u := st.r.user(a)
			u.mu.Lock()
			for _, s := range u.streams {
				s.enqueue(f)
			}
			u.mu.Unlock()
		}
	}
}

// relayMetrics are chatd's names for the group commits, so that chatbench
// reports messages per commit for the relay as it does for chatd.
type relayMetrics struct {
	batches, messages prometheus.Counter
}

func newRelayMetrics(reg prometheus.Registerer) *relayMetrics {
	m := &relayMetrics{
		batches:  prometheus.NewCounter(prometheus.CounterOpts{Name: "chatd_sequencer_batches_total", Help: "Group commits (one fdatasync each)."}),
		messages: prometheus.NewCounter(prometheus.CounterOpts{Name: "chatd_sequencer_messages_total", Help: "Messages made durable by group commits."}),
	}
	reg.MustRegister(m.batches, m.messages)
	return m
}
