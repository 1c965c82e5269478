package node

import (
	"errors"
	"time"
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
	RedisURL         string
	ClusterAddr      string
	ClusterJoin      []string
	ClusterAdvertise string
	ClusterProfile   string
	ClusterKey       []byte
}

func (c *Config) validate() error {
	if c.ShutdownTimeout <= 0 {
		return errors.New("node: ShutdownTimeout must be positive")
	}
	if c.NodeName == "" {
		c.NodeName = "chatd"
	}
	return nil
}
