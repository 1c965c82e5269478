package node

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/chatd/chatd/cluster"
	"github.com/chatd/chatd/internal/testsvc"
	"github.com/chatd/chatd/server"
)

// testConfig is a node on loopback with an SQLite file of its own.
func testConfig(t *testing.T) Config {
	return Config{
		NodeName:        "n1",
		Addr:            "127.0.0.1:0",
		DatabaseURL:     filepath.Join(t.TempDir(), "chat.db"),
		Migrate:         true,
		ShutdownTimeout: 10 * time.Second,
		MaxConnsPerUser: 5,
		UserBurst:       20,
		JoinBurst:       100,
		MaxBody:         4000,
		MaxChannels:     100,
		ReadLimit:       64 << 10,
		MaxTokenTTL:     time.Hour,
		PersistQueue:    100,
		PersistWorkers:  1,
		PersistBatch:    10,
		ClusterProfile:  cluster.ProfileLocal,
	}
}

// startNode builds and serves a node until the test ends; it returns the
// node and its HTTP address.
func startNode(t *testing.T, cfg Config) (*Node, string) {
	t.Helper()
	n, err := New(context.Background(), cfg, testsvc.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return n, ln.Addr().String()
}

// statsKeys fetches /api/stats and returns every key path of the
// document: "a.b" for nested objects, "a[].b" for the objects of arrays.
func statsKeys(t *testing.T, addr string) ([]string, map[string]any) {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/api/stats")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /api/stats: %s", resp.Status)
	}
	var doc map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil {
		t.Fatal(err)
	}
	set := map[string]bool{}
	var walk func(prefix string, v any)
	walk = func(prefix string, v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				p := k
				if prefix != "" {
					p = prefix + "." + k
				}
				set[p] = true
				walk(p, x)
			}
		case []any:
			for _, x := range v {
				walk(prefix+"[]", x)
			}
		}
	}
	walk("", doc)
	keys := make([]string, 0, len(set))
	for k := range set {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys, doc
}

// The keys every /api/stats document has, single node or cluster node;
// the hub's refused and dropped counters are left out (their keys are
// the reasons).
var commonStatsKeys = []string{
	"dependencies", "dependencies.database",
	"local", "local.connections", "local.connects", "local.deliveries", "local.dropped", "local.messages_in",
	"local.refused", "local.rooms", "local.slow_consumers", "local.users",
	"node",
	"nodes", "nodes[].address", "nodes[].connections", "nodes[].messages_in", "nodes[].name", "nodes[].queue_depth", "nodes[].rooms",
	"nodes[].state", "nodes[].users", "nodes[].local",
	"persistence", "persistence.batches", "persistence.failures", "persistence.lag_seconds", "persistence.pending",
	"persistence.queue_capacity", "persistence.queue_depth", "persistence.rejected", "persistence.retries", "persistence.written",
	"totals", "totals.connections", "totals.messages_in", "totals.nodes", "totals.nodes_alive", "totals.queue_depth",
	"totals.rooms", "totals.users",
}

func withoutCounters(keys []string) []string {
	return slices.DeleteFunc(keys, func(k string) bool {
		return strings.HasPrefix(k, "local.refused.") || strings.HasPrefix(k, "local.dropped.")
	})
}

func assertKeys(t *testing.T, got, want []string) {
	t.Helper()
	want = slices.Clone(want)
	sort.Strings(want)
	if !slices.Equal(got, want) {
		var missing, extra []string
		for _, k := range want {
			if !slices.Contains(got, k) {
				missing = append(missing, k)
			}
		}
		for _, k := range got {
			if !slices.Contains(want, k) {
				extra = append(extra, k)
			}
		}
		t.Fatalf("/api/stats keys: missing %q, unexpected %q", missing, extra)
	}
}

func TestStatsKeysSingleNode(t *testing.T) {
	_, addr := startNode(t, testConfig(t))
	keys, doc := statsKeys(t, addr)
	assertKeys(t, withoutCounters(keys), commonStatsKeys)
	nodes := doc["nodes"].([]any)
	if len(nodes) != 1 || nodes[0].(map[string]any)["local"] != true || doc["node"] != "n1" {
		t.Fatalf("single node: nodes %v, node %v", nodes, doc["node"])
	}
	if _, ok := doc["totals"].(map[string]any)["nodes"].(float64); !ok {
		t.Fatalf("totals.nodes is not a number: %v", doc["totals"])
	}
}

