package chat

import (
	"context"
	"fmt"
	"math"
	"testing"
	"time"
)

// newTestSession returns a session with no connection (and so no writer),
// for exercising the hub's fan-out alone; every room is open to it, as with
// the default CHAT_PUBLIC_ROOMS.
func newTestSession(h *Hub, id string) *Session {
	return &Session{hub: h, id: id, user: id, channels: map[string]*channel{},
		grants: Grants{Public: Patterns{"*"}}, done: make(chan struct{})}
}

// take removes and returns every frame queued for s.
func (s *Session) take(buf [][]byte) [][]byte {
	s.qmu.Lock()
	buf = append(buf, s.queue...)
	clear(s.queue)
	s.queue, s.qbytes = s.queue[:0], 0
	s.qmu.Unlock()
	return buf
}

func TestNewHubRejectsBadConfig(t *testing.T) {
	for _, cfg := range []Config{
		{MaxBody: -1}, {MaxChannels: -1}, {UserRate: -1}, {JoinRate: -0.5}, {UserBurst: -1}, {JoinBurst: -1},
		{IdleTimeout: -time.Second}, {WriteTimeout: -1}, {SendQueueLen: -5}, {SendQueueBytes: -1},
		{RelayTimeout: -1}, {ResolveTimeout: -1}, {PresenceInterval: -1},
		{ReadLimit: -1}, {ReadLimit: MinReadLimit - 1}, {UserRate: math.NaN()},
	} {
		if _, err := NewHub(cfg, Options{}); err == nil {
			t.Errorf("NewHub(%+v) accepted", cfg)
		}
	}
}

// The zero Config gets the defaults its fields' comments state; set
// fields are kept.
func TestConfigDefaults(t *testing.T) {
	got, err := Config{}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	want := Config{NodeName: "local", MaxBody: 4000, MaxChannels: 100, ReadLimit: 64 << 10, IdleTimeout: 60 * time.Second,
		WriteTimeout: 10 * time.Second, SendQueueLen: 1024, SendQueueBytes: 4 << 20, UserBurst: 20, JoinBurst: 100,
		RelayTimeout: 5 * time.Second, ResolveTimeout: 9 * time.Second, PresenceInterval: 100 * time.Millisecond}
	if got != want {
		t.Fatalf("defaults\n%+v\nwant\n%+v", got, want)
	}
	set := Config{NodeName: "n1", MaxBody: 1, MaxChannels: 2, ReadLimit: MinReadLimit, IdleTimeout: 3, WriteTimeout: 4,
		SendQueueLen: 5, SendQueueBytes: 6, UserRate: 7, UserBurst: 8, JoinRate: 9, JoinBurst: 10, RelayTimeout: 11,
		ResolveTimeout: 12, PresenceInterval: 13}
	if got, err := set.withDefaults(); err != nil || got != set {
		t.Fatalf("set fields changed: %+v, %v", got, err)
	}
	h, err := NewHub(Config{}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Shutdown(context.Background())
	if h.Config() != want {
		t.Fatalf("hub config %+v", h.Config())
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
		if r, _, err = h.join(ctx, members[i], "bench", "1", false); err != nil {
			b.Fatal(err)
		}
	}
	buf := make([][]byte, 0, 64)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, err := h.publish(ctx, r.name, "u", "hello there, how is everyone doing today?"); err != nil {
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

func TestNewMessageIDSuccessor(t *testing.T) {
	a, err := newMessageID("")
	if err != nil {
		t.Fatal(err)
	}
	// An id from the future: the next id must still be greater, in the
	// same millisecond, a random step ahead.
	future := "ffffffff-ffff-7fff-8000-00000000000e"
	seen := map[string]bool{}
	for range 100 {
		b, err := newMessageID(future)
		if err != nil || b <= future || b[:19] != future[:19] {
			t.Fatalf("successor of %s = %s, %v", future, b, err)
		}
		seen[b] = true
	}
	// Publishers stepping from the same id (other rooms, other nodes) do
	// not land on one id.
	if len(seen) < 99 {
		t.Fatalf("100 successors of one id gave only %d different ids", len(seen))
	}
	carry, err := newMessageID("ffffffff-ffff-7fff-80ff-ffffffffffff")
	if err != nil || carry <= "ffffffff-ffff-7fff-8100-000000000000" || carry[:19] != "ffffffff-ffff-7fff-" {
		t.Fatalf("carry successor = %s, %v", carry, err)
	}
	if _, err := newMessageID("ffffffff-ffff-7fff-bfff-fffffffffffe"); err == nil {
		// ...-bfff-ffffffffffff is the last id of its millisecond.
		t.Fatal("exhausted id space not reported")
	}
	if c, _ := newMessageID(a); c <= a {
		t.Fatalf("%s not after %s", c, a)
	}
}

func TestMergeByID(t *testing.T) {
	m := func(ids ...string) []Message {
		var out []Message
		for _, id := range ids {
			out = append(out, Message{ID: id})
		}
		return out
	}
	got := mergeByID(m("a", "c", "d"), m("b", "c", "e"))
	var ids []string
	for _, x := range got {
		ids = append(ids, x.ID)
	}
	if fmt.Sprint(ids) != "[a b c d e]" {
		t.Fatalf("merged %v", ids)
	}
}
