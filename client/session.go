package client

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Defaults for SessionOptions.
const (
	// DefaultDeliveryBuffer is the capacity of Session.Deliveries.
	DefaultDeliveryBuffer = 1024
	// DefaultTypingBuffer is the capacity of Session.TypingEvents.
	DefaultTypingBuffer = 64
	// DefaultEventBuffer is the capacity of Session.Receipts and of
	// Session.UnreadEvents.
	DefaultEventBuffer = 256
	// DefaultMaxInFlight bounds the frames awaiting a reply per session.
	DefaultMaxInFlight = 1024
	// defaultHeartbeat is used only when the Welcome names no interval:
	// the server tells the interval it wants in every Welcome
	// (heartbeat_interval_ms, chatd's --heartbeat-interval). It is the
	// server's default (presence.DefaultHeartbeatInterval, which a test
	// checks) but kept here: the SDK does not import server packages.
	defaultHeartbeat = 25 * time.Second
	// outQueue is the capacity of the writer queue, in frames.
	outQueue = 256
	// handQueue is the least capacity of the queue from the reader to the
	// hand-over goroutine, in deliveries and SyncAll replies; it is at least
	// the Deliveries buffer, so that as many live deliveries can arrive
	// while SyncAll's callback walks a page as could wait in Deliveries.
	handQueue = 64
	// autoAckTimeout bounds one background Ack round trip.
	autoAckTimeout = 30 * time.Second
)

// ErrClosed is what Session.Err returns after Session.Close, and what
// methods of a closed Session return.
// It carries codes.Canceled, so status.Code(ErrClosed) == codes.Canceled.
var ErrClosed = status.Error(codes.Canceled, "client: session closed")

// ErrSyncOverrun is SyncAll's error when more live deliveries arrived
// while it was syncing than the session can hold back (the Deliveries
// buffer): the session cannot hand them over without a gap. Close the
// session and connect again (WithResumeFrom): a new stream syncs them.
var ErrSyncOverrun = status.Error(codes.Aborted, "client: too many live deliveries arrived during SyncAll; reconnect to sync them")

// SessionOption configures Connect.
type SessionOption func(*sessionOptions)

type sessionOptions struct {
	deliveryBuffer int
	typingBuffer   int
	eventBuffer    int
	maxInFlight    int
	autoAck        bool
	autoAckEvery   time.Duration
	resumeAfter    uint64
	resumeSet      bool // WithResumeAfter was given
	resumeFrom     *Session
}

// WithDeliveryBuffer sets the capacity of the Deliveries channel (default
// DefaultDeliveryBuffer, minimum 1). See Session.Deliveries for what
// happens when it is full.
func WithDeliveryBuffer(n int) SessionOption {
	return func(o *sessionOptions) { o.deliveryBuffer = max(n, 1) }
}

// WithTypingBuffer sets the capacity of the TypingEvents channel (default
// DefaultTypingBuffer, minimum 1). Typing events that do not fit are dropped.
func WithTypingBuffer(n int) SessionOption {
	return func(o *sessionOptions) { o.typingBuffer = max(n, 1) }
}

// WithMaxInFlight bounds how many frames may await a reply at once (default
// DefaultMaxInFlight, minimum 1). Further Send, Sync, Ack and Heartbeat
// calls block until a reply arrives or their context ends.
func WithMaxInFlight(n int) SessionOption {
	return func(o *sessionOptions) { o.maxInFlight = max(n, 1) }
}

// WithAutoAck makes the session ack, in the background, every inbox_seq it
// hands to the application (a Delivery placed into the Deliveries channel,
// or one passed to SyncAll's callback that returned nil). At most one Ack is
// sent per interval (0: as soon as the previous Ack completed); acks in
// between are coalesced into the highest seq. With an interval the acks ask
// for no reply (Ack.no_reply), so Session.Cursor moves only with Ack or
// Flush, which wait for the server's AckResult.
//
// Auto-ack means at-most-once processing if the application crashes:
// deliveries still buffered in the channel are acked but not yet processed.
// Applications that need at-least-once call AckAsync or Ack themselves after
// processing each delivery.
func WithAutoAck(interval time.Duration) SessionOption {
	return func(o *sessionOptions) { o.autoAck = true; o.autoAckEvery = max(interval, 0) }
}

// WithResumeAfter tells the session that the application has already
// processed every inbox_seq up to seq (for example in a previous session
// whose last ack did not reach the server). SyncAll then starts after
// max(Welcome.cursor, seq) and deliveries up to seq are dropped as
// duplicates.
func WithResumeAfter(seq uint64) SessionOption {
	return func(o *sessionOptions) { o.resumeAfter, o.resumeSet = seq, true }
}

// WithResumeFrom continues the hand-over of an earlier session of the same
// device (usually one that ended): like WithResumeAfter(prev.LastSeq()),
// and the new session also remembers the messages prev handed over, so a
// message that the server placed again under a new inbox_seq (cluster
// mode, docs/sequencing.md "Duplicates") is not handed over a second time
// after the reconnect. Use WithResumeAfter as well when the application has
// processed less than prev.LastSeq() (deliveries left in prev's channel):
// the lower of the two applies.
func WithResumeFrom(prev *Session) SessionOption {
	return func(o *sessionOptions) { o.resumeFrom = prev }
}

