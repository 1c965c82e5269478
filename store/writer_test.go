package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatd/chatd/chat"
	"github.com/chatd/chatd/internal/testsvc"
)

// newTestWriter starts a writer with fast retries; t's cleanup closes it if
// the test did not.
func newTestWriter(t testing.TB, db *DB, cfg WriterConfig) *Writer {
	t.Helper()
	return newTestWriterLog(t, db, cfg, testsvc.Logger(t))
}

func newTestWriterLog(t testing.TB, db *DB, cfg WriterConfig, log *slog.Logger) *Writer {
	t.Helper()
	if cfg.RetryMin == 0 {
		cfg.RetryMin = 5 * time.Millisecond
	}
	if cfg.RetryMax == 0 {
		cfg.RetryMax = 100 * time.Millisecond
	}
	w, err := NewWriter(db, cfg, log)
	if err != nil {
		t.Fatalf("NewWriter: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		w.Close(ctx)
	})
	return w
}

func closeWriter(t testing.TB, w *Writer) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := w.Close(ctx); err != nil {
		t.Fatalf("Writer.Close: %v", err)
	}
}

// waitFor polls cond until it holds or d passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// bodies exercises what a chat body may hold.
var bodies = []string{
	"hi",
	"",
	`quotes ' " \ and ; DROP TABLE messages; --`,
	"émoji 👋🏽 and 中文",
	strings.Repeat("long ", 800),
}

func TestWriterManyProducers(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		db := migratedDB(t, b)
		w := newTestWriter(t, db, WriterConfig{QueueSize: 20000})
		const producers, each = 16, 500
		var (
			mu       sync.Mutex
			accepted []chat.Message
			wg       sync.WaitGroup
		)
		for p := range producers {
			wg.Go(func() {
				mine := make([]chat.Message, 0, each)
				for i := range each {
					// The hub's way: a place first, then the message, or
					// the place given back when publishing failed.
					if err := w.Reserve(); err != nil {
						t.Errorf("Reserve: %v", err)
						return
					}
					if i%10 == 9 {
						w.Cancel()
						continue
					}
					m := newMessage(t, fmt.Sprintf("room-%d", (p+i)%7), fmt.Sprintf("user-%d", p),
						fmt.Sprintf("%d/%d %s", p, i, bodies[i%len(bodies)]))
					w.Commit(m)
					mine = append(mine, m)
				}
				mu.Lock()
				accepted = append(accepted, mine...)
				mu.Unlock()
			})
		}
		wg.Wait()
		closeWriter(t, w)
		checkStored(t, db, accepted)

		s := w.Stats()
		n := uint64(len(accepted))
		if n != producers*each*9/10 || s.Enqueued != n || s.Written != n || s.Rejected != 0 ||
			s.Failures != 0 || s.Unwritten != 0 || s.Pending() != 0 || s.Reserved != 0 {
			t.Errorf("stats after a clean run of %d messages: %+v", n, s)
		}
		if s.Batches == 0 || s.Batches > n || s.WriteTime <= 0 || s.MaxWriteTime < s.LastWriteTime {
			t.Errorf("batch stats: %+v", s)
		}
		t.Logf("%d messages in %d batches (mean %.1f rows, %v each)", s.Written, s.Batches,
			float64(s.Written)/float64(s.Batches), s.WriteTime/time.Duration(s.Batches))
	})
}

// A message handed over twice (a retried batch, a duplicate from upstream)
// is stored once.
func TestWriterIdempotent(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		db := migratedDB(t, b)
		m1 := newMessage(t, "lobby", "ann", "one")
		m2 := newMessage(t, "lobby", "bob", "two")

		w := newTestWriter(t, db, WriterConfig{BatchWait: 50 * time.Millisecond})
		// Same batch.
		for _, m := range []chat.Message{m1, m1, m2} {
			if err := w.Enqueue(m); err != nil {
				t.Fatal(err)
			}
		}
		closeWriter(t, w)
		// Later batch, another writer.
		w = newTestWriter(t, db, WriterConfig{})
		if err := w.Enqueue(m2); err != nil {
			t.Fatal(err)
		}
		closeWriter(t, w)
		checkStored(t, db, []chat.Message{m1, m2})
	})
}

