package discovery

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"testing"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

const (
	serving  = chatv1.ServerState_SERVER_STATE_SERVING
	draining = chatv1.ServerState_SERVER_STATE_DRAINING
)

func ep(id, zone string, load, capacity uint64, st chatv1.ServerState) *chatv1.Endpoint {
	return &chatv1.Endpoint{ServerId: id, GrpcAddress: id + ":9090", Zone: zone, Load: load, Capacity: capacity, State: st}
}

func idsOf(eps []*chatv1.Endpoint) []string {
	out := make([]string, len(eps))
	for i, e := range eps {
		out[i] = e.GetServerId()
	}
	return out
}

// TestRankNeverDrainingZoneFirstFullLast: whatever the draw, a draining
// server is never listed, every server of the client's zone with room
// comes before the others, and a full server is never first while one
// has room.
func TestRankNeverDrainingZoneFirstFullLast(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	for i := range 2000 {
		servers := []*chatv1.Endpoint{
			ep("a1", "a", uint64(rnd.IntN(100)), 100, serving),
			ep("a2", "a", uint64(rnd.IntN(100)), 100, serving),
			ep("a3", "a", 5, 100, draining),
			ep("b1", "b", uint64(rnd.IntN(100)), 100, serving),
			ep("b2", "b", 0, 100, draining),
			ep("full", "a", 100, 100, serving),
			ep("old", "b", 1, 0, chatv1.ServerState_SERVER_STATE_UNSPECIFIED), // a record from before the state field
		}
		zone := []string{"a", "b", "", "nowhere"}[i%4]
		got := idsOf(Rank(NewView(servers), zone, rnd))
		if slices.Contains(got, "a3") || slices.Contains(got, "b2") {
			t.Fatalf("zone %q: draining server listed: %v", zone, got)
		}
		if len(got) != 5 {
			t.Fatalf("zone %q: %v, want the 5 serving servers", zone, got)
		}
		if got[len(got)-1] != "full" {
			t.Fatalf("zone %q: the full server is not last: %v", zone, got)
		}
		if zone == "a" || zone == "b" {
			for j, id := range got[:len(got)-1] {
				inZone := servers[slices.IndexFunc(servers, func(e *chatv1.Endpoint) bool { return e.GetServerId() == id })].GetZone() == zone
				if want := j < map[string]int{"a": 2, "b": 2}[zone]; inZone != want {
					t.Fatalf("zone %q: %v: the zone's servers do not come first", zone, got)
				}
			}
		}
	}
	// Only full servers: listed (the client will be told when to retry), never empty.
	if got := idsOf(Rank(NewView([]*chatv1.Endpoint{ep("f1", "", 10, 10, serving), ep("f2", "", 12, 10, serving)}), "", nil)); len(got) != 2 {
		t.Fatalf("all full: %v", got)
	}
	if got := Rank(NewView([]*chatv1.Endpoint{ep("d", "", 0, 0, draining)}), "", nil); got != nil {
		t.Fatalf("only draining: %v, want nil", got)
	}
}

// TestSpread1000Clients: 1,000 clients ask Discovery (any of three
// servers, each ranking from its own view, refreshed from the servers'
// real stream counts every 100 calls as a ~1 s cache would be under a
// stampede of 300 clients a second) and connect to the first endpoint;
// each server ends within 10 % of even. Repeated with several seeds, from
// an empty cluster and from one where a server restarted empty.
func TestSpread1000Clients(t *testing.T) {
	for seed := range uint64(20) {
		for _, start := range [][3]uint64{{0, 0, 0}, {400, 400, 0}} {
			t.Run(fmt.Sprint(seed, start), func(t *testing.T) {
				rnd := rand.New(rand.NewPCG(seed, 7))
				streams := start
				views := [3]*View{}
				refresh := func(i int) {
					var s []*chatv1.Endpoint
					for j := range 3 {
						s = append(s, ep(fmt.Sprint("s", j), "", streams[j], 2000, serving))
					}
					views[i] = NewView(s)
				}
				for i := range 3 {
					refresh(i)
				}
				for n := range 1000 {
					asked := rnd.IntN(3)
					if n%100 == 0 {
						refresh(asked)
					}
					first := Rank(views[asked], "", rnd)[0].GetServerId()
					streams[first[1]-'0']++
				}
				total := start[0] + start[1] + start[2] + 1000
				even := float64(total) / 3
				for j, n := range streams {
					if d := float64(n) - even; d > 0.1*even || d < -0.1*even {
						t.Errorf("server s%d holds %d streams, even is %.0f (±10%%): %v", j, n, even, streams)
					}
				}
			})
		}
	}
}

