package chat

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"
)

// The hubs of a cluster send each other commands through the broker, on a
// pseudo-room every hub subscribes to when it starts. Its name is not a
// valid room name, so no client can join it, and its frames are relayed,
// never logged. Like every relayed frame, a command reaches the nodes
// connected to the relay when it is published: a node cut off from Redis
// at that moment misses it (Redis pub/sub keeps no backlog).
const controlRoom = "!control"

// Close codes of the connections Disconnect closes (private-use codes,
// RFC 6455 section 7.4.2), so that a client can tell them from the
// server's other closes (1001 going away, 1008 idle or slow).
const (
	// CloseDisconnected: the server's operator closed the connection; the
	// same token may connect again.
	CloseDisconnected StatusCode = 4001
	// CloseRevoked: the user's tokens were revoked; connecting again needs
	// a token issued after the revocation.
	CloseRevoked StatusCode = 4003
)

// maxCloseReason is the most bytes of reason a close frame carries.
const maxCloseReason = 123

// controlMsg is a command on controlRoom.
type controlMsg struct {
	// Op is the command: "disconnect".
	Op string `json:"op"`
	// Node is the sender, which has carried out the command already.
	Node    string `json:"node"`
	User    string `json:"user"`
	Reason  string `json:"reason,omitempty"`
	Revoked bool   `json:"revoked,omitempty"`
}

const opDisconnect = "disconnect"

// kickMemory is how long a node remembers a user it disconnected, so that
// a connection whose token was checked before the command but which the
// hub takes on only after it is closed too (see ConnInfo.AuthorizedAt).
// It outlasts any handshake.
const kickMemory = time.Minute

// maxKicks bounds the users remembered that way; past it the oldest are
// forgotten first.
const maxKicks = 10_000

// kick is a user disconnected recently on this node.
type kick struct {
	at      time.Time
	code    StatusCode
	reason  string
	elemIdx uint64 // the kick's place in Hub.kickOrder
}

// Disconnect closes every connection of user on every node: this node's at
// once (the count is returned), the other nodes' when the command reaches
// them through the broker. revoked picks the close code (CloseRevoked, else
// CloseDisconnected); reason, cut to what a close frame carries, is its
// reason. An error means the other nodes may not have been told; calling
// Disconnect again is harmless.
func (h *Hub) Disconnect(ctx context.Context, user, reason string, revoked bool) (int, error) {
	reason = closeReason(reason, revoked)
	n := h.disconnectLocal(user, reason, revoked)
	data, err := json.Marshal(controlMsg{Op: opDisconnect, Node: h.cfg.NodeName, User: user, Reason: reason, Revoked: revoked})
	if err != nil {
		return n, fmt.Errorf("chat: disconnect: %w", err)
	}
	pctx, cancel := context.WithTimeout(ctx, h.cfg.RelayTimeout)
	defer cancel()
	if err := h.broker.Publish(pctx, controlRoom, "", data); err != nil {
		return n, fmt.Errorf("chat: disconnect %s on the other nodes: %w", user, err)
	}
	return n, nil
}

// closeReason returns reason cut to maxCloseReason bytes on a rune
// boundary, or the default reason when it is empty.
func closeReason(reason string, revoked bool) string {
	if reason == "" {
		if revoked {
			return "token revoked"
		}
		return "disconnected by the server"
	}
	if len(reason) <= maxCloseReason {
		return reason
	}
	cut := maxCloseReason
	for cut > 0 && !utf8.RuneStart(reason[cut]) {
		cut--
	}
	return reason[:cut]
}

// disconnectLocal closes user's connections on this node, each on a
// goroutine of its own (a close may wait for a write in progress), and
// returns how many it closes.
func (h *Hub) disconnectLocal(user, reason string, revoked bool) int {
	code := CloseDisconnected
	if revoked {
		code = CloseRevoked
	}
	now := time.Now()
	var victims []*Session
	h.sessMu.Lock()
	h.rememberKickLocked(user, kick{at: now, code: code, reason: reason})
	for s := range h.sessions {
		if s.user == user && !s.closing() {
			victims = append(victims, s)
		}
	}
	h.sessMu.Unlock()
	for _, s := range victims {
		h.closers.Go(func() { s.closeGracefully(code, reason) })
	}
	if len(victims) > 0 {
		h.log.Info("user disconnected", "user_id", user, "connections", len(victims), "revoked", revoked, "reason", reason)
	}
	return len(victims)
}

