package server

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	dto "github.com/prometheus/client_model/go"

	"github.com/chatd/chatd/chat"
	"github.com/chatd/chatd/internal/testsvc"
)

// scrape GETs /metrics (as a direct loopback client: no admin token is set)
// and parses it as the Prometheus text format.
func scrape(tb testing.TB, base string) map[string]*dto.MetricFamily {
	tb.Helper()
	req, _ := http.NewRequest(http.MethodGet, base+"/metrics", nil)
	req.Header.Set("Accept", "text/plain; version=0.0.4")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		tb.Fatalf("GET /metrics: %s %s", resp.Status, b)
	}
	return testsvc.ParseMetrics(tb, resp.Body)
}

// TestMetricsScriptedRun drives a known run through a server and checks
// that /metrics counts exactly it.
func TestMetricsScriptedRun(t *testing.T) {
	s := startServer(t, chat.Config{NodeName: "m1", MaxBody: 10, UserRate: 0.001, UserBurst: 5}, func(c *Config, o *Options) {
		o.Limiter = chat.NewMemoryConnLimiter(1)
	})
	dialStatus := func(url string) int {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		conn, resp, err := websocket.Dial(ctx, url, nil)
		if err == nil {
			conn.CloseNow()
			return 101
		}
		if resp == nil {
			t.Fatalf("dial: %v", err)
		}
		return resp.StatusCode
	}
	// 2 bad tokens, 1 bad version.
	for _, tok := range []string{"nope", mint(t, "x")[:20]} {
		if st := dialStatus(s.wsURL(tok)); st != http.StatusUnauthorized {
			t.Fatalf("bad token: HTTP %d", st)
		}
	}
	if st := dialStatus(strings.Replace(s.wsURL(mint(t, "x")), "vsn=2.0.0", "vsn=1.0.0", 1)); st != http.StatusBadRequest {
		t.Fatalf("bad vsn: HTTP %d", st)
	}
	alice := s.dial(t, "alice")
	bob := s.dial(t, "bob")
	// 1 over the limit of one connection per user.
	if st := dialStatus(s.wsURL(mint(t, "alice"))); st != http.StatusTooManyRequests {
		t.Fatalf("over the limit: HTTP %d", st)
	}
	ref := alice.join("lobby")
	bob.join("lobby")
	// 5 messages (the burst), each delivered to 2 members.
	for i := range 5 {
		alice.push(ref, "lobby", "hi "+string(rune('a'+i)))
	}
	for range 5 {
		bob.expectMsg("lobby")
	}
	// 1 rate limited, 1 too long (the bucket is empty: the length check
	// comes first), 1 invalid.
	alice.expectError("room:lobby", alice.send(ref, "room:lobby", chat.EventNewMsg, map[string]string{"body": "x"}), "rate_limited")
	alice.expectError("room:lobby", alice.send(ref, "room:lobby", chat.EventNewMsg, map[string]string{"body": strings.Repeat("y", 11)}), "body too long")
	alice.expectError("room:lobby", alice.send(ref, "room:lobby", chat.EventNewMsg, map[string]int{"body": 1}), "invalid payload")

	fams := scrape(t, s.ts.URL)
	want := []struct {
		name   string
		labels []string
		value  float64
	}{
		{"chatd_connections", []string{"node", "m1"}, 2},
		{"chatd_users", nil, 2},
		{"chatd_connects_total", nil, 2},
		{"chatd_connections_refused_total", []string{"reason", "auth"}, 2},
		{"chatd_connections_refused_total", []string{"reason", "limit"}, 1},
		{"chatd_connections_refused_total", []string{"reason", "version"}, 1},
		{"chatd_connections_refused_total", []string{"reason", "origin"}, 0},
		{"chatd_connections_refused_total", []string{"reason", "draining"}, 0},
		{"chatd_messages_received_total", nil, 5},
		{"chatd_messages_refused_total", []string{"reason", "rate"}, 1},
		{"chatd_messages_refused_total", []string{"reason", "body_too_long"}, 1},
		{"chatd_messages_refused_total", []string{"reason", "invalid"}, 1},
		{"chatd_messages_refused_total", []string{"reason", "overloaded"}, 0},
		{"chatd_messages_dropped_total", []string{"reason", "slow_consumer"}, 0},
		{"chatd_slow_consumers_total", nil, 0},
		{"chatd_relay_publish_errors_total", nil, 0},
	}
	for _, w := range want {
		got, ok := testsvc.MetricValue(fams, w.name, w.labels...)
		if !ok || got != w.value {
			t.Errorf("%s%v = %v (present %v), want %v", w.name, w.labels, got, ok, w.value)
		}
	}
	// Deliveries: 5 messages to 2 members, plus presence diffs.
	if got, _ := testsvc.MetricValue(fams, "chatd_messages_delivered_total"); got < 10 {
		t.Errorf("chatd_messages_delivered_total = %v, want at least 10", got)
	}
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes"} {
		if _, ok := fams[name]; !ok {
			t.Errorf("%s missing: the Go and process collectors are not registered", name)
		}
	}
	// Labels are bounded: never a room or a user.
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			for _, lp := range m.GetLabel() {
				switch lp.GetName() {
				case "node", "reason", "state", "le", "quantile", "version":
				default:
					if strings.HasPrefix(name, "chatd_") {
						t.Errorf("%s has label %s", name, lp.GetName())
					}
				}
			}
		}
	}
}

