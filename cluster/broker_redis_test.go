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

	"github.com/redis/go-redis/v9"

	"github.com/chatd/chatd/chat"
	"github.com/chatd/chatd/chat/chattest"
	"github.com/chatd/chatd/cluster"
	"github.com/chatd/chatd/internal/testsvc"
)

// running fails tb on err, runs c, and closes it when tb ends.
func running[C interface {
	Run() error
	Close() error
}](tb testing.TB, c C, err error) C {
	tb.Helper()
	if err != nil {
		tb.Fatal(err)
	}
	if err := c.Run(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := c.Close(); err != nil {
			tb.Errorf("Close: %v", err)
		}
	})
	return c
}

// closing fails tb on err, and closes c when tb ends.
func closing[C interface{ Close() error }](tb testing.TB, c C, err error) C {
	tb.Helper()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := c.Close(); err != nil {
			tb.Errorf("Close: %v", err)
		}
	})
	return c
}

// startBroker makes and runs a RedisBroker delivering to h, closed when
// tb ends.
func startBroker(tb testing.TB, cfg cluster.RedisBrokerConfig, h chat.BrokerHandler) *cluster.RedisBroker {
	tb.Helper()
	return startBrokerEvents(tb, cfg, h, nil)
}

// startBrokerEvents is startBroker reporting the relay's events to ev.
func startBrokerEvents(tb testing.TB, cfg cluster.RedisBrokerConfig, h chat.BrokerHandler, ev chat.RelayEvents) *cluster.RedisBroker {
	tb.Helper()
	if cfg.Logger == nil {
		cfg.Logger = testsvc.Logger(tb)
	}
	b, err := cluster.NewRedisBroker(cfg)
	closing(tb, b, err)
	if err := b.Run(h, ev); err != nil {
		tb.Fatal(err)
	}
	return b
}

// resyncCounter counts the relay's Resync calls.
type resyncCounter struct{ n *atomic.Int64 }

func (r resyncCounter) Resync(func(string) bool) { r.n.Add(1) }

func (resyncCounter) RoomLastID(string) string { return "" }

// lastReceived reports as RoomLastID the greatest payload its handler
// received, as the hub does with message ids.
type lastReceived struct {
	mu  sync.Mutex
	max string
}

func (l *lastReceived) handle(_ string, data []byte) {
	l.mu.Lock()
	l.max = max(l.max, string(data))
	l.mu.Unlock()
}

func (*lastReceived) Resync(func(string) bool) {}

func (l *lastReceived) RoomLastID(string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.max
}

// redisNodes makes broker nodes that share srv, not running yet.
func redisNodes(srv *testsvc.Redis) chattest.NewBrokerNode {
	return func(t *testing.T) chat.Broker {
		b, err := cluster.NewRedisBroker(cluster.RedisBrokerConfig{URL: srv.URL(), Logger: testsvc.Logger(t)})
		return closing(t, b, err)
	}
}

func TestRedisBroker(t *testing.T) {
	srv := testsvc.StartRedis(t)
	chattest.RunBrokerTests(t, redisNodes(srv))
}

func TestRedisBrokerCluster(t *testing.T) {
	srv := testsvc.StartRedis(t)
	chattest.RunClusterBrokerTests(t, redisNodes(srv))
}

func TestRedisBrokerLog(t *testing.T) {
	srv := testsvc.StartRedis(t)
	chattest.RunLogTests(t, redisNodes(srv))
	chattest.RunClusterLogTests(t, redisNodes(srv))
}

