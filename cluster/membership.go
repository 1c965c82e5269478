package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// Failure-detection profiles for MembershipConfig.Profile.
const (
	// ProfileLAN is memberlist.DefaultLANConfig: probe every 1 s, a dead node
	// is declared after roughly 5-6 s in a small cluster. For production.
	ProfileLAN = "lan"
	// ProfileWAN is memberlist.DefaultWANConfig: slower probes, longer timeouts.
	ProfileWAN = "wan"
	// ProfileLocal is memberlist.DefaultLocalConfig with a 500 ms probe
	// interval: a dead node is declared within about 2-3 s. For tests and for
	// clusters on one machine.
	ProfileLocal = "local"
)

const (
	// DefaultGossipPort is the memberlist port used when BindAddr is empty.
	DefaultGossipPort = 7946
	// DefaultGossipLabel is the label of chatd's gossip (MembershipConfig.Label).
	DefaultGossipLabel = "chatd"

	defaultRejoinInterval = 5 * time.Second
	defaultMetaInterval   = 2 * time.Second
	// defaultLeaveTimeout bounds the graceful leave in Close when its context
	// has no deadline.
	defaultLeaveTimeout = 5 * time.Second
	// eventQueueSize bounds the queue between memberlist's callbacks and the
	// goroutine that logs events and runs OnLeave callbacks.
	eventQueueSize = 256
)

// MemberState is a member's state as seen by the local node.
type MemberState string

// Member states. memberlist v0.7 does not surface suspicion to its delegates
// (nor keep memberlist.Node.State current), so a suspected node stays
// MemberAlive until it is declared dead; there is no "suspect" state here.
const (
	MemberAlive MemberState = "alive"
	// MemberDead: failure detection declared the node dead (crash, kill,
	// partition).
	MemberDead MemberState = "dead"
	// MemberLeft: the node left gracefully (Close).
	MemberLeft MemberState = "left"
)

// NodeMeta is what a node advertises about itself to the cluster. It travels
// JSON-encoded in memberlist's node metadata, which is limited to
// memberlist.MetaMaxSize (512) bytes: every field but HTTPAddr has a bounded
// size, so in practice HTTPAddr must stay under roughly 380 bytes.
type NodeMeta struct {
	// HTTPAddr is the address clients and peers reach this node's HTTP server at.
	HTTPAddr string `json:"http_addr,omitempty"`
	// Connections is the number of WebSocket connections open on the node.
	Connections int `json:"connections"`
	// Users is the number of distinct users connected to the node.
	Users int `json:"users"`
	// Rooms is the number of rooms with at least one member on the node.
	Rooms int `json:"rooms"`
	// MessagesIn counts the messages the node accepted since it started
	// (peers derive its message rate from it).
	MessagesIn int64 `json:"messages_in,omitempty"`
	// QueueDepth is how many messages wait in the node's persistence queue.
	QueueDepth int `json:"queue_depth,omitempty"`
	// StartedAt is when the node started; it tells two lives of a node that
	// reuses its name apart.
	StartedAt time.Time `json:"started_at"`
}

// metaWire is the encoded form of NodeMeta: the same fields plus the graceful
// leave flag, which is how peers tell "left" from "dead" (memberlist's own
// notion of it is not visible to delegates).
type metaWire struct {
	NodeMeta
	Leaving bool `json:"leaving,omitempty"`
}

// encodeMeta encodes meta for memberlist and checks the size limit.
func encodeMeta(meta NodeMeta, leaving bool) ([]byte, error) {
	b, err := json.Marshal(metaWire{NodeMeta: meta, Leaving: leaving})
	if err != nil {
		return nil, fmt.Errorf("cluster: encode node metadata: %w", err)
	}
	if len(b) > memberlist.MetaMaxSize {
		return nil, fmt.Errorf("cluster: node metadata is %d bytes, over memberlist's %d-byte limit (HTTPAddr is %d bytes)",
			len(b), memberlist.MetaMaxSize, len(meta.HTTPAddr))
	}
	return b, nil
}

func decodeMeta(b []byte) (metaWire, error) {
	var w metaWire
	if len(b) == 0 {
		return w, nil
	}
	if err := json.Unmarshal(b, &w); err != nil {
		return metaWire{}, fmt.Errorf("cluster: decode node metadata: %w", err)
	}
	return w, nil
}

