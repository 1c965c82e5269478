package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatd/chatd/chat"
)

// RedisConnLimiterConfig configures a RedisConnLimiter. The zero value of
// each field picks the default given in its comment; Client or URL, and
// NodeName, are required.
type RedisConnLimiterConfig struct {
	// Client is the Redis client to use; the limiter does not close it. Set
	// its ContextTimeoutEnabled (see RedisBrokerConfig.Client): without it
	// an Acquire against an unresponsive Redis takes the client's
	// ReadTimeout whatever ctx says. Every script of the limiter is
	// idempotent, so go-redis's retries are harmless here.
	// Nil: a client is made from URL.
	Client redis.UniversalClient
	// URL is a redis:// or rediss:// URL (see redis.ParseURL), used when
	// Client is nil. The limiter owns that client, closes it in Close, and
	// sets ContextTimeoutEnabled and MaxRetries -1 on it.
	URL string
	// Prefix starts every key the limiter uses: "<Prefix>:conns:<user>" is
	// a user's slots (a sorted set of connection ids scored by lease
	// expiry, in Unix milliseconds of the Redis clock) and
	// "<Prefix>:conns-node:<node>" the slots a node holds. Every node of a
	// cluster must use the same Prefix. Zero: "chatd".
	Prefix string
	// NodeName names this node, as memberlist knows it: ReleaseNode frees
	// a node's slots by that name. Required.
	NodeName string
	// Max is how many connections one user may hold across the cluster.
	// Every node must use the same Max. Zero (or negative): no limit, and
	// the limiter never contacts Redis.
	Max int
	// Lease is how long a slot outlives its node's last refresh. The
	// limiter refreshes its node's slots every Lease/3, so a slot held by
	// a node that died (and that nobody freed with ReleaseNode) stops
	// counting at most Lease after the node's last refresh. Zero: 30 s.
	Lease time.Duration
	// Logger receives the limiter's logs. Nil: discard.
	Logger *slog.Logger
}

