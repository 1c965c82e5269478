package chat

import (
	"context"
	"sync"
)

// MemoryPresence is the single-node Presence.
type MemoryPresence struct {
	mu    sync.Mutex
	rooms map[string]map[string]PresenceEntry // room -> phx_ref -> entry
}

var _ Presence = (*MemoryPresence)(nil)

// NewMemoryPresence returns an empty presence.
func NewMemoryPresence() *MemoryPresence {
	return &MemoryPresence{rooms: make(map[string]map[string]PresenceEntry)}
}

// Add implements Presence.
func (p *MemoryPresence) Add(_ context.Context, room string, e PresenceEntry) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	r := p.rooms[room]
	if r == nil {
		r = make(map[string]PresenceEntry)
		p.rooms[room] = r
	}
	r[e.Meta.PhxRef] = e
	return nil
}

// Remove implements Presence.
func (p *MemoryPresence) Remove(_ context.Context, room, ref string) (bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	r := p.rooms[room]
	if _, ok := r[ref]; !ok {
		return false, nil
	}
	delete(r, ref)
	if len(r) == 0 {
		delete(p.rooms, room)
	}
	return true, nil
}

// List implements Presence.
func (p *MemoryPresence) List(_ context.Context, room string) ([]PresenceEntry, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	r := p.rooms[room]
	out := make([]PresenceEntry, 0, len(r))
	for _, e := range r {
		out = append(out, e)
	}
	return out, nil
}
