package server

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/chatd/chatd/chat"
)

var testSecret = []byte("test-secret")

// testServer is a chatd server on a real loopback listener.
type testServer struct {
	*Server
	hub *chat.Hub
	ts  *httptest.Server
}

// tbWriter sends log lines to the test's log until the test ends; goroutines
// that log after that are silenced instead of panicking the test binary.
type tbWriter struct {
	tb   testing.TB
	mu   sync.Mutex
	done bool
}

func (w *tbWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.tb.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

// testLogger returns a logger writing to tb's log. Register it before
// anything that logs, so that its cleanup runs last.
func testLogger(tb testing.TB) *slog.Logger {
	w := &tbWriter{tb: tb}
	tb.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	level := slog.LevelDebug
	if _, ok := tb.(*testing.B); ok {
		level = slog.LevelWarn
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

// startServer starts a server with hub config hc; mod may change the
// server config and options before New.
func startServer(tb testing.TB, hc chat.Config, mod func(*Config, *Options)) *testServer {
	tb.Helper()
	return startServerWith(tb, hc, chat.Options{}, mod)
}

// startServerWith is startServer with the hub's collaborators ho (its
// Logger is set here).
func startServerWith(tb testing.TB, hc chat.Config, ho chat.Options, mod func(*Config, *Options)) *testServer {
	tb.Helper()
	log := testLogger(tb)
	ho.Logger = log
	hub, err := chat.NewHub(hc, ho)
	if err != nil {
		tb.Fatal(err)
	}
	cfg := Config{JWTSecret: testSecret}
	opts := Options{Hub: hub, Logger: log, Limiter: chat.NewMemoryConnLimiter(0)}
	if mod != nil {
		mod(&cfg, &opts)
	}
	srv, err := New(cfg, opts)
	if err != nil {
		tb.Fatal(err)
	}
	ts := httptest.NewUnstartedServer(nil)
	ts.Config = srv.httpSrv
	ts.Start()
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		ts.Close()
	})
	return &testServer{Server: srv, hub: hub, ts: ts}
}

func (s *testServer) wsURL(token string) string {
	u, _ := url.Parse(s.ts.URL)
	u.Scheme = "ws"
	u.Path = "/socket/websocket"
	u.RawQuery = url.Values{"vsn": {"2.0.0"}, "token": {token}}.Encode()
	return u.String()
}

func mint(tb testing.TB, user string) string {
	tb.Helper()
	tok, err := MintToken(testSecret, user, time.Hour)
	if err != nil {
		tb.Fatal(err)
	}
	return tok
}

// client is a raw Phoenix V2 client over a real WebSocket.
type client struct {
	tb   testing.TB
	conn *websocket.Conn
	user string
	ref  int
	// pending holds broadcasts read while waiting for a reply: a push's
	// reply and its broadcast may come in either order.
	pending []chat.Frame
	// presence holds presence_state and presence_diff frames, which read
	// sets aside for the tests that look at them.
	presence []chat.Frame
	joins    map[string]string // room -> join_ref
	// readTimeout bounds each read; zero means 5 s. Tests of replies of
	// several megabytes raise it: the race detector slows their encoding
	// and decoding tenfold, more on a loaded machine.
	readTimeout time.Duration
}

func (s *testServer) dial(tb testing.TB, user string) *client {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, resp, err := websocket.Dial(ctx, s.wsURL(mint(tb, user)), nil)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		tb.Fatalf("dial as %s: %v (HTTP %d)", user, err, status)
	}
	conn.SetReadLimit(1 << 20)
	tb.Cleanup(func() { conn.CloseNow() })
	return &client{tb: tb, conn: conn, user: user}
}

func (c *client) sendRaw(typ websocket.MessageType, data []byte) {
	c.tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.conn.Write(ctx, typ, data); err != nil {
		c.tb.Fatalf("%s: write: %v", c.user, err)
	}
}

func (c *client) send(joinRef, topic, event string, payload any) string {
	c.tb.Helper()
	c.ref++
	ref := fmt.Sprint(c.ref)
	p, err := json.Marshal(payload)
	if err != nil {
		c.tb.Fatal(err)
	}
	c.sendRaw(websocket.MessageText, chat.AppendFrame(nil, joinRef, ref, topic, event, p))
	return ref
}

// read returns the next frame, failing the test after timeout.
func (c *client) read() chat.Frame {
	c.tb.Helper()
	if len(c.pending) > 0 {
		f := c.pending[0]
		c.pending = c.pending[1:]
		return f
	}
	return c.readWire()
}

// readWire reads the next frame from the connection that is not about
// presence.
func (c *client) readWire() chat.Frame {
	c.tb.Helper()
	for {
		f := c.readAny()
		if f.Event == chat.EventPresenceState || f.Event == chat.EventPresenceDiff {
			c.presence = append(c.presence, f)
			continue
		}
		return f
	}
}

