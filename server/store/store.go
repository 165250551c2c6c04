// Package store is chatd's domain package: the domain types (messages,
// inbox entries, users, devices, channels, members), the rules several
// services share (CanonicalUsername, the username and group limits,
// DefaultMaxContacts, the ListUserChannels order PageByActivity), the
// sentinel errors, and the interfaces of the durable storage: messages
// (rows keyed by channel_id and message_id), per-user inboxes (the sync
// log), accounts, devices, channels, memberships and contacts.
//
// One implementation per backing system lives in its own sub-package
// (store/pebble for the embedded single-node default, store/scylla for the
// cluster) and every one passes the conformance suite in store/storetest.
//
// Methods return the sentinel errors below (wrapped or not); callers test
// them with errors.Is. errors.go is the core's error vocabulary (Code,
// *Error, ErrorCode): the engines return *Error values and the gRPC edge
// (server/grpcerr) maps their codes to statuses in one table.
//
// It must not import gRPC, generated code, a database or Redis driver, or
// any other chatd package: every other package may import it.
package store

import (
	"context"
	"errors"
	"time"
)

// Sentinel errors. Implementations return them (possibly wrapped).
var (
	// ErrNotFound: the user, device, channel or member does not exist.
	ErrNotFound = errors.New("store: not found")
	// ErrAlreadyExists: a user with the same id, or a channel with the
	// same id, exists already.
	ErrAlreadyExists = errors.New("store: already exists")
	// ErrGroupFull: adding the member would exceed the group's limit.
	ErrGroupFull = errors.New("store: group is full")
)

// MaxGroupMembers is the largest number of members a group channel holds.
const MaxGroupMembers = 100

// MessageKind mirrors chat.v1.MessageKind.
type MessageKind uint8

const (
	KindText   MessageKind = 1
	KindEdit   MessageKind = 2
	KindDelete MessageKind = 3
	KindSystem MessageKind = 4
)

// ChannelType mirrors chat.v1.ChannelType.
type ChannelType uint8

const (
	ChannelDirect ChannelType = 1
	ChannelGroup  ChannelType = 2
)

// Role mirrors chat.v1.MemberRole.
type Role uint8

const (
	RoleMember Role = 1
	RoleAdmin  Role = 2
	RoleOwner  Role = 3
)

// Message is one immutable row of a channel.
type Message struct {
	ChannelID       string
	MessageID       uint64 // unique and strictly increasing within ChannelID
	SenderID        string
	SenderDeviceID  string
	ClientMessageID string
	Text            string
	CreatedAt       time.Time // server clock, ms precision
	Kind            MessageKind
	RefMessageID    uint64 // for edits and deletes
	// ForUser, on a KindDelete row, limits the delete to that user
	// ("delete for me"): only that user's inbox gets the row and only their
	// history shows it. Empty for every other row.
	ForUser string
}

// InboxEntry places a message in one user's inbox. Seq is dense and strictly
// increasing per user; it is the sync cursor of every device of that user.
type InboxEntry struct {
	UserID    string
	Seq       uint64
	ChannelID string
	MessageID uint64
}

// Delivery is an inbox entry joined with its message, as sync returns it.
type Delivery struct {
	Seq     uint64
	Message *Message
}

// Dedup remembers the result of a send keyed by (SenderID, ClientMessageID)
// so that a retried send returns the original ack.
type Dedup struct {
	SenderID        string
	ClientMessageID string
	ChannelID       string
	MessageID       uint64
	CreatedAt       time.Time
	// Inbox is where the message was placed: one entry per recipient
	// user, in recipient order. A reader that finds the record can check
	// that every placement's inbox row exists (InboxEntryAt) and place the
	// missing ones again; see Batch for why a record may exist before its
	// rows. Empty for records written before placements were recorded.
	Inbox []Placement
	// Fingerprint identifies the content of the send (a 64-bit hash of
	// its channel, kind, ref, for-user and text; computed by the
	// sequencer), so that a reuse of the client_message_id for a
	// different message is refused instead of answered as a duplicate.
	// 0 means unknown (records written before fingerprints existed):
	// such a record matches any send with its key.
	Fingerprint uint64
}

// Placement is one inbox position of a message: (UserID, Seq).
type Placement struct {
	UserID string
	Seq    uint64
}

// Batch is a group commit: messages with their inbox entries and dedup
// records, written durably (fsync'd or quorum-acked) before AppendBatch
// returns. Ids are assigned by the caller (the sequencer).
//
// A store that cannot write a batch atomically (the cluster store) writes
// it in this order: the dedup records, then the messages, then the inbox
// entries. So after any partial write, an inbox entry (what makes a
// message visible to devices) implies its message row, and a message row
// of a send with a client_message_id implies its dedup record: a message
// is never visible while its client_message_id is unknown, and a retry of
// the send always finds the record (and, through Dedup.Inbox, what is
// missing). See docs/sequencing.md, "One send, stored once".
type Batch struct {
	Messages []*Message
	Inbox    []InboxEntry
	Dedup    []Dedup
	// Channels whose last activity moves with this batch, and the
	// Revision index rows of its EDIT and DELETE messages, are derived from
	// Messages by the implementation.
}

