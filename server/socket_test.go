package server

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"
	"github.com/google/uuid"

	"github.com/chatd/chatd/chat"
)

func TestChatRoundTrip(t *testing.T) {
	s := startServer(t, chat.Config{}, nil)
	alice, bob, carol := s.dial(t, "alice"), s.dial(t, "bob"), s.dial(t, "carol")
	aj := alice.join("lobby")
	bob.join("lobby")
	carol.join("lobby")
	outsider := s.dial(t, "dave")
	outsider.join("elsewhere")

	before := time.Now().UTC().Add(-time.Second)
	id := alice.push(aj, "lobby", "hi <b>all</b> ✓")
	if u, err := uuid.Parse(id); err != nil || u.Version() != 7 {
		t.Fatalf("id %q is not a UUIDv7: %v", id, err)
	}
	for _, c := range []*client{alice, bob, carol} {
		m := c.expectMsg("lobby")
		if m.ID != id || m.Room != "lobby" || m.UserID != "alice" || m.Body != "hi <b>all</b> ✓" {
			t.Fatalf("%s got %+v", c.user, m)
		}
		if m.InsertedAt.Before(before) || m.InsertedAt.After(time.Now().Add(time.Second)) {
			t.Fatalf("inserted_at %v out of range", m.InsertedAt)
		}
	}
	// A member of another room receives nothing of lobby: its next frame
	// is the reply to its own heartbeat.
	outsider.heartbeat()
}

func TestBroadcastFrameShape(t *testing.T) {
	s := startServer(t, chat.Config{}, nil)
	c := s.dial(t, "alice")
	j := c.join("lobby")
	c.send(j, "room:lobby", "new_msg", map[string]string{"body": "x"})
	var data []byte
	for data == nil { // the reply and the broadcast, in either order
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, d, err := c.conn.Read(ctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if f, _ := chat.DecodeFrame(d); f.Event == "new_msg" {
			data = d
		}
	}
	var parts []json.RawMessage
	if err := json.Unmarshal(data, &parts); err != nil || len(parts) != 5 {
		t.Fatalf("broadcast %s is not a 5-array", data)
	}
	if string(parts[0]) != "null" || string(parts[1]) != "null" || string(parts[2]) != `"room:lobby"` || string(parts[3]) != `"new_msg"` {
		t.Fatalf("broadcast header %s", data)
	}
	var payload map[string]any
	json.Unmarshal(parts[4], &payload)
	for _, k := range []string{"id", "room", "user_id", "body", "inserted_at"} {
		if _, ok := payload[k]; !ok {
			t.Fatalf("payload %s lacks %s", parts[4], k)
		}
	}
	if len(payload) != 5 {
		t.Fatalf("payload %s has extra fields", parts[4])
	}
}

func TestRoomOrderIsTheSameForEveryMember(t *testing.T) {
	s := startServer(t, chat.Config{}, nil)
	const senders, each = 4, 50
	readers := make([]*client, 3)
	for i := range readers {
		readers[i] = s.dial(t, fmt.Sprint("reader", i))
		readers[i].join("race")
	}
	var wg sync.WaitGroup
	for i := 0; i < senders; i++ {
		c := s.dial(t, fmt.Sprint("sender", i))
		j := c.join("race")
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; k < each; k++ {
				ref := c.send(j, "room:race", "new_msg", map[string]string{"body": fmt.Sprint(k)})
				_ = ref
			}
		}()
	}
	wg.Wait()
	var orders [][]string
	for _, r := range readers {
		var ids []string
		for len(ids) < senders*each {
			m := r.expectMsg("race")
			ids = append(ids, m.ID)
		}
		orders = append(orders, ids)
	}
	for i := 1; i < len(orders); i++ {
		for k := range orders[0] {
			if orders[i][k] != orders[0][k] {
				t.Fatalf("reader %d saw a different order at %d", i, k)
			}
		}
	}
	// Ids increase in delivery order, so "since <id>" recovery is gap-free.
	for k := 1; k < len(orders[0]); k++ {
		if orders[0][k] <= orders[0][k-1] {
			t.Fatalf("id %d (%s) is not greater than the one before (%s)", k, orders[0][k], orders[0][k-1])
		}
	}
}

