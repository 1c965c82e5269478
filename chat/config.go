package chat

import (
	"errors"
	"time"
)

// Config holds the hub's settings. The zero value of each field picks the
// default given in its comment.
type Config struct {
	// NodeName names this node in logs and presence. Zero: "local".
	NodeName string
	// MaxBody is the most characters (not bytes) a message body may have.
	// Zero: 4000.
	MaxBody int
	// MaxChannels is the most topics one connection may join. Zero: 100.
	MaxChannels int
	// ReadLimit is the largest frame read, in bytes; a larger one closes the
	// connection with status 1009. Zero: 64 KiB.
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

func (c *Config) setDefaults() error {
	if c.NodeName == "" {
		c.NodeName = "local"
	}
	if c.MaxBody == 0 {
		c.MaxBody = 4000
	}
	if c.MaxChannels == 0 {
		c.MaxChannels = 100
	}
	if c.ReadLimit == 0 {
		c.ReadLimit = 64 << 10
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = 60 * time.Second
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = 10 * time.Second
	}
	if c.SendQueueLen == 0 {
		c.SendQueueLen = 1024
	}
	if c.SendQueueBytes == 0 {
		c.SendQueueBytes = 4 << 20
	}
	if c.UserBurst == 0 {
		c.UserBurst = 20
	}
	if c.JoinBurst == 0 {
		c.JoinBurst = 100
	}
	if c.RelayTimeout == 0 {
		c.RelayTimeout = 5 * time.Second
	}
	if c.ResolveTimeout == 0 {
		c.ResolveTimeout = 9 * time.Second
	}
	if c.PresenceInterval == 0 {
		c.PresenceInterval = 100 * time.Millisecond
	}
	switch {
	case c.MaxBody < 0, c.MaxChannels < 0, c.ReadLimit < 0, c.SendQueueLen < 0, c.SendQueueBytes < 0, c.UserBurst < 0, c.JoinBurst < 0:
		return errors.New("chat: limits must not be negative")
	case c.UserRate < 0, c.JoinRate < 0:
		return errors.New("chat: user and join rates must not be negative")
	case c.IdleTimeout < 0, c.WriteTimeout < 0, c.RelayTimeout < 0, c.ResolveTimeout < 0, c.PresenceInterval < 0:
		return errors.New("chat: timeouts must not be negative")
	}
	return nil
}
