package chat

import (
	"time"
)

// delivery is a frame held back during a join; msg is the message it
// carries (zero for frames that are not messages).
type delivery struct {
	msg  Message
	data []byte
}

// enqueue queues data for the writer. It never blocks: when the queue is
// over its bounds the session is closed as a slow consumer and data dropped.
func (s *Session) enqueue(data []byte) {
	s.qmu.Lock()
	s.enqueueLocked(data)
	s.unlockAndWrite()
}

// enqueueLocked queues data with qmu held; false means nothing was queued.
func (s *Session) enqueueLocked(data []byte) bool {
	if s.qclosed {
		return false
	}
	if len(s.queue) >= s.hub.cfg.SendQueueLen || s.qbytes+len(data) > s.hub.cfg.SendQueueBytes {
		s.overflowLocked()
		return false
	}
	if s.queue == nil {
		s.queue = make([][]byte, 0, 8)
	}
	s.queue = append(s.queue, data)
	s.qbytes += len(data)
	return true
}

// enqueueReply queues a reply to this connection's own request (a join's
// reply, its presence_state), which may be larger than the byte bound.
func (s *Session) enqueueReply(data []byte) {
	s.qmu.Lock()
	s.enqueueReplyLocked(data)
	s.unlockAndWrite()
}

// enqueueReplyLocked is enqueueLocked for a reply to this connection's
// own request: when it does not fit in the byte bound (a history of 200
// long messages, the presence of a huge room), it is admitted anyway,
// uncounted, as long as no other reply is queued that way. The bound then
// applies to what follows as if the reply were not there, so the joiner
// gets its reply and is not closed as a slow consumer for asking; the
// queue still holds at most the bound and one reply.
func (s *Session) enqueueReplyLocked(data []byte) bool {
	if s.qclosed || s.qbytes+len(data) <= s.hub.cfg.SendQueueBytes || s.oversize > 0 || len(s.queue) >= s.hub.cfg.SendQueueLen {
		return s.enqueueLocked(data)
	}
	s.queue = append(s.queue, data)
	s.oversize = len(data)
	return true
}

// overflowLocked closes the session as a slow consumer, with qmu held.
func (s *Session) overflowLocked() {
	dropped := int64(len(s.queue)) + 1 // the queue and the frame that did not fit
	for _, held := range s.joining {
		dropped += int64(len(held))
	}
	s.qclosed = true
	s.queue, s.qbytes, s.oversize, s.joining = nil, 0, 0, nil
	s.markDone() // the reader stops handling frames now, not when the close is sent
	s.hub.stats.slowConsumers.Add(1)
	s.hub.stats.dropped[dropSlowConsumer].Add(dropped)
	s.logger().Warn("closing slow consumer")
	s.hub.closers.Go(func() { s.closeGracefully(StatusPolicyViolation, "slow consumer") })
}

// unlockAndWrite releases qmu, which the caller holds, and starts the
// writer goroutine when frames are queued and none runs.
func (s *Session) unlockAndWrite() {
	start := !s.writing && len(s.queue) > 0 && s.started
	if start {
		s.writing = true
		s.writers.Add(1)
	}
	s.qmu.Unlock()
	if start {
		go s.writeLoop()
	}
}

// deliver hands s a frame of room r (carrying msg, when it is a message);
// it is held back while r is being joined with history.
func (s *Session) deliver(r *room, msg Message, data []byte) {
	s.qmu.Lock()
	if buf, ok := s.joining[r]; ok {
		if len(buf) >= s.hub.cfg.SendQueueLen {
			s.overflowLocked()
		} else {
			s.joining[r] = append(buf, delivery{msg: msg, data: data})
		}
		s.qmu.Unlock()
		return
	}
	s.enqueueLocked(data)
	s.unlockAndWrite()
}

// startJoin begins holding back r's deliveries. The hub calls it with r.mu
// held, as s becomes a member.
func (s *Session) startJoin(r *room) {
	s.qmu.Lock()
	if !s.qclosed {
		if s.joining == nil {
			s.joining = make(map[*room][]delivery)
		}
		s.joining[r] = nil
	}
	s.qmu.Unlock()
}

// abortJoin drops what was held back for r (s left r).
func (s *Session) abortJoin(r *room) {
	s.qmu.Lock()
	delete(s.joining, r)
	s.qmu.Unlock()
}

// finishJoin answers a join with history: what the room's log (and the
// store) returned, merged with what was delivered to the room since the
// join began (held back), then the held-back frames that are not messages.
// Messages up to the newest in the reply that the relay delivers later are
// skipped, so the client gets each message once and in the room's order.
func (s *Session) finishJoin(r *room, m *member, f Frame, p joinParams, loaded historyLoad) {
	r.mu.Lock()
	s.qmu.Lock()
	held, ok := s.joining[r]
	delete(s.joining, r)
	var heldMsgs []Message
	for _, d := range held {
		if d.msg.ID != "" {
			heldMsgs = append(heldMsgs, d.msg)
		}
	}
	resp := assembleHistory(p, loaded, heldMsgs)
	if n := len(resp.Messages); n > 0 {
		r.update(m, func() { m.floor = resp.Messages[n-1].ID })
	}
	r.mu.Unlock()
	queued := s.enqueueReplyLocked(EncodeReply(f, resp))
	if ok && queued {
		for _, d := range held {
			if d.msg.ID == "" && !s.enqueueLocked(d.data) {
				break
			}
		}
	}
	s.unlockAndWrite()
}

func (s *Session) closeQueue() {
	s.qmu.Lock()
	s.qclosed = true
	s.qmu.Unlock()
}

// writeLoop writes queued frames until the queue is empty or the
// connection fails.
func (s *Session) writeLoop() {
	defer s.writers.Done()
	var batch [][]byte
	for {
		s.qmu.Lock()
		if len(s.queue) == 0 {
			s.writing = false
			s.queue = nil // an idle connection keeps no buffer
			s.qmu.Unlock()
			return
		}
		// The queue and the batch swap places: frames queued during the
		// write go to the other one.
		batch, s.queue = s.queue, batch[:0]
		s.qbytes, s.oversize = 0, 0
		s.qmu.Unlock()
		if !s.flush(batch) {
			s.qmu.Lock()
			s.writing, s.qclosed = false, true
			s.queue, s.qbytes, s.oversize = nil, 0, 0
			s.qmu.Unlock()
			return
		}
		clear(batch)
	}
}

// flush writes batch under one write deadline, in as few system calls as
// its size allows; false means the connection failed and the session is
// ending.
func (s *Session) flush(batch [][]byte) bool {
	if len(batch) == 0 {
		return true
	}
	if err := s.conn.WriteBatch(time.Now().Add(s.hub.cfg.WriteTimeout), batch...); err != nil {
		s.logger().Debug("write failed", "err", err)
		s.markDone()
		s.conn.CloseNow()
		return false
	}
	return true
}
