package pebble

import (
	"context"

	"github.com/chatd/chatd/server/store"
)

// LookupDedup returns the recorded send or store.ErrNotFound.
func (s *Store) LookupDedup(ctx context.Context, senderID, clientMessageID string) (*store.Dedup, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	defer s.ops.RUnlock()
	if err := checkIDs(senderID, clientMessageID); err != nil {
		return nil, err
	}
	return getAs(s, key2(tDedup, senderID, clientMessageID), func(v []byte) (*store.Dedup, error) { return decodeDedup(senderID, clientMessageID, v) })
}
