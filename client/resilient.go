package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v5"
	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Defaults of ResilientConfig.
const (
	// DefaultMinBackoff and DefaultMaxBackoff bound the jittered
	// exponential backoff between reconnection attempts (centrifuge-go
	// uses 200 ms to 20 s as well).
	DefaultMinBackoff = 200 * time.Millisecond
	DefaultMaxBackoff = 20 * time.Second
	// DefaultHealthyAfter: a session that lasted this long resets the
	// backoff, so the next loss is retried quickly again.
	DefaultHealthyAfter = 10 * time.Second
	// DefaultConnectTimeout bounds one attempt to open a stream (and one
	// Discovery call).
	DefaultConnectTimeout = 10 * time.Second
	// DefaultConnEventBuffer is the capacity of Resilient.Events.
	DefaultConnEventBuffer = 64
)

// ResilientConfig configures OpenResilient. Zero fields take the
// defaults named.
type ResilientConfig struct {
	// Servers are addresses ("host:port") where Discovery can be asked:
	// any chat servers, or a load balancer in front of them. At least one.
	// If Discovery cannot be reached, they are tried as chat servers.
	Servers []string
	// Token is the device's bearer token (LogIn's access_token). Required.
	Token string
	// Zone and Username are Discovery's hints (GetEndpointsRequest).
	Zone, Username string
	// DialOptions apply to every connection (e.g. WithTLS).
	DialOptions []Option
	// SessionOptions apply to every session (buffers, WithMaxInFlight,
	// WithAutoAck). Resuming (WithResumeFrom, WithResumeAfter) is
	// Resilient's own: do not pass them.
	SessionOptions []SessionOption
	// ResumeAfter: the application has already processed every inbox_seq
	// up to this one (e.g. from storage); nothing at or below it is handed
	// over.
	ResumeAfter uint64
	// SyncLimit is the sync page size (0: the server's default).
	SyncLimit int32
	// MinBackoff, MaxBackoff: the jittered exponential backoff (factor 2,
	// ±50 %) between attempts, capped at MaxBackoff. Defaults
	// DefaultMinBackoff, DefaultMaxBackoff.
	MinBackoff, MaxBackoff time.Duration
	// HealthyAfter: default DefaultHealthyAfter.
	HealthyAfter time.Duration
	// ConnectTimeout: default DefaultConnectTimeout.
	ConnectTimeout time.Duration
	// DeliveryBuffer is the capacity of Deliveries (default
	// DefaultDeliveryBuffer); EventBuffer that of Events (default
	// DefaultConnEventBuffer).
	DeliveryBuffer, EventBuffer int
}

// ConnState is the connection state a ConnEvent reports.
type ConnState int

// Connection states.
const (
	// StateConnected: a stream is open on ConnEvent.ServerID.
	StateConnected ConnState = iota + 1
	// StateReconnecting: the stream ended (or an attempt failed, Err
	// says why); the next attempt is in ConnEvent.Delay.
	StateReconnecting
	// StateStopped: Resilient gave up for good (Err: Unauthenticated, the
	// device opened a newer stream, ...) or was closed (ErrClosed).
	StateStopped
)

// ConnEvent is a change of a Resilient's connection.
type ConnEvent struct {
	State    ConnState
	ServerID string        // StateConnected: the server's id (Welcome.server_id)
	Addr     string        // StateConnected: its address
	Delay    time.Duration // StateReconnecting: wait before the next attempt
	Err      error         // StateReconnecting, StateStopped: why
	Drained  bool          // StateReconnecting: the server is draining (not an error)
}

// String is what a user may be shown: "connected to s2 (127.0.0.1:9092)",
// "reconnecting in 1.2s: Unavailable: ...", "stopped: ...".
func (e ConnEvent) String() string {
	switch e.State {
	case StateConnected:
		return fmt.Sprintf("connected to %s (%s)", e.ServerID, e.Addr)
	case StateReconnecting:
		return fmt.Sprintf("reconnecting in %s: %s", e.Delay.Round(time.Millisecond), describe(e.Err))
	case StateStopped:
		return "stopped: " + describe(e.Err)
	}
	return "unknown state"
}

