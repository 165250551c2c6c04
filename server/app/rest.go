package app

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"slices"
	"strings"
	"unicode"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/chatd/chatd/server/grpcerr"
	"github.com/chatd/chatd/server/store"
)

// The HTTP rules of the REST surface (/v1/) that grpc-gateway does not
// apply itself, checked before the gateway decodes a request. Each answer
// is a google.rpc.Status body as the gateway writes its own errors.
//
//   - A body over maxBytes is 413 Content Too Large (RFC 9110 15.5.14),
//     not the gateway's 400 for a failed read.
//   - A body sent with a Content-Type other than JSON (application/json
//     or application/*+json) is 415 Unsupported Media Type (RFC 9110
//     15.5.16); no Content-Type is read as JSON.
//   - An operation that takes a body (the OpenAPI document's) answers
//     400 with a google.rpc.BadRequest detail when the body is empty, a
//     property the document marks required is missing, a property is
//     null (no property is nullable: omit it to leave it unset), or a
//     property's JSON type is not the documented one (protojson would
//     take the number 5 for a uint64 or enum the document says is a
//     string). The
//     gateway would decode each as the zero value, and a PUT
//     /v1/users/me/read-receipts without a body would turn read receipts
//     back on.
type restEdge struct {
	routes   restRoutes
	mux      *runtime.ServeMux
	next     http.Handler
	maxBytes int64
}

func (e *restEdge) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	schema, hasBody := e.routes.body(r.Method, r.URL.EscapedPath())
	if r.ContentLength > e.maxBytes {
		e.fail(w, r, http.StatusRequestEntityTooLarge, store.Errorf(store.CodeInvalid,
			"request body exceeds %d bytes", e.maxBytes))
		return
	}
	if !hasBody {
		// The gateway reads no body for this operation.
		r.Body = http.MaxBytesReader(w, r.Body, e.maxBytes)
		e.next.ServeHTTP(w, r)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, e.maxBytes))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			e.fail(w, r, http.StatusRequestEntityTooLarge, store.Errorf(store.CodeInvalid,
				"request body exceeds %d bytes", e.maxBytes))
			return
		}
		e.fail(w, r, http.StatusBadRequest, store.Errorf(store.CodeInvalid, "reading the request body failed"))
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != "" && !isJSONMediaType(ct) {
		e.fail(w, r, http.StatusUnsupportedMediaType, store.Errorf(store.CodeInvalid,
			"Content-Type %q is not JSON: send application/json", ct))
		return
	}
	if len(bytes.TrimSpace(body)) == 0 {
		e.fail(w, r, http.StatusBadRequest, store.Errorf(store.CodeInvalid,
			"this operation needs a JSON object body").WithField("*"))
		return
	}
	var obj map[string]json.RawMessage
	// Not an object: the gateway's decoder answers that (400).
	if json.Unmarshal(body, &obj) == nil {
		for k, v := range obj {
			typ, known := schema.props[k]
			if !known {
				typ, known = schema.props[lowerCamel(k)]
			}
			if !known {
				continue // ignored (protojson DiscardUnknown)
			}
			if err := checkProp(k, typ, bytes.TrimSpace(v)); err != nil {
				e.fail(w, r, http.StatusBadRequest, err)
				return
			}
		}
		for _, p := range schema.required {
			_, ok := obj[p]
			if !ok {
				_, ok = obj[snakeCase(p)] // protojson reads both names
			}
			if !ok {
				e.fail(w, r, http.StatusBadRequest, store.Errorf(store.CodeInvalid,
					"%s is required", p).WithField(snakeCase(p)))
				return
			}
		}
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	e.next.ServeHTTP(w, r)
}

// fail writes err (a domain error, with its details) with HTTP status code.
func (e *restEdge) fail(w http.ResponseWriter, r *http.Request, code int, err error) {
	_, out := runtime.MarshalerForRequest(e.mux, r)
	runtime.HTTPError(r.Context(), e.mux, out, w, r, &runtime.HTTPStatusError{HTTPStatus: code, Err: grpcerr.Status(err)})
}

// isJSONMediaType reports whether a Content-Type value names JSON:
// application/json or a structured syntax suffix +json (RFC 6839).
func isJSONMediaType(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return false
	}
	return mt == "application/json" || (strings.HasPrefix(mt, "application/") && strings.HasSuffix(mt, "+json"))
}

// snakeCase turns a protojson field name (lowerCamelCase) into the proto
// field name: "hideReadReceipts" -> "hide_read_receipts".
func snakeCase(s string) string {
	var b strings.Builder
	for _, r := range s {
		if unicode.IsUpper(r) {
			b.WriteByte('_')
			r = unicode.ToLower(r)
		}
		b.WriteRune(r)
	}
	return b.String()
}

