package e2e

// Cost of the cluster-wide connection limit and of presence fan-out, on a
// cluster of three chatd nodes relaying through one Redis. Run them
// without -race for meaningful figures, with a fixed count:
//
//	go test -run '^$' -bench ConnectRate -benchtime 500x ./e2e/
//	go test -run '^$' -bench PresenceFanout -benchtime 1x ./e2e/
//
// Server CPU is read from /proc/<pid>/stat (clock ticks of 10 ms) for the
// chatd processes, and from INFO cpu for Redis.

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/redis/go-redis/v9"

	"github.com/chatd/chatd/internal/testsvc"
)

// prBenchWorkers is how many handshakes are in flight at once.
const prBenchWorkers = 50

// prClockTick is the unit of /proc/<pid>/stat's utime and stime
// (sysconf(_SC_CLK_TCK), 100 on Linux).
const prClockTick = 10 * time.Millisecond

// prProcCPU returns the user+system CPU time process pid has used.
func prProcCPU(pid int) (time.Duration, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces; fields after it are
	// plain. utime and stime are fields 14 and 15.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: utime %q stime %q", pid, f[11], f[12])
	}
	return time.Duration(ut+st) * prClockTick, nil
}

// prCPU samples the CPU time of a cluster's chatd processes and of its
// Redis server.
type prCPU struct {
	nodes []*clNode
	rdb   *redis.Client
}

func prNewCPU(tb testing.TB, nodes []*clNode, r *testsvc.Redis) *prCPU {
	opt, err := redis.ParseURL(r.URL())
	if err != nil {
		tb.Fatal(err)
	}
	c := &prCPU{nodes: nodes, rdb: redis.NewClient(opt)}
	tb.Cleanup(func() { c.rdb.Close() })
	return c
}

// sample returns the chatd processes' CPU time (summed) and Redis's.
func (c *prCPU) sample(tb testing.TB) (chatd, redisCPU time.Duration) {
	for _, n := range c.nodes {
		d, err := prProcCPU(n.Pid())
		if err != nil {
			tb.Fatal(err)
		}
		chatd += d
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	info, err := c.rdb.Info(ctx, "cpu").Result()
	if err != nil {
		tb.Fatal(err)
	}
	for line := range strings.Lines(info) {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if ok && (k == "used_cpu_sys" || k == "used_cpu_user") {
			secs, _ := strconv.ParseFloat(v, 64)
			redisCPU += time.Duration(secs * float64(time.Second))
		}
	}
	return chatd, redisCPU
}

// prStopCluster stops nodes with SIGTERM and waits for them, so that an
// idle cluster does not share the CPU with the next measurement.
func prStopCluster(tb testing.TB, nodes []*clNode) {
	for _, n := range nodes {
		if err := n.Signal(syscall.SIGTERM); err != nil {
			tb.Fatal(err)
		}
	}
	for _, n := range nodes {
		if err := n.WaitTimeout(20 * time.Second); err != nil {
			tb.Errorf("%s after SIGTERM: %v", n.name, err)
		}
	}
}

func prPercentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, int(p*float64(len(s))))]
}

