// Package node builds one chatd node from a Config and runs it: the
// database and its writer, the Redis components of a cluster node (one
// shared Redis client), the hub, the HTTP server and the cluster
// membership, started in order and shut down in the reverse order.
//
//	n, err := node.New(ctx, cfg, log) // builds and connects; nothing served yet
//	err = n.Run(ctx)                   // serves until ctx ends, then shuts down
package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"

	"github.com/redis/go-redis/v9"

	"github.com/chatd/chatd/chat"
	"github.com/chatd/chatd/cluster"
	"github.com/chatd/chatd/server"
	"github.com/chatd/chatd/store"
)

// Node is one chatd node. New builds it, Run serves it and shuts it down.
type Node struct {
	cfg     Config
	log     *slog.Logger
	metrics *server.Metrics

	db      *store.DB
	history *store.History
	writer  *store.Writer
	checks  []server.Check

	// The cluster node's Redis components, nil on a single node; rdb is
	// the client they share.
	rdb         redis.UniversalClient
	broker      *cluster.RedisBroker
	presence    *cluster.RedisPresence
	limiter     *cluster.RedisConnLimiter
	addrLimiter *cluster.RedisConnLimiter
	membership  *cluster.Membership
	// loops are the components with background rounds on Redis
	// (presence, connection limits), closed together: on the shared
	// client a round stuck on a hung Redis ends only by its own timeout
	// (see cluster.RedisPresence.Close), so they wait for it at once
	// rather than one after the other.
	loops []io.Closer

	hub *chat.Hub
	srv *server.Server

	// httpAddr is the advertised HTTP address, set in Run before the
	// membership starts.
	httpAddr atomic.Pointer[string]

	// cleanups runs what a dead node left behind (cleanup.go).
	cleanups *tasks

	// closers release what New built, in reverse order, after the HTTP
	// server.
	closers []closer
}

// closer is one step of the shutdown.
type closer struct {
	name  string
	close func(ctx context.Context) error
}

// New builds a node: it opens the database (migrating it when
// cfg.Migrate), and on a cluster node the Redis client and components,
// and stores what this node accepted before a crash and had not stored.
// It serves nothing and joins no cluster: Run does. On error everything
// built so far is released.
func New(ctx context.Context, cfg Config, log *slog.Logger) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	n := &Node{cfg: cfg, log: log}
	if err := n.build(ctx); err != nil {
		return nil, n.fail(err)
	}
	return n, nil
}

func (n *Node) add(name string, fn func(ctx context.Context) error) {
	n.closers = append(n.closers, closer{name, fn})
}