// readAny reads the next frame from the connection.
func (c *client) readAny() chat.Frame {
	c.tb.Helper()
	timeout := c.readTimeout
	if timeout == 0 {
		timeout = 5 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	typ, data, err := c.conn.Read(ctx)
	if err != nil {
		c.tb.Fatalf("%s: read: %v", c.user, err)
	}
	if typ != websocket.MessageText {
		c.tb.Fatalf("%s: got a binary frame", c.user)
	}
	f, err := chat.DecodeFrame(data)
	if err != nil {
		c.tb.Fatalf("%s: server sent an invalid frame %s: %v", c.user, data, err)
	}
	return f
}

type reply struct {
	Status   string          `json:"status"`
	Response json.RawMessage `json:"response"`
}

// expectReply reads the reply to ref and checks its status (any, when
// status is empty).
func (c *client) expectReply(topic, ref, status string) reply {
	c.tb.Helper()
	var f chat.Frame
	for i := range c.pending {
		if c.pending[i].Event == chat.EventReply {
			f = c.pending[i]
			c.pending = append(c.pending[:i:i], c.pending[i+1:]...)
			break
		}
	}
	for f.Event == "" {
		f = c.readWire()
		if f.Event == chat.EventNewMsg && f.Ref == "" {
			c.pending = append(c.pending, f)
			f = chat.Frame{}
		}
	}
	if f.Event != chat.EventReply || f.Ref != ref || f.Topic != topic {
		c.tb.Fatalf("%s: want phx_reply ref %s on %s, got %+v %s", c.user, ref, topic, f, f.Payload)
	}
	var r reply
	if err := json.Unmarshal(f.Payload, &r); err != nil {
		c.tb.Fatal(err)
	}
	if status != "" && r.Status != status {
		c.tb.Fatalf("%s: want status %s, got %s %s", c.user, status, r.Status, r.Response)
	}
	return r
}

// expectError reads the reply to ref and checks it is an error with reason.
func (c *client) expectError(topic, ref, reason string) {
	c.tb.Helper()
	r := c.expectReply(topic, ref, "error")
	var body struct {
		Reason string `json:"reason"`
	}
	json.Unmarshal(r.Response, &body)
	if body.Reason != reason {
		c.tb.Fatalf("%s: want reason %q, got %s", c.user, reason, r.Response)
	}
}

func (c *client) join(room string) string {
	c.tb.Helper()
	c.ref++
	joinRef := fmt.Sprint(c.ref)
	c.sendRaw(websocket.MessageText, chat.AppendFrame(nil, joinRef, joinRef, "room:"+room, chat.EventJoin, []byte("{}")))
	c.expectReply("room:"+room, joinRef, "ok")
	if c.joins == nil {
		c.joins = map[string]string{}
	}
	c.joins[room] = joinRef
	return joinRef
}

// channelRef returns the join_ref of c's join of room.
func (c *client) channelRef(room string) string { return c.joins[room] }

// push sends a new_msg and returns the id from the ok reply.
func (c *client) push(joinRef, room, body string) string {
	c.tb.Helper()
	ref := c.send(joinRef, "room:"+room, chat.EventNewMsg, map[string]string{"body": body})
	r := c.expectReply("room:"+room, ref, "ok")
	var resp struct {
		ID string `json:"id"`
	}
	json.Unmarshal(r.Response, &resp)
	if resp.ID == "" {
		c.tb.Fatalf("%s: ok reply without id: %s", c.user, r.Response)
	}
	return resp.ID
}

// expectMsg reads the next frame and checks it is the broadcast of a message.
func (c *client) expectMsg(room string) chat.Message {
	c.tb.Helper()
	f := c.read()
	if f.Event != chat.EventNewMsg || f.Topic != "room:"+room || f.JoinRef != "" || f.Ref != "" {
		c.tb.Fatalf("%s: want new_msg broadcast on room:%s, got %+v %s", c.user, room, f, f.Payload)
	}
	var m chat.Message
	if err := json.Unmarshal(f.Payload, &m); err != nil {
		c.tb.Fatal(err)
	}
	return m
}

func (c *client) heartbeat() {
	c.tb.Helper()
	ref := c.send("", "phoenix", "heartbeat", map[string]any{})
	c.expectReply("phoenix", ref, "ok")
}

// expectClosed reads until the connection closes and returns its status.
func (c *client) expectClosed() websocket.StatusCode {
	c.tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		_, _, err := c.conn.Read(ctx)
		if err != nil {
			if ctx.Err() != nil {
				c.tb.Fatalf("%s: connection not closed in time", c.user)
			}
			return websocket.CloseStatus(err)
		}
	}
}

func httpGet(tb testing.TB, url string) (*http.Response, map[string]any) {
	tb.Helper()
	resp, err := http.Get(url)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	json.NewDecoder(resp.Body).Decode(&body)
	return resp, body
}
