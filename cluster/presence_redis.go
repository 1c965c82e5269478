package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatd/chatd/chat"
)

// RedisPresenceConfig configures a RedisPresence. The zero value of each
// field picks the default given in its comment; Client or URL, and
// NodeName, are required.
type RedisPresenceConfig struct {
	// Client is the Redis client to use; the presence does not close it.
	// Set its ContextTimeoutEnabled (see RedisBrokerConfig.Client). With
	// go-redis's retries on, a Remove or RemoveNode whose reply was lost
	// and that was sent again reports nothing removed the second time.
	// Nil: a client is made from URL.
	Client redis.UniversalClient
	// URL is a redis:// or rediss:// URL (see redis.ParseURL), used when
	// Client is nil. The presence owns that client, closes it in Close, and
	// sets ContextTimeoutEnabled and MaxRetries -1 on it.
	URL string
	// Prefix starts every key the presence uses: "<Prefix>:{<room>}:presence"
	// is a room's entries (a hash of phx_ref to JSON entry, in the room's
	// hash slot),
	// "<Prefix>:presence-node:<node>" the (room, phx_ref) pairs a node
	// added, "<Prefix>:alive:<node>" a node's liveness lease and
	// "<Prefix>:nodes" the set of nodes with one. Every node of a cluster
	// must use the same Prefix. Zero: "chatd".
	Prefix string
	// NodeName names this node, as memberlist knows it: RemoveNode removes
	// a node's entries by that name. Required.
	NodeName string
	// TTL is the lifetime of this node's alive key, refreshed every TTL/3.
	// When it lapses (the node died, or could not reach Redis for TTL) any
	// node's sweeper removes this node's entries. Zero: 15 s.
	TTL time.Duration
	// SweepInterval is how often this node looks for nodes whose alive key
	// lapsed and removes their entries: a dead node's entries are gone at
	// most TTL + SweepInterval after its last refresh even when nobody
	// calls RemoveNode. Zero: TTL/3.
	SweepInterval time.Duration
	// Logger receives the presence's logs. Nil: discard.
	Logger *slog.Logger
}

