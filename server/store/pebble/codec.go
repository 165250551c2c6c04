package pebble

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/chatd/chatd/server/store"
)

// Table prefixes: the first byte of every key.
const (
	tMessage     = 'm' // m channel 0x00 be64(message_id)        -> message
	tInbox       = 'i' // i user 0x00 be64(seq)                  -> (channel_id, message_id)
	tDedup       = 'd' // d sender 0x00 client_message_id        -> dedup
	tUser        = 'u' // u user                                  -> user
	tDevice      = 'v' // v user 0x00 device                     -> device
	tContact     = 'c' // c user 0x00 contact                    -> empty
	tChannel     = 'h' // h channel                               -> channel
	tMember      = 'g' // g channel 0x00 user                    -> member
	tUserChannel = 'r' // r user 0x00 channel                    -> empty (reverse index of g)
	tActivity    = 'a' // a channel                               -> (last message_id, last activity)
	tReceipt     = 'k' // k channel 0x00 user 0x00 marker         -> be64(message_id)
	tRevision    = 'x' // x channel 0x00 be64(ref) be64(id)      -> revision
	tSetting     = 's' // s user                                  -> conversation settings
	tSkeleton    = 'n' // n store.UsernameSkeleton(user)          -> user
	tPushTarget  = 'P' // P user 0x00 device                     -> push target
	tMute        = 'M' // M user 0x00 channel                    -> mute (until)
	tPushSetting = 'S' // S user                                  -> push settings (previews)
	tPushQueue   = 'Q' // Q be64(id)                             -> push job
)

// ErrInvalidID is returned (wrapped) when an id contains the byte 0x00,
// which the key layout reserves as separator. Nothing is written.
var ErrInvalidID = errors.New("pebble store: id contains 0x00")

func checkIDs(ids ...string) error {
	for _, id := range ids {
		if strings.IndexByte(id, 0) >= 0 {
			return fmt.Errorf("%w: %q", ErrInvalidID, id)
		}
	}
	return nil
}

// key1 builds t id.
func key1(t byte, id string) []byte {
	k := make([]byte, 0, 1+len(id))
	k = append(k, t)
	return append(k, id...)
}

// key2 builds t a 0x00 b.
func key2(t byte, a, b string) []byte {
	k := make([]byte, 0, 2+len(a)+len(b))
	k = append(k, t)
	k = append(k, a...)
	k = append(k, 0)
	return append(k, b...)
}

// keyN builds t a 0x00 be64(n).
func keyN(t byte, a string, n uint64) []byte {
	k := make([]byte, 0, 10+len(a))
	k = append(k, t)
	k = append(k, a...)
	k = append(k, 0)
	return binary.BigEndian.AppendUint64(k, n)
}

// prefixBounds returns [t a 0x00, t a 0x01): every key2/keyN key under a.
func prefixBounds(t byte, a string) (lower, upper []byte) {
	lower = make([]byte, 0, 2+len(a))
	lower = append(lower, t)
	lower = append(lower, a...)
	lower = append(lower, 0)
	upper = append(lower[:len(lower)-1:len(lower)-1], 1)
	return lower, upper
}

// --- time ---

// Times are stored as Unix milliseconds; the zero time is stored as absent.
func appendTime(b []byte, num protowire.Number, t time.Time) []byte {
	if t.IsZero() {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, protowire.EncodeZigZag(t.UnixMilli()))
}

func decodeTime(v uint64) time.Time {
	return time.UnixMilli(protowire.DecodeZigZag(v)).UTC()
}

func appendString(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

func appendUint(b []byte, num protowire.Number, v uint64) []byte {
	if v == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, v)
}

var errCorrupt = errors.New("pebble store: corrupt value")

// walk calls fn for every field of a protowire-encoded value. For varint
// fields v is set, for bytes fields p is set (aliasing b).
func walk(b []byte, fn func(num protowire.Number, v uint64, p []byte)) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return errCorrupt
		}
		b = b[n:]
		switch typ {
		case protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return errCorrupt
			}
			b = b[n:]
			fn(num, v, nil)
		case protowire.BytesType:
			p, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return errCorrupt
			}
			b = b[n:]
			fn(num, 0, p)
		default:
			n := protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return errCorrupt
			}
			b = b[n:]
		}
	}
	return nil
}

// --- message: fields 1 sender, 2 sender device, 3 client message id, 4 text,
// 5 created_at, 6 kind, 7 ref message id, 8 for user. channel_id and
// message_id live in the key.

func encodeMessage(b []byte, m *store.Message) []byte {
	b = appendString(b, 1, m.SenderID)
	b = appendString(b, 2, m.SenderDeviceID)
	b = appendString(b, 3, m.ClientMessageID)
	b = appendString(b, 4, m.Text)
	b = appendTime(b, 5, m.CreatedAt)
	b = appendUint(b, 6, uint64(m.Kind))
	b = appendUint(b, 7, m.RefMessageID)
	b = appendString(b, 8, m.ForUser)
	return b
}

