package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/chatd/chatd/chat"
	"github.com/jackc/pgx/v5/pgconn"
	"gorm.io/gorm/clause"
)

// WriterConfig configures a Writer. The zero value is usable: every zero
// field means the default stated on it.
type WriterConfig struct {
	// QueueSize is how many places the queue has: messages waiting for a
	// worker plus places reserved (Reserve) and not yet committed. When
	// every place is taken, Reserve returns chat.ErrOverloaded. Workers
	// hold up to Workers*BatchSize more, taken off the queue. Zero means
	// 10000. Size it for the longest database outage to ride out: at R
	// messages per second, an outage of D seconds needs R*D.
	QueueSize int
	// Workers is how many goroutines write batches concurrently. Zero
	// means 4.
	Workers int
	// BatchSize is the most messages one INSERT writes. Zero means 100; at
	// most 5000.
	BatchSize int
	// BatchWait is how long a worker that holds fewer than BatchSize
	// messages waits for more before writing them. It bounds the delay a
	// message spends waiting for company, not the chat: broadcast never
	// waits for the writer. Zero means 20ms; negative means never wait
	// (write whatever is queued at once).
	BatchWait time.Duration
	// RetryMin is the pause after a batch's first failed attempt; each
	// further failure doubles it, up to RetryMax. Pauses are jittered
	// between half and all of that value. Zero means 100ms.
	RetryMin time.Duration
	// RetryMax caps the pause between attempts. Zero means 5s.
	RetryMax time.Duration
	// WriteTimeout bounds one INSERT attempt; a database that hangs
	// instead of failing is retried too. Zero means 10s.
	WriteTimeout time.Duration
	// SlowBatch is the write duration above which a batch is logged as
	// slow. Zero means 1s.
	SlowBatch time.Duration
}

// Writer limits.
const (
	defaultQueueSize    = 10000
	defaultWorkers      = 4
	defaultBatchSize    = 100
	maxBatchSize        = 5000 // 5 parameters a row stays under SQLite's 32766
	defaultBatchWait    = 20 * time.Millisecond
	defaultRetryMin     = 100 * time.Millisecond
	defaultRetryMax     = 5 * time.Second
	defaultWriteTimeout = 10 * time.Second
	defaultSlowBatch    = time.Second
	// failureLogEvery throttles the log of a batch that keeps failing.
	failureLogEvery = 10 * time.Second
)

func (c WriterConfig) withDefaults() (WriterConfig, error) {
	for _, f := range []struct {
		name string
		v    int64
	}{
		{"QueueSize", int64(c.QueueSize)},
		{"Workers", int64(c.Workers)},
		{"BatchSize", int64(c.BatchSize)},
		{"RetryMin", int64(c.RetryMin)},
		{"RetryMax", int64(c.RetryMax)},
		{"WriteTimeout", int64(c.WriteTimeout)},
		{"SlowBatch", int64(c.SlowBatch)},
	} {
		if f.v < 0 {
			return c, fmt.Errorf("store: writer: %s is negative (%d)", f.name, f.v)
		}
	}
	setDefault(&c.QueueSize, defaultQueueSize)
	setDefault(&c.Workers, defaultWorkers)
	setDefault(&c.BatchSize, defaultBatchSize)
	setDefault(&c.BatchWait, defaultBatchWait)
	setDefault(&c.RetryMin, defaultRetryMin)
	setDefault(&c.RetryMax, defaultRetryMax)
	setDefault(&c.WriteTimeout, defaultWriteTimeout)
	setDefault(&c.SlowBatch, defaultSlowBatch)
	if c.BatchSize > maxBatchSize {
		return c, fmt.Errorf("store: writer: BatchSize %d is above %d", c.BatchSize, maxBatchSize)
	}
	if c.RetryMin > c.RetryMax {
		return c, fmt.Errorf("store: writer: RetryMin %v is above RetryMax %v", c.RetryMin, c.RetryMax)
	}
	return c, nil
}

func setDefault[T int | time.Duration](v *T, def T) {
	if *v == 0 {
		*v = def
	}
}

// ErrWriterClosed is returned by Reserve and Enqueue after Close has begun.
var ErrWriterClosed = errors.New("store: writer closed")