func (c *RedisPresenceConfig) setDefaults() error {
	if c.Prefix == "" {
		c.Prefix = "chatd"
	}
	if c.TTL == 0 {
		c.TTL = 15 * time.Second
	}
	if c.SweepInterval == 0 {
		c.SweepInterval = c.TTL / 3
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	switch {
	case c.Client == nil && c.URL == "":
		return errors.New("cluster: redis presence: a Client or URL is required")
	case c.NodeName == "":
		return errors.New("cluster: redis presence: NodeName is required")
	case c.TTL < 30*time.Millisecond:
		return errors.New("cluster: redis presence: TTL must be at least 30ms")
	case c.SweepInterval < 0:
		return errors.New("cluster: redis presence: SweepInterval must not be negative")
	}
	return nil
}

// ErrPresenceClosed is returned by the methods of a closed RedisPresence.
var ErrPresenceClosed = errors.New("cluster: redis presence closed")

// RedisPresence is the chat.Presence of a cluster whose nodes share one
// Redis server, and its chat.NodeReaper.
//
// Each room is a hash of phx_ref to the JSON entry (with the node and run
// that added it), and each node has a set of the (room, phx_ref) pairs it
// added. Add and Remove are single Lua scripts that update both, so they
// are atomic; List is one HGETALL. RemoveNode is one Lua script that
// removes every entry a node added and returns them, so concurrent callers
// (every survivor hears memberlist declare a node dead) split the entries:
// each is returned to one of them.
//
// Liveness: each node keeps a key "<Prefix>:alive:<node>" that expires
// after TTL unless the node refreshes it (every TTL/3), and registers in
// "<Prefix>:nodes". Every node sweeps (every SweepInterval): each
// registered node whose alive key is gone has its entries removed by a
// script that first checks, atomically, that the key is still gone, and
// the entries removed are reported through PresenceLeft. So a node's entries
// outlive it by at most TTL + SweepInterval even when memberlist is not
// consulted, and by the time memberlist takes to declare it dead when it
// is and RemoveNode is called.
//
// The node keeps the entries it added in memory. When its refresh finds its
// alive key gone (Redis restarted empty, or another node swept it after it
// could not refresh for TTL, or RemoveNode was called for it while alive)
// it writes those entries back and reports them through PresenceJoined; when it
// finds the key set by an earlier run of the same node name (a restart
// within TTL), it removes that run's entries and reports them through
// PresenceLeft. An entry whose Add or Remove failed (Redis unreachable, or
// the reply lost: the script may have run) is removed by the next refresh
// round instead.
//
// The scripts address rooms' keys from within Lua, so the presence needs a
// single Redis server (or one Redis Cluster shard), as RedisBroker does.
// Its methods are safe for concurrent use.
type RedisPresence struct {
	redisLoops  // client, alive and sweep goroutines, Close
	cfg         RedisPresenceConfig
	log         *slog.Logger
	run         string // identifies this RedisPresence among runs of the node
	roomPrefix  string // "<Prefix>:{": a room's hash is roomPrefix + room + "}:presence"
	nodePrefix  string // "<Prefix>:presence-node:"
	alivePrefix string // "<Prefix>:alive:"
	nodesKey    string // "<Prefix>:nodes"
	nodeKey     string // nodePrefix + NodeName
	aliveKey    string // alivePrefix + NodeName

	cbMu   sync.Mutex          // serialises the events' calls
	events chat.PresenceEvents // set by Run; may be nil

	// mu guards the fields below; it is never held across network I/O or a
	// callback.
	mu         sync.Mutex
	running    bool
	local      map[string]map[string]chat.PresenceEntry // room -> ref -> entry this node added
	orphans    map[roomRef]struct{}                     // entries to remove from Redis, unless added again
	resyncing  bool                                     // entries of local are being written back
	rounds     int                                      // successful refresh rounds
	needResync bool                                     // the last resync failed
	// needCleanup: earlier runs of this node may have left entries (true
	// until the first successful cleanup).
	needCleanup bool
	down        bool // the last refresh round failed

	swept, restored, errs atomic.Int64
}

// roomKey returns the key of room's hash, in the room's hash slot.
func (p *RedisPresence) roomKey(room string) string { return p.roomPrefix + room + "}:presence" }

// roomRef names one entry.
type roomRef struct{ room, ref string }

// member is the entry's member in its node's set.
func (r roomRef) member() string { return packPair(r.room, r.ref) }

// storedEntry is the JSON of an entry in a room's hash. It decodes as a
// chat.PresenceEntry.
type storedEntry struct {
	UserID string            `json:"user_id"`
	Meta   chat.PresenceMeta `json:"meta"`
	// Owner is the node that added the entry, Run that node's run.
	Owner string `json:"owner"`
	Run   string `json:"run"`
}

// presenceLua are the Lua functions the presence scripts share, after
// luaHelpers.
const presenceLua = luaHelpers + `
local function owner(v)
  local ok, e = pcall(cjson.decode, v)
  if ok and type(e) == 'table' and type(e.owner) == 'string' then
    return e.owner, e.run
  end
  return nil, nil
end
`

// addScript sets entry ARGV[2] as field ARGV[1] of room hash KEYS[1] and
// records member ARGV[3] in this node's set KEYS[2]. An entry of that ref
// another node added moves to this node: it leaves that node's set,
// ARGV[4]..owner. ARGV[5] is this node's name.
var addScript = redis.NewScript(presenceLua + `
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then
  local o = owner(old)
  if o and o ~= ARGV[5] then
    redis.call('SREM', ARGV[4] .. o, ARGV[3])
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
return 1
`)

// removeScript removes entries, given as pairs (room, ref) in ARGV[3:],
// from the room hashes ARGV[1]..room and from the sets of the nodes that
// added them, ARGV[2]..owner. It returns the removed entries as a flat list
// of room, JSON entry.
var removeScript = redis.NewScript(presenceLua + `
local out = {}
for i = 3, #ARGV, 2 do
  local room, ref = ARGV[i], ARGV[i + 1]
  local key = ARGV[1] .. room .. '}:presence'
  local v = redis.call('HGET', key, ref)
  if v then
    redis.call('HDEL', key, ref)
    local o = owner(v)
    if o then
      local n = tostring(#room)
      redis.call('SREM', ARGV[2] .. o, n .. ':' .. room .. ref)
    end
    out[#out + 1] = room
    out[#out + 1] = v
  end
end
return out
`)

// restoreScript writes back entries this node holds: ARGV[2:] are triples
// (room, ref, JSON entry); an entry already in its room hash ARGV[1]..room
// is left as it is. Each is recorded in this node's set KEYS[1]. It
// returns the 1-based positions of the triples it wrote back.
var restoreScript = redis.NewScript(presenceLua + `
local out = {}
local k = 0
for i = 2, #ARGV, 3 do
  k = k + 1
  local room, ref = ARGV[i], ARGV[i + 1]
  if redis.call('HSETNX', ARGV[1] .. room .. '}:presence', ref, ARGV[i + 2]) == 1 then
    out[#out + 1] = k
  end
  redis.call('SADD', KEYS[1], tostring(#room) .. ':' .. room .. ref)
end
return out
`)

// removeNodeScript removes the entries node ARGV[2] added, as recorded in
// its set KEYS[1], from the room hashes ARGV[1]..room, and returns them as
// a flat list of room, JSON entry. An entry another node has added since
// (same ref) is left alone. ARGV[3] is the mode:
//   - "any": remove them all, delete the set and the node's alive key
//     KEYS[2], and unregister the node from KEYS[3];
//   - "dead": the same, only if the alive key KEYS[2] does not exist
//     (checked in the same atomic step; else nothing is done);
//   - "stale": remove only entries of runs other than ARGV[4], keeping the
//     set, the alive key and the registration.
var removeNodeScript = redis.NewScript(presenceLua + `
local mode = ARGV[3]
if mode == 'dead' and redis.call('EXISTS', KEYS[2]) == 1 then
  return {}
end
local out = {}
for _, m in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local keep = false
  local room, ref = unpackPair(m)
  if room then
    local key = ARGV[1] .. room .. '}:presence'
    local v = redis.call('HGET', key, ref)
    if v then
      local o, run = owner(v)
      if o and o ~= ARGV[2] then
        -- another node's now
      elseif mode == 'stale' and run == ARGV[4] then
        keep = true
      else
        redis.call('HDEL', key, ref)
        out[#out + 1] = room
        out[#out + 1] = v
      end
    end
  end
  if mode == 'stale' and not keep then
    redis.call('SREM', KEYS[1], m)
  end
end
if mode ~= 'stale' then
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('SREM', KEYS[3], ARGV[2])
end
return out
`)

// aliveScript sets this node's alive key KEYS[1] to run ARGV[1] for
// ARGV[2] milliseconds and registers node ARGV[3] in KEYS[2]. It returns
// the key's previous value, "" when it had none.
var aliveScript = redis.NewScript(`
local old = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
if old then return old end
return ''
`)

var (
	_ chat.Presence   = (*RedisPresence)(nil)
	_ chat.NodeReaper = (*RedisPresence)(nil)
)

// NewRedisPresence returns a presence. It does not contact Redis; its
// methods work at once, and Run starts the liveness refresh and the
// sweeper. Run it before the node serves anyone.
func NewRedisPresence(cfg RedisPresenceConfig) (*RedisPresence, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	var id [8]byte
	rand.Read(id[:])
	p := &RedisPresence{
		cfg:         cfg,
		log:         cfg.Logger,
		run:         hex.EncodeToString(id[:]),
		roomPrefix:  cfg.Prefix + ":{",
		nodePrefix:  cfg.Prefix + ":presence-node:",
		alivePrefix: cfg.Prefix + ":alive:",
		nodesKey:    cfg.Prefix + ":nodes",
		local:       make(map[string]map[string]chat.PresenceEntry),
		orphans:     make(map[roomRef]struct{}),
		needCleanup: true,
	}
	if err := p.init(cfg.Client, cfg.URL, cfg.Logger, "redis presence"); err != nil {
		return nil, err
	}
	p.nodeKey = p.nodePrefix + cfg.NodeName
	p.aliveKey = p.alivePrefix + cfg.NodeName
	return p, nil
}

// Run implements chat.PresenceRunner: it starts the goroutines that keep
// this node's alive key (the first refresh at once) and sweep dead nodes,
// and reports to ev (nil: nothing is reported):
//   - PresenceLeft, the entries of a room that this node's background work
//     removed: a dead node's entries found by the sweeper, the entries a
//     previous run of this node (same NodeName) left behind, and entries
//     whose Add or Remove had failed, removed later. Each removed entry is
//     reported once across the cluster, so the hub can broadcast presence
//     leaves. RemoveNode does not report: it returns what it removed.
//   - PresenceJoined, entries of a room that this node holds and found
//     missing from Redis (after a Redis restart, or after another node took
//     this one for dead and removed its entries) and wrote back, so the hub
//     can broadcast presence joins again.
//
// Calls are made one at a time from the presence's goroutines; they must
// not block for long, nor call Close. Run does not block and does not wait
// for Redis. Run may be called once.
func (p *RedisPresence) Run(ev chat.PresenceEvents) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.isClosed.Load():
		return ErrPresenceClosed
	case p.running:
		return errors.New("cluster: redis presence already running")
	}
	p.running = true
	p.events = ev
	p.wg.Add(2)
	go p.aliveLoop()
	go p.sweepLoop()
	return nil
}

