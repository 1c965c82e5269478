package cluster

import (
	"net"
	"slices"
	"strconv"
	"time"

	"github.com/hashicorp/memberlist"
)

type eventKind int

const (
	eventJoin eventKind = iota
	eventUpdate
	eventLeave
)

type memberEvent struct {
	kind    eventKind
	member  Member
	metaErr error
}

// nodeEvent records what memberlist reported in the member table and queues
// the event for the dispatcher. It runs on memberlist's goroutines with
// memberlist's node lock held: it copies what it needs, takes only m.mu
// briefly and never blocks.
func (m *Membership) nodeEvent(kind eventKind, n *memberlist.Node) {
	now := time.Now()
	addr := net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port)))
	w, metaErr := decodeMeta(n.Meta) // decodes from a copy, never keeps n.Meta

	m.mu.Lock()
	mb := m.members[n.Name]
	if mb == nil {
		mb = &Member{Name: n.Name, Local: n.Name == m.cfg.NodeName}
		m.members[n.Name] = mb
	}
	prevLeaving := mb.Leaving
	mb.Addr = addr
	if metaErr == nil {
		mb.Meta = w.NodeMeta
		mb.Leaving = w.Leaving
	}
	switch kind {
	case eventJoin, eventUpdate:
		if kind == eventJoin || mb.State != MemberAlive {
			mb.Since = now
		}
		mb.State = MemberAlive
	case eventLeave:
		// memberlist does not tell delegates whether the node left or was
		// declared dead; the leave intent in its metadata does.
		mb.State = MemberDead
		if prevLeaving || (metaErr == nil && w.Leaving) {
			mb.State = MemberLeft
		}
		mb.Since = now
	}
	ev := memberEvent{kind: kind, member: *mb, metaErr: metaErr}
	m.mu.Unlock()
	m.enqueue(ev)
}

// enqueue hands ev to the dispatcher without blocking. Overflow policy: the
// queue holds eventQueueSize events. When it is full, a join or update event
// is dropped and counted (the member table is already current, so only its
// log line is lost), while a leave event goes to a per-name overflow set,
// bounded by the number of members, so a leave is never lost.
func (m *Membership) enqueue(ev memberEvent) {
	select {
	case m.events <- ev:
		return
	default:
	}
	if ev.kind != eventLeave {
		m.dropped.Add(1)
		return
	}
	m.mu.Lock()
	m.overflow[ev.member.Name] = ev
	m.mu.Unlock()
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

// dispatch logs events and runs OnLeave callbacks, off memberlist's
// goroutines.
func (m *Membership) dispatch() {
	defer m.disp.Done()
	for {
		select {
		case <-m.stopDisp:
			return
		case ev := <-m.events:
			m.handle(ev)
		case <-m.kick:
			m.mu.Lock()
			evs := make([]memberEvent, 0, len(m.overflow))
			for name, ev := range m.overflow {
				evs = append(evs, ev)
				delete(m.overflow, name)
			}
			m.mu.Unlock()
			for _, ev := range evs {
				m.handle(ev)
			}
		}
		if n := m.dropped.Swap(0); n > 0 {
			m.log.Warn("cluster: event queue overflowed; join/update events dropped (member list unaffected)", "dropped", n)
		}
	}
}

func (m *Membership) handle(ev memberEvent) {
	mb := ev.member
	attrs := []any{"member", mb.Name, "addr", mb.Addr}
	if mb.Local {
		attrs = append(attrs, "local", true)
	}
	switch ev.kind {
	case eventJoin:
		m.log.Info("cluster: node joined", append(attrs, "http_addr", mb.Meta.HTTPAddr)...)
		if ev.metaErr != nil {
			m.log.Warn("cluster: node sent undecodable metadata", append(attrs, "err", ev.metaErr)...)
		}
	case eventUpdate:
		m.log.Debug("cluster: node updated", append(attrs, "connections", mb.Meta.Connections,
			"users", mb.Meta.Users, "rooms", mb.Meta.Rooms, "leaving", mb.Leaving)...)
	case eventLeave:
		if mb.State == MemberLeft {
			m.log.Info("cluster: node left", attrs...)
		} else {
			m.log.Warn("cluster: node failed (declared dead)", attrs...)
		}
		if mb.Local {
			return
		}
		m.mu.Lock()
		fns := slices.Clone(m.onLeave)
		m.mu.Unlock()
		for _, fn := range fns {
			select {
			case <-m.stopDisp:
				return
			default:
			}
			fn(mb)
		}
	}
}

var _ memberlist.EventDelegate = (*eventDelegate)(nil)

// eventDelegate forwards memberlist's membership events to the Membership.
type eventDelegate struct{ m *Membership }

func (d *eventDelegate) NotifyJoin(n *memberlist.Node)   { d.m.nodeEvent(eventJoin, n) }
func (d *eventDelegate) NotifyLeave(n *memberlist.Node)  { d.m.nodeEvent(eventLeave, n) }
func (d *eventDelegate) NotifyUpdate(n *memberlist.Node) { d.m.nodeEvent(eventUpdate, n) }
