package storetest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/chatd/chatd/server/store"
)

// pushTests cover store.Push: push targets, the previews setting and
// channel mutes.
var pushTests = []struct {
	name string
	fn   func(t *testing.T, s store.Store)
}{
	{"Push/TargetRoundTrip", testPushTargetRoundTrip},
	{"Push/TargetReplaceAndList", testPushTargetReplaceList},
	{"Push/TargetDeleteOnlyAddress", testPushTargetDeleteAddress},
	{"Push/Previews", testPushPreviews},
	{"Push/Mutes", testMutes},
}

func eqTarget(t testing.TB, got, want *store.PushTarget) {
	t.Helper()
	if got.UserID != want.UserID || got.DeviceID != want.DeviceID || got.Kind != want.Kind ||
		got.Address != want.Address || got.P256dh != want.P256dh || got.Auth != want.Auth ||
		got.Topic != want.Topic || got.Sandbox != want.Sandbox || !got.UpdatedAt.Equal(want.UpdatedAt) {
		t.Fatalf("push target mismatch:\n got  %+v\n want %+v", got, want)
	}
}

func webTarget(user, device, endpoint string) *store.PushTarget {
	return &store.PushTarget{UserID: user, DeviceID: device, Kind: store.PushWebPush, Address: endpoint,
		P256dh: "BNcRdreALRFXTkOOUHK1EtK2wtaz5Ry4YfYCA_0QTpQtUbVlUls0VJXg7A8u-Ts1XbjhazAkj7I99e8QcYP7DkM",
		Auth:   "tBHItJI5svbpez7KI4CCXg", UpdatedAt: at(1)}
}

func testPushTargetRoundTrip(t *testing.T, s store.Store) {
	ctx := context.Background()
	if _, err := s.GetPushTarget(ctx, "bob", "phone"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("GetPushTarget of none: %v, want ErrNotFound", err)
	}
	for _, want := range []*store.PushTarget{
		webTarget("bob", "laptop", "https://fcm.googleapis.com/fcm/send/abc"),
		{UserID: "bob", DeviceID: "android", Kind: store.PushFCM, Address: "fcm-token:APA91b", UpdatedAt: at(2)},
		{UserID: "bob", DeviceID: "phone", Kind: store.PushAPNs, Address: "a1b2c3", Topic: "com.example.chat", Sandbox: true, UpdatedAt: at(3)},
	} {
		noErr(t, "PutPushTarget", s.PutPushTarget(ctx, want))
		got, err := s.GetPushTarget(ctx, want.UserID, want.DeviceID)
		noErr(t, "GetPushTarget", err)
		eqTarget(t, got, want)
	}
	if _, err := s.GetPushTarget(ctx, "alice", "phone"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("another user's device: %v, want ErrNotFound", err)
	}
	if err := s.PutPushTarget(ctx, &store.PushTarget{UserID: "", DeviceID: "x", Kind: store.PushFCM, Address: "t"}); err == nil {
		t.Fatal("PutPushTarget with an empty user id succeeded")
	}
}

func testPushTargetReplaceList(t *testing.T, s store.Store) {
	ctx := context.Background()
	noErr(t, "Put", s.PutPushTarget(ctx, webTarget("bob", "b", "https://updates.push.services.mozilla.com/wpush/v2/1")))
	noErr(t, "Put", s.PutPushTarget(ctx, webTarget("bob", "a", "https://fcm.googleapis.com/fcm/send/2")))
	noErr(t, "Put", s.PutPushTarget(ctx, webTarget("carol", "a", "https://fcm.googleapis.com/fcm/send/3")))
	// One target per device: an FCM token replaces b's subscription whole.
	fcm := &store.PushTarget{UserID: "bob", DeviceID: "b", Kind: store.PushFCM, Address: "tok", UpdatedAt: at(9)}
	noErr(t, "Put", s.PutPushTarget(ctx, fcm))
	got, err := s.ListPushTargets(ctx, "bob")
	noErr(t, "ListPushTargets", err)
	if len(got) != 2 {
		t.Fatalf("ListPushTargets: %d targets %+v, want 2", len(got), got)
	}
	eqTarget(t, got[0], webTarget("bob", "a", "https://fcm.googleapis.com/fcm/send/2"))
	eqTarget(t, got[1], fcm)
	none, err := s.ListPushTargets(ctx, "dave")
	noErr(t, "ListPushTargets", err)
	if len(none) != 0 {
		t.Fatalf("ListPushTargets of a user without targets: %+v", none)
	}
}

