package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/chatd/chatd/client/grpcweb"
	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// Frame kinds, in the top byte of a client frame_id, so that a FrameError
// (which names only the frame_id) can be attributed to a send.
const (
	kindSend      = 1
	kindAck       = 2
	kindSync      = 3
	kindHeartbeat = 4
	kindShift     = 56
)

// maxRecvBytes lets a device receive full sync pages (chatd cuts them at
// 3 MiB; grpc-go's default limit is 4 MiB) with room to spare.
const maxRecvBytes = 16 << 20

// recvWindow is a connection's and a stream's HTTP/2 receive window: a
// whole sync page (chatd cuts them at 3 MiB) flows without waiting for a
// window update.
const recvWindow = 4 << 20

// bench is one run: configuration, counters, latency histograms and the
// simulated devices.
type bench struct {
	cfg    *config
	log    io.Writer
	runID  string
	epoch  time.Time // latencies are monotonic offsets from it
	tokens *tokenCache

	unaryOnce sync.Once
	unaryCC   *grpc.ClientConn
	unaryErr  error

	// Counters of the measured phase.
	sent       atomic.Uint64 // send frames written
	accepted   atomic.Uint64 // SendAcks (duplicates excluded)
	duplicates atomic.Uint64
	delivered  atomic.Uint64 // Delivery frames received (live), echoes included
	echoes     atomic.Uint64 // deliveries of a device's own sends
	expected   atomic.Uint64 // deliveries that the accepted sends should cause
	synced     atomic.Uint64 // deliveries received in sync pages
	foreign    atomic.Uint64 // deliveries not sent by this run
	errs       [codes.Unauthenticated + 2]atomic.Uint64

	lagged   atomic.Uint64 // pacer ticks whose sends could not all be issued
	seriesT0 time.Duration // origin of the progress samples

	lat    hist // send -> delivery on another device
	ackLat hist // send -> SendAck
	conLat hist // stream open -> Welcome

	// onDelivery, when set, sees every live delivery (sync mode).
	seriesMu sync.Mutex
	series   []Sample

	devices []*device
}

func newBench(cfg *config, log io.Writer) *bench {
	var rid [3]byte
	_, _ = rand.Read(rid[:])
	return &bench{cfg: cfg, log: log, runID: hex.EncodeToString(rid[:]), epoch: time.Now()}
}

func (b *bench) logf(format string, a ...any) {
	fmt.Fprintf(b.log, format+"\n", a...)
}

// now is the time since the run's epoch (monotonic clock).
func (b *bench) now() time.Duration { return time.Since(b.epoch) }

// countErr counts one failure by gRPC code (a non-status error counts as
// Unknown).
func (b *bench) countErr(err error) {
	c := status.Code(err)
	if int(c) >= len(b.errs) {
		c = codes.Unknown
	}
	b.errs[c].Add(1)
}

func (b *bench) errorCount() uint64 {
	var n uint64
	for i := range b.errs {
		n += b.errs[i].Load()
	}
	return n
}

func (b *bench) errorMap() map[string]uint64 {
	m := map[string]uint64{}
	for i := range b.errs {
		if n := b.errs[i].Load(); n > 0 {
			m[codes.Code(i).String()] = n
		}
	}
	return m
}

// ticker calls line() once a second (which records the progress sample)
// and prints what it returns on stderr unless --quiet, until the returned
// stop is called.
func (b *bench) ticker(ctx context.Context, line func() string) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				if l := line(); !b.cfg.quiet {
					b.logf("%s", l)
				}
			case <-done:
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { close(done); wg.Wait() }) }
}

// ------------------------------------------------------------------ dialing

// localAddrs returns the source IPs to spread n connections over (nil: the
// kernel's choice).
func (b *bench) localAddrs(n int) ([]net.IP, error) {
	la := b.cfg.localAddrs
	if len(la) == 1 && la[0] == "auto" {
		need := (n + b.cfg.connsPerAddr - 1) / b.cfg.connsPerAddr
		if need <= 1 {
			return nil, nil
		}
		for _, s := range b.cfg.servers {
			host, _, err := net.SplitHostPort(s)
			if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
				return nil, fmt.Errorf("%d connections need more than one source address; --local-addrs=auto only works for loopback servers (got %s): name them with --local-addrs", n, s)
			}
		}
		ips := make([]net.IP, need)
		for i := range ips {
			ips[i] = net.IPv4(127, 0, byte((i+2)>>8), byte((i+2)&0xff))
		}
		return ips, nil
	}
	var ips []net.IP
	for _, s := range la {
		ip := net.ParseIP(s)
		if ip == nil {
			return nil, fmt.Errorf("--local-addrs: bad IP %q", s)
		}
		ips = append(ips, ip)
	}
	return ips, nil
}

