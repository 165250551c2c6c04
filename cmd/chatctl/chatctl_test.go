package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chatd/chatd/server/app"
	"github.com/spf13/cobra"
)

// The tests build the chatctl binary once and drive it, as separate
// processes, against a whole chat server (server/app) running in the test
// process on loopback.

var chatctlBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "chatctl-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	chatctlBin = filepath.Join(dir, "chatctl")
	if out, err := exec.Command("go", "build", "-o", chatctlBin, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "go build: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func startServer(t *testing.T, grpcAddr, dataDir string) *app.App {
	t.Helper()
	a, err := app.New(app.Config{
		GRPCAddr: grpcAddr,
		HTTPAddr: "127.0.0.1:0",
		DataDir:  dataDir,
		Logger:   slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatalf("app.New: %v", err)
	}
	a.Start()
	t.Cleanup(func() { a.Close() })
	return a
}

// cli runs chatctl as one user: its own config dir, one server.
type cli struct {
	t      *testing.T
	server string
	dir    string
}

func newCLI(t *testing.T, server string) *cli {
	return &cli{t: t, server: server, dir: t.TempDir()}
}

func (c *cli) command(ctx context.Context, args ...string) *exec.Cmd {
	full := append([]string{"--server", c.server, "--config-dir", c.dir, "--timeout", "10s"}, args...)
	cmd := exec.CommandContext(ctx, chatctlBin, full...)
	cmd.Env = environWithout("CHATCTL_")
	return cmd
}

// environWithout is the test's environment less the variables with prefix.
func environWithout(prefix string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, prefix) {
			env = append(env, kv)
		}
	}
	return env
}

// run returns stdout, stderr and the exit status.
func (c *cli) run(args ...string) (string, string, int) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return runCmd(c.t, c.command(ctx, args...))
}

// runCmd runs cmd and returns stdout, stderr and the exit status.
func runCmd(t *testing.T, cmd *exec.Cmd) (string, string, int) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("chatctl %q: %v", cmd.Args[1:], err)
	}
	return stdout.String(), stderr.String(), code
}

// ok runs a command that must succeed and returns its stdout.
func (c *cli) ok(args ...string) string {
	c.t.Helper()
	out, errOut, code := c.run(args...)
	if code != 0 {
		c.t.Fatalf("chatctl %q: exit %d\nstdout: %s\nstderr: %s", args, code, out, errOut)
	}
	return out
}

// fails runs a command that must fail with exit status want and returns
// its stderr.
func (c *cli) fails(want int, args ...string) string {
	c.t.Helper()
	out, errOut, code := c.run(args...)
	if code != want {
		c.t.Fatalf("chatctl %q: exit %d, want %d\nstdout: %s\nstderr: %s", args, code, want, out, errOut)
	}
	return errOut
}

// jsonLines parses every line of out as a JSON object.
func jsonLines(t *testing.T, out string) []map[string]any {
	t.Helper()
	var objs []map[string]any
	for _, line := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("line %q is not a JSON object: %v", line, err)
		}
		objs = append(objs, m)
	}
	return objs
}

// field walks nested JSON objects: field(m, "message", "text").
func field(m map[string]any, path ...string) any {
	var v any = m
	for _, p := range path {
		obj, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = obj[p]
	}
	return v
}

func signUpAndLogIn(c *cli, user string) {
	c.t.Helper()
	c.ok("signup", user, "--password", "password-of-"+user, "--display-name", strings.ToUpper(user))
	c.ok("login", user, "--password", "password-of-"+user, "--device", user+"-cli")
}