func TestHeartbeat(t *testing.T) {
	s := startServer(t, chat.Config{}, nil)
	c := s.dial(t, "alice")
	c.sendRaw(websocket.MessageText, []byte(`[null,"5","phoenix","heartbeat",{}]`))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, data, err := c.conn.Read(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := `[null,"5","phoenix","phx_reply",{"status":"ok","response":{}}]`; string(data) != want {
		t.Fatalf("heartbeat reply %s, want %s", data, want)
	}
}

func TestLeave(t *testing.T) {
	s := startServer(t, chat.Config{}, nil)
	a, b := s.dial(t, "alice"), s.dial(t, "bob")
	aj := a.join("lobby")
	bj := b.join("lobby")

	ref := b.send(bj, "room:lobby", "phx_leave", map[string]any{})
	b.expectReply("room:lobby", ref, "ok")
	f := b.read()
	if f.Event != "phx_close" || f.JoinRef != bj || f.Topic != "room:lobby" {
		t.Fatalf("want phx_close for join_ref %s, got %+v", bj, f)
	}
	// Bob gets no more lobby messages; alice does.
	a.push(aj, "lobby", "after bob left")
	a.expectMsg("lobby")
	b.heartbeat()
	// Pushing to the left topic is an unmatched topic.
	ref = b.send(bj, "room:lobby", "new_msg", map[string]string{"body": "x"})
	b.expectError("room:lobby", ref, "unmatched topic")
	// Leaving again as well.
	ref = b.send(bj, "room:lobby", "phx_leave", map[string]any{})
	b.expectError("room:lobby", ref, "unmatched topic")
}

func TestDuplicateJoinReplacesChannel(t *testing.T) {
	s := startServer(t, chat.Config{}, nil)
	c := s.dial(t, "alice")
	first := c.join("lobby")
	c.ref++
	second := fmt.Sprint(c.ref)
	c.sendRaw(websocket.MessageText, chat.AppendFrame(nil, second, second, "room:lobby", "phx_join", []byte(`{}`)))
	f := c.read()
	if f.Event != "phx_close" || f.JoinRef != first {
		t.Fatalf("want phx_close of the first join, got %+v", f)
	}
	c.expectReply("room:lobby", second, "ok")
	// The old join_ref no longer matches.
	ref := c.send(first, "room:lobby", "new_msg", map[string]string{"body": "x"})
	c.expectError("room:lobby", ref, "unmatched topic")
	c.push(second, "lobby", "y")
	if m := c.expectMsg("lobby"); m.Body != "y" {
		t.Fatalf("got %+v", m)
	}
	if st := s.hub.Stats(); st.Rooms != 1 {
		t.Fatalf("rooms = %d, want 1", st.Rooms)
	}
}

// TestBadInput sends each kind of bad input, checks its reply, and checks
// that the connection and the other member of the room are unaffected.
func TestBadInput(t *testing.T) {
	s := startServer(t, chat.Config{MaxBody: 10, MaxChannels: 3}, nil)
	bad, other := s.dial(t, "mallory"), s.dial(t, "alice")
	bj := bad.join("lobby")
	oj := other.join("lobby")

	phoenixErr := func(reason string) func(*testing.T) {
		return func(t *testing.T) {
			f := bad.read()
			var r reply
			json.Unmarshal(f.Payload, &r)
			if f.Topic != "phoenix" || f.Event != "phx_reply" || f.Ref != "" || r.Status != "error" || !strings.Contains(string(r.Response), reason) {
				t.Fatalf("got %+v %s", f, f.Payload)
			}
		}
	}
	cases := []struct {
		name   string
		frame  string
		binary bool
		check  func(*testing.T)
	}{
		{"not json", `hello`, false, phoenixErr("invalid frame")},
		{"json object", `{"topic":"room:lobby"}`, false, phoenixErr("invalid frame")},
		{"four elements", `["1","2","room:lobby","new_msg"]`, false, phoenixErr("invalid frame")},
		{"numeric ref", `[1,2,"room:lobby","new_msg",{}]`, false, phoenixErr("invalid frame")},
		{"empty topic", `["1","2","","new_msg",{}]`, false, phoenixErr("invalid frame")},
		{"truncated", `["1","2","room:lob`, false, phoenixErr("invalid frame")},
		{"binary garbage", "\x07\x01\x02", true, phoenixErr("binary frames not supported")},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			typ := websocket.MessageText
			if tc.binary {
				typ = websocket.MessageBinary
			}
			bad.sendRaw(typ, []byte(tc.frame))
			tc.check(t)
		})
	}

	replyCases := []struct {
		name, joinRef, topic, event, payload, reason string
	}{
		{"unknown topic", "9", "lobby", "phx_join", `{}`, "unmatched topic"},
		{"bad room name", "9", "room:no spaces", "phx_join", `{}`, "unmatched topic"},
		{"room name too long", "9", "room:" + strings.Repeat("a", 65), "phx_join", `{}`, "unmatched topic"},
		{"push to unjoined room", "9", "room:other", "new_msg", `{"body":"x"}`, "unmatched topic"},
		{"wrong join_ref", "999", "room:lobby", "new_msg", `{"body":"x"}`, "unmatched topic"},
		{"unknown event", bj, "room:lobby", "shout", `{}`, "unknown event"},
		{"unknown phoenix event", "", "phoenix", "reboot", `{}`, "unknown event"},
		{"payload not object", bj, "room:lobby", "new_msg", `"hi"`, "invalid payload"},
		{"join payload not object", "9", "room:x", "phx_join", `[]`, "invalid payload"},
		{"history too large", "9", "room:x", "phx_join", `{"history":201}`, "invalid payload"},
		{"no body", bj, "room:lobby", "new_msg", `{}`, "invalid payload"},
		{"numeric body", bj, "room:lobby", "new_msg", `{"body":42}`, "invalid payload"},
		{"null body", bj, "room:lobby", "new_msg", `{"body":null}`, "invalid payload"},
		{"empty body", bj, "room:lobby", "new_msg", `{"body":""}`, "invalid payload"},
		{"NUL in body", bj, "room:lobby", "new_msg", `{"body":"a\u0000b"}`, "invalid payload"},
		{"body too long", bj, "room:lobby", "new_msg", `{"body":"12345678901"}`, "body too long"},
	}
	for _, tc := range replyCases {
		t.Run(tc.name, func(t *testing.T) {
			bad.ref++
			ref := fmt.Sprint(bad.ref)
			bad.sendRaw(websocket.MessageText, chat.AppendFrame(nil, tc.joinRef, ref, tc.topic, tc.event, []byte(tc.payload)))
			bad.expectError(tc.topic, ref, tc.reason)
		})
	}

	t.Run("binary push answered on its ref", func(t *testing.T) {
		// Phoenix V2 binary push: kind 0, sizes of join_ref, ref, topic,
		// event, then the strings and the payload.
		jr, ref, topic, event := bj, "77", "room:lobby", "new_msg"
		data := []byte{0, byte(len(jr)), byte(len(ref)), byte(len(topic)), byte(len(event))}
		data = append(data, jr+ref+topic+event+"payload"...)
		bad.sendRaw(websocket.MessageBinary, data)
		bad.expectError(topic, ref, "binary frames not supported")
	})

	t.Run("body cap counts characters not bytes", func(t *testing.T) {
		bad.push(bj, "lobby", "éééééééééé") // 10 characters, 20 bytes
		bad.expectMsg("lobby")
		other.expectMsg("lobby")
	})

	t.Run("channel cap", func(t *testing.T) {
		bad.join("two")
		bad.join("three")
		bad.ref++
		ref := fmt.Sprint(bad.ref)
		bad.sendRaw(websocket.MessageText, chat.AppendFrame(nil, ref, ref, "room:four", "phx_join", []byte(`{}`)))
		bad.expectError("room:four", ref, "too many channels joined")
	})

	// After all that, both connections work and the other user's messages
	// flow.
	bad.heartbeat()
	id := other.push(oj, "lobby", "still here")
	if m := bad.expectMsg("lobby"); m.ID != id {
		t.Fatalf("got %+v", m)
	}
	if m := other.expectMsg("lobby"); m.ID != id {
		t.Fatalf("got %+v", m)
	}
}

