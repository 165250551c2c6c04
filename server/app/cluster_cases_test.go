package app_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestCase_C001_Cluster: a device's send is stored but its ack never
// reaches the device; the device retries the same client_message_id on
// the other servers. Exactly one message is stored, every retry is
// answered with its message_id, and every recipient device (and the
// sender's own) receives it once.
func TestCase_C001_Cluster(t *testing.T) {
	c := newCluster(t, []string{"s1", "s2", "s3"})
	setup := signUpAll(t, c.cc("s1"), "alice", "bob")
	alice := c.device("alice", "phone", "s1")
	bob2 := c.device("bob", "phone", "s2")
	bob3 := c.device("bob", "laptop", "s3")
	l := newLedger()
	tg := dm("bob", "alice")

	// X: stored on s1 (the ack is read, then taken as lost), retried on s2
	// and on s3 over new streams of the same device.
	first, err := alice.send(tg, "c001-x", "only once")
	if err != nil {
		t.Fatal(err)
	}
	if first.GetDuplicate() {
		t.Fatal("first send answered as a duplicate")
	}
	l.record(t, "alice", tg, "c001-x", "only once", first)
	for _, srv := range []string{"s2", "s3"} {
		alice.drop()
		alice.connect(c, srv)
		ack, err := alice.send(tg, "c001-x", "only once")
		if err != nil {
			t.Fatalf("retry on %s: %v", srv, err)
		}
		if ack.GetMessageId() != first.GetMessageId() || ack.GetChannelId() != first.GetChannelId() || !ack.GetDuplicate() {
			t.Errorf("retry on %s answered %v, want the original message %d as a duplicate", srv, ack, first.GetMessageId())
		}
	}

	// Y: the stream is cut after the message is stored (bob has it) but
	// before the device read its ack; retried on s1, then on s2.
	cs, _, err := alice.sendAsync(tg, "c001-y", "cut before the ack")
	if err != nil {
		t.Fatal(err)
	}
	var y uint64
	deadline := time.Now().Add(30 * time.Second)
	for y == 0 {
		for _, dl := range bob2.snapshot() {
			if dl.GetMessage().GetClientMessageId() == "c001-y" {
				y = dl.GetMessage().GetMessageId()
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("bob never received c001-y")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cs.cancel() // the ack, if it came, is never read
	for _, srv := range []string{"s1", "s2"} {
		alice.connect(c, srv)
		ack, err := alice.send(tg, "c001-y", "cut before the ack")
		if err != nil {
			t.Fatalf("retry of y on %s: %v", srv, err)
		}
		if ack.GetMessageId() != y || !ack.GetDuplicate() {
			t.Errorf("retry of y on %s answered %v, want message %d as a duplicate", srv, ack, y)
		}
		l.record(t, "alice", tg, "c001-y", "cut before the ack", ack)
	}

	awaitAll(t, l, time.Minute, alice, bob2, bob3)
	msgs := checkHistory(t, l, setup["bob"], dmChannel("alice", "bob"))
	if len(msgs) != 2 {
		t.Errorf("history holds %d messages, want 2 (x and y once each)", len(msgs))
	}
}

// TestCase_C004_Cluster: one sender pipelines 100 messages into a group
// without waiting for acks; the other members' devices are on two other
// servers. Every device sees the 100 in the order sent, with increasing
// message_ids.
func TestCase_C004_Cluster(t *testing.T) {
	c := newCluster(t, []string{"s1", "s2", "s3"})
	setup := signUpAll(t, c.cc("s1"), "alice", "bob", "carol")
	group := createGroup(t, setup["alice"], "pipelined", "bob", "carol")
	alice := c.device("alice", "phone", "s1")
	bob2 := c.device("bob", "phone", "s2")
	bob3 := c.device("bob", "laptop", "s3")
	carol := c.device("carol", "phone", "s3")
	l := newLedger()

	const n = 100
	type pending struct {
		cs *cstream
		ch <-chan *chatv1.ServerFrame
	}
	sent := make([]pending, n)
	for i := range n { // all frames out before any ack is read
		cs, ch, err := alice.sendAsync(group, fmt.Sprintf("c004-%03d", i), fmt.Sprintf("pipelined %d", i))
		if err != nil {
			t.Fatal(err)
		}
		sent[i] = pending{cs, ch}
	}
	var last uint64
	for i, p := range sent {
		f, err := p.cs.await(p.ch)
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		ack := f.GetSendAck()
		if ack.GetMessageId() <= last {
			t.Errorf("message %d acked with message_id %d after %d", i, ack.GetMessageId(), last)
		}
		last = ack.GetMessageId()
		l.record(t, "alice", group, fmt.Sprintf("c004-%03d", i), fmt.Sprintf("pipelined %d", i), ack)
	}
	awaitAll(t, l, time.Minute, alice, bob2, bob3, carol)
	for _, d := range []*device{alice, bob2, bob3, carol} {
		i := 0
		for _, dl := range d.snapshot() {
			if dl.GetMessage().GetChannelId() != group.channel {
				continue
			}
			if want := fmt.Sprintf("c004-%03d", i); dl.GetMessage().GetClientMessageId() != want {
				t.Errorf("%s: delivery %d of the group is %s, want %s", d.name(), i, dl.GetMessage().GetClientMessageId(), want)
			}
			i++
		}
		if i != n {
			t.Errorf("%s: %d group deliveries, want %d", d.name(), i, n)
		}
	}
	checkHistory(t, l, setup["alice"], group.channel)
}

// addContact makes `contact` a contact of u (so contact may see u's
// presence).
func addContact(t *testing.T, u *user, contact string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := chatv1.NewAccountServiceClient(u.cc).AddContact(u.ctx(ctx), &chatv1.AddContactRequest{Username: contact}); err != nil {
		t.Fatalf("AddContact %s -> %s: %v", u.name, contact, err)
	}
}

// getPresence reads one user's presence as u sees it.
func getPresence(t *testing.T, u *user, of string) *chatv1.Presence {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := chatv1.NewPresenceServiceClient(u.cc).GetPresence(u.ctx(ctx), &chatv1.GetPresenceRequest{UserIds: []string{of}})
	if err != nil {
		t.Fatalf("GetPresence %s by %s: %v", of, u.name, err)
	}
	for _, p := range resp.GetPresences() {
		if p.GetUserId() == of {
			return p
		}
	}
	t.Fatalf("GetPresence %s by %s: not in %v", of, u.name, resp.GetPresences())
	return nil
}

// noStatus fails if an event of user with status st arrives within d.
func noStatus(t *testing.T, ch <-chan *chatv1.Presence, user string, st chatv1.PresenceStatus, d time.Duration, why string) {
	t.Helper()
	end := time.After(d)
	for {
		select {
		case p, ok := <-ch:
			if !ok {
				t.Fatalf("presence stream ended (%s)", why)
			}
			if p.GetUserId() == user && p.GetStatus() == st {
				t.Fatalf("%s went %s: %s", user, st, why)
			}
		case <-end:
			return
		}
	}
}

// TestCase_C202: alice is connected to s1; her contact bob watches her
// presence through s2; s1 is killed with SIGKILL. Bob sees her offline
// within the grace period plus the presence lease (not minutes later, not
// never), with last_active_at no later than the kill; when she connects
// to s3 he sees her online again.
func TestCase_C202(t *testing.T) {
	const grace = 3 * time.Second
	c := newCluster(t, []string{"s1", "s2", "s3"}, "--heartbeat-interval", "300ms", "--presence-grace", grace.String())
	setup := signUpAll(t, c.cc("s2"), "alice", "bob")
	addContact(t, setup["alice"], "bob")
	events := watchPresence(t, setup["bob"].withConn(c.cc("s2")), "alice")
	awaitStatus(t, events, "alice", chatv1.PresenceStatus_PRESENCE_STATUS_OFFLINE, 30*time.Second)

	alice := c.device("alice", "phone", "s1")
	awaitStatus(t, events, "alice", chatv1.PresenceStatus_PRESENCE_STATUS_ONLINE, 30*time.Second)

	c.kill("s1")
	killed := time.Now()
	// Lease TTL 15 s + sweep interval 5 s (docs/presence.md), with room.
	off := awaitStatus(t, events, "alice", chatv1.PresenceStatus_PRESENCE_STATUS_OFFLINE, grace+60*time.Second)
	t.Logf("offline %v after the SIGKILL", time.Since(killed).Round(time.Millisecond))
	if la := off.GetLastActiveAt(); la == nil || la.AsTime().After(killed.Add(time.Second)) {
		t.Errorf("offline with last_active_at %v, want at most the kill time %v", la.AsTime(), killed)
	}

	alice.connect(c, "s3")
	awaitStatus(t, events, "alice", chatv1.PresenceStatus_PRESENCE_STATUS_ONLINE, 30*time.Second)
	if p := getPresence(t, setup["bob"].withConn(c.cc("s3")), "alice"); p.GetStatus() != chatv1.PresenceStatus_PRESENCE_STATUS_ONLINE {
		t.Errorf("GetPresence through s3: %v", p)
	}
}

// TestPresence_Cluster: presence across three servers. Bob watches
// through s2. Alice (s1) is online soon after she connects; her second
// device (s3) keeps her online when the first leaves; logging out (through
// s2, the device's stream being on s3) takes her offline at once (the
// grace is 30 s) and ends that stream; a user who is not her contact
// cannot subscribe; a user who hides presence shows as offline while
// connected, and online again when he shows it.
func TestPresence_Cluster(t *testing.T) {
	c := newCluster(t, []string{"s1", "s2", "s3"}, "--heartbeat-interval", "1s", "--presence-grace", "30s")
	setup := signUpAll(t, c.cc("s1"), "alice", "bob", "carol", "dave")
	addContact(t, setup["alice"], "bob")
	addContact(t, setup["dave"], "bob")
	bob := setup["bob"].withConn(c.cc("s2"))
	events := watchPresence(t, bob, "alice")
	awaitStatus(t, events, "alice", chatv1.PresenceStatus_PRESENCE_STATUS_OFFLINE, 30*time.Second)

	a1 := c.device("alice", "phone", "s1")
	awaitStatus(t, events, "alice", chatv1.PresenceStatus_PRESENCE_STATUS_ONLINE, 30*time.Second)
	a3 := c.device("alice", "laptop", "s3")

	// The phone leaves cleanly (without the laptop that would be offline at
	// once): alice stays online.
	a1.closeClean()
	noStatus(t, events, "alice", chatv1.PresenceStatus_PRESENCE_STATUS_OFFLINE, 2*time.Second, "her laptop on s3 is still connected")
	if p := getPresence(t, setup["bob"].withConn(c.cc("s1")), "alice"); p.GetStatus() != chatv1.PresenceStatus_PRESENCE_STATUS_ONLINE {
		t.Errorf("alice after her phone left, through s1: %v", p)
	}

	// Log the laptop out through s2.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := chatv1.NewAccountServiceClient(c.cc("s2")).LogOut(a3.u.ctx(ctx), &chatv1.LogOutRequest{}); err != nil {
		t.Fatal(err)
	}
	loggedOut := time.Now()
	off := awaitStatus(t, events, "alice", chatv1.PresenceStatus_PRESENCE_STATUS_OFFLINE, 10*time.Second)
	t.Logf("offline %v after the log-out", time.Since(loggedOut).Round(time.Millisecond))
	if off.GetLastActiveAt() == nil {
		t.Error("offline without last_active_at")
	}
	// Its stream on s3 ends (its token is revoked) and does not bring her
	// back online.
	cs := a3.stream()
	select {
	case <-cs.done:
		if status.Code(cs.err) != codes.Unauthenticated {
			t.Errorf("logged-out device's stream ended with %v, want Unauthenticated", cs.err)
		}
	case <-time.After(20 * time.Second):
		t.Error("the logged-out device's stream on s3 is still open")
	}
	noStatus(t, events, "alice", chatv1.PresenceStatus_PRESENCE_STATUS_ONLINE, 2*time.Second, "she logged out")

	// carol is not alice's contact.
	ctx2, cancel2 := context.WithTimeout(setup["carol"].ctx(context.Background()), 30*time.Second)
	defer cancel2()
	sub, err := chatv1.NewPresenceServiceClient(c.cc("s3")).Subscribe(ctx2, &chatv1.SubscribeRequest{UserIds: []string{"alice"}})
	if err == nil {
		_, err = sub.Recv()
	}
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("a non-contact's Subscribe: %v, want PermissionDenied", err)
	}

	// dave hides his presence while connected on s3, then shows it again.
	events = watchPresence(t, bob, "dave")
	awaitStatus(t, events, "dave", chatv1.PresenceStatus_PRESENCE_STATUS_OFFLINE, 30*time.Second)
	c.device("dave", "phone", "s3")
	awaitStatus(t, events, "dave", chatv1.PresenceStatus_PRESENCE_STATUS_ONLINE, 30*time.Second)
	hide := func(v bool) {
		t.Helper()
		if _, err := chatv1.NewAccountServiceClient(c.cc("s1")).UpdateProfile(setup["dave"].ctx(ctx), &chatv1.UpdateProfileRequest{HidePresence: &v}); err != nil {
			t.Fatal(err)
		}
	}
	hide(true)
	awaitStatus(t, events, "dave", chatv1.PresenceStatus_PRESENCE_STATUS_OFFLINE, 10*time.Second)
	if p := getPresence(t, setup["bob"].withConn(c.cc("s3")), "dave"); p.GetStatus() != chatv1.PresenceStatus_PRESENCE_STATUS_OFFLINE || p.GetLastActiveAt() != nil {
		t.Errorf("hidden dave through s3: %v, want offline without last_active_at", p)
	}
	// A second device while hidden changes nothing for watchers.
	c.device("dave", "laptop", "s2")
	noStatus(t, events, "dave", chatv1.PresenceStatus_PRESENCE_STATUS_ONLINE, 2*time.Second, "he hides his presence")
	hide(false)
	awaitStatus(t, events, "dave", chatv1.PresenceStatus_PRESENCE_STATUS_ONLINE, 10*time.Second)
}
