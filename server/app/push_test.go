package app_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/chatd/chatd/server/app"
	"github.com/chatd/chatd/server/internal/pushtest"
	"github.com/chatd/chatd/server/push"
	"golang.org/x/oauth2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// pushEnv is a server with Web Push to web-push-testing, alice, and bob
// with a laptop and a phone whose push target is a web-push-testing
// subscription.
type pushEnv struct {
	a             *app.App
	w             *pushtest.WebPush
	alice         *user
	laptop, phone *user
	sub           pushtest.Subscription
}

func startPushApp(t *testing.T, window time.Duration) *pushEnv {
	t.Helper()
	w := pushtest.StartWebPush(t)
	a, err := app.New(app.Config{
		GRPCAddr: "127.0.0.1:0",
		HTTPAddr: "127.0.0.1:0",
		DataDir:  t.TempDir(),
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
		Push:     app.PushConfig{WebPushHosts: []string{w.Host}, HTTPClient: w.Client, Window: window},
	})
	if err != nil {
		t.Fatalf("app.New: %v", err)
	}
	a.Start()
	t.Cleanup(func() { _ = a.Close() })
	cc := dial(t, a.GRPCAddr())
	e := &pushEnv{a: a, w: w}
	e.alice = signUpLogIn(t, cc, "alice", "laptop")
	e.laptop = signUpLogIn(t, cc, "bob", "laptop")
	e.phone = logIn(t, cc, "bob", "phone")
	e.sub = registerWebPush(t, e.phone, w)
	return e
}

// registerWebPush subscribes at web-push-testing with the server's VAPID
// key and registers the subscription as u's push target.
func registerWebPush(t *testing.T, u *user, w *pushtest.WebPush) pushtest.Subscription {
	t.Helper()
	ctx := u.ctx(context.Background())
	acc := chatv1.NewAccountServiceClient(u.cc)
	key, err := acc.GetVapidPublicKey(ctx, &chatv1.GetVapidPublicKeyRequest{})
	if err != nil {
		t.Fatalf("GetVapidPublicKey: %v", err)
	}
	sub := w.Subscribe(t, key.GetPublicKey())
	if _, err := acc.SetPushTarget(ctx, &chatv1.SetPushTargetRequest{Target: &chatv1.PushTarget{Target: &chatv1.PushTarget_WebPush{
		WebPush: &chatv1.WebPushSubscription{Endpoint: sub.Endpoint, Keys: &chatv1.WebPushKeys{P256Dh: sub.Keys.P256dh, Auth: sub.Keys.Auth}}}}}); err != nil {
		t.Fatalf("SetPushTarget: %v", err)
	}
	return sub
}

// payloads returns the decrypted pushes web-push-testing accepted for sub.
func payloads(t *testing.T, w *pushtest.WebPush, sub pushtest.Subscription) []push.Payload {
	t.Helper()
	var out []push.Payload
	for _, s := range w.Notifications(t, sub) {
		var p push.Payload
		if err := json.Unmarshal([]byte(s), &p); err != nil {
			t.Fatalf("push payload %q: %v", s, err)
		}
		if strings.Contains(s, `"body"`) && p.Body == "" {
			t.Fatalf("payload %q", s)
		}
		out = append(out, p)
	}
	return out
}

// waitPushes waits until sub has n pushes (failing after 15s), then
// waits settle more and checks that no further push came.
func waitPushes(t *testing.T, w *pushtest.WebPush, sub pushtest.Subscription, n int, settle time.Duration) []push.Payload {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		ps := payloads(t, w, sub)
		if len(ps) >= n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d pushes after 15s, want %d", len(ps), n)
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(settle)
	ps := payloads(t, w, sub)
	if len(ps) != n {
		t.Fatalf("%d pushes, want exactly %d: %+v", len(ps), n, ps)
	}
	return ps
}

// metric reads one sample of the server's /metrics (0 if absent); name
// may carry labels as the exposition format writes them.
func pushMetric(t *testing.T, httpAddr, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + httpAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}