// While the database cannot take the rows, the writer keeps them and
// retries; when it can, they land. Dropping the table stands in for an
// outage here, the same way on every backend; outage_test.go stops a real
// PostgreSQL server.
func TestWriterRetriesUntilDatabaseReturns(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		db := migratedDB(t, b)
		for range latestVersion {
			if err := db.MigrateDown(ctx); err != nil {
				t.Fatal(err)
			}
		}
		log, logs := testsvc.CaptureLogger(t)
		w := newTestWriterLog(t, db, WriterConfig{RetryMin: 5 * time.Millisecond, RetryMax: 20 * time.Millisecond}, log)
		var accepted []chat.Message
		for i := range 300 {
			m := newMessage(t, "lobby", "ann", fmt.Sprint(i))
			if err := w.Enqueue(m); err != nil {
				t.Fatal(err)
			}
			accepted = append(accepted, m)
		}
		waitFor(t, 5*time.Second, "failed attempts", func() bool { return w.Stats().Retries >= 3 })
		s := w.Stats()
		if s.Written != 0 || s.Pending() != len(accepted) || s.Lag <= 0 {
			t.Errorf("stats while the table is missing: %+v", s)
		}
		if !logs.Contains("batch insert failed; retrying") {
			t.Errorf("failures not logged:\n%s", logs)
		}
		if err := db.MigrateUp(ctx); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, "the backlog to be written", func() bool { return w.Stats().Pending() == 0 })
		if s := w.Stats(); s.Lag != 0 {
			t.Errorf("lag %v with nothing pending", s.Lag)
		}
		closeWriter(t, w)
		checkStored(t, db, accepted)
		if !logs.Contains("batch written after failures") {
			t.Errorf("recovery not logged:\n%s", logs)
		}
	})
}

// A full queue answers chat.ErrOverloaded and keeps nothing of that
// message; everything it accepted is stored.
func TestWriterOverloaded(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		db := migratedDB(t, b)
		// Hold the workers up: no table, so every batch fails and waits.
		for range latestVersion {
			if err := db.MigrateDown(ctx); err != nil {
				t.Fatal(err)
			}
		}
		const queueSize = 100
		w := newTestWriter(t, db, WriterConfig{QueueSize: queueSize, Workers: 2, BatchSize: 10,
			RetryMin: 10 * time.Millisecond, RetryMax: 50 * time.Millisecond})
		var accepted []chat.Message
		rejected := 0
		for i := range 1000 {
			m := newMessage(t, "lobby", "ann", fmt.Sprint(i))
			switch err := w.Enqueue(m); {
			case err == nil:
				accepted = append(accepted, m)
			case errors.Is(err, chat.ErrOverloaded):
				rejected++
			default:
				t.Fatalf("Enqueue: %v", err)
			}
		}
		// The queue plus what the workers took out of it, and no more.
		if len(accepted) < queueSize || len(accepted) > queueSize+2*10 {
			t.Errorf("accepted %d messages with a queue of %d", len(accepted), queueSize)
		}
		s := w.Stats()
		if rejected == 0 || s.Rejected != uint64(rejected) || s.Enqueued != uint64(len(accepted)) {
			t.Errorf("rejected %d, stats %+v", rejected, s)
		}
		if s.QueueCapacity != queueSize {
			t.Errorf("QueueCapacity = %d, want %d", s.QueueCapacity, queueSize)
		}
		if err := db.MigrateUp(ctx); err != nil {
			t.Fatal(err)
		}
		closeWriter(t, w)
		checkStored(t, db, accepted)
	})
}

