package app_test

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
)

// watchPresence subscribes u to the presence of users and returns the
// events as they come.
func watchPresence(t *testing.T, u *user, users ...string) <-chan *chatv1.Presence {
	t.Helper()
	ctx, cancel := context.WithCancel(u.ctx(context.Background()))
	t.Cleanup(cancel)
	s, err := chatv1.NewPresenceServiceClient(u.cc).Subscribe(ctx, &chatv1.SubscribeRequest{UserIds: users})
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan *chatv1.Presence, 64)
	go func() {
		defer close(ch)
		for {
			r, err := s.Recv()
			if err != nil {
				return
			}
			ch <- r.GetPresence()
		}
	}()
	return ch
}

// awaitStatus waits (up to limit) for an event of user with status st.
func awaitStatus(t *testing.T, ch <-chan *chatv1.Presence, user string, st chatv1.PresenceStatus, limit time.Duration) *chatv1.Presence {
	t.Helper()
	deadline := time.After(limit)
	for {
		select {
		case p, ok := <-ch:
			if !ok {
				t.Fatalf("presence stream ended before %s went %s", user, st)
			}
			if p.GetUserId() == user && p.GetStatus() == st {
				return p
			}
		case <-deadline:
			t.Fatalf("%s did not go %s within %s", user, st, limit)
		}
	}
}

func metric(t *testing.T, httpAddr, name string) string {
	t.Helper()
	resp, err := http.Get("http://" + httpAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, name+" ") {
			return strings.TrimPrefix(line, name+" ")
		}
	}
	return ""
}

// TestCase_C201: alice's only device freezes (SIGSTOP on the client
// process: no FIN, no more heartbeats). Her contact sees her offline once
// the grace period has passed since her last heartbeat, with last_active_at
// at that heartbeat, and the server frees the stream.
func TestCase_C201(t *testing.T) {
	const heartbeat, grace = 300 * time.Millisecond, 2 * time.Second
	p := startChatd(t, t.TempDir(), "--heartbeat-interval", heartbeat.String(), "--presence-grace", grace.String())
	cc := dial(t, p.grpc)
	alice := signUpLogIn(t, cc, "alice", "setup")
	bob := signUpLogIn(t, cc, "bob", "phone")
	if _, err := chatv1.NewAccountServiceClient(cc).AddContact(alice.ctx(context.Background()), &chatv1.AddContactRequest{Username: "bob"}); err != nil {
		t.Fatal(err)
	}
	events := watchPresence(t, bob, "alice")
	awaitStatus(t, events, "alice", chatv1.PresenceStatus_PRESENCE_STATUS_OFFLINE, 10*time.Second)

	// alice's device: a real chatctl listen process.
	cfg := t.TempDir()
	ctl := func(args ...string) *exec.Cmd {
		c := exec.Command(binary(t, "chatctl"), append([]string{"--server", p.grpc, "--config-dir", cfg}, args...)...)
		c.Env = os.Environ()
		return c
	}
	if out, err := ctl("login", "alice", "--password", "password-alice", "--device", "phone").CombinedOutput(); err != nil {
		t.Fatalf("chatctl login: %v\n%s", err, out)
	}
	listen := ctl("listen")
	stdout, _ := listen.StdoutPipe()
	if err := listen.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _, _ = io.Copy(io.Discard, bufio.NewReader(stdout)) }()
	t.Cleanup(func() {
		_ = listen.Process.Signal(syscall.SIGCONT)
		_ = listen.Process.Kill()
		_ = listen.Wait()
	})
	awaitStatus(t, events, "alice", chatv1.PresenceStatus_PRESENCE_STATUS_ONLINE, 10*time.Second)

	// Let a few heartbeats pass, then freeze the device.
	time.Sleep(3 * heartbeat)
	if err := listen.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	frozen := time.Now()
	off := awaitStatus(t, events, "alice", chatv1.PresenceStatus_PRESENCE_STATUS_OFFLINE, grace+30*time.Second)
	last := off.GetLastActiveAt().AsTime()
	if last.After(frozen) || last.Before(frozen.Add(-heartbeat-time.Second)) {
		t.Fatalf("last_active_at %s is not alice's last heartbeat before the freeze at %s", last, frozen)
	}
	// The server ended the frozen stream and freed it.
	deadline := time.Now().Add(30 * time.Second)
	for metric(t, p.http, "chatd_streams_open") != "0" {
		if time.Now().After(deadline) {
			t.Fatalf("chatd_streams_open = %s after the device froze", metric(t, p.http, "chatd_streams_open"))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestPresenceLogoutIsImmediate: logging out takes the user offline at once
// (the default grace is a minute; the event comes long before), a second
// device keeps the user online, and a user who is not a contact cannot
// subscribe.
func TestPresenceLogoutIsImmediate(t *testing.T) {
	a := startApp(t, t.TempDir())
	cc := dial(t, a.GRPCAddr())
	alice := signUpLogIn(t, cc, "alice", "phone")
	laptop := logIn(t, cc, "alice", "laptop")
	bob := signUpLogIn(t, cc, "bob", "phone")
	carol := signUpLogIn(t, cc, "carol", "phone")
	if _, err := chatv1.NewAccountServiceClient(cc).AddContact(alice.ctx(context.Background()), &chatv1.AddContactRequest{Username: "bob"}); err != nil {
		t.Fatal(err)
	}
	events := watchPresence(t, bob, "alice")
	awaitStatus(t, events, "alice", chatv1.PresenceStatus_PRESENCE_STATUS_OFFLINE, 10*time.Second)
	openStream(t, alice)
	ls := openStream(t, laptop)
	awaitStatus(t, events, "alice", chatv1.PresenceStatus_PRESENCE_STATUS_ONLINE, 10*time.Second)

	// The laptop leaves cleanly: alice stays online (her phone is there).
	if err := ls.s.CloseSend(); err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := ls.s.Recv(); err != nil {
			break
		}
	}
	if _, err := chatv1.NewAccountServiceClient(cc).LogOut(alice.ctx(context.Background()), &chatv1.LogOutRequest{}); err != nil {
		t.Fatal(err)
	}
	off := awaitStatus(t, events, "alice", chatv1.PresenceStatus_PRESENCE_STATUS_OFFLINE, 10*time.Second)
	if off.GetLastActiveAt() == nil {
		t.Fatal("offline without last_active_at")
	}

	// carol is not alice's contact.
	cs := watchPresence(t, carol, "alice")
	if _, ok := <-cs; ok {
		t.Fatal("a non-contact received alice's presence")
	}
}
