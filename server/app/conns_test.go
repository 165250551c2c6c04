package app

import (
	"context"
	"net"
	"testing"

	"google.golang.org/grpc/peer"
)

// TestConnTracker: Accept hands out the *net.TCPConn itself (grpc-go's
// pooled reads need that type), closeStreamConn closes the connection of
// a stream's peer and only that one, and sweeps keep the table under
// twice the open connections.
func TestConnTracker(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ct := trackConns(l)
	defer ct.Close()
	accept := func() (client net.Conn, server net.Conn) {
		t.Helper()
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		s, err := ct.Accept()
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := s.(*net.TCPConn); !ok {
			t.Fatalf("Accept returned %T, want *net.TCPConn", s)
		}
		return c, s
	}
	c1, s1 := accept()
	c2, s2 := accept()
	defer c2.Close()
	defer s2.Close()
	// Only both ends name it: the same remote address on another local
	// address is another connection.
	other := peer.NewContext(context.Background(), &peer.Peer{Addr: s1.RemoteAddr(), LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}})
	if closeStreamConn(other, ct) {
		t.Fatal("closed a connection by its remote address alone")
	}
	if closeStreamConn(peer.NewContext(context.Background(), &peer.Peer{Addr: s1.RemoteAddr()}), ct) {
		t.Fatal("closed a connection without a local address")
	}
	ctx := peer.NewContext(context.Background(), &peer.Peer{Addr: s1.RemoteAddr(), LocalAddr: s1.LocalAddr()})
	if !closeStreamConn(ctx, nil, ct) {
		t.Fatal("closeStreamConn found no connection")
	}
	if _, err := c1.Read(make([]byte, 1)); err == nil {
		t.Fatal("the client of the closed connection can still read")
	}
	c1.Close()
	if closeStreamConn(ctx, ct) {
		t.Error("closed twice")
	}
	if closeStreamConn(context.Background(), ct) {
		t.Error("closed a connection for a context without a peer")
	}
	if _, err := s2.Write([]byte("x")); err != nil {
		t.Errorf("the other connection: %v", err)
	}
	// Closed connections are swept once the table has doubled.
	for range sweepMin + 10 {
		c, s := accept()
		c.Close()
		s.Close()
	}
	if n := ct.len(); n >= sweepMin {
		t.Errorf("table holds %d connections after %d closed ones, want < %d", n, sweepMin+10, sweepMin)
	}
}
