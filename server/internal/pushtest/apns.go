package pushtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// APNs is a local APNs that checks what Apple's does (Apple, "Sending
// notification requests to APNs"): HTTP/2 over TLS, POST
// /3/device/<hex token>, an ES256 provider JWT in "authorization: bearer"
// whose header names the key id (kid) and whose claims carry the team id
// (iss) and an issue time (iat) under an hour old, apns-topic,
// apns-push-type, apns-collapse-id of at most 64 bytes, a JSON payload
// with "aps" of at most 4 KiB. It answers Apple's error bodies
// ({"reason": "..."}; 410 with a timestamp).
type APNs struct {
	URL    string       // https://127.0.0.1:<port>
	Client *http.Client // HTTP/2, trusts the server
	// KeyFile is a .p8 key (PKCS#8 PEM) whose public half the server
	// verifies tokens with; KeyID and TeamID are what it expects.
	KeyFile, KeyID, TeamID string

	pub *ecdsa.PublicKey
	srv *httptest.Server

	mu       sync.Mutex
	topics   map[string]string // registered device token -> topic
	gone     map[string]bool   // tokens answered 410 Unregistered
	accepted []APNsPush
	refused  []string // reasons of refused requests
	answer   func(token string) (status int, reason string, ok bool)
}

// APNsPush is one accepted notification.
type APNsPush struct {
	Token, Topic, PushType, CollapseID, Priority, Expiration string
	Payload                                                  map[string]any
}

// StartAPNs starts the fake with a fresh signing key.
func StartAPNs(t testing.TB) *APNs {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	a := &APNs{KeyFile: filepath.Join(t.TempDir(), "AuthKey_ABC123DEFG.p8"), KeyID: "ABC123DEFG", TeamID: "TEAM123456",
		pub: &key.PublicKey, topics: map[string]string{}, gone: map[string]bool{}}
	if err := os.WriteFile(a.KeyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	a.srv = httptest.NewUnstartedServer(http.HandlerFunc(a.serve))
	a.srv.EnableHTTP2 = true
	a.srv.StartTLS()
	t.Cleanup(a.srv.Close)
	a.URL = a.srv.URL
	pool := x509.NewCertPool()
	pool.AddCert(a.srv.Certificate())
	a.Client = &http.Client{Timeout: 10 * time.Second, Transport: &http2.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	return a
}

// Register makes token a valid device token of topic.
func (a *APNs) Register(token, topic string) {
	a.mu.Lock()
	a.topics[token] = topic
	a.mu.Unlock()
}

// Unregister makes APNs answer 410 Unregistered for token (the app was
// removed).
func (a *APNs) Unregister(token string) {
	a.mu.Lock()
	a.gone[token] = true
	a.mu.Unlock()
}

// Answer forces an answer while fn returns ok (e.g. 503
// ServiceUnavailable); nil ends it.
func (a *APNs) Answer(fn func(token string) (status int, reason string, ok bool)) {
	a.mu.Lock()
	a.answer = fn
	a.mu.Unlock()
}

// Accepted returns the notifications accepted so far.
func (a *APNs) Accepted() []APNsPush {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]APNsPush(nil), a.accepted...)
}

// Refused returns the reasons of the requests refused so far.
func (a *APNs) Refused() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.refused...)
}

func (a *APNs) fail(w http.ResponseWriter, status int, reason string) {
	a.mu.Lock()
	a.refused = append(a.refused, reason)
	a.mu.Unlock()
	w.Header().Set("apns-id", "00000000-0000-0000-0000-000000000000")
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	body := map[string]any{"reason": reason}
	if status == http.StatusGone {
		body["timestamp"] = time.Now().UnixMilli()
	}
	_ = json.NewEncoder(w).Encode(body)
}

