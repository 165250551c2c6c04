package chat

import (
	"hash/maphash"
	"sync"
)

// Sizes of the existence caches on the 1:1 send path. A key is a user id or
// a direct channel id (tens of bytes), so a full cache holds a few MB.
const (
	// knownUsersCap bounds how many user ids are remembered as existing.
	knownUsersCap = 1 << 16
	// knownDirectsCap bounds how many direct channel ids are remembered as
	// existing.
	knownDirectsCap = 1 << 17
	knownShards     = 32
)

// knownSet is a bounded, sharded set of keys known to exist in the store:
// user ids (users are never deleted) and direct channel ids (a direct
// channel and its two members never change once created). It only ever
// holds positives: a key that is not in it is looked up in the store, so a
// user who signs up a second after a failed send is found on the next one.
//
// Each shard keeps two generations of at most cap/(2*shards) keys: when the
// current one is full it becomes the previous one and the old previous one
// is dropped; a hit in the previous generation is moved to the current one.
// That approximates an LRU at the cost of one map write per miss, with one
// mutex per shard (no global lock). The zero value is not usable; see
// newKnownSet.
type knownSet struct {
	seed   maphash.Seed
	perGen int
	shards [knownShards]knownShard
}

type knownShard struct {
	mu   sync.Mutex
	cur  map[string]struct{}
	prev map[string]struct{}
	_    [40]byte // keep shards on separate cache lines
}

// newKnownSet returns a set that holds at most capacity keys (at least
// 2 per shard).
func newKnownSet(capacity int) *knownSet {
	per := capacity / (2 * knownShards)
	if per < 1 {
		per = 1
	}
	k := &knownSet{seed: maphash.MakeSeed(), perGen: per}
	for i := range k.shards {
		k.shards[i].cur = make(map[string]struct{}, per)
	}
	return k
}

func (k *knownSet) shard(key string) *knownShard {
	return &k.shards[maphash.String(k.seed, key)%knownShards]
}

// has reports whether key was added and not yet evicted.
func (k *knownSet) has(key string) bool {
	sh := k.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if _, ok := sh.cur[key]; ok {
		return true
	}
	if _, ok := sh.prev[key]; ok {
		sh.addLocked(key, k.perGen)
		return true
	}
	return false
}

// add remembers that key exists.
func (k *knownSet) add(key string) {
	sh := k.shard(key)
	sh.mu.Lock()
	sh.addLocked(key, k.perGen)
	sh.mu.Unlock()
}

func (sh *knownShard) addLocked(key string, perGen int) {
	if _, ok := sh.cur[key]; ok {
		return
	}
	if len(sh.cur) >= perGen {
		sh.prev = sh.cur
		sh.cur = make(map[string]struct{}, perGen)
	}
	sh.cur[key] = struct{}{}
}

// len returns the number of keys held (for tests).
func (k *knownSet) len() int {
	n := 0
	for i := range k.shards {
		sh := &k.shards[i]
		sh.mu.Lock()
		n += len(sh.cur) + len(sh.prev)
		sh.mu.Unlock()
	}
	return n
}
