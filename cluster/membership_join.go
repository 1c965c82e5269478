package cluster

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"time"

	"github.com/hashicorp/memberlist"
)

// joinLoop makes the first join attempt at once, then keeps joining the
// seeds: every RejoinInterval while the node is alone (re-resolving them and
// joining them all), and every SeedRejoinInterval while it is not (joining
// only the seeds that are not live members, see rejoinSeeds). The second is
// what heals a partition: once each side has declared the other dead,
// memberlist never contacts the dead again by itself, so without a join the
// two groups would stay apart for good.
//
// Each attempt is bounded: resolution by a timeout, each seed's push/pull by
// the profile's TCP timeout. Once Close has cancelled loopCtx no further
// seed is joined (see Close for the one that may be in flight).
func (m *Membership) joinLoop(ml *memberlist.Memberlist, first chan<- struct{}) {
	defer m.loops.Done()
	if len(m.cfg.Join) == 0 {
		m.log.Info("cluster: no seeds configured; waiting for other nodes to join this one")
		close(first)
		return
	}
	failures := 0
	var lastSeeds time.Time // last join of the seeds, alone or not
	attempt := func() {
		if ml.NumMembers() > 1 {
			if failures > 0 {
				// Someone joined us while we were retrying.
				m.log.Info("cluster: no longer alone", "members", ml.NumMembers())
				failures = 0
				lastSeeds = time.Now()
			}
			if time.Since(lastSeeds) >= m.seedsEvery {
				m.rejoinSeeds(ml)
				lastSeeds = time.Now()
			}
			return
		}
		lastSeeds = time.Now()
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

// rejoinSeeds re-resolves the seeds of a node that is not alone and joins,
// one at a time, those that are not live members: a seed the node declared
// dead (the other side of a partition, or a node that really died), or one
// it never met (a new pod behind the seeds' name). A seed that is a live
// member is left out: the node already gossips with it, and its periodic
// push/pull already exchanges the member lists. So are this node's own
// addresses (advertised and bound). In a healthy cluster nothing is sent at all.
//
// Joining a lost seed that answers is a push/pull of the member lists with
// it: each side learns that the other declared it dead and refutes that,
// and gossip spreads the refutations, so the two groups merge within a few
// gossip rounds. Such a join is logged at info; a re-join that reaches no
// one new, at debug.
func (m *Membership) rejoinSeeds(ml *memberlist.Memberlist) {
	ctx, cancel := context.WithTimeout(m.loopCtx, max(m.rejoinEvery, 5*time.Second))
	addrs, rerr := resolveSeeds(ctx, m.cfg.Join, m.mlConf.BindPort, m.lookup)
	cancel()
	// From the member table, not ml.Members(): memberlist updates the
	// nodes those point to in place, without a lock the reader could take.
	live := make(map[string]bool)
	m.mu.Lock()
	for _, mb := range m.members {
		if mb.State == MemberAlive {
			live[mb.Addr] = true
		}
	}
	m.mu.Unlock()
	addrs = slices.DeleteFunc(addrs, func(a string) bool { return live[a] || m.isSelf(a) })
	if len(addrs) == 0 {
		attrs := []any{"members", ml.NumMembers()}
		if rerr != nil {
			attrs = append(attrs, "resolve_err", oneLine(rerr))
		}
		m.log.Debug("cluster: seed re-join found nothing new: every seed is a live member", attrs...)
		return
	}
	before := ml.NumMembers()
	var contacted []string
	var errs []error
	for _, a := range addrs {
		if m.loopCtx.Err() != nil {
			return
		}
		if _, err := ml.Join([]string{a}); err != nil {
			errs = append(errs, err)
			continue
		}
		contacted = append(contacted, a)
	}
	if len(contacted) == 0 {
		attrs := []any{"lost_seeds", addrs, "members", ml.NumMembers()}
		if err := errors.Join(append(errs, rerr)...); err != nil {
			attrs = append(attrs, "err", oneLine(err))
		}
		m.log.Debug("cluster: seed re-join found nothing new: no lost seed answered", attrs...)
		return
	}
	m.rejoined.Add(1)
	m.log.Info("cluster: re-joined seeds that were not live members; their groups merge with this one",
		"contacted", contacted, "members_before", before, "members", ml.NumMembers())
}

var errAlone = errors.New("no other node reachable through the seeds")

// isSelf reports whether a seed address is this node's, advertised or bound.
func (m *Membership) isSelf(addr string) bool {
	return addr == m.selfAddr || (m.selfBind != "" && addr == m.selfBind)
}

// join resolves the seeds and joins them, leaving out this node's own
// address. It succeeds only if the node is no longer alone afterwards.
func (m *Membership) join(ctx context.Context, ml *memberlist.Memberlist) (int, error) {
	addrs, rerr := resolveSeeds(ctx, m.cfg.Join, m.mlConf.BindPort, m.lookup)
	addrs = slices.DeleteFunc(addrs, m.isSelf)
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
