// Package apns is the Apple Push Notification service provider of
// server/push, on github.com/sideshow/apns2 with token-based
// authentication: a provider JWT (ES256, header kid = the key id, claims
// iss = the team id and iat) signed with the .p8 key Apple issues, over
// HTTP/2 to api.push.apple.com (or api.sandbox.push.apple.com for
// development tokens).
package apns

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"github.com/sideshow/apns2"
	"github.com/sideshow/apns2/token"

	"github.com/chatd/chatd/server/push"
	"github.com/chatd/chatd/server/store"
)

// Config configures a Provider.
type Config struct {
	// KeyFile is the .p8 signing key (PKCS#8 PEM, ES256) from the Apple
	// developer account; KeyID its 10-character key id and TeamID the
	// team id. All three are required.
	KeyFile string
	KeyID   string
	TeamID  string
	// Host, if set, replaces both APNs hosts (tests: a local server).
	Host string
	// HTTPClient, if set, replaces apns2's HTTP/2 client (tests: one that
	// trusts the local server).
	HTTPClient *http.Client
}

// Provider sends through APNs. It is safe for concurrent use; it keeps one
// HTTP/2 connection per environment, as Apple asks.
type Provider struct {
	production, sandbox *apns2.Client
}

var _ push.Provider = (*Provider)(nil)

// New loads the key and returns a Provider. Errors: a missing or invalid
// key file, an empty key or team id.
func New(cfg Config) (*Provider, error) {
	if cfg.KeyID == "" || cfg.TeamID == "" {
		return nil, errors.New("apns: key id and team id are required")
	}
	key, err := token.AuthKeyFromFile(cfg.KeyFile)
	if err != nil {
		return nil, err
	}
	tok := &token.Token{AuthKey: key, KeyID: cfg.KeyID, TeamID: cfg.TeamID}
	prod := apns2.NewTokenClient(tok).Production()
	sand := apns2.NewTokenClient(tok).Development()
	for _, c := range []*apns2.Client{prod, sand} {
		if cfg.Host != "" {
			c.Host = cfg.Host
		}
		if cfg.HTTPClient != nil {
			c.HTTPClient = cfg.HTTPClient
		}
	}
	return &Provider{production: prod, sandbox: sand}, nil
}

// Kind is store.PushAPNs.
func (p *Provider) Kind() store.PushKind { return store.PushAPNs }

// Payload returns the APNs JSON payload of n: an alert (title, and the
// sender and text only with previews), the badge (total unread), the
// thread-id (the channel: one notification group per conversation),
// sound, and the chatd fields beside "aps".
func Payload(n *push.Notification) ([]byte, error) {
	alert := map[string]string{"title": n.Title}
	if n.Sender != "" {
		alert["subtitle"] = n.Sender
	}
	if n.Body != "" {
		alert["body"] = n.Body
	}
	return json.Marshal(map[string]any{
		"aps": map[string]any{
			"alert":     alert,
			"badge":     n.Badge,
			"sound":     "default",
			"thread-id": n.ChannelID,
		},
		"channel_id": n.ChannelID,
		"unread":     n.Unread,
	})
}

// Send posts n to /3/device/<token> of the target's environment with
// apns-topic (the target's topic), apns-push-type alert, apns-priority 10,
// apns-collapse-id (n.CollapseKey) and apns-expiration (now + n.TTL). 200
// is success; 410 Unregistered and 400 BadDeviceToken are gone; 429, 5xx
// and 403 ExpiredProviderToken (the token is regenerated) are retried;
// anything else is permanent.
func (p *Provider) Send(ctx context.Context, n *push.Notification) error {
	body, err := Payload(n)
	if err != nil {
		return &push.Error{Reason: "payload", Err: err}
	}
	c := p.production
	if n.Target.Sandbox {
		c = p.sandbox
	}
	resp, err := c.PushWithContext(ctx, &apns2.Notification{
		DeviceToken: n.Target.Address,
		Topic:       n.Target.Topic,
		CollapseID:  n.CollapseKey,
		Expiration:  time.Now().Add(n.TTL),
		Priority:    apns2.PriorityHigh,
		PushType:    apns2.PushTypeAlert,
		Payload:     body,
	})
	if err != nil {
		return &push.Error{Reason: "network", Retry: true, Err: err}
	}
	return classify(resp)
}

func classify(r *apns2.Response) error {
	if r.Sent() {
		return nil
	}
	e := &push.Error{Status: r.StatusCode, Reason: r.Reason}
	switch {
	case r.StatusCode == http.StatusGone || r.Reason == apns2.ReasonUnregistered ||
		(r.StatusCode == http.StatusBadRequest && r.Reason == apns2.ReasonBadDeviceToken):
		e.Gone = true
	case r.StatusCode == http.StatusTooManyRequests || r.StatusCode >= 500 || r.Reason == apns2.ReasonExpiredProviderToken:
		e.Retry = true
	}
	return e
}