// MembershipConfig configures a Membership. The zero value of every field but
// NodeName is usable.
type MembershipConfig struct {
	// NodeName names this node in the cluster; it must be unique among live
	// nodes. Required.
	NodeName string
	// BindAddr is the gossip address, "ip:port", used for both TCP and UDP.
	// An empty host binds every interface; port 0 lets the kernel pick one
	// (see LocalAddr). Empty: ":7946".
	BindAddr string
	// AdvertiseAddr is the "ip" or "ip:port" other nodes reach this node at
	// (a Kubernetes pod IP, a NAT address). Empty: memberlist picks the bind
	// IP, or a private interface address when bound to all interfaces, and
	// the bound port.
	AdvertiseAddr string
	// Join lists the seeds: each "host:port", where host is an IP or a DNS
	// name every A/AAAA record of which is a seed (a Kubernetes headless
	// service such as "chatd-headless.ns.svc:7946"). A seed without a port
	// uses the bind port. Empty: the node does not join anyone; others may
	// join it.
	Join []string
	// LookupHost resolves seed names. Nil: net.DefaultResolver.LookupHost.
	LookupHost LookupHostFunc
	// RejoinInterval is how often a node that is alone (no other live
	// member) re-resolves the seeds and tries to join them. Zero: 5 s.
	RejoinInterval time.Duration
	// Meta builds this node's metadata; it is called from a goroutine of the
	// Membership, at Start and every MetaInterval. A zero StartedAt is
	// replaced with the time Start was called. Nil: the node advertises only
	// StartedAt.
	Meta func() NodeMeta
	// MetaInterval is how often Meta is polled; changed metadata is
	// re-broadcast to the cluster. Zero: 2 s.
	MetaInterval time.Duration
	// Profile selects memberlist's timing: ProfileLAN, ProfileWAN or
	// ProfileLocal. Empty: ProfileLAN.
	Profile string
	// ProbeInterval overrides the profile's interval between failure probes;
	// the time to declare a node dead scales with it. Zero: the profile's.
	ProbeInterval time.Duration
	// SuspicionMult overrides the profile's suspicion multiplier: a suspect
	// node is declared dead after about SuspicionMult * ProbeInterval (times
	// log10 of the cluster size, for clusters above 10). Zero: the profile's.
	SuspicionMult int
	// SecretKey encrypts and authenticates every gossip packet and stream
	// (AES-GCM, memberlist's keyring): 16, 24 or 32 bytes for AES-128, -192
	// or -256. A node with another key, or none, cannot join, add members
	// or declare anyone dead: its messages are dropped. Every node of a
	// cluster must use the same key. Nil: gossip is plaintext and anyone
	// who reaches the gossip port is believed.
	SecretKey []byte
	// Label is written on every gossip packet and stream (and is the
	// encryption's authenticated data): a node with another label is kept
	// out, whatever its key. Empty: DefaultGossipLabel.
	Label string
	// Logger receives membership events and memberlist's own log lines
	// (errors and warnings at warn, the rest at debug). Nil: discarded.
	Logger *slog.Logger
}

// Member is one node of the cluster as the local node sees it.
type Member struct {
	// Name is the node's NodeName.
	Name string `json:"name"`
	// Addr is the node's gossip address, "ip:port".
	Addr string `json:"addr"`
	// State is alive, dead or left.
	State MemberState `json:"state"`
	// Meta is the node's last advertised metadata (zero if it sent none or
	// it could not be decoded).
	Meta NodeMeta `json:"meta"`
	// Leaving reports that the node announced a graceful leave.
	Leaving bool `json:"leaving,omitempty"`
	// Local reports that this is the local node.
	Local bool `json:"local,omitempty"`
	// Since is when the local node saw the node enter State.
	Since time.Time `json:"since"`
}

