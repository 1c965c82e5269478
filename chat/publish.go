package chat

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/google/uuid"
)

// seeID records id as seen on this node.
func (h *Hub) seeID(id string) {
	h.idMu.Lock()
	if id > h.maxID {
		h.maxID = id
	}
	h.idMu.Unlock()
}

// lastSeenID returns the greatest message id this node has seen.
func (h *Hub) lastSeenID() string {
	h.idMu.Lock()
	defer h.idMu.Unlock()
	return h.maxID
}

// publishAttempts bounds the retries of a message that lost the race for
// its room's next place to concurrent publishers.
const publishAttempts = 8

// publish accepts a message from user to room: a place in the persistence
// queue is reserved, the message is appended to the room's log and
// published, with an id greater than every earlier message of the room,
// then handed to the sink. On error the message is not in the log: no one
// receives it and it is not stored.
func (h *Hub) publish(ctx context.Context, room, user, body string) (Message, error) {
	if err := h.sink.Reserve(); err != nil {
		return Message{}, err
	}
	committed := false
	defer func() {
		if !committed {
			h.sink.Cancel()
		}
	}()
	msg := Message{Room: room, UserID: user, Body: body}
	topic := RoomPrefix + room
	after := h.lastSeenID()
	start := time.Now()
	for attempt := 1; ; attempt++ {
		id, err := newMessageID(after)
		if err != nil {
			return Message{}, err
		}
		msg.ID = id
		msg.InsertedAt = time.Now().UTC().Truncate(time.Microsecond)
		data := EncodeMessage(topic, msg)
		pctx, cancel := context.WithTimeout(ctx, h.cfg.RelayTimeout)
		err = h.broker.Publish(pctx, room, msg.ID, data)
		cancel()
		var ooe *OutOfOrderError
		if errors.As(err, &ooe) {
			if attempt < publishAttempts {
				// What this node received meanwhile counts too.
				h.seeID(ooe.Last)
				after = max(after, ooe.Last, h.lastSeenID())
				continue
			}
			return Message{}, ErrUnavailable
		}
		if errors.Is(err, ErrNotPublished) {
			h.log.Warn("relay publish failed", "room", room, "err", err)
			return Message{}, ErrUnavailable
		}
		if err != nil {
			h.log.Warn("relay publish outcome unknown; resolving it against the room's log", "room", room, "id", msg.ID, "err", err)
			rctx, cancel := context.WithDeadline(context.WithoutCancel(ctx), start.Add(h.cfg.ResolveTimeout))
			accepted, rerr := h.resolve(rctx, room, msg.ID)
			cancel()
			if rerr != nil {
				// The sender is answered now; the message is settled
				// later, keeping its place in the persistence queue.
				if h.settleLater(msg) {
					committed = true
				}
				return Message{}, ErrOutcomeUnknown
			}
			if !accepted {
				return Message{}, ErrUnavailable
			}
		}
		break
	}
	h.seeID(msg.ID)
	h.sink.Commit(msg)
	committed = true
	h.stats.messagesIn.Add(1)
	return msg, nil
}

// resolve settles a publish whose outcome is unknown, trying until the log
// answers or ctx ends.
func (h *Hub) resolve(ctx context.Context, room, id string) (bool, error) {
	pause := 50 * time.Millisecond
	for {
		actx, acancel := context.WithTimeout(ctx, h.cfg.RelayTimeout)
		ok, err := h.broker.Resolve(actx, room, id)
		acancel()
		if err == nil {
			h.stats.resolved.Add(1)
			return ok, nil
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return false, fmt.Errorf("chat: resolve message %s: %w (last error: %w)", id, ctx.Err(), err)
		case <-t.C:
		}
		pause = min(2*pause, time.Second)
	}
}

// maxUnsettled bounds the messages settled in the background at once, and
// settleGrace how long Shutdown waits for them.
const (
	maxUnsettled = 1024
	settleGrace  = 2 * time.Second
)

// settleLater settles msg's unknown outcome in the background, holding its
// place in the persistence queue: an accepted message is committed (and
// so stored), another one's place is given back. It reports false, and
// does nothing, when too many are being settled already or the hub is
// shutting down; the caller then gives the place back. A message accepted
// but not settled before shutdown is still in its room's log: this node
// stores it from there when it starts again (the take-over of its own
// name).
func (h *Hub) settleLater(msg Message) bool {
	h.sessMu.Lock()
	defer h.sessMu.Unlock()
	if h.draining.Load() || h.unsettled >= maxUnsettled {
		h.log.Error("relay publish outcome not settled", "room", msg.Room, "id", msg.ID)
		return false
	}
	h.unsettled++
	h.settling.Add(1)
	go func() {
		defer h.settling.Done()
		ok, err := h.resolve(h.stop, msg.Room, msg.ID)
		switch {
		case err != nil:
			h.log.Error("relay publish outcome not settled before shutdown", "room", msg.Room, "id", msg.ID, "err", err)
			h.sink.Cancel()
		case ok:
			h.seeID(msg.ID)
			h.sink.Commit(msg)
			h.stats.messagesIn.Add(1)
			h.log.Warn("relay publish settled late: accepted, stored", "room", msg.Room, "id", msg.ID)
		default:
			h.sink.Cancel()
			h.log.Info("relay publish settled late: not accepted", "room", msg.Room, "id", msg.ID)
		}
		h.sessMu.Lock()
		h.unsettled--
		h.sessMu.Unlock()
	}()
	return true
}

// newMessageID returns a new UUIDv7, greater than after when after is set.
// When the clock has not passed after (a concurrent publisher, or another
// node whose clock runs ahead), it returns an id of after's millisecond
// whose random bits are after's plus a random step.
func newMessageID(after string) (string, error) {
	id, err := uuid.NewV7()
	if err != nil {
		return "", fmt.Errorf("chat: message id: %w", err)
	}
	s := id.String()
	if after == "" || s > after {
		return s, nil
	}
	last, err := uuid.Parse(after)
	if err != nil {
		return "", fmt.Errorf("chat: room's last id %q: %w", after, err)
	}
	// Step the 62 random bits of rand_b (bytes 8-15 below the two variant
	// bits) forward by a random amount, not by one: publishers of other
	// rooms (and other nodes) stepping from the same id must not land on
	// the same id, which would be one primary key for two messages.
	const mask = 1<<62 - 1
	v := binary.BigEndian.Uint64(last[8:])
	low := v&mask + 1 + rand.Uint64N(1<<32)
	if low > mask {
		return "", errors.New("chat: message id space of this millisecond exhausted")
	}
	binary.BigEndian.PutUint64(last[8:], v&^mask|low)
	return last.String(), nil
}
