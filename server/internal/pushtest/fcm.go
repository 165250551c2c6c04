package pushtest

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// FCM is a local FCM HTTP v1 API that checks what Google's does
// (firebase.google.com/docs/reference/fcm/rest/v1/projects.messages/send):
// POST /v1/projects/<project>/messages:send, "Authorization: Bearer" with
// the OAuth token it expects, a JSON body {"message": ...} with exactly
// one of token/topic/condition, string data values, android.collapse_key,
// and apns.headers. It answers Google's error bodies (a google.rpc.Status
// with a google.firebase.fcm.v1.FcmError detail naming the errorCode, e.g.
// UNREGISTERED).
type FCM struct {
	// URL is the endpoint to give the SDK (option.WithEndpoint):
	// http://127.0.0.1:<port>/v1.
	URL string
	// Project and Token are the project id and the OAuth access token it
	// expects.
	Project, Token string

	srv *httptest.Server
	n   atomic.Int64

	mu       sync.Mutex
	tokens   map[string]bool // registered tokens; false: UNREGISTERED
	accepted []map[string]any
	refused  []string
	answer   func(token string) (status int, errorCode string, header http.Header, ok bool)
}

// StartFCM starts the fake.
func StartFCM(t testing.TB) *FCM {
	t.Helper()
	f := &FCM{Project: "chatd-test", Token: "ya29.test-access-token", tokens: map[string]bool{}}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	f.URL = f.srv.URL + "/v1"
	return f
}

// Register makes token a valid registration token.
func (f *FCM) Register(token string) { f.mu.Lock(); f.tokens[token] = true; f.mu.Unlock() }

// Unregister makes FCM answer UNREGISTERED for token (the app was
// uninstalled).
func (f *FCM) Unregister(token string) { f.mu.Lock(); f.tokens[token] = false; f.mu.Unlock() }

// Answer forces an error answer while fn returns ok; nil ends it.
func (f *FCM) Answer(fn func(token string) (status int, errorCode string, header http.Header, ok bool)) {
	f.mu.Lock()
	f.answer = fn
	f.mu.Unlock()
}

// Accepted returns the messages accepted so far (the "message" objects).
func (f *FCM) Accepted() []map[string]any {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]map[string]any(nil), f.accepted...)
}

// Refused returns the reasons of the refused requests so far.
func (f *FCM) Refused() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.refused...)
}

// statusName is the google.rpc.Code name of an HTTP status FCM uses.
var statusName = map[int]string{400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
	429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}

func (f *FCM) fail(w http.ResponseWriter, status int, errorCode, msg string, h http.Header) {
	f.mu.Lock()
	f.refused = append(f.refused, fmt.Sprintf("%d %s %s", status, errorCode, msg))
	f.mu.Unlock()
	for k, vs := range h {
		w.Header()[k] = vs
	}
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	w.WriteHeader(status)
	e := map[string]any{"code": status, "message": msg, "status": statusName[status]}
	if errorCode != "" {
		e["details"] = []any{map[string]any{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": errorCode}}
	}
	_ = json.NewEncoder(w).Encode(map[string]any{"error": e})
}

func (f *FCM) serve(w http.ResponseWriter, r *http.Request) {
	want := "/v1/projects/" + f.Project + "/messages:send"
	if r.Method != http.MethodPost || r.URL.Path != want {
		f.fail(w, 404, "", "path "+r.Method+" "+r.URL.Path+" is not "+want, nil)
		return
	}
	if r.Header.Get("Authorization") != "Bearer "+f.Token {
		f.fail(w, 401, "THIRD_PARTY_AUTH_ERROR", "Request had invalid authentication credentials.", nil)
		return
	}
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	var req struct {
		Message map[string]any `json:"message"`
	}
	if err := json.Unmarshal(body, &req); err != nil || req.Message == nil {
		f.fail(w, 400, "INVALID_ARGUMENT", "Invalid JSON payload received.", nil)
		return
	}
	m := req.Message
	targets := 0
	for _, k := range []string{"token", "topic", "condition"} {
		if s, _ := m[k].(string); s != "" {
			targets++
		}
	}
	if targets != 1 {
		f.fail(w, 400, "INVALID_ARGUMENT", "Exactly one of token, topic or condition must be set.", nil)
		return
	}
	if data, ok := m["data"].(map[string]any); ok {
		for k, v := range data {
			if _, isString := v.(string); !isString {
				f.fail(w, 400, "INVALID_ARGUMENT", "Invalid value at 'message.data["+k+"]': not a string", nil)
				return
			}
		}
	}
	android, _ := m["android"].(map[string]any)
	if ck, _ := android["collapse_key"].(string); ck == "" {
		f.fail(w, 400, "INVALID_ARGUMENT", "test fake: android.collapse_key is required by chatd's contract", nil)
		return
	}
	apns, _ := m["apns"].(map[string]any)
	if h, _ := apns["headers"].(map[string]any); h["apns-collapse-id"] == nil {
		f.fail(w, 400, "INVALID_ARGUMENT", "test fake: apns.headers apns-collapse-id is required by chatd's contract", nil)
		return
	}
	token, _ := m["token"].(string)
	f.mu.Lock()
	answer, registered, known := f.answer, f.tokens[token], true
	if _, ok := f.tokens[token]; !ok {
		known = false
	}
	f.mu.Unlock()
	if answer != nil {
		if status, code, h, ok := answer(token); ok {
			f.fail(w, status, code, "forced by the test", h)
			return
		}
	}
	switch {
	case !known:
		f.fail(w, 400, "INVALID_ARGUMENT", "The registration token is not a valid FCM registration token", nil)
		return
	case !registered:
		f.fail(w, 404, "UNREGISTERED", "Requested entity was not found.", nil)
		return
	}
	f.mu.Lock()
	f.accepted = append(f.accepted, m)
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	_ = json.NewEncoder(w).Encode(map[string]string{"name": fmt.Sprintf("projects/%s/messages/%d", f.Project, f.n.Add(1))})
}

// String describes the fake for test logs.
func (f *FCM) String() string { return "fake FCM at " + strings.TrimSuffix(f.URL, "/v1") }