// Membership runs memberlist for this node: it joins the seeds (and keeps
// trying while the node is alone), advertises NodeMeta, tracks the members
// and reports nodes that die or leave.
type Membership struct {
	cfg          MembershipConfig
	log          *slog.Logger
	mlConf       *memberlist.Config
	lookup       LookupHostFunc
	rejoinEvery  time.Duration
	metaEvery    time.Duration
	tombstoneTTL time.Duration

	ml       atomic.Pointer[memberlist.Memberlist]
	killed   atomic.Bool // memberlist shut down without leaving (tests)
	leaving  atomic.Bool
	startAt  time.Time
	dropped  atomic.Int64 // join/update events dropped on queue overflow
	metaMu   sync.RWMutex
	metaCur  []byte   // encoded metadata handed to memberlist
	metaLast NodeMeta // last metadata built (for the leave re-encode)

	events chan memberEvent // bounded; see enqueue
	kick   chan struct{}    // wakes the dispatcher for overflowed leaves

	mu        sync.Mutex
	members   map[string]*Member
	overflow  map[string]memberEvent // leave events that did not fit in events
	onLeave   []func(Member)
	started   bool
	closing   bool
	loopCtx   context.Context
	stopLoops context.CancelFunc
	stopDisp  chan struct{}
	stopOnce  sync.Once
	loops     sync.WaitGroup // join and meta loops
	metaDone  chan struct{}  // closed when the meta loop returns
	disp      sync.WaitGroup // dispatcher
	closed    chan struct{}  // closed once every goroutine has returned
}

// NewMembership validates cfg and fills its defaults. It does no I/O; Start
// binds and joins.
func NewMembership(cfg MembershipConfig) (*Membership, error) {
	if cfg.NodeName == "" {
		return nil, errors.New("cluster: membership: NodeName is required")
	}
	if cfg.RejoinInterval < 0 || cfg.MetaInterval < 0 || cfg.ProbeInterval < 0 || cfg.SuspicionMult < 0 {
		return nil, errors.New("cluster: membership: intervals and SuspicionMult must not be negative")
	}
	var mc *memberlist.Config
	switch cfg.Profile {
	case "", ProfileLAN:
		mc = memberlist.DefaultLANConfig()
	case ProfileWAN:
		mc = memberlist.DefaultWANConfig()
	case ProfileLocal:
		mc = memberlist.DefaultLocalConfig()
		mc.ProbeInterval = 500 * time.Millisecond
	default:
		return nil, fmt.Errorf("cluster: membership: unknown Profile %q (want %q, %q or %q)",
			cfg.Profile, ProfileLAN, ProfileWAN, ProfileLocal)
	}
	if cfg.ProbeInterval > 0 {
		mc.ProbeInterval = cfg.ProbeInterval
		if mc.ProbeTimeout >= mc.ProbeInterval {
			mc.ProbeTimeout = mc.ProbeInterval / 2
		}
	}
	if cfg.SuspicionMult > 0 {
		mc.SuspicionMult = cfg.SuspicionMult
	}
	if cfg.SecretKey != nil {
		if err := memberlist.ValidateKey(cfg.SecretKey); err != nil {
			return nil, fmt.Errorf("cluster: membership: SecretKey is %d bytes, want 16, 24 or 32 (AES-128, -192 or -256)", len(cfg.SecretKey))
		}
		// Copied: memberlist's keyring keeps the slice.
		mc.SecretKey = slices.Clone(cfg.SecretKey)
		// Both default to true; kept so: a plaintext or wrongly keyed
		// message is dropped, never believed.
		mc.GossipVerifyIncoming, mc.GossipVerifyOutgoing = true, true
	}
	mc.Label = cfg.Label
	if mc.Label == "" {
		mc.Label = DefaultGossipLabel
	}
	if len(mc.Label) > memberlist.LabelMaxSize {
		return nil, fmt.Errorf("cluster: membership: Label is %d bytes, over memberlist's %d", len(mc.Label), memberlist.LabelMaxSize)
	}

	bind := cfg.BindAddr
	if bind == "" {
		bind = ":" + strconv.Itoa(DefaultGossipPort)
	}
	bindIP, bindPort, err := splitIPPort(bind, -1)
	if err != nil {
		return nil, fmt.Errorf("cluster: membership: BindAddr: %w", err)
	}
	if bindIP == "" {
		bindIP = "0.0.0.0"
	}
	mc.Name = cfg.NodeName
	mc.BindAddr = bindIP
	mc.BindPort = bindPort
	mc.AdvertiseAddr = ""
	mc.AdvertisePort = bindPort
	if cfg.AdvertiseAddr != "" {
		advIP, advPort, err := splitIPPort(cfg.AdvertiseAddr, bindPort)
		if err != nil {
			return nil, fmt.Errorf("cluster: membership: AdvertiseAddr: %w", err)
		}
		if advIP == "" {
			return nil, fmt.Errorf("cluster: membership: AdvertiseAddr %q has no IP", cfg.AdvertiseAddr)
		}
		mc.AdvertiseAddr = advIP
		mc.AdvertisePort = advPort
	}
	if err := validateSeeds(cfg.Join, bindPort); err != nil {
		return nil, fmt.Errorf("cluster: membership: Join: %w", err)
	}

	m := &Membership{
		cfg:          cfg,
		log:          cfg.Logger,
		mlConf:       mc,
		lookup:       cfg.LookupHost,
		rejoinEvery:  cfg.RejoinInterval,
		metaEvery:    cfg.MetaInterval,
		tombstoneTTL: mc.GossipToTheDeadTime,
		events:       make(chan memberEvent, eventQueueSize),
		kick:         make(chan struct{}, 1),
		members:      make(map[string]*Member),
		overflow:     make(map[string]memberEvent),
		stopDisp:     make(chan struct{}),
		metaDone:     make(chan struct{}),
		closed:       make(chan struct{}),
	}
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	if m.lookup == nil {
		m.lookup = net.DefaultResolver.LookupHost
	}
	if m.rejoinEvery == 0 {
		m.rejoinEvery = defaultRejoinInterval
	}
	if m.metaEvery == 0 {
		m.metaEvery = defaultMetaInterval
	}
	if m.tombstoneTTL <= 0 {
		m.tombstoneTTL = 30 * time.Second
	}
	m.loopCtx, m.stopLoops = context.WithCancel(context.Background())

	// memberlist logs through a *log.Logger; bridge it into slog.
	mc.Logger = log.New(&logBridge{log: m.log.With("component", "memberlist")}, "", 0)
	mc.LogOutput = nil
	m.log = m.log.With("component", "cluster.membership")
	mc.Delegate = &metaDelegate{m: m}
	mc.Events = &eventDelegate{m: m}
	return m, nil
}

