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
// the gRPC services, which choose the statuses they answer, grpcerr, the
// one table from domain codes (store.Code) to gRPC codes, and app, which
// wires the servers and their interceptors. Every other package under
// server/ returns domain errors (*store.Error, the store sentinels,
// context errors), in its tests too.
var grpcEdge = []string{
	"server/account",
	"server/app",
	"server/chat",
	"server/discovery", // discovery.Service is the DiscoveryService
	"server/grpcerr",   // the one table from store.Code to gRPC codes
	"server/presence/presencesvc",
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
	ImportPath   string
	Imports      []string
	TestImports  []string
	XTestImports []string
	Error        *struct{ Err string }
}

// packages lists every package of the module with its (non-test) imports,
// or, with tests, with the imports of its test files as well.
func packages(t *testing.T, tests bool) map[string][]string {
	t.Helper()
	cmd := exec.Command("go", "list", "-e", "-json=ImportPath,Imports,TestImports,XTestImports,Error", module+"/...")
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
		imps := p.Imports
		if tests {
			imps = slices.Concat(p.Imports, p.TestImports, p.XTestImports)
		}
		pkgs[strings.TrimPrefix(p.ImportPath, module+"/")] = imps
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

// TestGRPCStatusAtTheEdge: below the gRPC edge, no package imports
// grpc/status or grpc/codes, not even in its tests (which assert domain
// codes with store.ErrorCode, or a wire status through grpcerr).
func TestGRPCStatusAtTheEdge(t *testing.T) {
	pkgs := packages(t, true)
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
		if len(bad) > 0 {
			t.Errorf("%s imports %s (or its tests do): only the gRPC services, grpcerr and server/app may; return a *store.Error and let grpcerr map it at the edge", p, strings.Join(bad, ", "))
		}
	}
	for _, p := range grpcEdge {
		if _, ok := pkgs[p]; !ok {
			t.Errorf("%s is listed in grpcEdge but is not a package of the module", p)
		}
	}
}

// TestOneTechnologyPerPackage: no package imports two of Pebble, CQL and
// Redis. The implementation that speaks one belongs in that technology's
// package (store/pebble, store/scylla, the redis sub-packages); interfaces
// stay with their users.
func TestOneTechnologyPerPackage(t *testing.T) {
	pkgs := packages(t, false)
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
