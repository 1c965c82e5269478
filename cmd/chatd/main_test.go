package main

import (
	"bytes"
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
