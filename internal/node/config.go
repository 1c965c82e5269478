package node

import (
	"errors"
	"fmt"
	"time"

	"github.com/chatd/chatd/chat"
)

// Config is everything a node is built from: cmd/chatd maps its flags and
// CHAT_* variables onto it one to one. Fields have no defaults of their
// own here: the zero value of a limit means what it means to the package
// that applies it (see chat.Config, server.Config, store.WriterConfig).
type Config struct {
	// NodeName is this node's name, unique in the cluster. Empty: "chatd".
	NodeName string

	// Addr is the HTTP listen address (CHAT_ADDR).
	Addr string
	// HTTPAdvertise is the HTTP address this node advertises to the
	// cluster (memberlist metadata, /api/stats nodes[].http_addr): one
	// other hosts can reach. Empty: the listener's address, with an
	// unspecified host (":4000", "0.0.0.0") replaced by the gossip
	// advertise IP.
	HTTPAdvertise string

	// JWTSecret signs client tokens; empty runs in dev mode.
	JWTSecret      string
	AllowedOrigins []string
	AdminToken     string
	APIKey         string
	// PublicRooms are the room patterns any valid token may use; an empty
	// non-nil slice is no room (see server.Config.PublicRooms).
	PublicRooms    []string
	TrustedProxies []string
	MaxTokenTTL    time.Duration

	MaxConnsPerUser int
	MaxConnsPerIP   int
	UserRate        float64
	UserBurst       int
	JoinRate        float64
	JoinBurst       int
	MaxBody         int
	MaxChannels     int
	ReadLimit       int

	// ShutdownTimeout bounds the whole shutdown; DrainDelay is how long
	// readiness answers 503 before sockets are closed.
	ShutdownTimeout time.Duration
	DrainDelay      time.Duration

	// DatabaseURL is a postgres:// URL or an SQLite file path.
	DatabaseURL      string
	Migrate          bool
	PersistQueue     int
	PersistWorkers   int
	PersistBatch     int
	PersistBatchWait time.Duration

	// RedisURL makes the node a cluster node; empty: a single node.
	RedisURL string
	// RedisCluster, the seed addresses (host:port) of a Redis Cluster,
	// makes the node a cluster node relaying through that Redis Cluster
	// instead of one Redis server; it excludes RedisURL.
	RedisCluster     []string
	ClusterAddr      string
	ClusterJoin      []string
	ClusterAdvertise string
	ClusterProfile   string
	ClusterKey       []byte
}

// Validate checks the whole configuration, in one place (New calls it): the limits a
// node is given are explicit (cmd/chatd's flags have defaults), so a zero
// burst, body or channel limit is refused here rather than replaced by
// the default of the package that applies it.
func (c *Config) Validate() error {
	switch {
	case c.MaxConnsPerUser < 0, c.MaxConnsPerIP < 0, c.UserRate < 0, c.JoinRate < 0:
		return errors.New("node: max-conns-per-user, max-conns-per-ip, user-rate and join-rate must not be negative")
	case c.UserBurst < 1, c.JoinBurst < 1, c.MaxBody < 1, c.MaxChannels < 1:
		return errors.New("node: user-burst, join-burst, max-body and max-channels must be positive")
	case c.ReadLimit < chat.MinReadLimit:
		return fmt.Errorf("node: read-limit must be at least %d bytes", chat.MinReadLimit)
	case c.ShutdownTimeout <= 0:
		return errors.New("node: shutdown-timeout must be positive")
	case c.MaxTokenTTL <= 0:
		return errors.New("node: max-token-ttl must be positive")
	case c.RedisURL != "" && len(c.RedisCluster) > 0:
		return errors.New("node: redis-url and redis-cluster exclude each other: give one")
	}
	if c.NodeName == "" {
		c.NodeName = "chatd"
	}
	return nil
}
