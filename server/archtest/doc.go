// Package archtest holds no code: its test keeps the import rules of
// docs/architecture.md ("Import rules"), so that a package that breaks one
// fails the suite. It lists the module's packages with `go list -json`
// (the go command that runs the test) and checks each package's own
// imports (not its tests'):
//
//   - gRPC status codes belong to the edge: under server/, only the gRPC
//     service packages and server/app import google.golang.org/grpc/status
//     or google.golang.org/grpc/codes (plus an allow-list of the packages
//     that still do, which only shrinks);
//   - one technology per package: no package imports two of Pebble, CQL
//     (gocql, its ScyllaDB fork, gocqlx) and Redis (go-redis).
package archtest
