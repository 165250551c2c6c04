package auth

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"hash"
	"io"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/chatd/chatd/server/store"
)

// Token format (version 1)
//
//	token   = "v1." base64url(payload) "." base64url(mac)
//	payload = uvarint(len(user_id)) user_id
//	          uvarint(len(device_id)) device_id
//	          varint(issued_at)       // Unix milliseconds
//	          varint(expires_at)      // Unix milliseconds
//	mac     = HMAC-SHA256(key, "v1." base64url(payload))
//
// base64url is RFC 4648 §5 without padding. The MAC covers the version
// prefix, so a token cannot be replayed under another version. Tokens are
// bearer secrets bound to one device; they are revoked per device (see
// Authenticator.Validate), not individually.

const (
	tokenPrefix = "v1."
	// MaxTokenLen is the longest token Parse accepts, in bytes.
	MaxTokenLen = 1024
	macLen      = sha256.Size
)

var b64url = base64.RawURLEncoding

var (
	errMalformed    = store.Errorf(store.CodeUnauthenticated, "malformed token")
	errBadSignature = store.Errorf(store.CodeUnauthenticated, "bad signature")
	errExpired      = ErrExpired
)

var (
	// ErrExpired (CodeUnauthenticated "token expired", reason
	// store.ReasonTokenExpired) is the error of an expired token, and the
	// one a stream ends with when its token expires.
	ErrExpired = store.Errorf(store.CodeUnauthenticated, "token expired").WithReason(store.ReasonTokenExpired)
	// ErrRevoked (CodeUnauthenticated "session revoked", reason
	// store.ReasonDeviceRevoked) is the error of a token of a revoked
	// (logged out) device.
	ErrRevoked = store.Errorf(store.CodeUnauthenticated, "session revoked").WithReason(store.ReasonDeviceRevoked)
)

// Expired reports whether p's token has expired at now. A Principal
// without ExpiresAt (not made from a token, e.g. in tests) never expires.
func (p Principal) Expired(now time.Time) bool {
	return !p.ExpiresAt.IsZero() && !now.Before(p.ExpiresAt)
}

// ExpiryTimer returns a timer that fires when p's token expires, and its
// channel; for a Principal without ExpiresAt, a nil timer and a nil
// channel (never ready). Stop the timer (if not nil) when done.
func (p Principal) ExpiryTimer() (*time.Timer, <-chan time.Time) {
	if p.ExpiresAt.IsZero() {
		return nil, nil
	}
	t := time.NewTimer(time.Until(p.ExpiresAt))
	return t, t.C
}

// Issue returns a signed bearer token for the device deviceID of userID,
// valid from now for the configured TokenTTL, and the instant it expires
// (millisecond precision). err is non-nil only for empty or oversized ids
// (together longer than 512 bytes) or ids that are not valid UTF-8.
func (a *Authenticator) Issue(userID, deviceID string, now time.Time) (token string, expiresAt time.Time, err error) {
	if userID == "" || deviceID == "" || len(userID)+len(deviceID) > 512 ||
		!utf8.ValidString(userID) || !utf8.ValidString(deviceID) {
		return "", time.Time{}, errors.New("auth: invalid user or device id for token")
	}
	issued := now.UnixMilli()
	exp := now.Add(a.ttl).UnixMilli()
	payload := make([]byte, 0, 2*binary.MaxVarintLen64+len(userID)+len(deviceID)+2*binary.MaxVarintLen64)
	payload = binary.AppendUvarint(payload, uint64(len(userID)))
	payload = append(payload, userID...)
	payload = binary.AppendUvarint(payload, uint64(len(deviceID)))
	payload = append(payload, deviceID...)
	payload = binary.AppendVarint(payload, issued)
	payload = binary.AppendVarint(payload, exp)

	var sb strings.Builder
	sb.Grow(len(tokenPrefix) + b64url.EncodedLen(len(payload)) + 1 + b64url.EncodedLen(macLen))
	sb.WriteString(tokenPrefix)
	sb.WriteString(b64url.EncodeToString(payload))
	var buf [macLen]byte
	mac := a.mac(buf[:0], sb.String())
	sb.WriteByte('.')
	sb.WriteString(b64url.EncodeToString(mac))
	return sb.String(), time.UnixMilli(exp), nil
}

// mac appends HMAC-SHA256(key, signed) to dst. The keyed hashes are
// pooled: hmac.New allocates and pre-hashes the key pads.
func (a *Authenticator) mac(dst []byte, signed string) []byte {
	h, _ := a.macPool.Get().(hash.Hash)
	if h == nil {
		h = hmac.New(sha256.New, a.key)
	}
	h.Reset()
	io.WriteString(h, signed)
	dst = h.Sum(dst)
	a.macPool.Put(h)
	return dst
}

// Parse verifies token's signature and expiry against now and returns the
// Principal it names. Errors are *store.Error values with
// CodeUnauthenticated and message "malformed token" (wrong shape, version,
// encoding or length > MaxTokenLen), "bad signature" (not signed with this
// Authenticator's key, or altered) or "token expired" (now >= expires_at).
// Parse does not consult revocation; see Validate.
func (a *Authenticator) Parse(token string, now time.Time) (Principal, error) {
	if len(token) > MaxTokenLen || !strings.HasPrefix(token, tokenPrefix) {
		return Principal{}, errMalformed
	}
	dot := strings.LastIndexByte(token, '.')
	if dot < len(tokenPrefix) {
		return Principal{}, errMalformed
	}
	signed, macB64 := token[:dot], token[dot+1:]
	if b64url.DecodedLen(len(macB64)) != macLen {
		return Principal{}, errMalformed
	}
	var got [macLen]byte
	if n, err := b64url.AppendDecode(got[:0], []byte(macB64)); err != nil || len(n) != macLen {
		return Principal{}, errMalformed
	}
	var want [macLen]byte
	if !hmac.Equal(got[:], a.mac(want[:0], signed)) {
		return Principal{}, errBadSignature
	}
	payload, err := b64url.DecodeString(signed[len(tokenPrefix):])
	if err != nil {
		return Principal{}, errMalformed
	}
	user, rest, ok := readString(payload)
	if !ok {
		return Principal{}, errMalformed
	}
	device, rest, ok := readString(rest)
	if !ok {
		return Principal{}, errMalformed
	}
	_, n := binary.Varint(rest) // issued_at: informational
	if n <= 0 {
		return Principal{}, errMalformed
	}
	rest = rest[n:]
	exp, n := binary.Varint(rest)
	if n <= 0 || n != len(rest) {
		return Principal{}, errMalformed
	}
	expiresAt := time.UnixMilli(exp)
	if !now.Before(expiresAt) {
		return Principal{}, errExpired
	}
	return Principal{UserID: user, DeviceID: device, ExpiresAt: expiresAt}, nil
}

func readString(b []byte) (s string, rest []byte, ok bool) {
	l, n := binary.Uvarint(b)
	if n <= 0 || l == 0 || l > uint64(len(b)-n) {
		return "", nil, false
	}
	s = string(b[n : n+int(l)])
	if !utf8.ValidString(s) {
		return "", nil, false
	}
	return s, b[n+int(l):], true
}
