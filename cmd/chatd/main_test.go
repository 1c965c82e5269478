package main

import (
	"bytes"
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
	if err := run(t.Context(), []string{"bogus"}, &out, &errOut); err == nil {
		t.Fatal("unknown command accepted")
	}
}