// Session is one open Chat stream of a device. It demultiplexes the
// server's frames: replies go to the call that sent the frame (matched by
// frame_id), Deliveries and TypingEvents go to bounded channels. It sends a
// Heartbeat at the interval the server asked for in its Welcome.
//
// Methods are safe for concurrent use. After the stream ends, every method
// returns the error Err reports.
type Session struct {
	stream  grpc.BidiStreamingClient[chatv1.ClientFrame, chatv1.ServerFrame]
	ctx     context.Context // the stream's context; canceled when the session ends
	cancel  context.CancelFunc
	welcome *chatv1.Welcome
	opts    sessionOptions

	nextID   atomic.Uint64
	out      chan outFrame
	inflight chan struct{}

	deliveries chan *chatv1.Delivery
	typing     chan *chatv1.TypingEvent
	receipts   chan *chatv1.ReceiptEvent
	unread     chan *chatv1.UnreadEvent
	drain      chan *chatv1.Drain // cap 1: the server's Drain frame

	// hand carries live deliveries and the replies to SyncAll's requests,
	// in the order the reader received them, to the hand-over goroutine:
	// the one place where deliveries are handed to the application.
	hand   chan handItem
	syncMu sync.Mutex // serialises SyncAll calls
	// handStopped: the hand-over dropped a delivery at the end of the
	// session; later ones are dropped too. Only the hand-over touches it.
	handStopped bool

	mu     sync.Mutex
	calls  map[uint64]*call // frames awaiting a reply, by frame_id
	seen   uint64           // highest inbox_seq handed to the application
	recent recentMessages   // recently delivered (channel_id, message_id)
	// behind: a SyncAll is walking the inbox, or the last one stopped
	// before its last page. Live deliveries are not handed over meanwhile:
	// they are not contiguous with seen, and the sync pages bring them.
	behind bool
	// held: live deliveries that arrived while behind, in arrival order
	// (at most cap(deliveries)); SyncAll hands them over with its pages,
	// in seq order. The server does not repeat in a sync page what the
	// stream already sent live, so they must not be dropped. heldLost: one
	// more did not fit (SyncAll then asks for a reconnect).
	held     []*chatv1.Delivery
	heldLost bool
	ended    bool
	endErr   error

	cursor  atomic.Uint64 // highest cursor confirmed by the server
	ackWant atomic.Uint64 // highest seq passed to AckAsync
	ackKick chan struct{}
	// The frame_id of the last Ack sent without a reply (auto-ack with an
	// interval), and whether the server refused it (a FrameError for it):
	// the ack loop then sends it again.
	noReplyAck    atomic.Uint64
	noReplyFailed atomic.Bool

	dupDropped     atomic.Uint64
	heldBack       atomic.Uint64
	typingDropped  atomic.Uint64
	receiptDropped atomic.Uint64
	unreadDropped  atomic.Uint64

	done      chan struct{}
	halfClose chan struct{} // closed by Close: the writer flushes and half-closes
	closed    atomic.Bool
	closeOnce sync.Once
	wg        sync.WaitGroup
}

type outFrame struct {
	frame *chatv1.ClientFrame
	call  *call // nil when no reply is awaited
}

// call is one frame awaiting its reply.
type call struct {
	done    chan struct{}
	frame   *chatv1.ServerFrame
	err     error
	once    sync.Once
	release func()
	// turn is set for SyncAll's requests: the reply takes its place in
	// the hand-over sequence, which waits until SyncAll closes turn
	// (it has handed the page over, or given up on it).
	turn chan struct{}
}

// handItem is one entry of the hand-over sequence: a live delivery, or the
// reply f to a SyncAll request c.
type handItem struct {
	d *chatv1.Delivery
	f *chatv1.ServerFrame
	c *call
}

func (c *call) complete(f *chatv1.ServerFrame, err error) {
	c.once.Do(func() {
		c.frame, c.err = f, err
		close(c.done)
		c.release()
	})
}

func (c *call) wait(ctx context.Context) (*chatv1.ServerFrame, error) {
	select {
	case <-c.done:
		return c.frame, c.err
	case <-ctx.Done():
		// The call stays registered until its reply (or the end of the
		// stream) arrives, which frees its in-flight slot.
		return nil, ctx.Err()
	}
}

// Connect opens the device's Chat stream and waits for the server's Welcome.
// ctx bounds only the opening (like net.Dialer.DialContext): once Connect
// returns, the session lives until Close, Client.Close or the server ends
// it. Errors: Unauthenticated (missing, expired or revoked token),
// Unavailable (server unreachable or shutting down), or ctx's error.
//
// If Welcome.head_seq is above the device's cursor (Behind reports true),
// the server pushes no live deliveries until the device has synced to the
// head: call SyncAll first. To resume after a reconnect, pass
// WithResumeFrom(previous session) (and WithResumeAfter with the last seq
// the application processed, if lower).
func (c *Client) Connect(ctx context.Context, opts ...SessionOption) (*Session, error) {
	o := sessionOptions{
		deliveryBuffer: DefaultDeliveryBuffer,
		typingBuffer:   DefaultTypingBuffer,
		eventBuffer:    DefaultEventBuffer,
		maxInFlight:    DefaultMaxInFlight,
	}
	for _, opt := range opts {
		opt(&o)
	}
	if c.Token() == "" {
		return nil, ErrNoToken
	}
	recent := o.resume()
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stop := context.AfterFunc(ctx, cancel)
	stream, err := c.chat.Chat(sctx)
	var first *chatv1.ServerFrame
	if err == nil {
		first, err = stream.Recv()
	}
	if !stop() {
		cancel()
		return nil, ctx.Err()
	}
	if err != nil {
		cancel()
		return nil, err
	}
	w := first.GetWelcome()
	if w == nil {
		cancel()
		return nil, status.Errorf(codes.Internal, "client: first Chat frame is %T, not a Welcome", first.GetPayload())
	}
	s := newSession(sctx, cancel, w, o, recent, max(handQueue, o.deliveryBuffer))
	s.stream = stream
	s.wg.Add(5)
	go s.readLoop()
	go s.handLoop()
	go s.writeLoop()
	go s.heartbeatLoop()
	go s.ackLoop()
	return s, nil
}

// resume applies WithResumeFrom: it lowers resumeAfter to the previous
// session's LastSeq (unless WithResumeAfter set it lower) and returns the
// previous session's memory of messages handed over up to there.
func (o *sessionOptions) resume() recentMessages {
	prev := o.resumeFrom
	if prev == nil {
		return recentMessages{}
	}
	prev.mu.Lock()
	defer prev.mu.Unlock()
	if !o.resumeSet || prev.seen < o.resumeAfter {
		o.resumeAfter = prev.seen
	}
	return prev.recent.clone(o.resumeAfter)
}

