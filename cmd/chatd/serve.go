package main

import (
	"context"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/chatd/chatd/cluster"
	"github.com/chatd/chatd/internal/node"
	"github.com/chatd/chatd/server"
	"github.com/chatd/chatd/store"
)

// serveConfig is what `chatd serve` reads from flags and CHAT_* variables.
type serveConfig struct {
	addr, httpAdvertise, secret, nodeName     string
	origins, adminToken                       string
	apiKey                                    string
	maxConns, userBurst, maxBody, maxChannels int
	readLimit, joinBurst                      int
	userRate, joinRate                        float64
	shutdownWait, drainDelay                  time.Duration
	maxTokenTTL                               time.Duration

	dbURL                         string
	migrate                       bool
	queueSize, workers, batchSize int
	batchWait                     time.Duration

	redisURL, redisCluster, clusterAddr, clusterJoin, clusterAdvertise, clusterProfile string
	clusterKey                                                                         []byte // decoded CHAT_CLUSTER_KEY

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
	f.stringVar(&c.httpAdvertise, "http-advertise", "CHAT_HTTP_ADVERTISE", "", "host:port other hosts reach this node's HTTP server at, advertised to the cluster (default: the listen address, an unspecified host replaced by the gossip advertise IP)")
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
	f.stringVar(&c.redisCluster, "redis-cluster", "CHAT_REDIS_CLUSTER", "", "comma list of seed host:port of a Redis Cluster, used instead of CHAT_REDIS_URL")
	f.stringVar(&c.clusterAddr, "cluster-addr", "CHAT_CLUSTER_ADDR", ":7946", "memberlist gossip bind address (with CHAT_REDIS_URL or CHAT_REDIS_CLUSTER)")
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
	// The node checks its configuration; asking it here reports a bad
	// value before anything starts.
	nc := c.nodeConfig()
	if err := nc.Validate(); err != nil {
		return nil, fmt.Errorf("serve: %w", err)
	}
	c.nodeName = nc.NodeName // with its default
	// The public dev secret must not sign tokens for a deployment: with
	// shared services (PostgreSQL, Redis) dev mode is asked for by name.
	if c.secret == "" && !c.devMode && (c.redisURL != "" || c.redisCluster != "" || store.IsPostgresURL(c.dbURL)) {
		return nil, errors.New("serve: no CHAT_JWT_SECRET with PostgreSQL or Redis configured: set CHAT_JWT_SECRET " +
			"(dev mode signs tokens with a public secret), or CHAT_DEV_MODE=true (--dev) to run in dev mode anyway")
	}
	return c, nil
}

// nodeConfig maps the flags onto the node's configuration.
func (c *serveConfig) nodeConfig() node.Config {
	return node.Config{
		NodeName:         c.nodeName,
		Addr:             c.addr,
		HTTPAdvertise:    c.httpAdvertise,
		JWTSecret:        c.secret,
		AllowedOrigins:   splitList(c.origins),
		AdminToken:       c.adminToken,
		APIKey:           c.apiKey,
		PublicRooms:      publicRooms(c.publicRooms),
		TrustedProxies:   splitList(c.trustedProxies),
		MaxTokenTTL:      c.maxTokenTTL,
		MaxConnsPerUser:  c.maxConns,
		MaxConnsPerIP:    c.maxConnsPerIP,
		UserRate:         c.userRate,
		UserBurst:        c.userBurst,
		JoinRate:         c.joinRate,
		JoinBurst:        c.joinBurst,
		MaxBody:          c.maxBody,
		MaxChannels:      c.maxChannels,
		ReadLimit:        c.readLimit,
		ShutdownTimeout:  c.shutdownWait,
		DrainDelay:       c.drainDelay,
		DatabaseURL:      c.dbURL,
		Migrate:          c.migrate,
		PersistQueue:     c.queueSize,
		PersistWorkers:   c.workers,
		PersistBatch:     c.batchSize,
		PersistBatchWait: c.batchWait,
		RedisURL:         c.redisURL,
		RedisCluster:     cluster.ParseSeeds(c.redisCluster),
		ClusterAddr:      c.clusterAddr,
		ClusterJoin:      cluster.ParseSeeds(c.clusterJoin),
		ClusterAdvertise: c.clusterAdvertise,
		ClusterProfile:   c.clusterProfile,
		ClusterKey:       c.clusterKey,
	}
}

func serve(ctx context.Context, args []string, stderr io.Writer) error {
	c, err := parseServe(args, stderr)
	if err != nil {
		return err
	}
	// Signals are caught from here on: a SIGTERM during start-up still
	// shuts down cleanly. Once one came, a second kills the process.
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	context.AfterFunc(ctx, stop)
	log, err := newLogger(stderr, c.logLevel, c.logFormat)
	if err != nil {
		return err
	}
	log = log.With("node", c.nodeName)
	n, err := node.New(ctx, c.nodeConfig(), log)
	if err != nil {
		return err
	}
	return n.Run(ctx)
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
