package sequence

import "github.com/chatd/chatd/server/store"

type dedupKey struct{ sender, clientMessageID string }

// lru is a bounded cache of recent dedup records with two generations: new
// entries go to cur; when cur holds half the capacity it becomes old and a
// fresh cur starts, so at most capacity entries are kept and recently used
// ones survive a rotation (a hit in old is promoted to cur). Not safe for
// concurrent use: the sequencer goroutine owns it.
type lru struct {
	half     int
	cur, old map[dedupKey]store.Dedup
}

func newLRU(capacity int) *lru {
	h := max(capacity/2, 1)
	return &lru{half: h, cur: make(map[dedupKey]store.Dedup)}
}

func (c *lru) get(k dedupKey) (store.Dedup, bool) {
	if d, ok := c.cur[k]; ok {
		return d, true
	}
	if d, ok := c.old[k]; ok {
		c.put(k, d)
		return d, true
	}
	return store.Dedup{}, false
}

func (c *lru) put(k dedupKey, d store.Dedup) {
	if _, ok := c.cur[k]; !ok && len(c.cur) >= c.half {
		c.old = c.cur
		c.cur = make(map[dedupKey]store.Dedup, c.half)
	}
	c.cur[k] = d
}
