package store

import (
	"slices"
	"strings"
)

// PageByActivity sorts acts in the order of Channels.ListUserChannels and
// returns the page of it that skips the first offset entries and holds at
// most limit (limit <= 0: none). The order: most recent LastActivity
// first; ties by higher LastMessageID, then ascending ChannelID. It sorts
// acts in place; the page shares its array (clipped, so appending to it
// does not overwrite acts). Every implementation of ListUserChannels
// calls it, so the order is written once.
func PageByActivity(acts []ChannelActivity, offset, limit int) []ChannelActivity {
	offset = max(offset, 0)
	if limit <= 0 || offset >= len(acts) {
		return nil
	}
	slices.SortFunc(acts, func(a, b ChannelActivity) int {
		if c := b.LastActivity.Compare(a.LastActivity); c != 0 {
			return c
		}
		if a.LastMessageID != b.LastMessageID {
			if a.LastMessageID > b.LastMessageID {
				return -1
			}
			return 1
		}
		return strings.Compare(a.ChannelID, b.ChannelID)
	})
	acts = acts[offset:]
	if len(acts) > limit {
		acts = acts[:limit]
	}
	return slices.Clip(acts)
}
