package cluster_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chatd/chatd/chat"
	"github.com/chatd/chatd/chat/chattest"
	"github.com/chatd/chatd/cluster"
	"github.com/chatd/chatd/internal/testsvc"
)

// startLimiter makes and runs a RedisConnLimiter, closed when tb ends.
func startLimiter(tb testing.TB, cfg cluster.RedisConnLimiterConfig) *cluster.RedisConnLimiter {
	tb.Helper()
	if cfg.Logger == nil {
		cfg.Logger = testsvc.Logger(tb)
	}
	l, err := cluster.NewRedisConnLimiter(cfg)
	return running(tb, l, err)
}

func TestRedisConnLimiter(t *testing.T) {
	srv := testsvc.StartRedis(t)
	chattest.RunConnLimiterTests(t, func(t *testing.T, node string, max int) chat.ConnLimiter {
		return startLimiter(t, cluster.RedisConnLimiterConfig{URL: srv.URL(), NodeName: node, Max: max})
	})
}

// A client shared with the rest of the node (go-redis's default retries)
// works too, and is left open.
func TestRedisConnLimiterSharedClient(t *testing.T) {
	srv := testsvc.StartRedis(t)
	client := redisClient(t, srv)
	chattest.RunConnLimiterTests(t, func(t *testing.T, node string, max int) chat.ConnLimiter {
		return startLimiter(t, cluster.RedisConnLimiterConfig{Client: client, Prefix: "shared", NodeName: node, Max: max})
	})
	if err := client.Ping(context.Background()).Err(); err != nil {
		t.Fatalf("shared client closed: %v", err)
	}
}