func TestAliceSendsBobSyncs(t *testing.T) {
	a := startServer(t, "127.0.0.1:0", t.TempDir())
	alice, bob := newCLI(t, a.GRPCAddr()), newCLI(t, a.GRPCAddr())
	signUpAndLogIn(alice, "alice")
	signUpAndLogIn(bob, "bob")

	// The credentials file is private.
	fi, err := os.Stat(filepath.Join(alice.dir, credentialsFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("credentials mode %v, want 0600", fi.Mode().Perm())
	}

	out := alice.ok("send", "bob", "hello", "bob")
	if !strings.Contains(out, "dm:alice:bob") || !strings.Contains(out, "message_id") {
		t.Fatalf("send printed %q", out)
	}
	out = bob.ok("sync")
	if !strings.Contains(out, "dm:alice:bob") || !strings.Contains(out, "alice: hello bob") {
		t.Fatalf("bob's sync printed %q", out)
	}
	// The sync acked: nothing new the second time, and the cursor moved.
	if out := bob.ok("sync"); out != "" {
		t.Fatalf("second sync printed %q, want nothing", out)
	}
	if out := bob.ok("whoami"); !strings.Contains(out, "bob") || !strings.Contains(out, "cursor  1") {
		t.Fatalf("whoami printed %q", out)
	}

	// JSON Lines: one protojson object per line.
	alice.ok("send", "dm:alice:bob", "second")
	alice.ok("send", "bob", "--", "-third-")
	lines := jsonLines(t, bob.ok("--json", "sync", "--limit", "1"))
	if len(lines) != 2 {
		t.Fatalf("json sync printed %d lines, want 2", len(lines))
	}
	for i, want := range []string{"second", "-third-"} {
		if field(lines[i], "message", "text") != want || field(lines[i], "message", "senderId") != "alice" ||
			field(lines[i], "inboxSeq") != fmt.Sprint(i+2) {
			t.Fatalf("json line %d = %v", i, lines[i])
		}
	}
	who := jsonLines(t, bob.ok("--json", "whoami"))
	if len(who) != 1 || who[0]["userId"] != "bob" || who[0]["cursor"] != "3" || who[0]["server"] != a.GRPCAddr() {
		t.Fatalf("json whoami = %v", who)
	}
	ack := jsonLines(t, alice.ok("--json", "send", "bob", "fourth"))
	if len(ack) != 1 || ack[0]["channelId"] != "dm:alice:bob" || ack[0]["messageId"] == nil {
		t.Fatalf("json send = %v", ack)
	}

	// History reads the channel regardless of cursors.
	hist := jsonLines(t, bob.ok("--json", "history", "alice"))
	if len(hist) != 4 || hist[0]["text"] != "hello bob" || hist[3]["text"] != "fourth" {
		t.Fatalf("history = %v", hist)
	}

	// Logging out deletes the credentials; commands then need a login.
	bob.ok("logout")
	if errOut := bob.fails(1, "sync"); !strings.HasPrefix(errOut, "chatctl: Unauthenticated: ") {
		t.Fatalf("sync after logout: %q", errOut)
	}
}

func TestErrorsAndUsage(t *testing.T) {
	a := startServer(t, "127.0.0.1:0", t.TempDir())
	alice := newCLI(t, a.GRPCAddr())
	signUpAndLogIn(alice, "alice")

	if errOut := alice.fails(1, "signup", "alice", "--password", "another-password"); !strings.HasPrefix(errOut, "chatctl: AlreadyExists: ") {
		t.Errorf("duplicate signup: %q", errOut)
	}
	if errOut := alice.fails(1, "login", "alice", "--password", "wrong-password"); !strings.HasPrefix(errOut, "chatctl: Unauthenticated: ") {
		t.Errorf("wrong password: %q", errOut)
	}
	if errOut := alice.fails(1, "send", "nobody", "hi"); !strings.HasPrefix(errOut, "chatctl: NotFound: ") {
		t.Errorf("send to unknown user: %q", errOut)
	}
	if errOut := alice.fails(1, "profile", "nobody"); !strings.HasPrefix(errOut, "chatctl: NotFound: ") {
		t.Errorf("profile of unknown user: %q", errOut)
	}
	alice.fails(2, "send", "bob")
	// An empty positional argument is a usage error naming it, not a
	// server error in the SDK's words.
	if errOut := alice.fails(2, "send", "", "hi"); !strings.Contains(errOut, "TARGET is empty") {
		t.Errorf("send with an empty target: %q", errOut)
	}
	if errOut := alice.fails(2, "presence", "bob", " "); !strings.Contains(errOut, "USER is empty") {
		t.Errorf("presence with an empty user: %q", errOut)
	}
	alice.fails(2, "frobnicate")
	alice.fails(2, "sync", "--limit", "5000")
	alice.fails(2, "sync", "--no-such-flag")
	alice.fails(2, "login", "alice")
	alice.fails(2) // no command

	// An unreachable server is Unavailable.
	dead := &cli{t: t, server: "127.0.0.1:1", dir: alice.dir}
	if errOut := dead.fails(1, "whoami"); !strings.HasPrefix(errOut, "chatctl: Unavailable: ") {
		t.Errorf("unreachable server: %q", errOut)
	}
}

func TestHelpDocumentsEveryCommand(t *testing.T) {
	c := &cli{t: t, server: "127.0.0.1:1", dir: t.TempDir()}
	out := c.ok("--help")
	names := commandNames(t)
	if len(names) < 25 {
		t.Fatalf("only %d commands: %q", len(names), names)
	}
	for _, name := range names {
		if !strings.Contains(out, "  "+name+" ") {
			t.Errorf("--help does not list %q", name)
		}
		for _, args := range [][]string{append([]string{"help"}, strings.Fields(name)...), append(strings.Fields(name), "--help")} {
			help := c.ok(args...)
			if !strings.Contains(help, "Usage: chatctl [global flags] "+name) {
				t.Errorf("%q printed %q", args, help)
			}
		}
	}
	for _, flag := range []string{"--server", "--config-dir", "--json", "--timeout"} {
		if !strings.Contains(out, flag) {
			t.Errorf("--help does not document %s", flag)
		}
	}
	if help := c.ok("help", "group", "add"); !strings.Contains(help, "--admin") {
		t.Errorf("help group add does not document --admin: %q", help)
	}
	if help := c.ok("send", "--help"); !strings.Contains(help, "TARGET") {
		t.Errorf("send --help printed %q", help)
	}
	c.fails(2, "help", "nope")
}

// commandNames is the name of every command that runs ("group add"),
// walked from the command tree.
func commandNames(t *testing.T) []string {
	var names []string
	var walk func(*cobra.Command)
	walk = func(c *cobra.Command) {
		for _, sub := range c.Commands() {
			if !sub.IsAvailableCommand() || sub.Name() == "completion" {
				continue
			}
			if sub.Annotations[listingKey] != listGroup {
				names = append(names, commandName(sub))
			}
			walk(sub)
		}
	}
	walk((&env{}).rootCommand())
	return names
}

func TestGroupsContactsProfiles(t *testing.T) {
	a := startServer(t, "127.0.0.1:0", t.TempDir())
	alice, bob, carol := newCLI(t, a.GRPCAddr()), newCLI(t, a.GRPCAddr()), newCLI(t, a.GRPCAddr())
	signUpAndLogIn(alice, "alice")
	signUpAndLogIn(bob, "bob")
	signUpAndLogIn(carol, "carol")

	// A new group has no last activity to show; a contact is not shown
	// with the other account's creation date as "since".
	if out := alice.ok("group", "create", "empty"); !strings.Contains(out, "no messages yet") || strings.Contains(out, "last activity") {
		t.Fatalf("group create: %q", out)
	}
	if out := alice.ok("contacts", "add", "carol"); out != "added contact carol  \"CAROL\"\n" {
		t.Fatalf("contacts add: %q", out)
	}
	alice.ok("contacts", "remove", "carol")
	created := jsonLines(t, alice.ok("--json", "group", "create", "team", "--members", "bob"))
	gid, _ := created[0]["channelId"].(string)
	if !strings.HasPrefix(gid, "g:") || created[0]["name"] != "team" {
		t.Fatalf("group create = %v", created)
	}
	alice.ok("send", gid, "standup at 10")
	if out := bob.ok("history", gid); !strings.Contains(out, "alice: standup at 10") {
		t.Fatalf("bob's group history: %q", out)
	}
	if out := bob.ok("channels"); !strings.Contains(out, gid) || !strings.Contains(out, "team") {
		t.Fatalf("bob's channels: %q", out)
	}
	// carol is not a member: PermissionDenied.
	if errOut := carol.fails(1, "group", "show", gid); !strings.HasPrefix(errOut, "chatctl: PermissionDenied: ") {
		t.Fatalf("carol's group show: %q", errOut)
	}
	if errOut := bob.fails(1, "group", "add", gid, "carol"); !strings.HasPrefix(errOut, "chatctl: PermissionDenied: ") {
		t.Fatalf("bob (member) adding carol: %q", errOut)
	}
	alice.ok("group", "add", gid, "carol", "--admin")
	if out := carol.ok("group", "show", gid); !strings.Contains(out, "carol (admin)") || !strings.Contains(out, "alice (owner)") {
		t.Fatalf("group show: %q", out)
	}
	carol.ok("group", "remove", gid, "bob")
	if errOut := bob.fails(1, "history", gid); !strings.HasPrefix(errOut, "chatctl: PermissionDenied: ") {
		t.Fatalf("bob's history after removal: %q", errOut)
	}

	alice.ok("contacts", "add", "bob")
	if out := alice.ok("contacts", "list"); !strings.Contains(out, "bob") {
		t.Fatalf("contacts list: %q", out)
	}
	alice.ok("contacts", "remove", "bob")
	if out := alice.ok("contacts", "list"); strings.Contains(out, "bob") {
		t.Fatalf("contacts list after remove: %q", out)
	}

	alice.ok("profile", "set", "--display-name", "Alice Liddell")
	prof := jsonLines(t, bob.ok("--json", "profile", "alice"))
	if prof[0]["displayName"] != "Alice Liddell" {
		t.Fatalf("profile = %v", prof)
	}
	if out := alice.ok("profile"); !strings.Contains(out, `"Alice Liddell"`) {
		t.Fatalf("own profile: %q", out)
	}
	devs := jsonLines(t, alice.ok("--json", "devices"))
	if len(devs) != 1 || devs[0]["name"] != "alice-cli" || devs[0]["current"] != true {
		t.Fatalf("devices = %v", devs)
	}
}

// TestPresence: chatctl presence and watch show a contact going online and
// offline; a user who has not added the caller is PermissionDenied; a user
// who hides their presence shows as offline.
func TestPresence(t *testing.T) {
	a := startServer(t, "127.0.0.1:0", t.TempDir())
	alice, bob, carol := newCLI(t, a.GRPCAddr()), newCLI(t, a.GRPCAddr()), newCLI(t, a.GRPCAddr())
	signUpAndLogIn(alice, "alice")
	signUpAndLogIn(bob, "bob")
	signUpAndLogIn(carol, "carol")
	bob.ok("contacts", "add", "alice") // bob lets alice see him

	if out := alice.ok("presence", "bob"); !strings.Contains(out, "bob  offline") {
		t.Fatalf("presence of bob before he connects: %q", out)
	}
	if errOut := carol.fails(1, "presence", "bob"); !strings.HasPrefix(errOut, "chatctl: PermissionDenied: ") {
		t.Fatalf("carol (not bob's contact): %q", errOut)
	}

	// alice watches; bob connects (listen), then leaves cleanly (SIGINT).
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	watch := alice.command(ctx, "--json", "watch", "bob")
	wout, err := watch.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := watch.Start(); err != nil {
		t.Fatal(err)
	}
	events := make(chan map[string]any, 16)
	go func() {
		sc := bufio.NewScanner(wout)
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) == nil {
				events <- m
			}
		}
		close(events)
	}()
	next := func(want string) map[string]any {
		t.Helper()
		for {
			select {
			case ev, ok := <-events:
				if !ok {
					t.Fatalf("watch ended before %s", want)
				}
				if ev["userId"] == "bob" && ev["status"] == want {
					return ev
				}
			case <-ctx.Done():
				t.Fatalf("no %s event for bob", want)
			}
		}
	}
	next("PRESENCE_STATUS_OFFLINE") // the current state comes first
	l := startListen(t, bob)
	on := next("PRESENCE_STATUS_ONLINE")
	if on["lastActiveAt"] == nil {
		t.Fatalf("online event without last_active_at: %v", on)
	}
	if out := alice.ok("--json", "presence", "bob"); !strings.Contains(out, "PRESENCE_STATUS_ONLINE") {
		t.Fatalf("presence --json while bob listens: %q", out)
	}
	l.interrupt(t)
	next("PRESENCE_STATUS_OFFLINE") // a clean close is offline at once

	bob.ok("profile", "set", "--hide-presence")
	startListen(t, bob)
	if out := alice.ok("presence", "bob"); !strings.Contains(out, "bob  offline") {
		t.Fatalf("presence of hidden bob while he listens: %q", out)
	}
	_ = watch.Process.Signal(os.Interrupt)
	_ = watch.Wait()
}

