package server

import (
	"testing"
	"time"

	"github.com/chatd/chatd/chat"
	"github.com/chatd/chatd/cluster"
	"github.com/chatd/chatd/internal/testsvc"
)

// pushOutcomes pushes n messages on room and returns how many were
// accepted; the others must be refused with rate_limited.
func (c *client) pushOutcomes(joinRef, room string, n int) int {
	c.tb.Helper()
	ok := 0
	for range n {
		ref := c.send(joinRef, "room:"+room, chat.EventNewMsg, map[string]string{"body": "hi"})
		r := c.expectReply("room:"+room, ref, "")
		c.pending = c.pending[:0]
		switch {
		case r.Status == "ok":
			ok++
		case string(r.Response) == `{"reason":"rate_limited"}`:
		default:
			c.tb.Fatalf("%s: push answered %s %s", c.user, r.Status, r.Response)
		}
	}
	return ok
}

// A single node keeps a user's buckets after the last connection closes:
// reconnecting does not refill them (issue 13, item 13), and joins have a
// bucket of their own.
func TestRateLimitSurvivesReconnect(t *testing.T) {
	s := startServer(t, chat.Config{UserRate: 0.01, UserBurst: 3, JoinRate: 0.01, JoinBurst: 4}, nil)
	accepted := 0
	for range 3 {
		c := s.dial(t, "alice")
		accepted += c.pushOutcomes(c.join("lobby"), "lobby", 4)
		c.conn.CloseNow()
		waitFor(t, func() bool { return s.hub.Stats().Users == 0 })
	}
	if accepted != 3 {
		t.Fatalf("%d messages accepted over 3 connections, want the burst of 3", accepted)
	}
	// Three joins were taken above; one is left.
	c := s.dial(t, "alice")
	c.join("other")
	ref := c.send("", "room:third", chat.EventJoin, map[string]any{})
	c.expectError("room:third", ref, "rate_limited")
	// Another user has buckets of its own.
	b := s.dial(t, "bob")
	if n := b.pushOutcomes(b.join("lobby"), "lobby", 1); n != 1 {
		t.Fatal("bob was limited by alice's buckets")
	}
}

// When Redis does not answer a rate check, chat goes on, limited by the
// node's own buckets, and Redis's buckets count again once it is back.
func TestRateLimitFallsBackWhenRedisStalls(t *testing.T) {
	redis := testsvc.StartRedis(t)
	rl, err := cluster.NewRedisRateLimiter(cluster.RedisRateLimiterConfig{URL: redis.URL()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rl.Close() })
	s := startServerWith(t, chat.Config{UserRate: 0.01, UserBurst: 3}, chat.Options{RateLimiter: rl}, nil)
	c := s.dial(t, "alice")
	j := c.join("lobby")
	if n := c.pushOutcomes(j, "lobby", 4); n != 3 {
		t.Fatalf("%d of 4 accepted with Redis up, want 3", n)
	}
	redis.Freeze(t)
	start := time.Now()
	n := c.pushOutcomes(j, "lobby", 4)
	took := time.Since(start)
	redis.Thaw(t)
	if n != 3 {
		t.Fatalf("%d of 4 accepted while Redis was stalled, want the local burst of 3", n)
	}
	t.Logf("Redis stalled: 4 pushes answered in %s, %d accepted by the node's own bucket", took.Round(time.Millisecond), n)
	if n := c.pushOutcomes(j, "lobby", 1); n != 0 {
		t.Fatal("accepted after Redis came back, though its bucket is empty")
	}
}
