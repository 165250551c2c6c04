package chat

import (
	"context"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/chatd/chatd/server/auth"
	"github.com/chatd/chatd/server/deliver"
	"github.com/chatd/chatd/server/grpcerr"
	"github.com/chatd/chatd/server/hub"
	"github.com/chatd/chatd/server/router"
	"github.com/chatd/chatd/server/router/local"
	"github.com/chatd/chatd/server/sequence"
	"github.com/chatd/chatd/server/store"
	"github.com/chatd/chatd/server/store/pebble"
)

// wait bounds every wait for an expected frame; a test that hits it fails.
const wait = 15 * time.Second

// env is the full single-node stack on loopback: pebble store, sequencer,
// local router, hub, chat service behind the real auth interceptors and
// the chat codec.
type env struct {
	t      testing.TB
	dir    string
	st     *pebble.Store
	seq    *sequence.Sequencer
	router *local.Router
	hub    *hub.Hub
	auth   *auth.Authenticator
	svc    *Service
	// publish is the sequencer's publish callback (deliver's publisher).
	publish func([]sequence.Committed)
	srv     *grpc.Server
	addr    string
	cc      *grpc.ClientConn
	client  chatv1.ChatServiceClient

	stopOnce sync.Once
}

type envConfig struct {
	sendQueue  int
	frameRate  float64
	frameBurst int
	now        func() time.Time // the chat service's clock
	authNow    func() time.Time // the authenticator's clock (token expiry)
	tokenTTL   time.Duration    // the tokens' lifetime (default auth's)
	// drop, if set, loses the routed events it returns true for (a
	// lossy router between the local router and the hub).
	drop func(router.Event) bool
	// dir, if set, is the store directory (to restart on the same data).
	dir string
	// alloc, if set, returns the sequencer's allocator (default: the
	// single-node one).
	alloc func(store.Messages) sequence.Allocator
	// tracer, if set, is the service's and the sequencer's tracer.
	tracer trace.Tracer
	// wrap, if set, wraps the store the chat service uses (not the
	// sequencer's), e.g. to count its reads.
	wrap func(store.Store) store.Store
	// listener, if set, wraps the gRPC server's listener (e.g. to count
	// its connections' writes).
	listener func(net.Listener) net.Listener
	// serverOpts are added to the gRPC server's options.
	serverOpts []grpc.ServerOption
	// afterPublish, if set, runs on the sequencer goroutine after each
	// batch's publish, before its done callbacks (e.g. a pause, as when
	// the goroutine loses its core on a loaded machine).
	afterPublish func()
}

