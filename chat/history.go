package chat

import (
	"context"
	"slices"
	"time"
)

// MaxRecover is the most messages a join with "since" returns; when more
// were missed, the newest are returned and "recovered" is false.
const MaxRecover = 1000

// historyTimeout bounds the history query of a join, and flushTimeout the
// wait for this node's persistence queue before it; the join succeeds
// without stored history when the database does not answer in time.
const (
	historyTimeout = 3 * time.Second
	flushTimeout   = time.Second
)

// Flusher is an optional MessageSink capability: Flush waits until every
// message committed before the call is stored.
type Flusher interface {
	Flush(ctx context.Context) error
}

// joinResponse is the response of a join that asked for history.
type joinResponse struct {
	// Messages are the requested messages, oldest first.
	Messages []Message `json:"messages"`
	// Recovered, for a join with "since", is true when Messages holds every
	// message of the room after that id: the since id was found, nothing
	// was cut, and the stored history answered.
	Recovered *bool `json:"recovered,omitempty"`
}

// historyLoad is what a join's history query found, before the join is
// answered.
type historyLoad struct {
	// stored are the store's messages: after since, or the newest N.
	stored []Message
	// storedOK is false when the store (or the flush before it) failed.
	storedOK bool
	// foundStored reports that the since id is stored in the room.
	foundStored bool
	// recent is the room's recent list as of the join.
	recent []Message
}

// loadHistory queries the store for a join's "history" or "since" option.
// The node's persistence queue is flushed first, so that what this node
// accepted before the join is in the store.
func (h *Hub) loadHistory(ctx context.Context, room string, p joinParams, recent []Message) historyLoad {
	l := historyLoad{storedOK: true, recent: recent}
	if h.history == nil {
		return l
	}
	if f, ok := h.sink.(Flusher); ok {
		fctx, cancel := context.WithTimeout(ctx, flushTimeout)
		err := f.Flush(fctx)
		cancel()
		if err != nil {
			h.log.Warn("join history: persistence queue not flushed", "room", room, "err", err)
			l.storedOK = false
		}
	}
	ctx, cancel := context.WithTimeout(ctx, historyTimeout)
	defer cancel()
	var err error
	if p.Since != nil {
		l.stored, l.foundStored, err = h.history.After(ctx, room, *p.Since, MaxRecover+1)
	} else {
		l.stored, err = h.history.Recent(ctx, room, *p.History)
	}
	if err != nil {
		h.log.Warn("join history unavailable", "room", room, "err", err)
		l.storedOK = false
	}
	return l
}

// assembleHistory builds a join's reply from the store's messages, the
// room's recent list, and the messages held back since the join, up to
// frontier (the latest message delivered on this node; empty when none
// was).
func assembleHistory(p joinParams, l historyLoad, held []Message, frontier string) joinResponse {
	all := mergeByID(mergeByID(l.stored, l.recent), held)
	if frontier != "" {
		i, _ := slices.BinarySearchFunc(all, frontier, compareID)
		if i < len(all) && all[i].ID == frontier {
			i++
		}
		all = all[:i]
	}
	if p.Since == nil {
		n := *p.History
		if len(all) > n {
			all = all[len(all)-n:]
		}
		return joinResponse{Messages: all}
	}
	since := *p.Since
	found := l.foundStored || containsID(l.recent, since) || containsID(held, since)
	i, _ := slices.BinarySearchFunc(all, since, compareID)
	if i < len(all) && all[i].ID == since {
		i++
	}
	all = all[i:]
	cut := len(all) > MaxRecover
	if cut {
		all = all[len(all)-MaxRecover:]
	}
	// A full recent list may not reach back to what the store holds: then
	// the store must hold its oldest message, or something in between may
	// be missing.
	joined := true
	if len(l.recent) >= recentSize && l.recent[0].ID > since {
		joined = containsID(l.stored, l.recent[0].ID)
	}
	recovered := found && !cut && l.storedOK && joined
	return joinResponse{Messages: all, Recovered: &recovered}
}

func compareID(m Message, id string) int {
	switch {
	case m.ID < id:
		return -1
	case m.ID > id:
		return 1
	}
	return 0
}

func containsID(msgs []Message, id string) bool {
	_, ok := slices.BinarySearchFunc(msgs, id, compareID)
	return ok
}

// mergeByID merges two id-sorted lists into one without duplicates.
func mergeByID(a, b []Message) []Message {
	out := make([]Message, 0, len(a)+len(b))
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		switch {
		case j == len(b) || (i < len(a) && a[i].ID < b[j].ID):
			out = append(out, a[i])
			i++
		case i == len(a) || b[j].ID < a[i].ID:
			out = append(out, b[j])
			j++
		default: // the same message in both
			out = append(out, a[i])
			i++
			j++
		}
	}
	return out
}
