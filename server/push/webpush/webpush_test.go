package webpush_test

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chatd/chatd/server/internal/pushtest"
	"github.com/chatd/chatd/server/internal/testenv"
	"github.com/chatd/chatd/server/push"
	"github.com/chatd/chatd/server/push/webpush"
	"github.com/chatd/chatd/server/store"
)

func newProvider(t *testing.T, w *pushtest.WebPush) (*webpush.Provider, webpush.Keys) {
	t.Helper()
	keys, err := webpush.LoadOrCreateKeys(filepath.Join(t.TempDir(), "vapid.json"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := webpush.New(webpush.Config{Keys: keys, Subject: "mailto:ops@example.com", HTTPClient: w.Client})
	if err != nil {
		t.Fatal(err)
	}
	return p, keys
}

func notification(sub pushtest.Subscription) *push.Notification {
	return &push.Notification{
		Target:      store.PushTarget{UserID: "bob", DeviceID: "phone", Kind: store.PushWebPush, Address: sub.Endpoint, P256dh: sub.Keys.P256dh, Auth: sub.Keys.Auth},
		ChannelID:   "dm:alice:bob",
		Title:       push.DefaultTitle,
		Unread:      3,
		Badge:       5,
		CollapseKey: push.CollapseKey("dm:alice:bob"),
		TTL:         time.Hour,
	}
}

// The mock push service of web-push-testing decrypts the payload and
// verifies the VAPID signature against the key the client subscribed with.
func TestSend_WebPushTesting(t *testing.T) {
	w := pushtest.StartWebPush(t)
	p, keys := newProvider(t, w)
	sub := w.Subscribe(t, keys.PublicKey)
	n := notification(sub)
	if err := p.Send(context.Background(), n); err != nil {
		t.Fatalf("Send: %v", err)
	}
	got := w.Notifications(t, sub)
	want, _ := json.Marshal(n.Payload())
	if len(got) != 1 || got[0] != string(want) {
		t.Fatalf("web-push-testing decrypted %q, want [%s]", got, want)
	}
	reqs := w.Requests()
	if len(reqs) != 1 {
		t.Fatalf("%d requests, want 1", len(reqs))
	}
	h := reqs[0].Header
	if h.Get("Content-Encoding") != "aes128gcm" || h.Get("TTL") != "3600" || h.Get("Topic") != n.CollapseKey || h.Get("Urgency") != "normal" {
		t.Fatalf("headers %v: want Content-Encoding aes128gcm, TTL 3600, Topic %s, Urgency normal", h, n.CollapseKey)
	}
	if rs := binary.BigEndian.Uint32(reqs[0].Body[16:20]); rs != webpush.DefaultRecordSize {
		t.Fatalf("record size %d, want %d (webpush-go#23)", rs, webpush.DefaultRecordSize)
	}
	// A payload without previews carries no text.
	if strings.Contains(got[0], `"body"`) || strings.Contains(got[0], `"sender"`) {
		t.Fatalf("payload without previews carries text: %s", got[0])
	}
}

// A signature with another key pair is refused by the push service: the
// check above is not vacuous.
func TestSend_WrongVAPIDKeyRefused(t *testing.T) {
	w := pushtest.StartWebPush(t)
	p, _ := newProvider(t, w)
	_, other := newProvider(t, w)
	sub := w.Subscribe(t, other.PublicKey)
	err := p.Send(context.Background(), notification(sub))
	var pe *push.Error
	if !errors.As(err, &pe) || pe.Status != 400 || pe.Gone || pe.Retry {
		t.Fatalf("Send with a foreign VAPID key: %v, want a permanent 400", err)
	}
	if got := w.Notifications(t, sub); len(got) != 0 {
		t.Fatalf("delivered %q", got)
	}
}

func TestSend_ExpiredIsGone(t *testing.T) {
	w := pushtest.StartWebPush(t)
	p, keys := newProvider(t, w)
	sub := w.Subscribe(t, keys.PublicKey)
	w.Expire(t, sub)
	err := p.Send(context.Background(), notification(sub))
	var pe *push.Error
	if !errors.As(err, &pe) || !pe.Gone || pe.Status != 410 {
		t.Fatalf("Send to an expired subscription: %v, want gone (410)", err)
	}
}

func TestSend_RetryAfter(t *testing.T) {
	w := pushtest.StartWebPush(t)
	p, keys := newProvider(t, w)
	sub := w.Subscribe(t, keys.PublicKey)
	w.Answer(func(*http.Request) (int, http.Header, bool) {
		return 503, http.Header{"Retry-After": {"7"}}, true
	})
	err := p.Send(context.Background(), notification(sub))
	var pe *push.Error
	if !errors.As(err, &pe) || !pe.Retry || pe.RetryAfter != 7*time.Second {
		t.Fatalf("Send answered 503 Retry-After 7: %v, want retry after 7s", err)
	}
	w.Answer(nil)
	if err := p.Send(context.Background(), notification(sub)); err != nil {
		t.Fatalf("Send after the 503: %v", err)
	}
	if got := w.Notifications(t, sub); len(got) != 1 {
		t.Fatalf("delivered %d, want 1", len(got))
	}
}

// An implementation no one here wrote (PyPI http-ece, run by
// tests/push/check_webpush.py) decrypts a captured payload, and the VAPID
// JWT's claims are checked: aud the endpoint's origin, exp within 24
// hours, sub.
func TestSend_IndependentDecryptAndVAPIDClaims(t *testing.T) {
	root := pushtest.RepoRoot(t)
	py := filepath.Join(root, ".venv-push", "bin", "python")
	if _, err := os.Stat(py); err != nil {
		testenv.Need(t, "the push venv is missing (run scripts/push-tools.sh): "+err.Error())
	}
	w := pushtest.StartWebPush(t)
	p, _ := newProvider(t, w)
	w.Answer(func(r *http.Request) (int, http.Header, bool) {
		return 201, nil, strings.HasPrefix(r.URL.Path, "/capture/")
	})
	recv, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	authSecret := make([]byte, 16)
	_, _ = rand.Read(authSecret)
	endpoint := w.Origin() + "/capture/1"
	b64 := base64.RawURLEncoding.EncodeToString
	n := notification(pushtest.Subscription{})
	n.Target.Address, n.Target.P256dh, n.Target.Auth = endpoint, b64(recv.PublicKey().Bytes()), b64(authSecret)
	n.Sender, n.Body = "Alice", "hello bob"
	if err := p.Send(context.Background(), n); err != nil {
		t.Fatalf("Send: %v", err)
	}
	var captured *pushtest.Captured
	for _, c := range w.Requests() {
		if c.Path == "/capture/1" {
			captured = &c
		}
	}
	if captured == nil {
		t.Fatal("no request captured")
	}
	in, _ := json.Marshal(map[string]string{
		"body": b64(captured.Body), "private_key": b64(recv.Bytes()), "auth": b64(authSecret),
		"authorization": captured.Header.Get("Authorization"), "endpoint": endpoint,
	})
	cmd := exec.Command(py, filepath.Join(root, "tests", "push", "check_webpush.py"))
	cmd.Stdin = bytes.NewReader(in)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("check_webpush.py: %v: %s", err, stderr.String())
	}
	var res struct {
		Plaintext  string         `json:"plaintext"`
		Claims     map[string]any `json:"claims"`
		RecordSize int            `json:"record_size"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("check_webpush.py printed %s: %v", out, err)
	}
	want, _ := json.Marshal(n.Payload())
	if res.Plaintext != string(want) {
		t.Fatalf("http-ece decrypted %q, want %s", res.Plaintext, want)
	}
	if res.Claims["sub"] != "mailto:ops@example.com" || res.RecordSize != webpush.DefaultRecordSize {
		t.Fatalf("claims %v record size %d", res.Claims, res.RecordSize)
	}
}

func TestLoadOrCreateKeys(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vapid.json")
	k1, err := webpush.LoadOrCreateKeys(path)
	if err != nil {
		t.Fatal(err)
	}
	k2, err := webpush.LoadOrCreateKeys(path)
	if err != nil || k2 != k1 {
		t.Fatalf("second load: %v %+v, want %+v", err, k2, k1)
	}
	if pub, err := base64.RawURLEncoding.DecodeString(k1.PublicKey); err != nil || len(pub) != 65 || pub[0] != 4 {
		t.Fatalf("public key %q is not an uncompressed P-256 point", k1.PublicKey)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode: %v %v", fi.Mode(), err)
	}
	other, _ := webpush.LoadOrCreateKeys(filepath.Join(t.TempDir(), "vapid.json"))
	bad, _ := json.Marshal(webpush.Keys{PublicKey: other.PublicKey, PrivateKey: k1.PrivateKey})
	badPath := filepath.Join(t.TempDir(), "bad.json")
	_ = os.WriteFile(badPath, bad, 0o600)
	if _, err := webpush.LoadOrCreateKeys(badPath); err == nil {
		t.Fatal("a file whose public key is not its private key's loaded")
	}
}

// BenchmarkSend is Web Push throughput against web-push-testing (each
// push encrypted, VAPID-signed, and decrypted and verified by the node
// mock, which bounds the rate), 16 sends in flight.
func BenchmarkSend(b *testing.B) {
	w := pushtest.StartWebPush(b)
	keys, err := webpush.LoadOrCreateKeys(filepath.Join(b.TempDir(), "vapid.json"))
	if err != nil {
		b.Fatal(err)
	}
	p, err := webpush.New(webpush.Config{Keys: keys, HTTPClient: w.Client})
	if err != nil {
		b.Fatal(err)
	}
	sub := w.Subscribe(b, keys.PublicKey)
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := p.Send(context.Background(), notification(sub)); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pushes/s")
}
