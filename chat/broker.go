package chat

import "context"

// BrokerHandler receives the publications of the rooms a node subscribes to.
// data is an encoded frame, ready to be written to every local member of
// room. The handler must not block and must not keep data after it returns
// unless it treats it as read-only.
type BrokerHandler func(room string, data []byte)

// Broker relays room publications between the nodes of a cluster.
type Broker interface {
	// Publish delivers data to the handler of every node subscribed to room,
	// this node included. The publications of one room reach every node's
	// handler in one order, the same on every node, and exactly once. A nil
	// error means the publication was accepted for delivery.
	Publish(ctx context.Context, room string, data []byte) error
	// Subscribe starts delivery of room's publications to this node's
	// handler. Publications accepted after Subscribe returns are delivered.
	// Calls are counted: each Subscribe is undone by one Unsubscribe.
	Subscribe(ctx context.Context, room string) error
	// Unsubscribe undoes one Subscribe of room; delivery stops after the last.
	Unsubscribe(ctx context.Context, room string) error
}
