// Package discovery tells clients which chat server to open their Chat
// stream on.
//
// Every chat server publishes a record of itself (a chatv1.Endpoint:
// server id, gRPC and HTTP addresses, zone, capacity, open streams,
// SERVING or DRAINING, version) through a Registry: itself alone on a
// single node (Local), every live server of a cluster in Redis
// (discovery/redis, a heartbeat with a lease of a few seconds). The
// Registry keeps a View of the servers in memory, refreshed in the
// background, so GetEndpoints costs no I/O.
//
// Ranking (Rank): serving servers only; the client's zone first (the
// request's zone, else the answering server's); within it, a server with
// room before a full one; the first is the less loaded of two servers
// drawn at random among those with room (power of two choices, Mitzenmacher
// 2001), the rest by load. Load is open streams over capacity, plus the
// clients this server has sent to each since the view was refreshed (so
// a burst of calls within one refresh does not all land on the server the
// view says is emptiest).
package discovery

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/chatd/chatd/server/store"
)

// MaxFieldBytes bounds GetEndpointsRequest's username and zone.
const MaxFieldBytes = 256

// View is a registry's picture of the live servers at one moment. Servers
// must not be modified. A View is shared by concurrent GetEndpoints calls
// until the registry replaces it; given counts the clients sent to each
// server from it (see Rank).
type View struct {
	Servers []*chatv1.Endpoint
	given   []atomic.Int64
}

// NewView returns a View of servers (not copied).
func NewView(servers []*chatv1.Endpoint) *View {
	return &View{Servers: servers, given: make([]atomic.Int64, len(servers))}
}

// Registry lists the chat servers a client may connect to.
type Registry interface {
	// View returns the current view of the live servers, this one
	// included (its own record as of its last report). It does no I/O
	// and never returns nil.
	View() *View
}

// Local is the single-node Registry: the view is this server's own
// record, read from Self at each call.
type Local struct {
	Self func() *chatv1.Endpoint
}

// View implements Registry.
func (l Local) View() *View { return NewView([]*chatv1.Endpoint{l.Self()}) }

// Serving reports whether e accepts new streams: SERVING, or a record of a
// server that predates the state field (UNSPECIFIED).
func Serving(e *chatv1.Endpoint) bool {
	return e.GetState() == chatv1.ServerState_SERVER_STATE_SERVING || e.GetState() == chatv1.ServerState_SERVER_STATE_UNSPECIFIED
}

// Full reports whether e is at its capacity (never, without one).
func Full(e *chatv1.Endpoint) bool {
	return e.GetCapacity() > 0 && e.GetLoad() >= e.GetCapacity()
}

// Rank returns the serving servers of v, best first for a client of zone
// (see the package doc), and counts one client given to the first. A
// server of another zone comes after every server of zone that has room;
// full servers come last. rnd draws the two candidates (nil: the global
// source). Rank returns nil when no server is serving.
func Rank(v *View, zone string, rnd *rand.Rand) []*chatv1.Endpoint {
	type cand struct {
		i    int
		e    *chatv1.Endpoint
		tier int     // 0: zone with room, 1: other zone with room, 2: full
		load float64 // effective streams / capacity
	}
	cs := make([]cand, 0, len(v.Servers))
	hasZone := false
	for _, e := range v.Servers {
		if Serving(e) && zone != "" && e.GetZone() == zone {
			hasZone = true
			break
		}
	}
	for i, e := range v.Servers {
		if !Serving(e) {
			continue
		}
		streams := float64(e.GetLoad()) + float64(v.given[i].Load())
		c := cand{i: i, e: e, load: streams / capOf(e)}
		switch {
		case e.GetCapacity() > 0 && streams >= float64(e.GetCapacity()):
			c.tier = 2
		case hasZone && e.GetZone() != zone:
			c.tier = 1
		}
		cs = append(cs, c)
	}
	if len(cs) == 0 {
		return nil
	}
	slices.SortStableFunc(cs, func(a, b cand) int {
		if a.tier != b.tier {
			return a.tier - b.tier
		}
		switch {
		case a.load < b.load:
			return -1
		case a.load > b.load:
			return 1
		}
		return 0
	})
	// Power of two choices among the best tier's servers.
	n := 0
	for n < len(cs) && cs[n].tier == cs[0].tier {
		n++
	}
	if n >= 2 && cs[0].tier < 2 {
		x, y := randN(rnd, n), randN(rnd, n-1)
		if y >= x {
			y++
		}
		pick := x
		if cs[y].load < cs[x].load || (cs[y].load == cs[x].load && randN(rnd, 2) == 0) {
			pick = y
		}
		first := cs[pick]
		copy(cs[1:pick+1], cs[:pick])
		cs[0] = first
	}
	v.given[cs[0].i].Add(1)
	out := make([]*chatv1.Endpoint, len(cs))
	for i, c := range cs {
		out[i] = c.e
	}
	return out
}

