package chat

import (
	"context"
	"sync/atomic"
	"time"
)

// Rate is a token bucket: PerSecond tokens are added each second, up to
// Burst. A PerSecond of zero or less means no limit.
type Rate struct {
	PerSecond float64
	Burst     int
}

// RateLimiter takes tokens from token buckets named by keys.
type RateLimiter interface {
	// Allow takes one token from key's bucket, of rate r, and reports
	// whether there was one. The bucket is one per key for every caller
	// (every node, for a distributed limiter), is atomic under concurrent
	// calls, and outlives connections: it is forgotten only once it would
	// be full again. It may do network I/O; an error means the limiter
	// could not answer, and the caller decides what to do.
	Allow(ctx context.Context, key string, r Rate) (bool, error)
}

// RateKey returns the bucket key of user's bucket named bucket ("rate"
// for messages, "join" for joins). The user is a hash tag, so a Redis
// Cluster keeps all of a user's keys in one slot.
func RateKey(user, bucket string) string {
	return "chatd:{user:" + user + "}:" + bucket
}

// rateTimeout bounds one rate check. A distributed limiter that does not
// answer in time (Redis stalled or down) is replaced, for that check, by
// the node's own in-memory buckets: chat goes on, limited per node, rather
// than stopping or going unlimited.
const rateTimeout = 500 * time.Millisecond

// rateFallbackLogEvery is how often a failing limiter is logged at most.
const rateFallbackLogEvery = 10 * time.Second

// rateLimits is the hub's use of its RateLimiter.
type rateLimits struct {
	h        *Hub
	limiter  RateLimiter
	local    *MemoryRateLimiter // used when limiter fails; limiter itself when it is one
	lastLog  atomic.Int64       // unix nanoseconds of the last fallback logged
	fallback atomic.Int64       // checks answered by local because limiter failed
}

func newRateLimits(h *Hub, l RateLimiter) *rateLimits {
	rl := &rateLimits{h: h, limiter: l}
	if m, ok := l.(*MemoryRateLimiter); ok {
		rl.local = m
	} else {
		rl.local = NewMemoryRateLimiter()
	}
	return rl
}

// allow takes a token from user's bucket; a limiter error falls back to
// the node's own buckets.
func (rl *rateLimits) allow(ctx context.Context, user, bucket string, r Rate) bool {
	if r.PerSecond <= 0 {
		return true
	}
	key := RateKey(user, bucket)
	ctx, cancel := context.WithTimeout(ctx, rateTimeout)
	ok, err := rl.limiter.Allow(ctx, key, r)
	cancel()
	if err == nil {
		return ok
	}
	rl.fallback.Add(1)
	now := time.Now().UnixNano()
	if last := rl.lastLog.Load(); now-last >= int64(rateFallbackLogEvery) && rl.lastLog.CompareAndSwap(last, now) {
		rl.h.log.Warn("rate limiter unavailable: limiting with this node's buckets", "err", err, "fallbacks", rl.fallback.Load())
	}
	ok, _ = rl.local.Allow(context.Background(), key, r)
	return ok
}
