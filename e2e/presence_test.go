package e2e

// End-to-end tests of presence and of the per-user connection limit across
// a cluster: three real chatd processes (race-enabled when the tests are)
// joined by memberlist on loopback, on one real Redis server, driven from
// the outside only: WebSocket handshakes and frames (psClient, and raw
// handshakes for the limit), GET /api/rooms/{room}/presence, /api/stats,
// signals. The official phoenix client's Presence is checked by
// js/presence.mjs (TestPresencePhoenixJS).
//
// Like the cluster tests, these are not parallel: they measure how fast a
// dead node's slots and presence are freed.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/chatd/chatd/internal/testsvc"
)

// prMeta is one connection's entry in a presence "metas" list.
type prMeta struct {
	PhxRef   string `json:"phx_ref"`
	Node     string `json:"node"`
	OnlineAt int64  `json:"online_at"`
}

type prMetas struct {
	Metas []prMeta `json:"metas"`
}

// prPresences is the shape of presence_state, of each half of
// presence_diff and of the presence API's "presences": user -> metas.
type prPresences map[string]prMetas

type prDiff struct {
	Joins  prPresences `json:"joins"`
	Leaves prPresences `json:"leaves"`
}

// prState is a presence view: user -> metas.
type prState map[string][]prMeta

func (p prPresences) state() prState {
	s := make(prState, len(p))
	for user, m := range p {
		s[user] = slices.Clone(m.Metas)
	}
	return s
}

// prSyncDiff applies d to s as the phoenix client's Presence.syncDiff does:
// joins replace the metas of the same phx_ref and add the others, leaves
// remove metas by phx_ref, and a user with no meta left is gone.
func prSyncDiff(s prState, d prDiff) {
	for _, user := range slices.Sorted(maps.Keys(d.Joins)) {
		joined := prRefSet(d.Joins[user].Metas)
		cur := slices.DeleteFunc(slices.Clone(s[user]), func(m prMeta) bool { return joined[m.PhxRef] })
		s[user] = append(cur, d.Joins[user].Metas...)
	}
	for _, user := range slices.Sorted(maps.Keys(d.Leaves)) {
		cur, ok := s[user]
		if !ok {
			continue
		}
		left := prRefSet(d.Leaves[user].Metas)
		cur = slices.DeleteFunc(slices.Clone(cur), func(m prMeta) bool { return left[m.PhxRef] })
		if len(cur) == 0 {
			delete(s, user)
		} else {
			s[user] = cur
		}
	}
}

func prRefSet(metas []prMeta) map[string]bool {
	set := make(map[string]bool, len(metas))
	for _, m := range metas {
		set[m.PhxRef] = true
	}
	return set
}

// prRefs returns the sorted phx_refs of metas.
func prRefs(metas []prMeta) []string {
	refs := make([]string, 0, len(metas))
	for _, m := range metas {
		refs = append(refs, m.PhxRef)
	}
	slices.Sort(refs)
	return refs
}

// prNodes returns the sorted node names of metas.
func prNodes(metas []prMeta) []string {
	nodes := make([]string, 0, len(metas))
	for _, m := range metas {
		nodes = append(nodes, m.Node)
	}
	slices.Sort(nodes)
	return nodes
}

// String lists each user with the nodes of its metas, e.g.
// "alice[node1] bob[node2 node3]".
func (s prState) String() string {
	if len(s) == 0 {
		return "(nobody)"
	}
	var parts []string
	for _, user := range slices.Sorted(maps.Keys(s)) {
		parts = append(parts, fmt.Sprintf("%s%v", user, prNodes(s[user])))
	}
	return strings.Join(parts, " ")
}

// shape is s reduced to user -> sorted node names, for comparisons.
func (s prState) shape() map[string][]string {
	out := make(map[string][]string, len(s))
	for user, metas := range s {
		out[user] = prNodes(metas)
	}
	return out
}

// sameRefs reports whether s and o list the same users with the same
// phx_refs.
func (s prState) sameRefs(o prState) bool {
	if len(s) != len(o) {
		return false
	}
	for user, metas := range s {
		if !slices.Equal(prRefs(metas), prRefs(o[user])) {
			return false
		}
	}
	return true
}

// prView is a client's presence view of one topic, rebuilt from the
// presence_state and presence_diff frames its psClient set aside (in
// arrival order) the way the phoenix client's Presence builds it: diffs
// read before the join's presence_state wait for it, a presence_state
// replaces the view, and later diffs apply in order. It also checks the
// frames' shape and keeps every meta a diff joined or left, by user.
type prView struct {
	cl    *psClient
	topic string
	next  int // frames of cl.otherFrames() consumed

	synced  bool // a presence_state of the live join was applied
	state   prState
	pending []prDiff

	states, diffs, diffBytes int
	joined, left             prState
	// joinDiff and leaveDiff are the number (1, 2, ...) of the first diff
	// that joined, and that left, each phx_ref.
	joinDiff, leaveDiff map[string]int
	problems            []string
}

func prWatch(cl *psClient, topic string) *prView {
	return &prView{cl: cl, topic: topic, state: prState{}, joined: prState{}, left: prState{},
		joinDiff: map[string]int{}, leaveDiff: map[string]int{}}
}

// psOthersCap is how many frames psClient sets aside (see noteOther).
const psOthersCap = 1000

