package app_test

import (
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"github.com/chatd/chatd/server/app"
)

// TestPprof: profiles are off by default and not on the public HTTP port;
// with PprofAddr they are served on their own listener.
func TestPprof(t *testing.T) {
	a := startApp(t, t.TempDir())
	if a.PprofAddr() != "" {
		t.Fatalf("pprof on by default at %s", a.PprofAddr())
	}
	if code := getStatus(t, "http://"+a.HTTPAddr()+"/debug/pprof/cmdline"); code != http.StatusNotFound {
		t.Errorf("public HTTP port /debug/pprof/cmdline: %d, want 404", code)
	}

	b, err := app.New(app.Config{
		GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", PprofAddr: "127.0.0.1:0",
		DataDir: t.TempDir(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	b.Start()
	t.Cleanup(func() { _ = b.Close() })
	resp, err := http.Get("http://" + b.PprofAddr() + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "goroutine profile:") {
		t.Errorf("pprof goroutine profile: %d %.100q", resp.StatusCode, body)
	}
	if code := getStatus(t, "http://"+b.HTTPAddr()+"/debug/pprof/"); code != http.StatusNotFound {
		t.Errorf("public HTTP port serves /debug/pprof/: %d, want 404", code)
	}
}

func getStatus(t *testing.T, url string) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}
