package app_test

import (
	"crypto/ecdh"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chatd/chatd"
	"github.com/chatd/chatd/server/app"
	"github.com/chatd/chatd/server/chat"
)

// TestRESTGetMyProfile (issue 11, item 10): GET /v1/users/me is the
// caller's own profile (with hide_presence), not a 400 for the username
// "me"; PATCH /v1/users/me still updates it.
func TestRESTGetMyProfile(t *testing.T) {
	a := startApp(t, t.TempDir())
	base := a.HTTPAddr()
	if code, out := restCall(t, base, "POST", "/v1/accounts", "", map[string]string{"username": "carol", "password": "longpassword", "displayName": "Carol"}); code != 200 {
		t.Fatalf("sign up: %d %v", code, out)
	}
	_, out := restCall(t, base, "POST", "/v1/sessions", "", map[string]string{"username": "carol", "password": "longpassword", "deviceName": "curl"})
	token, _ := out["accessToken"].(string)
	if code, out := restCall(t, base, "PATCH", "/v1/users/me", token, map[string]any{"displayName": "Carol C", "hidePresence": true}); code != 200 {
		t.Fatalf("update profile: %d %v", code, out)
	}
	code, out := restCall(t, base, "GET", "/v1/users/me", token, nil)
	p, _ := out["profile"].(map[string]any)
	if code != 200 || p["userId"] != "carol" || p["displayName"] != "Carol C" || p["hidePresence"] != true {
		t.Fatalf("GET /v1/users/me: %d %v; want carol's own profile", code, out)
	}
	if code, out := restCall(t, base, "GET", "/v1/users/me", "", nil); code != http.StatusUnauthorized {
		t.Fatalf("GET /v1/users/me without a token: %d %v; want 401", code, out)
	}
}

// TestRESTMethodNotAllowed (issue 11, item 10): on every path of the REST
// surface (the OpenAPI document's, parameters filled in), each method the
// path does not accept answers 405 with a JSON error and an Allow header
// naming exactly the methods that do not answer 405 there (tried without a
// token, so nothing changes); a form-encoded POST is no GET in disguise;
// the plain HTTP endpoints answer 405 too.
func TestRESTMethodNotAllowed(t *testing.T) {
	a := startApp(t, t.TempDir())
	base := "http://" + a.HTTPAddr()
	var doc struct {
		Paths map[string]map[string]any `json:"paths"`
	}
	if err := json.Unmarshal(chatd.OpenAPI, &doc); err != nil {
		t.Fatal(err)
	}
	do := func(method, path, ctype string) *http.Response {
		t.Helper()
		var body io.Reader
		if ctype != "" {
			body = strings.NewReader("a=1")
		}
		req, err := http.NewRequest(method, base+path, body)
		if err != nil {
			t.Fatal(err)
		}
		if ctype != "" {
			req.Header.Set("Content-Type", ctype)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusMethodNotAllowed && strings.HasPrefix(path, "/v1/") && method != "HEAD" && !json.Valid(raw) {
			t.Errorf("%s %s: 405 body is not JSON: %q", method, path, raw)
		}
		return resp
	}
	param := regexp.MustCompile(`\{[^}]+\}`)
	methods := []string{"DELETE", "GET", "HEAD", "PATCH", "POST", "PUT"}
	tried := 0
	for tmpl := range doc.Paths {
		path := param.ReplaceAllString(tmpl, "x1")
		var allowed, refused []string
		allow := map[string]string{}
		for _, m := range methods {
			resp := do(m, path, "")
			if resp.StatusCode == http.StatusMethodNotAllowed {
				refused = append(refused, m)
				allow[m] = resp.Header.Get("Allow")
			} else {
				allowed = append(allowed, m)
			}
			if resp.StatusCode == http.StatusNotImplemented {
				t.Errorf("%s %s: 501", m, path)
			}
		}
		if len(allowed) == 0 {
			t.Errorf("%s: no method accepted", path)
		}
		if slices.Contains(allowed, "GET") != slices.Contains(allowed, "HEAD") {
			t.Errorf("%s: accepted %v; want HEAD wherever GET (RFC 9110 9.3.2)", path, allowed)
		}
		for _, m := range refused {
			tried++
			if got := allow[m]; got != strings.Join(allowed, ", ") {
				t.Errorf("%s %s: 405 with Allow %q; want %q", m, path, got, strings.Join(allowed, ", "))
			}
		}
		if !slices.Contains(allowed, "POST") {
			if resp := do("POST", path, "application/x-www-form-urlencoded"); resp.StatusCode != http.StatusMethodNotAllowed {
				t.Errorf("form-encoded POST %s: %d; want 405", path, resp.StatusCode)
			}
		}
	}
	if tried < 50 {
		t.Fatalf("only %d refused methods tried", tried)
	}
	if resp := do("GET", "/v1/users/me", ""); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("GET /v1/users/me without a token: %d; want 401 (an accepted method)", resp.StatusCode)
	}
	if resp := do("POST", "/v1/users/me", ""); resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "GET, HEAD, PATCH" {
		t.Errorf("POST /v1/users/me: %d, Allow %q; want 405, GET, HEAD, PATCH", resp.StatusCode, resp.Header.Get("Allow"))
	}
	for _, p := range []string{"/healthz", "/readyz", "/metrics", "/openapi.json"} {
		if resp := do("POST", p, ""); resp.StatusCode != http.StatusMethodNotAllowed || !strings.Contains(resp.Header.Get("Allow"), "GET") {
			t.Errorf("POST %s: %d, Allow %q; want 405 allowing GET", p, resp.StatusCode, resp.Header.Get("Allow"))
		}
	}
}

