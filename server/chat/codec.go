package chat

import (
	"strings"

	"google.golang.org/grpc/encoding"
	_ "google.golang.org/grpc/encoding/proto" // registers the standard codec
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
)

// malformedField is the field number (in the unknown fields of a
// ClientFrame) that Codec uses to mark a frame that did not parse. It is
// the largest valid field number, far from any the protocol will use; a
// client sending it in a valid frame has it stripped.
const malformedField protowire.Number = protowire.MaxValidNumber

// Reasons recorded in the marker.
const (
	malformedUTF8  = "malformed frame: a string field (text, to_user, channel_id, client_message_id, ...) is not valid UTF-8"
	malformedOther = "malformed frame: cannot be parsed as a chat.v1.ClientFrame"
)

// Codec returns the gRPC codec a chat server installs with
// grpc.ForceServerCodecV2. It is the standard proto codec (same name,
// "proto"), except that a *chatv1.ClientFrame that fails to unmarshal (for
// example a string field with invalid UTF-8, which protobuf-go rejects and
// grpc would turn into a stream-ending error) decodes to an empty frame
// with only its frame_id and a malformed marker; the Chat stream answers
// it with FrameError InvalidArgument and stays open.
func Codec() encoding.CodecV2 {
	base := encoding.GetCodecV2("proto")
	if base == nil {
		panic("chat: standard proto codec not registered")
	}
	return codec{base: base}
}

type codec struct{ base encoding.CodecV2 }

func (c codec) Name() string { return c.base.Name() }

func (c codec) Marshal(v any) (mem.BufferSlice, error) { return c.base.Marshal(v) }

func (c codec) Unmarshal(data mem.BufferSlice, v any) error {
	cf, ok := v.(*chatv1.ClientFrame)
	if !ok {
		return c.base.Unmarshal(data, v)
	}
	buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
	defer buf.Free()
	b := buf.ReadOnlyData()
	err := proto.Unmarshal(b, cf)
	if err == nil {
		if len(cf.ProtoReflect().GetUnknown()) > 0 {
			cf.ProtoReflect().SetUnknown(nil) // never trust a client-sent marker
		}
		return nil
	}
	reason := malformedOther
	if strings.Contains(err.Error(), "UTF-8") {
		reason = malformedUTF8
	}
	cf.Reset()
	cf.FrameId = scanFrameID(b)
	var mark []byte
	mark = protowire.AppendTag(mark, malformedField, protowire.BytesType)
	mark = protowire.AppendString(mark, reason)
	cf.ProtoReflect().SetUnknown(mark)
	return nil
}

// scanFrameID returns the last frame_id (field 1, varint) found in the
// encoded ClientFrame b before it stops parsing, 0 if none.
func scanFrameID(b []byte) uint64 {
	var id uint64
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return id
		}
		b = b[n:]
		if num == 1 && typ == protowire.VarintType {
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return id
			}
			id = v
			b = b[n:]
			continue
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return id
		}
		b = b[n:]
	}
	return id
}

// malformed returns the reason Codec recorded if f did not parse.
func malformed(f *chatv1.ClientFrame) (string, bool) {
	u := f.ProtoReflect().GetUnknown()
	for len(u) > 0 {
		num, typ, n := protowire.ConsumeTag(u)
		if n < 0 {
			return "", false
		}
		u = u[n:]
		if num == malformedField && typ == protowire.BytesType {
			s, n := protowire.ConsumeString(u)
			if n < 0 {
				return "", false
			}
			return s, true
		}
		n = protowire.ConsumeFieldValue(num, typ, u)
		if n < 0 {
			return "", false
		}
		u = u[n:]
	}
	return "", false
}
