package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chatd/chatd/chat"
)

// BenchmarkWriter measures messages persisted per second (msgs/s) through
// the Writer, from Enqueue to rows committed, for several batch sizes, on
// each backend. The producer outruns the writer; when the queue is full it
// backs off briefly and offers the message again, so the figure is the
// writer's steady-state throughput.
//
//	go test -run '^$' -bench Writer -benchtime 20000x ./store/
func BenchmarkWriter(b *testing.B) {
	for _, be := range backends {
		for _, size := range []int{1, 10, 100, 500} {
			b.Run(fmt.Sprintf("%s/batch=%d", be.name, size), func(b *testing.B) {
				db := migratedDB(b, be)
				cfg := WriterConfig{BatchSize: size, Workers: 4, QueueSize: 10000}
				if size == 1 {
					cfg.BatchWait = -1 // nothing to wait for
				}
				w, err := NewWriter(db, cfg, nil)
				if err != nil {
					b.Fatal(err)
				}
				msgs := make([]chat.Message, b.N)
				body := strings.Repeat("a typical chat line ", 4)
				for i := range msgs {
					msgs[i] = newMessage(b, fmt.Sprintf("room-%d", i%50), fmt.Sprintf("user-%d", i%500), body)
				}
				b.ResetTimer()
				start := time.Now()
				for i := range msgs {
					for {
						err := w.Enqueue(msgs[i])
						if err == nil {
							break
						}
						if !errors.Is(err, chat.ErrOverloaded) {
							b.Fatal(err)
						}
						time.Sleep(100 * time.Microsecond)
					}
				}
				if err := w.Close(context.Background()); err != nil {
					b.Fatal(err)
				}
				elapsed := time.Since(start)
				b.StopTimer()
				s := w.Stats()
				if s.Written != uint64(b.N) {
					b.Fatalf("wrote %d of %d", s.Written, b.N)
				}
				b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
				b.ReportMetric(float64(s.Written)/float64(s.Batches), "rows/batch")
				b.ReportMetric(float64(s.WriteTime.Microseconds())/float64(s.Batches), "µs/batch")
			})
		}
	}
}
