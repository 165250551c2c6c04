package pebble

import (
	"context"

	"github.com/chatd/chatd/server/store"
)

// LookupDedup returns the recorded send or store.ErrNotFound.
func (s *Store) LookupDedup(ctx context.Context, senderID, clientMessageID string) (*store.Dedup, error) {
	return getChecked(ctx, s, []string{senderID, clientMessageID}, key2(tDedup, senderID, clientMessageID), func(v []byte) (*store.Dedup, error) { return decodeDedup(senderID, clientMessageID, v) })
}
