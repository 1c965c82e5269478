package e2e

// End-to-end tests of the cluster: real chatd processes (race-enabled when
// the tests are) joined by memberlist gossip on loopback ports, relaying
// through one real Redis server (testsvc.StartRedis), checked from the
// outside only: WebSocket frames, /api/stats, the health endpoints, process
// exits and logs.
//
// The tests are not parallel: they measure failure detection, which CPU
// starvation by other race-enabled processes would distort.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/google/uuid"

	"github.com/chatd/chatd/internal/testsvc"
)

// clAdminToken is the CHAT_ADMIN_TOKEN of the cluster nodes: /api/stats is
// read with it.
const clAdminToken = "e2e-cluster-admin-token"

// clNode is a chatd process of a test cluster.
type clNode struct {
	*testsvc.Chatd
	name string
}

// clStartNode starts chatd serve as a cluster node named name, relaying
// through redis, with the fast failure detection of the "local" profile,
// the per-user limits off and extra env. join is the gossip address of a
// seed ("" for the first node).
func clStartNode(t testing.TB, redis *testsvc.Redis, name, join string, extra map[string]string) *clNode {
	t.Helper()
	env := map[string]string{
		"CHAT_JWT_SECRET":         testSecret,
		"CHAT_REDIS_URL":          redis.URL(),
		"CHAT_NODE_NAME":          name,
		"CHAT_CLUSTER_PROFILE":    "local",
		"CHAT_CLUSTER_JOIN":       join,
		"CHAT_ADMIN_TOKEN":        clAdminToken,
		"CHAT_USER_RATE":          "0",
		"CHAT_JOIN_RATE":          "0",
		"CHAT_MAX_CONNS_PER_USER": "0",
	}
	maps.Copy(env, extra)
	return &clNode{Chatd: testsvc.StartChatd(t, env, "serve"), name: name}
}

// clStartCluster starts n nodes named node1..nodeN: node1 first, the others
// joining node1's gossip address (as /api/stats reports it; StartChatd
// picks the port). It returns once every node lists all n as alive.
func clStartCluster(t testing.TB, redis *testsvc.Redis, n int, extra map[string]string) []*clNode {
	t.Helper()
	start := time.Now()
	nodes := []*clNode{clStartNode(t, redis, "node1", "", extra)}
	seed := clGossipAddr(t, nodes[0])
	for i := 2; i <= n; i++ {
		nodes = append(nodes, clStartNode(t, redis, fmt.Sprintf("node%d", i), seed, extra))
	}
	started := time.Now()
	clWaitAllAlive(t, nodes, 30*time.Second)
	t.Logf("cluster of %d nodes up (node1 gossips at %s): processes started in %s, all alive in every node's /api/stats %s later",
		n, seed, started.Sub(start).Round(time.Millisecond), time.Since(started).Round(time.Millisecond))
	return nodes
}

// clStats is the part of /api/stats these tests read.
type clStats struct {
	Node  string     `json:"node"`
	Nodes []clMember `json:"nodes"`
}

type clMember struct {
	Name    string `json:"name"`
	Address string `json:"address"`
	State   string `json:"state"`
	Local   bool   `json:"local"`
}

// member returns the entry of name, if listed.
func (s clStats) member(name string) (clMember, bool) {
	for _, m := range s.Nodes {
		if m.Name == name {
			return m, true
		}
	}
	return clMember{}, false
}

func (s clStats) String() string {
	var parts []string
	for _, m := range s.Nodes {
		parts = append(parts, m.Name+"="+m.State)
	}
	return s.Node + " sees [" + strings.Join(parts, " ") + "]"
}

var clHTTP = &http.Client{Timeout: 3 * time.Second}

