package chat

import (
	"fmt"
	"time"
)

// Config holds the hub's settings. The zero value of each field picks the
// default given in its comment; withDefaults fills them in and validates
// the whole.
type Config struct {
	// NodeName names this node in logs and presence. Zero: "local".
	NodeName string
	// MaxBody is the most characters (not bytes) a message body may have.
	// Zero: 4000.
	MaxBody int
	// MaxChannels is the most topics one connection may join. Zero: 100.
	MaxChannels int
	// ReadLimit is the largest frame read, in bytes; a larger one closes the
	// connection with status 1009. Zero: 64 KiB; at least MinReadLimit.
	ReadLimit int64
	// IdleTimeout closes a connection that sent no frame for that long.
	// Zero: 60 s.
	IdleTimeout time.Duration
	// WriteTimeout bounds every write to a connection. Zero: 10 s.
	WriteTimeout time.Duration
	// SendQueueLen is the most frames queued for one connection; a
	// connection that falls further behind is closed as a slow consumer.
	// Zero: 1024.
	SendQueueLen int
	// SendQueueBytes bounds the bytes queued for one connection the same
	// way; one reply to the connection's own join (its history, the room's
	// presence_state) is admitted beyond it. Zero: 4 MiB.
	SendQueueBytes int
	// UserRate is how many messages per second one user may push, across
	// its connections (to every node, with a distributed RateLimiter) and
	// its reconnects. Zero: no rate limit.
	UserRate float64
	// UserBurst is the token bucket's size. Zero: 20.
	UserBurst int
	// JoinRate is how many joins per second one user may make, in a
	// bucket of its own, the same way; a refused join gets rate_limited.
	// Keep it generous: after a relay cut-off every channel rejoins at
	// once. Zero: no join limit.
	JoinRate float64
	// JoinBurst is the join bucket's size. Zero: 100.
	JoinBurst int
	// RelayTimeout bounds one Publish to the broker, and each attempt to
	// settle one whose outcome is unknown. Zero: 5 s.
	RelayTimeout time.Duration
	// ResolveTimeout bounds how long, from the start of its publish, a push
	// whose outcome is unknown (Redis timed out or the connection broke)
	// waits for the room's log to settle it; past it the sender is told
	// "outcome unknown" and the node goes on settling it in the
	// background (an accepted message is then stored). Keep it below
	// clients' push timeout (the phoenix client's is 10 s). Zero: 9 s.
	ResolveTimeout time.Duration
	// PresenceInterval is how long presence changes of a room are collected
	// into one presence_diff. Zero: 100 ms.
	PresenceInterval time.Duration
}

// The defaults of Config, in the order of its fields.
const (
	defaultNodeName         = "local"
	defaultMaxBody          = 4000
	defaultMaxChannels      = 100
	defaultReadLimit        = 64 << 10
	defaultIdleTimeout      = 60 * time.Second
	defaultWriteTimeout     = 10 * time.Second
	defaultSendQueueLen     = 1024
	defaultSendQueueBytes   = 4 << 20
	defaultUserBurst        = 20
	defaultJoinBurst        = 100
	defaultRelayTimeout     = 5 * time.Second
	defaultResolveTimeout   = 9 * time.Second
	defaultPresenceInterval = 100 * time.Millisecond
)

// MinReadLimit is the smallest Config.ReadLimit: a join or a push of a
// short message must fit in a frame.
const MinReadLimit = 1024

// withDefaults returns c with every zero field set to its default, or an
// error naming the first field out of range.
func (c Config) withDefaults() (Config, error) {
	for _, f := range []struct {
		name string
		v    float64
	}{
		{"MaxBody", float64(c.MaxBody)},
		{"MaxChannels", float64(c.MaxChannels)},
		{"ReadLimit", float64(c.ReadLimit)},
		{"IdleTimeout", float64(c.IdleTimeout)},
		{"WriteTimeout", float64(c.WriteTimeout)},
		{"SendQueueLen", float64(c.SendQueueLen)},
		{"SendQueueBytes", float64(c.SendQueueBytes)},
		{"UserRate", c.UserRate},
		{"UserBurst", float64(c.UserBurst)},
		{"JoinRate", c.JoinRate},
		{"JoinBurst", float64(c.JoinBurst)},
		{"RelayTimeout", float64(c.RelayTimeout)},
		{"ResolveTimeout", float64(c.ResolveTimeout)},
		{"PresenceInterval", float64(c.PresenceInterval)},
	} {
		if f.v < 0 || f.v != f.v {
			return c, fmt.Errorf("chat: %s must not be negative (%v)", f.name, f.v)
		}
	}
	if c.ReadLimit != 0 && c.ReadLimit < MinReadLimit {
		return c, fmt.Errorf("chat: ReadLimit %d is below %d bytes", c.ReadLimit, MinReadLimit)
	}
	if c.NodeName == "" {
		c.NodeName = defaultNodeName
	}
	setDefault(&c.MaxBody, defaultMaxBody)
	setDefault(&c.MaxChannels, defaultMaxChannels)
	setDefault(&c.ReadLimit, defaultReadLimit)
	setDefault(&c.IdleTimeout, defaultIdleTimeout)
	setDefault(&c.WriteTimeout, defaultWriteTimeout)
	setDefault(&c.SendQueueLen, defaultSendQueueLen)
	setDefault(&c.SendQueueBytes, defaultSendQueueBytes)
	setDefault(&c.UserBurst, defaultUserBurst)
	setDefault(&c.JoinBurst, defaultJoinBurst)
	setDefault(&c.RelayTimeout, defaultRelayTimeout)
	setDefault(&c.ResolveTimeout, defaultResolveTimeout)
	setDefault(&c.PresenceInterval, defaultPresenceInterval)
	return c, nil
}

func setDefault[T int | int64 | time.Duration](v *T, def T) {
	if *v == 0 {
		*v = def
	}
}