// Messages stores channel rows and inboxes.
type Messages interface {
	// AppendBatch writes the batch atomically and durably. Writing the same
	// (channel_id, message_id) or (user_id, seq) again overwrites with the
	// same content (idempotent replay).
	AppendBatch(ctx context.Context, b *Batch) error
	// LastMessageID returns the highest message_id stored in the channel, 0
	// if none.
	LastMessageID(ctx context.Context, channelID string) (uint64, error)
	// LastInboxSeq returns the highest inbox seq stored for the user, 0 if
	// none.
	LastInboxSeq(ctx context.Context, userID string) (uint64, error)
	// GetMessage returns one message or ErrNotFound.
	GetMessage(ctx context.Context, channelID string, messageID uint64) (*Message, error)
	// History returns up to limit messages of the channel in ascending
	// message_id order. If after > 0 it reads forward from after
	// (exclusive) and before is ignored; otherwise it reads the newest
	// messages older than before (exclusive; before == 0 means from the
	// newest). more reports whether further messages exist in the reading
	// direction. limit <= 0 returns no rows, only more.
	History(ctx context.Context, channelID string, before, after uint64, limit int) (msgs []*Message, more bool, err error)
	// Inbox returns up to limit deliveries of the user with seq > afterSeq in
	// ascending seq order, and whether more remain. limit <= 0 returns no
	// rows, only more.
	Inbox(ctx context.Context, userID string, afterSeq uint64, limit int) (ds []Delivery, more bool, err error)
	// LookupDedup returns the recorded send for (senderID, clientMessageID),
	// with its Inbox placements, or ErrNotFound.
	LookupDedup(ctx context.Context, senderID, clientMessageID string) (*Dedup, error)
	// InboxEntryAt returns the user's inbox entry at seq, or ErrNotFound.
	// One point read, whatever the horizon: it is how a retried send
	// checks that every placement of its message was written.
	InboxEntryAt(ctx context.Context, userID string, seq uint64) (*InboxEntry, error)
}

// User is an account. ID is the canonical username.
type User struct {
	ID           string
	DisplayName  string
	PasswordHash []byte // PHC-style encoded argon2id hash
	CreatedAt    time.Time
	// PresenceHidden: the user shows as offline to everyone.
	PresenceHidden bool
}

// Device is one logged-in device of a user.
type Device struct {
	UserID     string
	DeviceID   string
	Name       string
	CreatedAt  time.Time
	LastSeenAt time.Time
	Revoked    bool
	Cursor     uint64 // highest acked inbox seq
}

// Accounts stores users, devices and contacts.
type Accounts interface {
	// CreateUser inserts u; ErrAlreadyExists if u.ID is taken, and
	// ErrUsernameLookAlike (which errors.Is ErrAlreadyExists) if another
	// user has u.ID's UsernameSkeleton. The skeleton check and the insert
	// are atomic: of concurrent look-alike creations at most one succeeds.
	// Users created before skeletons were recorded have none recorded
	// unless the implementation backfills them (see docs/architecture.md,
	// "Usernames").
	CreateUser(ctx context.Context, u *User) error
	// GetUser returns the user or ErrNotFound.
	GetUser(ctx context.Context, userID string) (*User, error)
	// UpdateDisplayName changes a user's display name; ErrNotFound.
	UpdateDisplayName(ctx context.Context, userID, displayName string) error
	// SetPresenceHidden changes whether the user hides their presence;
	// ErrNotFound.
	SetPresenceHidden(ctx context.Context, userID string, hidden bool) error
	// PutDevice inserts or replaces a device. A new device starts at
	// d.Cursor; an existing device keeps its stored cursor, which only
	// AdvanceCursor changes.
	PutDevice(ctx context.Context, d *Device) error
	// GetDevice returns the device or ErrNotFound.
	GetDevice(ctx context.Context, userID, deviceID string) (*Device, error)
	// ListDevices returns the user's devices, revoked ones included,
	// ordered by CreatedAt.
	ListDevices(ctx context.Context, userID string) ([]*Device, error)
	// AdvanceCursor sets the device cursor to max(current, seq) and returns
	// the resulting cursor. ErrNotFound for an unknown device.
	AdvanceCursor(ctx context.Context, userID, deviceID string, seq uint64) (uint64, error)
	// AddContact records that userID has contactID as a contact
	// (idempotent).
	AddContact(ctx context.Context, userID, contactID string) error
	// RemoveContact removes it (idempotent).
	RemoveContact(ctx context.Context, userID, contactID string) error
	// ListContacts returns userID's contacts in ascending id order.
	ListContacts(ctx context.Context, userID string) ([]string, error)
	// IsContact reports whether userID has contactID as a contact.
	IsContact(ctx context.Context, userID, contactID string) (bool, error)
}

// Channel is a direct or group channel.
type Channel struct {
	ID        string
	Type      ChannelType
	Name      string
	CreatedAt time.Time
	CreatedBy string
}

