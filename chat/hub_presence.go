package chat

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Presence events pushed to clients.
const (
	EventPresenceState = "presence_state"
	EventPresenceDiff  = "presence_diff"
)

// presenceTimeout bounds each presence store call.
const presenceTimeout = 3 * time.Second

// presenceMetas is one user's value in presence_state and presence_diff.
type presenceMetas struct {
	Metas []PresenceMeta `json:"metas"`
}

// presenceBatcher collects the presence changes of each room for Interval
// and publishes them as one presence_diff, so that a mass reconnect costs
// each member one diff per interval, not one per connection.
//
// A room's diffs are published in order: at most one publish of a room is
// in flight, and changes that come while it is (Redis slow, or one pool
// connection held up) wait and merge into the next diff, which follows once
// the publish returns and at least Interval after the one before began.
// Diffs of one room sent on two connections at once could otherwise reach
// Redis in either order, and a leave overtaking its join would leave every
// other node's members showing a user who has gone. What waits is bounded
// by the room's presences on this node, not by time: a diff is a set of
// phx_refs, and a join and its leave that wait together cancel out.
type presenceBatcher struct {
	h        *Hub
	interval time.Duration

	mu     sync.Mutex
	rooms  map[string]*roomDiffs // rooms with changes pending or a publish in flight
	closed bool
	wg     sync.WaitGroup // scheduled and running flushes
}

// roomDiffs is the batching state of one room.
type roomDiffs struct {
	joins  map[string]PresenceEntry // phx_ref -> entry, not yet published
	leaves map[string]PresenceEntry
	timer  *time.Timer // a flush scheduled; nil while none is
	busy   bool        // a publish in flight
	began  time.Time   // when the last publish began
}

func newPresenceBatcher(h *Hub, interval time.Duration) *presenceBatcher {
	return &presenceBatcher{h: h, interval: interval, rooms: make(map[string]*roomDiffs)}
}

// add records joins and leaves of room for the next diff. A join and a
// leave of the same phx_ref in one diff cancel out.
func (b *presenceBatcher) add(room string, joins, leaves []PresenceEntry) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return
	}
	r := b.rooms[room]
	if r == nil {
		r = &roomDiffs{joins: map[string]PresenceEntry{}, leaves: map[string]PresenceEntry{}}
		b.rooms[room] = r
	}
	for _, e := range joins {
		r.joins[e.Meta.PhxRef] = e
	}
	for _, e := range leaves {
		if _, ok := r.joins[e.Meta.PhxRef]; ok {
			delete(r.joins, e.Meta.PhxRef)
			continue
		}
		r.leaves[e.Meta.PhxRef] = e
	}
	if r.timer == nil && !r.busy {
		b.scheduleLocked(room, r, b.interval)
	}
}

// scheduleLocked arranges for room's pending changes to be flushed after d.
func (b *presenceBatcher) scheduleLocked(room string, r *roomDiffs, d time.Duration) {
	b.wg.Add(1)
	r.timer = time.AfterFunc(d, func() {
		defer b.wg.Done()
		b.flush(room)
	})
}

// flush publishes room's pending changes, then any that came meanwhile:
// at once if the batcher is closing, else by a new timer.
func (b *presenceBatcher) flush(room string) {
	b.mu.Lock()
	r := b.rooms[room]
	if r == nil || r.busy {
		b.mu.Unlock()
		return
	}
	r.timer = nil
	for len(r.joins)+len(r.leaves) > 0 {
		joins, leaves := r.joins, r.leaves
		r.joins, r.leaves = map[string]PresenceEntry{}, map[string]PresenceEntry{}
		r.busy, r.began = true, time.Now()
		b.mu.Unlock()
		b.publish(room, joins, leaves)
		b.mu.Lock()
		r.busy = false
		if !b.closed && len(r.joins)+len(r.leaves) > 0 {
			b.scheduleLocked(room, r, max(0, b.interval-time.Since(r.began)))
			b.mu.Unlock()
			return
		}
	}
	delete(b.rooms, room)
	b.mu.Unlock()
}

// publish relays one diff of room to every node.
func (b *presenceBatcher) publish(room string, joins, leaves map[string]PresenceEntry) {
	payload := []byte(`{"joins":`)
	payload = appendPresence(payload, slices.Collect(maps.Values(joins)))
	payload = append(payload, `,"leaves":`...)
	payload = appendPresence(payload, slices.Collect(maps.Values(leaves)))
	payload = append(payload, '}')
	data := AppendFrame(nil, "", "", RoomPrefix+room, EventPresenceDiff, payload)
	ctx, cancel := context.WithTimeout(context.Background(), b.h.cfg.RelayTimeout)
	defer cancel()
	if err := b.h.broker.Publish(ctx, room, "", data); err != nil {
		b.h.log.Warn("presence diff not relayed", "room", room, "joins", len(joins), "leaves", len(leaves), "err", err)
	}
}