// unbounded is the capacity Rank assumes for a server without one.
const unbounded = 1 << 20

func capOf(e *chatv1.Endpoint) float64 {
	if c := e.GetCapacity(); c > 0 {
		return float64(c)
	}
	return unbounded
}

func randN(r *rand.Rand, n int) int {
	if r != nil {
		return r.IntN(n)
	}
	return rand.IntN(n)
}

// Service implements chatv1.DiscoveryServiceServer. It needs no
// authentication: clients call it before they log in.
type Service struct {
	chatv1.UnimplementedDiscoveryServiceServer
	reg  Registry
	zone string
	self string
	log  *slog.Logger
}

// Config configures a Service.
type Config struct {
	// Registry is where the servers come from. Required.
	Registry Registry
	// Zone is this server's zone: the default of a request's zone.
	Zone string
	// ServerID is this server's id. When its own record's address has an
	// unspecified host (it listens on all interfaces, ":9090", and was
	// given no advertise address), GetEndpoints answers with the host the
	// client reached it by instead (see GetEndpoints). Empty: never.
	ServerID string
	// Logger; nil means slog.Default().
	Logger *slog.Logger
}

// New returns a Service answering from cfg.Registry.
func New(cfg Config) *Service {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Service{reg: cfg.Registry, zone: cfg.Zone, self: cfg.ServerID, log: cfg.Logger}
}

// GetEndpoints returns the serving servers, best first (Rank), from the
// registry's view (no I/O). Errors: InvalidArgument for a username that is
// not empty and not a valid one (store.CanonicalUsername) or a zone longer
// than MaxFieldBytes, Unavailable when no server is serving.
//
// An address with an unspecified host ("0.0.0.0:9090", "[::]:9090",
// ":9090": a server listening on every interface without an advertise
// address) is no address a client elsewhere can dial: it names the
// client's own machine. In this server's own record such an address is
// replaced by the one the client reached this server by (see reachedBy):
// over gRPC the request's :authority (RFC 9113 section 8.3.1) is the gRPC
// address, port included (a client behind a port mapping keeps it), and
// its host with this server's HTTP port the HTTP address; through the
// REST gateway the HTTP Host header (HTTPHostKey) is the HTTP address and
// its host with this server's gRPC port the gRPC address. Other servers'
// records are returned as they are: a cluster must advertise addresses
// (the server warns at start-up).
func (s *Service) GetEndpoints(ctx context.Context, req *chatv1.GetEndpointsRequest) (*chatv1.GetEndpointsResponse, error) {
	if u := req.GetUsername(); u != "" {
		if _, err := store.CanonicalUsername(u); err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
	}
	if len(req.GetZone()) > MaxFieldBytes {
		return nil, status.Errorf(codes.InvalidArgument, "zone exceeds %d bytes", MaxFieldBytes)
	}
	zone := req.GetZone()
	if zone == "" {
		zone = s.zone
	}
	eps := Rank(s.reg.View(), zone, nil)
	if len(eps) == 0 {
		return nil, status.Error(codes.Unavailable, "no chat server is available")
	}
	for i, e := range eps {
		if s.self != "" && e.GetServerId() == s.self && (Unspecified(e.GetGrpcAddress()) || Unspecified(e.GetHttpAddress())) {
			if grpcAddr, httpAddr, ok := reachedBy(ctx, e); ok {
				c := proto.CloneOf(e) // the view's records are shared
				c.GrpcAddress, c.HttpAddress = grpcAddr, httpAddr
				eps[i] = c
			}
		}
	}
	return &chatv1.GetEndpointsResponse{Endpoints: eps}, nil
}

// Unspecified reports whether addr ("host:port") has an empty or
// unspecified host (0.0.0.0, ::): an address to listen on, not one to
// dial from elsewhere. An address that does not parse is not.
func Unspecified(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsUnspecified()
}

