package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"

	"github.com/chatd/chatd/chat"
)

// RedisRateLimiterConfig configures a RedisRateLimiter. Client or URL is
// required.
type RedisRateLimiterConfig struct {
	// Client is the Redis client to use; the limiter does not close it.
	// Set its ContextTimeoutEnabled, and MaxRetries -1: taking a token is
	// not idempotent, so a retry after a lost answer takes two.
	// Nil: a client is made from URL.
	Client redis.UniversalClient
	// URL is a redis:// or rediss:// URL (see redis.ParseURL), used when
	// Client is nil. The limiter owns that client and closes it in Close.
	URL string
	// Logger receives the limiter's logs. Nil: discard.
	Logger *slog.Logger
}

// RedisRateLimiter is a chat.RateLimiter whose buckets live in Redis, so
// that a user's limit holds across nodes and reconnects. It is
// github.com/go-redis/redis_rate (GCRA, one Lua script per check, on the
// Redis clock): a bucket is one key, "rate:" followed by the chat key
// (chat.RateKey: "chatd:{user:<id>}:rate"), whose hash tag puts a user's
// buckets in one Redis Cluster slot, and which expires once the bucket is
// full again.
type RedisRateLimiter struct {
	client     redis.UniversalClient
	ownsClient bool
	limiter    *redis_rate.Limiter
	closeOnce  sync.Once
}

var _ chat.RateLimiter = (*RedisRateLimiter)(nil)

// NewRedisRateLimiter returns a limiter; it does not contact Redis.
func NewRedisRateLimiter(cfg RedisRateLimiterConfig) (*RedisRateLimiter, error) {
	if cfg.Client == nil && cfg.URL == "" {
		return nil, errors.New("cluster: redis rate limiter: a Client or URL is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	c, owns, err := redisClientFrom(cfg.Client, cfg.URL, cfg.Logger, "redis rate limiter")
	if err != nil {
		return nil, err
	}
	return &RedisRateLimiter{client: c, ownsClient: owns, limiter: redis_rate.NewLimiter(c)}, nil
}

// Allow implements chat.RateLimiter: one Redis round trip.
func (l *RedisRateLimiter) Allow(ctx context.Context, key string, r chat.Rate) (bool, error) {
	if r.PerSecond <= 0 {
		return true, nil
	}
	// GCRA needs only the interval between tokens: one token per period.
	lim := redis_rate.Limit{Rate: 1, Burst: r.Burst, Period: time.Duration(float64(time.Second) / r.PerSecond)}
	res, err := l.limiter.Allow(ctx, key, lim)
	if err != nil {
		return false, fmt.Errorf("cluster: redis rate limiter: %w", err)
	}
	return res.Allowed > 0, nil
}

// Close closes the client if the limiter owns it. Later calls do nothing.
func (l *RedisRateLimiter) Close() error {
	var err error
	l.closeOnce.Do(func() {
		if l.ownsClient {
			err = l.client.Close()
		}
	})
	return err
}
