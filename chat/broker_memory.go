package chat

import (
	"container/list"
	"context"
	"errors"
	"hash/maphash"
	"slices"
	"sync"
)

// Memory broker defaults.
const (
	// defaultLogLength is how many messages a room's log keeps: one more
	// than a "since" join returns, so a log that is full and does not hold
	// the since id proves more were missed than a join returns.
	defaultLogLength = MaxRecover + 1
	// defaultMaxLogMessages bounds the messages all rooms' logs hold
	// together on a single node (about 300 bytes each: 60 MB).
	defaultMaxLogMessages = 200_000
)

// MemoryBrokerConfig configures a MemoryBroker. The zero value of each field
// picks the default given in its comment.
type MemoryBrokerConfig struct {
	// LogLength is how many of its newest messages a room's log keeps.
	// Zero: MaxRecover+1, the least allowed.
	LogLength int
	// MaxLogMessages bounds the messages all logs hold together: past it,
	// the logs of the rooms written to least recently are dropped whole (a
	// join then reads the store, after the persistence queue is flushed).
	// Zero: 200,000.
	MaxLogMessages int
}

func (c MemoryBrokerConfig) withDefaults() MemoryBrokerConfig {
	if c.LogLength < defaultLogLength {
		c.LogLength = defaultLogLength
	}
	if c.MaxLogMessages <= 0 {
		c.MaxLogMessages = defaultMaxLogMessages
	}
	c.MaxLogMessages = max(c.MaxLogMessages, c.LogLength)
	return c
}

// MemoryBroker is the single-node Broker. Publish calls the handler in the
// caller's goroutine, under a lock per shard of rooms, so each room's
// publications are delivered one at a time, in the order they are accepted.
// Room logs live in this process's memory: they end with it.
type MemoryBroker struct {
	cfg     MemoryBrokerConfig
	handler BrokerHandler
	seed    maphash.Seed
	shards  [brokerShards]memoryShard

	// lru orders room logs by their latest append, least recent first; it
	// and total are guarded by lruMu, taken after a shard's mu.
	lruMu sync.Mutex
	lru   list.List // of *memoryLog
	total int
}

const brokerShards = 32

type memoryShard struct {
	mu   sync.Mutex
	subs map[string]int // room -> Subscribe count
	logs map[string]*memoryLog
}

// memoryLog is one room's log: a ring of its newest messages. room,
// entries and head are guarded by its shard's mu; elem and counted by the
// broker's lruMu.
type memoryLog struct {
	room    string
	entries []LogEntry // ring, oldest at head once full
	head    int
	elem    *list.Element
	counted int // entries counted in the broker's total
	// deleted holds the ids of the entries taken down (Delete); an id
	// leaves it with its entry.
	deleted map[string]struct{}
}

func (l *memoryLog) len() int { return len(l.entries) }

// at returns the i-th oldest entry.
func (l *memoryLog) at(i int) LogEntry { return l.entries[(l.head+i)%len(l.entries)] }

func (l *memoryLog) last() string {
	if len(l.entries) == 0 {
		return ""
	}
	return l.at(len(l.entries) - 1).ID
}

var _ Broker = (*MemoryBroker)(nil)

// NewMemoryBroker returns a broker with the default configuration; Run
// starts its delivery.
func NewMemoryBroker() *MemoryBroker {
	return NewMemoryBrokerWith(MemoryBrokerConfig{})
}

// NewMemoryBrokerWith returns a broker configured by cfg that delivers to
// the handler Run registers.
func NewMemoryBrokerWith(cfg MemoryBrokerConfig) *MemoryBroker {
	b := &MemoryBroker{cfg: cfg.withDefaults(), seed: maphash.MakeSeed()}
	for i := range b.shards {
		b.shards[i].subs = make(map[string]int)
		b.shards[i].logs = make(map[string]*memoryLog)
	}
	return b
}

// Run implements Broker: it registers h. A single node's relay is never
// cut off, so ev is never called.
func (b *MemoryBroker) Run(h BrokerHandler, _ RelayEvents) error {
	if h == nil {
		return errors.New("chat: memory broker: nil handler")
	}
	if b.handler != nil {
		return errors.New("chat: memory broker already running")
	}
	b.handler = h
	return nil
}

func (b *MemoryBroker) shard(room string) *memoryShard {
	return &b.shards[maphash.String(b.seed, room)%brokerShards]
}

// Publish implements Broker. A message is appended to its room's log
// whether or not anyone subscribes; delivery happens before Publish
// returns. Its outcome is never unknown.
func (b *MemoryBroker) Publish(_ context.Context, room, id string, data []byte) error {
	var victims []*memoryLog
	sh := b.shard(room)
	sh.mu.Lock()
	if id != "" {
		l := sh.logs[room]
		if l == nil {
			l = &memoryLog{room: room}
			sh.logs[room] = l
		}
		if last := l.last(); id <= last {
			sh.mu.Unlock()
			return &OutOfOrderError{Last: last}
		}
		victims = b.appendLocked(l, LogEntry{ID: id, Data: data})
	}
	if sh.subs[room] > 0 {
		b.handler(room, data)
	}
	sh.mu.Unlock()
	b.drop(victims)
	return nil
}