func TestOversizedFrameClosesOnlyThatSocket(t *testing.T) {
	s := startServer(t, chat.Config{ReadLimit: 4096}, nil)
	big, other := s.dial(t, "mallory"), s.dial(t, "alice")
	big.join("lobby")
	oj := other.join("lobby")
	payload := fmt.Sprintf(`["1","2","room:lobby","new_msg",{"body":%q}]`, strings.Repeat("x", 8000))
	big.sendRaw(websocket.MessageText, []byte(payload))
	if code := big.expectClosed(); code != websocket.StatusMessageTooBig {
		t.Fatalf("close status %d, want 1009", code)
	}
	id := other.push(oj, "lobby", "fine")
	if m := other.expectMsg("lobby"); m.ID != id {
		t.Fatalf("got %+v", m)
	}
}

func TestRateLimit(t *testing.T) {
	s := startServer(t, chat.Config{UserRate: 0.5, UserBurst: 3}, nil)
	// Two connections of one user share the bucket.
	a1, a2 := s.dial(t, "alice"), s.dial(t, "alice")
	j1, j2 := a1.join("lobby"), a2.join("lobby")
	a1.push(j1, "lobby", "1")
	a2.expectMsg("lobby")
	a1.expectMsg("lobby")
	a2.push(j2, "lobby", "2")
	a2.expectMsg("lobby")
	a1.expectMsg("lobby")
	a1.push(j1, "lobby", "3")
	a1.expectMsg("lobby")
	a2.expectMsg("lobby")
	ref := a2.send(j2, "room:lobby", "new_msg", map[string]string{"body": "4"})
	a2.expectError("room:lobby", ref, "rate_limited")
	// Another user is not limited by alice's bucket.
	b := s.dial(t, "bob")
	bj := b.join("lobby")
	b.push(bj, "lobby", "bob's")
}

