package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestREADMEChatctlSteps runs the chatctl lines of README.md's shell
// blocks as one bash script against a test server, as a new user pasting
// them would: bin/chatctl is the binary under test, /tmp/ a temporary
// directory, and CHATCTL_SERVER the test server. The commands that run
// until Ctrl-C (listen, watch) are left out.
func TestREADMEChatctlSteps(t *testing.T) {
	if _, err := exec.LookPath("jq"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("the README steps use jq, which is not installed (scripts/test.sh installs it)")
		}
		t.Skip("the README steps use jq, which is not installed")
	}
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	a := startServer(t, "127.0.0.1:0", t.TempDir())
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(chatctlBin, filepath.Join(dir, "bin", "chatctl")); err != nil {
		t.Fatal(err)
	}

	script := []string{"set -euo pipefail"}
	blocks := regexp.MustCompile("(?s)```sh\n(.*?)```").FindAllStringSubmatch(string(readme), -1)
	for _, b := range blocks {
		if !strings.Contains(b[1], "bin/chatctl") {
			continue
		}
		for _, line := range strings.Split(b[1], "\n") {
			if strings.Contains(line, " listen") || strings.Contains(line, " watch") {
				continue
			}
			line = strings.ReplaceAll(line, "/tmp/", dir+"/")
			line = regexp.MustCompile(`CHATCTL_SERVER=\S+`).ReplaceAllString(line, "CHATCTL_SERVER="+a.GRPCAddr())
			script = append(script, line)
		}
	}
	if len(script) < 15 {
		t.Fatalf("found only %d README lines: %q", len(script), script)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", strings.Join(script, "\n"))
	cmd.Dir = dir
	cmd.Env = environWithout("CHATCTL_")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("README steps: %v\nscript:\n%s\nstdout:\n%s\nstderr:\n%s", err, strings.Join(script, "\n"), &stdout, &stderr)
	}
	for _, want := range []string{"alice: hello bob", "total unread", "edited  dm:alice:bob", "deleted  dm:alice:bob", "bob  offline"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("README steps printed no %q:\n%s", want, &stdout)
		}
	}
}