func TestWriterCloseDrains(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		db := migratedDB(t, b)
		before := runtime.NumGoroutine()
		w := newTestWriter(t, db, WriterConfig{QueueSize: 20000, Workers: 2})
		var accepted []chat.Message
		for i := range 20000 {
			m := newMessage(t, fmt.Sprintf("r%d", i%3), "ann", fmt.Sprint(i))
			if err := w.Enqueue(m); err != nil {
				t.Fatal(err)
			}
			accepted = append(accepted, m)
		}
		if w.Stats().Pending() == 0 {
			t.Log("queue already drained before Close; the test proves less")
		}
		closeWriter(t, w)
		checkStored(t, db, accepted)
		if err := w.Enqueue(newMessage(t, "r", "u", "late")); !errors.Is(err, ErrWriterClosed) {
			t.Errorf("Enqueue after Close: %v, want ErrWriterClosed", err)
		}
		// Close is idempotent.
		closeWriter(t, w)
		checkGoroutines(t, before)
	})
}

// checkGoroutines waits for the goroutine count to come back to before.
func checkGoroutines(t testing.TB, before int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines, %d before:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// When Close runs out of time it says how many messages it could not
// write, and still stops every goroutine.
func TestWriterCloseTimeout(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		db := migratedDB(t, b)
		for range latestVersion {
			if err := db.MigrateDown(ctx); err != nil {
				t.Fatal(err)
			}
		}
		before := runtime.NumGoroutine()
		log, logs := testsvc.CaptureLogger(t)
		w := newTestWriterLog(t, db, WriterConfig{QueueSize: 2000, Workers: 3, BatchSize: 50}, log)
		const n = 1000
		for i := range n {
			if err := w.Enqueue(newMessage(t, "lobby", "ann", fmt.Sprint(i))); err != nil {
				t.Fatal(err)
			}
		}
		expired, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancel()
		err := w.Close(expired)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Close with an expiring ctx: %v, want context.DeadlineExceeded", err)
		}
		s := w.Stats()
		if s.Unwritten != n || s.Written != 0 || s.Pending() != 0 {
			t.Errorf("stats after giving up: %+v", s)
		}
		if !logs.Contains("writer closed before writing every accepted message", fmt.Sprintf("unwritten=%d", n)) {
			t.Errorf("unwritten count not logged:\n%s", logs)
		}
		if err := w.Close(ctx); err == nil || !strings.Contains(err.Error(), fmt.Sprint(n)) {
			t.Errorf("second Close: %v, want the unwritten count", err)
		}
		checkGoroutines(t, before)

		// An already expired ctx gives up at once.
		w = newTestWriter(t, db, WriterConfig{})
		for i := range 10 {
			if err := w.Enqueue(newMessage(t, "lobby", "ann", fmt.Sprint(i))); err != nil {
				t.Fatal(err)
			}
		}
		done, cancel2 := context.WithCancel(ctx)
		cancel2()
		if err := w.Close(done); !errors.Is(err, context.Canceled) {
			t.Fatalf("Close with a cancelled ctx: %v", err)
		}
		if s := w.Stats(); s.Unwritten != 10 {
			t.Errorf("Unwritten = %d, want 10", s.Unwritten)
		}
	})
}

// A message the database refuses for good is logged and dropped; it does
// not hold up the rest of its batch, nor the queue.
func TestWriterPoisonMessage(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		db := migratedDB(t, b)
		var poison string
		switch db.Dialect() {
		case Postgres:
			poison = `ALTER TABLE messages ADD CONSTRAINT no_poison CHECK (body <> 'poison')`
		case SQLite:
			poison = `CREATE TRIGGER no_poison BEFORE INSERT ON messages WHEN NEW.body = 'poison'
				BEGIN SELECT RAISE(ABORT, 'poison'); END`
		}
		if err := db.gorm.Exec(poison).Error; err != nil {
			t.Fatal(err)
		}
		log, logs := testsvc.CaptureLogger(t)
		w := newTestWriterLog(t, db, WriterConfig{BatchWait: 50 * time.Millisecond}, log)
		var accepted []chat.Message
		var bad chat.Message
		for i := range 50 {
			m := newMessage(t, "lobby", "ann", fmt.Sprint(i))
			if i == 25 {
				m.Body = "poison"
				bad = m
			} else {
				accepted = append(accepted, m)
			}
			if err := w.Enqueue(m); err != nil {
				t.Fatal(err)
			}
		}
		closeWriter(t, w)
		checkStored(t, db, accepted)
		if s := w.Stats(); s.Dropped != 1 || s.Written != 49 {
			t.Errorf("stats: %+v, want 1 dropped, 49 written", s)
		}
		if !logs.Contains("database refused a message", "id="+bad.ID) {
			t.Errorf("drop not logged:\n%s", logs)
		}
	})
}