// newDetachedSession builds a Session without a stream and without
// goroutines, for tests of the demultiplexing logic (they run handLoop or
// handOver themselves).
func newDetachedSession(w *chatv1.Welcome, o sessionOptions) *Session {
	recent := o.resume()
	ctx, cancel := context.WithCancel(context.Background())
	return newSession(ctx, cancel, w, o, recent, handQueue)
}

// newSession builds a Session on welcome w, with no stream and no
// goroutines: Connect and newDetachedSession share it. The buffers are
// sized from o (at least 1 each; Connect's options always are), hand's
// from handCap.
func newSession(ctx context.Context, cancel context.CancelFunc, w *chatv1.Welcome, o sessionOptions, recent recentMessages, handCap int) *Session {
	s := &Session{
		ctx:        ctx,
		cancel:     cancel,
		welcome:    w,
		opts:       o,
		out:        make(chan outFrame, outQueue),
		inflight:   make(chan struct{}, max(o.maxInFlight, 1)),
		deliveries: make(chan *chatv1.Delivery, max(o.deliveryBuffer, 1)),
		typing:     make(chan *chatv1.TypingEvent, max(o.typingBuffer, 1)),
		receipts:   make(chan *chatv1.ReceiptEvent, max(o.eventBuffer, 1)),
		unread:     make(chan *chatv1.UnreadEvent, max(o.eventBuffer, 1)),
		drain:      make(chan *chatv1.Drain, 1),
		hand:       make(chan handItem, handCap),
		calls:      make(map[uint64]*call),
		seen:       max(w.GetCursor(), o.resumeAfter),
		recent:     recent,
		ackKick:    make(chan struct{}, 1),
		done:       make(chan struct{}),
		halfClose:  make(chan struct{}),
	}
	s.cursor.Store(w.GetCursor())
	s.ackWant.Store(w.GetCursor())
	return s
}

// Welcome returns the server's first frame: user and device ids, the
// device's stored cursor, the inbox head, the heartbeat interval and the
// server id.
func (s *Session) Welcome() *chatv1.Welcome { return s.welcome }

// Behind reports whether the inbox head was above the device's cursor when
// the stream opened, i.e. whether the device must sync before it receives
// live deliveries.
func (s *Session) Behind() bool { return s.welcome.GetHeadSeq() > s.welcome.GetCursor() }

// Deliveries returns the live deliveries pushed by the server, in inbox_seq
// order and deduplicated. The session hands deliveries to the application
// in one ordered sequence, SyncAll's callback and this channel together, in
// the order the server sent them: a live delivery that arrived after a sync
// page is placed here only once SyncAll has handed that page over. The
// session remembers the highest inbox_seq handed over (LastSeq) and drops
// any delivery at or below it, and it drops a message it handed over
// recently under another inbox_seq (same channel_id and message_id: in a
// cluster a message can sit in the inbox twice, docs/sequencing.md). While
// a SyncAll runs, and after one stopped before the end of the inbox (an
// error), live deliveries are not placed here (Stats.HeldBackDeliveries):
// they may lie beyond entries the sync has not handed over yet; the session
// keeps them and SyncAll hands them to its callback together with its pages,
// in seq order (a page leaves out what the stream already sent live); call
// SyncAll again after it failed. The channel is
// closed when the session ends, after the deliveries received before the
// end (as long as the channel has room for them).
//
// The channel is bounded (WithDeliveryBuffer). When it is full the reading
// goroutine blocks, so replies to Send, Sync and Ack are not read either,
// and the server, whose own per-device queue then fills, ends the stream
// with ResourceExhausted (slow consumer). Drain the channel promptly, and
// do not wait for Send or Ack replies in the goroutine that drains it
// unless the channel has room (use SendAsync and AckAsync there).
func (s *Session) Deliveries() <-chan *chatv1.Delivery { return s.deliveries }

// TypingEvents returns typing indicators of other members of the user's
// channels. The channel is bounded (WithTypingBuffer); events that do not
// fit are dropped, since they are ephemeral. It is closed when the session
// ends.
func (s *Session) TypingEvents() <-chan *chatv1.TypingEvent { return s.typing }

// Drained receives the server's Drain frame (capacity 1, never closed):
// the server is going away and asks the device to reconnect elsewhere after
// Drain.reconnect_delay_ms, to one of Drain.endpoints (see the Drain message
// in chat.proto). The stream goes on until the server closes it (at the end
// of its drain window) or Close; Resilient does all of this itself.
func (s *Session) Drained() <-chan *chatv1.Drain { return s.drain }

// Done is closed when the session has ended; Err then says why. The session
// notices the end of the stream when its reader receives it, so while the
// reader is blocked behind a full Deliveries channel, Done (like the closing
// of Deliveries) waits until the application drains the channel.
func (s *Session) Done() <-chan struct{} { return s.done }

// Err returns nil while the session is open. Afterwards it returns why it
// ended: ErrClosed after Close; io.EOF if the server ended the stream with
// an OK status; otherwise the stream's gRPC status error, notably
// Unauthenticated (token expired or revoked, or the device logged out: log
// in again; Reason tells ReasonTokenExpired from ReasonDeviceRevoked),
// ResourceExhausted (slow consumer: reconnect and sync; or, when
// IsEvicted(err), the same device opened a newer stream and this, its
// oldest, was closed: do not reconnect it) and Unavailable (server
// shutting down or connection lost: reconnect).
func (s *Session) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.endErr
}

// closeGrace bounds how long Close waits for the server to end the stream
// after the half-close.
const closeGrace = 2 * time.Second

// Close ends the stream and waits for the session's goroutines to exit. It
// ends it cleanly: frames already queued are sent, the stream is
// half-closed, and the server acknowledges in-flight sends and ends the
// stream OK (so the device goes offline at once instead of after the
// presence grace period). It waits at most 2 s for that, then cancels. It
// does not flush pending AckAsync acks; call Flush first for that. Close is
// idempotent and always returns nil.
func (s *Session) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		if s.stream != nil {
			close(s.halfClose)
			t := time.NewTimer(closeGrace)
			select {
			case <-s.done:
			case <-t.C:
			}
			t.Stop()
		}
		s.cancel()
	})
	s.wg.Wait()
	return nil
}

