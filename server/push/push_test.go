package push

import (
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/chatd/chatd/server/store"
)

func TestCheckWebPushEndpoint(t *testing.T) {
	allowed := append(append([]string(nil), DefaultWebPushHosts...), "127.0.0.1")
	for _, ok := range []string{
		"https://fcm.googleapis.com/fcm/send/abc:APA91b",
		"https://updates.push.services.mozilla.com/wpush/v2/gAAAA",
		"https://web.push.apple.com/QGz",
		"https://wns2-by3p.notify.windows.com/w/?token=x",
		"https://127.0.0.1:8443/notify/abc",
		"https://FCM.googleapis.com./fcm/send/x",
	} {
		if err := CheckWebPushEndpoint(ok, allowed); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{
		"",
		"http://fcm.googleapis.com/fcm/send/abc", // not https
		"https://169.254.169.254/latest/meta-data/",                           // cloud metadata
		"https://localhost/notify/x",                                          // not in the list
		"https://fcm.googleapis.com.evil.example/x",                           // suffix trick
		"https://evilnotify.windows.com/x",                                    // not a subdomain
		"https://user:pw@fcm.googleapis.com/fcm/send/x",                       // user info
		"https:fcm.googleapis.com",                                            // opaque
		"ftp://fcm.googleapis.com/x",                                          // scheme
		"https://fcm.googleapis.com/" + strings.Repeat("a", MaxEndpointBytes), // too long
	} {
		err := CheckWebPushEndpoint(bad, allowed)
		if store.ErrorCode(err) != store.CodeInvalid {
			t.Errorf("%q: %v, want CodeInvalid", bad, err)
		}
	}
	if err := CheckWebPushEndpoint("https://127.0.0.1/x", DefaultWebPushHosts); err == nil {
		t.Error("loopback allowed by the defaults")
	}
}

func TestCheckWebPushKeys(t *testing.T) {
	p256 := "BNcRdreALRFXTkOOUHK1EtK2wtaz5Ry4YfYCA_0QTpQtUbVlUls0VJXg7A8u-Ts1XbjhazAkj7I99e8QcYP7DkM"
	if err := CheckWebPushKeys(p256, "tBHItJI5svbpez7KI4CCXg"); err != nil {
		t.Fatal(err)
	}
	if err := CheckWebPushKeys(p256, "tBHItJI5svbpez7KI4CCXg=="); err != nil {
		t.Fatalf("padded auth: %v", err)
	}
	for _, kv := range [][2]string{{"", "tBHItJI5svbpez7KI4CCXg"}, {p256, ""}, {p256[:40], "tBHItJI5svbpez7KI4CCXg"}, {p256, "!!"}} {
		if store.ErrorCode(CheckWebPushKeys(kv[0], kv[1])) != store.CodeInvalid {
			t.Errorf("keys %q accepted", kv)
		}
	}
}

func TestHTTPErrorAndRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		status      int
		retryAfter  string
		gone, retry bool
		after       time.Duration
	}{
		{404, "", true, false, 0},
		{410, "", true, false, 0},
		{429, "30", false, true, 30 * time.Second},
		{503, now.Add(time.Minute).Format(http.TimeFormat), false, true, time.Minute},
		{500, "soon", false, true, 0},
		{400, "", false, false, 0},
		{413, "", false, false, 0},
		{503, "999999999", false, true, 24 * time.Hour},
	} {
		e := HTTPError(c.status, "", c.retryAfter, now)
		if e.Gone != c.gone || e.Retry != c.retry || e.RetryAfter != c.after {
			t.Errorf("%d %q: %+v", c.status, c.retryAfter, e)
		}
	}
}

func TestPreviewAndCollapseKey(t *testing.T) {
	long := strings.Repeat("é", 150)
	if p := Preview(long); p != strings.Repeat("é", 100)+"…" {
		t.Fatalf("Preview cut at %d runes", len([]rune(p)))
	}
	if Preview("hi") != "hi" {
		t.Fatal("short text changed")
	}
	k := CollapseKey("dm:alice:bob")
	if len(k) > 32 || strings.Trim(k, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") != "" {
		t.Fatalf("collapse key %q is not a valid Web Push Topic (RFC 8030 5.4)", k)
	}
	if k == CollapseKey("dm:alice:carol") || k != CollapseKey("dm:alice:bob") {
		t.Fatal("collapse keys are not per channel")
	}
}

// TestRedactErr: a transport error's text holds the request URL, which for
// Web Push is the device's subscription (a credential); the log keeps only
// its first bytes.
func TestRedactErr(t *testing.T) {
	endpoint := "https://fcm.googleapis.com/fcm/send/SECRET-SUBSCRIPTION-TOKEN"
	_, err := http.Post(endpoint[:8]+"127.0.0.1:1/fcm/send/SECRET-SUBSCRIPTION-TOKEN", "text/plain", nil)
	if err == nil {
		t.Fatal("a post to a closed port succeeded")
	}
	if !strings.Contains(err.Error(), "SECRET") {
		t.Fatalf("net/http's error %q does not hold the URL: the test proves nothing", err)
	}
	if got := RedactErr(err); strings.Contains(got, "SECRET") || !strings.Contains(got, "Post") {
		t.Fatalf("RedactErr = %q", got)
	}
	if RedactErr(nil) != "" || RedactErr(errors.New("plain")) != "plain" {
		t.Fatal("RedactErr of nil or a plain error")
	}
}
