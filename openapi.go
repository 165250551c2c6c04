// Package chatd holds files embedded into the binaries: the generated
// OpenAPI document of the REST surface.
package chatd

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"strings"
)

//go:embed gen/openapi/chat.swagger.json
var generatedOpenAPI []byte

// OpenAPI is the OpenAPI v2 document of the REST surface, served by chatd
// at /openapi.json: the one generated from proto/ by buf
// (gen/openapi/chat.swagger.json, with the options of
// proto/chat/v1/openapi.yaml) plus what protoc-gen-openapiv2 does not
// carry from those options: queryRules (it copies only the pattern to a
// query parameter), an enum narrowing an enum-typed field (it keeps the
// $ref beside it, where validators ignore it), the response headers
// (it drops them), and additionalProperties false on the request bodies'
// schemas and the objects in them (chatd refuses a property the document
// does not name, server/app restEdge).
var OpenAPI = withQueryRules(generatedOpenAPI)

// queryRules are properties of query parameters, by operationId and
// parameter name: the page_size bounds of ListChannels (server/chat
// MaxChannelsPage) and GetHistory (MaxHistoryPage), 0 meaning the default,
// and the client_message_id DeleteMessage needs.
var queryRules = map[string]map[string]map[string]any{
	"ChatService_ListChannels":  {"pageSize": {"minimum": 0, "maximum": 500}},
	"ChatService_GetHistory":    {"pageSize": {"minimum": 0, "maximum": 500}},
	"ChatService_DeleteMessage": {"clientMessageId": {"required": true}},
}

// openBodies are the definitions inside request bodies that stay open to
// properties the document does not name, and why.
var openBodies = map[string]string{
	// JSON.stringify(subscription) as account.proto says to send it: the
	// Push API's PushSubscriptionJSON has expirationTime (often null)
	// besides endpoint and keys, and may grow.
	"v1WebPushSubscription": "a browser's PushSubscription.toJSON()",
}

// responseHeaders are the headers of responses, by status code, that
// proto/chat/v1/openapi.yaml declares and protoc-gen-openapiv2 drops.
var responseHeaders = map[string]map[string]any{
	"401": {"WWW-Authenticate": map[string]any{"type": "string",
		"description": `Bearer realm="chatd", with error="invalid_token" for a bad, expired or revoked token (RFC 6750 3).`}},
	"429": {"Retry-After": map[string]any{"type": "integer",
		"description": "With a google.rpc.RetryInfo: its retry_delay in whole seconds, rounded up, at least 1 (RFC 9110 10.2.3)."}},
}

func withQueryRules(doc []byte) []byte {
	var d map[string]any
	if err := json.Unmarshal(doc, &d); err != nil {
		panic("gen/openapi/chat.swagger.json: " + err.Error())
	}
	// A property with an enum of its own beside a $ref (AddMember's role:
	// MEMBER or ADMIN of MemberRole) is that enum: validators ignore the
	// siblings of a $ref.
	defs, _ := d["definitions"].(map[string]any)
	for _, def := range defs {
		props, _ := def.(map[string]any)["properties"].(map[string]any)
		for _, p := range props {
			if prop, _ := p.(map[string]any); prop["$ref"] != nil && prop["enum"] != nil {
				delete(prop, "$ref")
			}
		}
	}
	// closed marks the definition ref points to, and the object
	// definitions its properties point to, additionalProperties false.
	var closed func(ref any, depth int)
	closed = func(ref any, depth int) {
		name, ok := strings.CutPrefix(fmt.Sprint(ref), "#/definitions/")
		def, _ := defs[name].(map[string]any)
		if !ok || def == nil || def["type"] != "object" || depth > 8 {
			return
		}
		if _, open := openBodies[name]; !open {
			def["additionalProperties"] = false
		}
		props, _ := def["properties"].(map[string]any)
		for _, p := range props {
			prop, _ := p.(map[string]any)
			closed(prop["$ref"], depth+1)
		}
	}
	paths, _ := d["paths"].(map[string]any)
	for _, item := range paths {
		ops, _ := item.(map[string]any)
		for _, op := range ops {
			o, _ := op.(map[string]any)
			if resps, _ := o["responses"].(map[string]any); resps != nil {
				for code, h := range responseHeaders {
					if r, _ := resps[code].(map[string]any); r != nil {
						r["headers"] = h
					}
				}
			}
			rules := queryRules[fmt.Sprint(o["operationId"])]
			params, _ := o["parameters"].([]any)
			for _, p := range params {
				prm, _ := p.(map[string]any)
				if prm["in"] == "body" {
					schema, _ := prm["schema"].(map[string]any)
					closed(schema["$ref"], 0)
				}
				if prm["in"] != "query" {
					continue
				}
				for k, v := range rules[fmt.Sprint(prm["name"])] {
					prm[k] = v
				}
			}
		}
	}
	out, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		panic(err)
	}
	return out
}
