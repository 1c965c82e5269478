package cluster

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/hashicorp/memberlist"
)

// NodeMeta is what a node advertises about itself to the cluster. It travels
// JSON-encoded in memberlist's node metadata, which is limited to
// memberlist.MetaMaxSize (512) bytes: every field but HTTPAddr has a bounded
// size, so in practice HTTPAddr must stay under roughly 380 bytes.
type NodeMeta struct {
	// HTTPAddr is the address clients and peers reach this node's HTTP server at.
	HTTPAddr string `json:"http_addr,omitempty"`
	// Connections is the number of WebSocket connections open on the node.
	Connections int `json:"connections"`
	// Users is the number of distinct users connected to the node.
	Users int `json:"users"`
	// Rooms is the number of rooms with at least one member on the node.
	Rooms int `json:"rooms"`
	// MessagesIn counts the messages the node accepted since it started
	// (peers derive its message rate from it).
	MessagesIn int64 `json:"messages_in,omitempty"`
	// QueueDepth is how many messages wait in the node's persistence queue.
	QueueDepth int `json:"queue_depth,omitempty"`
	// StartedAt is when the node started; it tells two lives of a node that
	// reuses its name apart.
	StartedAt time.Time `json:"started_at"`
}

// metaWire is the encoded form of NodeMeta: the same fields plus the graceful
// leave flag, which is how peers tell "left" from "dead" (memberlist's own
// notion of it is not visible to delegates).
type metaWire struct {
	NodeMeta
	Leaving bool `json:"leaving,omitempty"`
}

// encodeMeta encodes meta for memberlist and checks the size limit.
func encodeMeta(meta NodeMeta, leaving bool) ([]byte, error) {
	b, err := json.Marshal(metaWire{NodeMeta: meta, Leaving: leaving})
	if err != nil {
		return nil, fmt.Errorf("cluster: encode node metadata: %w", err)
	}
	if len(b) > memberlist.MetaMaxSize {
		return nil, fmt.Errorf("cluster: node metadata is %d bytes, over memberlist's %d-byte limit (HTTPAddr is %d bytes)",
			len(b), memberlist.MetaMaxSize, len(meta.HTTPAddr))
	}
	return b, nil
}

func decodeMeta(b []byte) (metaWire, error) {
	var w metaWire
	if len(b) == 0 {
		return w, nil
	}
	if err := json.Unmarshal(b, &w); err != nil {
		return metaWire{}, fmt.Errorf("cluster: decode node metadata: %w", err)
	}
	return w, nil
}

var _ memberlist.Delegate = (*metaDelegate)(nil)

// refreshMeta polls cfg.Meta and stores the encoded result for memberlist;
// it reports whether the bytes changed.
func (m *Membership) refreshMeta() (bool, error) {
	var meta NodeMeta
	if m.cfg.Meta != nil {
		meta = m.cfg.Meta()
	}
	if meta.StartedAt.IsZero() {
		meta.StartedAt = m.startAt
	}
	b, err := encodeMeta(meta, m.leaving.Load())
	if err != nil {
		return false, err
	}
	m.metaMu.Lock()
	defer m.metaMu.Unlock()
	m.metaLast = meta
	if bytes.Equal(b, m.metaCur) {
		return false, nil
	}
	m.metaCur = b
	return true, nil
}

// metaLoop re-broadcasts changed metadata and forgets old tombstones.
func (m *Membership) metaLoop(ml *memberlist.Memberlist) {
	defer m.loops.Done()
	defer close(m.metaDone)
	t := time.NewTicker(m.metaEvery)
	defer t.Stop()
	var lastErr string
	for {
		select {
		case <-m.loopCtx.Done():
			return
		case <-t.C:
		}
		m.pruneTombstones(time.Now())
		if m.cfg.Meta == nil {
			continue
		}
		changed, err := m.refreshMeta()
		if err != nil {
			// Keep advertising the last good metadata; say so once per cause.
			if err.Error() != lastErr {
				m.log.Error("cluster: node metadata not updated", "err", err)
				lastErr = err.Error()
			}
			continue
		}
		lastErr = ""
		if changed {
			// Blocks until the update is gossiped (no lock held here).
			if err := ml.UpdateNode(m.metaEvery); err != nil {
				m.log.Debug("cluster: metadata update not confirmed", "err", err)
			}
		}
	}
}

// metaDelegate hands memberlist the local node's metadata. chatd sends no
// user messages or state through memberlist (Redis carries those), so the
// rest is empty.
type metaDelegate struct{ m *Membership }

func (d *metaDelegate) NodeMeta(limit int) []byte {
	d.m.metaMu.RLock()
	defer d.m.metaMu.RUnlock()
	if len(d.m.metaCur) > limit {
		return nil // encodeMeta enforces the limit; never hand memberlist more
	}
	return slices.Clone(d.m.metaCur)
}
func (d *metaDelegate) NotifyMsg([]byte)                           {}
func (d *metaDelegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *metaDelegate) LocalState(join bool) []byte                { return nil }
func (d *metaDelegate) MergeRemoteState(buf []byte, join bool)     {}