func (c *RedisConnLimiterConfig) setDefaults() error {
	if c.Prefix == "" {
		c.Prefix = "chatd"
	}
	if c.Lease == 0 {
		c.Lease = 30 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	switch {
	case c.Client == nil && c.URL == "":
		return errors.New("cluster: redis conn limiter: a Client or URL is required")
	case c.NodeName == "":
		return errors.New("cluster: redis conn limiter: NodeName is required")
	case c.Lease < 30*time.Millisecond:
		return errors.New("cluster: redis conn limiter: Lease must be at least 30ms")
	}
	return nil
}

// ErrLimiterClosed is returned by Acquire and ReleaseNode on a closed
// RedisConnLimiter.
var ErrLimiterClosed = errors.New("cluster: redis conn limiter closed")

// maxOrphans bounds the slots a limiter remembers to free later (see
// RedisConnLimiter); beyond it they are left to expire with their lease.
const maxOrphans = 1 << 16

// refreshBatch bounds the slots of one refresh or release script call; a
// round pipelines as many calls as it needs.
const refreshBatch = 500

// RedisConnLimiter is the chat.ConnLimiter of a cluster whose nodes share
// one Redis server: a user's limit holds across every node, atomically.
//
// Each user has a sorted set of the connection ids holding a slot, scored
// by when the slot's lease ends, on the Redis clock (TIME: node clocks do
// not matter). Acquire is one Lua script: drop the user's expired slots,
// refuse when every slot is taken unless the connection already holds one,
// else take a slot and record it in the node's own sorted set too. Redis
// runs scripts one at a time, so two Acquires on two nodes can never both
// take the last slot.
//
// Liveness is per slot: the limiter refreshes the leases of the slots its
// node holds every Lease/3, in pipelined batches, and Acquire ignores (and
// drops) expired ones. A node that dies stops refreshing, and its slots
// stop counting Lease later without anyone sweeping them: a stale slot only
// matters to an Acquire for its user, and that Acquire drops it itself.
// Unlike presence, nothing has to be announced when a slot goes, so the
// node alive keys that RedisPresence sweeps by are not needed here.
// ReleaseNode frees a dead node's slots at once, for when memberlist
// declares the node dead sooner than Lease.
//
// The limiter keeps the slots its node holds in memory, and its refresh
// writes them back: slots lost to a Redis restart, or freed by ReleaseNode
// while the node was in fact alive, come back within Lease/3 (possibly
// leaving a user over the limit for a while; new Acquires wait for them to
// go). A slot whose fate is unknown (an Acquire that failed on a broken
// connection may have run; a Release that failed did not) is freed by the
// next refresh round, or expires with its lease.
//
// The scripts address a user's keys from within Lua, so the limiter needs
// a single Redis server (or one Redis Cluster shard), as RedisBroker does;
// they read TIME before writing, which needs Redis 5 or later.
// Its methods are safe for concurrent use.
type RedisConnLimiter struct {
	redisLoops // client, refresh goroutine, Close
	cfg        RedisConnLimiterConfig
	log        *slog.Logger
	userPrefix string // "<Prefix>:conns:"
	nodeKey    string // "<Prefix>:conns-node:<NodeName>"
	nodePrefix string // "<Prefix>:conns-node:"
	leaseMs    int64

	// mu guards the fields below; it is never held across network I/O.
	mu         sync.Mutex
	running    bool
	held       map[slot]struct{} // slots this node holds
	orphans    map[slot]struct{} // slots to free in Redis, unless held again
	refreshing bool              // a refresh is writing a snapshot of held
	down       bool              // the last refresh round failed

	acquired, refused, errs, restored, released atomic.Int64
}

// slot is one connection of a user.
type slot struct{ user, conn string }

// member is the slot's member in the node's sorted set.
func (s slot) member() string { return packPair(s.user, s.conn) }

// unpackMember is member's inverse.
func unpackMember(m string) slot {
	n, rest, ok := strings.Cut(m, ":")
	k, err := strconv.Atoi(n)
	if !ok || err != nil || k < 0 || k > len(rest) {
		return slot{}
	}
	return slot{rest[:k], rest[k:]}
}

// packPair encodes a and b as one string that Lua's unpackPair splits
// again: "<len(a)>:<a><b>".
func packPair(a, b string) string { return strconv.Itoa(len(a)) + ":" + a + b }

// luaHelpers are the Lua functions the scripts of this package share.
const luaHelpers = `
local function unpackPair(m)
  local n, rest = string.match(m, '^(%d+):(.*)$')
  if not n then return nil end
  n = tonumber(n)
  if n > #rest then return nil end
  return string.sub(rest, 1, n), string.sub(rest, n + 1)
end
local function nowMs()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
`

// acquireScript takes a slot of user KEYS[1] for conn ARGV[1], recording
// member ARGV[4] in node set KEYS[2]: it returns 1 when the slot is taken
// (or was already), 0 when every one of the ARGV[2] slots is (0: no limit).
// ARGV[3] is the lease in milliseconds.
var acquireScript = redis.NewScript(luaHelpers + `
local now = nowMs()
local lease = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  local max = tonumber(ARGV[2])
  if max > 0 and redis.call('ZCARD', KEYS[1]) >= max then
    return 0
  end
end
redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
redis.call('PEXPIRE', KEYS[1], lease)
redis.call('ZADD', KEYS[2], now + lease, ARGV[4])
redis.call('PEXPIRE', KEYS[2], lease)
return 1
`)

// refreshScript renews the leases of the slots ARGV[3:] (members of node
// set KEYS[1]) for ARGV[1] milliseconds, writing back any that are gone,
// and drops the node set's expired members. Users' keys are ARGV[2]..user.
// It returns the members it wrote back.
var refreshScript = redis.NewScript(luaHelpers + `
local now = nowMs()
local lease = tonumber(ARGV[1])
local restored = {}
for i = 3, #ARGV do
  local user, conn = unpackPair(ARGV[i])
  if user then
    local key = ARGV[2] .. user
    if redis.call('ZADD', key, now + lease, conn) == 1 then
      restored[#restored + 1] = ARGV[i]
    end
    redis.call('PEXPIRE', key, lease)
    redis.call('ZADD', KEYS[1], now + lease, ARGV[i])
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('PEXPIRE', KEYS[1], lease)
end
return restored
`)

// releaseScript frees the slots ARGV[2:] (members of node set KEYS[1]);
// users' keys are ARGV[1]..user. It returns how many were held.
var releaseScript = redis.NewScript(luaHelpers + `
local n = 0
for i = 2, #ARGV do
  local user, conn = unpackPair(ARGV[i])
  if user then
    n = n + redis.call('ZREM', ARGV[1] .. user, conn)
    redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return n
`)

// releaseNodeScript frees every slot node set KEYS[1] records and deletes
// it; users' keys are ARGV[1]..user. It returns how many unexpired slots
// it freed.
var releaseNodeScript = redis.NewScript(luaHelpers + `
local now = nowMs()
local n = 0
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local user, conn = unpackPair(m)
  if user then
    local key = ARGV[1] .. user
    local score = redis.call('ZSCORE', key, conn)
    if score then
      redis.call('ZREM', key, conn)
      if tonumber(score) > now then n = n + 1 end
    end
  end
end
redis.call('DEL', KEYS[1])
return n
`)

var _ chat.ConnLimiter = (*RedisConnLimiter)(nil)

// NewRedisConnLimiter returns a limiter. It does not contact Redis; Acquire
// works at once, and Run starts the lease refresh.
func NewRedisConnLimiter(cfg RedisConnLimiterConfig) (*RedisConnLimiter, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	l := &RedisConnLimiter{
		cfg:        cfg,
		log:        cfg.Logger,
		userPrefix: cfg.Prefix + ":conns:",
		nodePrefix: cfg.Prefix + ":conns-node:",
		nodeKey:    cfg.Prefix + ":conns-node:" + cfg.NodeName,
		leaseMs:    cfg.Lease.Milliseconds(),
		held:       make(map[slot]struct{}),
		orphans:    make(map[slot]struct{}),
	}
	if err := l.init(cfg.Client, cfg.URL, cfg.Logger, "redis conn limiter"); err != nil {
		return nil, err
	}
	return l, nil
}

// Run starts the goroutine that refreshes this node's leases (and frees
// orphaned slots). It does not block and does not wait for Redis. Run may
// be called once.
func (l *RedisConnLimiter) Run() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.isClosed.Load():
		return ErrLimiterClosed
	case l.running:
		return errors.New("cluster: redis conn limiter already running")
	}
	l.running = true
	if l.cfg.Max <= 0 {
		return nil // nothing is ever held
	}
	l.wg.Add(1)
	go l.refreshLoop()
	return nil
}

