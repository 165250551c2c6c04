package chat

import (
	"fmt"
	"unicode"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/chatd/chatd/server/store"
)

// maxChannelIDBytes bounds a channel id: "dm:" + two usernames of at most
// 32 characters (4 bytes each) + ":", or "g:" + 32 hex digits.
const maxChannelIDBytes = 3 + 2*4*32 + 1

var (
	errTextEmpty   = status.Error(codes.InvalidArgument, "text is empty or has no visible character (only white space, joiners, marks or other characters that show nothing)")
	errTextUTF8    = status.Error(codes.InvalidArgument, "text is not valid UTF-8")
	errTextControl = status.Error(codes.InvalidArgument, "text contains control characters (only tab, line feed and carriage return are allowed)")
	errTextLong    = status.Error(codes.InvalidArgument, fmt.Sprintf("text exceeds %d bytes", MaxTextBytes))
	errCMID        = status.Error(codes.InvalidArgument, fmt.Sprintf("client_message_id must be 1 to %d bytes of printable UTF-8", MaxClientMessageIDBytes))
	errChannelID   = status.Error(codes.InvalidArgument, "invalid channel_id")
	errNoTarget    = status.Error(codes.InvalidArgument, "send needs to_user or channel_id")
)

// isVisible reports whether r shows on its own (a letter, number,
// punctuation, symbol or private-use character that no invisible Unicode
// property covers): store.Visible.
func isVisible(r rune) bool { return store.Visible(r) }

// isControl reports whether r is a C0 or C1 control character (or DEL)
// other than tab, line feed and carriage return.
func isControl(r rune) bool {
	switch r {
	case '\t', '\n', '\r':
		return false
	}
	return r < 0x20 || (r >= 0x7F && r <= 0x9F)
}

// checkText validates a message text: valid UTF-8, at most MaxTextBytes
// bytes, no control characters except \t \n \r, and at least one visible
// character (not only white space, format characters such as U+200E or
// U+200D, variation selectors, other default-ignorable code points,
// combining marks, U+2800 or unassigned code points; see store.Visible).
// Errors are InvalidArgument.
func checkText(s string) error {
	if len(s) > MaxTextBytes {
		return errTextLong
	}
	visible := false
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf { // ASCII fast path
			if c < 0x20 || c == 0x7F {
				if c != '\t' && c != '\n' && c != '\r' {
					return errTextControl
				}
			} else if c != ' ' {
				visible = true
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			return errTextUTF8
		}
		if isControl(r) {
			return errTextControl
		}
		if !visible && isVisible(r) {
			visible = true
		}
		i += size
	}
	if !visible {
		return errTextEmpty
	}
	return nil
}

// checkClientMessageID: 1..64 bytes, valid UTF-8, every character
// printable (unicode.IsPrint: letters, marks, numbers, punctuation,
// symbols and the ASCII space).
func checkClientMessageID(s string) error {
	if len(s) == 0 || len(s) > MaxClientMessageIDBytes || !utf8.ValidString(s) {
		return errCMID
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return errCMID
		}
	}
	return nil
}

// checkChannelID: 1..maxChannelIDBytes bytes of valid UTF-8 without
// control characters or white space.
func checkChannelID(s string) error {
	if len(s) == 0 || len(s) > maxChannelIDBytes || !utf8.ValidString(s) {
		return errChannelID
	}
	for _, r := range s {
		if unicode.IsControl(r) || unicode.IsSpace(r) {
			return errChannelID
		}
	}
	return nil
}

// checkGroupName: 1..100 characters of valid UTF-8, no control characters,
// not only white space.
func checkGroupName(s string) error {
	bad := status.Error(codes.InvalidArgument, fmt.Sprintf("group name must be 1 to %d characters without control characters", MaxGroupNameChars))
	if len(s) == 0 || len(s) > 4*MaxGroupNameChars || !utf8.ValidString(s) {
		return bad
	}
	n, visible := 0, false
	for _, r := range s {
		n++
		if unicode.IsControl(r) || r == '\u2028' || r == '\u2029' {
			return bad
		}
		if isVisible(r) {
			visible = true
		}
	}
	if n > MaxGroupNameChars || !visible {
		return bad
	}
	return nil
}

// canonicalUsername is store.CanonicalUsername with its error as the
// client sees it: InvalidArgument naming the rule.
func canonicalUsername(s string) (string, error) {
	id, err := store.CanonicalUsername(s)
	if err != nil {
		return "", status.Error(codes.InvalidArgument, err.Error())
	}
	return id, nil
}

// directChannelID returns the id of the 1:1 channel of users a and b.
func directChannelID(a, b string) string {
	if b < a {
		a, b = b, a
	}
	return "dm:" + a + ":" + b
}
