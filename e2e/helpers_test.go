package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/chatd/chatd/internal/testsvc"
	"github.com/chatd/chatd/server"
)

// testSecret is the CHAT_JWT_SECRET of the servers these tests start.
const testSecret = "e2e-test-secret-0123456789abcdef"

// startServer starts chatd serve with testSecret and extra env.
func startServer(t *testing.T, extra map[string]string) *testsvc.Chatd {
	t.Helper()
	env := map[string]string{"CHAT_JWT_SECRET": testSecret}
	for k, v := range extra {
		env[k] = v
	}
	return testsvc.StartChatd(t, env, "serve")
}

// mintToken returns a token for user signed with secret, valid for an hour.
func mintToken(t *testing.T, secret, user string) string {
	t.Helper()
	tok, err := server.MintToken([]byte(secret), user, time.Hour)
	if err != nil {
		t.Fatalf("mint token: %v", err)
	}
	return tok
}

// cliToken runs `chatd token` with args and env (CHAT_* only, nothing
// inherited) and returns its stdout, trimmed.
func cliToken(t *testing.T, env map[string]string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, testsvc.ChatdBinary(t), append([]string{"token"}, args...)...)
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if stderr.Len() > 0 {
		t.Logf("chatd token %s: stderr: %s", strings.Join(args, " "), strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(stdout.String()), err
}

// socketURL returns c's WebSocket URL with the given query values (an
// empty value is left out).
func socketURL(c *testsvc.Chatd, kv ...string) string {
	q := url.Values{}
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] != "" {
			q.Set(kv[i], kv[i+1])
		}
	}
	u := c.WSURL()
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	return u
}

// dialResult is the outcome of a WebSocket handshake.
type dialResult struct {
	conn   *websocket.Conn // nil unless upgraded
	status int
	header http.Header
	body   []byte // at most 1 KiB of a refused handshake's body
	err    error
}

// dial attempts a WebSocket handshake to rawURL with extra headers. An
// upgraded connection is closed when t ends.
func dial(t *testing.T, rawURL string, header http.Header) dialResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, resp, err := websocket.Dial(ctx, rawURL, &websocket.DialOptions{HTTPHeader: header})
	r := dialResult{conn: conn, err: err}
	if resp != nil {
		r.status = resp.StatusCode
		r.header = resp.Header
		if resp.Body != nil {
			r.body, _ = io.ReadAll(resp.Body)
		}
	}
	if conn != nil {
		t.Cleanup(func() { conn.CloseNow() })
	}
	return r
}

// client is an upgraded Phoenix V2 connection. Frames read past while
// looking for another one are kept, in order, for later reads.
type client struct {
	*websocket.Conn
	backlog []wire
}

// mustDial dials a socket that must upgrade.
func mustDial(t *testing.T, rawURL string, header http.Header) *client {
	t.Helper()
	r := dial(t, rawURL, header)
	if r.err != nil || r.conn == nil {
		t.Fatalf("dial %s: status %d, err %v, body %s", redact(rawURL), r.status, r.err, r.body)
	}
	if r.status != http.StatusSwitchingProtocols {
		t.Fatalf("dial %s: status %d, want 101", redact(rawURL), r.status)
	}
	return &client{Conn: r.conn}
}

// wantRefused checks that a handshake was refused with status and a JSON
// error body, and returns the decoded body.
func wantRefused(t *testing.T, what string, r dialResult, status int) map[string]any {
	t.Helper()
	if r.conn != nil {
		t.Fatalf("%s: upgraded (status %d), want HTTP %d", what, r.status, status)
	}
	if r.status != status {
		t.Fatalf("%s: status %d (err %v, body %q), want %d", what, r.status, r.err, r.body, status)
	}
	return wantJSONError(t, what, r.header, r.body)
}

// wantJSONError checks that a response is an application/json object with
// a non-empty "error" string.
func wantJSONError(t *testing.T, what string, header http.Header, body []byte) map[string]any {
	t.Helper()
	if ct := header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("%s: Content-Type %q, want application/json", what, ct)
	}
	var obj map[string]any
	if err := json.Unmarshal(body, &obj); err != nil {
		t.Fatalf("%s: body is not a JSON object: %v: %q", what, err, body)
	}
	if s, _ := obj["error"].(string); s == "" {
		t.Errorf("%s: JSON body has no \"error\" string: %s", what, body)
	}
	return obj
}

func redact(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return rawURL
	}
	q := u.Query()
	if q.Has("token") {
		q.Set("token", "...")
		u.RawQuery = q.Encode()
	}
	return u.String()
}

