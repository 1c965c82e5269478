package chat

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
)

// Config holds the hub's settings. The zero value of each field picks the
// default given in its comment.
type Config struct {
	// NodeName names this node in logs and presence. Zero: "local".
	NodeName string
	// MaxBody is the most characters (not bytes) a message body may have.
	// Zero: 4000.
	MaxBody int
	// MaxChannels is the most topics one connection may join. Zero: 100.
	MaxChannels int
	// ReadLimit is the largest frame read, in bytes; a larger one closes the
	// connection with status 1009. Zero: 64 KiB.
	ReadLimit int64
	// IdleTimeout closes a connection that sent no frame for that long.
	// Zero: 60 s.
	IdleTimeout time.Duration
	// WriteTimeout bounds every write to a connection. Zero: 10 s.
	WriteTimeout time.Duration
	// SendQueueLen is the most frames queued for one connection; a
	// connection that falls further behind is closed as a slow consumer.
	// Zero: 1024.
	SendQueueLen int
	// SendQueueBytes bounds the bytes queued for one connection the same
	// way; one reply to the connection's own join (its history, the room's
	// presence_state) is admitted beyond it. Zero: 4 MiB.
	SendQueueBytes int
	// UserRate is how many messages per second one user may push, across
	// its connections (to every node, with a distributed RateLimiter) and
	// its reconnects. Zero: no rate limit.
	UserRate float64
	// UserBurst is the token bucket's size. Zero: 20.
	UserBurst int
	// JoinRate is how many joins per second one user may make, in a
	// bucket of its own, the same way; a refused join gets rate_limited.
	// Keep it generous: after a relay cut-off every channel rejoins at
	// once. Zero: no join limit.
	JoinRate float64
	// JoinBurst is the join bucket's size. Zero: 100.
	JoinBurst int
	// RelayTimeout bounds one Publish to the broker, and each attempt to
	// settle one whose outcome is unknown. Zero: 5 s.
	RelayTimeout time.Duration
	// ResolveTimeout bounds how long, from the start of its publish, a push
	// whose outcome is unknown (Redis timed out or the connection broke)
	// waits for the room's log to settle it; past it the sender is told
	// "outcome unknown" and the node goes on settling it in the
	// background (an accepted message is then stored). Keep it below
	// clients' push timeout (the phoenix client's is 10 s). Zero: 9 s.
	ResolveTimeout time.Duration
	// PresenceInterval is how long presence changes of a room are collected
	// into one presence_diff. Zero: 100 ms.
	PresenceInterval time.Duration
}

func (c *Config) setDefaults() error {
	if c.NodeName == "" {
		c.NodeName = "local"
	}
	if c.MaxBody == 0 {
		c.MaxBody = 4000
	}
	if c.MaxChannels == 0 {
		c.MaxChannels = 100
	}
	if c.ReadLimit == 0 {
		c.ReadLimit = 64 << 10
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = 60 * time.Second
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = 10 * time.Second
	}
	if c.SendQueueLen == 0 {
		c.SendQueueLen = 1024
	}
	if c.SendQueueBytes == 0 {
		c.SendQueueBytes = 4 << 20
	}
	if c.UserBurst == 0 {
		c.UserBurst = 20
	}
	if c.JoinBurst == 0 {
		c.JoinBurst = 100
	}
	if c.RelayTimeout == 0 {
		c.RelayTimeout = 5 * time.Second
	}
	if c.ResolveTimeout == 0 {
		c.ResolveTimeout = 9 * time.Second
	}
	if c.PresenceInterval == 0 {
		c.PresenceInterval = 100 * time.Millisecond
	}
	switch {
	case c.MaxBody < 0, c.MaxChannels < 0, c.ReadLimit < 0, c.SendQueueLen < 0, c.SendQueueBytes < 0, c.UserBurst < 0, c.JoinBurst < 0:
		return errors.New("chat: limits must not be negative")
	case c.UserRate < 0, c.JoinRate < 0:
		return errors.New("chat: user and join rates must not be negative")
	case c.IdleTimeout < 0, c.WriteTimeout < 0, c.RelayTimeout < 0, c.ResolveTimeout < 0, c.PresenceInterval < 0:
		return errors.New("chat: timeouts must not be negative")
	}
	return nil
}

