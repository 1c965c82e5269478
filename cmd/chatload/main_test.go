package main

import (
	"bytes"
	"encoding/json"
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
