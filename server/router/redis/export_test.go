package redis

import (
	"context"
	"time"
)

// Kill stops r as a crashed process would: no Handler calls, no further
// Redis commands, nothing cleaned up (its routes and alive key stay).
func (r *Router) Kill() { r.closeOnce.Do(func() { r.shutdown(false) }) }

// Channel is r's inbound channel.
func (r *Router) Channel() string { return r.channel }

// RouteKey is the route set of user.
func (r *Router) RouteKey(user string) string { return r.routeKey(user) }

// AliveKey is r's alive key.
func (r *Router) AliveKey() string { return r.aliveKey }

// Heartbeat runs one heartbeat now.
func (r *Router) Heartbeat(ctx context.Context) (bool, error) { return r.heartbeat(ctx) }

// WaitPublished waits until the publisher is done with every event queued
// so far (published, or failed).
func (r *Router) WaitPublished() {
	r.qmu.Lock()
	target := r.queued
	r.qmu.Unlock()
	for r.handled.Load() < target {
		time.Sleep(time.Millisecond)
	}
}