// dialOptions are the options of one device's connection: small buffers
// (one process holds tens of thousands of connections), a larger receive
// limit for sync pages, and a fixed source address when given.
func dialOptions(local net.IP) []grpc.DialOption {
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithReadBufferSize(8 << 10),
		grpc.WithWriteBufferSize(8 << 10),
		grpc.WithSharedWriteBuffer(true),
		// Static receive windows, as the SDK (client/) uses: no BDP ping
		// after every frame the server sends (see docs/performance.md).
		grpc.WithInitialWindowSize(recvWindow),
		grpc.WithInitialConnWindowSize(recvWindow),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxRecvBytes)),
		grpc.WithDisableServiceConfig(),
		grpc.WithUserAgent("chatbench"),
	}
	if local != nil {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: local}}
		opts = append(opts, grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", addr)
		}))
	}
	return opts
}

// ------------------------------------------------------------------ devices

// device is one simulated device: one Chat stream, on its own connection
// or on one it shares (shareConn).
type device struct {
	b        *bench
	idx      int // index in bench.devices
	user     int // user number
	dev      int // device number of the user
	username string
	server   string
	local    net.IP
	tok      cachedToken
	fanout   uint64 // deliveries expected per accepted send

	cc      *grpc.ClientConn
	shared  bool // cc belongs to another device (shareConn)
	stream  grpc.BidiStreamingClient[chatv1.ClientFrame, chatv1.ServerFrame]
	cancel  context.CancelFunc
	welcome *chatv1.Welcome
	closing atomic.Bool
	done    chan struct{}

	mu     sync.Mutex // serialises stream.Send
	nextID atomic.Uint64

	maxSeq atomic.Uint64 // highest inbox_seq received
	acked  atomic.Uint64 // highest inbox_seq acked

	window  chan struct{}            // sends in flight (closed loop)
	free    chan *device             // pairs mode: d goes back here when its send is answered
	replies chan *chatv1.ServerFrame // sync pages and sync errors
}

func (b *bench) newDevice(idx, user, dev int, tok cachedToken, local net.IP) *device {
	return &device{
		b: b, idx: idx, user: user, dev: dev, username: b.username(user),
		server: b.cfg.servers[idx%len(b.cfg.servers)],
		local:  local, tok: tok,
		done:    make(chan struct{}),
		replies: make(chan *chatv1.ServerFrame, 1),
	}
}

// open connects the device and waits for its Welcome. A token the server
// rejects (Unauthenticated: e.g. a new data directory) is replaced by a
// fresh log-in once.
func (d *device) open(ctx context.Context) error {
	err := d.openOnce(ctx)
	if err != nil && isUnauthenticated(err) && ctx.Err() == nil {
		d.b.tokens.drop(d.b.tokenKey(d.user, d.dev))
		tok, lerr := d.b.logIn(ctx, d.user, d.dev, true)
		if lerr != nil {
			return lerr
		}
		d.tok = tok
		err = d.openOnce(ctx)
	}
	return err
}

func (d *device) openOnce(ctx context.Context) error {
	if err := d.dial(); err != nil {
		return err
	}
	sctx, cancel := context.WithCancel(metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+d.tok.Token))
	tctx, tcancel := context.WithTimeout(ctx, d.b.cfg.connectTimeout)
	stop := context.AfterFunc(tctx, cancel)
	t0 := time.Now()
	var stream grpc.BidiStreamingClient[chatv1.ClientFrame, chatv1.ServerFrame]
	var err error
	if web := d.b.cfg.grpcWeb; len(web) > 0 {
		stream, err = grpcweb.DialChat(sctx, web[d.idx%len(web)], d.tok.Token)
	} else {
		stream, err = chatv1.NewChatServiceClient(d.cc).Chat(sctx)
	}
	var first *chatv1.ServerFrame
	if err == nil {
		first, err = stream.Recv()
	}
	ok := stop()
	tcancel()
	if !ok && err == nil {
		err = status.FromContextError(tctx.Err()).Err()
	}
	if err != nil {
		cancel()
		return err
	}
	w := first.GetWelcome()
	if w == nil {
		cancel()
		return status.Errorf(codes.Internal, "first frame is %T, not a Welcome", first.GetPayload())
	}
	d.b.conLat.Record(time.Since(t0))
	d.stream, d.cancel, d.welcome = stream, cancel, w
	d.maxSeq.Store(w.GetCursor())
	d.acked.Store(w.GetCursor())
	d.done = make(chan struct{})
	d.closing.Store(false)
	go d.recvLoop()
	return nil
}

