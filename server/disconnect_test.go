package server

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"

	"github.com/chatd/chatd/chat"
)

const testAPIKey = "test-api-key"

// tryDial returns the status of a handshake with token, closing an upgraded
// connection, and the decoded JSON body of a refused one.
func (s *testServer) tryDial(tb testing.TB, token string) (int, map[string]string) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, resp, err := websocket.Dial(ctx, s.wsURL(token), nil)
	if err == nil {
		conn.CloseNow()
		return http.StatusSwitchingProtocols, nil
	}
	if resp == nil {
		tb.Fatalf("dial: %v", err)
	}
	var body map[string]string
	b, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(b, &body); err != nil {
		tb.Fatalf("refused handshake (HTTP %d) without a JSON body: %q", resp.StatusCode, b)
	}
	return resp.StatusCode, body
}

// apiDisconnect posts body to /api/users/{user}/disconnect with key.
func (s *testServer) apiDisconnect(tb testing.TB, key, user, body string) (int, disconnectResponse) {
	tb.Helper()
	req, err := http.NewRequest(http.MethodPost, s.ts.URL+"/api/users/"+user+"/disconnect", strings.NewReader(body))
	if err != nil {
		tb.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	var out disconnectResponse
	b, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(b, &out); err != nil {
		tb.Fatalf("disconnect answered HTTP %d without a JSON body: %q", resp.StatusCode, b)
	}
	return resp.StatusCode, out
}

func TestTokenLifetimeEnforced(t *testing.T) {
	s := startServer(t, chat.Config{}, func(c *Config, _ *Options) { c.MaxTokenTTL = time.Hour })
	now := time.Now()
	for _, tc := range []struct {
		name   string
		claims jwt.RegisteredClaims
		want   int
	}{
		{"no iat", jwt.RegisteredClaims{Subject: "u", ExpiresAt: jwt.NewNumericDate(now.Add(time.Minute))}, http.StatusUnauthorized},
		{"lives longer than the max", jwt.RegisteredClaims{Subject: "u", IssuedAt: jwt.NewNumericDate(now),
			ExpiresAt: jwt.NewNumericDate(now.Add(time.Hour + time.Second))}, http.StatusUnauthorized},
		{"lives the max", jwt.RegisteredClaims{Subject: "u", IssuedAt: jwt.NewNumericDate(now),
			ExpiresAt: jwt.NewNumericDate(now.Add(time.Hour))}, http.StatusSwitchingProtocols},
		{"short-lived", jwt.RegisteredClaims{Subject: "u", IssuedAt: jwt.NewNumericDate(now),
			ExpiresAt: jwt.NewNumericDate(now.Add(time.Minute))}, http.StatusSwitchingProtocols},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got, body := s.tryDial(t, signClaims(t, tc.claims)); got != tc.want {
				t.Fatalf("handshake: HTTP %d %v, want %d", got, body, tc.want)
			}
		})
	}
}

func TestServerAPIKeyRequired(t *testing.T) {
	off := startServer(t, chat.Config{}, nil)
	if got, _ := off.apiDisconnect(t, "", "alice", `{}`); got != http.StatusNotFound {
		t.Fatalf("no CHAT_API_KEY: HTTP %d, want 404", got)
	}
	s := startServer(t, chat.Config{}, func(c *Config, _ *Options) { c.APIKey = testAPIKey; c.AdminToken = "admin" })
	for _, key := range []string{"", "wrong", testAPIKey + "x", "admin", mint(t, "alice")} {
		if got, out := s.apiDisconnect(t, key, "alice", `{}`); got != http.StatusUnauthorized || out.Error != "unauthorized" {
			t.Fatalf("key %q: HTTP %d %+v, want 401 unauthorized", key, got, out)
		}
	}
	if got, _ := s.apiDisconnect(t, testAPIKey, "alice", `{"revoke": "yes"}`); got != http.StatusBadRequest {
		t.Fatalf("bad body: HTTP %d, want 400", got)
	}
	if got, _ := s.apiDisconnect(t, testAPIKey, strings.Repeat("u", MaxUserIDLen+1), `{}`); got != http.StatusBadRequest {
		t.Fatalf("long user id: HTTP %d, want 400", got)
	}
	if got, out := s.apiDisconnect(t, testAPIKey, "alice", ``); got != http.StatusOK || out.Closed != 0 || out.Revoked {
		t.Fatalf("empty body: HTTP %d %+v, want 200 with nothing closed", got, out)
	}
}

