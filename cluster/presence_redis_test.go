package cluster_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/chatd/chatd/chat"
	"github.com/chatd/chatd/chat/chattest"
	"github.com/chatd/chatd/cluster"
	"github.com/chatd/chatd/internal/testsvc"
)

// startPresence makes and runs a RedisPresence, closed when tb ends.
func startPresence(tb testing.TB, cfg cluster.RedisPresenceConfig, ev ...events) *cluster.RedisPresence {
	tb.Helper()
	if cfg.Logger == nil {
		cfg.Logger = testsvc.Logger(tb)
	}
	p, err := cluster.NewRedisPresence(cfg)
	closing(tb, p, err)
	var e chat.PresenceEvents
	if len(ev) > 0 {
		e = ev[0]
	}
	if err := p.Run(e); err != nil {
		tb.Fatal(err)
	}
	return p
}

// events records what a presence reports: its removals in left, its
// restorations in joined (each may be nil).
type events struct{ left, joined *entryLog }

func (e events) PresenceLeft(room string, es []chat.PresenceEntry) {
	if e.left != nil {
		e.left.record(room, es)
	}
}

func (e events) PresenceJoined(room string, es []chat.PresenceEntry) {
	if e.joined != nil {
		e.joined.record(room, es)
	}
}

func TestRedisPresence(t *testing.T) {
	srv := testsvc.StartRedis(t)
	chattest.RunPresenceTests(t, func(t *testing.T, node string) chat.Presence {
		return startPresence(t, cluster.RedisPresenceConfig{URL: srv.URL(), NodeName: node})
	})
}

// With a shared client, and with liveness rounds and sweeps running all
// the time, the properties still hold.
func TestRedisPresenceSharedClientFastSweeps(t *testing.T) {
	srv := testsvc.StartRedis(t)
	client := redisClient(t, srv)
	chattest.RunPresenceTests(t, func(t *testing.T, node string) chat.Presence {
		return startPresence(t, cluster.RedisPresenceConfig{
			Client: client, Prefix: "shared", NodeName: node, TTL: 150 * time.Millisecond, SweepInterval: 20 * time.Millisecond,
		})
	})
	if err := client.Ping(context.Background()).Err(); err != nil {
		t.Fatalf("shared client closed: %v", err)
	}
}

