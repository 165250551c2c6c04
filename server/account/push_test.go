package account_test

import (
	"strings"
	"testing"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/chatd/chatd/server/account"
	"github.com/chatd/chatd/server/store"
	"google.golang.org/grpc/codes"
)

// Every malformed target is InvalidArgument and stores nothing; a valid
// one of each kind round-trips; revoking the device removes it.
func TestPushTargetValidation(t *testing.T) {
	e := newEnv(t, opts{push: account.PushConfig{
		Providers:      []store.PushKind{store.PushWebPush, store.PushFCM, store.PushAPNs},
		VAPIDPublicKey: "BKey",
	}})
	e.signUp(t, "bob", pw, "Bob")
	tok := e.logIn(t, "bob", pw, "phone").GetAccessToken()
	ctx := e.as(tok)
	p256 := "BNcRdreALRFXTkOOUHK1EtK2wtaz5Ry4YfYCA_0QTpQtUbVlUls0VJXg7A8u-Ts1XbjhazAkj7I99e8QcYP7DkM"
	auth := "tBHItJI5svbpez7KI4CCXg"
	web := func(ep, p, a string) *chatv1.PushTarget {
		return &chatv1.PushTarget{Target: &chatv1.PushTarget_WebPush{WebPush: &chatv1.WebPushSubscription{Endpoint: ep, Keys: &chatv1.WebPushKeys{P256Dh: p, Auth: a}}}}
	}
	apns := func(tok, topic string) *chatv1.PushTarget {
		return &chatv1.PushTarget{Target: &chatv1.PushTarget_Apns{Apns: &chatv1.ApnsTarget{Token: tok, Topic: topic}}}
	}
	for name, tc := range map[string]struct {
		target *chatv1.PushTarget
		msg    string
	}{
		"none":          {nil, "one of web_push"},
		"empty oneof":   {&chatv1.PushTarget{}, "one of web_push"},
		"http":          {web("http://fcm.googleapis.com/fcm/send/x", p256, auth), "https"},
		"metadata host": {web("https://169.254.169.254/latest", p256, auth), "not an allowed push service"},
		"loopback":      {web("https://127.0.0.1:8443/x", p256, auth), "not an allowed push service"},
		"short p256dh":  {web("https://fcm.googleapis.com/fcm/send/x", p256[:20], auth), "p256dh"},
		"bad auth":      {web("https://fcm.googleapis.com/fcm/send/x", p256, "zz"), "auth"},
		"fcm empty":     {&chatv1.PushTarget{Target: &chatv1.PushTarget_Fcm{Fcm: &chatv1.FcmTarget{}}}, "fcm token"},
		"fcm space":     {&chatv1.PushTarget{Target: &chatv1.PushTarget_Fcm{Fcm: &chatv1.FcmTarget{Token: "a b"}}}, "fcm token"},
		"apns not hex":  {apns("xyz", "com.example.chat"), "hex"},
		"apns long":     {apns(strings.Repeat("a", 202), "com.example.chat"), "hex"},
		"apns no topic": {apns("abcd", ""), "topic"},
	} {
		_, err := e.c.SetPushTarget(ctx, &chatv1.SetPushTargetRequest{Target: tc.target})
		if err == nil {
			t.Fatalf("%s: accepted", name)
		}
		wantStatus(t, err, codes.InvalidArgument, tc.msg)
	}
	if got, err := e.c.GetPushTarget(ctx, &chatv1.GetPushTargetRequest{}); err != nil || got.GetTarget() != nil {
		t.Fatalf("after refusals: %v %v, want no target", got, err)
	}
	for _, pt := range []*chatv1.PushTarget{
		web("https://fcm.googleapis.com/fcm/send/x", p256, auth),
		{Target: &chatv1.PushTarget_Fcm{Fcm: &chatv1.FcmTarget{Token: "APA91b-token"}}},
		apns("ABCDEF0123", "com.example.chat"),
	} {
		if _, err := e.c.SetPushTarget(ctx, &chatv1.SetPushTargetRequest{Target: pt}); err != nil {
			t.Fatalf("SetPushTarget(%v): %v", pt, err)
		}
		got, err := e.c.GetPushTarget(ctx, &chatv1.GetPushTargetRequest{})
		if err != nil || got.GetTarget() == nil {
			t.Fatalf("GetPushTarget: %v %v", got, err)
		}
	}
	if got, _ := e.c.GetPushTarget(ctx, &chatv1.GetPushTargetRequest{}); got.GetTarget().GetApns().GetToken() != "abcdef0123" {
		t.Fatalf("APNs token not stored lower-case: %v", got)
	}
	if k, err := e.c.GetVapidPublicKey(ctx, &chatv1.GetVapidPublicKeyRequest{}); err != nil || k.GetPublicKey() != "BKey" {
		t.Fatalf("GetVapidPublicKey: %v %v", k, err)
	}
	if _, err := e.c.LogOut(ctx, &chatv1.LogOutRequest{}); err != nil {
		t.Fatal(err)
	}
	if ts, err := e.st.ListPushTargets(e.ctx, "bob"); err != nil || len(ts) != 0 {
		t.Fatalf("targets after log-out: %v %v", ts, err)
	}
}

func TestPushOffRefuses(t *testing.T) {
	e := newEnv(t, opts{})
	e.signUp(t, "bob", pw, "Bob")
	ctx := e.as(e.logIn(t, "bob", pw, "phone").GetAccessToken())
	_, err := e.c.SetPushTarget(ctx, &chatv1.SetPushTargetRequest{Target: &chatv1.PushTarget{Target: &chatv1.PushTarget_Fcm{Fcm: &chatv1.FcmTarget{Token: "t"}}}})
	wantStatus(t, err, codes.FailedPrecondition, "not configured")
	_, err = e.c.GetVapidPublicKey(ctx, &chatv1.GetVapidPublicKeyRequest{})
	wantStatus(t, err, codes.FailedPrecondition, "web push")
}