// splitIPPort parses "ip:port", ":port", "ip" (then defaultPort; -1 means a
// port is required) or a bare IPv6 address. The host must be an IP literal:
// memberlist binds and advertises IPs, not names.
func splitIPPort(s string, defaultPort int) (string, int, error) {
	if ip := net.ParseIP(s); ip != nil {
		if defaultPort < 0 {
			return "", 0, fmt.Errorf("%q has no port", s)
		}
		return ip.String(), defaultPort, nil
	}
	host, p, err := net.SplitHostPort(s)
	if err != nil {
		if defaultPort >= 0 && !strings.Contains(s, ":") {
			host, p = s, strconv.Itoa(defaultPort)
		} else {
			return "", 0, fmt.Errorf("%q: %w", s, err)
		}
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("%q: invalid port %q", s, p)
	}
	if host != "" {
		ip := net.ParseIP(host)
		if ip == nil {
			return "", 0, fmt.Errorf("%q: host must be an IP address", s)
		}
		host = ip.String()
	}
	return host, port, nil
}

// Start binds the gossip port, starts memberlist and joins the seeds. Only
// binding, oversized metadata or a second Start is an error: failing to reach the seeds is
// logged and retried every RejoinInterval, in the background, for as long as
// the node is alone. ctx bounds only how long Start waits for the first join
// attempt; when it ends first, Start returns nil and the attempt goes on.
// Background work stops in Close, not with ctx.
func (m *Membership) Start(ctx context.Context) error {
	m.mu.Lock()
	switch {
	case m.closing:
		m.mu.Unlock()
		return errors.New("cluster: membership: Start after Close or a failed Start")
	case m.started:
		m.mu.Unlock()
		return errors.New("cluster: membership: already started")
	}
	m.started = true
	m.startAt = time.Now()
	m.disp.Add(1)
	m.mu.Unlock()
	go m.dispatch()

	// memberlist asks for the metadata as it creates the local node.
	if _, err := m.refreshMeta(); err != nil {
		m.abortStart()
		return err
	}
	ml, err := memberlist.Create(m.mlConf)
	if err != nil {
		m.abortStart()
		return fmt.Errorf("cluster: membership: start memberlist on %s:%d: %w", m.mlConf.BindAddr, m.mlConf.BindPort, err)
	}

	m.log.Info("cluster: membership started", "node", m.cfg.NodeName, "addr", ml.LocalNode().Address(),
		"profile", profileName(m.cfg.Profile), "seeds", m.cfg.Join)

	m.mu.Lock()
	if m.closing {
		// Close ran while memberlist was starting; it stopped the rest.
		m.mu.Unlock()
		_ = ml.Shutdown()
		return errors.New("cluster: membership: closed while starting")
	}
	m.ml.Store(ml)
	first := make(chan struct{})
	m.loops.Add(2)
	go m.metaLoop(ml)
	go m.joinLoop(ml, first)
	m.mu.Unlock()

	select {
	case <-first:
	case <-ctx.Done():
		m.log.Warn("cluster: first join attempt still running; it goes on in the background", "err", ctx.Err())
	}
	return nil
}