func TestStatsKeysClusterNode(t *testing.T) {
	rds := testsvc.StartRedis(t)
	cfg := testConfig(t)
	cfg.RedisURL = rds.URL()
	cfg.JWTSecret = "secret"
	cfg.ClusterAddr = "127.0.0.1:0"
	n, addr := startNode(t, cfg)
	// The node joins (and lists itself) once its HTTP server serves.
	var keys []string
	var doc map[string]any
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		keys, doc = statsKeys(t, addr)
		if nodes, _ := doc["nodes"].([]any); len(nodes) > 0 || time.Now().After(deadline) {
			break
		}
	}
	var relay []string
	for _, k := range keys {
		if strings.HasPrefix(k, "relay.") {
			relay = append(relay, k)
		}
	}
	if len(relay) == 0 {
		t.Fatal("cluster node: no relay figures")
	}
	want := append(slices.Clone(commonStatsKeys), "dependencies.redis", "nodes[].http_addr", "relay")
	want = append(want, relay...)
	// The relay's figures are cluster.RedisBrokerStats's: pinned there.
	assertKeys(t, withoutCounters(keys), want)
	me := doc["nodes"].([]any)[0].(map[string]any)
	if me["http_addr"] != addr || me["address"] != n.membership.LocalAddr() {
		t.Fatalf("cluster node advertises http_addr %v, address %v; want %s, %s", me["http_addr"], me["address"], addr, n.membership.LocalAddr())
	}
}

// An unspecified listener host is replaced by the gossip advertise IP;
// an explicit CHAT_HTTP_ADVERTISE wins.
func TestAdvertiseHTTP(t *testing.T) {
	m, err := cluster.NewMembership(cluster.MembershipConfig{NodeName: "n", BindAddr: "127.0.0.1:0", AdvertiseAddr: "10.1.2.3"})
	if err != nil {
		t.Fatal(err)
	}
	n := &Node{membership: m}
	for _, tc := range []struct {
		advertise string
		ln        net.Addr
		want      string
	}{
		{"", &net.TCPAddr{IP: net.IPv4zero, Port: 4000}, "10.1.2.3:4000"},
		{"", &net.TCPAddr{IP: net.IPv6unspecified, Port: 4000}, "10.1.2.3:4000"},
		{"", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 4001}, "127.0.0.1:4001"},
		{"chat-1.example:80", &net.TCPAddr{IP: net.IPv4zero, Port: 4000}, "chat-1.example:80"},
	} {
		n.cfg.HTTPAdvertise = tc.advertise
		got, err := n.advertiseHTTP(tc.ln)
		if err != nil || got != tc.want {
			t.Errorf("advertise %q, listener %s: %q, %v; want %q", tc.advertise, tc.ln, got, err, tc.want)
		}
	}
}

// The server labels member states with the cluster's names.
func TestMemberStateNames(t *testing.T) {
	for _, p := range [][2]string{
		{server.MemberAlive, string(cluster.MemberAlive)},
		{server.MemberDead, string(cluster.MemberDead)},
		{server.MemberLeft, string(cluster.MemberLeft)},
	} {
		if p[0] != p[1] {
			t.Errorf("server member state %q, cluster's %q", p[0], p[1])
		}
	}
}

// A node that cannot start releases what it built and says why.
func TestStartFailures(t *testing.T) {
	cfg := testConfig(t)
	cfg.Migrate = false
	if _, err := New(context.Background(), cfg, testsvc.Logger(t)); err == nil || !strings.Contains(err.Error(), "chatd migrate up") {
		t.Fatalf("New on an unmigrated database: %v", err)
	}

	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	cfg = testConfig(t)
	cfg.Addr = taken.Addr().String()
	n, err := New(context.Background(), cfg, testsvc.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "listen") {
		t.Fatalf("Run on a taken address: %v", err)
	}
	if !n.hub.Draining() {
		t.Fatal("the hub of a node that never served was not shut down")
	}
}
