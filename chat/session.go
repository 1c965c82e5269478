package chat

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"time"
)

// Session is one client connection. Its reader goroutine (the caller of
// run) reads and handles frames and owns channels; its writer goroutine
// drains a bounded send queue (session_queue.go). Anything may enqueue;
// enqueue never blocks.
type Session struct {
	hub  *Hub
	conn Conn
	id   string
	user string
	us   *userState
	// grants are the rooms the connection may join and post in.
	grants Grants

	// channels maps joined topics to their channel; reader goroutine only.
	channels map[string]*channel

	qmu     sync.Mutex
	queue   [][]byte
	qbytes  int
	qclosed bool
	// oversize is the size of the one reply queued beyond the byte bound
	// (see enqueueReplyLocked), not counted in qbytes; 0 when none is.
	oversize int
	// writing is set while a writer goroutine runs; one is started when
	// frames are queued and none runs, and it ends when the queue is empty,
	// so an idle connection has no writer goroutine.
	writing bool
	writers sync.WaitGroup
	// started is set by run; no writer is started before.
	started bool
	// joining holds the deliveries of rooms being joined with history,
	// until the join reply is queued; guarded by qmu.
	joining map[*room][]delivery

	closeOnce sync.Once
	done      chan struct{} // closed when the session is ending
}

type channel struct {
	joinRef  string
	room     *room
	member   *member
	presence *PresenceEntry // nil when presence could not be recorded
}

func newSession(h *Hub, conn Conn, info ConnInfo) *Session {
	return &Session{
		hub:      h,
		conn:     conn,
		id:       info.ID,
		user:     info.UserID,
		grants:   info.Grants,
		channels: make(map[string]*channel),
		done:     make(chan struct{}),
	}
}

// run serves the session until it ends; it returns the error that ended it
// (nil for a normal close by the client). Its frame stays on the parked
// reader's stack (see Hub.ServeConn): setting up and tearing down are
// helpers of their own.
func (s *Session) run(ctx context.Context) error {
	stop, idle := s.start(ctx)
	err := s.readLoop(ctx, idle)
	s.finish(stop, idle)
	return err
}

// start begins the session: the user's entry, the cancellation of ctx and
// the idle timer.
//
//go:noinline
func (s *Session) start(ctx context.Context) (stop func() bool, idle *time.Timer) {
	s.us = s.hub.acquireUser(s.user)
	s.qmu.Lock()
	s.started = true
	s.qmu.Unlock()
	// The reader blocks on the socket, not on ctx: ending ctx drops the
	// connection.
	stop = context.AfterFunc(ctx, func() { s.conn.CloseNow() })
	idle = time.AfterFunc(s.hub.cfg.IdleTimeout, func() {
		s.logger().Info("closing idle connection")
		s.closeGracefully(StatusPolicyViolation, "idle timeout")
	})
	return stop, idle
}

// finish ends the session once its reader has returned.
//
//go:noinline
func (s *Session) finish(stop func() bool, idle *time.Timer) {
	for topic, ch := range s.channels {
		s.leaveChannel(ch)
		delete(s.channels, topic)
	}
	s.closeQueue()
	s.markDone()
	// The writer sends what is queued (the last replies), within its
	// write deadline, and ends.
	s.writers.Wait()
	s.conn.CloseNow()
	idle.Stop()
	stop()
	s.hub.releaseUser(s.user)
}

// readLoop reads the connection's messages and hands each to received
// until the connection ends. It is the parked reader's innermost chat
// frame: handling happens in calls that have returned while it waits.
func (s *Session) readLoop(ctx context.Context, idle *time.Timer) error {
	for {
		typ, data, err := s.conn.Read()
		if err != nil {
			return s.readEnded(ctx, err)
		}
		s.received(ctx, idle, typ, data)
	}
}

// readEnded says what ended the reads: nil for a close by the client or
// the server, else err.
//
//go:noinline
func (s *Session) readEnded(ctx context.Context, err error) error {
	if ce := (*CloseError)(nil); errors.As(err, &ce) {
		if !ce.Remote {
			// The client broke the protocol; the connection has sent it a
			// close frame and let it read that frame.
			s.logger().Debug("protocol violation", "err", err)
			return err
		}
		switch ce.Code {
		case StatusNormalClosure, StatusGoingAway, StatusNoStatusRcvd:
			return nil
		}
	}
	if s.closing() {
		return nil // closed by the server: idle, slow or shutdown
	}
	if ctx.Err() != nil {
		return nil
	}
	s.logger().Debug("read ended", "err", err)
	return err
}

