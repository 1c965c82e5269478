package cluster

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatd/chatd/chat"
)

// RedisBrokerConfig configures a RedisBroker. The zero value of each field
// picks the default given in its comment; Client or URL is required.
type RedisBrokerConfig struct {
	// Client is the Redis client to publish with and to open the pub/sub
	// connections from: a *redis.Client for one Redis server, a
	// *redis.ClusterClient for a Redis Cluster (Redis 7 or later: sharded
	// pub/sub). The broker does not close it. Two of its options matter:
	//   - ContextTimeoutEnabled: without it, go-redis ignores context
	//     deadlines on the socket, so Publish, Subscribe and Ping against an
	//     unresponsive Redis take its ReadTimeout or DialTimeout (seconds)
	//     whatever ctx says. Set it; the broker logs a warning otherwise.
	//   - MaxRetries: with retries on (go-redis's default), a publication
	//     whose reply was lost to a broken connection is sent again, which
	//     the publish script recognises for messages with an id (same id,
	//     same data: reported as published, not published twice), but not
	//     for frames without one, which may then be delivered twice. -1
	//     makes every publication exactly-once, at the price of an error
	//     instead of a retry on a stale connection.
	// Nil: a client is made from URL.
	Client redis.UniversalClient
	// URL is a redis:// or rediss:// URL (see redis.ParseURL), used when
	// Client is nil. The broker owns that client, closes it in Close, and
	// sets ContextTimeoutEnabled and MaxRetries -1 on it.
	URL string
	// Prefix starts every key and channel name the broker uses:
	// "<Prefix>:room:{<room>}" is a room's channel, "<Prefix>:{<room>}:log"
	// its log (a stream; an entry without a frame fences off a publication
	// resolved as not accepted), and
	// "<Prefix>:node-rooms:{<node>}" indexes the rooms a node published to,
	// for the survivors that persist a dead node's messages. The braces
	// keep every key of a room in one Redis Cluster hash slot. Every node of
	// a cluster must use the same Prefix. Zero: "chatd".
	Prefix string
	// NodeName is this node's name, recorded with each message it logs.
	// Zero: "chatd".
	NodeName string
	// LogLength is how many of a room's newest messages its log keeps
	// (Redis trims in whole stream nodes, so a little more). Zero, or less
	// than the least allowed (chat.MaxRecover+1): the least allowed.
	LogLength int
	// Logger receives the broker's logs. Nil: discard.
	Logger *slog.Logger
	// LastIDTTL is how long a room's log is kept after the room's latest
	// message (renewed once a minute of the room's activity, so up to a
	// minute less); after that the log starts anew (the store keeps the
	// history). It must outlast clock skew between nodes, and the longest
	// database outage the persistence queue rides out. Zero: 24 h.
	LastIDTTL time.Duration
	// PingInterval is how often the pub/sub connection is pinged. A
	// connection that delivers nothing, not even a pong, for three intervals
	// is probed: when a new TCP connection to Redis's address cannot be
	// opened within OpTimeout, Redis is cut off and the connection is
	// replaced (the hub's Resync follows); when it can, Redis is only busy (a
	// long script, DEBUG SLEEP, a stopped process): nothing is lost on a
	// live connection, so it is kept. Zero: 5 s.
	PingInterval time.Duration
	// StallTimeout is how long a pub/sub connection may stay silent while
	// Redis's address still accepts connections before it is replaced
	// anyway, in case the connection itself broke without an error (a
	// middlebox that lost its state). Zero: 1 min.
	StallTimeout time.Duration
	// OpTimeout bounds each SUBSCRIBE, UNSUBSCRIBE and PING written to the
	// pub/sub connection, a new connection's dial included. Zero: 5 s.
	OpTimeout time.Duration
	// MinBackoff and MaxBackoff bound the pause between attempts to reach
	// Redis again after the pub/sub connection failed; the pause doubles
	// from MinBackoff up to MaxBackoff, with jitter. Zero: 50 ms and 2 s.
	MinBackoff, MaxBackoff time.Duration
}

