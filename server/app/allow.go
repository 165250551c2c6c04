package app

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// restRoute is one path template of the REST surface and the methods it
// accepts.
type restRoute struct {
	segs    []string // "{name}" matches any one segment
	methods []string // upper case
}

// restRoutes is the REST surface as the OpenAPI document (generated from
// the same gateway mapping as the gateway's handlers) describes it: what
// the Allow header of a 405 lists.
type restRoutes []restRoute

// parseRESTRoutes reads the paths of an OpenAPI v2 document.
func parseRESTRoutes(doc []byte) (restRoutes, error) {
	var d struct {
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(doc, &d); err != nil {
		return nil, fmt.Errorf("openapi: %w", err)
	}
	var rs restRoutes
	for p, ops := range d.Paths {
		r := restRoute{segs: strings.Split(strings.Trim(p, "/"), "/")}
		for m := range ops {
			switch m := strings.ToUpper(m); m {
			case http.MethodGet, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete:
				r.methods = append(r.methods, m)
			}
		}
		rs = append(rs, r)
	}
	return rs, nil
}

// allowed returns the methods some route accepts for path (sorted, no
// duplicates), none if no route matches it.
func (rs restRoutes) allowed(path string) []string {
	segs := strings.Split(strings.Trim(path, "/"), "/")
	var out []string
	for _, r := range rs {
		if r.match(segs) {
			out = append(out, r.methods...)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func (r restRoute) match(segs []string) bool {
	if len(segs) != len(r.segs) {
		return false
	}
	for i, s := range r.segs {
		// A variable matches any segment, an empty one too: the gateway's
		// own matching routes "/v1/users/" to "/v1/users/{username}".
		if !(strings.HasPrefix(s, "{") && strings.HasSuffix(s, "}")) && s != segs[i] {
			return false
		}
	}
	return true
}

// routingErrors is the gateway's RoutingErrorHandler: a method the path
// does not accept is 405 Method Not Allowed with an Allow header listing
// the accepted methods (RFC 9110 15.5.6) rather than the gateway's default
// 501; other routing errors are the default's.
func (rs restRoutes) routingErrors(ctx context.Context, mux *runtime.ServeMux, m runtime.Marshaler, w http.ResponseWriter, r *http.Request, code int) {
	if code != http.StatusMethodNotAllowed {
		runtime.DefaultRoutingErrorHandler(ctx, mux, m, w, r, code)
		return
	}
	allow := rs.allowed(r.URL.EscapedPath())
	if len(allow) == 0 {
		// No documented route has this path: a 405 without Allow would be
		// wrong (RFC 9110 15.5.6 requires the header), so it is not found.
		runtime.DefaultRoutingErrorHandler(ctx, mux, m, w, r, http.StatusNotFound)
		return
	}
	msg := fmt.Sprintf("method %s not allowed on %s", r.Method, r.URL.Path)
	w.Header().Set("Allow", strings.Join(allow, ", "))
	msg += "; allowed: " + strings.Join(allow, ", ")
	runtime.HTTPError(ctx, mux, m, w, r, &runtime.HTTPStatusError{
		HTTPStatus: http.StatusMethodNotAllowed,
		Err:        status.Error(codes.Unimplemented, msg),
	})
}
