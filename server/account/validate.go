package account

import (
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/chatd/chatd/server/store"
)

// Input limits of the account service. Characters are Unicode code points
// after normalisation. The username rule is the domain's
// (store.CanonicalUsername, store.MinUsernameChars..MaxUsernameChars).
const (
	MinPasswordBytes = 8
	MaxPasswordBytes = 1024
	MaxNameChars     = 64 // display names and device names
)

var (
	errPassword = status.Error(codes.InvalidArgument,
		"password must be 8 to 1024 bytes")
	errPasswordTooLong = status.Error(codes.InvalidArgument,
		"password must be at most 1024 bytes")
)

// canonicalUsername is store.CanonicalUsername with its error as the
// client sees it: InvalidArgument naming the rule.
func canonicalUsername(s string) (string, error) {
	id, err := store.CanonicalUsername(s)
	if err != nil {
		return "", status.Error(codes.InvalidArgument, err.Error())
	}
	return id, nil
}

// newUsername is store.NewUsername (the canonical form plus the identifier
// profile a username must meet to be created) with its error as the
// client sees it: InvalidArgument naming the rule.
func newUsername(s string) (string, error) {
	id, err := store.NewUsername(s)
	if err != nil {
		return "", status.Error(codes.InvalidArgument, err.Error())
	}
	return id, nil
}

// checkPassword enforces the password length: 8..1024 bytes.
func checkPassword(p string) error {
	if len(p) < MinPasswordBytes || len(p) > MaxPasswordBytes {
		return errPassword
	}
	return nil
}

// cleanName validates and normalises a display name or device name: it
// trims surrounding white space, applies NFC and requires 1..64 characters
// with no control characters (Cc), format characters (Cf; except U+200D
// ZERO WIDTH JOINER, which emoji sequences need), line or paragraph
// separators, or invalid UTF-8, and at least one visible character
// (store.HasVisible: not only a joiner, a Hangul filler or white space).
// what names the field in the error.
func cleanName(s, what string) (string, error) {
	if len(s) > 4*4*MaxNameChars { // cheap bound before Unicode work
		return "", nameErr(what)
	}
	if !utf8.ValidString(s) {
		return "", status.Errorf(codes.InvalidArgument, "%s must be valid UTF-8", what)
	}
	s = norm.NFC.String(strings.TrimSpace(s))
	n := 0
	for _, r := range s {
		n++
		if r == '\u200d' {
			continue
		}
		if unicode.Is(unicode.Cc, r) || unicode.Is(unicode.Cf, r) ||
			unicode.Is(unicode.Zl, r) || unicode.Is(unicode.Zp, r) {
			return "", status.Errorf(codes.InvalidArgument,
				"%s must not contain control or format characters (found U+%04X)", what, r)
		}
	}
	if n < 1 || n > MaxNameChars || !store.HasVisible(s) {
		return "", nameErr(what)
	}
	return s, nil
}

func nameErr(what string) error {
	return status.Errorf(codes.InvalidArgument,
		"%s must be 1 to 64 characters with at least one visible character", what)
}
