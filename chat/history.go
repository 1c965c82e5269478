package chat

import (
	"context"
	"slices"
	"strings"
	"time"
)

// MaxRecover is the most messages a join with "since" returns; when more
// were missed, the newest are returned and "recovered" is false.
const MaxRecover = 1000

// historyTimeout bounds the history query of a join; the join succeeds
// without stored history when the database does not answer in time.
const historyTimeout = 3 * time.Second

// joinResponse is the response of a join that asked for history.
type joinResponse struct {
	// Messages are the requested messages, oldest first.
	Messages []Message `json:"messages"`
	// Recovered, for a join with "since", is true when Messages holds every
	// message of the room after that id: the since id was found, nothing
	// was cut, and the stored history answered.
	Recovered *bool `json:"recovered,omitempty"`
	// last is the greatest id the client has once it has the reply.
	last string
}

// joinHistory answers the join options: "history": N, the newest N
// messages; "since": id, every message after id (at most MaxRecover).
// recent is the room's recent list as of the join, which covers messages
// not yet written by the persistence queue.
func (h *Hub) joinHistory(ctx context.Context, room string, p joinParams, recent []Message) joinResponse {
	ctx, cancel := context.WithTimeout(ctx, historyTimeout)
	defer cancel()
	var stored []Message
	storedOK := true
	found := false
	if p.Since != nil {
		since := *p.Since
		for _, m := range recent {
			if m.ID == since {
				found = true
			}
		}
		if h.history != nil {
			msgs, ok, err := h.history.After(ctx, room, since, MaxRecover+1)
			if err != nil {
				h.log.Warn("join history unavailable", "room", room, "err", err)
				storedOK = false
			}
			stored, found = msgs, found || ok
		}
		all := mergeByID(stored, recent)
		i, _ := slices.BinarySearchFunc(all, since, func(m Message, id string) int { return strings.Compare(m.ID, id) })
		if i < len(all) && all[i].ID == since {
			i++
		}
		all = all[i:]
		cut := len(all) > MaxRecover
		if cut {
			all = all[len(all)-MaxRecover:]
		}
		recovered := found && !cut && storedOK
		resp := joinResponse{Messages: all, Recovered: &recovered, last: since}
		if len(all) > 0 {
			resp.last = all[len(all)-1].ID
		}
		return resp
	}
	n := *p.History
	if h.history != nil {
		msgs, err := h.history.Recent(ctx, room, n)
		if err != nil {
			h.log.Warn("join history unavailable", "room", room, "err", err)
		}
		stored = msgs
	}
	all := mergeByID(stored, recent)
	if len(all) > n {
		all = all[len(all)-n:]
	}
	resp := joinResponse{Messages: all}
	if len(all) > 0 {
		resp.last = all[len(all)-1].ID
	}
	return resp
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
