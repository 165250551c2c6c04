package main

import (
	"strings"
	"testing"
)

// chatctl push and mute against a server whose only provider is Web
// Push: a subscription on an allowed host is registered, shown and
// removed; one elsewhere is refused (exit 1, InvalidArgument); FCM is
// off (FailedPrecondition); previews and mutes round-trip.
func TestPushAndMute(t *testing.T) {
	a := startServer(t, "127.0.0.1:0", t.TempDir())
	alice, bob := newCLI(t, a.GRPCAddr()), newCLI(t, a.GRPCAddr())
	signUpAndLogIn(alice, "alice")
	signUpAndLogIn(bob, "bob")
	alice.ok("send", "bob", "hi")

	if out := bob.ok("push", "show"); out != "no push target\n" {
		t.Fatalf("push show: %q", out)
	}
	if out := bob.ok("push", "vapid-key"); len(strings.TrimSpace(out)) != 87 {
		t.Fatalf("vapid-key: %q (want 87 base64url characters: 65 bytes)", out)
	}
	keys := `"keys":{"p256dh":"BNcRdreALRFXTkOOUHK1EtK2wtaz5Ry4YfYCA_0QTpQtUbVlUls0VJXg7A8u-Ts1XbjhazAkj7I99e8QcYP7DkM","auth":"tBHItJI5svbpez7KI4CCXg"}`
	if errOut := bob.fails(1, "push", "register", "--webpush-json", `{"endpoint":"https://169.254.169.254/x",`+keys+`}`); !strings.Contains(errOut, "not an allowed push service") {
		t.Fatalf("register on a non-allowed host: %q", errOut)
	}
	if errOut := bob.fails(1, "push", "register", "--fcm-token", "tok"); !strings.Contains(errOut, "not configured") {
		t.Fatalf("register fcm without credentials: %q", errOut)
	}
	ep := "https://updates.push.services.mozilla.com/wpush/v2/gAAAAexample"
	if out := bob.ok("push", "register", "--webpush-json", `{"endpoint":"`+ep+`",`+keys+`}`); out != "registered webpush  "+ep+"\n" {
		t.Fatalf("register: %q", out)
	}
	if out := bob.ok("push", "show"); out != "webpush  "+ep+"\n" {
		t.Fatalf("push show: %q", out)
	}
	bob.ok("push", "remove")
	if out := bob.ok("push", "show"); out != "no push target\n" {
		t.Fatalf("push show after remove: %q", out)
	}
	if out := bob.ok("push", "previews", "on"); out != "push previews on\n" {
		t.Fatalf("previews on: %q", out)
	}
	if out := bob.ok("mute", "alice"); out != "muted dm:alice:bob forever\n" {
		t.Fatalf("mute: %q", out)
	}
	if out := bob.ok("--json", "channels"); !strings.Contains(out, `"muted":true`) {
		t.Fatalf("channels after mute: %q", out)
	}
	if out := bob.ok("channels"); !strings.Contains(out, "  muted\n") {
		t.Fatalf("channels (text) after mute: %q", out)
	}
	if out := bob.ok("mute", "alice", "--for", "8h"); !strings.HasPrefix(out, "muted dm:alice:bob until ") {
		t.Fatalf("mute --for: %q", out)
	}
	bob.ok("unmute", "alice")
	// A mute that would end at once is a usage error, and mutes nothing
	// (before: --for 0s or -1h muted forever).
	for _, args := range [][]string{{"--for", "0s"}, {"--for", "-1h"}, {"--until", "2020-01-01T00:00:00Z"}} {
		if errOut := bob.fails(2, append([]string{"mute", "alice"}, args...)...); !strings.Contains(errOut, "--") {
			t.Fatalf("mute %v: %q", args, errOut)
		}
	}
	if out := bob.ok("--json", "channels"); strings.Contains(out, `"muted"`) {
		t.Fatalf("channels after refused mutes: %q", out)
	}
	if out := bob.ok("--json", "channels"); strings.Contains(out, `"muted"`) {
		t.Fatalf("channels after unmute: %q", out)
	}
}
