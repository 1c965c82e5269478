package chat_test

import (
	"sync"
	"testing"

	"github.com/chatd/chatd/chat"
	"github.com/chatd/chatd/chat/chattest"
)

// The memory limiter is single-node: one instance per limit serves every
// node name, so the cross-node properties (the race across nodes included)
// are checked against one shared instance.
func TestMemoryConnLimiterConformance(t *testing.T) {
	var mu sync.Mutex
	byMax := make(map[int]*chat.MemoryConnLimiter)
	chattest.RunConnLimiterTests(t, func(_ *testing.T, _ string, max int) chat.ConnLimiter {
		mu.Lock()
		defer mu.Unlock()
		l := byMax[max]
		if l == nil {
			l = chat.NewMemoryConnLimiter(max)
			byMax[max] = l
		}
		return l
	})
}
