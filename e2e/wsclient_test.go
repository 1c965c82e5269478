package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/chatd/chatd/internal/testsvc"
	"github.com/chatd/chatd/server"
)

// psClient is a Phoenix V2 client for load and persistence tests. Unlike
// client (helpers_test.go), which one test goroutine reads frame by frame,
// psClient reads in its own goroutine, so any number of goroutines may push
// on it at once: replies are matched to their push by ref, and new_msg
// broadcasts are collected per topic, in arrival order, with the time each
// was read. Nothing in it calls t.Fatal off the test goroutine: failures
// come back as errors.
type psClient struct {
	user string
	conn *websocket.Conn

	mu       sync.Mutex
	nextRef  int
	joinRefs map[string]string       // topic -> join_ref of the live join
	pending  map[string]chan psReply // ref -> where its reply goes
	msgs     map[string][]psMsg      // topic -> new_msg broadcasts, in order
	changed  chan struct{}           // closed and replaced when msgs grows
	others   []string                // other frames read (raw), for diagnostics
	readErr  error                   // why the reader ended
	done     chan struct{}           // closed when the reader has ended
	hbStop   chan struct{}
	hbOnce   sync.Once

	// rejoin, set by recoverOnError, makes the client answer phx_error as
	// the phoenix client does: it rejoins the topic with "since" the last
	// message read, and the reply's messages join the topic's broadcasts,
	// in order. rejoins maps the ref of such a join to its topic.
	rejoin    bool
	rejoins   map[string]string
	recovered []bool // "recovered" of each such rejoin's reply
}

// recoverOnError makes c rejoin a topic after phx_error and recover what
// it missed, as the phoenix client (with since as a join param function)
// does.
func (c *psClient) recoverOnError() {
	c.mu.Lock()
	c.rejoin = true
	c.rejoins = make(map[string]string)
	c.mu.Unlock()
}

// rejoinResults returns the "recovered" of every rejoin after phx_error.
func (c *psClient) rejoinResults() []bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]bool(nil), c.recovered...)
}

// sendRejoin rejoins topic with since = the last message read on it; the
// reader calls it, without c.mu.
func (c *psClient) sendRejoin(topic string) {
	c.mu.Lock()
	payload := map[string]any{}
	if ms := c.msgs[topic]; len(ms) > 0 {
		payload["since"] = ms[len(ms)-1].ID
	}
	c.nextRef++
	ref := strconv.Itoa(c.nextRef)
	c.joinRefs[topic] = ref
	c.rejoins[ref] = topic
	c.mu.Unlock()
	frame, _ := json.Marshal([]any{ref, ref, topic, "phx_join", payload})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c.conn.Write(ctx, websocket.MessageText, frame) // an error ends the reader too
}

// takeRejoinReply merges the reply to a rejoin into topic's messages, with
// c.mu held; false means ref was not a rejoin.
func (c *psClient) takeRejoinReplyLocked(ref string, r psReply, at time.Time) bool {
	topic, ok := c.rejoins[ref]
	if !ok {
		return false
	}
	delete(c.rejoins, ref)
	var resp psJoinResponse
	if r.Status == "ok" && json.Unmarshal(r.Response, &resp) == nil {
		last := ""
		if ms := c.msgs[topic]; len(ms) > 0 {
			last = ms[len(ms)-1].ID
		}
		for _, m := range resp.Messages {
			if m.ID > last {
				m.At = at
				c.msgs[topic] = append(c.msgs[topic], m)
			}
		}
		c.recovered = append(c.recovered, resp.Recovered != nil && *resp.Recovered)
		close(c.changed)
		c.changed = make(chan struct{})
	} else {
		c.recovered = append(c.recovered, false)
	}
	return true
}

// psReply is a phx_reply as the client saw it. Err is set instead when the
// connection ended before the reply came.
type psReply struct {
	Status   string          `json:"status"`
	Response json.RawMessage `json:"response"`
	At       time.Time       `json:"-"`
	Raw      string          `json:"-"`
	Err      error           `json:"-"`
}

// reason is the "reason" of an error reply ("" for another shape).
func (r psReply) reason() string {
	var v struct {
		Reason string `json:"reason"`
	}
	_ = json.Unmarshal(r.Response, &v)
	return v.Reason
}

// id is the "id" of a push's ok reply.
func (r psReply) id() string {
	var v struct {
		ID string `json:"id"`
	}
	_ = json.Unmarshal(r.Response, &v)
	return v.ID
}

// psMsg is a chat message as broadcast (or as listed in a join reply), and
// when the client read it.
type psMsg struct {
	ID         string    `json:"id"`
	Room       string    `json:"room"`
	UserID     string    `json:"user_id"`
	Body       string    `json:"body"`
	InsertedAt time.Time `json:"inserted_at"`
	At         time.Time `json:"-"`
}

