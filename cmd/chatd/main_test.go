package main

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/chatd/chatd/server"
)

func TestServeConfigFromEnvAndFlags(t *testing.T) {
	t.Setenv("CHAT_ADDR", "127.0.0.1:5000")
	t.Setenv("CHAT_USER_RATE", "2.5")
	t.Setenv("CHAT_SHUTDOWN_TIMEOUT", "7s")
	t.Setenv("CHAT_MIGRATE", "false")
	t.Setenv("CHAT_CLUSTER_JOIN", "a:7946,b:7946")
	c, err := parseServe([]string{"--addr", "127.0.0.1:6000"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.addr != "127.0.0.1:6000" {
		t.Errorf("flag did not win over env: addr %q", c.addr)
	}
	if c.userRate != 2.5 || c.shutdownWait != 7*time.Second || c.migrate || c.clusterJoin != "a:7946,b:7946" {
		t.Errorf("env twins not applied: %+v", c)
	}
	if c.maxConns != 5 || c.userBurst != 20 || c.maxBody != 4000 || c.dbURL != "chat.db" || c.redisURL != "" {
		t.Errorf("defaults: %+v", c)
	}
}

func TestServeConfigRejectsBadValues(t *testing.T) {
	for env, val := range map[string]string{
		"CHAT_USER_RATE":          "fast",
		"CHAT_MAX_CONNS_PER_USER": "-1",
		"CHAT_SHUTDOWN_TIMEOUT":   "soon",
		"CHAT_READ_LIMIT":         "10",
		"CHAT_MIGRATE":            "perhaps",
		"CHAT_MAX_CONNS_PER_IP":   "-2",
		"CHAT_CLUSTER_KEY":        "not base64!",
		"CHAT_DEV_MODE":           "sometimes",
	} {
		t.Run(env, func(t *testing.T) {
			t.Setenv(env, val)
			if _, err := parseServe(nil, io.Discard); err == nil {
				t.Fatalf("%s=%s accepted", env, val)
			}
		})
	}
	if _, err := parseServe([]string{"extra"}, io.Discard); err == nil {
		t.Fatal("a stray argument accepted")
	}
}

func TestTokenCommand(t *testing.T) {
	t.Setenv("CHAT_JWT_SECRET", "s3cret")
	var out, errOut bytes.Buffer
	if err := run(t.Context(), []string{"token", "--user", "alice", "--ttl", "1h"}, &out, &errOut); err != nil {
		t.Fatal(err)
	}
	tok := strings.TrimSpace(out.String())
	if user, err := server.ParseToken([]byte("s3cret"), tok); err != nil || user != "alice" {
		t.Fatalf("minted token %q parses to %q, %v", tok, user, err)
	}
	if err := run(t.Context(), []string{"token"}, &out, &errOut); err == nil {
		t.Fatal("token without --user accepted")
	}

	// No secret: a refusal, not a token signed with the public dev secret,
	// unless dev mode is asked for.
	t.Setenv("CHAT_JWT_SECRET", "")
	out.Reset()
	err := run(t.Context(), []string{"token", "--user", "mallory"}, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "CHAT_JWT_SECRET") || out.Len() != 0 {
		t.Fatalf("token with no secret: err %v, printed %q; want a refusal naming CHAT_JWT_SECRET and nothing printed", err, out.String())
	}
	for _, dev := range [][]string{{"--dev"}, {"--dev=true"}} {
		out.Reset()
		if err := run(t.Context(), append([]string{"token", "--user", "dave"}, dev...), &out, &errOut); err != nil {
			t.Fatalf("token %v: %v", dev, err)
		}
		if user, err := server.ParseToken([]byte(server.DevSecret), strings.TrimSpace(out.String())); err != nil || user != "dave" {
			t.Fatalf("token %v: %q is not a dev token for dave: %q, %v", dev, out.String(), user, err)
		}
	}
	t.Setenv("CHAT_DEV_MODE", "true")
	out.Reset()
	if err := run(t.Context(), []string{"token", "--user", "erin"}, &out, &errOut); err != nil || out.Len() == 0 {
		t.Fatalf("token with CHAT_DEV_MODE=true: %v", err)
	}
	if err := run(t.Context(), []string{"bogus"}, &out, &errOut); err == nil {
		t.Fatal("unknown command accepted")
	}
}

func TestTokenCommandRooms(t *testing.T) {
	t.Setenv("CHAT_JWT_SECRET", "s3cret")
	var out, errOut bytes.Buffer
	args := []string{"token", "--user", "alice", "--room", "team-42-*", "--room", "dm.alice.bob,lobby", "--read-room", "news"}
	if err := run(t.Context(), args, &out, &errOut); err != nil {
		t.Fatal(err)
	}
	tok, err := server.VerifyToken([]byte("s3cret"), strings.TrimSpace(out.String()))
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(tok.Rooms, tok.ReadRooms); got != "[team-42-* dm.alice.bob lobby] [news]" {
		t.Fatalf("claims rooms, read_rooms = %s", got)
	}
	out.Reset()
	if err := run(t.Context(), []string{"token", "--user", "alice", "--room", "bad room"}, &out, &errOut); err == nil || out.Len() > 0 {
		t.Fatalf("an invalid pattern: err %v, printed %q", err, out.String())
	}
}

func TestPublicRoomsFlag(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "[*]"},
		{[]string{"--public-rooms", "lobby, help-*"}, "[lobby help-*]"},
		{[]string{"--public-rooms", "none"}, "[]"},
		{[]string{"--public-rooms="}, "[]"},
	} {
		c, err := parseServe(tc.args, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		got := publicRooms(c.publicRooms)
		if fmt.Sprint(got) != tc.want || got == nil {
			t.Errorf("%q: public rooms %#v, want %s (never nil)", tc.args, got, tc.want)
		}
	}
}

// TestServeRefusesDevModeWithSharedServices: with PostgreSQL or Redis
// configured and no secret, `chatd serve` refuses to start (before it opens
// anything) unless dev mode is asked for; SQLite alone runs in dev mode.
func TestServeRefusesDevModeWithSharedServices(t *testing.T) {
	for _, tc := range []struct {
		name   string
		env    map[string]string
		args   []string
		refuse bool
	}{
		{"postgres", map[string]string{"CHAT_DATABASE_URL": "postgres://u:p@127.0.0.1:1/db"}, nil, true},
		{"postgresql upper case", map[string]string{"CHAT_DATABASE_URL": "POSTGRESQL://u:p@127.0.0.1:1/db"}, nil, true},
		{"redis", map[string]string{"CHAT_REDIS_URL": "redis://127.0.0.1:1/0"}, nil, true},
		{"redis by flag", nil, []string{"--redis-url", "redis://127.0.0.1:1/0"}, true},
		{"postgres with dev mode", map[string]string{"CHAT_DATABASE_URL": "postgres://u:p@127.0.0.1:1/db", "CHAT_DEV_MODE": "true"}, nil, false},
		{"redis with --dev", map[string]string{"CHAT_REDIS_URL": "redis://127.0.0.1:1/0"}, []string{"--dev"}, false},
		{"postgres with a secret", map[string]string{"CHAT_DATABASE_URL": "postgres://u:p@127.0.0.1:1/db", "CHAT_JWT_SECRET": "s"}, nil, false},
		{"sqlite", map[string]string{"CHAT_DATABASE_URL": "chat.db"}, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("CHAT_JWT_SECRET", "")
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			args := tc.args
			c, err := parseServe(args, io.Discard)
			if !tc.refuse {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), "CHAT_JWT_SECRET") || !strings.Contains(err.Error(), "CHAT_DEV_MODE") {
				t.Fatalf("parsed %+v, err %v; want a refusal naming CHAT_JWT_SECRET and CHAT_DEV_MODE", c, err)
			}
			// The whole command refuses the same way, before any I/O.
			var stderr bytes.Buffer
			if err := run(t.Context(), append([]string{"serve"}, args...), io.Discard, &stderr); err == nil || !strings.Contains(err.Error(), "CHAT_DEV_MODE") {
				t.Fatalf("chatd serve: %v; want the dev-mode refusal", err)
			}
		})
	}
}

