package app

import (
	"context"
	"net"
	"sync"

	"google.golang.org/grpc/peer"
)

// connTracker is a listener that remembers its open TCP connections by
// their local and remote addresses (connKey), so that the chat service can end a stream stuck writing
// to a client that stopped reading by closing its connection
// (chat.Config.CloseConn): grpc-go has no way to end one stream from
// outside its handler.
//
// Accept returns the *net.TCPConn itself, not a wrapper: grpc-go reads
// through a pooled buffer only from a *net.TCPConn (readyreader), and a
// wrapper type would cost every idle connection a 32 KiB read buffer. So
// a closed connection is not seen closing; Accept drops the closed ones
// whenever the table has doubled since its last sweep, which keeps it
// under twice the open connections (at least sweepMin).
type connTracker struct {
	net.Listener
	mu    sync.Mutex
	conns map[string]*net.TCPConn
	next  int // table size of the next sweep
}

// sweepMin is the table size below which Accept does not sweep.
const sweepMin = 1024

func trackConns(l net.Listener) *connTracker {
	return &connTracker{Listener: l, conns: make(map[string]*net.TCPConn), next: sweepMin}
}

// Accept implements net.Listener.
func (l *connTracker) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return c, err
	}
	if tc, ok := c.(*net.TCPConn); ok {
		l.mu.Lock()
		l.conns[connKey(tc.LocalAddr(), tc.RemoteAddr())] = tc
		if len(l.conns) >= l.next {
			l.sweepLocked()
			l.next = max(sweepMin, 2*len(l.conns))
		}
		l.mu.Unlock()
	}
	return c, nil
}

// sweepLocked drops the closed connections (l.mu held).
func (l *connTracker) sweepLocked() {
	for k, c := range l.conns {
		if !open(c) {
			delete(l.conns, k)
		}
	}
}

// open reports whether c is not closed yet (RawConn.Control fails on a
// closed connection; no syscall).
func open(c *net.TCPConn) bool {
	rc, err := c.SyscallConn()
	return err == nil && rc.Control(func(uintptr) {}) == nil
}

// connKey names a TCP connection by both ends: a remote address alone is
// not unique across listeners (one client host may use the same source
// port towards the gRPC and the HTTP port).
func connKey(local, remote net.Addr) string {
	return local.String() + " " + remote.String()
}

// closeConn closes the open connection whose key (connKey) is key and
// reports whether there was one.
func (l *connTracker) closeConn(key string) bool {
	l.mu.Lock()
	c := l.conns[key]
	delete(l.conns, key)
	l.mu.Unlock()
	if c == nil || !open(c) {
		return false
	}
	return c.Close() == nil
}

// len is the number of connections in the table (open or not yet swept).
func (l *connTracker) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns)
}

// closeStreamConn closes the connection that carries the stream of ctx
// (its peer's local and remote addresses, on the gRPC listener or, for
// grpc-web, the HTTP one) and reports whether it found one
// (chat.Config.CloseConn). Without both addresses it closes nothing.
func closeStreamConn(ctx context.Context, ls ...*connTracker) bool {
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil || p.LocalAddr == nil {
		return false
	}
	key := connKey(p.LocalAddr, p.Addr)
	for _, l := range ls {
		if l != nil && l.closeConn(key) {
			return true
		}
	}
	return false
}