func TestSlowConsumerIsDisconnected(t *testing.T) {
	s := startServer(t, chat.Config{SendQueueLen: 64, SendQueueBytes: 256 << 10, WriteTimeout: 2 * time.Second}, nil)
	slow, fast, sender := s.dial(t, "slow"), s.dial(t, "fast"), s.dial(t, "sender")
	slow.join("lobby")
	fast.join("lobby")
	sj := sender.join("lobby")

	// The fast reader drains concurrently; the slow one never reads, so its
	// TCP buffers fill, then its queue.
	body := strings.Repeat("x", 3900)
	const n = 3000
	got := make(chan int, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		count := 0
		for count < n {
			_, data, err := fast.conn.Read(ctx)
			if err != nil {
				break
			}
			if f, _ := chat.DecodeFrame(data); f.Event == "new_msg" {
				count++
			}
		}
		got <- count
	}()
	for i := 0; i < n; i++ {
		sender.push(sj, "lobby", body)
		sender.pending = sender.pending[:0]
	}
	if c := <-got; c != n {
		t.Fatalf("fast reader got %d of %d messages", c, n)
	}
	// The slow client's socket buffers are full, so the close frame (1008)
	// may never reach it: what it sees is the connection ending.
	if code := slow.expectClosed(); code != websocket.StatusPolicyViolation && code != -1 {
		t.Fatalf("slow consumer closed with %d, want 1008 or a dropped connection", code)
	}
	if st := s.hub.Stats(); st.SlowConsumers != 1 {
		t.Fatalf("slow consumers = %d, want 1", st.SlowConsumers)
	}
}