// HTTPHostKey is the metadata key under which the REST gateway passes a
// request's HTTP Host header (runtime.WithMetadata in server/app). A
// request with it is answered from it alone (the gateway's own :authority
// names the loopback it dials); with more than one value (a client added
// its own through a Grpc-Metadata- header) it names nothing.
const HTTPHostKey = "x-chatd-http-host"

// reachedBy returns the gRPC and HTTP addresses the client reached this
// server by, for this server's record e (see GetEndpoints): each of e's
// addresses with an unspecified host is replaced, the other kept. ok is
// false when the request names no usable host (none, an unspecified one,
// or one that is not a DNS name or IP literal, with an optional port).
func reachedBy(ctx context.Context, e *chatv1.Endpoint) (grpcAddr, httpAddr string, ok bool) {
	md, _ := metadata.FromIncomingContext(ctx)
	key, overHTTP := ":authority", false
	if len(md.Get(HTTPHostKey)) > 0 {
		key, overHTTP = HTTPHostKey, true
	} else if p, ok := peer.FromContext(ctx); ok && p.LocalAddr != nil && samePort(p.LocalAddr, e.GetHttpAddress()) {
		// grpc-web: the request came in on the HTTP port, whose Host
		// header grpc-go passes on as :authority.
		overHTTP = true
	}
	v := md.Get(key)
	if len(v) != 1 {
		return "", "", false
	}
	host, port, ok := hostPort(v[0])
	if !ok {
		return "", "", false
	}
	grpcAddr, httpAddr = withHost(e.GetGrpcAddress(), host, ""), withHost(e.GetHttpAddress(), host, "")
	if port != "" {
		if overHTTP {
			httpAddr = withHost(e.GetHttpAddress(), host, port)
		} else {
			grpcAddr = withHost(e.GetGrpcAddress(), host, port)
		}
	}
	return grpcAddr, httpAddr, true
}

// samePort reports whether a's port is addr's ("host:port").
func samePort(a net.Addr, addr string) bool {
	_, p1, err1 := net.SplitHostPort(a.String())
	_, p2, err2 := net.SplitHostPort(addr)
	return err1 == nil && err2 == nil && p1 == p2
}

// withHost returns addr with its host replaced by host, and its port by
// port unless empty, when addr's host is unspecified (see Unspecified);
// else addr.
func withHost(addr, host, port string) string {
	if !Unspecified(addr) {
		return addr
	}
	if port == "" {
		_, port, _ = net.SplitHostPort(addr)
	}
	return net.JoinHostPort(host, port)
}

// hostPort splits an :authority or Host value into a host (a DNS name of
// letters, digits, '-' and '.', or an IP literal that is not unspecified;
// IPv6 in brackets) and a port (1 to 65535, or empty when absent). ok is
// false for anything else, and for names resolvers read as IPv4 addresses
// ("0", "127.1") (RFC 3986 section 3.2.2's reg-name is wider,
// but no dialable chat server needs more, and the answer must not carry
// what a client did not send as a host).
func hostPort(v string) (host, port string, ok bool) {
	if len(v) == 0 || len(v) > 261 {
		return "", "", false
	}
	host = v
	if h, p, err := net.SplitHostPort(v); err == nil {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 || strconv.Itoa(n) != p {
			return "", "", false
		}
		host, port = h, p
	} else if strings.HasPrefix(v, "[") && strings.HasSuffix(v, "]") {
		host = v[1 : len(v)-1]
		if net.ParseIP(host) == nil || !strings.Contains(host, ":") {
			return "", "", false
		}
	}
	if ip := net.ParseIP(host); ip != nil {
		if ip.IsUnspecified() || (strings.Contains(host, ":") && !strings.Contains(v, "[")) {
			return "", "", false // IPv6 needs its brackets
		}
		return host, port, true
	}
	if len(host) > 253 || strings.HasPrefix(host, ".") || strings.HasPrefix(host, "-") || strings.Contains(host, "..") {
		return "", "", false
	}
	labels := strings.Split(strings.TrimSuffix(host, "."), ".")
	// An all-numeric last label is no DNS name (RFC 1123 section 2.1);
	// resolvers read "0", "127.1" or "1.2.3" as IPv4 addresses.
	if strings.Trim(labels[len(labels)-1], "0123456789") == "" {
		return "", "", false
	}
	for _, label := range labels {
		if len(label) == 0 || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return "", "", false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return "", "", false
			}
		}
	}
	return host, port, true
}
