// Package chatd holds files embedded into the binaries: the generated
// OpenAPI document of the REST surface.
package chatd

import (
	_ "embed"
	"encoding/json"
	"fmt"
)

//go:embed gen/openapi/chat.swagger.json
var generatedOpenAPI []byte

// OpenAPI is the OpenAPI v2 document of the REST surface, served by chatd
// at /openapi.json: the one generated from proto/ by buf
// (gen/openapi/chat.swagger.json, with the options of
// proto/chat/v1/openapi.yaml) plus what protoc-gen-openapiv2 does not
// carry from those options: queryRules (it copies only the pattern to a
// query parameter), and an enum narrowing an enum-typed field (it keeps the
// $ref beside it, where validators ignore it).
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
	paths, _ := d["paths"].(map[string]any)
	for _, item := range paths {
		ops, _ := item.(map[string]any)
		for _, op := range ops {
			o, _ := op.(map[string]any)
			rules := queryRules[fmt.Sprint(o["operationId"])]
			params, _ := o["parameters"].([]any)
			for _, p := range params {
				prm, _ := p.(map[string]any)
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
