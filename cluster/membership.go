package cluster

import (
	"context"
	"errors"
	"fmt"
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
// joining them: often while the node is alone, now and then otherwise, so
// that partitions heal), advertises NodeMeta, tracks the members and reports
// nodes that die or leave.
type Membership struct {
	cfg          MembershipConfig
	log          *slog.Logger
	mlConf       *memberlist.Config
	lookup       LookupHostFunc
	rejoinEvery  time.Duration
	seedsEvery   time.Duration
	metaEvery    time.Duration
	tombstoneTTL time.Duration

	ml       atomic.Pointer[memberlist.Memberlist]
	selfAddr string      // the advertised "ip:port"; set in Start before ml
	selfBind string      // the bound "ip:port" unless bound to all interfaces; likewise
	killed   atomic.Bool // memberlist shut down without leaving (tests)
	leaving  atomic.Bool
	startAt  time.Time
	dropped  atomic.Int64 // join/update events dropped on queue overflow
	rejoined atomic.Int64 // re-joins, while not alone, that reached a lost seed
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

// Start binds the gossip port, starts memberlist and joins the seeds. Only
// binding, oversized metadata or a second Start is an error: failing to
// reach the seeds is logged and retried every RejoinInterval, in the
// background, for as long as the node is alone (and the seeds are joined
// again every SeedRejoinInterval afterwards, see joinLoop). ctx bounds only
// how long Start waits for the first join attempt; when it ends first, Start
// returns nil and the attempt goes on. Background work stops in Close, not
// with ctx.
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

	// Read once: memberlist rewrites the local node's fields in place on
	// every update, so reading them later through LocalNode races.
	m.selfAddr = ml.LocalNode().Address()
	if ip := net.ParseIP(m.mlConf.BindAddr); ip != nil && !ip.IsUnspecified() {
		// memberlist has set BindPort to the bound one.
		m.selfBind = net.JoinHostPort(ip.String(), strconv.Itoa(m.mlConf.BindPort))
	}
	m.log.Info("cluster: membership started", "node", m.cfg.NodeName, "addr", m.selfAddr,
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
	return m.selfAddr // written before ml was stored
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
	// make this node alive again. The join loop joins seeds also while
	// the node is not alone, so cancelling loopCtx matters for it too: it
	// checks loopCtx before each seed and starts no further join. At most
	// one seed's push/pull (begun before the cancel, bounded by the TCP
	// timeout) may still be running; the leave need not wait for it, as it
	// cannot bring this node back: once Leave has begun, memberlist ignores
	// alive messages about the local node and refutes no suspicion of it
	// (it is no longer alive), and the state a push/pull sends from then on
	// lists it as left, at the incarnation of its leave.
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
	m.stopLoops() // a crashed node joins no seed either
	if ml := m.ml.Load(); ml != nil {
		_ = ml.Shutdown()
	}
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
