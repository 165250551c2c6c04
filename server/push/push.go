// Package push sends push notifications to devices that are away: the
// Provider interface that each push service's package implements
// (push/webpush, push/fcm, push/apns), the notification a provider sends,
// the provider's error vocabulary (gone, retry after, permanent), the
// Web Push endpoint allow-list (the SSRF check), and the Dispatcher that
// decides who gets a push and sends it through a durable queue.
//
// It imports no provider SDK: a provider package wraps one SDK and
// returns this package's *Error values, so that the dispatcher decides
// retries and target removal in one place. The rules are in docs/push.md.
package push

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/chatd/chatd/server/store"
)

// Defaults of the push knobs (Config fields left zero).
const (
	// DefaultTTL is how long a push stays worth sending: a push not
	// accepted by its provider within it is dropped (counted as "ttl"),
	// and the provider is told to hold it at most that long (Web Push TTL,
	// FCM android.ttl, apns-expiration).
	DefaultTTL = time.Hour
	// DefaultCollapseWindow is how long the dispatcher gathers the pushes
	// of one channel to one device into one.
	DefaultCollapseWindow = 2 * time.Second
	// DefaultConcurrency bounds the requests in flight to one provider.
	DefaultConcurrency = 16
	// DefaultTitle is the title of every push.
	DefaultTitle = "New message"
	// PreviewRunes is how much text a preview carries, in characters.
	PreviewRunes = 100
)

// DefaultWebPushHosts are the push services of the browsers people use
// (Chrome and Chromium-based browsers, Firefox, Safari, Edge); a host
// starting with "*." matches every subdomain of the rest.
var DefaultWebPushHosts = []string{
	"fcm.googleapis.com",
	"jmt17.google.com",
	"updates.push.services.mozilla.com",
	"web.push.apple.com",
	"*.push.apple.com",
	"*.notify.windows.com",
}

// Notification is one push to one device.
type Notification struct {
	// Target is where it goes.
	Target store.PushTarget
	// ChannelID is the channel it is about.
	ChannelID string
	// Title is what the notification's title says (DefaultTitle).
	Title string
	// Sender and Body are the sender's display name and the first
	// PreviewRunes characters of the text: empty unless the recipient
	// turned previews on.
	Sender string
	Body   string
	// Unread is the recipient's unread count in the channel; Badge their
	// total unread (the APNs badge).
	Unread uint32
	Badge  uint32
	// CollapseKey names the channel to the provider (Web Push Topic, FCM
	// collapse_key, apns-collapse-id): CollapseKey(ChannelID).
	CollapseKey string
	// TTL is how long the provider may hold it (whole seconds are sent).
	TTL time.Duration
}

// Payload is the JSON a Web Push payload holds and the data of an FCM or
// APNs message (the same fields, every value a string for FCM's data).
type Payload struct {
	Title     string `json:"title"`
	ChannelID string `json:"channel_id"`
	Unread    uint32 `json:"unread"`
	Badge     uint32 `json:"badge"`
	Sender    string `json:"sender,omitempty"`
	Body      string `json:"body,omitempty"`
}

// Payload returns n's payload.
func (n *Notification) Payload() Payload {
	return Payload{Title: n.Title, ChannelID: n.ChannelID, Unread: n.Unread, Badge: n.Badge, Sender: n.Sender, Body: n.Body}
}

// Provider sends notifications through one push service.
//
// Send hands n to the service once and returns nil when the service has
// accepted it (it then delivers it, or keeps it up to n.TTL). A failure is
// an *Error: Gone (the target no longer exists: delete it, never retry),
// Retry (429, 5xx, timeouts: send again, not before RetryAfter), or
// neither (the notification is refused for good: drop it). Send is safe
// for concurrent use; it never logs a token or endpoint in full.
type Provider interface {
	// Kind is the target kind the provider sends to.
	Kind() store.PushKind
	Send(ctx context.Context, n *Notification) error
}

// Error is a provider's failure, classified.
type Error struct {
	// Status is the HTTP status the service answered (0 if none came).
	Status int
	// Reason is the service's reason (e.g. "UNREGISTERED",
	// "BadDeviceToken"), or what failed.
	Reason string
	// Gone: the service reports the target gone; delete it.
	Gone bool
	// Retry: a temporary failure; RetryAfter is what the service asked
	// for (Retry-After), 0 if nothing.
	Retry      bool
	RetryAfter time.Duration
	// Err is the cause, if any.
	Err error
}