func describe(err error) string {
	if err == nil {
		return "no error"
	}
	if st, ok := status.FromError(err); ok {
		return st.Code().String() + ": " + st.Message()
	}
	return err.Error()
}

// errDrainedMoving is the Err of the StateReconnecting event after a Drain
// frame.
var errDrainedMoving = status.Error(codes.Unavailable, "server draining: moving to another server")

// Resilient is a device's Chat stream that survives servers going away:
// it asks Discovery where to connect, opens a Session there, and when the
// server drains (a Drain frame), the connection is lost or the stream ends
// with a retryable status, it reconnects (to the drain's endpoints, else
// to what Discovery says, trying each in turn) with capped, jittered
// exponential backoff (honouring a server's RetryInfo delay). Each new
// session resumes from the last inbox_seq handed to the application (sync,
// then live), carries over the memory of recently handed-over messages
// (WithResumeFrom), and resends every send not yet acknowledged with its
// original client_message_id (the server stores it once). The application
// sees one ordered stream of deliveries, each inbox entry once, never a
// seq at or below one already handed over, and ConnEvents.
//
// It stops for good, closing Deliveries and reporting StateStopped with
// Err, on Unauthenticated (token expired or revoked: log in again), when
// the device opened a newer stream elsewhere (IsEvicted), on another
// status that no retry can fix (PermissionDenied, InvalidArgument, ...),
// or on Close.
//
// Its methods are safe for concurrent use.
type Resilient struct {
	cfg      ResilientConfig
	ctx      context.Context
	cancel   context.CancelFunc
	sessOpts []SessionOption

	deliveries chan *chatv1.Delivery
	typing     chan *chatv1.TypingEvent
	receipts   chan *chatv1.ReceiptEvent
	unread     chan *chatv1.UnreadEvent
	events     chan ConnEvent
	done       chan struct{}

	mu      sync.Mutex
	clients map[string]*Client      // by address
	known   []string                // addresses to ask Discovery, seeds first
	sess    *Session                // the open session, nil between sessions
	cur     atomic.Pointer[Session] // sess, for AckAsync, Flush and Typing (no lock: SendAsync may hold mu while the session is busy)
	prev    *Session                // the last session (its memory of messages)
	pending []*ResilientSend        // sends not yet answered, in send order
	err     error                   // why it stopped

	last     atomic.Uint64 // highest inbox_seq handed to the application
	ackWant  atomic.Uint64 // highest seq passed to AckAsync
	dropped  atomic.Uint64 // deliveries at or below last, dropped
	sessions atomic.Uint64 // sessions opened
	lostEvts atomic.Uint64
}

// OpenResilient starts a Resilient and returns at once; the first
// connection is reported on Events. Errors: InvalidArgument for a config
// without Servers, Unauthenticated without a Token.
func OpenResilient(cfg ResilientConfig) (*Resilient, error) {
	if len(cfg.Servers) == 0 {
		return nil, status.Error(codes.InvalidArgument, "client: ResilientConfig.Servers is empty")
	}
	if cfg.Token == "" {
		return nil, ErrNoToken
	}
	cfg.MinBackoff = cmpOr(cfg.MinBackoff, DefaultMinBackoff)
	cfg.MaxBackoff = max(cmpOr(cfg.MaxBackoff, DefaultMaxBackoff), cfg.MinBackoff)
	cfg.HealthyAfter = cmpOr(cfg.HealthyAfter, DefaultHealthyAfter)
	cfg.ConnectTimeout = cmpOr(cfg.ConnectTimeout, DefaultConnectTimeout)
	cfg.DeliveryBuffer = max(cmpOr(cfg.DeliveryBuffer, DefaultDeliveryBuffer), 1)
	cfg.EventBuffer = max(cmpOr(cfg.EventBuffer, DefaultConnEventBuffer), 1)
	ctx, cancel := context.WithCancel(context.Background())
	r := &Resilient{
		cfg: cfg, ctx: ctx, cancel: cancel,
		sessOpts:   append([]SessionOption(nil), cfg.SessionOptions...),
		deliveries: make(chan *chatv1.Delivery, cfg.DeliveryBuffer),
		typing:     make(chan *chatv1.TypingEvent, DefaultTypingBuffer),
		receipts:   make(chan *chatv1.ReceiptEvent, DefaultEventBuffer),
		unread:     make(chan *chatv1.UnreadEvent, DefaultEventBuffer),
		events:     make(chan ConnEvent, cfg.EventBuffer),
		done:       make(chan struct{}),
		clients:    map[string]*Client{},
		known:      append([]string(nil), cfg.Servers...),
	}
	r.last.Store(cfg.ResumeAfter)
	go r.run()
	return r, nil
}

