// Package chatd holds files embedded into the binaries: the generated
// OpenAPI document of the REST surface.
package chatd

import _ "embed"

// OpenAPI is the OpenAPI v2 document generated from proto/ by buf
// (gen/openapi/chat.swagger.json), served by chatd at /openapi.json.
//
//go:embed gen/openapi/chat.swagger.json
var OpenAPI []byte