// Options are the hub's collaborators. Nil fields get the single-node
// defaults.
type Options struct {
	// Logger receives the hub's logs. Nil: discard.
	Logger *slog.Logger
	// NewBroker builds the broker, given the handler it must deliver to.
	// Nil: a MemoryBroker.
	NewBroker func(BrokerHandler) Broker
	// Sink persists accepted messages. Nil: DiscardSink.
	Sink MessageSink
	// History answers the join options "history" and "since" for what is
	// older than the rooms' logs. Nil: only the logs answer.
	History History
	// Presence tracks who is in each room. Nil: a MemoryPresence.
	Presence Presence
	// RateLimiter holds the per-user message and join buckets. Nil: a
	// MemoryRateLimiter. When it fails, the hub limits with buckets of its
	// own (see rateTimeout).
	RateLimiter RateLimiter
}

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

const roomShards = 32

type roomShard struct {
	mu    sync.Mutex
	rooms map[string]*room
}

// room is the local membership of one room. mu guards members and is held
// for a whole fan-out, so every member is handed a room's frames in one
// order; fan-out only enqueues, it never does network I/O.
type room struct {
	name  string
	topic string
	// subscribed is closed once the broker subscription of this room is
	// live; subErr tells whether it failed.
	subscribed chan struct{}
	subErr     error

	mu      sync.Mutex
	members map[*Session]*member
	// sessions and all are the members as slices, for fan-out; nil when
	// stale.
	sessions []*Session
	all      []*member
	// special counts the members whose deliveries need a check (a floor
	// is set, or the channel errored): while it is zero, fan-out is a
	// plain loop over sessions.
	special int
}

// special reports whether m's deliveries need a check; r.mu is held.
func (m *member) special() bool { return m.floor != "" || m.errored.Load() }

// update applies change to m, keeping r.special right; r.mu is held.
func (r *room) update(m *member, change func()) {
	was := m.special()
	change()
	switch now := m.special(); {
	case now && !was:
		r.special++
	case was && !now:
		r.special--
	}
}

// member is one session's channel in a room, as fan-out sees it; its
// fields are guarded by the room's mu, but errored, which its session reads
// too.
type member struct {
	s       *Session
	joinRef string
	// floor, when set, is the newest message a join's reply held: later
	// deliveries of messages up to it are skipped (the reply had them),
	// until one beyond it arrives.
	floor string
	// errored is set once the channel was sent phx_error: it gets no more
	// broadcasts, and the client rejoins it (Phoenix's errored state).
	errored atomic.Bool
}

// userState is what the node keeps per connected user.
type userState struct {
	conns int
}

type hubCounters struct {
	connections   atomic.Int64
	connects      atomic.Int64
	messagesIn    atomic.Int64
	deliveries    atomic.Int64
	slowConsumers atomic.Int64
	// resolved counts publishes whose unknown outcome the log settled.
	resolved atomic.Int64
	// refused counts pushes answered with an error, by refusal.
	refused [numRefusals]atomic.Int64
	// dropped counts frames not delivered, by drop.
	dropped [numDrops]atomic.Int64
}

// Push refusals, the label values of Stats.Refused.
const (
	refusalRate = iota
	refusalBodyTooLong
	refusalInvalid
	refusalOverloaded
	refusalUnavailable
	refusalUnauthorized
	numRefusals
)

var refusalNames = [numRefusals]string{"rate", "body_too_long", "invalid", "overloaded", "unavailable", "unauthorized"}

// Frame drops, the label values of Stats.Dropped.
const (
	dropSlowConsumer = iota // queued for a connection closed as too slow
	dropInvalidRelay        // an undecodable frame from the relay
	numDrops
)