// checkProp checks the JSON value v of property name against its
// documented schema: its JSON type (if documented), not null, one of the
// enum values if there are some, not "" if it has a minimum length.
func checkProp(name string, ps propSchema, v []byte) error {
	if err := jsonKind(name, ps.typ, v); err != nil {
		return err
	}
	if v[0] != '"' || (len(ps.enum) == 0 && !ps.nonEmpty) {
		return nil
	}
	var str string
	if json.Unmarshal(v, &str) != nil {
		return nil // the gateway's decoder answers that
	}
	if ps.nonEmpty && str == "" {
		return store.Errorf(store.CodeInvalid, "%s is empty: omit a property to leave it unset", name).WithField(snakeCase(name))
	}
	if len(ps.enum) > 0 && !slices.Contains(ps.enum, str) {
		return store.Errorf(store.CodeInvalid, "%s must be one of %s", name, strings.Join(ps.enum, ", ")).WithField(snakeCase(name))
	}
	return nil
}

// jsonKind checks that the JSON value v of property name has the
// documented JSON type typ ("" is not checked) and is not null.
func jsonKind(name, typ string, v []byte) error {
	if len(v) == 0 {
		return nil
	}
	var got string
	switch c := v[0]; {
	case c == 'n':
		return store.Errorf(store.CodeInvalid, "%s is null: omit a property to leave it unset", name).WithField(snakeCase(name))
	case c == '"':
		got = "string"
	case c == 't' || c == 'f':
		got = "boolean"
	case c == '[':
		got = "array"
	case c == '{':
		got = "object"
	default:
		got = "number"
	}
	want := typ
	if want == "integer" {
		want = "number"
	}
	if want == "" || got == want {
		return nil
	}
	return store.Errorf(store.CodeInvalid, "%s must be a JSON %s", name, typ).WithField(snakeCase(name))
}

// lowerCamel turns a proto field name into its protojson name:
// "hide_read_receipts" -> "hideReadReceipts".
func lowerCamel(s string) string {
	var b strings.Builder
	up := false
	for _, r := range s {
		if r == '_' {
			up = true
			continue
		}
		if up {
			r = unicode.ToUpper(r)
			up = false
		}
		b.WriteRune(r)
	}
	return b.String()
}

// restErrors is the gateway's error handler: the default one, with the
// 401 challenge of RFC 6750 section 3 instead of the status message the
// default puts in WWW-Authenticate: `Bearer realm="chatd"` when the request
// carried no bearer token, plus error="invalid_token" and an
// error_description when it carried one that failed (malformed, expired,
// revoked).
//
// FailedPrecondition (the state of what the request names does not allow
// it) is 409 Conflict (RFC 9110 15.5.10) rather than the gateway's 400,
// which stays for requests that are wrong whatever the state.
func restErrors(ctx context.Context, mux *runtime.ServeMux, m runtime.Marshaler, w http.ResponseWriter, r *http.Request, err error) {
	if status.Code(err) == codes.FailedPrecondition {
		err = &runtime.HTTPStatusError{HTTPStatus: http.StatusConflict, Err: err}
	}
	runtime.DefaultHTTPErrorHandler(ctx, mux, m, &challengeWriter{ResponseWriter: w, r: r}, r, err)
}

// Realm is the realm of chatd's bearer challenges (RFC 6750 3).
const bearerRealm = "chatd"

type challengeWriter struct {
	http.ResponseWriter
	r *http.Request
}

func (c *challengeWriter) WriteHeader(code int) {
	if code == http.StatusUnauthorized {
		c.Header().Set("WWW-Authenticate", bearerChallenge(c.r.Header.Get("Authorization"), c.Header().Get("WWW-Authenticate")))
	}
	c.ResponseWriter.WriteHeader(code)
}

func (c *challengeWriter) Write(b []byte) (int, error) { return c.ResponseWriter.Write(b) }

// bearerChallenge is the WWW-Authenticate value of a 401 for a request
// with the given Authorization header; desc is why the token failed.
func bearerChallenge(authz, desc string) string {
	scheme, _, _ := strings.Cut(strings.TrimSpace(authz), " ")
	if !strings.EqualFold(scheme, "Bearer") {
		// No bearer credentials at all: no error code (RFC 6750 3.1).
		return fmt.Sprintf("Bearer realm=%q", bearerRealm)
	}
	// error_description: %x20-21 / %x23-5B / %x5D-7E (RFC 6750 3).
	desc = strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7E || r == '"' || r == '\\' {
			return -1
		}
		return r
	}, desc)
	return fmt.Sprintf("Bearer realm=%q, error=\"invalid_token\", error_description=%q", bearerRealm, desc)
}

// restHeaders is the gateway's outgoing header matcher: gRPC response
// metadata goes out as Grpc-Metadata-* headers, except content-type
// (always application/grpc, the gRPC transport's, meaningless to a REST
// client).
func restHeaders(key string) (string, bool) {
	if key == "content-type" {
		return "", false
	}
	return runtime.MetadataHeaderPrefix + key, true
}
