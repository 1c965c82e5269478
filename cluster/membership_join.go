package cluster

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"time"

	"github.com/hashicorp/memberlist"
)

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
