package chat

import (
	"context"
	"errors"
	"fmt"
)

// BrokerHandler receives the publications of the rooms a node subscribes to.
// data is an encoded frame, ready to be written to every local member of
// room. The handler must not block, and must treat data as read-only.
type BrokerHandler func(room string, data []byte)

// RelayEvents is what a broker reports to the hub besides publications.
// *Hub implements it; the hub registers itself when it starts (Run).
type RelayEvents interface {
	// Resync is called when the relay delivers again after it was cut
	// off: what was published meanwhile never reached this node, so every
	// local member of the rooms it names is told to catch up. rooms
	// reports whether a room was cut off (a Redis Cluster master carries
	// only its slots' rooms); nil means every room. It is called before
	// the relay delivers anything more in those rooms, and must not block.
	Resync(rooms func(room string) bool)
	// RoomLastID returns the greatest message id the relay delivered in
	// room on this node (empty if none). A broker whose room log is empty
	// (a new room, an expired log, or one lost with Redis's data) first
	// lets the relay deliver what was published before, then starts the
	// log only with an id after this one, else answers *OutOfOrderError
	// naming it: so a message chosen before this node received its
	// predecessors does not come after them in a new log.
	RoomLastID(room string) string
}

// Broker keeps each room's log and relays room publications between the
// nodes of a cluster.
//
// A room's log is the single source of truth for what was said in it and in
// what order: a chat message is accepted by one atomic step that checks its
// order, appends it to the log and publishes it. Recovery ("since",
// "history") reads the log, whatever node accepted a message and whether it
// is stored yet.
type Broker interface {
	// Run registers the node's handler and starts delivery: publications
	// of the rooms this node subscribes to go to h, the relay's events to
	// ev (nil: not reported). The hub calls it once, as it starts
	// (NewHub), before any other method; a broker is not run twice.
	Run(h BrokerHandler, ev RelayEvents) error
	// Publish delivers data to the handler of every node subscribed to room,
	// this node included. The publications of one room reach every node's
	// handler in one order, the same on every node, and exactly once. A nil
	// error means the publication was accepted for delivery.
	//
	// id is the message id of a chat message, empty for other frames (they
	// are relayed, not logged). A message is accepted only if its id is
	// greater than that of every message accepted in room before it: then
	// it is appended to the room's log and published in the same atomic
	// step. Otherwise nothing happens and an *OutOfOrderError is returned,
	// so that the caller can retry with a greater id. Message ids therefore
	// increase in delivery order, cluster-wide, which is what makes "since
	// <id>" recovery gap-free.
	//
	// An error wrapping ErrNotPublished means nothing was published. Any
	// other error leaves the outcome of a message unknown (a timeout after
	// the request was sent, a broken connection): the caller must settle it
	// with Resolve before it answers the sender.
	Publish(ctx context.Context, room, id string, data []byte) error
	// Resolve settles the outcome of a Publish of message id in room that
	// returned an error other than *OutOfOrderError. It reports true when
	// the message is in the room's log (it was accepted and is delivered),
	// and false when it is not and never will be: a publication of it still
	// in flight is refused when it arrives. An error means nothing is known
	// yet; the caller may call Resolve again.
	Resolve(ctx context.Context, room, id string) (bool, error)
	// ReadLog reads room's log; see LogQuery and LogRead. The log keeps at
	// least the newest MaxRecover+1 messages of a room that was written to
	// recently; older ones may have been dropped.
	ReadLog(ctx context.Context, room string, q LogQuery) (LogRead, error)
	// Delete takes message id of room down, and publishes data (the
	// msg_deleted frame) to room as Publish does a frame without an id,
	// in one atomic step: no ReadLog that follows returns the message,
	// on any node, for as long as the log holds it. It reports whether
	// the log held the message (deleted before or not); a message the log
	// does not hold is not recorded, but data is published all the same.
	// Deleting a message again is harmless. An error leaves the outcome
	// unknown; Delete may be called again.
	Delete(ctx context.Context, room, id string, data []byte) (bool, error)
	// Subscribe starts delivery of room's publications to this node's
	// handler. Publications accepted after Subscribe returns are delivered.
	// Calls are counted: each Subscribe is undone by one Unsubscribe.
	Subscribe(ctx context.Context, room string) error
	// Unsubscribe undoes one Subscribe of room; delivery stops after the last.
	Unsubscribe(ctx context.Context, room string) error
}

// ErrNotPublished is wrapped by the errors of Publish that prove nothing
// was published (the request never left this node: the relay is down, no
// connection could be made): such an outcome is known, Resolve is not
// needed.
var ErrNotPublished = errors.New("chat: not published")

// LogQuery selects messages of a room's log.
type LogQuery struct {
	// After selects the messages whose id is greater than After; empty
	// selects the room's newest messages.
	After string
	// Limit is the most messages returned: when more are selected, the
	// newest Limit are, and LogRead.More is set. It must be positive,
	// unless ID is set.
	Limit int
	// ID, when set, selects the one message with that id (After and
	// Limit are ignored): Entries holds it unless it was deleted, and
	// Found reports that the log holds it, deleted or not.
	ID string
}

// LogRead is what ReadLog found, read in one atomic step.
type LogRead struct {
	// Entries are the selected messages, oldest first. Deleted messages
	// are never selected.
	Entries []LogEntry
	// More reports that more messages were selected than Limit.
	More bool
	// Found reports that After (or ID) is a message of the log, deleted
	// or not.
	Found bool
	// Len is how many messages the log holds, deleted ones included.
	Len int
	// Oldest is the id of the oldest message the log holds (deleted or
	// not), empty when it holds none.
	Oldest string
	// Newest is the id of the newest message the log holds, empty when it
	// holds none: every message accepted after the read has a greater id.
	Newest string
	// Full reports that the log holds as many messages as it keeps, so
	// older ones may have been dropped. A log that is not full holds every
	// message of the room since the log was created (it starts anew when
	// a room has been silent for the log's lifetime, or Redis lost it).
	Full bool
}

// LogEntry is one message of a room's log: its id and its encoded frame, as
// it was published.
type LogEntry struct {
	ID   string
	Data []byte
}

// OutOfOrderError is returned by Publish for a message whose id is not
// greater than Last, the id of the room's latest message.
type OutOfOrderError struct {
	Last string
}

func (e *OutOfOrderError) Error() string {
	return fmt.Sprintf("chat: message id is not after the room's last id %s", e.Last)
}
