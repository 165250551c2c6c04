package store

import (
	"context"
	"time"
)

// PushKind names the push service a PushTarget is for.
type PushKind uint8

const (
	// PushWebPush is a browser's Web Push subscription (RFC 8030/8291/8292).
	PushWebPush PushKind = 1
	// PushFCM is a Firebase Cloud Messaging registration token.
	PushFCM PushKind = 2
	// PushAPNs is an Apple Push Notification service device token.
	PushAPNs PushKind = 3
)

// String is the kind's name as metrics and logs use it: "webpush", "fcm",
// "apns" ("unknown" otherwise).
func (k PushKind) String() string {
	switch k {
	case PushWebPush:
		return "webpush"
	case PushFCM:
		return "fcm"
	case PushAPNs:
		return "apns"
	}
	return "unknown"
}

// PushTarget is where one device's push notifications go; a device has at
// most one.
type PushTarget struct {
	UserID   string
	DeviceID string
	Kind     PushKind
	// Address is the Web Push endpoint URL, or the FCM or APNs token: what
	// the provider names the target by (and reports gone).
	Address string
	// P256dh and Auth are a Web Push subscription's keys (base64url, as
	// the browser gives them); empty for other kinds.
	P256dh string
	Auth   string
	// Topic is an APNs target's apns-topic (the app's bundle id) and
	// Sandbox whether its token is from the development environment.
	Topic   string
	Sandbox bool
	// UpdatedAt is when the target was registered (ms precision).
	UpdatedAt time.Time
}

// Mute is one user's mute of one channel.
type Mute struct {
	ChannelID string
	// Until is when the mute ends; the zero time means forever.
	Until time.Time
}

// Active reports whether the mute still holds at now.
func (m Mute) Active(now time.Time) bool {
	return m.Until.IsZero() || now.Before(m.Until)
}

// Push stores push targets and the per-user settings that decide who gets
// a push: the previews setting and channel mutes.
type Push interface {
	// PutPushTarget sets the device's push target (t.UserID, t.DeviceID),
	// replacing the one it had. It does not check that the device exists.
	// Errors: an empty user or device id (the implementation's invalid-id
	// error).
	PutPushTarget(ctx context.Context, t *PushTarget) error
	// GetPushTarget returns the device's push target or ErrNotFound.
	GetPushTarget(ctx context.Context, userID, deviceID string) (*PushTarget, error)
	// DeletePushTarget removes the device's push target. With address ""
	// it removes whatever target the device has; otherwise only a target
	// whose Address is address (so that a provider's "gone" answer for an
	// old token never removes the one the device registered since). It
	// reports whether a target was removed; a missing target is not an
	// error.
	DeletePushTarget(ctx context.Context, userID, deviceID, address string) (bool, error)
	// ListPushTargets returns the user's push targets in ascending device
	// id order.
	ListPushTargets(ctx context.Context, userID string) ([]*PushTarget, error)
	// SetPushPreviews records whether pushes to the user carry message
	// previews (idempotent; the user need not exist).
	SetPushPreviews(ctx context.Context, userID string, on bool) error
	// PushPreviews reports the setting (false if never set).
	PushPreviews(ctx context.Context, userID string) (bool, error)
	// SetMute mutes the channel for the user until m.Until (zero: forever),
	// replacing an earlier mute. It does not check membership.
	SetMute(ctx context.Context, userID string, m Mute) error
	// DeleteMute ends the user's mute of the channel (idempotent).
	DeleteMute(ctx context.Context, userID, channelID string) error
	// ListMutes returns the user's stored mutes, expired ones included
	// (callers check Mute.Active), in ascending channel id order.
	ListMutes(ctx context.Context, userID string) ([]Mute, error)
}

// PushJob is one committed message waiting to be pushed to one user's
// devices (or, for a retry, to one device).
type PushJob struct {
	// ID is assigned by AddPushJobs: unique and increasing in the queue.
	ID        uint64
	UserID    string
	ChannelID string
	MessageID uint64
	// Committed is when the message committed; the job's TTL runs from
	// it.
	Committed time.Time
	// Due is when the job may be sent at the earliest (the end of its
	// collapse window, or of a retry's back-off).
	Due time.Time
	// DeviceID, for a retry, is the one device it is for; empty for a new
	// job (every device of the user).
	DeviceID string
	// Attempt counts the failed sends of a retry (0 for a new job).
	Attempt uint32
}

// PushQueue is a durable queue of push jobs on the embedded store (the
// cluster keeps its queue in Redis, server/push/redisqueue).
type PushQueue interface {
	// AddPushJobs appends jobs, assigning their IDs (in the slice). They
	// are in the write-ahead log when it returns and on disk at the next
	// synced write (at most a few milliseconds later while messages flow);
	// it never waits for a sync itself.
	AddPushJobs(ctx context.Context, jobs []PushJob) error
	// PushJobs returns up to limit jobs in ID order, the oldest first.
	PushJobs(ctx context.Context, limit int) ([]PushJob, error)
	// DeletePushJobs removes jobs by ID (durably; a missing one is
	// ignored).
	DeletePushJobs(ctx context.Context, ids []uint64) error
}
