package chat

import (
	"sync/atomic"
)

type hubCounters struct {
	connections   atomic.Int64
	connects      atomic.Int64
	messagesIn    atomic.Int64
	deliveries    atomic.Int64
	slowConsumers atomic.Int64
	// resolved counts publishes whose unknown outcome the log settled.
	resolved atomic.Int64
	// refused counts pushes answered with an error, by refusal.
	refused [numRefusals]atomic.Int64
	// dropped counts frames not delivered, by drop.
	dropped [numDrops]atomic.Int64
}

// Push refusals, the label values of Stats.Refused.
const (
	refusalRate = iota
	refusalBodyTooLong
	refusalInvalid
	refusalOverloaded
	refusalUnavailable
	refusalUnauthorized
	numRefusals
)

var refusalNames = [numRefusals]string{"rate", "body_too_long", "invalid", "overloaded", "unavailable", "unauthorized"}

// Frame drops, the label values of Stats.Dropped.
const (
	dropSlowConsumer = iota // queued for a connection closed as too slow
	dropInvalidRelay        // an undecodable frame from the relay
	numDrops
)

var dropNames = [numDrops]string{"slow_consumer", "invalid_relay_frame"}

// countRefusal counts a push answered with e.
func (h *Hub) countRefusal(e *Error) {
	i := refusalInvalid
	switch e {
	case ErrRateLimited:
		i = refusalRate
	case ErrBodyTooLong:
		i = refusalBodyTooLong
	case ErrOverloaded:
		i = refusalOverloaded
	case ErrUnavailable:
		i = refusalUnavailable
	case ErrUnauthorized:
		i = refusalUnauthorized
	}
	h.stats.refused[i].Add(1)
}

// Stats is a snapshot of the hub's counters.
type Stats struct {
	Connections   int64 `json:"connections"`
	Users         int   `json:"users"`
	Rooms         int   `json:"rooms"`
	MessagesIn    int64 `json:"messages_in"`
	Deliveries    int64 `json:"deliveries"`
	SlowConsumers int64 `json:"slow_consumers"`
	// Connects counts connections accepted since start.
	Connects int64 `json:"connects"`
	// Refused counts pushes refused, by reason: rate, body_too_long,
	// invalid, overloaded, unavailable.
	Refused map[string]int64 `json:"refused"`
	// Dropped counts frames not delivered, by reason: slow_consumer,
	// invalid_relay_frame.
	Dropped map[string]int64 `json:"dropped"`
}

// Stats returns the hub's counters.
func (h *Hub) Stats() Stats {
	s := Stats{
		Connections:   h.stats.connections.Load(),
		MessagesIn:    h.stats.messagesIn.Load(),
		Deliveries:    h.stats.deliveries.Load(),
		SlowConsumers: h.stats.slowConsumers.Load(),
		Connects:      h.stats.connects.Load(),
		Refused:       make(map[string]int64, numRefusals),
		Dropped:       make(map[string]int64, numDrops),
	}
	for i, name := range refusalNames {
		s.Refused[name] = h.stats.refused[i].Load()
	}
	for i, name := range dropNames {
		s.Dropped[name] = h.stats.dropped[i].Load()
	}
	h.usersMu.Lock()
	s.Users = len(h.users)
	h.usersMu.Unlock()
	for i := range h.shards {
		sh := &h.shards[i]
		sh.mu.Lock()
		s.Rooms += len(sh.rooms)
		sh.mu.Unlock()
	}
	return s
}
