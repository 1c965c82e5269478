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
type presenceBatcher struct {
	h        *Hub
	interval time.Duration

	mu      sync.Mutex
	pending map[string]*pendingDiff // room -> changes not yet published
	closed  bool
	wg      sync.WaitGroup // flushes in flight
}

type pendingDiff struct {
	joins  map[string]PresenceEntry // phx_ref -> entry
	leaves map[string]PresenceEntry
	timer  *time.Timer
}

func newPresenceBatcher(h *Hub, interval time.Duration) *presenceBatcher {
	return &presenceBatcher{h: h, interval: interval, pending: make(map[string]*pendingDiff)}
}

// add records joins and leaves of room for the next diff. A join and a
// leave of the same phx_ref in one interval cancel out.
func (b *presenceBatcher) add(room string, joins, leaves []PresenceEntry) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return
	}
	p := b.pending[room]
	if p == nil {
		p = &pendingDiff{joins: map[string]PresenceEntry{}, leaves: map[string]PresenceEntry{}}
		b.pending[room] = p
		b.wg.Add(1)
		p.timer = time.AfterFunc(b.interval, func() {
			defer b.wg.Done()
			b.flush(room)
		})
	}
	for _, e := range joins {
		p.joins[e.Meta.PhxRef] = e
	}
	for _, e := range leaves {
		if _, ok := p.joins[e.Meta.PhxRef]; ok {
			delete(p.joins, e.Meta.PhxRef)
			continue
		}
		p.leaves[e.Meta.PhxRef] = e
	}
}

// flush publishes room's pending diff.
func (b *presenceBatcher) flush(room string) {
	b.mu.Lock()
	p := b.pending[room]
	delete(b.pending, room)
	b.mu.Unlock()
	if p == nil || len(p.joins)+len(p.leaves) == 0 {
		return
	}
	payload := []byte(`{"joins":`)
	payload = appendPresence(payload, slices.Collect(maps.Values(p.joins)))
	payload = append(payload, `,"leaves":`...)
	payload = appendPresence(payload, slices.Collect(maps.Values(p.leaves)))
	payload = append(payload, '}')
	data := AppendFrame(nil, "", "", RoomPrefix+room, EventPresenceDiff, payload)
	ctx, cancel := context.WithTimeout(context.Background(), b.h.cfg.RelayTimeout)
	defer cancel()
	if err := b.h.broker.Publish(ctx, room, "", data); err != nil {
		b.h.log.Warn("presence diff not relayed", "room", room, "joins", len(p.joins), "leaves", len(p.leaves), "err", err)
	}
}

// close publishes every pending diff at once and stops batching.
func (b *presenceBatcher) close() {
	b.mu.Lock()
	b.closed = true
	var rooms []string
	for room, p := range b.pending {
		if p.timer.Stop() {
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
	h.presenceDiffs.add(room, []PresenceEntry{e}, nil)
	entries, err := h.presence.List(ctx, room)
	if err != nil {
		s.logger().Warn("presence state unavailable", "room", room, "err", err)
		entries = []PresenceEntry{e}
	}
	// The push carries the channel's join_ref, as Phoenix's does.
	s.enqueueReply(AppendFrame(nil, joinRef, "", topic, EventPresenceState, appendPresence(nil, entries)))
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