// TestGetEndpoints: the service's zone is the default zone; bad input is
// InvalidArgument; no serving server is Unavailable.
func TestGetEndpoints(t *testing.T) {
	servers := []*chatv1.Endpoint{ep("x1", "x", 50, 100, serving), ep("y1", "y", 0, 100, serving)}
	svc := New(Config{Registry: fixed{NewView(servers)}, Zone: "x"})
	ctx := context.Background()
	resp, err := svc.GetEndpoints(ctx, &chatv1.GetEndpointsRequest{})
	if err != nil || resp.GetEndpoints()[0].GetServerId() != "x1" {
		t.Fatalf("own zone x: %v %v", idsOf(resp.GetEndpoints()), err)
	}
	resp, err = svc.GetEndpoints(ctx, &chatv1.GetEndpointsRequest{Zone: "y"})
	if err != nil || resp.GetEndpoints()[0].GetServerId() != "y1" {
		t.Fatalf("hint y: %v %v", idsOf(resp.GetEndpoints()), err)
	}
	long := string(make([]byte, MaxFieldBytes+1))
	for _, req := range []*chatv1.GetEndpointsRequest{{Zone: long}, {Username: long}} {
		if _, err := svc.GetEndpoints(ctx, req); status.Code(err) != codes.InvalidArgument {
			t.Errorf("oversized field: %v", err)
		}
	}
	svc = New(Config{Registry: fixed{NewView([]*chatv1.Endpoint{ep("d", "", 0, 0, draining)})}})
	if _, err := svc.GetEndpoints(ctx, &chatv1.GetEndpointsRequest{}); status.Code(err) != codes.Unavailable {
		t.Errorf("only a draining server: %v, want Unavailable", err)
	}
}

type fixed struct{ v *View }

func (f fixed) View() *View { return f.v }

