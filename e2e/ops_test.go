package e2e

// End-to-end tests of the operators' endpoints against real chatd
// processes: /api/stats agreeing across a cluster, /metrics counting a
// scripted run, and who may read them.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	dto "github.com/prometheus/client_model/go"

	"github.com/chatd/chatd/internal/testsvc"
)

// opsStats is the part of /api/stats these tests read.
type opsStats struct {
	Node  string `json:"node"`
	Nodes []struct {
		Name        string `json:"name"`
		Address     string `json:"address"`
		HTTPAddr    string `json:"http_addr"`
		State       string `json:"state"`
		Connections int    `json:"connections"`
		Users       int    `json:"users"`
		Rooms       int    `json:"rooms"`
	} `json:"nodes"`
	Totals       map[string]int64  `json:"totals"`
	Dependencies map[string]string `json:"dependencies"`
	Persistence  struct {
		QueueDepth *int     `json:"queue_depth"`
		LagSeconds *float64 `json:"lag_seconds"`
	} `json:"persistence"`
}

// opsGet GETs path on c with the Authorization header auth ("" for none)
// and returns the status and body.
func opsGet(t testing.TB, c *testsvc.Chatd, path, auth string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, c.URL()+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := clHTTP.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, body
}

func opsGetStats(t testing.TB, c *testsvc.Chatd) (opsStats, error) {
	t.Helper()
	status, body := opsGet(t, c, "/api/stats", "Bearer "+clAdminToken)
	var s opsStats
	if status != http.StatusOK {
		return s, fmt.Errorf("GET /api/stats: %d %s", status, body)
	}
	return s, json.Unmarshal(body, &s)
}

// opsClusterView is what all nodes must agree on: every node's name,
// state and connection and user counts, and the totals.
func opsClusterView(s opsStats) string {
	var parts []string
	for _, n := range s.Nodes {
		parts = append(parts, fmt.Sprintf("%s=%s/c%d/u%d", n.Name, n.State, n.Connections, n.Users))
	}
	return fmt.Sprintf("[%s] alive=%d conns=%d users=%d", strings.Join(parts, " "),
		s.Totals["nodes_alive"], s.Totals["connections"], s.Totals["users"])
}

