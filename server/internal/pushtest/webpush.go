// Package pushtest is the push services of the tests: the npm package
// web-push-testing (a mock Web Push service that decrypts aes128gcm
// payloads and verifies VAPID signatures, installed by
// scripts/push-tools.sh under tests/push) behind a TLS proxy, and local
// fakes of FCM and APNs that check what the real services check and answer
// their real error bodies. A service that cannot start skips the test,
// or fails it when CI=true (testenv.Need).
//
// It is imported by tests only.
package pushtest

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatd/chatd/server/internal/testenv"
)

// RepoRoot returns the directory of the module's go.mod, found upwards
// from the working directory.
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("pushtest: no go.mod above the working directory")
		}
		dir = parent
	}
}

// WebPush is a running web-push-testing server behind a TLS proxy: its
// subscriptions' endpoints are https://127.0.0.1:<port>/notify/<hash>.
type WebPush struct {
	// Client trusts the proxy's certificate; give it to the provider.
	Client *http.Client
	// Host is the proxy's host (127.0.0.1), for the endpoint allow-list.
	Host string

	plain string // http://127.0.0.1:<port> of web-push-testing itself
	tls   *httptest.Server

	mu       sync.Mutex
	requests []Captured // every request the proxy forwarded, in order
	answer   func(r *http.Request) (status int, header http.Header, ok bool)
}

// Captured is one push request as the proxy saw it.
type Captured struct {
	Path   string
	Header http.Header
	Body   []byte
	Status int
	Time   time.Time // when the request arrived
}

// StartWebPush starts web-push-testing (node
// tests/push/node_modules/web-push-testing/src/bin/server.js PORT) on a
// free port and a TLS proxy in front of it; both stop at the test's end.
func StartWebPush(t testing.TB) *WebPush {
	t.Helper()
	root := RepoRoot(t)
	script := filepath.Join(root, "tests", "push", "node_modules", "web-push-testing", "src", "bin", "server.js")
	if _, err := os.Stat(script); err != nil {
		testenv.Need(t, "web-push-testing is not installed (run scripts/push-tools.sh): "+err.Error())
	}
	node, err := exec.LookPath("node")
	if err != nil {
		testenv.Need(t, "node is not installed: "+err.Error())
	}
	port := freePort(t)
	cmd := exec.Command(node, script, fmt.Sprint(port))
	cmd.Dir = t.TempDir() // node-persist and logs stay out of the tree
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start web-push-testing: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	ready := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "Server running on port") {
				ready <- nil
				break
			}
		}
		_, _ = io.Copy(io.Discard, out)
		ready <- fmt.Errorf("web-push-testing exited")
	}()
	select {
	case err := <-ready:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("web-push-testing did not start within 30s")
	}
	w := &WebPush{plain: fmt.Sprintf("http://127.0.0.1:%d", port), Host: "127.0.0.1"}
	target, _ := url.Parse(w.plain)
	proxy := httputil.NewSingleHostReverseProxy(target)
	w.tls = httptest.NewTLSServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		c := Captured{Path: r.URL.Path, Header: r.Header.Clone(), Body: body, Time: time.Now()}
		w.mu.Lock()
		answer := w.answer
		w.mu.Unlock()
		if answer != nil {
			if status, h, ok := answer(r); ok {
				for k, vs := range h {
					rw.Header()[k] = vs
				}
				rw.WriteHeader(status)
				c.Status = status
				w.record(c)
				return
			}
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		rec := &statusRecorder{ResponseWriter: rw}
		proxy.ServeHTTP(rec, r)
		c.Status = rec.status
		w.record(c)
	}))
	t.Cleanup(w.tls.Close)
	pool := x509.NewCertPool()
	pool.AddCert(w.tls.Certificate())
	w.Client = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	return w
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}

func (w *WebPush) record(c Captured) {
	w.mu.Lock()
	w.requests = append(w.requests, c)
	w.mu.Unlock()
}

// CertFile writes the proxy's certificate as PEM to a file of the test's
// and returns its path: give it to a chatd process as SSL_CERT_FILE (Go
// reads the system roots from it on Linux) so that it trusts the proxy.
func (w *WebPush) CertFile(t testing.TB) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "push-ca.pem")
	b := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: w.tls.Certificate().Raw})
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// Origin is the TLS proxy's origin (https://127.0.0.1:<port>).
func (w *WebPush) Origin() string { return w.tls.URL }

// Requests returns a copy of the requests the proxy has seen.
func (w *WebPush) Requests() []Captured {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]Captured(nil), w.requests...)
}

// Answer makes the proxy answer requests itself while fn returns ok
// (e.g. 503 with Retry-After); nil forwards everything again.
func (w *WebPush) Answer(fn func(r *http.Request) (status int, header http.Header, ok bool)) {
	w.mu.Lock()
	w.answer = fn
	w.mu.Unlock()
}

// Subscription is what a browser's PushSubscription.toJSON() gives, with
// web-push-testing's clientHash.
type Subscription struct {
	Endpoint string `json:"endpoint"`
	Keys     struct {
		P256dh string `json:"p256dh"`
		Auth   string `json:"auth"`
	} `json:"keys"`
	ClientHash string `json:"clientHash"`
}

// Subscribe subscribes a new client with the VAPID public key (base64url)
// and returns its subscription, the endpoint rewritten to the TLS proxy.
func (w *WebPush) Subscribe(t testing.TB, vapidPublicKey string) Subscription {
	t.Helper()
	var out struct {
		Data Subscription `json:"data"`
	}
	w.post(t, "/subscribe", map[string]string{"userVisibleOnly": "true", "applicationServerKey": vapidPublicKey}, &out)
	s := out.Data
	u, err := url.Parse(s.Endpoint)
	if err != nil {
		t.Fatalf("subscription endpoint %q: %v", s.Endpoint, err)
	}
	s.Endpoint = w.tls.URL + u.Path
	return s
}

// Notifications returns the decrypted payloads web-push-testing accepted
// for the subscription, in arrival order.
func (w *WebPush) Notifications(t testing.TB, s Subscription) []string {
	t.Helper()
	var out struct {
		Data struct {
			Messages []string `json:"messages"`
		} `json:"data"`
	}
	w.post(t, "/get-notifications", map[string]string{"clientHash": s.ClientHash}, &out)
	return out.Data.Messages
}

// Expire makes web-push-testing answer 410 Gone for the subscription.
func (w *WebPush) Expire(t testing.TB, s Subscription) {
	t.Helper()
	w.post(t, "/expire-subscription/"+s.ClientHash, struct{}{}, nil)
}

func (w *WebPush) post(t testing.TB, path string, in, out any) {
	t.Helper()
	b, _ := json.Marshal(in)
	resp, err := http.Post(w.plain+path, "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatalf("web-push-testing %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("web-push-testing %s: %d %s", path, resp.StatusCode, body)
	}
	if out != nil {
		if err := json.Unmarshal(body, out); err != nil {
			t.Fatalf("web-push-testing %s: %v in %s", path, err, body)
		}
	}
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