func (c *RedisBrokerConfig) setDefaults() error {
	if c.Prefix == "" {
		c.Prefix = "chatd"
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.NodeName == "" {
		c.NodeName = "chatd"
	}
	if c.LogLength < chat.MaxRecover+1 {
		c.LogLength = chat.MaxRecover + 1
	}
	if c.LastIDTTL == 0 {
		c.LastIDTTL = 24 * time.Hour
	}
	if c.PingInterval == 0 {
		c.PingInterval = 5 * time.Second
	}
	if c.OpTimeout == 0 {
		c.OpTimeout = 5 * time.Second
	}
	if c.StallTimeout == 0 {
		c.StallTimeout = time.Minute
	}
	if c.MinBackoff == 0 {
		c.MinBackoff = 50 * time.Millisecond
	}
	if c.MaxBackoff == 0 {
		c.MaxBackoff = 2 * time.Second
	}
	switch {
	case c.Client == nil && c.URL == "":
		return errors.New("cluster: redis broker: a Client or URL is required")
	case c.LastIDTTL < time.Millisecond:
		return errors.New("cluster: redis broker: LastIDTTL must be at least 1ms")
	case c.PingInterval < 0, c.OpTimeout < 0, c.StallTimeout < 0, c.MinBackoff < 0, c.MaxBackoff < 0:
		return errors.New("cluster: redis broker: durations must not be negative")
	case c.MinBackoff > c.MaxBackoff:
		return errors.New("cluster: redis broker: MinBackoff is greater than MaxBackoff")
	}
	return nil
}

// errRelayDown is returned by Publish and Ping while the pub/sub connection
// is failing.
var errRelayDown = errors.New("cluster: redis pub/sub connection is down")

// ErrBrokerClosed is returned by the methods of a closed RedisBroker.
var ErrBrokerClosed = errors.New("cluster: redis broker closed")

// errNotRunning is returned by Subscribe before Run: nothing would confirm
// the subscription.
var errNotRunning = errors.New("cluster: redis broker not running (call Run)")

// RedisBroker is the Broker of a cluster whose nodes share one Redis server
// or one Redis Cluster.
//
// Publish runs one Lua script that checks the message id against the room's
// last id and PUBLISHes in the same atomic step, so the order Redis accepts
// publications in is the order every node receives them in. Each node holds
// one pub/sub connection for all its rooms (on a Redis Cluster, one per
// master, for the rooms of its slots: every key and the channel of a room
// are in one hash slot, and the script SPUBLISHes, so a room's traffic only
// touches the master that owns it), subscribed to a room while the room has
// local subscribers; one goroutine reads each and calls the handler in
// order. When a connection fails (Redis or a master restarts, the network
// drops), the node keeps running: Publish and new Subscribes fail for the
// rooms it carries (the other masters' rooms go on), Ping reports it, and
// the connection is re-established with backoff and its rooms subscribed
// again, without the caller's help. Publications made while a node was cut
// off are not replayed to it: Redis pub/sub keeps no backlog; the hub's
// Resync, for the rooms concerned, has their members recover from the log.
//
// Its methods are safe for concurrent use.
type RedisBroker struct {
	cfg        RedisBrokerConfig
	log        *slog.Logger
	client     redis.UniversalClient
	cluster    *redis.ClusterClient // client, when it is a Redis Cluster's
	ownsClient bool
	handler    chat.BrokerHandler // set by Run
	events     chat.RelayEvents   // set by Run; may be nil
	pubCmd     string             // "PUBLISH"; "SPUBLISH" on a Redis Cluster
	chanPrefix string             // "<Prefix>:room:"
	prefix     string
	indexKey   string // "<Prefix>:node-rooms:{<NodeName>}"
	ttlMillis  int64

	// indexed holds when each room was last added to this node's index of
	// rooms (indexKey); guarded by indexMu, never held across I/O.
	indexMu sync.Mutex
	indexed map[string]time.Time

	done      chan struct{} // closed by Close
	isClosed  atomic.Bool
	closeOnce sync.Once
	wg        sync.WaitGroup // the shards' goroutines

	// mu guards the fields below and the shards' round state. It is never
	// held across network I/O or a call of the handler.
	mu      sync.Mutex
	running bool
	closed  bool
	rooms   map[string]*redisRoom
	// The pub/sub connections: single for one Redis server; on a Redis
	// Cluster, shards holds one per master address, made when a room of
	// that master is first used.
	single *relayShard
	shards map[string]*relayShard

	published     atomic.Int64
	publishErrors atomic.Int64
	outOfOrder    atomic.Int64
	emptyLogs     atomic.Int64
	received      atomic.Int64
	reconnects    atomic.Int64
}

// redisRoom is the local subscription state of one room.
type redisRoom struct {
	shard  *relayShard // the pub/sub connection that carries it
	count  int         // Subscribe calls not undone yet
	issued bool        // SUBSCRIBE was written last (the room is in the pub/sub channel set)
	ready  uint64      // the round whose pong makes the room's subscription live
}

var _ chat.Broker = (*RedisBroker)(nil)

// The Lua scripts of the room log (cluster/lua).
var (
	//go:embed lua/order.lua
	orderLua string
	//go:embed lua/publish.lua
	publishLua string
	//go:embed lua/resolve.lua
	resolveLua string
	//go:embed lua/delete.lua
	deleteLua string

	publishScript = redis.NewScript(orderLua + publishLua)
	resolveScript = redis.NewScript(orderLua + resolveLua)
	deleteScript  = redis.NewScript(deleteLua)
)

// indexRefresh is how often a node re-adds a room it publishes to to its
// index of rooms: the index outlives the room's log by at least the
// difference between the log's lifetime and this.
const indexRefresh = 10 * time.Minute

// NewRedisBroker returns a broker configured by cfg. It does not contact
// Redis; Run starts its delivery.
func NewRedisBroker(cfg RedisBrokerConfig) (*RedisBroker, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	b := &RedisBroker{
		cfg:        cfg,
		log:        cfg.Logger,
		client:     cfg.Client,
		chanPrefix: cfg.Prefix + ":room:",
		prefix:     cfg.Prefix,
		indexKey:   cfg.Prefix + ":node-rooms:{" + cfg.NodeName + "}",
		ttlMillis:  cfg.LastIDTTL.Milliseconds(),
		indexed:    make(map[string]time.Time),
		done:       make(chan struct{}),
		rooms:      make(map[string]*redisRoom),
		pubCmd:     "PUBLISH",
	}
	var err error
	if b.client, b.ownsClient, err = redisClientFrom(cfg.Client, cfg.URL, b.log, "redis broker"); err != nil {
		return nil, err
	}
	if cc, ok := b.client.(*redis.ClusterClient); ok {
		b.cluster, b.pubCmd = cc, "SPUBLISH"
		b.shards = make(map[string]*relayShard)
		return b, nil
	}
	addr, network := "", ""
	if c, ok := b.client.(*redis.Client); ok {
		addr, network = c.Options().Addr, c.Options().Network
	}
	b.single = newRelayShard(b, addr, network, false, func() *redis.PubSub {
		return b.client.Subscribe(context.Background())
	})
	return b, nil
}

// shardFor returns the pub/sub connection that carries room: the one to a
// single Redis server, or the one to the master of the room's hash slot in
// a Redis Cluster (made on first use, and started if the broker runs).
func (b *RedisBroker) shardFor(ctx context.Context, room string) (*relayShard, error) {
	if b.cluster == nil {
		return b.single, nil
	}
	b.mu.Lock()
	if r := b.rooms[room]; r != nil {
		b.mu.Unlock()
		return r.shard, nil
	}
	b.mu.Unlock()
	node, err := b.cluster.MasterForKey(ctx, b.channel(room))
	if err != nil {
		return nil, fmt.Errorf("cluster: redis cluster: the master of room %s: %w", room, err)
	}
	return b.shardAt(node)
}

// shardAt returns the pub/sub connection to the master node, made (and
// started if the broker runs) on first use.
func (b *RedisBroker) shardAt(node *redis.Client) (*relayShard, error) {
	opt := node.Options()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, ErrBrokerClosed
	}
	sh := b.shards[opt.Addr]
	if sh == nil {
		sh = newRelayShard(b, opt.Addr, opt.Network, true, func() *redis.PubSub {
			return node.SSubscribe(context.Background())
		})
		b.shards[opt.Addr] = sh
		if b.running {
			sh.start()
		}
	}
	return sh, nil
}

