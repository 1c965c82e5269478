package chat

import (
	"context"
	"sync"
)

// MemoryConnLimiter is the single-node ConnLimiter.
type MemoryConnLimiter struct {
	max int

	mu    sync.Mutex
	slots map[string]map[string]struct{} // user -> conns
}

var _ ConnLimiter = (*MemoryConnLimiter)(nil)

// NewMemoryConnLimiter returns a limiter of max connections per user; max <= 0
// means no limit.
func NewMemoryConnLimiter(max int) *MemoryConnLimiter {
	return &MemoryConnLimiter{max: max, slots: make(map[string]map[string]struct{})}
}

// Acquire implements ConnLimiter.
func (l *MemoryConnLimiter) Acquire(_ context.Context, user, conn string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	conns := l.slots[user]
	if _, ok := conns[conn]; ok {
		return nil
	}
	if l.max > 0 && len(conns) >= l.max {
		return ErrTooManyConnections
	}
	if conns == nil {
		conns = make(map[string]struct{}, 1)
		l.slots[user] = conns
	}
	conns[conn] = struct{}{}
	return nil
}

// Release implements ConnLimiter.
func (l *MemoryConnLimiter) Release(_ context.Context, user, conn string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	conns := l.slots[user]
	delete(conns, conn)
	if len(conns) == 0 {
		delete(l.slots, user)
	}
	return nil
}
