package app_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/chatd/chatd/client/grpcweb"
	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/chatd/chatd/server/app"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// openWebStream opens u's Chat stream over grpc-web WebSocket and reads
// its Welcome.
func openWebStream(t *testing.T, httpAddr string, u *user) (*stream, *grpcweb.Stream) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	wc, _, err := grpcweb.Dial(ctx, httpAddr, "/chat.v1.ChatService/Chat", grpcweb.Options{Headers: map[string]string{"authorization": "Bearer " + u.token}})
	if err != nil {
		cancel()
		t.Fatalf("grpc-web Chat: %v", err)
	}
	t.Cleanup(func() { cancel(); wc.Close() })
	f, err := wc.Recv()
	if err != nil || f.GetWelcome() == nil {
		cancel()
		t.Fatalf("grpc-web welcome: %v %v", f, err)
	}
	return &stream{t: t, s: wc, welcome: f.GetWelcome(), cancel: cancel}, wc
}

// recvDeliveries reads n live deliveries from st, skipping other frames.
func recvDeliveries(t *testing.T, st *stream, n int) []*chatv1.Delivery {
	t.Helper()
	var out []*chatv1.Delivery
	for len(out) < n {
		f, err := st.s.Recv()
		if err != nil {
			t.Fatalf("after %d of %d deliveries: %v", len(out), n, err)
		}
		if d := f.GetDelivery(); d != nil {
			out = append(out, d)
		}
	}
	return out
}

// TestGRPCWeb_ExactlyOnceInOrder: the checks the native end-to-end tests
// make (contiguous inbox seqs, every acked message once and in send order,
// the stored cursor resumed, an idempotent resend stores nothing) over a
// grpc-web WebSocket Chat stream: bob reads live deliveries, acks part of
// them, drops the stream, misses more, reconnects and syncs.
func TestGRPCWeb_ExactlyOnceInOrder(t *testing.T) {
	a := startApp(t, t.TempDir())
	cc := dial(t, a.GRPCAddr())
	alice := signUpLogIn(t, cc, "alice", "phone")
	bob := signUpLogIn(t, cc, "bob", "browser")
	as := openStream(t, alice)

	bs, bw := openWebStream(t, a.HTTPAddr(), bob)
	const n1, n2, acked = 60, 40, 25
	var acks []*chatv1.SendAck
	for i := range n1 {
		acks = append(acks, as.send("bob", fmt.Sprintf("w1-%d", i), fmt.Sprintf("live %d", i)))
	}
	live := recvDeliveries(t, bs, n1)
	if err := seqsContiguous(live, 0); err != nil {
		t.Fatal(err)
	}
	for i, d := range live {
		if d.GetMessage().GetMessageId() != acks[i].GetMessageId() {
			t.Fatalf("live delivery %d is message %d, want %d", i, d.GetMessage().GetMessageId(), acks[i].GetMessageId())
		}
	}
	if got := bs.ack(live[acked-1].GetInboxSeq()); got != acked {
		t.Fatalf("cursor after ack = %d, want %d", got, acked)
	}
	// bob sends over grpc-web; a resend of the same client_message_id is
	// the same message, stored once.
	first := bs.send("alice", "from-web-1", "hi alice")
	again := bs.send("alice", "from-web-1", "hi alice")
	if first.GetMessageId() != again.GetMessageId() {
		t.Fatalf("resend over grpc-web: %v then %v, want the same message", first, again)
	}
	bw.Close()
	bs.cancel()

	for i := range n2 {
		acks = append(acks, as.send("bob", fmt.Sprintf("w2-%d", i), fmt.Sprintf("missed %d", i)))
	}
	bs2, _ := openWebStream(t, a.HTTPAddr(), bob)
	if bs2.welcome.GetCursor() != acked {
		t.Fatalf("welcome cursor %d, want the acked %d", bs2.welcome.GetCursor(), acked)
	}
	ds := bs2.syncAll(bs2.welcome.GetCursor(), 7) // small pages: many round trips
	// bob's inbox: the live messages he did not ack, his own message (every
	// device of the sender gets it), the ones he missed.
	var want []*chatv1.SendAck
	want = append(want, acks[acked:n1]...)
	want = append(want, first)
	want = append(want, acks[n1:]...)
	if len(ds) != len(want) {
		t.Fatalf("sync after reconnect: %d deliveries, want %d: %v", len(ds), len(want), texts(ds))
	}
	if err := seqsContiguous(ds, acked); err != nil {
		t.Fatal(err)
	}
	for i, d := range ds {
		if d.GetMessage().GetMessageId() != want[i].GetMessageId() {
			t.Fatalf("synced delivery %d is message %d, want %d", i, d.GetMessage().GetMessageId(), want[i].GetMessageId())
		}
	}
	// Live again: the next message arrives once, right after the synced ones.
	next := as.send("bob", "w3", "after sync")
	d := recvDeliveries(t, bs2, 1)[0]
	if d.GetMessage().GetMessageId() != next.GetMessageId() || d.GetInboxSeq() != ds[len(ds)-1].GetInboxSeq()+1 {
		t.Fatalf("live after sync: %v, want message %d at seq %d", d, next.GetMessageId(), ds[len(ds)-1].GetInboxSeq()+1)
	}
	// alice got bob's grpc-web message once.
	hist, err := chatv1.NewChatServiceClient(cc).GetHistory(alice.ctx(context.Background()), &chatv1.GetHistoryRequest{ToUser: "bob", PageSize: 500})
	if err != nil {
		t.Fatal(err)
	}
	count := 0
	for _, m := range hist.GetMessages() {
		if m.GetClientMessageId() == "from-web-1" {
			count++
		}
	}
	if count != 1 {
		t.Fatalf("bob's grpc-web message is in history %d times, want once", count)
	}
}

