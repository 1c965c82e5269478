package chat

import (
	"context"
	"hash/maphash"
	"slices"
	"sync"
	"sync/atomic"
)

const roomShards = 32

type roomShard struct {
	mu    sync.Mutex
	rooms map[string]*room
}

// room is the local membership of one room. mu guards members and is held
// for a whole fan-out, so every member is handed a room's frames in one
// order; fan-out only enqueues, it never does network I/O.
type room struct {
	name  string
	topic string
	// subscribed is closed once the broker subscription of this room is
	// live; subErr tells whether it failed.
	subscribed chan struct{}
	subErr     error

	mu      sync.Mutex
	members map[*Session]*member
	// sessions and all are the members as slices, for fan-out; nil when
	// stale.
	sessions []*Session
	all      []*member
	// special counts the members whose deliveries need a check (a floor
	// is set, or the channel errored): while it is zero, fan-out is a
	// plain loop over sessions.
	special int
	// lastID is the greatest message id delivered in the room (see
	// Hub.RoomLastID).
	lastID string
}

// special reports whether m's deliveries need a check; r.mu is held.
func (m *member) special() bool { return m.floor != "" || m.errored.Load() }

// update applies change to m, keeping r.special right; r.mu is held.
func (r *room) update(m *member, change func()) {
	was := m.special()
	change()
	switch now := m.special(); {
	case now && !was:
		r.special++
	case was && !now:
		r.special--
	}
}

// member is one session's channel in a room, as fan-out sees it; its
// fields are guarded by the room's mu, but errored, which its session reads
// too.
type member struct {
	s       *Session
	joinRef string
	// floor, when set, is the newest message a join's reply held: later
	// deliveries of messages up to it are skipped (the reply had them),
	// until one beyond it arrives.
	floor string
	// errored is set once the channel was sent phx_error: it gets no more
	// broadcasts, and the client rejoins it (Phoenix's errored state).
	errored atomic.Bool
}

func (h *Hub) shard(name string) *roomShard {
	return &h.shards[maphash.String(h.seed, name)%roomShards]
}

