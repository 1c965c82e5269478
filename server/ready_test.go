package server

import (
	"context"
	"net/http"
	"slices"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/chatd/chatd/chat"
	"github.com/chatd/chatd/internal/testsvc"
)

// TestReadyReportsSharedDependencies: /health/ready answers for this pod.
// While a real Redis (a shared dependency) is down it still answers 200,
// naming redis in "checks" and "degraded", and /metrics reports
// chatd_dependency_up{dependency="redis"} 0; once Redis is back, 1 and no
// "degraded". Only draining answers 503.
func TestReadyReportsSharedDependencies(t *testing.T) {
	srv := testsvc.StartRedis(t)
	client := redis.NewClient(&redis.Options{Addr: srv.Addr(), MaxRetries: -1, ContextTimeoutEnabled: true})
	t.Cleanup(func() { client.Close() })
	s := startServer(t, chat.Config{}, func(_ *Config, o *Options) {
		o.Checks = []Check{{Name: "redis", Check: func(ctx context.Context) error { return client.Ping(ctx).Err() }}}
	})
	check := func(when string, wantUp bool) {
		t.Helper()
		resp, body := httpGet(t, s.ts.URL+"/health/ready")
		checks, _ := body["checks"].(map[string]any)
		var degraded []string
		if d, ok := body["degraded"].([]any); ok {
			for _, x := range d {
				degraded = append(degraded, x.(string))
			}
		}
		t.Logf("%s: /health/ready %d %v", when, resp.StatusCode, body)
		if resp.StatusCode != http.StatusOK || body["status"] != "ok" {
			t.Errorf("%s: /health/ready %d %v, want 200 status ok", when, resp.StatusCode, body)
		}
		if gotUp := checks["redis"] == "ok"; gotUp != wantUp || slices.Contains(degraded, "redis") == wantUp {
			t.Errorf("%s: checks %v degraded %v, want redis up=%v", when, checks, degraded, wantUp)
		}
		var up float64 = -1
		if f := scrape(t, s.ts.URL)["chatd_dependency_up"]; f != nil {
			for _, m := range f.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "dependency" && l.GetValue() == "redis" {
						up = m.GetGauge().GetValue()
					}
				}
			}
		}
		if want := map[bool]float64{true: 1, false: 0}[wantUp]; up != want {
			t.Errorf("%s: chatd_dependency_up{dependency=\"redis\"} = %v, want %v", when, up, want)
		}
	}
	check("redis up", true)
	srv.Stop(t)
	check("redis down", false)
	srv.Start(t)
	check("redis back", true)

	s.Drain()
	if resp, body := httpGet(t, s.ts.URL+"/health/ready"); resp.StatusCode != http.StatusServiceUnavailable || body["reason"] != "draining" {
		t.Errorf("draining: /health/ready %d %v, want 503 draining", resp.StatusCode, body)
	}
}