// Cursor returns the device's cursor as last confirmed by the server (the
// Welcome's cursor, raised by every AckResult).
func (s *Session) Cursor() uint64 { return s.cursor.Load() }

// LastSeq returns the highest inbox_seq handed to the application through
// Deliveries or SyncAll (initially max(Welcome.cursor, WithResumeAfter)).
func (s *Session) LastSeq() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seen
}

// SessionStats counts frames the session dropped.
type SessionStats struct {
	// DuplicateDeliveries: deliveries at or below LastSeq, or of a message
	// handed over recently under another inbox_seq, dropped.
	DuplicateDeliveries uint64
	// HeldBackDeliveries: live deliveries kept back because a SyncAll was
	// running or had stopped before the end of the inbox; SyncAll hands
	// them over with its pages.
	HeldBackDeliveries uint64
	// DroppedTypingEvents: typing events dropped because TypingEvents was full.
	DroppedTypingEvents uint64
	// DroppedReceipts and DroppedUnreadEvents: events dropped because
	// Receipts or UnreadEvents was full (GetReceipts and ListChannels
	// return the current state).
	DroppedReceipts     uint64
	DroppedUnreadEvents uint64
}

// Stats returns the session's drop counters.
func (s *Session) Stats() SessionStats {
	return SessionStats{
		DuplicateDeliveries: s.dupDropped.Load(),
		HeldBackDeliveries:  s.heldBack.Load(),
		DroppedTypingEvents: s.typingDropped.Load(),
		DroppedReceipts:     s.receiptDropped.Load(),
		DroppedUnreadEvents: s.unreadDropped.Load(),
	}
}

// SendParams describes one message to send. Exactly one of ToUser and
// ChannelID must be set.
type SendParams struct {
	// ToUser is a username: the message goes to the direct channel with that
	// user, created on first use.
	ToUser string
	// ChannelID is an existing channel ("dm:..." or "g:...") the sender is a
	// member of.
	ChannelID string
	// Text: valid UTF-8, at most 65536 bytes, not only whitespace.
	Text string
	// ClientMessageID is the idempotency key (1..64 bytes): resending the
	// same id returns the original SendAck with duplicate=true and stores
	// nothing. If empty, a random one (32 hex digits) is generated.
	ClientMessageID string
}

// PendingSend is a message sent with SendAsync whose SendAck has not
// necessarily arrived yet.
type PendingSend struct {
	clientMessageID string
	c               *call
}

// ClientMessageID returns the idempotency key the message was sent with
// (generated if SendParams left it empty). Resend with the same key after a
// failure to avoid duplicates.
func (p *PendingSend) ClientMessageID() string { return p.clientMessageID }

// Done is closed when the SendAck, a FrameError or the end of the session
// has arrived; Wait then returns without blocking.
func (p *PendingSend) Done() <-chan struct{} { return p.c.done }

// Wait waits for the SendAck. Errors: the server's FrameError as a status
// error (InvalidArgument for bad text or target, NotFound for an unknown
// user or a channel the sender is not in, ResourceExhausted when rate
// limited), the session's end error, or ctx's error (the message may still
// have been stored; resend with the same ClientMessageID to find out).
func (p *PendingSend) Wait(ctx context.Context) (*chatv1.SendAck, error) {
	f, err := p.c.wait(ctx)
	if err != nil {
		return nil, err
	}
	if err := frameError(f); err != nil {
		return nil, err
	}
	ack := f.GetSendAck()
	if ack == nil {
		return nil, unexpectedReply(f, "SendAck")
	}
	return ack, nil
}

// SendAsync queues a message and returns without waiting for its SendAck,
// so that many messages can be pipelined on the stream. ctx bounds only the
// queuing (it blocks when WithMaxInFlight frames already await replies).
// Errors: InvalidArgument when not exactly one of ToUser and ChannelID is
// set or a field is not valid UTF-8 (protobuf strings must be; the frame
// could not even be encoded), the session's end error, or ctx's error.
func (s *Session) SendAsync(ctx context.Context, p SendParams) (*PendingSend, error) {
	msg := &chatv1.SendMessage{ClientMessageId: p.ClientMessageID, Text: p.Text}
	switch {
	case p.ToUser != "" && p.ChannelID != "":
		return nil, status.Error(codes.InvalidArgument, "client: set ToUser or ChannelID, not both")
	case p.ToUser != "":
		msg.Target = &chatv1.SendMessage_ToUser{ToUser: p.ToUser}
	case p.ChannelID != "":
		msg.Target = &chatv1.SendMessage_ChannelId{ChannelId: p.ChannelID}
	default:
		return nil, status.Error(codes.InvalidArgument, "client: set ToUser or ChannelID")
	}
	if msg.ClientMessageId == "" {
		msg.ClientMessageId = NewClientMessageID()
	}
	c, err := s.enqueue(ctx, &chatv1.ClientFrame{Payload: &chatv1.ClientFrame_Send{Send: msg}}, true)
	if err != nil {
		return nil, err
	}
	return &PendingSend{clientMessageID: msg.ClientMessageId, c: c}, nil
}

// Send sends a message and waits for the server's SendAck (the message is
// then durably stored). Errors are those of SendAsync and PendingSend.Wait;
// use status.Code(err) to tell them apart.
func (s *Session) Send(ctx context.Context, p SendParams) (*chatv1.SendAck, error) {
	ps, err := s.SendAsync(ctx, p)
	if err != nil {
		return nil, err
	}
	return ps.Wait(ctx)
}

