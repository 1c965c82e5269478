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

// MessageSink persists accepted messages off the request path.
type MessageSink interface {
	// Enqueue hands msg to the persistence queue and returns at once, never
	// waiting on the database. When the queue is full it returns ErrOverloaded
	// and keeps nothing; any other error also means msg was not kept.
	Enqueue(msg Message) error
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

// DiscardSink accepts every message and keeps none. It is the sink of a hub
// that has no store configured (tests of the protocol alone).
type DiscardSink struct{}

// Enqueue implements MessageSink.
func (DiscardSink) Enqueue(Message) error { return nil }
