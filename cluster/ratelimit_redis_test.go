package cluster_test

import (
	"testing"

	"github.com/chatd/chatd/chat"
	"github.com/chatd/chatd/chat/chattest"
	"github.com/chatd/chatd/cluster"
	"github.com/chatd/chatd/internal/testsvc"
)

func TestRedisRateLimiter(t *testing.T) {
	srv := testsvc.StartRedis(t)
	chattest.RunRateLimiterTests(t, func(t *testing.T, _ string) chat.RateLimiter {
		l, err := cluster.NewRedisRateLimiter(cluster.RedisRateLimiterConfig{URL: srv.URL(), Logger: testsvc.Logger(t)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := l.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
		return l
	})
}