// allShardsLocked returns the pub/sub connections made so far. b.mu
// must be held.
func (b *RedisBroker) allShardsLocked() []*relayShard {
	if b.single != nil {
		return []*relayShard{b.single}
	}
	out := make([]*relayShard, 0, len(b.shards))
	for _, sh := range b.shards {
		out = append(out, sh)
	}
	return out
}

// Run implements chat.Broker: it starts the goroutines that keep the
// pub/sub connection and deliver its messages to h. Each time the pub/sub
// connection is restored after failing, from the goroutine that reads it
// and before it delivers anything more, ev.Resync is called: whatever was
// published while it was down never reached this node. Run does not block
// and does not wait for Redis: while Redis is unreachable the broker keeps
// trying. Run may be called once. Publish, Delete, ReadLog, Resolve and
// TakeOver work before Run; Subscribe needs it.
func (b *RedisBroker) Run(h chat.BrokerHandler, ev chat.RelayEvents) error {
	if h == nil {
		return errors.New("cluster: redis broker: nil handler")
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.closed:
		return ErrBrokerClosed
	case b.running:
		return errors.New("cluster: redis broker already running")
	}
	b.running = true
	b.handler, b.events = h, ev
	for _, sh := range b.allShardsLocked() {
		sh.start()
	}
	return nil
}

