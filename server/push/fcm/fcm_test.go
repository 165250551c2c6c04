package fcm_test

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"firebase.google.com/go/v4/messaging"
	"golang.org/x/oauth2"

	"github.com/chatd/chatd/server/internal/pushtest"
	"github.com/chatd/chatd/server/push"
	"github.com/chatd/chatd/server/push/fcm"
	"github.com/chatd/chatd/server/store"
)

func setup(t *testing.T, token string) (*pushtest.FCM, *fcm.Provider) {
	t.Helper()
	f := pushtest.StartFCM(t)
	p, err := fcm.New(context.Background(), fcm.Config{ProjectID: f.Project, Endpoint: f.URL,
		TokenSource: oauth2.StaticTokenSource(&oauth2.Token{AccessToken: token, TokenType: "Bearer", Expiry: time.Now().Add(time.Hour)})})
	if err != nil {
		t.Fatal(err)
	}
	return f, p
}

func note(token string) *push.Notification {
	return &push.Notification{
		Target:    store.PushTarget{UserID: "bob", DeviceID: "pixel", Kind: store.PushFCM, Address: token},
		ChannelID: "g:friends", Title: push.DefaultTitle, Unread: 4, Badge: 9,
		CollapseKey: push.CollapseKey("g:friends"), TTL: time.Hour,
	}
}

func TestSend_Accepted(t *testing.T) {
	f, p := setup(t, "ya29.test-access-token")
	f.Register("tok-1")
	if err := p.Send(context.Background(), note("tok-1")); err != nil {
		t.Fatalf("Send: %v (refused %v)", err, f.Refused())
	}
	got := f.Accepted()
	if len(got) != 1 {
		t.Fatalf("accepted %d", len(got))
	}
	m := got[0]
	data, _ := m["data"].(map[string]any)
	android, _ := m["android"].(map[string]any)
	note, _ := m["notification"].(map[string]any)
	if m["token"] != "tok-1" || data["channel_id"] != "g:friends" || data["unread"] != "4" || data["body"] != nil ||
		android["collapse_key"] != push.CollapseKey("g:friends") || android["ttl"] != "3600s" || note["title"] != push.DefaultTitle || note["body"] != nil {
		t.Fatalf("message %v", m)
	}
}

func TestSend_BadBearerRefused(t *testing.T) {
	f, p := setup(t, "not-the-token")
	f.Register("tok-1")
	err := p.Send(context.Background(), note("tok-1"))
	var pe *push.Error
	if !errors.As(err, &pe) || pe.Gone || pe.Retry || pe.Status != 401 {
		t.Fatalf("Send with a wrong bearer: %v, want a permanent 401", err)
	}
}

func TestSend_UnregisteredIsGone(t *testing.T) {
	f, p := setup(t, "ya29.test-access-token")
	f.Register("tok-1")
	f.Unregister("tok-1")
	err := p.Send(context.Background(), note("tok-1"))
	var pe *push.Error
	if !errors.As(err, &pe) || !pe.Gone || !messaging.IsUnregistered(pe.Err) {
		t.Fatalf("Send to an unregistered token: %v, want gone (UNREGISTERED)", err)
	}
}

func TestSend_QuotaRetryAfter(t *testing.T) {
	f, p := setup(t, "ya29.test-access-token")
	f.Register("tok-1")
	f.Answer(func(string) (int, string, http.Header, bool) {
		return 429, "QUOTA_EXCEEDED", http.Header{"Retry-After": {"30"}}, true
	})
	err := p.Send(context.Background(), note("tok-1"))
	var pe *push.Error
	if !errors.As(err, &pe) || !pe.Retry || pe.RetryAfter != 30*time.Second {
		t.Fatalf("429 QUOTA_EXCEEDED Retry-After 30: %v, want retry after 30s", err)
	}
}

// BenchmarkSend is FCM push throughput against the local fake (HTTP v1
// JSON through the Admin SDK), 16 sends in flight.
func BenchmarkSend(b *testing.B) {
	f := pushtest.StartFCM(b)
	p, err := fcm.New(context.Background(), fcm.Config{ProjectID: f.Project, Endpoint: f.URL,
		TokenSource: oauth2.StaticTokenSource(&oauth2.Token{AccessToken: f.Token, TokenType: "Bearer", Expiry: time.Now().Add(time.Hour)})})
	if err != nil {
		b.Fatal(err)
	}
	f.Register("tok-1")
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := p.Send(context.Background(), note("tok-1")); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pushes/s")
}
