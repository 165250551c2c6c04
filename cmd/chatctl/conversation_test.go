package main

import (
	"fmt"
	"strings"
	"testing"
)

func TestReadEditDelete(t *testing.T) {
	a := startServer(t, "127.0.0.1:0", t.TempDir())
	alice, phone, laptop := newCLI(t, a.GRPCAddr()), newCLI(t, a.GRPCAddr()), newCLI(t, a.GRPCAddr())
	signUpAndLogIn(alice, "alice")
	signUpAndLogIn(phone, "bob")
	laptop.ok("login", "bob", "--password", "password-of-bob", "--device", "bob-laptop")

	var ids []string
	for i := range 3 {
		ack := jsonLines(t, alice.ok("--json", "send", "bob", fmt.Sprint("msg ", i)))
		ids = append(ids, ack[0]["messageId"].(string))
	}

	// Unread counts, text and JSON.
	if out := phone.ok("channels"); !strings.Contains(out, "dm:alice:bob  direct  alice  unread 3") || !strings.Contains(out, "total unread 3\n") {
		t.Fatalf("bob's channels: %q", out)
	}
	// --json channels is Channel objects only; the total is --summary's.
	lines := jsonLines(t, phone.ok("--json", "channels"))
	if len(lines) != 1 || lines[0]["unreadCount"] != float64(3) || field(lines[0], "lastMessage", "text") != "msg 2" || lines[0]["totalUnread"] != nil {
		t.Fatalf("bob's json channels: %v", lines)
	}
	sum := jsonLines(t, phone.ok("channels", "--summary", "--json"))
	if len(sum) != 1 || sum[0]["totalUnread"] != float64(3) || sum[0]["totalCapped"] != false || sum[0]["channelId"] != nil {
		t.Fatalf("bob's json channels --summary: %v", sum)
	}
	if out := phone.ok("channels", "--summary"); out != "total unread 3\n" {
		t.Fatalf("bob's channels --summary: %q", out)
	}

	// Reading on the laptop clears the phone's count.
	if out := laptop.ok("read", "alice"); !strings.Contains(out, "up to "+ids[2]) || !strings.Contains(out, "unread 0  total unread 0") {
		t.Fatalf("read: %q", out)
	}
	if out := phone.ok("channels"); !strings.Contains(out, "unread 0") || !strings.Contains(out, "total unread 0") {
		t.Fatalf("bob's phone after reading on the laptop: %q", out)
	}
	ev := jsonLines(t, phone.ok("--json", "read", "dm:alice:bob", "--up-to", ids[0]))
	if len(ev) != 1 || ev[0]["channelId"] != "dm:alice:bob" || ev[0]["readUpTo"] != ids[2] {
		t.Fatalf("json read: %v", ev)
	}
	rs := jsonLines(t, alice.ok("--json", "receipts", "bob"))
	if len(rs) != 2 || rs[1]["userId"] != "bob" || rs[1]["readUpTo"] != ids[2] || rs[1]["deliveredUpTo"] != ids[2] {
		t.Fatalf("json receipts: %v", rs)
	}
	if out := alice.ok("receipts", "dm:alice:bob"); !strings.Contains(out, "bob  delivered up to "+ids[2]+"  read up to "+ids[2]) {
		t.Fatalf("receipts: %q", out)
	}

	// Edit and delete; history shows the current state.
	if out := alice.ok("edit", "bob", ids[0], "msg 0,", "fixed"); !strings.HasPrefix(out, "edited  dm:alice:bob  message_id "+ids[0]) {
		t.Fatalf("edit: %q", out)
	}
	del := jsonLines(t, alice.ok("--json", "delete", "bob", ids[1]))
	if len(del) != 1 || del[0]["channelId"] != "dm:alice:bob" {
		t.Fatalf("json delete: %v", del)
	}
	if out := phone.ok("delete", "alice", ids[2], "--for-me"); !strings.HasPrefix(out, "deleted for you  dm:alice:bob  message_id "+ids[2]) {
		t.Fatalf("delete --for-me: %q", out)
	}
	out := phone.ok("history", "alice")
	if !strings.Contains(out, "alice: msg 0, fixed (edited)") || !strings.Contains(out, "alice: (this message was deleted)") || strings.Contains(out, "msg 2") {
		t.Fatalf("bob's history: %q", out)
	}
	if out := alice.ok("history", "bob"); !strings.Contains(out, "msg 2") {
		t.Fatalf("alice's history lost bob's delete-for-me: %q", out)
	}
	// The laptop syncs the edit and deletes like messages.
	if out := laptop.ok("sync"); !strings.Contains(out, "(edit of "+ids[0]+") msg 0, fixed") || !strings.Contains(out, "(deleted "+ids[1]+")") ||
		!strings.Contains(out, "(deleted "+ids[2]+" for you)") {
		t.Fatalf("laptop sync: %q", out)
	}

	// Refusals and usage errors.
	if errOut := phone.fails(1, "edit", "alice", ids[0], "mine now"); !strings.HasPrefix(errOut, "chatctl: PermissionDenied: ") {
		t.Errorf("editing alice's message: %q", errOut)
	}
	if errOut := alice.fails(1, "edit", "bob", ids[1], "again"); !strings.HasPrefix(errOut, "chatctl: FailedPrecondition: ") {
		t.Errorf("editing a deleted message: %q", errOut)
	}
	if errOut := alice.fails(1, "delete", "bob", "12345"); !strings.HasPrefix(errOut, "chatctl: NotFound: ") {
		t.Errorf("deleting an unknown message: %q", errOut)
	}
	if errOut := alice.fails(1, "read", "nobody"); !strings.HasPrefix(errOut, "chatctl: NotFound: ") {
		t.Errorf("reading a channel with an unknown user: %q", errOut)
	}
	alice.fails(2, "read")
	alice.fails(2, "edit", "bob", "not-a-number", "x")
	alice.fails(2, "edit", "bob", ids[0])
	alice.fails(2, "delete", "bob")
	alice.fails(2, "receipts", "set")
	alice.fails(2, "receipts", "set", "--hide", "--show")

	// Hiding read receipts.
	if out := phone.ok("receipts", "set", "--hide"); out != "read receipts hidden\n" {
		t.Fatalf("receipts set: %q", out)
	}
	alice.ok("send", "bob", "one more")
	phone.ok("read", "alice")
	if out := alice.ok("receipts", "bob"); !strings.Contains(out, "read up to "+ids[2]+"\n") {
		t.Fatalf("receipts while hidden: %q", out)
	}
}