func testPushTargetDeleteAddress(t *testing.T, s store.Store) {
	ctx := context.Background()
	old := webTarget("bob", "phone", "https://fcm.googleapis.com/fcm/send/old")
	noErr(t, "Put", s.PutPushTarget(ctx, old))
	// The device registered anew before the provider's "gone" for the old
	// endpoint arrived: the new target stays.
	time.Sleep(2 * time.Millisecond) // a later write time for the cluster store
	cur := webTarget("bob", "phone", "https://fcm.googleapis.com/fcm/send/new")
	noErr(t, "Put", s.PutPushTarget(ctx, cur))
	ok, err := s.DeletePushTarget(ctx, "bob", "phone", old.Address)
	noErr(t, "DeletePushTarget(old)", err)
	if ok {
		t.Fatal("DeletePushTarget of a replaced address reported a removal")
	}
	got, err := s.GetPushTarget(ctx, "bob", "phone")
	noErr(t, "GetPushTarget", err)
	eqTarget(t, got, cur)
	ok, err = s.DeletePushTarget(ctx, "bob", "phone", cur.Address)
	noErr(t, "DeletePushTarget(cur)", err)
	if !ok {
		t.Fatal("DeletePushTarget of the current address removed nothing")
	}
	if _, err := s.GetPushTarget(ctx, "bob", "phone"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("after delete: %v, want ErrNotFound", err)
	}
	ok, err = s.DeletePushTarget(ctx, "bob", "phone", "")
	noErr(t, "DeletePushTarget(none)", err)
	if ok {
		t.Fatal("DeletePushTarget of nothing reported a removal")
	}
	noErr(t, "Put", s.PutPushTarget(ctx, cur))
	ok, err = s.DeletePushTarget(ctx, "bob", "phone", "")
	noErr(t, "DeletePushTarget(any)", err)
	if !ok {
		t.Fatal("DeletePushTarget(any) removed nothing")
	}
	if _, err := s.GetPushTarget(ctx, "bob", "phone"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("after delete(any): %v, want ErrNotFound", err)
	}
}

func testPushPreviews(t *testing.T, s store.Store) {
	ctx := context.Background()
	on, err := s.PushPreviews(ctx, "alice")
	noErr(t, "PushPreviews", err)
	if on {
		t.Fatal("previews on by default")
	}
	// The setting is its own: read receipts do not touch it, nor it them.
	noErr(t, "SetReadReceiptsHidden", s.SetReadReceiptsHidden(ctx, "alice", true))
	for _, v := range []bool{true, true, false, true} {
		noErr(t, "SetPushPreviews", s.SetPushPreviews(ctx, "alice", v))
		got, err := s.PushPreviews(ctx, "alice")
		noErr(t, "PushPreviews", err)
		if got != v {
			t.Fatalf("PushPreviews = %v, want %v", got, v)
		}
	}
	hidden, err := s.ReadReceiptsHidden(ctx, "alice")
	noErr(t, "ReadReceiptsHidden", err)
	if !hidden {
		t.Fatal("SetPushPreviews reset the read-receipts setting")
	}
	other, err := s.PushPreviews(ctx, "bob")
	noErr(t, "PushPreviews", err)
	if other {
		t.Fatal("alice's setting leaked to bob")
	}
}

func testMutes(t *testing.T, s store.Store) {
	ctx := context.Background()
	ms, err := s.ListMutes(ctx, "bob")
	noErr(t, "ListMutes", err)
	if len(ms) != 0 {
		t.Fatalf("mutes of a new user: %+v", ms)
	}
	noErr(t, "SetMute", s.SetMute(ctx, "bob", store.Mute{ChannelID: "g:b", Until: at(100)}))
	noErr(t, "SetMute", s.SetMute(ctx, "bob", store.Mute{ChannelID: "dm:alice:bob"}))
	noErr(t, "SetMute", s.SetMute(ctx, "carol", store.Mute{ChannelID: "g:b"}))
	// Muting again replaces the time.
	noErr(t, "SetMute", s.SetMute(ctx, "bob", store.Mute{ChannelID: "g:b", Until: at(200)}))
	ms, err = s.ListMutes(ctx, "bob")
	noErr(t, "ListMutes", err)
	if len(ms) != 2 || ms[0].ChannelID != "dm:alice:bob" || !ms[0].Until.IsZero() ||
		ms[1].ChannelID != "g:b" || !ms[1].Until.Equal(at(200)) {
		t.Fatalf("ListMutes = %+v, want dm:alice:bob forever and g:b until %v", ms, at(200))
	}
	if !ms[0].Active(at(1e6)) || !ms[1].Active(at(199)) || ms[1].Active(at(200)) {
		t.Fatal("Mute.Active disagrees with the stored times")
	}
	noErr(t, "DeleteMute", s.DeleteMute(ctx, "bob", "g:b"))
	noErr(t, "DeleteMute again", s.DeleteMute(ctx, "bob", "g:b"))
	ms, err = s.ListMutes(ctx, "bob")
	noErr(t, "ListMutes", err)
	if len(ms) != 1 || ms[0].ChannelID != "dm:alice:bob" {
		t.Fatalf("after DeleteMute: %+v", ms)
	}
	ms, err = s.ListMutes(ctx, "carol")
	noErr(t, "ListMutes", err)
	if len(ms) != 1 {
		t.Fatalf("carol's mutes: %+v", ms)
	}
}