// listener is a background "chatctl --json listen".
type listener struct {
	cmd    *exec.Cmd
	lines  chan map[string]any
	stderr *bytes.Buffer
}

func startListen(t *testing.T, c *cli) *listener {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	cmd := c.command(ctx, "--json", "listen")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	l := &listener{cmd: cmd, lines: make(chan map[string]any, 100), stderr: &bytes.Buffer{}}
	cmd.Stderr = l.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(l.lines)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var m map[string]any
			if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
				m = map[string]any{"unparsable": sc.Text()}
			}
			l.lines <- m
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	return l
}

// expect waits for the next line and checks it is a delivery of text.
func (l *listener) expect(t *testing.T, text string) map[string]any {
	t.Helper()
	select {
	case m, ok := <-l.lines:
		if !ok {
			t.Fatalf("listen exited before printing %q; stderr: %s", text, l.stderr)
		}
		if field(m, "delivery", "message", "text") != text {
			t.Fatalf("listen printed %v, want a delivery of %q", m, text)
		}
		return m
	case <-time.After(30 * time.Second):
		t.Fatalf("listen printed nothing for %q; stderr: %s", text, l.stderr)
	}
	return nil
}

func (l *listener) interrupt(t *testing.T) {
	t.Helper()
	if err := l.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	if err := l.cmd.Wait(); err != nil {
		t.Fatalf("listen exited with %v; stderr: %s", err, l.stderr)
	}
}