// Close stops the refresh goroutine and closes the Redis client if the
// limiter made it; the goroutine has ended when Close returns (with a
// shared client and a hung Redis, that may take a round's timeout, at most
// 5 s). It frees no slot: those still held expire
// after Lease, or are freed at once by another node's ReleaseNode. Later
// Acquires fail with ErrLimiterClosed; later Releases do nothing. Close is
// idempotent.
func (l *RedisConnLimiter) Close() error { return l.shutdown() }

// Acquire implements chat.ConnLimiter with one atomic script on Redis. It
// returns chat.ErrTooManyConnections when user holds Max slots across the
// cluster (conn not among them), and another error, wrapping Redis's, when
// Redis cannot be reached within ctx: a server answers that with 503, not
// 429. With no limit (Max 0) it returns nil without contacting Redis.
func (l *RedisConnLimiter) Acquire(ctx context.Context, user, conn string) error {
	if l.isClosed.Load() {
		return ErrLimiterClosed
	}
	if l.cfg.Max <= 0 {
		return nil
	}
	s := slot{user, conn}
	ok, err := acquireScript.Run(ctx, l.client, []string{l.userPrefix + user, l.nodeKey},
		conn, l.cfg.Max, l.leaseMs, s.member()).Int()
	if err != nil {
		l.errs.Add(1)
		// The script may have run: free the slot later unless it is held.
		l.mu.Lock()
		if _, held := l.held[s]; !held {
			l.addOrphanLocked(s)
		}
		l.mu.Unlock()
		return fmt.Errorf("cluster: redis conn limiter: acquire for user %s: %w", user, err)
	}
	if ok == 0 {
		l.refused.Add(1)
		return chat.ErrTooManyConnections
	}
	l.acquired.Add(1)
	l.mu.Lock()
	l.held[s] = struct{}{}
	delete(l.orphans, s)
	l.mu.Unlock()
	return nil
}