// Sync fetches one page of the device's inbox after afterSeq (exclusive),
// at most limit deliveries (1..1000; 0 means the server default, 100). It
// is the raw request: it neither deduplicates nor changes LastSeq. Errors:
// InvalidArgument (bad limit), the session's end error, or ctx's error.
func (s *Session) Sync(ctx context.Context, afterSeq uint64, limit int32) (*chatv1.SyncPage, error) {
	f, err := s.roundTrip(ctx, &chatv1.ClientFrame{Payload: &chatv1.ClientFrame_Sync{
		Sync: &chatv1.SyncRequest{AfterSeq: afterSeq, Limit: limit},
	}})
	if err != nil {
		return nil, err
	}
	page := f.GetSyncPage()
	if page == nil {
		return nil, unexpectedReply(f, "SyncPage")
	}
	return page, nil
}

// SyncAll pages through the inbox from LastSeq (initially the Welcome's
// cursor) until the server reports no more entries, calling fn for each
// delivery not handed to the application before, in inbox_seq order. limit
// is the page size as for Sync. It always sends at least one request, which
// is what tells the server that the device has caught up and may receive
// live deliveries.
//
// SyncAll's pages and the live deliveries take their turn in one ordered
// hand-over, in the order the server sent them (see Deliveries): a live
// delivery that follows the last page on the wire goes to Deliveries only
// after fn has returned for every entry of that page. While SyncAll runs,
// live deliveries are kept back and given to fn with the page that covers
// them, in seq order (the server leaves out of a page what the stream
// already sent live), so fn sees every entry up to the end of the inbox;
// if more arrive than the Deliveries buffer holds, SyncAll returns
// ErrSyncOverrun at the end of the inbox: close the session and connect
// again (WithResumeFrom). fn runs on the caller's goroutine
// and may call the session's other methods (Ack, Send); the reader goes on
// reading replies meanwhile, and stops reading only if deliveries pile up
// behind the page that fn is working through. Calls of SyncAll are
// serialised.
//
// If fn returns an error, SyncAll stops and returns it; that delivery is not
// counted as handed over, so a later SyncAll offers it again. After an
// error (fn's, the session's or ctx's) live deliveries stay held back until
// a SyncAll reaches the end of the inbox. SyncAll returns the highest
// inbox_seq handed over up to the end of its last page (LastSeq at that
// moment), which is what to Ack once fn's deliveries are durably processed;
// live deliveries placed in Deliveries right after the last page are not
// included (LastSeq may already count them).
func (s *Session) SyncAll(ctx context.Context, limit int32, fn func(*chatv1.Delivery) error) (last uint64, err error) {
	s.syncMu.Lock()
	defer s.syncMu.Unlock()
	s.mu.Lock()
	s.behind = true // until a last page is handed over
	after := s.seen
	s.mu.Unlock()
	// last is what fn was handed (read before the hand-over goes on past a
	// page): live deliveries placed in Deliveries after the last page are
	// not processed yet, so they must not count in what SyncAll returns.
	last = after
	for {
		more, next, err := s.syncStep(ctx, after, limit, fn, &last)
		if err != nil || !more {
			return last, err
		}
		if next <= after {
			return last, status.Errorf(codes.Internal, "client: sync page after %d did not advance (next_after_seq %d)", after, next)
		}
		after = next
	}
}

// syncStep requests one page after afterSeq and, when the page's turn in
// the hand-over sequence has come, hands its new entries to fn. A last
// page (more == false) handed over completely ends the catch-up: live
// deliveries are handed over again, starting with those right behind it.
func (s *Session) syncStep(ctx context.Context, after uint64, limit int32, fn func(*chatv1.Delivery) error, last *uint64) (more bool, next uint64, err error) {
	c := &call{done: make(chan struct{}), turn: make(chan struct{})}
	if err := s.enqueueCall(ctx, &chatv1.ClientFrame{Payload: &chatv1.ClientFrame_Sync{
		Sync: &chatv1.SyncRequest{AfterSeq: after, Limit: limit},
	}}, c); err != nil {
		return false, 0, err
	}
	// Closing turn lets the hand-over go on past this reply: after the page
	// is handed over, or at once if SyncAll gives up on it. Before that,
	// *last records how far fn got (deferred calls run last-in first-out).
	defer close(c.turn)
	defer func() {
		s.mu.Lock()
		*last = s.seen
		s.mu.Unlock()
	}()
	f, err := c.wait(ctx)
	if err != nil {
		return false, 0, err
	}
	if err := frameError(f); err != nil {
		return false, 0, err
	}
	page := f.GetSyncPage()
	if page == nil {
		return false, 0, unexpectedReply(f, "SyncPage")
	}
	// The live deliveries held back so far that this page covers go with
	// it, in seq order: the server leaves out of a page what the stream
	// already sent live (docs/architecture.md).
	ds := page.GetDeliveries()
	s.mu.Lock()
	var taken []*chatv1.Delivery
	kept := s.held[:0]
	for _, d := range s.held {
		if !page.GetMore() || d.GetInboxSeq() <= page.GetNextAfterSeq() {
			taken = append(taken, d)
		} else {
			kept = append(kept, d)
		}
	}
	s.held = kept
	s.mu.Unlock()
	if len(taken) > 0 {
		ds = append(slices.Clone(ds), taken...)
		slices.SortStableFunc(ds, func(a, b *chatv1.Delivery) int { return cmp.Compare(a.GetInboxSeq(), b.GetInboxSeq()) })
	}
	for i, d := range ds {
		seq := d.GetInboxSeq()
		s.mu.Lock()
		prev := s.seen
		if seq <= prev {
			s.mu.Unlock()
			continue
		}
		s.seen = seq
		if s.recent.seen(d.GetMessage(), seq) {
			s.mu.Unlock()
			s.dupDropped.Add(1)
			continue // the same message under a second seq
		}
		s.mu.Unlock()
		if err := fn(d); err != nil {
			s.mu.Lock()
			if s.seen == seq {
				s.seen = prev
			}
			s.recent.forget(d.GetMessage())
			// Held deliveries not handed over wait for the next SyncAll.
			for _, h := range ds[i:] {
				if slices.Contains(taken, h) {
					s.held = append(s.held, h)
				}
			}
			s.mu.Unlock()
			return false, 0, err
		}
		if s.opts.autoAck {
			s.AckAsync(seq)
		}
	}
	if !page.GetMore() {
		s.mu.Lock()
		lost := s.heldLost
		if !lost {
			s.behind = false
		}
		s.mu.Unlock()
		if lost {
			return false, 0, ErrSyncOverrun
		}
	}
	return page.GetMore(), page.GetNextAfterSeq(), nil
}

