package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"math/bits"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// result is what a run measured.
type result struct {
	Scenario string `json:"scenario"`
	Targets  string `json:"targets"`

	Connections     int     `json:"connections"`
	ConnectSeconds  float64 `json:"connect_seconds"`
	ConnectsPerSec  float64 `json:"connects_joins_per_second"`
	ConnectP50Ms    float64 `json:"connect_join_p50_ms"`
	ConnectP99Ms    float64 `json:"connect_join_p99_ms"`
	ServerRSSBefore int64   `json:"server_rss_before_bytes,omitempty"`
	ServerRSSAfter  int64   `json:"server_rss_after_bytes,omitempty"`
	RSSPerConn      float64 `json:"server_rss_per_connection_bytes,omitempty"`

	Rooms           int     `json:"rooms,omitempty"`
	Members         int     `json:"members_per_room,omitempty"`
	Sent            int64   `json:"messages_sent,omitempty"`
	Acked           int64   `json:"messages_acked,omitempty"`
	Refused         int64   `json:"messages_refused,omitempty"`
	PublishSeconds  float64 `json:"publish_seconds,omitempty"`
	Delivered       int64   `json:"deliveries,omitempty"`
	Expected        int64   `json:"deliveries_expected,omitempty"`
	Lost            int64   `json:"deliveries_lost,omitempty"`
	DeliveredPerSec float64 `json:"deliveries_per_second,omitempty"`
	LatencyP50Ms    float64 `json:"latency_p50_ms,omitempty"`
	LatencyP90Ms    float64 `json:"latency_p90_ms,omitempty"`
	LatencyP99Ms    float64 `json:"latency_p99_ms,omitempty"`
	LatencyMaxMs    float64 `json:"latency_max_ms,omitempty"`
	ServerCPUSec    float64 `json:"server_cpu_seconds,omitempty"`
	CPUPer1000Ms    float64 `json:"server_cpu_ms_per_1000_deliveries,omitempty"`
	AckedPerSec     float64 `json:"messages_acked_per_second,omitempty"`
	RedisCPUSec     float64 `json:"redis_cpu_seconds,omitempty"`
	RedisCPUPerMsg  float64 `json:"redis_cpu_us_per_acked_message,omitempty"`
	LoadCPUSec      float64 `json:"load_tool_cpu_seconds,omitempty"`
	Dropped         int64   `json:"connections_dropped"`
	Error           string  `json:"error,omitempty"`
}

func (r *result) summary(w io.Writer) {
	fmt.Fprintf(w, "scenario %s against %s\n", r.Scenario, r.Targets)
	fmt.Fprintf(w, "  connections: %d in %.2fs (%.0f connects+joins/s, p50 %.1f ms, p99 %.1f ms)\n",
		r.Connections, r.ConnectSeconds, r.ConnectsPerSec, r.ConnectP50Ms, r.ConnectP99Ms)
	if r.RSSPerConn > 0 {
		fmt.Fprintf(w, "  server RSS: %.1f MiB -> %.1f MiB, %.1f kB per joined connection\n",
			float64(r.ServerRSSBefore)/(1<<20), float64(r.ServerRSSAfter)/(1<<20), r.RSSPerConn/1000)
	}
	if r.Sent > 0 {
		fmt.Fprintf(w, "  messages: %d sent, %d acked (%.0f/s), %d refused in %.1fs\n", r.Sent, r.Acked, r.AckedPerSec, r.Refused, r.PublishSeconds)
		fmt.Fprintf(w, "  deliveries: %d of %d expected (%d lost), %.0f/s\n", r.Delivered, r.Expected, r.Lost, r.DeliveredPerSec)
		fmt.Fprintf(w, "  latency: p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, max %.2f ms\n", r.LatencyP50Ms, r.LatencyP90Ms, r.LatencyP99Ms, r.LatencyMaxMs)
	}
	if r.ServerCPUSec > 0 {
		fmt.Fprintf(w, "  server CPU: %.2fs, %.2f ms per 1,000 deliveries\n", r.ServerCPUSec, r.CPUPer1000Ms)
	}
	if r.RedisCPUSec > 0 {
		fmt.Fprintf(w, "  redis CPU: %.2fs, %.1f µs per acked message\n", r.RedisCPUSec, r.RedisCPUPerMsg)
	}
	if r.LoadCPUSec > 0 {
		fmt.Fprintf(w, "  load tool CPU: %.2fs over %.1fs of publishing\n", r.LoadCPUSec, r.PublishSeconds)
	}
	if r.Dropped > 0 {
		fmt.Fprintf(w, "  connections dropped during the run: %d\n", r.Dropped)
	}
	if r.Error != "" {
		fmt.Fprintf(w, "  error: %s\n", r.Error)
	}
}

