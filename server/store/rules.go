package store

import (
	"errors"
	"slices"
	"sort"
	"strings"
	"unicode"
	"unicode/utf8"

	"go.mau.fi/util/confusable"
	"golang.org/x/text/cases"
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
// user id. It is how every service looks a user up (log-in, a DM's
// to_user, group members, presence): accounts created before the
// identifier profile of NewUsername was enforced keep working under it.
// The form: the PRECIS UsernameCaseMapped profile of RFC 8265 (width-mapped,
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

// HasVisible reports whether s has at least one character that shows on
// its own: a letter, number, punctuation, symbol (general categories L,
// N, P, S) or private-use character (Co: icons of custom fonts) that is
// not Invisible and not U+2800 BRAILLE PATTERN BLANK (a symbol drawn as
// nothing). Combining marks (M) only decorate a base character and an
// unassigned code point shows nothing, so a text of only those has no
// visible character. Services refuse texts and names without one.
func HasVisible(s string) bool {
	for _, r := range s {
		if Visible(r) {
			return true
		}
	}
	return false
}

// Visible reports whether r shows on its own (see HasVisible).
func Visible(r rune) bool {
	if r < utf8.RuneSelf {
		return r > ' ' && r != 0x7F
	}
	return !Invisible(r) && r != '\u2800' &&
		unicode.In(r, unicode.L, unicode.N, unicode.P, unicode.S, unicode.Co)
}

// NewUsername is CanonicalUsername plus the rules a username must meet to
// be created (sign-up): the Unicode identifier security profile of UTS #39
// ("Unicode Security Mechanisms"), restriction level Highly Restrictive,
// and two rules for command lines. It returns the canonical id, or an
// error that errors.Is ErrInvalidUsername and whose text names the rule
// broken:
//
//   - every letter and digit is of one script, or the scripts together are
//     Latin + Han + Hiragana + Katakana (Japanese), Latin + Han + Bopomofo
//     (Chinese) or Latin + Han + Hangul (Korean); characters of the Common
//     and Inherited scripts ('.', '_', '-', combining marks) count for
//     none (mixed-script detection, UTS #39 section 5.1/5.2);
//   - decimal digits all come from one numbering system (mixed-number
//     detection, UTS #39 section 5.3: no "١" among "۱");
//   - at least one letter or digit (not only punctuation such as "..." or
//     "_-_"), and no leading '-' (a name such as "-rf" reads as an option
//     on a command line: `chatctl send -rf hi`).
//
// Look-alikes across accounts (a whole-script "аре" in Cyrillic against a
// Latin "ape", "rnary" against "mary") are not a property of one name:
// stores refuse a new user whose UsernameSkeleton is an existing user's
// (ErrUsernameLookAlike).
//
// Scripts are the Script property of Go's unicode tables (Unicode 15).
// UTS #39 resolves Script_Extensions, which the standard library does not
// carry; with Script alone a character that Script_Extensions gives to
// several scripts (such as U+30FC, the prolonged sound mark of both kana)
// is Common and counts for none, which only ever accepts, never refuses,
// such a name.
func NewUsername(s string) (string, error) {
	id, err := CanonicalUsername(s)
	if err != nil {
		return "", err
	}
	if strings.HasPrefix(id, "-") {
		return "", errLeadingDash
	}
	scripts := map[string]bool{}
	var zero rune // the zero of the first decimal digit's numbering system
	alnum := false
	for _, r := range id {
		if !unicode.IsLetter(r) && !unicode.IsDigit(r) {
			continue
		}
		alnum = true
		if unicode.IsDigit(r) {
			z := digitZero(r)
			if zero != 0 && z != zero {
				return "", errMixedDigits
			}
			zero = z
		}
		if sc := scriptOf(r); sc != "Common" && sc != "Inherited" {
			scripts[sc] = true
		}
	}
	if !alnum {
		return "", errNoAlnum
	}
	if !highlyRestrictive(scripts) {
		return "", &usernameError{"username mixes the scripts " + strings.Join(sortedKeys(scripts), ", ") +
			": use one script, or Latin with Han and Japanese kana, with Han and Bopomofo, or with Han and Hangul"}
	}
	return id, nil
}

// ErrUsernameLookAlike is returned by Accounts.CreateUser for a user whose
// UsernameSkeleton is that of an existing user. It errors.Is
// ErrAlreadyExists: the name is taken, by a look-alike.
var ErrUsernameLookAlike error = &usernameTaken{}

type usernameTaken struct{}

func (*usernameTaken) Error() string        { return "username looks like an existing username" }
func (*usernameTaken) Is(target error) bool { return target == ErrAlreadyExists }

// UsernameSkeleton returns the confusable skeleton of a canonical username
// (a user id): two ids with the same skeleton look alike ("alice" with a
// Cyrillic "а", "rnary" and "mary", "b0b" and "bob"). It is the skeleton
// of UTS #39 section 4 (NFD, the confusables.txt prototype of every
// character, NFD again; go.mau.fi/util/confusable, Unicode 17 data),
// case-folded and mapped once more, because user ids are case-folded
// while some prototypes are capitals ("0" → "O", "1" → "l"). A skeleton is
// for comparison only, never for display. Stores keep one user per
// skeleton.
func UsernameSkeleton(id string) string {
	return confusable.Skeleton(cases.Fold().String(confusable.Skeleton(id)))
}

var (
	errLeadingDash = &usernameError{"username must not begin with '-'"}
	errNoAlnum     = &usernameError{"username must contain a letter or a digit, not only '.', '_' or '-'"}
	errMixedDigits = &usernameError{"username mixes digits of different numbering systems"}
)

// usernameError is a NewUsername refusal: its own text, and errors.Is
// ErrInvalidUsername.
type usernameError struct{ msg string }

func (e *usernameError) Error() string        { return e.msg }
func (e *usernameError) Is(target error) bool { return target == ErrInvalidUsername }

// highlyRestrictive reports whether a set of scripts (Common and Inherited
// left out) meets UTS #39's Highly Restrictive level: at most one script,
// or a subset of one of the three CJK combinations with Latin.
func highlyRestrictive(scripts map[string]bool) bool {
	if len(scripts) <= 1 {
		return true
	}
	for _, allowed := range [][]string{
		{"Latin", "Han", "Hiragana", "Katakana"},
		{"Latin", "Han", "Bopomofo"},
		{"Latin", "Han", "Hangul"},
	} {
		ok := true
		for sc := range scripts {
			if !slices.Contains(allowed, sc) {
				ok = false
				break
			}
		}
		if ok {
			return true
		}
	}
	return false
}

// scriptOf returns the Unicode Script property value of r (a name of
// unicode.Scripts), or "Unknown".
func scriptOf(r rune) string {
	if r < 0x80 {
		if unicode.IsLetter(r) {
			return "Latin"
		}
		return "Common"
	}
	for _, name := range scriptOrder {
		if unicode.Is(unicode.Scripts[name], r) {
			return name
		}
	}
	return "Unknown"
}

// scriptOrder lists unicode.Scripts with the most common scripts of names
// first, so that most look-ups stop early.
var scriptOrder = func() []string {
	first := []string{"Latin", "Common", "Inherited", "Han", "Cyrillic", "Greek", "Arabic", "Hiragana", "Katakana", "Hangul", "Devanagari", "Hebrew", "Thai"}
	rest := make([]string, 0, len(unicode.Scripts))
	for name := range unicode.Scripts {
		if !slices.Contains(first, name) {
			rest = append(rest, name)
		}
	}
	sort.Strings(rest)
	return append(first, rest...)
}()

// digitZero returns the digit zero of the numbering system of the decimal
// digit r: Unicode encodes every system's ten digits contiguously, zero
// first, and contiguous runs of Nd are whole systems.
func digitZero(r rune) rune {
	start := r
	for unicode.IsDigit(start - 1) {
		start--
	}
	return start + (r-start)/10*10
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