func waitMetric(t *testing.T, httpAddr, name string, want float64) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for pushMetric(t, httpAddr, name) != want {
		if time.Now().After(deadline) {
			t.Fatalf("%s = %v after 15s, want %v", name, pushMetric(t, httpAddr, name), want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestCase_C203: bob's laptop has an open stream and his phone none:
// alice's message pushes nothing. When the laptop closes too, the next
// message pushes to the phone once.
func TestCase_C203(t *testing.T) {
	const window = 300 * time.Millisecond
	e := startPushApp(t, window)
	as := openStream(t, e.alice)
	ls := openStream(t, e.laptop)
	waitMetric(t, e.a.HTTPAddr(), "chatd_hub_sessions", 2)
	as.send("bob", "c203-1", "while the laptop is open")
	time.Sleep(3 * window)
	if ps := payloads(t, e.w, e.sub); len(ps) != 0 {
		t.Fatalf("pushed while bob's laptop had a stream: %+v", ps)
	}
	ls.cancel()
	waitMetric(t, e.a.HTTPAddr(), "chatd_hub_sessions", 1)
	as.send("bob", "c203-2", "after the laptop closed")
	ps := waitPushes(t, e.w, e.sub, 1, 3*window)
	p := ps[0]
	if p.Title != push.DefaultTitle || p.ChannelID != "dm:alice:bob" || p.Unread != 2 || p.Badge != 2 {
		t.Fatalf("push %+v, want title %q, channel dm:alice:bob, unread 2, badge 2", p, push.DefaultTitle)
	}
	// Previews are off by default: no text and no sender left the server.
	if p.Body != "" || p.Sender != "" {
		t.Fatalf("push without previews carries text: %+v", p)
	}
	for _, s := range e.w.Notifications(t, e.sub) {
		if strings.Contains(s, "laptop closed") || strings.Contains(s, "alice\"") {
			t.Fatalf("decrypted payload %q carries message content", s)
		}
	}
}

// TestCase_C206: twenty messages in one second to a device that is away
// become one push for the channel, with the count.
func TestCase_C206(t *testing.T) {
	const window = 1500 * time.Millisecond
	e := startPushApp(t, window)
	as := openStream(t, e.alice)
	for i := range 20 {
		as.send("bob", fmt.Sprintf("c206-%d", i), fmt.Sprintf("burst %d", i))
	}
	ps := waitPushes(t, e.w, e.sub, 1, 2*window)
	if ps[0].Unread != 20 {
		t.Fatalf("collapsed push says %d unread, want 20", ps[0].Unread)
	}
	if got := e.w.Requests(); len(got) != 1 || got[0].Header.Get("Topic") != push.CollapseKey("dm:alice:bob") {
		t.Fatalf("%d requests to the push service (want 1 with the channel's Topic)", len(got))
	}
}

func TestPush_MutedChannelGetsNone(t *testing.T) {
	const window = 200 * time.Millisecond
	e := startPushApp(t, window)
	as := openStream(t, e.alice)
	as.send("bob", "mute-0", "before the mute")
	waitPushes(t, e.w, e.sub, 1, 0)
	chat := chatv1.NewChatServiceClient(e.laptop.cc)
	ctx := e.laptop.ctx(context.Background())
	if _, err := chat.MuteChannel(ctx, &chatv1.MuteChannelRequest{ChannelId: "dm:alice:bob"}); err != nil {
		t.Fatalf("MuteChannel: %v", err)
	}
	as.send("bob", "mute-1", "muted")
	waitMetric(t, e.a.HTTPAddr(), `chatd_push_dropped_total{reason="muted"}`, 1)
	if ps := payloads(t, e.w, e.sub); len(ps) != 1 {
		t.Fatalf("%d pushes, want only the one before the mute", len(ps))
	}
	// Muted channels still count unread, and ListChannels shows the mute.
	lc, err := chat.ListChannels(ctx, &chatv1.ListChannelsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(lc.GetChannels()) != 1 || !lc.GetChannels()[0].GetMuted() || lc.GetChannels()[0].GetUnreadCount() != 2 {
		t.Fatalf("ListChannels = %v, want dm:alice:bob muted with 2 unread", lc.GetChannels())
	}
	if _, err := chat.UnmuteChannel(ctx, &chatv1.UnmuteChannelRequest{ChannelId: "dm:alice:bob"}); err != nil {
		t.Fatalf("UnmuteChannel: %v", err)
	}
	as.send("bob", "mute-2", "unmuted")
	waitPushes(t, e.w, e.sub, 2, 0)
	// A mute that has ended pushes again; a time in the past ends the mute
	// at once (issue 17: a schema-valid REST request is not refused for
	// the clock) and says when it ended.
	past := timestampIn(-time.Minute)
	mr, err := chat.MuteChannel(ctx, &chatv1.MuteChannelRequest{ChannelId: "dm:alice:bob", Until: past})
	if err != nil || !mr.GetUntil().AsTime().Equal(past.AsTime().Truncate(time.Millisecond)) {
		t.Fatalf("MuteChannel until the past: %v %v, want the mute ended at that time", mr, err)
	}
	if lc, err := chat.ListChannels(ctx, &chatv1.ListChannelsRequest{}); err != nil || lc.GetChannels()[0].GetMuted() {
		t.Fatalf("after a mute until the past: %v %v, want not muted", lc, err)
	}
	// 0001-01-01 (what a Go client's zero time.Time becomes) is a time in
	// the past as well, not "forever".
	if _, err := chat.MuteChannel(ctx, &chatv1.MuteChannelRequest{ChannelId: "dm:alice:bob", Until: timestamppb.New(time.Time{})}); err != nil {
		t.Fatalf("MuteChannel until 0001-01-01: %v", err)
	}
	if lc, err := chat.ListChannels(ctx, &chatv1.ListChannelsRequest{}); err != nil || lc.GetChannels()[0].GetMuted() {
		t.Fatalf("after a mute until 0001-01-01: %v %v, want not muted", lc, err)
	}
	_, err = chat.MuteChannel(ctx, &chatv1.MuteChannelRequest{ChannelId: "g:nope"})
	if c := status.Code(err); c != codes.NotFound {
		t.Fatalf("MuteChannel of an unknown channel: %v, want NotFound", err)
	}
}

func TestPush_PreviewsCarrySenderAndText(t *testing.T) {
	e := startPushApp(t, 200*time.Millisecond)
	acc := chatv1.NewAccountServiceClient(e.phone.cc)
	on := true
	pr, err := acc.UpdateProfile(e.phone.ctx(context.Background()), &chatv1.UpdateProfileRequest{PushPreviews: &on})
	if err != nil || !pr.GetProfile().GetPushPreviews() || pr.GetProfile().GetDisplayName() != "bob" {
		t.Fatalf("UpdateProfile(push_previews): %v %v", pr, err)
	}
	as := openStream(t, e.alice)
	long := strings.Repeat("x", 150)
	as.send("bob", "prev-1", long)
	ps := waitPushes(t, e.w, e.sub, 1, 0)
	if ps[0].Sender != "alice" || ps[0].Body != push.Preview(long) || len([]rune(ps[0].Body)) != push.PreviewRunes+1 {
		t.Fatalf("preview push %+v, want sender alice and the first %d characters", ps[0], push.PreviewRunes)
	}
}

// TestCase_C205: the push service answers 410 for bob's phone: its target
// is deleted at once and not tried again; bob's other device keeps its.
func TestCase_C205(t *testing.T) {
	e := startPushApp(t, 200*time.Millisecond)
	laptopSub := registerWebPush(t, e.laptop, e.w)
	e.w.Expire(t, e.sub)
	as := openStream(t, e.alice)
	as.send("bob", "gone-1", "to a phone that uninstalled")
	waitMetric(t, e.a.HTTPAddr(), `chatd_push_targets_removed_total{provider="webpush"}`, 1)
	acc := chatv1.NewAccountServiceClient(e.phone.cc)
	got, err := acc.GetPushTarget(e.phone.ctx(context.Background()), &chatv1.GetPushTargetRequest{})
	if err != nil || got.GetTarget() != nil {
		t.Fatalf("phone's target after 410: %v %v, want none", got, err)
	}
	waitPushes(t, e.w, laptopSub, 1, 0)
	before := len(e.w.Requests())
	as.send("bob", "gone-2", "again")
	waitPushes(t, e.w, laptopSub, 2, 500*time.Millisecond)
	for _, r := range e.w.Requests()[before:] {
		if strings.HasSuffix(r.Path, e.sub.ClientHash) {
			t.Fatal("a push was sent to the gone target again")
		}
	}
}

// The push service answers 503 with Retry-After: 2 once: the push is
// delivered once, not before the delay.
func TestPush_RetryAfterThenDelivered(t *testing.T) {
	e := startPushApp(t, 100*time.Millisecond)
	var refused time.Time
	e.w.Answer(func(r *http.Request) (int, http.Header, bool) {
		if refused.IsZero() {
			refused = time.Now()
			return 503, http.Header{"Retry-After": {"2"}}, true
		}
		return 0, nil, false
	})
	as := openStream(t, e.alice)
	as.send("bob", "retry-1", "retry me")
	waitPushes(t, e.w, e.sub, 1, time.Second)
	reqs := e.w.Requests()
	if len(reqs) != 2 || reqs[0].Status != 503 || reqs[1].Status != 201 {
		t.Fatalf("requests %d (statuses %v), want a 503 then a 201", len(reqs), statuses(reqs))
	}
	if gap := reqs[1].Time.Sub(reqs[0].Time); gap < 2*time.Second {
		t.Fatalf("retried %v after the 503, want at least Retry-After 2s", gap)
	}
	if v := pushMetric(t, e.a.HTTPAddr(), `chatd_push_retried_total{provider="webpush"}`); v != 1 {
		t.Fatalf("retried metric %v, want 1", v)
	}
}

func statuses(cs []pushtest.Captured) []int {
	var out []int
	for _, c := range cs {
		out = append(out, c.Status)
	}
	return out
}

// A subscription endpoint on a host that is not an allowed push service
// is refused (SSRF) and nothing is stored; over REST too. Logging out
// removes the target.
func TestPush_TargetRules(t *testing.T) {
	e := startPushApp(t, time.Second)
	acc := chatv1.NewAccountServiceClient(e.laptop.cc)
	ctx := e.laptop.ctx(context.Background())
	for _, ep := range []string{"https://169.254.169.254/latest/meta-data", "http://" + e.w.Host + "/notify/x", "https://localhost/x"} {
		_, err := acc.SetPushTarget(ctx, &chatv1.SetPushTargetRequest{Target: &chatv1.PushTarget{Target: &chatv1.PushTarget_WebPush{
			WebPush: &chatv1.WebPushSubscription{Endpoint: ep, Keys: &chatv1.WebPushKeys{P256Dh: e.sub.Keys.P256dh, Auth: e.sub.Keys.Auth}}}}})
		if status.Code(err) != codes.InvalidArgument {
			t.Fatalf("SetPushTarget(%s): %v, want InvalidArgument", ep, err)
		}
	}
	if got, _ := acc.GetPushTarget(ctx, &chatv1.GetPushTargetRequest{}); got.GetTarget() != nil {
		t.Fatalf("a refused target was stored: %v", got)
	}
	_, err := acc.SetPushTarget(ctx, &chatv1.SetPushTargetRequest{Target: &chatv1.PushTarget{Target: &chatv1.PushTarget_Fcm{Fcm: &chatv1.FcmTarget{Token: "tok"}}}})
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("FCM target without FCM credentials: %v, want FailedPrecondition", err)
	}
	code, body := restCall(t, e.a.HTTPAddr(), "PUT", "/v1/devices/current/push", e.laptop.token,
		map[string]any{"webPush": map[string]any{"endpoint": "https://10.0.0.1/x", "keys": map[string]string{"p256dh": e.sub.Keys.P256dh, "auth": e.sub.Keys.Auth}}})
	if msg, _ := body["message"].(string); code != 400 || !strings.Contains(msg, "not an allowed push service") {
		t.Fatalf("REST PUT with a non-allowed host: %d %v, want 400 naming the allow-list", code, body)
	}
	code, body = restCall(t, e.a.HTTPAddr(), "GET", "/v1/push/vapid-public-key", e.laptop.token, nil)
	if code != 200 || body["publicKey"] == "" {
		t.Fatalf("REST vapid key: %d %v", code, body)
	}
	code, body = restCall(t, e.a.HTTPAddr(), "PUT", "/v1/devices/current/push", e.laptop.token,
		map[string]any{"webPush": map[string]any{"endpoint": e.sub.Endpoint, "keys": map[string]string{"p256dh": e.sub.Keys.P256dh, "auth": e.sub.Keys.Auth}}})
	if code != 200 {
		t.Fatalf("REST PUT: %d %v", code, body)
	}
	if code, body = restCall(t, e.a.HTTPAddr(), "GET", "/v1/devices/current/push", e.laptop.token, nil); code != 200 || body["target"] == nil {
		t.Fatalf("REST GET: %d %v", code, body)
	}
	if code, _ = restCall(t, e.a.HTTPAddr(), "DELETE", "/v1/devices/current/push", e.laptop.token, nil); code != 200 {
		t.Fatalf("REST DELETE: %d", code)
	}
	if got, _ := acc.GetPushTarget(ctx, &chatv1.GetPushTargetRequest{}); got.GetTarget() != nil {
		t.Fatalf("target after DELETE: %v", got)
	}
	// Logging the phone out removes its target.
	if _, err := chatv1.NewAccountServiceClient(e.phone.cc).LogOut(e.phone.ctx(context.Background()), &chatv1.LogOutRequest{}); err != nil {
		t.Fatal(err)
	}
	if ts, err := e.a.Store().ListPushTargets(context.Background(), "bob"); err != nil || len(ts) != 0 {
		t.Fatalf("bob's targets after the phone logged out: %v %v", ts, err)
	}
}

// chatd is SIGKILLed with pushes queued (inside their collapse window):
// after the restart they are sent, each once.
func TestPush_QueuedSurviveSIGKILL(t *testing.T) {
	w := pushtest.StartWebPush(t)
	dir := t.TempDir()
	env := []string{"SSL_CERT_FILE=" + w.CertFile(t)}
	flags := []string{"--push-webpush-hosts", w.Host, "--push-collapse-window", "3s"}
	p := startChatdWith(t, chatdBinary(t), env, dir, flags...)
	cc := dial(t, p.grpc)
	alice := signUpLogIn(t, cc, "alice", "laptop")
	bob := signUpLogIn(t, cc, "bob", "phone")
	carol := signUpLogIn(t, cc, "carol", "phone")
	subBob := registerWebPush(t, bob, w)
	subCarol := registerWebPush(t, carol, w)
	as := openStream(t, alice)
	as.send("bob", "kill-1", "to bob")
	as.send("carol", "kill-2", "to carol")
	as.send("bob", "kill-3", "to bob again")
	waitMetric(t, p.http, "chatd_push_enqueued_total", 3) // queued, still inside the 3s window
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = p.wait(t)
	if n := len(w.Requests()); n != 0 {
		t.Fatalf("%d pushes before the kill, want none (still in the window)", n)
	}
	startChatdWith(t, chatdBinary(t), env, dir, flags...)
	pb := waitPushes(t, w, subBob, 1, 0)
	waitPushes(t, w, subCarol, 1, 4*time.Second)
	if n := len(payloads(t, w, subBob)); n != 1 || pb[0].Unread != 2 {
		t.Fatalf("bob: %d pushes (%+v), want one with 2 unread", n, pb)
	}
}

func timestampIn(d time.Duration) *timestamppb.Timestamp { return timestamppb.New(time.Now().Add(d)) }

// FCM and APNs targets get the same pushes through their local fakes;
// an FCM UNREGISTERED answer deletes that target only.
func TestPush_FCMAndAPNs(t *testing.T) {
	f := pushtest.StartFCM(t)
	ap := pushtest.StartAPNs(t)
	a, err := app.New(app.Config{
		GRPCAddr: "127.0.0.1:0",
		HTTPAddr: "127.0.0.1:0",
		DataDir:  t.TempDir(),
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
		Push: app.PushConfig{Window: 200 * time.Millisecond,
			FCMProjectID: f.Project, FCMEndpoint: f.URL,
			FCMTokenSource: oauth2.StaticTokenSource(&oauth2.Token{AccessToken: f.Token, TokenType: "Bearer", Expiry: time.Now().Add(time.Hour)}),
			APNsKeyFile:    ap.KeyFile, APNsKeyID: ap.KeyID, APNsTeamID: ap.TeamID, APNsHost: ap.URL, APNsHTTPClient: ap.Client},
	})
	if err != nil {
		t.Fatal(err)
	}
	a.Start()
	t.Cleanup(func() { _ = a.Close() })
	cc := dial(t, a.GRPCAddr())
	alice := signUpLogIn(t, cc, "alice", "laptop")
	pixel := signUpLogIn(t, cc, "bob", "pixel")
	iphone := logIn(t, cc, "bob", "iphone")
	const apnsTok = "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9"
	f.Register("fcm-token-1")
	ap.Register(apnsTok, "com.example.chat")
	set := func(u *user, pt *chatv1.PushTarget) {
		if _, err := chatv1.NewAccountServiceClient(cc).SetPushTarget(u.ctx(context.Background()), &chatv1.SetPushTargetRequest{Target: pt}); err != nil {
			t.Fatalf("SetPushTarget: %v", err)
		}
	}
	set(pixel, &chatv1.PushTarget{Target: &chatv1.PushTarget_Fcm{Fcm: &chatv1.FcmTarget{Token: "fcm-token-1"}}})
	set(iphone, &chatv1.PushTarget{Target: &chatv1.PushTarget_Apns{Apns: &chatv1.ApnsTarget{Token: apnsTok, Topic: "com.example.chat", Sandbox: true}}})
	as := openStream(t, alice)
	as.send("bob", "fa-1", "one")
	waitFor(t, func() bool { return len(f.Accepted()) == 1 && len(ap.Accepted()) == 1 })
	aps, _ := ap.Accepted()[0].Payload["aps"].(map[string]any)
	if aps["badge"] != float64(1) || aps["thread-id"] != "dm:alice:bob" {
		t.Fatalf("APNs payload %v", ap.Accepted()[0].Payload)
	}
	f.Unregister("fcm-token-1")
	as.send("bob", "fa-2", "two")
	waitMetric(t, a.HTTPAddr(), `chatd_push_targets_removed_total{provider="fcm"}`, 1)
	waitFor(t, func() bool { return len(ap.Accepted()) == 2 })
	if aps, _ := ap.Accepted()[1].Payload["aps"].(map[string]any); aps["badge"] != float64(2) {
		t.Fatalf("second APNs badge %v, want 2", aps["badge"])
	}
	ts, err := a.Store().ListPushTargets(context.Background(), "bob")
	if err != nil || len(ts) != 1 || ts[0].DeviceID != iphone.device {
		t.Fatalf("bob's targets after UNREGISTERED: %+v %v, want only the iphone's", ts, err)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 15s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestCluster_C203: case C203 across two servers. Bob's laptop has a
// stream on s2, his phone none; alice (on s1) messages him: no push (s1's
// worker learns from presence that bob is up on s2). When the laptop
// closes, the next message pushes once. The queue is the cluster's Redis
// Stream.
func TestCluster_C203(t *testing.T) {
	w := pushtest.StartWebPush(t)
	vapid := filepath.Join(t.TempDir(), "vapid.json") // shared by both servers, as the docs ask
	c := newCluster(t, nil, "--push-webpush-hosts", w.Host, "--push-collapse-window", "300ms", "--vapid-key-file", vapid,
		"--heartbeat-interval", "500ms", "--presence-grace", "2s") // presence sees the closed laptop within 2s
	c.env = map[string][]string{"s1": {"SSL_CERT_FILE=" + w.CertFile(t)}, "s2": {"SSL_CERT_FILE=" + w.CertFile(t)}}
	c.start("s1")
	c.start("s2")
	alice := signUpLogIn(t, c.cc("s1"), "alice", "laptop")
	laptop := signUpLogIn(t, c.cc("s2"), "bob", "laptop")
	phone := logIn(t, c.cc("s1"), "bob", "phone")
	sub := registerWebPush(t, phone, w)
	as := openStream(t, alice)
	ls := openStream(t, laptop)
	waitFor(t, func() bool { return pushMetric(t, c.servers["s2"].http, "chatd_hub_sessions") == 1 })
	as.send("bob", "cc203-1", "while the laptop is open on s2")
	waitFor(t, func() bool {
		return pushMetric(t, c.servers["s1"].http, `chatd_push_dropped_total{reason="online"}`)+
			pushMetric(t, c.servers["s2"].http, `chatd_push_dropped_total{reason="online"}`) >= 1
	})
	if ps := payloads(t, w, sub); len(ps) != 0 {
		t.Fatalf("pushed while bob's laptop had a stream on s2: %+v\n%s", ps, c.stderr())
	}
	ls.cancel()
	waitFor(t, func() bool { return pushMetric(t, c.servers["s2"].http, "chatd_hub_sessions") == 0 })
	deadline := time.Now().Add(15 * time.Second)
	for i := 2; len(payloads(t, w, sub)) == 0; i++ {
		// Presence may take a moment to see the laptop go: send until a
		// push arrives, then check it is the only one.
		if time.Now().After(deadline) {
			t.Fatalf("no push after the laptop closed\n%s\n%s\n%s", pushMetrics(t, c.servers["s1"].http), pushMetrics(t, c.servers["s2"].http), c.stderr())
		}
		as.send("bob", fmt.Sprintf("cc203-%d", i), "after the laptop closed")
		time.Sleep(time.Second)
	}
	time.Sleep(time.Second)
	if ps := payloads(t, w, sub); len(ps) != 1 || ps[0].ChannelID != "dm:alice:bob" {
		t.Fatalf("pushes %+v, want one for dm:alice:bob", ps)
	}
}

// pushMetrics returns the chatd_push lines of a server's /metrics (for
// failure reports).
func pushMetrics(t *testing.T, httpAddr string) string {
	t.Helper()
	resp, err := http.Get("http://" + httpAddr + "/metrics")
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "chatd_push") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