func cmpOr[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// Deliveries returns the device's inbox entries in inbox_seq order, each
// once, across every reconnection. It is closed when the Resilient stops.
// It is bounded (DeliveryBuffer): while it is full, the session stops
// reading, and a server whose queue for the device overflows ends the
// stream, which the Resilient then resumes.
func (r *Resilient) Deliveries() <-chan *chatv1.Delivery { return r.deliveries }

// TypingEvents, Receipts and UnreadEvents carry the sessions' events of
// those kinds (dropped when full, as Session's are); closed when the
// Resilient stops.
func (r *Resilient) TypingEvents() <-chan *chatv1.TypingEvent { return r.typing }

// Receipts: see TypingEvents.
func (r *Resilient) Receipts() <-chan *chatv1.ReceiptEvent { return r.receipts }

// UnreadEvents: see TypingEvents.
func (r *Resilient) UnreadEvents() <-chan *chatv1.UnreadEvent { return r.unread }

// Events returns the connection-state changes (bounded, EventBuffer;
// events that do not fit are dropped). Closed when the Resilient stops,
// after its StateStopped event.
func (r *Resilient) Events() <-chan ConnEvent { return r.events }

// Done is closed when the Resilient has stopped; Err says why.
func (r *Resilient) Done() <-chan struct{} { return r.done }

// Err returns nil while running, then why it stopped (ErrClosed after
// Close).
func (r *Resilient) Err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

// LastSeq returns the highest inbox_seq handed to the application.
func (r *Resilient) LastSeq() uint64 { return r.last.Load() }

// ResilientStats counts what a Resilient did.
type ResilientStats struct {
	Sessions            uint64 // sessions opened
	DuplicateDeliveries uint64 // deliveries at or below LastSeq dropped
	DroppedEvents       uint64 // ConnEvents that did not fit in Events
}

// Stats returns the counters.
func (r *Resilient) Stats() ResilientStats {
	return ResilientStats{Sessions: r.sessions.Load(), DuplicateDeliveries: r.dropped.Load(), DroppedEvents: r.lostEvts.Load()}
}

// Close stops the Resilient: the open session is closed cleanly (see
// Session.Close), sends not yet answered fail with ErrClosed, and every
// channel is closed. It waits for that and always returns nil.
func (r *Resilient) Close() error {
	r.cancel()
	<-r.done
	return nil
}

// ResilientSend is a message sent with Resilient.SendAsync: it is sent on
// the current session and again, with the same client_message_id, on each
// later session until the server answers it.
type ResilientSend struct {
	p    SendParams
	done chan struct{}
	once sync.Once
	ack  *chatv1.SendAck
	err  error
	on   *Session // the session it was last sent on (guarded by Resilient.mu)
}

// ClientMessageID returns the message's idempotency key.
func (s *ResilientSend) ClientMessageID() string { return s.p.ClientMessageID }

// Done is closed when the SendAck or a FrameError has arrived, or the
// Resilient stopped.
func (s *ResilientSend) Done() <-chan struct{} { return s.done }

// Wait waits for the SendAck. Errors: the server's FrameError for the
// message (InvalidArgument, NotFound, ...), the Resilient's stop error, or
// ctx's error (the message is still being sent).
func (s *ResilientSend) Wait(ctx context.Context) (*chatv1.SendAck, error) {
	select {
	case <-s.done:
		return s.ack, s.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (s *ResilientSend) complete(ack *chatv1.SendAck, err error) bool {
	done := false
	s.once.Do(func() {
		s.ack, s.err = ack, err
		close(s.done)
		done = true
	})
	return done
}

// SendAsync queues a message: it is sent at once if a session is open,
// else as soon as one is, and resent after every reconnection until it is
// answered. ctx bounds only the queuing on the open session. Errors:
// InvalidArgument (not exactly one of ToUser and ChannelID), the stop
// error, ctx's error.
func (r *Resilient) SendAsync(ctx context.Context, p SendParams) (*ResilientSend, error) {
	if (p.ToUser == "") == (p.ChannelID == "") {
		return nil, status.Error(codes.InvalidArgument, "client: set exactly one of ToUser and ChannelID")
	}
	if p.ClientMessageID == "" {
		p.ClientMessageID = NewClientMessageID()
	}
	rs := &ResilientSend{p: p, done: make(chan struct{})}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return nil, r.err
	}
	r.pending = append(r.pending, rs)
	if r.sess != nil {
		r.submit(ctx, r.sess, rs)
	}
	return rs, nil
}

// Send is SendAsync and Wait.
func (r *Resilient) Send(ctx context.Context, p SendParams) (*chatv1.SendAck, error) {
	rs, err := r.SendAsync(ctx, p)
	if err != nil {
		return nil, err
	}
	return rs.Wait(ctx)
}

// submit sends rs on sess (r.mu held). A send the session cannot even
// queue because it ended stays pending for the next session; one it
// refuses as invalid fails.
func (r *Resilient) submit(ctx context.Context, sess *Session, rs *ResilientSend) {
	if rs.on == sess {
		return
	}
	ps, err := sess.SendAsync(ctx, rs.p)
	if err != nil {
		if sess.Err() == nil && ctx.Err() == nil {
			r.finishSend(rs, nil, err) // e.g. text not valid UTF-8
		}
		return
	}
	rs.on = sess
	go func() {
		ack, err := ps.Wait(r.ctx)
		if err != nil && (sess.Err() != nil || r.ctx.Err() != nil) {
			return // the session ended first: resent on the next one
		}
		r.mu.Lock()
		r.finishSend(rs, ack, err)
		r.mu.Unlock()
	}()
}

// finishSend answers rs and forgets it (r.mu held).
func (r *Resilient) finishSend(rs *ResilientSend, ack *chatv1.SendAck, err error) {
	if !rs.complete(ack, err) {
		return
	}
	for i, p := range r.pending {
		if p == rs {
			r.pending = append(r.pending[:i], r.pending[i+1:]...)
			break
		}
	}
}

// AckAsync acks every inbox entry up to seq in the background, on the
// current session and, if that ends first, on the next.
func (r *Resilient) AckAsync(seq uint64) {
	raise(&r.ackWant, seq)
	if s := r.cur.Load(); s != nil {
		s.AckAsync(seq)
	}
}

// Flush waits until the highest seq given to AckAsync is acked on the
// current session. Errors: Unavailable when no session is open, else
// those of Session.Flush.
func (r *Resilient) Flush(ctx context.Context) error {
	s := r.cur.Load()
	if s == nil {
		return status.Error(codes.Unavailable, "client: not connected")
	}
	s.AckAsync(r.ackWant.Load())
	return s.Flush(ctx)
}

// Typing sends a typing indicator on the current session (dropped when
// none is open).
func (r *Resilient) Typing(ctx context.Context, channelID string) error {
	s := r.cur.Load()
	if s == nil {
		return status.Error(codes.Unavailable, "client: not connected")
	}
	return s.Typing(ctx, channelID)
}

func (r *Resilient) event(e ConnEvent) {
	select {
	case r.events <- e:
	default:
		r.lostEvts.Add(1)
	}
}

// run is the connection loop.
func (r *Resilient) run() {
	bo := &backoff.ExponentialBackOff{
		InitialInterval:     r.cfg.MinBackoff,
		RandomizationFactor: 0.5,
		Multiplier:          2,
		MaxInterval:         r.cfg.MaxBackoff,
	}
	bo.Reset()
	next := func(err error) time.Duration {
		d := min(bo.NextBackOff(), r.cfg.MaxBackoff)
		if hint, ok := retryDelay(err); ok {
			d = min(max(d, hint), r.cfg.MaxBackoff)
		}
		return d
	}
	var hint []*chatv1.Endpoint
	var stopErr error
	for {
		eps := hint
		hint = nil
		if len(eps) == 0 {
			eps = r.discover()
		}
		sess, addr, err := r.connect(eps)
		if err != nil {
			if r.ctx.Err() != nil {
				break
			}
			if fatal(err) {
				stopErr = err
				break
			}
			d := next(err)
			r.event(ConnEvent{State: StateReconnecting, Delay: d, Err: err})
			if !r.sleep(d) {
				break
			}
			continue
		}
		started := time.Now()
		r.sessions.Add(1)
		r.event(ConnEvent{State: StateConnected, ServerID: sess.Welcome().GetServerId(), Addr: addr})
		drain, err := r.serve(sess)
		if time.Since(started) >= r.cfg.HealthyAfter {
			bo.Reset()
		}
		if r.ctx.Err() != nil {
			break
		}
		if drain != nil {
			hint = drain.GetEndpoints()
			d := time.Duration(drain.GetReconnectDelayMs()) * time.Millisecond
			r.event(ConnEvent{State: StateReconnecting, Delay: d, Err: errDrainedMoving, Drained: true})
			if !r.sleep(d) {
				break
			}
			continue
		}
		if fatal(err) {
			stopErr = err
			break
		}
		d := next(err)
		r.event(ConnEvent{State: StateReconnecting, Delay: d, Err: err})
		if !r.sleep(d) {
			break
		}
	}
	r.finish(stopErr)
}

// finish stops the Resilient with err (ErrClosed if nil).
func (r *Resilient) finish(err error) {
	if err == nil {
		err = ErrClosed
	}
	r.mu.Lock()
	r.err = err
	pending := r.pending
	r.pending = nil
	for _, c := range r.clients {
		_ = c.Close()
	}
	r.clients = nil
	r.mu.Unlock()
	for _, rs := range pending {
		rs.complete(nil, err)
	}
	r.event(ConnEvent{State: StateStopped, Err: err})
	close(r.deliveries)
	close(r.typing)
	close(r.receipts)
	close(r.unread)
	close(r.events)
	close(r.done)
}

func (r *Resilient) sleep(d time.Duration) bool {
	if d <= 0 {
		return r.ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-r.ctx.Done():
		return false
	}
}

// fatal reports whether err ends the Resilient: no reconnection fixes it.
func fatal(err error) bool {
	if errors.Is(err, io.EOF) {
		return false
	}
	if IsEvicted(err) {
		return true
	}
	switch status.Code(err) {
	case codes.Unauthenticated, codes.PermissionDenied, codes.InvalidArgument, codes.NotFound,
		codes.FailedPrecondition, codes.Unimplemented, codes.OutOfRange:
		return true
	}
	return false
}

// notChatServer reports whether err is grpc-go's status for an answer
// that was not gRPC at all (an HTTP server's error page, whose HTTP status
// grpc-go maps to a code such as Unimplemented or Unauthenticated): not a
// chat server's verdict on this client.
func notChatServer(err error) bool {
	msg := status.Convert(err).Message()
	return strings.HasPrefix(msg, "unexpected HTTP status code received from server") ||
		strings.Contains(msg, "malformed header: missing HTTP content-type")
}

// retryDelay is the google.rpc.RetryInfo delay of err, if it has one.
func retryDelay(err error) (time.Duration, bool) {
	st, ok := status.FromError(err)
	if !ok || st == nil {
		return 0, false
	}
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			return ri.GetRetryDelay().AsDuration(), true
		}
	}
	return 0, false
}