// received handles one message read from the connection.
//
//go:noinline
func (s *Session) received(ctx context.Context, idle *time.Timer, typ MessageType, data []byte) {
	if s.closing() {
		// The server has sent its close, or is about to: a frame read now
		// is not handled, since its reply could not be sent (the client
		// would resend what was accepted). Reading goes on until the
		// close handshake ends.
		return
	}
	idle.Reset(s.hub.cfg.IdleTimeout)
	if typ == MessageBinary {
		f, ok := binaryPushHeader(data)
		if !ok {
			f = Frame{Topic: TopicPhoenix}
		}
		s.enqueue(EncodeError(f, ErrBinaryUnsupported))
		return
	}
	f, err := DecodeFrame(data)
	if err != nil {
		s.logger().Debug("invalid frame", "err", err)
		s.enqueue(EncodeError(Frame{Topic: TopicPhoenix}, ErrInvalidFrame))
		return
	}
	if f.Event == EventJoin || f.Event == EventNewMsg || f.Event == EventDeleteMsg {
		s.handleApart(ctx, f)
	} else {
		s.handle(ctx, f)
	}
}

// handleApart handles f on a short-lived goroutine and waits for it. Joins
// and pushes run deep (presence, history, publishing and fan-out), and a
// goroutine's stack keeps the size it grew to: the reader goroutine stays
// parked under every idle connection for its lifetime, so its stack should
// stay small.
func (s *Session) handleApart(ctx context.Context, f Frame) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.handle(ctx, f)
	}()
	<-done
}

// handle answers one frame. Every frame with a ref gets exactly one reply.
func (s *Session) handle(ctx context.Context, f Frame) {
	if f.Topic == TopicPhoenix {
		if f.Event == EventHeartbeat {
			s.enqueue(EncodeReply(f, nil))
		} else {
			s.enqueue(EncodeError(f, ErrUnknownEvent))
		}
		return
	}
	if f.Event == EventJoin {
		s.handleJoin(ctx, f)
		return
	}
	ch := s.channels[f.Topic]
	if ch != nil && ch.member.errored.Load() && f.Event != EventLeave {
		// The channel was sent phx_error: like a crashed Phoenix channel,
		// it is gone until the client rejoins.
		s.leaveChannel(ch)
		delete(s.channels, f.Topic)
		ch = nil
	}
	if ch == nil || (f.JoinRef != "" && f.JoinRef != ch.joinRef) {
		s.enqueue(EncodeError(f, ErrUnmatchedTopic))
		return
	}
	switch f.Event {
	case EventLeave:
		s.leaveChannel(ch)
		delete(s.channels, f.Topic)
		s.enqueue(EncodeReply(f, nil))
		s.enqueue(AppendFrame(nil, ch.joinRef, ch.joinRef, f.Topic, EventClose, emptyObject))
	case EventNewMsg:
		s.handleNewMsg(ctx, f, ch)
	case EventDeleteMsg:
		s.handleDeleteMsg(ctx, f, ch)
	default:
		s.enqueue(EncodeError(f, ErrUnknownEvent))
	}
}

// joinParams is the payload of phx_join.
type joinParams struct {
	History *int    `json:"history"`
	Since   *string `json:"since"`
}

func (s *Session) handleJoin(ctx context.Context, f Frame) {
	name, ok := RoomFromTopic(f.Topic)
	if !ok {
		s.enqueue(EncodeError(f, ErrUnmatchedTopic))
		return
	}
	var p joinParams
	if !isObject(f.Payload) || json.Unmarshal(f.Payload, &p) != nil {
		s.enqueue(EncodeError(f, ErrInvalidPayload))
		return
	}
	if p.History != nil && (*p.History < 0 || *p.History > MaxHistory) {
		s.enqueue(EncodeError(f, ErrInvalidPayload))
		return
	}
	if p.Since != nil && (*p.Since == "" || len(*p.Since) > 64) {
		s.enqueue(EncodeError(f, ErrInvalidPayload))
		return
	}
	if p.Since != nil {
		// Ids are lowercase UUIDs and compare byte-wise.
		since := strings.ToLower(*p.Since)
		p.Since = &since
	}
	if !s.grants.CanJoin(name) {
		s.enqueue(EncodeError(f, ErrUnauthorized))
		return
	}
	if !s.hub.rates.allow(ctx, s.user, "join", Rate{PerSecond: s.hub.cfg.JoinRate, Burst: s.hub.cfg.JoinBurst}) {
		s.enqueue(EncodeError(f, ErrRateLimited))
		return
	}
	if old := s.channels[f.Topic]; old != nil {
		// A second join of a joined topic replaces the first channel, as
		// Phoenix does: the old one is closed.
		s.leaveChannel(old)
		delete(s.channels, f.Topic)
		s.enqueue(AppendFrame(nil, old.joinRef, old.joinRef, f.Topic, EventClose, emptyObject))
	} else if len(s.channels) >= s.hub.cfg.MaxChannels {
		s.enqueue(EncodeError(f, ErrTooManyChannels))
		return
	}
	withHistory := p.Since != nil || (p.History != nil && *p.History > 0)
	joinRef := f.JoinRef
	if joinRef == "" {
		joinRef = f.Ref
	}
	r, m, err := s.hub.join(ctx, s, name, joinRef, withHistory)
	if err != nil {
		s.enqueue(EncodeError(f, asChatError(err)))
		return
	}
	ch := &channel{joinRef: joinRef, room: r, member: m}
	s.channels[f.Topic] = ch
	if !withHistory {
		s.enqueue(EncodeReply(f, nil))
	} else {
		loaded := s.hub.loadHistory(ctx, name, p)
		s.finishJoin(r, m, f, p, loaded)
	}
	ch.presence = s.hub.trackPresence(ctx, s, name, f.Topic, joinRef)
}

