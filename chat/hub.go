package chat

import (
	"context"
	"errors"
	"hash/maphash"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// Options are the hub's collaborators. Nil fields get the single-node
// defaults.
type Options struct {
	// Logger receives the hub's logs. Nil: discard.
	Logger *slog.Logger
	// Broker keeps the rooms' logs and relays publications. NewHub runs
	// it (Broker.Run), registering the hub as its handler; the caller
	// closes it after the hub's Shutdown. Nil: a MemoryBroker.
	Broker Broker
	// Sink persists accepted messages. Nil: DiscardSink.
	Sink MessageSink
	// History answers the join options "history" and "since" for what is
	// older than the rooms' logs. Nil: only the logs answer.
	History History
	// Presence tracks who is in each room; a PresenceRunner is run by
	// NewHub, which registers itself for its events. Nil: a
	// MemoryPresence.
	Presence Presence
	// RateLimiter holds the per-user message and join buckets. Nil: a
	// MemoryRateLimiter. When it fails, the hub limits with buckets of its
	// own (see rateTimeout).
	RateLimiter RateLimiter
}

var (
	_ RelayEvents    = (*Hub)(nil)
	_ PresenceEvents = (*Hub)(nil)
)

// Hub owns the rooms and sessions of one node.
type Hub struct {
	cfg      Config
	log      *slog.Logger
	broker   Broker
	sink     MessageSink
	history  History
	presence Presence

	presenceDiffs *presenceBatcher
	rates         *rateLimits

	seed   maphash.Seed
	shards [roomShards]roomShard

	usersMu sync.Mutex
	users   map[string]*userState

	sessMu   sync.Mutex
	sessions map[*Session]struct{}
	sessWG   sync.WaitGroup
	draining atomic.Bool

	// Publishes whose outcome is settled in the background (settleLater):
	// unsettled counts them (guarded by sessMu), settling waits for them,
	// stop ends them at shutdown.
	unsettled int
	settling  sync.WaitGroup
	stop      context.Context
	stopAll   context.CancelFunc

	// idMu guards maxID, the greatest message id this node has published
	// or received: new ids are greater, so a room's ids keep increasing
	// when its log was lost (Redis restarted empty or was flushed).
	idMu  sync.Mutex
	maxID string

	// The control channel (hub_control.go): its subscription loop, the
	// goroutines closing disconnected users' connections, and the users
	// disconnected recently (guarded by sessMu).
	stopControlSub    context.CancelFunc
	controlWG         sync.WaitGroup
	controlSubscribed atomic.Bool
	closers           sync.WaitGroup
	kicks             map[string]kick
	kickOrder         []kickRef
	kickSeq           uint64

	stats hubCounters
}

// userState is what the node keeps per connected user.
type userState struct {
	conns int
}

// NewHub returns a hub ready to serve connections.
func NewHub(cfg Config, opts Options) (*Hub, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	h := &Hub{
		cfg:      cfg,
		log:      opts.Logger,
		sink:     opts.Sink,
		history:  opts.History,
		presence: opts.Presence,
		seed:     maphash.MakeSeed(),
		users:    make(map[string]*userState),
		sessions: make(map[*Session]struct{}),
		kicks:    make(map[string]kick),
	}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	if h.sink == nil {
		h.sink = DiscardSink{}
	}
	if h.presence == nil {
		h.presence = NewMemoryPresence()
	}
	h.stop, h.stopAll = context.WithCancel(context.Background())
	h.presenceDiffs = newPresenceBatcher(h, cfg.PresenceInterval)
	if opts.RateLimiter == nil {
		opts.RateLimiter = NewMemoryRateLimiter()
	}
	h.rates = newRateLimits(h, opts.RateLimiter)
	for i := range h.shards {
		h.shards[i].rooms = make(map[string]*room)
	}
	h.broker = opts.Broker
	if h.broker == nil {
		h.broker = NewMemoryBroker()
	}
	if err := h.broker.Run(h.deliver, h); err != nil {
		return nil, err
	}
	if r, ok := h.presence.(PresenceRunner); ok {
		if err := r.Run(h); err != nil {
			return nil, err
		}
	}
	var controlCtx context.Context
	controlCtx, h.stopControlSub = context.WithCancel(context.Background())
	h.controlWG.Go(func() { h.subscribeControl(controlCtx) })
	return h, nil
}

// Config returns the hub's configuration with defaults filled in.
func (h *Hub) Config() Config { return h.cfg }

// Draining reports whether Shutdown has begun.
func (h *Hub) Draining() bool { return h.draining.Load() }

func (h *Hub) acquireUser(user string) *userState {
	h.usersMu.Lock()
	defer h.usersMu.Unlock()
	u := h.users[user]
	if u == nil {
		u = &userState{}
		h.users[user] = u
	}
	u.conns++
	return u
}

func (h *Hub) releaseUser(user string) {
	h.usersMu.Lock()
	defer h.usersMu.Unlock()
	if u := h.users[user]; u != nil {
		u.conns--
		if u.conns <= 0 {
			delete(h.users, user)
		}
	}
}

// ConnInfo describes an accepted connection.
type ConnInfo struct {
	// ID identifies the connection in logs (the request id).
	ID string
	// UserID is the authenticated user.
	UserID string
	// AuthorizedAt is when the connection's token was checked. A
	// connection checked before a Disconnect of its user reached this node
	// is closed as it starts. Zero: no such check.
	AuthorizedAt time.Time
	// Grants are the rooms the connection may join and post in; the zero
	// Grants allows none.
	Grants Grants
}

// ErrDraining is returned by ServeConn once Shutdown has begun.
var ErrDraining = errors.New("chat: node is draining")

// ErrDisconnected is returned by ServeConn for a connection whose user was
// disconnected after its token was checked (see ConnInfo.AuthorizedAt).
var ErrDisconnected = errors.New("chat: user disconnected")

// ServeConn runs the protocol on conn until the connection ends, the
// context is cancelled or the hub shuts down. It owns conn and closes it;
// info is copied, not kept.
//
// The goroutine that calls it stays parked under an idle connection for
// the connection's life, at the depth of this call chain: a stack deeper
// than about 3 KB there doubles to 8 KB for good. So ServeConn, like
// Session.run and Session.readLoop beneath it, keeps its own frame small
// and leaves the rest to helpers that have returned by then.
func (h *Hub) ServeConn(ctx context.Context, conn Conn, info *ConnInfo) error {
	s, err := h.open(conn, info)
	if err != nil {
		return err
	}
	err = s.run(ctx)
	h.closed(s)
	return err
}

// open registers a session for conn, or closes conn and says why it is
// refused.
//
//go:noinline
func (h *Hub) open(conn Conn, info *ConnInfo) (*Session, error) {
	s := newSession(h, conn, *info)
	h.sessMu.Lock()
	if h.draining.Load() {
		h.sessMu.Unlock()
		conn.Close(StatusGoingAway, "server shutting down")
		conn.CloseNow()
		return nil, ErrDraining
	}
	if k, ok := h.kickedLocked(*info); ok {
		h.sessMu.Unlock()
		conn.Close(k.code, k.reason)
		conn.CloseNow()
		return nil, ErrDisconnected
	}
	h.sessions[s] = struct{}{}
	h.sessWG.Add(1)
	h.sessMu.Unlock()
	h.stats.connections.Add(1)
	h.stats.connects.Add(1)
	return s, nil
}

// closed unregisters s once its run has ended.
//
//go:noinline
func (h *Hub) closed(s *Session) {
	h.stats.connections.Add(-1)
	h.sessMu.Lock()
	delete(h.sessions, s)
	h.sessMu.Unlock()
	h.sessWG.Done()
}

// Shutdown stops the hub: new connections are refused, open ones are closed
// with status 1001 (going away) so clients reconnect elsewhere, and Shutdown
// waits for them to end. When ctx ends first, the remaining connections are
// dropped and ctx.Err() is returned. Shutdown may be called more than once.
func (h *Hub) Shutdown(ctx context.Context) error {
	h.sessMu.Lock()
	h.draining.Store(true)
	sessions := make([]*Session, 0, len(h.sessions))
	for s := range h.sessions {
		sessions = append(sessions, s)
	}
	h.sessMu.Unlock()

	// Close with bounded concurrency: each close handshake may wait on a
	// slow peer.
	sem := make(chan struct{}, 64)
	for _, s := range sessions {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		go func() {
			defer func() { <-sem }()
			s.closeGracefully(StatusGoingAway, "server shutting down")
		}()
	}

	done := make(chan struct{})
	go func() {
		h.sessWG.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		h.sessMu.Lock()
		for s := range h.sessions {
			s.conn.CloseNow()
		}
		h.sessMu.Unlock()
		<-done
	}
	// Background settling gets a moment (Redis may be down: it would take
	// forever), then is cut off; the messages stay in their logs, see
	// settleLater.
	settled := make(chan struct{})
	go func() {
		h.settling.Wait()
		close(settled)
	}()
	grace := time.NewTimer(settleGrace)
	select {
	case <-settled:
	case <-ctx.Done():
	case <-grace.C:
	}
	grace.Stop()
	h.stopAll()
	<-settled
	h.stopControl()
	// The leaves of the closed connections reach the other nodes now.
	h.presenceDiffs.close()
	return ctx.Err()
}
