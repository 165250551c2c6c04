package app

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/chatd/chatd/server/account"
	"github.com/chatd/chatd/server/push"
	"github.com/chatd/chatd/server/push/apns"
	"github.com/chatd/chatd/server/push/fcm"
	"github.com/chatd/chatd/server/push/redisqueue"
	"github.com/chatd/chatd/server/push/webpush"
	"github.com/chatd/chatd/server/sequence"
	"github.com/chatd/chatd/server/store"
)

// buildPush builds the push providers that have credentials (logging
// those that are off) and the dispatcher, and returns the sequencer's
// publish callback with the dispatcher's commit hook after it. The queue
// is the embedded store's on a single node and a Redis Stream in a
// cluster. Push is off with Config.Push.Off.
func (a *App) buildPush(publish func([]sequence.Committed)) (func([]sequence.Committed), error) {
	cfg := a.cfg.Push
	if cfg.Off {
		a.log.Info("push notifications off (--push-off)")
		return publish, nil
	}
	var queue store.PushQueue
	var online func(ctx context.Context, userID string) (bool, error)
	if q, ok := a.store.(store.PushQueue); ok {
		queue = q // single node: the embedded store
	} else if a.redis != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		q, err := redisqueue.New(ctx, redisqueue.Config{Client: a.redis, Key: a.cfg.RedisPrefix + "push", Consumer: a.cfg.ServerID})
		cancel()
		if err != nil {
			return nil, fmt.Errorf("push: %w", err)
		}
		queue = q
		// Devices on other servers: the presence engine knows them.
		online = func(ctx context.Context, userID string) (bool, error) {
			ps, err := a.presence.Engine().Get(ctx, []string{userID})
			if err != nil || len(ps) == 0 {
				return false, err
			}
			return ps[0].Online, nil
		}
	} else {
		a.log.Warn("push notifications off: no queue for this store")
		return publish, nil
	}
	keyFile := cfg.VAPIDKeyFile
	if keyFile == "" {
		keyFile = filepath.Join(a.cfg.DataDir, "vapid.json")
	}
	keys, err := webpush.LoadOrCreateKeys(keyFile)
	if err != nil {
		return nil, fmt.Errorf("push: %w", err)
	}
	wp, err := webpush.New(webpush.Config{Keys: keys, Subject: cfg.VAPIDSubject, HTTPClient: cfg.HTTPClient})
	if err != nil {
		return nil, fmt.Errorf("push: %w", err)
	}
	providers := []push.Provider{wp}
	a.log.Info("push provider webpush on", "vapid_key_file", keyFile)
	if cfg.FCMCredentialsFile == "" && cfg.FCMTokenSource == nil {
		a.log.Info("push provider fcm off: no credentials (--fcm-credentials-file)")
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		p, err := fcm.New(ctx, fcm.Config{CredentialsFile: cfg.FCMCredentialsFile, ProjectID: cfg.FCMProjectID,
			Endpoint: cfg.FCMEndpoint, TokenSource: cfg.FCMTokenSource})
		cancel()
		if err != nil {
			return nil, fmt.Errorf("push: fcm: %w", err)
		}
		providers = append(providers, p)
		a.log.Info("push provider fcm on")
	}
	if cfg.APNsKeyFile == "" || cfg.APNsKeyID == "" || cfg.APNsTeamID == "" {
		a.log.Info("push provider apns off: no credentials (--apns-key-file, --apns-key-id, --apns-team-id)")
	} else {
		p, err := apns.New(apns.Config{KeyFile: cfg.APNsKeyFile, KeyID: cfg.APNsKeyID, TeamID: cfg.APNsTeamID,
			Host: cfg.APNsHost, HTTPClient: cfg.APNsHTTPClient})
		if err != nil {
			return nil, fmt.Errorf("push: apns: %w", err)
		}
		providers = append(providers, p)
		a.log.Info("push provider apns on", "key_id", cfg.APNsKeyID, "team_id", cfg.APNsTeamID)
	}

	d, err := push.New(push.Config{
		Store:     a.store,
		Queue:     queue,
		Providers: providers,
		HasStream: a.hub.HasStream,
		Online:    online,
		Unread: func(ctx context.Context, channelID, userID string) (uint32, uint32, error) {
			return a.chatRef.Load().UnreadCounts(ctx, channelID, userID)
		},
		Window:      cfg.Window,
		TTL:         cfg.TTL,
		Concurrency: cfg.Concurrency,
		Registerer:  a.registry,
		Logger:      a.log,
	})
	if err != nil {
		return nil, fmt.Errorf("push: %w", err)
	}
	a.push = d
	kinds := make([]store.PushKind, 0, len(providers))
	for _, p := range providers {
		kinds = append(kinds, p.Kind())
	}
	a.pushAccount = account.PushConfig{Providers: kinds, WebPushHosts: cfg.WebPushHosts, VAPIDPublicKey: keys.PublicKey}
	return func(b []sequence.Committed) {
		publish(b)
		d.Committed(b) // push hook: in-memory filter + bounded hand-off, never blocks
	}, nil
}
