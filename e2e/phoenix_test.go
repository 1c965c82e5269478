package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chatd/chatd/server"
)

// jsDir holds compat.mjs and its npm packages, relative to this package.
const jsDir = "js"

// compatSummary is the JSON compat.mjs prints on stdout.
type compatSummary struct {
	OK        bool     `json:"ok"`
	Error     string   `json:"error"`
	Room      string   `json:"room"`
	Steps     []string `json:"steps"`
	PushReply struct {
		Status   string `json:"status"`
		Response struct {
			ID string `json:"id"`
		} `json:"response"`
	} `json:"push_reply"`
	Received struct {
		A, B compatMsg
	} `json:"received"`
	BodyTooLong struct {
		Status   string `json:"status"`
		Response struct {
			Reason string `json:"reason"`
		} `json:"response"`
	} `json:"body_too_long"`
	Leave struct {
		Reply struct {
			Status string `json:"status"`
		} `json:"reply"`
		PhxClose *struct {
			JoinRef *string `json:"join_ref"`
		} `json:"phx_close"`
		OnClose *struct{} `json:"on_close"`
		State   string    `json:"state"`
	} `json:"leave"`
	Heartbeat struct {
		IntervalMS int `json:"interval_ms"`
		Replies    int `json:"replies"`
	} `json:"heartbeat"`
	ServerPushesSeen []string `json:"server_pushes_seen"`
	Disconnected     bool     `json:"disconnected"`
}

type compatMsg struct {
	ID         string `json:"id"`
	Room       string `json:"room"`
	UserID     string `json:"user_id"`
	Body       string `json:"body"`
	InsertedAt string `json:"inserted_at"`
}

// nodeAndPackages returns the node binary, failing t (never skipping) when
// node or the npm packages of js/ are missing.
func nodeAndPackages(t *testing.T) string {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("node is not installed (%v): run ./scripts/deps.sh", err)
	}
	for _, pkg := range []string{"phoenix", "ws"} {
		if _, err := os.Stat(filepath.Join(jsDir, "node_modules", pkg, "package.json")); err != nil {
			t.Fatalf("npm package %s of e2e/js is not installed (%v): run ./scripts/deps.sh", pkg, err)
		}
	}
	return node
}

// TestPhoenixJSClient runs the official phoenix npm client (js/compat.mjs)
// against a real chatd process: two users join room:lobby, one sends, both
// receive the broadcast, an overlong body gets "body too long", leave gets
// ok and phx_close, and 200 ms heartbeats are answered.
func TestPhoenixJSClient(t *testing.T) {
	t.Parallel()
	node := nodeAndPackages(t)
	c := startServer(t, nil)

	// Tokens come from the binary's own token command.
	env := map[string]string{"CHAT_JWT_SECRET": testSecret}
	tokA, err := cliToken(t, env, "--user", "alice")
	if err != nil {
		t.Fatalf("chatd token --user alice: %v", err)
	}
	tokB, err := cliToken(t, env, "--user", "bob")
	if err != nil {
		t.Fatalf("chatd token --user bob: %v", err)
	}

	var s compatSummary
	runNodeScript(t, node, jsDir, 45*time.Second, &s, "compat.mjs",
		"--url", c.URL(), "--token-a", tokA, "--token-b", tokB, "--timeout-ms", "15000")
	t.Logf("compat.mjs steps: %s", strings.Join(s.Steps, "; "))
	if !s.OK {
		t.Fatalf("compat.mjs exited 0 but reports ok=false: %s", s.Error)
	}

	id := s.PushReply.Response.ID
	if s.PushReply.Status != "ok" || id == "" {
		t.Errorf("push reply: status %q id %q, want ok with an id", s.PushReply.Status, id)
	}
	for name, m := range map[string]compatMsg{"alice (sender)": s.Received.A, "bob": s.Received.B} {
		if m.ID != id {
			t.Errorf("%s received id %q, want the push reply's %q", name, m.ID, id)
		}
		if m.Room != "lobby" || m.UserID != "alice" || m.Body != "hello from phoenix.js" {
			t.Errorf("%s received %+v, want room lobby, user_id alice, body %q", name, m, "hello from phoenix.js")
		}
		if _, err := time.Parse(time.RFC3339Nano, m.InsertedAt); err != nil {
			t.Errorf("%s received inserted_at %q: %v", name, m.InsertedAt, err)
		}
	}
	if s.Received.A != s.Received.B {
		t.Errorf("the two users received different messages:\n%+v\n%+v", s.Received.A, s.Received.B)
	}
	if s.BodyTooLong.Status != "error" || s.BodyTooLong.Response.Reason != "body too long" {
		t.Errorf("5000-char body: %+v, want error with reason %q", s.BodyTooLong, "body too long")
	}
	if s.Leave.Reply.Status != "ok" || s.Leave.PhxClose == nil || s.Leave.OnClose == nil || s.Leave.State != "closed" {
		t.Errorf("leave: %+v, want an ok reply, a phx_close frame, onClose and state closed", s.Leave)
	}
	if s.Heartbeat.Replies < 3 {
		t.Errorf("heartbeat: %d replies at %d ms, want at least 3", s.Heartbeat.Replies, s.Heartbeat.IntervalMS)
	}
	if !s.Disconnected {
		t.Errorf("summary: not disconnected cleanly")
	}
	// The contract also promises presence_state after a join; report what
	// the client saw, without failing this test on it.
	t.Logf("server pushes seen by the JS client: %v", s.ServerPushesSeen)

	// The token command's tokens are real tokens for this secret.
	if user, err := server.ParseToken([]byte(testSecret), tokA); err != nil || user != "alice" {
		t.Errorf("chatd token --user alice: ParseToken = %q, %v", user, err)
	}
}

// runNodeScript runs `node script args...` in dir, failing the test with
// node's output when it fails or outlives limit, and decodes the JSON
// summary it prints on stdout into summary.
func runNodeScript(t *testing.T, node, dir string, limit time.Duration, summary any, script string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, append([]string{script}, args...)...)
	cmd.Dir = dir
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	runErr := cmd.Run()
	t.Logf("node %s took %s", script, time.Since(start).Round(time.Millisecond))
	if runErr != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			t.Fatalf("node %s did not end within %s\nstderr:\n%s\nstdout:\n%s", script, limit, &stderr, &stdout)
		}
		t.Fatalf("node %s failed: %v\nstderr:\n%s\nstdout:\n%s", script, runErr, &stderr, &stdout)
	}
	if stderr.Len() > 0 {
		t.Logf("node %s stderr:\n%s", script, &stderr)
	}
	if err := json.Unmarshal(stdout.Bytes(), summary); err != nil {
		t.Fatalf("%s summary is not JSON: %v\n%s", script, err, &stdout)
	}
}