func (l *loader) run(ctx context.Context) (*result, error) {
	var targets []string
	for _, u := range l.cfg.urls {
		targets = append(targets, u.Host)
	}
	res := &result{Scenario: l.cfg.scenario, Targets: strings.Join(targets, ",")}
	// Readers run until rctx ends, after the connections are closed.
	rctx, stopReaders := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		stopReaders()
		wg.Wait()
	}()
	var err error
	switch l.cfg.scenario {
	case "idle":
		err = l.idle(rctx, &wg, res)
	default:
		err = l.chat(rctx, &wg, res)
	}
	res.Dropped = l.dropped.Load()
	if err != nil {
		res.Error = err.Error()
	}
	return res, err
}

// idle opens connections, each joined to a room of -members, and measures
// the connect rate and the server's memory per joined connection.
func (l *loader) idle(ctx context.Context, wg *sync.WaitGroup, res *result) error {
	n := l.cfg.conns
	before := procRSS(l.cfg.firstPID())
	conns, took, hist, err := l.connectAll(ctx, wg, n, func(i int) (*url.URL, string, string) {
		return l.cfg.urls[i%len(l.cfg.urls)], "idle-" + strconv.Itoa(i), "idle-" + strconv.Itoa(i/l.cfg.members)
	})
	defer l.closeAll(conns)
	open := connected(conns)
	res.Connections = len(open)
	res.ConnectSeconds = took.Seconds()
	res.ConnectsPerSec = float64(len(open)) / took.Seconds()
	res.ConnectP50Ms, res.ConnectP99Ms = hist.quantileMs(0.5), hist.quantileMs(0.99)
	if err != nil {
		return err
	}
	// Hold, heartbeating, then read the server's memory.
	hold := min(l.cfg.duration, 50*time.Second)
	fmt.Fprintf(l.log, "chatload: %d connections open; holding %s\n", len(open), hold)
	l.heartbeat(ctx, open, hold)
	res.ServerRSSBefore, res.ServerRSSAfter = before, procRSS(l.cfg.firstPID())
	if before > 0 && res.ServerRSSAfter > 0 && len(open) > 0 {
		res.RSSPerConn = float64(res.ServerRSSAfter-before) / float64(len(open))
	}
	return nil
}

// heartbeat sends every connection a heartbeat now and then until d has
// passed.
func (l *loader) heartbeat(ctx context.Context, conns []*lconn, d time.Duration) {
	end := time.After(d)
	t := time.NewTicker(20 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-end:
			return
		case <-t.C:
			for _, c := range conns {
				c.write([]byte(`[null,"hb","phoenix","heartbeat",{}]`))
			}
		}
	}
}

