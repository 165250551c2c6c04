package app

import (
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/improbable-eng/grpc-web/go/grpcweb"
)

// Browsers reach every gRPC service (Chat, Presence, Account, Discovery,
// Health) on the HTTP port through improbable-eng/grpc-web v0.15.0, which
// wraps grpc.Server.ServeHTTP: grpc-web over HTTP/1.1 or HTTP/2
// (application/grpc-web+proto POSTs; unary and server streams) and
// grpc-web over WebSocket (subprotocol "grpc-websockets"; every kind of
// call, the bidirectional Chat stream included). The calls run through
// the same interceptors and handlers as native gRPC (token check on every
// Chat frame, frame and call rate limits, bounded send queues), so every
// guarantee of the native stream holds; only the transport differs.
//
// Protocol of grpc-web over WebSocket (the one improbable-eng's and
// nice-grpc-web's WebsocketTransport clients speak):
//   - client → server, first message: the request headers as HTTP/1 header
//     lines ("authorization: Bearer …\r\ncontent-type: application/grpc-web+proto\r\n");
//   - client → server, each request message: 0x00 then the gRPC
//     length-prefixed message (flag byte, 4-byte big-endian length, bytes);
//     one byte 0x01 half-closes the request stream;
//   - server → client: a byte stream of grpc-web frames split over
//     WebSocket messages at any point: a frame with flag 0x80 carries
//     headers (the first) or trailers (the last, with grpc-status,
//     grpc-message and grpc-status-details-bin), flag 0x00 a message.
//
// Tokens travel only in those headers; chatd reads none from a URL.

// webReadLimit bounds one WebSocket message from a browser: a Chat frame
// plus the 1-byte and 5-byte prefixes, like the native receive limit.
const webReadLimit = maxRecvMsgBytes + 6

// webPingInterval: the server pings every WebSocket this often so that
// proxies keep an idle stream open and a vanished browser is noticed.
const webPingInterval = 30 * time.Second

// webStreamDrain bounds how long Close waits for the grpc-web streams to
// end after the hub ended every Chat stream with Unavailable, so that the
// status (in the trailers) reaches the browser before GracefulStop closes
// the remaining ones without a status.
const webStreamDrain = 2 * time.Second

// webStreams counts the grpc-web WebSocket calls in progress.
type webStreams struct {
	mu   sync.Mutex
	n    int
	zero chan struct{} // closed when n drops to zero; nil while n is zero
}

func (w *webStreams) add() {
	w.mu.Lock()
	if w.n == 0 {
		w.zero = make(chan struct{})
	}
	w.n++
	w.mu.Unlock()
}

func (w *webStreams) done() {
	w.mu.Lock()
	w.n--
	if w.n == 0 {
		close(w.zero)
		w.zero = nil
	}
	w.mu.Unlock()
}

// wait returns when no call is in progress or after d.
func (w *webStreams) wait(d time.Duration) {
	w.mu.Lock()
	ch := w.zero
	w.mu.Unlock()
	if ch == nil {
		return
	}
	select {
	case <-ch:
	case <-time.After(d):
	}
}

// originPolicy decides which browser origins may call chatd: with no
// allowed origins, only the page's own (the Origin header's host equals
// the request's Host); "*" any; otherwise the listed origins
// ("https://chat.example.com", scheme://host[:port], compared without case)
// and the page's own. A request without an Origin header is not from a
// browser page (browsers send Origin on every WebSocket handshake and
// cross-origin POST, RFC 6455 4.1 and the Fetch standard) and is allowed:
// the check protects logged-in browsers from other sites, not the server
// from clients.
type originPolicy struct {
	any     bool
	allowed []string
}

