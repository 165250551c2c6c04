package deliver_test

import (
	"context"
	"errors"
	"go/build"
	"strings"
	"testing"
	"time"

	"github.com/chatd/chatd/server/deliver"
	"github.com/chatd/chatd/server/router"
	"github.com/chatd/chatd/server/sequence"
	"github.com/chatd/chatd/server/store"
)

type routes struct{ batches [][]router.Event }

func (r *routes) Attach(context.Context, string) error { return nil }
func (r *routes) Detach(context.Context, string) error { return nil }
func (r *routes) Close() error                         { return nil }
func (r *routes) Route(_ context.Context, evs []router.Event) error {
	r.batches = append(r.batches, evs)
	return errors.New("routing is a wake-up: an error is only logged")
}

// A committed batch becomes one Route call with one Delivery per inbox
// entry, in commit order, carrying that user's seq.
func TestPublisher(t *testing.T) {
	rt := &routes{}
	pub := deliver.NewPublisher(rt, nil)
	pub(nil)
	if len(rt.batches) != 0 {
		t.Fatal("routed an empty batch")
	}
	now := time.UnixMilli(1764400000000).UTC()
	m1 := &store.Message{ChannelID: "g1", MessageID: 1, SenderID: "alice", Text: "one", CreatedAt: now, Kind: store.KindText}
	m2 := &store.Message{ChannelID: "g1", MessageID: 2, SenderID: "bob", Text: "two", CreatedAt: now, Kind: store.KindText}
	pub([]sequence.Committed{
		{Message: m1, Inbox: []store.InboxEntry{{UserID: "alice", Seq: 7}, {UserID: "bob", Seq: 3}}},
		{Message: m2, Inbox: []store.InboxEntry{{UserID: "alice", Seq: 8}, {UserID: "bob", Seq: 4}}},
	})
	if len(rt.batches) != 1 || len(rt.batches[0]) != 4 {
		t.Fatalf("routed %v, want one call with 4 events", rt.batches)
	}
	want := []struct {
		user string
		seq  uint64
		text string
	}{{"alice", 7, "one"}, {"bob", 3, "one"}, {"alice", 8, "two"}, {"bob", 4, "two"}}
	for i, ev := range rt.batches[0] {
		d := ev.Frame.GetDelivery()
		if ev.UserID != want[i].user || d.GetInboxSeq() != want[i].seq || d.GetMessage().GetText() != want[i].text ||
			!d.GetMessage().GetCreatedAt().AsTime().Equal(now) || ev.SkipDeviceID != "" {
			t.Fatalf("event %d: %s %v, want %v", i, ev.UserID, d, want[i])
		}
	}
}

// The package doc's rule: no gRPC in the delivery core (the generated
// message types in gen/ are allowed).
func TestNoGRPCImports(t *testing.T) {
	pkg, err := build.ImportDir(".", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, imp := range pkg.Imports {
		if strings.HasPrefix(imp, "google.golang.org/grpc") {
			t.Errorf("server/deliver imports %s: map errors to gRPC at the edge (server/chat)", imp)
		}
	}
}
