package chat_test

import (
	"testing"

	"github.com/chatd/chatd/chat"
	"github.com/chatd/chatd/chat/chattest"
)

// The memory limiter is single-node: one instance serves every node name.
func TestMemoryRateLimiterConformance(t *testing.T) {
	l := chat.NewMemoryRateLimiter()
	chattest.RunRateLimiterTests(t, func(*testing.T, string) chat.RateLimiter { return l })
}