// TestMetricsRegistryPerServer checks two servers in one process keep
// their own counters (no global registry).
func TestMetricsRegistryPerServer(t *testing.T) {
	a := startServer(t, chat.Config{NodeName: "a"}, nil)
	b := startServer(t, chat.Config{NodeName: "b"}, nil)
	// The heartbeat's reply shows the connection is being served.
	a.dial(t, "u1").heartbeat()
	fa, fb := scrape(t, a.ts.URL), scrape(t, b.ts.URL)
	if v, _ := testsvc.MetricValue(fa, "chatd_connects_total"); v != 1 {
		t.Errorf("a: connects = %v, want 1", v)
	}
	if v, _ := testsvc.MetricValue(fb, "chatd_connects_total"); v != 0 {
		t.Errorf("b: connects = %v, want 0", v)
	}
	if _, ok := testsvc.MetricValue(fb, "chatd_connections", "node", "b"); !ok {
		t.Errorf("b: chatd_connections{node=b} missing")
	}
}

// TestOpsEndpointsAccess checks every ops endpoint refuses without the admin token
// and with a chat user's token, and opens with the admin token (Bearer, or
// Basic with the token as password).
func TestOpsEndpointsAccess(t *testing.T) {
	const admin = "ops-secret"
	s := startServer(t, chat.Config{}, func(c *Config, o *Options) {
		c.AdminToken = admin
		o.Stats = func(context.Context) any { return map[string]any{"nodes": []any{}} }
	})
	paths := []string{"/api/stats", "/metrics", "/dashboard", "/dashboard/dashboard.js", "/debug/pprof/", "/debug/pprof/heap", "/debug/pprof/cmdline"}
	get := func(path string, set func(*http.Request)) *http.Response {
		req, _ := http.NewRequest(http.MethodGet, s.ts.URL+path, nil)
		if set != nil {
			set(req)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	userToken := mint(t, "alice")
	for _, p := range paths {
		if r := get(p, nil); r.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s without credentials: %d, want 401", p, r.StatusCode)
		}
		if r := get(p, func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+userToken) }); r.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s with a user token: %d, want 401", p, r.StatusCode)
		}
		if r := get(p, func(r *http.Request) { r.SetBasicAuth("alice", userToken) }); r.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s with a user token as Basic password: %d, want 401", p, r.StatusCode)
		}
		if r := get(p, func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+admin) }); r.StatusCode != http.StatusOK {
			t.Errorf("%s with the admin token: %d, want 200", p, r.StatusCode)
		}
		if r := get(p, func(r *http.Request) { r.SetBasicAuth("ops", admin) }); r.StatusCode != http.StatusOK {
			t.Errorf("%s with the admin token as Basic password: %d, want 200", p, r.StatusCode)
		}
	}
	r := get("/dashboard", func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+admin) })
	if csp := r.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe-inline") {
		t.Errorf("dashboard CSP = %q", csp)
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/html") {
		t.Errorf("dashboard Content-Type = %q", ct)
	}

	// No admin token: loopback only, and a proxied request is not loopback.
	open := startServer(t, chat.Config{}, func(c *Config, o *Options) {
		o.Stats = func(context.Context) any { return map[string]any{} }
	})
	for _, p := range paths {
		req, _ := http.NewRequest(http.MethodGet, open.ts.URL+p, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%s from loopback with no admin token: %d, want 200", p, resp.StatusCode)
		}
		req.Header.Set("X-Forwarded-For", "203.0.113.9")
		resp, err = http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("%s proxied with no admin token: %d, want 403", p, resp.StatusCode)
		}
	}
}