func TestServeClusterKey(t *testing.T) {
	for _, n := range []int{16, 24, 32} {
		key := bytes.Repeat([]byte{byte(n)}, n)
		t.Setenv("CHAT_CLUSTER_KEY", base64.StdEncoding.EncodeToString(key))
		c, err := parseServe(nil, io.Discard)
		if err != nil || !bytes.Equal(c.clusterKey, key) {
			t.Fatalf("%d-byte key: %v, %x", n, err, c.clusterKey)
		}
	}
	t.Setenv("CHAT_CLUSTER_KEY", base64.StdEncoding.EncodeToString(make([]byte, 20)))
	if _, err := parseServe(nil, io.Discard); err == nil || !strings.Contains(err.Error(), "20 bytes") {
		t.Fatalf("a 20-byte key: %v, want an error naming its size", err)
	}
	t.Setenv("CHAT_CLUSTER_KEY", "")
	if c, err := parseServe(nil, io.Discard); err != nil || c.clusterKey != nil || c.maxConnsPerIP != 0 {
		t.Fatalf("defaults: %v, key %x, max-conns-per-ip %d", err, c.clusterKey, c.maxConnsPerIP)
	}
}

// The flags reach the node's configuration, CHAT_HTTP_ADVERTISE included.
func TestServeNodeConfig(t *testing.T) {
	t.Setenv("CHAT_HTTP_ADVERTISE", "chat-1.example:4000")
	t.Setenv("CHAT_CLUSTER_JOIN", "a:7946, b:7946")
	c, err := parseServe([]string{"--addr", "127.0.0.1:6000", "--max-conns-per-ip", "3", "--allowed-origins", "x.example,,y.example"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	nc := c.nodeConfig()
	if nc.HTTPAdvertise != "chat-1.example:4000" || nc.Addr != "127.0.0.1:6000" || nc.MaxConnsPerIP != 3 ||
		fmt.Sprint(nc.ClusterJoin) != "[a:7946 b:7946]" || fmt.Sprint(nc.AllowedOrigins) != "[x.example y.example]" ||
		nc.ShutdownTimeout != 20*time.Second || !nc.Migrate || nc.PersistQueue != 10000 || nc.ClusterAddr != ":7946" {
		t.Errorf("node config: %+v", nc)
	}
	t.Setenv("CHAT_HTTP_ADVERTISE", "")
	if c, err = parseServe(nil, io.Discard); err != nil || c.nodeConfig().HTTPAdvertise != "" {
		t.Fatalf("default http-advertise: %v, %+v", err, c)
	}
}
