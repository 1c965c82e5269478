package testsvc_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatd/chatd/internal/testsvc"
)

// TestRedisCluster starts a 3-master cluster, writes keys over every
// master, stops one master and starts it again: the others keep serving
// their slots meanwhile, and it serves its own again, empty, afterwards.
func TestRedisCluster(t *testing.T) {
	c := testsvc.StartRedisCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cl := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs()})
	defer cl.Close()
	byMaster := map[int]string{}
	for i := 0; len(byMaster) < 3 && i < 1000; i++ {
		k := fmt.Sprintf("k%d", i)
		if err := cl.Set(ctx, k, "v", 0).Err(); err != nil {
			t.Fatalf("SET %s: %v", k, err)
		}
		byMaster[c.Master(t, k)] = k
	}
	if len(byMaster) != 3 {
		t.Fatalf("keys spread over %d masters, want 3", len(byMaster))
	}
	c.Stop(t, 1)
	c.WaitFailed(t, 1)
	for m, k := range byMaster {
		err := cl.Get(ctx, k).Err()
		if m == 1 && err == nil {
			t.Errorf("GET %s on the stopped master: no error", k)
		}
		if m != 1 && err != nil {
			t.Errorf("GET %s on master %d while master 1 is down: %v", k, m, err)
		}
	}
	c.Start(t, 1)
	deadline := time.Now().Add(time.Minute)
	for {
		err := cl.Get(ctx, byMaster[1]).Err()
		if err == redis.Nil {
			break // served again, and empty
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s after the master returned: %v, want redis.Nil", byMaster[1], err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
