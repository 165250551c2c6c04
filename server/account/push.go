package account

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"unicode"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/chatd/chatd/server/push"
	"github.com/chatd/chatd/server/store"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// MaxAPNsTokenChars bounds an APNs device token (hex; 64 characters
// today, longer ones are allowed for).
const MaxAPNsTokenChars = 200

// PushConfig is what the AccountService needs to know of push.
type PushConfig struct {
	// Providers are the target kinds this server can send to; a target of
	// another kind is refused with FailedPrecondition.
	Providers []store.PushKind
	// WebPushHosts is the allow-list of Web Push endpoint hosts
	// (push.CheckWebPushEndpoint); nil means push.DefaultWebPushHosts.
	WebPushHosts []string
	// VAPIDPublicKey is the server's VAPID public key (base64url), "" if
	// Web Push is off.
	VAPIDPublicKey string
}

func (s *Service) providerOn(k store.PushKind) bool {
	for _, p := range s.push.Providers {
		if p == k {
			return true
		}
	}
	return false
}

// SetPushTarget registers the calling device's push target, replacing the
// one it had. A Web Push endpoint must be https on an allowed host
// (push.CheckWebPushEndpoint: the SSRF check) with valid keys
// (push.CheckWebPushKeys); an FCM token 1..4096 bytes without spaces or
// control characters; an APNs token 1..200 hex digits with a topic of
// 1..255 bytes without spaces. Nothing is stored on any error. Errors:
// Unauthenticated, InvalidArgument, FailedPrecondition (the provider is
// not configured here).
func (s *Service) SetPushTarget(ctx context.Context, req *chatv1.SetPushTargetRequest) (*chatv1.SetPushTargetResponse, error) {
	p, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	t, err := s.pushTarget(req.GetTarget())
	if err != nil {
		return nil, err
	}
	if !s.providerOn(t.Kind) {
		return nil, status.Errorf(codes.FailedPrecondition, "push provider %s is not configured on this server", t.Kind)
	}
	t.UserID, t.DeviceID, t.UpdatedAt = p.UserID, p.DeviceID, s.now().UTC().Truncate(1e6)
	if err := s.st.PutPushTarget(ctx, t); err != nil {
		return nil, internal(ctx, "SetPushTarget", err)
	}
	return &chatv1.SetPushTargetResponse{Target: targetProto(t)}, nil
}

// pushTarget validates a target and returns it as the store keeps it.
func (s *Service) pushTarget(pt *chatv1.PushTarget) (*store.PushTarget, error) {
	switch x := pt.GetTarget().(type) {
	case *chatv1.PushTarget_WebPush:
		hosts := s.push.WebPushHosts
		if hosts == nil {
			hosts = push.DefaultWebPushHosts
		}
		if err := push.CheckWebPushEndpoint(x.WebPush.GetEndpoint(), hosts); err != nil {
			return nil, err
		}
		k := x.WebPush.GetKeys()
		if err := push.CheckWebPushKeys(k.GetP256Dh(), k.GetAuth()); err != nil {
			return nil, err
		}
		return &store.PushTarget{Kind: store.PushWebPush, Address: x.WebPush.GetEndpoint(), P256dh: k.GetP256Dh(), Auth: k.GetAuth()}, nil
	case *chatv1.PushTarget_Fcm:
		tok := x.Fcm.GetToken()
		if tok == "" || len(tok) > push.MaxTokenBytes || !printable(tok) {
			return nil, status.Errorf(codes.InvalidArgument, "fcm token must be 1 to %d bytes without spaces or control characters", push.MaxTokenBytes)
		}
		return &store.PushTarget{Kind: store.PushFCM, Address: tok}, nil
	case *chatv1.PushTarget_Apns:
		tok, topic := strings.ToLower(x.Apns.GetToken()), x.Apns.GetTopic()
		if _, err := hex.DecodeString(tok); err != nil || tok == "" || len(tok) > MaxAPNsTokenChars {
			return nil, status.Errorf(codes.InvalidArgument, "apns token must be 1 to %d hex digits", MaxAPNsTokenChars)
		}
		if topic == "" || len(topic) > push.MaxTopicBytes || !printable(topic) {
			return nil, status.Errorf(codes.InvalidArgument, "apns topic (the app's bundle id) must be 1 to %d bytes without spaces", push.MaxTopicBytes)
		}
		return &store.PushTarget{Kind: store.PushAPNs, Address: tok, Topic: topic, Sandbox: x.Apns.GetSandbox()}, nil
	}
	return nil, status.Error(codes.InvalidArgument, "target must set one of web_push, fcm or apns")
}