// Release implements chat.ConnLimiter: it frees conn's slot cluster-wide.
// It must be called on the node that acquired the slot (that node would
// otherwise write it back at its next refresh). When Redis cannot be
// reached it returns an error, and the limiter frees the slot at its next
// refresh round once Redis answers (or the slot expires with its lease).
func (l *RedisConnLimiter) Release(ctx context.Context, user, conn string) error {
	if l.isClosed.Load() || l.cfg.Max <= 0 {
		return nil
	}
	s := slot{user, conn}
	l.mu.Lock()
	delete(l.held, s)
	if l.refreshing {
		// The refresh in flight may write the slot back after the release
		// below: free it again when the refresh is done.
		l.addOrphanLocked(s)
	}
	l.mu.Unlock()
	n, err := releaseScript.Run(ctx, l.client, []string{l.nodeKey}, l.userPrefix, s.member()).Int()
	if err != nil {
		l.errs.Add(1)
		l.mu.Lock()
		if _, held := l.held[s]; !held {
			l.addOrphanLocked(s)
		}
		l.mu.Unlock()
		return fmt.Errorf("cluster: redis conn limiter: release for user %s: %w", user, err)
	}
	l.released.Add(int64(n))
	return nil
}

// ReleaseNode frees every slot the node named node holds, cluster-wide,
// and returns how many unexpired slots it freed. Call it when memberlist
// declares node dead. It is idempotent: a second call, on any node, frees
// nothing. If node is in fact alive, its next refresh takes its slots back.
func (l *RedisConnLimiter) ReleaseNode(ctx context.Context, node string) (int, error) {
	if l.isClosed.Load() {
		return 0, ErrLimiterClosed
	}
	n, err := releaseNodeScript.Run(ctx, l.client, []string{l.nodePrefix + node}, l.userPrefix).Int()
	if err != nil {
		return 0, fmt.Errorf("cluster: redis conn limiter: release node %s: %w", node, err)
	}
	if n > 0 {
		l.log.Info("redis conn limiter: freed the slots of a node", "node", node, "slots", n)
	}
	return n, nil
}

// RedisConnLimiterStats are a RedisConnLimiter's counters since it was
// made.
type RedisConnLimiterStats struct {
	// Held is how many slots this node holds now.
	Held int `json:"held"`
	// Acquired counts successful Acquires (re-acquires included).
	Acquired int64 `json:"acquired"`
	// Refused counts Acquires refused with chat.ErrTooManyConnections.
	Refused int64 `json:"refused"`
	// Released counts slots freed by Release and by the limiter's cleanup
	// of orphaned slots.
	Released int64 `json:"released"`
	// Errors counts Acquires and Releases that failed to reach Redis.
	Errors int64 `json:"errors"`
	// Restored counts held slots the refresh found missing in Redis and
	// wrote back (after a Redis restart, or a ReleaseNode of a live node).
	Restored int64 `json:"restored"`
}

// Stats returns the limiter's counters.
func (l *RedisConnLimiter) Stats() RedisConnLimiterStats {
	l.mu.Lock()
	held := len(l.held)
	l.mu.Unlock()
	return RedisConnLimiterStats{
		Held:     held,
		Acquired: l.acquired.Load(),
		Refused:  l.refused.Load(),
		Released: l.released.Load(),
		Errors:   l.errs.Load(),
		Restored: l.restored.Load(),
	}
}

// addOrphanLocked remembers s as a slot to free. l.mu must be held.
func (l *RedisConnLimiter) addOrphanLocked(s slot) {
	if len(l.orphans) >= maxOrphans {
		return // it expires with its lease
	}
	l.orphans[s] = struct{}{}
}

// maxRoundTimeout bounds each step of a background round of the limiter
// and the presence (and so how long Close may wait for one when the Redis
// client is shared and Redis hangs).
const maxRoundTimeout = 5 * time.Second

// refreshLoop runs a refresh round every Lease/3, the first at once.
func (l *RedisConnLimiter) refreshLoop() {
	defer l.wg.Done()
	interval := l.cfg.Lease / 3
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		l.refreshRound(min(interval, maxRoundTimeout))
		select {
		case <-l.done:
			return
		case <-tick.C:
		}
	}
}