// ErrInvalidMessage is returned (wrapped) by Enqueue for a message the
// database could never store: no id or room, a NUL byte, or invalid UTF-8.
// Commit drops such a message (logged, counted in WriterStats.Dropped)
// instead of letting it fail its batch.
var ErrInvalidMessage = errors.New("store: invalid message")

// Writer persists messages off the request path. It implements
// chat.MessageSink: Reserve takes a place in a bounded queue and Commit fills
// it, both at once and without waiting on the database; a pool of workers
// takes batches off the queue and writes each with one multi-row INSERT
// that ignores ids already stored, so a batch retried after an ambiguous
// failure (the commit happened, the reply was lost) never duplicates a
// message.
//
// A batch that fails is retried, with capped exponential backoff, until it
// is written or Close gives up on it: a database outage fills the queue
// (then Reserve answers chat.ErrOverloaded) but loses nothing. Each worker
// writes in queue order, but batches of different workers may land in any
// order; readers order by id.
//
// Every method is safe for concurrent use.
type Writer struct {
	db    *DB
	cfg   WriterConfig
	log   *slog.Logger
	start time.Time // queue times are durations since start (monotonic)
	// onBatch observes successful inserts (OnBatch); nil: none.
	onBatch atomic.Pointer[func(rows int, took time.Duration)]

	// queue holds committed messages. Its capacity is QueueSize, and taken
	// (places reserved or queued) never exceeds it, so a Commit always
	// finds room.
	queue chan queued
	taken atomic.Int64
	// reserved counts places reserved and not yet committed or cancelled.
	reserved atomic.Int64

	// mu orders Reserve and Commit (shared) against Close (exclusive):
	// no place is reserved after closed is set, and no message is queued
	// after aborted is set.
	mu      sync.RWMutex
	closed  atomic.Bool // written under mu
	aborted bool

	// finish is closed once closed is set and no reservation is left: no
	// message can arrive any more, so workers drain the queue and return.
	finish     chan struct{}
	finishOnce sync.Once
	// stop is cancelled when Close runs out of time: in-flight attempts are
	// cancelled and every message still held is counted as unwritten.
	stop      context.Context
	abort     context.CancelFunc
	closeOnce sync.Once
	endOnce   sync.Once // the final log line
	wg        sync.WaitGroup
	done      chan struct{} // closed when every worker has returned

	slots []workerSlot
	// wm tracks finished commits for Flush.
	wm *watermark

	enqueued   atomic.Uint64
	rejected   atomic.Uint64
	written    atomic.Uint64
	batches    atomic.Uint64
	failures   atomic.Uint64
	retries    atomic.Uint64
	dropped    atomic.Uint64
	unwritten  atomic.Uint64
	inFlight   atomic.Int64
	lastBatch  atomic.Int64
	writeNanos atomic.Int64
	lastNanos  atomic.Int64
	maxNanos   atomic.Int64
}

// queued is a message and when it was accepted.
type queued struct {
	msg chat.Message
	at  time.Duration // since Writer.start
	seq uint64        // commit order, for Flush
}

// workerSlot is what Stats reads of one worker.
type workerSlot struct {
	// oldest is 1 + the queue time of the oldest message the worker holds
	// unwritten, 0 when it holds none.
	oldest atomic.Int64
	_      [56]byte // keep slots on separate cache lines
}

var _ chat.MessageSink = (*Writer)(nil)

