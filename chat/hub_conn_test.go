package chat

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeConn is a Conn driven by a test: Read returns what the test sends
// (send, which returns once the session has read it, so a send also waits
// for the frame before it to be handled), WriteBatch records the frames written (next reads them), and
// Close and CloseNow are recorded. With stall set, WriteBatch blocks until
// the connection is closed, as a write to a client that does not read.
type fakeConn struct {
	in     chan fakeMsg
	closed chan struct{} // closed by the first Close or CloseNow
	stall  bool

	mu        sync.Mutex
	out       []Frame
	notify    chan struct{} // a token when out grows
	closeCode StatusCode    // the first Close's code; 0 when none
	closeMsg  string
	closeOnce sync.Once
}

type fakeMsg struct {
	typ  MessageType
	data []byte
}

var _ Conn = (*fakeConn)(nil)

var errFakeClosed = errors.New("fake connection closed")

func newFakeConn() *fakeConn {
	return &fakeConn{in: make(chan fakeMsg), closed: make(chan struct{}), notify: make(chan struct{}, 1)}
}

func (c *fakeConn) Read() (MessageType, []byte, error) {
	select {
	case m := <-c.in:
		return m.typ, m.data, nil
	case <-c.closed:
		return 0, nil, errFakeClosed
	}
}

func (c *fakeConn) WriteBatch(deadline time.Time, frames ...[]byte) error {
	if c.stall {
		select {
		case <-c.closed:
		case <-time.After(time.Until(deadline)):
		}
		return errFakeClosed
	}
	select {
	case <-c.closed:
		return errFakeClosed
	default:
	}
	c.mu.Lock()
	for _, b := range frames {
		f, err := DecodeFrame(b)
		if err != nil {
			f = Frame{Event: fmt.Sprintf("undecodable %q: %v", b, err)}
		}
		c.out = append(c.out, f)
	}
	c.mu.Unlock()
	select {
	case c.notify <- struct{}{}:
	default:
	}
	return nil
}

func (c *fakeConn) Close(code StatusCode, reason string) error {
	c.mu.Lock()
	if c.closeCode == 0 {
		c.closeCode, c.closeMsg = code, reason
	}
	c.mu.Unlock()
	c.closeOnce.Do(func() { close(c.closed) })
	return nil
}

func (c *fakeConn) CloseNow() error {
	c.closeOnce.Do(func() { close(c.closed) })
	return nil
}

// closedWith returns the first Close's code and reason.
func (c *fakeConn) closedWith() (StatusCode, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closeCode, c.closeMsg
}

// sendText hands the session a text message.
func (c *fakeConn) sendText(tb testing.TB, data string) {
	tb.Helper()
	select {
	case c.in <- fakeMsg{MessageText, []byte(data)}:
	case <-time.After(5 * time.Second):
		tb.Fatal("the session does not read")
	}
}

// send hands the session one frame.
func (c *fakeConn) send(tb testing.TB, joinRef, ref, topic, event, payload string) {
	tb.Helper()
	c.sendText(tb, string(AppendFrame(nil, joinRef, ref, topic, event, []byte(payload))))
}

// next returns the next frame written that is not about presence, failing
// after 5 s.
func (c *fakeConn) next(tb testing.TB) Frame {
	tb.Helper()
	deadline := time.After(5 * time.Second)
	for {
		c.mu.Lock()
		for len(c.out) > 0 {
			f := c.out[0]
			c.out = c.out[1:]
			if f.Event != EventPresenceState && f.Event != EventPresenceDiff {
				c.mu.Unlock()
				return f
			}
		}
		c.mu.Unlock()
		select {
		case <-c.notify:
		case <-deadline:
			tb.Fatal("no frame written in 5 s")
		}
	}
}

// expectReply reads the reply to ref (messages read first are returned
// too) and checks its status.
func (c *fakeConn) expectReply(tb testing.TB, ref, status string) (json.RawMessage, []Message) {
	tb.Helper()
	var msgs []Message
	for {
		f := c.next(tb)
		if f.Event == EventNewMsg {
			m, err := decodeMessage(f.Payload)
			if err != nil {
				tb.Fatalf("new_msg %s: %v", f.Payload, err)
			}
			msgs = append(msgs, m)
			continue
		}
		if f.Event != EventReply || f.Ref != ref {
			tb.Fatalf("got %+v %s, want the reply to %s", f, f.Payload, ref)
		}
		var r struct {
			Status   string          `json:"status"`
			Response json.RawMessage `json:"response"`
		}
		if err := json.Unmarshal(f.Payload, &r); err != nil || r.Status != status {
			tb.Fatalf("reply to %s: %s, want status %s", ref, f.Payload, status)
		}
		return r.Response, msgs
	}
}

// expectMsg reads the next frame, which must be a new_msg on topic.
func (c *fakeConn) expectMsg(tb testing.TB, topic string) Message {
	tb.Helper()
	f := c.next(tb)
	if f.Event != EventNewMsg || f.Topic != topic || f.Ref != "" || f.JoinRef != "" {
		tb.Fatalf("got %+v %s, want a new_msg on %s", f, f.Payload, topic)
	}
	m, err := decodeMessage(f.Payload)
	if err != nil {
		tb.Fatal(err)
	}
	return m
}