// decodeMessage makes one string of the whole value and slices the string
// fields out of it: one allocation for all of them.
func decodeMessage(channelID string, messageID uint64, b []byte) (*store.Message, error) {
	m := &store.Message{ChannelID: channelID, MessageID: messageID}
	str := string(b)
	for i := 0; i < len(b); {
		num, typ, n := protowire.ConsumeTag(b[i:])
		if n < 0 {
			return nil, errCorrupt
		}
		i += n
		switch typ {
		case protowire.VarintType:
			v, n := protowire.ConsumeVarint(b[i:])
			if n < 0 {
				return nil, errCorrupt
			}
			i += n
			switch num {
			case 5:
				m.CreatedAt = decodeTime(v)
			case 6:
				m.Kind = store.MessageKind(v)
			case 7:
				m.RefMessageID = v
			}
		case protowire.BytesType:
			p, n := protowire.ConsumeBytes(b[i:])
			if n < 0 {
				return nil, errCorrupt
			}
			f := str[i+n-len(p) : i+n]
			i += n
			switch num {
			case 1:
				m.SenderID = f
			case 2:
				m.SenderDeviceID = f
			case 3:
				m.ClientMessageID = f
			case 4:
				m.Text = f
			case 8:
				m.ForUser = f
			}
		default:
			n := protowire.ConsumeFieldValue(num, typ, b[i:])
			if n < 0 {
				return nil, errCorrupt
			}
			i += n
		}
	}
	return m, nil
}

// --- inbox reference: 1 channel_id, 2 message_id.

func encodeRef(b []byte, channelID string, messageID uint64) []byte {
	b = appendString(b, 1, channelID)
	return appendUint(b, 2, messageID)
}

// decodeRef decodes an inbox reference. If the channel id equals prevCh,
// prevCh is returned instead of a new string (consecutive inbox entries
// often share a channel).
func decodeRef(b []byte, prevCh string) (channelID string, messageID uint64, err error) {
	err = walk(b, func(num protowire.Number, v uint64, p []byte) {
		switch num {
		case 1:
			if string(p) == prevCh {
				channelID = prevCh
			} else {
				channelID = string(p)
			}
		case 2:
			messageID = v
		}
	})
	return channelID, messageID, err
}

// --- dedup: 1 channel_id, 2 message_id, 3 created_at, then per placement
// 4 user_id, 5 seq (records written before placements existed have none),
// 6 fingerprint (absent in records written before it existed, and when 0).

func encodeDedup(b []byte, d *store.Dedup) []byte {
	b = appendString(b, 1, d.ChannelID)
	b = appendUint(b, 2, d.MessageID)
	b = appendTime(b, 3, d.CreatedAt)
	for _, p := range d.Inbox {
		b = appendString(b, 4, p.UserID)
		b = appendUint(b, 5, p.Seq)
	}
	return appendUint(b, 6, d.Fingerprint)
}

func decodeDedup(senderID, clientMessageID string, b []byte) (*store.Dedup, error) {
	d := &store.Dedup{SenderID: senderID, ClientMessageID: clientMessageID}
	err := walk(b, func(num protowire.Number, v uint64, p []byte) {
		switch num {
		case 1:
			d.ChannelID = string(p)
		case 2:
			d.MessageID = v
		case 3:
			d.CreatedAt = decodeTime(v)
		case 4:
			d.Inbox = append(d.Inbox, store.Placement{UserID: string(p)})
		case 5:
			if n := len(d.Inbox); n > 0 {
				d.Inbox[n-1].Seq = v
			}
		case 6:
			d.Fingerprint = v
		}
	})
	return d, err
}

// --- user: 1 display name, 2 password hash, 3 created_at, 4 presence hidden.

func encodeUser(u *store.User) []byte {
	var b []byte
	b = appendString(b, 1, u.DisplayName)
	if len(u.PasswordHash) > 0 {
		b = protowire.AppendTag(b, 2, protowire.BytesType)
		b = protowire.AppendBytes(b, u.PasswordHash)
	}
	b = appendTime(b, 3, u.CreatedAt)
	if u.PresenceHidden {
		b = protowire.AppendTag(b, 4, protowire.VarintType)
		b = protowire.AppendVarint(b, 1)
	}
	return b
}

func decodeUser(id string, b []byte) (*store.User, error) {
	u := &store.User{ID: id}
	err := walk(b, func(num protowire.Number, v uint64, p []byte) {
		switch num {
		case 1:
			u.DisplayName = string(p)
		case 2:
			u.PasswordHash = append([]byte(nil), p...)
		case 3:
			u.CreatedAt = decodeTime(v)
		case 4:
			u.PresenceHidden = v != 0
		}
	})
	return u, err
}

