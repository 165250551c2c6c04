package main

import (
	"math"
	"math/bits"
	"sync/atomic"
	"time"
)

// hist is a log-linear histogram of non-negative durations in nanoseconds
// (HDR style): values below 256 ns have their own bucket, larger values
// fall in one of 128 linear sub-buckets of their power of two, so every
// recorded value is known to within 1/128 (0.8%). Memory is fixed (7,424
// counters, 58 KiB) however many values are recorded. Record is lock-free
// and safe for concurrent use.
type hist struct {
	counts [histBuckets]atomic.Uint64
	n      atomic.Uint64
	sum    atomic.Uint64
	max    atomic.Uint64
}

const (
	histSubBits = 8
	histSub     = 1 << histSubBits // 256
	histHalf    = histSub / 2      // 128
	histBuckets = histSub + (64-histSubBits-1)*histHalf + histHalf
)

func histIndex(v uint64) int {
	k := bits.Len64(v)
	if k <= histSubBits {
		return int(v)
	}
	shift := k - histSubBits
	top := v >> shift // in [128, 255]
	return histSub + (shift-1)*histHalf + int(top-histHalf)
}

// histValue is the midpoint of bucket i (ns).
func histValue(i int) uint64 {
	if i < histSub {
		return uint64(i)
	}
	i -= histSub
	shift := i/histHalf + 1
	top := uint64(i%histHalf + histHalf)
	return top<<shift + (uint64(1)<<shift)/2
}

// Record adds one duration; negative durations count as 0.
func (h *hist) Record(d time.Duration) {
	v := uint64(max(d, 0))
	h.counts[histIndex(v)].Add(1)
	h.n.Add(1)
	h.sum.Add(v)
	for {
		m := h.max.Load()
		if v <= m || h.max.CompareAndSwap(m, v) {
			return
		}
	}
}

// Count is the number of recorded values.
func (h *hist) Count() uint64 { return h.n.Load() }

// Quantile returns the value at quantile q (0..1), 0 if empty. The top
// quantile is the exact maximum.
func (h *hist) Quantile(q float64) time.Duration {
	n := h.n.Load()
	if n == 0 {
		return 0
	}
	if q >= 1 {
		return time.Duration(h.max.Load())
	}
	want := uint64(math.Ceil(q * float64(n)))
	want = max(want, 1)
	var seen uint64
	for i := range h.counts {
		seen += h.counts[i].Load()
		if seen >= want {
			return time.Duration(min(histValue(i), h.max.Load()))
		}
	}
	return time.Duration(h.max.Load())
}

// Mean is the arithmetic mean, 0 if empty.
func (h *hist) Mean() time.Duration {
	n := h.n.Load()
	if n == 0 {
		return 0
	}
	return time.Duration(h.sum.Load() / n)
}

// Percentiles are a latency distribution in milliseconds.
type Percentiles struct {
	Count uint64  `json:"count"`
	Mean  float64 `json:"mean_ms"`
	P50   float64 `json:"p50_ms"`
	P90   float64 `json:"p90_ms"`
	P99   float64 `json:"p99_ms"`
	P999  float64 `json:"p99_9_ms"`
	Max   float64 `json:"max_ms"`
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }

// Summary returns the standard percentiles.
func (h *hist) Summary() Percentiles {
	return Percentiles{
		Count: h.Count(),
		Mean:  ms(h.Mean()),
		P50:   ms(h.Quantile(0.50)),
		P90:   ms(h.Quantile(0.90)),
		P99:   ms(h.Quantile(0.99)),
		P999:  ms(h.Quantile(0.999)),
		Max:   ms(h.Quantile(1)),
	}
}

// reset empties h. It must not run concurrently with Record.
func (h *hist) reset() {
	for i := range h.counts {
		h.counts[i].Store(0)
	}
	h.n.Store(0)
	h.sum.Store(0)
	h.max.Store(0)
}