// Close stops the presence's goroutines and closes the Redis client if the
// presence made it; the goroutines have ended when Close returns (with a
// shared client and a hung Redis, that may take a round's timeout, at most
// 5 s). It removes nothing: entries still
// present (the node's sessions normally Remove theirs before) are removed
// by another node's RemoveNode or sweeper once this node's alive key
// lapses, which reports them. Later calls fail with ErrPresenceClosed.
// Close is idempotent.
func (p *RedisPresence) Close() error { return p.shutdown() }

// encode returns e as stored in a room's hash.
func (p *RedisPresence) encode(e chat.PresenceEntry) string {
	// Strings and integers only: Marshal cannot fail.
	b, _ := json.Marshal(storedEntry{UserID: e.UserID, Meta: e.Meta, Owner: p.cfg.NodeName, Run: p.run})
	return string(b)
}

// Add implements chat.Presence with one atomic script. The entry is
// recorded as this node's: RemoveNode(NodeName) removes it.
func (p *RedisPresence) Add(ctx context.Context, room string, e chat.PresenceEntry) error {
	if p.isClosed.Load() {
		return ErrPresenceClosed
	}
	ref := e.Meta.PhxRef
	if ref == "" {
		return errors.New("cluster: redis presence: add: empty phx_ref")
	}
	v := p.encode(e)
	rr := roomRef{room, ref}
	p.mu.Lock()
	r := p.local[room]
	if r == nil {
		r = make(map[string]chat.PresenceEntry)
		p.local[room] = r
	}
	r[ref] = e
	delete(p.orphans, rr)
	p.mu.Unlock()
	err := addScript.Run(ctx, p.client, []string{p.roomKey(room), p.nodeKey},
		ref, v, rr.member(), p.nodePrefix, p.cfg.NodeName).Err()
	if err != nil {
		p.errs.Add(1)
		// Not added, as far as the caller knows; but the script may have
		// run: remove the entry later.
		p.mu.Lock()
		if cur, ok := p.local[room][ref]; ok && cur == e {
			p.deleteLocalLocked(rr)
			p.addOrphanLocked(rr)
		}
		p.mu.Unlock()
		return fmt.Errorf("cluster: redis presence: add to room %s: %w", room, err)
	}
	return nil
}

