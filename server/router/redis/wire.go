package redis

import (
	"errors"
	"unsafe"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/chatd/chatd/server/router"
)

// The payload of one pub/sub message is a batch of events for one node:
//
//	byte 0: wireVersion
//	rest:   a protobuf message
//
//	message Batch { repeated Entry entries = 1; }
//	message Entry {
//	  string user_id        = 1; // required
//	  string skip_device_id = 2;
//	  bytes  frame          = 3; // a chat.v1.ServerFrame, or
//	  uint64 frame_ref      = 4; // the index of a frame sent earlier in this batch
//	  string revoke_device_id = 5; // a control event (router.Event.RevokeDeviceID), no frame
//	}
//
// A revocation (revoke_device_id, no frame) travels in a payload of its
// own: a node of an earlier version, which refuses an entry without a
// frame as malformed, then drops only that payload (its streams of the
// device end at their next frame, when the revocation reaches its cache),
// not the deliveries batched with it.
// frame_ref keeps one frame shared by many users (a typing event fanned out
// to a group) encoded and decoded once per node. Unknown fields are skipped,
// so fields can be added.
const wireVersion = 1

const (
	fieldEntry    protowire.Number = 1
	fieldUser     protowire.Number = 1
	fieldSkip     protowire.Number = 2
	fieldFrame    protowire.Number = 3
	fieldFrameRef protowire.Number = 4
	fieldRevoke   protowire.Number = 5
)

var errMalformed = errors.New("malformed batch")

var marshalCached = proto.MarshalOptions{UseCachedSize: true}

// batch is the payload being built for one destination node.
type batch struct {
	buf      []byte
	frames   int                 // frames encoded in full so far
	last     *chatv1.ServerFrame // the last frame encoded in full
	lastIdx  int
	events   int // events in buf
	payloads [][]byte
}

// reset empties b for reuse, keeping one payload buffer.
func (b *batch) reset() {
	if b.buf == nil && len(b.payloads) > 0 {
		b.buf = b.payloads[0]
	}
	b.buf = b.buf[:0]
	b.frames, b.last, b.lastIdx, b.events = 0, nil, 0, 0
	clear(b.payloads)
	b.payloads = b.payloads[:0]
}

// add appends ev; when the payload would exceed max bytes it is cut first
// (and started anew, so frame references never cross payloads). When the
// frame cannot be encoded (e.g. a string field with invalid UTF-8) b is
// left as it was and the error returned.
func (b *batch) add(ev *router.Event, max int) error {
	if ev.RevokeDeviceID != "" {
		return b.addRevoke(ev)
	}
	ref := ev.Frame == b.last && b.last != nil
	var fsize int
	n := protowire.SizeTag(fieldUser) + protowire.SizeBytes(len(ev.UserID))
	if ev.SkipDeviceID != "" {
		n += protowire.SizeTag(fieldSkip) + protowire.SizeBytes(len(ev.SkipDeviceID))
	}
	if ref {
		n += protowire.SizeTag(fieldFrameRef) + protowire.SizeVarint(uint64(b.lastIdx))
	} else {
		fsize = proto.Size(ev.Frame)
		n += protowire.SizeTag(fieldFrame) + protowire.SizeBytes(fsize)
	}
	if b.events > 0 && len(b.buf)+protowire.SizeTag(fieldEntry)+protowire.SizeBytes(n) > max {
		b.cut()
		if ref { // a new payload holds no frames yet
			return b.add(ev, max)
		}
	}
	if len(b.buf) == 0 {
		b.buf = append(b.buf, wireVersion)
	}
	entry := len(b.buf)
	b.buf = protowire.AppendTag(b.buf, fieldEntry, protowire.BytesType)
	b.buf = protowire.AppendVarint(b.buf, uint64(n))
	b.buf = protowire.AppendTag(b.buf, fieldUser, protowire.BytesType)
	b.buf = protowire.AppendString(b.buf, ev.UserID)
	if ev.SkipDeviceID != "" {
		b.buf = protowire.AppendTag(b.buf, fieldSkip, protowire.BytesType)
		b.buf = protowire.AppendString(b.buf, ev.SkipDeviceID)
	}
	if ref {
		b.buf = protowire.AppendTag(b.buf, fieldFrameRef, protowire.VarintType)
		b.buf = protowire.AppendVarint(b.buf, uint64(b.lastIdx))
	} else {
		b.buf = protowire.AppendTag(b.buf, fieldFrame, protowire.BytesType)
		b.buf = protowire.AppendVarint(b.buf, uint64(fsize))
		start := len(b.buf)
		var err error
		if b.buf, err = marshalCached.MarshalAppend(b.buf, ev.Frame); err != nil {
			b.buf = b.buf[:entry]
			return err
		}
		if len(b.buf)-start != fsize {
			b.buf = b.buf[:entry]
			return errors.New("frame changed while being routed")
		}
		b.last, b.lastIdx = ev.Frame, b.frames
		b.frames++
	}
	b.events++
	return nil
}