func profileName(p string) string {
	if p == "" {
		return ProfileLAN
	}
	return p
}

// abortStart undoes a failed Start (unless Close already is): the
// dispatcher stops and the Membership is closed.
func (m *Membership) abortStart() {
	m.mu.Lock()
	already := m.closing
	m.closing = true
	m.mu.Unlock()
	if already {
		return
	}
	m.stopLoops()
	m.stopDispatcher()
	m.disp.Wait()
	close(m.closed)
}

func (m *Membership) stopDispatcher() { m.stopOnce.Do(func() { close(m.stopDisp) }) }

// LocalAddr returns the gossip address other nodes reach this node at,
// "ip:port" (with the actual port when BindAddr had port 0), or "" before
// Start.
func (m *Membership) LocalAddr() string {
	ml := m.ml.Load()
	if ml == nil {
		return ""
	}
	return ml.LocalNode().Address()
}

// Members returns every node the local node knows of, itself included,
// sorted by name. Nodes that died or left are kept, with their state, until
// memberlist forgets them (its GossipToTheDeadTime: 30 s on a LAN).
func (m *Membership) Members() []Member {
	m.mu.Lock()
	out := make([]Member, 0, len(m.members))
	for _, mb := range m.members {
		out = append(out, *mb)
	}
	m.mu.Unlock()
	slices.SortFunc(out, func(a, b Member) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// NumMembers returns the number of live nodes, the local one included (0
// before Start).
func (m *Membership) NumMembers() int {
	ml := m.ml.Load()
	if ml == nil {
		return 0
	}
	return ml.NumMembers()
}

// OnLeave registers fn to be called with every other node that is declared
// dead (State MemberDead) or leaves gracefully (MemberLeft). Register before
// Start so as not to miss any.
//
// Callbacks run one at a time on a goroutine of the Membership, never on
// memberlist's: a slow callback delays the callbacks after it, never failure
// detection. A leave is never dropped (see enqueue), but one still queued
// when Close begins is not delivered; after Close returns no callback runs.
func (m *Membership) OnLeave(fn func(Member)) {
	m.mu.Lock()
	m.onLeave = append(m.onLeave, fn)
	m.mu.Unlock()
}

// Close leaves the cluster gracefully (announcing it, so peers see "left"
// at once instead of probing this node to death), shuts memberlist down and
// stops every goroutine. It is idempotent. When ctx ends first the leave is
// cut short or skipped, memberlist is still shut down, and Close returns
// ctx.Err() (a join attempt blocked on a seed may then still be running for
// up to its TCP timeout).
func (m *Membership) Close(ctx context.Context) error {
	m.mu.Lock()
	if m.closing {
		m.mu.Unlock()
		select {
		case <-m.closed:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	m.closing = true
	started := m.started
	m.mu.Unlock()
	if !started {
		m.stopLoops()
		close(m.closed)
		return nil
	}
	ml := m.ml.Load()
	if ml == nil {
		// Start is still creating memberlist; it will see closing and shut
		// memberlist down itself.
		m.stopLoops()
		m.stopDispatcher()
		go func() { m.disp.Wait(); close(m.closed) }()
		select {
		case <-m.closed:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}

	// Stop the meta loop before leaving: an UpdateNode after Leave would
	// make this node alive again. The join loop may be blocked dialing a
	// seed; it only joins while the node is alone, so the leave need not
	// wait for it.
	m.stopLoops()
	var err error
	select {
	case <-m.metaDone:
	case <-ctx.Done():
		err = ctx.Err()
	}

	if err == nil && !m.killed.Load() {
		timeout := defaultLeaveTimeout
		if dl, ok := ctx.Deadline(); ok {
			timeout = min(timeout, time.Until(dl))
		}
		m.leaveGracefully(ml, timeout)
	}
	if serr := ml.Shutdown(); serr != nil {
		m.log.Warn("cluster: memberlist shutdown", "err", serr)
	}
	m.stopDispatcher()

	go func() {
		m.loops.Wait()
		m.disp.Wait()
		close(m.closed)
	}()
	if err != nil {
		return err
	}
	select {
	case <-m.closed:
		m.log.Info("cluster: membership closed", "node", m.cfg.NodeName)
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// leaveGracefully flags the metadata as leaving (so peers record "left", not
// "dead"), then broadcasts memberlist's leave. Both wait for the broadcast to
// go out, within timeout in all.
func (m *Membership) leaveGracefully(ml *memberlist.Memberlist, timeout time.Duration) {
	start := time.Now()
	m.leaving.Store(true)
	m.metaMu.Lock()
	last := m.metaLast
	m.metaMu.Unlock()
	if b, err := encodeMeta(last, true); err == nil {
		m.metaMu.Lock()
		m.metaCur = b
		m.metaMu.Unlock()
		if err := ml.UpdateNode(timeout / 2); err != nil {
			m.log.Debug("cluster: leave intent not confirmed", "err", err)
		}
	}
	rest := timeout - time.Since(start)
	if rest <= 0 {
		rest = time.Millisecond
	}
	if err := ml.Leave(rest); err != nil {
		m.log.Warn("cluster: graceful leave not confirmed; peers will detect the node as dead instead", "err", err)
		return
	}
	m.log.Info("cluster: left the cluster", "node", m.cfg.NodeName, "took", time.Since(start).Round(time.Millisecond))
}

// shutdownWithoutLeave stops memberlist the way a crash does: no leave is
// broadcast, peers have to detect the node as dead. For tests; Close still
// stops the goroutines afterwards.
func (m *Membership) shutdownWithoutLeave() {
	m.killed.Store(true)
	if ml := m.ml.Load(); ml != nil {
		_ = ml.Shutdown()
	}
}

// refreshMeta polls cfg.Meta and stores the encoded result for memberlist;
// it reports whether the bytes changed.
func (m *Membership) refreshMeta() (bool, error) {
	var meta NodeMeta
	if m.cfg.Meta != nil {
		meta = m.cfg.Meta()
	}
	if meta.StartedAt.IsZero() {
		meta.StartedAt = m.startAt
	}
	b, err := encodeMeta(meta, m.leaving.Load())
	if err != nil {
		return false, err
	}
	m.metaMu.Lock()
	defer m.metaMu.Unlock()
	m.metaLast = meta
	if bytes.Equal(b, m.metaCur) {
		return false, nil
	}
	m.metaCur = b
	return true, nil
}

// metaLoop re-broadcasts changed metadata and forgets old tombstones.
func (m *Membership) metaLoop(ml *memberlist.Memberlist) {
	defer m.loops.Done()
	defer close(m.metaDone)
	t := time.NewTicker(m.metaEvery)
	defer t.Stop()
	var lastErr string
	for {
		select {
		case <-m.loopCtx.Done():
			return
		case <-t.C:
		}
		m.pruneTombstones(time.Now())
		if m.cfg.Meta == nil {
			continue
		}
		changed, err := m.refreshMeta()
		if err != nil {
			// Keep advertising the last good metadata; say so once per cause.
			if err.Error() != lastErr {
				m.log.Error("cluster: node metadata not updated", "err", err)
				lastErr = err.Error()
			}
			continue
		}
		lastErr = ""
		if changed {
			// Blocks until the update is gossiped (no lock held here).
			if err := ml.UpdateNode(m.metaEvery); err != nil {
				m.log.Debug("cluster: metadata update not confirmed", "err", err)
			}
		}
	}
}

// joinLoop makes the first join attempt at once, then, every RejoinInterval
// while the node is alone, re-resolves the seeds and tries again.
func (m *Membership) joinLoop(ml *memberlist.Memberlist, first chan<- struct{}) {
	defer m.loops.Done()
	if len(m.cfg.Join) == 0 {
		m.log.Info("cluster: no seeds configured; waiting for other nodes to join this one")
		close(first)
		return
	}
	failures := 0
	attempt := func() {
		if ml.NumMembers() > 1 {
			if failures > 0 {
				// Someone joined us while we were retrying.
				m.log.Info("cluster: no longer alone", "members", ml.NumMembers())
			}
			failures = 0
			return
		}
		ctx, cancel := context.WithTimeout(m.loopCtx, max(m.rejoinEvery, 5*time.Second))
		contacted, err := m.join(ctx, ml)
		cancel()
		if err == nil {
			m.log.Info("cluster: joined the cluster", "contacted", contacted, "members", ml.NumMembers())
			failures = 0
			return
		}
		if m.loopCtx.Err() != nil {
			return
		}
		failures++
		lvl := slog.LevelDebug
		if failures == 1 {
			lvl = slog.LevelWarn
		}
		m.log.Log(context.Background(), lvl, "cluster: cannot join any seed yet; running alone and retrying",
			"every", m.rejoinEvery, "seeds", m.cfg.Join, "attempts", failures, "err", oneLine(err))
	}
	attempt()
	close(first)
	t := time.NewTicker(m.rejoinEvery)
	defer t.Stop()
	for {
		select {
		case <-m.loopCtx.Done():
			return
		case <-t.C:
			attempt()
		}
	}
}

// oneLine flattens memberlist's multi-line errors for a log attribute.
func oneLine(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}

var errAlone = errors.New("no other node reachable through the seeds")

// join resolves the seeds and joins them, leaving out this node's own
// address. It succeeds only if the node is no longer alone afterwards.
func (m *Membership) join(ctx context.Context, ml *memberlist.Memberlist) (int, error) {
	addrs, rerr := resolveSeeds(ctx, m.cfg.Join, m.mlConf.BindPort, m.lookup)
	self := ml.LocalNode().Address()
	addrs = slices.DeleteFunc(addrs, func(a string) bool { return a == self })
	if len(addrs) == 0 {
		if rerr != nil {
			return 0, rerr
		}
		return 0, errAlone
	}
	n, jerr := ml.Join(addrs)
	if ml.NumMembers() > 1 {
		if rerr != nil {
			m.log.Debug("cluster: some seeds did not resolve", "err", oneLine(rerr))
		}
		return n, nil
	}
	if err := errors.Join(rerr, jerr); err != nil {
		return n, err
	}
	return n, errAlone
}

// pruneTombstones forgets dead and left members older than tombstoneTTL.
func (m *Membership) pruneTombstones(now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for name, mb := range m.members {
		if mb.State != MemberAlive && now.Sub(mb.Since) > m.tombstoneTTL {
			delete(m.members, name)
		}
	}
}

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

var (
	_ memberlist.EventDelegate = (*eventDelegate)(nil)
	_ memberlist.Delegate      = (*metaDelegate)(nil)
)

// eventDelegate forwards memberlist's membership events to the Membership.
type eventDelegate struct{ m *Membership }

func (d *eventDelegate) NotifyJoin(n *memberlist.Node)   { d.m.nodeEvent(eventJoin, n) }
func (d *eventDelegate) NotifyLeave(n *memberlist.Node)  { d.m.nodeEvent(eventLeave, n) }
func (d *eventDelegate) NotifyUpdate(n *memberlist.Node) { d.m.nodeEvent(eventUpdate, n) }

// metaDelegate hands memberlist the local node's metadata. chatd sends no
// user messages or state through memberlist (Redis carries those), so the
// rest is empty.
type metaDelegate struct{ m *Membership }

func (d *metaDelegate) NodeMeta(limit int) []byte {
	d.m.metaMu.RLock()
	defer d.m.metaMu.RUnlock()
	if len(d.m.metaCur) > limit {
		return nil // encodeMeta enforces the limit; never hand memberlist more
	}
	return slices.Clone(d.m.metaCur)
}
func (d *metaDelegate) NotifyMsg([]byte)                           {}
func (d *metaDelegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *metaDelegate) LocalState(join bool) []byte                { return nil }
func (d *metaDelegate) MergeRemoteState(buf []byte, join bool)     {}

// logBridge turns memberlist's log lines ("[WARN] memberlist: ...") into slog
// records: [ERR] and [WARN] at warn (they are about peers and the network,
// not this process failing), everything else at debug.
type logBridge struct{ log *slog.Logger }

func (b *logBridge) Write(p []byte) (int, error) {
	msg := strings.TrimSpace(string(p))
	lvl := slog.LevelDebug
	if rest, ok := strings.CutPrefix(msg, "["); ok {
		if tag, after, ok := strings.Cut(rest, "] "); ok {
			switch tag {
			case "ERR", "ERROR", "WARN":
				lvl = slog.LevelWarn
			}
			msg = after
		}
	}
	msg = strings.TrimPrefix(msg, "memberlist: ")
	b.log.Log(context.Background(), lvl, msg)
	return len(p), nil
}
