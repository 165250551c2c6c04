package redis

import (
	"context"
	"fmt"
	"slices"
	"time"
)

// Defaults of the instance lease (Config.LeaseTTL).
const (
	// DefaultLeaseTTL is how long an allocator instance counts as alive
	// after its last lease renewal (Redis clock). Renewals go every
	// LeaseTTL/5, so a live server is fenced only after five renewals in
	// a row failed or stalled.
	DefaultLeaseTTL = 1500 * time.Millisecond
	// minLeaseForget is how long at least a dead instance stays listed
	// (and fenced) after its last renewal: longer than any of its pending
	// entries or claims can live (4 × PendingTTL if that is longer).
	minLeaseForget = 2 * time.Minute
)

// The instance lease.
//
// Every Allocator is an instance with a random id (a restarted server is a
// new instance). It renews its lease in <prefix>instances every
// LeaseTTL/5 with lrenew, which also answers the instances whose lease
// lapsed: dead (killed, hung, or cut off from Redis). An instance is dead
// for every server at the same moment, judged on the Redis clock. Then,
// instead of waiting for PendingTTL and the claim TTL:
//
//   - Horizon passes the dead instances to uhorizon, which drops their
//     pending entries at the low end of the inbox: their seqs become holes
//     (rows they wrote are visible; rows they did not write never will
//     be), so parked deliveries behind them flow again;
//   - Claim passes them to cclaim, which takes over their dedup claims: a
//     resend of a send the dead server was storing is stored, or
//     completed, at once (see sequence's findMissing).
//
// An instance that finds at its renewal that its lease had lapsed was
// fenced while alive (a stall longer than LeaseTTL): its pending entries
// may have been dropped (its commits then come back stale and it places
// the messages again) and its claims taken; it goes on under a new id.

// renewLease renews this instance's lease once and updates the dead set.
func (a *Allocator) renewLease(ctx context.Context) error {
	inst := a.instance()
	forget := max(minLeaseForget.Milliseconds(), 4*a.ttl)
	v, err := a.rdb.FCall(ctx, fnLeaseRenew, []string{a.prefix + "instances"}, inst, a.leaseTTL.Milliseconds(), forget).StringSlice()
	if isNoFunction(err) {
		if err = a.load(ctx); err == nil {
			v, err = a.rdb.FCall(ctx, fnLeaseRenew, []string{a.prefix + "instances"}, inst, a.leaseTTL.Milliseconds(), forget).StringSlice()
		}
	}
	if err != nil {
		return err
	}
	if len(v) == 1 && v[0] == "FENCED" {
		next := newEpoch()
		a.inst.Store(&next)
		a.log.Warn("sequence/redis: this server's lease had lapsed and it was fenced: its pending seqs and dedup claims may have been released; continuing as a new instance",
			"instance", inst, "new_instance", next, "lease", a.leaseTTL)
		return a.renewLease(ctx)
	}
	if len(v) == 0 || v[0] != "OK" {
		return fmt.Errorf("sequence/redis: lease: unexpected reply %v", v)
	}
	dead := v[1:]
	slices.Sort(dead)
	old := *a.dead.Load()
	for _, d := range dead {
		if _, found := slices.BinarySearch(old, d); !found {
			a.log.Info("sequence/redis: server instance fenced (lease lapsed): its pending seqs and dedup claims are released",
				"instance", d, "lease", a.leaseTTL)
		}
	}
	a.dead.Store(&dead)
	return nil
}

// leaseLoop renews the lease every LeaseTTL/5 until Close, and logs what
// was released for fenced instances since the last turn.
func (a *Allocator) leaseLoop() {
	defer close(a.leaseDone)
	every := a.leaseTTL / 5
	t := time.NewTicker(every)
	defer t.Stop()
	failing := false
	var pend, claims uint64
	for {
		select {
		case <-a.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), every)
		err := a.renewLease(ctx)
		cancel()
		switch {
		case err != nil && !failing:
			failing = true
			a.log.Warn("sequence/redis: lease renewal failed; retrying", "instance", a.instance(), "err", err)
		case err == nil && failing:
			failing = false
			a.log.Info("sequence/redis: lease renewed again (Redis reachable)", "instance", a.instance())
		}
		if n := a.fencedPending.Load(); n != pend {
			a.log.Info("sequence/redis: released pending seqs of fenced instances (readers pass them now)", "entries", n-pend)
			pend = n
		}
		if n := a.fencedClaims.Load(); n != claims {
			a.log.Info("sequence/redis: took over dedup claims of fenced instances (their resends are stored or completed now)", "claims", n-claims)
			claims = n
		}
	}
}

// instance is this allocator's current instance id.
func (a *Allocator) instance() string { return *a.inst.Load() }

// deadArgs appends the dead instances to args (for uhorizon and cclaim).
func (a *Allocator) deadArgs(args []any) []any {
	for _, d := range *a.dead.Load() {
		args = append(args, d)
	}
	return args
}

// Close stops renewing the lease: the other servers take this instance
// for dead after LeaseTTL (call it after the sequencer using the
// allocator has closed). It does not close the Redis client.
func (a *Allocator) Close() error {
	a.closeOnce.Do(func() {
		close(a.stop)
		<-a.leaseDone
	})
	return nil
}

// Dead returns the instances this allocator currently takes for dead
// (fenced), sorted.
func (a *Allocator) Dead() []string { return slices.Clone(*a.dead.Load()) }

// Instance returns this allocator's instance id (it changes when the
// allocator finds that it was fenced).
func (a *Allocator) Instance() string { return a.instance() }