func TestIdleConnectionIsClosed(t *testing.T) {
	// The busy client sends a frame every 100 ms, far inside the idle
	// timeout even on a loaded machine; the idle one sends none.
	s := startServer(t, chat.Config{IdleTimeout: 1500 * time.Millisecond}, nil)
	idle, busy := s.dial(t, "idle"), s.dial(t, "busy")
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		busy.heartbeat()
		time.Sleep(100 * time.Millisecond)
	}
	if code := idle.expectClosed(); code != websocket.StatusPolicyViolation {
		t.Fatalf("idle close status %d", code)
	}
	busy.heartbeat() // frames kept the busy one open
}

func TestConnectionLimit(t *testing.T) {
	s := startServer(t, chat.Config{}, func(_ *Config, o *Options) {
		o.Limiter = chat.NewMemoryConnLimiter(2)
	})
	a1 := s.dial(t, "alice")
	s.dial(t, "alice")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, resp, err := websocket.Dial(ctx, s.wsURL(mint(t, "alice")), nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("third connection: err %v, resp %v; want 429", err, resp)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("429 content type %q", ct)
	}
	s.dial(t, "bob") // other users are not affected
	// Closing one frees its slot.
	a1.conn.Close(websocket.StatusNormalClosure, "")
	deadline := time.Now().Add(5 * time.Second)
	for {
		conn, _, err := websocket.Dial(ctx, s.wsURL(mint(t, "alice")), nil)
		if err == nil {
			conn.CloseNow()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("slot not freed: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestUpgradeRefusals(t *testing.T) {
	s := startServer(t, chat.Config{}, func(c *Config, _ *Options) {
		c.AllowedOrigins = []string{"chat.example.com", "https://*.example.org"}
	})
	expired, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.RegisteredClaims{
		Subject:   "alice",
		ExpiresAt: jwt.NewNumericDate(time.Now().Add(-time.Minute)),
	}).SignedString(testSecret)
	noExp, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.RegisteredClaims{Subject: "alice"}).SignedString(testSecret)
	noSub, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.RegisteredClaims{
		ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Minute)),
	}).SignedString(testSecret)
	none, _ := jwt.NewWithClaims(jwt.SigningMethodNone, jwt.RegisteredClaims{
		Subject:   "alice",
		ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Minute)),
	}).SignedString(jwt.UnsafeAllowNoneSignatureType)
	other, _ := MintToken([]byte("another-secret"), "alice", time.Hour)
	good := mint(t, "alice")
	cases := []struct {
		name   string
		query  string
		origin string
		status int
		code   string
	}{
		{"no vsn", "token=" + good, "", 400, "unsupported_version"},
		{"old vsn", "vsn=1.0.0&token=" + good, "", 400, "unsupported_version"},
		{"no token", "vsn=2.0.0", "", 401, "unauthorized"},
		{"garbage token", "vsn=2.0.0&token=abc.def.ghi", "", 401, "unauthorized"},
		{"expired token", "vsn=2.0.0&token=" + expired, "", 401, "unauthorized"},
		{"other secret", "vsn=2.0.0&token=" + other, "", 401, "unauthorized"},
		{"no exp", "vsn=2.0.0&token=" + noExp, "", 401, "unauthorized"},
		{"no sub", "vsn=2.0.0&token=" + noSub, "", 401, "unauthorized"},
		{"alg none", "vsn=2.0.0&token=" + none, "", 401, "unauthorized"},
		{"foreign origin", "vsn=2.0.0&token=" + good, "https://evil.example.net", 403, "forbidden_origin"},
		{"allowed origin", "vsn=2.0.0&token=" + good, "https://chat.example.com", 101, ""},
		{"allowed scheme pattern", "vsn=2.0.0&token=" + good, "https://a.example.org", 101, ""},
		{"wrong scheme", "vsn=2.0.0&token=" + good, "http://a.example.org", 403, "forbidden_origin"},
		{"same origin", "vsn=2.0.0&token=" + good, "SAME", 101, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			h := http.Header{}
			if tc.origin == "SAME" {
				h.Set("Origin", s.ts.URL)
			} else if tc.origin != "" {
				h.Set("Origin", tc.origin)
			}
			u := "ws" + strings.TrimPrefix(s.ts.URL, "http") + "/socket/websocket?" + tc.query
			conn, resp, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPHeader: h})
			if tc.status == 101 {
				if err != nil {
					t.Fatalf("dial: %v", err)
				}
				conn.CloseNow()
				return
			}
			if err == nil {
				conn.CloseNow()
				t.Fatalf("upgrade succeeded, want %d", tc.status)
			}
			if resp == nil || resp.StatusCode != tc.status {
				t.Fatalf("status %v, want %d", resp, tc.status)
			}
			var body errorBody
			if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || body.Error != tc.code || body.Reason == "" {
				t.Fatalf("body %+v (%v), want error %q with a reason", body, err, tc.code)
			}
		})
	}
}