// client returns the Client of addr, dialing it the first time.
func (r *Resilient) client(addr string) (*Client, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c := r.clients[addr]; c != nil {
		return c, nil
	}
	c, err := Dial(addr, append([]Option{WithToken(r.cfg.Token)}, r.cfg.DialOptions...)...)
	if err != nil {
		return nil, err
	}
	r.clients[addr] = c
	return c, nil
}

// forget closes addr's client after a failure, so that the next attempt
// dials afresh instead of waiting out gRPC's own reconnection backoff.
func (r *Resilient) forget(addr string) {
	r.mu.Lock()
	c := r.clients[addr]
	delete(r.clients, addr)
	r.mu.Unlock()
	if c != nil {
		_ = c.Close()
	}
}

// discover asks Discovery at each known address in turn (the last one
// that answered first, then the servers it named, then the seeds) and
// returns the first answer; if none answers, the seeds themselves.
func (r *Resilient) discover() []*chatv1.Endpoint {
	r.mu.Lock()
	known := append([]string(nil), r.known...)
	r.mu.Unlock()
	for _, addr := range known {
		c, err := r.client(addr)
		if err != nil {
			continue
		}
		ctx, cancel := context.WithTimeout(r.ctx, r.cfg.ConnectTimeout)
		resp, err := c.Discovery().GetEndpoints(ctx, &chatv1.GetEndpointsRequest{Zone: r.cfg.Zone, Username: r.cfg.Username})
		cancel()
		if err != nil {
			r.forget(addr)
			continue
		}
		if eps := resp.GetEndpoints(); len(eps) > 0 {
			// Next time: this server first, then the others it named,
			// then the seeds.
			r.mu.Lock()
			r.known = dedup(append(append([]string{addr}, addrsOf(eps)...), r.cfg.Servers...))
			r.mu.Unlock()
			// The servers named first, then the seeds they did not name:
			// a server may name addresses this client cannot dial (one
			// behind a port mapping or a proxy that advertises its own).
			named := make(map[string]bool, len(eps))
			for _, e := range eps {
				named[e.GetGrpcAddress()] = true
			}
			for _, a := range r.cfg.Servers {
				if !named[a] {
					named[a] = true
					eps = append(eps, &chatv1.Endpoint{GrpcAddress: a})
				}
			}
			return eps
		}
	}
	eps := make([]*chatv1.Endpoint, len(r.cfg.Servers))
	for i, a := range r.cfg.Servers {
		eps[i] = &chatv1.Endpoint{GrpcAddress: a}
	}
	return eps
}