// catchUp makes a device that is behind (cursor < head: an earlier run left
// deliveries unacked) live without reading its backlog: it acks the head
// and syncs after it, which the server answers with an empty last page.
func (d *device) catchUp(ctx context.Context) error {
	head := d.welcome.GetHeadSeq()
	if d.welcome.GetCursor() >= head {
		return nil
	}
	if err := d.sendFrame(&chatv1.ClientFrame{Payload: &chatv1.ClientFrame_Ack{Ack: &chatv1.Ack{InboxSeq: head}}}, kindAck); err != nil {
		return err
	}
	d.acked.Store(head)
	raise(&d.maxSeq, head)
	after := head
	for {
		page, err := d.sync(ctx, after, 1000)
		if err != nil {
			return err
		}
		if !page.GetMore() {
			return nil
		}
		after = page.GetNextAfterSeq()
	}
}

// sendFrame assigns a frame_id of the kind and writes f.
func (d *device) sendFrame(f *chatv1.ClientFrame, kind uint64) error {
	f.FrameId = kind<<kindShift | d.nextID.Add(1)
	d.mu.Lock()
	err := d.stream.Send(f)
	d.mu.Unlock()
	return err
}

// sync asks for one inbox page and waits for it.
func (d *device) sync(ctx context.Context, after uint64, limit int) (*chatv1.SyncPage, error) {
	err := d.sendFrame(&chatv1.ClientFrame{Payload: &chatv1.ClientFrame_Sync{Sync: &chatv1.SyncRequest{AfterSeq: after, Limit: int32(limit)}}}, kindSync)
	if err != nil {
		return nil, err
	}
	select {
	case f := <-d.replies:
		if e := f.GetError(); e != nil {
			return nil, status.Error(codes.Code(e.GetCode()), e.GetMessage())
		}
		return f.GetSyncPage(), nil
	case <-d.done:
		return nil, status.Error(codes.Unavailable, "stream ended during sync")
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// send writes one message frame. The client_message_id carries the run id,
// the send time and a counter, so that both the SendAck and every Delivery
// tell their latency without a lookup.
func (d *device) send(m *chatv1.SendMessage) error {
	n := d.nextID.Add(1)
	f := &chatv1.ClientFrame{FrameId: kindSend<<kindShift | n, Payload: &chatv1.ClientFrame_Send{Send: m}}
	d.mu.Lock()
	m.ClientMessageId = d.b.runID + "." + strconv.FormatInt(int64(d.b.now()), 36) + "." + strconv.Itoa(d.idx) + "." + strconv.FormatUint(n, 36)
	err := d.stream.Send(f)
	d.mu.Unlock()
	if err == nil {
		d.b.sent.Add(1)
	}
	return err
}

// sentAt parses the send time out of a client_message_id of this run.
func (b *bench) sentAt(cmid string) (time.Duration, bool) {
	rid, rest, ok := strings.Cut(cmid, ".")
	if !ok || rid != b.runID {
		return 0, false
	}
	ts, _, _ := strings.Cut(rest, ".")
	v, err := strconv.ParseInt(ts, 36, 64)
	if err != nil {
		return 0, false
	}
	return time.Duration(v), true
}

func (d *device) release() {
	if d.free != nil {
		d.free <- d // one send in flight: room for d, never blocks
	}
	if d.window != nil {
		select {
		case <-d.window:
		default:
		}
	}
}

func (d *device) recvLoop() {
	defer close(d.done)
	b := d.b
	for {
		f, err := d.stream.Recv()
		if err != nil {
			if !d.closing.Load() {
				b.countErr(err)
				b.logf("device %s/%d: stream ended: %v", d.username, d.dev, err)
			}
			return
		}
		switch p := f.GetPayload().(type) {
		case *chatv1.ServerFrame_Delivery:
			now := b.now()
			dl := p.Delivery
			raise(&d.maxSeq, dl.GetInboxSeq())
			b.delivered.Add(1)
			m := dl.GetMessage()
			at, ours := b.sentAt(m.GetClientMessageId())
			switch {
			case !ours:
				b.foreign.Add(1)
			case m.GetSenderDeviceId() == d.tok.DeviceID:
				b.echoes.Add(1)
			default:
				b.lat.Record(now - at)
			}
		case *chatv1.ServerFrame_SendAck:
			a := p.SendAck
			if at, ok := b.sentAt(a.GetClientMessageId()); ok {
				b.ackLat.Record(b.now() - at)
			}
			if a.GetDuplicate() {
				b.duplicates.Add(1)
			} else {
				b.accepted.Add(1)
				b.expected.Add(d.fanout)
			}
			d.release()
		case *chatv1.ServerFrame_Error:
			b.countErr(status.Error(codes.Code(p.Error.GetCode()), p.Error.GetMessage()))
			switch f.GetFrameId() >> kindShift {
			case kindSend:
				d.release()
			case kindSync:
				d.reply(f)
			}
		case *chatv1.ServerFrame_SyncPage:
			d.reply(f)
		}
	}
}

// reply hands a sync reply to the waiting sync call. At most one sync is
// outstanding, so the buffer of one holds it; a reply nobody waits for any
// more (its caller gave up) is dropped rather than blocking the reader.
func (d *device) reply(f *chatv1.ServerFrame) {
	select {
	case d.replies <- f:
	default:
	}
}

// close ends the stream and the connection.
func (d *device) close() {
	if d.cc == nil {
		return
	}
	d.closeStream()
	if !d.shared {
		_ = d.cc.Close()
	}
	d.cc = nil
}

// shareConn makes d open its stream on owner's connection (HTTP/2
// multiplexing), to the same server and from the same source address.
// The owner closes the connection.
func (d *device) shareConn(owner *device) error {
	if err := owner.dial(); err != nil {
		return err
	}
	d.cc, d.shared, d.server, d.local = owner.cc, true, owner.server, owner.local
	return nil
}

// dial creates d's connection if it has none (grpc connects lazily, on
// the first stream).
func (d *device) dial() error {
	if d.cc != nil {
		return nil
	}
	cc, err := grpc.NewClient("passthrough:///"+d.server, dialOptions(d.local)...)
	if err != nil {
		return err
	}
	d.cc = cc
	return nil
}

// closeStream ends the stream but keeps the connection for a later open.
func (d *device) closeStream() {
	if d.stream != nil {
		d.closing.Store(true)
		d.cancel()
		<-d.done
		d.stream = nil
	}
}

func raise(v *atomic.Uint64, x uint64) {
	for {
		cur := v.Load()
		if x <= cur || v.CompareAndSwap(cur, x) {
			return
		}
	}
}

// openAll opens every device's stream, connectConc at a time, and makes
// each live (catchUp). A device that fails to open is counted as an error
// and left closed; openAll fails only if none opened or ctx ended.
func (b *bench) openAll(ctx context.Context, devs []*device, catchUp bool) (opened int, err error) {
	conns := 0 // TCP connections: devices that share one (shareConn) count once
	for _, d := range devs {
		if !d.shared {
			conns++
		}
	}
	if err := b.checkFDs(conns); err != nil {
		return 0, err
	}
	start := time.Now()
	var n, failed atomic.Int64
	stop := b.ticker(ctx, func() string {
		return fmt.Sprintf("open: %d/%d streams (%d failed, %s)", n.Load(), len(devs), failed.Load(), time.Since(start).Round(time.Second))
	})
	defer stop()
	work := make(chan *device)
	var wg sync.WaitGroup
	var firstErr atomic.Value
	for range min(b.cfg.connectConc, len(devs)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for d := range work {
				err := d.open(ctx)
				if err == nil && catchUp {
					err = d.catchUp(ctx)
				}
				if err != nil {
					if ctx.Err() == nil {
						b.countErr(err)
						firstErr.CompareAndSwap(nil, fmt.Errorf("open %s device %d: %w", d.username, d.dev, err))
					}
					failed.Add(1)
					d.close()
					continue
				}
				n.Add(1)
			}
		}()
	}
	for _, d := range devs {
		select {
		case work <- d:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
	}
	close(work)
	wg.Wait()
	stop()
	if err := b.tokens.save(); err != nil {
		b.logf("token cache: %v", err)
	}
	if f := failed.Load(); f > 0 {
		b.logf("open: %d of %d streams failed; first: %v", f, len(devs), firstErr.Load())
	}
	if ctx.Err() != nil {
		return int(n.Load()), ctx.Err()
	}
	if n.Load() == 0 && len(devs) > 0 {
		return 0, firstErr.Load().(error)
	}
	b.logf("open: %d streams in %s", n.Load(), time.Since(start).Round(time.Millisecond))
	return int(n.Load()), nil
}

func closeAll(devs []*device) {
	var wg sync.WaitGroup
	ch := make(chan *device)
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for d := range ch {
				d.close()
			}
		}()
	}
	for _, d := range devs {
		ch <- d
	}
	close(ch)
	wg.Wait()
}

