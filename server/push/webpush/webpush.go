// Package webpush is the Web Push provider of server/push: it encrypts a
// notification's payload for a browser's subscription (RFC 8291,
// aes128gcm), signs a VAPID JWT (RFC 8292) and POSTs it to the
// subscription's endpoint (RFC 8030), with
// github.com/SherClockHolmes/webpush-go. It also keeps the server's VAPID
// key pair (LoadOrCreateKeys).
package webpush

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	wp "github.com/SherClockHolmes/webpush-go"

	"github.com/chatd/chatd/server/push"
	"github.com/chatd/chatd/server/store"
)

// Defaults of Config.
const (
	// DefaultRecordSize is the aes128gcm record size in bytes: payloads are
	// padded to it. webpush-go's default (4096) is refused by some
	// browsers' push services (webpush-go#23); 2 KiB fits every one and
	// is far above our payloads.
	DefaultRecordSize = 2048
	// DefaultSubject is the VAPID "sub" claim (RFC 8292 section 2.1: a
	// mailto: or https: URI the push service can reach the operator at).
	DefaultSubject = "mailto:push@chatd.invalid"
	// DefaultTimeout bounds one request to a push service.
	DefaultTimeout = 10 * time.Second
)

// Keys is a VAPID key pair: base64url (no padding) of the uncompressed
// P-256 public key (65 bytes) and of the private scalar (32 bytes).
type Keys struct {
	PublicKey  string `json:"publicKey"`
	PrivateKey string `json:"privateKey"`
}

// Check reports a key pair that is not a P-256 pair whose public key
// belongs to its private key.
func (k Keys) Check() error {
	priv, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(k.PrivateKey, "="))
	if err != nil {
		return fmt.Errorf("webpush: VAPID private key is not base64url: %w", err)
	}
	pk, err := ecdh.P256().NewPrivateKey(priv)
	if err != nil {
		return fmt.Errorf("webpush: VAPID private key: %w", err)
	}
	pub, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(k.PublicKey, "="))
	if err != nil || !bytes.Equal(pub, pk.PublicKey().Bytes()) {
		return errors.New("webpush: VAPID public key does not match the private key")
	}
	return nil
}

// LoadOrCreateKeys returns the VAPID key pair in the JSON file at path
// ({"publicKey": ..., "privateKey": ...}), creating it (mode 0600,
// atomically: concurrent callers all get the same pair) if it does not
// exist. Every server of a cluster must use the same file: browsers
// subscribe with the public key, and a push signed with another key is
// refused.
func LoadOrCreateKeys(path string) (Keys, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		var k Keys
		if err := json.Unmarshal(b, &k); err != nil {
			return Keys{}, fmt.Errorf("webpush: VAPID key file %s: %w", path, err)
		}
		if err := k.Check(); err != nil {
			return Keys{}, fmt.Errorf("%w (file %s)", err, path)
		}
		return k, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return Keys{}, fmt.Errorf("webpush: read VAPID keys: %w", err)
	}
	priv, pub, err := wp.GenerateVAPIDKeys()
	if err != nil {
		return Keys{}, fmt.Errorf("webpush: generate VAPID keys: %w", err)
	}
	k := Keys{PublicKey: strings.TrimRight(pub, "="), PrivateKey: strings.TrimRight(priv, "=")}
	b, _ = json.Marshal(k)
	tmp, err := os.CreateTemp(filepath.Dir(path), ".vapid-*")
	if err != nil {
		return Keys{}, fmt.Errorf("webpush: create VAPID keys: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(b)
	if err == nil {
		err = tmp.Chmod(0o600)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return Keys{}, fmt.Errorf("webpush: write VAPID keys: %w", err)
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return LoadOrCreateKeys(path)
		}
		return Keys{}, fmt.Errorf("webpush: install VAPID keys: %w", err)
	}
	return k, nil
}

// Config configures a Provider.
type Config struct {
	// Keys is the VAPID key pair. Required.
	Keys Keys
	// Subject is the VAPID sub claim; zero means DefaultSubject.
	Subject string
	// RecordSize is the aes128gcm record size; zero means
	// DefaultRecordSize.
	RecordSize uint32
	// HTTPClient sends the requests; zero means a client with
	// DefaultTimeout. Tests pass one that trusts their TLS server.
	HTTPClient *http.Client
}

// Provider sends Web Push notifications. It is safe for concurrent use.
type Provider struct {
	cfg Config
	// subscriber is Subject as webpush-go wants it: it prefixes
	// "mailto:" to anything that is not an https: URI, so a mailto:
	// subject loses its scheme here (else the claim reads
	// "mailto:mailto:...").
	subscriber string
}

var _ push.Provider = (*Provider)(nil)

// New returns a Provider; an error if the keys are not a valid pair.
func New(cfg Config) (*Provider, error) {
	if err := cfg.Keys.Check(); err != nil {
		return nil, err
	}
	if cfg.Subject == "" {
		cfg.Subject = DefaultSubject
	}
	if cfg.RecordSize == 0 {
		cfg.RecordSize = DefaultRecordSize
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: DefaultTimeout}
	}
	return &Provider{cfg: cfg, subscriber: strings.TrimPrefix(cfg.Subject, "mailto:")}, nil
}

// Kind is store.PushWebPush.
func (p *Provider) Kind() store.PushKind { return store.PushWebPush }

// Send encrypts n's payload (JSON, push.Payload) for n.Target's
// subscription and POSTs it with TTL (whole seconds), Topic
// (n.CollapseKey: a newer push of the channel replaces an undelivered
// one at the push service, RFC 8030 section 5.4), Urgency normal and a
// VAPID Authorization (aud: the endpoint's origin, exp: 12 hours, sub:
// Config.Subject). 201 (or any 2xx) is success; other answers are
// classified by push.HTTPError (404/410 gone, 429/5xx retried).
func (p *Provider) Send(ctx context.Context, n *push.Notification) error {
	body, err := json.Marshal(n.Payload())
	if err != nil {
		return &push.Error{Reason: "payload", Err: err}
	}
	ttl := int(n.TTL / time.Second)
	sub := &wp.Subscription{Endpoint: n.Target.Address, Keys: wp.Keys{P256dh: n.Target.P256dh, Auth: n.Target.Auth}}
	resp, err := wp.SendNotificationWithContext(ctx, body, sub, &wp.Options{
		HTTPClient:      p.cfg.HTTPClient,
		RecordSize:      p.cfg.RecordSize,
		Subscriber:      p.subscriber,
		Topic:           n.CollapseKey,
		TTL:             ttl,
		Urgency:         wp.UrgencyNormal,
		VAPIDPublicKey:  p.cfg.Keys.PublicKey,
		VAPIDPrivateKey: p.cfg.Keys.PrivateKey,
	})
	if err != nil {
		if ctx.Err() != nil || isNetwork(err) {
			return push.Classify(err)
		}
		return &push.Error{Reason: "encrypt", Err: err} // bad subscription keys: permanent
	}
	defer resp.Body.Close()
	reason, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return nil
	}
	return push.HTTPError(resp.StatusCode, strings.TrimSpace(string(reason)), resp.Header.Get("Retry-After"), time.Now())
}

// isNetwork reports whether err came from the HTTP client (a *url.Error)
// rather than from encrypting the payload.
func isNetwork(err error) bool {
	var ue interface{ Timeout() bool }
	return errors.As(err, &ue)
}