func TestRedisConnLimiterLifecycle(t *testing.T) {
	srv := testsvc.StartRedis(t)
	for _, cfg := range []cluster.RedisConnLimiterConfig{
		{NodeName: "a"},
		{URL: srv.URL()},
		{URL: "http://x", NodeName: "a"},
		{URL: srv.URL(), NodeName: "a", Lease: -time.Second},
		{URL: srv.URL(), NodeName: "a", Lease: time.Millisecond},
	} {
		if _, err := cluster.NewRedisConnLimiter(cfg); err == nil {
			t.Errorf("NewRedisConnLimiter(%+v): no error", cfg)
		}
	}
	l, err := cluster.NewRedisConnLimiter(cluster.RedisConnLimiterConfig{URL: srv.URL(), NodeName: "a", Max: 1})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	// Acquire works before Run.
	chattest.MustAcquire(t, l, "u", "c")
	if err := l.Run(); err != nil {
		t.Fatal(err)
	}
	if err := l.Run(); err == nil {
		t.Fatal("second Run: no error")
	}
	for range 2 {
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Acquire(ctx, "u", "d"); !errors.Is(err, cluster.ErrLimiterClosed) {
		t.Fatalf("Acquire after Close: %v", err)
	}
	if err := l.Release(ctx, "u", "c"); err != nil {
		t.Fatalf("Release after Close: %v", err)
	}
	if _, err := l.ReleaseNode(ctx, "a"); !errors.Is(err, cluster.ErrLimiterClosed) {
		t.Fatalf("ReleaseNode after Close: %v", err)
	}
	if err := l.Run(); err == nil {
		t.Fatal("Run after Close: no error")
	}
}

// With no limit the limiter never needs Redis.
func TestRedisConnLimiterNoLimitNeedsNoRedis(t *testing.T) {
	l := startLimiter(t, cluster.RedisConnLimiterConfig{URL: "redis://127.0.0.1:1/0", NodeName: "a"})
	for i := range 10 {
		chattest.MustAcquire(t, l, "u", fmt.Sprint(i))
	}
	chattest.MustRelease(t, l, "u", "0")
}

// A crashed node's slots are freed by ReleaseNode, once.
func TestRedisConnLimiterReleaseNode(t *testing.T) {
	srv := testsvc.StartRedis(t)
	cfg := func(node string) cluster.RedisConnLimiterConfig {
		return cluster.RedisConnLimiterConfig{URL: srv.URL(), NodeName: node, Max: 3}
	}
	a := startLimiter(t, cfg("a"))
	b := startLimiter(t, cfg("b"))
	c := startLimiter(t, cfg("c"))
	u, v := chattest.UserName(), chattest.UserName()
	for i := range 3 {
		chattest.MustAcquire(t, a, u, fmt.Sprintf("a%d", i))
	}
	chattest.MustAcquire(t, a, v, "a0")
	chattest.MustAcquire(t, b, v, "b0")
	chattest.MustRefuse(t, b, u, "b0")
	a.Close() // a crash: nothing released

	ctx := context.Background()
	var wg sync.WaitGroup
	var total atomic.Int64
	for _, l := range []*cluster.RedisConnLimiter{b, c} {
		wg.Go(func() {
			n, err := l.ReleaseNode(ctx, "a")
			if err != nil {
				t.Errorf("ReleaseNode: %v", err)
			}
			total.Add(int64(n))
		})
	}
	wg.Wait()
	if total.Load() != 4 {
		t.Fatalf("concurrent ReleaseNode calls freed %d slots in all, want 4", total.Load())
	}
	if n, err := b.ReleaseNode(ctx, "a"); n != 0 || err != nil {
		t.Fatalf("ReleaseNode again = %d, %v; want 0, nil", n, err)
	}
	for i := range 3 {
		chattest.MustAcquire(t, b, u, fmt.Sprintf("b%d", i))
	}
	chattest.MustRefuse(t, c, u, "c0")
	// b's own slot of v was not touched.
	chattest.MustAcquire(t, c, v, "c0")
	chattest.MustAcquire(t, c, v, "c1")
	chattest.MustRefuse(t, c, v, "c2")
}

// ReleaseNode of a node that is in fact alive: its next refresh takes its
// slots back.
func TestRedisConnLimiterReleaseNodeOfLiveNode(t *testing.T) {
	srv := testsvc.StartRedis(t)
	cfg := func(node string) cluster.RedisConnLimiterConfig {
		return cluster.RedisConnLimiterConfig{URL: srv.URL(), NodeName: node, Max: 2, Lease: 600 * time.Millisecond}
	}
	a := startLimiter(t, cfg("a"))
	b := startLimiter(t, cfg("b"))
	u := chattest.UserName()
	chattest.MustAcquire(t, a, u, "a0")
	chattest.MustAcquire(t, a, u, "a1")
	if n, err := b.ReleaseNode(context.Background(), "a"); n != 2 || err != nil {
		t.Fatalf("ReleaseNode = %d, %v; want 2, nil", n, err)
	}
	start := time.Now()
	waitFor(t, 3*time.Second, "a's slots to be written back", func() bool {
		return a.Stats().Restored >= 2
	})
	t.Logf("slots written back %v after ReleaseNode", time.Since(start).Round(time.Millisecond))
	chattest.MustRefuse(t, b, u, "b0")
	chattest.MustRelease(t, a, u, "a0")
	chattest.MustAcquire(t, b, u, "b0")
}

// Leases: slots held by a live node stay; slots of a node that stopped
// refreshing expire after Lease, with nobody freeing them.
func TestRedisConnLimiterLeasesExpire(t *testing.T) {
	srv := testsvc.StartRedis(t)
	const lease = 300 * time.Millisecond
	cfg := func(node string) cluster.RedisConnLimiterConfig {
		return cluster.RedisConnLimiterConfig{URL: srv.URL(), NodeName: node, Max: 2, Lease: lease}
	}
	a := startLimiter(t, cfg("a"))
	b := startLimiter(t, cfg("b"))
	u := chattest.UserName()
	chattest.MustAcquire(t, a, u, "a0")
	chattest.MustAcquire(t, a, u, "a1")
	time.Sleep(4 * lease)
	chattest.MustRefuse(t, b, u, "b0") // refreshed meanwhile

	a.Close()
	stopped := time.Now()
	var freed time.Duration
	waitFor(t, 5*time.Second, "a's slots to expire", func() bool {
		err := b.Acquire(context.Background(), u, "b0")
		if err == nil {
			freed = time.Since(stopped)
			return true
		}
		if !errors.Is(err, chat.ErrTooManyConnections) {
			t.Fatalf("Acquire: %v", err)
		}
		return false
	})
	t.Logf("slots of a stopped node freed %v after it stopped (lease %v)", freed.Round(time.Millisecond), lease)
	if freed > lease+lease/3+500*time.Millisecond {
		t.Errorf("slots freed after %v, want at most about the lease %v", freed, lease)
	}
	chattest.MustAcquire(t, b, u, "b1")
	chattest.MustRefuse(t, b, u, "b2")
	// The dead node's bookkeeping goes too.
	client := redisClient(t, srv)
	waitFor(t, 5*time.Second, "a's node key to expire", func() bool {
		n, err := client.Exists(context.Background(), "chatd:conns-node:a").Result()
		return err == nil && n == 0
	})
}

// A Redis crash: Acquire fails with an error that is not
// ErrTooManyConnections, nothing panics, and when Redis is back (empty)
// the held slots are written back and the limiter works again.
func TestRedisConnLimiterSurvivesRedisRestart(t *testing.T) {
	srv := testsvc.StartRedis(t)
	cfg := func(node string) cluster.RedisConnLimiterConfig {
		return cluster.RedisConnLimiterConfig{URL: srv.URL(), NodeName: node, Max: 2, Lease: 600 * time.Millisecond}
	}
	a := startLimiter(t, cfg("a"))
	b := startLimiter(t, cfg("b"))
	u := chattest.UserName()
	chattest.MustAcquire(t, a, u, "a0")
	chattest.MustAcquire(t, a, u, "a1")

	srv.Stop(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	start := time.Now()
	err := a.Acquire(ctx, chattest.UserName(), "x")
	if err == nil || errors.Is(err, chat.ErrTooManyConnections) {
		t.Fatalf("Acquire while Redis is down = %v, want a Redis error", err)
	}
	t.Logf("Acquire while Redis is down failed after %v: %v", time.Since(start).Round(time.Millisecond), err)
	if err := a.Release(ctx, u, "a1"); err == nil {
		t.Fatal("Release while Redis is down: no error")
	}
	if _, err := b.ReleaseNode(ctx, "a"); err == nil {
		t.Fatal("ReleaseNode while Redis is down: no error")
	}
	cancel()
	time.Sleep(time.Second) // refresh rounds fail meanwhile

	srv.Start(t)
	restarted := time.Now()
	// a0 comes back with a's refresh; a1, released during the outage, not.
	waitFor(t, 5*time.Second, "a's held slot to be written back", func() bool {
		return a.Stats().Restored >= 1
	})
	t.Logf("held slot written back %v after Redis restarted", time.Since(restarted).Round(time.Millisecond))
	chattest.MustAcquire(t, b, u, "b0")
	chattest.MustRefuse(t, b, u, "b1")
	chattest.MustAcquire(t, a, chattest.UserName(), "y")
	st := a.Stats()
	t.Logf("stats: %+v", st)
	if st.Held != 2 || st.Errors < 2 {
		t.Errorf("stats after the outage: %+v", st)
	}
}

// An Acquire whose reply is lost (here: it times out against a frozen
// Redis, which runs it when thawed) leaves no slot behind: the limiter
// frees it at its next refresh round, well before the lease would.
func TestRedisConnLimiterFreesOrphanedAcquire(t *testing.T) {
	srv := testsvc.StartRedis(t)
	const lease = 3 * time.Second
	cfg := func(node string) cluster.RedisConnLimiterConfig {
		return cluster.RedisConnLimiterConfig{URL: srv.URL(), NodeName: node, Max: 1, Lease: lease}
	}
	a := startLimiter(t, cfg("a"))
	b := startLimiter(t, cfg("b"))
	ctx := context.Background()
	// Warm up: the script is cached in Redis, the connection is open.
	chattest.MustAcquire(t, a, chattest.UserName(), "warm")
	u := chattest.UserName()

	srv.Freeze(t)
	actx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	err := a.Acquire(actx, u, "a0")
	cancel()
	srv.Thaw(t)
	if err == nil || errors.Is(err, chat.ErrTooManyConnections) {
		t.Fatalf("Acquire against a frozen Redis = %v, want a timeout", err)
	}
	thawed := time.Now()
	// Redis runs the Acquire when thawed, and a's next refresh round frees
	// the slot (Released counts slots that were there).
	waitFor(t, 5*time.Second, "the orphaned slot to be freed", func() bool {
		return a.Stats().Released == 1
	})
	took := time.Since(thawed)
	t.Logf("orphaned slot freed %v after Redis thawed (lease %v); a's stats %+v", took.Round(time.Millisecond), lease, a.Stats())
	if took > lease-500*time.Millisecond {
		t.Errorf("orphaned slot freed after %v: by its lease, not by the limiter", took)
	}
	chattest.MustAcquire(t, b, u, "b0")
	chattest.MustRefuse(t, b, u, "b1")
	if st := a.Stats(); st.Errors != 1 || st.Held != 1 {
		t.Errorf("a's stats: %+v, want 1 error, 1 slot held (the warm-up's)", st)
	}
}

// Close stops the refresh goroutine, even while Redis is down.
func TestRedisConnLimiterCloseStopsGoroutines(t *testing.T) {
	srv := testsvc.StartRedis(t)
	before := runtime.NumGoroutine()
	for _, mode := range []string{"up", "stopped", "frozen"} {
		if mode == "frozen" {
			// The first rounds (at Run) hang: Close must end them, not
			// wait for their timeout (a third of a 30 s lease or TTL).
			srv.Freeze(t)
		}
		var ls []*cluster.RedisConnLimiter
		for i := range 3 {
			l, err := cluster.NewRedisConnLimiter(cluster.RedisConnLimiterConfig{
				URL: srv.URL(), NodeName: fmt.Sprint(i), Max: 2, Logger: testsvc.Logger(t),
			})
			if err != nil {
				t.Fatal(err)
			}
			if err := l.Run(); err != nil {
				t.Fatal(err)
			}
			if mode != "frozen" {
				chattest.MustAcquire(t, l, "u"+fmt.Sprint(i), "c")
			}
			ls = append(ls, l)
		}
		if mode == "stopped" {
			srv.Stop(t)
		}
		time.Sleep(300 * time.Millisecond) // rounds run (or hang) meanwhile
		start := time.Now()
		for _, l := range ls {
			if err := l.Close(); err != nil {
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

// waitFor polls cond every 10 ms until it holds, failing t after timeout.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// BenchmarkRedisAcquireRelease measures connection admission through the
// cluster-wide limit: each op is one Acquire (the limit check) and one
// Release, from 8 goroutines per core spread over the nodes, for 1,000
// users with a limit of 5. connects/s counts Acquire+Release pairs.
func BenchmarkRedisAcquireRelease(b *testing.B) {
	srv := testsvc.StartRedis(b)
	for _, nodes := range []int{1, 3} {
		b.Run(fmt.Sprintf("nodes=%d", nodes), func(b *testing.B) {
			ls := make([]*cluster.RedisConnLimiter, nodes)
			for i := range ls {
				ls[i] = startLimiter(b, cluster.RedisConnLimiterConfig{
					URL: srv.URL(), NodeName: fmt.Sprintf("bench%d", i), Max: 5, Logger: testsvc.Logger(b),
				})
			}
			prefix := chattest.UserName()
			var next atomic.Int64
			b.SetParallelism(8)
			b.ResetTimer()
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				g := next.Add(1)
				l := ls[int(g)%nodes]
				ctx := context.Background()
				for i := 0; pb.Next(); i++ {
					user := fmt.Sprintf("%s-%d", prefix, (int(g)*7919+i)%1000)
					conn := fmt.Sprintf("g%d-%d", g, i)
					if err := l.Acquire(ctx, user, conn); err != nil && !errors.Is(err, chat.ErrTooManyConnections) {
						b.Error(err)
						return
					}
					if err := l.Release(ctx, user, conn); err != nil {
						b.Error(err)
						return
					}
				}
			})
			elapsed := time.Since(start)
			b.StopTimer()
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "connects/s")
		})
	}
}