// psJoinResponse is the response of a join with "history" or "since".
type psJoinResponse struct {
	Messages  []psMsg `json:"messages"`
	Recovered *bool   `json:"recovered"`
}

// psHeartbeatEvery keeps a quiet client under the server's 60 s idle limit.
const psHeartbeatEvery = 20 * time.Second

// psDial connects user to c (the token is signed with testSecret) and
// starts the reader. The connection is closed when t ends.
func psDial(t testing.TB, c *testsvc.Chatd, user string) *psClient {
	t.Helper()
	cl, err := psTryDial(c, user)
	if err != nil {
		t.Fatalf("dial %s as %s: %v", c.WSURL(), user, err)
	}
	t.Cleanup(cl.close)
	return cl
}

// psTryDial is psDial without t: the caller closes the client.
func psTryDial(c *testsvc.Chatd, user string) (*psClient, error) {
	tok, err := psToken(user)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, resp, err := websocket.Dial(ctx, socketURL(c, "vsn", "2.0.0", "token", tok), nil)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		return nil, fmt.Errorf("status %d: %w", status, err)
	}
	conn.SetReadLimit(1 << 24) // join replies with history are large
	cl := &psClient{
		user:     user,
		conn:     conn,
		joinRefs: make(map[string]string),
		pending:  make(map[string]chan psReply),
		msgs:     make(map[string][]psMsg),
		changed:  make(chan struct{}),
		done:     make(chan struct{}),
		hbStop:   make(chan struct{}),
	}
	go cl.readLoop()
	go cl.heartbeat()
	return cl, nil
}

var psTokens sync.Map // user -> token

func psToken(user string) (string, error) {
	if tok, ok := psTokens.Load(user); ok {
		return tok.(string), nil
	}
	tok, err := server.MintToken([]byte(testSecret), user, 2*time.Hour)
	if err != nil {
		return "", err
	}
	psTokens.Store(user, tok)
	return tok, nil
}

// close closes the connection (normal closure) and waits for the reader.
func (c *psClient) close() {
	c.hbOnce.Do(func() { close(c.hbStop) })
	c.conn.Close(websocket.StatusNormalClosure, "")
	select {
	case <-c.done:
	case <-time.After(5 * time.Second):
		c.conn.CloseNow()
		<-c.done
	}
}

// heartbeat sends a Phoenix heartbeat every psHeartbeatEvery.
func (c *psClient) heartbeat() {
	tick := time.NewTicker(psHeartbeatEvery)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			if _, _, err := c.send("phoenix", "heartbeat", struct{}{}, false); err != nil {
				return
			}
		case <-c.hbStop:
			return
		case <-c.done:
			return
		}
	}
}

func (c *psClient) readLoop() {
	defer close(c.done)
	for {
		typ, data, err := c.conn.Read(context.Background())
		at := time.Now()
		if err != nil {
			c.mu.Lock()
			c.readErr = err
			for ref, ch := range c.pending {
				ch <- psReply{Err: fmt.Errorf("connection ended before the reply: %w", err)}
				delete(c.pending, ref)
			}
			close(c.changed)
			c.changed = make(chan struct{})
			c.mu.Unlock()
			return
		}
		if typ != websocket.MessageText {
			c.noteOther(fmt.Sprintf("(a %v frame)", typ))
			continue
		}
		var parts [5]json.RawMessage
		var arr []json.RawMessage
		if json.Unmarshal(data, &arr) != nil || len(arr) != 5 {
			c.noteOther(string(data))
			continue
		}
		copy(parts[:], arr)
		var ref, topic, event string
		_ = json.Unmarshal(parts[1], &ref)
		_ = json.Unmarshal(parts[2], &topic)
		_ = json.Unmarshal(parts[3], &event)
		switch {
		case event == "phx_reply" && ref != "":
			var r psReply
			if err := json.Unmarshal(parts[4], &r); err != nil {
				r.Err = fmt.Errorf("reply payload: %v: %s", err, data)
			}
			r.At, r.Raw = at, string(data)
			c.mu.Lock()
			if c.rejoin && c.takeRejoinReplyLocked(ref, r, at) {
				c.mu.Unlock()
				continue
			}
			ch := c.pending[ref]
			delete(c.pending, ref)
			c.mu.Unlock()
			if ch != nil {
				ch <- r
			} else if topic != "phoenix" {
				c.noteOther(string(data))
			}
		case event == "new_msg" && string(parts[0]) == "null" && string(parts[1]) == "null":
			var m psMsg
			if err := json.Unmarshal(parts[4], &m); err != nil {
				c.noteOther(string(data))
				continue
			}
			m.At = at
			c.mu.Lock()
			c.msgs[topic] = append(c.msgs[topic], m)
			close(c.changed)
			c.changed = make(chan struct{})
			c.mu.Unlock()
		case event == "phx_error":
			c.noteOther(string(data))
			c.mu.Lock()
			rejoin := c.rejoin
			c.mu.Unlock()
			if rejoin {
				c.sendRejoin(topic)
			}
		default:
			c.noteOther(string(data))
		}
	}
}