// Remove implements chat.Presence with one atomic script; any node may
// remove any entry. When Redis cannot be reached it returns an error, and
// if the entry is this node's, the next refresh round removes it once
// Redis answers (reporting it through PresenceLeft).
func (p *RedisPresence) Remove(ctx context.Context, room, ref string) (bool, error) {
	if p.isClosed.Load() {
		return false, ErrPresenceClosed
	}
	rr := roomRef{room, ref}
	p.mu.Lock()
	_, mine := p.local[room][ref]
	p.deleteLocalLocked(rr)
	if p.resyncing {
		// The resync in flight may write the entry back after the removal
		// below: remove it again when the resync is done.
		p.addOrphanLocked(rr)
	}
	p.mu.Unlock()
	res, err := removeScript.Run(ctx, p.client, nil, p.roomPrefix, p.nodePrefix, room, ref).Slice()
	if err != nil {
		p.errs.Add(1)
		if mine {
			p.mu.Lock()
			if _, again := p.local[room][ref]; !again {
				p.addOrphanLocked(rr)
			}
			p.mu.Unlock()
		}
		return false, fmt.Errorf("cluster: redis presence: remove from room %s: %w", room, err)
	}
	return len(res) > 0, nil
}

// List implements chat.Presence with one HGETALL.
func (p *RedisPresence) List(ctx context.Context, room string) ([]chat.PresenceEntry, error) {
	if p.isClosed.Load() {
		return nil, ErrPresenceClosed
	}
	m, err := p.client.HGetAll(ctx, p.roomKey(room)).Result()
	if err != nil {
		return nil, fmt.Errorf("cluster: redis presence: list room %s: %w", room, err)
	}
	out := make([]chat.PresenceEntry, 0, len(m))
	for ref, v := range m {
		var e chat.PresenceEntry
		if err := json.Unmarshal([]byte(v), &e); err != nil {
			p.log.Warn("redis presence: skipping an undecodable entry", "room", room, "ref", ref, "err", err)
			continue
		}
		out = append(out, e)
	}
	return out, nil
}