func TestListenSyncsStreamsAndAcks(t *testing.T) {
	a := startServer(t, "127.0.0.1:0", t.TempDir())
	alice, bob := newCLI(t, a.GRPCAddr()), newCLI(t, a.GRPCAddr())
	signUpAndLogIn(alice, "alice")
	signUpAndLogIn(bob, "bob")
	alice.ok("send", "bob", "before listen")

	l := startListen(t, bob)
	l.expect(t, "before listen") // from the sync phase
	alice.ok("send", "bob", "while listening")
	m := l.expect(t, "while listening") // pushed live
	if field(m, "delivery", "inboxSeq") != "2" {
		t.Fatalf("live delivery = %v", m)
	}
	l.interrupt(t)
	// Everything printed was acked.
	if out := bob.ok("whoami"); !strings.Contains(out, "cursor  2") {
		t.Fatalf("whoami after listen: %q", out)
	}
}

func TestListenReconnectsAfterServerRestart(t *testing.T) {
	dataDir := t.TempDir()
	a := startServer(t, "127.0.0.1:0", dataDir)
	addr := a.GRPCAddr()
	alice, bob := newCLI(t, addr), newCLI(t, addr)
	signUpAndLogIn(alice, "alice")
	signUpAndLogIn(bob, "bob")

	l := startListen(t, bob)
	alice.ok("send", "bob", "first")
	l.expect(t, "first")

	// Restart the server on the same address and data: tokens stay valid.
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	startServer(t, addr, dataDir)
	alice.ok("send", "bob", "after restart")
	l.expect(t, "after restart")
	l.interrupt(t)
	if !strings.Contains(l.stderr.String(), "chatctl: Unavailable: ") || !strings.Contains(l.stderr.String(), "reconnecting") {
		t.Fatalf("listen stderr %q does not report the reconnect", l.stderr)
	}
}