// clGetStats reads c's /api/stats with the admin token.
func clGetStats(c *testsvc.Chatd) (clStats, error) {
	req, err := http.NewRequest(http.MethodGet, c.URL()+"/api/stats", nil)
	if err != nil {
		return clStats{}, err
	}
	req.Header.Set("Authorization", "Bearer "+clAdminToken)
	resp, err := clHTTP.Do(req)
	if err != nil {
		return clStats{}, err
	}
	defer resp.Body.Close()
	var s clStats
	if resp.StatusCode != http.StatusOK {
		return s, fmt.Errorf("GET /api/stats: %s", resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		return s, fmt.Errorf("GET /api/stats: %w", err)
	}
	return s, nil
}

// clGossipAddr returns the gossip address n advertises (its own entry in
// its /api/stats).
func clGossipAddr(t testing.TB, n *clNode) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s, err := clGetStats(n.Chatd)
		if err == nil {
			if m, ok := s.member(n.name); ok && m.Local && m.Address != "" {
				return m.Address
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no local node with a gossip address in /api/stats after 10s: %v %v", n.name, s, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// clWaitAllAlive polls every node's /api/stats until each lists exactly the
// nodes' names, all alive; it fails t after d.
func clWaitAllAlive(t testing.TB, nodes []*clNode, d time.Duration) {
	t.Helper()
	var names []string
	for _, n := range nodes {
		names = append(names, n.name)
	}
	slices.Sort(names)
	deadline := time.Now().Add(d)
	for {
		var last []string
		ok := true
		for _, n := range nodes {
			s, err := clGetStats(n.Chatd)
			var alive []string
			for _, m := range s.Nodes {
				if m.State == "alive" {
					alive = append(alive, m.Name)
				}
			}
			slices.Sort(alive)
			if err != nil || len(s.Nodes) != len(nodes) || !slices.Equal(alive, names) {
				ok = false
			}
			last = append(last, fmt.Sprintf("%v (err %v)", s, err))
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not every node lists %v alive after %s: %s", names, d, strings.Join(last, "; "))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// clPushAll makes every member push n messages to topic at once (each
// member all n without waiting for replies), and returns the messages by
// id. Every push must be acknowledged.
func clPushAll(t *testing.T, members []*psClient, topic string, n int, tag string) map[string]psMsg {
	t.Helper()
	results := make([][]psPush, len(members))
	var wg sync.WaitGroup
	for i, m := range members {
		bodies := make([]string, n)
		for k := range bodies {
			bodies[k] = fmt.Sprintf("%s %s #%d", tag, m.user, k)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = psPushMany(m, topic, bodies, n)
		}()
	}
	wg.Wait()
	acked := make(map[string]psMsg)
	failed := 0
	for _, ps := range results {
		for _, p := range ps {
			if !p.ok() {
				failed++
				if failed <= 5 {
					t.Errorf("%s: push %q by %s to %s: reply %s (err %v), want ok with an id", tag, p.Body, p.User, topic, p.Reply.Raw, p.Reply.Err)
				}
				continue
			}
			if prev, dup := acked[p.Reply.id()]; dup {
				t.Errorf("%s: id %s acknowledged twice: %q and %q", tag, p.Reply.id(), prev.Body, p.Body)
			}
			acked[p.Reply.id()] = p.msg()
		}
	}
	if failed > 0 {
		t.Fatalf("%s: %d of %d pushes to %s not acknowledged", tag, failed, n*len(members), topic)
	}
	return acked
}

// clFence pushes a fence message to topic from members[0] and waits until
// every member has read it. A room's messages reach its members in one
// order, so every message acknowledged before the fence has then been
// delivered everywhere it ever will be (late duplicates included). It
// returns the fence message; it fails t when a member does not read it
// within d.
func clFence(t *testing.T, what, topic string, members []*psClient, d time.Duration) psMsg {
	t.Helper()
	p := psPushOne(members[0], topic, "fence "+uuid.NewString())
	if !p.ok() {
		t.Fatalf("%s: fence push to %s: reply %s (err %v), want ok", what, topic, p.Reply.Raw, p.Reply.Err)
	}
	fence := p.msg()
	var wg sync.WaitGroup
	missing := make([]bool, len(members))
	for i, m := range members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, ok := m.waitMessages(topic, d, func(ms []psMsg) bool {
				return slices.ContainsFunc(ms, func(x psMsg) bool { return x.ID == fence.ID })
			})
			missing[i] = !ok
		}()
	}
	wg.Wait()
	for i, miss := range missing {
		if miss {
			t.Errorf("%s: %s (member %d of %s) did not read the fence message %s within %s (read %d messages; connection: %v)",
				what, members[i].user, i, topic, fence.ID, d, len(members[i].messages(topic)), members[i].ended())
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	return fence
}

// clCheckRoom fences topic (see clFence), then checks what each member
// read on it: ids strictly increasing (so no duplicate and one order for
// all), every message of want exactly once with the right room, user and
// body, and nothing else but messages in old (earlier phases, skipped);
// and every member read want in the same order. It returns the ids of
// everything checked, to be old for the next phase.
func clCheckRoom(t *testing.T, what, topic string, members []*psClient, want map[string]psMsg, old map[string]bool) map[string]bool {
	t.Helper()
	fence := clFence(t, what, topic, members, 30*time.Second)
	want = maps.Clone(want)
	want[fence.ID] = fence
	room := strings.TrimPrefix(topic, "room:")
	var order0 []string
	for i, m := range members {
		got := m.messages(topic)
		var order []string
		seen := make(map[string]int)
		errs := 0
		fail := func(format string, args ...any) {
			errs++
			if errs <= 5 {
				t.Errorf("%s: %s (member %d of %s): %s", what, m.user, i, topic, fmt.Sprintf(format, args...))
			}
		}
		for k, x := range got {
			if k > 0 && x.ID <= got[k-1].ID {
				fail("message %d id %s is not after message %d id %s", k, x.ID, k-1, got[k-1].ID)
			}
			seen[x.ID]++
			if old[x.ID] {
				continue
			}
			w, ok := want[x.ID]
			switch {
			case !ok:
				fail("read message %s %q from %s (room %q), which is none of this room's acknowledged messages", x.ID, x.Body, x.UserID, x.Room)
				continue
			case x.Room != room || x.UserID != w.UserID || x.Body != w.Body:
				fail("message %s reads room %q user %q body %q, want %q %q %q", x.ID, x.Room, x.UserID, x.Body, room, w.UserID, w.Body)
			case x.InsertedAt.IsZero():
				fail("message %s has no inserted_at", x.ID)
			}
			order = append(order, x.ID)
		}
		for id, n := range seen {
			if n > 1 {
				fail("read message %s %d times", id, n)
			}
		}
		var lost []string
		for id, w := range want {
			if seen[id] == 0 {
				lost = append(lost, fmt.Sprintf("%s %q", id, w.Body))
			}
		}
		if len(lost) > 0 {
			slices.Sort(lost)
			fail("did not read %d of the %d acknowledged messages, e.g. %v", len(lost), len(want), lost[:min(len(lost), 5)])
		}
		if i == 0 {
			order0 = order
		} else if !slices.Equal(order, order0) {
			k := 0
			for k < min(len(order), len(order0)) && order[k] == order0[k] {
				k++
			}
			fail("order differs from %s's at position %d of %d/%d", members[0].user, k, len(order), len(order0))
		}
		if errs > 5 {
			t.Errorf("%s: %s: ... %d problems in all", what, m.user, errs)
		}
	}
	ids := maps.Clone(old)
	if ids == nil {
		ids = make(map[string]bool)
	}
	for id := range want {
		ids[id] = true
	}
	return ids
}

// clTopics returns the topics c has read new_msg broadcasts on.
func clTopics(c *psClient) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Sorted(maps.Keys(c.msgs))
}

// clCloseStatus returns the close status that ended c's connection (-1 if
// none, e.g. a reset), waiting up to d for it to end.
func clCloseStatus(c *psClient, d time.Duration) (websocket.StatusCode, error) {
	select {
	case <-c.done:
	case <-time.After(d):
		return -1, fmt.Errorf("connection still open after %s", d)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return websocket.CloseStatus(c.readErr), c.readErr
}

// TestClusterRelayOrder: three nodes, one Redis. In room:lobby, two
// clients per node each push 50 messages at once: every client reads all
// 300 exactly once, ids strictly increasing, in the same order. Then 20
// rooms with members spread over the nodes get messages at once: per room
// the same holds, and nobody reads another room's messages.
func TestClusterRelayOrder(t *testing.T) {
	redis := testsvc.StartRedis(t)
	nodes := clStartCluster(t, redis, 3, nil)

	const lobby = "room:lobby"
	var members []*psClient
	for i, n := range nodes {
		for k := range 2 {
			cl := psDial(t, n.Chatd, fmt.Sprintf("lobby-n%d-%d", i+1, k))
			cl.join(t, lobby, nil)
			members = append(members, cl)
		}
	}
	start := time.Now()
	acked := clPushAll(t, members, lobby, 50, "lobby")
	ackedIn := time.Since(start)
	clCheckRoom(t, "lobby", lobby, members, acked, nil)
	t.Logf("lobby: %d clients on 3 nodes pushed %d messages at once (all acknowledged in %s); every client read all %d (+ fence) exactly once, ids strictly increasing, same order; %s in all",
		len(members), len(acked), ackedIn.Round(time.Millisecond), len(acked), time.Since(start).Round(time.Millisecond))

	// Many rooms: 4 clients per node; room r has, on node j, client
	// (r+j)%4, except where (r+j)%5 == 0: so rooms span two or three nodes
	// and every client is in several rooms.
	const rooms, perNode, each = 20, 4, 10
	clients := make([][]*psClient, len(nodes))
	for j, n := range nodes {
		for k := range perNode {
			clients[j] = append(clients[j], psDial(t, n.Chatd, fmt.Sprintf("multi-n%d-%d", j+1, k)))
		}
	}
	roomMembers := make([][]*psClient, rooms)
	joined := make(map[*psClient][]string)
	for r := range rooms {
		topic := fmt.Sprintf("room:multi-%02d", r)
		for j := range nodes {
			if (r+j)%5 == 0 {
				continue
			}
			cl := clients[j][(r+j)%perNode]
			cl.join(t, topic, nil)
			roomMembers[r] = append(roomMembers[r], cl)
			joined[cl] = append(joined[cl], topic)
		}
	}
	start = time.Now()
	ackedRooms := make([]map[string]psMsg, rooms)
	var wg sync.WaitGroup
	var pushMu sync.Mutex
	var pushErrs []string
	for r := range rooms {
		topic := fmt.Sprintf("room:multi-%02d", r)
		for _, cl := range roomMembers[r] {
			wg.Add(1)
			go func() {
				defer wg.Done()
				bodies := make([]string, each)
				for k := range bodies {
					bodies[k] = fmt.Sprintf("%s %s #%d", topic, cl.user, k)
				}
				ps := psPushMany(cl, topic, bodies, each)
				pushMu.Lock()
				defer pushMu.Unlock()
				if ackedRooms[r] == nil {
					ackedRooms[r] = make(map[string]psMsg)
				}
				for _, p := range ps {
					if !p.ok() {
						pushErrs = append(pushErrs, fmt.Sprintf("%s by %s: %s (err %v)", p.Body, p.User, p.Reply.Raw, p.Reply.Err))
						continue
					}
					ackedRooms[r][p.Reply.id()] = p.msg()
				}
			}()
		}
	}
	wg.Wait()
	if len(pushErrs) > 0 {
		t.Fatalf("%d pushes not acknowledged, e.g. %v", len(pushErrs), pushErrs[:min(5, len(pushErrs))])
	}
	total, memberships := 0, 0
	for r := range rooms {
		topic := fmt.Sprintf("room:multi-%02d", r)
		clCheckRoom(t, topic, topic, roomMembers[r], ackedRooms[r], nil)
		total += len(ackedRooms[r])
		memberships += len(roomMembers[r])
	}
	// Nobody read a room it is not in (a message of another room read on
	// a joined topic fails clCheckRoom).
	for cl, topics := range joined {
		slices.Sort(topics)
		if got := clTopics(cl); !slices.Equal(got, topics) {
			t.Errorf("%s read messages on topics %v, joined %v", cl.user, got, topics)
		}
	}
	t.Logf("%d rooms (%d memberships over 3 nodes, %d clients): %d messages pushed at once, each read exactly once, in one order, by each member of its room only; %s in all",
		rooms, memberships, len(joined), total, time.Since(start).Round(time.Millisecond))
}

// TestClusterRedisRestart: Redis is killed while three nodes chat and
// restarted on the same port. Every node stays up (/health/live 200
// throughout), /health/ready answers 200 throughout (Redis is shared by
// every pod), naming redis as degraded while it is down and not after; every push during the outage gets an error reply
// "unavailable", and none of those messages is ever delivered. Once Redis
// is back, with no node restarted, relay works again in the room joined
// before the outage (its subscriptions resume) and for new joins.
//
// Messages acknowledged ok in the moments after Redis returns, before
// every node's pub/sub connection has resubscribed, may reach only some
// members: each such member must have been sent phx_error for the room and
// must recover the gap by rejoining with "since".
func TestClusterRedisRestart(t *testing.T) {
	redis := testsvc.StartRedis(t)
	// One database for the cluster, as deployed: a member told to recover
	// rejoins with "since" and gets what it missed from any node.
	pg := testsvc.StartPostgres(t)
	nodes := clStartCluster(t, redis, 3, map[string]string{"CHAT_DATABASE_URL": pg.URL()})

	const topic = "room:steady"
	members := make([]*psClient, len(nodes))
	for i, n := range nodes {
		members[i] = psDial(t, n.Chatd, fmt.Sprintf("steady-n%d", i+1))
		// Told phx_error once the relay is back, a member rejoins with
		// since, as the phoenix client does.
		members[i].recoverOnError()
		members[i].join(t, topic, nil)
	}
	acked := clPushAll(t, members, topic, 5, "before")
	old := clCheckRoom(t, "before the outage", topic, members, acked, nil)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	monitors := make([]func() []psProbe, len(nodes))
	for i, n := range nodes {
		monitors[i] = psMonitor(ctx, n.URL(), 100*time.Millisecond)
	}

	// A steady load runs across the outage: every push must get a reply,
	// ok or "unavailable".
	load := psStartLoad(members, []string{topic, topic, topic}, 100*time.Millisecond)
	loadStopped := false
	defer func() {
		if !loadStopped {
			load.stop()
		}
	}()
	clWaitPushes(t, load, 6, 10*time.Second)

	late := psDial(t, nodes[1].Chatd, "late-joiner")
	down := time.Now()
	redis.Stop(t)
	degraded := make([]time.Time, len(nodes)) // when each node first reported redis down
	for i, n := range nodes {
		body := psWaitDependency(t, n.Chatd, "redis", true, 15*time.Second)
		degraded[i] = time.Now()
		t.Logf("%s: /health/ready 200 naming redis degraded %s after Redis was killed: %s", n.name, time.Since(down).Round(time.Millisecond), strings.TrimSpace(body))
	}

	// Pushes while Redis is down: each gets an error reply "unavailable".
	var outageErrored []psPush
	for _, m := range members {
		bodies := []string{m.user + " outage #0", m.user + " outage #1", m.user + " outage #2"}
		start := time.Now()
		for _, p := range psPushMany(m, topic, bodies, len(bodies)) {
			if p.Reply.Err != nil || p.Reply.Status != "error" || p.Reply.reason() != "unavailable" {
				t.Errorf("push %q during the outage: reply %s (err %v), want an error reply with reason \"unavailable\"", p.Body, p.Reply.Raw, p.Reply.Err)
				continue
			}
			outageErrored = append(outageErrored, p)
		}
		t.Logf("%s: 3 pushes during the outage answered \"unavailable\" within %s", m.user, time.Since(start).Round(time.Millisecond))
	}
	// A join of a room the node is not subscribed to needs Redis: it must
	// be refused, not acknowledged without a subscription. (The joiner
	// connected before the outage: a handshake needs Redis too, for the
	// token's revocation check.)
	jctx, jcancel := context.WithTimeout(context.Background(), 15*time.Second)
	jr, err := late.call(jctx, "room:fresh", "phx_join", struct{}{})
	jcancel()
	if err != nil || jr.Status != "error" || jr.reason() != "unavailable" {
		t.Errorf("join of a new room during the outage: reply %s (err %v), want an error reply \"unavailable\"", jr.Raw, err)
	} else {
		t.Logf("join of a new room during the outage: %s", jr.Raw)
	}
	// Keep Redis down long enough for the relay's reconnect backoff to
	// reach its ceiling (2 s), while the load goes on.
	for time.Since(down) < clRedisOutage {
		time.Sleep(50 * time.Millisecond)
	}
	clWaitPushes(t, load, len(load.snapshot())+6, 10*time.Second)

	outage := time.Since(down)
	up := time.Now()
	redis.Start(t)
	for _, n := range nodes {
		psWaitDependency(t, n.Chatd, "redis", false, 20*time.Second)
		t.Logf("%s: /health/ready reports redis up %s after Redis restarted (outage %s)", n.name, time.Since(up).Round(time.Millisecond), outage.Round(time.Millisecond))
	}
	readyAfter := time.Since(up)
	clWaitPushes(t, load, len(load.snapshot())+6, 10*time.Second)
	pushes := load.stop()
	loadStopped = true

	// Every push of the load got a reply: ok, or "unavailable".
	var okBefore, okAfter, unavailable, unmatched, loadAcked int
	loadOK := make(map[string]psPush)
	for _, p := range pushes {
		switch {
		case p.ok():
			loadAcked++
			loadOK[p.Reply.id()] = p
			if p.Reply.At.Before(down) {
				okBefore++
			} else {
				okAfter++
			}
		case p.Reply.Err == nil && p.Reply.Status == "error" && p.Reply.reason() == "unavailable":
			unavailable++
			outageErrored = append(outageErrored, p)
		case p.Reply.Err == nil && p.Reply.Status == "error" && p.Reply.reason() == "unmatched topic":
			// Pushed between phx_error and the rejoin: the channel was
			// gone (a phoenix client buffers pushes until it rejoins).
			unmatched++
			outageErrored = append(outageErrored, p)
		default:
			t.Errorf("load push %q: reply %s (err %v), want ok or error \"unavailable\"", p.Body, p.Reply.Raw, p.Reply.Err)
		}
	}
	t.Logf("steady load across the outage: %d pushes, every one answered: %d ok before Redis was killed, %d \"unavailable\", %d \"unmatched topic\" (between phx_error and the rejoin), %d ok after",
		len(pushes), okBefore, unavailable, unmatched, okAfter)
	if unavailable == 0 {
		t.Errorf("no load push was answered \"unavailable\" during a %s outage", outage.Round(time.Millisecond))
	}

	// Relay in the room joined before the outage, with no node restarted.
	relayStart := time.Now()
	acked = clPushAll(t, members, topic, 5, "after")
	// Load messages acknowledged around the outage: each member reads each
	// at most once, in order (checked by clCheckRoom's id order); one
	// acknowledged just before the kill may miss a node whose pub/sub
	// connection died first (Redis pub/sub keeps no backlog).
	for id := range loadOK {
		old[id] = true
	}
	clCheckRoom(t, "after the outage, room joined before", topic, members, acked, old)
	t.Logf("relay resumed in %s: all members read the %d messages pushed once every node was ready again (%s after the restart), first push to last read %s",
		topic, len(acked), readyAfter.Round(time.Millisecond), time.Since(relayStart).Round(time.Millisecond))
	for i, m := range members {
		got := m.messages(topic)
		has := make(map[string]bool, len(got))
		for _, x := range got {
			has[x.ID] = true
		}
		var missed []psPush
		for id, p := range loadOK {
			if !has[id] {
				missed = append(missed, p)
			}
		}
		for _, p := range outageErrored {
			for _, x := range got {
				if x.Body == p.Body {
					t.Errorf("%s read %q (id %s), a message whose push was answered %q", m.user, x.Body, x.ID, p.Reply.reason())
				}
			}
		}
		if len(missed) > 0 {
			// Acknowledged, yet not delivered to this member: its node's
			// relay was cut off. The node must have told the member
			// (phx_error on the topic, on which a phoenix client rejoins),
			// and a rejoin with "since" the last message read before the
			// gap must recover every missed message.
			told := false
			for _, raw := range m.otherFrames() {
				if strings.Contains(raw, `"phx_error"`) && strings.Contains(raw, `"`+topic+`"`) {
					told = true
				}
			}
			if !told {
				t.Errorf("GAP: %s (node%d) never read %d acknowledged messages and was not sent phx_error for %s", m.user, i+1, len(missed), topic)
				continue
			}
			firstMissed := missed[0].Reply.id()
			for _, p := range missed {
				if id := p.Reply.id(); id < firstMissed {
					firstMissed = id
				}
			}
			since := ""
			for _, x := range got {
				if x.ID < firstMissed && x.ID > since {
					since = x.ID
				}
			}
			if since == "" {
				t.Errorf("%s: no message read before the gap to recover from", m.user)
				continue
			}
			resp := m.join(t, topic, map[string]any{"since": since})
			inReply := map[string]bool{}
			for _, x := range resp.Messages {
				inReply[x.ID] = true
			}
			lost := 0
			for _, p := range missed {
				if !inReply[p.Reply.id()] {
					lost++
				}
			}
			if lost > 0 || resp.Recovered == nil || !*resp.Recovered {
				t.Errorf("%s (node%d): told to recover %d missed messages; rejoin since %s recovered=%v and lacks %d of them",
					m.user, i+1, len(missed), since, resp.Recovered, lost)
				continue
			}
			t.Logf("%s (node%d) missed %d messages while its relay was down, was told (phx_error) and recovered all of them by rejoining with since", m.user, i+1, len(missed))
		}
	}

	// New joins after the outage, the late joiner's retry included.
	const fresh = "room:fresh"
	late.join(t, fresh, nil)
	newcomers := []*psClient{late}
	for i, n := range nodes {
		if i == 1 {
			continue
		}
		cl := psDial(t, n.Chatd, fmt.Sprintf("fresh-n%d", i+1))
		cl.join(t, fresh, nil)
		newcomers = append(newcomers, cl)
	}
	acked = clPushAll(t, newcomers, fresh, 5, "fresh")
	clCheckRoom(t, "after the outage, new joins", fresh, newcomers, acked, nil)

	// No acknowledged message is lost by the restart: every one is stored,
	// once, and none of the refused ones is.
	var steadyAcked []string
	for id := range old {
		steadyAcked = append(steadyAcked, id)
	}
	stored := rlWaitStored(t, pg.URL(), "steady", steadyAcked, 30*time.Second)
	if missing := rlMissing(steadyAcked, stored); len(missing) > 0 {
		t.Errorf("%d of %d acknowledged messages of %s not stored, e.g. %v", len(missing), len(steadyAcked), topic, missing[:min(5, len(missing))])
	}
	if _, dups := rlStoredIDs(t, pg.URL(), "steady"); len(dups) > 0 {
		t.Errorf("%d messages stored twice: %v", len(dups), dups)
	}
	if rows, err := psQueryRows(pg.URL()); err != nil {
		t.Errorf("reading the messages table: %v", err)
	} else {
		for _, p := range outageErrored {
			for _, r := range rows {
				if r.Body == p.Body {
					t.Errorf("%q was answered %q and stored (id %s)", p.Body, p.Reply.reason(), r.ID)
				}
			}
		}
	}
	t.Logf("PostgreSQL holds all %d acknowledged messages of %s once, and none of the %d refused", len(steadyAcked), topic, len(outageErrored))
	for _, m := range members {
		for i, ok := range m.rejoinResults() {
			if !ok {
				t.Errorf("%s: rejoin %d after phx_error was not recovered", m.user, i+1)
			}
		}
	}

	// Nobody restarted, nobody dropped: processes alive, connections open,
	// /health/live 200 on every probe.
	cancel()
	for i, n := range nodes {
		select {
		case <-n.Done():
			t.Errorf("%s exited during the test", n.name)
		default:
		}
		live, ready200, readyDegraded := 0, 0, 0
		for _, p := range monitors[i]() {
			switch {
			case p.err != nil || p.status != http.StatusOK:
				t.Errorf("%s: %s at %s: %d %s (err %v), want 200 throughout", n.name, p.path, p.start.Sub(down).Round(time.Millisecond), p.status, p.body, p.err)
			case p.path == "/health/live":
				live++
			default:
				ready200++
				if psDegraded(p.body, "redis") {
					readyDegraded++
				} else if p.start.After(degraded[i]) && p.end.Before(up) {
					t.Errorf("%s: /health/ready at %s did not name redis degraded while Redis was down: %s", n.name, p.start.Sub(down).Round(time.Millisecond), p.body)
				}
			}
		}
		t.Logf("%s: /health/live 200 on all %d probes; /health/ready 200 on all %d, %d of them naming redis degraded", n.name, live, ready200, readyDegraded)
		if strings.Contains(n.Logs(), "panic") {
			t.Errorf("%s logged a panic", n.name)
		}
	}
	for _, m := range append(members, newcomers...) {
		if err := m.ended(); err != nil {
			t.Errorf("%s: connection ended: %v", m.user, err)
		}
	}
}

// clLastLogTime returns the time of the last line of logs (chatd's text
// format) containing msg.
func clLastLogTime(logs, msg string) (time.Time, bool) {
	var at time.Time
	found := false
	for line := range strings.Lines(logs) {
		if !strings.Contains(line, msg) {
			continue
		}
		ts, ok := strings.CutPrefix(line, "time=")
		if !ok {
			continue
		}
		ts, _, _ = strings.Cut(ts, " ")
		if t, err := time.Parse(time.RFC3339Nano, ts); err == nil {
			at, found = t, true
		}
	}
	return at, found
}

// clRedisOutage is how long TestClusterRedisRestart keeps Redis down.
const clRedisOutage = 3 * time.Second

// clWaitPushes waits until load has completed at least n pushes, failing t
// after d.
func clWaitPushes(t *testing.T, load *psLoad, n int, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for len(load.snapshot()) < n {
		if time.Now().After(deadline) {
			t.Fatalf("steady load: %d pushes answered after %s, want %d", len(load.snapshot()), d, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// clWatch polls observer's /api/stats every 25 ms until ctx ends and
// records how it sees node: when it first saw it in a state other than
// alive (or not listed at all), and every state seen.
type clWatch struct {
	observer *clNode
	node     string
	mu       sync.Mutex
	first    map[string]time.Time // state ("gone": not listed) -> first seen
	seq      []string             // states in order, repeats collapsed
	done     chan struct{}
}

func clStartWatch(ctx context.Context, observer *clNode, node string) *clWatch {
	w := &clWatch{observer: observer, node: node, first: make(map[string]time.Time), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for ctx.Err() == nil {
			s, err := clGetStats(observer.Chatd)
			at := time.Now()
			w.mu.Lock()
			if err == nil {
				state := "gone"
				if m, ok := s.member(node); ok {
					state = m.State
				}
				if _, ok := w.first[state]; !ok {
					w.first[state] = at
				}
				if len(w.seq) == 0 || w.seq[len(w.seq)-1] != state {
					w.seq = append(w.seq, state)
				}
			}
			w.mu.Unlock()
			select {
			case <-ctx.Done():
			case <-time.After(25 * time.Millisecond):
			}
		}
	}()
	return w
}

// wait waits until the observer has seen one of states, and returns which
// and when; ok is false after d.
func (w *clWatch) wait(d time.Duration, states ...string) (state string, at time.Time, ok bool) {
	deadline := time.Now().Add(d)
	for {
		w.mu.Lock()
		for _, s := range states {
			if t, seen := w.first[s]; seen && (!ok || t.Before(at)) {
				state, at, ok = s, t, true
			}
		}
		w.mu.Unlock()
		if ok || time.Now().After(deadline) {
			return state, at, ok
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (w *clWatch) states() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.seq)
}

// TestClusterNodeKilled: a node is SIGKILLed. The survivors' /api/stats
// show it dead (or no longer list it) within the failure-detection time,
// which is measured; clients on the survivors chat across them throughout,
// every message read exactly once, in one order.
func TestClusterNodeKilled(t *testing.T) {
	redis := testsvc.StartRedis(t)
	nodes := clStartCluster(t, redis, 3, nil)
	victim, survivors := nodes[2], nodes[:2]

	const topic = "room:survive"
	var members []*psClient
	for i, n := range survivors {
		for k := range 2 {
			cl := psDial(t, n.Chatd, fmt.Sprintf("survivor-n%d-%d", i+1, k))
			cl.join(t, topic, nil)
			members = append(members, cl)
		}
	}
	doomed := psDial(t, victim.Chatd, "doomed")
	doomed.join(t, topic, nil)
	acked := clPushAll(t, append(slices.Clone(members), doomed), topic, 3, "before")
	old := clCheckRoom(t, "before the kill", topic, append(slices.Clone(members), doomed), acked, nil)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	watches := make([]*clWatch, len(survivors))
	for i, n := range survivors {
		watches[i] = clStartWatch(ctx, n, victim.name)
	}
	topics := make([]string, len(members))
	for i := range topics {
		topics[i] = topic
	}
	load := psStartLoad(members, topics, 100*time.Millisecond)
	loadStopped := false
	defer func() {
		if !loadStopped {
			load.stop()
		}
	}()
	clWaitPushes(t, load, 8, 10*time.Second)

	killed := time.Now()
	if err := victim.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := victim.WaitTimeout(10 * time.Second); err == nil {
		t.Fatalf("%s exited with status 0 after SIGKILL", victim.name)
	}
	var detected []time.Duration
	for i, w := range watches {
		state, at, ok := w.wait(15*time.Second, "dead", "gone")
		if !ok {
			t.Fatalf("%s still lists %s as %v 15s after SIGKILL", survivors[i].name, victim.name, w.states())
		}
		detected = append(detected, at.Sub(killed))
		t.Logf("%s saw %s %s %s after SIGKILL (states seen: %v)", survivors[i].name, victim.name, state, at.Sub(killed).Round(time.Millisecond), w.states())
		if slices.Contains(w.states(), "left") {
			t.Errorf("%s saw the SIGKILLed %s as left (states %v): it never left gracefully", survivors[i].name, victim.name, w.states())
		}
	}
	if d := slices.Max(detected); d > 10*time.Second {
		t.Errorf("failure detection took %s with CHAT_CLUSTER_PROFILE=local, want a few seconds", d.Round(time.Millisecond))
	}
	if _, err := clCloseStatus(doomed, 5*time.Second); err == nil {
		t.Errorf("%s's client connection survived its node's SIGKILL", victim.name)
	}

	// Survivors keep chatting, across nodes, after the detection too.
	clWaitPushes(t, load, len(load.snapshot())+8, 10*time.Second)
	pushes := load.stop()
	loadStopped = true
	loadAcked := make(map[string]psMsg)
	for _, p := range pushes {
		if !p.ok() {
			t.Errorf("push %q by %s across the kill: reply %s (err %v), want ok", p.Body, p.User, p.Reply.Raw, p.Reply.Err)
			continue
		}
		loadAcked[p.Reply.id()] = p.msg()
	}
	maps.Copy(loadAcked, clPushAll(t, members, topic, 5, "after"))
	clCheckRoom(t, "survivors", topic, members, loadAcked, old)
	t.Logf("survivors on %s and %s: %d messages pushed across the kill and after, every one read exactly once by all %d members, in one order; failure detection %v",
		survivors[0].name, survivors[1].name, len(loadAcked), len(members), detected)
	cancel()
	for _, w := range watches {
		<-w.done
	}
}

// TestClusterNodeSIGTERM: a node gets SIGTERM. It leaves the cluster
// gracefully: the others' /api/stats show it "left" (never "dead")
// promptly; its clients are closed with 1001; it exits with status 0. The
// others go on chatting.
func TestClusterNodeSIGTERM(t *testing.T) {
	redis := testsvc.StartRedis(t)
	nodes := clStartCluster(t, redis, 3, map[string]string{"CHAT_SHUTDOWN_TIMEOUT": "10s"})
	leaver, stayers := nodes[2], nodes[:2]

	const topic = "room:farewell"
	var members []*psClient
	for i, n := range stayers {
		cl := psDial(t, n.Chatd, fmt.Sprintf("stayer-n%d", i+1))
		cl.join(t, topic, nil)
		members = append(members, cl)
	}
	var leaving []*psClient
	for k := range 2 {
		cl := psDial(t, leaver.Chatd, fmt.Sprintf("leaver-%d", k))
		cl.join(t, topic, nil)
		leaving = append(leaving, cl)
	}
	all := append(slices.Clone(members), leaving...)
	acked := clPushAll(t, all, topic, 3, "before")
	old := clCheckRoom(t, "before SIGTERM", topic, all, acked, nil)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	watches := make([]*clWatch, len(stayers))
	for i, n := range stayers {
		watches[i] = clStartWatch(ctx, n, leaver.name)
	}

	sent := time.Now()
	if err := leaver.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for _, cl := range leaving {
		st, err := clCloseStatus(cl, 15*time.Second)
		if st != websocket.StatusGoingAway {
			t.Errorf("%s: connection ended with %v (status %d), want close status 1001 going away", cl.user, err, st)
		} else {
			var ce websocket.CloseError
			errors.As(err, &ce)
			t.Logf("%s: closed with 1001 %q", cl.user, ce.Reason)
		}
	}
	exitErr := leaver.WaitTimeout(15 * time.Second)
	exited := time.Since(sent)
	if exitErr != nil {
		t.Errorf("%s after SIGTERM: %v, want exit status 0", leaver.name, exitErr)
	}
	t.Logf("%s exited (%v) %s after SIGTERM", leaver.name, exitErr, exited.Round(time.Millisecond))
	for i, w := range watches {
		state, at, ok := w.wait(10*time.Second, "left")
		if !ok {
			t.Errorf("%s did not list %s as left within 10s of SIGTERM; states seen: %v", stayers[i].name, leaver.name, w.states())
			continue
		}
		t.Logf("%s saw %s %s %s after SIGTERM (the process exited after %s; states seen: %v)", stayers[i].name, leaver.name, state,
			at.Sub(sent).Round(time.Millisecond), exited.Round(time.Millisecond), w.states())
		if at.Sub(sent) > 5*time.Second {
			t.Errorf("%s saw %s leave only %s after SIGTERM, want promptly", stayers[i].name, leaver.name, at.Sub(sent).Round(time.Millisecond))
		}
	}
	cancel()
	for i, w := range watches {
		<-w.done
		if seq := w.states(); slices.Contains(seq, "dead") {
			t.Errorf("%s saw the gracefully stopped %s as dead: states %v", stayers[i].name, leaver.name, seq)
		}
	}
	if !strings.Contains(leaver.Logs(), "cluster: left the cluster") {
		t.Errorf("%s's log has no \"cluster: left the cluster\"", leaver.name)
	}

	acked = clPushAll(t, members, topic, 5, "after")
	clCheckRoom(t, "after SIGTERM", topic, members, acked, old)
}