// RemoveNode implements chat.NodeReaper with one atomic script: it removes
// every entry the node named node added and returns them by room; a second
// call, on any node, returns nothing. It also deletes the node's alive key,
// so that if the node is in fact alive it notices at its next refresh and
// writes its entries back (reporting them through its PresenceJoined).
// RemoveNode does not call PresenceLeft.
func (p *RedisPresence) RemoveNode(ctx context.Context, node string) (map[string][]chat.PresenceEntry, error) {
	if p.isClosed.Load() {
		return nil, ErrPresenceClosed
	}
	removed, err := p.removeNode(ctx, node, "any")
	if err != nil {
		return nil, fmt.Errorf("cluster: redis presence: remove node %s: %w", node, err)
	}
	if n := countEntries(removed); n > 0 {
		p.log.Info("redis presence: removed the entries of a node", "node", node, "entries", n)
	}
	return removed, nil
}

// removeNode runs removeNodeScript for node in mode.
func (p *RedisPresence) removeNode(ctx context.Context, node, mode string) (map[string][]chat.PresenceEntry, error) {
	res, err := removeNodeScript.Run(ctx, p.client,
		[]string{p.nodePrefix + node, p.alivePrefix + node, p.nodesKey},
		p.roomPrefix, node, mode, p.run).Slice()
	if err != nil {
		return nil, err
	}
	return p.decodePairs(res), nil
}