func (a *APNs) serve(w http.ResponseWriter, r *http.Request) {
	if r.ProtoMajor != 2 {
		a.fail(w, http.StatusBadRequest, "BadPath") // APNs speaks HTTP/2 only
		return
	}
	if r.Method != http.MethodPost {
		a.fail(w, http.StatusMethodNotAllowed, "MethodNotAllowed")
		return
	}
	tok, ok := strings.CutPrefix(r.URL.Path, "/3/device/")
	if !ok {
		a.fail(w, http.StatusNotFound, "BadPath")
		return
	}
	if bearer, ok := strings.CutPrefix(r.Header.Get("authorization"), "bearer "); !ok {
		a.fail(w, http.StatusForbidden, "MissingProviderToken")
		return
	} else if reason := a.checkJWT(bearer); reason != "" {
		a.fail(w, http.StatusForbidden, reason)
		return
	}
	if _, err := hex.DecodeString(tok); err != nil || tok == "" {
		a.fail(w, http.StatusBadRequest, "BadDeviceToken")
		return
	}
	topic := r.Header.Get("apns-topic")
	if topic == "" {
		a.fail(w, http.StatusBadRequest, "MissingTopic")
		return
	}
	pt := r.Header.Get("apns-push-type")
	if pt != "alert" && pt != "background" {
		a.fail(w, http.StatusBadRequest, "InvalidPushType")
		return
	}
	if len(r.Header.Get("apns-collapse-id")) > 64 {
		a.fail(w, http.StatusBadRequest, "BadCollapseId")
		return
	}
	body, _ := io.ReadAll(io.LimitReader(r.Body, 8192))
	if len(body) > 4096 {
		a.fail(w, http.StatusRequestEntityTooLarge, "PayloadTooLarge")
		return
	}
	var payload map[string]any
	if err := json.Unmarshal(body, &payload); err != nil || payload["aps"] == nil {
		a.fail(w, http.StatusBadRequest, "PayloadEmpty")
		return
	}
	a.mu.Lock()
	answer, registered, gone := a.answer, a.topics[tok], a.gone[tok]
	a.mu.Unlock()
	if answer != nil {
		if status, reason, ok := answer(tok); ok {
			a.fail(w, status, reason)
			return
		}
	}
	switch {
	case gone:
		a.fail(w, http.StatusGone, "Unregistered")
		return
	case registered == "":
		a.fail(w, http.StatusBadRequest, "BadDeviceToken")
		return
	case registered != topic:
		a.fail(w, http.StatusBadRequest, "DeviceTokenNotForTopic")
		return
	}
	a.mu.Lock()
	a.accepted = append(a.accepted, APNsPush{Token: tok, Topic: topic, PushType: pt, CollapseID: r.Header.Get("apns-collapse-id"),
		Priority: r.Header.Get("apns-priority"), Expiration: r.Header.Get("apns-expiration"), Payload: payload})
	a.mu.Unlock()
	w.Header().Set("apns-id", "11111111-1111-1111-1111-111111111111")
	w.WriteHeader(http.StatusOK)
}

// checkJWT verifies the provider token; "" if valid, else Apple's reason.
func (a *APNs) checkJWT(tok string) string {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return "InvalidProviderToken"
	}
	var header struct{ Alg, Kid string }
	var claims struct {
		Iss string
		Iat int64
	}
	hb, err1 := base64.RawURLEncoding.DecodeString(parts[0])
	cb, err2 := base64.RawURLEncoding.DecodeString(parts[1])
	sig, err3 := base64.RawURLEncoding.DecodeString(parts[2])
	if err1 != nil || err2 != nil || err3 != nil || json.Unmarshal(hb, &header) != nil || json.Unmarshal(cb, &claims) != nil || len(sig) != 64 {
		return "InvalidProviderToken"
	}
	h := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if header.Alg != "ES256" || header.Kid != a.KeyID || claims.Iss != a.TeamID ||
		!ecdsa.Verify(a.pub, h[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])) {
		return "InvalidProviderToken"
	}
	if age := time.Since(time.Unix(claims.Iat, 0)); age > time.Hour || age < -time.Minute {
		return "ExpiredProviderToken"
	}
	return ""
}

// String describes the fake for test logs.
func (a *APNs) String() string { return fmt.Sprintf("fake APNs at %s", a.URL) }
