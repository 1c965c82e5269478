package node

import (
	"context"
	"time"

	"github.com/chatd/chatd/cluster"
)

// Stats is the /api/stats document: the cluster as memberlist gossips it
// (every node's metadata, refreshed every 2 s), the local hub and queue,
// and the status of this node's dependencies. Fields are in the order of
// their JSON keys.
type Stats struct {
	// Dependencies maps each dependency (database, redis) to "ok" or
	// "unavailable: <error>".
	Dependencies map[string]string `json:"dependencies"`
	Local        LocalStats        `json:"local"`
	Node         string            `json:"node"`
	// Nodes are the cluster's members, this one included; a single node
	// lists itself.
	Nodes       []NodeStats               `json:"nodes"`
	Persistence PersistenceStats          `json:"persistence"`
	Relay       *cluster.RedisBrokerStats `json:"relay,omitempty"`
	Totals      Totals                    `json:"totals"`
}

// LocalStats are this node's hub counters (chat.Stats).
type LocalStats struct {
	Connections   int64            `json:"connections"`
	Connects      int64            `json:"connects"`
	Deliveries    int64            `json:"deliveries"`
	Dropped       map[string]int64 `json:"dropped"`
	MessagesIn    int64            `json:"messages_in"`
	Refused       map[string]int64 `json:"refused"`
	Rooms         int              `json:"rooms"`
	SlowConsumers int64            `json:"slow_consumers"`
	Users         int              `json:"users"`
}

// NodeStats is one member of the cluster, as it advertises itself.
type NodeStats struct {
	Name        string `json:"name"`
	Address     string `json:"address"`
	HTTPAddr    string `json:"http_addr,omitempty"`
	State       string `json:"state"`
	Connections int    `json:"connections"`
	Users       int    `json:"users"`
	Rooms       int    `json:"rooms"`
	MessagesIn  int64  `json:"messages_in"`
	QueueDepth  int    `json:"queue_depth"`
	Local       bool   `json:"local,omitempty"`
}

// PersistenceStats is this node's persistence queue (store.WriterStats).
type PersistenceStats struct {
	Batches       uint64  `json:"batches"`
	Failures      uint64  `json:"failures"`
	LagSeconds    float64 `json:"lag_seconds"`
	Pending       int     `json:"pending"`
	QueueCapacity int     `json:"queue_capacity"`
	QueueDepth    int     `json:"queue_depth"`
	Rejected      uint64  `json:"rejected"`
	Retries       uint64  `json:"retries"`
	Written       uint64  `json:"written"`
}

// Totals add up the alive nodes' figures: Users and Rooms are sums of
// per-node distinct counts, so a user connected to two nodes (or a room
// with members on two nodes) counts once per node. Nodes counts every
// member, NodesAlive the alive ones.
type Totals struct {
	Connections int64 `json:"connections"`
	MessagesIn  int64 `json:"messages_in"`
	Nodes       int64 `json:"nodes"`
	NodesAlive  int64 `json:"nodes_alive"`
	QueueDepth  int64 `json:"queue_depth"`
	Rooms       int64 `json:"rooms"`
	Users       int64 `json:"users"`
}

// Stats builds the /api/stats document from what this node knows; each
// dependency check is bounded by 1 s.
func (n *Node) Stats(ctx context.Context) Stats {
	st := n.hub.Stats()
	ws := n.writer.Stats()
	doc := Stats{
		Node: n.cfg.NodeName,
		Local: LocalStats{
			Connections: st.Connections, Users: st.Users, Rooms: st.Rooms, Connects: st.Connects,
			MessagesIn: st.MessagesIn, Deliveries: st.Deliveries, SlowConsumers: st.SlowConsumers,
			Refused: st.Refused, Dropped: st.Dropped,
		},
		Persistence: PersistenceStats{
			QueueDepth:    ws.QueueDepth,
			QueueCapacity: ws.QueueCapacity,
			Pending:       ws.Pending(),
			LagSeconds:    ws.Lag.Seconds(),
			Written:       ws.Written,
			Batches:       ws.Batches,
			Retries:       ws.Retries,
			Failures:      ws.Failures,
			Rejected:      ws.Rejected,
		},
	}
	if n.membership == nil {
		doc.Nodes = append(doc.Nodes, NodeStats{Name: n.cfg.NodeName, State: string(cluster.MemberAlive),
			Connections: int(st.Connections), Users: st.Users, Rooms: st.Rooms,
			MessagesIn: st.MessagesIn, QueueDepth: ws.QueueDepth, Local: true})
	} else {
		for _, m := range n.membership.Members() {
			ns := NodeStats{Name: m.Name, Address: m.Addr, HTTPAddr: m.Meta.HTTPAddr, State: string(m.State),
				Connections: m.Meta.Connections, Users: m.Meta.Users, Rooms: m.Meta.Rooms,
				MessagesIn: m.Meta.MessagesIn, QueueDepth: m.Meta.QueueDepth, Local: m.Local}
			if m.Local { // fresher than the gossiped copy
				ns.Connections, ns.Users, ns.Rooms = int(st.Connections), st.Users, st.Rooms
				ns.MessagesIn, ns.QueueDepth = st.MessagesIn, ws.QueueDepth
			}
			doc.Nodes = append(doc.Nodes, ns)
		}
	}
	for _, ns := range doc.Nodes {
		doc.Totals.Nodes++
		if ns.State == string(cluster.MemberAlive) {
			doc.Totals.NodesAlive++
			doc.Totals.Connections += int64(ns.Connections)
			doc.Totals.Users += int64(ns.Users)
			doc.Totals.Rooms += int64(ns.Rooms)
			doc.Totals.MessagesIn += ns.MessagesIn
			doc.Totals.QueueDepth += int64(ns.QueueDepth)
		}
	}
	doc.Dependencies = make(map[string]string, len(n.checks))
	for _, c := range n.checks {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		if err := c.Check(cctx); err != nil {
			doc.Dependencies[c.Name] = "unavailable: " + err.Error()
		} else {
			doc.Dependencies[c.Name] = "ok"
		}
		cancel()
	}
	if n.broker != nil {
		rs := n.broker.Stats()
		doc.Relay = &rs
	}
	return doc
}
