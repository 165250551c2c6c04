package redis

// ForcePerKey makes a allocate with one call per key, as it does on Redis
// Cluster, so that path runs against a single test Redis.
func ForcePerKey(a *Allocator) { a.perKey = true }