// Close stops the broker: pending Subscribes fail, its goroutines end
// before Close returns, and later calls fail with ErrBrokerClosed. It closes
// the Redis client only if the broker made it (from URL). Close is
// idempotent.
func (b *RedisBroker) Close() error {
	var err error
	b.closeOnce.Do(func() {
		b.isClosed.Store(true)
		b.mu.Lock()
		b.closed = true
		shards := b.allShardsLocked()
		var pss []*redis.PubSub
		for _, sh := range shards {
			sh.notifyLocked()
			pss = append(pss, sh.ps)
		}
		b.mu.Unlock()
		close(b.done)
		// Closing a pub/sub connection ends a receive in progress; one
		// that replaces it after this sees the broker closed.
		for _, ps := range pss {
			ps.Close()
		}
		b.wg.Wait()
		if b.ownsClient {
			if cerr := b.client.Close(); cerr != nil {
				err = fmt.Errorf("cluster: redis broker: %w", cerr)
			}
		}
	})
	return err
}

// channel returns room's pub/sub channel.
func (b *RedisBroker) channel(room string) string { return b.chanPrefix + "{" + room + "}" }

// logKey returns the key of room's log.
func (b *RedisBroker) logKey(room string) string { return b.prefix + ":{" + room + "}:log" }

// deletedKey returns the key of the set of room's deleted messages.
func (b *RedisBroker) deletedKey(room string) string { return b.prefix + ":{" + room + "}:deleted" }

// idMillis returns the millisecond timestamp of a UUIDv7 message id, the
// first 48 bits: its log entry's stream id starts with it.
func idMillis(id string) (string, error) {
	if len(id) < 13 || id[8] != '-' {
		return "", fmt.Errorf("cluster: message id %q is not a UUIDv7", id)
	}
	ms, err := strconv.ParseUint(id[:8]+id[9:13], 16, 64)
	if err != nil {
		return "", fmt.Errorf("cluster: message id %q is not a UUIDv7", id)
	}
	return strconv.FormatUint(ms, 10), nil
}

// Publish implements chat.Broker with one atomic script on Redis: for a
// message, the order check (which also refuses an id fenced off by
// Resolve), the append to the room's log and the PUBLISH; for another
// frame, the PUBLISH alone. The first message this
// node publishes to a room (and one every indexRefresh) first adds the room
// to the node's index of rooms, so that the survivors of this node find
// its messages (TakeOver).
//
// A nil error means Redis accepted the publication: every node subscribed
// to the room at that moment receives it, unless its connection to Redis
// fails before the message is read. Any error but *chat.OutOfOrderError
// leaves a message's outcome unknown: settle it with Resolve.
func (b *RedisBroker) Publish(ctx context.Context, room, id string, data []byte) error {
	if b.isClosed.Load() {
		return fmt.Errorf("%w: %w", chat.ErrNotPublished, ErrBrokerClosed)
	}
	sh, err := b.shardFor(ctx, room)
	if err != nil {
		b.publishErrors.Add(1)
		return fmt.Errorf("%w: %w", chat.ErrNotPublished, err)
	}
	// While this node's own subscription is down, a publication would
	// reach the other nodes but not this node's members: refuse it.
	if sh.down.Load() {
		b.publishErrors.Add(1)
		return fmt.Errorf("%w: %w", chat.ErrNotPublished, sh.downErr())
	}
	ms := ""
	if id != "" {
		var err error
		if ms, err = idMillis(id); err != nil {
			return fmt.Errorf("%w: %w", chat.ErrNotPublished, err)
		}
		if err := b.index(ctx, room); err != nil {
			// The publication itself was not sent.
			b.publishErrors.Add(1)
			return fmt.Errorf("%w: %w", chat.ErrNotPublished, err)
		}
	}
	startLog := "" // ARGV[8]: may this publish start the room's log
	for {
		res, err := publishScript.Run(ctx, b.client, []string{b.logKey(room), b.deletedKey(room)},
			id, data, b.channel(room), b.ttlMillis, b.cfg.LogLength, b.cfg.NodeName, ms, startLog, b.pubCmd).Slice()
		if err != nil {
			b.publishErrors.Add(1)
			if notSent(err) {
				err = fmt.Errorf("%w: %w", chat.ErrNotPublished, err)
			}
			return fmt.Errorf("cluster: redis publish to room %s: %w", room, err)
		}
		status, _ := res[0].(int64)
		switch status {
		case 1, 2:
			b.published.Add(1)
			return nil
		case 0:
			b.outOfOrder.Add(1)
			last := ""
			if len(res) > 1 {
				last, _ = res[1].(string)
			}
			return &chat.OutOfOrderError{Last: last}
		case 3:
			if startLog != "" {
				b.publishErrors.Add(1)
				return fmt.Errorf("cluster: redis publish to room %s: log refused its start", room)
			}
			// The room's log is empty: new, expired, or lost with
			// Redis's data. Lost, it no longer orders id after the
			// messages published just before the loss, which this node
			// may not have received when id was chosen. Once the
			// pub/sub connection has delivered everything published so
			// far (one barrier round), this node has seen their ids: id
			// starts the log if it is still after them.
			b.emptyLogs.Add(1)
			if err := sh.catchUp(ctx); err != nil {
				b.publishErrors.Add(1)
				return fmt.Errorf("%w: cluster: redis publish to room %s: reading the relay before starting the room's log: %w", chat.ErrNotPublished, room, err)
			}
			if ev := b.events; ev != nil {
				if last := ev.RoomLastID(room); last >= id {
					b.outOfOrder.Add(1)
					return &chat.OutOfOrderError{Last: last}
				}
			}
			startLog = "1"
			continue
		}
		b.publishErrors.Add(1)
		return fmt.Errorf("cluster: redis publish to room %s: unexpected script reply %v", room, res)
	}
}