// serve runs h.ServeConn on a new fake connection of user until the test
// ends; the returned channel is closed when ServeConn returns.
func serve(t *testing.T, h *Hub, user string) (*fakeConn, <-chan struct{}) {
	t.Helper()
	return serveConn(t, h, user, newFakeConn())
}

// serveConn is serve on c.
func serveConn(t *testing.T, h *Hub, user string, c *fakeConn) (*fakeConn, <-chan struct{}) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.ServeConn(context.Background(), c, &ConnInfo{ID: user, UserID: user, Grants: Grants{Public: Patterns{"*"}}})
	}()
	t.Cleanup(func() {
		c.CloseNow()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("ServeConn did not return after CloseNow")
		}
	})
	return c, done
}

func newHub(t *testing.T, cfg Config) *Hub {
	t.Helper()
	h, err := NewHub(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := h.Shutdown(ctx); err != nil {
			t.Error(err)
		}
	})
	return h
}

// Two connections join a room; a push is answered on its ref and
// broadcast to both, sender included; after both leave the room is gone.
func TestServeConnJoinPushBroadcast(t *testing.T) {
	h := newHub(t, Config{})
	a, _ := serve(t, h, "alice")
	b, _ := serve(t, h, "bob")
	a.send(t, "1", "1", "room:lobby", EventJoin, `{}`)
	a.expectReply(t, "1", "ok")
	b.send(t, "7", "7", "room:lobby", EventJoin, `{}`)
	b.expectReply(t, "7", "ok")
	if st := h.Stats(); st.Rooms != 1 || st.Connections != 2 {
		t.Fatalf("stats %+v, want 1 room and 2 connections", st)
	}

	a.send(t, "1", "2", "room:lobby", EventNewMsg, `{"body":"hi"}`)
	resp, msgs := a.expectReply(t, "2", "ok")
	var ack struct{ ID string }
	if err := json.Unmarshal(resp, &ack); err != nil || ack.ID == "" {
		t.Fatalf("push reply %s", resp)
	}
	if len(msgs) == 0 {
		// A push's reply and its broadcast may come in either order.
		msgs = append(msgs, a.expectMsg(t, "room:lobby"))
	}
	if m := msgs[0]; m.ID != ack.ID || m.Body != "hi" || m.UserID != "alice" || m.Room != "lobby" {
		t.Fatalf("sender got %+v, want id %s", m, ack.ID)
	}
	if m := b.expectMsg(t, "room:lobby"); m.ID != ack.ID || m.Body != "hi" || m.UserID != "alice" {
		t.Fatalf("member got %+v, want id %s", m, ack.ID)
	}

	// alice leaves: she gets phx_close, and bob's next message only
	// reaches bob.
	a.send(t, "1", "3", "room:lobby", EventLeave, `{}`)
	a.expectReply(t, "3", "ok")
	if f := a.next(t); f.Event != EventClose || f.JoinRef != "1" || f.Topic != "room:lobby" {
		t.Fatalf("after leave: %+v, want phx_close on join_ref 1", f)
	}
	b.send(t, "7", "8", "room:lobby", EventNewMsg, `{"body":"alone"}`)
	if _, msgs := b.expectReply(t, "8", "ok"); len(msgs) == 0 {
		b.expectMsg(t, "room:lobby")
	}
	a.send(t, "", "4", TopicPhoenix, EventHeartbeat, `{}`)
	if _, msgs := a.expectReply(t, "4", "ok"); len(msgs) != 0 {
		t.Fatalf("delivered after leave: %+v", msgs)
	}
	b.send(t, "7", "9", "room:lobby", EventLeave, `{}`)
	b.expectReply(t, "9", "ok")
	if st := h.Stats(); st.Rooms != 0 {
		t.Fatalf("rooms after all left: %d", st.Rooms)
	}
}