// Ack tells the server that the device has durably received every inbox
// entry up to and including seq, and returns the device's cursor after it
// (cursors never move backwards, so it may be above seq). Errors: the
// server's FrameError (FailedPrecondition for a seq above the inbox head:
// not readable yet, see Welcome.head_seq; the stream goes on), the
// session's end error, or ctx's error.
func (s *Session) Ack(ctx context.Context, seq uint64) (cursor uint64, err error) {
	f, err := s.roundTrip(ctx, &chatv1.ClientFrame{Payload: &chatv1.ClientFrame_Ack{
		Ack: &chatv1.Ack{InboxSeq: seq},
	}})
	if err != nil {
		return 0, err
	}
	res := f.GetAckResult()
	if res == nil {
		return 0, unexpectedReply(f, "AckResult")
	}
	return res.GetCursor(), nil
}

// AckAsync records that every inbox entry up to seq is processed and acks it
// in the background, coalescing consecutive calls into one Ack of the
// highest seq. It never blocks. Errors of background acks are not reported;
// Flush acks synchronously and reports them.
func (s *Session) AckAsync(seq uint64) {
	for {
		cur := s.ackWant.Load()
		if seq <= cur {
			return
		}
		if s.ackWant.CompareAndSwap(cur, seq) {
			break
		}
	}
	select {
	case s.ackKick <- struct{}{}:
	default:
	}
}

// Flush acks the highest seq passed to AckAsync if the server has not yet
// confirmed it, and waits for the AckResult. Errors are those of Ack.
func (s *Session) Flush(ctx context.Context) error {
	want := s.ackWant.Load()
	if want <= s.cursor.Load() {
		return nil
	}
	_, err := s.Ack(ctx, want)
	return err
}

// Typing tells the other members of channelID that the user is typing.
// There is no reply on success and a server-side FrameError for this frame
// (for example NotFound for a channel the user is not in) is discarded, so
// the error is only the session's end error or ctx's error.
func (s *Session) Typing(ctx context.Context, channelID string) error {
	_, err := s.enqueue(ctx, &chatv1.ClientFrame{Payload: &chatv1.ClientFrame_Typing{
		Typing: &chatv1.Typing{ChannelId: channelID},
	}}, false)
	return err
}

// Heartbeat sends a Heartbeat and waits for the HeartbeatAck (with the
// server's clock). The session already sends heartbeats at the interval
// the server asked for; this is for measuring round trips.
func (s *Session) Heartbeat(ctx context.Context) (*chatv1.HeartbeatAck, error) {
	f, err := s.roundTrip(ctx, &chatv1.ClientFrame{Payload: &chatv1.ClientFrame_Heartbeat{
		Heartbeat: &chatv1.Heartbeat{},
	}})
	if err != nil {
		return nil, err
	}
	ack := f.GetHeartbeatAck()
	if ack == nil {
		return nil, unexpectedReply(f, "HeartbeatAck")
	}
	return ack, nil
}

// roundTrip sends f and waits for its reply, converting a FrameError.
func (s *Session) roundTrip(ctx context.Context, f *chatv1.ClientFrame) (*chatv1.ServerFrame, error) {
	c, err := s.enqueue(ctx, f, true)
	if err != nil {
		return nil, err
	}
	reply, err := c.wait(ctx)
	if err != nil {
		return nil, err
	}
	if err := frameError(reply); err != nil {
		return nil, err
	}
	return reply, nil
}

// enqueueCall is enqueue with the caller's own call (SyncAll's, with a
// turn).
func (s *Session) enqueueCall(ctx context.Context, f *chatv1.ClientFrame, c *call) error {
	_, err := s.enqueueWith(ctx, f, c)
	return err
}

// enqueue assigns f a frame_id and queues it for the writer. With
// wantReply it registers a call that the reader completes with the reply.
func (s *Session) enqueue(ctx context.Context, f *chatv1.ClientFrame, wantReply bool) (*call, error) {
	var c *call
	if wantReply {
		c = &call{done: make(chan struct{})}
	}
	return s.enqueueWith(ctx, f, c)
}

// enqueueWith queues f, registering c (if not nil) for its reply.
func (s *Session) enqueueWith(ctx context.Context, f *chatv1.ClientFrame, c *call) (*call, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	// A frame that cannot be encoded would end the whole stream when the
	// writer sends it: refuse it here, alone.
	if err := checkUTF8(f); err != nil {
		return nil, err
	}
	select {
	case <-s.done:
		return nil, s.Err()
	default:
	}
	if c != nil {
		select {
		case s.inflight <- struct{}{}:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-s.done:
			return nil, s.Err()
		}
		c.release = func() { <-s.inflight }
	}
	f.FrameId = s.nextID.Add(1)
	if a := f.GetAck(); a != nil && a.GetNoReply() {
		// Before the frame can reach the server: its FrameError, if any,
		// must find the id (see dispatch).
		s.noReplyAck.Store(f.FrameId)
	}
	if c != nil {
		s.mu.Lock()
		if s.ended {
			err := s.endErr
			s.mu.Unlock()
			c.release()
			return nil, err
		}
		s.calls[f.FrameId] = c
		s.mu.Unlock()
	}
	select {
	case s.out <- outFrame{frame: f, call: c}:
		return c, nil
	case <-ctx.Done():
		if c != nil {
			s.takeCall(f.FrameId)
			c.complete(nil, ctx.Err())
		}
		return nil, ctx.Err()
	case <-s.done:
		return nil, s.Err()
	}
}

