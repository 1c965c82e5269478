package chat

import (
	"context"
	"hash/maphash"
	"sync"
)

// MemoryBroker is the single-node Broker. Publish calls the handler in the
// caller's goroutine, under a lock per shard of rooms, so each room's
// publications are delivered one at a time, in the order they are accepted.
type MemoryBroker struct {
	handler BrokerHandler
	seed    maphash.Seed
	shards  [brokerShards]memoryShard
}

const brokerShards = 32

type memoryShard struct {
	mu   sync.Mutex
	subs map[string]int    // room -> Subscribe count
	last map[string]string // room -> last message id; kept while subscribed
}

var _ Broker = (*MemoryBroker)(nil)

// NewMemoryBroker returns a broker that delivers to handler.
func NewMemoryBroker(handler BrokerHandler) *MemoryBroker {
	b := &MemoryBroker{handler: handler, seed: maphash.MakeSeed()}
	for i := range b.shards {
		b.shards[i].subs = make(map[string]int)
		b.shards[i].last = make(map[string]string)
	}
	return b
}

func (b *MemoryBroker) shard(room string) *memoryShard {
	return &b.shards[maphash.String(b.seed, room)%brokerShards]
}

// Publish implements Broker. Delivery happens before Publish returns. A
// room nobody subscribes to has no order to keep: its publications are
// dropped, as a pub/sub server drops messages without subscribers.
func (b *MemoryBroker) Publish(_ context.Context, room, id string, data []byte) error {
	sh := b.shard(room)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.subs[room] == 0 {
		return nil
	}
	if id != "" {
		if last := sh.last[room]; id <= last {
			return &OutOfOrderError{Last: last}
		}
		sh.last[room] = id
	}
	b.handler(room, data)
	return nil
}

// Subscribe implements Broker.
func (b *MemoryBroker) Subscribe(_ context.Context, room string) error {
	sh := b.shard(room)
	sh.mu.Lock()
	sh.subs[room]++
	sh.mu.Unlock()
	return nil
}

// Unsubscribe implements Broker.
func (b *MemoryBroker) Unsubscribe(_ context.Context, room string) error {
	sh := b.shard(room)
	sh.mu.Lock()
	if sh.subs[room] <= 1 {
		delete(sh.subs, room)
		delete(sh.last, room)
	} else {
		sh.subs[room]--
	}
	sh.mu.Unlock()
	return nil
}