// decodePairs decodes a flat script reply of room, JSON entry.
func (p *RedisPresence) decodePairs(res []any) map[string][]chat.PresenceEntry {
	out := make(map[string][]chat.PresenceEntry)
	for i := 0; i+1 < len(res); i += 2 {
		room, _ := res[i].(string)
		v, _ := res[i+1].(string)
		var e chat.PresenceEntry
		if err := json.Unmarshal([]byte(v), &e); err != nil {
			p.log.Warn("redis presence: removed an undecodable entry", "room", room, "err", err)
			continue
		}
		out[room] = append(out[room], e)
	}
	return out
}

func countEntries(m map[string][]chat.PresenceEntry) int {
	n := 0
	for _, es := range m {
		n += len(es)
	}
	return n
}

// RedisPresenceStats are a RedisPresence's counters since it was made.
type RedisPresenceStats struct {
	// Local is how many entries this node holds now.
	Local int `json:"local"`
	// Swept counts entries this node's background work removed and reported
	// through PresenceLeft.
	Swept int64 `json:"swept"`
	// Restored counts entries this node wrote back (PresenceJoined).
	Restored int64 `json:"restored"`
	// Errors counts Adds and Removes that failed to reach Redis.
	Errors int64 `json:"errors"`
}

// Stats returns the presence's counters.
func (p *RedisPresence) Stats() RedisPresenceStats {
	p.mu.Lock()
	n := 0
	for _, r := range p.local {
		n += len(r)
	}
	p.mu.Unlock()
	return RedisPresenceStats{Local: n, Swept: p.swept.Load(), Restored: p.restored.Load(), Errors: p.errs.Load()}
}

// deleteLocalLocked forgets rr as this node's. p.mu must be held.
func (p *RedisPresence) deleteLocalLocked(rr roomRef) {
	r := p.local[rr.room]
	delete(r, rr.ref)
	if len(r) == 0 {
		delete(p.local, rr.room)
	}
}

// addOrphanLocked remembers rr as an entry to remove. p.mu must be held.
func (p *RedisPresence) addOrphanLocked(rr roomRef) {
	if len(p.orphans) < maxOrphans {
		p.orphans[rr] = struct{}{}
	}
}

// report hands removed entries to PresenceLeft, room by room.
func (p *RedisPresence) report(removed map[string][]chat.PresenceEntry) {
	n := countEntries(removed)
	if n == 0 {
		return
	}
	p.swept.Add(int64(n))
	if p.events == nil {
		return
	}
	p.cbMu.Lock()
	defer p.cbMu.Unlock()
	for room, es := range removed {
		p.events.PresenceLeft(room, es)
	}
}

// aliveLoop runs a refresh round every TTL/3, the first at once.
func (p *RedisPresence) aliveLoop() {
	defer p.wg.Done()
	interval := p.cfg.TTL / 3
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		p.refreshRound(min(interval, maxRoundTimeout))
		select {
		case <-p.done:
			return
		case <-tick.C:
		}
	}
}

// refreshRound renews the alive key. If the key was not this run's, it
// removes what earlier runs of this node left, and (after the first round)
// writes back this node's entries. Then it removes orphaned entries. Each
// step is bounded by timeout.
func (p *RedisPresence) refreshRound(timeout time.Duration) {
	ctx, cancel := context.WithTimeout(p.stopCtx, timeout)
	old, err := aliveScript.Run(ctx, p.client, []string{p.aliveKey, p.nodesKey},
		p.run, p.cfg.TTL.Milliseconds(), p.cfg.NodeName).Text()
	cancel()
	if err != nil && p.isClosed.Load() {
		return
	}
	p.mu.Lock()
	wasDown, first, needResync, needCleanup := p.down, p.rounds == 0, p.needResync, p.needCleanup
	p.down = err != nil
	if err == nil {
		p.rounds++
	}
	p.mu.Unlock()
	if err != nil {
		if !wasDown {
			p.log.Warn("redis presence: alive refresh failed; other nodes sweep this node's entries if it lasts", "err", err, "ttl", p.cfg.TTL)
		} else {
			p.log.Debug("redis presence: alive refresh failed again", "err", err)
		}
		return
	}
	if wasDown {
		p.log.Info("redis presence: alive refresh recovered")
	}
	if old != p.run {
		if old != "" && !first {
			p.log.Warn("redis presence: this node's alive key was taken by another run of the same node name: is NodeName unique?", "node", p.cfg.NodeName)
		}
		if old != "" {
			needCleanup = true
		}
		if !first {
			p.log.Warn("redis presence: this node's alive key was gone (Redis restarted, or the node was taken for dead); writing its entries back")
			needResync = true
		}
	}
	if needCleanup {
		p.removeStale(timeout)
	}
	if needResync {
		p.resync(timeout)
	}
	p.removeOrphans(timeout)
}