func dedup(addrs []string) []string {
	seen := make(map[string]bool, len(addrs))
	out := addrs[:0]
	for _, a := range addrs {
		if a != "" && !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	return out
}

func addrsOf(eps []*chatv1.Endpoint) []string {
	out := make([]string, 0, len(eps))
	for _, e := range eps {
		out = append(out, e.GetGrpcAddress())
	}
	return out
}

// connect opens a session on the first of eps that accepts one. Errors:
// the first fatal one at once, else the last one (one with a RetryInfo
// delay preferred).
func (r *Resilient) connect(eps []*chatv1.Endpoint) (*Session, string, error) {
	var last error
	for _, ep := range eps {
		addr := ep.GetGrpcAddress()
		if addr == "" {
			continue
		}
		c, err := r.client(addr)
		if err != nil {
			last = err
			continue
		}
		opts := append([]SessionOption(nil), r.sessOpts...)
		opts = append(opts, WithResumeAfter(r.last.Load()))
		r.mu.Lock()
		if r.prev != nil {
			opts = append(opts, WithResumeFrom(r.prev))
		}
		r.mu.Unlock()
		ctx, cancel := context.WithTimeout(r.ctx, r.cfg.ConnectTimeout)
		s, err := c.Connect(ctx, opts...)
		cancel()
		if err == nil {
			return s, addr, nil
		}
		if r.ctx.Err() != nil {
			return nil, "", err
		}
		if fatal(err) {
			if !notChatServer(err) {
				return nil, "", err
			}
			// Something else answers there (an HTTP error page): the
			// next address may be a chat server; a status of its own
			// only if none is.
			r.forget(addr)
			last = err
			continue
		}
		if status.Code(err) != codes.ResourceExhausted {
			r.forget(addr)
		}
		if _, ok := retryDelay(last); !ok || last == nil {
			last = err
		}
	}
	if last == nil {
		last = status.Error(codes.Unavailable, "client: no chat server to connect to")
	}
	return nil, "", last
}

// serve runs one session: it resends what is pending, re-acks, syncs and
// then hands over live deliveries until the session ends (its error) or a
// Drain frame arrives (returned; the session is then closed cleanly, its
// in-flight sends answered, and what it delivered meanwhile handed over).
func (r *Resilient) serve(sess *Session) (*chatv1.Drain, error) {
	r.mu.Lock()
	r.sess = sess
	r.cur.Store(sess)
	for _, rs := range r.pending {
		r.submit(r.ctx, sess, rs)
	}
	r.mu.Unlock()
	defer func() {
		sess.Close()
		r.mu.Lock()
		r.sess, r.prev = nil, sess
		r.cur.Store(nil)
		r.mu.Unlock()
	}()
	if want := r.ackWant.Load(); want > sess.Cursor() {
		sess.AckAsync(want)
	}
	var drain *chatv1.Drain
	drainCh := sess.Drained()
	go func() { // a Drain frame may come while SyncAll runs
		select {
		case d := <-drainCh:
			r.mu.Lock()
			drain = d
			r.mu.Unlock()
			sess.Close()
		case <-sess.Done():
		}
	}()
	drained := func() *chatv1.Drain {
		r.mu.Lock()
		defer r.mu.Unlock()
		return drain
	}
	if _, err := sess.SyncAll(r.ctx, r.cfg.SyncLimit, r.forward); err != nil {
		if d := drained(); d != nil {
			r.pump(sess)
			return d, nil
		}
		if errors.Is(err, ErrSyncOverrun) {
			return nil, err
		}
		if sess.Err() != nil {
			return nil, sess.Err()
		}
		return nil, err
	}
	r.pump(sess)
	if d := drained(); d != nil {
		return d, nil
	}
	return nil, sess.Err()
}

// pump hands the session's live deliveries and events over until the
// session ends (its Deliveries channel is closed) or the Resilient is
// closed.
func (r *Resilient) pump(sess *Session) {
	ds, ty, rc, un := sess.Deliveries(), sess.TypingEvents(), sess.Receipts(), sess.UnreadEvents()
	for ds != nil {
		select {
		case d, ok := <-ds:
			if !ok {
				ds = nil
				continue
			}
			if r.forward(d) != nil {
				return
			}
		case t, ok := <-ty:
			if !ok {
				ty = nil
				continue
			}
			select {
			case r.typing <- t:
			default:
			}
		case e, ok := <-rc:
			if !ok {
				rc = nil
				continue
			}
			select {
			case r.receipts <- e:
			default:
			}
		case e, ok := <-un:
			if !ok {
				un = nil
				continue
			}
			select {
			case r.unread <- e:
			default:
			}
		case <-r.ctx.Done():
			return
		}
	}
}

// forward hands d to the application unless its seq is at or below the
// last one handed over. It fails only when the Resilient is closed.
func (r *Resilient) forward(d *chatv1.Delivery) error {
	if d.GetInboxSeq() <= r.last.Load() {
		r.dropped.Add(1)
		return nil
	}
	select {
	case r.deliveries <- d:
		r.last.Store(d.GetInboxSeq())
		return nil
	case <-r.ctx.Done():
		return ErrClosed
	}
}
