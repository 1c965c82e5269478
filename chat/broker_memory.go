package chat

import (
	"context"
	"sync"
)

// MemoryBroker is the single-node Broker: Publish calls the handler directly,
// in the caller's goroutine.
type MemoryBroker struct {
	handler BrokerHandler

	mu   sync.RWMutex
	subs map[string]int // room -> Subscribe count
}

var _ Broker = (*MemoryBroker)(nil)

// NewMemoryBroker returns a broker that delivers to handler.
func NewMemoryBroker(handler BrokerHandler) *MemoryBroker {
	return &MemoryBroker{handler: handler, subs: make(map[string]int)}
}

// Publish implements Broker. Delivery happens before Publish returns; the
// order of one room's publications is the order in which their Publish calls
// run the handler, which serializes them per room.
func (b *MemoryBroker) Publish(_ context.Context, room string, data []byte) error {
	b.mu.RLock()
	n := b.subs[room]
	b.mu.RUnlock()
	if n > 0 {
		b.handler(room, data)
	}
	return nil
}

// Subscribe implements Broker.
func (b *MemoryBroker) Subscribe(_ context.Context, room string) error {
	b.mu.Lock()
	b.subs[room]++
	b.mu.Unlock()
	return nil
}

// Unsubscribe implements Broker.
func (b *MemoryBroker) Unsubscribe(_ context.Context, room string) error {
	b.mu.Lock()
	if b.subs[room] <= 1 {
		delete(b.subs, room)
	} else {
		b.subs[room]--
	}
	b.mu.Unlock()
	return nil
}