// RoomLastID returns the greatest message id the relay delivered in room
// name since the room last had members here, empty when it has none (see
// RelayEvents.RoomLastID).
func (h *Hub) RoomLastID(name string) string {
	sh := h.shard(name)
	sh.mu.Lock()
	r := sh.rooms[name]
	sh.mu.Unlock()
	if r == nil {
		return ""
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lastID
}

// deliver is the broker handler: it hands data to every local member of
// room, in the order deliveries arrive.
func (h *Hub) deliver(name string, data []byte) {
	if name == controlRoom {
		h.handleControl(data)
		return
	}
	sh := h.shard(name)
	sh.mu.Lock()
	r := sh.rooms[name]
	sh.mu.Unlock()
	if r == nil {
		return
	}
	// Messages are decoded once per node, for the id that orders them
	// against a joiner's reply.
	var msg Message
	if f, err := DecodeFrame(data); err != nil {
		h.log.Warn("dropping undecodable relay frame", "room", name, "err", err)
		h.stats.dropped[dropInvalidRelay].Add(1)
		return
	} else if f.Event == EventNewMsg {
		if msg, err = decodeMessage(f.Payload); err != nil || msg.ID == "" {
			h.log.Warn("dropping relay message without id", "room", name, "err", err)
			h.stats.dropped[dropInvalidRelay].Add(1)
			return
		}
		h.seeID(msg.ID)
	}
	r.mu.Lock()
	if msg.ID > r.lastID {
		r.lastID = msg.ID
	}
	n := 0
	if r.special == 0 {
		if r.sessions == nil {
			r.sessions = make([]*Session, 0, len(r.members))
			for s := range r.members {
				r.sessions = append(r.sessions, s)
			}
		}
		for _, s := range r.sessions {
			s.deliver(r, msg, data)
		}
		n = len(r.sessions)
	} else {
		if r.all == nil {
			r.all = make([]*member, 0, len(r.members))
			for _, m := range r.members {
				r.all = append(r.all, m)
			}
		}
		for _, m := range r.all {
			if m.errored.Load() {
				continue
			}
			if m.floor != "" && msg.ID != "" {
				if msg.ID <= m.floor {
					continue // the join's reply had it
				}
				r.update(m, func() { m.floor = "" })
			}
			m.s.deliver(r, msg, data)
			n++
		}
	}
	r.mu.Unlock()
	h.stats.deliveries.Add(int64(n))
}

// join adds s to the room name, subscribing the node to it when s is its
// first local member. With buffer set, deliveries to s from the room are
// held until s.finishJoin.
func (h *Hub) join(ctx context.Context, s *Session, name, joinRef string, buffer bool) (*room, *member, error) {
	sh := h.shard(name)
	sh.mu.Lock()
	r := sh.rooms[name]
	created := r == nil
	if created {
		r = &room{
			name:       name,
			topic:      RoomPrefix + name,
			subscribed: make(chan struct{}),
			members:    make(map[*Session]*member),
		}
		sh.rooms[name] = r
	}
	m := &member{s: s, joinRef: joinRef}
	r.mu.Lock()
	r.members[s] = m
	r.sessions, r.all = nil, nil
	if buffer {
		s.startJoin(r)
	}
	r.mu.Unlock()
	sh.mu.Unlock()

	if created {
		r.subErr = h.broker.Subscribe(ctx, name)
		close(r.subscribed)
	}
	select {
	case <-r.subscribed:
	case <-ctx.Done():
		h.leave(s, r)
		return nil, nil, ctx.Err()
	}
	if r.subErr != nil {
		h.leave(s, r)
		h.log.Warn("room subscribe failed", "room", name, "err", r.subErr)
		return nil, nil, ErrUnavailable
	}
	return r, m, nil
}

// leave removes s from r, and unsubscribes the node from r when s was its
// last local member.
func (h *Hub) leave(s *Session, r *room) {
	sh := h.shard(r.name)
	sh.mu.Lock()
	r.mu.Lock()
	if m := r.members[s]; m != nil && m.special() {
		r.special--
	}
	delete(r.members, s)
	r.sessions, r.all = nil, nil
	s.abortJoin(r)
	empty := len(r.members) == 0
	r.mu.Unlock()
	if empty && sh.rooms[r.name] == r {
		delete(sh.rooms, r.name)
	}
	sh.mu.Unlock()
	if empty {
		// Wait for the subscription that created the room before undoing
		// it, so Subscribe and Unsubscribe calls stay paired.
		<-r.subscribed
		if r.subErr == nil {
			ctx, cancel := context.WithTimeout(context.Background(), h.cfg.RelayTimeout)
			if err := h.broker.Unsubscribe(ctx, r.name); err != nil {
				h.log.Warn("room unsubscribe failed", "room", r.name, "err", err)
			}
			cancel()
		}
	}
}

// Resync tells every local member of every room cutOff names (nil: every
// room) that it may have missed messages (the relay to this node was cut
// off and is back): each channel
// gets phx_error, on which the phoenix client rejoins, with "since" its
// last message id when it asks for recovery. Channels stay joined; the
// rejoin replaces them.
func (h *Hub) Resync(cutOff func(room string) bool) {
	var rooms []*room
	for i := range h.shards {
		sh := &h.shards[i]
		sh.mu.Lock()
		for _, r := range sh.rooms {
			rooms = append(rooms, r)
		}
		sh.mu.Unlock()
	}
	if cutOff != nil {
		// Asked with no lock held: the relay may take its own.
		rooms = slices.DeleteFunc(rooms, func(r *room) bool { return !cutOff(r.name) })
	}
	n := 0
	for _, r := range rooms {
		r.mu.Lock()
		for s, m := range r.members {
			if m.errored.Load() {
				continue
			}
			r.update(m, func() { m.errored.Store(true) })
			s.enqueue(AppendFrame(nil, m.joinRef, m.joinRef, r.topic, EventError, emptyObject))
			n++
		}
		r.mu.Unlock()
	}
	h.log.Warn("relay restored: channels told to rejoin and recover", "rooms", len(rooms), "channels", n)
}
