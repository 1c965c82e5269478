package store

import (
	"context"
	"sync"
)

// watermark tracks which committed messages are finished (written, or given
// up on) in commit order, so that Flush can wait for everything committed
// before a point even though workers finish batches out of order.
type watermark struct {
	mu   sync.Mutex
	next uint64              // the sequence number the next commit gets
	low  uint64              // every sequence number below low is finished
	done map[uint64]struct{} // finished sequence numbers at or above low
	// moved is closed and replaced each time low advances.
	moved chan struct{}
}

func newWatermark() *watermark {
	return &watermark{done: make(map[uint64]struct{}), moved: make(chan struct{})}
}

// assign returns the sequence number of a new commit.
func (m *watermark) assign() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.next
	m.next++
	return s
}

// finish marks s finished.
func (m *watermark) finish(s uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if s != m.low {
		m.done[s] = struct{}{}
		return
	}
	m.low++
	for {
		if _, ok := m.done[m.low]; !ok {
			break
		}
		delete(m.done, m.low)
		m.low++
	}
	close(m.moved)
	m.moved = make(chan struct{})
}

// wait blocks until every commit assigned before the call is finished, or
// ctx ends.
func (m *watermark) wait(ctx context.Context) error {
	return m.waitFor(ctx, m.mark())
}

// mark returns the sequence number of the next commit: waitFor(mark())
// waits for every commit assigned before mark was called.
func (m *watermark) mark() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.next
}

// waitFor blocks until every commit below target is finished, or ctx ends.
func (m *watermark) waitFor(ctx context.Context, target uint64) error {
	m.mu.Lock()
	for m.low < target {
		moved := m.moved
		m.mu.Unlock()
		select {
		case <-moved:
		case <-ctx.Done():
			return ctx.Err()
		}
		m.mu.Lock()
	}
	m.mu.Unlock()
	return nil
}