// close publishes every pending diff at once (after the publish in flight,
// for a room that has one) and stops batching; it returns when every
// publish has returned.
func (b *presenceBatcher) close() {
	b.mu.Lock()
	b.closed = true
	var rooms []string
	for room, r := range b.rooms {
		if r.timer != nil && r.timer.Stop() {
			b.wg.Done() // its AfterFunc will not run
			rooms = append(rooms, room)
		}
	}
	b.mu.Unlock()
	for _, room := range rooms {
		b.flush(room)
	}
	b.wg.Wait()
}

// groupMetas groups entries by user, in the shape of presence_state.
func groupMetas(entries []PresenceEntry) map[string]*presenceMetas {
	out := make(map[string]*presenceMetas)
	for _, e := range entries {
		m := out[e.UserID]
		if m == nil {
			m = &presenceMetas{}
			out[e.UserID] = m
		}
		m.Metas = append(m.Metas, e.Meta)
	}
	return out
}

// appendPresence appends entries in the shape of presence_state, as
// encoding/json writes groupMetas(entries): users in sorted order, each
// user's metas in the order of entries.
func appendPresence(dst []byte, entries []PresenceEntry) []byte {
	sorted := slices.Clone(entries)
	slices.SortStableFunc(sorted, func(a, b PresenceEntry) int { return strings.Compare(a.UserID, b.UserID) })
	dst = append(dst, '{')
	for i := 0; i < len(sorted); {
		user := sorted[i].UserID
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendString(dst, user)
		dst = append(dst, `:{"metas":[`...)
		for first := i; i < len(sorted) && sorted[i].UserID == user; i++ {
			if i > first {
				dst = append(dst, ',')
			}
			m := sorted[i].Meta
			dst = append(dst, `{"phx_ref":`...)
			dst = appendString(dst, m.PhxRef)
			dst = append(dst, `,"node":`...)
			dst = appendString(dst, m.Node)
			dst = append(dst, `,"online_at":`...)
			dst = strconv.AppendInt(dst, m.OnlineAt, 10)
			dst = append(dst, '}')
		}
		dst = append(dst, "]}"...)
	}
	return append(dst, '}')
}

// PresenceState returns room's presence in the presence_state shape:
// {user_id: {"metas": [...]}}.
func (h *Hub) PresenceState(ctx context.Context, room string) (map[string]*presenceMetas, error) {
	entries, err := h.presence.List(ctx, room)
	if err != nil {
		return nil, err
	}
	return groupMetas(entries), nil
}

// PresenceLeft broadcasts the leaves of entries removed from room by a node
// failure clean-up (NodeReaper).
func (h *Hub) PresenceLeft(room string, entries []PresenceEntry) {
	h.presenceDiffs.add(room, nil, entries)
}

// trackPresence records s in room and pushes it the room's presence_state.
// It returns the entry, for untrackPresence.
func (h *Hub) trackPresence(ctx context.Context, s *Session, room, topic, joinRef string) *PresenceEntry {
	e := PresenceEntry{UserID: s.user, Meta: PresenceMeta{PhxRef: newPhxRef(), Node: h.cfg.NodeName, OnlineAt: time.Now().Unix()}}
	ctx, cancel := context.WithTimeout(ctx, presenceTimeout)
	defer cancel()
	if err := h.presence.Add(ctx, room, e); err != nil {
		s.logger().Warn("presence not recorded", "room", room, "err", err)
		return nil
	}
	entries, err := h.presence.List(ctx, room)
	if err != nil {
		s.logger().Warn("presence state unavailable", "room", room, "err", err)
		entries = []PresenceEntry{e}
	}
	// The push carries the channel's join_ref, as Phoenix's does. It is
	// queued before the join is handed to the diffs, so the joiner gets,
	// in this order: the join's reply, presence_state (itself included),
	// then the diffs, its own join first among them.
	s.enqueueReply(AppendFrame(nil, joinRef, "", topic, EventPresenceState, appendPresence(nil, entries)))
	h.presenceDiffs.add(room, []PresenceEntry{e}, nil)
	return &e
}

// untrackPresence removes e from room and broadcasts the leave.
func (h *Hub) untrackPresence(room string, e *PresenceEntry) {
	if e == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), presenceTimeout)
	defer cancel()
	removed, err := h.presence.Remove(ctx, room, e.Meta.PhxRef)
	if err != nil {
		h.log.Warn("presence not removed", "room", room, "user_id", e.UserID, "err", err)
		return
	}
	if removed {
		h.presenceDiffs.add(room, nil, []PresenceEntry{*e})
	}
}

// newPhxRef returns a random, cluster-unique presence reference.
func newPhxRef() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// PresenceJoined broadcasts the joins of entries written back to the
// presence store after it lost them (a Redis restart).
func (h *Hub) PresenceJoined(room string, entries []PresenceEntry) {
	h.presenceDiffs.add(room, entries, nil)
}
