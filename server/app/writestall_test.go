package app_test

import (
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/chatd/chatd/server/app"
)

// TestWriteStallClosesConnection: a device whose transport stays alive but
// whose app never reads its Chat stream leaves the stream's writer blocked
// in grpc-go's Send once the flow-control windows and the kernel buffers
// are full. Its send queue then overflows (slow consumer) and the session
// closes, but the blocked writer cannot end the stream; WriteStall later
// the server closes the device's connection, so the stream is gone from
// the server (streams_open, write_stalls_total) while the device still has
// not read, and its next reads end with Unavailable. The other device's
// stream is untouched.
func TestWriteStallClosesConnection(t *testing.T) {
	a := startAppWith(t, app.Config{SendQueue: 16, FrameRate: 1e6, FrameBurst: 1 << 20, WriteStall: 300 * time.Millisecond})
	alice := signUpLogIn(t, dial(t, a.GRPCAddr()), "alice", "phone")
	bob := signUpLogIn(t, dial(t, a.GRPCAddr()), "bob", "stuck") // a connection of its own
	as := openStream(t, alice)
	bs := openStream(t, bob) // bob reads his Welcome, then nothing
	if got := metric(t, a.HTTPAddr(), "chatd_streams_open"); got != "2" {
		t.Fatalf("streams_open = %q, want 2", got)
	}
	const n = 160 // 9.6 MB: more than the windows and kernel buffers between chatd and bob
	as.flood("bob", "stall-", n)
	// bob has read nothing since his Welcome.
	deadline := time.Now().Add(15 * time.Second)
	for metric(t, a.HTTPAddr(), "chatd_streams_open") != "1" {
		if time.Now().After(deadline) {
			t.Fatalf("bob's stream still open 15 s after his queue overflowed: streams_open %s, write_stalls_total %s",
				metric(t, a.HTTPAddr(), "chatd_streams_open"), metric(t, a.HTTPAddr(), "chatd_write_stalls_total"))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := metric(t, a.HTTPAddr(), "chatd_write_stalls_total"); got != "1" {
		t.Errorf("write_stalls_total = %q, want 1", got)
	}
	// bob's client gets what was buffered, then the end of the connection.
	var err error
	for err == nil {
		_, err = bs.s.Recv()
	}
	if status.Code(err) != codes.Unavailable {
		t.Errorf("bob's stream ended with %v, want Unavailable", err)
	}
	// alice's stream goes on.
	if ack := as.send("bob", "after", "still here"); ack.GetMessageId() == 0 {
		t.Fatalf("alice's send after bob's connection closed: %v", ack)
	}
}
