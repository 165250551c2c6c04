package app_test

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/chatd/chatd/server/grpcerr"
	"github.com/chatd/chatd/server/store"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// endsRevoked waits at most limit for d's stream to end, and checks that
// it ended with Unauthenticated, reason DEVICE_REVOKED.
func endsRevoked(t *testing.T, d *device, limit time.Duration) {
	t.Helper()
	cs := d.stream()
	select {
	case <-cs.done:
	case <-time.After(limit):
		t.Fatalf("%s: stream still open %v after the revocation", d.u.device, limit)
	}
	cs.mu.Lock()
	err := cs.err
	cs.mu.Unlock()
	if status.Code(err) != codes.Unauthenticated || grpcerr.Reason(err) != store.ReasonDeviceRevoked {
		t.Fatalf("stream ended with %v (reason %q), want Unauthenticated DEVICE_REVOKED", err, grpcerr.Reason(err))
	}
}

// TestCluster_RevokeDevice: alice's laptop (on s1) logs out her phone,
// whose idle stream is on s2: it ends with Unauthenticated (reason
// DEVICE_REVOKED) within a second, s2 refuses the phone's token at once
// (no wait for the revocation cache), a new stream of it opens nowhere and
// nothing it sends is stored. Then "log out everywhere else" over REST,
// from s2, ends the tablet's stream on s1. The laptop keeps working.
func TestCluster_RevokeDevice(t *testing.T) {
	c := newCluster(t, []string{"s1", "s2"})
	signUpAll(t, c.cc("s1"), "alice", "bob")
	laptop := c.device("alice", "laptop", "s1")
	phone := c.device("alice", "phone", "s2")
	tablet := c.device("alice", "tablet", "s1")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	acc := chatv1.NewAccountServiceClient(c.cc("s1"))
	if _, err := acc.RevokeDevice(laptop.u.ctx(ctx), &chatv1.RevokeDeviceRequest{DeviceId: phone.u.device}); err != nil {
		t.Fatal(err)
	}
	endsRevoked(t, phone, time.Second)
	// s2 learnt it with the event: its cache refuses the token now.
	_, err := chatv1.NewAccountServiceClient(c.cc("s2")).ListDevices(phone.u.ctx(ctx), &chatv1.ListDevicesRequest{})
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("phone's token on s2 after the revocation: %v, want Unauthenticated", err)
	}
	for _, srv := range []string{"s1", "s2"} {
		s, err := chatv1.NewChatServiceClient(c.cc(srv)).Chat(phone.u.ctx(ctx))
		if err == nil {
			_ = s.Send(dm("bob", "alice").frame("after-revoke-"+srv, "from a revoked phone"))
			_, err = s.Recv()
		}
		if status.Code(err) != codes.Unauthenticated {
			t.Fatalf("a new stream of the revoked phone on %s: %v, want Unauthenticated", srv, err)
		}
	}
	if _, err := laptop.send(dm("bob", "alice"), "laptop-1", "still here"); err != nil {
		t.Fatalf("the laptop after revoking the phone: %v", err)
	}
	for _, m := range history(t, laptop.u, dmChannel("alice", "bob")) {
		if m.GetSenderDeviceId() == phone.u.device {
			t.Fatalf("a message of the revoked phone was stored: %v", m)
		}
	}

	// Log out everywhere else, over REST on s2: the tablet's stream on s1.
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+c.servers["s2"].http+"/v1/users/me/devices:revokeOthers", nil)
	req.Header.Set("Authorization", "Bearer "+laptop.u.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var body struct {
		RevokedDeviceIDs []string `json:"revokedDeviceIds"`
	}
	err = json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("POST devices:revokeOthers: %d %v", resp.StatusCode, err)
	}
	endsRevoked(t, tablet, time.Second)
	// The "setup" device and the tablet (the phone was revoked already).
	if len(body.RevokedDeviceIDs) != 2 {
		t.Fatalf("revoked %v, want the setup device and the tablet", body.RevokedDeviceIDs)
	}
	select {
	case <-laptop.stream().done:
		t.Fatalf("the laptop's stream ended: %v", laptop.stream().err)
	default:
	}
	// DELETE /v1/users/me/devices/{id} of another user's device: 404.
	bob := logIn(t, c.cc("s1"), "bob", "bob-phone")
	req, _ = http.NewRequestWithContext(ctx, http.MethodDelete, "http://"+c.servers["s1"].http+"/v1/users/me/devices/"+laptop.u.device, nil)
	req.Header.Set("Authorization", "Bearer "+bob.token)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("bob's DELETE of alice's laptop: %d, want 404", resp.StatusCode)
	}
	if _, err := laptop.send(dm("bob", "alice"), "laptop-2", "still mine"); err != nil {
		t.Fatalf("the laptop after bob's attempt: %v", err)
	}
}
