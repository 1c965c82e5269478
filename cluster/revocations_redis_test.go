package cluster_test

import (
	"testing"
	"time"

	"github.com/chatd/chatd/chat"
	"github.com/chatd/chatd/chat/chattest"
	"github.com/chatd/chatd/cluster"
	"github.com/chatd/chatd/internal/testsvc"
)

func TestRedisRevocations(t *testing.T) {
	srv := testsvc.StartRedis(t)
	chattest.RunRevocationsTests(t, func(t *testing.T, _ string, ttl time.Duration) chat.Revocations {
		r, err := cluster.NewRedisRevocations(cluster.RedisRevocationsConfig{URL: srv.URL(), TTL: ttl, Logger: testsvc.Logger(t)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := r.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
		return r
	})
}