func prMs(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// BenchmarkConnectRate measures WebSocket handshakes accepted per second
// on a cluster of three nodes with Redis, prBenchWorkers at a time, each
// connect on the next node and each user making two (under the limit):
//
//   - limit-on: CHAT_MAX_CONNS_PER_USER=5, so every handshake runs the
//     limiter's Lua script on Redis before the upgrade;
//   - limit-off: CHAT_MAX_CONNS_PER_USER=0, no Redis call on connect.
//
// Connections stay open until the run ends. Metrics: conns/s, the
// handshake's p50-ms and p99-ms, and the servers' CPU per connect
// (chatd-cpu-us/conn over the three processes, redis-cpu-us/conn).
func BenchmarkConnectRate(b *testing.B) {
	for _, c := range []struct{ name, max string }{{"limit-on", "5"}, {"limit-off", "0"}} {
		redis := testsvc.StartRedis(b)
		nodes := clStartCluster(b, redis, 3, map[string]string{"CHAT_MAX_CONNS_PER_USER": c.max, "CHAT_LOG_LEVEL": "warn"})
		cpu := prNewCPU(b, nodes, redis)
		runs := 0
		b.Run(c.name, func(b *testing.B) {
			runs++
			prBenchConnect(b, nodes, cpu, fmt.Sprintf("cr-%s-%d", c.name, runs))
		})
		prStopCluster(b, nodes)
	}
}

func prBenchConnect(b *testing.B, nodes []*clNode, cpu *prCPU, prefix string) {
	users := make([]string, b.N)
	for i := range users {
		users[i] = fmt.Sprintf("%s-%d", prefix, i/2)
		if _, err := psToken(users[i]); err != nil {
			b.Fatal(err)
		}
	}
	conns := make([]*websocket.Conn, b.N)
	lat := make([]time.Duration, b.N)
	var next, refused, failed atomic.Int64
	var firstErr atomic.Value
	chatd0, redis0 := cpu.sample(b)
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for range prBenchWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= b.N {
					return
				}
				t0 := time.Now()
				r := prConnect(nodes[i%len(nodes)].Chatd, users[i], nil)
				lat[i] = time.Since(t0)
				switch {
				case r.conn != nil:
					conns[i] = r.conn
				case r.status == 429:
					refused.Add(1)
				default:
					failed.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Sprintf("status %d err %v body %s", r.status, r.err, r.body))
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	chatd1, redis1 := cpu.sample(b)
	accepted := b.N - int(refused.Load()+failed.Load())
	b.ReportMetric(float64(accepted)/elapsed.Seconds(), "conns/s")
	b.ReportMetric(prMs(prPercentile(lat, 0.5)), "p50-ms")
	b.ReportMetric(prMs(prPercentile(lat, 0.99)), "p99-ms")
	b.ReportMetric(float64((chatd1-chatd0).Microseconds())/float64(b.N), "chatd-cpu-us/conn")
	b.ReportMetric(float64((redis1-redis0).Microseconds())/float64(b.N), "redis-cpu-us/conn")
	if refused.Load()+failed.Load() > 0 {
		b.Errorf("%d of %d connects refused with 429, %d failed otherwise (e.g. %v); every user made 2, under the limit",
			refused.Load(), b.N, failed.Load(), firstErr.Load())
	}
	var cw sync.WaitGroup
	sem := make(chan struct{}, prBenchWorkers)
	for _, c := range conns {
		if c == nil {
			continue
		}
		cw.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; cw.Done() }()
			prCloseConn(c)
		}()
	}
	cw.Wait()
}

// prSink is a room member that reads and counts every frame without
// decoding it: the load side of the fan-out benchmark.
type prSink struct {
	conn     *websocket.Conn
	frames   atomic.Int64
	bytes    atomic.Int64
	joinedAt atomic.Int64 // UnixNano when the join's reply was read
	lastAt   atomic.Int64 // UnixNano of the last frame
	done     chan struct{}
	err      error // why the reader ended; read after done
}

func prDialSink(c *testsvc.Chatd, user string) (*prSink, error) {
	r := prConnect(c, user, nil)
	if r.conn == nil {
		return nil, fmt.Errorf("%s: status %d: %v %s", user, r.status, r.err, r.body)
	}
	r.conn.SetReadLimit(1 << 24)
	s := &prSink{conn: r.conn, done: make(chan struct{})}
	go s.read()
	return s, nil
}

var prJoinReply = []byte(`["1","1",`)

func (s *prSink) read() {
	defer close(s.done)
	for {
		_, data, err := s.conn.Read(context.Background())
		if err != nil {
			s.err = err
			return
		}
		now := time.Now().UnixNano()
		s.frames.Add(1)
		s.bytes.Add(int64(len(data)))
		s.lastAt.Store(now)
		if s.joinedAt.Load() == 0 && bytes.HasPrefix(data, prJoinReply) && bytes.Contains(data[:min(len(data), 200)], []byte(`"phx_reply"`)) {
			s.joinedAt.Store(now)
		}
	}
}

func (s *prSink) join(topic string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return s.conn.Write(ctx, websocket.MessageText, []byte(`["1","1",`+quote(topic)+`,"phx_join",{}]`))
}

// ended reports whether the reader has ended.
func (s *prSink) ended() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// prFanoutMembers is how many members join the room at once.
const prFanoutMembers = 1000