// After phx_error a channel gets no broadcasts until it is rejoined: the
// client would otherwise move its last id past the gap it must recover.
func TestServeConnResyncedChannelGetsNothingUntilRejoined(t *testing.T) {
	h := newHub(t, Config{})
	a, _ := serve(t, h, "a")
	b, _ := serve(t, h, "b")
	a.send(t, "1", "1", "room:lobby", EventJoin, `{}`)
	a.expectReply(t, "1", "ok")
	b.send(t, "1", "1", "room:lobby", EventJoin, `{}`)
	b.expectReply(t, "1", "ok")
	h.Resync(nil)
	h.Resync(nil) // an errored channel is told once
	for _, c := range []*fakeConn{a, b} {
		if f := c.next(t); f.Event != EventError || f.JoinRef != "1" || f.Topic != "room:lobby" {
			t.Fatalf("after Resync: %+v, want phx_error", f)
		}
	}
	// b rejoins and pushes; a, errored, gets nothing.
	b.send(t, "2", "2", "room:lobby", EventJoin, `{}`)
	if f := b.next(t); f.Event != EventClose || f.JoinRef != "1" {
		t.Fatalf("rejoin: %+v, want phx_close of the errored channel first", f)
	}
	b.expectReply(t, "2", "ok")
	b.send(t, "2", "3", "room:lobby", EventNewMsg, `{"body":"missed"}`)
	if _, msgs := b.expectReply(t, "3", "ok"); len(msgs) == 0 {
		b.expectMsg(t, "room:lobby")
	}
	// A push on the errored channel: it is gone.
	a.send(t, "1", "2", "room:lobby", EventNewMsg, `{"body":"x"}`)
	f := a.next(t)
	if f.Event != EventReply || f.Ref != "2" || string(f.Payload) != `{"status":"error","response":{"reason":"unmatched topic"}}` {
		t.Fatalf("push on an errored channel: %+v %s", f, f.Payload)
	}
	a.send(t, "3", "3", "room:lobby", EventJoin, `{}`)
	a.expectReply(t, "3", "ok")
	b.send(t, "2", "4", "room:lobby", EventNewMsg, `{"body":"after"}`)
	resp, _ := b.expectReply(t, "4", "ok")
	var ack struct{ ID string }
	json.Unmarshal(resp, &ack)
	if m := a.expectMsg(t, "room:lobby"); m.ID != ack.ID {
		t.Fatalf("rejoined channel received %+v, want %s", m, ack.ID)
	}
}

// A connection whose writes do not progress is closed as a slow consumer
// (1008) once its send queue overflows; the room's other members are not
// held up.
func TestServeConnSlowConsumerClosed(t *testing.T) {
	const queueLen = 8
	h := newHub(t, Config{SendQueueLen: queueLen})
	a, _ := serve(t, h, "alice")
	stalled := newFakeConn()
	stalled.stall = true
	slow, slowDone := serveConn(t, h, "slow", stalled)

	a.send(t, "1", "1", "room:lobby", EventJoin, `{}`)
	a.expectReply(t, "1", "ok")
	// The slow connection's join reply is the first write it blocks on;
	// the heartbeat is read once the join is handled.
	slow.send(t, "1", "1", "room:lobby", EventJoin, `{}`)
	slow.send(t, "", "2", TopicPhoenix, EventHeartbeat, `{}`)

	// Every push is delivered to both; the slow one's queue fills up.
	var msgs []Message
	for i := range queueLen + 4 {
		ref := fmt.Sprint(i + 2)
		a.send(t, "1", ref, "room:lobby", EventNewMsg, fmt.Sprintf(`{"body":"m%d"}`, i))
		_, got := a.expectReply(t, ref, "ok")
		msgs = append(msgs, got...)
	}
	select {
	case <-slowDone:
	case <-time.After(10 * time.Second):
		t.Fatal("the slow consumer was not closed")
	}
	if code, reason := slow.closedWith(); code != StatusPolicyViolation || reason != "slow consumer" {
		t.Fatalf("slow consumer closed with %d %q, want 1008 \"slow consumer\"", code, reason)
	}
	if st := h.Stats(); st.SlowConsumers != 1 {
		t.Fatalf("%d slow consumers counted, want 1", st.SlowConsumers)
	}
	// alice got every message and is still served.
	a.send(t, "", "99", TopicPhoenix, EventHeartbeat, `{}`)
	_, got := a.expectReply(t, "99", "ok")
	msgs = append(msgs, got...)
	for len(msgs) < queueLen+4 {
		msgs = append(msgs, a.expectMsg(t, "room:lobby"))
	}
	if code, _ := a.closedWith(); code != 0 {
		t.Fatalf("alice was closed with %d", code)
	}
}

// A malformed frame is answered with an error on the phoenix topic; the
// connection is kept and serves what follows.
func TestServeConnMalformedFrameKeepsConnection(t *testing.T) {
	h := newHub(t, Config{})
	c, done := serve(t, h, "mallory")
	for _, bad := range []string{`hello`, `{"topic":"room:lobby"}`, `["1","2","room:lobby","new_msg"]`, `["1","2","room:lob`} {
		c.sendText(t, bad)
		f := c.next(t)
		if f.Topic != TopicPhoenix || f.Event != EventReply || f.Ref != "" || f.JoinRef != "" ||
			string(f.Payload) != `{"status":"error","response":{"reason":"invalid frame"}}` {
			t.Fatalf("%s answered %+v %s", bad, f, f.Payload)
		}
	}
	select {
	case c.in <- fakeMsg{MessageBinary, []byte{7, 1, 2}}:
	case <-time.After(5 * time.Second):
		t.Fatal("the session does not read")
	}
	if f := c.next(t); f.Topic != TopicPhoenix || !strings.Contains(string(f.Payload), "binary frames not supported") {
		t.Fatalf("binary frame answered %+v %s", f, f.Payload)
	}
	c.send(t, "1", "1", "room:lobby", EventJoin, `{}`)
	c.expectReply(t, "1", "ok")
	c.send(t, "", "2", TopicPhoenix, EventHeartbeat, `{}`)
	c.expectReply(t, "2", "ok")
	select {
	case <-done:
		t.Fatal("ServeConn returned")
	default:
	}
	if code, _ := c.closedWith(); code != 0 {
		t.Fatalf("closed with %d", code)
	}
}