func (c *psClient) noteOther(raw string) {
	c.mu.Lock()
	if len(c.others) < 1000 {
		c.others = append(c.others, raw)
	}
	c.mu.Unlock()
}

// send writes one frame and registers for its reply when wantReply. It
// returns the ref and the channel the reply will arrive on (buffered).
func (c *psClient) send(topic, event string, payload any, wantReply bool) (string, <-chan psReply, error) {
	c.mu.Lock()
	if c.readErr != nil {
		err := c.readErr
		c.mu.Unlock()
		return "", nil, fmt.Errorf("connection ended: %w", err)
	}
	c.nextRef++
	ref := strconv.Itoa(c.nextRef)
	var joinRef any
	if event == "phx_join" {
		c.joinRefs[topic] = ref
		joinRef = ref
	} else if jr, ok := c.joinRefs[topic]; ok {
		joinRef = jr
	}
	var ch chan psReply
	if wantReply {
		ch = make(chan psReply, 1)
		c.pending[ref] = ch
	}
	c.mu.Unlock()
	frame, err := json.Marshal([]any{joinRef, ref, topic, event, payload})
	if err != nil {
		return "", nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.conn.Write(ctx, websocket.MessageText, frame); err != nil {
		c.mu.Lock()
		delete(c.pending, ref)
		c.mu.Unlock()
		return "", nil, fmt.Errorf("write %s: %w", frame, err)
	}
	return ref, ch, nil
}

// call sends a frame and waits for its reply until ctx ends.
func (c *psClient) call(ctx context.Context, topic, event string, payload any) (psReply, error) {
	ref, ch, err := c.send(topic, event, payload, true)
	if err != nil {
		return psReply{}, err
	}
	select {
	case r := <-ch:
		return r, r.Err
	case <-ctx.Done():
		c.mu.Lock()
		delete(c.pending, ref)
		c.mu.Unlock()
		return psReply{}, fmt.Errorf("no reply to %s %s (ref %s): %w", topic, event, ref, ctx.Err())
	}
}

// pushAsync sends new_msg with body on topic and returns when it was sent
// and where its reply will arrive.
func (c *psClient) pushAsync(topic, body string) (time.Time, <-chan psReply, error) {
	sent := time.Now()
	_, ch, err := c.send(topic, "new_msg", map[string]string{"body": body}, true)
	return sent, ch, err
}

// join joins topic with payload (nil: {}) and fails t unless the reply is
// ok; it returns the decoded response.
func (c *psClient) join(t testing.TB, topic string, payload any) psJoinResponse {
	t.Helper()
	if payload == nil {
		payload = struct{}{}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	r, err := c.call(ctx, topic, "phx_join", payload)
	if err != nil {
		t.Fatalf("%s: join %s: %v", c.user, topic, err)
	}
	if r.Status != "ok" {
		t.Fatalf("%s: join %s: reply %s, want ok", c.user, topic, r.Raw)
	}
	var resp psJoinResponse
	if err := json.Unmarshal(r.Response, &resp); err != nil {
		t.Fatalf("%s: join %s: response %s: %v", c.user, topic, r.Response, err)
	}
	return resp
}

// messages returns a copy of the new_msg broadcasts read on topic so far.
func (c *psClient) messages(topic string) []psMsg {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]psMsg(nil), c.msgs[topic]...)
}

// waitMessages waits until cond holds for topic's broadcasts, the
// connection ends or d passes; it returns the broadcasts and whether cond
// held.
func (c *psClient) waitMessages(topic string, d time.Duration, cond func([]psMsg) bool) ([]psMsg, bool) {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		c.mu.Lock()
		msgs := c.msgs[topic]
		ok := cond(msgs)
		ended := c.readErr != nil
		changed := c.changed
		msgs = append([]psMsg(nil), msgs...)
		c.mu.Unlock()
		if ok || ended {
			return msgs, ok
		}
		select {
		case <-changed:
		case <-deadline.C:
			c.mu.Lock()
			msgs = append([]psMsg(nil), c.msgs[topic]...)
			c.mu.Unlock()
			return msgs, cond(msgs)
		}
	}
}

// ended returns why the reader ended (nil while it runs).
func (c *psClient) ended() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.readErr
}

// otherFrames returns frames that were neither replies to a pending call nor
// new_msg broadcasts (presence, phx_close, stray replies, ...).
func (c *psClient) otherFrames() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.others...)
}