var dropNames = [numDrops]string{"slow_consumer", "invalid_relay_frame"}

// countRefusal counts a push answered with e.
func (h *Hub) countRefusal(e *Error) {
	i := refusalInvalid
	switch e {
	case ErrRateLimited:
		i = refusalRate
	case ErrBodyTooLong:
		i = refusalBodyTooLong
	case ErrOverloaded:
		i = refusalOverloaded
	case ErrUnavailable:
		i = refusalUnavailable
	case ErrUnauthorized:
		i = refusalUnauthorized
	}
	h.stats.refused[i].Add(1)
}

// Stats is a snapshot of the hub's counters.
type Stats struct {
	Connections   int64 `json:"connections"`
	Users         int   `json:"users"`
	Rooms         int   `json:"rooms"`
	MessagesIn    int64 `json:"messages_in"`
	Deliveries    int64 `json:"deliveries"`
	SlowConsumers int64 `json:"slow_consumers"`
	// Connects counts connections accepted since start.
	Connects int64 `json:"connects"`
	// Refused counts pushes refused, by reason: rate, body_too_long,
	// invalid, overloaded, unavailable.
	Refused map[string]int64 `json:"refused"`
	// Dropped counts frames not delivered, by reason: slow_consumer,
	// invalid_relay_frame.
	Dropped map[string]int64 `json:"dropped"`
}