// TestGetEndpointsUnspecifiedHost: this server's record with an address
// to listen on (":9090", "0.0.0.0:9090", "[::]:9090") is answered with
// the address the client reached it by: over gRPC the :authority is the
// gRPC address (its port too: a port mapping is kept) and its host the
// HTTP address's; through the gateway the Host (HTTPHostKey) is the HTTP
// address and its host the gRPC address's. A specified address, another
// server's record and a request that names no usable host are left as
// they are; the shared view is never modified.
func TestGetEndpointsUnspecifiedHost(t *testing.T) {
	self := &chatv1.Endpoint{ServerId: "me", GrpcAddress: "[::]:9090", HttpAddress: ":8080", State: serving}
	other := &chatv1.Endpoint{ServerId: "peer", GrpcAddress: "0.0.0.0:9091", HttpAddress: "0.0.0.0:8081", State: serving, Capacity: 1, Load: 1}
	svc := New(Config{Registry: fixed{NewView([]*chatv1.Endpoint{self, other})}, ServerID: "me"})
	in := func(kv ...string) context.Context {
		return metadata.NewIncomingContext(context.Background(), metadata.Pairs(kv...))
	}
	const unchanged = "[::]:9090 :8080"
	for _, tc := range []struct {
		name string
		ctx  context.Context
		want string // gRPC and HTTP address
	}{
		{"authority with port", in(":authority", "chat.example.com:9090"), "chat.example.com:9090 chat.example.com:8080"},
		{"authority through a port mapping", in(":authority", "127.0.0.1:19600"), "127.0.0.1:19600 127.0.0.1:8080"},
		{"authority IPv6", in(":authority", "[2001:db8::1]:443"), "[2001:db8::1]:443 [2001:db8::1]:8080"},
		{"authority IPv6 without port", in(":authority", "[2001:db8::1]"), "[2001:db8::1]:9090 [2001:db8::1]:8080"},
		{"authority without port", in(":authority", "10.1.2.3"), "10.1.2.3:9090 10.1.2.3:8080"},
		{"trailing dot", in(":authority", "chat.example.com.:9090"), "chat.example.com.:9090 chat.example.com.:8080"},
		{"gateway Host first", in(":authority", "127.0.0.1:9090", HTTPHostKey, "chat.example.com:18080"), "chat.example.com:9090 chat.example.com:18080"},
		{"gateway Host without port", in(":authority", "127.0.0.1:9090", HTTPHostKey, "chat.example.com"), "chat.example.com:9090 chat.example.com:8080"},
		{"gateway Host missing", in(":authority", "127.0.0.1:9090", HTTPHostKey, ""), unchanged},
		{"gateway Host twice (one from the client)", in(":authority", "127.0.0.1:9090", HTTPHostKey, "evil.example", HTTPHostKey, "chat.example.com"), unchanged},
		{"unspecified authority", in(":authority", "0.0.0.0:9090"), unchanged},
		{"unspecified IPv6 authority", in(":authority", "[::]"), unchanged},
		{"IPv6 without brackets", in(":authority", "2001:db8::1"), unchanged},
		{"too many colons", in(":authority", "a:b:c"), unchanged},
		{"port zero", in(":authority", "chat.example.com:0"), unchanged},
		{"port too big", in(":authority", "chat.example.com:65536"), unchanged},
		{"port with sign", in(":authority", "chat.example.com:+80"), unchanged},
		{"semicolon", in(":authority", "a;b"), unchanged},
		{"markup", in(":authority", `a"b<script>`), unchanged},
		{"user info", in(":authority", "user@chat.example.com"), unchanged},
		{"non-ASCII", in(":authority", "chät.example.com"), unchanged},
		{"empty label", in(":authority", "chat..example.com"), unchanged},
		{"long label", in(":authority", strings.Repeat("a", 64)+".com"), unchanged},
		{"huge", in(":authority", strings.Repeat("a.", 150)+"com"), unchanged},
		{"no metadata", context.Background(), unchanged},
		{"numeric name 0", in(":authority", "0:19190"), unchanged},
		{"numeric name 127.1", in(":authority", "127.1:7"), unchanged},
		{"numeric name 1.2.3", in(":authority", "1.2.3"), unchanged},
		{"label starting with a hyphen", in(":authority", "x.-y:1"), unchanged},
		{"label ending with a hyphen", in(":authority", "x-.y:1"), unchanged},
		{"digits in a name", in(":authority", "chat1.example2.com:9090"), "chat1.example2.com:9090 chat1.example2.com:8080"},
		{"grpc-web: the Host of the HTTP port", peer.NewContext(in(":authority", "chat.example.com:8443"), &peer.Peer{LocalAddr: &net.TCPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 8080}}), "chat.example.com:9090 chat.example.com:8443"},
		{"native gRPC on the gRPC port", peer.NewContext(in(":authority", "chat.example.com:19600"), &peer.Peer{LocalAddr: &net.TCPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 9090}}), "chat.example.com:19600 chat.example.com:8080"},
	} {
		resp, err := svc.GetEndpoints(tc.ctx, &chatv1.GetEndpointsRequest{})
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		eps := resp.GetEndpoints()
		if len(eps) != 2 || eps[0].GetServerId() != "me" {
			t.Fatalf("%s: endpoints %v", tc.name, idsOf(eps))
		}
		if got := eps[0].GetGrpcAddress() + " " + eps[0].GetHttpAddress(); got != tc.want {
			t.Errorf("%s: self = %s, want %s", tc.name, got, tc.want)
		}
		if eps[1].GetGrpcAddress() != "0.0.0.0:9091" {
			t.Errorf("%s: another server's record rewritten: %s", tc.name, eps[1].GetGrpcAddress())
		}
	}
	if self.GetGrpcAddress() != "[::]:9090" || self.GetHttpAddress() != ":8080" {
		t.Errorf("the view's record was modified: %v", self)
	}
	// A specified address is never rewritten; with one of the two
	// unspecified only that one is.
	svc = New(Config{Registry: fixed{NewView([]*chatv1.Endpoint{{ServerId: "me", GrpcAddress: "192.0.2.7:9090", HttpAddress: ":8080", State: serving}})}, ServerID: "me"})
	resp, err := svc.GetEndpoints(in(":authority", "chat.example.com:19600"), &chatv1.GetEndpointsRequest{})
	if err != nil || resp.GetEndpoints()[0].GetGrpcAddress() != "192.0.2.7:9090" || resp.GetEndpoints()[0].GetHttpAddress() != "chat.example.com:8080" {
		t.Errorf("specified gRPC address: %v %v", resp.GetEndpoints(), err)
	}
}

func TestUnspecified(t *testing.T) {
	for addr, want := range map[string]bool{
		":9090": true, "0.0.0.0:9090": true, "[::]:9090": true, "[0:0::0]:1": true,
		"127.0.0.1:9090": false, "[::1]:9090": false, "chat.example.com:9090": false, "": false, "nonsense": false,
	} {
		if got := Unspecified(addr); got != want {
			t.Errorf("Unspecified(%q) = %v, want %v", addr, got, want)
		}
	}
}
