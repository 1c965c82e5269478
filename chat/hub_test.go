package chat

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// newTestSession returns a session with no connection, for exercising the
// hub's fan-out alone.
func newTestSession(h *Hub, id string) *Session {
	return &Session{hub: h, id: id, user: id, log: h.log, channels: map[string]*channel{},
		wake: make(chan struct{}, 1), done: make(chan struct{})}
}

func TestHubJoinLeaveRoomLifecycle(t *testing.T) {
	h, err := NewHub(Config{}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	a, b := newTestSession(h, "a"), newTestSession(h, "b")
	ra, err := h.join(ctx, a, "lobby")
	if err != nil {
		t.Fatal(err)
	}
	rb, _ := h.join(ctx, b, "lobby")
	if ra != rb {
		t.Fatal("two joins of one room made two rooms")
	}
	msg, err := h.publish(ctx, ra, "a", "hi")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []*Session{a, b} {
		q := s.take(nil)
		if len(q) != 1 {
			t.Fatalf("%s queued %d frames", s.id, len(q))
		}
		if f, err := DecodeFrame(q[0]); err != nil || f.Event != EventNewMsg {
			t.Fatalf("queued %s", q[0])
		}
	}
	_ = msg
	h.leave(a, ra)
	h.leave(b, rb)
	if st := h.Stats(); st.Rooms != 0 {
		t.Fatalf("rooms after all left: %d", st.Rooms)
	}
	// The broker no longer delivers the room.
	h.broker.Publish(ctx, "lobby", []byte("x"))
	if q := a.take(nil); len(q) != 0 {
		t.Fatal("delivery after leave")
	}
}

func TestNewHubRejectsNegativeLimits(t *testing.T) {
	for _, cfg := range []Config{{MaxBody: -1}, {UserRate: -1}, {IdleTimeout: -time.Second}, {SendQueueLen: -5}} {
		if _, err := NewHub(cfg, Options{}); err == nil {
			t.Errorf("NewHub(%+v) accepted", cfg)
		}
	}
}

func TestMemoryConnLimiter(t *testing.T) {
	l := NewMemoryConnLimiter(2)
	ctx := context.Background()
	if l.Acquire(ctx, "u", "1") != nil || l.Acquire(ctx, "u", "2") != nil {
		t.Fatal("first two refused")
	}
	if err := l.Acquire(ctx, "u", "2"); err != nil {
		t.Fatal("re-acquiring a held slot is not idempotent")
	}
	if err := l.Acquire(ctx, "u", "3"); err != ErrTooManyConnections {
		t.Fatalf("third: %v", err)
	}
	if err := l.Acquire(ctx, "v", "1"); err != nil {
		t.Fatal("another user refused")
	}
	l.Release(ctx, "u", "1")
	l.Release(ctx, "u", "1")
	if err := l.Acquire(ctx, "u", "3"); err != nil {
		t.Fatalf("after release: %v", err)
	}
	if err := l.Acquire(ctx, "u", "4"); err != ErrTooManyConnections {
		t.Fatal("double release freed two slots")
	}
}

// BenchmarkFanout1000 measures the hub's part of a broadcast to 1,000
// members of one room: id, encoding once, and one enqueue per member.
func BenchmarkFanout1000(b *testing.B) {
	h, err := NewHub(Config{SendQueueLen: 1 << 20, SendQueueBytes: 1 << 30}, Options{})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	members := make([]*Session, 1000)
	var r *room
	for i := range members {
		members[i] = newTestSession(h, fmt.Sprint(i))
		if r, err = h.join(ctx, members[i], "bench"); err != nil {
			b.Fatal(err)
		}
	}
	buf := make([][]byte, 0, 64)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, err := h.publish(ctx, r, "u", "hello there, how is everyone doing today?"); err != nil {
			b.Fatal(err)
		}
		if i++; i%32 == 0 {
			for _, s := range members {
				buf = s.take(buf[:0])
			}
		}
	}
	b.ReportMetric(float64(b.N*len(members))/b.Elapsed().Seconds(), "deliveries/s")
}