// NewHub returns a hub ready to serve connections.
func NewHub(cfg Config, opts Options) (*Hub, error) {
	if err := cfg.setDefaults(); err != nil {
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
	if opts.NewBroker != nil {
		h.broker = opts.NewBroker(h.deliver)
	} else {
		h.broker = NewMemoryBroker(h.deliver)
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

// Stats returns the hub's counters.
func (h *Hub) Stats() Stats {
	s := Stats{
		Connections:   h.stats.connections.Load(),
		MessagesIn:    h.stats.messagesIn.Load(),
		Deliveries:    h.stats.deliveries.Load(),
		SlowConsumers: h.stats.slowConsumers.Load(),
		Connects:      h.stats.connects.Load(),
		Refused:       make(map[string]int64, numRefusals),
		Dropped:       make(map[string]int64, numDrops),
	}
	for i, name := range refusalNames {
		s.Refused[name] = h.stats.refused[i].Load()
	}
	for i, name := range dropNames {
		s.Dropped[name] = h.stats.dropped[i].Load()
	}
	h.usersMu.Lock()
	s.Users = len(h.users)
	h.usersMu.Unlock()
	for i := range h.shards {
		sh := &h.shards[i]
		sh.mu.Lock()
		s.Rooms += len(sh.rooms)
		sh.mu.Unlock()
	}
	return s
}

func (h *Hub) shard(name string) *roomShard {
	return &h.shards[maphash.String(h.seed, name)%roomShards]
}

// deliver is the broker handler: it hands data to every local member of
// room, in the order deliveries arrive.
func (h *Hub) deliver(name string, data []byte) {
	if name == controlRoom {
		h.handleControl(data)
		return
	}
	sh := h.shard(name)
	sh.mu.Lock()
	r := sh.rooms[name]
	sh.mu.Unlock()
	if r == nil {
		return
	}
	// Messages are decoded once per node, for the id that orders them
	// against a joiner's reply.
	var msg Message
	if f, err := DecodeFrame(data); err != nil {
		h.log.Warn("dropping undecodable relay frame", "room", name, "err", err)
		h.stats.dropped[dropInvalidRelay].Add(1)
		return
	} else if f.Event == EventNewMsg {
		if msg, err = decodeMessage(f.Payload); err != nil || msg.ID == "" {
			h.log.Warn("dropping relay message without id", "room", name, "err", err)
			h.stats.dropped[dropInvalidRelay].Add(1)
			return
		}
		h.seeID(msg.ID)
	}
	r.mu.Lock()
	n := 0
	if r.special == 0 {
		if r.sessions == nil {
			r.sessions = make([]*Session, 0, len(r.members))
			for s := range r.members {
				r.sessions = append(r.sessions, s)
			}
		}
		for _, s := range r.sessions {
			s.deliver(r, msg, data)
		}
		n = len(r.sessions)
	} else {
		if r.all == nil {
			r.all = make([]*member, 0, len(r.members))
			for _, m := range r.members {
				r.all = append(r.all, m)
			}
		}
		for _, m := range r.all {
			if m.errored.Load() {
				continue
			}
			if m.floor != "" && msg.ID != "" {
				if msg.ID <= m.floor {
					continue // the join's reply had it
				}
				r.update(m, func() { m.floor = "" })
			}
			m.s.deliver(r, msg, data)
			n++
		}
	}
	r.mu.Unlock()
	h.stats.deliveries.Add(int64(n))
}

// seeID records id as seen on this node.
func (h *Hub) seeID(id string) {
	h.idMu.Lock()
	if id > h.maxID {
		h.maxID = id
	}
	h.idMu.Unlock()
}

// lastSeenID returns the greatest message id this node has seen.
func (h *Hub) lastSeenID() string {
	h.idMu.Lock()
	defer h.idMu.Unlock()
	return h.maxID
}

// join adds s to the room name, subscribing the node to it when s is its
// first local member. With buffer set, deliveries to s from the room are
// held until s.finishJoin.
func (h *Hub) join(ctx context.Context, s *Session, name, joinRef string, buffer bool) (*room, *member, error) {
	sh := h.shard(name)
	sh.mu.Lock()
	r := sh.rooms[name]
	created := r == nil
	if created {
		r = &room{
			name:       name,
			topic:      RoomPrefix + name,
			subscribed: make(chan struct{}),
			members:    make(map[*Session]*member),
		}
		sh.rooms[name] = r
	}
	m := &member{s: s, joinRef: joinRef}
	r.mu.Lock()
	r.members[s] = m
	r.sessions, r.all = nil, nil
	if buffer {
		s.startJoin(r)
	}
	r.mu.Unlock()
	sh.mu.Unlock()

	if created {
		r.subErr = h.broker.Subscribe(ctx, name)
		close(r.subscribed)
	}
	select {
	case <-r.subscribed:
	case <-ctx.Done():
		h.leave(s, r)
		return nil, nil, ctx.Err()
	}
	if r.subErr != nil {
		h.leave(s, r)
		h.log.Warn("room subscribe failed", "room", name, "err", r.subErr)
		return nil, nil, ErrUnavailable
	}
	return r, m, nil
}

// leave removes s from r, and unsubscribes the node from r when s was its
// last local member.
func (h *Hub) leave(s *Session, r *room) {
	sh := h.shard(r.name)
	sh.mu.Lock()
	r.mu.Lock()
	if m := r.members[s]; m != nil && m.special() {
		r.special--
	}
	delete(r.members, s)
	r.sessions, r.all = nil, nil
	s.abortJoin(r)
	empty := len(r.members) == 0
	r.mu.Unlock()
	if empty && sh.rooms[r.name] == r {
		delete(sh.rooms, r.name)
	}
	sh.mu.Unlock()
	if empty {
		// Wait for the subscription that created the room before undoing
		// it, so Subscribe and Unsubscribe calls stay paired.
		<-r.subscribed
		if r.subErr == nil {
			ctx, cancel := context.WithTimeout(context.Background(), h.cfg.RelayTimeout)
			if err := h.broker.Unsubscribe(ctx, r.name); err != nil {
				h.log.Warn("room unsubscribe failed", "room", r.name, "err", err)
			}
			cancel()
		}
	}
}

// Resync tells every local member of every room that it may have missed
// messages (the relay to this node was cut off and is back): each channel
// gets phx_error, on which the phoenix client rejoins, with "since" its
// last message id when it asks for recovery. Channels stay joined; the
// rejoin replaces them.
func (h *Hub) Resync() {
	var rooms []*room
	for i := range h.shards {
		sh := &h.shards[i]
		sh.mu.Lock()
		for _, r := range sh.rooms {
			rooms = append(rooms, r)
		}
		sh.mu.Unlock()
	}
	n := 0
	for _, r := range rooms {
		r.mu.Lock()
		for s, m := range r.members {
			if m.errored.Load() {
				continue
			}
			r.update(m, func() { m.errored.Store(true) })
			s.enqueue(AppendFrame(nil, m.joinRef, m.joinRef, r.topic, EventError, emptyObject))
			n++
		}
		r.mu.Unlock()
	}
	h.log.Warn("relay restored: channels told to rejoin and recover", "rooms", len(rooms), "channels", n)
}

// publishAttempts bounds the retries of a message that lost the race for
// its room's next place to concurrent publishers.
const publishAttempts = 8

// publish accepts a message from user to room: a place in the persistence
// queue is reserved, the message is appended to the room's log and
// published, with an id greater than every earlier message of the room,
// then handed to the sink. On error the message is not in the log: no one
// receives it and it is not stored.
func (h *Hub) publish(ctx context.Context, room, user, body string) (Message, error) {
	if err := h.sink.Reserve(); err != nil {
		return Message{}, err
	}
	committed := false
	defer func() {
		if !committed {
			h.sink.Cancel()
		}
	}()
	msg := Message{Room: room, UserID: user, Body: body}
	topic := RoomPrefix + room
	after := h.lastSeenID()
	start := time.Now()
	for attempt := 1; ; attempt++ {
		id, err := newMessageID(after)
		if err != nil {
			return Message{}, err
		}
		msg.ID = id
		msg.InsertedAt = time.Now().UTC().Truncate(time.Microsecond)
		data := EncodeMessage(topic, msg)
		pctx, cancel := context.WithTimeout(ctx, h.cfg.RelayTimeout)
		err = h.broker.Publish(pctx, room, msg.ID, data)
		cancel()
		var ooe *OutOfOrderError
		if errors.As(err, &ooe) {
			if attempt < publishAttempts {
				h.seeID(ooe.Last)
				after = max(after, ooe.Last)
				continue
			}
			return Message{}, ErrUnavailable
		}
		if errors.Is(err, ErrNotPublished) {
			h.log.Warn("relay publish failed", "room", room, "err", err)
			return Message{}, ErrUnavailable
		}
		if err != nil {
			h.log.Warn("relay publish outcome unknown; resolving it against the room's log", "room", room, "id", msg.ID, "err", err)
			rctx, cancel := context.WithDeadline(context.WithoutCancel(ctx), start.Add(h.cfg.ResolveTimeout))
			accepted, rerr := h.resolve(rctx, room, msg.ID)
			cancel()
			if rerr != nil {
				// The sender is answered now; the message is settled
				// later, keeping its place in the persistence queue.
				if h.settleLater(msg) {
					committed = true
				}
				return Message{}, ErrOutcomeUnknown
			}
			if !accepted {
				return Message{}, ErrUnavailable
			}
		}
		break
	}
	h.seeID(msg.ID)
	h.sink.Commit(msg)
	committed = true
	h.stats.messagesIn.Add(1)
	return msg, nil
}

// resolve settles a publish whose outcome is unknown, trying until the log
// answers or ctx ends.
func (h *Hub) resolve(ctx context.Context, room, id string) (bool, error) {
	pause := 50 * time.Millisecond
	for {
		actx, acancel := context.WithTimeout(ctx, h.cfg.RelayTimeout)
		ok, err := h.broker.Resolve(actx, room, id)
		acancel()
		if err == nil {
			h.stats.resolved.Add(1)
			return ok, nil
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return false, fmt.Errorf("chat: resolve message %s: %w (last error: %w)", id, ctx.Err(), err)
		case <-t.C:
		}
		pause = min(2*pause, time.Second)
	}
}

// maxUnsettled bounds the messages settled in the background at once, and
// settleGrace how long Shutdown waits for them.
const (
	maxUnsettled = 1024
	settleGrace  = 2 * time.Second
)

// settleLater settles msg's unknown outcome in the background, holding its
// place in the persistence queue: an accepted message is committed (and
// so stored), another one's place is given back. It reports false, and
// does nothing, when too many are being settled already or the hub is
// shutting down; the caller then gives the place back. A message accepted
// but not settled before shutdown is still in its room's log: this node
// stores it from there when it starts again (the take-over of its own
// name).
func (h *Hub) settleLater(msg Message) bool {
	h.sessMu.Lock()
	defer h.sessMu.Unlock()
	if h.draining.Load() || h.unsettled >= maxUnsettled {
		h.log.Error("relay publish outcome not settled", "room", msg.Room, "id", msg.ID)
		return false
	}
	h.unsettled++
	h.settling.Add(1)
	go func() {
		defer h.settling.Done()
		ok, err := h.resolve(h.stop, msg.Room, msg.ID)
		switch {
		case err != nil:
			h.log.Error("relay publish outcome not settled before shutdown", "room", msg.Room, "id", msg.ID, "err", err)
			h.sink.Cancel()
		case ok:
			h.seeID(msg.ID)
			h.sink.Commit(msg)
			h.stats.messagesIn.Add(1)
			h.log.Warn("relay publish settled late: accepted, stored", "room", msg.Room, "id", msg.ID)
		default:
			h.sink.Cancel()
			h.log.Info("relay publish settled late: not accepted", "room", msg.Room, "id", msg.ID)
		}
		h.sessMu.Lock()
		h.unsettled--
		h.sessMu.Unlock()
	}()
	return true
}

// newMessageID returns a new UUIDv7, greater than after when after is set.
// When the clock has not passed after (a concurrent publisher, or another
// node whose clock runs ahead), it returns an id of after's millisecond
// whose random bits are after's plus a random step.
func newMessageID(after string) (string, error) {
	id, err := uuid.NewV7()
	if err != nil {
		return "", fmt.Errorf("chat: message id: %w", err)
	}
	s := id.String()
	if after == "" || s > after {
		return s, nil
	}
	last, err := uuid.Parse(after)
	if err != nil {
		return "", fmt.Errorf("chat: room's last id %q: %w", after, err)
	}
	// Step the 62 random bits of rand_b (bytes 8-15 below the two variant
	// bits) forward by a random amount, not by one: publishers of other
	// rooms (and other nodes) stepping from the same id must not land on
	// the same id, which would be one primary key for two messages.
	const mask = 1<<62 - 1
	v := binary.BigEndian.Uint64(last[8:])
	low := v&mask + 1 + rand.Uint64N(1<<32)
	if low > mask {
		return "", errors.New("chat: message id space of this millisecond exhausted")
	}
	binary.BigEndian.PutUint64(last[8:], v&^mask|low)
	return last.String(), nil
}

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
// context is cancelled or the hub shuts down. It owns conn and closes it.
func (h *Hub) ServeConn(ctx context.Context, conn Conn, info ConnInfo) error {
	s := newSession(h, conn, info)
	h.sessMu.Lock()
	if h.draining.Load() {
		h.sessMu.Unlock()
		conn.Close(StatusGoingAway, "server shutting down")
		conn.CloseNow()
		return ErrDraining
	}
	if k, ok := h.kickedLocked(info); ok {
		h.sessMu.Unlock()
		conn.Close(k.code, k.reason)
		conn.CloseNow()
		return ErrDisconnected
	}
	h.sessions[s] = struct{}{}
	h.sessWG.Add(1)
	h.sessMu.Unlock()
	h.stats.connections.Add(1)
	h.stats.connects.Add(1)
	defer func() {
		h.stats.connections.Add(-1)
		h.sessMu.Lock()
		delete(h.sessions, s)
		h.sessMu.Unlock()
		h.sessWG.Done()
	}()
	return s.run(ctx)
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
