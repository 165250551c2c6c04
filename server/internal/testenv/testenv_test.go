package testenv

import (
	"bufio"
	"net"
	"strings"
	"testing"
	"time"
)

// fakeRedis answers every PING with reply.
func fakeRedis(t *testing.T, reply string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			r := bufio.NewReader(c)
			for range 3 { // *1, $4, PING
				if _, err := r.ReadString('\n'); err != nil {
					break
				}
			}
			_, _ = c.Write([]byte(reply))
			c.Close()
		}
	}()
	return ln.Addr().String()
}

func TestPingRedis(t *testing.T) {
	if err := pingRedis(fakeRedis(t, "+PONG\r\n"), time.Second); err != nil {
		t.Errorf("PONG: %v", err)
	}
	if err := pingRedis(fakeRedis(t, "-NOAUTH Authentication required.\r\n"), time.Second); err == nil || !strings.Contains(err.Error(), "NOAUTH") {
		t.Errorf("NOAUTH: %v, want an error naming it", err)
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	if err := pingRedis(addr, time.Second); err == nil {
		t.Error("closed port: no error")
	}
}
