package e2e

// Benchmarks of chat latency and persistence through a real chatd process
// on a real PostgreSQL. Run them without -race for meaningful figures, with
// a fixed count (each op is paced, so time-based benchtime is slow):
//
//	go test -run '^$' -bench 'BroadcastLatencyDB|PersistThroughput' -benchtime 2000x ./e2e/

import (
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/chatd/chatd/internal/testsvc"
)

// psBenchStack is a chatd on its own database with a room's members
// connected, kept across the runs of one sub-benchmark (b.Run calls its
// function again for each b.N).
type psBenchStack struct {
	c     *testsvc.Chatd
	dbURL string
	pub   *psClient
	recv  []*psClient
	runs  int
}

const (
	psBenchTopic     = "room:bench"
	psBenchReceivers = 10
	// psBenchPeriod paces the publisher: 200 messages per second.
	psBenchPeriod = 5 * time.Millisecond
)

// BenchmarkBroadcastLatencyDB measures broadcast latency (push sent to
// broadcast read, at each of 10 members) while messages are persisted to
// PostgreSQL: "fast" with plain inserts, "slow50ms" with a trigger that
// makes every INSERT statement take 50 ms more. The publisher pushes at a
// steady 200 messages/s without waiting for replies. Broadcast happens
// before persistence, so both should show the same latency.
//
// Metrics: p50-ms, p99-ms and max-ms of the latency; persist-lag-ms, how
// long after the run's last push all its messages were in the table.
func BenchmarkBroadcastLatencyDB(b *testing.B) {
	pg := testsvc.StartPostgres(b)
	for _, bc := range []struct {
		name  string
		sleep float64 // seconds per INSERT statement; 0: none
	}{
		{"fast", 0},
		{"slow50ms", 0.05},
	} {
		// Set up once, on the parent benchmark: a sub-benchmark's cleanups
		// run after each of its runs, its parent's after the last.
		st := psBenchSetup(b, pg, bc.sleep)
		b.Run(bc.name, func(b *testing.B) { psBenchLatency(b, st) })
	}
}

func psBenchSetup(b *testing.B, pg *testsvc.Postgres, sleep float64) *psBenchStack {
	b.Helper()
	// The slow case uses pg's own database, where pg.Exec installs the
	// trigger; the fast one a database of its own.
	dbURL := pg.URL()
	if sleep == 0 {
		dbURL = pg.NewDatabase(b)
	}
	c := testsvc.StartChatd(b, map[string]string{
		"CHAT_JWT_SECRET":         testSecret,
		"CHAT_DATABASE_URL":       dbURL,
		"CHAT_USER_RATE":          "0",
		"CHAT_MAX_CONNS_PER_USER": "0",
		"CHAT_LOG_LEVEL":          "warn", // benchmark logs are always printed
	}, "serve")
	if sleep > 0 {
		psSlowInserts(b, pg, sleep)
	}
	st := &psBenchStack{c: c, dbURL: dbURL}
	st.pub = psDial(b, c, "bench-pub")
	st.pub.join(b, psBenchTopic, nil)
	for i := range psBenchReceivers {
		cl := psDial(b, c, fmt.Sprintf("bench-recv-%d", i))
		cl.join(b, psBenchTopic, nil)
		st.recv = append(st.recv, cl)
	}
	return st
}

func psBenchLatency(b *testing.B, st *psBenchStack) {
	st.runs++
	prefix := fmt.Sprintf("bench %d ", st.runs)
	before, err := psCount(st.dbURL)
	if err != nil {
		b.Fatal(err)
	}
	sent := make([]time.Time, b.N)
	replies := make([]psReply, b.N)
	var wg sync.WaitGroup
	tick := time.NewTicker(psBenchPeriod)
	defer tick.Stop()
	b.ResetTimer()
	for i := range b.N {
		<-tick.C
		at, ch, err := st.pub.pushAsync(psBenchTopic, prefix+strconv.Itoa(i))
		if err != nil {
			b.Fatalf("push %d: %v", i, err)
		}
		sent[i] = at
		wg.Add(1)
		go func() {
			defer wg.Done()
			replies[i] = psAwait(ch)
		}()
	}
	wg.Wait()
	lastAck := time.Now()
	b.StopTimer()
	for i, r := range replies {
		if r.Err != nil || r.Status != "ok" {
			b.Fatalf("push %d: %v %s", i, r.Err, r.Raw)
		}
	}

	// Latency at every receiver of every message of this run.
	lat := receiveLatencies(b, st.recv, psBenchTopic, prefix, b.N, sent)
	pct := func(p float64) float64 { return lat[min(len(lat)-1, int(float64(len(lat))*p))] }

	// Persistence lag: all of this run's messages in the table.
	var lag time.Duration
	deadline := time.Now().Add(60 * time.Second)
	for {
		n, err := psCount(st.dbURL)
		if err == nil && n >= before+b.N {
			lag = time.Since(lastAck)
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("messages table: %d rows (err %v), want %d", n, err, before+b.N)
		}
		time.Sleep(2 * time.Millisecond)
	}

	b.ReportMetric(0, "ns/op") // paced: time per op is the pace, not a cost
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	b.ReportMetric(lat[len(lat)-1], "max-ms")
	b.ReportMetric(float64(lag)/float64(time.Millisecond), "persist-lag-ms")
}

// BenchmarkPersistThroughput measures messages persisted per second through
// the process: 8 connections in 4 rooms push b.N messages in all, as fast
// as the server acknowledges them (8 in flight per connection), and the
// clock stops when the last one is in the table.
func BenchmarkPersistThroughput(b *testing.B) {
	pg := testsvc.StartPostgres(b)
	c := testsvc.StartChatd(b, map[string]string{
		"CHAT_JWT_SECRET":         testSecret,
		"CHAT_DATABASE_URL":       pg.URL(),
		"CHAT_USER_RATE":          "0",
		"CHAT_MAX_CONNS_PER_USER": "0",
		"CHAT_LOG_LEVEL":          "warn",
	}, "serve")
	const conns = 8
	clients := make([]*psClient, conns)
	for i := range clients {
		clients[i] = psDial(b, c, fmt.Sprintf("tput-%d", i))
		clients[i].join(b, fmt.Sprintf("room:tput-%d", i%4), nil)
	}
	runs := 0
	b.Run("pg", func(b *testing.B) {
		runs++
		before, err := psCount(pg.URL())
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		var wg sync.WaitGroup
		var failed sync.Map
		for i, cl := range clients {
			n := b.N / conns
			if i < b.N%conns {
				n++
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				bodies := make([]string, n)
				for j := range bodies {
					bodies[j] = fmt.Sprintf("tput %d %s %d", runs, cl.user, j)
				}
				for _, p := range psPushMany(cl, fmt.Sprintf("room:tput-%d", i%4), bodies, 8) {
					if !p.ok() {
						failed.Store(p.Body, p.Reply.Raw)
					}
				}
			}()
		}
		wg.Wait()
		acked := time.Since(start)
		failed.Range(func(k, v any) bool {
			b.Fatalf("push %v: %v", k, v)
			return false
		})
		for {
			n, err := psCount(pg.URL())
			if err == nil && n >= before+b.N {
				break
			}
			if time.Since(start) > 2*time.Minute {
				b.Fatalf("messages table: %d rows (err %v), want %d", n, err, before+b.N)
			}
			time.Sleep(2 * time.Millisecond)
		}
		stored := time.Since(start)
		b.ReportMetric(float64(b.N)/acked.Seconds(), "acked/s")
		b.ReportMetric(float64(b.N)/stored.Seconds(), "persisted/s")
	})
}
