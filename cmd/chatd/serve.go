package main

import (
	"context"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/chatd/chatd/chat"
	"github.com/chatd/chatd/cluster"
	"github.com/chatd/chatd/server"
	"github.com/chatd/chatd/store"
)

// serveConfig is what `chatd serve` reads from flags and CHAT_* variables.
type serveConfig struct {
	addr, secret, nodeName, origins, adminToken string
	apiKey                                      string
	maxConns, userBurst, maxBody, maxChannels   int
	readLimit, joinBurst                        int
	userRate, joinRate                          float64
	shutdownWait, drainDelay                    time.Duration
	maxTokenTTL                                 time.Duration

	dbURL                         string
	migrate                       bool
	queueSize, workers, batchSize int
	batchWait                     time.Duration

	redisURL, clusterAddr, clusterJoin, clusterAdvertise, clusterProfile string
	clusterKey                                                           []byte // decoded CHAT_CLUSTER_KEY

	maxConnsPerIP int
	devMode       bool

	logLevel, logFormat string
	trustedProxies      string
	publicRooms         string
}

func parseServe(args []string, stderr io.Writer) (*serveConfig, error) {
	fs := flag.NewFlagSet("chatd serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	f := &envFlags{fs: fs}
	hostname, _ := os.Hostname()
	c := &serveConfig{}
	f.stringVar(&c.addr, "addr", "CHAT_ADDR", ":4000", "HTTP listen address")
	f.stringVar(&c.secret, "jwt-secret", "CHAT_JWT_SECRET", "", "HS256 secret of client tokens; empty runs in dev mode")
	f.stringVar(&c.nodeName, "node-name", "CHAT_NODE_NAME", hostname, "this node's name, unique in the cluster")
	f.intVar(&c.maxConns, "max-conns-per-user", "CHAT_MAX_CONNS_PER_USER", 5, "connections one user may hold (0: no limit)")
	f.floatVar(&c.userRate, "user-rate", "CHAT_USER_RATE", 10, "messages per second one user may send (0: no limit)")
	f.intVar(&c.userBurst, "user-burst", "CHAT_USER_BURST", 20, "burst of the per-user rate limit")
	f.floatVar(&c.joinRate, "join-rate", "CHAT_JOIN_RATE", 10, "joins per second one user may make (0: no limit)")
	f.intVar(&c.joinBurst, "join-burst", "CHAT_JOIN_BURST", 100, "burst of the per-user join limit")
	f.intVar(&c.maxBody, "max-body", "CHAT_MAX_BODY", 4000, "most characters in a message body")
	f.intVar(&c.maxChannels, "max-channels", "CHAT_MAX_CHANNELS", 100, "most topics one connection may join")
	f.intVar(&c.readLimit, "read-limit", "CHAT_READ_LIMIT", 64<<10, "largest WebSocket frame read, in bytes")
	f.stringVar(&c.origins, "allowed-origins", "CHAT_ALLOWED_ORIGINS", "", "comma list of browser origin host patterns allowed besides same-origin")
	f.stringVar(&c.adminToken, "admin-token", "CHAT_ADMIN_TOKEN", "", "bearer token of the ops endpoints; empty: loopback clients only")
	f.stringVar(&c.apiKey, "api-key", "CHAT_API_KEY", "", "bearer key of the server API for backends (publish, delete, disconnect); empty: the API is off")
	f.stringVar(&c.publicRooms, "public-rooms", "CHAT_PUBLIC_ROOMS", "*", `comma list of room patterns (a name, or a prefix ending in *) any valid token may join and post in; "none": no room`)
	f.stringVar(&c.trustedProxies, "trusted-proxies", "CHAT_TRUSTED_PROXIES", "", "comma list of CIDRs/IPs of proxies whose X-Forwarded-For/X-Real-IP name the client")
	f.durationVar(&c.maxTokenTTL, "max-token-ttl", "CHAT_MAX_TOKEN_TTL", server.DefaultMaxTokenTTL, "longest lifetime (exp - iat) of a client token accepted; revocations are kept this long plus a minute")
	f.durationVar(&c.shutdownWait, "shutdown-timeout", "CHAT_SHUTDOWN_TIMEOUT", 20*time.Second, "how long shutdown may take")
	f.durationVar(&c.drainDelay, "drain-delay", "CHAT_DRAIN_DELAY", 0, "on shutdown, how long readiness reports 503 before connections are closed")
	f.stringVar(&c.dbURL, "database-url", "CHAT_DATABASE_URL", "chat.db", "a postgres:// URL, else an SQLite file path")
	f.boolVar(&c.migrate, "migrate", "CHAT_MIGRATE", true, "apply pending migrations at start (under a lock on PostgreSQL)")
	f.intVar(&c.queueSize, "persist-queue", "CHAT_PERSIST_QUEUE", 10000, "messages that may wait to be written; a full queue answers overloaded")
	f.intVar(&c.workers, "persist-workers", "CHAT_PERSIST_WORKERS", 4, "goroutines writing batches")
	f.intVar(&c.batchSize, "persist-batch", "CHAT_PERSIST_BATCH", 100, "most messages in one INSERT")
	f.durationVar(&c.batchWait, "persist-batch-wait", "CHAT_PERSIST_BATCH_WAIT", 20*time.Millisecond, "how long a batch waits to fill")
	f.stringVar(&c.redisURL, "redis-url", "CHAT_REDIS_URL", "", "redis:// URL of the relay; empty: a single node with in-memory relay")
	f.stringVar(&c.clusterAddr, "cluster-addr", "CHAT_CLUSTER_ADDR", ":7946", "memberlist gossip bind address (with CHAT_REDIS_URL)")
	f.stringVar(&c.clusterJoin, "cluster-join", "CHAT_CLUSTER_JOIN", "", "comma list of seeds: host:port, or a DNS name such as a headless service")
	f.stringVar(&c.clusterAdvertise, "cluster-advertise", "CHAT_CLUSTER_ADVERTISE", "", "ip or ip:port other nodes reach this node's gossip at (default: picked from the bind address)")
	f.stringVar(&c.clusterProfile, "cluster-profile", "CHAT_CLUSTER_PROFILE", cluster.ProfileLAN, "failure detection timing: lan, wan or local")
	var clusterKey string
	f.stringVar(&clusterKey, "cluster-key", "CHAT_CLUSTER_KEY", "", "base64 of a 16, 24 or 32-byte key encrypting gossip (every node the same; e.g. openssl rand -base64 32); empty: plaintext gossip")
	f.intVar(&c.maxConnsPerIP, "max-conns-per-ip", "CHAT_MAX_CONNS_PER_IP", 0, "connections one client address may hold (0: no limit)")
	f.boolVar(&c.devMode, "dev", "CHAT_DEV_MODE", false, "allow dev mode (no CHAT_JWT_SECRET) with PostgreSQL or Redis")
	f.stringVar(&c.logLevel, "log-level", "CHAT_LOG_LEVEL", "info", "debug, info, warn or error")
	f.stringVar(&c.logFormat, "log-format", "CHAT_LOG_FORMAT", "auto", "json, text, or auto (text on a terminal)")
	if err := f.parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("serve: unexpected arguments %q", fs.Args())
	}
	switch {
	case c.maxConns < 0, c.maxConnsPerIP < 0, c.userRate < 0, c.joinRate < 0:
		return nil, errors.New("serve: max-conns-per-user, max-conns-per-ip, user-rate and join-rate must not be negative")
	case c.userBurst < 1, c.joinBurst < 1, c.maxBody < 1, c.maxChannels < 1:
		return nil, errors.New("serve: user-burst, join-burst, max-body and max-channels must be positive")
	case c.readLimit < 1024:
		return nil, errors.New("serve: read-limit must be at least 1024 bytes")
	case c.shutdownWait <= 0:
		return nil, errors.New("serve: shutdown-timeout must be positive")
	case c.maxTokenTTL <= 0:
		return nil, errors.New("serve: max-token-ttl must be positive")
	}
	if c.nodeName == "" {
		c.nodeName = "chatd"
	}
	if clusterKey != "" {
		key, err := base64.StdEncoding.DecodeString(clusterKey)
		if err != nil {
			return nil, fmt.Errorf("serve: cluster-key: not base64: %w", err)
		}
		if n := len(key); n != 16 && n != 24 && n != 32 {
			return nil, fmt.Errorf("serve: cluster-key: %d bytes, want base64 of 16, 24 or 32 bytes (e.g. openssl rand -base64 32)", n)
		}
		c.clusterKey = key
	}
	// The public dev secret must not sign tokens for a deployment: with
	// shared services (PostgreSQL, Redis) dev mode is asked for by name.
	if c.secret == "" && !c.devMode && (c.redisURL != "" || store.IsPostgresURL(c.dbURL)) {
		return nil, errors.New("serve: no CHAT_JWT_SECRET with PostgreSQL or Redis configured: set CHAT_JWT_SECRET " +
			"(dev mode signs tokens with a public secret), or CHAT_DEV_MODE=true (--dev) to run in dev mode anyway")
	}
	return c, nil
}

