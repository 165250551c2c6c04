package app_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/chatd/chatd/server/app"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
)

var fuzzMethods = []string{"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"}

// FuzzREST sends one HTTP request to the REST gateway (/v1/) of a real
// single-node server: method, path below /v1/, raw query, body and whose
// token (0 none, 1 alice: a member of {group}, 2 carol: a stranger to it,
// 3 a forged one). In the path, query and body {group} and {dm} stand for
// the group of alice and bob and their direct channel. Whatever the
// request: no 5xx (a method a path does not accept is 405 with an Allow
// header, not grpc-gateway's default 501), a body that is JSON, and no 2xx for
// the stranger on a request naming the group (C106). `go test` runs the
// seeds and testdata/fuzz/FuzzREST as regression tests; see
// docs/testing.md for running it as a fuzzer.
func FuzzREST(f *testing.F) {
	type seed struct {
		method      uint8
		path, query string
		body        string
		who         uint8
		contentType string
	}
	long := strings.Repeat("x", 1000)
	for _, s := range []seed{
		{0, "users/me/devices", "", "", 1, ""},
		{0, "channels", "page_size=2", "", 1, ""},
		{0, "channels/{group}/messages", "page_size=2&raw=true", "", 1, ""},
		{0, "channels/{dm}/messages", "before_message_id=18446744073709551615", "", 1, ""},
		{1, "channels/{group}/read", "", `{"messageId":"0"}`, 1, "application/json"},
		{3, "channels/{dm}/messages/1", "", `{"clientMessageId":"e-1","text":"edited"}`, 1, "application/json"},
		{4, "channels/{dm}/messages/1", "client_message_id=d-1&for_me=true", "", 1, ""},
		{2, "users/me/read-receipts", "", `{"hideReadReceipts":true}`, 1, "application/json"},
		{3, "users/me", "", `{"displayName":null}`, 1, "application/json"},
		{0, "presence", "user_ids=bob&user_ids=carol", "", 1, ""},
		{0, "endpoints", "", "", 0, ""},
		{0, "users/bob", "", "", 1, ""},
		// C105: sign-ups with a username differing only by case or
		// normalisation, display names of 0 and 1,000 characters,
		// passwords of 1 and 10,000 characters.
		{1, "accounts", "", `{"username":"ALICE","password":"longpassword","displayName":"A"}`, 0, "application/json"},
		{1, "accounts", "", `{"username":"zoe\u0308","password":"longpassword","displayName":"Z"}`, 0, "application/json"},
		{1, "accounts", "", `{"username":"dora","password":"longpassword","displayName":""}`, 0, "application/json"},
		{1, "accounts", "", `{"username":"dora","password":"longpassword","displayName":"` + long + `"}`, 0, "application/json"},
		{1, "accounts", "", `{"username":"dora","password":"x","displayName":"D"}`, 0, "application/json"},
		{1, "accounts", "", `{"username":"dora","password":"` + strings.Repeat("p", 10000) + `","displayName":"D"}`, 0, "application/json"},
		{1, "sessions", "", `{"username":"Alice","password":"wrong password","deviceName":"d"}`, 0, "application/json"},
		// C104 and C106: a stranger adding themselves, reading the
		// history, the members, the receipts; another user's devices.
		{1, "channels/{group}/members", "", `{"userId":"carol"}`, 2, "application/json"},
		{0, "channels/{group}/messages", "", "", 2, ""},
		{0, "channels/{group}", "", "", 2, ""},
		{0, "channels/{group}/receipts", "", "", 2, ""},
		{4, "channels/{group}/members/bob", "", "", 2, ""},
		{0, "users/alice/devices", "", "", 2, ""},
		// Bad input: not JSON, wrong types, invalid UTF-8 and escapes,
		// uint64 out of range, a forged token, text/plain.
		{1, "groups", "", `{"name":`, 1, "application/json"},
		{1, "groups", "", `{"name":1,"memberIds":"bob"}`, 1, "application/json"},
		{1, "groups", "", "{\"name\":\"\xff\"}", 1, "application/json"},
		{1, "groups", "", `{"name":"\ud800"}`, 1, "text/plain"},
		{0, "channels/{group}/messages", "page_size=99999999999&before_message_id=-1", "", 1, ""},
		{0, "channels/%ff/messages", "", "", 1, ""},
		{0, "channels/g:x/messages", "page_size=%zz", "", 3, ""},
		{5, "channels", "", "", 1, ""},
		{6, "users/me", "", "", 1, ""},
	} {
		f.Add(s.method, s.path, s.query, []byte(s.body), s.who, s.contentType)
	}

	dir := f.TempDir()
	a, err := app.New(app.Config{
		GRPCAddr: "127.0.0.1:0",
		HTTPAddr: "127.0.0.1:0",
		DataDir:  dir,
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
		// The fuzzer's requests come from one user and one IP, fast.
		UnaryRate:  1e9,
		UnaryBurst: 1 << 30,
	})
	if err != nil {
		f.Fatal(err)
	}
	a.Start()
	f.Cleanup(func() { _ = a.Close() })
	cc, err := grpc.NewClient(a.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = cc.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	acc := chatv1.NewAccountServiceClient(cc)
	tokens := map[string]string{}
	for _, u := range []string{"alice", "bob", "carol"} {
		if _, err := acc.SignUp(ctx, &chatv1.SignUpRequest{Username: u, Password: "password-" + u, DisplayName: u}); err != nil {
			f.Fatal(err)
		}
		r, err := acc.LogIn(ctx, &chatv1.LogInRequest{Username: u, Password: "password-" + u, DeviceName: "fuzz"})
		if err != nil {
			f.Fatal(err)
		}
		tokens[u] = r.GetAccessToken()
	}
	g, err := chatv1.NewChatServiceClient(cc).CreateGroup(
		metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tokens["alice"]),
		&chatv1.CreateGroupRequest{Name: "fuzz", MemberIds: []string{"bob"}})
	if err != nil {
		f.Fatal(err)
	}
	group := g.GetChannel().GetChannelId()
	expand := strings.NewReplacer("{group}", group, "{dm}", "dm:alice:bob")
	base := "http://" + a.HTTPAddr() + "/v1/"
	client := &http.Client{
		Timeout:       20 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}

	f.Fuzz(func(t *testing.T, method uint8, path, query string, body []byte, who uint8, contentType string) {
		m := fuzzMethods[int(method)%len(fuzzMethods)]
		path, query = expand.Replace(path), expand.Replace(query)
		body = []byte(expand.Replace(string(body)))
		u, err := url.Parse(base + path)
		if err != nil || u.Host != a.HTTPAddr() {
			return // not a request an HTTP client can send
		}
		// A raw query goes on the request line as it is: bytes that
		// cannot appear there make a request net/http's server rejects
		// before any handler (plain-text "400 Bad Request"), not one the
		// gateway decodes.
		if strings.IndexFunc(query, func(r rune) bool { return r <= ' ' || r >= 0x7f || r == '#' }) >= 0 {
			return
		}
		u.RawQuery = query
		req, err := http.NewRequest(m, u.String(), bytes.NewReader(body))
		if err != nil {
			return
		}
		if contentType != "" {
			if !validHeaderValue(contentType) {
				return
			}
			req.Header.Set("Content-Type", contentType)
		}
		switch who % 4 {
		case 1:
			req.Header.Set("Authorization", "Bearer "+tokens["alice"])
		case 2:
			req.Header.Set("Authorization", "Bearer "+tokens["carol"])
		case 3:
			req.Header.Set("Authorization", "Bearer "+tokens["alice"][:len(tokens["alice"])/2]+"AAAA")
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", m, u, err)
		}
		out, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatalf("%s %s: reading the body: %v", m, u, err)
		}
		var msg struct {
			Code *int `json:"code"`
		}
		// Redirects come from http.ServeMux cleaning the path (/v1/. ->
		// /v1/), with its small HTML body; everything else is JSON.
		redirect := resp.StatusCode >= 300 && resp.StatusCode < 400
		if !redirect && len(bytes.TrimSpace(out)) > 0 && !json.Valid(out) {
			t.Fatalf("%s %s -> %d: body is not JSON: %q", m, u, resp.StatusCode, out)
		}
		_ = json.Unmarshal(out, &msg)
		if resp.StatusCode >= 500 {
			t.Fatalf("%s %s (body %q) -> %d %s", m, u, truncateBytes(body, 200), resp.StatusCode, out)
		}
		if resp.StatusCode == http.StatusMethodNotAllowed && resp.Header.Get("Allow") == "" {
			t.Fatalf("%s %s -> 405 without an Allow header: %s", m, u, out)
		}
		if who%4 == 2 && resp.StatusCode < 300 && strings.Contains(u.Path, group) {
			t.Fatalf("the stranger got %d for %s %s (body %q): %s", resp.StatusCode, m, u, truncateBytes(body, 200), out)
		}
	})
}

// validHeaderValue: what net/http would send unchanged.
func validHeaderValue(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

func truncateBytes(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}
