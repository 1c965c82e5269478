package cluster

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// relayShard is one pub/sub connection of a RedisBroker and the state of
// the rooms it carries: the connection to the one Redis server, or the one
// to a master of a Redis Cluster, which carries the rooms of that master's
// slots (sharded pub/sub: SSUBSCRIBE, and SPUBLISH by the publish script).
// A shard fails and recovers on its own: while one master is down only its
// rooms are unavailable.
//
// Two goroutines serve it: the sync loop alone writes subscription changes,
// one round at a time; the receive loop alone reads, and replaces the
// connection when it fails.
type relayShard struct {
	b       *RedisBroker
	addr    string // the Redis server or master, for logs and errors ("": not known)
	network string // its network, for the cut-off probe ("": no probe)
	sharded bool   // SSUBSCRIBE, one channel per command (a Redis Cluster refuses channels of several slots in one)
	newPS   func() *redis.PubSub

	wake chan struct{} // capacity 1: asks the sync loop for a round

	// down is set while the pub/sub connection is failing.
	down atomic.Bool

	// Guarded by b.mu, which is never held across network I/O.
	ps    *redis.PubSub
	dirty map[string]struct{} // rooms whose subscription may need a change
	// unsubscribing counts the SUNSUBSCRIBEs written per channel whose
	// confirmation has not been read: a confirmation beyond them is
	// Redis's own (the channel's slot moved to another master).
	unsubscribing map[string]int
	// Rounds: the sync loop numbers each batch of subscription changes it
	// writes and ends it with PING "<barrierPrefix><round>". Redis runs a
	// connection's commands in order, so the pong proves every change of
	// that round (and before) is in effect.
	round     uint64        // the latest round the sync loop started
	acked     uint64        // the latest round whose pong arrived
	failed    uint64        // the latest round that could not be written
	failedErr error         // why round failed
	changed   chan struct{} // closed and replaced when acked, failed or closed change
}

// barrierPrefix starts the payload of the sync loop's pings.
const barrierPrefix = "chatd-barrier:"

// subscribeBatch bounds the channels of one SUBSCRIBE or UNSUBSCRIBE.
const subscribeBatch = 512

func newRelayShard(b *RedisBroker, addr, network string, sharded bool, newPS func() *redis.PubSub) *relayShard {
	return &relayShard{
		b: b, addr: addr, network: network, sharded: sharded, newPS: newPS,
		wake:          make(chan struct{}, 1),
		ps:            newPS(), // no channels: no connection yet
		dirty:         make(map[string]struct{}),
		unsubscribing: make(map[string]int),
		changed:       make(chan struct{}),
	}
}

// start starts the shard's goroutines, which b.wg waits for. b.mu must be
// held, with b running and not closed.
func (s *relayShard) start() {
	s.b.wg.Add(2)
	go s.receiveLoop()
	go s.syncLoop()
}

// where names the shard in errors and logs.
func (s *relayShard) where() string {
	if s.sharded {
		return "redis master " + s.addr
	}
	return "redis"
}

// downErr is the error of a publication refused while the shard fails.
func (s *relayShard) downErr() error {
	if s.sharded {
		return fmt.Errorf("cluster: %s is unreachable: its rooms are unavailable: %w", s.where(), errRelayDown)
	}
	return errRelayDown
}