// NewWriter starts a writer on db with cfg (see WriterConfig for defaults).
// Its workers run until Close. logger may be nil.
func NewWriter(db *DB, cfg WriterConfig, logger *slog.Logger) (*Writer, error) {
	if db == nil {
		return nil, errors.New("store: writer: nil DB")
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	w := &Writer{
		db:     db,
		cfg:    cfg,
		log:    logger,
		start:  time.Now(),
		queue:  make(chan queued, cfg.QueueSize),
		finish: make(chan struct{}),
		done:   make(chan struct{}),
		slots:  make([]workerSlot, cfg.Workers),
		wm:     newWatermark(),
	}
	w.stop, w.abort = context.WithCancel(context.Background())
	w.wg.Add(cfg.Workers)
	for i := range cfg.Workers {
		go w.work(&w.slots[i])
	}
	go func() {
		w.wg.Wait()
		close(w.done)
	}()
	return w, nil
}

// Reserve takes one place in the queue and returns at once. It returns
// chat.ErrOverloaded when every place is taken and ErrWriterClosed once
// Close has begun; then no place was taken. After a nil error the caller
// must call exactly one of Commit or Cancel (Close waits for that).
func (w *Writer) Reserve() error {
	w.mu.RLock()
	defer w.mu.RUnlock()
	if w.closed.Load() {
		return ErrWriterClosed
	}
	if w.taken.Add(1) > int64(w.cfg.QueueSize) {
		w.taken.Add(-1)
		w.rejected.Add(1)
		return chat.ErrOverloaded
	}
	w.reserved.Add(1)
	return nil
}

// Commit queues msg in the place taken by Reserve. It never blocks and
// never fails: msg will be written unless Close runs out of time (then it
// is counted in WriterStats.Unwritten and logged). A message the database
// could never store (see ErrInvalidMessage) is dropped here, logged and
// counted in WriterStats.Dropped.
func (w *Writer) Commit(msg chat.Message) {
	defer w.resolve()
	if err := validMessage(msg); err != nil {
		w.taken.Add(-1)
		w.dropped.Add(1)
		w.log.Error("store: writer: message cannot be stored; dropped",
			"id", msg.ID, "room", msg.Room, "user_id", msg.UserID, "err", err)
		return
	}
	w.mu.RLock()
	defer w.mu.RUnlock()
	item := queued{msg: msg, at: time.Since(w.start), seq: w.wm.assign()}
	if w.aborted {
		w.wm.finish(item.seq)
		w.taken.Add(-1)
		w.unwritten.Add(1)
		w.log.Error("store: writer: message committed after Close gave up; not written",
			"id", msg.ID, "room", msg.Room)
		return
	}
	select {
	case w.queue <- item:
		w.enqueued.Add(1)
	default:
		// Only a Commit without its Reserve can get here.
		w.wm.finish(item.seq)
		w.unwritten.Add(1)
		w.log.Error("store: writer: Commit without Reserve found the queue full; message not written",
			"id", msg.ID, "room", msg.Room)
	}
}

// Flush waits until every message committed before the call is written,
// or given up on (dropped as unstorable, or left unwritten by an aborted
// Close), or until ctx ends, returning ctx.Err(). A join that asks for
// history calls it first, so that what this node accepted is in the
// database when the history query runs.
func (w *Writer) Flush(ctx context.Context) error {
	return w.wm.wait(ctx)
}

// Cancel gives back a place taken by Reserve, unused.
func (w *Writer) Cancel() {
	w.taken.Add(-1)
	w.resolve()
}

// resolve ends one reservation; the last one after Close lets the workers
// finish.
func (w *Writer) resolve() {
	if w.reserved.Add(-1) <= 0 && w.closed.Load() {
		w.finishOnce.Do(func() { close(w.finish) })
	}
}

// Enqueue is Reserve then Commit, for callers that have the message before
// they need the place: it returns chat.ErrOverloaded, ErrWriterClosed, or an
// error wrapping ErrInvalidMessage, and then msg is not kept; after a nil
// error msg is committed.
func (w *Writer) Enqueue(msg chat.Message) error {
	if err := validMessage(msg); err != nil {
		return err
	}
	if err := w.Reserve(); err != nil {
		return err
	}
	w.Commit(msg)
	return nil
}

// EnqueueWait is Enqueue that waits, polling with backoff, while the queue
// is full, until ctx ends. It is for background work that must not be
// refused (the messages of a dead node, taken over from the room logs).
func (w *Writer) EnqueueWait(ctx context.Context, msg chat.Message) error {
	pause := 10 * time.Millisecond
	for {
		err := w.Enqueue(msg)
		if !errors.Is(err, chat.ErrOverloaded) {
			return err
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		pause = min(2*pause, 500*time.Millisecond)
	}
}

func validMessage(m chat.Message) error {
	if m.ID == "" {
		return fmt.Errorf("%w: empty id", ErrInvalidMessage)
	}
	if m.Room == "" {
		return fmt.Errorf("%w: empty room", ErrInvalidMessage)
	}
	for _, f := range [...]struct{ name, v string }{
		{"id", m.ID}, {"room", m.Room}, {"user_id", m.UserID}, {"body", m.Body},
	} {
		if !utf8.ValidString(f.v) {
			return fmt.Errorf("%w: %s is not valid UTF-8", ErrInvalidMessage, f.name)
		}
		if strings.IndexByte(f.v, 0) >= 0 {
			return fmt.Errorf("%w: %s holds a NUL character", ErrInvalidMessage, f.name)
		}
	}
	return nil
}

// Close stops accepting messages (Reserve returns ErrWriterClosed), waits
// for places already reserved to be committed or cancelled, waits until
// every committed message is written, and stops the workers. Batches keep
// being retried while ctx allows. When ctx ends first, Close cancels what is
// in flight, waits for the workers to return, logs how many messages it
// could not write (and how many places were still reserved), and returns
// ctx.Err(). Either way no goroutine of the Writer is left. Close is
// idempotent; later calls wait for the same end.
func (w *Writer) Close(ctx context.Context) error {
	w.closeOnce.Do(func() {
		w.mu.Lock()
		w.closed.Store(true)
		w.mu.Unlock()
		if w.reserved.Load() <= 0 {
			w.finishOnce.Do(func() { close(w.finish) })
		}
		w.log.Info("store: writer draining", "pending", len(w.queue)+int(w.inFlight.Load()),
			"reserved", w.reserved.Load())
	})
	select {
	case <-w.done:
	case <-ctx.Done():
		select {
		case <-w.done:
		default:
			w.mu.Lock()
			w.aborted = true
			w.mu.Unlock()
			w.abort()
			<-w.done
			n, r := w.unwritten.Load(), w.reserved.Load()
			if n > 0 || r > 0 {
				// reserved: places still held; a Commit into one of them
				// will not be written either (it is logged then).
				w.log.Error("store: writer closed before writing every accepted message",
					"unwritten", n, "reserved", r, "written", w.written.Load(), "err", ctx.Err())
				return ctx.Err()
			}
		}
	}
	w.abort() // release the context's resources
	if n := w.unwritten.Load(); n > 0 {
		return fmt.Errorf("store: writer: %d accepted messages were not written", n)
	}
	w.endOnce.Do(func() {
		w.log.Info("store: writer closed", "written", w.written.Load(), "dropped", w.dropped.Load())
	})
	return nil
}

// work is one worker: take a batch, write it, repeat until the writer
// finishes (and the queue is empty) or is aborted.
func (w *Writer) work(slot *workerSlot) {
	defer w.wg.Done()
	batch := make([]queued, 0, w.cfg.BatchSize)
	rows := make([]messageRow, 0, w.cfg.BatchSize)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		var first queued
		select {
		case first = <-w.queue:
		case <-w.finish:
			// Nothing can be queued any more: empty the queue, then stop.
			select {
			case first = <-w.queue:
			default:
				return
			}
		case <-w.stop.Done():
			// Nothing is queued after an abort: count what is left.
			for {
				select {
				case it := <-w.queue:
					w.wm.finish(it.seq)
					w.taken.Add(-1)
					w.unwritten.Add(1)
				default:
					return
				}
			}
		}
		w.taken.Add(-1)
		w.inFlight.Add(1)
		slot.oldest.Store(int64(first.at) + 1)
		batch = w.fill(append(batch[:0], first), timer)
		rows = rows[:0]
		for _, it := range batch {
			rows = append(rows, rowFromMessage(it.msg))
		}
		w.write(rows)
		for _, it := range batch {
			w.wm.finish(it.seq)
		}
		slot.oldest.Store(0)
		w.inFlight.Add(-int64(len(batch)))
		clear(batch) // drop message bodies while idle
		clear(rows)
	}
}

// fill adds to batch whatever is queued, then waits up to BatchWait for
// more, until BatchSize. Each message taken counts in inFlight at once, so
// Stats never loses sight of it.
func (w *Writer) fill(batch []queued, timer *time.Timer) []queued {
	take := func(it queued) {
		w.taken.Add(-1)
		w.inFlight.Add(1)
		batch = append(batch, it)
	}
	for len(batch) < w.cfg.BatchSize {
		select {
		case it := <-w.queue:
			take(it)
			continue
		default:
		}
		break
	}
	if len(batch) >= w.cfg.BatchSize || w.cfg.BatchWait < 0 {
		return batch
	}
	timer.Reset(w.cfg.BatchWait)
	defer timer.Stop()
	for len(batch) < w.cfg.BatchSize {
		select {
		case it := <-w.queue:
			take(it)
		case <-timer.C:
			return batch
		case <-w.finish:
			return batch
		case <-w.stop.Done():
			return batch
		}
	}
	return batch
}

// write inserts rows, retrying until they are written or the writer is
// aborted.
func (w *Writer) write(rows []messageRow) {
	var (
		backoff  = w.cfg.RetryMin
		attempts int
		firstErr time.Time
		lastLog  time.Time
	)
	for {
		if w.stop.Err() != nil {
			w.unwritten.Add(uint64(len(rows)))
			return
		}
		if attempts > 0 {
			w.retries.Add(1)
		}
		attempts++
		began := time.Now()
		err := w.insert(rows)
		took := time.Since(began)
		if err == nil {
			w.recordBatch(len(rows), took)
			if attempts > 1 {
				w.log.Info("store: writer: batch written after failures",
					"rows", len(rows), "attempts", attempts, "after", time.Since(firstErr).Round(time.Millisecond))
			}
			return
		}
		if w.stop.Err() != nil {
			w.unwritten.Add(uint64(len(rows)))
			return
		}
		w.failures.Add(1)
		if attempts == 1 {
			firstErr = began
		}
		if permanent(err) {
			// Some row can never be stored; write the others one by one
			// and keep retrying only those that failed for another reason.
			rows = w.isolate(rows)
			if len(rows) == 0 {
				return
			}
		}
		if now := time.Now(); now.Sub(lastLog) >= failureLogEvery {
			lastLog = now
			w.log.Warn("store: writer: batch insert failed; retrying",
				"rows", len(rows), "attempt", attempts, "retry_in", backoff, "err", err)
		}
		pause := backoff/2 + rand.N(backoff/2+1)
		select {
		case <-time.After(pause):
		case <-w.stop.Done():
		}
		backoff = min(backoff*2, w.cfg.RetryMax)
	}
}

// isolate writes rows one at a time after a batch failed permanently. Rows
// the database refuses for good are dropped (logged, counted in Dropped);
// it returns the rows that failed for another reason, to be retried.
func (w *Writer) isolate(rows []messageRow) []messageRow {
	var retry []messageRow
	for i, r := range rows {
		if w.stop.Err() != nil {
			return append(retry, rows[i:]...)
		}
		began := time.Now()
		err := w.insert([]messageRow{r})
		switch {
		case err == nil:
			w.recordBatch(1, time.Since(began))
		case permanent(err):
			w.dropped.Add(1)
			w.log.Error("store: writer: database refused a message; it is dropped",
				"id", r.ID, "room", r.Room, "user_id", r.UserID, "err", err)
		default:
			retry = append(retry, r)
		}
	}
	return retry
}

func (w *Writer) insert(rows []messageRow) error {
	ctx, cancel := context.WithTimeout(w.stop, w.cfg.WriteTimeout)
	defer cancel()
	return w.db.gorm.WithContext(ctx).
		Clauses(clause.OnConflict{Columns: []clause.Column{{Name: "id"}}, DoNothing: true}).
		Create(&rows).Error
}

func (w *Writer) recordBatch(n int, took time.Duration) {
	w.written.Add(uint64(n))
	w.batches.Add(1)
	w.lastBatch.Store(int64(n))
	w.writeNanos.Add(int64(took))
	w.lastNanos.Store(int64(took))
	for {
		m := w.maxNanos.Load()
		if int64(took) <= m || w.maxNanos.CompareAndSwap(m, int64(took)) {
			break
		}
	}
	if fn := w.onBatch.Load(); fn != nil {
		(*fn)(n, took)
	}
	if took > w.cfg.SlowBatch {
		w.log.Warn("store: writer: slow batch", "rows", n, "duration", took.Round(time.Millisecond))
	}
}

// permanent reports whether err means the row's values are refused, so
// retrying the same rows can never succeed. Only errors that depend on the
// values count: a data exception, or a CHECK, UNIQUE (on anything but id,
// which the insert ignores) or trigger refusal. Everything else, including
// NOT NULL and foreign-key violations (which this insert, giving every
// column, meets only when the schema no longer matches the binary), means
// the database is down, busy or misconfigured: retried, never dropped.
func permanent(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return strings.HasPrefix(pgErr.Code, "22") || // data_exception
			pgErr.Code == "23505" || // unique_violation
			pgErr.Code == "23514" // check_violation
	}
	var sqliteErr interface{ Code() int }
	if errors.As(err, &sqliteErr) {
		switch sqliteErr.Code() {
		case 18, // SQLITE_TOOBIG
			20,   // SQLITE_MISMATCH
			275,  // SQLITE_CONSTRAINT_CHECK
			1811, // SQLITE_CONSTRAINT_TRIGGER
			2067: // SQLITE_CONSTRAINT_UNIQUE
			return true
		}
	}
	return false
}

