package archtest

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"testing"
)

const module = "github.com/chatd/chatd"

// grpcEdge are the packages that may import grpc/status and grpc/codes:
// the gRPC services, which map domain errors to status codes, and app,
// which wires the servers and their interceptors.
var grpcEdge = []string{
	"server/account",
	"server/app",
	"server/chat",
	"server/discovery", // discovery.Service is the DiscoveryService
	"server/grpcerr",   // the one table from store.Code to gRPC codes
	"server/presence/presencesvc",
}

// grpcAllowed are the packages below the edge that still import
// grpc/status or grpc/codes today. To be removed by issue 10 part 3 (a
// domain error vocabulary, mapped to codes at the edge): delete an entry
// once its package no longer imports them (the test fails on a stale
// entry), and never add one. auth and ratelimit are the interceptors
// (they answer Unauthenticated and ResourceExhausted themselves): part 3
// decides whether they move to the edge list or map domain errors too.
var grpcAllowed = []string{
	"server/auth",
	"server/ratelimit",
}

var grpcStatus = []string{"google.golang.org/grpc/status", "google.golang.org/grpc/codes"}

// technologies maps an import path prefix to the storage or messaging
// technology it speaks. github.com/scylladb/gocql is the ScyllaDB fork
// that go.mod puts in place of github.com/gocql/gocql.
var technologies = []struct{ prefix, tech string }{
	{"github.com/cockroachdb/pebble", "pebble"},
	{"github.com/gocql/gocql", "cql"},
	{"github.com/scylladb/gocql", "cql"},
	{"github.com/scylladb/gocqlx", "cql"},
	{"github.com/redis/go-redis", "redis"},
}

type pkg struct {
	ImportPath string
	Imports    []string
	Error      *struct{ Err string }
}

// packages lists every package of the module with its (non-test) imports.
func packages(t *testing.T) map[string][]string {
	t.Helper()
	cmd := exec.Command("go", "list", "-e", "-json=ImportPath,Imports,Error", module+"/...")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.Bytes())
	}
	pkgs := map[string][]string{}
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p pkg
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("go list output: %v", err)
		}
		if p.Error != nil {
			t.Fatalf("go list: %s: %s", p.ImportPath, p.Error.Err)
		}
		pkgs[strings.TrimPrefix(p.ImportPath, module+"/")] = p.Imports
	}
	if len(pkgs) < 20 || pkgs["server/store"] == nil {
		t.Fatalf("go list found only %d packages: %v", len(pkgs), keys(pkgs))
	}
	return pkgs
}

func keys(m map[string][]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// TestGRPCStatusAtTheEdge: below the gRPC services, no package imports
// grpc/status or grpc/codes, except the shrinking allow-list.
func TestGRPCStatusAtTheEdge(t *testing.T) {
	pkgs := packages(t)
	for _, p := range keys(pkgs) {
		if !strings.HasPrefix(p, "server/") || slices.Contains(grpcEdge, p) {
			continue
		}
		var bad []string
		for _, imp := range pkgs[p] {
			if slices.Contains(grpcStatus, imp) {
				bad = append(bad, imp)
			}
		}
		allowed := slices.Contains(grpcAllowed, p)
		switch {
		case len(bad) > 0 && !allowed:
			t.Errorf("%s imports %s: only the gRPC services and server/app may; return a domain error and map it to a code at the edge", p, strings.Join(bad, ", "))
		case len(bad) == 0 && allowed:
			t.Errorf("%s no longer imports grpc/status or grpc/codes: remove it from grpcAllowed", p)
		}
	}
	for _, p := range append(slices.Clone(grpcEdge), grpcAllowed...) {
		if _, ok := pkgs[p]; !ok {
			t.Errorf("%s is listed in grpcEdge or grpcAllowed but is not a package of the module", p)
		}
	}
}

// TestOneTechnologyPerPackage: no package imports two of Pebble, CQL and
// Redis. The implementation that speaks one belongs in that technology's
// package (store/pebble, store/scylla, the redis sub-packages); interfaces
// stay with their users.
func TestOneTechnologyPerPackage(t *testing.T) {
	pkgs := packages(t)
	for _, p := range keys(pkgs) {
		uses := map[string][]string{}
		for _, imp := range pkgs[p] {
			for _, tc := range technologies {
				if imp == tc.prefix || strings.HasPrefix(imp, tc.prefix+"/") {
					uses[tc.tech] = append(uses[tc.tech], imp)
				}
			}
		}
		if len(uses) > 1 {
			var what []string
			for _, tech := range []string{"pebble", "cql", "redis"} {
				if imps, ok := uses[tech]; ok {
					what = append(what, tech+" ("+strings.Join(imps, ", ")+")")
				}
			}
			t.Errorf("%s speaks %s: one technology per package", p, strings.Join(what, " and "))
		}
	}
}
