package testsvc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisCliEnv names an environment variable that, when set, is the path of
// the redis-cli binary. Without it redis-cli is looked up beside
// redis-server, then in $PATH.
const RedisCliEnv = "CHATD_REDIS_CLI"

// clusterBusOffset is how far above its client port a Redis Cluster node
// listens for the cluster bus.
const clusterBusOffset = 10000

// RedisCluster is a throwaway Redis Cluster of masters without replicas on
// loopback ports, with no persistence: a master that is stopped and started
// again rejoins with the slots it had (its nodes.conf is kept) but without
// its keys, like a crashed cache. Every node runs with
// cluster-require-full-coverage off, so the cluster keeps serving the
// slots of the masters that are up. Stop and Start must not race each
// other.
type RedisCluster struct {
	nodes []*Redis
	holds []*portHold // a stopped master's cluster bus port
}

// StartRedisCluster starts a Redis Cluster of masters masters on loopback,
// assigns every slot, and waits until every node reports the cluster ok.
// It is stopped and its directories removed when t ends. Any failure is
// fatal to t.
func StartRedisCluster(t testing.TB, masters int) *RedisCluster {
	t.Helper()
	c, err := NewRedisCluster(masters)
	if err != nil {
		t.Fatalf("testsvc: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("testsvc: %v", err)
		}
	})
	return c
}

// NewRedisCluster is StartRedisCluster for callers without a testing.TB
// (TestMain): the caller must call Close.
func NewRedisCluster(masters int) (*RedisCluster, error) {
	if masters < 3 {
		return nil, errors.New("redis cluster: Redis Cluster needs at least 3 masters")
	}
	bin, err := redisServerBinary()
	if err != nil {
		return nil, err
	}
	cli, err := redisCliBinary(bin)
	if err != nil {
		return nil, err
	}
	c := &RedisCluster{holds: make([]*portHold, masters)}
	fail := func(err error) (*RedisCluster, error) {
		c.Close()
		return nil, err
	}
	for range masters {
		n, err := c.startNode(bin)
		if err != nil {
			return fail(err)
		}
		c.nodes = append(c.nodes, n)
	}
	args := []string{"--cluster", "create"}
	args = append(args, c.Addrs()...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput(); err != nil {
		return fail(fmt.Errorf("redis cluster: redis-cli --cluster create: %v\n%s", err, out))
	}
	if err := c.waitOK(ctx, nil); err != nil {
		return fail(err)
	}
	return c, nil
}

// startNode starts one cluster node on a port whose bus port is free too.
func (c *RedisCluster) startNode(bin string) (*Redis, error) {
	r := &Redis{bin: bin}
	var err error
	if r.dir, err = os.MkdirTemp("", "chatd-redis-cluster-"); err != nil {
		return nil, fmt.Errorf("redis cluster: %w", err)
	}
	r.logPath = r.dir + "/redis.log"
	r.extra = []string{
		"--cluster-enabled", "yes",
		"--cluster-config-file", "nodes.conf",
		// A dead master is marked failed within a second or two.
		"--cluster-node-timeout", "1000",
		// One dead master must not stop the others' slots.
		"--cluster-require-full-coverage", "no",
		"--cluster-allow-reads-when-down", "no",
	}
	var startErr error
	for range 10 {
		if r.port, err = freeClusterPort(); err != nil {
			os.RemoveAll(r.dir)
			return nil, fmt.Errorf("redis cluster: %w", err)
		}
		if startErr = r.start(); startErr == nil {
			return r, nil
		}
		if !strings.Contains(startErr.Error(), "in use") {
			break
		}
	}
	os.RemoveAll(r.dir)
	return nil, fmt.Errorf("redis cluster: %w", startErr)
}

// freeClusterPort returns a free loopback port below 55536 whose cluster
// bus port (port+10000) is free too.
func freeClusterPort() (int, error) {
	for range 100 {
		p, err := freePort()
		if err != nil {
			return 0, err
		}
		if p+clusterBusOffset > 65535 {
			continue
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p+clusterBusOffset)))
		if err != nil {
			continue
		}
		l.Close()
		return p, nil
	}
	return 0, errors.New("no free port with a free cluster bus port")
}