func newEnv(t testing.TB, ec envConfig) *env {
	t.Helper()
	e := &env{t: t, dir: ec.dir}
	if e.dir == "" {
		e.dir = t.TempDir()
	}
	st, err := pebble.Open(e.dir, pebble.WithLogger(nil))
	if err != nil {
		t.Fatal(err)
	}
	e.st = st
	e.auth, err = auth.New(auth.Config{Key: []byte("0123456789abcdef0123456789abcdef"), Devices: st, Now: ec.authNow, TokenTTL: ec.tokenTTL})
	if err != nil {
		t.Fatal(err)
	}
	// Wired as server/app does: hub, router delivering to it, publisher
	// on the router, sequencer publishing with it, service.
	h := hub.New(hub.Config{})
	e.router = local.New(func(ev router.Event) {
		if ec.drop != nil && ec.drop(ev) {
			return
		}
		h.Deliver(ev)
	})
	h.SetRouter(e.router)
	e.hub = h
	e.publish = deliver.NewPublisher(e.router, nil)
	var alloc sequence.Allocator
	if ec.alloc != nil {
		alloc = ec.alloc(st)
	}
	publish := e.publish
	if ec.afterPublish != nil {
		publish = func(b []sequence.Committed) { e.publish(b); ec.afterPublish() }
	}
	e.seq = sequence.New(st, publish, sequence.Options{Allocator: alloc, Tracer: ec.tracer})
	var svcStore store.Store = st
	if ec.wrap != nil {
		svcStore = ec.wrap(st)
	}
	svc := New(Config{
		Store: svcStore, Sequencer: e.seq, Hub: h, Router: e.router,
		Sessions:   e.auth,
		ServerID:   "test-1",
		SendQueue:  ec.sendQueue,
		FrameRate:  ec.frameRate,
		FrameBurst: ec.frameBurst,
		Now:        ec.now,
		Tracer:     ec.tracer,
	})
	e.svc = svc
	e.srv = grpc.NewServer(append([]grpc.ServerOption{
		grpc.ForceServerCodecV2(Codec()),
		grpc.MaxRecvMsgSize(256 << 10),
		grpc.ChainUnaryInterceptor(grpcerr.UnaryServerInterceptor(), e.auth.UnaryInterceptor()),
		grpc.ChainStreamInterceptor(grpcerr.StreamServerInterceptor(), e.auth.StreamInterceptor()),
	}, ec.serverOpts...)...)
	chatv1.RegisterChatServiceServer(e.srv, svc)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.addr = lis.Addr().String()
	if ec.listener != nil {
		lis = ec.listener(lis)
	}
	go e.srv.Serve(lis)
	e.cc, err = grpc.NewClient(e.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	e.client = chatv1.NewChatServiceClient(e.cc)
	t.Cleanup(e.stop)
	return e
}

// stop shuts the stack down in the app's order (idempotent).
func (e *env) stop() {
	e.stopOnce.Do(func() {
		e.cc.Close()
		e.hub.Shutdown(nil)
		e.srv.Stop()
		e.seq.Close()
		e.router.Close()
		e.st.Close()
	})
}

// user creates users (ids as given; they must be canonical).
func (e *env) users(ids ...string) {
	e.t.Helper()
	for _, id := range ids {
		if err := e.st.CreateUser(context.Background(), &store.User{ID: id, DisplayName: id, CreatedAt: time.Now()}); err != nil {
			e.t.Fatalf("CreateUser %s: %v", id, err)
		}
	}
}

// ctx returns a context authenticated as (user, device), creating the
// device if needed.
func (e *env) ctx(user, device string) context.Context {
	e.t.Helper()
	bg := context.Background()
	if _, err := e.st.GetDevice(bg, user, device); err != nil {
		if err := e.st.PutDevice(bg, &store.Device{UserID: user, DeviceID: device, Name: device, CreatedAt: time.Now()}); err != nil {
			e.t.Fatal(err)
		}
	}
	tok, _, err := e.auth.Issue(user, device, time.Now())
	if err != nil {
		e.t.Fatal(err)
	}
	return metadata.AppendToOutgoingContext(bg, "authorization", "Bearer "+tok)
}

// dev is one device's open Chat stream with a background reader.
type dev struct {
	t       testing.TB
	user    string
	device  string
	stream  chatv1.ChatService_ChatClient
	cancel  context.CancelFunc
	welcome *chatv1.Welcome
	frames  chan *chatv1.ServerFrame
	end     chan error // the stream's final error (io.EOF for OK)

	delivered atomic.Int64 // Delivery frames read by the background reader

	nextID uint64
	// Frames read by helpers but not consumed yet.
	pending []*chatv1.ServerFrame
}

// open opens a Chat stream for (user, device) and reads its Welcome. If
// reading is false, nothing reads the stream (a stuck device).
func (e *env) open(user, device string) *dev { return e.openWith(user, device, true) }

func (e *env) openWith(user, device string, reading bool) *dev {
	e.t.Helper()
	return e.openOn(e.client, user, device, reading)
}

// openStuck opens a stream that nobody reads, on its own connection with
// fixed 64 KiB flow-control windows (no BDP growth), so that the server's
// writer blocks after a bounded amount of data.
func (e *env) openStuck(user, device string) *dev {
	e.t.Helper()
	cc, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { cc.Close() })
	return e.openOn(chatv1.NewChatServiceClient(cc), user, device, false)
}

func (e *env) openOn(client chatv1.ChatServiceClient, user, device string, reading bool) *dev {
	e.t.Helper()
	ctx, cancel := context.WithCancel(e.ctx(user, device))
	s, err := client.Chat(ctx)
	if err != nil {
		cancel()
		e.t.Fatal(err)
	}
	d := &dev{t: e.t, user: user, device: device, stream: s, cancel: cancel,
		frames: make(chan *chatv1.ServerFrame, 1<<16), end: make(chan error, 1)}
	e.t.Cleanup(cancel)
	f, err := s.Recv()
	if err != nil {
		e.t.Fatalf("%s/%s: first frame: %v", user, device, err)
	}
	if f.GetWelcome() == nil {
		e.t.Fatalf("%s/%s: first frame is not Welcome: %v", user, device, f)
	}
	d.welcome = f.GetWelcome()
	if reading {
		d.startReader()
	}
	return d
}

