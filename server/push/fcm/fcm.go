// Package fcm is the Firebase Cloud Messaging provider of server/push, on
// the Firebase Admin SDK (firebase.google.com/go/v4/messaging): the FCM
// HTTP v1 API (POST /v1/projects/{project}/messages:send) with an OAuth 2
// bearer from a service account.
package fcm

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"time"

	firebase "firebase.google.com/go/v4"
	"firebase.google.com/go/v4/errorutils"
	"firebase.google.com/go/v4/messaging"
	"golang.org/x/oauth2"
	"google.golang.org/api/option"

	"github.com/chatd/chatd/server/push"
	"github.com/chatd/chatd/server/store"
)

// Config configures a Provider.
type Config struct {
	// CredentialsFile is the service account key (JSON) of the Firebase
	// project; required unless TokenSource is set.
	CredentialsFile string
	// ProjectID is the Firebase project id; zero means the one in the
	// credentials.
	ProjectID string
	// Endpoint, if set, replaces https://fcm.googleapis.com/v1 (tests: a
	// local server), and TokenSource the service account's OAuth tokens.
	Endpoint    string
	TokenSource oauth2.TokenSource
}

// Provider sends through FCM. It is safe for concurrent use.
type Provider struct {
	c *messaging.Client
}

var _ push.Provider = (*Provider)(nil)

// New returns a Provider. Errors: unreadable credentials, no project id.
func New(ctx context.Context, cfg Config) (*Provider, error) {
	var opts []option.ClientOption
	switch {
	case cfg.TokenSource != nil:
		opts = append(opts, option.WithTokenSource(cfg.TokenSource))
	case cfg.CredentialsFile != "":
		opts = append(opts, option.WithCredentialsFile(cfg.CredentialsFile))
	default:
		return nil, errors.New("fcm: a credentials file is required")
	}
	if cfg.Endpoint != "" {
		opts = append(opts, option.WithEndpoint(cfg.Endpoint))
	}
	var fc *firebase.Config
	if cfg.ProjectID != "" {
		fc = &firebase.Config{ProjectID: cfg.ProjectID}
	}
	app, err := firebase.NewApp(ctx, fc, opts...)
	if err != nil {
		return nil, err
	}
	c, err := app.Messaging(ctx)
	if err != nil {
		return nil, err
	}
	return &Provider{c: c}, nil
}

// Kind is store.PushFCM.
func (p *Provider) Kind() store.PushKind { return store.PushFCM }

// Message returns the FCM v1 message of n: the payload fields as data
// (strings), a notification with the title (and the preview only with
// previews), android collapse_key and notification tag per channel, ttl,
// and for iOS through FCM the apns-collapse-id and apns-expiration headers
// with thread-id and badge.
func Message(n *push.Notification) *messaging.Message {
	ttl := n.TTL
	data := map[string]string{
		"title":      n.Title,
		"channel_id": n.ChannelID,
		"unread":     strconv.FormatUint(uint64(n.Unread), 10),
		"badge":      strconv.FormatUint(uint64(n.Badge), 10),
	}
	body := ""
	if n.Body != "" {
		data["sender"], data["body"] = n.Sender, n.Body
		body = n.Sender + ": " + n.Body
	}
	badge := int(n.Badge)
	return &messaging.Message{
		Token:        n.Target.Address,
		Data:         data,
		Notification: &messaging.Notification{Title: n.Title, Body: body},
		Android: &messaging.AndroidConfig{
			CollapseKey:  n.CollapseKey,
			Priority:     "high",
			TTL:          &ttl,
			Notification: &messaging.AndroidNotification{Tag: n.CollapseKey},
		},
		APNS: &messaging.APNSConfig{
			Headers: map[string]string{
				"apns-collapse-id": n.CollapseKey,
				"apns-expiration":  strconv.FormatInt(time.Now().Add(ttl).Unix(), 10),
			},
			Payload: &messaging.APNSPayload{Aps: &messaging.Aps{ThreadID: n.ChannelID, Badge: &badge}},
		},
	}
}

// Send sends n. Errors, classified by the SDK's own classifiers:
// UNREGISTERED (messaging.IsUnregistered) is gone; QUOTA_EXCEEDED,
// UNAVAILABLE and INTERNAL are retried after the answer's Retry-After
// (the SDK has already retried 5xx a few times itself); anything else is
// permanent.
func (p *Provider) Send(ctx context.Context, n *push.Notification) error {
	_, err := p.c.Send(ctx, Message(n))
	if err == nil {
		return nil
	}
	e := &push.Error{Reason: "fcm", Err: err}
	if r := errorutils.HTTPResponse(err); r != nil {
		e.Status = r.StatusCode
		e.RetryAfter = push.ParseRetryAfter(r.Header.Get("Retry-After"), time.Now())
	}
	switch {
	case messaging.IsUnregistered(err):
		e.Gone, e.Reason = true, "UNREGISTERED"
	case messaging.IsQuotaExceeded(err), messaging.IsUnavailable(err), messaging.IsInternal(err),
		e.Status == http.StatusTooManyRequests || e.Status >= 500:
		e.Retry = true
	case e.Status == 0 && ctx.Err() == nil:
		e.Retry = true // no answer: a network failure
	}
	return e
}
