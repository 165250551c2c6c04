package store_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/chatd/chatd/server/store"
)

func TestCanonicalUsername(t *testing.T) {
	for in, want := range map[string]string{
		"Alice":      "alice",
		"ALICE":      "alice",
		"ａｌｉｃｅ":      "alice",
		"zoe\u0308":  "zoë",
		"Ζωή":        "ζωή",
		"user.name_": "user.name_",
		"a-1":        "a-1",
		"日本語":        "日本語",
	} {
		got, err := store.CanonicalUsername(in)
		if err != nil || got != want {
			t.Errorf("CanonicalUsername(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "ab", "a b", "a:b", "a/b", "a@b", "a\x00b", "a\u200bb", "\xff\xfeabc",
		strings.Repeat("a", 33), strings.Repeat("a", 100000), "abc\u202e"} {
		if got, err := store.CanonicalUsername(in); err == nil || !errors.Is(err, store.ErrInvalidUsername) {
			t.Errorf("CanonicalUsername(%q) = %q, %v; want ErrInvalidUsername", in, got, err)
		}
	}
}