// appendLocked appends e to l, with sh.mu held. While all logs hold more
// than MaxLogMessages it takes the least recently written ones off the
// list and returns them, for the caller to drop once sh.mu is released.
func (b *MemoryBroker) appendLocked(l *memoryLog, e LogEntry) (victims []*memoryLog) {
	if len(l.entries) < b.cfg.LogLength {
		l.entries = append(l.entries, e)
	} else {
		delete(l.deleted, l.entries[l.head].ID)
		l.entries[l.head] = e
		l.head = (l.head + 1) % len(l.entries)
	}
	n := len(l.entries)
	b.lruMu.Lock()
	defer b.lruMu.Unlock()
	if l.elem == nil { // new, or taken off the list since
		l.elem = b.lru.PushBack(l)
	} else {
		b.lru.MoveToBack(l.elem)
	}
	b.total += n - l.counted
	l.counted = n
	for b.total > b.cfg.MaxLogMessages {
		v := b.lru.Front().Value.(*memoryLog)
		if v == l {
			break
		}
		b.lru.Remove(v.elem)
		v.elem = nil
		b.total -= v.counted
		v.counted = 0
		victims = append(victims, v)
	}
	return victims
}

// drop removes the logs taken off the list by appendLocked, unless they
// were written to again since.
func (b *MemoryBroker) drop(victims []*memoryLog) {
	for _, v := range victims {
		sh := b.shard(v.room)
		sh.mu.Lock()
		b.lruMu.Lock()
		gone := v.elem == nil
		b.lruMu.Unlock()
		if gone && sh.logs[v.room] == v {
			delete(sh.logs, v.room)
		}
		sh.mu.Unlock()
	}
}

// Resolve implements Broker. A MemoryBroker's Publish always knows its
// outcome; Resolve reports whether id is in room's log.
func (b *MemoryBroker) Resolve(_ context.Context, room, id string) (bool, error) {
	sh := b.shard(room)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	l := sh.logs[room]
	if l == nil {
		return false, nil
	}
	for i := l.len() - 1; i >= 0; i-- {
		e := l.at(i)
		if e.ID == id {
			return true, nil
		}
		if e.ID < id {
			break
		}
	}
	return false, nil
}

// ReadLog implements Broker.
func (b *MemoryBroker) ReadLog(_ context.Context, room string, q LogQuery) (LogRead, error) {
	sh := b.shard(room)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	l := sh.logs[room]
	if l == nil {
		return LogRead{}, nil
	}
	n := l.len()
	entries := make([]LogEntry, n)
	for i := range n {
		entries[i] = l.at(i)
	}
	return selectLog(entries, q, n >= b.cfg.LogLength, l.deleted), nil
}

// selectLog answers q from a whole log, oldest first; full tells whether
// the log holds as many messages as it keeps, and deleted names the
// entries taken down.
func selectLog(log []LogEntry, q LogQuery, full bool, deleted map[string]struct{}) LogRead {
	r := LogRead{Len: len(log), Full: full}
	if len(log) == 0 {
		return r
	}
	r.Oldest, r.Newest = log[0].ID, log[len(log)-1].ID
	search := func(id string) (int, bool) {
		return slices.BinarySearchFunc(log, id, func(e LogEntry, id string) int {
			switch {
			case e.ID < id:
				return -1
			case e.ID > id:
				return 1
			}
			return 0
		})
	}
	if q.ID != "" {
		i, found := search(q.ID)
		r.Found = found
		if _, gone := deleted[q.ID]; found && !gone {
			r.Entries = []LogEntry{log[i]}
		}
		return r
	}
	from := 0
	if q.After != "" {
		i, found := search(q.After)
		r.Found = found
		from = i
		if found {
			from++
		}
	}
	var sel []LogEntry
	for _, e := range log[from:] {
		if _, gone := deleted[e.ID]; !gone {
			sel = append(sel, e)
		}
	}
	if len(sel) > q.Limit {
		sel = sel[len(sel)-q.Limit:]
		r.More = true
	}
	r.Entries = sel
	return r
}

// Delete implements Broker: the id is recorded in the room's log when the
// log holds it, and data is delivered, under the room's lock.
func (b *MemoryBroker) Delete(_ context.Context, room, id string, data []byte) (bool, error) {
	sh := b.shard(room)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	held := false
	if l := sh.logs[room]; l != nil {
		for i := l.len() - 1; i >= 0; i-- {
			e := l.at(i)
			if e.ID == id {
				held = true
				break
			}
			if e.ID < id {
				break
			}
		}
		if held {
			if l.deleted == nil {
				l.deleted = make(map[string]struct{})
			}
			l.deleted[id] = struct{}{}
		}
	}
	if sh.subs[room] > 0 {
		b.handler(room, data)
	}
	return held, nil
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
	} else {
		sh.subs[room]--
	}
	sh.mu.Unlock()
	return nil
}
