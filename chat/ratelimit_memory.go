package chat

import (
	"context"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// MemoryRateLimiter is a RateLimiter for one node: token buckets in
// memory, kept after the user's last connection closes until they would
// be full again, then forgotten, so that it holds only buckets in use.
type MemoryRateLimiter struct {
	mu        sync.Mutex
	buckets   map[string]*memoryBucket
	lastSweep time.Time
	// sweepEvery is how often buckets that are full again are removed,
	// at most; a knob for tests.
	sweepEvery time.Duration
}

type memoryBucket struct {
	lim  *rate.Limiter
	full time.Time // when the bucket is full again, if not used before
}

var _ RateLimiter = (*MemoryRateLimiter)(nil)

// NewMemoryRateLimiter returns an empty MemoryRateLimiter.
func NewMemoryRateLimiter() *MemoryRateLimiter {
	return &MemoryRateLimiter{buckets: make(map[string]*memoryBucket), lastSweep: time.Now(), sweepEvery: 10 * time.Second}
}

// Allow implements RateLimiter; it never fails.
func (m *MemoryRateLimiter) Allow(_ context.Context, key string, r Rate) (bool, error) {
	if r.PerSecond <= 0 {
		return true, nil
	}
	now := time.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	if now.Sub(m.lastSweep) >= m.sweepEvery {
		m.lastSweep = now
		for k, b := range m.buckets {
			if !now.Before(b.full) {
				delete(m.buckets, k)
			}
		}
	}
	b := m.buckets[key]
	if b == nil {
		b = &memoryBucket{lim: rate.NewLimiter(rate.Limit(r.PerSecond), r.Burst)}
		m.buckets[key] = b
	} else if b.lim.Limit() != rate.Limit(r.PerSecond) || b.lim.Burst() != r.Burst {
		b.lim.SetLimitAt(now, rate.Limit(r.PerSecond))
		b.lim.SetBurstAt(now, r.Burst)
	}
	ok := b.lim.AllowN(now, 1)
	// The bucket is full again once the missing tokens have come back.
	missing := float64(r.Burst) - b.lim.TokensAt(now)
	b.full = now.Add(time.Duration(missing / r.PerSecond * float64(time.Second)))
	return ok, nil
}

// Len returns how many buckets are held.
func (m *MemoryRateLimiter) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.buckets)
}
