package chat

import (
	"context"
	"slices"
	"sync"
)

// MemoryConnLimiter is the single-node ConnLimiter.
type MemoryConnLimiter struct {
	max int

	mu sync.Mutex
	// slots holds each user's connections: a few per user, so a slice
	// (a map per user would cost some 300 bytes per connection).
	slots map[string][]string
}

var _ ConnLimiter = (*MemoryConnLimiter)(nil)

// NewMemoryConnLimiter returns a limiter of max connections per user; max <= 0
// means no limit.
func NewMemoryConnLimiter(max int) *MemoryConnLimiter {
	return &MemoryConnLimiter{max: max, slots: make(map[string][]string)}
}

// Acquire implements ConnLimiter.
func (l *MemoryConnLimiter) Acquire(_ context.Context, user, conn string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	conns := l.slots[user]
	if slices.Contains(conns, conn) {
		return nil
	}
	if l.max > 0 && len(conns) >= l.max {
		return ErrTooManyConnections
	}
	l.slots[user] = append(conns, conn)
	return nil
}

// Release implements ConnLimiter.
func (l *MemoryConnLimiter) Release(_ context.Context, user, conn string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	conns := l.slots[user]
	if i := slices.Index(conns, conn); i >= 0 {
		conns = slices.Delete(conns, i, i+1)
	}
	if len(conns) == 0 {
		delete(l.slots, user)
	} else {
		l.slots[user] = conns
	}
	return nil
}