// TestGRPCWeb_LiveErrorReachesClient: a server-side error on a live
// grpc-web stream (the device logged out from another device) reaches the
// client in the trailers with its code and ErrorInfo reason
// (improbable-eng/grpc-web#543 and #663 lost them); so does an error
// before the first message (a trailers-only answer: a bad token), and the
// Unavailable of a graceful shutdown.
func TestGRPCWeb_LiveErrorReachesClient(t *testing.T) {
	a := startApp(t, t.TempDir())
	cc := dial(t, a.GRPCAddr())
	alice := signUpLogIn(t, cc, "alice", "phone")
	bobWeb := signUpLogIn(t, cc, "bob", "browser")
	bobPhone := logIn(t, cc, "bob", "phone")
	as := openStream(t, alice)

	bs, _ := openWebStream(t, a.HTTPAddr(), bobWeb)
	as.send("bob", "e1", "before the log-out")
	recvDeliveries(t, bs, 1)
	if _, err := chatv1.NewAccountServiceClient(cc).RevokeDevice(bobPhone.ctx(context.Background()), &chatv1.RevokeDeviceRequest{DeviceId: bobWeb.device}); err != nil {
		t.Fatal(err)
	}
	var err error
	for err == nil {
		_, err = bs.s.Recv()
	}
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("live grpc-web stream after the device was revoked ended with %v, want Unauthenticated", err)
	}
	if reason := errorReason(err); reason != "DEVICE_REVOKED" {
		t.Fatalf("reason %q (%v), want DEVICE_REVOKED", reason, err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	wc, _, err := grpcweb.Dial(ctx, a.HTTPAddr(), "/chat.v1.ChatService/Chat", grpcweb.Options{Headers: map[string]string{"authorization": "Bearer not-a-token"}})
	if err != nil {
		t.Fatal(err)
	}
	defer wc.Close()
	if _, err := wc.Recv(); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("grpc-web Chat with a bad token: %v, want Unauthenticated", err)
	}

	// Graceful shutdown: the browser is told Unavailable (reconnect).
	carol := signUpLogIn(t, cc, "carol", "browser")
	cs, _ := openWebStream(t, a.HTTPAddr(), carol)
	go func() { _ = a.Close() }()
	for err = nil; err == nil; {
		_, err = cs.s.Recv()
	}
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("grpc-web stream at shutdown ended with %v, want Unavailable", err)
	}
}

func errorReason(err error) string {
	for _, d := range status.Convert(err).Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok {
			return ei.GetReason()
		}
	}
	return ""
}

