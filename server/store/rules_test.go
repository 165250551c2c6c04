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
	// Shows nothing: lone combining marks, the braille blank, unassigned
	// code points; shows: a base character with its marks, symbols,
	// punctuation, private use (a custom font's icon).
	for _, s := range []string{"\u0301", "\u0301\u0301", " \u0301", "\u2800\u2800", "\U0001D455", "\u20dd"} {
		if store.HasVisible(s) {
			t.Errorf("HasVisible(%q) = true, want false", s)
		}
	}
	for _, s := range []string{"e\u0301", "\u263a", "!", "\ue000", "7", "\u2801", "\U0001F600"} {
		if !store.HasVisible(s) {
			t.Errorf("HasVisible(%q) = false, want true", s)
		}
	}
}

// TestNewUsername: the UTS #39 identifier profile a new username meets
// (issue 11 item 5); every refusal errors.Is ErrInvalidUsername and names
// its rule.
func TestNewUsername(t *testing.T) {
	for in, want := range map[string]string{
		"Alice": "alice", "zoë": "zoë", "Ζωή": "ζωή", "日本語": "日本語", "user.name_": "user.name_", "a-1": "a-1",
		"иван":           "иван",           // one script: Cyrillic
		"tanaka田中たなかタナカ": "tanaka田中たなかタナカ", // Latin + Han + Hiragana + Katakana
		"lee이李":          "lee이李",          // Latin + Han + Hangul
		"wang王ㄅ":         "wang王ㄅ",         // Latin + Han + Bopomofo
		"x.-_":           "x.-_",
		"_-x":            "_-x",
	} {
		got, err := store.NewUsername(in)
		if err != nil || got != want {
			t.Errorf("NewUsername(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for in, msg := range map[string]string{
		"\u0430lice":    "mixes the scripts Cyrillic, Latin", // Cyrillic а + Latin
		"p\u0430ypal":   "mixes the scripts",
		"ab\u03b1c":     "mixes the scripts Greek, Latin",
		"이たなか":          "mixes the scripts", // Hangul + Hiragana
		"ivan\u0438":    "mixes the scripts",
		"-rf":           "must not begin with '-'",
		"--help":        "must not begin with '-'",
		"...":           "letter or a digit",
		"_-_":           "letter or a digit",
		"---":           "must not begin with '-'",
		"ab":            "3 to 32 characters",
		"a b":           "3 to 32 characters",
		"a\u0967\u09e7": "mixes", // Devanagari and Bengali digits
	} {
		got, err := store.NewUsername(in)
		if !errors.Is(err, store.ErrInvalidUsername) || !strings.Contains(err.Error(), msg) {
			t.Errorf("NewUsername(%q) = %q, %v; want ErrInvalidUsername containing %q", in, got, err, msg)
		}
	}
	// Two decimal systems of one script (Arabic-Indic and Extended
	// Arabic-Indic digits): refused, by PRECIS or by mixed-number detection.
	if _, err := store.NewUsername("\u0628\u0628\u0661\u06f2"); !errors.Is(err, store.ErrInvalidUsername) {
		t.Errorf("mixed Arabic digits accepted: %v", err)
	}
	// Every name NewUsername accepts, CanonicalUsername maps to the same id.
	for _, in := range []string{"Alice", "иван", "tanaka田中"} {
		a, _ := store.NewUsername(in)
		b, _ := store.CanonicalUsername(in)
		if a != b {
			t.Errorf("%q: NewUsername %q, CanonicalUsername %q", in, a, b)
		}
	}
	// Names that existed before the profile still canonicalise (log-in).
	for _, in := range []string{"-rf", "...", "\u0430lice"} {
		if _, err := store.CanonicalUsername(in); err != nil {
			t.Errorf("CanonicalUsername(%q): %v", in, err)
		}
	}
}

func TestUsernameSkeleton(t *testing.T) {
	same := [][2]string{
		{"alice", "\u0430lice"},                     // Cyrillic а
		{"ape", "\u0430\u0440\u0435"},               // whole-script Cyrillic
		{"joe", "\u0458\u043e\u0435"},               // whole-script Cyrillic
		{"mary", "rnary"},                           // rn
		{"bob", "b0b"},                              // digit zero
		{"alice", "a1ice"},                          // digit one
		{"paypal", "p\u0430yp\u0430l"},              // two Cyrillic а
		{"scope", "\u0455\u0441\u043e\u0440\u0435"}, // Cyrillic ѕсоре
	}
	for _, p := range same {
		if a, b := store.UsernameSkeleton(p[0]), store.UsernameSkeleton(p[1]); a != b {
			t.Errorf("skeletons of %q and %q differ: %q, %q", p[0], p[1], a, b)
		}
	}
	for _, p := range [][2]string{{"alice", "alicia"}, {"bob", "bab"}, {"zoë", "zoe"}, {"ivan", "иван"}} {
		if store.UsernameSkeleton(p[0]) == store.UsernameSkeleton(p[1]) {
			t.Errorf("%q and %q have one skeleton %q", p[0], p[1], store.UsernameSkeleton(p[0]))
		}
	}
}