// BenchmarkPresenceFanout measures presence fan-out on a cluster of three
// nodes: a watcher on node1 has joined a room; then prFanoutMembers
// members, connected beforehand and spread over the three nodes, all join
// it at once. One op is one such wave, in a fresh room. Metrics:
//
//   - converge-ms: from the wave's start until the watcher's presence view
//     (presence_state, then presence_diff applied as the phoenix client
//     does) lists every member;
//   - diff-frames, diff-KB: the presence_diff frames the watcher read;
//   - join-p50-ms, join-p99-ms: each member's join reply;
//   - fanout-done-ms: until the last frame any member read (after the
//     wave settles: no frame for 500 ms);
//   - member-MB: bytes all members read (presence_state + diffs);
//   - chatd-cpu-s (three processes), redis-cpu-s: CPU over the wave.
//
// Any member disconnected (e.g. as a slow consumer) fails the run.
func BenchmarkPresenceFanout(b *testing.B) {
	redis := testsvc.StartRedis(b)
	nodes := clStartCluster(b, redis, 3, map[string]string{"CHAT_LOG_LEVEL": "warn"})
	cpu := prNewCPU(b, nodes, redis)
	runs := 0
	b.Run(fmt.Sprintf("members-%d", prFanoutMembers), func(b *testing.B) {
		runs++
		var sum struct {
			converge, fanout, joinP50, joinP99, chatd, redis time.Duration
			diffs, diffBytes, memberBytes                    int64
		}
		b.ResetTimer()
		for op := range b.N {
			b.StopTimer()
			r := prFanoutWave(b, nodes, cpu, fmt.Sprintf("fan-%d-%d", runs, op))
			sum.converge += r.converge
			sum.fanout += r.fanout
			sum.joinP50 += r.joinP50
			sum.joinP99 += r.joinP99
			sum.chatd += r.chatd
			sum.redis += r.redis
			sum.diffs += int64(r.diffs)
			sum.diffBytes += int64(r.diffBytes)
			sum.memberBytes += r.memberBytes
			b.StartTimer()
		}
		n := float64(b.N)
		b.ReportMetric(prMs(sum.converge)/n, "converge-ms")
		b.ReportMetric(float64(sum.diffs)/n, "diff-frames")
		b.ReportMetric(float64(sum.diffBytes)/1024/n, "diff-KB")
		b.ReportMetric(prMs(sum.joinP50)/n, "join-p50-ms")
		b.ReportMetric(prMs(sum.joinP99)/n, "join-p99-ms")
		b.ReportMetric(prMs(sum.fanout)/n, "fanout-done-ms")
		b.ReportMetric(float64(sum.memberBytes)/(1<<20)/n, "member-MB")
		b.ReportMetric(sum.chatd.Seconds()/n, "chatd-cpu-s")
		b.ReportMetric(sum.redis.Seconds()/n, "redis-cpu-s")
	})
}

type prWaveResult struct {
	converge, fanout, joinP50, joinP99, chatd, redis time.Duration
	diffs, diffBytes                                 int
	memberBytes                                      int64
}