// TestRESTEdge (issue 17): the HTTP rules the gateway does not apply
// itself, each as schemathesis and RFC 9110 / RFC 6750 expect them.
func TestRESTEdge(t *testing.T) {
	a := startApp(t, t.TempDir())
	base := "http://" + a.HTTPAddr()
	if code, out := restCall(t, a.HTTPAddr(), "POST", "/v1/accounts", "", map[string]string{"username": "carol", "password": "longpassword", "displayName": "Carol"}); code != 200 {
		t.Fatalf("sign up: %d %v", code, out)
	}
	_, out := restCall(t, a.HTTPAddr(), "POST", "/v1/sessions", "", map[string]string{"username": "carol", "password": "longpassword", "deviceName": "curl"})
	token, _ := out["accessToken"].(string)
	do := func(method, path, auth, ctype, body string) (*http.Response, map[string]any) {
		t.Helper()
		var rd io.Reader
		if body != "" {
			rd = strings.NewReader(body)
		}
		req, err := http.NewRequest(method, base+path, rd)
		if err != nil {
			t.Fatal(err)
		}
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		if ctype != "" {
			req.Header.Set("Content-Type", ctype)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		raw, _ := io.ReadAll(resp.Body)
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Fatalf("%s %s: not JSON: %q", method, path, raw)
		}
		return resp, m
	}
	field := func(m map[string]any) string {
		ds, _ := m["details"].([]any)
		for _, d := range ds {
			d, _ := d.(map[string]any)
			if strings.HasSuffix(d["@type"].(string), "google.rpc.BadRequest") {
				v, _ := d["fieldViolations"].([]any)
				if len(v) > 0 {
					f, _ := v[0].(map[string]any)["field"].(string)
					return f
				}
			}
		}
		return ""
	}
	bearer := "Bearer " + token

	// RFC 6750 3: no credentials, no error code; a bad token, invalid_token.
	if resp, _ := do("GET", "/v1/users/me", "", "", ""); resp.StatusCode != 401 || resp.Header.Get("WWW-Authenticate") != `Bearer realm="chatd"` {
		t.Errorf("no token: %d %q", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
	}
	if resp, _ := do("GET", "/v1/users/me", "Bearer forged", "", ""); resp.StatusCode != 401 ||
		!strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), `Bearer realm="chatd", error="invalid_token", error_description="`) {
		t.Errorf("forged token: %d %q", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
	}
	// No gRPC transport header on a REST answer.
	if resp, _ := do("GET", "/v1/users/me", bearer, "", ""); resp.StatusCode != 200 || resp.Header.Get("Grpc-Metadata-Content-Type") != "" {
		t.Errorf("GET /v1/users/me: %d, Grpc-Metadata-Content-Type %q", resp.StatusCode, resp.Header.Get("Grpc-Metadata-Content-Type"))
	}
	// 415 for a body that is not JSON (InvalidArgument, as grpc-go's own
	// 415); 413 for one over the limit, 256 KiB (ResourceExhausted, as
	// grpc-go answers a message over MaxRecvMsgSize), and not for one at it.
	if resp, m := do("PUT", "/v1/users/me/read-receipts", bearer, "text/plain", `{"hideReadReceipts":true}`); resp.StatusCode != 415 || m["code"] != float64(3) {
		t.Errorf("text/plain: %d %v; want 415, code 3", resp.StatusCode, m)
	}
	if resp, m := do("PATCH", "/v1/users/me", bearer, "application/json", strings.Repeat(" ", 256<<10+1)); resp.StatusCode != 413 || m["code"] != float64(8) {
		t.Errorf("256 KiB + 1: %d %v; want 413, code 8", resp.StatusCode, m)
	}
	if resp, m := do("PATCH", "/v1/users/me", bearer, "application/json", strings.Repeat(" ", 256<<10)); resp.StatusCode != 400 {
		t.Errorf("256 KiB of spaces: %d %v; want 400 (an empty body, not 413)", resp.StatusCode, m)
	}
	// HEAD is GET without the content (RFC 9110 9.3.2).
	head := func(auth string) (*http.Response, []byte) {
		req, _ := http.NewRequest("HEAD", base+"/v1/users/me", nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		return resp, raw
	}
	if resp, raw := head(bearer); resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" || len(raw) != 0 {
		t.Errorf("HEAD /v1/users/me: %d %q %q; want 200, application/json, no body", resp.StatusCode, resp.Header.Get("Content-Type"), raw)
	}
	if resp, _ := head(""); resp.StatusCode != 401 || resp.Header.Get("WWW-Authenticate") != `Bearer realm="chatd"` {
		t.Errorf("HEAD /v1/users/me without a token: %d %q; want 401 with the challenge", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
	}
	// An empty body, a missing required property, a null, a wrong JSON
	// type, an empty string, a value outside the enum: 400 naming the field,
	// and nothing changed.
	for _, c := range []struct{ method, path, body, field string }{
		{"PUT", "/v1/users/me/read-receipts", "", "*"},
		{"PUT", "/v1/users/me/read-receipts", "{}", "hide_read_receipts"},
		{"PUT", "/v1/users/me/read-receipts", `{"hideReadReceipts":null}`, "hide_read_receipts"},
		{"PATCH", "/v1/users/me", `{"displayName":null}`, "display_name"},
		{"PATCH", "/v1/users/me", `{"displayName":"","hidePresence":false}`, "display_name"},
		{"PATCH", "/v1/users/me", `{"displayName":5}`, "display_name"},
		{"POST", "/v1/channels/dm:carol:carol/read", `{"messageId":0}`, "message_id"},
		{"POST", "/v1/groups", `{"name":"g","memberIds":null}`, "member_ids"},
		// An unknown property, at the top or inside an object, is refused,
		// not ignored (MarkRead without messageId marks the whole channel
		// read); so is anything after the JSON value.
		{"POST", "/v1/channels/dm:carol:carol/read", `{"upToMessageId":"1"}`, "upToMessageId"},
		{"PATCH", "/v1/users/me", `{"displayName":"X","nickname":"x"}`, "nickname"},
		{"PATCH", "/v1/users/me", `{"display_name":"X","Display_Name":"x"}`, "Display_Name"},
		{"PUT", "/v1/devices/current/push", `{"fcm":{"token":"t","ttl":5}}`, "fcm.ttl"},
		{"PUT", "/v1/devices/current/push", `{"webPush":{"endpoint":"https://fcm.googleapis.com/x","expirationTime":null,"keys":{"p256dh":"a","auth":"b","x":1}}}`, "web_push.keys.x"},
		{"PATCH", "/v1/users/me", `{"displayName":"X"} xyz`, "*"},
		{"PATCH", "/v1/users/me", `{"displayName":"X"}{"displayName":"Y"}`, "*"},
	} {
		resp, m := do(c.method, c.path, bearer, "application/json", c.body)
		if resp.StatusCode != 400 || field(m) != c.field {
			t.Errorf("%s %s %s: %d %v; want 400 with field %q", c.method, c.path, c.body, resp.StatusCode, m, c.field)
		}
	}
	// JSON.stringify(pushSubscription) as account.proto says to send it:
	// expirationTime is not refused (web push is not configured here: 409).
	key, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sub := fmt.Sprintf(`{"webPush":{"endpoint":"https://fcm.googleapis.com/x","expirationTime":null,"keys":{"p256dh":%q,"auth":%q}}}`,
		base64.RawURLEncoding.EncodeToString(key.PublicKey().Bytes()), base64.RawURLEncoding.EncodeToString(make([]byte, 16)))
	if resp, m := do("PUT", "/v1/devices/current/push", bearer, "application/json", sub); resp.StatusCode == 400 {
		t.Errorf("a browser's subscription JSON: %d %v; want no 400", resp.StatusCode, m)
	}
	if _, m := do("GET", "/v1/users/me", bearer, "", ""); m["profile"].(map[string]any)["displayName"] != "Carol" {
		t.Errorf("profile changed: %v", m)
	}
	// The caller's own profile at /v1/users/me and /v1/users/ (empty
	// username); no body needed to revoke the other devices.
	if resp, m := do("GET", "/v1/users/", bearer, "", ""); resp.StatusCode != 200 || m["profile"].(map[string]any)["userId"] != "carol" {
		t.Errorf("GET /v1/users/: %d %v", resp.StatusCode, m)
	}
	if resp, m := do("POST", "/v1/users/me/devices:revokeOthers", bearer, "", ""); resp.StatusCode != 200 {
		t.Errorf("revokeOthers without a body: %d %v", resp.StatusCode, m)
	}
}

// TestOpenAPIDocument (issue 17): the served document names itself, says
// which operations need the bearer token, and carries the rules
// protoc-gen-openapiv2 leaves out (query bounds, a narrowed enum).
func TestOpenAPIDocument(t *testing.T) {
	var d struct {
		Info                map[string]any            `json:"info"`
		SecurityDefinitions map[string]map[string]any `json:"securityDefinitions"`
		Paths               map[string]map[string]struct {
			Security   *[]any           `json:"security"`
			Parameters []map[string]any `json:"parameters"`
			Responses  map[string]struct {
				Description string                    `json:"description"`
				Headers     map[string]map[string]any `json:"headers"`
			} `json:"responses"`
		} `json:"paths"`
		Definitions map[string]map[string]any `json:"definitions"`
	}
	if err := json.Unmarshal(chatd.OpenAPI, &d); err != nil {
		t.Fatal(err)
	}
	if desc, _ := d.Info["description"].(string); !strings.Contains(desc, "262144 bytes") || strings.Contains(desc, "4 MiB") {
		t.Errorf("info description %q: want the real body limit, 262144 bytes", desc)
	}
	// Inside a body, closed too; but a browser's PushSubscription JSON
	// (expirationTime besides what the document names) stays open.
	if keys, push := d.Definitions["v1WebPushKeys"], d.Definitions["v1WebPushSubscription"]; keys["additionalProperties"] != false || push["additionalProperties"] != nil {
		t.Errorf("v1WebPushKeys %v, v1WebPushSubscription %v: want closed, open", keys["additionalProperties"], push["additionalProperties"])
	}
	if d.Info["title"] != "chatd REST API" || d.Info["version"] != "v1" || d.SecurityDefinitions["bearer"]["in"] != "header" {
		t.Fatalf("info %v, security definitions %v", d.Info, d.SecurityDefinitions)
	}
	for path, ops := range d.Paths {
		for m, op := range ops {
			public := path == "/v1/accounts" || path == "/v1/sessions" && m == "post" || path == "/v1/endpoints"
			if public != (op.Security != nil && len(*op.Security) == 0) {
				t.Errorf("%s %s: security %v", m, path, op.Security)
			}
			for _, code := range []string{"200", "400", "401", "404", "409", "413", "415", "429"} {
				if _, ok := op.Responses[code]; !ok {
					t.Errorf("%s %s: no %s response", m, path, code)
				}
			}
			// The limit restEdge enforces (maxRecvMsgBytes), the headers
			// it sends.
			if d := op.Responses["413"].Description; !strings.Contains(d, "262144 bytes") {
				t.Errorf("%s %s: 413 says %q; want the real limit, 262144 bytes", m, path, d)
			}
			if op.Responses["429"].Headers["Retry-After"]["type"] != "integer" || op.Responses["401"].Headers["WWW-Authenticate"] == nil {
				t.Errorf("%s %s: 429 headers %v, 401 headers %v", m, path, op.Responses["429"].Headers, op.Responses["401"].Headers)
			}
			for _, p := range op.Parameters {
				// Unknown body properties are refused: the document says so.
				sc, _ := p["schema"].(map[string]any)
				if ref, ok := sc["$ref"].(string); ok && p["in"] == "body" {
					if def := d.Definitions[strings.TrimPrefix(ref, "#/definitions/")]; def["additionalProperties"] != false {
						t.Errorf("%s %s: body %s without additionalProperties false", m, path, ref)
					}
				}
				if p["name"] == "pageSize" && (p["minimum"] != float64(0) || p["maximum"] != float64(500) ||
					chat.MaxChannelsPage != 500 || chat.MaxHistoryPage != 500) {
					t.Errorf("%s %s: pageSize %v", m, path, p)
				}
			}
		}
	}
	role := d.Definitions["ChatServiceAddMemberBody"]["properties"].(map[string]any)["role"].(map[string]any)
	if role["$ref"] != nil || len(role["enum"].([]any)) != 3 {
		t.Errorf("AddMember role: %v", role)
	}
}

// TestRESTRetryAfter: a 429 with a google.rpc.RetryInfo carries its delay
// as Retry-After (RFC 9110 10.2.3): whole seconds, rounded up, at least 1
// (the delay here is under a second: truncated it would be 0).
func TestRESTRetryAfter(t *testing.T) {
	a := startAppWith(t, app.Config{UnaryRate: 3, UnaryBurst: 5})
	if code, out := restCall(t, a.HTTPAddr(), "POST", "/v1/accounts", "", map[string]string{"username": "carol", "password": "longpassword", "displayName": "Carol"}); code != 200 {
		t.Fatalf("sign up: %d %v", code, out)
	}
	_, out := restCall(t, a.HTTPAddr(), "POST", "/v1/sessions", "", map[string]string{"username": "carol", "password": "longpassword", "deviceName": "curl"})
	token, _ := out["accessToken"].(string)
	for i := 0; i < 50; i++ {
		req, _ := http.NewRequest("GET", "http://"+a.HTTPAddr()+"/v1/users/me", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == 200 {
			if h := resp.Header.Get("Retry-After"); h != "" {
				t.Fatalf("200 with Retry-After %q", h)
			}
			continue
		}
		if resp.StatusCode != http.StatusTooManyRequests {
			t.Fatalf("GET /v1/users/me: %d %s", resp.StatusCode, raw)
		}
		var st struct {
			Details []struct {
				Type       string `json:"@type"`
				RetryDelay string `json:"retryDelay"`
			} `json:"details"`
		}
		if err := json.Unmarshal(raw, &st); err != nil {
			t.Fatal(err)
		}
		var delay time.Duration
		for _, d := range st.Details {
			if strings.HasSuffix(d.Type, "google.rpc.RetryInfo") {
				delay, _ = time.ParseDuration(d.RetryDelay)
			}
		}
		if delay <= 0 {
			t.Fatalf("429 without a RetryInfo delay: %s", raw)
		}
		want := max(int64(math.Ceil(delay.Seconds())), 1)
		if got := resp.Header.Get("Retry-After"); got != strconv.FormatInt(want, 10) {
			t.Fatalf("429 with RetryInfo %v: Retry-After %q; want %d", delay, got, want)
		}
		return
	}
	t.Fatal("no 429 after 50 calls at 3/s with a burst of 5")
}