func (s *Session) takeCall(id uint64) *call {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.calls[id]
	delete(s.calls, id)
	return c
}

func (s *Session) readLoop() {
	defer s.wg.Done()
	for {
		f, err := s.stream.Recv()
		if err != nil {
			s.end(err)
			return
		}
		s.dispatch(f)
	}
}

// dispatch routes one server frame. It blocks only when the hand-over
// queue is full (the application does not drain Deliveries, or SyncAll's
// callback is slow), until there is room or the session ends.
func (s *Session) dispatch(f *chatv1.ServerFrame) {
	switch p := f.GetPayload().(type) {
	case *chatv1.ServerFrame_Delivery:
		s.queueHand(handItem{d: p.Delivery})
		return
	case *chatv1.ServerFrame_Typing:
		select {
		case s.typing <- p.Typing:
		default:
			s.typingDropped.Add(1)
		}
		return
	case *chatv1.ServerFrame_Receipt:
		select {
		case s.receipts <- p.Receipt:
		default:
			s.receiptDropped.Add(1)
		}
		return
	case *chatv1.ServerFrame_Unread:
		if f.GetFrameId() != 0 {
			break // the reply to this session's MarkRead
		}
		select {
		case s.unread <- p.Unread:
		default:
			s.unreadDropped.Add(1)
		}
		return
	case *chatv1.ServerFrame_Welcome:
		return // only the first frame is a Welcome; ignore repeats
	case *chatv1.ServerFrame_Drain:
		select {
		case s.drain <- p.Drain:
		default: // one is enough
		}
		return
	case *chatv1.ServerFrame_AckResult:
		raise(&s.cursor, p.AckResult.GetCursor())
	}
	if f.GetFrameId() == 0 {
		return // an unsolicited reply or error has no caller
	}
	if f.GetError() != nil && f.GetFrameId() == s.noReplyAck.Load() {
		// The background ack failed (e.g. rate limited): ack again.
		s.noReplyFailed.Store(true)
		select {
		case s.ackKick <- struct{}{}:
		default:
		}
		return
	}
	if c := s.takeCall(f.GetFrameId()); c != nil {
		if c.turn != nil {
			s.queueHand(handItem{f: f, c: c}) // SyncAll's reply: in order with deliveries
			return
		}
		c.complete(f, nil)
	}
	// Replies to fire-and-forget frames (heartbeats, typing) are dropped.
}

// queueHand appends it to the hand-over sequence. Only the reader calls
// it. When the session is closed meanwhile, a SyncAll reply is failed.
func (s *Session) queueHand(it handItem) {
	select {
	case s.hand <- it:
	case <-s.ctx.Done():
		if it.c != nil {
			it.c.complete(nil, ErrClosed)
		}
	}
}

// handLoop is the hand-over goroutine: it takes the reader's deliveries and
// SyncAll replies in the order they arrived and hands them over, until the
// reader ends the session; then it closes Deliveries.
func (s *Session) handLoop() {
	defer s.wg.Done()
	for it := range s.hand {
		s.handOver(it)
	}
	close(s.deliveries)
}

// handOver hands one item of the sequence over. A SyncAll reply is given to
// the waiting SyncAll, and nothing further is handed over until SyncAll has
// walked the page (or given up on it, or the session ends). Once it has
// dropped a delivery because the session ended with the Deliveries channel
// full, it hands no later delivery over (that would leave a gap).
func (s *Session) handOver(it handItem) {
	if it.c != nil {
		it.c.complete(it.f, nil)
		select {
		case <-it.c.turn:
		case <-s.ctx.Done():
		}
		return
	}
	if s.handStopped {
		return
	}
	d := it.d
	seq := d.GetInboxSeq()
	s.mu.Lock()
	if s.behind {
		if len(s.held) < max(cap(s.deliveries), handQueue) {
			s.held = append(s.held, d)
		} else {
			s.heldLost = true
		}
		s.mu.Unlock()
		s.heldBack.Add(1)
		return
	}
	prev := s.seen
	if seq <= prev || s.recent.seen(d.GetMessage(), seq) {
		if seq > prev {
			s.seen = seq // a repeat of a message under a new seq: skip it, but move on
		}
		s.mu.Unlock()
		s.dupDropped.Add(1)
		return
	}
	s.seen = seq
	s.mu.Unlock()
	// Deliveries received before the end of the session are placed while
	// the channel has room, even when the session has ended.
	select {
	case s.deliveries <- d:
	default:
		select {
		case s.deliveries <- d:
		case <-s.ctx.Done():
			s.mu.Lock()
			if s.seen == seq {
				s.seen = prev
			}
			s.recent.forget(d.GetMessage())
			s.mu.Unlock()
			s.handStopped = true
			return
		}
	}
	if s.opts.autoAck {
		s.AckAsync(seq)
	}
}

// end records why the stream ended, fails every waiting call and closes
// the application's channels. Only the reader calls it.
func (s *Session) end(err error) {
	if s.closed.Load() {
		err = ErrClosed
	}
	s.mu.Lock()
	s.ended = true
	s.endErr = err
	calls := s.calls
	s.calls = nil
	s.mu.Unlock()
	for _, c := range calls {
		c.complete(nil, err)
	}
	close(s.hand) // handLoop closes Deliveries once it has handed over what came before
	close(s.typing)
	close(s.receipts)
	close(s.unread)
	close(s.done)
	s.cancel()
}

func (s *Session) writeLoop() {
	defer s.wg.Done()
	for {
		select {
		case of := <-s.out:
			err := s.stream.Send(of.frame)
			if err == nil {
				continue
			}
			if errors.Is(err, io.EOF) {
				// The stream is over; the reader gets its status from Recv
				// and fails the waiting calls with it.
				return
			}
			if of.call != nil {
				s.takeCall(of.frame.GetFrameId())
				of.call.complete(nil, err)
			}
		case <-s.halfClose:
			for {
				select {
				case of := <-s.out:
					if err := s.stream.Send(of.frame); err != nil {
						return
					}
				default:
					_ = s.stream.CloseSend()
					return
				}
			}
		case <-s.ctx.Done():
			return
		}
	}
}