// prFanoutWave runs one wave (see BenchmarkPresenceFanout) in room and
// closes its connections.
func prFanoutWave(b *testing.B, nodes []*clNode, cpu *prCPU, room string) prWaveResult {
	topic := "room:" + room
	watcher, err := psTryDial(nodes[0].Chatd, room+"-watcher")
	if err != nil {
		b.Fatal(err)
	}
	defer watcher.close()
	view := prWatch(watcher, topic)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	jr, err := watcher.call(ctx, topic, "phx_join", struct{}{})
	cancel()
	if err != nil || jr.Status != "ok" {
		b.Fatalf("watcher join: %s %v", jr.Raw, err)
	}

	sinks := make([]*prSink, prFanoutMembers)
	var dialErr atomic.Value
	var next atomic.Int64
	var wg sync.WaitGroup
	for range prBenchWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(sinks) {
					return
				}
				s, err := prDialSink(nodes[i%len(nodes)].Chatd, fmt.Sprintf("%s-m%d", room, i))
				if err != nil {
					dialErr.CompareAndSwap(nil, err)
					continue
				}
				sinks[i] = s
			}
		}()
	}
	wg.Wait()
	defer func() {
		sem := make(chan struct{}, prBenchWorkers)
		var cw sync.WaitGroup
		for _, s := range sinks {
			if s == nil {
				continue
			}
			cw.Add(1)
			sem <- struct{}{}
			go func() {
				defer func() { <-sem; cw.Done() }()
				prCloseConn(s.conn)
				<-s.done
			}()
		}
		cw.Wait()
	}()
	if err := dialErr.Load(); err != nil {
		b.Fatalf("connecting the members: %v", err)
	}
	// The watcher's own presence_state first.
	for deadline := time.Now().Add(10 * time.Second); !view.synced; time.Sleep(5 * time.Millisecond) {
		view.update()
		if time.Now().After(deadline) {
			b.Fatalf("no presence_state for the watcher: %v", view)
		}
	}
	diffs0, diffBytes0 := view.diffs, view.diffBytes

	chatd0, redis0 := cpu.sample(b)
	b.StartTimer()
	start := time.Now()
	gate := make(chan struct{})
	var joinErr atomic.Value
	for _, s := range sinks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-gate
			if err := s.join(topic); err != nil {
				joinErr.CompareAndSwap(nil, err)
			}
		}()
	}
	close(gate)
	wg.Wait()
	if err := joinErr.Load(); err != nil {
		b.Fatalf("join frame not sent: %v", err)
	}
	want := prFanoutMembers + 1
	var converge time.Duration
	for deadline := start.Add(5 * time.Minute); ; time.Sleep(5 * time.Millisecond) {
		view.update()
		if len(view.state) == want {
			converge = time.Since(start)
			break
		}
		if time.Now().After(deadline) || watcher.ended() != nil {
			b.Fatalf("the watcher's view lists %d of %d users after %s (connection: %v; %d diffs; problems %v)",
				len(view.state), want, time.Since(start).Round(time.Millisecond), watcher.ended(), view.diffs, view.problems)
		}
	}
	// Settle: every member joined, and no frame for 500 ms.
	for deadline := start.Add(5 * time.Minute); ; time.Sleep(50 * time.Millisecond) {
		joined, last := 0, int64(0)
		for _, s := range sinks {
			if s.joinedAt.Load() != 0 {
				joined++
			}
			last = max(last, s.lastAt.Load())
		}
		if joined == len(sinks) && time.Since(time.Unix(0, last)) > 500*time.Millisecond {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d members have their join reply 5 minutes after the wave", joined, len(sinks))
		}
	}
	b.StopTimer()
	chatd1, redis1 := cpu.sample(b)
	view.update()

	r := prWaveResult{converge: converge, chatd: chatd1 - chatd0, redis: redis1 - redis0,
		diffs: view.diffs - diffs0, diffBytes: view.diffBytes - diffBytes0}
	var joins []time.Duration
	var last int64
	ended := 0
	var frames int64
	for _, s := range sinks {
		joins = append(joins, time.Unix(0, s.joinedAt.Load()).Sub(start))
		last = max(last, s.lastAt.Load())
		r.memberBytes += s.bytes.Load()
		frames += s.frames.Load()
		if s.ended() {
			ended++
		}
	}
	r.joinP50, r.joinP99 = prPercentile(joins, 0.5), prPercentile(joins, 0.99)
	r.fanout = time.Unix(0, last).Sub(start)
	if ended > 0 {
		first := sinks[slices.IndexFunc(sinks, (*prSink).ended)]
		b.Errorf("%d of %d members were disconnected during the wave (e.g. %v)", ended, len(sinks), first.err)
	}
	for _, p := range view.problems {
		b.Errorf("watcher: %s", p)
	}
	b.Logf("%s: %d members joined at once over 3 nodes: watcher's view complete after %s (%d presence_diff frames, %d KB); joins p50 %s p99 %s; members read %d frames, %.1f MB in all, the last %s after the start; CPU: chatd %s (3 processes), redis %s",
		room, prFanoutMembers, converge.Round(time.Millisecond), r.diffs, r.diffBytes/1024, r.joinP50.Round(time.Millisecond), r.joinP99.Round(time.Millisecond),
		frames, float64(r.memberBytes)/(1<<20), r.fanout.Round(time.Millisecond), r.chatd, r.redis.Round(time.Millisecond))
	return r
}
