package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chatd/chatd/internal/testsvc"
	"github.com/chatd/chatd/store"
)

// TestSingleNodeSIGKILLLoss measures what a SIGKILL of a single node (the
// embedded default: in-memory room log, SQLite) loses: the acknowledged
// messages its persistence queue had not written yet. Four clients push as
// fast as their replies come; the node is killed mid-stream; the SQLite
// file is read afterwards. Nothing stored may be a message that was refused
// or never sent, and what is lost is reported (README, Persistence).
func TestSingleNodeSIGKILLLoss(t *testing.T) {
	t.Parallel()
	dbPath := filepath.Join(t.TempDir(), "chat.db")
	c := startServer(t, map[string]string{
		"CHAT_DATABASE_URL":       dbPath,
		"CHAT_USER_RATE":          "0",
		"CHAT_MAX_CONNS_PER_USER": "0",
	})
	const topic = "room:sigkill"
	var clients []*psClient
	for i := range 4 {
		cl := psDial(t, c, fmt.Sprintf("user%d", i))
		cl.join(t, topic, nil)
		clients = append(clients, cl)
	}

	var mu sync.Mutex
	var acked []string
	var ackedAt []time.Time
	sent := 0
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, cl := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 20000; i++ { // bounded; the kill ends it far sooner
				select {
				case <-stop:
					return
				default:
				}
				mu.Lock()
				sent++
				mu.Unlock()
				p := psPushOne(cl, topic, fmt.Sprintf("%s %d", cl.user, i))
				if !p.ok() {
					return
				}
				mu.Lock()
				acked = append(acked, p.Reply.id())
				ackedAt = append(ackedAt, p.Reply.At)
				mu.Unlock()
			}
		}()
	}
	time.Sleep(2 * time.Second)
	killedAt := time.Now()
	if err := c.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	c.WaitTimeout(10 * time.Second)
	close(stop)
	wg.Wait()

	db, err := store.Open(context.Background(), dbPath, testsvc.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	h := store.NewHistory(db)
	var stored []string
	after := "0"
	for {
		page, err := h.Page(context.Background(), "sigkill", store.PageQuery{After: after, Limit: store.MaxPageLimit})
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range page {
			stored = append(stored, m.ID)
		}
		if len(page) < store.MaxPageLimit {
			break
		}
		after = page[len(page)-1].ID
	}
	if len(acked) < 100 {
		t.Fatalf("only %d pushes acknowledged before the kill", len(acked))
	}
	var lost []string
	var oldestLost time.Duration // how long before the kill the oldest lost ok came
	ackedSet := map[string]bool{}
	for i, id := range acked {
		ackedSet[id] = true
		if _, ok := slices.BinarySearch(stored, id); !ok {
			lost = append(lost, id)
			oldestLost = max(oldestLost, killedAt.Sub(ackedAt[i]))
		}
	}
	// A stored message that was not acknowledged can only be one whose
	// ok was in flight at the kill: at most one per client.
	unacked := 0
	for _, id := range stored {
		if !ackedSet[id] {
			unacked++
		}
	}
	if unacked > len(clients) {
		t.Errorf("%d stored messages were never acknowledged (at most %d replies could be in flight)", unacked, len(clients))
	}
	if len(lost) > 10000 {
		t.Errorf("lost %d acknowledged messages, more than the persistence queue holds (10,000)", len(lost))
	}
	t.Logf("SIGKILL of a single node after %d pushes (%d acknowledged): %d stored, %d acknowledged messages lost (%.2f%%, acknowledged up to %v before the kill), %d stored without their ok",
		sent, len(acked), len(stored), len(lost), 100*float64(len(lost))/float64(len(acked)), oldestLost.Round(time.Millisecond), unacked)
}