// WriterStats is a snapshot of a Writer's counters. Counters only grow.
type WriterStats struct {
	// QueueDepth is how many accepted messages wait for a worker.
	QueueDepth int
	// QueueCapacity is WriterConfig.QueueSize.
	QueueCapacity int
	// Reserved is how many places are reserved and not yet committed or
	// cancelled. QueueDepth + Reserved reaching QueueCapacity means
	// overloaded.
	Reserved int
	// InFlight is how many messages workers hold: being written or
	// waiting to be retried.
	InFlight int
	// Enqueued counts messages committed to the queue.
	Enqueued uint64
	// Rejected counts Reserve calls answered chat.ErrOverloaded.
	Rejected uint64
	// Written counts messages in successful inserts (including ids that
	// were already stored and so ignored).
	Written uint64
	// Batches counts successful inserts.
	Batches uint64
	// LastBatchSize is the row count of the latest successful insert.
	LastBatchSize int
	// WriteTime is the total duration of successful inserts; divide by
	// Batches for the mean.
	WriteTime time.Duration
	// LastWriteTime and MaxWriteTime are the latest and the longest
	// successful insert.
	LastWriteTime time.Duration
	MaxWriteTime  time.Duration
	// Failures counts failed insert attempts.
	Failures uint64
	// Retries counts insert attempts made after a failure.
	Retries uint64
	// Dropped counts committed messages that can never be stored: refused
	// by Commit (see ErrInvalidMessage) or by the database. Each is logged.
	Dropped uint64
	// Unwritten counts committed messages given up when Close ran out of
	// time (and any committed after that).
	Unwritten uint64
	// Lag is how long the oldest accepted message a worker holds has
	// waited to be written: 0 when workers are idle, growing while the
	// database is down.
	Lag time.Duration
}

