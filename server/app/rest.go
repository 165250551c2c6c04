package app

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"mime"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
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
//   - HEAD on a path that accepts GET is that GET without the content
//     (RFC 9110 9.3.2).
//   - A body over maxBytes is 413 Content Too Large (RFC 9110 15.5.14),
//     not the gateway's 400 for a failed read. Its code is
//     ResourceExhausted, what grpc-go answers a gRPC message over
//     MaxRecvMsgSize (no gRPC code maps to 413 in the gateway's
//     runtime.HTTPStatusFromCode).
//   - A body sent with a Content-Type other than JSON (application/json
//     or application/*+json) is 415 Unsupported Media Type (RFC 9110
//     15.5.16); no Content-Type is read as JSON. Its code is
//     InvalidArgument, what grpc-go's transport sends with its own 415
//     for a request that is not application/grpc.
//   - Only one JSON value, with no data after it; an unknown property
//     (not in the document, at any depth) is 400 naming it.
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
	if r.Method == http.MethodHead && slices.Contains(e.routes.allowed(r.URL.EscapedPath()), http.MethodGet) {
		// HEAD is GET without the content (RFC 9110 9.3.2): the gateway
		// serves the GET; net/http sends its status and headers and drops
		// the body, as it does for any HEAD request.
		r = r.Clone(r.Context())
		r.Method = http.MethodGet
	}
	schema, hasBody := e.routes.body(r.Method, r.URL.EscapedPath())
	if r.ContentLength > e.maxBytes {
		e.fail(w, r, http.StatusRequestEntityTooLarge, store.Errorf(store.CodeResourceExhausted,
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
			e.fail(w, r, http.StatusRequestEntityTooLarge, store.Errorf(store.CodeResourceExhausted,
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
	// One JSON value and nothing after it: the gateway's decoder reads the
	// first value and would ignore the rest ({...} xyz, two objects).
	dec := json.NewDecoder(bytes.NewReader(body))
	var first json.RawMessage
	if dec.Decode(&first) == nil {
		if _, err := dec.Token(); err != io.EOF {
			e.fail(w, r, http.StatusBadRequest, store.Errorf(store.CodeInvalid,
				"the body has data after its JSON value: send one JSON object").WithField("*"))
			return
		}
	}
	var obj map[string]json.RawMessage
	// Not an object: the gateway's decoder answers that (400).
	if json.Unmarshal(body, &obj) == nil {
		if err := checkObject("", schema, obj); err != nil {
			e.fail(w, r, http.StatusBadRequest, err)
			return
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

// checkObject checks the properties of the JSON object obj against sc:
// checkProp accepts the value of each documented one (by its JSON name, or
// the proto field name protojson also reads); an object-typed property's
// own properties likewise. prefix is the proto field path of obj ("" for
// the body, "web_push." inside a property). Where the document closes the
// object (additionalProperties false: every body but the browser's
// PushSubscription JSON, see openapi.go) an unknown property is refused
// rather than ignored: a misspelt field (upToMessageId for messageId)
// would otherwise leave its field unset, and MarkRead without a message id
// marks the whole channel read.
func checkObject(prefix string, sc bodySchema, obj map[string]json.RawMessage) error {
	for k, v := range obj {
		ps, known := sc.props[k]
		if !known && snakeCase(lowerCamel(k)) == k {
			ps, known = sc.props[lowerCamel(k)]
		}
		if !known && !sc.closed {
			continue // ignored (protojson DiscardUnknown)
		}
		if !known {
			names := slices.Sorted(maps.Keys(sc.props))
			return store.Errorf(store.CodeInvalid, "unknown property %q: this object has %s",
				prefix+k, strings.Join(names, ", ")).WithField(prefix + k)
		}
		v = bytes.TrimSpace(v)
		if err := checkProp(prefix+k, ps, v); err != nil {
			return err
		}
		if ps.object != nil && len(v) > 0 && v[0] == '{' {
			var inner map[string]json.RawMessage
			if json.Unmarshal(v, &inner) == nil {
				if err := checkObject(prefix+snakeCase(lowerCamel(k))+".", *ps.object, inner); err != nil {
					return err
				}
			}
		}
	}
	return nil
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
//
// An error with a google.rpc.RetryInfo (a rate limit's 429) carries its
// retry_delay as Retry-After (RFC 9110 10.2.3): whole seconds, rounded
// up, at least 1.
func restErrors(ctx context.Context, mux *runtime.ServeMux, m runtime.Marshaler, w http.ResponseWriter, r *http.Request, err error) {
	if status.Code(err) == codes.FailedPrecondition {
		err = &runtime.HTTPStatusError{HTTPStatus: http.StatusConflict, Err: err}
	}
	if d, ok := grpcerr.RetryDelay(err); ok {
		w.Header().Set("Retry-After", strconv.FormatInt(retryAfterSeconds(d), 10))
	}
	runtime.DefaultHTTPErrorHandler(ctx, mux, m, &challengeWriter{ResponseWriter: w, r: r}, r, err)
}

// retryAfterSeconds is d as a Retry-After delay-seconds (RFC 9110
// 10.2.3, a non-negative integer): whole seconds rounded up, at least 1
// (0 would invite an immediate retry the limiter refuses again).
func retryAfterSeconds(d time.Duration) int64 {
	s := int64((d + time.Second - 1) / time.Second)
	return max(s, 1)
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
