// Package testenv is the test environment of the packages whose tests
// need a service: the shared Redis (REDIS_ADDR), a private redis-server
// process, and a CQL server (CQL_HOSTS) with keyspaces of their own. A
// service that is missing skips the test, or fails it when CI=true (in CI
// a missing service is an error, never a skip); scripts/services.sh up
// starts both services.
//
// It is imported by tests only. It speaks CQL (gocql, to drop keyspaces)
// and no other storage technology: Redis is probed with a PING written on
// the socket, so the one-technology-per-package rule holds and any test
// package may import it. It must not import chatd packages (the store
// packages' own tests use it).
package testenv

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gocql/gocql"
)

// Need skips t with msg, or fails it when CI=true.
func Need(t testing.TB, msg string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// RedisAddr returns the shared Redis of the tests (REDIS_ADDR, default
// 127.0.0.1:6379) once it answers a PING; otherwise Need. Tests share it:
// keep keys under a prefix of the test's own and delete them afterwards.
func RedisAddr(t testing.TB) string {
	t.Helper()
	addr := os.Getenv("REDIS_ADDR")
	if addr == "" {
		addr = "127.0.0.1:6379"
	}
	if err := pingRedis(addr, 2*time.Second); err != nil {
		Need(t, fmt.Sprintf("no Redis at %s (set REDIS_ADDR, or run scripts/services.sh up): %v", addr, err))
	}
	return addr
}

// pingRedis sends PING in the Redis protocol and expects +PONG.
func pingRedis(addr string, timeout time.Duration) error {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := io.WriteString(c, "*1\r\n$4\r\nPING\r\n"); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if line = strings.TrimSpace(line); line != "+PONG" {
		return fmt.Errorf("PING answered %q", line)
	}
	return nil
}

// Redis is a redis-server process of one test, without persistence, on a
// free port of 127.0.0.1: for tests that flush, kill or restart Redis,
// which the shared one must not see.
type Redis struct {
	t    testing.TB
	port int
	cmd  *exec.Cmd
}

// StartRedis starts a private redis-server (Need if none is installed);
// it is killed when t ends.
func StartRedis(t testing.TB) *Redis {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		Need(t, "redis-server not installed (scripts/services.sh installs it)")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	r := &Redis{t: t, port: port}
	r.Start()
	t.Cleanup(r.Stop)
	return r
}

// Addr is the server's address (host:port); it stays the same across
// Stop and Start.
func (r *Redis) Addr() string { return "127.0.0.1:" + strconv.Itoa(r.port) }

// Start (re)starts the process, empty, and waits until it answers.
func (r *Redis) Start() {
	r.t.Helper()
	r.cmd = exec.Command("redis-server", "--port", strconv.Itoa(r.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", r.t.TempDir())
	r.cmd.Stdout, r.cmd.Stderr = io.Discard, io.Discard
	if err := r.cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := pingRedis(r.Addr(), time.Second)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("private redis-server on %d did not start: %v", r.port, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop kills the process (a crash: nothing is saved). Safe to call more
// than once.
func (r *Redis) Stop() {
	if r.cmd != nil && r.cmd.Process != nil {
		_ = r.cmd.Process.Kill()
		_ = r.cmd.Wait()
		r.cmd = nil
	}
}

var (
	cqlOnce  sync.Once
	cqlHosts []string
	cqlErr   string
)

// CQLHosts returns the CQL contact points (CQL_HOSTS, comma-separated
// host[:port], default 127.0.0.1:9042) once one of them accepts a
// connection; otherwise Need. The probe runs once per test binary.
func CQLHosts(t testing.TB) []string {
	t.Helper()
	cqlOnce.Do(func() {
		v := os.Getenv("CQL_HOSTS")
		if v == "" {
			v = "127.0.0.1:9042"
		}
		for _, h := range strings.Split(v, ",") {
			if h = strings.TrimSpace(h); h != "" {
				cqlHosts = append(cqlHosts, h)
			}
		}
		var errs []string
		for _, h := range cqlHosts {
			addr := h
			if _, _, err := net.SplitHostPort(h); err != nil {
				addr = net.JoinHostPort(h, "9042")
			}
			c, err := net.DialTimeout("tcp", addr, 2*time.Second)
			if err == nil {
				c.Close()
				return
			}
			errs = append(errs, fmt.Sprintf("%s: %v", addr, err))
		}
		cqlErr = "CQL server required: run scripts/services.sh up (or set CQL_HOSTS): " + strings.Join(errs, "; ")
	})
	if cqlErr != "" {
		Need(t, cqlErr)
	}
	return cqlHosts
}

// KeyspaceName returns prefix followed by 8 random hex digits: a keyspace
// no other test run uses.
func KeyspaceName(prefix string) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// DropKeyspace drops keyspace name on hosts, if it exists.
func DropKeyspace(hosts []string, name string) error {
	cl := gocql.NewCluster(hosts...)
	cl.Timeout = time.Minute
	cl.ConnectTimeout = 10 * time.Second
	sess, err := cl.CreateSession()
	if err != nil {
		return fmt.Errorf("drop keyspace %s: %w", name, err)
	}
	defer sess.Close()
	if err := sess.Query("DROP KEYSPACE IF EXISTS " + name).Exec(); err != nil {
		return fmt.Errorf("drop keyspace %s: %w", name, err)
	}
	return nil
}

// Keyspace is a keyspace shared by the tests of one package run: created
// by Migrate on first use (creating a keyspace and its tables takes
// seconds on Cassandra), dropped by Drop, which the package's TestMain
// calls after m.Run.
type Keyspace struct {
	// Prefix starts the keyspace's name (KeyspaceName).
	Prefix string
	// Migrate creates the keyspace name and its tables on hosts.
	Migrate func(ctx context.Context, hosts []string, name string) error

	once  sync.Once
	hosts []string
	name  string
	err   error
}

// Name returns the keyspace, creating it on first use (Need without a CQL
// server; a failed migration fails t).
func (k *Keyspace) Name(t testing.TB) string {
	t.Helper()
	hosts := CQLHosts(t)
	k.once.Do(func() {
		k.hosts, k.name = hosts, KeyspaceName(k.Prefix)
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		t0 := time.Now()
		if k.err = k.Migrate(ctx, hosts, k.name); k.err == nil {
			fmt.Fprintf(os.Stderr, "testenv: keyspace %s migrated in %v\n", k.name, time.Since(t0).Round(time.Millisecond))
		}
	})
	if k.err != nil {
		t.Fatalf("test keyspace %s: %v", k.name, k.err)
	}
	return k.name
}

// Drop drops the keyspace if Name created it; errors are printed.
func (k *Keyspace) Drop() {
	if k.name == "" {
		return
	}
	if err := DropKeyspace(k.hosts, k.name); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
}
