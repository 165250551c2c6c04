package client

import (
	"context"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// checkUTF8 returns InvalidArgument naming the first string field of m
// (for example "chat.v1.SendMessage.text") that is not valid UTF-8, or
// nil. Protobuf requires proto3 strings to be UTF-8: such a message cannot
// be encoded, and grpc would report the marshalling failure as Internal
// (and, on the Chat stream, end the session).
func checkUTF8(m proto.Message) error {
	if m == nil {
		return nil
	}
	if name := invalidUTF8Field(m.ProtoReflect()); name != "" {
		return status.Errorf(codes.InvalidArgument, "client: %s is not valid UTF-8", name)
	}
	return nil
}

// invalidUTF8Field walks the populated fields of m, its sub-messages,
// lists and maps, and returns the full name of the first string field
// holding invalid UTF-8 ("" if none).
func invalidUTF8Field(m protoreflect.Message) string {
	var bad string
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsList():
			l := v.List()
			for i := 0; i < l.Len() && bad == ""; i++ {
				bad = invalidUTF8Value(fd, l.Get(i))
			}
		case fd.IsMap():
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				if fd.MapKey().Kind() == protoreflect.StringKind && !utf8.ValidString(k.String()) {
					bad = string(fd.FullName())
				} else {
					bad = invalidUTF8Value(fd.MapValue(), mv)
				}
				return bad == ""
			})
		default:
			bad = invalidUTF8Value(fd, v)
		}
		return bad == ""
	})
	return bad
}

func invalidUTF8Value(fd protoreflect.FieldDescriptor, v protoreflect.Value) string {
	switch fd.Kind() {
	case protoreflect.StringKind:
		if !utf8.ValidString(v.String()) {
			return string(fd.FullName())
		}
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return invalidUTF8Field(v.Message())
	}
	return ""
}

// utf8UnaryInterceptor refuses a unary request that cannot be encoded
// because of invalid UTF-8, with InvalidArgument naming the field.
func utf8UnaryInterceptor(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if m, ok := req.(proto.Message); ok {
		if err := checkUTF8(m); err != nil {
			return err
		}
	}
	return invoker(ctx, method, req, reply, cc, opts...)
}
