package chattest

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chatd/chatd/chat"
)

// NewRateLimiterNode returns the RateLimiter of the node named node. Every
// node one test makes shares one backend, so buckets are shared across
// them; an implementation that is not distributed may return one instance
// for every name. The factory arranges for the node to be stopped when t
// ends.
type NewRateLimiterNode func(t *testing.T, node string) chat.RateLimiter

// RunRateLimiterTests runs the properties every chat.RateLimiter has. Each
// test uses keys no other test uses.
func RunRateLimiterTests(t *testing.T, newNode NewRateLimiterNode) {
	t.Run("BurstThenRefused", func(t *testing.T) { testRateBurst(t, newNode) })
	t.Run("Refills", func(t *testing.T) { testRateRefills(t, newNode) })
	t.Run("KeysAreIndependent", func(t *testing.T) { testRateKeys(t, newNode) })
	t.Run("ZeroRateMeansNoLimit", func(t *testing.T) { testRateZero(t, newNode) })
	t.Run("SharedAcrossNodes", func(t *testing.T) { testRateAcrossNodes(t, newNode) })
	t.Run("ConcurrentAcrossNodes", func(t *testing.T) { testRateRace(t, newNode) })
}

// slow is a rate whose refill within a test is at most one token.
var slow = chat.Rate{PerSecond: 0.01, Burst: 5}

func rateKey() string { return chat.RateKey(UserName(), "rate") }

// allowed counts the tokens n calls of Allow took.
func allowed(t testing.TB, l chat.RateLimiter, key string, r chat.Rate, n int) int {
	t.Helper()
	got := 0
	for range n {
		ok, err := l.Allow(ctxFor(t), key, r)
		if err != nil {
			t.Fatalf("Allow(%s): %v", key, err)
		}
		if ok {
			got++
		}
	}
	return got
}

func testRateBurst(t *testing.T, newNode NewRateLimiterNode) {
	l, key := newNode(t, "a"), rateKey()
	if got := allowed(t, l, key, slow, 8); got != slow.Burst {
		t.Fatalf("%d of 8 allowed from a full bucket of %d", got, slow.Burst)
	}
}

func testRateRefills(t *testing.T, newNode NewRateLimiterNode) {
	l, key := newNode(t, "a"), rateKey()
	r := chat.Rate{PerSecond: 10, Burst: 1}
	allowed(t, l, key, r, 3) // empty it
	// One token comes back every 100 ms; wait for a few.
	time.Sleep(500 * time.Millisecond)
	if got := allowed(t, l, key, r, 1); got != 1 {
		t.Fatal("no token after the bucket refilled")
	}
}

func testRateKeys(t *testing.T, newNode NewRateLimiterNode) {
	l := newNode(t, "a")
	user := UserName()
	allowed(t, l, chat.RateKey(user, "rate"), slow, slow.Burst+1)
	if got := allowed(t, l, chat.RateKey(user, "join"), slow, 1); got != 1 {
		t.Fatal("another bucket of the same user was emptied too")
	}
	if got := allowed(t, l, rateKey(), slow, 1); got != 1 {
		t.Fatal("another user's bucket was emptied too")
	}
}

func testRateZero(t *testing.T, newNode NewRateLimiterNode) {
	l, key := newNode(t, "a"), rateKey()
	if got := allowed(t, l, key, chat.Rate{Burst: 1}, 50); got != 50 {
		t.Fatalf("%d of 50 allowed with no rate", got)
	}
}

func testRateAcrossNodes(t *testing.T, newNode NewRateLimiterNode) {
	a, b, key := newNode(t, "a"), newNode(t, "b"), rateKey()
	got := allowed(t, a, key, slow, 3) + allowed(t, b, key, slow, 3) + allowed(t, a, key, slow, 3)
	if got != slow.Burst {
		t.Fatalf("%d allowed on two nodes from one bucket of %d", got, slow.Burst)
	}
}

func testRateRace(t *testing.T, newNode NewRateLimiterNode) {
	nodes := []chat.RateLimiter{newNode(t, "a"), newNode(t, "b"), newNode(t, "c")}
	key := rateKey()
	r := chat.Rate{PerSecond: 0.01, Burst: 10}
	var got atomic.Int64
	var wg sync.WaitGroup
	for _, l := range nodes {
		for range 5 {
			wg.Go(func() {
				for range 4 {
					ok, err := l.Allow(ctxFor(t), key, r)
					if err != nil {
						t.Errorf("Allow: %v", err)
						return
					}
					if ok {
						got.Add(1)
					}
				}
			})
		}
	}
	wg.Wait()
	if got.Load() != int64(r.Burst) {
		t.Fatalf("%d of 60 concurrent calls allowed from a bucket of %d", got.Load(), r.Burst)
	}
}