// TestGlobalFlagsAnywhere: the global flags work before and after the
// command and its arguments, in the single-dash spelling of Go's flag
// package too, and CHATCTL_SERVER, CHATCTL_CONFIG_DIR and CHATCTL_PASSWORD
// stand for --server, --config-dir and --password.
func TestGlobalFlagsAnywhere(t *testing.T) {
	a := startServer(t, "127.0.0.1:0", t.TempDir())
	alice, bob := newCLI(t, a.GRPCAddr()), newCLI(t, a.GRPCAddr())
	signUpAndLogIn(alice, "alice")

	// bob only through the environment: no --server, no --config-dir.
	bobEnv := []string{"CHATCTL_SERVER=" + a.GRPCAddr(), "CHATCTL_CONFIG_DIR=" + bob.dir, "CHATCTL_PASSWORD=password-of-bob"}
	runEnv := func(want int, args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, chatctlBin, args...)
		cmd.Env = append(environWithout("CHATCTL_"), bobEnv...)
		stdout, stderr, code := runCmd(t, cmd)
		if code != want {
			t.Fatalf("chatctl %q: exit %d, want %d\nstdout: %s\nstderr: %s", args, code, want, stdout, stderr)
		}
		return stdout
	}
	runEnv(0, "signup", "bob")
	runEnv(0, "login", "bob", "--device", "env")
	if out := runEnv(0, "whoami"); !strings.Contains(out, "server  "+a.GRPCAddr()) {
		t.Fatalf("whoami from the environment: %q", out)
	}

	alice.ok("send", "bob", "one")
	alice.ok("send", "bob", "two")
	// --json after the command, and after its flags.
	lines := jsonLines(t, runEnv(0, "sync", "--limit", "1", "--json"))
	if len(lines) != 2 || field(lines[1], "message", "text") != "two" {
		t.Fatalf("sync --json: %v", lines)
	}
	// The single-dash spelling, and --server/--config-dir after the command.
	dir := t.TempDir()
	bobEnv = nil // only flags now
	runEnv(0, "login", "bob", "-password", "password-of-bob", "-server", a.GRPCAddr(), "-config-dir="+dir)
	who := jsonLines(t, runEnv(0, "whoami", "--config-dir", dir, "-json"))
	if len(who) != 1 || who[0]["userId"] != "bob" || who[0]["server"] != a.GRPCAddr() {
		t.Fatalf("whoami -json: %v", who)
	}
	// A flag value that looks like a flag is left alone.
	if out := runEnv(0, "--config-dir", dir, "send", "alice", "--client-message-id", "-json", "hi"); !strings.Contains(out, "sent  dm:alice:bob") {
		t.Fatalf("send with the key -json: %q", out)
	}
	// The server stored at login is used when neither flag nor environment names one.
	if out := runEnv(0, "profile", "alice", "--config-dir", dir); !strings.Contains(out, "alice") {
		t.Fatalf("profile with the stored server: %q", out)
	}
	runEnv(2, "--config-dir", dir, "group", "add", "g:x", "carol", "--admin", "--member")
	runEnv(2, "--config-dir", dir, "profile", "set")
	runEnv(2, "--config-dir", dir, "group")
	runEnv(2, "--config-dir", dir, "help", "profile", "alice")
}

