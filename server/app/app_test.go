package app_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/chatd/chatd/server/app"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	rpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
)

func TestReflectionListsEveryService(t *testing.T) {
	a := startApp(t, t.TempDir())
	cc := dial(t, a.GRPCAddr())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rs, err := rpb.NewServerReflectionClient(cc).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := rs.Send(&rpb.ServerReflectionRequest{MessageRequest: &rpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	resp, err := rs.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	for _, want := range []string{"chat.v1.ChatService", "chat.v1.AccountService", "chat.v1.DiscoveryService", "chat.v1.PresenceService", "grpc.health.v1.Health"} {
		if !slices.Contains(names, want) {
			t.Errorf("reflection lists %v, missing %s", names, want)
		}
	}

	h, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || h.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health: %v %v", h, err)
	}
}

func TestDiscoveryReturnsSelf(t *testing.T) {
	a := startApp(t, t.TempDir())
	cc := dial(t, a.GRPCAddr())
	resp, err := chatv1.NewDiscoveryServiceClient(cc).GetEndpoints(context.Background(), &chatv1.GetEndpointsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetEndpoints()) != 1 || resp.GetEndpoints()[0].GetGrpcAddress() != a.GRPCAddr() || resp.GetEndpoints()[0].GetServerId() != a.ServerID() {
		t.Fatalf("endpoints = %v, want this server %s", resp.GetEndpoints(), a.GRPCAddr())
	}
}

// TestDiscoveryOnEveryInterface: a server listening on every interface
// without an advertise address (chatd's defaults, ":9090") tells a client
// the host it reached the server by, over gRPC and through the REST
// gateway (from the Host header), never "[::]:9090", which would name the
// client's own machine.
func TestDiscoveryOnEveryInterface(t *testing.T) {
	a, err := app.New(app.Config{GRPCAddr: ":0", HTTPAddr: ":0", DataDir: t.TempDir(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	a.Start()
	t.Cleanup(func() { _ = a.Close() })
	_, gport, _ := net.SplitHostPort(a.GRPCAddr())
	_, hport, _ := net.SplitHostPort(a.HTTPAddr())
	cc := dial(t, "127.0.0.1:"+gport)
	resp, err := chatv1.NewDiscoveryServiceClient(cc).GetEndpoints(context.Background(), &chatv1.GetEndpointsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	e := resp.GetEndpoints()[0]
	if e.GetGrpcAddress() != "127.0.0.1:"+gport || e.GetHttpAddress() != "127.0.0.1:"+hport {
		t.Errorf("over gRPC: %s, %s; want 127.0.0.1:%s, 127.0.0.1:%s", e.GetGrpcAddress(), e.GetHttpAddress(), gport, hport)
	}
	rest := func(host string, header http.Header) string {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, "http://127.0.0.1:"+hport+"/v1/endpoints", nil)
		req.Host = host
		for k, v := range header {
			req.Header[k] = v
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		var body struct {
			Endpoints []struct{ GrpcAddress, HttpAddress string }
		}
		if err := json.NewDecoder(res.Body).Decode(&body); err != nil || res.StatusCode != http.StatusOK || len(body.Endpoints) != 1 {
			t.Fatalf("REST: %d %v %+v", res.StatusCode, err, body)
		}
		return body.Endpoints[0].GrpcAddress + " " + body.Endpoints[0].HttpAddress
	}
	if got, want := rest("chat.example.com:"+hport, nil), "chat.example.com:"+gport+" chat.example.com:"+hport; got != want {
		t.Errorf("over REST with Host chat.example.com: %s, want %s", got, want)
	}
	// Through a port mapping (Host names another port): that port.
	if got, want := rest("chat.example.com:443", nil), "chat.example.com:"+gport+" chat.example.com:443"; got != want {
		t.Errorf("over REST with Host chat.example.com:443: %s, want %s", got, want)
	}
	// A client's X-Forwarded-Host is not the Host (a cache keyed by Host
	// must not store another host's answer), nor is a metadata header of
	// its own: the second leaves the listen addresses as they are.
	if got, want := rest("chat.example.com:"+hport, http.Header{"X-Forwarded-Host": {"evil.example"}}), "chat.example.com:"+gport+" chat.example.com:"+hport; got != want {
		t.Errorf("with X-Forwarded-Host: %s, want %s", got, want)
	}
	if got := rest("chat.example.com:"+hport, http.Header{"Grpc-Metadata-X-Chatd-Http-Host": {"evil.example"}}); strings.Contains(got, "evil") || strings.Contains(got, "127.0.0.1") {
		t.Errorf("with a client's own metadata header: %s", got)
	}
}

// restCall sends a JSON request to the gateway and decodes the JSON answer.
func restCall(t *testing.T, base, method, path, token string, body any) (int, map[string]any) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, "http://"+base+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	raw, _ := io.ReadAll(resp.Body)
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &out); err != nil {
			t.Fatalf("%s %s: not JSON: %q", method, path, raw)
		}
	}
	return resp.StatusCode, out
}

func TestRESTAccountFlow(t *testing.T) {
	a := startApp(t, t.TempDir())
	base := a.HTTPAddr()

	code, out := restCall(t, base, "POST", "/v1/accounts", "", map[string]string{"username": "Carol", "password": "longpassword", "displayName": "Carol C"})
	if code != 200 || out["profile"].(map[string]any)["userId"] != "carol" {
		t.Fatalf("sign up: %d %v", code, out)
	}
	code, _ = restCall(t, base, "POST", "/v1/accounts", "", map[string]string{"username": "CAROL", "password": "longpassword", "displayName": "x"})
	if code != http.StatusConflict {
		t.Fatalf("duplicate sign up: %d, want 409", code)
	}
	code, out = restCall(t, base, "POST", "/v1/sessions", "", map[string]string{"username": "carol", "password": "wrong-password", "deviceName": "curl"})
	if code != http.StatusUnauthorized {
		t.Fatalf("bad password: %d %v", code, out)
	}
	code, out = restCall(t, base, "POST", "/v1/sessions", "", map[string]string{"username": "carol", "password": "longpassword", "deviceName": "curl"})
	token, _ := out["accessToken"].(string)
	if code != 200 || token == "" || out["deviceId"] == "" {
		t.Fatalf("log in: %d %v", code, out)
	}

	code, out = restCall(t, base, "GET", "/v1/users/me/devices", token, nil)
	devs, _ := out["devices"].([]any)
	if code != 200 || len(devs) != 1 || devs[0].(map[string]any)["name"] != "curl" {
		t.Fatalf("devices: %d %v", code, out)
	}
	code, out = restCall(t, base, "PATCH", "/v1/users/me", token, map[string]string{"displayName": "Carol Two"})
	if code != 200 || out["profile"].(map[string]any)["displayName"] != "Carol Two" {
		t.Fatalf("update profile: %d %v", code, out)
	}
	code, out = restCall(t, base, "GET", "/v1/users/carol", token, nil)
	if code != 200 || out["profile"].(map[string]any)["displayName"] != "Carol Two" {
		t.Fatalf("get profile: %d %v", code, out)
	}
	if code, _ = restCall(t, base, "GET", "/v1/users/nobody", token, nil); code != http.StatusNotFound {
		t.Fatalf("unknown profile: %d, want 404", code)
	}

	restCall(t, base, "POST", "/v1/accounts", "", map[string]string{"username": "dave", "password": "longpassword", "displayName": "Dave"})
	if code, out = restCall(t, base, "POST", "/v1/users/me/contacts", token, map[string]string{"username": "dave"}); code != 200 {
		t.Fatalf("add contact: %d %v", code, out)
	}
	code, out = restCall(t, base, "GET", "/v1/users/me/contacts", token, nil)
	cs, _ := out["contacts"].([]any)
	if code != 200 || len(cs) != 1 || cs[0].(map[string]any)["userId"] != "dave" {
		t.Fatalf("contacts: %d %v", code, out)
	}

	if code, _ = restCall(t, base, "GET", "/v1/users/me/devices", "", nil); code != http.StatusUnauthorized {
		t.Fatalf("no token: %d, want 401", code)
	}
	if code, _ = restCall(t, base, "DELETE", "/v1/sessions/current", token, nil); code != 200 {
		t.Fatalf("log out: %d", code)
	}
	if code, _ = restCall(t, base, "GET", "/v1/users/me/devices", token, nil); code != http.StatusUnauthorized {
		t.Fatalf("after log out: %d, want 401", code)
	}
}

// TestCase_C106_REST: strangers get PermissionDenied (403) over REST as over
// gRPC: reading a group's history, adding themselves, reading its members.
func TestCase_C106_REST(t *testing.T) {
	a := startApp(t, t.TempDir())
	cc := dial(t, a.GRPCAddr())
	alice := signUpLogIn(t, cc, "alice", "phone")
	signUpLogIn(t, cc, "bob", "phone")
	mallory := signUpLogIn(t, cc, "mallory", "laptop")
	g, err := chatv1.NewChatServiceClient(cc).CreateGroup(alice.ctx(context.Background()), &chatv1.CreateGroupRequest{Name: "friends", MemberIds: []string{"bob"}})
	if err != nil {
		t.Fatal(err)
	}
	gid := g.GetChannel().GetChannelId()
	base := a.HTTPAddr()
	for _, c := range []struct {
		method, path string
		body         any
	}{
		{"GET", "/v1/channels/" + gid + "/messages", nil},
		{"GET", "/v1/channels/" + gid, nil},
		{"POST", "/v1/channels/" + gid + "/members", map[string]string{"userId": "mallory"}},
	} {
		code, out := restCall(t, base, c.method, c.path, mallory.token, c.body)
		if code != http.StatusForbidden {
			t.Errorf("%s %s as a stranger: %d %v, want 403", c.method, c.path, code, out)
		}
	}
	// And over gRPC: the group still has two members.
	ch, err := chatv1.NewChatServiceClient(cc).GetChannel(alice.ctx(context.Background()), &chatv1.GetChannelRequest{ChannelId: gid})
	if err != nil || len(ch.GetChannel().GetMembers()) != 2 {
		t.Fatalf("group after stranger attempts: %v %v", ch, err)
	}
	_, err = chatv1.NewChatServiceClient(cc).GetHistory(mallory.ctx(context.Background()), &chatv1.GetHistoryRequest{ChannelId: gid})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("gRPC history as stranger: %v", err)
	}
}

func TestHTTPEndpoints(t *testing.T) {
	a := startApp(t, t.TempDir())
	for path, want := range map[string]string{
		"/healthz":      "ok",
		"/readyz":       "ok",
		"/openapi.json": `"/v1/accounts"`,
		"/metrics":      "go_goroutines",
	} {
		resp, err := http.Get("http://" + a.HTTPAddr() + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(b), want) {
			t.Errorf("GET %s: %d, body lacks %q", path, resp.StatusCode, want)
		}
	}
}

// TestRESTConversation: read markers, receipts, edits and deletes over the
// REST gateway (channel ids contain ':' and travel in the path).
func TestRESTConversation(t *testing.T) {
	a := startApp(t, t.TempDir())
	cc := dial(t, a.GRPCAddr())
	alice := signUpLogIn(t, cc, "alice", "phone")
	bob := signUpLogIn(t, cc, "bob", "phone")
	as := openStream(t, alice)
	var last *chatv1.SendAck
	for i := range 3 {
		last = as.send("bob", fmt.Sprintf("r%d", i), fmt.Sprintf("hello %d", i))
	}
	base, ch := a.HTTPAddr(), last.GetChannelId()

	code, out := restCall(t, base, "GET", "/v1/channels", bob.token, nil)
	chans, _ := out["channels"].([]any)
	if code != 200 || len(chans) != 1 || chans[0].(map[string]any)["unreadCount"] != float64(3) {
		t.Fatalf("bob's channels before reading: %d %v", code, out)
	}
	code, out = restCall(t, base, "POST", "/v1/channels/"+ch+"/read", bob.token, map[string]any{})
	if code != 200 {
		t.Fatalf("mark read: %d %v", code, out)
	}
	if u, _ := out["unread"].(map[string]any); u["unreadCount"] != nil && u["unreadCount"] != float64(0) {
		t.Fatalf("unread after reading: %v", out)
	}
	code, out = restCall(t, base, "GET", "/v1/channels/"+ch+"/receipts", alice.token, nil)
	bobRead := ""
	recs, _ := out["receipts"].([]any)
	for _, r := range recs {
		if m := r.(map[string]any); m["userId"] == "bob" {
			bobRead, _ = m["readUpTo"].(string) // uint64 is a JSON string in protojson
		}
	}
	if code != 200 || bobRead != strconv.FormatUint(last.GetMessageId(), 10) {
		t.Fatalf("receipts: %d %v; bob's read marker %q, want %d", code, out, bobRead, last.GetMessageId())
	}

	mid := strconv.FormatUint(last.GetMessageId(), 10)
	code, out = restCall(t, base, "PATCH", "/v1/channels/"+ch+"/messages/"+mid, alice.token, map[string]string{"clientMessageId": "e1", "text": "hello 2 (edited)"})
	if code != 200 {
		t.Fatalf("edit: %d %v", code, out)
	}
	if code, out = restCall(t, base, "PATCH", "/v1/channels/"+ch+"/messages/"+mid, bob.token, map[string]string{"clientMessageId": "e2", "text": "not mine"}); code != http.StatusForbidden {
		t.Fatalf("bob editing alice's message: %d %v, want 403", code, out)
	}
	if code, out = restCall(t, base, "DELETE", "/v1/channels/"+ch+"/messages/"+mid+"?clientMessageId=d1&forMe=true", bob.token, nil); code != 200 {
		t.Fatalf("delete for me: %d %v", code, out)
	}
	_, out = restCall(t, base, "GET", "/v1/channels/"+ch+"/messages", alice.token, nil)
	if !strings.Contains(fmt.Sprint(out), "hello 2 (edited)") {
		t.Fatalf("alice's history lacks the edit: %v", out)
	}
	_, out = restCall(t, base, "GET", "/v1/channels/"+ch+"/messages", bob.token, nil)
	if strings.Contains(fmt.Sprint(out), "hello 2") {
		t.Fatalf("bob's history still shows the message he deleted for himself: %v", out)
	}
	if code, out = restCall(t, base, "PUT", "/v1/users/me/read-receipts", bob.token, map[string]bool{"hideReadReceipts": true}); code != 200 || out["hideReadReceipts"] != true {
		t.Fatalf("hide read receipts: %d %v", code, out)
	}
}

// Invalid UTF-8 in a REST path or query is a client error (400), like
// invalid UTF-8 in a JSON body, not a server error.
func TestRESTInvalidUTF8IsBadRequest(t *testing.T) {
	a := startApp(t, t.TempDir())
	cc := dial(t, a.GRPCAddr())
	u := signUpLogIn(t, cc, "alice", "phone")
	for _, path := range []string{"/v1/users/abc%ff", "/v1/channels/dm%ff/messages", "/v1/channels?pageToken=%ff", "/v1/presence?userIds=%ff"} {
		code, out := restCall(t, a.HTTPAddr(), "GET", path, u.token, nil)
		if code != http.StatusBadRequest || out["code"] != float64(3) {
			t.Errorf("GET %s: %d %v, want 400 InvalidArgument", path, code, out)
		}
	}
	if code, _ := restCall(t, a.HTTPAddr(), "GET", "/v1/users/alice", u.token, nil); code != 200 {
		t.Fatalf("a valid path after the bad ones: %d", code)
	}
}