func TestDevToken(t *testing.T) {
	dev := startServer(t, chat.Config{}, func(c *Config, _ *Options) { c.JWTSecret = nil })
	resp, err := http.Post(dev.ts.URL+"/api/dev/token", "application/json", strings.NewReader(`{"name":"zoe"}`))
	if err != nil {
		t.Fatal(err)
	}
	var body struct{ Token, UserID string }
	json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	if resp.StatusCode != 200 || body.Token == "" {
		t.Fatalf("dev token: %d %+v", resp.StatusCode, body)
	}
	if user, err := ParseToken([]byte(DevSecret), body.Token); err != nil || user != "zoe" {
		t.Fatalf("dev token parses to %q, %v", user, err)
	}
	resp, _ = http.Post(dev.ts.URL+"/api/dev/token", "application/json", strings.NewReader(`{"name":""}`))
	if resp.StatusCode != 400 {
		t.Fatalf("empty name: %d", resp.StatusCode)
	}

	prod := startServer(t, chat.Config{}, nil)
	resp, _ = http.Post(prod.ts.URL+"/api/dev/token", "application/json", strings.NewReader(`{"name":"zoe"}`))
	if resp.StatusCode != 404 {
		t.Fatalf("dev token with a secret set: %d, want 404", resp.StatusCode)
	}
	// A dev token does not open a server with a real secret.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, resp, err = websocket.Dial(ctx, prod.wsURL(body.Token), nil)
	if err == nil || resp.StatusCode != 401 {
		t.Fatalf("dev token on a production server: %v", err)
	}
}

