package apns_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sideshow/apns2"

	"github.com/chatd/chatd/server/internal/pushtest"
	"github.com/chatd/chatd/server/push"
	"github.com/chatd/chatd/server/push/apns"
	"github.com/chatd/chatd/server/store"
)

const tok = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90"

func setup(t *testing.T) (*pushtest.APNs, *apns.Provider) {
	t.Helper()
	f := pushtest.StartAPNs(t)
	p, err := apns.New(apns.Config{KeyFile: f.KeyFile, KeyID: f.KeyID, TeamID: f.TeamID, Host: f.URL, HTTPClient: f.Client})
	if err != nil {
		t.Fatal(err)
	}
	return f, p
}

func note(token string) *push.Notification {
	return &push.Notification{
		Target:    store.PushTarget{UserID: "bob", DeviceID: "iphone", Kind: store.PushAPNs, Address: token, Topic: "com.example.chat", Sandbox: true},
		ChannelID: "dm:alice:bob", Title: push.DefaultTitle, Unread: 3, Badge: 7,
		CollapseKey: push.CollapseKey("dm:alice:bob"), TTL: time.Hour,
	}
}

func TestSend_Accepted(t *testing.T) {
	f, p := setup(t)
	f.Register(tok, "com.example.chat")
	if err := p.Send(context.Background(), note(tok)); err != nil {
		t.Fatalf("Send: %v (refused: %v)", err, f.Refused())
	}
	got := f.Accepted()
	if len(got) != 1 {
		t.Fatalf("accepted %d", len(got))
	}
	a := got[0]
	aps, _ := a.Payload["aps"].(map[string]any)
	alert, _ := aps["alert"].(map[string]any)
	if a.Topic != "com.example.chat" || a.PushType != "alert" || a.CollapseID != push.CollapseKey("dm:alice:bob") || a.Priority != "10" || a.Expiration == "" ||
		aps["badge"] != float64(7) || aps["thread-id"] != "dm:alice:bob" || alert["title"] != push.DefaultTitle || alert["body"] != nil {
		t.Fatalf("accepted %+v", a)
	}
}

// The fake's checks are real: a token signed with another team id is
// refused with Apple's reason.
func TestSend_WrongTeamRefused(t *testing.T) {
	f := pushtest.StartAPNs(t)
	f.Register(tok, "com.example.chat")
	p, err := apns.New(apns.Config{KeyFile: f.KeyFile, KeyID: f.KeyID, TeamID: "OTHERTEAM1", Host: f.URL, HTTPClient: f.Client})
	if err != nil {
		t.Fatal(err)
	}
	err = p.Send(context.Background(), note(tok))
	var pe *push.Error
	if !errors.As(err, &pe) || pe.Status != 403 || pe.Reason != apns2.ReasonInvalidProviderToken || pe.Gone || pe.Retry {
		t.Fatalf("Send with a foreign team id: %v, want a permanent 403 InvalidProviderToken", err)
	}
}

func TestSend_GoneAndRetry(t *testing.T) {
	f, p := setup(t)
	f.Register(tok, "com.example.chat")
	f.Unregister(tok)
	var pe *push.Error
	if err := p.Send(context.Background(), note(tok)); !errors.As(err, &pe) || !pe.Gone || pe.Status != 410 || pe.Reason != apns2.ReasonUnregistered {
		t.Fatalf("unregistered token: %v, want gone (410 Unregistered)", err)
	}
	other := "ffff" + tok[4:]
	if err := p.Send(context.Background(), note(other)); !errors.As(err, &pe) || !pe.Gone || pe.Status != 400 || pe.Reason != apns2.ReasonBadDeviceToken {
		t.Fatalf("unknown token: %v, want gone (400 BadDeviceToken)", err)
	}
	f.Register(other, "com.example.chat")
	f.Answer(func(string) (int, string, bool) { return 503, apns2.ReasonServiceUnavailable, true })
	if err := p.Send(context.Background(), note(other)); !errors.As(err, &pe) || !pe.Retry {
		t.Fatalf("503: %v, want retry", err)
	}
	f.Answer(nil)
	n := note(other)
	n.Target.Topic = "com.example.other"
	if err := p.Send(context.Background(), n); !errors.As(err, &pe) || pe.Gone || pe.Retry || pe.Reason != apns2.ReasonDeviceTokenNotForTopic {
		t.Fatalf("wrong topic: %v, want permanent DeviceTokenNotForTopic", err)
	}
}

func TestNew_BadKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bad.p8")
	_ = os.WriteFile(path, []byte("not a key"), 0o600)
	if _, err := apns.New(apns.Config{KeyFile: path, KeyID: "K", TeamID: "T"}); err == nil {
		t.Fatal("a bad key file was accepted")
	}
	if _, err := apns.New(apns.Config{KeyFile: path}); err == nil {
		t.Fatal("no key id or team id accepted")
	}
}

func TestPayloadPreviews(t *testing.T) {
	n := note(tok)
	n.Sender, n.Body = "Alice", "hi"
	b, _ := apns.Payload(n)
	if s := string(b); !strings.Contains(s, `"subtitle":"Alice"`) || !strings.Contains(s, `"body":"hi"`) {
		t.Fatalf("payload %s", s)
	}
}

// BenchmarkSend is APNs push throughput against the local fake (HTTP/2,
// JWT verified per request), 16 sends in flight as the dispatcher's
// default per-provider bound.
func BenchmarkSend(b *testing.B) {
	f := pushtest.StartAPNs(b)
	p, err := apns.New(apns.Config{KeyFile: f.KeyFile, KeyID: f.KeyID, TeamID: f.TeamID, Host: f.URL, HTTPClient: f.Client})
	if err != nil {
		b.Fatal(err)
	}
	f.Register(tok, "com.example.chat")
	b.SetParallelism(8) // 2 CPUs x 8 = 16 in flight
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := p.Send(context.Background(), note(tok)); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pushes/s")
}