// update consumes the frames read since the last call.
func (v *prView) update() {
	frames := v.cl.otherFrames()
	for ; v.next < len(frames); v.next++ {
		v.apply(frames[v.next])
	}
	if len(frames) >= psOthersCap && !slices.ContainsFunc(v.problems, func(p string) bool { return strings.HasPrefix(p, "psClient") }) {
		v.problems = append(v.problems, fmt.Sprintf("psClient set aside its maximum of %d frames: later presence frames may be lost to this view", psOthersCap))
	}
}

func (v *prView) problem(format string, args ...any) {
	if len(v.problems) < 20 {
		v.problems = append(v.problems, fmt.Sprintf(format, args...))
	}
}

func (v *prView) apply(raw string) {
	var parts []json.RawMessage
	if json.Unmarshal([]byte(raw), &parts) != nil || len(parts) != 5 {
		return
	}
	var topic, event string
	_ = json.Unmarshal(parts[2], &topic)
	_ = json.Unmarshal(parts[3], &event)
	if topic != v.topic || (event != "presence_state" && event != "presence_diff") {
		return
	}
	var joinRef *string
	_ = json.Unmarshal(parts[0], &joinRef)
	if string(parts[1]) != "null" {
		v.problem("%s with a ref (%s), want null: %.200s", event, parts[1], raw)
	}
	switch event {
	case "presence_state":
		v.cl.mu.Lock()
		live := v.cl.joinRefs[v.topic]
		v.cl.mu.Unlock()
		if joinRef == nil {
			v.problem("presence_state without the channel's join_ref (null), want %q: %.200s", live, raw)
			return
		}
		if *joinRef != live {
			return // an earlier join's: the phoenix client ignores it too
		}
		var p prPresences
		if err := json.Unmarshal(parts[4], &p); err != nil || p == nil {
			v.problem("presence_state payload is not {user: {metas: [...]}}: %v: %.200s", err, raw)
			return
		}
		v.states++
		v.state = p.state()
		for _, d := range v.pending {
			prSyncDiff(v.state, d)
		}
		v.pending = nil
		v.synced = true
	case "presence_diff":
		if joinRef != nil {
			v.problem("presence_diff with join_ref %q, want null (a broadcast): %.200s", *joinRef, raw)
		}
		var d prDiff
		if err := json.Unmarshal(parts[4], &d); err != nil || d.Joins == nil || d.Leaves == nil {
			v.problem("presence_diff payload is not {joins: {...}, leaves: {...}}: %v: %.200s", err, raw)
			return
		}
		v.diffs++
		v.diffBytes += len(raw)
		for user, m := range d.Joins {
			v.joined[user] = append(v.joined[user], m.Metas...)
			prNoteDiff(v.joinDiff, m.Metas, v.diffs)
		}
		for user, m := range d.Leaves {
			v.left[user] = append(v.left[user], m.Metas...)
			prNoteDiff(v.leaveDiff, m.Metas, v.diffs)
		}
		if !v.synced {
			v.pending = append(v.pending, d)
			return
		}
		prSyncDiff(v.state, d)
	}
}

// prNoteDiff records diff n in first for each meta's phx_ref not seen yet.
func prNoteDiff(first map[string]int, metas []prMeta, n int) {
	for _, m := range metas {
		if _, ok := first[m.PhxRef]; !ok {
			first[m.PhxRef] = n
		}
	}
}

func (v *prView) String() string {
	return fmt.Sprintf("%s's view of %s: %v (synced %v; %d presence_state, %d presence_diff frames; problems %v)",
		v.cl.user, v.topic, v.state, v.synced, v.states, v.diffs, v.problems)
}