// TestGRPCWeb_Origins: with no --allowed-origins only the page's own
// origin (and non-browser clients, which send none) may open a grpc-web
// WebSocket; a listed origin may; "*" allows any. Plain grpc-web (unary,
// over HTTP) follows the same rule, and CORS answers only listed origins.
func TestGRPCWeb_Origins(t *testing.T) {
	for _, c := range []struct {
		allowed []string
		origin  string
		ok      bool
	}{
		{nil, "", true},
		{nil, "http://HOST", true},
		{nil, "http://evil.example", false},
		{[]string{"https://app.example"}, "https://app.example", true},
		{[]string{"https://app.example"}, "http://evil.example", false},
		{[]string{"*"}, "http://evil.example", true},
		// A listed default port matches the Origin browsers send without it.
		{[]string{"https://app.example:443"}, "https://app.example", true},
		{[]string{"HTTP://App.Example:80/"}, "http://app.example", true},
	} {
		t.Run(fmt.Sprintf("%v/%s", c.allowed, c.origin), func(t *testing.T) {
			a, err := app.New(app.Config{GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", DataDir: t.TempDir(),
				AllowedOrigins: c.allowed, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
			if err != nil {
				t.Fatal(err)
			}
			a.Start()
			t.Cleanup(func() { _ = a.Close() })
			origin := strings.Replace(c.origin, "HOST", a.HTTPAddr(), 1)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			wc, resp, err := grpcweb.Dial(ctx, a.HTTPAddr(), "/chat.v1.DiscoveryService/GetEndpoints", grpcweb.Options{Origin: origin})
			if c.ok {
				if err != nil {
					t.Fatalf("WebSocket from %q refused: %v", origin, err)
				}
				wc.Close()
			} else if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
				t.Fatalf("WebSocket from %q: %v %v, want 403", origin, resp, err)
			}

			// Plain grpc-web unary call: Discovery.GetEndpoints.
			req, _ := http.NewRequest("POST", "http://"+a.HTTPAddr()+"/chat.v1.DiscoveryService/GetEndpoints", bytes.NewReader([]byte{0, 0, 0, 0, 0}))
			req.Header.Set("Content-Type", "application/grpc-web+proto")
			req.Header.Set("X-Grpc-Web", "1")
			if origin != "" {
				req.Header.Set("Origin", origin)
			}
			hr, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(hr.Body)
			hr.Body.Close()
			if c.ok {
				if hr.StatusCode != 200 || !bytes.Contains(body, []byte("grpc-status: 0\r\n")) {
					t.Fatalf("grpc-web POST from %q: %d %q, want 200 and grpc-status 0", origin, hr.StatusCode, body)
				}
			} else if hr.StatusCode != http.StatusForbidden {
				t.Fatalf("grpc-web POST from %q: %d, want 403", origin, hr.StatusCode)
			}
		})
	}
}

// TestWebAppServed: / is the web app with a Content-Security-Policy that
// allows no inline script, and its script is served from /assets/.
func TestWebAppServed(t *testing.T) {
	a := startApp(t, t.TempDir())
	resp, err := http.Get("http://" + a.HTTPAddr() + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	csp := resp.Header.Get("Content-Security-Policy")
	if resp.StatusCode != 200 || !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe-inline") {
		t.Fatalf("GET /: %d, CSP %q", resp.StatusCode, csp)
	}
	if bytes.Contains(body, []byte("<script>")) || !bytes.Contains(body, []byte(`src="/assets/app.js"`)) {
		t.Fatalf("index.html has an inline script or lacks /assets/app.js:\n%s", body)
	}
	resp, err = http.Get("http://" + a.HTTPAddr() + "/assets/app.js")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(resp.Header.Get("Content-Type"), "javascript") {
		t.Fatalf("GET /assets/app.js: %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
}

// TestGRPCWeb_SlowConsumerAndFrameLimit: the bounded send queue and the
// frame rate limit hold over grpc-web as over native gRPC. A browser that
// stops reading (its socket's receive buffer small, as a busy tab's is
// full) is disconnected with ResourceExhausted once its queue overflows,
// without reason (not an eviction), and gets the rest by sync, in order;
// frames beyond the burst get FrameError ResourceExhausted and the stream
// stays open.
func TestGRPCWeb_SlowConsumerAndFrameLimit(t *testing.T) {
	a := startAppWith(t, app.Config{SendQueue: 16, FrameRate: 1e6, FrameBurst: 1 << 20})
	cc := dial(t, a.GRPCAddr())
	alice := signUpLogIn(t, cc, "alice", "phone")
	bob := signUpLogIn(t, cc, "bob", "browser")
	as := openStream(t, alice)

	small := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetReadBuffer(16 << 10)
		}
		return c, err
	}}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	wc, _, err := grpcweb.Dial(ctx, a.HTTPAddr(), "/chat.v1.ChatService/Chat", grpcweb.Options{
		Headers: map[string]string{"authorization": "Bearer " + bob.token}, HTTPClient: small})
	if err != nil {
		t.Fatal(err)
	}
	defer wc.Close()
	if f, err := wc.Recv(); err != nil || f.GetWelcome() == nil {
		t.Fatalf("welcome: %v %v", f, err)
	}
	const n = 160 // 9.6 MB: more than the kernel buffers between chatd and a reader that stopped
	as.flood("bob", "slow-", n)
	got := 0
	for err = nil; err == nil; {
		var f *chatv1.ServerFrame
		if f, err = wc.Recv(); err == nil && f.GetDelivery() != nil {
			if d := f.GetDelivery(); d.GetInboxSeq() != uint64(got+1) {
				t.Fatalf("live delivery %d has seq %d", got+1, d.GetInboxSeq())
			}
			got++
		}
	}
	if status.Code(err) != codes.ResourceExhausted || errorReason(err) != "SLOW_CONSUMER" {
		t.Fatalf("a grpc-web reader that stopped: %v (reason %q) after %d deliveries, want ResourceExhausted SLOW_CONSUMER", err, errorReason(err), got)
	}
	if got >= n {
		t.Fatalf("got all %d deliveries: the queue never overflowed", got)
	}
	bs, _ := openWebStream(t, a.HTTPAddr(), bob)
	ds := bs.syncAll(uint64(got), 50)
	if len(ds) != n-got {
		t.Fatalf("sync after the overflow: %d deliveries, want %d", len(ds), n-got)
	}
	if err := seqsContiguous(ds, uint64(got)); err != nil {
		t.Fatal(err)
	}
	for i, d := range ds {
		if !strings.HasPrefix(d.GetMessage().GetText(), fmt.Sprint(got+i+1, "x")) {
			t.Fatalf("synced seq %d has text %.12q..., want message %d", d.GetInboxSeq(), d.GetMessage().GetText(), got+i+1)
		}
	}

	// The frame limit: a device with a burst of 5 frames.
	b := startAppWith(t, app.Config{FrameRate: 0.001, FrameBurst: 5})
	cc2 := dial(t, b.GRPCAddr())
	carol := signUpLogIn(t, cc2, "carol", "browser")
	cs, cw := openWebStream(t, b.HTTPAddr(), carol)
	for i := range 8 {
		if err := cw.Send(&chatv1.ClientFrame{FrameId: uint64(i + 1), Payload: &chatv1.ClientFrame_Heartbeat{Heartbeat: &chatv1.Heartbeat{}}}); err != nil {
			t.Fatal(err)
		}
	}
	limited := 0
	for replies := 0; replies < 8; {
		f, err := cs.s.Recv()
		if err != nil {
			t.Fatalf("after %d replies: %v", replies, err)
		}
		if f.GetFrameId() == 0 {
			continue
		}
		replies++
		if e := f.GetError(); e != nil && codes.Code(e.GetCode()) == codes.ResourceExhausted {
			limited++
		}
	}
	if limited != 3 {
		t.Fatalf("%d of 8 frames limited with a burst of 5, want 3", limited)
	}
}