// A client shared with the rest of the node (and its default retries) works
// too; the broker leaves it open.
func TestRedisBrokerSharedClient(t *testing.T) {
	srv := testsvc.StartRedis(t)
	client := redisClient(t, srv)
	rec := chattest.NewRecorder()
	b := startBroker(t, cluster.RedisBrokerConfig{Client: client, Prefix: "other"}, rec.Handle)
	ctx := context.Background()
	if err := b.Subscribe(ctx, "lobby"); err != nil {
		t.Fatal(err)
	}
	id := chattest.NextID("")
	if err := b.Publish(ctx, "lobby", id, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	rec.WaitData(t, "lobby", []byte("hi"))
	if got, err := client.XRevRangeN(ctx, "other:{lobby}:log", "+", "-", 1).Result(); err != nil || len(got) != 1 || got[0].Values["i"] != id {
		t.Fatalf("room log = %v, %v; want its last message to be %s", got, err, id)
	}
	// The same publication again (a go-redis retry after a lost reply) is
	// not published twice.
	if err := b.Publish(ctx, "lobby", id, []byte("hi")); err != nil {
		t.Fatalf("repeated publication: %v", err)
	}
	if err := b.Publish(ctx, "lobby", chattest.NextID(id), []byte("after")); err != nil {
		t.Fatal(err)
	}
	rec.WaitData(t, "lobby", []byte("after"))
	if n := len(rec.Room("lobby")); n != 2 {
		t.Fatalf("%d deliveries, want 2: %q", n, rec.Room("lobby"))
	}
	b.Close()
	if err := client.Ping(ctx).Err(); err != nil {
		t.Fatalf("shared client closed by the broker: %v", err)
	}
}

func TestRedisBrokerLifecycleErrors(t *testing.T) {
	srv := testsvc.StartRedis(t)
	h := func(string, []byte) {}
	if _, err := cluster.NewRedisBroker(cluster.RedisBrokerConfig{}); err == nil {
		t.Fatal("NewRedisBroker without Client or URL: no error")
	}
	if _, err := cluster.NewRedisBroker(cluster.RedisBrokerConfig{URL: "http://x"}); err == nil {
		t.Fatal("NewRedisBroker with a bad URL: no error")
	}
	b, err := cluster.NewRedisBroker(cluster.RedisBrokerConfig{URL: srv.URL()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := b.Subscribe(ctx, "lobby"); err == nil {
		t.Fatal("Subscribe before Run: no error")
	}
	if err := b.Run(nil, nil); err == nil {
		t.Fatal("Run without a handler: no error")
	}
	if err := b.Run(h, nil); err != nil {
		t.Fatal(err)
	}
	if err := b.Run(h, nil); err == nil {
		t.Fatal("second Run: no error")
	}
	if err := b.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := b.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
	}
	if err := b.Publish(ctx, "lobby", "", []byte("x")); !errors.Is(err, cluster.ErrBrokerClosed) {
		t.Fatalf("Publish after Close: %v", err)
	}
	if err := b.Subscribe(ctx, "lobby"); !errors.Is(err, cluster.ErrBrokerClosed) {
		t.Fatalf("Subscribe after Close: %v", err)
	}
	if err := b.Ping(ctx); !errors.Is(err, cluster.ErrBrokerClosed) {
		t.Fatalf("Ping after Close: %v", err)
	}
	if err := b.Unsubscribe(ctx, "lobby"); err != nil {
		t.Fatalf("Unsubscribe after Close: %v", err)
	}
}

// A Redis crash: the node keeps running and reports the outage; when Redis
// is back, every earlier subscription delivers again without the node's
// help.
func TestRedisBrokerSurvivesRedisRestart(t *testing.T) {
	srv := testsvc.StartRedis(t)
	const nodes = 3
	recs := make([]*chattest.Recorder, nodes)
	bs := make([]*cluster.RedisBroker, nodes)
	rooms := []string{"lobby", "ops", "random"}
	for i := range bs {
		recs[i] = chattest.NewRecorder()
		bs[i] = startBroker(t, cluster.RedisBrokerConfig{URL: srv.URL()}, recs[i].Handle)
		for _, room := range rooms {
			if err := bs[i].Subscribe(context.Background(), room); err != nil {
				t.Fatal(err)
			}
		}
	}
	publish := func(b *cluster.RedisBroker, room string, data []byte) error {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		return b.Publish(ctx, room, "", data)
	}
	for _, room := range rooms {
		if err := publish(bs[0], room, []byte("before")); err != nil {
			t.Fatal(err)
		}
	}
	for _, rec := range recs {
		for _, room := range rooms {
			rec.WaitData(t, room, []byte("before"))
		}
	}

	srv.Stop(t)
	start := time.Now()
	err := publish(bs[1], "lobby", []byte("during"))
	var ooe *chat.OutOfOrderError
	if err == nil || errors.As(err, &ooe) {
		t.Fatalf("Publish while Redis is down: err %v, want a relay error", err)
	}
	t.Logf("Publish while Redis is down failed after %v: %v", time.Since(start).Round(time.Millisecond), err)
	for i, b := range bs {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		if err := b.Ping(ctx); err == nil {
			t.Errorf("node %d: Ping while Redis is down: no error", i)
		}
		cancel()
	}
	// A new subscription fails instead of hanging.
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	start = time.Now()
	if err := bs[2].Subscribe(ctx, "newroom"); err == nil {
		t.Fatal("Subscribe while Redis is down: no error")
	} else {
		t.Logf("Subscribe while Redis is down failed after %v: %v", time.Since(start).Round(time.Millisecond), err)
	}
	cancel()
	// Let the reconnect loops spin for a while.
	time.Sleep(1500 * time.Millisecond)
	if st := bs[1].Stats(); st.PublishErrors == 0 {
		t.Errorf("stats after a failed publish: %+v", st)
	}

	srv.Start(t)
	restarted := time.Now()
	// Publish probes until every node has one in every room.
	deadline := time.Now().Add(15 * time.Second)
	for i := 0; ; i++ {
		probe := fmt.Appendf(nil, "probe %d", i)
		for _, room := range rooms {
			_ = publish(bs[i%nodes], room, probe)
		}
		all := true
		for _, rec := range recs {
			for _, room := range rooms {
				all = all && len(rec.Room(room)) > 1
			}
		}
		if all {
			break
		}
		if time.Now().After(deadline) {
			for n, rec := range recs {
				for _, room := range rooms {
					t.Logf("node %d room %s: %q", n, room, rec.Room(room))
				}
			}
			t.Fatal("relay did not resume within 15s of Redis coming back")
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("relay resumed on every node %v after Redis restarted", time.Since(restarted).Round(time.Millisecond))

	// Order checking works again, on a fresh Redis, and delivery is exactly once.
	id := chattest.NextID("")
	if err := publish(bs[0], "ops", []byte("x")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel = context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := bs[0].Publish(ctx, "lobby", id, []byte("final")); err != nil {
		t.Fatal(err)
	}
	for i, rec := range recs {
		rec.WaitData(t, "lobby", []byte("final"))
		n := 0
		for _, d := range rec.Room("lobby") {
			if string(d) == "final" {
				n++
			}
		}
		if n != 1 {
			t.Fatalf("node %d: final delivered %d times", i, n)
		}
	}
	for i, b := range bs {
		waitPing(t, b)
		st := b.Stats()
		if st.Reconnects == 0 || st.Rooms != len(rooms) {
			t.Errorf("node %d stats after the restart: %+v", i, st)
		}
		t.Logf("node %d stats: %+v", i, st)
	}
	// The subscription that failed during the outage left nothing behind.
	if err := bs[0].Publish(ctx, "newroom", "", []byte("nobody")); err != nil {
		t.Fatal(err)
	}
	if err := bs[0].Publish(ctx, "lobby", "", []byte("sentinel")); err != nil {
		t.Fatal(err)
	}
	recs[2].WaitData(t, "lobby", []byte("sentinel"))
	time.Sleep(100 * time.Millisecond)
	if recs[2].Has("newroom", []byte("nobody")) {
		t.Fatal("failed Subscribe still delivers")
	}
}

// A Redis whose process is stopped (SIGSTOP) without closing anything is
// busy, not gone: its kernel keeps the connections and buffers what is
// sent. Ping reports it, the pub/sub connection is kept (no reconnect, no
// Resync), and relay resumes when Redis runs again.
func TestRedisBrokerKeepsFrozenRedis(t *testing.T) {
	srv := testsvc.StartRedis(t)
	var resyncs atomic.Int64
	cfg := cluster.RedisBrokerConfig{URL: srv.URL(), PingInterval: 200 * time.Millisecond, OpTimeout: time.Second}
	rec0, rec1 := chattest.NewRecorder(), chattest.NewRecorder()
	b0 := startBrokerEvents(t, cfg, rec0.Handle, resyncCounter{&resyncs})
	b1 := startBrokerEvents(t, cfg, rec1.Handle, resyncCounter{&resyncs})
	ctx := context.Background()
	for _, b := range []*cluster.RedisBroker{b0, b1} {
		if err := b.Subscribe(ctx, "lobby"); err != nil {
			t.Fatal(err)
		}
	}
	srv.Freeze(t)
	t.Logf("frozen")
	thawed := false
	defer func() {
		if !thawed {
			srv.Thaw(t)
		}
	}()
	deadline := time.Now().Add(5 * time.Second)
	for {
		pctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		err := b0.Ping(pctx)
		cancel()
		if err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Ping still succeeds 5s into a frozen Redis")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Ten ping intervals of silence: a cut-off before.
	time.Sleep(2 * time.Second)
	srv.Thaw(t)
	t.Logf("thawed")
	thawed = true
	deadline = time.Now().Add(10 * time.Second)
	for i := 0; ; i++ {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		data := fmt.Appendf(nil, "probe %d", i)
		_ = b1.Publish(pctx, "lobby", "", data)
		cancel()
		if len(rec0.Room("lobby")) > 0 && len(rec1.Room("lobby")) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("relay did not resume within 10s of Redis answering again")
		}
		time.Sleep(50 * time.Millisecond)
	}
	waitPing(t, b0)
	for i, b := range []*cluster.RedisBroker{b0, b1} {
		if st := b.Stats(); st.Reconnects != 0 {
			t.Errorf("node %d: a frozen Redis was counted as a failure: %+v", i, st)
		}
	}
	if n := resyncs.Load(); n != 0 {
		t.Errorf("Resync called %d times for a frozen Redis", n)
	}
}

// TestRedisBrokerStallIsNotACutOff: with the default PingInterval (5 s),
// Redis stalls 20 s (DEBUG SLEEP 20: more than three intervals, with no
// disconnect). Nothing is lost on the live connection: no reconnect is
// counted, Resync is not called, and publications made during and
// after the stall arrive at both nodes. Then the pub/sub connections are
// killed (CLIENT KILL TYPE pubsub), a real cut-off: both nodes reconnect
// and call Resync, and relay works again.
func TestRedisBrokerStallIsNotACutOff(t *testing.T) {
	srv := testsvc.StartRedis(t)
	var resyncs [2]atomic.Int64
	recs := []*chattest.Recorder{chattest.NewRecorder(), chattest.NewRecorder()}
	var bs []*cluster.RedisBroker
	for i := range 2 {
		bs = append(bs, startBrokerEvents(t, cluster.RedisBrokerConfig{URL: srv.URL()}, recs[i].Handle,
			resyncCounter{&resyncs[i]}))
	}
	ctx := context.Background()
	for _, b := range bs {
		if err := b.Subscribe(ctx, "lobby"); err != nil {
			t.Fatal(err)
		}
	}
	publish := func(b *cluster.RedisBroker, data string, d time.Duration) {
		t.Helper()
		pctx, cancel := context.WithTimeout(ctx, d)
		defer cancel()
		if err := b.Publish(pctx, "lobby", "", []byte(data)); err != nil {
			t.Errorf("publish %q: %v", data, err)
		}
	}
	publish(bs[0], "before", 5*time.Second)

	admin := redis.NewClient(&redis.Options{Addr: srv.Addr(), ReadTimeout: time.Minute, MaxRetries: -1})
	t.Cleanup(func() { admin.Close() })
	slept := make(chan error, 1)
	start := time.Now()
	go func() { slept <- admin.Do(ctx, "DEBUG", "SLEEP", "20").Err() }()
	time.Sleep(time.Second) // the sleep has begun
	// Published during the stall (by a client that waits for the reply
	// beyond the broker's read timeout), on the channel of the room:
	// Redis runs it once it wakes.
	during := redis.NewClient(&redis.Options{Addr: srv.Addr(), ReadTimeout: time.Minute, MaxRetries: -1})
	t.Cleanup(func() { during.Close() })
	if err := during.Publish(ctx, "chatd:room:{lobby}", "during").Err(); err != nil {
		t.Fatalf("PUBLISH during the stall: %v", err)
	}
	if err := <-slept; err != nil {
		t.Fatalf("DEBUG SLEEP: %v", err)
	}
	t.Logf("Redis stalled %s", time.Since(start).Round(time.Millisecond))
	publish(bs[0], "after", 5*time.Second)
	for i, rec := range recs {
		for _, data := range []string{"before", "during", "after"} {
			rec.WaitData(t, "lobby", []byte(data))
		}
		if st := bs[i].Stats(); st.Reconnects != 0 {
			t.Errorf("node %d: the stall was counted as a failure: %+v", i, st)
		}
		if n := resyncs[i].Load(); n != 0 {
			t.Errorf("node %d: Resync called %d times for a stall", i, n)
		}
	}

	n, err := admin.Do(ctx, "CLIENT", "KILL", "TYPE", "pubsub").Int()
	if err != nil || n != 2 {
		t.Fatalf("CLIENT KILL TYPE pubsub: %d killed, %v; want 2", n, err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for i := range bs {
		for resyncs[i].Load() == 0 {
			if time.Now().After(deadline) {
				t.Fatalf("node %d: Resync not called within 15s of its pub/sub connection being killed: %+v", i, bs[i].Stats())
			}
			time.Sleep(20 * time.Millisecond)
		}
		if st := bs[i].Stats(); st.Reconnects != 1 {
			t.Errorf("node %d after the kill: %+v, want 1 reconnect", i, st)
		}
	}
	waitPing(t, bs[0])
	waitPing(t, bs[1])
	publish(bs[1], "after the kill", 5*time.Second)
	for _, rec := range recs {
		rec.WaitData(t, "lobby", []byte("after the kill"))
	}
}

// Close stops every goroutine the broker started, its own client's
// included, even while Redis is down.
func TestRedisBrokerCloseStopsGoroutines(t *testing.T) {
	srv := testsvc.StartRedis(t)
	before := runtime.NumGoroutine()
	for _, down := range []bool{false, true} {
		var bs []*cluster.RedisBroker
		for range 3 {
			b, err := cluster.NewRedisBroker(cluster.RedisBrokerConfig{URL: srv.URL(), Logger: testsvc.Logger(t)})
			if err != nil {
				t.Fatal(err)
			}
			if err := b.Run(func(string, []byte) {}, nil); err != nil {
				t.Fatal(err)
			}
			bs = append(bs, b)
			for i := range 5 {
				if err := b.Subscribe(context.Background(), fmt.Sprintf("room%d", i)); err != nil {
					t.Fatal(err)
				}
			}
			if err := b.Publish(context.Background(), "room0", "", []byte("x")); err != nil {
				t.Fatal(err)
			}
		}
		if down {
			srv.Stop(t)
			time.Sleep(300 * time.Millisecond)
		}
		start := time.Now()
		var wg sync.WaitGroup
		for _, b := range bs {
			wg.Go(func() {
				if err := b.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
			})
		}
		wg.Wait()
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("Close (Redis down: %v) took %v", down, d)
		}
		waitGoroutines(t, before)
	}
	srv.Start(t)
}

func waitGoroutines(t *testing.T, want int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		n := runtime.NumGoroutine()
		if n <= want {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("%d goroutines after Close, %d before:\n%s", n, want, buf)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func waitPing(t *testing.T, b *cluster.RedisBroker) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := b.Ping(ctx)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("Ping still failing: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// BenchmarkRedisPublish measures relay throughput through one Redis:
// 200-byte publications from 8 publishers per core spread over the nodes and
// 64 rooms, each delivered to every node. With ids, each is a chat message
// (order check, last id update and PUBLISH in the script, retried on
// OutOfOrderError); without, a frame such as a presence diff. msgs/s counts
// publications accepted and delivered everywhere, deliveries/s handler calls.
func BenchmarkRedisPublish(b *testing.B) {
	srv := testsvc.StartRedis(b)
	for _, bc := range []struct {
		nodes   int
		withIDs bool
	}{{1, true}, {3, true}, {1, false}} {
		nodes, withIDs := bc.nodes, bc.withIDs
		b.Run(fmt.Sprintf("nodes=%d/ids=%v", nodes, withIDs), func(b *testing.B) {
			var delivered atomic.Int64
			bs := make([]*cluster.RedisBroker, nodes)
			for i := range bs {
				bs[i] = startBroker(b, cluster.RedisBrokerConfig{URL: srv.URL(), Logger: testsvc.Logger(b)},
					func(string, []byte) { delivered.Add(1) })
			}
			const rooms = 64
			prefix := chattest.RoomName()
			for r := range rooms {
				for _, br := range bs {
					if err := br.Subscribe(context.Background(), fmt.Sprintf("%s-%d", prefix, r)); err != nil {
						b.Fatal(err)
					}
				}
			}
			payload := make([]byte, 200)
			for i := range payload {
				payload[i] = 'a' + byte(i%26)
			}
			var next atomic.Int64
			b.SetParallelism(8)
			b.ResetTimer()
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				g := next.Add(1)
				br := bs[int(g)%nodes]
				room := fmt.Sprintf("%s-%d", prefix, g%rooms)
				after := ""
				for pb.Next() {
					id, err := after, error(nil)
					if withIDs {
						id, err = chattest.PublishMessage(context.Background(), br, room, after, func(string) []byte { return payload })
					} else {
						err = br.Publish(context.Background(), room, "", payload)
					}
					if err != nil {
						b.Error(err)
						return
					}
					after = id
				}
			})
			want := int64(b.N * nodes)
			deadline := time.Now().Add(30 * time.Second)
			for delivered.Load() < want {
				if time.Now().After(deadline) {
					b.Fatalf("%d of %d deliveries after 30s", delivered.Load(), want)
				}
				time.Sleep(time.Millisecond)
			}
			elapsed := time.Since(start)
			b.StopTimer()
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
			b.ReportMetric(float64(want)/elapsed.Seconds(), "deliveries/s")
		})
	}
}

// redisClient is a client for srv as a node would share it (go-redis's
// default retries), closed when tb ends.
func redisClient(tb testing.TB, srv *testsvc.Redis) *redis.Client {
	tb.Helper()
	c := redis.NewClient(&redis.Options{Addr: srv.Addr(), ContextTimeoutEnabled: true})
	tb.Cleanup(func() { c.Close() })
	return c
}

// A publication resolved as not accepted is refused when it arrives late
// (it sat in a stalled Redis's input, say): the sender's error stays true.
func TestRedisBrokerResolveFencesLatePublish(t *testing.T) {
	srv := testsvc.StartRedis(t)
	rec := chattest.NewRecorder()
	b := startBroker(t, cluster.RedisBrokerConfig{URL: srv.URL()}, rec.Handle)
	ctx := context.Background()
	room := chattest.RoomName()
	if err := b.Subscribe(ctx, room); err != nil {
		t.Fatal(err)
	}
	ids := chattest.SortedIDs(2)
	if ok, err := b.Resolve(ctx, room, ids[0]); err != nil || ok {
		t.Fatalf("Resolve of an unpublished message = %v, %v; want false", ok, err)
	}
	if err := b.Publish(ctx, room, ids[0], []byte("late")); err == nil {
		t.Fatal("a fenced publication was accepted")
	}
	var ooe *chat.OutOfOrderError
	if err := b.Publish(ctx, room, ids[1], []byte("next")); err != nil {
		t.Fatalf("the next message: %v", err)
	} else if errors.As(err, &ooe) {
		t.Fatal(err)
	}
	rec.WaitData(t, room, []byte("next"))
	if got := rec.Room(room); len(got) != 1 {
		t.Fatalf("deliveries %q, want only the next message", got)
	}
	if ok, err := b.Resolve(ctx, room, ids[1]); err != nil || !ok {
		t.Fatalf("Resolve of an accepted message = %v, %v; want true", ok, err)
	}
	// The fence is no message: readers and takeovers do not see it.
	r, err := b.ReadLog(ctx, room, chat.LogQuery{Limit: 10})
	if err != nil || len(r.Entries) != 1 || r.Entries[0].ID != ids[1] {
		t.Fatalf("ReadLog after a fence = %+v, %v; want only %s", r, err, ids[1])
	}
	if r, err := b.ReadLog(ctx, room, chat.LogQuery{After: ids[0], Limit: 10}); err != nil || r.Found || len(r.Entries) != 1 {
		t.Fatalf("ReadLog after the fenced id = %+v, %v; want it not found, and the next message", r, err)
	}
	if ok, err := b.Resolve(ctx, room, ids[0]); err != nil || ok {
		t.Fatalf("Resolve of the fenced id again = %v, %v; want false", ok, err)
	}
	var taken []string
	if _, err := b.TakeOver(ctx, "chatd", func(_ string, es []chat.LogEntry) error {
		for _, e := range es {
			taken = append(taken, e.ID)
		}
		return nil
	}); err != nil || len(taken) != 1 || taken[0] != ids[1] {
		t.Fatalf("TakeOver after a fence = %v, %v; want only %s", taken, err, ids[1])
	}
}

// TakeOver finds what a node logged, in every room it published to, and
// nothing of other nodes'.
func TestRedisBrokerTakeOver(t *testing.T) {
	srv := testsvc.StartRedis(t)
	a := startBroker(t, cluster.RedisBrokerConfig{URL: srv.URL(), NodeName: "a"}, func(string, []byte) {})
	b := startBroker(t, cluster.RedisBrokerConfig{URL: srv.URL(), NodeName: "b"}, func(string, []byte) {})
	ctx := context.Background()
	want := map[string][]string{}
	after := ""
	for i := range 6 {
		room := fmt.Sprintf("r%d-%s", i%3, chattest.RoomName())
		if i >= 3 {
			room = fmt.Sprintf("r%d", i%3)
		}
		for _, node := range []*cluster.RedisBroker{a, b} {
			id, err := chattest.PublishMessage(ctx, node, room, after, func(id string) []byte { return []byte(id) })
			if err != nil {
				t.Fatal(err)
			}
			after = id
			if node == a {
				want[room] = append(want[room], id)
			}
		}
	}
	got := map[string][]string{}
	n, err := b.TakeOver(ctx, "a", func(room string, entries []chat.LogEntry) error {
		for _, e := range entries {
			if string(e.Data) != e.ID {
				t.Errorf("entry %s carries %q", e.ID, e.Data)
			}
			got[room] = append(got[room], e.ID)
		}
		return nil
	})
	if err != nil || n != 6 {
		t.Fatalf("TakeOver = %d, %v; want 6 messages", n, err)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("taken over %v, want %v", got, want)
	}
	if n, err := b.TakeOver(ctx, "nobody", func(string, []chat.LogEntry) error { return nil }); err != nil || n != 0 {
		t.Fatalf("TakeOver of an unknown node = %d, %v", n, err)
	}
}

// A room's log lost with Redis's data (FLUSHALL) between two nodes'
// messages: a message whose id node a chose before it received node b's
// later id is refused, naming that id, instead of starting the new log
// behind it. Node a's RoomLastID is what its handler received, as the
// hub's is.
func TestRedisBrokerLostLogKeepsOrder(t *testing.T) {
	srv := testsvc.StartRedis(t)
	ctx := context.Background()
	last := &lastReceived{}
	a := startBrokerEvents(t, cluster.RedisBrokerConfig{URL: srv.URL(), NodeName: "a"}, last.handle, last)
	b := startBroker(t, cluster.RedisBrokerConfig{URL: srv.URL(), NodeName: "b"}, func(string, []byte) {})
	room := chattest.RoomName()
	if err := a.Subscribe(ctx, room); err != nil {
		t.Fatal(err)
	}
	early := chattest.NextID("")    // chosen by a
	later := chattest.NextID(early) // chosen by b afterwards
	if err := b.Publish(ctx, room, later, []byte(later)); err != nil {
		t.Fatal(err)
	}
	admin := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer admin.Close()
	if err := admin.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	err := a.Publish(ctx, room, early, []byte(early))
	var ooe *chat.OutOfOrderError
	if !errors.As(err, &ooe) || ooe.Last != later {
		t.Fatalf("publish of %s into the lost log after %s was published = %v; want OutOfOrderError naming %s", early, later, err, later)
	}
	// The retry with an id after it starts the new log.
	next := chattest.NextID(later)
	if err := a.Publish(ctx, room, next, []byte(next)); err != nil {
		t.Fatal(err)
	}
	r, err := a.ReadLog(ctx, room, chat.LogQuery{Limit: 10})
	if err != nil || len(r.Entries) != 1 || r.Entries[0].ID != next {
		t.Fatalf("log after the loss = %+v, %v; want only %s", r, err, next)
	}
	if st := a.Stats(); st.EmptyLogs != 2 {
		t.Fatalf("empty logs = %d, want 2 (the refused id, then its retry)", st.EmptyLogs)
	}
}
