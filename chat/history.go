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
	// message of the room after that id.
	Recovered *bool `json:"recovered,omitempty"`
}

// historyLoad is what a join's history query found, before the join is
// answered.
type historyLoad struct {
	// msgs are the messages found, oldest first: after since, or the
	// newest N.
	msgs []Message
	// complete, for "since", reports that msgs holds every message of the
	// room after since, as of the query.
	complete bool
}

// loadHistory answers a join's "history" or "since" option from the room's
// log and, for what is older than the log, from the store.
func (h *Hub) loadHistory(ctx context.Context, room string, p joinParams) historyLoad {
	if p.Since != nil {
		return h.loadSince(ctx, room, *p.Since)
	}
	return h.loadRecent(ctx, room, *p.History)
}

// loadSince finds the messages of room after since.
func (h *Hub) loadSince(ctx context.Context, room, since string) historyLoad {
	lr, logged, logOK := h.readLog(ctx, room, LogQuery{After: since, Limit: MaxRecover})
	if logOK {
		switch {
		case lr.Found:
			// The log holds since and everything after it.
			return historyLoad{msgs: logged, complete: !lr.More}
		case lr.More:
			// More than MaxRecover were missed: the newest are returned.
			return historyLoad{msgs: logged}
		case lr.Full && since < lr.Oldest:
			// The log is full and begins after since: more than it holds,
			// more than MaxRecover, were missed.
			return historyLoad{msgs: logged}
		}
	}
	// since is older than the log (or the log is out of reach): the store
	// holds what the log no longer does.
	if h.history == nil {
		return historyLoad{msgs: logged}
	}
	storeOK := h.flush(ctx, room)
	qctx, cancel := context.WithTimeout(ctx, historyTimeout)
	defer cancel()
	stored, found, err := h.history.After(qctx, room, since, MaxRecover+1)
	if err != nil {
		h.log.Warn("join history unavailable", "room", room, "err", err)
		return historyLoad{msgs: logged}
	}
	cut := lr.More
	if len(stored) > MaxRecover {
		cut = true
		// More than MaxRecover were missed: the newest are returned.
		if stored, err = h.history.Recent(qctx, room, MaxRecover); err != nil {
			h.log.Warn("join history unavailable", "room", room, "err", err)
			return historyLoad{msgs: logged}
		}
	}
	all := afterID(mergeByID(upTo(stored, lr.Newest), logged), since)
	if len(all) > MaxRecover {
		all, cut = all[len(all)-MaxRecover:], true
	}
	return historyLoad{msgs: all, complete: logOK && storeOK && found && !cut}
}

// loadRecent finds the newest n messages of room.
func (h *Hub) loadRecent(ctx context.Context, room string, n int) historyLoad {
	lr, logged, logOK := h.readLog(ctx, room, LogQuery{Limit: n})
	if (logOK && len(lr.Entries) >= n) || h.history == nil {
		return historyLoad{msgs: logged}
	}
	h.flush(ctx, room)
	qctx, cancel := context.WithTimeout(ctx, historyTimeout)
	defer cancel()
	stored, err := h.history.Recent(qctx, room, n)
	if err != nil {
		h.log.Warn("join history unavailable", "room", room, "err", err)
	}
	all := mergeByID(upTo(stored, lr.Newest), logged)
	if len(all) > n {
		all = all[len(all)-n:]
	}
	return historyLoad{msgs: all}
}

// readLog reads room's log and decodes its messages; ok is false when the
// log could not be read.
func (h *Hub) readLog(ctx context.Context, room string, q LogQuery) (lr LogRead, msgs []Message, ok bool) {
	ctx, cancel := context.WithTimeout(ctx, h.cfg.RelayTimeout)
	defer cancel()
	lr, err := h.broker.ReadLog(ctx, room, q)
	if err != nil {
		h.log.Warn("join history: room log unavailable", "room", room, "err", err)
		return LogRead{}, nil, false
	}
	msgs = make([]Message, 0, len(lr.Entries))
	for _, e := range lr.Entries {
		m, err := decodeLogEntry(e)
		if err != nil {
			h.log.Warn("join history: undecodable log entry", "room", room, "id", e.ID, "err", err)
			h.stats.dropped[dropInvalidRelay].Add(1)
			continue
		}
		msgs = append(msgs, m)
	}
	return lr, msgs, true
}

// decodeLogEntry decodes the message a log entry's frame carries.
func decodeLogEntry(e LogEntry) (Message, error) {
	f, err := DecodeFrame(e.Data)
	if err != nil {
		return Message{}, err
	}
	return decodeMessage(f.Payload)
}

// DecodeLogEntry returns the message of a room log entry (for the writers
// that persist from the log).
func DecodeLogEntry(e LogEntry) (Message, error) { return decodeLogEntry(e) }

// flush waits, briefly, for this node's persistence queue to store what it
// accepted before the call; false means it did not.
func (h *Hub) flush(ctx context.Context, room string) bool {
	f, ok := h.sink.(Flusher)
	if !ok {
		return true
	}
	fctx, cancel := context.WithTimeout(ctx, flushTimeout)
	defer cancel()
	if err := f.Flush(fctx); err != nil {
		h.log.Warn("join history: persistence queue not flushed", "room", room, "err", err)
		return false
	}
	return true
}

// assembleHistory builds a join's reply from what the query found and the
// messages delivered to the room since the join began (held back): every
// message once, in id order, at most the number asked for.
func assembleHistory(p joinParams, l historyLoad, held []Message) joinResponse {
	all := mergeByID(l.msgs, held)
	if p.Since == nil {
		n := *p.History
		if len(all) > n {
			all = all[len(all)-n:]
		}
		return joinResponse{Messages: all}
	}
	all = afterID(all, *p.Since)
	recovered := l.complete
	if len(all) > MaxRecover {
		all, recovered = all[len(all)-MaxRecover:], false
	}
	return joinResponse{Messages: all, Recovered: &recovered}
}

// upTo returns the stored messages up to newest, the log's newest when it
// was read: what was accepted after that read reaches the joiner as held
// back or live deliveries, in the room's order, and must not be in the
// reply ahead of what was accepted before it but is not stored yet (the
// reply's newest message is the floor below which deliveries are
// skipped). With no log (newest empty) nothing is cut.
func upTo(stored []Message, newest string) []Message {
	if newest == "" {
		return stored
	}
	i, found := slices.BinarySearchFunc(stored, newest, compareID)
	if found {
		i++
	}
	return stored[:i]
}

// afterID returns the messages of msgs (id-sorted) with an id greater than
// id.
func afterID(msgs []Message, id string) []Message {
	i, found := slices.BinarySearchFunc(msgs, id, compareID)
	if found {
		i++
	}
	return msgs[i:]
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