// closer is one step of the shutdown, run in order after the HTTP server's.
type closer struct {
	name  string
	close func(ctx context.Context) error
}

func serve(ctx context.Context, args []string, stderr io.Writer) error {
	c, err := parseServe(args, stderr)
	if err != nil {
		return err
	}
	// Signals are caught from here on: a SIGTERM during start-up still
	// shuts down cleanly.
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	log, err := newLogger(stderr, c.logLevel, c.logFormat)
	if err != nil {
		return err
	}
	log = log.With("node", c.nodeName)
	// The node's Prometheus registry (GET /metrics): made first, so that
	// the relay and the writer report into it.
	metrics := server.NewMetrics(c.nodeName)

	// Resources are released in reverse order of creation, after the HTTP
	// server and its connections.
	var closers []closer
	closeAll := func(ctx context.Context) error {
		var errs []error
		for i := len(closers) - 1; i >= 0; i-- {
			if err := closers[i].close(ctx); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", closers[i].name, err))
			}
		}
		return errors.Join(errs...)
	}
	fail := func(err error) error {
		cctx, cancel := context.WithTimeout(context.Background(), c.shutdownWait)
		defer cancel()
		return errors.Join(err, closeAll(cctx))
	}

	db, err := store.Open(ctx, c.dbURL, log)
	if err != nil {
		return err
	}
	closers = append(closers, closer{"database", func(context.Context) error { return db.Close() }})
	if c.migrate {
		if err := db.MigrateUp(ctx); err != nil {
			return fail(err)
		}
	} else if cur, latest, err := db.SchemaVersion(ctx); err != nil {
		return fail(err)
	} else if cur < latest {
		return fail(fmt.Errorf("serve: database schema is at version %d, this chatd needs %d: run chatd migrate up", cur, latest))
	}
	history := store.NewHistory(db)
	checks := []server.Check{{Name: "database", Check: db.Ping}}

	var broker chat.Broker = chat.NewMemoryBroker()
	var redisBroker *cluster.RedisBroker
	if c.redisURL != "" {
		redisBroker, err = cluster.NewRedisBroker(cluster.RedisBrokerConfig{
			URL:      c.redisURL,
			NodeName: c.nodeName,
			Logger:   log,
		})
		if err != nil {
			return fail(err)
		}
		broker = redisBroker
	}
	broker = metrics.InstrumentBroker(broker)

	// Presence and connection slots are cluster-wide with Redis. They are
	// closed after the connections, whose leaves they record.
	var presence chat.Presence
	var redisPresence *cluster.RedisPresence
	if c.redisURL != "" {
		redisPresence, err = cluster.NewRedisPresence(cluster.RedisPresenceConfig{
			URL:      c.redisURL,
			NodeName: c.nodeName,
			Logger:   log,
		})
		if err != nil {
			return fail(err)
		}
		closers = append(closers, closer{"presence", func(context.Context) error { return redisPresence.Close() }})
		presence = redisPresence
	}

	// The per-user message and join buckets are cluster-wide with Redis,
	// so that neither reconnecting nor switching nodes resets them.
	var rateLimiter chat.RateLimiter
	if c.redisURL != "" {
		redisRates, err := cluster.NewRedisRateLimiter(cluster.RedisRateLimiterConfig{URL: c.redisURL, Logger: log})
		if err != nil {
			return fail(err)
		}
		closers = append(closers, closer{"rate limits", func(context.Context) error { return redisRates.Close() }})
		rateLimiter = redisRates
	}

	// The writer is closed after the hub's connections, so that every
	// accepted message is drained; it is registered before the broker so
	// that it closes after the relay.
	writer, err := store.NewWriter(db, store.WriterConfig{
		QueueSize: c.queueSize,
		Workers:   c.workers,
		BatchSize: c.batchSize,
		BatchWait: c.batchWait,
	}, log)
	if err != nil {
		return fail(err)
	}
	closers = append(closers, closer{"persistence queue", writer.Close})
	writer.OnBatch(metrics.ObserveBatch)

	hub, err := chat.NewHub(chat.Config{
		NodeName:    c.nodeName,
		MaxBody:     c.maxBody,
		MaxChannels: c.maxChannels,
		ReadLimit:   int64(c.readLimit),
		UserRate:    c.userRate,
		UserBurst:   c.userBurst,
		JoinRate:    c.joinRate,
		JoinBurst:   c.joinBurst,
	}, chat.Options{Logger: log, Sink: writer, History: history, Broker: broker, Presence: presence, RateLimiter: rateLimiter})
	if err != nil {
		return fail(err)
	}

	var membership *cluster.Membership
	var limiter chat.ConnLimiter = chat.NewMemoryConnLimiter(c.maxConns)
	// Connections per client address: a limiter of its own (its own Max),
	// cluster-wide with Redis under a key space of its own.
	var addrLimiter chat.ConnLimiter
	var redisAddrLimiter *cluster.RedisConnLimiter
	if c.maxConnsPerIP > 0 {
		addrLimiter = chat.NewMemoryConnLimiter(c.maxConnsPerIP)
	}
	if redisBroker != nil {
		// Closed after the connections, before the persistence queue.
		closers = append(closers, closer{"redis relay", func(context.Context) error { return redisBroker.Close() }})
		// What this node accepted before a crash and had not stored yet
		// is in the room logs: store it before serving.
		tctx, cancel := context.WithTimeout(ctx, c.shutdownWait)
		takeOver(tctx, redisBroker, writer, log, c.nodeName)
		cancel()
		checks = append(checks, server.Check{Name: "redis", Check: redisBroker.Ping})
		redisLimiter, err := cluster.NewRedisConnLimiter(cluster.RedisConnLimiterConfig{
			URL: c.redisURL, NodeName: c.nodeName, Max: c.maxConns, Logger: log,
		})
		if err != nil {
			return fail(err)
		}
		if err := redisLimiter.Run(); err != nil {
			return fail(err)
		}
		closers = append(closers, closer{"connection limits", func(context.Context) error { return redisLimiter.Close() }})
		limiter = redisLimiter
		if c.maxConnsPerIP > 0 {
			redisAddrLimiter, err = cluster.NewRedisConnLimiter(cluster.RedisConnLimiterConfig{
				URL: c.redisURL, Prefix: "chatd:ip", NodeName: c.nodeName, Max: c.maxConnsPerIP, Logger: log,
			})
			if err != nil {
				return fail(err)
			}
			if err := redisAddrLimiter.Run(); err != nil {
				return fail(err)
			}
			closers = append(closers, closer{"address connection limits", func(context.Context) error { return redisAddrLimiter.Close() }})
			addrLimiter = redisAddrLimiter
		}

		membership, err = cluster.NewMembership(cluster.MembershipConfig{
			NodeName:      c.nodeName,
			BindAddr:      c.clusterAddr,
			AdvertiseAddr: c.clusterAdvertise,
			Join:          cluster.ParseSeeds(c.clusterJoin),
			Profile:       c.clusterProfile,
			SecretKey:     c.clusterKey,
			Logger:        log,
			Meta: func() cluster.NodeMeta {
				st := hub.Stats()
				return cluster.NodeMeta{HTTPAddr: c.addr, Connections: int(st.Connections), Users: st.Users, Rooms: st.Rooms,
					MessagesIn: st.MessagesIn, QueueDepth: writer.Stats().QueueDepth}
			},
		})
		if err != nil {
			return fail(err)
		}
		if c.clusterKey == nil {
			log.Warn("gossip is not encrypted: anyone who reaches CHAT_CLUSTER_ADDR can add members or declare nodes dead; set CHAT_CLUSTER_KEY")
		}
		// A node declared dead leaves its presence, connection slots and
		// unstored messages behind: every survivor frees the first two
		// (idempotently; the leaves are broadcast once) and stores the
		// messages from the room logs (idempotently too).
		bg := newTasks()
		closers = append(closers, closer{"background tasks", bg.close})
		membership.OnLeave(func(m cluster.Member) {
			if m.State != cluster.MemberDead {
				return
			}
			bg.goTask(func(ctx context.Context) {
				takeOver(ctx, redisBroker, writer, log, m.Name)
			})
			bg.goTask(func(ctx context.Context) {
				ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				defer cancel()
				removed, err := redisPresence.RemoveNode(ctx, m.Name)
				if err != nil {
					log.Warn("presence of a dead node not removed", "dead_node", m.Name, "err", err)
				}
				for room, entries := range removed {
					hub.PresenceLeft(room, entries)
				}
				n, err := redisLimiter.ReleaseNode(ctx, m.Name)
				if err != nil {
					log.Warn("connection slots of a dead node not freed", "dead_node", m.Name, "err", err)
				}
				if redisAddrLimiter != nil {
					k, err := redisAddrLimiter.ReleaseNode(ctx, m.Name)
					if err != nil {
						log.Warn("address connection slots of a dead node not freed", "dead_node", m.Name, "err", err)
					}
					n += k
				}
				log.Info("freed what a dead node held", "dead_node", m.Name, "presence_rooms", len(removed), "slots", n)
			})
		})
	} else {
		log.Info("single node: no CHAT_REDIS_URL, relay and presence are in memory")
	}

	// Revoked tokens are refused on every node: with Redis, the
	// revocations live there for as long as a revoked token can; on a
	// single node, the server keeps them in memory.
	var revocations chat.Revocations
	if c.redisURL != "" {
		redisRevocations, err := cluster.NewRedisRevocations(cluster.RedisRevocationsConfig{
			URL: c.redisURL, TTL: server.RevocationTTL(c.maxTokenTTL), Logger: log,
		})
		if err != nil {
			return fail(err)
		}
		closers = append(closers, closer{"revocations", func(context.Context) error { return redisRevocations.Close() }})
		revocations = redisRevocations
	}

	sources := server.MetricsSources{Writer: writer.Stats}
	if redisBroker != nil {
		sources.Relay = redisBroker.Stats
		sources.PresenceEntries = func() int { return redisPresence.Stats().Local }
		if rl, ok := limiter.(*cluster.RedisConnLimiter); ok {
			sources.Limiter = rl.Stats
		}
	}
	if membership != nil {
		sources.Members = membership.Members
	}
	metrics.SetSources(sources)

	srv, err := server.New(server.Config{
		JWTSecret:      []byte(c.secret),
		AllowedOrigins: splitList(c.origins),
		AdminToken:     c.adminToken,
		APIKey:         c.apiKey,
		DrainDelay:     c.drainDelay,
		TrustedProxies: splitList(c.trustedProxies),
		MaxTokenTTL:    c.maxTokenTTL,
		PublicRooms:    publicRooms(c.publicRooms),
	}, server.Options{
		Hub:         hub,
		Limiter:     limiter,
		AddrLimiter: addrLimiter,
		Logger:      log,
		Messages:    history,
		Checks:      checks,
		Stats:       statsFunc(c.nodeName, hub, writer, membership, redisBroker, checks),
		Metrics:     metrics,

		Revocations: revocations,
	})
	if err != nil {
		return fail(err)
	}
	if srv.DevMode() {
		log.Warn("DEV MODE: no CHAT_JWT_SECRET set; tokens are signed with a public dev secret and anyone can mint one at POST /api/dev/token. Never run a deployment like this.")
	}

	ln, err := net.Listen("tcp", c.addr)
	if err != nil {
		return fail(fmt.Errorf("serve: listen: %w", err))
	}
	if membership != nil {
		if err := membership.Start(ctx); err != nil {
			ln.Close()
			return fail(err)
		}
		// The node leaves the cluster after its connections are closed
		// (the relay is still up for their last messages), before the
		// persistence queue drains.
		closers = append(closers, closer{"membership", membership.Close})
	}
	log.Info("chatd listening", "addr", ln.Addr().String(), "database", db.Dialect(), "cluster", membership != nil)

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()

	select {
	case err := <-serveErr:
		return fail(fmt.Errorf("serve: %w", err))
	case <-ctx.Done():
	}
	stop() // a second signal kills the process
	log.Info("shutting down", "timeout", c.shutdownWait.String())
	sctx, cancel := context.WithTimeout(context.Background(), c.shutdownWait)
	defer cancel()
	// The HTTP side (drain delay, requests, sockets) may take the drain
	// delay and half of the rest; the other half is kept for the closers
	// (leaving the cluster, draining the persistence queue), whatever
	// clients do.
	srvWait := c.drainDelay + max(c.shutdownWait-c.drainDelay, 0)/2
	srvCtx, srvCancel := context.WithTimeout(sctx, srvWait)
	err = srv.Shutdown(srvCtx)
	srvCancel()
	<-serveErr
	err = errors.Join(err, closeAll(sctx))
	if err != nil {
		log.Error("shutdown incomplete", "err", err)
		return err
	}
	log.Info("shutdown complete")
	return nil
}