// notSent reports whether err proves a command never ran: no connection
// could be made (dialing failed, the pool had none to give), or Redis
// refused it before running it (a Redis Cluster whose master of the slot
// is down or moving, a replica, a server still loading its data).
func notSent(err error) bool {
	var op *net.OpError
	if errors.Is(err, redis.ErrPoolTimeout) || (errors.As(err, &op) && op.Op == "dial") {
		return true
	}
	if _, moved := redis.IsMovedError(err); moved {
		return true
	}
	if _, ask := redis.IsAskError(err); ask {
		return true
	}
	return redis.IsClusterDownError(err) || redis.IsTryAgainError(err) || redis.IsLoadingError(err) ||
		redis.IsReadOnlyError(err) || redis.IsMasterDownError(err)
}

// index adds room to this node's index of rooms, unless it did so within
// indexRefresh. Entries older than the log's lifetime are pruned on the way.
func (b *RedisBroker) index(ctx context.Context, room string) error {
	now := time.Now()
	b.indexMu.Lock()
	at, ok := b.indexed[room]
	b.indexMu.Unlock()
	if ok && now.Sub(at) < indexRefresh {
		return nil
	}
	_, err := b.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.ZAdd(ctx, b.indexKey, redis.Z{Score: float64(now.UnixMilli()), Member: room})
		p.ZRemRangeByScore(ctx, b.indexKey, "-inf", strconv.FormatInt(now.UnixMilli()-b.ttlMillis, 10))
		p.PExpire(ctx, b.indexKey, b.cfg.LastIDTTL+indexRefresh)
		return nil
	})
	if err != nil {
		return fmt.Errorf("cluster: redis index of room %s: %w", room, err)
	}
	b.indexMu.Lock()
	b.indexed[room] = now
	if len(b.indexed) > 1024 && len(b.indexed)%1024 == 0 {
		for r, at := range b.indexed {
			if now.Sub(at) >= indexRefresh {
				delete(b.indexed, r)
			}
		}
	}
	b.indexMu.Unlock()
	return nil
}

// Resolve implements chat.Broker with one atomic script: the message is
// looked up in the room's log, and when it is not there it is fenced off
// (an entry of its id without a frame), so that its publication, still
// queued in a stalled Redis say, is refused by the order check when it
// runs.
func (b *RedisBroker) Resolve(ctx context.Context, room, id string) (bool, error) {
	if b.isClosed.Load() {
		return false, ErrBrokerClosed
	}
	ms, err := idMillis(id)
	if err != nil {
		return false, err
	}
	n, err := resolveScript.Run(ctx, b.client, []string{b.logKey(room)},
		id, ms, b.cfg.NodeName, b.ttlMillis).Int()
	if err != nil {
		return false, fmt.Errorf("cluster: redis resolve message %s of room %s: %w", id, room, err)
	}
	return n == 1, nil
}