func TestShutdown(t *testing.T) {
	s := startServer(t, chat.Config{}, nil)
	a, b := s.dial(t, "alice"), s.dial(t, "bob")
	a.join("lobby")
	b.join("lobby")
	if resp, _ := httpGet(t, s.ts.URL+"/health/ready"); resp.StatusCode != 200 {
		t.Fatalf("ready before shutdown: %d", resp.StatusCode)
	}

	s.Drain()
	resp, body := httpGet(t, s.ts.URL+"/health/ready")
	if resp.StatusCode != 503 || body["reason"] != "draining" {
		t.Fatalf("ready while draining: %d %v", resp.StatusCode, body)
	}
	if resp, _ := httpGet(t, s.ts.URL+"/health/live"); resp.StatusCode != 200 {
		t.Fatalf("live while draining: %d", resp.StatusCode)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, resp, err := websocket.Dial(ctx, s.wsURL(mint(t, "carol")), nil)
	if err == nil || resp.StatusCode != 503 {
		t.Fatalf("connect while draining: %v", err)
	}

	done := make(chan error, 1)
	go func() { done <- s.Shutdown(ctx) }()
	for _, c := range []*client{a, b} {
		if code := c.expectClosed(); code != websocket.StatusGoingAway {
			t.Fatalf("%s closed with %d, want 1001", c.user, code)
		}
	}
	if err := <-done; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if st := s.hub.Stats(); st.Connections != 0 || st.Rooms != 0 || st.Users != 0 {
		t.Fatalf("after shutdown: %+v", st)
	}
}

func TestShutdownDeadlineDropsStuckClients(t *testing.T) {
	s := startServer(t, chat.Config{}, nil)
	c := s.dial(t, "alice")
	c.join("lobby")
	// The client never reads, so it never answers the close handshake; a
	// short deadline must still return.
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := s.Shutdown(ctx)
	if err != nil && err.Error() == "" {
		t.Fatal("empty error")
	}
	if time.Since(start) > 8*time.Second {
		t.Fatalf("shutdown took %v", time.Since(start))
	}
	if st := s.hub.Stats(); st.Connections != 0 {
		t.Fatalf("connections after shutdown: %d", st.Connections)
	}
}

func TestOpsAccess(t *testing.T) {
	stats := func(context.Context) any { return map[string]any{"nodes": []string{"n1"}} }
	open := startServer(t, chat.Config{}, func(_ *Config, o *Options) { o.Stats = stats })
	get := func(url string, hdr http.Header) int {
		req, _ := http.NewRequest("GET", url, nil)
		for k, v := range hdr {
			req.Header[k] = v
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if c := get(open.ts.URL+"/api/stats", nil); c != 200 {
		t.Fatalf("loopback without admin token: %d", c)
	}
	if c := get(open.ts.URL+"/api/stats", http.Header{"X-Forwarded-For": {"203.0.113.9"}}); c != 403 {
		t.Fatalf("proxied request without admin token: %d", c)
	}

	locked := startServer(t, chat.Config{}, func(c *Config, o *Options) { o.Stats = stats; c.AdminToken = "s3cret-admin" })
	for name, hdr := range map[string]http.Header{
		"none":       nil,
		"user token": {"Authorization": {"Bearer " + mint(t, "alice")}},
		"wrong":      {"Authorization": {"Bearer nope"}},
		"basic":      {"Authorization": {"Basic s3cret-admin"}},
	} {
		if c := get(locked.ts.URL+"/api/stats", hdr); c != 401 {
			t.Errorf("%s: %d, want 401", name, c)
		}
	}
	if c := get(locked.ts.URL+"/api/stats", http.Header{"Authorization": {"Bearer s3cret-admin"}}); c != 200 {
		t.Fatalf("admin token: %d", c)
	}
}

// TestConnectionLimitIgnoresClientRequestID: a client repeating one
// X-Request-ID on every handshake still gets only its slots.
func TestConnectionLimitIgnoresClientRequestID(t *testing.T) {
	s := startServer(t, chat.Config{}, func(_ *Config, o *Options) {
		o.Limiter = chat.NewMemoryConnLimiter(2)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	opts := &websocket.DialOptions{HTTPHeader: http.Header{"X-Request-Id": {"same-id-every-time"}}}
	accepted := 0
	for i := 0; i < 4; i++ {
		conn, _, err := websocket.Dial(ctx, s.wsURL(mint(t, "alice")), opts)
		if err == nil {
			accepted++
			defer conn.CloseNow()
		}
	}
	if accepted != 2 {
		t.Fatalf("%d connections accepted with a repeated X-Request-ID, want 2", accepted)
	}
}