// Member is one membership of a channel.
type Member struct {
	ChannelID string
	UserID    string
	Role      Role
	JoinedAt  time.Time
}

// ChannelActivity is a channel with the time and id of its newest message,
// as ListUserChannels returns it.
type ChannelActivity struct {
	ChannelID     string
	LastMessageID uint64
	LastActivity  time.Time
}

// Channels stores channels and memberships.
type Channels interface {
	// CreateChannel inserts ch with its initial members atomically;
	// ErrAlreadyExists if the id is taken, ErrGroupFull if members exceed
	// MaxGroupMembers for a group. Duplicate user ids in members count once.
	CreateChannel(ctx context.Context, ch *Channel, members []Member) error
	// GetChannel returns the channel or ErrNotFound.
	GetChannel(ctx context.Context, channelID string) (*Channel, error)
	// AddMember adds (or updates the role of) a member. Adding a new member
	// to a group that already holds max members returns ErrGroupFull; the
	// check and the insert are atomic against concurrent AddMember calls.
	// ErrNotFound if the channel does not exist. max <= 0 means no limit;
	// a role update keeps the member's JoinedAt.
	AddMember(ctx context.Context, m Member, max int) error
	// RemoveMember removes a member; ErrNotFound if not a member.
	RemoveMember(ctx context.Context, channelID, userID string) error
	// GetMember returns the membership or ErrNotFound.
	GetMember(ctx context.Context, channelID, userID string) (*Member, error)
	// ListMembers returns all members in ascending user id order.
	ListMembers(ctx context.Context, channelID string) ([]Member, error)
	// ListUserChannels returns the channels userID belongs to, most recent
	// activity first (a channel without messages counts its CreatedAt as its
	// activity; ties: higher LastMessageID, then channel id ascending), at
	// most limit (<= 0: none), skipping the first offset. Implementations
	// order and page with PageByActivity.
	ListUserChannels(ctx context.Context, userID string, offset, limit int) ([]ChannelActivity, error)
}

// Marker kinds of a Receipt, each a monotonic register per (channel, user).
const (
	// MarkerDelivered: a device of the user has received every message of
	// the channel up to this message_id.
	MarkerDelivered = 1
	// MarkerRead: the user has read up to this message_id (their own
	// view: it drives their unread counts).
	MarkerRead = 2
	// MarkerReadShown: the read marker as other members see it; it stays
	// behind MarkerRead while the user hides read receipts.
	MarkerReadShown = 3
)

// Receipt is one user's markers in one channel: message_ids, 0 = none.
// Every marker only moves forward.
type Receipt struct {
	ChannelID     string
	UserID        string
	DeliveredUpTo uint64
	ReadUpTo      uint64
	ReadShownUpTo uint64
}

// Revision is an EDIT or DELETE row indexed under the message it applies
// to (RefMessageID), so that readers can fold a page of messages with one
// range read. AppendBatch writes it, in the same durable write, for every
// message of kind KindEdit or KindDelete with RefMessageID > 0; it is
// immutable like the row it copies.
type Revision struct {
	ChannelID    string
	RefMessageID uint64
	MessageID    uint64 // the EDIT or DELETE row's own message_id
	Kind         MessageKind
	SenderID     string
	ForUser      string
	Text         string
	CreatedAt    time.Time
}

// Conversations stores the per-user conversation state: receipts (delivery
// and read markers), the revision index of edits and deletes, and the
// read-receipt privacy setting.
type Conversations interface {
	// AdvanceReceipts raises, for every r, the markers of (r.ChannelID,
	// r.UserID) to max(stored, given); a zero marker in r is left alone.
	// Markers are max registers: concurrent and replayed calls commute, no
	// marker ever moves backwards. Not atomic across receipts. Errors: an
	// empty channel or user id (the implementation's invalid-id error).
	AdvanceReceipts(ctx context.Context, rs []Receipt) error
	// GetReceipt returns the user's markers in the channel (zero markers
	// if none were ever written; never ErrNotFound).
	GetReceipt(ctx context.Context, channelID, userID string) (Receipt, error)
	// ListReceipts returns the markers of every user of the channel that
	// has any, in ascending user id order.
	ListReceipts(ctx context.Context, channelID string) ([]Receipt, error)
	// Revisions returns the revisions of the channel whose RefMessageID
	// lies in [from, to], ordered by (RefMessageID, MessageID) ascending.
	// from > to returns none.
	Revisions(ctx context.Context, channelID string, from, to uint64) ([]Revision, error)
	// SetReadReceiptsHidden records whether the user hides their read
	// receipts (idempotent; the user need not exist).
	SetReadReceiptsHidden(ctx context.Context, userID string, hidden bool) error
	// ReadReceiptsHidden reports the setting (false if never set).
	ReadReceiptsHidden(ctx context.Context, userID string) (bool, error)
}

// Store is everything the server keeps durably.
type Store interface {
	Messages
	Accounts
	Channels
	Conversations
	Push
	// Close flushes and releases the store.
	Close() error
}