// Addrs returns the masters' host:port, in the order Stop and Start
// number them. Any of them seeds a cluster client.
func (c *RedisCluster) Addrs() []string {
	out := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		out[i] = n.Addr()
	}
	return out
}

// Seeds returns Addrs joined by commas, as CHAT_REDIS_CLUSTER takes them.
func (c *RedisCluster) Seeds() string { return strings.Join(c.Addrs(), ",") }

// Stop kills master i with SIGKILL, a crash: its keys are gone, and its
// slots unserved until Start. Its ports are kept for Start.
func (c *RedisCluster) Stop(t testing.TB, i int) {
	t.Helper()
	n := c.nodes[i]
	n.Stop(t)
	hold, err := holdPort(n.port + clusterBusOffset)
	if err != nil {
		t.Fatalf("testsvc: redis cluster: %v", err)
	}
	c.holds[i] = hold
}

// Start starts stopped master i again on its ports, with its nodes.conf
// (so it serves the slots it had, empty), and waits until every node
// reports the cluster ok again.
func (c *RedisCluster) Start(t testing.TB, i int) {
	t.Helper()
	c.holds[i].release()
	c.holds[i] = nil
	c.nodes[i].Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.waitOK(ctx, nil); err != nil {
		t.Fatalf("testsvc: %v", err)
	}
}

