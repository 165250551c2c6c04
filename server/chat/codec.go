package chat

import (
	"hash/maphash"
	"strings"
	"sync/atomic"

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
	return codec{base: base, msgs: &messageCache{seed: maphash.MakeSeed()}}
}

type codec struct {
	base encoding.CodecV2
	msgs *messageCache
}

func (c codec) Name() string { return c.base.Name() }

// Marshal encodes v. A Delivery frame is built around its Message's
// encoding, which is encoded once per Message and shared: a group message
// reaches every member's stream as the same *chatv1.Message (frames must
// not be modified once routed, see router.Event), so a fan-out to 100
// members encodes the message once instead of 100 times. The bytes are
// the same as proto.Marshal's (TestDeliveryEncodingMatchesProto).
func (c codec) Marshal(v any) (mem.BufferSlice, error) {
	if f, ok := v.(*chatv1.ServerFrame); ok {
		if b, ok := c.msgs.deliveryFrame(f); ok {
			return mem.BufferSlice{mem.SliceBuffer(b)}, nil
		}
	}
	return c.base.Marshal(v)
}

// messageCacheSlots is the number of Message encodings the codec keeps
// (the most recent per slot): far more than the messages in flight
// through the writers at once, a few hundred KB at most.
const messageCacheSlots = 256

// messageCache maps a *chatv1.Message (by identity) to its encoding. A
// slot holds the Message itself, so its address cannot be reused for
// another Message while the slot remembers it; a collision only costs an
// encode. Lock-free: entries are immutable, a racing store loses an entry
// and nothing else.
type messageCache struct {
	seed  maphash.Seed
	slots [messageCacheSlots]atomic.Pointer[encodedMessage]
}

type encodedMessage struct {
	msg *chatv1.Message
	b   []byte
}

// encoding returns m's encoding (proto.Marshal's), from the cache when m
// was encoded before.
func (mc *messageCache) encoding(m *chatv1.Message) ([]byte, bool) {
	slot := &mc.slots[maphash.Comparable(mc.seed, m)%messageCacheSlots]
	if e := slot.Load(); e != nil && e.msg == m {
		return e.b, true
	}
	b, err := proto.Marshal(m)
	if err != nil {
		return nil, false
	}
	slot.Store(&encodedMessage{msg: m, b: b})
	return b, true
}

// Field tags (number << 3 | wire type 2 or 0) of the frames built by
// deliveryFrame.
const (
	tagFrameID      = 1<<3 | byte(protowire.VarintType) // ServerFrame.frame_id
	tagDelivery     = 4<<3 | byte(protowire.BytesType)  // ServerFrame.delivery
	tagInboxSeq     = 1<<3 | byte(protowire.VarintType) // Delivery.inbox_seq
	tagMessageField = 2<<3 | byte(protowire.BytesType)  // Delivery.message
)

// deliveryFrame encodes f when it is a Delivery frame with a Message and
// no unknown fields, around the Message's cached encoding; false for any
// other frame (the standard codec encodes it).
func (mc *messageCache) deliveryFrame(f *chatv1.ServerFrame) ([]byte, bool) {
	p, ok := f.GetPayload().(*chatv1.ServerFrame_Delivery)
	if !ok || p.Delivery == nil || p.Delivery.GetMessage() == nil {
		return nil, false
	}
	d := p.Delivery
	if len(f.ProtoReflect().GetUnknown()) > 0 || len(d.ProtoReflect().GetUnknown()) > 0 {
		return nil, false
	}
	mb, ok := mc.encoding(d.Message)
	if !ok {
		return nil, false
	}
	dlen := 1 + protowire.SizeBytes(len(mb))
	if d.InboxSeq != 0 {
		dlen += 1 + protowire.SizeVarint(d.InboxSeq)
	}
	n := 1 + protowire.SizeBytes(dlen)
	if f.FrameId != 0 {
		n += 1 + protowire.SizeVarint(f.FrameId)
	}
	b := make([]byte, 0, n)
	if f.FrameId != 0 {
		b = append(b, tagFrameID)
		b = protowire.AppendVarint(b, f.FrameId)
	}
	b = append(b, tagDelivery)
	b = protowire.AppendVarint(b, uint64(dlen))
	if d.InboxSeq != 0 {
		b = append(b, tagInboxSeq)
		b = protowire.AppendVarint(b, d.InboxSeq)
	}
	b = append(b, tagMessageField)
	b = protowire.AppendBytes(b, mb)
	return b, true
}

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
