package chat

import "context"

// PresenceMeta is one connection's presence in a room: one entry of a
// Phoenix Presence "metas" list.
type PresenceMeta struct {
	// PhxRef identifies this connection's join of the room, cluster-wide.
	PhxRef string `json:"phx_ref"`
	// Node is the name of the node the connection is on.
	Node string `json:"node"`
	// OnlineAt is when the connection joined the room, in Unix seconds.
	OnlineAt int64 `json:"online_at"`
}

// PresenceEntry is one connection of a user in a room.
type PresenceEntry struct {
	UserID string       `json:"user_id"`
	Meta   PresenceMeta `json:"meta"`
}

// Presence tracks who is in each room, across every node of the cluster.
type Presence interface {
	// Add records e in room. It is idempotent on (room, e.Meta.PhxRef).
	Add(ctx context.Context, room string, e PresenceEntry) error
	// Remove deletes the entry ref of room and reports whether it was there.
	// Removing an absent entry is not an error.
	Remove(ctx context.Context, room, ref string) (bool, error)
	// List returns every entry of room, in no particular order.
	List(ctx context.Context, room string) ([]PresenceEntry, error)
}

// PresenceEvents is what a cluster-wide Presence reports to the hub:
// entries it removed on its own (their node died, their lease lapsed) and
// entries of this node it wrote back (Redis lost them). *Hub implements
// it: members are sent the matching presence_diff. Calls must not block.
type PresenceEvents interface {
	PresenceLeft(room string, removed []PresenceEntry)
	PresenceJoined(room string, restored []PresenceEntry)
}

// PresenceRunner is implemented by a Presence with background work that
// reports PresenceEvents: the hub runs it as it starts (NewHub),
// registering itself as ev. Run is called once.
type PresenceRunner interface {
	Run(ev PresenceEvents) error
}

// NodeReaper is implemented by cluster-wide Presence and ConnLimiter
// implementations: it frees what a node that died held.
type NodeReaper interface {
	// RemoveNode deletes every entry the node named node added and returns
	// the presence entries removed, by room. It is idempotent: once one
	// caller has removed an entry, no other caller gets it back, so leave
	// diffs are published once.
	RemoveNode(ctx context.Context, node string) (map[string][]PresenceEntry, error)
}
