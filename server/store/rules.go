package store

import (
	"errors"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/secure/precis"
)

// Domain rules shared by the services (account, chat, presence): what a
// user id is, and how many contacts a user may have. They return plain
// errors; the gRPC services map them to status codes.

// Username limits. Characters are Unicode code points after
// normalisation.
const (
	MinUsernameChars = 3
	MaxUsernameChars = 32
)

// DefaultMaxContacts bounds one user's contact list unless the account
// service is configured otherwise, and so the users one presence call may
// name.
const DefaultMaxContacts = 1000

// ErrInvalidUsername is returned by CanonicalUsername. Its text names the
// rule and is meant for the client (the services send it with
// InvalidArgument).
var ErrInvalidUsername = errors.New("username must be 3 to 32 characters: letters, digits, '.', '_' or '-'")

// CanonicalUsername returns the canonical form of a username, which is the
// user id: the PRECIS UsernameCaseMapped profile of RFC 8265 (width-mapped,
// case-folded, NFC), then 3..32 characters that are each a Unicode letter,
// a decimal digit, '.', '_' or '-'. So "Alice", "alice" and "ALICE" (and NFC
// or NFD spellings of "zoë") give the same id, and ids never contain ':',
// '/', spaces or NUL. The error is ErrInvalidUsername.
func CanonicalUsername(s string) (string, error) {
	// Cheap bound before any Unicode work: 32 characters are at most 128
	// bytes in UTF-8; allow slack for decomposed input that NFC shortens.
	if len(s) == 0 || len(s) > 4*4*MaxUsernameChars || !utf8.ValidString(s) {
		return "", ErrInvalidUsername
	}
	c, err := precis.UsernameCaseMapped.String(s)
	if err != nil {
		return "", ErrInvalidUsername
	}
	n := 0
	for _, r := range c {
		n++
		if !(unicode.IsLetter(r) || unicode.IsDigit(r) || r == '.' || r == '_' || r == '-') {
			return "", ErrInvalidUsername
		}
	}
	if n < MinUsernameChars || n > MaxUsernameChars {
		return "", ErrInvalidUsername
	}
	return c, nil
}

// Invisible reports whether r renders as nothing on its own: white space
// (White_Space), a control character (Cc), a format character (Cf: the
// bidirectional marks and isolates, joiners, soft hyphen, tags, ...), a
// variation selector, another Default_Ignorable_Code_Point (Hangul
// fillers, U+034F COMBINING GRAPHEME JOINER, the unassigned ranges
// reserved as ignorable) or a noncharacter. The sets are Go's tables of
// those Unicode properties, not a hand list; Default_Ignorable_Code_Point
// is derived in Unicode as Other_Default_Ignorable_Code_Point + Cf +
// Variation_Selector minus a few visible exceptions, and those exceptions
// (White_Space, the prepended concatenation marks) are counted as
// invisible here too: alone they show nothing.
func Invisible(r rune) bool {
	if r < utf8.RuneSelf {
		return r <= ' ' || r == 0x7F
	}
	return unicode.In(r, unicode.White_Space, unicode.Cc, unicode.Cf,
		unicode.Other_Default_Ignorable_Code_Point, unicode.Variation_Selector,
		unicode.Noncharacter_Code_Point)
}

// HasVisible reports whether s has at least one character that is not
// Invisible. Services refuse texts and names without one.
func HasVisible(s string) bool {
	for _, r := range s {
		if !Invisible(r) {
			return true
		}
	}
	return false
}
