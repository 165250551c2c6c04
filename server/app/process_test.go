package app_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chatd/chatd/client"
	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/chatd/chatd/server/store"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"nhooyr.io/websocket"
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// binary builds cmd/chatd and cmd/chatctl once per test run and returns the
// path of the named one.
func binary(t *testing.T, name string) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "chatd-bin-")
		if buildErr != nil {
			return
		}
		out, err := exec.Command("go", "build", "-o", binDir+"/", "github.com/chatd/chatd/cmd/chatd", "github.com/chatd/chatd/cmd/chatctl").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(binDir, name)
}

func chatdBinary(t *testing.T) string { return binary(t, "chatd") }

var (
	faultOnce sync.Once
	faultErr  error
)

// faultBinary builds cmd/chatd with -tags chatd_faults once per test run
// (CHATD_FAULT_KILL kills it between two write steps of a batch; see
// server/app/faults_on.go) and returns its path.
func faultBinary(t *testing.T) string {
	t.Helper()
	binary(t, "chatd") // makes binDir
	faultOnce.Do(func() {
		out, err := exec.Command("go", "build", "-tags", "chatd_faults", "-o", filepath.Join(binDir, "faults")+"/", "github.com/chatd/chatd/cmd/chatd").CombinedOutput()
		if err != nil {
			faultErr = fmt.Errorf("go build -tags chatd_faults: %v\n%s", err, out)
		}
	})
	if faultErr != nil {
		t.Fatal(faultErr)
	}
	return filepath.Join(binDir, "faults", "chatd")
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}

// proc is a chatd process.
type proc struct {
	cmd    *exec.Cmd
	grpc   string
	http   string
	stderr *bytes.Buffer
	done   chan error
}

// startChatd runs the chatd binary on dataDir and waits until it is SERVING.
func startChatd(t *testing.T, dataDir string, flags ...string) *proc {
	t.Helper()
	return startChatdWith(t, chatdBinary(t), nil, dataDir, flags...)
}

