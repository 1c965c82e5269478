package store

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/chatd/chatd/chat"
	"github.com/chatd/chatd/internal/testsvc"
)

// No accepted message is lost when PostgreSQL goes away for a while in the
// middle of a run: messages keep being accepted into the queue, the writer
// retries, and when the server is back every accepted message is stored,
// exactly once. The server is really stopped (fast shutdown, clients cut
// off mid-statement) and started again on the same port and data.
func TestWriterSurvivesPostgresOutage(t *testing.T) {
	outage := 20 * time.Second
	if testing.Short() {
		outage = 3 * time.Second
	}
	const (
		producers = 4
		interval  = 2 * time.Millisecond // per producer: about 2000 messages/s in all
	)
	ctx := context.Background()
	pg := testsvc.StartPostgres(t)
	db := openDB(t, pg.URL())
	if err := db.MigrateUp(ctx); err != nil {
		t.Fatal(err)
	}
	log, logs := testsvc.CaptureLogger(t)
	w := newTestWriterLog(t, db, WriterConfig{
		QueueSize:    200_000, // room for the whole outage
		RetryMin:     50 * time.Millisecond,
		RetryMax:     time.Second,
		WriteTimeout: 2 * time.Second,
	}, log)

	var (
		mu       sync.Mutex
		accepted []chat.Message
		stop     = make(chan struct{})
		wg       sync.WaitGroup
	)
	for p := range producers {
		wg.Go(func() {
			tick := time.NewTicker(interval)
			defer tick.Stop()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				m := newMessage(t, fmt.Sprintf("room-%d", i%5), fmt.Sprintf("user-%d", p), fmt.Sprintf("%d/%d", p, i))
				if err := w.Enqueue(m); err != nil {
					t.Errorf("Enqueue during the run: %v", err)
					return
				}
				mu.Lock()
				accepted = append(accepted, m)
				mu.Unlock()
			}
		})
	}
	acceptedCount := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(accepted)
	}

	time.Sleep(2 * time.Second)
	before := w.Stats()
	if before.Written == 0 {
		t.Fatalf("nothing written before the outage: %+v", before)
	}

	pg.Stop(t)
	down := time.Now()
	t.Logf("PostgreSQL stopped after %d messages accepted, %d written", acceptedCount(), before.Written)
	var maxPending int
	var maxLag time.Duration
	for time.Since(down) < outage {
		time.Sleep(time.Second)
		s := w.Stats()
		maxPending = max(maxPending, s.Pending())
		maxLag = max(maxLag, s.Lag)
	}
	pingCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
	if err := db.Ping(pingCtx); err == nil {
		t.Error("Ping succeeded while PostgreSQL was stopped")
	}
	cancel()
	during := w.Stats()
	if during.Failures == 0 || during.Pending() == 0 || maxLag < outage/2 {
		t.Errorf("stats at the end of the outage: %+v (max lag %v)", during, maxLag)
	}

	pg.Start(t)
	up := time.Now()
	waitFor(t, 30*time.Second, "the writer to catch up", func() bool { return w.Stats().Lag < 500*time.Millisecond })
	caughtUp := time.Since(up)
	if err := db.Ping(ctx); err != nil {
		t.Errorf("Ping after restart: %v", err)
	}
	time.Sleep(time.Second) // a little steady state after the outage
	close(stop)
	wg.Wait()

	closeCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := w.Close(closeCtx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	checkStored(t, db, accepted)
	s := w.Stats()
	if s.Rejected != 0 || s.Unwritten != 0 || s.Dropped != 0 || s.Enqueued != uint64(len(accepted)) {
		t.Errorf("final stats: %+v", s)
	}
	if !logs.Contains("batch written after failures") {
		t.Error("recovery not logged")
	}
	t.Logf("outage %v: %d messages accepted in all, up to %d pending (lag up to %v); "+
		"caught up %v after restart; %d failed attempts, %d retries; %d rows stored",
		outage, len(accepted), maxPending, maxLag.Round(time.Millisecond), caughtUp.Round(time.Millisecond),
		s.Failures, s.Retries, countRows(t, db))
}