func (e *Error) Error() string {
	s := fmt.Sprintf("push: status %d %s", e.Status, e.Reason)
	switch {
	case e.Gone:
		s += " (target gone)"
	case e.Retry:
		s += " (retry"
		if e.RetryAfter > 0 {
			s += " after " + e.RetryAfter.String()
		}
		s += ")"
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

// Classify returns err as an *Error: itself if it is one, a retryable
// error for a timeout or a network failure, a permanent one otherwise.
func Classify(err error) *Error {
	var pe *Error
	if errors.As(err, &pe) {
		return pe
	}
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) {
		return &Error{Reason: "network", Retry: true, Err: err}
	}
	return &Error{Reason: "error", Err: err}
}

// HTTPError classifies an HTTP answer of a push service: 404 and 410 are
// gone (RFC 8030 section 7.3, Web Push), 429 and 5xx are retried after
// retryAfter (the Retry-After header's value, RFC 9110 10.2.3: seconds or
// an HTTP date), anything else is permanent.
func HTTPError(status int, reason, retryAfter string, now time.Time) *Error {
	e := &Error{Status: status, Reason: reason}
	switch {
	case status == 404 || status == 410:
		e.Gone = true
	case status == 429 || status >= 500:
		e.Retry = true
		e.RetryAfter = ParseRetryAfter(retryAfter, now)
	}
	return e
}

// ParseRetryAfter reads a Retry-After value (delay-seconds or an
// HTTP-date, RFC 9110 10.2.3); 0 if absent or unreadable, capped at a day.
func ParseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	var d time.Duration
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		d = time.Duration(min(secs, 86400)) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = t.Sub(now)
	}
	if d < 0 {
		return 0
	}
	return min(d, 24*time.Hour)
}

// CollapseKey returns the collapse key of a channel: 22 base64url
// characters of the SHA-256 of its id (a Web Push Topic must be at most 32
// characters of the base64url alphabet, RFC 8030 section 5.4; apns-
// collapse-id at most 64 bytes), the same on every server.
func CollapseKey(channelID string) string {
	h := sha256.Sum256([]byte(channelID))
	return base64.RawURLEncoding.EncodeToString(h[:16])
}

// Preview returns the first PreviewRunes characters of text, with "…"
// when it was cut.
func Preview(text string) string {
	n := 0
	for i := range text {
		if n == PreviewRunes {
			return text[:i] + "…"
		}
		n++
	}
	return text
}

// Redact shortens a token or endpoint for logs: its first 8 characters
// and its length.
func Redact(s string) string {
	if len(s) <= 8 {
		return fmt.Sprintf("(%d bytes)", len(s))
	}
	return fmt.Sprintf("%s…(%d bytes)", s[:8], len(s))
}

// RedactErr is err's text for a log line without the request URL: net/http
// wraps transport errors in a *url.Error whose text holds the whole URL,
// and a Web Push endpoint URL (an FCM token in the path, for FCM's legacy
// URLs too) is a credential for that device. Nil gives "".
func RedactErr(err error) string {
	if err == nil {
		return ""
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Op + " " + Redact(ue.URL) + ": " + ue.Err.Error()
	}
	return err.Error()
}

// Limits of a push target's fields, in bytes.
const (
	MaxEndpointBytes = 2048
	MaxTokenBytes    = 4096
	MaxTopicBytes    = 255
)

// CheckWebPushEndpoint checks a Web Push subscription endpoint before it
// is stored: an absolute https URL (RFC 8030 section 8.1: push services
// use https) of at most MaxEndpointBytes, without user information, whose
// host matches one of allowed ("*.example.com" matches any subdomain of
// example.com; an entry matches the host whatever its port). The endpoint
// is chosen by the client, and the server POSTs to it: without the
// allow-list a client could make the server send requests to any address
// (SSRF). Errors: store.CodeInvalid with a message naming the rule.
func CheckWebPushEndpoint(endpoint string, allowed []string) error {
	if endpoint == "" || len(endpoint) > MaxEndpointBytes {
		return store.Errorf(store.CodeInvalid, "web push endpoint must be 1 to %d bytes", MaxEndpointBytes)
	}
	u, err := url.Parse(endpoint)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.Opaque != "" {
		return store.Errorf(store.CodeInvalid, "web push endpoint must be an https URL")
	}
	if u.User != nil {
		return store.Errorf(store.CodeInvalid, "web push endpoint must not carry user information")
	}
	host := strings.ToLower(strings.TrimSuffix(u.Hostname(), "."))
	if !HostAllowed(host, allowed) {
		return store.Errorf(store.CodeInvalid, "web push endpoint host %q is not an allowed push service", host)
	}
	return nil
}

// HostAllowed reports whether host matches one of the allowed patterns
// (see CheckWebPushEndpoint).
func HostAllowed(host string, allowed []string) bool {
	for _, a := range allowed {
		a = strings.ToLower(a)
		if suffix, ok := strings.CutPrefix(a, "*."); ok {
			if strings.HasSuffix(host, "."+suffix) {
				return true
			}
		} else if host == a {
			return true
		}
	}
	return false
}

// CheckWebPushKeys checks a subscription's keys (RFC 8291 section 3):
// p256dh an uncompressed P-256 point (65 bytes, 0x04 first) and auth a
// 16-byte secret, both base64url (padded or not). Errors: store.CodeInvalid.
func CheckWebPushKeys(p256dh, auth string) error {
	p, err := decodeB64URL(p256dh)
	if err != nil || len(p) != 65 || p[0] != 4 {
		return store.Errorf(store.CodeInvalid, "web push key p256dh must be base64url of an uncompressed P-256 point (65 bytes)")
	}
	a, err := decodeB64URL(auth)
	if err != nil || len(a) != 16 {
		return store.Errorf(store.CodeInvalid, "web push key auth must be base64url of 16 bytes")
	}
	return nil
}

func decodeB64URL(s string) ([]byte, error) {
	return base64.RawURLEncoding.DecodeString(strings.TrimRight(s, "="))
}
