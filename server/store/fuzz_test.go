package store_test

import (
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/chatd/chatd/server/store"
)

// FuzzCanonicalUsername checks the username rule: never a panic; an
// accepted name gives an id of 3 to 32 letters, digits, '.', '_' or '-'
// that is its own canonical form (so a user id can be used where a
// username is expected); a refusal is ErrInvalidUsername. Seeds: the
// usernames of C105 in ../shared/cases/input.md (case, normalisation,
// length) and the known tricky inputs. `go test` runs the seeds and
// testdata/fuzz/FuzzCanonicalUsername as regression tests; see
// docs/testing.md for running it as a fuzzer.
func FuzzCanonicalUsername(f *testing.F) {
	for _, s := range []string{
		"alice", "Alice", "ALICE", "ａｌｉｃｅ", "zoe\u0308", "zo\u00eb", "Ζωή", "日本語", "user.name_", "a-1",
		"", "ab", "a b", "a:b", "a/b", "a@b", "a\x00b", "a\u200bb", "\xff\xfeabc", "abc\u202e",
		strings.Repeat("a", 32), strings.Repeat("a", 33), strings.Repeat("a", 1000),
		"ǅemal", "ﬃx", "ßtraße", "İstanbul", "ΣΑΣ", "Ⅻabc", "①②③", "K\u212a",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := store.CanonicalUsername(s)
		if err != nil {
			if err != store.ErrInvalidUsername || id != "" {
				t.Fatalf("CanonicalUsername(%q) = %q, %v; want \"\", ErrInvalidUsername", s, id, err)
			}
			return
		}
		if !utf8.ValidString(id) {
			t.Fatalf("CanonicalUsername(%q) = %q: not UTF-8", s, id)
		}
		n := utf8.RuneCountInString(id)
		if n < store.MinUsernameChars || n > store.MaxUsernameChars {
			t.Fatalf("CanonicalUsername(%q) = %q: %d characters", s, id, n)
		}
		for _, r := range id {
			if !(unicode.IsLetter(r) || unicode.IsDigit(r) || r == '.' || r == '_' || r == '-') {
				t.Fatalf("CanonicalUsername(%q) = %q: contains %U", s, id, r)
			}
		}
		again, err := store.CanonicalUsername(id)
		if err != nil || again != id {
			t.Fatalf("CanonicalUsername(%q) = %q, but CanonicalUsername(%q) = %q, %v: not idempotent", s, id, id, again, err)
		}
	})
}
