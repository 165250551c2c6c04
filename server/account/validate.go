package account

import (
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/chatd/chatd/server/grpcerr"
	"github.com/chatd/chatd/server/store"
	"golang.org/x/text/unicode/norm"
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
	errPassword        = invalid("password", "password must be 8 to 1024 bytes")
	errPasswordTooLong = invalid("password", "password must be at most 1024 bytes")
)

// invalid is the InvalidArgument status of a broken input rule, with a
// google.rpc.BadRequest detail naming the request field (grpcerr.Details).
func invalid(field, format string, args ...any) error {
	return grpcerr.Status(store.Errorf(store.CodeInvalid, format, args...).WithField(field))
}

// canonicalUsername is store.CanonicalUsername with its error as the
// client sees it: InvalidArgument naming the rule.
func canonicalUsername(s string) (string, error) {
	id, err := store.CanonicalUsername(s)
	if err != nil {
		return "", invalid("username", "%s", err.Error())
	}
	return id, nil
}

// newUsername is store.NewUsername (the canonical form plus the identifier
// profile a username must meet to be created) with its error as the
// client sees it: InvalidArgument naming the rule.
func newUsername(s string) (string, error) {
	id, err := store.NewUsername(s)
	if err != nil {
		return "", invalid("username", "%s", err.Error())
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
		return "", invalid(fieldOf(what), "%s must be valid UTF-8", what)
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
			return "", invalid(fieldOf(what),
				"%s must not contain control or format characters (found U+%04X)", what, r)
		}
	}
	if n < 1 || n > MaxNameChars || !store.HasVisible(s) {
		return "", nameErr(what)
	}
	return s, nil
}

func nameErr(what string) error {
	return invalid(fieldOf(what), "%s must be 1 to 64 characters with at least one visible character", what)
}

// fieldOf is the proto field name of a name's description: "display
// name" -> "display_name".
func fieldOf(what string) string { return strings.ReplaceAll(what, " ", "_") }
