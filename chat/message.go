package chat

import (
	"context"
	"time"
)

// Message is one chat message as it is broadcast, stored and returned by
// history queries.
type Message struct {
	// ID is a UUIDv7: time-ordered, unique across the cluster.
	ID string `json:"id"`
	// Room is the room name, without the "room:" topic prefix.
	Room string `json:"room"`
	// UserID is the JWT subject of the sender.
	UserID string `json:"user_id"`
	// Body is the text as the sender wrote it; it is never interpreted.
	Body string `json:"body"`
	// InsertedAt is when the server accepted the message (UTC).
	InsertedAt time.Time `json:"inserted_at"`
}

// ErrOverloaded is returned by a MessageSink whose queue is full. The message
// was not accepted: the sender is told "overloaded" and nothing is broadcast.
var ErrOverloaded = &Error{Reason: "overloaded"}

// MessageSink persists accepted messages off the request path. A message is
// handed over in two steps, so that a full queue is known before anything is
// broadcast and the id is final before anything is stored: Reserve takes a
// place in the queue, then exactly one of Commit (with the message) or Cancel
// gives it back.
type MessageSink interface {
	// Reserve takes one place in the persistence queue and returns at once,
	// never waiting on the database. When the queue is full it returns
	// ErrOverloaded; any error means no place was taken.
	Reserve() error
	// Commit queues msg in a place taken by Reserve. It never blocks and
	// never fails: the place is there.
	Commit(msg Message)
	// Cancel gives back a place taken by Reserve, unused.
	Cancel()
}

// History reads stored messages of a room.
type History interface {
	// Recent returns up to n of the newest messages of room, oldest first.
	Recent(ctx context.Context, room string, n int) ([]Message, error)
	// After returns messages of room with an id greater than afterID, oldest
	// first, at most limit of them. found reports whether afterID itself is
	// stored in room: when it is not, the caller cannot know what it missed.
	After(ctx context.Context, room, afterID string, limit int) (msgs []Message, found bool, err error)
}

// Eraser is an optional History capability: the store's part in taking a
// message down.
type Eraser interface {
	// Message returns the stored message id of room; found is false when it
	// is not stored, or was deleted.
	Message(ctx context.Context, room, id string) (msg Message, found bool, err error)
	// Erase stores the tombstone of msg, whether or not msg is stored yet:
	// its row with the body blanked, marked deleted. History never returns
	// it again, and a later insert of msg (a writer that still holds it)
	// leaves the tombstone as it is. Erasing twice is harmless.
	Erase(ctx context.Context, msg Message) error
}

// DiscardSink accepts every message and keeps none. It is the sink of a hub
// that has no store configured (tests of the protocol alone).
type DiscardSink struct{}

// Reserve implements MessageSink.
func (DiscardSink) Reserve() error { return nil }

// Commit implements MessageSink.
func (DiscardSink) Commit(Message) {}

// Cancel implements MessageSink.
func (DiscardSink) Cancel() {}
