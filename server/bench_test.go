package server

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/chatd/chatd/chat"
)

// BenchmarkBroadcast1000 pushes messages into a room of 1,000 members, each
// a real WebSocket client on loopback, and waits until every member has
// received every message. It reports deliveries per second end to end.
func BenchmarkBroadcast1000(b *testing.B) {
	const members = 1000
	s := startServer(b, chat.Config{SendQueueLen: 1 << 16, SendQueueBytes: 64 << 20}, nil)
	var delivered atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	clients := make([]*client, members)
	for i := range clients {
		c := s.dial(b, fmt.Sprint("m", i))
		c.join("bench")
		clients[i] = c
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				_, data, err := c.conn.Read(ctx)
				if err != nil {
					return
				}
				if f, _ := chat.DecodeFrame(data); f.Event == chat.EventNewMsg {
					delivered.Add(1)
				}
			}
		}()
	}
	pub := clients[0]
	payload := []byte(`{"body":"hello there, how is everyone doing today?"}`)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		frame := chat.AppendFrame(nil, "1", fmt.Sprint(i), "room:bench", chat.EventNewMsg, payload)
		wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
		err := pub.conn.Write(wctx, websocket.MessageText, frame)
		wcancel()
		if err != nil {
			b.Fatal(err)
		}
	}
	want := int64(b.N) * members
	deadline := time.Now().Add(2 * time.Minute)
	for delivered.Load() < want {
		if time.Now().After(deadline) {
			b.Fatalf("delivered %d of %d", delivered.Load(), want)
		}
		time.Sleep(time.Millisecond)
	}
	b.StopTimer()
	b.ReportMetric(float64(want)/b.Elapsed().Seconds(), "deliveries/s")
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	cancel()
	for _, c := range clients {
		c.conn.CloseNow()
	}
	wg.Wait()
}
