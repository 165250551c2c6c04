package client_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/chatd/chatd/client"
	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/chatd/chatd/server/app"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// restartable is an in-process server that can stop and start again on
// the same address and data.
type restartable struct {
	t    *testing.T
	addr string
	dir  string
	a    *app.App
}

func newRestartable(t *testing.T) *restartable {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	r := &restartable{t: t, addr: addr, dir: t.TempDir()}
	r.start()
	t.Cleanup(func() {
		if r.a != nil {
			r.a.Close()
		}
	})
	return r
}

func (r *restartable) start() {
	r.t.Helper()
	a, err := app.New(app.Config{GRPCAddr: r.addr, HTTPAddr: "127.0.0.1:0", DataDir: r.dir, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		r.t.Fatal(err)
	}
	a.Start()
	r.a = a
}

func (r *restartable) stop() {
	r.a.Close()
	r.a = nil
}

// collect reads n deliveries from res (failing after 20 s).
func collect(t *testing.T, res *client.Resilient, n int) []*chatv1.Delivery {
	t.Helper()
	var out []*chatv1.Delivery
	timeout := time.After(20 * time.Second)
	for len(out) < n {
		select {
		case d, ok := <-res.Deliveries():
			if !ok {
				t.Fatalf("Deliveries closed after %d of %d: %v", len(out), n, res.Err())
			}
			out = append(out, d)
			res.AckAsync(d.GetInboxSeq())
		case <-timeout:
			t.Fatalf("%d of %d deliveries after 20 s", len(out), n)
		}
	}
	return out
}

// TestResilientSurvivesRestart: a Resilient session keeps one ordered,
// duplicate-free stream of deliveries across a server restart, reports
// the connection states, and a send made while the server is down is
// delivered once after it is back.
func TestResilientSurvivesRestart(t *testing.T) {
	srv := newRestartable(t)
	ctx := testContext(t)
	alice := newUser(t, ctx, srv.addr, "alice")
	bob := newUser(t, ctx, srv.addr, "bob")
	res, err := client.OpenResilient(client.ResilientConfig{Servers: []string{srv.addr}, Token: bob.Token(), MinBackoff: 50 * time.Millisecond, MaxBackoff: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer res.Close()
	as := connect(t, ctx, alice)
	for i := range 10 {
		if _, err := as.Send(ctx, client.SendParams{ToUser: "bob", Text: fmt.Sprint("before ", i)}); err != nil {
			t.Fatal(err)
		}
	}
	got := collect(t, res, 10)
	as.Close()

	srv.stop()
	// bob sends while the server is down: the send waits and goes out once.
	pending, err := res.SendAsync(ctx, client.SendParams{ToUser: "alice", Text: "sent while down", ClientMessageID: "down-1"})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	srv.start()
	ack, err := pending.Wait(ctx)
	if err != nil || ack.GetDuplicate() {
		t.Fatalf("send made while down: %v %v", ack, err)
	}
	as = connect(t, ctx, alice)
	for i := range 10 {
		if _, err := as.Send(ctx, client.SendParams{ToUser: "bob", Text: fmt.Sprint("after ", i)}); err != nil {
			t.Fatal(err)
		}
	}
	got = append(got, collect(t, res, 11)...) // bob's own message is in his inbox too
	var texts []string
	for i, d := range got {
		if i > 0 && d.GetInboxSeq() <= got[i-1].GetInboxSeq() {
			t.Fatalf("seq %d after %d", d.GetInboxSeq(), got[i-1].GetInboxSeq())
		}
		texts = append(texts, d.GetMessage().GetText())
	}
	want := 0
	for _, tx := range texts {
		if tx == "sent while down" {
			want++
		}
	}
	if want != 1 || texts[0] != "before 0" || texts[len(texts)-1] != "after 9" {
		t.Fatalf("deliveries %q", texts)
	}
	var states []client.ConnState
	for len(states) < 3 {
		select {
		case e := <-res.Events():
			states = append(states, e.State)
			t.Log(e)
		case <-time.After(5 * time.Second):
			t.Fatalf("events %v", states)
		}
	}
	if states[0] != client.StateConnected || states[1] != client.StateReconnecting || states[len(states)-1] != client.StateConnected && states[len(states)-1] != client.StateReconnecting {
		t.Fatalf("events %v", states)
	}
}

// TestResilientStopsWhenRevoked: a logged-out device's Resilient stops
// for good with Unauthenticated, says so, and closes Deliveries.
func TestResilientStopsWhenRevoked(t *testing.T) {
	srv := newRestartable(t)
	ctx := testContext(t)
	bob := newUser(t, ctx, srv.addr, "bob")
	res, err := client.OpenResilient(client.ResilientConfig{Servers: []string{srv.addr}, Token: bob.Token()})
	if err != nil {
		t.Fatal(err)
	}
	defer res.Close()
	if e := <-res.Events(); e.State != client.StateConnected {
		t.Fatalf("first event %v", e)
	}
	if err := bob.LogOut(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-res.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("still running 10 s after the device was logged out")
	}
	if status.Code(res.Err()) != codes.Unauthenticated {
		t.Fatalf("stopped with %v", res.Err())
	}
	var last client.ConnEvent
	for e := range res.Events() {
		last = e
	}
	if last.State != client.StateStopped {
		t.Fatalf("last event %v", last)
	}
	if _, ok := <-res.Deliveries(); ok {
		t.Fatal("Deliveries not closed")
	}
	if _, err := res.SendAsync(context.Background(), client.SendParams{ToUser: "x", Text: "y"}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("send after stop: %v", err)
	}
}

// TestResilientFallsBackToSeeds: when the servers Discovery names cannot
// be dialled from here (a server behind a port mapping or a proxy that
// advertises an address of its own side: refused, or answered by an HTTP
// server's 404 page, which grpc-go reports as Unimplemented), the session
// opens on the seed address it was given, after trying them.
func TestResilientFallsBackToSeeds(t *testing.T) {
	h2 := &http.Server{Handler: http.NotFoundHandler(), Protocols: new(http.Protocols)}
	h2.Protocols.SetUnencryptedHTTP2(true)
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = h2.Serve(hl) }()
	t.Cleanup(func() { _ = h2.Close() })
	for _, advertise := range []string{"127.0.0.1:1" /* refused */, hl.Addr().String() /* HTTP 404 */} {
		t.Run(advertise, func(t *testing.T) { fallsBackToSeeds(t, advertise) })
	}
}

func fallsBackToSeeds(t *testing.T, advertise string) {
	a, err := app.New(app.Config{GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", DataDir: t.TempDir(),
		AdvertiseGRPC: advertise, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	a.Start()
	t.Cleanup(func() { _ = a.Close() })
	ctx := testContext(t)
	alice := newUser(t, ctx, a.GRPCAddr(), "alice")
	bob := newUser(t, ctx, a.GRPCAddr(), "bob")
	res, err := client.OpenResilient(client.ResilientConfig{Servers: []string{a.GRPCAddr()}, Token: bob.Token(), MinBackoff: 50 * time.Millisecond, MaxBackoff: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer res.Close()
	as := connect(t, ctx, alice)
	defer as.Close()
	if _, err := as.Send(ctx, client.SendParams{ToUser: "bob", Text: "through the seed"}); err != nil {
		t.Fatal(err)
	}
	if got := collect(t, res, 1); got[0].GetMessage().GetText() != "through the seed" {
		t.Fatalf("delivery %v", got[0])
	}
}