// ReadLog implements chat.Broker: the selected messages, the log's length,
// its oldest message and the deleted messages among the selected ones are
// read in one MULTI/EXEC. When deleted messages leave fewer than asked for
// in a selection that was cut short, it is read again, longer.
func (b *RedisBroker) ReadLog(ctx context.Context, room string, q chat.LogQuery) (chat.LogRead, error) {
	if b.isClosed.Load() {
		return chat.LogRead{}, ErrBrokerClosed
	}
	if q.ID != "" {
		return b.readLogID(ctx, room, q.ID)
	}
	if q.Limit <= 0 {
		return chat.LogRead{}, errors.New("cluster: redis read log: Limit must be positive")
	}
	key, delKey := b.logKey(room), b.deletedKey(room)
	stop, delMin := "-", "-"
	if q.After != "" {
		ms, err := idMillis(q.After)
		if err != nil {
			return chat.LogRead{}, err
		}
		stop, delMin = ms+"-0", "("+q.After
	}
	// Newest first, one more than asked for: the extra one tells whether
	// more were selected.
	count := q.Limit + 1
	for {
		var sel, oldest, newest *redis.XMessageSliceCmd
		var length *redis.IntCmd
		var deleted *redis.StringSliceCmd
		_, err := b.client.TxPipelined(ctx, func(p redis.Pipeliner) error {
			sel = p.XRevRangeN(ctx, key, "+", stop, int64(count))
			length = p.XLen(ctx, key)
			oldest = p.XRangeN(ctx, key, "-", "+", 1)
			newest = p.XRevRangeN(ctx, key, "+", "-", 1)
			deleted = p.ZRangeByLex(ctx, delKey, &redis.ZRangeBy{Min: delMin, Max: "+"})
			return nil
		})
		if err != nil {
			return chat.LogRead{}, fmt.Errorf("cluster: redis read log of room %s: %w", room, err)
		}
		r := chat.LogRead{Len: int(length.Val())}
		r.Full = r.Len >= b.cfg.LogLength
		if o := oldest.Val(); len(o) > 0 {
			r.Oldest, _ = o[0].Values["i"].(string)
		}
		if n := newest.Val(); len(n) > 0 {
			r.Newest, _ = n[0].Values["i"].(string)
		}
		gone := make(map[string]struct{}, len(deleted.Val()))
		for _, id := range deleted.Val() {
			gone[id] = struct{}{}
		}
		msgs := sel.Val()
		ended := false // the selection reached After or the log's start
		for _, m := range msgs {
			id, _ := m.Values["i"].(string)
			d, isMsg := m.Values["d"].(string)
			if q.After != "" && id <= q.After {
				r.Found = isMsg && id == q.After
				ended = true
				break
			}
			if _, ok := gone[id]; ok || !isMsg {
				continue // deleted, or a fence
			}
			if len(r.Entries) == q.Limit {
				r.More = true
				ended = true
				break
			}
			r.Entries = append(r.Entries, chat.LogEntry{ID: id, Data: []byte(d)})
		}
		if !ended && len(msgs) == count && len(gone) > 0 {
			// Cut short by count, with deleted messages in it: read
			// past them.
			count = q.Limit + 1 + len(gone)
			if count > len(msgs) {
				continue
			}
		}
		slices.Reverse(r.Entries)
		return r, nil
	}
}