// --- device: 1 name, 2 created_at, 3 last_seen_at, 4 revoked, 5 cursor.

func encodeDevice(d *store.Device) []byte {
	var b []byte
	b = appendString(b, 1, d.Name)
	b = appendTime(b, 2, d.CreatedAt)
	b = appendTime(b, 3, d.LastSeenAt)
	if d.Revoked {
		b = appendUint(b, 4, 1)
	}
	return appendUint(b, 5, d.Cursor)
}

func decodeDevice(userID, deviceID string, b []byte) (*store.Device, error) {
	d := &store.Device{UserID: userID, DeviceID: deviceID}
	err := walk(b, func(num protowire.Number, v uint64, p []byte) {
		switch num {
		case 1:
			d.Name = string(p)
		case 2:
			d.CreatedAt = decodeTime(v)
		case 3:
			d.LastSeenAt = decodeTime(v)
		case 4:
			d.Revoked = v != 0
		case 5:
			d.Cursor = v
		}
	})
	return d, err
}

// --- channel: 1 type, 2 name, 3 created_at, 4 created_by.

func encodeChannel(c *store.Channel) []byte {
	var b []byte
	b = appendUint(b, 1, uint64(c.Type))
	b = appendString(b, 2, c.Name)
	b = appendTime(b, 3, c.CreatedAt)
	return appendString(b, 4, c.CreatedBy)
}

func decodeChannel(id string, b []byte) (*store.Channel, error) {
	c := &store.Channel{ID: id}
	err := walk(b, func(num protowire.Number, v uint64, p []byte) {
		switch num {
		case 1:
			c.Type = store.ChannelType(v)
		case 2:
			c.Name = string(p)
		case 3:
			c.CreatedAt = decodeTime(v)
		case 4:
			c.CreatedBy = string(p)
		}
	})
	return c, err
}

// --- member: 1 role, 2 joined_at.

func encodeMember(m *store.Member) []byte {
	var b []byte
	b = appendUint(b, 1, uint64(m.Role))
	return appendTime(b, 2, m.JoinedAt)
}

func decodeMember(channelID, userID string, b []byte) (*store.Member, error) {
	m := &store.Member{ChannelID: channelID, UserID: userID}
	err := walk(b, func(num protowire.Number, v uint64, p []byte) {
		switch num {
		case 1:
			m.Role = store.Role(v)
		case 2:
			m.JoinedAt = decodeTime(v)
		}
	})
	return m, err
}

// --- activity: a fixed 16-byte value, be64(last message_id) then
// be64(last activity in Unix ms, two's complement; MinInt64 = zero time).
// AppendBatch writes it with Merge and activityMerger keeps the operand with
// the highest message_id, so concurrent or replayed batches never move a
// channel's activity backwards and need no lock.

const activityLen = 16

func encodeActivity(b []byte, messageID uint64, at time.Time) []byte {
	ms := int64(math.MinInt64)
	if !at.IsZero() {
		ms = at.UnixMilli()
	}
	b = binary.BigEndian.AppendUint64(b, messageID)
	return binary.BigEndian.AppendUint64(b, uint64(ms))
}

func decodeActivity(channelID string, b []byte) (store.ChannelActivity, error) {
	a := store.ChannelActivity{ChannelID: channelID}
	if len(b) != activityLen {
		return a, errCorrupt
	}
	a.LastMessageID = binary.BigEndian.Uint64(b)
	if ms := int64(binary.BigEndian.Uint64(b[8:])); ms != math.MinInt64 {
		a.LastActivity = time.UnixMilli(ms).UTC()
	}
	return a, nil
}

// activityMerger is the DB's merge operator (only activity keys are ever
// merged): the operand with the highest message_id wins; on a tie the
// newer operand wins.
var activityMerger = &pebble.Merger{
	Name: "chatd.activity.max.v1",
	Merge: func(key, value []byte) (pebble.ValueMerger, error) {
		m := &maxMerger{}
		return m, m.MergeNewer(value)
	},
}

type maxMerger struct{ best []byte }

func (m *maxMerger) take(v []byte, newer bool) error {
	if len(v) != activityLen {
		return errCorrupt
	}
	if m.best == nil {
		m.best = append(make([]byte, 0, activityLen), v...)
		return nil
	}
	cur, cand := binary.BigEndian.Uint64(m.best), binary.BigEndian.Uint64(v)
	if cand > cur || (cand == cur && newer) {
		m.best = append(m.best[:0], v...)
	}
	return nil
}

func (m *maxMerger) MergeNewer(v []byte) error { return m.take(v, true) }
func (m *maxMerger) MergeOlder(v []byte) error { return m.take(v, false) }
func (m *maxMerger) Finish(bool) ([]byte, io.Closer, error) {
	return m.best, nil, nil
}
