package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/redis/go-redis/v9"
)

// redisClientFrom returns client, or else a new client for url that the
// caller owns (with context deadlines honoured and no retries). what names
// the component in errors and logs.
func redisClientFrom(client redis.UniversalClient, url string, log *slog.Logger, what string) (redis.UniversalClient, bool, error) {
	if client != nil {
		if !contextTimeoutEnabled(client) {
			log.Warn(what + ": the Redis client ignores context deadlines (ContextTimeoutEnabled is off): calls may outlast their timeouts while Redis hangs")
		}
		return client, false, nil
	}
	opt, err := redis.ParseURL(url)
	if err != nil {
		return nil, false, fmt.Errorf("cluster: %s: %w", what, err)
	}
	opt.MaxRetries = -1
	opt.ContextTimeoutEnabled = true
	return redis.NewClient(opt), true, nil
}

// contextTimeoutEnabled reports whether c honours context deadlines on
// its sockets (ContextTimeoutEnabled), for the clients go-redis makes.
func contextTimeoutEnabled(c redis.UniversalClient) bool {
	switch c := c.(type) {
	case *redis.Client:
		return c.Options().ContextTimeoutEnabled
	case *redis.ClusterClient:
		return c.Options().ContextTimeoutEnabled
	}
	return true
}

// redisLoops is the lifecycle RedisConnLimiter and RedisPresence share: a
// Redis client, shared or owned, background goroutines, and an idempotent
// Close that stops them.
type redisLoops struct {
	what       string // the component, in errors
	client     redis.UniversalClient
	ownsClient bool

	done      chan struct{}   // closed by Close: loops return
	stopCtx   context.Context // canceled by Close: ends a round in flight
	stop      context.CancelFunc
	isClosed  atomic.Bool
	closeOnce sync.Once
	wg        sync.WaitGroup // the background goroutines
}

// init sets up the client (see redisClientFrom) and the stop signals.
func (r *redisLoops) init(client redis.UniversalClient, url string, log *slog.Logger, what string) error {
	c, owns, err := redisClientFrom(client, url, log, what)
	if err != nil {
		return err
	}
	r.what, r.client, r.ownsClient = what, c, owns
	r.done = make(chan struct{})
	r.stopCtx, r.stop = context.WithCancel(context.Background())
	return nil
}

// shutdown stops the goroutines and closes the client if it is owned; the
// goroutines have ended when it returns. It runs once; later calls return
// nil.
func (r *redisLoops) shutdown() error {
	var err error
	r.closeOnce.Do(func() {
		r.isClosed.Store(true)
		close(r.done)
		r.stop()
		// go-redis does not watch a context's cancellation, only its
		// deadline: closing our own client is what ends a round stuck on
		// a hung Redis. A shared client's round ends by its timeout.
		if r.ownsClient {
			if cerr := r.client.Close(); cerr != nil {
				err = fmt.Errorf("cluster: %s: %w", r.what, cerr)
			}
		}
		r.wg.Wait()
	})
	return err
}