// closeLoops closes the loops concurrently and waits for them.
func (n *Node) closeLoops(context.Context) error {
	errs := make([]error, len(n.loops))
	var wg sync.WaitGroup
	for i, l := range n.loops {
		wg.Go(func() { errs[i] = l.Close() })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// closeAll runs the closers in reverse order.
func (n *Node) closeAll(ctx context.Context) error {
	var errs []error
	for i := len(n.closers) - 1; i >= 0; i-- {
		if err := n.closers[i].close(ctx); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", n.closers[i].name, err))
		}
	}
	n.closers = nil
	return errors.Join(errs...)
}

func (n *Node) build(ctx context.Context) error {
	c := &n.cfg
	// The node's Prometheus registry (GET /metrics): made first, so that
	// the relay and the writer report into it.
	n.metrics = server.NewMetrics(c.NodeName)

	// The shared Redis client is made first so that it closes last, after
	// every component using it.
	if c.RedisURL != "" || len(c.RedisCluster) > 0 {
		if err := n.openRedis(); err != nil {
			return err
		}
	}

	db, err := store.Open(ctx, c.DatabaseURL, n.log)
	if err != nil {
		return err
	}
	n.db = db
	n.add("database", func(context.Context) error { return db.Close() })
	if c.Migrate {
		if err := db.MigrateUp(ctx); err != nil {
			return err
		}
	} else if cur, latest, err := db.SchemaVersion(ctx); err != nil {
		return err
	} else if cur < latest {
		return fmt.Errorf("serve: database schema is at version %d, this chatd needs %d: run chatd migrate up", cur, latest)
	}
	n.history = store.NewHistory(db)
	n.checks = []server.Check{{Name: "database", Check: db.Ping}}

	// The writer is closed after the hub's connections, so that every
	// accepted message is drained, and after the relay (buildHub).
	n.writer, err = store.NewWriter(db, store.WriterConfig{
		QueueSize: c.PersistQueue,
		Workers:   c.PersistWorkers,
		BatchSize: c.PersistBatch,
		BatchWait: c.PersistBatchWait,
	}, n.log)
	if err != nil {
		return err
	}
	n.add("persistence queue", n.writer.Close)
	n.writer.OnBatch(n.metrics.ObserveBatch)

	if err := n.buildHub(); err != nil {
		return err
	}
	if n.rdb != nil {
		if err := n.runRedis(ctx); err != nil {
			return err
		}
	} else {
		n.log.Info("single node: no CHAT_REDIS_URL or CHAT_REDIS_CLUSTER, relay and presence are in memory")
	}
	return n.buildServer()
}

// openRedis makes the client every Redis component of the node shares:
// context deadlines honoured on the socket (a hung Redis costs a call its
// own timeout, not the client's read timeout) and no retries (a retried
// publication of a frame without an id could be delivered twice; see
// cluster.RedisBrokerConfig.Client). The relay's pub/sub connection is not
// one of the pool's: go-redis dedicates a connection to it.
//
// On a Redis Cluster the client is a ClusterClient: it learns the slot map
// from the seeds, sends each command to the master of its key's slot, and
// follows MOVED and ASK redirections (those are not retries of a command
// that may have run: Redis refused it).
func (n *Node) openRedis() error {
	var rdb redis.UniversalClient
	if seeds := n.cfg.RedisCluster; len(seeds) > 0 {
		rdb = redis.NewClusterClient(&redis.ClusterOptions{
			Addrs:                 seeds,
			MaxRetries:            -1,
			ContextTimeoutEnabled: true,
		})
	} else {
		opt, err := redis.ParseURL(n.cfg.RedisURL)
		if err != nil {
			return fmt.Errorf("serve: redis-url: %w", err)
		}
		opt.MaxRetries = -1
		opt.ContextTimeoutEnabled = true
		rdb = redis.NewClient(opt)
	}
	n.rdb = rdb
	n.add("redis client", func(context.Context) error { return rdb.Close() })
	return nil
}

func (n *Node) buildHub() error {
	c := &n.cfg
	var broker chat.Broker = chat.NewMemoryBroker()
	var presence chat.Presence
	var rates chat.RateLimiter
	if n.rdb != nil {
		// The hub runs the relay and presence as it starts. They are
		// closed after the connections (whose leaves presence records),
		// the relay before the persistence queue.
		var err error
		n.broker, err = cluster.NewRedisBroker(cluster.RedisBrokerConfig{Client: n.rdb, NodeName: c.NodeName, Logger: n.log})
		if err != nil {
			return err
		}
		n.add("redis relay", func(context.Context) error { return n.broker.Close() })
		n.presence, err = cluster.NewRedisPresence(cluster.RedisPresenceConfig{Client: n.rdb, NodeName: c.NodeName, Logger: n.log})
		if err != nil {
			return err
		}
		n.loops = append(n.loops, n.presence)
		n.add("presence and connection limits", n.closeLoops)
		broker, presence = n.broker, n.presence
		// The per-user message and join buckets are cluster-wide with
		// Redis, so that neither reconnecting nor switching nodes resets
		// them.
		rl, err := cluster.NewRedisRateLimiter(cluster.RedisRateLimiterConfig{Client: n.rdb, Logger: n.log})
		if err != nil {
			return err
		}
		n.add("rate limits", func(context.Context) error { return rl.Close() })
		rates = rl
	}
	hub, err := chat.NewHub(chat.Config{
		NodeName:    c.NodeName,
		MaxBody:     c.MaxBody,
		MaxChannels: c.MaxChannels,
		ReadLimit:   int64(c.ReadLimit),
		UserRate:    c.UserRate,
		UserBurst:   c.UserBurst,
		JoinRate:    c.JoinRate,
		JoinBurst:   c.JoinBurst,
	}, chat.Options{Logger: n.log, Sink: n.writer, History: n.history, Broker: n.metrics.InstrumentBroker(broker),
		Presence: presence, RateLimiter: rates})
	if err != nil {
		return err
	}
	n.hub = hub
	return nil
}

// runRedis finishes a cluster node's start, the hub running: it stores
// what this node accepted before a crash and had not stored, runs the
// connection limits and builds the membership (started by Run).
func (n *Node) runRedis(ctx context.Context) error {
	c := &n.cfg
	// What this node accepted before a crash and had not stored yet is in
	// the room logs: store it before serving.
	tctx, cancel := context.WithTimeout(ctx, c.ShutdownTimeout)
	n.takeOver(tctx, c.NodeName)
	cancel()
	n.checks = append(n.checks, server.Check{Name: "redis", Check: n.broker.Ping})

	var err error
	n.limiter, err = cluster.NewRedisConnLimiter(cluster.RedisConnLimiterConfig{
		Client: n.rdb, NodeName: c.NodeName, Max: c.MaxConnsPerUser, Logger: n.log,
	})
	if err != nil {
		return err
	}
	n.loops = append(n.loops, n.limiter)
	if err := n.limiter.Run(); err != nil {
		return err
	}
	// Connections per client address: a limiter of its own (its own Max),
	// under a key space of its own.
	if c.MaxConnsPerIP > 0 {
		n.addrLimiter, err = cluster.NewRedisConnLimiter(cluster.RedisConnLimiterConfig{
			Client: n.rdb, Prefix: "chatd:ip", NodeName: c.NodeName, Max: c.MaxConnsPerIP, Logger: n.log,
		})
		if err != nil {
			return err
		}
		n.loops = append(n.loops, n.addrLimiter)
		if err := n.addrLimiter.Run(); err != nil {
			return err
		}
	}

	n.membership, err = cluster.NewMembership(cluster.MembershipConfig{
		NodeName:      c.NodeName,
		BindAddr:      c.ClusterAddr,
		AdvertiseAddr: c.ClusterAdvertise,
		Join:          c.ClusterJoin,
		Profile:       c.ClusterProfile,
		SecretKey:     c.ClusterKey,
		Logger:        n.log,
		Meta: func() cluster.NodeMeta {
			st := n.hub.Stats()
			var addr string
			if p := n.httpAddr.Load(); p != nil {
				addr = *p
			}
			return cluster.NodeMeta{HTTPAddr: addr, Connections: int(st.Connections), Users: st.Users, Rooms: st.Rooms,
				MessagesIn: st.MessagesIn, QueueDepth: n.writer.Stats().QueueDepth}
		},
	})
	if err != nil {
		return err
	}
	if c.ClusterKey == nil {
		n.log.Warn("gossip is not encrypted: anyone who reaches CHAT_CLUSTER_ADDR can add members or declare nodes dead; set CHAT_CLUSTER_KEY")
	}
	// A node declared dead leaves its presence, connection slots and
	// unstored messages behind (cleanup.go); shutdown waits for the
	// clean-ups under way.
	n.cleanups = newTasks()
	n.add("dead node clean-ups", n.cleanups.close)
	n.membership.OnLeave(func(m cluster.Member) {
		if m.State == cluster.MemberDead {
			n.cleanups.goTask(func(ctx context.Context) { n.cleanUpAfter(ctx, m.Name) })
		}
	})
	return nil
}

func (n *Node) buildServer() error {
	c := &n.cfg
	var limiter, addrLimiter chat.ConnLimiter = chat.NewMemoryConnLimiter(c.MaxConnsPerUser), nil
	if c.MaxConnsPerIP > 0 {
		addrLimiter = chat.NewMemoryConnLimiter(c.MaxConnsPerIP)
	}
	// Revoked tokens are refused on every node: with Redis, the
	// revocations live there for as long as a revoked token can; on a
	// single node, the server keeps them in memory.
	var revocations chat.Revocations
	sources := server.MetricsSources{Writer: func() server.QueueStats {
		ws := n.writer.Stats()
		return server.QueueStats{QueueDepth: ws.QueueDepth, QueueCapacity: ws.QueueCapacity, InFlight: ws.InFlight,
			Lag: ws.Lag, Written: ws.Written, Retries: ws.Retries, Failures: ws.Failures, Dropped: ws.Dropped, Rejected: ws.Rejected}
	}}
	if n.rdb != nil {
		limiter = n.limiter
		if n.addrLimiter != nil {
			addrLimiter = n.addrLimiter
		}
		rv, err := cluster.NewRedisRevocations(cluster.RedisRevocationsConfig{
			Client: n.rdb, TTL: server.RevocationTTL(c.MaxTokenTTL), Logger: n.log,
		})
		if err != nil {
			return err
		}
		n.add("revocations", func(context.Context) error { return rv.Close() })
		revocations = rv
		sources.Relay = func() server.RelayStats {
			rs := n.broker.Stats()
			return server.RelayStats{Published: rs.Published, Received: rs.Received, Reconnects: rs.Reconnects, Rooms: rs.Rooms}
		}
		sources.PresenceEntries = func() int { return n.presence.Stats().Local }
		sources.SlotsHeld = func() int { return n.limiter.Stats().Held }
		sources.MemberStates = func() []string {
			ms := n.membership.Members()
			states := make([]string, len(ms))
			for i, m := range ms {
				states[i] = string(m.State)
			}
			return states
		}
	}
	n.metrics.SetSources(sources)

	srv, err := server.New(server.Config{
		JWTSecret:      []byte(c.JWTSecret),
		AllowedOrigins: c.AllowedOrigins,
		AdminToken:     c.AdminToken,
		APIKey:         c.APIKey,
		DrainDelay:     c.DrainDelay,
		TrustedProxies: c.TrustedProxies,
		MaxTokenTTL:    c.MaxTokenTTL,
		PublicRooms:    c.PublicRooms,
	}, server.Options{
		Hub:         n.hub,
		Limiter:     limiter,
		AddrLimiter: addrLimiter,
		Logger:      n.log,
		Messages:    pager{n.history},
		Checks:      n.checks,
		Stats:       func(ctx context.Context) any { return n.Stats(ctx) },
		Metrics:     n.metrics,
		Revocations: revocations,
	})
	if err != nil {
		return err
	}
	n.srv = srv
	if srv.DevMode() {
		n.log.Warn("DEV MODE: no CHAT_JWT_SECRET set; tokens are signed with a public dev secret and anyone can mint one at POST /api/dev/token. Never run a deployment like this.")
	}
	return nil
}

// Run serves the node until ctx ends or the HTTP server fails, then shuts
// it down within cfg.ShutdownTimeout. It listens on cfg.Addr, starts
// serving, and only then joins the cluster, advertising the HTTP address
// (see Config.HTTPAdvertise). Run is called once; it releases everything
// New built, whatever it returns.
func (n *Node) Run(ctx context.Context) error {
	ln, err := net.Listen("tcp", n.cfg.Addr)
	if err != nil {
		return n.fail(fmt.Errorf("serve: listen: %w", err))
	}
	return n.Serve(ctx, ln)
}

// Serve is Run on a listener of the caller's; it closes ln.
func (n *Node) Serve(ctx context.Context, ln net.Listener) error {
	addr, err := n.advertiseHTTP(ln.Addr())
	if err != nil {
		ln.Close()
		return n.fail(err)
	}
	n.httpAddr.Store(&addr)
	n.log.Info("chatd listening", "addr", ln.Addr().String(), "database", n.db.Dialect(), "cluster", n.membership != nil)
	serveErr := make(chan error, 1)
	go func() { serveErr <- n.srv.Serve(ln) }()

	if n.membership != nil {
		if err := n.membership.Start(ctx); err != nil {
			return n.shutdown(serveErr, err)
		}
		// The node leaves the cluster after its connections are closed
		// (the relay is still up for their last messages), before the
		// persistence queue drains.
		n.add("membership", n.membership.Close)
		n.log.Info("joined the cluster", "http_advertise", addr)
	}
	select {
	case err := <-serveErr:
		serveErr <- err
		return n.shutdown(serveErr, fmt.Errorf("serve: %w", err))
	case <-ctx.Done():
	}
	return n.shutdown(serveErr, nil)
}

// fail releases what New built, for a node that never served: the hub,
// if it was made (the server would have shut it down), then the closers.
func (n *Node) fail(err error) error {
	cctx, cancel := context.WithTimeout(context.Background(), n.cfg.ShutdownTimeout)
	defer cancel()
	if n.hub != nil {
		err = errors.Join(err, n.hub.Shutdown(cctx))
	}
	return errors.Join(err, n.closeAll(cctx))
}

// shutdown stops the HTTP server (whose Serve reports to serveErr), then
// runs the closers, all within cfg.ShutdownTimeout.
func (n *Node) shutdown(serveErr chan error, cause error) error {
	c := &n.cfg
	n.log.Info("shutting down", "timeout", c.ShutdownTimeout.String())
	sctx, cancel := context.WithTimeout(context.Background(), c.ShutdownTimeout)
	defer cancel()
	// The HTTP side (drain delay, requests, sockets) may take the drain
	// delay and half of the rest; the other half is kept for the closers
	// (leaving the cluster, draining the persistence queue), whatever
	// clients do.
	srvWait := c.DrainDelay + max(c.ShutdownTimeout-c.DrainDelay, 0)/2
	srvCtx, srvCancel := context.WithTimeout(sctx, srvWait)
	err := n.srv.Shutdown(srvCtx)
	srvCancel()
	<-serveErr
	err = errors.Join(cause, err, n.closeAll(sctx))
	if err != nil {
		n.log.Error("shutdown incomplete", "err", err)
		return err
	}
	n.log.Info("shutdown complete")
	return nil
}

// advertiseHTTP returns the HTTP address to advertise for the
// listener's address ln: cfg.HTTPAdvertise when set, else ln with an unspecified
// host replaced by the gossip advertise IP.
func (n *Node) advertiseHTTP(ln net.Addr) (string, error) {
	if n.cfg.HTTPAdvertise != "" {
		return n.cfg.HTTPAdvertise, nil
	}
	host, port, err := net.SplitHostPort(ln.String())
	if err != nil {
		return "", err
	}
	if ip := net.ParseIP(host); ip != nil && !ip.IsUnspecified() {
		return ln.String(), nil
	}
	if n.membership == nil {
		return ln.String(), nil
	}
	ip, err := n.membership.AdvertiseIP()
	if err != nil {
		return "", err
	}
	return net.JoinHostPort(ip, port), nil
}

// pager serves the server's history API from the store.
type pager struct{ h *store.History }

func (p pager) Page(ctx context.Context, room string, q server.PageQuery) ([]chat.Message, error) {
	return p.h.Page(ctx, room, store.PageQuery{Before: q.Before, After: q.After, Limit: q.Limit})
}