// printable: valid UTF-8 without spaces or control characters.
func printable(s string) bool {
	for _, r := range s {
		if r == unicode.ReplacementChar || unicode.IsSpace(r) || unicode.IsControl(r) {
			return false
		}
	}
	return true
}

func targetProto(t *store.PushTarget) *chatv1.PushTarget {
	switch t.Kind {
	case store.PushWebPush:
		return &chatv1.PushTarget{Target: &chatv1.PushTarget_WebPush{WebPush: &chatv1.WebPushSubscription{
			Endpoint: t.Address, Keys: &chatv1.WebPushKeys{P256Dh: t.P256dh, Auth: t.Auth}}}}
	case store.PushFCM:
		return &chatv1.PushTarget{Target: &chatv1.PushTarget_Fcm{Fcm: &chatv1.FcmTarget{Token: t.Address}}}
	case store.PushAPNs:
		return &chatv1.PushTarget{Target: &chatv1.PushTarget_Apns{Apns: &chatv1.ApnsTarget{Token: t.Address, Topic: t.Topic, Sandbox: t.Sandbox}}}
	}
	return nil
}

// GetPushTarget returns the calling device's push target (absent if
// none). Errors: Unauthenticated.
func (s *Service) GetPushTarget(ctx context.Context, _ *chatv1.GetPushTargetRequest) (*chatv1.GetPushTargetResponse, error) {
	p, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	t, err := s.st.GetPushTarget(ctx, p.UserID, p.DeviceID)
	if errors.Is(err, store.ErrNotFound) {
		return &chatv1.GetPushTargetResponse{}, nil
	}
	if err != nil {
		return nil, internal(ctx, "GetPushTarget", err)
	}
	return &chatv1.GetPushTargetResponse{Target: targetProto(t)}, nil
}

// DeletePushTarget removes the calling device's push target (idempotent).
// Errors: Unauthenticated.
func (s *Service) DeletePushTarget(ctx context.Context, _ *chatv1.DeletePushTargetRequest) (*chatv1.DeletePushTargetResponse, error) {
	p, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := s.st.DeletePushTarget(ctx, p.UserID, p.DeviceID, ""); err != nil {
		return nil, internal(ctx, "DeletePushTarget", err)
	}
	return &chatv1.DeletePushTargetResponse{}, nil
}

// GetVapidPublicKey returns the server's VAPID public key. Errors:
// Unauthenticated, FailedPrecondition (Web Push is off here).
func (s *Service) GetVapidPublicKey(ctx context.Context, _ *chatv1.GetVapidPublicKeyRequest) (*chatv1.GetVapidPublicKeyResponse, error) {
	if _, err := caller(ctx); err != nil {
		return nil, err
	}
	if s.push.VAPIDPublicKey == "" {
		return nil, status.Error(codes.FailedPrecondition, "web push is not configured on this server")
	}
	return &chatv1.GetVapidPublicKeyResponse{PublicKey: s.push.VAPIDPublicKey}, nil
}

// removePushTarget deletes a revoked device's push target; a failure is
// logged (the dispatcher skips revoked devices' targets anyway).
func (s *Service) removePushTarget(ctx context.Context, userID, deviceID string) {
	if _, err := s.st.DeletePushTarget(ctx, userID, deviceID, ""); err != nil {
		_ = internal(ctx, fmt.Sprintf("revoke.DeletePushTarget(%s)", deviceID), err)
	}
}
