package chat

import (
	"fmt"
	"testing"
	"time"
)

// Buckets are forgotten once they would be full again, and not before:
// the limiter holds only the buckets of users seen recently.
func TestMemoryRateLimiterForgetsFullBuckets(t *testing.T) {
	m := NewMemoryRateLimiter()
	m.sweepEvery = 0
	fast := Rate{PerSecond: 50, Burst: 2}   // full again 40 ms after use
	slow := Rate{PerSecond: 0.01, Burst: 2} // full again after 100 s
	for i := range 100 {
		m.Allow(t.Context(), fmt.Sprint("fast", i), fast)
	}
	m.Allow(t.Context(), "slow", slow)
	m.Allow(t.Context(), "slow", slow)
	time.Sleep(200 * time.Millisecond)
	m.Allow(t.Context(), "other", fast) // sweeps
	if n := m.Len(); n != 2 {
		t.Fatalf("%d buckets held, want the slow one and the new one", n)
	}
	if ok, _ := m.Allow(t.Context(), "slow", slow); ok {
		t.Fatal("the empty slow bucket was forgotten and refilled")
	}
}