// chat runs fanout, rooms and crossnode: rooms x members connections,
// publishers sending timestamped messages at the total -rate for
// -duration, every member measuring delivery latency.
func (l *loader) chat(ctx context.Context, wg *sync.WaitGroup, res *result) error {
	rooms, members := l.cfg.rooms, l.cfg.members
	if l.cfg.scenario == "fanout" {
		rooms = 1
	}
	n := rooms * members
	res.Rooms, res.Members = rooms, members
	publishers := l.cfg.publishers
	if l.cfg.scenario == "rooms" {
		publishers = n // every member publishes
	}
	publishers = min(publishers, n)
	conns, took, hist, err := l.connectAll(ctx, wg, n, func(i int) (*url.URL, string, string) {
		target := l.cfg.urls[i%len(l.cfg.urls)]
		if l.cfg.scenario == "crossnode" {
			target = l.cfg.urls[1]
			if i < publishers {
				target = l.cfg.urls[0]
			}
		}
		return target, "load-" + strconv.Itoa(i), "load-" + strconv.Itoa(i%rooms)
	})
	defer l.closeAll(conns)
	open := connected(conns)
	res.Connections = len(open)
	res.ConnectSeconds = took.Seconds()
	res.ConnectsPerSec = float64(len(open)) / took.Seconds()
	res.ConnectP50Ms, res.ConnectP99Ms = hist.quantileMs(0.5), hist.quantileMs(0.99)
	if err != nil {
		return err
	}
	roomSize := make(map[string]int64)
	for _, c := range open {
		roomSize[c.room]++
	}
	pad := strings.Repeat("x", max(0, l.cfg.body-32))
	cpu0, self0 := l.cfg.serverCPU(), procCPU(os.Getpid())
	redis0, err := l.redisCPU(ctx)
	if err != nil {
		return err
	}
	l.hist.reset()
	pubs := open[:publishers]
	perPub := l.cfg.rate / float64(len(pubs))
	interval := time.Duration(float64(time.Second) / perPub)
	pctx, stopPub := context.WithTimeout(ctx, l.cfg.duration)
	defer stopPub()
	start := time.Now()
	var pwg sync.WaitGroup
	var writeErrs atomic.Int64
	for i, c := range pubs {
		pwg.Add(1)
		go func() {
			defer pwg.Done()
			// Spread the publishers' ticks over one interval.
			select {
			case <-time.After(time.Duration(i) * interval / time.Duration(len(pubs))):
			case <-pctx.Done():
				return
			}
			t := time.NewTicker(interval)
			defer t.Stop()
			for {
				if err := l.push(ctx, c, pad); err != nil {
					writeErrs.Add(1)
					return
				}
				select {
				case <-t.C:
				case <-pctx.Done():
					return
				}
			}
		}()
	}
	pwg.Wait()
	res.PublishSeconds = time.Since(start).Seconds()
	// Let the last messages arrive: until every push is answered and every
	// acked message reached its room's members, or 10 s.
	expected := func() int64 {
		var e int64
		l.acksByRoom.Range(func(k, v any) bool {
			e += v.(*atomic.Int64).Load() * roomSize[k.(string)]
			return true
		})
		return e
	}
	deadline := time.Now().Add(10 * time.Second)
	settled := func() bool {
		return l.acked.Load()+l.refused.Load() >= l.sent.Load() && l.delivered.Load() >= expected()
	}
	for !settled() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	elapsed := time.Since(start)
	res.Sent, res.Acked, res.Refused = l.sent.Load(), l.acked.Load(), l.refused.Load()
	res.Delivered, res.Expected = l.delivered.Load(), expected()
	res.Lost = max(0, res.Expected-res.Delivered)
	res.DeliveredPerSec = float64(res.Delivered) / elapsed.Seconds()
	res.LatencyP50Ms, res.LatencyP90Ms = l.hist.quantileMs(0.5), l.hist.quantileMs(0.9)
	res.LatencyP99Ms, res.LatencyMaxMs = l.hist.quantileMs(0.99), l.hist.maxMs()
	if self1 := procCPU(os.Getpid()); self0 >= 0 && self1 >= 0 {
		res.LoadCPUSec = (self1 - self0).Seconds()
	}
	res.AckedPerSec = float64(res.Acked) / elapsed.Seconds()
	if redis0 >= 0 {
		redis1, err := l.redisCPU(ctx)
		if err != nil {
			return err
		}
		res.RedisCPUSec = (redis1 - redis0).Seconds()
		if res.Acked > 0 {
			res.RedisCPUPerMsg = res.RedisCPUSec * 1e6 / float64(res.Acked)
		}
	}
	if cpu0 >= 0 {
		if cpu1 := l.cfg.serverCPU(); cpu1 >= 0 {
			res.ServerCPUSec = (cpu1 - cpu0).Seconds()
			if res.Delivered > 0 {
				res.CPUPer1000Ms = res.ServerCPUSec * 1000 / (float64(res.Delivered) / 1000)
			}
		}
	}
	if n := writeErrs.Load(); n > 0 {
		return fmt.Errorf("%d publishers stopped on a write error", n)
	}
	return nil
}