// httpURL turns a ws:// URL into the http:// one of the same resource.
func httpURL(u string) string {
	if rest, ok := strings.CutPrefix(u, "ws://"); ok {
		return "http://" + rest
	}
	return u
}

// httpDo sends a request to c and returns the status, headers and body.
func httpDo(t *testing.T, method, rawURL, contentType, body string) (int, http.Header, []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, rawURL, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, rawURL, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, rawURL, err)
	}
	return resp.StatusCode, resp.Header, b
}

// wire is a Phoenix V2 frame as read off the socket.
type wire struct {
	JoinRef *string
	Ref     *string
	Topic   string
	Event   string
	Payload json.RawMessage
	Raw     string
}

// send writes one text frame.
func send(t *testing.T, conn *client, frame string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := conn.Write(ctx, websocket.MessageText, []byte(frame)); err != nil {
		t.Fatalf("write %s: %v", frame, err)
	}
}

// read returns the next frame (first from the backlog), failing t after
// 5 s.
func read(t *testing.T, conn *client) wire {
	t.Helper()
	if len(conn.backlog) > 0 {
		w := conn.backlog[0]
		conn.backlog = conn.backlog[1:]
		return w
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	w, err := readFrame(ctx, conn.Conn)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return w
}

// readFrame reads and parses one Phoenix V2 text frame.
func readFrame(ctx context.Context, conn *websocket.Conn) (wire, error) {
	typ, data, err := conn.Read(ctx)
	if err != nil {
		return wire{}, err
	}
	if typ != websocket.MessageText {
		return wire{}, fmt.Errorf("a %v frame, want text", typ)
	}
	var parts []json.RawMessage
	if err := json.Unmarshal(data, &parts); err != nil || len(parts) != 5 {
		return wire{}, fmt.Errorf("frame is not a 5-element JSON array: %s", data)
	}
	w := wire{Raw: string(data), Payload: parts[4]}
	for i, dst := range []**string{&w.JoinRef, &w.Ref} {
		if string(parts[i]) == "null" {
			continue
		}
		var s string
		if err := json.Unmarshal(parts[i], &s); err != nil {
			return wire{}, fmt.Errorf("element %d is neither a string nor null: %s", i, data)
		}
		*dst = &s
	}
	if json.Unmarshal(parts[2], &w.Topic) != nil || json.Unmarshal(parts[3], &w.Event) != nil {
		return wire{}, fmt.Errorf("topic or event is not a string: %s", data)
	}
	return w, nil
}

// readUntil returns the first frame (backlog included) that satisfies
// match, keeping the others in the backlog; it fails t after 5 s.
func readUntil(t *testing.T, conn *client, what string, match func(wire) bool) wire {
	t.Helper()
	for i, w := range conn.backlog {
		if match(w) {
			conn.backlog = slices.Delete(conn.backlog, i, i+1)
			return w
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var skipped []wire
	defer func() { conn.backlog = append(conn.backlog, skipped...) }()
	for {
		w, err := readFrame(ctx, conn.Conn)
		if err != nil {
			var seen []string
			for _, s := range skipped {
				seen = append(seen, s.Raw)
			}
			t.Fatalf("no %s: %v; frames seen meanwhile: %s", what, err, strings.Join(seen, " "))
		}
		if match(w) {
			return w
		}
		skipped = append(skipped, w)
	}
}

// reply is a phx_reply payload.
type reply struct {
	Status   string          `json:"status"`
	Response json.RawMessage `json:"response"`
}

// replyTo reads until the phx_reply to ref and decodes it.
func replyTo(t *testing.T, conn *client, topic, ref string) reply {
	t.Helper()
	w := readUntil(t, conn, "phx_reply to ref "+ref, func(w wire) bool {
		return w.Event == "phx_reply" && w.Topic == topic && w.Ref != nil && *w.Ref == ref
	})
	var r reply
	if err := json.Unmarshal(w.Payload, &r); err != nil {
		t.Fatalf("reply %s: payload %s: %v", ref, w.Payload, err)
	}
	return r
}

// joinRoom joins topic with join_ref and ref "1" and fails t unless ok.
func joinRoom(t *testing.T, conn *client, topic string) {
	t.Helper()
	send(t, conn, `["1","1",`+quote(topic)+`,"phx_join",{}]`)
	if r := replyTo(t, conn, topic, "1"); r.Status != "ok" {
		t.Fatalf("join %s: reply %+v, want ok", topic, r)
	}
}

func quote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}
