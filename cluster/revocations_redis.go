package cluster

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatd/chatd/chat"
)

// RedisRevocationsConfig configures RedisRevocations. The zero value of
// each field picks the default given in its comment; Client or URL is
// required.
type RedisRevocationsConfig struct {
	// Client is the Redis client to use; the store does not close it. Set
	// its ContextTimeoutEnabled (Revoke is idempotent, so retries are
	// harmless). Nil: a client is made from URL.
	Client redis.UniversalClient
	// URL is a redis:// or rediss:// URL (see redis.ParseURL), used when
	// Client is nil. The store owns that client and closes it in Close.
	URL string
	// TTL is how long a revocation is remembered after Revoke. Zero: 24 h
	// and 1 min (chatd's default longest token lifetime, and a margin).
	TTL time.Duration
	// Logger receives the store's logs. Nil: discard.
	Logger *slog.Logger
}

// RedisRevocations is a chat.Revocations shared by every node of a
// cluster: a user's revocation is one key, chat.RevokedKey(user)
// ("chatd:{user:<id>}:revoked", in the hash slot of the user's other
// keys), holding the latest revocation's unix second and expiring TTL after
// the latest Revoke. Revoke is one Lua script (cluster/lua/revoke.lua),
// RevokedAt one GET.
type RedisRevocations struct {
	client     redis.UniversalClient
	ownsClient bool
	ttlMillis  int64
	closeOnce  sync.Once
}

var _ chat.Revocations = (*RedisRevocations)(nil)

var (
	//go:embed lua/revoke.lua
	revokeLua    string
	revokeScript = redis.NewScript(revokeLua)
)

// NewRedisRevocations returns a store; it does not contact Redis.
func NewRedisRevocations(cfg RedisRevocationsConfig) (*RedisRevocations, error) {
	if cfg.Client == nil && cfg.URL == "" {
		return nil, errors.New("cluster: redis revocations: a Client or URL is required")
	}
	if cfg.TTL == 0 {
		cfg.TTL = 24*time.Hour + time.Minute
	}
	if cfg.TTL < time.Millisecond {
		return nil, errors.New("cluster: redis revocations: TTL must be at least 1ms")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	c, owns, err := redisClientFrom(cfg.Client, cfg.URL, cfg.Logger, "redis revocations")
	if err != nil {
		return nil, err
	}
	return &RedisRevocations{client: c, ownsClient: owns, ttlMillis: cfg.TTL.Milliseconds()}, nil
}

// Revoke implements chat.Revocations: one script, on the user's key.
func (r *RedisRevocations) Revoke(ctx context.Context, user string, at time.Time) error {
	if err := revokeScript.Run(ctx, r.client, []string{chat.RevokedKey(user)}, at.Unix(), r.ttlMillis).Err(); err != nil {
		return fmt.Errorf("cluster: redis revocations: revoke %s: %w", user, err)
	}
	return nil
}

// RevokedAt implements chat.Revocations: one GET.
func (r *RedisRevocations) RevokedAt(ctx context.Context, user string) (time.Time, error) {
	v, err := r.client.Get(ctx, chat.RevokedKey(user)).Result()
	if errors.Is(err, redis.Nil) {
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("cluster: redis revocations: read %s: %w", user, err)
	}
	sec, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("cluster: redis revocations: %s holds %q, not unix seconds", chat.RevokedKey(user), v)
	}
	return time.Unix(sec, 0), nil
}

// Close closes the client if the store owns it. Later calls do nothing.
func (r *RedisRevocations) Close() error {
	var err error
	r.closeOnce.Do(func() {
		if r.ownsClient {
			if cerr := r.client.Close(); cerr != nil {
				err = fmt.Errorf("cluster: redis revocations: %w", cerr)
			}
		}
	})
	return err
}