// removeStale removes the entries earlier runs of this node left (a run
// that crashed and was restarted before its alive key lapsed), and reports
// them.
func (p *RedisPresence) removeStale(timeout time.Duration) {
	ctx, cancel := context.WithTimeout(p.stopCtx, timeout)
	removed, err := p.removeNode(ctx, p.cfg.NodeName, "stale")
	cancel()
	p.mu.Lock()
	p.needCleanup = err != nil
	p.mu.Unlock()
	if err != nil {
		p.log.Warn("redis presence: removing the entries of an earlier run failed; retrying next round", "err", err)
		return
	}
	if n := countEntries(removed); n > 0 {
		p.log.Info("redis presence: removed the entries of an earlier run of this node", "entries", n)
	}
	p.report(removed)
}

// resync writes back every entry this node holds that Redis lacks, and
// reports those through PresenceJoined.
func (p *RedisPresence) resync(timeout time.Duration) {
	type item struct {
		room string
		e    chat.PresenceEntry
	}
	p.mu.Lock()
	var items []item
	for room, r := range p.local {
		for _, e := range r {
			items = append(items, item{room, e})
		}
	}
	p.resyncing = true
	p.needResync = false
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		p.resyncing = false
		p.mu.Unlock()
	}()
	if len(items) == 0 {
		return
	}
	var calls [][]any
	for batch := range chunksOf(items, refreshBatch) {
		args := []any{p.roomPrefix}
		for _, it := range batch {
			args = append(args, it.room, it.e.Meta.PhxRef, p.encode(it.e))
		}
		calls = append(calls, args)
	}
	ctx, cancel := context.WithTimeout(p.stopCtx, timeout)
	cmds, err := evalPipelined(ctx, p.client, restoreScript, []string{p.nodeKey}, calls)
	cancel()
	if err != nil {
		p.log.Warn("redis presence: writing entries back failed; retrying next round", "err", err)
		p.setNeedResync()
		return
	}
	var written []item
	for ci, c := range cmds {
		pos, err := c.Int64Slice()
		if err != nil {
			p.log.Warn("redis presence: writing entries back failed; retrying next round", "err", err)
			p.setNeedResync()
			return
		}
		for _, k := range pos {
			written = append(written, items[ci*refreshBatch+int(k)-1])
		}
	}
	// An entry written back but removed meanwhile is an orphan now, not a
	// restored entry: the orphan pass removes it again.
	restored := make(map[string][]chat.PresenceEntry)
	p.mu.Lock()
	for _, it := range written {
		if cur, ok := p.local[it.room][it.e.Meta.PhxRef]; ok && cur == it.e {
			restored[it.room] = append(restored[it.room], it.e)
		}
	}
	p.mu.Unlock()
	n := countEntries(restored)
	p.log.Info("redis presence: entries written back", "entries", n, "held", len(items))
	if n == 0 {
		return
	}
	p.restored.Add(int64(n))
	if p.events == nil {
		return
	}
	p.cbMu.Lock()
	defer p.cbMu.Unlock()
	for room, es := range restored {
		p.events.PresenceJoined(room, es)
	}
}