// TestGRPCWeb_Drain: a drain tells a grpc-web stream to move (a Drain
// frame) as it tells a native one, and once the browser leaves, the drain
// is over without waiting for its window.
func TestGRPCWeb_Drain(t *testing.T) {
	a := startAppWith(t, app.Config{DrainWindow: time.Minute})
	cc := dial(t, a.GRPCAddr())
	bob := signUpLogIn(t, cc, "bob", "browser")
	bs, bw := openWebStream(t, a.HTTPAddr(), bob)
	start := time.Now()
	if n := a.Drain(); n != 1 {
		t.Fatalf("Drain counted %d streams, want 1", n)
	}
	for {
		f, err := bs.s.Recv()
		if err != nil {
			t.Fatalf("grpc-web stream ended without a Drain frame: %v", err)
		}
		if f.GetDrain() != nil {
			break
		}
	}
	bw.Close()
	select {
	case <-a.Drained():
	case <-time.After(30 * time.Second):
		t.Fatal("the drain did not end after the browser left")
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Fatalf("the drain took %v after the only stream left", d)
	}
}

// TestAllowedOriginsValidated: --allowed-origins takes "*" or serialized
// origins (RFC 6454 6.2) only; anything else stops the start-up with an
// error naming the entry, instead of never matching ("app.example.com",
// a path) or matching every sandboxed page ("null").
func TestAllowedOriginsValidated(t *testing.T) {
	for _, bad := range []string{"null", "app.example.com", "https://x.example/path", "ftp://x.example", "https://user@x.example", "https://x.example:99999", "https://x.example?q",
		"https://*.example.com", "https://bücher.example", "https://x.com:", "https://x.com:0080", "https://x.com."} {
		cfg := app.Config{GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", DataDir: t.TempDir(), AllowedOrigins: []string{bad}}
		a, err := app.New(cfg)
		if err == nil {
			_ = a.Close()
			t.Fatalf("allowed origin %q accepted", bad)
		}
		if !strings.Contains(err.Error(), "allowed origin") {
			t.Fatalf("allowed origin %q: error %v does not name it", bad, err)
		}
	}
	for _, good := range []string{"*", "https://chat.example.com", "http://127.0.0.1:8080", "https://chat.example.com/", "HTTPS://Chat.Example.com:443"} {
		cfg := app.Config{GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", DataDir: t.TempDir(), AllowedOrigins: []string{good}}
		a, err := app.New(cfg)
		if err != nil {
			t.Fatalf("allowed origin %q refused: %v", good, err)
		}
		_ = a.Close()
	}
}
