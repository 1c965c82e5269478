package chat

import (
	"context"
	"fmt"
)

// BrokerHandler receives the publications of the rooms a node subscribes to.
// data is an encoded frame, ready to be written to every local member of
// room. The handler must not block, and must treat data as read-only.
type BrokerHandler func(room string, data []byte)

// Broker relays room publications between the nodes of a cluster.
type Broker interface {
	// Publish delivers data to the handler of every node subscribed to room,
	// this node included. The publications of one room reach every node's
	// handler in one order, the same on every node, and exactly once. A nil
	// error means the publication was accepted for delivery.
	//
	// id is the message id of a chat message, empty for other frames. A
	// message is published only if its id is greater than that of every
	// message published to room before it; otherwise nothing is published
	// and an *OutOfOrderError is returned, so that the caller can retry with
	// a greater id. Message ids therefore increase in delivery order,
	// cluster-wide, which is what makes "since <id>" recovery gap-free.
	Publish(ctx context.Context, room, id string, data []byte) error
	// Subscribe starts delivery of room's publications to this node's
	// handler. Publications accepted after Subscribe returns are delivered.
	// Calls are counted: each Subscribe is undone by one Unsubscribe.
	Subscribe(ctx context.Context, room string) error
	// Unsubscribe undoes one Subscribe of room; delivery stops after the last.
	Unsubscribe(ctx context.Context, room string) error
}

// OutOfOrderError is returned by Publish for a message whose id is not
// greater than Last, the id of the room's latest message.
type OutOfOrderError struct {
	Last string
}

func (e *OutOfOrderError) Error() string {
	return fmt.Sprintf("chat: message id is not after the room's last id %s", e.Last)
}