func (d *dev) startReader() {
	go func() {
		for {
			f, err := d.stream.Recv()
			if err != nil {
				d.end <- err
				close(d.frames)
				return
			}
			if f.GetDelivery() != nil {
				d.delivered.Add(1)
			}
			d.frames <- f
		}
	}()
}

func (d *dev) close() { d.cancel() }

func (d *dev) frameID() uint64 { d.nextID++; return d.nextID }

func (d *dev) sendFrame(f *chatv1.ClientFrame) {
	d.t.Helper()
	if err := d.stream.Send(f); err != nil {
		d.t.Fatalf("%s/%s: send: %v", d.user, d.device, err)
	}
}

// sendTo sends a text to a user (to_user) and returns the frame id.
func (d *dev) sendTo(user, cmid, text string) uint64 {
	id := d.frameID()
	d.sendFrame(&chatv1.ClientFrame{FrameId: id, Payload: &chatv1.ClientFrame_Send{Send: &chatv1.SendMessage{
		Target: &chatv1.SendMessage_ToUser{ToUser: user}, ClientMessageId: cmid, Text: text}}})
	return id
}

// sendIn sends a text into a channel and returns the frame id.
func (d *dev) sendIn(channel, cmid, text string) uint64 {
	id := d.frameID()
	d.sendFrame(&chatv1.ClientFrame{FrameId: id, Payload: &chatv1.ClientFrame_Send{Send: &chatv1.SendMessage{
		Target: &chatv1.SendMessage_ChannelId{ChannelId: channel}, ClientMessageId: cmid, Text: text}}})
	return id
}

func (d *dev) sync(after uint64, limit int32) uint64 {
	id := d.frameID()
	d.sendFrame(&chatv1.ClientFrame{FrameId: id, Payload: &chatv1.ClientFrame_Sync{Sync: &chatv1.SyncRequest{AfterSeq: after, Limit: limit}}})
	return id
}

func (d *dev) ack(seq uint64) uint64 {
	id := d.frameID()
	d.sendFrame(&chatv1.ClientFrame{FrameId: id, Payload: &chatv1.ClientFrame_Ack{Ack: &chatv1.Ack{InboxSeq: seq}}})
	return id
}

func (d *dev) heartbeat() uint64 {
	id := d.frameID()
	d.sendFrame(&chatv1.ClientFrame{FrameId: id, Payload: &chatv1.ClientFrame_Heartbeat{Heartbeat: &chatv1.Heartbeat{}}})
	return id
}

// next returns the next frame (pending first), failing the test after
// wait or if the stream ends.
func (d *dev) next() *chatv1.ServerFrame {
	d.t.Helper()
	if len(d.pending) > 0 {
		f := d.pending[0]
		d.pending = d.pending[1:]
		return f
	}
	select {
	case f, ok := <-d.frames:
		if !ok {
			d.t.Fatalf("%s/%s: stream ended: %v", d.user, d.device, <-d.end)
		}
		return f
	case <-time.After(wait):
		d.t.Fatalf("%s/%s: no frame within %v", d.user, d.device, wait)
	}
	return nil
}

// reply returns the frame answering frame id (a reply echoes it), keeping
// the frames read on the way (deliveries, other replies) for later.
func (d *dev) reply(id uint64) *chatv1.ServerFrame {
	d.t.Helper()
	for i, f := range d.pending {
		if f.GetFrameId() == id {
			d.pending = append(d.pending[:i:i], d.pending[i+1:]...)
			return f
		}
	}
	var skipped []*chatv1.ServerFrame
	defer func() { d.pending = append(d.pending, skipped...) }()
	for {
		select {
		case f, ok := <-d.frames:
			if !ok {
				d.t.Fatalf("%s/%s: stream ended waiting for reply %d: %v", d.user, d.device, id, <-d.end)
			}
			if f.GetFrameId() == id {
				return f
			}
			skipped = append(skipped, f)
		case <-time.After(wait):
			d.t.Fatalf("%s/%s: no reply to frame %d within %v", d.user, d.device, id, wait)
		}
	}
}

// ackOf waits for the SendAck of frame id.
func (d *dev) ackOf(id uint64) *chatv1.SendAck {
	d.t.Helper()
	f := d.reply(id)
	if f.GetSendAck() == nil {
		d.t.Fatalf("%s/%s: reply to %d is not a SendAck: %v", d.user, d.device, id, f)
	}
	return f.GetSendAck()
}

