// Package discovery tells clients which chat server to open their Chat
// stream on. A single node answers with itself; a cluster registry (see
// Registry) ranks the live servers.
package discovery

import (
	"context"
	"log/slog"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/chatd/chatd/server/store"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Registry lists the chat servers a client may connect to.
type Registry interface {
	// Endpoints returns the live servers, best first for username (which
	// may be empty).
	Endpoints(ctx context.Context, username string) ([]*chatv1.Endpoint, error)
}

// Static is the single-node Registry: it always answers with Self, whose
// Load is read from the LoadFunc at each call.
type Static struct {
	Self     *chatv1.Endpoint
	LoadFunc func() uint64 // connected devices; may be nil
}

// Endpoints implements Registry.
func (s Static) Endpoints(context.Context, string) ([]*chatv1.Endpoint, error) {
	e := &chatv1.Endpoint{
		ServerId:    s.Self.GetServerId(),
		GrpcAddress: s.Self.GetGrpcAddress(),
		HttpAddress: s.Self.GetHttpAddress(),
	}
	if s.LoadFunc != nil {
		e.Load = s.LoadFunc()
	}
	return []*chatv1.Endpoint{e}, nil
}

// Service implements chatv1.DiscoveryServiceServer. It needs no
// authentication: clients call it before they log in.
type Service struct {
	chatv1.UnimplementedDiscoveryServiceServer
	reg Registry
}

// New returns a Service answering from reg.
func New(reg Registry) *Service { return &Service{reg: reg} }

// GetEndpoints returns the endpoints, best first for the username (given
// to the registry in its canonical form, store.CanonicalUsername, so
// that "Alice" and "alice" rank alike). Errors: InvalidArgument for a
// username that is not empty and not a valid one, Unavailable when the
// registry cannot be read.
func (s *Service) GetEndpoints(ctx context.Context, req *chatv1.GetEndpointsRequest) (*chatv1.GetEndpointsResponse, error) {
	user := req.GetUsername()
	if user != "" {
		id, err := store.CanonicalUsername(user)
		if err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		user = id
	}
	eps, err := s.reg.Endpoints(ctx, user)
	if err != nil {
		slog.ErrorContext(ctx, "discovery: registry", "err", err)
		return nil, status.Error(codes.Unavailable, "server registry unavailable")
	}
	if len(eps) == 0 {
		return nil, status.Error(codes.Unavailable, "no chat server is available")
	}
	return &chatv1.GetEndpointsResponse{Endpoints: eps}, nil
}