// signal asks the sync loop for a round, without blocking.
func (s *relayShard) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// notifyLocked wakes everyone waiting for a change of acked, failed or
// closed. b.mu must be held.
func (s *relayShard) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// waitRound waits until round need (or a later one) is acknowledged by
// Redis; it fails when such a round failed first, the broker closes or ctx
// ends.
func (s *relayShard) waitRound(ctx context.Context, need uint64) error {
	b := s.b
	for {
		b.mu.Lock()
		acked, failed, failedErr, closed, changed := s.acked, s.failed, s.failedErr, b.closed, s.changed
		b.mu.Unlock()
		switch {
		case acked >= need:
			return nil
		case closed:
			return ErrBrokerClosed
		case failed >= need:
			return failedErr
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// catchUp waits until the pub/sub connection has delivered to the handler
// every publication Redis made before the call: a barrier round started
// after it is acknowledged.
//
// A broker not running yet delivers nothing, so there is nothing to catch
// up on. A round acknowledged on a pub/sub connection just restored
// proves nothing about what was published while it was down: the hub's
// Resync covers that.
func (s *relayShard) catchUp(ctx context.Context) error {
	b := s.b
	b.mu.Lock()
	if !b.running {
		b.mu.Unlock()
		return nil
	}
	need := s.round + 1
	b.mu.Unlock()
	s.signal()
	return s.waitRound(ctx, need)
}

// syncLoop brings the pub/sub connection's subscriptions in line with the
// rooms' counts, one round at a time, when asked and every PingInterval
// (which also keeps an idle connection proven alive). It alone writes
// subscription changes, so a room's commands reach Redis in the order its
// counts changed.
func (s *relayShard) syncLoop() {
	b := s.b
	defer b.wg.Done()
	tick := time.NewTicker(b.cfg.PingInterval)
	defer tick.Stop()
	for {
		select {
		case <-b.done:
			return
		case <-s.wake:
		case <-tick.C:
		}
		s.syncRound()
	}
}

// syncRound runs one round: it writes the subscription changes collected
// since the last round, then the round's barrier ping.
func (s *relayShard) syncRound() {
	b := s.b
	var subs, unsubs []string
	b.mu.Lock()
	s.round++
	round, ps := s.round, s.ps
	for name := range s.dirty {
		r := b.rooms[name]
		switch {
		case r == nil || r.shard != s:
		case r.count > 0 && !r.issued:
			subs = append(subs, b.channel(name))
			r.issued = true
		case r.count == 0 && r.issued:
			unsubs = append(unsubs, b.channel(name))
			delete(b.rooms, name)
		case r.count == 0:
			delete(b.rooms, name)
		}
	}
	clear(s.dirty)
	if s.sharded {
		for _, ch := range unsubs {
			s.unsubscribing[ch]++
		}
	}
	b.mu.Unlock()

	// A failed write loses no room: the receive loop sees the broken
	// connection, replaces it and subscribes every room again. It only
	// fails this round's waiters.
	ctx, cancel := context.WithTimeout(context.Background(), b.cfg.OpTimeout)
	defer cancel()
	var err error
	if s.sharded {
		for _, ch := range subs {
			if err = ps.SSubscribe(ctx, ch); err != nil {
				break
			}
		}
		for _, ch := range unsubs {
			if err != nil {
				break
			}
			err = ps.SUnsubscribe(ctx, ch)
		}
	} else {
		for chunk := range chunks(subs) {
			err = errors.Join(err, ps.Subscribe(ctx, chunk...))
		}
		for chunk := range chunks(unsubs) {
			err = errors.Join(err, ps.Unsubscribe(ctx, chunk...))
		}
	}
	if err == nil {
		err = ps.Ping(ctx, barrierPrefix+strconv.FormatUint(round, 10))
	}
	if err != nil {
		if b.isClosed.Load() {
			return
		}
		b.log.Debug("redis broker: subscription round failed", "redis", s.addr, "round", round, "err", err)
		b.mu.Lock()
		// Its rooms are written again by a later round (a repeated
		// subscription is harmless).
		for _, ch := range subs {
			if room, ok := b.roomOf(ch); ok {
				if r := b.rooms[room]; r != nil && r.shard == s && r.issued {
					r.issued = false
					s.dirty[room] = struct{}{}
				}
			}
		}
		if round > s.failed {
			s.failed, s.failedErr = round, err
			s.notifyLocked()
		}
		b.mu.Unlock()
	}
}

// chunks splits s into slices of at most subscribeBatch elements.
func chunks(s []string) func(yield func([]string) bool) {
	return func(yield func([]string) bool) {
		for len(s) > 0 {
			n := min(len(s), subscribeBatch)
			if !yield(s[:n]) {
				return
			}
			s = s[n:]
		}
	}
}

// replace closes the failed pub/sub connection old and puts a new one,
// not connected yet, in its place; every room the shard carries is to be
// subscribed again on it (by the sync loop: see signal). It returns nil
// once the broker is closed.
func (s *relayShard) replace(old *redis.PubSub) *redis.PubSub {
	b := s.b
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	ps := s.newPS()
	s.ps = ps
	for name, r := range b.rooms {
		if r.shard == s {
			r.issued = false
			s.dirty[name] = struct{}{}
		}
	}
	clear(s.unsubscribing)
	b.mu.Unlock()
	old.Close()
	return ps
}

// receiveLoop reads the pub/sub connection and hands each publication of a
// subscribed room to the handler, in the order Redis sent them. A read
// that times out keeps the connection (a silent Redis may only be busy);
// after three PingIntervals of silence the loop tells a stall from a
// cut-off (see silent). An error of the connection itself (Redis closed
// it, restarted, the network reset it, a master refused a channel it does
// not serve) is a failure: the connection is replaced, its rooms are
// subscribed again on the new one, the loop pauses with backoff between
// attempts, and the hub's Resync is called for the shard's rooms once the
// new connection delivers.
func (s *relayShard) receiveLoop() {
	b := s.b
	defer b.wg.Done()
	b.mu.Lock()
	ps := s.ps
	b.mu.Unlock()
	failures := 0
	heard := time.Now() // when the connection last delivered, or was replaced
	stalled := false
	for {
		msg, err := ps.ReceiveTimeout(context.Background(), b.cfg.PingInterval)
		if err != nil && isTimeout(err) && !b.isClosed.Load() {
			quiet := time.Since(heard)
			if quiet < 3*b.cfg.PingInterval {
				continue
			}
			if err = s.silent(quiet); err == nil {
				if !stalled {
					stalled = true
					b.log.Warn("redis broker: Redis accepts connections but has not answered; keeping the pub/sub connection", "redis", s.addr, "silent_for", quiet.Round(time.Millisecond).String())
				}
				continue
			}
		}
		if err != nil {
			if b.isClosed.Load() {
				return
			}
			failures++
			stalled = false
			if failures == 1 {
				s.down.Store(true)
				b.log.Warn("redis broker: pub/sub connection failed; reconnecting", "redis", s.addr, "err", err)
			}
			if s.sharded {
				s.remap()
			}
			if ps = s.replace(ps); ps == nil {
				return
			}
			// The pong of a round written to the lost connection will
			// never come: a new round settles its waiters either way.
			s.signal()
			if !b.pause(failures) {
				return
			}
			heard = time.Now()
			continue
		}
		heard = time.Now()
		if stalled {
			stalled = false
			b.log.Info("redis broker: Redis answers again; the pub/sub connection was kept, nothing to resync", "redis", s.addr)
		}
		if failures > 0 {
			b.reconnects.Add(1)
			s.down.Store(false)
			b.log.Info("redis broker: pub/sub connection restored", "redis", s.addr, "failed_attempts", failures)
			failures = 0
			s.signal()
			if b.events != nil {
				b.events.Resync(s.carries)
			}
		}
		switch m := msg.(type) {
		case *redis.Message:
			b.deliver(s, m)
		case *redis.Pong:
			if p, ok := strings.CutPrefix(m.Payload, barrierPrefix); ok {
				if round, err := strconv.ParseUint(p, 10, 64); err == nil {
					s.ack(round)
				}
			}
		case *redis.Subscription:
			// Confirmations are covered by the rounds' pongs. A master
			// that unsubscribes a channel by itself no longer serves its
			// slot: the room follows the slot, the connection stays.
			if s.movedAway(m) {
				b.log.Info("redis broker: a room's slot moved to another master", "redis", s.addr, "channel", m.Channel)
				s.remap()
			}
		}
	}
}

// remap moves the rooms whose slot another master serves now (a replica
// promoted after its master failed, a slot migrated) to the pub/sub
// connection of that master, and once they are subscribed there has their
// members resync: what was published on the new master meanwhile never
// reached this node. Rooms whose master is not known stay, for the next
// attempt.
func (s *relayShard) remap() {
	b := s.b
	ctx, cancel := context.WithTimeout(context.Background(), b.cfg.OpTimeout)
	defer cancel()
	// ForEachMaster reloads the slot map first, and waits for it
	// (ReloadState only schedules a reload).
	_ = b.cluster.ForEachMaster(ctx, func(context.Context, *redis.Client) error { return nil })
	b.mu.Lock()
	var rooms []string
	for name, r := range b.rooms {
		if r.shard == s {
			rooms = append(rooms, name)
		}
	}
	b.mu.Unlock()
	moved := make(map[*relayShard][]string)
	for _, room := range rooms {
		node, err := b.cluster.MasterForKey(ctx, b.channel(room))
		if err != nil || node.Options().Addr == s.addr {
			continue
		}
		sh, err := b.shardAt(node)
		if err != nil {
			return
		}
		moved[sh] = append(moved[sh], room)
	}
	if len(moved) == 0 {
		return
	}
	need := make(map[*relayShard]uint64, len(moved))
	b.mu.Lock()
	for sh, names := range moved {
		need[sh] = sh.round + 1
		for _, room := range names {
			if r := b.rooms[room]; r != nil && r.shard == s {
				r.shard, r.issued, r.ready = sh, false, sh.round+1
				sh.dirty[room] = struct{}{}
			}
		}
	}
	b.mu.Unlock()
	for sh, names := range moved {
		sh.signal()
		b.log.Info("redis broker: rooms moved to another master", "from", s.addr, "to", sh.addr, "rooms", len(names))
		if err := sh.waitRound(ctx, need[sh]); err != nil {
			b.log.Warn("redis broker: rooms moved to another master not subscribed yet; resyncing them anyway", "to", sh.addr, "err", err)
		}
		if b.events != nil {
			set := make(map[string]struct{}, len(names))
			for _, room := range names {
				set[room] = struct{}{}
			}
			b.events.Resync(func(room string) bool { _, ok := set[room]; return ok })
		}
	}
}

// movedAway reports whether m is a master's own SUNSUBSCRIBE of a channel
// this shard still carries (the channel's slot moved): not the
// confirmation of one the sync loop wrote.
func (s *relayShard) movedAway(m *redis.Subscription) bool {
	if !s.sharded || m.Kind != "sunsubscribe" {
		return false
	}
	b := s.b
	b.mu.Lock()
	defer b.mu.Unlock()
	if n := s.unsubscribing[m.Channel]; n > 0 {
		if n == 1 {
			delete(s.unsubscribing, m.Channel)
		} else {
			s.unsubscribing[m.Channel] = n - 1
		}
		return false
	}
	room, ok := b.roomOf(m.Channel)
	if !ok {
		return false
	}
	r := b.rooms[room]
	return r != nil && r.shard == s && r.issued
}

// carries reports whether room's subscription is this shard's: the rooms
// a Resync after the shard's outage concerns.
func (s *relayShard) carries(room string) bool {
	b := s.b
	b.mu.Lock()
	defer b.mu.Unlock()
	r := b.rooms[room]
	return r != nil && r.shard == s
}

// ack records that round's pong arrived.
func (s *relayShard) ack(round uint64) {
	b := s.b
	b.mu.Lock()
	if round > s.acked {
		s.acked = round
		s.notifyLocked()
	}
	b.mu.Unlock()
}

// silent decides what a pub/sub connection silent for quiet means: nil
// for a stall (keep the connection), an error for a cut-off (replace it).
//
// Redis answers nothing while it runs a long command (DEBUG SLEEP, a slow
// script) or while its process is stopped, yet its kernel keeps the TCP
// connection alive and buffers what we send: once Redis runs again it
// answers every ping and delivers every publication, so replacing the
// connection would only lose what was published meanwhile and make every
// client resync. A cut-off (Redis's host gone, the network partitioned)
// shows as an address that no longer accepts a TCP connection; closing,
// restarting or killing the connection shows as a read error, not as
// silence. The probe is a bare TCP connect (no TLS, no command), which the
// kernel completes without Redis's event loop. Silence longer than
// StallTimeout is taken for a cut-off even so, and so is any silence when
// the address is not known.
func (s *relayShard) silent(quiet time.Duration) error {
	b := s.b
	if quiet >= b.cfg.StallTimeout {
		return fmt.Errorf("cluster: redis broker: pub/sub connection silent for %s (StallTimeout)", quiet.Round(time.Millisecond))
	}
	if s.network == "" {
		return nil
	}
	d := net.Dialer{Timeout: b.cfg.OpTimeout}
	nc, err := d.DialContext(context.Background(), s.network, s.addr)
	if err != nil {
		return fmt.Errorf("cluster: redis broker: pub/sub connection silent for %s and Redis unreachable: %w", quiet.Round(time.Millisecond), err)
	}
	nc.Close()
	return nil
}

// isTimeout reports whether err is a read that timed out (not a dial: a
// new connection that cannot be opened is a failure).
func isTimeout(err error) bool {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Op == "dial" {
		return false
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// pause sleeps before the next attempt after failures consecutive ones:
// MinBackoff doubled per failure up to MaxBackoff, minus up to half of it
// in jitter. It reports false when the broker closed meanwhile.
func (b *RedisBroker) pause(failures int) bool {
	d := b.cfg.MinBackoff
	for i := 1; i < failures && d < b.cfg.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, b.cfg.MaxBackoff)
	if d > 1 {
		d -= rand.N(d / 2)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-b.done:
		return false
	case <-t.C:
		return true
	}
}