// startChatdWith runs the chatd binary bin with env added to the
// environment, and waits until it is SERVING.
func startChatdWith(t *testing.T, bin string, env []string, dataDir string, flags ...string) *proc {
	t.Helper()
	p := &proc{grpc: "127.0.0.1:" + freePort(t), http: "127.0.0.1:" + freePort(t), stderr: &bytes.Buffer{}, done: make(chan error, 1)}
	// A short drain window (a flag given later wins): a SIGTERM ends the
	// process within about a second, as before drains existed.
	p.cmd = exec.Command(bin, append([]string{"--data-dir", dataDir, "--http-addr", p.http, "--drain-window", "1s"}, flags...)...)
	p.cmd.Env = append(append(os.Environ(), env...), "CHATD_GRPC_ADDR="+p.grpc) // the environment sets flags too
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
	})
	cc := dial(t, p.grpc)
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		h, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err == nil && h.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return p
		}
		select {
		case err := <-p.done:
			p.done <- err // for Cleanup
			t.Fatalf("chatd exited early: %v\n%s", err, p.stderr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("chatd not serving after 30s: %v\n%s", err, p.stderr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (p *proc) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-p.done:
		p.done <- err // keep it for Cleanup
		return err
	case <-time.After(30 * time.Second):
		t.Fatalf("chatd did not exit\n%s", p.stderr)
		return nil
	}
}

// TestGracefulShutdown: SIGTERM drains: every open stream gets a Drain
// frame (reconnect elsewhere) within the drain window, new streams are
// refused, what is left when the window is over ends with Unavailable, and
// the process exits 0.
func TestGracefulShutdown(t *testing.T) {
	p := startChatd(t, t.TempDir(), "--drain-window", "1s")
	cc := dial(t, p.grpc)
	alice := signUpLogIn(t, cc, "alice", "phone")
	st := openStream(t, alice)
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	drained := false
	for {
		f, err := st.s.Recv()
		if err != nil {
			if status.Code(err) != codes.Unavailable {
				t.Fatalf("stream ended with %v, want Unavailable", err)
			}
			break
		}
		if f.GetDrain() != nil {
			drained = true
			if err := openErr(alice); status.Code(err) != codes.Unavailable {
				t.Fatalf("new stream while draining: %v, want Unavailable", err)
			}
		}
	}
	if !drained {
		t.Fatal("the stream ended without a Drain frame")
	}
	if err := p.wait(t); err != nil {
		t.Fatalf("chatd exit after SIGTERM: %v\n%s", err, p.stderr)
	}
}

// TestSecondSignalCutsDrainShort: a second SIGTERM during a drain stops
// chatd at once, long before its drain window (here 5 minutes) is over: the
// stream left ends with Unavailable (SERVER_SHUTDOWN), a message
// acknowledged during the
// drain is kept, and the process exits 0.
func TestSecondSignalCutsDrainShort(t *testing.T) {
	dir := t.TempDir()
	// A silent stream is not closed for 10 minutes either: only the second
	// signal can end this drain early.
	p := startChatd(t, dir, "--drain-window", "5m", "--presence-grace", "10m")
	cc := dial(t, p.grpc)
	alice := signUpLogIn(t, cc, "alice", "phone")
	signUpLogIn(t, cc, "bob", "phone")
	st := openStream(t, alice)
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for {
		f, err := st.s.Recv()
		if err != nil {
			t.Fatalf("stream ended before its Drain frame: %v", err)
		}
		if f.GetDrain() != nil {
			break
		}
	}
	ack := st.send("bob", "drain-1", "sent while draining") // a draining server still accepts sends on open streams
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	ended := make(chan error, 1)
	go func() {
		for {
			if _, err := st.s.Recv(); err != nil {
				ended <- err
				return
			}
		}
	}()
	select {
	case err := <-ended:
		if status.Code(err) != codes.Unavailable || client.Reason(err) != store.ReasonServerShutdown {
			t.Fatalf("stream ended with %v (reason %q), want Unavailable SERVER_SHUTDOWN", err, client.Reason(err))
		}
	case <-time.After(30 * time.Second): // the drain window is 5 minutes
		t.Fatalf("the stream was still open 30 s after the second SIGTERM\n%s", p.stderr)
	}
	if err := p.wait(t); err != nil { // fails after 30 s, far inside the 5 minute window
		t.Fatalf("chatd exit after a second SIGTERM: %v\n%s", err, p.stderr)
	}
	p2 := startChatd(t, dir)
	hist, err := chatv1.NewChatServiceClient(dial(t, p2.grpc)).GetHistory(alice.withConn(dial(t, p2.grpc)).ctx(context.Background()),
		&chatv1.GetHistoryRequest{ToUser: "bob", PageSize: 10})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(hist.GetMessages()); n != 1 || hist.GetMessages()[0].GetMessageId() != ack.GetMessageId() {
		t.Fatalf("history after the cut-short drain: %v, want the one acknowledged message %d", hist.GetMessages(), ack.GetMessageId())
	}
}

// TestCase_C003: the sender has its ack; chatd is killed with SIGKILL before
// fan-out can finish; after a restart the message is in history and every
// recipient device gets it once, by sync.
func TestCase_C003(t *testing.T) {
	dir := t.TempDir()
	p := startChatd(t, dir)
	cc := dial(t, p.grpc)
	alice := signUpLogIn(t, cc, "alice", "phone")
	bob1 := signUpLogIn(t, cc, "bob", "phone")
	bob2 := logIn(t, cc, "bob", "laptop")
	as := openStream(t, alice)

	const n = 50
	acks := make([]*chatv1.SendAck, n)
	for i := range n {
		acks[i] = as.send("bob", fmt.Sprintf("c003-%d", i), fmt.Sprintf("message %d", i))
	}
	if err := p.cmd.Process.Kill(); err != nil { // SIGKILL right after the last ack
		t.Fatal(err)
	}
	p.wait(t)

	p2 := startChatd(t, dir)
	cc2 := dial(t, p2.grpc)
	hist, err := chatv1.NewChatServiceClient(cc2).GetHistory(alice.withConn(cc2).ctx(context.Background()),
		&chatv1.GetHistoryRequest{ToUser: "bob", PageSize: 500})
	if err != nil {
		t.Fatal(err)
	}
	if len(hist.GetMessages()) != n {
		t.Fatalf("history after SIGKILL has %d messages, want %d", len(hist.GetMessages()), n)
	}
	for i, m := range hist.GetMessages() {
		if m.GetMessageId() != acks[i].GetMessageId() {
			t.Fatalf("history[%d] = %d, acked %d", i, m.GetMessageId(), acks[i].GetMessageId())
		}
	}
	for _, dev := range []*user{bob1, bob2} {
		st := openStream(t, dev.withConn(cc2))
		ds := st.syncAll(st.welcome.GetCursor(), 0)
		if len(ds) != n {
			t.Fatalf("%s synced %d messages, want %d", dev.device, len(ds), n)
		}
		if err := seqsContiguous(ds, st.welcome.GetCursor()); err != nil {
			t.Fatal(err)
		}
		for i, d := range ds {
			if d.GetMessage().GetMessageId() != acks[i].GetMessageId() {
				t.Fatalf("%s: delivery %d is message %d, want %d", dev.device, i, d.GetMessage().GetMessageId(), acks[i].GetMessageId())
			}
		}
	}
}

// TestCase_C005: a device syncs and acks; the server restarts; 10 more
// messages arrive; a sync from the stored cursor returns exactly those 10,
// and every message_id issued after the restart is larger than every one
// issued before it.
func TestCase_C005(t *testing.T) {
	dir := t.TempDir()
	p := startChatd(t, dir)
	cc := dial(t, p.grpc)
	alice := signUpLogIn(t, cc, "alice", "phone")
	bob := signUpLogIn(t, cc, "bob", "phone")
	as := openStream(t, alice)
	var before uint64
	for i := range 5 {
		before = max(before, as.send("bob", fmt.Sprintf("old-%d", i), "old").GetMessageId())
	}
	bs := openStream(t, bob)
	ds := bs.syncAll(bs.welcome.GetCursor(), 0)
	if len(ds) != 5 {
		t.Fatalf("first sync: %d messages, want 5", len(ds))
	}
	cursor := bs.ack(ds[len(ds)-1].GetInboxSeq())

	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := p.wait(t); err != nil {
		t.Fatalf("exit: %v", err)
	}
	p2 := startChatd(t, dir)
	cc2 := dial(t, p2.grpc)
	as2 := openStream(t, alice.withConn(cc2))
	for i := range 10 {
		ack := as2.send("bob", fmt.Sprintf("new-%d", i), fmt.Sprintf("new %d", i))
		if ack.GetMessageId() <= before {
			t.Fatalf("message_id %d after restart is not above %d from before it", ack.GetMessageId(), before)
		}
	}
	bs2 := openStream(t, bob.withConn(cc2))
	if bs2.welcome.GetCursor() != cursor {
		t.Fatalf("stored cursor %d, want %d", bs2.welcome.GetCursor(), cursor)
	}
	ds = bs2.syncAll(bs2.welcome.GetCursor(), 0)
	if len(ds) != 10 {
		t.Fatalf("sync after restart: %d messages %v, want the 10 new ones", len(ds), texts(ds))
	}
	for i, d := range ds {
		if want := fmt.Sprintf("new %d", i); d.GetMessage().GetText() != want {
			t.Fatalf("delivery %d = %q, want %q", i, d.GetMessage().GetText(), want)
		}
	}
}

// TestMain removes the binaries built for the run.
func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		_ = os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// TestLogsJSONIncludeGRPCLines: with --log-format json every line chatd
// writes is JSON, also grpc-go's and the grpc-web wrapper's own (grpclog):
// a WebSocket closed before its first message, which any client can cause
// without a token, used to print a plain-text "ERROR: Unable to read first
// websocket message" line.
func TestLogsJSONIncludeGRPCLines(t *testing.T) {
	p := startChatd(t, t.TempDir(), "--log-format", "json", "--log-level", "debug")
	for range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		conn, _, err := websocket.Dial(ctx, "ws://"+p.http+"/chat.v1.ChatService/Chat", &websocket.DialOptions{Subprotocols: []string{"grpc-websockets"}})
		if err != nil {
			cancel()
			t.Fatalf("websocket upgrade: %v", err)
		}
		_ = conn.CloseNow()
		cancel()
	}
	time.Sleep(500 * time.Millisecond) // the server notices the closes
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := p.wait(t); err != nil {
		t.Fatalf("chatd exit: %v\n%s", err, p.stderr)
	}
	grpcLines := 0
	for _, line := range strings.Split(strings.TrimSpace(p.stderr.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("a log line is not JSON: %q\nall:\n%s", line, p.stderr)
		}
		if m["component"] == "grpc" {
			grpcLines++
		}
	}
	if grpcLines == 0 {
		t.Fatalf("no grpc-go line reached the JSON log (at debug level some always do):\n%s", p.stderr)
	}
}