// addRevoke appends the revocation ev in a payload of its own.
func (b *batch) addRevoke(ev *router.Event) error {
	b.cut()
	n := protowire.SizeTag(fieldUser) + protowire.SizeBytes(len(ev.UserID)) +
		protowire.SizeTag(fieldRevoke) + protowire.SizeBytes(len(ev.RevokeDeviceID))
	b.buf = append(b.buf[:0], wireVersion)
	b.buf = protowire.AppendTag(b.buf, fieldEntry, protowire.BytesType)
	b.buf = protowire.AppendVarint(b.buf, uint64(n))
	b.buf = protowire.AppendTag(b.buf, fieldUser, protowire.BytesType)
	b.buf = protowire.AppendString(b.buf, ev.UserID)
	b.buf = protowire.AppendTag(b.buf, fieldRevoke, protowire.BytesType)
	b.buf = protowire.AppendString(b.buf, ev.RevokeDeviceID)
	b.events++
	b.cut()
	return nil
}

// cut moves the current payload to b.payloads.
func (b *batch) cut() {
	if b.events == 0 {
		return
	}
	b.payloads = append(b.payloads, b.buf)
	b.buf = nil
	b.frames, b.last, b.lastIdx, b.events = 0, nil, 0, 0
}

// decodeBatch parses payload and appends its events to out. On error out
// is returned unchanged in length (nothing of a malformed payload is
// delivered). User and device ids are substrings of payload; frames are
// new messages.
func decodeBatch(payload string, out []router.Event) ([]router.Event, error) {
	n0 := len(out)
	if len(payload) == 0 || payload[0] != wireVersion {
		return out[:n0], errMalformed
	}
	b := unsafe.Slice(unsafe.StringData(payload), len(payload)) // read only
	off := 1
	var frames []*chatv1.ServerFrame
	for off < len(b) {
		num, typ, n := protowire.ConsumeTag(b[off:])
		if n < 0 {
			return out[:n0], errMalformed
		}
		off += n
		if num != fieldEntry || typ != protowire.BytesType {
			if n = protowire.ConsumeFieldValue(num, typ, b[off:]); n < 0 {
				return out[:n0], errMalformed
			}
			off += n
			continue
		}
		ln, n := protowire.ConsumeVarint(b[off:])
		if n < 0 || ln > uint64(len(b)-off-n) {
			return out[:n0], errMalformed
		}
		off += n
		end := off + int(ln)
		var ev router.Event
		hasFrame := false
		for off < end {
			num, typ, n := protowire.ConsumeTag(b[off:end])
			if n < 0 {
				return out[:n0], errMalformed
			}
			off += n
			switch {
			case (num == fieldUser || num == fieldSkip || num == fieldFrame || num == fieldRevoke) && typ == protowire.BytesType:
				ln, n := protowire.ConsumeVarint(b[off:end])
				if n < 0 || ln > uint64(end-off-n) {
					return out[:n0], errMalformed
				}
				s, e := off+n, off+n+int(ln)
				off = e
				switch num {
				case fieldUser:
					ev.UserID = payload[s:e]
				case fieldSkip:
					ev.SkipDeviceID = payload[s:e]
				case fieldRevoke:
					ev.RevokeDeviceID = payload[s:e]
				default:
					f := new(chatv1.ServerFrame)
					if err := proto.Unmarshal(b[s:e], f); err != nil {
						return out[:n0], errMalformed
					}
					frames = append(frames, f)
					ev.Frame, hasFrame = f, true
				}
			case num == fieldFrameRef && typ == protowire.VarintType:
				v, n := protowire.ConsumeVarint(b[off:end])
				if n < 0 || v >= uint64(len(frames)) {
					return out[:n0], errMalformed
				}
				off += n
				ev.Frame, hasFrame = frames[v], true
			default:
				if n = protowire.ConsumeFieldValue(num, typ, b[off:end]); n < 0 {
					return out[:n0], errMalformed
				}
				off += n
			}
		}
		if ev.UserID == "" || hasFrame == (ev.RevokeDeviceID != "") {
			return out[:n0], errMalformed
		}
		out = append(out, ev)
	}
	return out, nil
}