func TestRedisPresenceLifecycle(t *testing.T) {
	srv := testsvc.StartRedis(t)
	for _, cfg := range []cluster.RedisPresenceConfig{
		{NodeName: "a"},
		{URL: srv.URL()},
		{URL: "http://x", NodeName: "a"},
		{URL: srv.URL(), NodeName: "a", TTL: -time.Second},
		{URL: srv.URL(), NodeName: "a", TTL: time.Millisecond},
		{URL: srv.URL(), NodeName: "a", SweepInterval: -time.Second},
	} {
		if _, err := cluster.NewRedisPresence(cfg); err == nil {
			t.Errorf("NewRedisPresence(%+v): no error", cfg)
		}
	}
	p, err := cluster.NewRedisPresence(cluster.RedisPresenceConfig{URL: srv.URL(), NodeName: "a"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	e := chattest.PresenceEntry("u", "a")
	if err := p.Add(ctx, "lobby", e); err != nil {
		t.Fatalf("Add before Run: %v", err)
	}
	noRef := e
	noRef.Meta.PhxRef = ""
	if err := p.Add(ctx, "lobby", noRef); err == nil {
		t.Fatal("Add without phx_ref: no error")
	}
	if err := p.Run(nil); err != nil {
		t.Fatal(err)
	}
	if err := p.Run(nil); err == nil {
		t.Fatal("second Run: no error")
	}
	// Run's first round keeps this run's entries.
	time.Sleep(100 * time.Millisecond)
	chattest.AssertPresence(t, p, "lobby", e)
	for range 2 {
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Add(ctx, "lobby", e); !errors.Is(err, cluster.ErrPresenceClosed) {
		t.Fatalf("Add after Close: %v", err)
	}
	if _, err := p.Remove(ctx, "lobby", e.Meta.PhxRef); !errors.Is(err, cluster.ErrPresenceClosed) {
		t.Fatalf("Remove after Close: %v", err)
	}
	if _, err := p.List(ctx, "lobby"); !errors.Is(err, cluster.ErrPresenceClosed) {
		t.Fatalf("List after Close: %v", err)
	}
	if _, err := p.RemoveNode(ctx, "a"); !errors.Is(err, cluster.ErrPresenceClosed) {
		t.Fatalf("RemoveNode after Close: %v", err)
	}
	if err := p.Run(nil); err == nil {
		t.Fatal("Run after Close: no error")
	}
}

// entryLog records the entries callbacks report, for assertions.
type entryLog struct {
	mu    sync.Mutex
	count map[string]int // "room/ref" -> times reported
}

func newEntryLog() *entryLog { return &entryLog{count: make(map[string]int)} }

func (l *entryLog) record(room string, es []chat.PresenceEntry) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range es {
		l.count[room+"/"+e.Meta.PhxRef]++
	}
}

func (l *entryLog) snapshot() map[string]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return maps.Clone(l.count)
}

// merged sums the counts of logs.
func merged(logs ...*entryLog) map[string]int {
	out := make(map[string]int)
	for _, l := range logs {
		for k, n := range l.snapshot() {
			out[k] += n
		}
	}
	return out
}

// onceEach is the count map of entries reported exactly once each.
func onceEach(byRoom map[string][]chat.PresenceEntry) map[string]int {
	out := make(map[string]int)
	for room, es := range byRoom {
		for _, e := range es {
			out[room+"/"+e.Meta.PhxRef]++
		}
	}
	return out
}

// addEntries adds n entries of fresh users on node to room, returning them.
func addEntries(t testing.TB, p chat.Presence, node, room string, n int) []chat.PresenceEntry {
	t.Helper()
	es := make([]chat.PresenceEntry, n)
	for i := range es {
		es[i] = chattest.PresenceEntry(fmt.Sprintf("user-%s-%d", node, i), node)
		if err := p.Add(context.Background(), room, es[i]); err != nil {
			t.Fatalf("Add: %v", err)
		}
	}
	return es
}

func sortedEqual(a, b []chat.PresenceEntry) bool {
	return slices.Equal(chattest.SortEntries(slices.Clone(a)), chattest.SortEntries(slices.Clone(b)))
}

// A crashed node's entries are removed by RemoveNode; concurrent callers
// (every survivor hears of the death) split them, each entry returned
// once; a later call returns nothing.
func TestRedisPresenceRemoveNode(t *testing.T) {
	srv := testsvc.StartRedis(t)
	cfg := func(node string) cluster.RedisPresenceConfig {
		return cluster.RedisPresenceConfig{URL: srv.URL(), NodeName: node}
	}
	a, b, c := startPresence(t, cfg("a")), startPresence(t, cfg("b")), startPresence(t, cfg("c"))
	r1, r2 := chattest.RoomName(), chattest.RoomName()
	aEntries := addEntries(t, a, "a", r1, 2)
	c1 := addEntries(t, c, "c", r1, 3)
	c2 := addEntries(t, c, "c", r2, 2)
	// One of c's entries left before the crash; one was removed by a.
	mustRemoveRef(t, c, r1, c1[2].Meta.PhxRef)
	mustRemoveRef(t, a, r2, c2[1].Meta.PhxRef)
	c.Close() // a crash: nothing removed

	ctx := context.Background()
	var wg sync.WaitGroup
	results := make([]map[string][]chat.PresenceEntry, 2)
	for i, p := range []*cluster.RedisPresence{a, b} {
		wg.Go(func() {
			var err error
			results[i], err = p.RemoveNode(ctx, "c")
			if err != nil {
				t.Errorf("RemoveNode: %v", err)
			}
		})
	}
	wg.Wait()
	got := make(map[string][]chat.PresenceEntry)
	for _, r := range results {
		for room, es := range r {
			got[room] = append(got[room], es...)
		}
	}
	if len(got) != 2 || !sortedEqual(got[r1], c1[:2]) || !sortedEqual(got[r2], c2[:1]) {
		t.Fatalf("RemoveNode returned %+v\nwant %s: %+v, %s: %+v", got, r1, c1[:2], r2, c2[:1])
	}
	for _, p := range []*cluster.RedisPresence{a, b} {
		if again, err := p.RemoveNode(ctx, "c"); len(again) != 0 || err != nil {
			t.Fatalf("RemoveNode again = %+v, %v; want nothing", again, err)
		}
	}
	chattest.AssertPresence(t, b, r1, aEntries...)
	chattest.AssertPresence(t, b, r2)
}

func mustRemoveRef(t testing.TB, p chat.Presence, room, ref string) {
	t.Helper()
	if ok, err := p.Remove(context.Background(), room, ref); !ok || err != nil {
		t.Fatalf("Remove(%s, %s) = %v, %v", room, ref, ok, err)
	}
}

// A node that stops refreshing its alive key (a crash) has its entries
// swept by the others within TTL + SweepInterval, each reported once
// through PresenceLeft, with no RemoveNode call.
func TestRedisPresenceSweepsCrashedNode(t *testing.T) {
	srv := testsvc.StartRedis(t)
	const ttl, sweep = 300 * time.Millisecond, 100 * time.Millisecond
	logs := map[string]*entryLog{"a": newEntryLog(), "b": newEntryLog(), "c": newEntryLog()}
	ps := make(map[string]*cluster.RedisPresence)
	for node, log := range logs {
		ps[node] = startPresence(t, cluster.RedisPresenceConfig{
			URL: srv.URL(), NodeName: node, TTL: ttl, SweepInterval: sweep,
		}, events{left: log})
	}
	r1, r2 := chattest.RoomName(), chattest.RoomName()
	aEntries := addEntries(t, ps["a"], "a", r1, 2)
	bEntries := addEntries(t, ps["b"], "b", r2, 1)
	c1 := addEntries(t, ps["c"], "c", r1, 3)
	c2 := addEntries(t, ps["c"], "c", r2, 2)
	mustRemoveRef(t, ps["c"], r1, c1[0].Meta.PhxRef)
	time.Sleep(2 * ttl) // live nodes are not swept
	chattest.AssertPresence(t, ps["a"], r1, append(slices.Clone(aEntries), c1[1:]...)...)

	ps["c"].Close()
	crashed := time.Now()
	var took time.Duration
	waitFor(t, 5*time.Second, "c's entries to be swept", func() bool {
		l1, err1 := ps["a"].List(context.Background(), r1)
		l2, err2 := ps["b"].List(context.Background(), r2)
		if err1 != nil || err2 != nil {
			t.Fatal(err1, err2)
		}
		if len(l1) == len(aEntries) && len(l2) == len(bEntries) {
			took = time.Since(crashed)
			return true
		}
		return false
	})
	t.Logf("entries of a crashed node swept %v after it stopped (TTL %v, sweep every %v)", took.Round(time.Millisecond), ttl, sweep)
	// Its last refresh was up to TTL/3 before the crash.
	if took > ttl+sweep+300*time.Millisecond {
		t.Errorf("sweep took %v, want about TTL + SweepInterval = %v at most", took, ttl+sweep)
	}
	chattest.AssertPresence(t, ps["a"], r1, aEntries...)
	chattest.AssertPresence(t, ps["b"], r2, bEntries...)
	// Every entry of c reported exactly once, by a or b, and nothing else,
	// even after more sweeps.
	time.Sleep(5 * sweep)
	want := onceEach(map[string][]chat.PresenceEntry{r1: c1[1:], r2: c2})
	if got := merged(logs["a"], logs["b"]); !maps.Equal(got, want) {
		t.Fatalf("PresenceLeft reported %v, want each of %v once", got, want)
	}
	t.Logf("reported by a: %d, by b: %d", len(logs["a"].snapshot()), len(logs["b"].snapshot()))
	if n, err := ps["a"].RemoveNode(context.Background(), "c"); len(n) != 0 || err != nil {
		t.Fatalf("RemoveNode after the sweep = %v, %v; want nothing", n, err)
	}
}

// A node that restarts under the same name before its alive key lapses
// removes what its previous run left, and reports it once.
func TestRedisPresenceRestartedNodeRemovesItsLeftovers(t *testing.T) {
	srv := testsvc.StartRedis(t)
	const ttl = 2 * time.Second // nobody sweeps c during the test
	logA, logC := newEntryLog(), newEntryLog()
	cfg := func(node string) cluster.RedisPresenceConfig {
		return cluster.RedisPresenceConfig{URL: srv.URL(), NodeName: node, TTL: ttl}
	}
	a := startPresence(t, cfg("a"), events{left: logA})
	c := startPresence(t, cfg("c"), events{left: newEntryLog()})
	room := chattest.RoomName()
	aEntries := addEntries(t, a, "a", room, 1)
	old := addEntries(t, c, "c", room, 3)
	c.Close()

	c2 := startPresence(t, cfg("c"), events{left: logC})
	fresh := addEntries(t, c2, "c", room, 2)
	waitFor(t, 3*time.Second, "the new run to remove the old run's entries", func() bool {
		return len(logC.snapshot()) == len(old)
	})
	chattest.AssertPresence(t, a, room, append(slices.Clone(aEntries), fresh...)...)
	if got, want := merged(logA, logC), onceEach(map[string][]chat.PresenceEntry{room: old}); !maps.Equal(got, want) {
		t.Fatalf("PresenceLeft reported %v, want each of %v once", got, want)
	}
	// A RemoveNode now takes the new run's entries only.
	got, err := a.RemoveNode(context.Background(), "c")
	if err != nil || !sortedEqual(got[room], fresh) {
		t.Fatalf("RemoveNode = %+v, %v; want %+v", got, err, fresh)
	}
}

// RemoveNode of a node that is in fact alive (memberlist was wrong): the
// node notices at its next refresh and writes its entries back.
func TestRedisPresenceRemoveNodeOfLiveNode(t *testing.T) {
	srv := testsvc.StartRedis(t)
	const ttl = 600 * time.Millisecond
	logB := newEntryLog()
	a := startPresence(t, cluster.RedisPresenceConfig{URL: srv.URL(), NodeName: "a", TTL: ttl})
	b := startPresence(t, cluster.RedisPresenceConfig{URL: srv.URL(), NodeName: "b", TTL: ttl}, events{joined: logB})
	room := chattest.RoomName()
	es := addEntries(t, b, "b", room, 3)
	removed, err := a.RemoveNode(context.Background(), "b")
	if err != nil || !sortedEqual(removed[room], es) {
		t.Fatalf("RemoveNode = %+v, %v", removed, err)
	}
	start := time.Now()
	waitFor(t, 3*time.Second, "b's entries to be written back and reported", func() bool {
		return len(logB.snapshot()) == len(es)
	})
	t.Logf("entries written back %v after RemoveNode", time.Since(start).Round(time.Millisecond))
	chattest.AssertPresence(t, a, room, es...)
	if got, want := logB.snapshot(), onceEach(map[string][]chat.PresenceEntry{room: es}); !maps.Equal(got, want) {
		t.Fatalf("PresenceJoined reported %v, want %v", got, want)
	}
	// They are b's again.
	mustRemoveRef(t, b, room, es[0].Meta.PhxRef)
	again, err := a.RemoveNode(context.Background(), "b")
	if err != nil || !sortedEqual(again[room], es[1:]) {
		t.Fatalf("second RemoveNode = %+v, %v; want %+v", again, err, es[1:])
	}
}

// A Redis crash: every call fails with an error and nothing panics; when
// Redis is back (empty) each node writes its entries back (PresenceJoined), an
// entry whose Remove failed meanwhile stays removed, nobody's entries are
// swept, and the presence works again.
func TestRedisPresenceSurvivesRedisRestart(t *testing.T) {
	srv := testsvc.StartRedis(t)
	const ttl, sweep = 600 * time.Millisecond, 100 * time.Millisecond
	restoredA, restoredB, removedA, removedB := newEntryLog(), newEntryLog(), newEntryLog(), newEntryLog()
	a := startPresence(t, cluster.RedisPresenceConfig{URL: srv.URL(), NodeName: "a", TTL: ttl, SweepInterval: sweep},
		events{left: removedA, joined: restoredA})
	b := startPresence(t, cluster.RedisPresenceConfig{URL: srv.URL(), NodeName: "b", TTL: ttl, SweepInterval: sweep},
		events{left: removedB, joined: restoredB})
	room := chattest.RoomName()
	aEntries := addEntries(t, a, "a", room, 2)
	bEntries := addEntries(t, b, "b", room, 3)

	srv.Stop(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	start := time.Now()
	if _, err := a.List(ctx, room); err == nil {
		t.Fatal("List while Redis is down: no error")
	}
	t.Logf("List while Redis is down failed after %v", time.Since(start).Round(time.Millisecond))
	if err := a.Add(ctx, room, chattest.PresenceEntry("x", "a")); err == nil {
		t.Fatal("Add while Redis is down: no error")
	}
	if _, err := b.Remove(ctx, room, bEntries[0].Meta.PhxRef); err == nil {
		t.Fatal("Remove while Redis is down: no error")
	}
	if _, err := a.RemoveNode(ctx, "b"); err == nil {
		t.Fatal("RemoveNode while Redis is down: no error")
	}
	cancel()
	time.Sleep(2 * ttl) // refreshes and sweeps fail meanwhile

	srv.Start(t)
	restarted := time.Now()
	want := append(slices.Clone(aEntries), bEntries[1:]...)
	waitFor(t, 5*time.Second, "the entries to be written back", func() bool {
		got, err := b.List(context.Background(), room)
		return err == nil && sortedEqual(got, want)
	})
	t.Logf("entries written back %v after Redis restarted", time.Since(restarted).Round(time.Millisecond))
	time.Sleep(ttl) // more rounds: nothing changes
	chattest.AssertPresence(t, a, room, want...)
	if got, w := merged(restoredA, restoredB), onceEach(map[string][]chat.PresenceEntry{room: want}); !maps.Equal(got, w) {
		t.Fatalf("PresenceJoined reported %v, want %v", got, w)
	}
	if got := merged(removedA, removedB); len(got) != 0 {
		t.Fatalf("PresenceLeft reported %v after a Redis restart, want nothing", got)
	}
	e := addEntries(t, a, "a", room, 1)
	mustRemoveRef(t, b, room, aEntries[0].Meta.PhxRef)
	chattest.AssertPresence(t, b, room, append(slices.Clone(want[1:]), e...)...)
	t.Logf("stats: a %+v, b %+v", a.Stats(), b.Stats())
}

// An Add whose reply is lost (it times out against a frozen Redis, which
// runs it when thawed) leaves no entry behind: the next refresh round
// removes it, and reports it since others may have seen it.
func TestRedisPresenceRemovesOrphanedAdd(t *testing.T) {
	srv := testsvc.StartRedis(t)
	const ttl = 900 * time.Millisecond
	removed := newEntryLog()
	a := startPresence(t, cluster.RedisPresenceConfig{URL: srv.URL(), NodeName: "a", TTL: ttl}, events{left: removed})
	b := startPresence(t, cluster.RedisPresenceConfig{URL: srv.URL(), NodeName: "b", TTL: ttl})
	room := chattest.RoomName()
	kept := addEntries(t, a, "a", room, 1) // warm up: the script is cached in Redis

	srv.Freeze(t)
	e := chattest.PresenceEntry("lost", "a")
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	err := a.Add(ctx, room, e)
	cancel()
	srv.Thaw(t)
	thawed := time.Now()
	if err == nil {
		t.Fatal("Add against a frozen Redis: no error")
	}
	// Redis runs the Add when thawed, and a's next refresh round (at once:
	// the one that hung on the frozen Redis) removes it.
	waitFor(t, 3*time.Second, "the orphaned entry to be removed and reported", func() bool {
		return len(removed.snapshot()) > 0
	})
	t.Logf("orphaned entry removed and reported %v after Redis thawed (refresh every %v)", time.Since(thawed).Round(time.Millisecond), ttl/3)
	chattest.AssertPresence(t, b, room, kept...)
	if got, want := removed.snapshot(), onceEach(map[string][]chat.PresenceEntry{room: {e}}); !maps.Equal(got, want) {
		t.Fatalf("PresenceLeft reported %v, want %v", got, want)
	}
}

// Close stops the presence's goroutines, even while Redis is down.
func TestRedisPresenceCloseStopsGoroutines(t *testing.T) {
	srv := testsvc.StartRedis(t)
	before := runtime.NumGoroutine()
	for _, mode := range []string{"up", "stopped", "frozen"} {
		if mode == "frozen" {
			// The first rounds (at Run) hang: Close must end them, not
			// wait for their timeout (a third of a 30 s lease or TTL).
			srv.Freeze(t)
		}
		var ps []*cluster.RedisPresence
		for i := range 3 {
			p, err := cluster.NewRedisPresence(cluster.RedisPresenceConfig{
				URL: srv.URL(), NodeName: fmt.Sprint(i), TTL: 30 * time.Second, Logger: testsvc.Logger(t),
			})
			if err != nil {
				t.Fatal(err)
			}
			if err := p.Run(nil); err != nil {
				t.Fatal(err)
			}
			if mode != "frozen" {
				addEntries(t, p, fmt.Sprint(i), "lobby", 2)
			}
			ps = append(ps, p)
		}
		if mode == "stopped" {
			srv.Stop(t)
		}
		time.Sleep(300 * time.Millisecond) // rounds run (or hang) meanwhile
		start := time.Now()
		for _, p := range ps {
			if err := p.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("Close (Redis %s) took %v", mode, d)
		}
		waitGoroutines(t, before)
		switch mode {
		case "stopped":
			srv.Start(t)
		case "frozen":
			srv.Thaw(t)
		}
	}
}
