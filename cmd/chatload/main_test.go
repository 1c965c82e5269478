package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chatd/chatd/internal/testsvc"
)

func TestRefusesRemoteTargets(t *testing.T) {
	if _, err := parseConfig([]string{"-url", "ws://10.1.2.3:4000"}, io.Discard); err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Fatalf("remote target: %v", err)
	}
	if _, err := parseConfig([]string{"-url", "ws://10.1.2.3:4000", "-allow-remote"}, io.Discard); err != nil {
		t.Fatalf("remote target with -allow-remote: %v", err)
	}
	if _, err := parseConfig([]string{"-redis-addr", "10.1.2.3:6379"}, io.Discard); err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Fatalf("remote -redis-addr: %v", err)
	}
	if _, err := parseConfig([]string{"-server-pid", "12,x"}, io.Discard); err == nil {
		t.Fatal("-server-pid 12,x accepted")
	}
	if _, err := parseConfig([]string{"-scenario", "crossnode"}, io.Discard); err == nil {
		t.Fatal("crossnode with one target accepted")
	}
	if _, err := parseConfig([]string{"-duration", "2h"}, io.Discard); err == nil {
		t.Fatal("unbounded duration accepted")
	}
}

func TestHistogramQuantiles(t *testing.T) {
	var h histogram
	for i := 1; i <= 1000; i++ {
		h.add(time.Duration(i) * time.Millisecond)
	}
	for _, c := range []struct{ q, want float64 }{{0.5, 500}, {0.99, 990}} {
		if got := h.quantileMs(c.q); got < c.want*0.95 || got > c.want*1.05 {
			t.Errorf("q%.2f = %.1f ms, want about %.0f", c.q, got, c.want)
		}
	}
	if h.maxMs() != 1000 {
		t.Errorf("max %.1f", h.maxMs())
	}
}

// TestFanoutAgainstChatd runs a short fan-out against a real chatd process:
// every acknowledged message reaches every member.
func TestFanoutAgainstChatd(t *testing.T) {
	node := testsvc.StartChatd(t, map[string]string{"CHAT_USER_RATE": "0", "CHAT_JWT_SECRET": "load-secret"})
	out := filepath.Join(t.TempDir(), "res.json")
	var stdout bytes.Buffer
	err := run(t.Context(), []string{
		"-scenario", "fanout", "-url", node.WSURL(), "-secret", "load-secret",
		"-members", "20", "-publishers", "2", "-rate", "100", "-duration", "1s", "-json", out,
	}, &stdout, io.Discard)
	if err != nil {
		t.Fatalf("%v\n%s", err, stdout.String())
	}
	var res result
	b, _ := os.ReadFile(out)
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatal(err)
	}
	if res.Connections != 20 || res.Acked == 0 || res.Lost != 0 || res.Delivered != res.Acked*20 || res.Dropped != 0 {
		t.Fatalf("result %+v", res)
	}
	t.Logf("%s", stdout.String())
}

// TestCrossNodeRoomsRedisCPU runs crossnode over 8 rooms against two real
// chatd nodes relaying through one real Redis: each room's publisher on the
// first node reaches its member on the second, nothing is lost, and the
// Redis CPU per acknowledged message and both nodes' CPU are reported.
func TestCrossNodeRoomsRedisCPU(t *testing.T) {
	redis := testsvc.StartRedis(t)
	env := map[string]string{"CHAT_USER_RATE": "0", "CHAT_JWT_SECRET": "load-secret", "CHAT_REDIS_URL": redis.URL(), "CHAT_CLUSTER_PROFILE": "local"}
	env["CHAT_NODE_NAME"] = "load1"
	n1 := testsvc.StartChatd(t, env, "serve")
	env["CHAT_NODE_NAME"] = "load2"
	n2 := testsvc.StartChatd(t, env, "serve")
	out := filepath.Join(t.TempDir(), "res.json")
	var stdout bytes.Buffer
	err := run(t.Context(), []string{
		"-scenario", "crossnode", "-url", n1.WSURL() + "," + n2.WSURL(), "-secret", "load-secret",
		"-rooms", "8", "-members", "2", "-publishers", "8", "-rate", "200", "-duration", "2s",
		"-redis-addr", redis.Addr(), "-server-pid", fmt.Sprintf("%d,%d", n1.Pid(), n2.Pid()), "-json", out,
	}, &stdout, io.Discard)
	if err != nil {
		t.Fatalf("%v\n%s", err, stdout.String())
	}
	var res result
	b, _ := os.ReadFile(out)
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatal(err)
	}
	if res.Rooms != 8 || res.Connections != 16 || res.Acked == 0 || res.Lost != 0 || res.Delivered != res.Acked*2 || res.Dropped != 0 {
		t.Fatalf("result %+v", res)
	}
	if res.RedisCPUSec <= 0 || res.RedisCPUPerMsg <= 0 || res.ServerCPUSec <= 0 || res.AckedPerSec <= 0 {
		t.Fatalf("CPU not reported: %+v", res)
	}
	t.Logf("%s", stdout.String())
}

func TestParseRedisCPU(t *testing.T) {
	d, err := parseRedisCPU("# CPU\r\nused_cpu_sys:1.500000\r\nused_cpu_user:0.250000\r\nused_cpu_sys_children:9.0\r\n")
	if err != nil || d != 1750*time.Millisecond {
		t.Fatalf("parseRedisCPU = %v, %v; want 1.75s", d, err)
	}
	if _, err := parseRedisCPU("# CPU\r\nused_cpu_sys:1.5\r\n"); err == nil {
		t.Fatal("INFO without used_cpu_user accepted")
	}
}

func TestSentAt(t *testing.T) {
	for in, want := range map[string]int64{
		`[null,null,"room:a","new_msg",{"id":"x","body":"t=1763712345678901234;xxxx","user_id":"u"}]`: 1763712345678901234,
		`[null,null,"room:a","new_msg",{"body":"t=12;","id":"x"}]`:                                    12,
		`[null,null,"room:a","new_msg",{"body":"hello; t=12;"}]`:                                      -1,
		`[null,null,"room:a","new_msg",{"body":"t=;"}]`:                                               -1,
		`[null,null,"room:a","presence_diff",{}]`:                                                     -1,
	} {
		got, ok := sentAt([]byte(in))
		if (want < 0) == ok || (ok && got != want) {
			t.Errorf("sentAt(%s) = %d, %v; want %d", in, got, ok, want)
		}
	}
}
