package main

import (
	"context"
	"fmt"
	"log/slog"
	"sync"

	"github.com/chatd/chatd/chat"
	"github.com/chatd/chatd/cluster"
	"github.com/chatd/chatd/store"
)

// tasks runs the node's background work that outlives the event starting
// it (what a dead node leaves behind), and stops it at shutdown: close
// cancels every task and waits for it.
type tasks struct {
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func newTasks() *tasks {
	t := &tasks{}
	t.ctx, t.cancel = context.WithCancel(context.Background())
	return t
}

// goTask runs fn on its own goroutine with a context that close cancels.
func (t *tasks) goTask(fn func(ctx context.Context)) {
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		fn(t.ctx)
	}()
}

// close cancels the tasks and waits for them, or for ctx.
func (t *tasks) close(ctx context.Context) error {
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
		return fmt.Errorf("background tasks still running: %w", ctx.Err())
	}
}

// takeOver stores every message of node's that the room logs hold (see
// cluster.RedisBroker.TakeOver): the survivors of a dead node, and a node
// restarted after a crash, persist what its persistence queue lost. The
// writer's insert is idempotent on the id, so messages already stored are
// not stored twice.
func takeOver(ctx context.Context, b *cluster.RedisBroker, w *store.Writer, log *slog.Logger, node string) {
	n, err := b.TakeOver(ctx, node, func(room string, entries []chat.LogEntry) error {
		for _, e := range entries {
			msg, err := chat.DecodeLogEntry(e)
			if err != nil {
				log.Warn("room log entry not decodable; not stored", "room", room, "id", e.ID, "err", err)
				continue
			}
			if err := w.EnqueueWait(ctx, msg); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		log.Warn("messages of a node not all taken over from the room logs", "from_node", node, "queued", n, "err", err)
		return
	}
	log.Info("messages of a node taken over from the room logs", "from_node", node, "queued", n)
}
