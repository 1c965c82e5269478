package chat

import (
	"context"
	"encoding/json"
	"strings"
	"unicode/utf8"

	"github.com/google/uuid"
)

// checkBody returns the refusal of a message body, nil when it is
// acceptable: not empty, no NUL character (it can be neither stored in
// PostgreSQL text nor shown), at most MaxBody characters.
func (h *Hub) checkBody(body string) *Error {
	switch {
	case body == "" || strings.IndexByte(body, 0) >= 0:
		return ErrInvalidPayload
	case utf8.RuneCountInString(body) > h.cfg.MaxBody:
		return ErrBodyTooLong
	}
	return nil
}

// Publish accepts a message from user to room on behalf of a backend (the
// server API), by the path of a member's push: the same checks of the body,
// ordered in the room's log, relayed to every node, persisted. The room
// needs no member on this node; no rate limit applies. The error is an
// *Error: ErrInvalidPayload (a bad room, user or body), ErrBodyTooLong,
// ErrOverloaded, ErrUnavailable.
func (h *Hub) Publish(ctx context.Context, room, user, body string) (Message, error) {
	if !ValidRoomName(room) || user == "" || strings.IndexByte(user, 0) >= 0 {
		h.countRefusal(ErrInvalidPayload)
		return Message{}, ErrInvalidPayload
	}
	if e := h.checkBody(body); e != nil {
		h.countRefusal(e)
		return Message{}, e
	}
	msg, err := h.publish(ctx, room, user, body)
	if err != nil {
		ce := asChatError(err)
		h.countRefusal(ce)
		return Message{}, ce
	}
	return msg, nil
}

// DeleteMessage takes message id of room down: its tombstone is stored
// (when the History is an Eraser), then the room's log leaves it out and
// every member of the room, on every node, receives msg_deleted {"id"}, in
// one step of the broker. With author set, only a message of that user is
// deleted; empty, any (the server API). The message's author comes from
// the room's log, else the store.
//
// The error is an *Error: ErrNotFound (no such message, or deleted
// already), ErrUnauthorized (another user's message), ErrUnavailable (the
// log or the store did not answer; the delete may be done in part, and
// calling again completes it).
func (h *Hub) DeleteMessage(ctx context.Context, room, id, author string) error {
	if !ValidRoomName(room) || len(id) != 36 || uuid.Validate(id) != nil {
		return ErrNotFound
	}
	msg, err := h.findMessage(ctx, room, id)
	if err != nil {
		return err
	}
	if author != "" && msg.UserID != author {
		return ErrUnauthorized
	}
	if e, ok := h.history.(Eraser); ok {
		ectx, cancel := context.WithTimeout(ctx, historyTimeout)
		err := e.Erase(ectx, msg)
		cancel()
		if err != nil {
			h.log.Warn("delete: tombstone not stored", "room", room, "id", id, "err", err)
			return ErrUnavailable
		}
	}
	payload, _ := json.Marshal(struct {
		ID string `json:"id"`
	}{id})
	data := AppendFrame(nil, "", "", RoomPrefix+room, EventMsgDeleted, payload)
	dctx, cancel := context.WithTimeout(ctx, h.cfg.RelayTimeout)
	_, err = h.broker.Delete(dctx, room, id, data)
	cancel()
	if err != nil {
		h.log.Warn("delete: room log not updated", "room", room, "id", id, "err", err)
		return ErrUnavailable
	}
	h.log.Info("message deleted", "room", room, "id", id, "author", msg.UserID, "by_author", author != "")
	return nil
}

// findMessage returns message id of room from the room's log, else from
// the store.
func (h *Hub) findMessage(ctx context.Context, room, id string) (Message, error) {
	rctx, cancel := context.WithTimeout(ctx, h.cfg.RelayTimeout)
	lr, logErr := h.broker.ReadLog(rctx, room, LogQuery{ID: id})
	cancel()
	if logErr == nil {
		if len(lr.Entries) == 1 {
			if m, err := decodeLogEntry(lr.Entries[0]); err == nil {
				return m, nil
			}
		}
		if lr.Found {
			return Message{}, ErrNotFound // deleted
		}
	} else {
		h.log.Warn("delete: room log unavailable", "room", room, "err", logErr)
	}
	e, ok := h.history.(Eraser)
	if !ok {
		if logErr != nil {
			return Message{}, ErrUnavailable
		}
		return Message{}, ErrNotFound
	}
	qctx, cancel := context.WithTimeout(ctx, historyTimeout)
	defer cancel()
	m, found, err := e.Message(qctx, room, id)
	switch {
	case err != nil:
		h.log.Warn("delete: store unavailable", "room", room, "err", err)
		return Message{}, ErrUnavailable
	case !found && logErr != nil:
		return Message{}, ErrUnavailable
	case !found:
		return Message{}, ErrNotFound
	}
	return m, nil
}
