package server

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/chatd/chatd/chat"
)

func TestProxyParse(t *testing.T) {
	p, err := ParseTrustedProxies([]string{" 10.0.0.0/8", "", "127.0.0.1", "fd00::/8", "::1", "192.168.1.7/16"})
	if err != nil {
		t.Fatal(err)
	}
	for addr, want := range map[string]bool{
		"10.1.2.3": true, "11.0.0.1": false, "127.0.0.1": true, "127.0.0.2": false,
		"fd00::5": true, "fe80::1": false, "::1": true, "::ffff:10.9.9.9": true,
		"192.168.200.1": true, "192.169.0.1": false,
	} {
		if got := p.Trusted(mustAddr(t, addr)); got != want {
			t.Errorf("Trusted(%s) = %v, want %v", addr, got, want)
		}
	}
	for _, bad := range []string{"10.0.0.0/33", "example.com", "10.0.0", "1.2.3.4/x"} {
		if _, err := ParseTrustedProxies([]string{bad}); err == nil {
			t.Errorf("ParseTrustedProxies(%q): no error", bad)
		}
	}
	if empty, _ := ParseTrustedProxies(nil); !empty.Empty() {
		t.Error("an empty list is not Empty")
	}
}

func TestProxyClientIP(t *testing.T) {
	p, err := ParseTrustedProxies([]string{"10.0.0.0/8", "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		remote string
		xff    []string
		realIP string
		want   string
	}{
		{"untrusted peer, no headers", "203.0.113.9:5000", nil, "", "203.0.113.9"},
		{"untrusted peer forging XFF", "203.0.113.9:5000", []string{"1.1.1.1"}, "", "203.0.113.9"},
		{"untrusted peer forging X-Real-IP", "203.0.113.9:5000", nil, "1.1.1.1", "203.0.113.9"},
		{"trusted peer, no headers", "10.0.0.5:5000", nil, "", "10.0.0.5"},
		{"trusted peer, XFF", "10.0.0.5:5000", []string{"198.51.100.7"}, "", "198.51.100.7"},
		{"trusted peer, X-Real-IP", "127.0.0.1:5000", nil, "198.51.100.7", "198.51.100.7"},
		{"XFF wins over X-Real-IP", "127.0.0.1:5000", []string{"198.51.100.7"}, "198.51.100.8", "198.51.100.7"},
		{"client forged left part of XFF", "10.0.0.5:1", []string{"6.6.6.6, 198.51.100.7"}, "", "198.51.100.7"},
		{"chain of trusted proxies", "10.0.0.5:1", []string{"198.51.100.7, 10.2.2.2", "10.3.3.3"}, "", "198.51.100.7"},
		{"all hops trusted", "10.0.0.5:1", []string{"10.2.2.2, 10.3.3.3"}, "", "10.2.2.2"},
		{"garbage hop stops the walk", "10.0.0.5:1", []string{"198.51.100.7, bogus, 10.3.3.3"}, "", "10.3.3.3"},
		{"hop with a port", "10.0.0.5:1", []string{"198.51.100.7:4444"}, "", "198.51.100.7"},
		{"IPv6 hop", "10.0.0.5:1", []string{"[2001:db8::1]:80"}, "", "2001:db8::1"},
		{"bad X-Real-IP", "127.0.0.1:5000", nil, "nope", "127.0.0.1"},
		{"IPv4-mapped peer", "[::ffff:10.0.0.5]:1", []string{"198.51.100.7"}, "", "198.51.100.7"},
	}
	for _, c := range cases {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.RemoteAddr = c.remote
		for _, v := range c.xff {
			r.Header.Add("X-Forwarded-For", v)
		}
		if c.realIP != "" {
			r.Header.Set("X-Real-IP", c.realIP)
		}
		if got := p.ClientIP(r); got != c.want {
			t.Errorf("%s: ClientIP = %q, want %q", c.name, got, c.want)
		}
	}
	// No trusted proxies (the default): headers never count.
	var none *TrustedProxies
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	r.RemoteAddr = "127.0.0.1:9"
	r.Header.Set("X-Forwarded-For", "1.2.3.4")
	r.Header.Set("X-Real-IP", "1.2.3.4")
	if got := none.ClientIP(r); got != "127.0.0.1" {
		t.Errorf("nil proxies: ClientIP = %q, want the peer", got)
	}
}

// syncBuffer is a log sink safe for the server's goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestProxyServerWiring checks Config.TrustedProxies end to end through
// the server's handler: the access log's remote and ClientIP.
func TestProxyServerWiring(t *testing.T) {
	if _, err := New(Config{TrustedProxies: []string{"not-an-ip"}}, Options{Hub: newProxyHub(t)}); err == nil {
		t.Fatal("New accepted a malformed trusted proxy")
	}
	logs := &syncBuffer{}
	srv, err := New(Config{JWTSecret: testSecret, TrustedProxies: []string{"10.0.0.0/8"}},
		Options{Hub: newProxyHub(t), Logger: slog.New(slog.NewJSONHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	srv.mux.HandleFunc("GET /test/client-ip", func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(ClientIP(r)))
	})
	h := srv.Handler()
	for _, c := range []struct{ remote, xff, want string }{
		{"10.1.1.1:1234", "198.51.100.7", "198.51.100.7"},
		{"203.0.113.5:1234", "198.51.100.7", "203.0.113.5"},
	} {
		r := httptest.NewRequest(http.MethodGet, "/test/client-ip", nil)
		r.RemoteAddr = c.remote
		r.Header.Set("X-Forwarded-For", c.xff)
		r.Header.Set("X-Request-ID", "req-"+strings.NewReplacer(".", "-", ":", "-").Replace(c.remote))
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if got := w.Body.String(); got != c.want {
			t.Errorf("peer %s, XFF %s: ClientIP = %q, want %q", c.remote, c.xff, got, c.want)
		}
		found := false
		for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
			var rec map[string]any
			if json.Unmarshal([]byte(line), &rec) != nil || rec["msg"] != "http request" || rec["request_id"] != r.Header.Get("X-Request-ID") {
				continue
			}
			found = true
			if rec["remote"] != c.want {
				t.Errorf("peer %s, XFF %s: access log remote = %v, want %s", c.remote, c.xff, rec["remote"], c.want)
			}
		}
		if !found {
			t.Errorf("no access log line for request from %s:\n%s", c.remote, logs.String())
		}
	}
	// Outside the server's handler, ClientIP falls back to the peer.
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	r.RemoteAddr = "10.1.1.1:1"
	r.Header.Set("X-Forwarded-For", "1.2.3.4")
	if got := ClientIP(r); got != "10.1.1.1" {
		t.Errorf("ClientIP outside the handler = %q, want the peer", got)
	}
}

func newProxyHub(t *testing.T) *chat.Hub {
	t.Helper()
	hub, err := chat.NewHub(chat.Config{}, chat.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return hub
}

func mustAddr(t *testing.T, s string) netip.Addr {
	t.Helper()
	a, err := netip.ParseAddr(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}