// setNeedResync makes the next refresh round resync again.
func (p *RedisPresence) setNeedResync() {
	p.mu.Lock()
	p.needResync = true
	p.mu.Unlock()
}

// removeOrphans removes the entries whose Add or Remove failed, unless this
// node added them again since, and reports those that were there.
func (p *RedisPresence) removeOrphans(timeout time.Duration) {
	p.mu.Lock()
	var rrs []roomRef
	for rr := range p.orphans {
		if _, again := p.local[rr.room][rr.ref]; !again {
			rrs = append(rrs, rr)
		}
	}
	clear(p.orphans)
	p.mu.Unlock()
	if len(rrs) == 0 {
		return
	}
	var calls [][]any
	for batch := range chunksOf(rrs, refreshBatch) {
		args := []any{p.roomPrefix, p.nodePrefix}
		for _, rr := range batch {
			args = append(args, rr.room, rr.ref)
		}
		calls = append(calls, args)
	}
	ctx, cancel := context.WithTimeout(p.stopCtx, timeout)
	cmds, err := evalPipelined(ctx, p.client, removeScript, nil, calls)
	cancel()
	removed := make(map[string][]chat.PresenceEntry)
	for _, c := range cmds {
		if res, cerr := c.Slice(); cerr == nil {
			for room, es := range p.decodePairs(res) {
				removed[room] = append(removed[room], es...)
			}
		}
	}
	if err != nil {
		// Some calls may have run; removing again is harmless.
		p.log.Debug("redis presence: removing orphaned entries failed; retrying next round", "err", err)
		p.mu.Lock()
		for _, rr := range rrs {
			if _, again := p.local[rr.room][rr.ref]; !again {
				p.addOrphanLocked(rr)
			}
		}
		p.mu.Unlock()
	}
	p.report(removed)
}

// sweepLoop sweeps every SweepInterval.
func (p *RedisPresence) sweepLoop() {
	defer p.wg.Done()
	tick := time.NewTicker(p.cfg.SweepInterval)
	defer tick.Stop()
	for {
		select {
		case <-p.done:
			return
		case <-tick.C:
		}
		p.sweep()
	}
}

// sweep removes the entries of every registered node whose alive key is
// gone, and reports them. Any number of nodes may sweep at once: the
// removal script checks the key again, and each entry goes to one of them.
func (p *RedisPresence) sweep() {
	ctx, cancel := context.WithTimeout(p.stopCtx, min(p.cfg.SweepInterval, maxRoundTimeout))
	defer cancel()
	nodes, err := p.client.SMembers(ctx, p.nodesKey).Result()
	if err != nil {
		p.log.Debug("redis presence: sweep failed", "err", err)
		return
	}
	exists := make([]*redis.IntCmd, len(nodes))
	_, err = p.client.Pipelined(ctx, func(pl redis.Pipeliner) error {
		for i, n := range nodes {
			exists[i] = pl.Exists(ctx, p.alivePrefix+n)
		}
		return nil
	})
	if err != nil {
		p.log.Debug("redis presence: sweep failed", "err", err)
		return
	}
	for i, node := range nodes {
		if node == p.cfg.NodeName || exists[i].Val() != 0 {
			continue
		}
		removed, err := p.removeNode(ctx, node, "dead")
		if err != nil {
			p.log.Debug("redis presence: sweep failed", "node", node, "err", err)
			return
		}
		if n := countEntries(removed); n > 0 {
			p.log.Info("redis presence: swept the entries of a node whose alive key lapsed", "node", node, "entries", n)
		}
		p.report(removed)
	}
}

// chunksOf splits s into slices of at most n elements.
func chunksOf[T any](s []T, n int) func(yield func([]T) bool) {
	return func(yield func([]T) bool) {
		for len(s) > 0 {
			k := min(len(s), n)
			if !yield(s[:k]) {
				return
			}
			s = s[k:]
		}
	}
}
