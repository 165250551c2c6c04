package account

import (
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/secure/precis"
	"golang.org/x/text/unicode/norm"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Input limits. Characters are Unicode code points after normalisation.
const (
	MinUsernameChars = 3
	MaxUsernameChars = 32
	MinPasswordBytes = 8
	MaxPasswordBytes = 1024
	MaxNameChars     = 64 // display names and device names
)

var (
	errUsername = status.Error(codes.InvalidArgument,
		"username must be 3 to 32 characters: letters, digits, '.', '_' or '-'")
	errPassword = status.Error(codes.InvalidArgument,
		"password must be 8 to 1024 bytes")
	errPasswordTooLong = status.Error(codes.InvalidArgument,
		"password must be at most 1024 bytes")
)

// CanonicalUsername returns the canonical form of a username, which is the
// user id: the PRECIS UsernameCaseMapped profile of RFC 8265 (width-mapped,
// case-folded, NFC), then 3..32 characters that are each a Unicode letter,
// a decimal digit, '.', '_' or '-'. So "Alice", "alice" and "ALICE" (and NFC
// or NFD spellings of "zoë") give the same id, and ids never contain ':',
// '/', spaces or NUL. The error is a status error with code InvalidArgument
// naming the rule.
func CanonicalUsername(s string) (string, error) {
	// Cheap bound before any Unicode work: 32 characters are at most 128
	// bytes in UTF-8; allow slack for decomposed input that NFC shortens.
	if len(s) == 0 || len(s) > 4*4*MaxUsernameChars || !utf8.ValidString(s) {
		return "", errUsername
	}
	c, err := precis.UsernameCaseMapped.String(s)
	if err != nil {
		return "", errUsername
	}
	n := 0
	for _, r := range c {
		n++
		if !(unicode.IsLetter(r) || unicode.IsDigit(r) || r == '.' || r == '_' || r == '-') {
			return "", errUsername
		}
	}
	if n < MinUsernameChars || n > MaxUsernameChars {
		return "", errUsername
	}
	return c, nil
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
// separators, or invalid UTF-8. what names the field in the error.
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
	if n < 1 || n > MaxNameChars {
		return "", nameErr(what)
	}
	return s, nil
}

func nameErr(what string) error {
	return status.Errorf(codes.InvalidArgument,
		"%s must be 1 to 64 characters and not only white space", what)
}
