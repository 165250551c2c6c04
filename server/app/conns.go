package app

import (
	"context"
	"net"
	"sync"

	"google.golang.org/grpc/peer"
)

// connTracker is a listener that remembers its open TCP connections by
// remote address, so that the chat service can end a stream stuck writing
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
		l.conns[tc.RemoteAddr().String()] = tc
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

// closeConn closes the open connection whose remote address is addr and
// reports whether there was one.
func (l *connTracker) closeConn(addr string) bool {
	l.mu.Lock()
	c := l.conns[addr]
	delete(l.conns, addr)
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
// (its peer's address, on the gRPC listener or, for grpc-web, the HTTP
// one) and reports whether it found one (chat.Config.CloseConn).
func closeStreamConn(ctx context.Context, ls ...*connTracker) bool {
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil {
		return false
	}
	addr := p.Addr.String()
	for _, l := range ls {
		if l != nil && l.closeConn(addr) {
			return true
		}
	}
	return false
}