// refreshRound renews the leases of every held slot, then frees the
// orphaned ones, each step bounded by timeout.
func (l *RedisConnLimiter) refreshRound(timeout time.Duration) {
	l.mu.Lock()
	members := make([]any, 0, len(l.held))
	for s := range l.held {
		members = append(members, s.member())
	}
	l.refreshing = true
	l.mu.Unlock()

	var calls [][]any
	for batch := range chunksOf(members, refreshBatch) {
		calls = append(calls, append([]any{l.leaseMs, l.userPrefix}, batch...))
	}
	if calls == nil {
		calls = [][]any{{l.leaseMs, l.userPrefix}} // drops expired members all the same
	}
	ctx, cancel := context.WithTimeout(l.stopCtx, timeout)
	cmds, err := evalPipelined(ctx, l.client, refreshScript, []string{l.nodeKey}, calls)
	cancel()
	var written []string
	for _, c := range cmds {
		if err != nil {
			break
		}
		var w []string
		w, err = c.StringSlice()
		written = append(written, w...)
	}

	l.mu.Lock()
	l.refreshing = false
	wasDown := l.down
	l.down = err != nil
	// A slot written back but released meanwhile is an orphan now, not a
	// restored slot: the orphan pass below frees it again.
	restored := 0
	for _, m := range written {
		if _, held := l.held[unpackMember(m)]; held {
			restored++
		}
	}
	l.mu.Unlock()
	if err != nil && l.isClosed.Load() {
		return // Close ended the round
	}
	switch {
	case err != nil && !wasDown:
		l.log.Warn("redis conn limiter: lease refresh failed; slots expire unless it recovers", "err", err, "held", len(members))
	case err != nil:
		l.log.Debug("redis conn limiter: lease refresh failed again", "err", err)
	case wasDown:
		l.log.Info("redis conn limiter: lease refresh recovered", "held", len(members), "restored", restored)
	}
	if restored > 0 {
		l.restored.Add(int64(restored))
		if !wasDown {
			l.log.Warn("redis conn limiter: held slots were missing in Redis (Redis restarted, or ReleaseNode was called for this node) and were written back", "restored", restored)
		}
	}
	if err == nil {
		l.freeOrphans(timeout)
	}
}

// freeOrphans frees the orphaned slots not held again.
func (l *RedisConnLimiter) freeOrphans(timeout time.Duration) {
	l.mu.Lock()
	var slots []slot
	for s := range l.orphans {
		if _, held := l.held[s]; !held {
			slots = append(slots, s)
		}
	}
	clear(l.orphans)
	l.mu.Unlock()
	if len(slots) == 0 {
		return
	}
	members := make([]any, len(slots))
	for i, s := range slots {
		members[i] = s.member()
	}
	ctx, cancel := context.WithTimeout(l.stopCtx, timeout)
	n, err := l.runBatches(ctx, releaseScript, []any{l.userPrefix}, members)
	cancel()
	if err != nil && l.isClosed.Load() {
		return
	}
	if err != nil {
		l.log.Debug("redis conn limiter: freeing orphaned slots failed; retrying next round", "err", err, "slots", len(slots))
		l.mu.Lock()
		for _, s := range slots {
			if _, held := l.held[s]; !held {
				l.addOrphanLocked(s)
			}
		}
		l.mu.Unlock()
		return
	}
	l.released.Add(n)
	if n > 0 {
		l.log.Debug("redis conn limiter: freed orphaned slots", "slots", n)
	}
}

// runBatches runs script on the node key with args followed by members,
// refreshBatch members per call, all calls in one pipeline, and returns
// the sum of the calls' integer results.
func (l *RedisConnLimiter) runBatches(ctx context.Context, script *redis.Script, args, members []any) (int64, error) {
	var calls [][]any
	for batch := range chunksOf(members, refreshBatch) {
		calls = append(calls, append(append([]any(nil), args...), batch...))
	}
	cmds, err := evalPipelined(ctx, l.client, script, []string{l.nodeKey}, calls)
	if err != nil {
		return 0, err
	}
	var sum int64
	for _, c := range cmds {
		n, err := c.Int64()
		if err != nil {
			return 0, err
		}
		sum += n
	}
	return sum, nil
}

// evalPipelined runs script once per element of calls (its arguments), on
// keys, in one pipeline. When Redis does not have the script cached (after
// a restart), it runs the pipeline again with EVAL: each script of this
// package is idempotent, and a NOSCRIPT call did not run anyway.
func evalPipelined(ctx context.Context, c redis.UniversalClient, script *redis.Script, keys []string, calls [][]any) ([]*redis.Cmd, error) {
	run := func(sha bool) ([]*redis.Cmd, error) {
		cmds := make([]*redis.Cmd, len(calls))
		_, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, args := range calls {
				if sha {
					cmds[i] = script.EvalSha(ctx, p, keys, args...)
				} else {
					cmds[i] = script.Eval(ctx, p, keys, args...)
				}
			}
			return nil
		})
		return cmds, err
	}
	cmds, err := run(true)
	if err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
		cmds, err = run(false)
	}
	return cmds, err
}
