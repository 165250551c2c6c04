package store_test

import (
	"errors"
	"strings"
	"testing"
	"unicode"

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

func TestInvisible(t *testing.T) {
	for _, r := range []rune{' ', '\t', '\n', 0x7F, 0xA0, 0xAD, 0x034F, 0x115F, 0x180E, 0x200B, 0x200D, 0x200E, 0x2028, 0x2066, 0x3000, 0x3164, 0xFE0F, 0xFEFF, 0xFFFF, 0xE0001, 0xE0100} {
		if !store.Invisible(r) {
			t.Errorf("Invisible(U+%04X) = false", r)
		}
	}
	for _, r := range []rune{'a', '.', '0', 0xE9, 0x0301, 0x05D0, 0x0915, 0x1F600, 0x1F3FD, 0x4E2D, 0xFFFD} {
		if store.Invisible(r) {
			t.Errorf("Invisible(U+%04X) = true", r)
		}
	}
	// Every code point of the properties, whatever Go's Unicode version.
	for _, tab := range []*unicode.RangeTable{unicode.White_Space, unicode.Cc, unicode.Cf, unicode.Other_Default_Ignorable_Code_Point, unicode.Variation_Selector} {
		for _, r16 := range tab.R16 {
			for r := rune(r16.Lo); r <= rune(r16.Hi); r += rune(r16.Stride) {
				if !store.Invisible(r) {
					t.Errorf("Invisible(U+%04X) = false", r)
				}
			}
		}
		for _, r32 := range tab.R32 {
			for r := rune(r32.Lo); r <= rune(r32.Hi); r += rune(r32.Stride) {
				if !store.Invisible(r) {
					t.Errorf("Invisible(U+%04X) = false", r)
				}
			}
		}
	}
	if store.HasVisible("\u200e\u200d \ufe0f") || !store.HasVisible("\u200ex") {
		t.Error("HasVisible")
	}
}