// statsFunc builds the /api/stats document from what this node knows: the
// cluster as memberlist gossips it (every node's metadata, refreshed every
// 2 s), the local hub and queue, and the status of this node's
// dependencies (checks, each bounded by 1 s).
//
// Totals add up the alive nodes' figures: "users" and "rooms" are sums of
// per-node distinct counts, so a user connected to two nodes (or a room
// with members on two nodes) counts once per node.
func statsFunc(node string, hub *chat.Hub, writer *store.Writer, ms *cluster.Membership, rb *cluster.RedisBroker, checks []server.Check) func(context.Context) any {
	return func(ctx context.Context) any {
		st := hub.Stats()
		ws := writer.Stats()
		type nodeStats struct {
			Name        string `json:"name"`
			Address     string `json:"address"`
			HTTPAddr    string `json:"http_addr,omitempty"`
			State       string `json:"state"`
			Connections int    `json:"connections"`
			Users       int    `json:"users"`
			Rooms       int    `json:"rooms"`
			MessagesIn  int64  `json:"messages_in"`
			QueueDepth  int    `json:"queue_depth"`
			Local       bool   `json:"local,omitempty"`
		}
		var nodes []nodeStats
		totals := map[string]int64{"nodes": 0, "nodes_alive": 0, "connections": 0, "users": 0, "rooms": 0, "messages_in": 0, "queue_depth": 0}
		if ms == nil {
			nodes = append(nodes, nodeStats{Name: node, State: "alive", Connections: int(st.Connections), Users: st.Users, Rooms: st.Rooms,
				MessagesIn: st.MessagesIn, QueueDepth: ws.QueueDepth, Local: true})
		} else {
			for _, m := range ms.Members() {
				n := nodeStats{Name: m.Name, Address: m.Addr, HTTPAddr: m.Meta.HTTPAddr, State: string(m.State),
					Connections: m.Meta.Connections, Users: m.Meta.Users, Rooms: m.Meta.Rooms,
					MessagesIn: m.Meta.MessagesIn, QueueDepth: m.Meta.QueueDepth, Local: m.Local}
				if m.Local { // fresher than the gossiped copy
					n.Connections, n.Users, n.Rooms = int(st.Connections), st.Users, st.Rooms
					n.MessagesIn, n.QueueDepth = st.MessagesIn, ws.QueueDepth
				}
				nodes = append(nodes, n)
			}
		}
		for _, n := range nodes {
			totals["nodes"]++
			if n.State == string(cluster.MemberAlive) {
				totals["nodes_alive"]++
				totals["connections"] += int64(n.Connections)
				totals["users"] += int64(n.Users)
				totals["rooms"] += int64(n.Rooms)
				totals["messages_in"] += n.MessagesIn
				totals["queue_depth"] += int64(n.QueueDepth)
			}
		}
		deps := make(map[string]string, len(checks))
		for _, c := range checks {
			cctx, cancel := context.WithTimeout(ctx, time.Second)
			if err := c.Check(cctx); err != nil {
				deps[c.Name] = "unavailable: " + err.Error()
			} else {
				deps[c.Name] = "ok"
			}
			cancel()
		}
		doc := map[string]any{
			"node":         node,
			"nodes":        nodes,
			"totals":       totals,
			"dependencies": deps,
			"local": map[string]any{
				"connections": st.Connections, "users": st.Users, "rooms": st.Rooms, "connects": st.Connects,
				"messages_in": st.MessagesIn, "deliveries": st.Deliveries, "slow_consumers": st.SlowConsumers,
				"refused": st.Refused, "dropped": st.Dropped,
			},
			"persistence": map[string]any{
				"queue_depth":    ws.QueueDepth,
				"queue_capacity": ws.QueueCapacity,
				"pending":        ws.Pending(),
				"lag_seconds":    ws.Lag.Seconds(),
				"written":        ws.Written,
				"batches":        ws.Batches,
				"retries":        ws.Retries,
				"failures":       ws.Failures,
				"rejected":       ws.Rejected,
			},
		}
		if rb != nil {
			doc["relay"] = rb.Stats()
		}
		return doc
	}
}

// publicRooms maps --public-rooms onto server.Config.PublicRooms: "none"
// (or an empty flag) is no public room, which the server's nil would not
// say.
func publicRooms(v string) []string {
	if strings.TrimSpace(v) == "none" {
		return []string{}
	}
	list := splitList(v)
	if list == nil {
		return []string{}
	}
	return list
}