func (s *Session) heartbeatLoop() {
	defer s.wg.Done()
	every := time.Duration(s.welcome.GetHeartbeatIntervalMs()) * time.Millisecond
	if every <= 0 {
		every = defaultHeartbeat
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			f := &chatv1.ClientFrame{
				FrameId: s.nextID.Add(1),
				Payload: &chatv1.ClientFrame_Heartbeat{Heartbeat: &chatv1.Heartbeat{}},
			}
			select {
			case s.out <- outFrame{frame: f}:
			default: // the queue is full, so the stream is busy anyway
			}
		case <-s.ctx.Done():
			return
		}
	}
}

func (s *Session) ackLoop() {
	defer s.wg.Done()
	var sent uint64 // highest seq acked without a reply
	for {
		select {
		case <-s.ackKick:
		case <-s.ctx.Done():
			return
		}
		if s.noReplyFailed.Swap(false) {
			sent = 0 // the last one was refused: send it again
		}
		if want := s.ackWant.Load(); want > s.cursor.Load() && want > sent {
			ctx, cancel := context.WithTimeout(s.ctx, autoAckTimeout)
			if s.opts.autoAckEvery > 0 {
				// Periodic: nothing waits for the reply, so ask for none
				// (Ack.no_reply: a frame less for the server to write);
				// the interval paces the acks. A lost one is made good by
				// the next; Flush still waits for a confirmed cursor.
				f := &chatv1.ClientFrame{Payload: &chatv1.ClientFrame_Ack{
					Ack: &chatv1.Ack{InboxSeq: want, NoReply: true},
				}}
				if _, err := s.enqueue(ctx, f, false); err == nil {
					sent = want
				}
			} else {
				_, _ = s.Ack(ctx, want)
			}
			cancel()
		}
		if s.opts.autoAckEvery > 0 {
			t := time.NewTimer(s.opts.autoAckEvery)
			select {
			case <-t.C:
			case <-s.ctx.Done():
				t.Stop()
				return
			}
		}
	}
}

// raise sets v to max(v, x).
func raise(v *atomic.Uint64, x uint64) {
	for {
		cur := v.Load()
		if x <= cur || v.CompareAndSwap(cur, x) {
			return
		}
	}
}

// frameError converts a FrameError reply into a status error.
func frameError(f *chatv1.ServerFrame) error {
	e := f.GetError()
	if e == nil {
		return nil
	}
	code := codes.Code(e.GetCode())
	if code == codes.OK {
		code = codes.Unknown
	}
	return status.Error(code, e.GetMessage())
}

func unexpectedReply(f *chatv1.ServerFrame, want string) error {
	return status.Errorf(codes.Internal, "client: reply to frame %d is %T, want %s", f.GetFrameId(), f.GetPayload(), want)
}

// NewClientMessageID returns a random idempotency key: 16 random bytes as 32
// lower-case hex digits.
func NewClientMessageID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return hex.EncodeToString(b[:])
}

// DirectChannelID returns the id of the direct channel between users a and
// b: "dm:" + the two usernames sorted and joined by ":". Usernames must be
// canonical (lower-case) for the id to match the server's.
func DirectChannelID(a, b string) string {
	if b < a {
		a, b = b, a
	}
	return "dm:" + a + ":" + b
}

// recentMessages remembers the last recentCap delivered messages by
// (channel_id, message_id), with the inbox_seq each was handed over under.
// In a cluster a message can sit in the inbox under two seqs (a stale
// commit placed again, docs/sequencing.md "Duplicates"); the second is
// dropped if the first was handed over at most recentCap deliveries
// earlier. Memory is bounded: recentCap keys. Guarded by Session.mu.
type recentMessages struct {
	set  map[msgKey]int // key -> its slot in ring
	ring []recentEntry
	next int
}

type msgKey struct {
	channel string
	id      uint64
}

type recentEntry struct {
	key msgKey
	seq uint64
}

const recentCap = 4096

// forget removes m (its delivery failed and will be offered again).
func (r *recentMessages) forget(m *chatv1.Message) {
	if m != nil && r.set != nil {
		delete(r.set, msgKey{m.GetChannelId(), m.GetMessageId()})
	}
}

// seen reports whether m was delivered recently, and remembers it, handed
// over under seq, if not.
func (r *recentMessages) seen(m *chatv1.Message, seq uint64) bool {
	if m.GetMessageId() == 0 {
		return false // not a stored message: nothing to compare
	}
	k := msgKey{m.GetChannelId(), m.GetMessageId()}
	if r.set == nil {
		r.set = make(map[msgKey]int, recentCap)
		r.ring = make([]recentEntry, recentCap)
	}
	if _, ok := r.set[k]; ok {
		return true
	}
	r.add(recentEntry{k, seq})
	return false
}

func (r *recentMessages) add(e recentEntry) {
	// The slot's old key leaves the set unless it was forgotten and
	// remembered again in another slot since.
	if old := r.ring[r.next].key; old != (msgKey{}) && r.set[old] == r.next {
		delete(r.set, old)
	}
	r.ring[r.next] = e
	r.set[e.key] = r.next
	r.next = (r.next + 1) % recentCap
}

// clone returns a copy holding the remembered messages handed over at or
// below upTo, oldest first (for WithResumeFrom: messages above it are
// handed over again by the new session).
func (r *recentMessages) clone(upTo uint64) recentMessages {
	var c recentMessages
	if r.set == nil {
		return c
	}
	c.set = make(map[msgKey]int, recentCap)
	c.ring = make([]recentEntry, recentCap)
	for i := range recentCap {
		e := r.ring[(r.next+i)%recentCap]
		if e.key == (msgKey{}) || e.seq > upTo {
			continue
		}
		if slot, ok := r.set[e.key]; !ok || r.ring[slot] != e {
			continue // forgotten
		}
		c.add(e)
	}
	return c
}