// redisCPU returns the CPU time of -redis-addr, or -1 without one.
func (l *loader) redisCPU(ctx context.Context) (time.Duration, error) {
	if l.cfg.redisAddr == "" {
		return -1, nil
	}
	return redisCPU(ctx, l.cfg.redisAddr)
}

// firstPID is the first -server-pid, or 0.
func (c *config) firstPID() int {
	if len(c.serverPIDs) == 0 {
		return 0
	}
	return c.serverPIDs[0]
}

// serverCPU returns the CPU time of every -server-pid together, or -1 when
// any is unknown.
func (c *config) serverCPU() time.Duration {
	if len(c.serverPIDs) == 0 {
		return -1
	}
	var total time.Duration
	for _, pid := range c.serverPIDs {
		d := procCPU(pid)
		if d < 0 {
			return -1
		}
		total += d
	}
	return total
}

// procRSS returns the resident memory of pid, or 0 when unknown.
func procRSS(pid int) int64 {
	if pid <= 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) >= 1 {
				kb, _ := strconv.ParseInt(f[0], 10, 64)
				return kb * 1024
			}
		}
	}
	return 0
}

// procCPU returns the user+system CPU time of pid, or -1 when unknown.
func procCPU(pid int) time.Duration {
	if pid <= 0 {
		return -1
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return -1
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return -1
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return -1
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	const ticks = 100 // USER_HZ on Linux
	return time.Duration(ut+st) * time.Second / ticks
}

// histogram counts durations in logarithmic buckets (about 4% wide), from
// 1 µs to about 70 s. It is safe for concurrent use.
type histogram struct {
	buckets [histBuckets]atomic.Int64
	maxNs   atomic.Int64
}

const (
	histPerOctave = 16                 // add takes the 4 bits after the leading one
	histBuckets   = 27 * histPerOctave // 2^10 ns .. 2^36 ns
)

func (h *histogram) add(d time.Duration) {
	ns := max(int64(d), 1024)
	// Octaves from 2^10 ns, each cut into histPerOctave equal steps.
	oct := bits.Len64(uint64(ns)) - 1
	step := int(uint64(ns)>>(oct-4)) & (histPerOctave - 1)
	i := min((oct-10)*histPerOctave+step, histBuckets-1)
	h.buckets[i].Add(1)
	for {
		m := h.maxNs.Load()
		if ns <= m || h.maxNs.CompareAndSwap(m, ns) {
			break
		}
	}
}

func (h *histogram) reset() {
	for i := range h.buckets {
		h.buckets[i].Store(0)
	}
	h.maxNs.Store(0)
}

// quantileMs returns the q-quantile in milliseconds (the bucket's upper
// bound), 0 when empty.
func (h *histogram) quantileMs(q float64) float64 {
	var total int64
	for i := range h.buckets {
		total += h.buckets[i].Load()
	}
	if total == 0 {
		return 0
	}
	want := int64(math.Ceil(q * float64(total)))
	var seen int64
	for i := range h.buckets {
		seen += h.buckets[i].Load()
		if seen >= want {
			oct, step := 10+i/histPerOctave, i%histPerOctave
			ns := math.Exp2(float64(oct)) * (1 + float64(step+1)/histPerOctave)
			return min(ns, float64(h.maxNs.Load())) / 1e6
		}
	}
	return h.maxMs()
}

func (h *histogram) maxMs() float64 { return float64(h.maxNs.Load()) / 1e6 }
