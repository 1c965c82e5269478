package node

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/chatd/chatd/chat"
)

// cleanUpAfter frees what the dead node named dead held: every survivor
// stores the messages it accepted and had not stored (from the room
// logs), removes its presence (broadcasting the leaves) and releases its
// connection slots. Every step is idempotent across the survivors: the
// writer's insert on the message id, presence and slots by their removal
// in Redis, so leaves are broadcast once. Shutdown cancels it and waits.
func (n *Node) cleanUpAfter(ctx context.Context, dead string) {
	var wg sync.WaitGroup
	wg.Go(func() { n.takeOver(ctx, dead) })
	wg.Go(func() {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		removed, err := n.presence.RemoveNode(ctx, dead)
		if err != nil {
			n.log.Warn("presence of a dead node not removed", "dead_node", dead, "err", err)
		}
		for room, entries := range removed {
			n.hub.PresenceLeft(room, entries)
		}
		freed, err := n.limiter.ReleaseNode(ctx, dead)
		if err != nil {
			n.log.Warn("connection slots of a dead node not freed", "dead_node", dead, "err", err)
		}
		if n.addrLimiter != nil {
			k, err := n.addrLimiter.ReleaseNode(ctx, dead)
			if err != nil {
				n.log.Warn("address connection slots of a dead node not freed", "dead_node", dead, "err", err)
			}
			freed += k
		}
		n.log.Info("freed what a dead node held", "dead_node", dead, "presence_rooms", len(removed), "slots", freed)
	})
	wg.Wait()
}

// takeOver stores every message of node's that the room logs hold (see
// cluster.RedisBroker.TakeOver): the survivors of a dead node, and a node
// restarted after a crash, persist what its persistence queue lost. The
// writer's insert is idempotent on the id, so messages already stored are
// not stored twice.
func (n *Node) takeOver(ctx context.Context, node string) {
	queued, err := n.broker.TakeOver(ctx, node, func(room string, entries []chat.LogEntry) error {
		for _, e := range entries {
			msg, err := chat.DecodeLogEntry(e)
			if err != nil {
				n.log.Warn("room log entry not decodable; not stored", "room", room, "id", e.ID, "err", err)
				continue
			}
			if err := n.writer.EnqueueWait(ctx, msg); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		n.log.Warn("messages of a node not all taken over from the room logs", "from_node", node, "queued", queued, "err", err)
		return
	}
	n.log.Info("messages of a node taken over from the room logs", "from_node", node, "queued", queued)
}

// tasks runs the node's clean-ups, which outlive the event starting them,
// and stops them at shutdown: close cancels every task and waits for it.
type tasks struct {
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	closed bool // no task starts once close has begun
}

func newTasks() *tasks {
	t := &tasks{}
	t.ctx, t.cancel = context.WithCancel(context.Background())
	return t
}

// goTask runs fn on its own goroutine with a context that close cancels;
// after close has begun (a membership event delivered late), it does
// nothing.
func (t *tasks) goTask(fn func(ctx context.Context)) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return
	}
	t.wg.Go(func() { fn(t.ctx) })
}

// close cancels the tasks and waits for them, or for ctx.
func (t *tasks) close(ctx context.Context) error {
	t.mu.Lock()
	t.closed = true
	t.mu.Unlock()
	t.cancel()
	done := make(chan struct{})
	go func() {
		t.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("clean-ups still running: %w", ctx.Err())
	}
}