// On one node: disconnect closes the user's sockets with 4001 and the same
// token reconnects; with revoke, 4003 and the token (and any issued up to
// that second) is refused on the socket and the REST API, while one issued
// later works; another user is untouched throughout.
func TestDisconnectAndRevoke(t *testing.T) {
	s := startServer(t, chat.Config{}, func(c *Config, _ *Options) { c.APIKey = testAPIKey })
	alice, bob := s.dial(t, "alice"), s.dial(t, "bob")
	alice2 := s.dial(t, "alice")
	// The upgrade's answer may reach a client before the hub serves its
	// connection: a heartbeat's reply says it does.
	for _, c := range []*client{alice, bob, alice2} {
		c.heartbeat()
	}

	got, out := s.apiDisconnect(t, testAPIKey, "alice", `{"reason": "kicked"}`)
	if got != http.StatusOK || out.Closed != 2 || out.Revoked || out.RevokedAt != nil {
		t.Fatalf("disconnect: HTTP %d %+v, want 200 closing 2", got, out)
	}
	for _, c := range []*client{alice, alice2} {
		wantClosed(t, c, chat.CloseDisconnected, "kicked")
	}
	tok := mint(t, "alice")
	if got, body := s.tryDial(t, tok); got != http.StatusSwitchingProtocols {
		t.Fatalf("same token after a disconnect without revoke: HTTP %d %v", got, body)
	}

	alice = s.dial(t, "alice")
	alice.heartbeat()
	got, out = s.apiDisconnect(t, testAPIKey, "alice", `{"revoke": true}`)
	// 1, or 2 when the server has not yet seen the end of tryDial's
	// connection, closed on the client's side just before.
	if got != http.StatusOK || out.Closed < 1 || out.Closed > 2 || !out.Revoked || out.RevokedAt == nil {
		t.Fatalf("disconnect with revoke: HTTP %d %+v", got, out)
	}
	wantClosed(t, alice, chat.CloseRevoked, "token revoked")
	if got, body := s.tryDial(t, tok); got != http.StatusUnauthorized || !strings.Contains(body["reason"], "revoked") {
		t.Fatalf("revoked token: HTTP %d %v, want 401 revoked", got, body)
	}
	req, _ := http.NewRequest(http.MethodGet, s.ts.URL+"/api/rooms/lobby/presence", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("revoked token on the REST API: HTTP %d, want 401", resp.StatusCode)
	}
	newer := signClaims(t, jwt.RegisteredClaims{Subject: "alice", IssuedAt: jwt.NewNumericDate(out.RevokedAt.Add(time.Second)),
		ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Hour))})
	if got, body := s.tryDial(t, newer); got != http.StatusSwitchingProtocols {
		t.Fatalf("token issued after the revocation: HTTP %d %v", got, body)
	}

	// Bob was never closed.
	bob.send("", "phoenix", "heartbeat", map[string]any{})
	if f := bob.read(); f.Event != chat.EventReply {
		t.Fatalf("bob: %+v after alice's disconnects", f)
	}
}

// wantClosed reads c until its connection ends and checks the close.
func wantClosed(t *testing.T, c *client, code chat.StatusCode, reason string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for {
		_, _, err := c.conn.Read(ctx)
		if err == nil {
			continue
		}
		var ce websocket.CloseError
		if !errors.As(err, &ce) {
			t.Fatalf("%s: connection ended with %v, want close %d", c.user, err, code)
		}
		if int(ce.Code) != int(code) || ce.Reason != reason {
			t.Fatalf("%s: closed %d %q, want %d %q", c.user, ce.Code, ce.Reason, code, reason)
		}
		return
	}
}

// failingRevocations is a store that cannot answer (Redis down).
type failingRevocations struct{}

func (failingRevocations) Revoke(context.Context, string, time.Time) error {
	return errors.New("store down")
}

func (failingRevocations) RevokedAt(context.Context, string) (time.Time, error) {
	return time.Time{}, errors.New("store down")
}

// A revocation store that fails refuses tokens with 503 (it cannot tell a
// revoked one) and a revoke with 503, before closing anything.
func TestRevocationStoreDown(t *testing.T) {
	s := startServer(t, chat.Config{}, func(c *Config, o *Options) {
		c.APIKey = testAPIKey
		o.Revocations = failingRevocations{}
	})
	if got, body := s.tryDial(t, mint(t, "alice")); got != http.StatusServiceUnavailable || body["error"] != "unavailable" {
		t.Fatalf("handshake with the store down: HTTP %d %v, want 503 unavailable", got, body)
	}
	if got, out := s.apiDisconnect(t, testAPIKey, "alice", `{"revoke": true}`); got != http.StatusServiceUnavailable || out.Error != "unavailable" {
		t.Fatalf("revoke with the store down: HTTP %d %+v, want 503 unavailable", got, out)
	}
}
