package scylla

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
)

// TestBounds: the bound is a max register under concurrent raises, and a
// row written without the bound's timestamp is refused.
func TestBounds(t *testing.T) {
	s := openClean(t)
	defer s.Close()
	b := s.Bounds()
	ctx := context.Background()
	var r [6]byte
	_, _ = rand.Read(r[:])
	key := "test:k" + hex.EncodeToString(r[:])
	if v, err := b.Get(ctx, key); err != nil || v != 0 {
		t.Fatalf("Get of a new key: %d, %v", v, err)
	}
	var wg sync.WaitGroup
	var want atomic.Uint64
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20 {
				v := uint64(1 + (w*7919+i*104729)%100000)
				if err := b.Reserve(ctx, key, v); err != nil {
					t.Error(err)
					return
				}
				for {
					cur := want.Load()
					if v <= cur || want.CompareAndSwap(cur, v) {
						break
					}
				}
			}
		}()
	}
	wg.Wait()
	if v, err := b.Get(ctx, key); err != nil || v != want.Load() {
		t.Fatalf("after concurrent raises Get = %d, %v; want the maximum %d", v, err, want.Load())
	}
	// Raising to less changes nothing.
	if err := b.Reserve(ctx, key, 1); err != nil {
		t.Fatal(err)
	}
	if v, _ := b.Get(ctx, key); v != want.Load() {
		t.Fatalf("a lower Reserve lowered the bound to %d", v)
	}
	if err := b.Reserve(ctx, key, 0); err == nil {
		t.Fatal("Reserve(0) accepted")
	}
	// A hand-made write (ordinary timestamp) is detected.
	if err := s.Session().Session.Query(`UPDATE seq_bounds SET bound = 5 WHERE key = ?`, key).Exec(); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Get(ctx, key); !errors.Is(err, ErrForeignWrite) {
		t.Fatalf("Get of a foreign row: %v", err)
	}
}
