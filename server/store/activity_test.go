package store_test

import (
	"slices"
	"testing"
	"time"

	"github.com/chatd/chatd/server/store"
)

func TestPageByActivity(t *testing.T) {
	t0 := time.UnixMilli(1_700_000_000_000).UTC()
	all := func() []store.ChannelActivity {
		return []store.ChannelActivity{
			{ChannelID: "old", LastMessageID: 9, LastActivity: t0},
			{ChannelID: "b", LastMessageID: 5, LastActivity: t0.Add(time.Second)},
			{ChannelID: "a", LastMessageID: 5, LastActivity: t0.Add(time.Second)},
			{ChannelID: "hi", LastMessageID: 7, LastActivity: t0.Add(time.Second)},
			{ChannelID: "new", LastActivity: t0.Add(time.Minute)}, // no message yet
		}
	}
	ids := func(acts []store.ChannelActivity) []string {
		var out []string
		for _, a := range acts {
			out = append(out, a.ChannelID)
		}
		return out
	}
	// Newest first; same time: higher LastMessageID, then channel id.
	want := []string{"new", "hi", "a", "b", "old"}
	for _, tc := range []struct {
		offset, limit int
		want          []string
	}{
		{0, 10, want},
		{-3, 10, want},
		{0, 2, want[:2]},
		{2, 2, want[2:4]},
		{4, 10, want[4:]},
		{5, 10, nil},
		{0, 0, nil},
		{1, -1, nil},
	} {
		got := store.PageByActivity(all(), tc.offset, tc.limit)
		if !slices.Equal(ids(got), tc.want) {
			t.Errorf("PageByActivity(offset %d, limit %d) = %q, want %q", tc.offset, tc.limit, ids(got), tc.want)
		}
		if len(got) != cap(got) {
			t.Errorf("PageByActivity(offset %d, limit %d): len %d cap %d, want a clipped slice", tc.offset, tc.limit, len(got), cap(got))
		}
	}
}
