package app_test

import (
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/chatd/chatd"
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
		if resp.StatusCode == http.StatusMethodNotAllowed && strings.HasPrefix(path, "/v1/") && !json.Valid(raw) {
			t.Errorf("%s %s: 405 body is not JSON: %q", method, path, raw)
		}
		return resp
	}
	param := regexp.MustCompile(`\{[^}]+\}`)
	methods := []string{"DELETE", "GET", "PATCH", "POST", "PUT"}
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
	if resp := do("POST", "/v1/users/me", ""); resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "GET, PATCH" {
		t.Errorf("POST /v1/users/me: %d, Allow %q; want 405, GET, PATCH", resp.StatusCode, resp.Header.Get("Allow"))
	}
	for _, p := range []string{"/healthz", "/readyz", "/metrics", "/openapi.json"} {
		if resp := do("POST", p, ""); resp.StatusCode != http.StatusMethodNotAllowed || !strings.Contains(resp.Header.Get("Allow"), "GET") {
			t.Errorf("POST %s: %d, Allow %q; want 405 allowing GET", p, resp.StatusCode, resp.Header.Get("Allow"))
		}
	}
}