// prWaitView polls v until cond holds on a synced view, and returns how
// long that took; it fails t after d, or when the client's connection
// ends.
func prWaitView(t *testing.T, v *prView, what string, d time.Duration, cond func(*prView) bool) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		v.update()
		if v.synced && cond(v) {
			return time.Since(start)
		}
		if err := v.cl.ended(); err != nil {
			v.update()
			t.Fatalf("%s: %s's connection ended (%v); %v", what, v.cl.user, err, v)
		}
		if time.Since(start) > d {
			t.Fatalf("%s: not within %s: %v", what, d, v)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// prWantShape is a condition of prWaitView: the view lists exactly want's
// users, each with metas from exactly those nodes.
func prWantShape(want map[string][]string) func(*prView) bool {
	for _, nodes := range want {
		slices.Sort(nodes)
	}
	return func(v *prView) bool {
		return maps.EqualFunc(v.state.shape(), want, slices.Equal)
	}
}

// prCheckView fails t for each problem v found in the frames.
func prCheckView(t *testing.T, v *prView) {
	t.Helper()
	v.update()
	for _, p := range v.problems {
		t.Errorf("%s on %s: %s", v.cl.user, v.topic, p)
	}
}

// prCheckMetas checks that every meta of s has a phx_ref unique in s, a
// node name and an online_at within the test's time.
func prCheckMetas(t *testing.T, what string, s prState, since time.Time) {
	t.Helper()
	seen := make(map[string]string)
	for user, metas := range s {
		for _, m := range metas {
			if m.PhxRef == "" {
				t.Errorf("%s: %s has a meta without phx_ref: %+v", what, user, m)
			} else if prev, dup := seen[m.PhxRef]; dup {
				t.Errorf("%s: phx_ref %s is both %s's and %s's", what, m.PhxRef, prev, user)
			}
			seen[m.PhxRef] = user
			if m.Node == "" {
				t.Errorf("%s: %s has a meta without node: %+v", what, user, m)
			}
			if m.OnlineAt < since.Unix()-5 || m.OnlineAt > time.Now().Unix()+5 {
				t.Errorf("%s: %s's meta has online_at %d, want Unix seconds within the test (%d..%d)", what, user, m.OnlineAt, since.Unix(), time.Now().Unix())
			}
		}
	}
}

// prGetAPI reads GET /api/rooms/{room}/presence on c with asUser's token.
func prGetAPI(c *testsvc.Chatd, room, asUser string) (prState, error) {
	tok, err := psToken(asUser)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequest(http.MethodGet, c.URL()+"/api/rooms/"+room+"/presence", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := clHTTP.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /api/rooms/%s/presence: %s: %s", room, resp.Status, body)
	}
	var doc struct {
		Room      string      `json:"room"`
		Presences prPresences `json:"presences"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, fmt.Errorf("GET /api/rooms/%s/presence: %v: %s", room, err, body)
	}
	if doc.Room != room || doc.Presences == nil {
		return nil, fmt.Errorf("GET /api/rooms/%s/presence: want {\"room\": %q, \"presences\": {...}}, got %s", room, room, body)
	}
	return doc.Presences.state(), nil
}

// prWaitAPI polls the presence API of every node until cond holds for
// each one's answer, and returns the answers and how long that took; it
// fails t after d.
func prWaitAPI(t *testing.T, nodes []*clNode, room, asUser, what string, d time.Duration, cond func(prState) bool) ([]prState, time.Duration) {
	t.Helper()
	start := time.Now()
	for {
		got := make([]prState, len(nodes))
		var last []string
		ok := true
		for i, n := range nodes {
			s, err := prGetAPI(n.Chatd, room, asUser)
			got[i] = s
			if err != nil || !cond(s) {
				ok = false
			}
			last = append(last, fmt.Sprintf("%s: %v (err %v)", n.name, s, err))
		}
		if ok {
			return got, time.Since(start)
		}
		if time.Since(start) > d {
			t.Fatalf("%s: presence API not as wanted within %s: %s", what, d, strings.Join(last, "; "))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// prConnect attempts a WebSocket handshake to c as user (a psToken) with
// extra headers, without a t: safe from any goroutine. A refused
// handshake's body is read; the caller closes an upgraded connection.
func prConnect(c *testsvc.Chatd, user string, header http.Header) dialResult {
	tok, err := psToken(user)
	if err != nil {
		return dialResult{err: err}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, resp, err := websocket.Dial(ctx, socketURL(c, "vsn", "2.0.0", "token", tok), &websocket.DialOptions{HTTPHeader: header})
	r := dialResult{conn: conn, err: err}
	if resp != nil {
		r.status = resp.StatusCode
		r.header = resp.Header
		if resp.Body != nil {
			r.body, _ = io.ReadAll(io.LimitReader(resp.Body, 1<<10))
		}
	}
	return r
}

// prConns holds upgraded raw connections of a test, closed by close or at
// the test's end.
type prConns struct {
	mu    sync.Mutex
	conns []*websocket.Conn
}

func prNewConns(t *testing.T) *prConns {
	c := &prConns{}
	t.Cleanup(c.close)
	return c
}

func (c *prConns) add(conn *websocket.Conn) {
	c.mu.Lock()
	c.conns = append(c.conns, conn)
	c.mu.Unlock()
}

// close closes every connection (normal closure, at once).
func (c *prConns) close() {
	c.mu.Lock()
	conns := c.conns
	c.conns = nil
	c.mu.Unlock()
	var wg sync.WaitGroup
	for _, conn := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			prCloseConn(conn)
		}()
	}
	wg.Wait()
}

// prCloseConn closes conn normally, giving up on the handshake after 3 s.
func prCloseConn(conn *websocket.Conn) {
	done := make(chan struct{})
	go func() {
		conn.Close(websocket.StatusNormalClosure, "")
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		conn.CloseNow()
	}
}

// prMustConnect connects user to n; the handshake must upgrade.
func prMustConnect(t *testing.T, conns *prConns, n *clNode, user string) *websocket.Conn {
	t.Helper()
	r := prConnect(n.Chatd, user, nil)
	if r.conn == nil || r.status != http.StatusSwitchingProtocols {
		t.Fatalf("%s on %s: status %d (err %v, body %s), want an upgrade", user, n.name, r.status, r.err, r.body)
	}
	conns.add(r.conn)
	return r.conn
}

// prWant429 checks that r was refused with HTTP 429 and a JSON error body
// (an object with an "error" string).
func prWant429(t *testing.T, what string, r dialResult) {
	t.Helper()
	if r.conn != nil {
		r.conn.CloseNow()
	}
	wantRefused(t, what, r, http.StatusTooManyRequests)
}

// TestClusterConnLimit: CHAT_MAX_CONNS_PER_USER holds across three nodes.
// A user's connections spread over the nodes are all accepted up to the
// limit; one more on any node is refused with HTTP 429 and a JSON body;
// closing one on a node lets a new one in on another. Simultaneous
// connects of one user on all three nodes (4x the limit at once) get
// exactly the limit accepted, round after round, and so do simultaneous
// races for the last free slot.
func TestClusterConnLimit(t *testing.T) {
	const limit = 5
	redis := testsvc.StartRedis(t)
	nodes := clStartCluster(t, redis, 3, map[string]string{"CHAT_MAX_CONNS_PER_USER": strconv.Itoa(limit)})

	t.Run("spread", func(t *testing.T) {
		conns := prNewConns(t)
		const user = "limit-spread"
		var held []*websocket.Conn
		var where []string
		for i := range limit {
			n := nodes[i%len(nodes)]
			held = append(held, prMustConnect(t, conns, n, user))
			where = append(where, n.name)
		}
		t.Logf("%s holds %d connections: on %v", user, limit, where)
		for _, n := range nodes {
			r := prConnect(n.Chatd, user, nil)
			prWant429(t, fmt.Sprintf("%s's connection #%d, on %s", user, limit+1, n.name), r)
			t.Logf("connection #%d on %s: HTTP %d %s", limit+1, n.name, r.status, bytes.TrimSpace(r.body))
		}
		// Another user is not affected.
		other := prMustConnect(t, conns, nodes[2], "limit-spread-other")
		prCloseConn(other)

		// Close the one on node3: a new one on node1 gets in once node3
		// has released the slot.
		closed := time.Now()
		prCloseConn(held[2])
		attempts := 0
		for {
			attempts++
			r := prConnect(nodes[0].Chatd, user, nil)
			if r.conn != nil {
				conns.add(r.conn)
				break
			}
			if r.status != http.StatusTooManyRequests {
				t.Fatalf("after closing one connection on %s: connect on %s: status %d (err %v, body %s), want an upgrade or, briefly, 429",
					where[2], nodes[0].name, r.status, r.err, r.body)
			}
			if time.Since(closed) > 5*time.Second {
				t.Fatalf("5s after closing one of %s's connections on %s, a connect on %s is still refused (%d attempts): %s",
					user, where[2], nodes[0].name, attempts, r.body)
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Logf("closed one connection on %s: a new one on %s was accepted %s later (attempt %d)",
			where[2], nodes[0].name, time.Since(closed).Round(time.Millisecond), attempts)
		// At the limit again.
		prWant429(t, "over the limit again, on node2", prConnect(nodes[1].Chatd, user, nil))
	})

	// prRace dials n connects of user at once, connect i on nodes[i%3], and
	// returns the results.
	prRace := func(user string, n int) []dialResult {
		results := make([]dialResult, n)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				results[i] = prConnect(nodes[i%len(nodes)].Chatd, user, nil)
			}()
		}
		close(start)
		wg.Wait()
		return results
	}
	// prTally checks that exactly want of results upgraded and the others
	// were refused with 429 and a JSON body; it returns the accepted
	// connections per node.
	prTally := func(t *testing.T, conns *prConns, what string, results []dialResult, want int) map[string]int {
		t.Helper()
		perNode := make(map[string]int)
		accepted, refused := 0, 0
		for i, r := range results {
			switch {
			case r.conn != nil && r.status == http.StatusSwitchingProtocols:
				accepted++
				perNode[nodes[i%len(nodes)].name]++
				conns.add(r.conn)
			case r.status == http.StatusTooManyRequests:
				refused++
				prWant429(t, fmt.Sprintf("%s: refused connect #%d", what, i), r)
			default:
				if r.conn != nil {
					conns.add(r.conn)
				}
				t.Errorf("%s: connect #%d on %s: status %d (err %v, body %s), want 101 or 429", what, i, nodes[i%len(nodes)].name, r.status, r.err, r.body)
			}
		}
		if accepted != want || refused != len(results)-want {
			t.Fatalf("%s: %d connects at once: %d accepted (per node %v), %d refused with 429; want exactly %d accepted and %d refused",
				what, len(results), accepted, perNode, refused, want, len(results)-want)
		}
		return perNode
	}

	t.Run("race", func(t *testing.T) {
		const rounds = 10
		for round := range rounds {
			conns := prNewConns(t)
			user := fmt.Sprintf("limit-race-%d", round)
			start := time.Now()
			results := prRace(user, 4*limit)
			took := time.Since(start)
			perNode := prTally(t, conns, fmt.Sprintf("round %d", round), results, limit)
			t.Logf("round %d: %d connects of %s at once over 3 nodes in %s: exactly %d accepted (per node %v), %d refused with 429",
				round, 4*limit, user, took.Round(time.Millisecond), limit, perNode, 3*limit)
			conns.close()
		}
	})

	t.Run("last-slot", func(t *testing.T) {
		const rounds = 3
		for round := range rounds {
			conns := prNewConns(t)
			user := fmt.Sprintf("limit-last-%d", round)
			for i := range limit - 1 {
				prMustConnect(t, conns, nodes[i%len(nodes)], user)
			}
			results := prRace(user, 4*len(nodes))
			perNode := prTally(t, conns, fmt.Sprintf("last slot, round %d", round), results, 1)
			t.Logf("round %d: %s held %d; %d connects at once (4 per node) for the last slot: one accepted (on %v), %d refused",
				round, user, limit-1, len(results), slices.Collect(maps.Keys(perNode)), len(results)-1)
			conns.close()
		}
	})
}

// TestClusterConnLimitRequestID: the limit counts connections, whatever
// X-Request-ID header the client sends. A client that sends the same
// well-formed X-Request-ID on every handshake must still be held to
// CHAT_MAX_CONNS_PER_USER, on one node and across nodes.
func TestClusterConnLimitRequestID(t *testing.T) {
	const limit = 3
	redis := testsvc.StartRedis(t)
	nodes := clStartCluster(t, redis, 3, map[string]string{"CHAT_MAX_CONNS_PER_USER": strconv.Itoa(limit)})
	conns := prNewConns(t)
	header := http.Header{"X-Request-Id": {"same-request-id-every-time"}}
	const user = "limit-reqid"
	accepted := 0
	var where []string
	for i := range 3 * limit {
		n := nodes[i%len(nodes)]
		r := prConnect(n.Chatd, user, header)
		switch {
		case r.conn != nil:
			accepted++
			where = append(where, n.name)
			conns.add(r.conn)
		case r.status != http.StatusTooManyRequests:
			t.Fatalf("connect #%d on %s: status %d (err %v, body %s), want 101 or 429", i, n.name, r.status, r.err, r.body)
		}
	}
	if accepted != limit {
		t.Errorf("%d handshakes of %s, all with X-Request-ID %q: %d accepted (on %v), want %d (CHAT_MAX_CONNS_PER_USER): the limit is keyed by a client-chosen id",
			3*limit, user, header.Get("X-Request-Id"), accepted, where, limit)
	} else {
		t.Logf("%d handshakes with one repeated X-Request-ID: %d accepted, the rest 429", 3*limit, accepted)
	}
}

// TestPresenceNodeKilled: a user at the connection limit has every
// connection on one node, all joined to a room with members on the other
// nodes. The node is SIGKILLed. Within seconds (measured, with
// CHAT_CLUSTER_PROFILE=local) the user can connect again on a surviving
// node (its slots were freed: it can again hold exactly the limit), the
// members on both survivors read presence_diff leaves of exactly the
// user's metas, and the presence API of both survivors no longer lists
// the user.
func TestPresenceNodeKilled(t *testing.T) {
	const limit = 3
	redis := testsvc.StartRedis(t)
	nodes := clStartCluster(t, redis, 3, map[string]string{"CHAT_MAX_CONNS_PER_USER": strconv.Itoa(limit)})
	victim, survivors := nodes[2], nodes[:2]
	const room = "wake"
	const topic = "room:" + room
	const doomedUser = "doomed"

	watchers := make([]*psClient, len(survivors))
	views := make([]*prView, len(survivors))
	for i, n := range survivors {
		watchers[i] = psDial(t, n.Chatd, fmt.Sprintf("watcher-n%d", i+1))
		views[i] = prWatch(watchers[i], topic)
		watchers[i].join(t, topic, nil)
	}
	for range limit {
		psDial(t, victim.Chatd, doomedUser).join(t, topic, nil)
	}
	want := map[string][]string{"watcher-n1": {"node1"}, "watcher-n2": {"node2"}, doomedUser: slices.Repeat([]string{victim.name}, limit)}
	for _, v := range views {
		d := prWaitView(t, v, "before the kill", 10*time.Second, prWantShape(want))
		t.Logf("%s sees %v (%s to converge)", v.cl.user, v.state, d.Round(time.Millisecond))
	}
	doomedRefs := prRefs(views[0].state[doomedUser])
	if !slices.Equal(doomedRefs, prRefs(views[1].state[doomedUser])) {
		t.Fatalf("the watchers see different metas of %s: %v and %v", doomedUser, views[0].state[doomedUser], views[1].state[doomedUser])
	}
	prWaitAPI(t, survivors, room, "watcher-n1", "before the kill", 5*time.Second, func(s prState) bool {
		return slices.Equal(prRefs(s[doomedUser]), doomedRefs)
	})
	conns := prNewConns(t)
	prWant429(t, doomedUser+" at the limit, on node1 before the kill", prConnect(survivors[0].Chatd, doomedUser, nil))

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	memberWatches := make([]*clWatch, len(survivors))
	for i, n := range survivors {
		memberWatches[i] = clStartWatch(ctx, n, victim.name)
	}

	killed := time.Now()
	if err := victim.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := victim.WaitTimeout(10 * time.Second); err == nil {
		t.Fatalf("%s exited with status 0 after SIGKILL", victim.name)
	}

	// Poll the three outcomes together, each timed from the kill.
	const deadline = 20 * time.Second
	var slotAt, apiAt time.Duration
	leaveAt := make([]time.Duration, len(views))
	var lastAPI []string
	attempts := 0
	for {
		now := time.Since(killed)
		if slotAt == 0 {
			attempts++
			n := survivors[attempts%len(survivors)]
			r := prConnect(n.Chatd, doomedUser, nil)
			switch {
			case r.conn != nil:
				conns.add(r.conn)
				slotAt = time.Since(killed)
				t.Logf("%s connected again on %s %s after the SIGKILL (attempt %d)", doomedUser, n.name, slotAt.Round(time.Millisecond), attempts)
			case r.status != http.StatusTooManyRequests:
				t.Fatalf("after the kill: %s on %s: status %d (err %v, body %s), want 429 until its slots are freed, then 101",
					doomedUser, n.name, r.status, r.err, r.body)
			}
		}
		for i, v := range views {
			if leaveAt[i] != 0 {
				continue
			}
			v.update()
			if _, listed := v.state[doomedUser]; !listed && len(v.left[doomedUser]) >= limit {
				leaveAt[i] = time.Since(killed)
			}
		}
		if apiAt == 0 {
			ok := true
			lastAPI = lastAPI[:0]
			for _, n := range survivors {
				s, err := prGetAPI(n.Chatd, room, "watcher-n1")
				if _, listed := s[doomedUser]; err != nil || listed {
					ok = false
				}
				lastAPI = append(lastAPI, fmt.Sprintf("%s: %v (err %v)", n.name, s, err))
			}
			if ok {
				apiAt = time.Since(killed)
			}
		}
		if slotAt != 0 && apiAt != 0 && !slices.Contains(leaveAt, 0) {
			break
		}
		if now > deadline {
			t.Fatalf("%s after the SIGKILL of %s: slots freed after %v (%d connect attempts), leaves seen after %v (views: %v / %v), presence API clean after %v (%s); 0 = not yet",
				deadline, victim.name, slotAt, attempts, leaveAt, views[0], views[1], apiAt, strings.Join(lastAPI, "; "))
		}
		time.Sleep(25 * time.Millisecond)
	}

	var detected []string
	for i, w := range memberWatches {
		if state, at, ok := w.wait(time.Second, "dead", "gone"); ok {
			detected = append(detected, fmt.Sprintf("%s saw it %s after %s", survivors[i].name, state, at.Sub(killed).Round(time.Millisecond)))
		} else {
			detected = append(detected, fmt.Sprintf("%s: states %v", survivors[i].name, w.states()))
		}
	}
	t.Logf("SIGKILL of %s: memberlist: %s; %s's slots freed (a connect on a survivor accepted) after %s; leave diffs of its %d metas read on node1 after %s and on node2 after %s; presence API of both survivors without it after %s",
		victim.name, strings.Join(detected, ", "), doomedUser, slotAt.Round(time.Millisecond), limit,
		leaveAt[0].Round(time.Millisecond), leaveAt[1].Round(time.Millisecond), apiAt.Round(time.Millisecond))
	for what, d := range map[string]time.Duration{"slots freed": slotAt, "leave diff on node1": leaveAt[0], "leave diff on node2": leaveAt[1], "presence API clean": apiAt} {
		if d > 10*time.Second {
			t.Errorf("%s %s after SIGKILL with CHAT_CLUSTER_PROFILE=local, want within a few seconds", what, d.Round(time.Millisecond))
		}
	}

	// The leaves are exactly the dead connections' metas, and the
	// survivors' own presence is untouched.
	wantAfter := map[string][]string{"watcher-n1": {"node1"}, "watcher-n2": {"node2"}}
	for _, v := range views {
		v.update()
		if got := prRefs(v.left[doomedUser]); !slices.Equal(got, doomedRefs) {
			t.Errorf("%s read leaves of %s's metas %v, want exactly %v", v.cl.user, doomedUser, got, doomedRefs)
		}
		for _, m := range v.left[doomedUser] {
			if m.Node != victim.name {
				t.Errorf("%s: leave of %s's meta %+v, want node %q", v.cl.user, doomedUser, m, victim.name)
			}
		}
		if !prWantShape(wantAfter)(v) {
			t.Errorf("after the kill: %v, want %v", v, wantAfter)
		}
		if len(v.left) != 1 {
			t.Errorf("%s read leaves of users %v, want only %s's", v.cl.user, slices.Sorted(maps.Keys(v.left)), doomedUser)
		}
		prCheckView(t, v)
	}

	// All the slots were freed, and the limit still holds: the user holds
	// exactly the limit again.
	for i := 1; i < limit; i++ {
		prMustConnect(t, conns, survivors[i%len(survivors)], doomedUser)
	}
	prWant429(t, doomedUser+" at the limit again after the kill", prConnect(survivors[0].Chatd, doomedUser, nil))
	cancel()
	for _, w := range memberWatches {
		<-w.done
	}
}

// TestPresenceAcrossNodes: alice on node1 and bob with two tabs (node2
// and node3) in one room. Every member's presence view (presence_state
// with the channel's join_ref, then presence_diff broadcasts) converges to
// {alice: 1 meta on node1, bob: 2 metas on node2 and node3}, with the same
// phx_refs everywhere, and the presence API of every node agrees. Bob
// closes the node3 tab: the others read the leave of that one meta, and
// bob stays with the node2 meta; bob closes the last tab: bob is gone from
// every view and every node's API.
func TestPresenceAcrossNodes(t *testing.T) {
	redis := testsvc.StartRedis(t)
	nodes := clStartCluster(t, redis, 3, nil)
	start := time.Now()
	const room = "around"
	const topic = "room:" + room

	alice := psDial(t, nodes[0].Chatd, "alice")
	bob1 := psDial(t, nodes[1].Chatd, "bob")
	bob2 := psDial(t, nodes[2].Chatd, "bob")
	va, vb1, vb2 := prWatch(alice, topic), prWatch(bob1, topic), prWatch(bob2, topic)
	alice.join(t, topic, nil)
	d := prWaitView(t, va, "alice alone", 5*time.Second, prWantShape(map[string][]string{"alice": {"node1"}}))
	t.Logf("alice joined on node1: presence_state %v after %s", va.state, d.Round(time.Millisecond))
	bob1.join(t, topic, nil)
	bob2.join(t, topic, nil)

	both := map[string][]string{"alice": {"node1"}, "bob": {"node2", "node3"}}
	for i, v := range []*prView{va, vb1, vb2} {
		d := prWaitView(t, v, "alice and bob's two tabs", 10*time.Second, prWantShape(both))
		t.Logf("%s on %s sees %v after %s: %d presence_state, %d presence_diff frames", v.cl.user, nodes[i].name, v.state, d.Round(time.Millisecond), v.states, v.diffs)
		prCheckMetas(t, v.cl.user+"'s view", v.state, start)
	}
	if !va.state.sameRefs(vb1.state) || !va.state.sameRefs(vb2.state) {
		t.Fatalf("the views list different phx_refs:\nalice %+v\nbob@node2 %+v\nbob@node3 %+v", va.state, vb1.state, vb2.state)
	}
	full := va.state
	apis, d := prWaitAPI(t, nodes, room, "alice", "alice and bob's two tabs", 5*time.Second, full.sameRefs)
	t.Logf("presence API of node1..3: %v (all the same phx_refs as the views; %s)", apis[0], d.Round(time.Millisecond))
	metaOn := func(s prState, user, node string) prMeta {
		for _, m := range s[user] {
			if m.Node == node {
				return m
			}
		}
		t.Fatalf("%s has no meta on %s in %v", user, node, s)
		return prMeta{}
	}
	tab1, tab2 := metaOn(full, "bob", "node2"), metaOn(full, "bob", "node3")

	// Bob closes the node3 tab.
	bob2.close()
	oneTab := map[string][]string{"alice": {"node1"}, "bob": {"node2"}}
	for _, v := range []*prView{va, vb1} {
		d := prWaitView(t, v, "bob closed the node3 tab", 10*time.Second, prWantShape(oneTab))
		if got := v.left["bob"]; len(got) != 1 || got[0] != tab2 {
			t.Errorf("%s: leaves of bob %+v, want exactly the node3 tab's meta %+v", v.cl.user, got, tab2)
		}
		if len(v.left) != 1 {
			t.Errorf("%s read leaves of %v, want only bob's", v.cl.user, slices.Sorted(maps.Keys(v.left)))
		}
		if got := v.state["bob"]; len(got) != 1 || got[0] != tab1 {
			t.Errorf("%s: bob's metas %+v, want the node2 tab's %+v", v.cl.user, got, tab1)
		}
		t.Logf("bob closed the node3 tab: %s reads the leave of its meta (%s), bob stays: %v, %s later", v.cl.user, tab2.PhxRef, v.state, d.Round(time.Millisecond))
	}
	_, d = prWaitAPI(t, nodes, room, "alice", "bob closed the node3 tab", 5*time.Second, func(s prState) bool {
		return s.sameRefs(prState{"alice": full["alice"], "bob": {tab1}})
	})
	t.Logf("presence API of every node: alice and bob's node2 tab (%s)", d.Round(time.Millisecond))

	// Bob closes the last tab.
	bob1.close()
	d = prWaitView(t, va, "bob closed the last tab", 10*time.Second, prWantShape(map[string][]string{"alice": {"node1"}}))
	if got := prRefs(va.left["bob"]); !slices.Equal(got, prRefs([]prMeta{tab1, tab2})) {
		t.Errorf("alice read leaves of bob's metas %v, want both tabs' %v", got, prRefs([]prMeta{tab1, tab2}))
	}
	t.Logf("bob closed the last tab: gone from alice's view %s later; alice read %d presence_state and %d presence_diff frames (%d bytes of diffs) in all",
		d.Round(time.Millisecond), va.states, va.diffs, va.diffBytes)
	_, d = prWaitAPI(t, nodes, room, "alice", "bob closed the last tab", 5*time.Second, func(s prState) bool {
		return s.sameRefs(prState{"alice": full["alice"]})
	})
	t.Logf("presence API of every node: only alice (%s)", d.Round(time.Millisecond))
	for _, v := range []*prView{va, vb1, vb2} {
		prCheckView(t, v)
	}
}

// prJSSummary is what presence.mjs prints on stdout.
type prJSSummary struct {
	OK    bool     `json:"ok"`
	Error string   `json:"error"`
	Steps []string `json:"steps"`
	// Lists are Presence.list() results: user -> metas, at each step.
	Synced struct {
		A, B prPresences
	} `json:"synced"`
	Leave struct {
		OnLeave prJSEvent   `json:"on_leave"`
		ListA   prPresences `json:"list_a"`
	} `json:"leave"`
	Rejoin struct {
		OnJoin prJSEvent   `json:"on_join"`
		ListA  prPresences `json:"list_a"`
		ListB  prPresences `json:"list_b"`
	} `json:"rejoin"`
	Disconnect struct {
		OnLeave prJSEvent   `json:"on_leave"`
		ListA   prPresences `json:"list_a"`
	} `json:"disconnect"`
	Syncs struct {
		A, B int
	} `json:"syncs"`
}

// prJSEvent is one onJoin or onLeave call of the phoenix Presence.
type prJSEvent struct {
	Key string `json:"key"`
	// Current is how many metas the user has after the event.
	Current int      `json:"current"`
	Metas   []prMeta `json:"metas"`
}

// TestPresencePhoenixJS runs js/presence.mjs: the official phoenix
// client's Presence, unchanged, against a cluster. alice on node1 and bob
// on node2 join one room; each side's Presence.list() shows both (onSync),
// with metas naming their nodes. Bob leaves the channel: alice's Presence
// calls onLeave for bob and lists only alice. Bob joins again (onJoin on
// alice's side, both listed on both sides), then disconnects his socket:
// onLeave again, alice alone.
func TestPresencePhoenixJS(t *testing.T) {
	node := nodeAndPackages(t)
	redis := testsvc.StartRedis(t)
	nodes := clStartCluster(t, redis, 2, nil)
	tokA, err := psToken("alice")
	if err != nil {
		t.Fatal(err)
	}
	tokB, err := psToken("bob")
	if err != nil {
		t.Fatal(err)
	}
	var s prJSSummary
	start := time.Now()
	runNodeScript(t, node, jsDir, 60*time.Second, &s, "presence.mjs",
		"--url-a", nodes[0].URL(), "--url-b", nodes[1].URL(),
		"--token-a", tokA, "--token-b", tokB, "--user-a", "alice", "--user-b", "bob",
		"--room", "jspresence", "--timeout-ms", "30000")
	t.Logf("presence.mjs steps: %s", strings.Join(s.Steps, "; "))
	if !s.OK {
		t.Fatalf("presence.mjs exited 0 but reports ok=false: %s", s.Error)
	}

	both := map[string][]string{"alice": {"node1"}, "bob": {"node2"}}
	onlyAlice := map[string][]string{"alice": {"node1"}}
	check := func(what string, got prPresences, want map[string][]string) {
		t.Helper()
		st := got.state()
		if !maps.EqualFunc(st.shape(), want, slices.Equal) {
			t.Errorf("%s: Presence.list() %v, want %v", what, st, want)
		}
		prCheckMetas(t, what, st, start)
	}
	check("synced, alice's side", s.Synced.A, both)
	check("synced, bob's side", s.Synced.B, both)
	if !s.Synced.A.state().sameRefs(s.Synced.B.state()) {
		t.Errorf("the two sides list different phx_refs: %+v and %+v", s.Synced.A, s.Synced.B)
	}
	bobRef := s.Synced.A["bob"].Metas[0].PhxRef
	if e := s.Leave.OnLeave; e.Key != "bob" || e.Current != 0 || len(e.Metas) != 1 || e.Metas[0].PhxRef != bobRef {
		t.Errorf("bob's channel.leave(): alice's onLeave %+v, want key bob, no meta left, the left meta %s", e, bobRef)
	}
	check("after bob's leave, alice's side", s.Leave.ListA, onlyAlice)
	if e := s.Rejoin.OnJoin; e.Key != "bob" || len(e.Metas) != 1 || e.Metas[0].Node != "node2" || e.Metas[0].PhxRef == bobRef {
		t.Errorf("bob's rejoin: alice's onJoin %+v, want key bob with one new meta on node2", e)
	}
	check("after bob's rejoin, alice's side", s.Rejoin.ListA, both)
	check("after bob's rejoin, bob's side", s.Rejoin.ListB, both)
	rejoinRef := s.Rejoin.ListA["bob"].Metas[0].PhxRef
	if e := s.Disconnect.OnLeave; e.Key != "bob" || e.Current != 0 || len(e.Metas) != 1 || e.Metas[0].PhxRef != rejoinRef {
		t.Errorf("bob's socket.disconnect(): alice's onLeave %+v, want key bob, no meta left, the left meta %s", e, rejoinRef)
	}
	check("after bob's disconnect, alice's side", s.Disconnect.ListA, onlyAlice)
	t.Logf("phoenix Presence: onSync called %d times on alice's side, %d on bob's", s.Syncs.A, s.Syncs.B)
}

// TestPresenceDiffOrderSlowRelay checks that a room's presence_diff frames
// reach other nodes in the order of the changes when a publish to Redis is
// slow. node1 reaches Redis through a testsvc.DelayProxy that holds back,
// for 1.5 s, the one publication carrying bob's join (as a lost packet's
// retransmission holds up one pooled connection while the others go on);
// node2 reaches Redis directly. alice watches the room on node2; bob joins
// on node1 and leaves again 300 ms after his join reply, while his join's
// diff is still held. alice must read bob's join before his leave, and end
// up seeing only herself: a leave that overtakes its join leaves a user
// who has gone listed on every other node.
func TestPresenceDiffOrderSlowRelay(t *testing.T) {
	const hold = 1500 * time.Millisecond
	redis := testsvc.StartRedis(t)
	proxy := testsvc.StartDelayProxy(t, redis.Addr(), func(chunk []byte) time.Duration {
		if bytes.Contains(chunk, []byte(`"presence_diff",{"joins":{"bob"`)) {
			return hold
		}
		return 0
	})
	node1 := clStartNode(t, redis, "node1", "", map[string]string{"CHAT_REDIS_URL": proxy.RedisURL()})
	node2 := clStartNode(t, redis, "node2", clGossipAddr(t, node1), nil)
	clWaitAllAlive(t, []*clNode{node1, node2}, 30*time.Second)

	const topic = "room:order"
	alice := psDial(t, node2.Chatd, "alice")
	va := prWatch(alice, topic)
	alice.join(t, topic, nil)
	prWaitView(t, va, "alice alone", 5*time.Second, prWantShape(map[string][]string{"alice": {"node2"}}))

	bob := psDial(t, node1.Chatd, "bob")
	bob.join(t, topic, nil)
	joined := time.Now()
	time.Sleep(300 * time.Millisecond) // bob's join diff is on its way, held by the proxy
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if r, err := bob.call(ctx, topic, "phx_leave", struct{}{}); err != nil || r.Status != "ok" {
		t.Fatalf("bob: phx_leave: %v %s", err, r.Raw)
	}
	t.Logf("bob joined on node1 and left %s later", time.Since(joined).Round(time.Millisecond))

	d := prWaitView(t, va, "bob's join and leave", hold+10*time.Second, func(v *prView) bool {
		return len(v.joined["bob"]) > 0 && len(v.left["bob"]) > 0
	})
	ref := va.joined["bob"][0].PhxRef
	t.Logf("alice read bob's join (%s) in diff %d and his leave in diff %d, %s after the leave",
		ref, va.joinDiff[ref], va.leaveDiff[ref], d.Round(time.Millisecond))
	if va.joinDiff[ref] >= va.leaveDiff[ref] {
		t.Errorf("alice read bob's leave (diff %d) before his join (diff %d)", va.leaveDiff[ref], va.joinDiff[ref])
	}
	// A second later nothing has changed the view: bob is gone.
	time.Sleep(time.Second)
	va.update()
	if want := map[string][]string{"alice": {"node2"}}; !maps.EqualFunc(va.state.shape(), want, slices.Equal) {
		t.Errorf("after bob left: %v, want alice alone", va)
	}
	prCheckView(t, va)
}
