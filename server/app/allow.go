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
	// bodies: the methods whose operation takes a JSON body, and its
	// schema's properties.
	bodies map[string]bodySchema
}

// propSchema is what the REST edge checks of a body property.
type propSchema struct {
	typ      string   // JSON type: string, boolean, integer, array, object
	enum     []string // the values a string may take, if limited
	nonEmpty bool     // minLength >= 1: a string may not be ""
	// object: the properties of an object-typed property (a $ref to a
	// definition with properties), nil for any other type.
	object *bodySchema
}

// bodySchema is what the REST edge checks of a JSON body (see restEdge).
type bodySchema struct {
	props    map[string]propSchema // the documented properties
	required []string              // those the document marks required
	// closed: additionalProperties false, an unknown property is refused
	// (else ignored, as protojson's DiscardUnknown does).
	closed bool
}

// restRoutes is the REST surface as the OpenAPI document (generated from
// the same gateway mapping as the gateway's handlers) describes it: what
// the Allow header of a 405 lists.
type restRoutes []restRoute

// parseRESTRoutes reads the paths of an OpenAPI v2 document.
func parseRESTRoutes(doc []byte) (restRoutes, error) {
	type schema struct {
		Ref        string            `json:"$ref"`
		Additional any               `json:"additionalProperties"`
		Required   []string          `json:"required"`
		Type       string            `json:"type"`
		Enum       []string          `json:"enum"`
		MinLength  int               `json:"minLength"`
		Properties map[string]schema `json:"properties"`
	}
	var d struct {
		Paths map[string]map[string]struct {
			Parameters []struct {
				In     string `json:"in"`
				Schema schema `json:"schema"`
			} `json:"parameters"`
		} `json:"paths"`
		Definitions map[string]schema `json:"definitions"`
	}
	if err := json.Unmarshal(doc, &d); err != nil {
		return nil, fmt.Errorf("openapi: %w", err)
	}
	var rs restRoutes
	for p, ops := range d.Paths {
		r := restRoute{segs: strings.Split(strings.Trim(p, "/"), "/"), bodies: map[string]bodySchema{}}
		for m, op := range ops {
			switch m := strings.ToUpper(m); m {
			case http.MethodGet, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete:
				r.methods = append(r.methods, m)
				for _, prm := range op.Parameters {
					if prm.In != "body" {
						continue
					}
					sc := prm.Schema
					if ref, ok := strings.CutPrefix(sc.Ref, "#/definitions/"); ok {
						sc = d.Definitions[ref]
					}
					var props func(sc schema, depth int) bodySchema
					props = func(sc schema, depth int) bodySchema {
						b := bodySchema{props: map[string]propSchema{}, required: sc.Required, closed: sc.Additional == false}
						for k, p := range sc.Properties {
							if ref, ok := strings.CutPrefix(p.Ref, "#/definitions/"); ok {
								p = d.Definitions[ref]
							}
							ps := propSchema{typ: p.Type, enum: p.Enum, nonEmpty: p.MinLength > 0}
							if p.Type == "object" && len(p.Properties) > 0 && depth < 8 {
								o := props(p, depth+1)
								ps.object = &o
							}
							b.props[k] = ps
						}
						return b
					}
					r.bodies[m] = props(sc, 0)
				}
			}
		}
		rs = append(rs, r)
	}
	return rs, nil
}

// body reports whether the operation of method on path takes a JSON body,
// and its schema.
func (rs restRoutes) body(method, path string) (bodySchema, bool) {
	segs := strings.Split(strings.Trim(path, "/"), "/")
	for _, r := range rs {
		if r.match(segs) {
			if b, ok := r.bodies[method]; ok {
				return b, true
			}
		}
	}
	return bodySchema{}, false
}

// allowed returns the methods some route accepts for path (sorted, no
// duplicates), none if no route matches it. HEAD is there wherever GET is
// (restEdge answers it as GET without the body, RFC 9110 9.3.2).
func (rs restRoutes) allowed(path string) []string {
	segs := strings.Split(strings.Trim(path, "/"), "/")
	var out []string
	for _, r := range rs {
		if r.match(segs) {
			out = append(out, r.methods...)
		}
	}
	if slices.Contains(out, http.MethodGet) {
		out = append(out, http.MethodHead)
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