// leaveChannel takes s out of ch's room and its presence.
func (s *Session) leaveChannel(ch *channel) {
	s.hub.leave(s, ch.room)
	s.hub.untrackPresence(ch.room.name, ch.presence)
}

// MaxHistory is the most messages a join may ask for.
const MaxHistory = 200

func (s *Session) handleNewMsg(ctx context.Context, f Frame, ch *channel) {
	if !s.grants.CanPost(ch.room.name) {
		// A member that may only read: nothing is published.
		s.hub.countRefusal(ErrUnauthorized)
		s.enqueue(EncodeError(f, ErrUnauthorized))
		return
	}
	// The payload is an object whose "body" is a non-empty string; it is
	// read without encoding/json's reflection, which is slower and grows
	// the reader goroutine's stack.
	raw, ok := stringMember(f.Payload, "body")
	var body string
	if ok && len(raw) > 0 && raw[0] == '"' {
		d := frameDecoder{b: raw}
		body, ok = d.str()
	} else {
		ok = false
	}
	if !ok {
		body = ""
	}
	if e := s.hub.checkBody(body); e != nil {
		s.hub.countRefusal(e)
		s.enqueue(EncodeError(f, e))
		return
	}
	if !s.hub.rates.allow(ctx, s.user, "rate", Rate{PerSecond: s.hub.cfg.UserRate, Burst: s.hub.cfg.UserBurst}) {
		s.hub.countRefusal(ErrRateLimited)
		s.enqueue(EncodeError(f, ErrRateLimited))
		return
	}
	if s.closing() {
		// The session began closing while this push was checked: its
		// reply could not be sent, so it is not published.
		return
	}
	msg, err := s.hub.publish(ctx, ch.room.name, s.user, body)
	if err != nil {
		ce := asChatError(err)
		s.hub.countRefusal(ce)
		s.enqueue(EncodeError(f, ce))
		return
	}
	s.enqueue(encodeIDReply(f, msg.ID))
}

func asChatError(err error) *Error {
	var ce *Error
	if errors.As(err, &ce) {
		return ce
	}
	return ErrUnavailable
}

func isObject(raw json.RawMessage) bool {
	for _, c := range raw {
		switch c {
		case ' ', '\t', '\n', '\r':
			continue
		}
		return c == '{'
	}
	return false
}

// logger returns the hub's logger with the connection's attributes. It is
// built when a line is logged, so an idle connection holds none.
func (s *Session) logger() *slog.Logger {
	return s.hub.log.With("conn_id", s.id, "user_id", s.user)
}

// closing reports whether the session is ending: closed by the server
// (idle, slow consumer, shutdown) or its connection failed.
func (s *Session) closing() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

func (s *Session) markDone() {
	s.closeOnce.Do(func() { close(s.done) })
}

// closeGracefully ends the session with a close frame carrying code and
// reason; the reader then ends when the client answers, or after the close
// timeout. It blocks for the closing handshake (bounded, see Conn.Close);
// it is safe to call from any goroutine, more than once.
func (s *Session) closeGracefully(code StatusCode, reason string) {
	s.markDone()
	s.closeQueue()
	s.conn.Close(code, reason)
}

// handleDeleteMsg answers delete_msg {"id"}: the author takes its own
// message down (Hub.DeleteMessage); it counts against the user's message
// rate.
func (s *Session) handleDeleteMsg(ctx context.Context, f Frame, ch *channel) {
	var p struct {
		ID *string `json:"id"`
	}
	if !isObject(f.Payload) || json.Unmarshal(f.Payload, &p) != nil || p.ID == nil || *p.ID == "" {
		s.enqueue(EncodeError(f, ErrInvalidPayload))
		return
	}
	if !s.hub.rates.allow(ctx, s.user, "rate", Rate{PerSecond: s.hub.cfg.UserRate, Burst: s.hub.cfg.UserBurst}) {
		s.hub.countRefusal(ErrRateLimited)
		s.enqueue(EncodeError(f, ErrRateLimited))
		return
	}
	if err := s.hub.DeleteMessage(ctx, ch.room.name, *p.ID, s.user); err != nil {
		s.enqueue(EncodeError(f, asChatError(err)))
		return
	}
	s.enqueue(EncodeReply(f, nil))
}
