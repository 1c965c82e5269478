package e2e

// Latency of the cluster relay: two chatd nodes on one Redis. Run it
// without -race for meaningful figures, with a fixed count (each op is
// paced at 200 messages/s, so time-based benchtime is slow):
//
//	go test -run '^$' -bench CrossNodeLatency -benchtime 2000x ./e2e/

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatd/chatd/internal/testsvc"
)

const (
	// clBenchReceivers is the number of room members reading the load.
	clBenchReceivers = 20
	// clBenchPeriod paces the publisher: 200 messages per second.
	clBenchPeriod = 5 * time.Millisecond
)

// clBenchRoom is a room whose publisher and receivers are connected, kept
// across the runs of one sub-benchmark.
type clBenchRoom struct {
	topic string
	pub   *psClient
	recv  []*psClient
	runs  int
}

// BenchmarkCrossNodeLatency measures broadcast latency, from a push sent to
// its broadcast read by each of 20 room members, with the publisher pushing
// a steady 200 messages/s without waiting for replies, on a cluster of two
// nodes relaying through Redis:
//
//   - single-node: the publisher and the receivers on node1;
//   - cross-node: the publisher on node1, the receivers on node2.
//
// Both go through Redis (every publication does, in a cluster); the
// difference is the second node's pub/sub read and fan-out. Metrics:
// p50-ms, p99-ms and max-ms over every (message, receiver) pair of a run.
func BenchmarkCrossNodeLatency(b *testing.B) {
	redis := testsvc.StartRedis(b)
	// Set up once, on the parent benchmark: a sub-benchmark's function runs
	// again for each b.N, its cleanups after each run.
	nodes := clStartCluster(b, redis, 2, map[string]string{"CHAT_LOG_LEVEL": "warn"})
	single := clBenchSetup(b, "room:bench-single", nodes[0], nodes[0])
	cross := clBenchSetup(b, "room:bench-cross", nodes[0], nodes[1])
	b.Run("single-node", func(b *testing.B) { clBenchLatency(b, single) })
	b.Run("cross-node", func(b *testing.B) { clBenchLatency(b, cross) })
}

func clBenchSetup(b *testing.B, topic string, pubNode, recvNode *clNode) *clBenchRoom {
	b.Helper()
	name := strings.TrimPrefix(topic, "room:")
	r := &clBenchRoom{topic: topic, pub: psDial(b, pubNode.Chatd, name+"-pub")}
	r.pub.join(b, topic, nil)
	for i := range clBenchReceivers {
		cl := psDial(b, recvNode.Chatd, fmt.Sprintf("%s-recv-%d", name, i))
		cl.join(b, topic, nil)
		r.recv = append(r.recv, cl)
	}
	return r
}

func clBenchLatency(b *testing.B, r *clBenchRoom) {
	r.runs++
	prefix := fmt.Sprintf("bench %d ", r.runs)
	sent := make([]time.Time, b.N)
	replies := make([]psReply, b.N)
	var wg sync.WaitGroup
	tick := time.NewTicker(clBenchPeriod)
	defer tick.Stop()
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		<-tick.C
		at, ch, err := r.pub.pushAsync(r.topic, prefix+strconv.Itoa(i))
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
	elapsed := time.Since(start)
	wg.Wait()
	b.StopTimer()
	for i, rep := range replies {
		if rep.Err != nil || rep.Status != "ok" {
			b.Fatalf("push %d: %v %s", i, rep.Err, rep.Raw)
		}
	}

	lat := receiveLatencies(b, r.recv, r.topic, prefix, b.N, sent)
	pct := func(p float64) float64 { return lat[min(len(lat)-1, int(float64(len(lat))*p))] }
	b.ReportMetric(0, "ns/op") // paced: time per op is the pace, not a cost
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	b.ReportMetric(lat[len(lat)-1], "max-ms")
}

// receiveLatencies waits until every receiver has the run's last message
// (bodies prefix+0 .. prefix+n-1, sent at sent[i]) on topic, checks each got
// all n, and returns every delivery's latency in ms, sorted.
func receiveLatencies(b *testing.B, recv []*psClient, topic, prefix string, n int, sent []time.Time) []float64 {
	b.Helper()
	lastBody := prefix + strconv.Itoa(n-1)
	lat := make([]float64, 0, n*len(recv))
	for _, cl := range recv {
		msgs, ok := cl.waitMessages(topic, 30*time.Second, func(ms []psMsg) bool {
			return len(ms) > 0 && ms[len(ms)-1].Body == lastBody
		})
		if !ok {
			b.Fatalf("%s did not receive the run's last message", cl.user)
		}
		got := 0
		for _, m := range msgs {
			seq, ok := strings.CutPrefix(m.Body, prefix)
			if !ok {
				continue
			}
			i, err := strconv.Atoi(seq)
			if err != nil || i >= n {
				b.Fatalf("unexpected body %q", m.Body)
			}
			lat = append(lat, float64(m.At.Sub(sent[i]))/float64(time.Millisecond))
			got++
		}
		if got != n {
			b.Fatalf("%s received %d of %d messages", cl.user, got, n)
		}
	}
	slices.Sort(lat)
	return lat
}