// readLogID answers a LogQuery for one message id.
func (b *RedisBroker) readLogID(ctx context.Context, room, id string) (chat.LogRead, error) {
	ms, err := idMillis(id)
	if err != nil {
		return chat.LogRead{}, err
	}
	key := b.logKey(room)
	var sel, oldest *redis.XMessageSliceCmd
	var length *redis.IntCmd
	var deleted *redis.FloatCmd
	_, err = b.client.TxPipelined(ctx, func(p redis.Pipeliner) error {
		sel = p.XRange(ctx, key, ms+"-0", ms+"-18446744073709551615")
		length = p.XLen(ctx, key)
		oldest = p.XRangeN(ctx, key, "-", "+", 1)
		deleted = p.ZScore(ctx, b.deletedKey(room), id)
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) || sel.Err() != nil {
		return chat.LogRead{}, fmt.Errorf("cluster: redis read message %s of room %s: %w", id, room, errors.Join(sel.Err(), err))
	}
	r := chat.LogRead{Len: int(length.Val())}
	r.Full = r.Len >= b.cfg.LogLength
	if o := oldest.Val(); len(o) > 0 {
		r.Oldest, _ = o[0].Values["i"].(string)
	}
	gone := deleted.Err() == nil
	for _, m := range sel.Val() {
		if mid, _ := m.Values["i"].(string); mid == id {
			d, isMsg := m.Values["d"].(string)
			if !isMsg {
				break // a fence
			}
			r.Found = true
			if !gone {
				r.Entries = []chat.LogEntry{{ID: id, Data: []byte(d)}}
			}
			break
		}
	}
	return r, nil
}

// Delete implements chat.Broker with one atomic script (lua/delete.lua):
// the message is looked up in the room's log and, when there, added to the
// room's deleted set; the frame is published either way.
func (b *RedisBroker) Delete(ctx context.Context, room, id string, data []byte) (bool, error) {
	if b.isClosed.Load() {
		return false, ErrBrokerClosed
	}
	sh, err := b.shardFor(ctx, room)
	if err != nil {
		return false, err
	}
	if sh.down.Load() {
		return false, sh.downErr()
	}
	ms, err := idMillis(id)
	if err != nil {
		return false, err
	}
	n, err := deleteScript.Run(ctx, b.client, []string{b.logKey(room), b.deletedKey(room)},
		id, ms, data, b.channel(room), b.pubCmd).Int()
	if err != nil {
		return false, fmt.Errorf("cluster: redis delete message %s of room %s: %w", id, room, err)
	}
	return n == 1, nil
}

// TakeOver hands fn, room by room, every message of node's that the logs
// of the rooms in node's index still hold: the survivors of a dead node
// store them, so that what it accepted is not lost with its persistence
// queue (storing is idempotent on the id, so messages it did store are no
// harm). A node also takes over its own name at start, after a crash. It
// returns how many messages it handed over, and stops at fn's first error.
func (b *RedisBroker) TakeOver(ctx context.Context, node string, fn func(room string, entries []chat.LogEntry) error) (int, error) {
	if b.isClosed.Load() {
		return 0, ErrBrokerClosed
	}
	// The most recently written rooms first: they are the likeliest to
	// hold messages not stored yet, should ctx end half-way.
	rooms, err := b.client.ZRevRange(ctx, b.prefix+":node-rooms:{"+node+"}", 0, -1).Result()
	if err != nil {
		return 0, fmt.Errorf("cluster: redis take over node %s: %w", node, err)
	}
	total := 0
	for _, room := range rooms {
		msgs, err := b.client.XRange(ctx, b.logKey(room), "-", "+").Result()
		if err != nil {
			return total, fmt.Errorf("cluster: redis take over node %s: room %s: %w", node, room, err)
		}
		var entries []chat.LogEntry
		for _, m := range msgs {
			d, isMsg := m.Values["d"].(string)
			if n, _ := m.Values["n"].(string); n != node || !isMsg {
				continue
			}
			id, _ := m.Values["i"].(string)
			entries = append(entries, chat.LogEntry{ID: id, Data: []byte(d)})
		}
		if len(entries) == 0 {
			continue
		}
		if err := fn(room, entries); err != nil {
			return total, err
		}
		total += len(entries)
	}
	return total, nil
}

// Subscribe implements chat.Broker. The first Subscribe of a room (since
// its last Unsubscribe) returns once Redis has processed the room's
// SUBSCRIBE on this node's pub/sub connection; later ones return at once
// when that has happened. It fails, undoing itself, when ctx ends first or
// Redis cannot be reached. It must follow Run.
func (b *RedisBroker) Subscribe(ctx context.Context, room string) error {
	b.mu.Lock()
	closed, running := b.closed, b.running
	b.mu.Unlock()
	switch {
	case closed:
		return ErrBrokerClosed
	case !running:
		return errNotRunning
	}
	sh, err := b.shardFor(ctx, room)
	if err != nil {
		return fmt.Errorf("cluster: redis subscribe to room %s: %w", room, err)
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return ErrBrokerClosed
	}
	r := b.rooms[room]
	if r == nil {
		r = &redisRoom{shard: sh}
		b.rooms[room] = r
	}
	sh = r.shard
	r.count++
	if r.count == 1 {
		// Whatever the pub/sub connection was told before, the next round
		// starts after this and settles the room.
		r.ready = sh.round + 1
		sh.dirty[room] = struct{}{}
	}
	need := r.ready
	b.mu.Unlock()
	sh.signal()

	if err := sh.waitRound(ctx, need); err != nil {
		b.release(room)
		return fmt.Errorf("cluster: redis subscribe to room %s: %w", room, err)
	}
	return nil
}

// Unsubscribe implements chat.Broker. It does not wait for Redis: delivery
// to the handler stops when the last Unsubscribe returns, and the UNSUBSCRIBE
// follows. Unsubscribing a room that is not subscribed, or after Close, does
// nothing.
func (b *RedisBroker) Unsubscribe(_ context.Context, room string) error {
	b.release(room)
	return nil
}

// release undoes one Subscribe of room.
func (b *RedisBroker) release(room string) {
	b.mu.Lock()
	r := b.rooms[room]
	if r == nil || r.count == 0 {
		b.mu.Unlock()
		return
	}
	r.count--
	if r.count == 0 {
		r.shard.dirty[room] = struct{}{}
	}
	sh := r.shard
	b.mu.Unlock()
	sh.signal()
}

// Ping reports whether the broker can relay: the pub/sub connection is up
// (known without I/O) and Redis answers PING within ctx. It is meant for
// readiness checks. On a Redis Cluster every master is pinged, and the
// error names each master that is down, whose rooms are unavailable
// while the others' chat on.
func (b *RedisBroker) Ping(ctx context.Context) error {
	if b.isClosed.Load() {
		return ErrBrokerClosed
	}
	if b.cluster == nil {
		if b.single.down.Load() {
			return errRelayDown
		}
		if err := b.client.Ping(ctx).Err(); err != nil {
			return fmt.Errorf("cluster: redis ping: %w", err)
		}
		return nil
	}
	var mu sync.Mutex
	down := make(map[string]error)
	b.mu.Lock()
	for addr, sh := range b.shards {
		if sh.down.Load() {
			down[addr] = errRelayDown
		}
	}
	b.mu.Unlock()
	err := b.cluster.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
		if err := c.Ping(ctx).Err(); err != nil {
			mu.Lock()
			if _, ok := down[c.Options().Addr]; !ok {
				down[c.Options().Addr] = err
			}
			mu.Unlock()
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("cluster: redis cluster: %w", err)
	}
	if len(down) == 0 {
		return nil
	}
	addrs := slices.Sorted(maps.Keys(down))
	errs := make([]error, len(addrs))
	for i, a := range addrs {
		errs[i] = fmt.Errorf("redis master %s is down, its rooms are unavailable: %w", a, down[a])
	}
	return fmt.Errorf("cluster: %w", errors.Join(errs...))
}

// RedisBrokerStats are a RedisBroker's counters since it was made.
type RedisBrokerStats struct {
	// Published counts publications Redis accepted.
	Published int64 `json:"published"`
	// PublishErrors counts Publish calls that failed to reach Redis (or got
	// an unexpected reply); OutOfOrder ones are not errors.
	PublishErrors int64 `json:"publish_errors"`
	// OutOfOrder counts Publish calls refused with *chat.OutOfOrderError.
	OutOfOrder int64 `json:"out_of_order"`
	// EmptyLogs counts Publish calls that found their room's log empty and
	// read the relay up to date before the room's first message.
	EmptyLogs int64 `json:"empty_logs"`
	// Received counts publications delivered to the handler.
	Received int64 `json:"received"`
	// Reconnects counts recoveries of the pub/sub connection after a failure.
	Reconnects int64 `json:"reconnects"`
	// Rooms is how many rooms this node subscribes to now.
	Rooms int `json:"rooms"`
	// Connections is how many pub/sub connections the broker holds: one
	// to a single Redis server, one per master of a Redis Cluster that
	// carries a room this node used.
	Connections int `json:"pubsub_connections"`
}

// Stats returns the broker's counters.
func (b *RedisBroker) Stats() RedisBrokerStats {
	s := RedisBrokerStats{
		Published:     b.published.Load(),
		PublishErrors: b.publishErrors.Load(),
		EmptyLogs:     b.emptyLogs.Load(),
		OutOfOrder:    b.outOfOrder.Load(),
		Received:      b.received.Load(),
		Reconnects:    b.reconnects.Load(),
	}
	b.mu.Lock()
	for _, r := range b.rooms {
		if r.count > 0 {
			s.Rooms++
		}
	}
	s.Connections = len(b.allShardsLocked())
	b.mu.Unlock()
	return s
}

// deliver hands m to the handler if its room is subscribed on this node.
func (b *RedisBroker) deliver(sh *relayShard, m *redis.Message) {
	room, ok := b.roomOf(m.Channel)
	if !ok {
		return
	}
	b.mu.Lock()
	r := b.rooms[room]
	live := r != nil && r.count > 0 && r.shard == sh
	b.mu.Unlock()
	if !live {
		return
	}
	b.received.Add(1)
	b.handler(room, []byte(m.Payload))
}

// roomOf returns the room whose channel ch is.
func (b *RedisBroker) roomOf(ch string) (string, bool) {
	room, ok := strings.CutPrefix(ch, b.chanPrefix+"{")
	if !ok {
		return "", false
	}
	return strings.CutSuffix(room, "}")
}