// background runs the heartbeat and ack loops of the open devices until
// the returned stop is called. Heartbeats are spread over the interval
// (the server's, from Welcome, unless --heartbeat); a device busy sending
// skips one. Acks (every --ack-interval, each device on its own phase of
// it unless --ack-aligned) send each device's highest received inbox_seq
// when it moved, without asking for a reply (Ack.no_reply) as the SDK's
// periodic auto-ack does, unless --ack-reply.
func (b *bench) background(devs []*device) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	every := b.cfg.heartbeatEvery
	if every <= 0 {
		every = 25 * time.Second
		for _, d := range devs {
			if d.welcome != nil && d.welcome.GetHeartbeatIntervalMs() > 0 {
				every = time.Duration(d.welcome.GetHeartbeatIntervalMs()) * time.Millisecond
				break
			}
		}
	}
	const slots = 100
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(every / slots)
		defer t.Stop()
		for tick := 0; ; tick++ {
			select {
			case <-done:
				return
			case <-t.C:
			}
			for i := tick % slots; i < len(devs); i += slots {
				d := devs[i]
				if d.stream == nil || !d.mu.TryLock() {
					continue
				}
				f := &chatv1.ClientFrame{FrameId: kindHeartbeat<<kindShift | d.nextID.Add(1), Payload: &chatv1.ClientFrame_Heartbeat{Heartbeat: &chatv1.Heartbeat{}}}
				_ = d.stream.Send(f)
				d.mu.Unlock()
			}
		}
	}()
	if iv := b.cfg.ackInterval; iv > 0 {
		// Each device acks on its own phase of the interval, as devices
		// whose auto-ack timers started when each connected do; with
		// --ack-aligned every device acks at the same moment, a burst of
		// len(devs) acks once per interval.
		slots := slots
		if b.cfg.ackAligned {
			slots = 1
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := time.NewTicker(iv / time.Duration(slots))
			defer t.Stop()
			for tick := 0; ; tick++ {
				select {
				case <-done:
					return
				case <-t.C:
				}
				for i := tick % slots; i < len(devs); i += slots {
					d := devs[i]
					if d.stream == nil {
						continue
					}
					want := d.maxSeq.Load()
					if want <= d.acked.Load() || !d.mu.TryLock() {
						continue
					}
					f := &chatv1.ClientFrame{FrameId: kindAck<<kindShift | d.nextID.Add(1), Payload: &chatv1.ClientFrame_Ack{Ack: &chatv1.Ack{InboxSeq: want, NoReply: !b.cfg.ackReply}}}
					if d.stream.Send(f) == nil {
						d.acked.Store(want)
					}
					d.mu.Unlock()
				}
			}
		}()
	}
	var once sync.Once
	return func() { once.Do(func() { close(done); wg.Wait() }) }
}

// checkFDs fails early when n connections cannot fit in this process's
// open-file limit (Go raises the soft limit to the hard one at start), and
// warns when they cannot fit in a --server-pid's.
func (b *bench) checkFDs(n int) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil && uint64(n)+64 > lim.Cur {
		return fmt.Errorf("%d connections need %d file descriptors but this process may open %d: raise the hard limit (ulimit -Hn; e.g. ulimit -n 200000 as root) or split the load over several chatbench processes", n, n+64, lim.Cur)
	}
	for _, pid := range b.cfg.serverPIDs {
		if l, err := procFDLimit(pid); err == nil && uint64(n)+64 > l {
			b.logf("warning: chatd pid %d may open %d files: %d more connections will be refused (raise its ulimit -n)", pid, l, n)
		}
	}
	return nil
}