// Pending is how many accepted messages are not written yet.
func (s WriterStats) Pending() int { return s.QueueDepth + s.InFlight }

// OnBatch makes fn be called after every successful insert with its row
// count and duration (metrics histograms); nil stops the calls. fn runs on
// a worker and must not block.
func (w *Writer) OnBatch(fn func(rows int, took time.Duration)) {
	if fn == nil {
		w.onBatch.Store(nil)
		return
	}
	w.onBatch.Store(&fn)
}

// Stats returns the writer's counters. It is cheap: atomics only.
func (w *Writer) Stats() WriterStats {
	s := WriterStats{
		QueueDepth:    len(w.queue),
		QueueCapacity: cap(w.queue),
		Reserved:      int(max(0, w.reserved.Load())),
		InFlight:      int(w.inFlight.Load()),
		Enqueued:      w.enqueued.Load(),
		Rejected:      w.rejected.Load(),
		Written:       w.written.Load(),
		Batches:       w.batches.Load(),
		LastBatchSize: int(w.lastBatch.Load()),
		WriteTime:     time.Duration(w.writeNanos.Load()),
		LastWriteTime: time.Duration(w.lastNanos.Load()),
		MaxWriteTime:  time.Duration(w.maxNanos.Load()),
		Failures:      w.failures.Load(),
		Retries:       w.retries.Load(),
		Dropped:       w.dropped.Load(),
		Unwritten:     w.unwritten.Load(),
	}
	var oldest int64
	for i := range w.slots {
		if o := w.slots[i].oldest.Load(); o != 0 && (oldest == 0 || o < oldest) {
			oldest = o
		}
	}
	if oldest != 0 {
		s.Lag = max(0, time.Since(w.start)-time.Duration(oldest-1))
	}
	return s
}