// TestOpsStatsClusterAgree: every node of a 3-node cluster reports the
// same cluster in /api/stats (from gossiped metadata) within the gossip
// interval, and a killed node turns dead, then leaves the totals, in every
// survivor's stats.
func TestOpsStatsClusterAgree(t *testing.T) {
	redis := testsvc.StartRedis(t)
	nodes := clStartCluster(t, redis, 3, nil)

	// node1: 2 users on 3 connections; node2: 1; node3: 2 users.
	for _, d := range []struct {
		node int
		user string
	}{{0, "ann"}, {0, "ann"}, {0, "bob"}, {1, "cat"}, {2, "dan"}, {2, "eve"}} {
		psDial(t, nodes[d.node].Chatd, d.user)
	}
	want := "[node1=alive/c3/u2 node2=alive/c1/u1 node3=alive/c2/u2] alive=3 conns=6 users=5"

	// Metadata is polled every 2 s and then gossiped: agreement normally
	// takes a round or two (the time is logged); the deadline only bounds
	// the test on a loaded machine.
	start := time.Now()
	deadline := start.Add(30 * time.Second)
	for {
		var views []string
		agree := true
		for _, n := range nodes {
			s, err := opsGetStats(t, n.Chatd)
			if err != nil {
				t.Fatal(err)
			}
			v := opsClusterView(s)
			views = append(views, n.name+": "+v)
			if v != want {
				agree = false
			}
		}
		if agree {
			t.Logf("all 3 nodes agree after %s: %s", time.Since(start).Round(time.Millisecond), want)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("nodes do not agree on %s after %s:\n%s", want, time.Since(start).Round(time.Millisecond), strings.Join(views, "\n"))
		}
		time.Sleep(200 * time.Millisecond)
	}

	// The document carries what operators need besides the nodes.
	s, err := opsGetStats(t, nodes[1].Chatd)
	if err != nil {
		t.Fatal(err)
	}
	if s.Dependencies["database"] != "ok" || s.Dependencies["redis"] != "ok" {
		t.Errorf("dependencies = %v, want database and redis ok", s.Dependencies)
	}
	if s.Persistence.QueueDepth == nil || s.Persistence.LagSeconds == nil {
		t.Errorf("persistence queue depth or lag missing")
	}
	for _, n := range s.Nodes {
		if n.Address == "" || n.HTTPAddr == "" {
			t.Errorf("node %s: address %q, http address %q", n.Name, n.Address, n.HTTPAddr)
		}
	}

	// SIGKILL node3: no graceful leave, memberlist must declare it dead.
	if err := nodes[2].Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	survivors := nodes[:2]
	wantAfter := "alive=2 conns=4 users=3"
	deadline = killed.Add(20 * time.Second)
	for {
		var views []string
		done := true
		for _, n := range survivors {
			s, err := opsGetStats(t, n.Chatd)
			if err != nil {
				t.Fatal(err)
			}
			v := opsClusterView(s)
			views = append(views, n.name+": "+v)
			gone := true
			for _, m := range s.Nodes {
				if m.Name == "node3" && m.State == "alive" {
					gone = false
				}
			}
			if !gone || !strings.HasSuffix(v, wantAfter) {
				done = false
			}
		}
		if done {
			t.Logf("node3 dead or gone in every survivor's stats %s after SIGKILL: %s", time.Since(killed).Round(time.Millisecond), strings.Join(views, "; "))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node3 still counted %s after SIGKILL:\n%s", time.Since(killed).Round(time.Millisecond), strings.Join(views, "\n"))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// opsScrape reads c's /metrics with auth and parses the text format.
func opsScrape(t testing.TB, c *testsvc.Chatd, auth string) map[string]*dto.MetricFamily {
	t.Helper()
	status, body := opsGet(t, c, "/metrics", auth)
	if status != http.StatusOK {
		t.Fatalf("GET /metrics: %d %s", status, body)
	}
	return testsvc.ParseMetrics(t, bytes.NewReader(body))
}

// TestOpsMetricsScriptedRun: after a known run against a real process, the
// scraped counters say exactly what the run did.
func TestOpsMetricsScriptedRun(t *testing.T) {
	const admin = "e2e-metrics-admin"
	c := startServer(t, map[string]string{
		"CHAT_ADMIN_TOKEN":        admin,
		"CHAT_NODE_NAME":          "solo",
		"CHAT_MAX_CONNS_PER_USER": "1",
		"CHAT_MAX_BODY":           "20",
	})
	dialStatus := func(rawURL string) int {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		conn, resp, err := websocket.Dial(ctx, rawURL, nil)
		if err == nil {
			conn.CloseNow()
			return http.StatusSwitchingProtocols
		}
		if resp == nil {
			t.Fatalf("dial: %v", err)
		}
		return resp.StatusCode
	}
	// 2 bad tokens: garbage, and one signed with another secret.
	for _, tok := range []string{"not-a-jwt", mintToken(t, "another-secret-0123456789abcdef", "mallory")} {
		if st := dialStatus(socketURL(c, "vsn", "2.0.0", "token", tok)); st != http.StatusUnauthorized {
			t.Fatalf("bad token: HTTP %d, want 401", st)
		}
	}
	alice := psDial(t, c, "alice")
	bob := psDial(t, c, "bob")
	// 1 over the limit of one connection per user.
	tok, _ := psToken("alice")
	if st := dialStatus(socketURL(c, "vsn", "2.0.0", "token", tok)); st != http.StatusTooManyRequests {
		t.Fatalf("second connection of alice: HTTP %d, want 429", st)
	}
	const topic = "room:metrics"
	alice.join(t, topic, nil)
	bob.join(t, topic, nil)
	const n = 7
	for i := range n {
		_, ch, err := alice.pushAsync(topic, fmt.Sprintf("m%d", i))
		if err != nil {
			t.Fatal(err)
		}
		if r := <-ch; r.Status != "ok" {
			t.Fatalf("push %d: %s", i, r.Raw)
		}
	}
	// 1 refused: too long.
	_, ch, err := alice.pushAsync(topic, strings.Repeat("x", 21))
	if err != nil {
		t.Fatal(err)
	}
	if r := <-ch; r.reason() != "body too long" {
		t.Fatalf("long push: %s", r.Raw)
	}
	if _, ok := bob.waitMessages(topic, 10*time.Second, func(m []psMsg) bool { return len(m) >= n }); !ok {
		t.Fatalf("bob got %d of %d messages", len(bob.messages(topic)), n)
	}

	// The writer stores the 7 messages within a batch wait or so.
	var fams map[string]*dto.MetricFamily
	deadline := time.Now().Add(10 * time.Second)
	for {
		fams = opsScrape(t, c, "Bearer "+admin)
		if v, _ := testsvc.MetricValue(fams, "chatd_persist_messages_written_total"); v == n || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, w := range []struct {
		name   string
		labels []string
		value  float64
	}{
		{"chatd_connections", []string{"node", "solo"}, 2},
		{"chatd_connects_total", nil, 2},
		{"chatd_connections_refused_total", []string{"reason", "auth"}, 2},
		{"chatd_connections_refused_total", []string{"reason", "limit"}, 1},
		{"chatd_connections_refused_total", []string{"reason", "origin"}, 0},
		{"chatd_connections_refused_total", []string{"reason", "version"}, 0},
		{"chatd_messages_received_total", nil, n},
		{"chatd_messages_refused_total", []string{"reason", "body_too_long"}, 1},
		{"chatd_messages_refused_total", []string{"reason", "rate"}, 0},
		{"chatd_messages_dropped_total", []string{"reason", "slow_consumer"}, 0},
		{"chatd_slow_consumers_total", nil, 0},
		{"chatd_persist_messages_written_total", nil, n},
		{"chatd_persist_queue_depth", nil, 0},
		{"chatd_persist_failures_total", nil, 0},
		{"chatd_relay_publish_errors_total", nil, 0},
	} {
		if got, ok := testsvc.MetricValue(fams, w.name, w.labels...); !ok || got != w.value {
			t.Errorf("%s%v = %v (present: %v), want %v", w.name, w.labels, got, ok, w.value)
		}
	}
	// Each of the 7 messages reached both members.
	if v, _ := testsvc.MetricValue(fams, "chatd_messages_delivered_total"); v < 2*n {
		t.Errorf("chatd_messages_delivered_total = %v, want at least %d", v, 2*n)
	}
	// Every message went through the relay once (presence diffs too).
	if v, _ := testsvc.MetricValue(fams, "chatd_relay_publish_duration_seconds"); v < n {
		t.Errorf("relay publish latency observations = %v, want at least %d", v, n)
	}
	if v, _ := testsvc.MetricValue(fams, "chatd_persist_batch_size"); v < 1 {
		t.Errorf("no batch observed")
	}
	if v, _ := testsvc.MetricValue(fams, "chatd_persist_write_duration_seconds"); v < 1 {
		t.Errorf("no write latency observed")
	}
	for _, name := range []string{"go_goroutines", "go_memstats_heap_alloc_bytes", "process_cpu_seconds_total", "process_open_fds"} {
		if _, ok := fams[name]; !ok {
			t.Errorf("%s missing", name)
		}
	}
	t.Logf("scraped %d metric families", len(fams))
}

// opsPaths are the ops endpoints.
var opsPaths = []string{"/api/stats", "/metrics", "/dashboard", "/dashboard/dashboard.js", "/debug/pprof/", "/debug/pprof/goroutine?debug=1"}

// TestOpsAccessRealProcess: with an admin token set, every ops endpoint
// refuses a request without it and one with a chat user's token, and
// answers one with it; with none set, a direct loopback client is let in
// and a proxied one is not.
func TestOpsAccessRealProcess(t *testing.T) {
	const admin = "e2e-access-admin"
	c := startServer(t, map[string]string{"CHAT_ADMIN_TOKEN": admin})
	user := "Bearer " + mintToken(t, testSecret, "alice")
	for _, p := range opsPaths {
		if st, _ := opsGet(t, c, p, ""); st != http.StatusUnauthorized {
			t.Errorf("%s without credentials: %d, want 401", p, st)
		}
		if st, _ := opsGet(t, c, p, user); st != http.StatusUnauthorized {
			t.Errorf("%s with a chat user's token: %d, want 401", p, st)
		}
		if st, _ := opsGet(t, c, p, "Bearer "+admin+"x"); st != http.StatusUnauthorized {
			t.Errorf("%s with a wrong admin token: %d, want 401", p, st)
		}
		if st, body := opsGet(t, c, p, "Bearer "+admin); st != http.StatusOK {
			t.Errorf("%s with the admin token: %d %s", p, st, body)
		}
	}

	open := startServer(t, nil)
	for _, p := range opsPaths {
		if st, _ := opsGet(t, open, p, ""); st != http.StatusOK {
			t.Errorf("%s from loopback, no admin token set: %d, want 200", p, st)
		}
		req, _ := http.NewRequest(http.MethodGet, open.URL()+p, nil)
		req.Header.Set("X-Forwarded-For", "198.51.100.7")
		resp, err := clHTTP.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("%s proxied, no admin token set: %d, want 403", p, resp.StatusCode)
		}
	}
}