// TestWatchContacts: watch without USER says whom it watches (your
// contacts who added you back) and shows their current state first; with
// no contacts it fails instead of printing nothing.
func TestWatchContacts(t *testing.T) {
	a := startServer(t, "127.0.0.1:0", t.TempDir())
	alice, bob := newCLI(t, a.GRPCAddr()), newCLI(t, a.GRPCAddr())
	signUpAndLogIn(alice, "alice")
	signUpAndLogIn(bob, "bob")
	if errOut := alice.fails(1, "watch"); !strings.HasPrefix(errOut, "chatctl: FailedPrecondition: you have no contacts") {
		t.Fatalf("watch without contacts: %q", errOut)
	}
	bob.ok("contacts", "add", "alice")
	alice.ok("contacts", "add", "bob")

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	watch := alice.command(ctx, "watch", "--json")
	var stderr bytes.Buffer
	watch.Stderr = &stderr
	out, err := watch.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := watch.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	if !sc.Scan() {
		t.Fatalf("watch printed nothing; stderr: %s", &stderr)
	}
	first := jsonLines(t, sc.Text())
	if first[0]["userId"] != "bob" || first[0]["status"] != "PRESENCE_STATUS_OFFLINE" {
		t.Fatalf("first line of watch: %v", first)
	}
	_ = watch.Process.Signal(os.Interrupt)
	if err := watch.Wait(); err != nil {
		t.Fatalf("watch: %v; stderr: %s", err, &stderr)
	}
	if !strings.Contains(stderr.String(), "watching those of your contacts bob who have added you back") {
		t.Fatalf("watch stderr: %q", &stderr)
	}
}

