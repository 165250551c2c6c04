package app_test

import (
	"net/http"
	"strings"
	"testing"
)

// TestRESTNames: issue 11 items 4 and 5 over the REST gateway: a
// look-alike username is refused as taken (409), a mixed-script or
// option-like one as invalid (400), and a group's member list is counted
// after de-duplication, with its raw size capped as a request error (400
// naming member_ids, not the member limit).
func TestRESTNames(t *testing.T) {
	a := startApp(t, t.TempDir())
	base := a.HTTPAddr()
	signUp := func(name string) (int, map[string]any) {
		return restCall(t, base, "POST", "/v1/accounts", "", map[string]string{"username": name, "password": "longpassword", "displayName": "X"})
	}
	for _, name := range []string{"alice", "bob"} {
		if code, out := signUp(name); code != 200 {
			t.Fatalf("sign up %s: %d %v", name, code, out)
		}
	}
	for name, want := range map[string]struct {
		code int
		msg  string
	}{
		"\u0430lice":                     {http.StatusBadRequest, "mixes the scripts"},
		"-rf":                            {http.StatusBadRequest, "must not begin with '-'"},
		"___":                            {http.StatusBadRequest, "letter or a digit"},
		"a1ice":                          {http.StatusConflict, "looks like an existing username"},
		"\u0430\u04cf\u0456\u0441\u0435": {http.StatusConflict, "looks like an existing username"}, // all Cyrillic
	} {
		code, out := signUp(name)
		if msg, _ := out["message"].(string); code != want.code || !strings.Contains(msg, want.msg) {
			t.Errorf("sign up %q: %d %v, want %d containing %q", name, code, out, want.code, want.msg)
		}
	}
	code, out := restCall(t, base, "POST", "/v1/sessions", "", map[string]string{"username": "alice", "password": "longpassword", "deviceName": "curl"})
	token, _ := out["accessToken"].(string)
	if code != 200 || token == "" {
		t.Fatalf("log in: %d %v", code, out)
	}
	copies := make([]string, 5000)
	for i := range copies {
		copies[i] = "bob"
	}
	code, out = restCall(t, base, "POST", "/v1/groups", token, map[string]any{"name": "copies", "memberIds": copies})
	if msg, _ := out["message"].(string); code != http.StatusBadRequest || !strings.Contains(msg, "member_ids") || strings.Contains(msg, "at most 100 members") {
		t.Fatalf("5,000 copies of one member: %d %v", code, out)
	}
	code, out = restCall(t, base, "POST", "/v1/groups", token, map[string]any{"name": "dups", "memberIds": copies[:500]})
	if code != 200 {
		t.Fatalf("500 copies of one member: %d %v", code, out)
	}
	if ms, _ := out["channel"].(map[string]any)["members"].([]any); len(ms) != 2 {
		t.Fatalf("500 copies of one member: %d members, want 2: %v", len(ms), out)
	}
}