// Reserve counts against the queue like a queued message; Cancel gives the
// place back; Close waits for places reserved to be committed or cancelled.
func TestWriterReservations(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		db := migratedDB(t, b)
		w := newTestWriter(t, db, WriterConfig{QueueSize: 3})
		for range 3 {
			if err := w.Reserve(); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.Reserve(); !errors.Is(err, chat.ErrOverloaded) {
			t.Fatalf("4th Reserve with a queue of 3: %v, want chat.ErrOverloaded", err)
		}
		if s := w.Stats(); s.Reserved != 3 || s.Rejected != 1 {
			t.Errorf("stats with 3 reserved: %+v", s)
		}
		w.Cancel()
		if err := w.Reserve(); err != nil {
			t.Fatalf("Reserve after Cancel: %v", err)
		}
		var accepted []chat.Message
		for range 2 {
			m := newMessage(t, "lobby", "ann", "reserved")
			w.Commit(m)
			accepted = append(accepted, m)
		}
		// One place is still reserved: Close waits for it.
		closed := make(chan error, 1)
		go func() { closed <- w.Close(ctx) }()
		select {
		case err := <-closed:
			t.Fatalf("Close returned (%v) while a place was reserved", err)
		case <-time.After(200 * time.Millisecond):
		}
		if err := w.Reserve(); !errors.Is(err, ErrWriterClosed) {
			t.Errorf("Reserve while closing: %v, want ErrWriterClosed", err)
		}
		if err := w.Enqueue(newMessage(t, "lobby", "ann", "late")); !errors.Is(err, ErrWriterClosed) {
			t.Errorf("Enqueue while closing: %v, want ErrWriterClosed", err)
		}
		last := newMessage(t, "lobby", "ann", "last")
		w.Commit(last)
		accepted = append(accepted, last)
		select {
		case err := <-closed:
			if err != nil {
				t.Fatalf("Close: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Close did not return after the last reservation was committed")
		}
		checkStored(t, db, accepted)

		// A reservation never resolved cannot hold Close past its ctx; a
		// Commit after that is counted, not lost silently, and not a panic.
		before := runtime.NumGoroutine()
		log, logs := testsvc.CaptureLogger(t)
		w = newTestWriterLog(t, db, WriterConfig{}, log)
		if err := w.Reserve(); err != nil {
			t.Fatal(err)
		}
		short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancel()
		if err := w.Close(short); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Close with a dangling reservation: %v, want context.DeadlineExceeded", err)
		}
		if !logs.Contains("writer closed before writing every accepted message", "reserved=1") {
			t.Errorf("dangling reservation not logged:\n%s", logs)
		}
		checkGoroutines(t, before)
		late := newMessage(t, "lobby", "ann", "too late")
		w.Commit(late)
		if s := w.Stats(); s.Unwritten != 1 || s.Reserved != 0 {
			t.Errorf("stats after a late Commit: %+v", s)
		}
		if !logs.Contains("committed after Close gave up", "id="+late.ID) {
			t.Errorf("late Commit not logged:\n%s", logs)
		}
	})
}