// checkOrigin accepts "*" or a serialized origin as browsers send it in
// the Origin header (RFC 6454 6.2): http or https, a host, an optional
// port, nothing else (no path, query, fragment or user info). "null" (sent
// by sandboxed frames and file: pages) is refused: allowing it would let
// any such page in.
func checkOrigin(o string) error {
	o = strings.TrimRight(strings.TrimSpace(o), "/")
	if o == "*" {
		return nil
	}
	u, err := url.Parse(o)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Hostname() == "" ||
		u.User != nil || u.Path != "" || u.RawQuery != "" || u.Fragment != "" || strings.HasSuffix(o, "?") || strings.HasSuffix(o, "#") {
		return fmt.Errorf("allowed origin %q: want scheme://host[:port] (http or https, e.g. https://chat.example.com) or *", o)
	}
	host := u.Hostname()
	switch {
	case strings.Contains(host, "*"):
		return fmt.Errorf("allowed origin %q: no wildcards in a host (a browser sends one origin; list each, or *)", o)
	case strings.IndexFunc(host, func(r rune) bool { return r > 0x7f }) >= 0:
		return fmt.Errorf("allowed origin %q: write the host in its ASCII (punycode, xn--) form, as browsers send it", o)
	case strings.HasSuffix(host, "."):
		return fmt.Errorf("allowed origin %q: no trailing dot in the host", o)
	case strings.HasSuffix(u.Host, ":"):
		return fmt.Errorf("allowed origin %q: empty port", o)
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 || strings.HasPrefix(p, "0") {
			return fmt.Errorf("allowed origin %q: port %q is not 1-65535 (as a browser writes it)", o, p)
		}
	}
	return nil
}

// normalOrigin is o as a browser sends it in Origin: lower case, without
// the scheme's default port (RFC 6454 6.2 omits it).
func normalOrigin(o string) string {
	o = strings.ToLower(strings.TrimRight(strings.TrimSpace(o), "/"))
	if h, ok := strings.CutPrefix(o, "https://"); ok {
		return "https://" + strings.TrimSuffix(h, ":443")
	}
	if h, ok := strings.CutPrefix(o, "http://"); ok {
		return "http://" + strings.TrimSuffix(h, ":80")
	}
	return o
}

func newOriginPolicy(origins []string) originPolicy {
	var p originPolicy
	for _, o := range origins {
		o = normalOrigin(o)
		switch o {
		case "":
		case "*":
			p.any = true
		default:
			p.allowed = append(p.allowed, o)
		}
	}
	return p
}

// allows reports whether a request from origin (the Origin header's
// value) to host (the request's Host) may proceed.
func (p originPolicy) allows(origin, host string) bool {
	if origin == "" || p.any {
		return true
	}
	o := strings.ToLower(origin)
	if slices.Contains(p.allowed, o) {
		return true
	}
	u, err := url.Parse(o)
	return err == nil && u.Host != "" && u.Host == strings.ToLower(host)
}

// grpcWebHandler serves grpc-web and grpc-web over WebSocket for every
// service of the gRPC server, and passes every other request to next
// (REST, the web app, health, metrics).
func (a *App) grpcWebHandler(next http.Handler) http.Handler {
	pol := newOriginPolicy(a.cfg.AllowedOrigins)
	wrapped := grpcweb.WrapServer(a.grpcServer,
		grpcweb.WithWebsockets(true),
		grpcweb.WithWebsocketPingInterval(webPingInterval),
		grpcweb.WithWebsocketsMessageReadLimit(webReadLimit),
		grpcweb.WithWebsocketOriginFunc(func(r *http.Request) bool {
			return pol.allows(r.Header.Get("Origin"), r.Host)
		}),
		// CORS: a same-origin page needs none; a cross-origin one only
		// when listed. The request's host is not passed here, so the
		// same-origin case is answered by the browser never asking.
		grpcweb.WithOriginFunc(func(origin string) bool {
			return pol.any || slices.Contains(pol.allowed, strings.ToLower(origin))
		}),
		grpcweb.WithAllowedRequestHeaders([]string{"Authorization", "Content-Type", "X-Grpc-Web", "X-User-Agent", "Grpc-Timeout"}),
	)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case wrapped.IsGrpcWebSocketRequest(r):
			// The HTTP server's read and write timeouts bound a request;
			// a WebSocket lives as long as its stream (the ping and the
			// presence grace bound an idle one).
			rc := http.NewResponseController(w)
			_ = rc.SetReadDeadline(time.Time{})
			_ = rc.SetWriteDeadline(time.Time{})
			a.webStreams.add()
			defer a.webStreams.done()
			wrapped.ServeHTTP(w, r)
		case wrapped.IsGrpcWebRequest(r):
			if o := r.Header.Get("Origin"); o != "" && !pol.allows(o, r.Host) {
				http.Error(w, "origin not allowed (chatd --allowed-origins)", http.StatusForbidden)
				return
			}
			// A server stream over plain grpc-web lasts longer than the
			// write timeout.
			_ = http.NewResponseController(w).SetWriteDeadline(time.Time{})
			wrapped.ServeHTTP(w, r)
		case wrapped.IsAcceptableGrpcCorsRequest(r):
			wrapped.ServeHTTP(w, r)
		default:
			next.ServeHTTP(w, r)
		}
	})
}