// rememberKickLocked records k for user, forgetting what is older than
// kickMemory, and the oldest past maxKicks; sessMu is held.
func (h *Hub) rememberKickLocked(user string, k kick) {
	for len(h.kickOrder) > 0 {
		first := h.kickOrder[0]
		old, ok := h.kicks[first.user]
		stale := !ok || old.elemIdx != first.idx
		if !stale && k.at.Sub(old.at) < kickMemory && len(h.kicks) < maxKicks {
			break
		}
		if !stale {
			delete(h.kicks, first.user)
		}
		h.kickOrder = h.kickOrder[1:]
	}
	h.kickSeq++
	k.elemIdx = h.kickSeq
	h.kicks[user] = k
	h.kickOrder = append(h.kickOrder, kickRef{user: user, idx: k.elemIdx})
}

// kickRef is an entry of Hub.kickOrder: user's kick numbered idx.
type kickRef struct {
	user string
	idx  uint64
}

// kickedLocked returns the kick that info's connection predates, if any;
// sessMu is held.
func (h *Hub) kickedLocked(info ConnInfo) (kick, bool) {
	if info.AuthorizedAt.IsZero() {
		return kick{}, false
	}
	k, ok := h.kicks[info.UserID]
	if !ok || info.AuthorizedAt.After(k.at) || time.Since(k.at) >= kickMemory {
		return kick{}, false
	}
	return k, true
}

// handleControl carries out a command from another node. It is called by
// the broker's handler and does not block.
func (h *Hub) handleControl(data []byte) {
	var m controlMsg
	if err := json.Unmarshal(data, &m); err != nil {
		h.log.Warn("dropping undecodable control frame", "err", err)
		h.stats.dropped[dropInvalidRelay].Add(1)
		return
	}
	if m.Node == h.cfg.NodeName {
		return // the sender carried it out
	}
	switch m.Op {
	case opDisconnect:
		h.disconnectLocal(m.User, closeReason(m.Reason, m.Revoked), m.Revoked)
	default:
		h.log.Warn("ignoring unknown control command", "op", m.Op, "from", m.Node)
	}
}

// subscribeControl subscribes the node to controlRoom, trying again with
// pauses until it succeeds or the hub shuts down: a relay that is not
// running yet, or not reachable, is waited for.
func (h *Hub) subscribeControl(ctx context.Context) {
	pause := 50 * time.Millisecond
	for attempt := 1; ; attempt++ {
		sctx, cancel := context.WithTimeout(ctx, h.cfg.RelayTimeout)
		err := h.broker.Subscribe(sctx, controlRoom)
		cancel()
		if err == nil {
			h.controlSubscribed.Store(true)
			return
		}
		if ctx.Err() != nil {
			return
		}
		if attempt >= 3 {
			h.log.Warn("control channel subscribe failed: commands of other nodes (disconnects) do not reach this node yet", "err", err, "attempt", attempt)
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		pause = min(2*pause, 5*time.Second)
	}
}

// stopControl ends the control subscription and waits for the closes
// Disconnect started; Shutdown calls it once the connections are closed.
// Calling it again does nothing more.
func (h *Hub) stopControl() {
	h.stopControlSub()
	h.controlWG.Wait()
	if h.controlSubscribed.Swap(false) {
		ctx, cancel := context.WithTimeout(context.Background(), h.cfg.RelayTimeout)
		defer cancel()
		if err := h.broker.Unsubscribe(ctx, controlRoom); err != nil && !errors.Is(err, context.Canceled) {
			h.log.Warn("control channel unsubscribe failed", "err", err)
		}
	}
	h.closers.Wait()
}

// ControlReady reports whether commands of other nodes reach this node
// (the control channel is subscribed).
func (h *Hub) ControlReady() bool { return h.controlSubscribed.Load() }