func TestWriterRejectsInvalid(t *testing.T) {
	db := migratedDB(t, backends[1])
	w := newTestWriter(t, db, WriterConfig{})
	valid := newMessage(t, "lobby", "ann", "ok")
	for name, mutate := range map[string]func(*chat.Message){
		"no id":        func(m *chat.Message) { m.ID = "" },
		"no room":      func(m *chat.Message) { m.Room = "" },
		"NUL body":     func(m *chat.Message) { m.Body = "a\x00b" },
		"bad UTF-8":    func(m *chat.Message) { m.Body = "\xff\xfe" },
		"NUL user":     func(m *chat.Message) { m.UserID = "\x00" },
		"bad UTF-8 id": func(m *chat.Message) { m.ID = "\xc3" },
	} {
		m := valid
		mutate(&m)
		if err := w.Enqueue(m); !errors.Is(err, ErrInvalidMessage) {
			t.Errorf("%s: Enqueue = %v, want ErrInvalidMessage", name, err)
		}
	}
	// Commit cannot fail: it drops what cannot be stored, and says so.
	log, logs := testsvc.CaptureLogger(t)
	w2 := newTestWriterLog(t, db, WriterConfig{}, log)
	bad := valid
	bad.Body = "a\x00b"
	if err := w2.Reserve(); err != nil {
		t.Fatal(err)
	}
	w2.Commit(bad)
	if s := w2.Stats(); s.Dropped != 1 || s.Enqueued != 0 || s.Reserved != 0 || s.QueueDepth != 0 {
		t.Errorf("stats after committing an invalid message: %+v", s)
	}
	if !logs.Contains("cannot be stored", "id="+bad.ID) {
		t.Errorf("drop not logged:\n%s", logs)
	}
	closeWriter(t, w)
	closeWriter(t, w2)
	if s := w.Stats(); s.Enqueued != 0 {
		t.Errorf("invalid messages were enqueued: %+v", s)
	}
	if n := countRows(t, db); n != 0 {
		t.Errorf("%d rows stored", n)
	}
}

func TestWriterConfig(t *testing.T) {
	db := openDB(t, backends[1].url(t))
	for _, cfg := range []WriterConfig{
		{QueueSize: -1},
		{Workers: -1},
		{BatchSize: -1},
		{BatchSize: maxBatchSize + 1},
		{RetryMin: time.Second, RetryMax: time.Millisecond},
		{WriteTimeout: -time.Second},
	} {
		if w, err := NewWriter(db, cfg, nil); err == nil {
			w.Close(context.Background())
			t.Errorf("NewWriter(%+v) accepted", cfg)
		} else if !strings.HasPrefix(err.Error(), "store: writer: ") {
			t.Errorf("error %q lacks the component prefix", err)
		}
	}
	got, err := WriterConfig{}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	want := WriterConfig{QueueSize: 10000, Workers: 4, BatchSize: 100, BatchWait: 20 * time.Millisecond,
		RetryMin: 100 * time.Millisecond, RetryMax: 5 * time.Second, WriteTimeout: 10 * time.Second, SlowBatch: time.Second}
	if got != want {
		t.Errorf("defaults = %+v, want %+v", got, want)
	}
}

// A refusal that does not depend on the row (here NOT NULL on a column the
// binary does not know: a schema ahead of the code) is retried, never a
// reason to drop messages.
func TestWriterSchemaMismatchRetried(t *testing.T) {
	db := migratedDB(t, backends[0])
	if err := db.gorm.Exec(`ALTER TABLE messages ADD COLUMN extra text NOT NULL`).Error; err != nil {
		t.Fatal(err)
	}
	w := newTestWriter(t, db, WriterConfig{})
	var accepted []chat.Message
	for i := range 20 {
		m := newMessage(t, "lobby", "ann", fmt.Sprint(i))
		if err := w.Enqueue(m); err != nil {
			t.Fatal(err)
		}
		accepted = append(accepted, m)
	}
	waitFor(t, 5*time.Second, "failed attempts", func() bool { return w.Stats().Retries >= 3 })
	if s := w.Stats(); s.Dropped != 0 || s.Written != 0 {
		t.Fatalf("stats while the schema is ahead: %+v", s)
	}
	if err := db.gorm.Exec(`ALTER TABLE messages DROP COLUMN extra`).Error; err != nil {
		t.Fatal(err)
	}
	closeWriter(t, w)
	checkStored(t, db, accepted)
}