// WaitFailed waits until every master but i reports master i failed (and
// the cluster still ok for the slots it serves): what the cluster's
// clients see once a master is declared gone.
func (c *RedisCluster) WaitFailed(t testing.TB, i int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	id := ""
	for j, n := range c.nodes {
		if j == i {
			continue
		}
		for {
			out, err := c.command(ctx, n, "CLUSTER", "NODES")
			if err == nil {
				failed := false
				for _, line := range strings.Split(out, "\n") {
					f := strings.Fields(line)
					if len(f) > 2 && strings.HasPrefix(f[1], c.nodes[i].Addr()+"@") {
						id = f[0]
						failed = strings.Contains(f[2], "fail") && !strings.Contains(f[2], "fail?")
					}
				}
				if failed {
					break
				}
			}
			select {
			case <-ctx.Done():
				t.Fatalf("testsvc: redis cluster: master %s (%s) not failed on %s after a minute: %v", c.nodes[i].Addr(), id, n.Addr(), err)
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
}

// Master returns the index of the master that serves key's slot.
func (c *RedisCluster) Master(t testing.TB, key string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, n := range c.nodes {
		if n.ping() != nil {
			continue
		}
		cl := redis.NewClient(&redis.Options{Addr: n.Addr()})
		slot, err := cl.ClusterKeySlot(ctx, key).Result()
		if err != nil {
			cl.Close()
			t.Fatalf("testsvc: redis cluster: CLUSTER KEYSLOT %s: %v", key, err)
		}
		slots, err := cl.ClusterSlots(ctx).Result()
		cl.Close()
		if err != nil {
			t.Fatalf("testsvc: redis cluster: CLUSTER SLOTS: %v", err)
		}
		for _, s := range slots {
			if int64(s.Start) <= slot && slot <= int64(s.End) && len(s.Nodes) > 0 {
				for i, m := range c.nodes {
					if m.Addr() == s.Nodes[0].Addr {
						return i
					}
				}
			}
		}
		t.Fatalf("testsvc: redis cluster: no master serves slot %d of %s", slot, key)
	}
	t.Fatalf("testsvc: redis cluster: no master answers")
	return -1
}

// MoveSlot migrates the hash slot of key, with its keys, to master to, as
// resharding does (IMPORTING/MIGRATING, MIGRATE, SETSLOT NODE on every
// master), and returns the master it was on.
func (c *RedisCluster) MoveSlot(t testing.TB, key string, to int) int {
	t.Helper()
	from := c.Master(t, key)
	if from == to {
		t.Fatalf("testsvc: redis cluster: %s is on master %d already", key, to)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	must := func(n *Redis, args ...any) string {
		t.Helper()
		out, err := c.command(ctx, n, args...)
		if err != nil {
			t.Fatalf("testsvc: redis cluster: %v on %s: %v", args, n.Addr(), err)
		}
		return out
	}
	src, dst := c.nodes[from], c.nodes[to]
	slot := must(src, "CLUSTER", "KEYSLOT", key)
	srcID, dstID := must(src, "CLUSTER", "MYID"), must(dst, "CLUSTER", "MYID")
	must(dst, "CLUSTER", "SETSLOT", slot, "IMPORTING", srcID)
	must(src, "CLUSTER", "SETSLOT", slot, "MIGRATING", dstID)
	for {
		keys, err := c.command(ctx, src, "CLUSTER", "GETKEYSINSLOT", slot, 100)
		if err != nil {
			t.Fatalf("testsvc: redis cluster: GETKEYSINSLOT: %v", err)
		}
		names := strings.Fields(strings.Trim(keys, "[]"))
		if len(names) == 0 {
			break
		}
		args := []any{"MIGRATE", "127.0.0.1", dst.port, "", 0, 5000, "KEYS"}
		for _, k := range names {
			args = append(args, k)
		}
		must(src, args...)
	}
	must(dst, "CLUSTER", "SETSLOT", slot, "NODE", dstID)
	must(src, "CLUSTER", "SETSLOT", slot, "NODE", dstID)
	for i, n := range c.nodes {
		if i != from && i != to {
			must(n, "CLUSTER", "SETSLOT", slot, "NODE", dstID)
		}
	}
	if err := c.waitOK(ctx, nil); err != nil {
		t.Fatalf("testsvc: %v", err)
	}
	return from
}

// Client returns a plain client of master i (not a cluster client), for
// looking at what that master holds. The caller closes it.
func (c *RedisCluster) Client(i int) *redis.Client {
	return redis.NewClient(&redis.Options{Addr: c.nodes[i].Addr()})
}

// Close kills every node and removes their directories. It is idempotent.
func (c *RedisCluster) Close() error {
	var err error
	for i, n := range c.nodes {
		c.holds[i].release()
		err = errors.Join(err, n.Close())
	}
	return err
}

// waitOK waits until every running node reports cluster_state:ok with
// every slot assigned and no slot failing; nodes in skip are not asked.
func (c *RedisCluster) waitOK(ctx context.Context, skip map[int]bool) error {
	for i, n := range c.nodes {
		if skip[i] {
			continue
		}
		var last string
		for {
			out, err := c.command(ctx, n, "CLUSTER", "INFO")
			if err == nil && strings.Contains(out, "cluster_state:ok") &&
				strings.Contains(out, "cluster_slots_ok:16384") {
				break
			}
			if err != nil {
				last = err.Error()
			} else {
				last = out
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("redis cluster: node %s not ok: %s\nlog:\n%s", n.Addr(), last, n.log())
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	return nil
}

// command runs one command on node n and returns its reply as text.
func (c *RedisCluster) command(ctx context.Context, n *Redis, args ...any) (string, error) {
	cl := redis.NewClient(&redis.Options{Addr: n.Addr(), MaxRetries: -1})
	defer cl.Close()
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	v, err := cl.Do(cctx, args...).Result()
	if err != nil {
		return "", err
	}
	return fmt.Sprint(v), nil
}

func redisCliBinary(server string) (string, error) {
	if p := os.Getenv(RedisCliEnv); p != "" {
		return p, nil
	}
	if i := strings.LastIndex(server, "/"); i >= 0 {
		p := server[:i+1] + "redis-cli"
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return p, nil
		}
	}
	if p, err := exec.LookPath("redis-cli"); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("redis cluster: redis-cli not found beside redis-server or in $PATH; set %s", RedisCliEnv)
}