// expectSome waits for a delivery of text, skipping other lines.
func (l *listener) expectSome(t *testing.T, text string) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case m, ok := <-l.lines:
			if !ok {
				t.Fatalf("listen exited before printing %q; stderr: %s", text, l.stderr)
			}
			if field(m, "delivery", "message", "text") == text {
				return
			}
		case <-deadline:
			t.Fatalf("listen printed nothing for %q; stderr: %s", text, l.stderr)
		}
	}
}

// TestListenEvictedDoesNotReconnect: five "chatctl listen" of one device
// (the server allows four streams per device): the oldest is closed with
// the STREAM_REPLACED reason and exits with a clear message instead of
// reconnecting and evicting the next one, forever; the other four keep
// receiving.
func TestListenEvictedDoesNotReconnect(t *testing.T) {
	a := startServer(t, "127.0.0.1:0", t.TempDir())
	alice, bob := newCLI(t, a.GRPCAddr()), newCLI(t, a.GRPCAddr())
	signUpAndLogIn(alice, "alice")
	signUpAndLogIn(bob, "bob")
	var ls []*listener
	for i := range 4 {
		ls = append(ls, startListen(t, bob))
		// Let it connect first: the listens share one device, so a message
		// the older ones acked before this one's stream opened is behind
		// the device's cursor and rightly not printed by it.
		time.Sleep(time.Second)
		alice.ok("send", "bob", fmt.Sprint("m", i))
		for _, l := range ls {
			l.expectSome(t, fmt.Sprint("m", i))
		}
	}
	fifth := startListen(t, bob)
	time.Sleep(time.Second)
	exited := make(chan error, 1)
	go func() { exited <- ls[0].cmd.Wait() }()
	select {
	case err := <-exited:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 {
			t.Fatalf("evicted listen exited with %v; stderr: %s", err, ls[0].stderr)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("the oldest listen did not exit; stderr: %s", ls[0].stderr)
	}
	stderr := ls[0].stderr.String()
	if !strings.Contains(stderr, "chatctl: ResourceExhausted: stopped without reconnecting: this device opened a newer stream") ||
		strings.Contains(stderr, "reconnecting in") {
		t.Fatalf("evicted listen stderr %q", stderr)
	}
	// No war: the four newest stay connected and keep receiving.
	alice.ok("send", "bob", "after")
	for _, l := range append(ls[1:], fifth) {
		l.expectSome(t, "after")
	}
	for _, l := range append(ls[1:], fifth) {
		l.interrupt(t)
		if strings.Contains(l.stderr.String(), "reconnecting") {
			t.Fatalf("a listener reconnected: %s", l.stderr)
		}
	}
}

// TestDevicesRevoke: "devices revoke DEVICE" and "devices revoke --others"
// log out other devices of the user; the revoked ones are refused.
func TestDevicesRevoke(t *testing.T) {
	a := startServer(t, "127.0.0.1:0", t.TempDir())
	laptop, phone, tablet := newCLI(t, a.GRPCAddr()), newCLI(t, a.GRPCAddr()), newCLI(t, a.GRPCAddr())
	signUpAndLogIn(laptop, "alice")
	phone.ok("login", "alice", "--password", "password-of-alice", "--device", "phone")
	tablet.ok("login", "alice", "--password", "password-of-alice", "--device", "tablet")
	laptop.fails(2, "devices", "revoke")
	var phoneID string
	for _, m := range jsonLines(t, laptop.ok("--json", "devices")) {
		if m["name"] == "phone" {
			phoneID, _ = m["deviceId"].(string)
		}
	}
	if out := laptop.ok("devices", "revoke", phoneID); !strings.Contains(out, "logged out device "+phoneID) {
		t.Fatalf("devices revoke: %q", out)
	}
	if out := phone.fails(1, "devices"); !strings.Contains(out, "Unauthenticated") {
		t.Fatalf("the revoked phone: %q", out)
	}
	if out := laptop.ok("devices", "revoke", "--others"); !strings.Contains(out, "logged out 1 other device(s)") {
		t.Fatalf("devices revoke --others: %q", out)
	}
	tablet.fails(1, "devices")
	if out := laptop.ok("devices"); !strings.Contains(out, "(this device)") || strings.Count(out, "\n") != 1 {
		t.Fatalf("laptop's devices: %q", out)
	}
}