// errOf waits for the FrameError of frame id and checks its code.
func (d *dev) errOf(id uint64, code codes.Code) *chatv1.FrameError {
	d.t.Helper()
	f := d.reply(id)
	fe := f.GetError()
	if fe == nil || codes.Code(fe.GetCode()) != code {
		d.t.Fatalf("%s/%s: reply to %d: %v, want FrameError %v", d.user, d.device, id, f, code)
	}
	return fe
}

// deliveries reads until n Delivery frames arrived (others are kept for
// reply) and returns them.
func (d *dev) deliveries(n int) []*chatv1.Delivery {
	d.t.Helper()
	var out []*chatv1.Delivery
	var rest []*chatv1.ServerFrame
	for _, f := range d.pending {
		if dl := f.GetDelivery(); dl != nil && len(out) < n {
			out = append(out, dl)
		} else {
			rest = append(rest, f)
		}
	}
	d.pending = rest
	for len(out) < n {
		select {
		case f, ok := <-d.frames:
			if !ok {
				d.t.Fatalf("%s/%s: stream ended after %d of %d deliveries: %v", d.user, d.device, len(out), n, <-d.end)
			}
			if dl := f.GetDelivery(); dl != nil {
				out = append(out, dl)
			} else {
				d.pending = append(d.pending, f)
			}
		case <-time.After(wait):
			d.t.Fatalf("%s/%s: %d of %d deliveries within %v", d.user, d.device, len(out), n, wait)
		}
	}
	return out
}

// quiet checks that no Delivery arrives (after a heartbeat round trip:
// anything routed before it would be queued ahead of its ack).
func (d *dev) quiet() {
	d.t.Helper()
	id := d.heartbeat()
	d.reply(id)
	for _, f := range d.pending {
		if f.GetDelivery() != nil {
			d.t.Fatalf("%s/%s: unexpected delivery %v", d.user, d.device, f)
		}
	}
}

// syncAll pages through the inbox after `after` with page size limit and
// returns every delivery and the pages.
func (d *dev) syncAll(after uint64, limit int32) ([]*chatv1.Delivery, []*chatv1.SyncPage) {
	d.t.Helper()
	var all []*chatv1.Delivery
	var pages []*chatv1.SyncPage
	for {
		f := d.reply(d.sync(after, limit))
		p := f.GetSyncPage()
		if p == nil {
			d.t.Fatalf("sync reply: %v", f)
		}
		pages = append(pages, p)
		all = append(all, p.GetDeliveries()...)
		after = p.GetNextAfterSeq()
		if !p.GetMore() {
			return all, pages
		}
	}
}

// ended waits for the stream to end and returns its status.
func (d *dev) ended() *status.Status {
	d.t.Helper()
	for {
		select {
		case _, ok := <-d.frames:
			if !ok {
				err := <-d.end
				if err == io.EOF {
					return status.New(codes.OK, "")
				}
				return status.Convert(err)
			}
		case <-time.After(wait):
			d.t.Fatalf("%s/%s: stream did not end within %v", d.user, d.device, wait)
		}
	}
}

// group creates a group owned by owner with members.
func (e *env) group(owner string, members ...string) string {
	e.t.Helper()
	resp, err := e.client.CreateGroup(e.ctx(owner, "setup"), &chatv1.CreateGroupRequest{Name: "group", MemberIds: members})
	if err != nil {
		e.t.Fatalf("CreateGroup: %v", err)
	}
	return resp.GetChannel().GetChannelId()
}

// openAll opens one stream per user, for the given device name.
func (e *env) openAll(names []string, device string) []*dev {
	e.t.Helper()
	out := make([]*dev, len(names))
	for i, n := range names {
		out[i] = e.open(n, device)
	}
	return out
}

func statusCode(err error) codes.Code { return status.Code(err) }

// statusNew is the domain error whose status has code c and message msg
// (what a stream closed with it ends with).
func statusNew(c codes.Code, msg string) error {
	for _, dc := range []store.Code{store.CodeUnauthenticated, store.CodeUnavailable, store.CodeResourceExhausted} {
		if grpcerr.CodeOf(dc) == c {
			return store.Errorf(dc, "%s", msg)
		}
	}
	panic("statusNew: no domain code for " + c.String())
}

// waitFor polls cond until it holds, failing after wait.
func waitFor(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not reached within %v", wait)
		}
		time.Sleep(time.Millisecond)
	}
}
