package e2e

// End-to-end fault tests of the room log's promises (issue 13): what a
// client is told by a push's reply, by a join with "since" or "history",
// and what ends up in PostgreSQL, while Redis subscriptions are cut, Redis
// stalls, is flushed or restarted, writes lag and a node is SIGKILLed. Real
// chatd processes, Redis and PostgreSQL; checked from the outside only.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/redis/go-redis/v9"

	"github.com/chatd/chatd/internal/testsvc"
)

// rlRedisClient returns a client of r for the test's own commands (CLIENT
// KILL, DEBUG SLEEP, FLUSHALL); its read timeout outlasts a DEBUG SLEEP 7.
func rlRedisClient(t testing.TB, r *testsvc.Redis) *redis.Client {
	t.Helper()
	rc := redis.NewClient(&redis.Options{Addr: r.Addr(), ReadTimeout: 20 * time.Second, MaxRetries: -1})
	t.Cleanup(func() { rc.Close() })
	return rc
}

// rlPeerPorts returns the local ports of pid's TCP connections to
// 127.0.0.1:remotePort (read from /proc: the process's socket inodes,
// matched in its network namespace's tcp table).
func rlPeerPorts(pid, remotePort int) (map[int]bool, error) {
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return nil, err
	}
	inodes := make(map[string]bool)
	for _, fd := range fds {
		link, err := os.Readlink(filepath.Join(fmt.Sprintf("/proc/%d/fd", pid), fd.Name()))
		if err != nil {
			continue
		}
		if ino, ok := strings.CutPrefix(link, "socket:["); ok {
			inodes[strings.TrimSuffix(ino, "]")] = true
		}
	}
	ports := make(map[int]bool)
	for _, table := range []string{"tcp", "tcp6"} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, table))
		if err != nil {
			continue
		}
		for line := range strings.Lines(string(b)) {
			f := strings.Fields(line)
			if len(f) < 10 || !inodes[f[9]] {
				continue
			}
			_, lport, _ := strings.Cut(f[1], ":")
			_, rport, _ := strings.Cut(f[2], ":")
			lp, err1 := strconv.ParseInt(lport, 16, 32)
			rp, err2 := strconv.ParseInt(rport, 16, 32)
			if err1 == nil && err2 == nil && int(rp) == remotePort {
				ports[int(lp)] = true
			}
		}
	}
	return ports, nil
}

// rlKillPubSub kills, in Redis, the pub/sub connections of the chatd
// process pid (CLIENT KILL ID for each pub/sub client whose address is one
// of pid's connections to Redis). It returns how many it killed.
func rlKillPubSub(rc *redis.Client, r *testsvc.Redis, pid int) (int, error) {
	_, portStr, _ := strings.Cut(r.Addr(), ":")
	rport, _ := strconv.Atoi(portStr)
	ports, err := rlPeerPorts(pid, rport)
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	list, err := rc.Do(ctx, "CLIENT", "LIST", "TYPE", "pubsub").Text()
	if err != nil {
		return 0, err
	}
	killed := 0
	for line := range strings.Lines(list) {
		var id string
		port := 0
		for _, kv := range strings.Fields(line) {
			k, v, _ := strings.Cut(kv, "=")
			switch k {
			case "id":
				id = v
			case "addr":
				_, p, _ := strings.Cut(v, ":")
				port, _ = strconv.Atoi(p)
			}
		}
		if id == "" || !ports[port] {
			continue
		}
		if err := rc.Do(ctx, "CLIENT", "KILL", "ID", id).Err(); err == nil {
			killed++
		}
	}
	return killed, nil
}

// rlKillLoop keeps killing pid's pub/sub connections (each as soon as it is
// back) until the returned stop is called; stop returns how many it
// killed.
func rlKillLoop(rc *redis.Client, r *testsvc.Redis, pid int) (stop func() int) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	total := 0
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			case <-time.After(5 * time.Millisecond):
			}
			n, _ := rlKillPubSub(rc, r, pid)
			total += n
		}
	}()
	return func() int {
		close(done)
		wg.Wait()
		return total
	}
}

// rlErrors counts the phx_error frames c has read for topic.
func rlErrors(c *psClient, topic string) int {
	n := 0
	for _, raw := range c.otherFrames() {
		if strings.Contains(raw, `"phx_error"`) && strings.Contains(raw, `"`+topic+`"`) {
			n++
		}
	}
	return n
}

// rlWaitErrors waits until c has read more than n phx_error frames for
// topic, failing t after d.
func rlWaitErrors(t *testing.T, c *psClient, topic string, n int, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for rlErrors(c, topic) <= n {
		if time.Now().After(deadline) {
			t.Fatalf("%s: no phx_error for %s within %s after its node's subscription was cut", c.user, topic, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// rlAckedIDs returns the ids of the ok pushes, sorted.
func rlAckedIDs(pushes []psPush) []string {
	var ids []string
	for _, p := range pushes {
		if p.ok() {
			ids = append(ids, p.Reply.id())
		}
	}
	slices.Sort(ids)
	return ids
}

// rlAfter returns the ids of sorted that are greater than since.
func rlAfter(sorted []string, since string) []string {
	i, found := slices.BinarySearch(sorted, since)
	if found {
		i++
	}
	return slices.Clone(sorted[i:])
}

// rlPushSeq pushes n messages from cl to topic, one every period, each
// without waiting for the previous reply, and returns every push.
func rlPushSeq(cl *psClient, topic, tag string, n int, period time.Duration) []psPush {
	out := make([]psPush, n)
	var wg sync.WaitGroup
	// A channel told phx_error (its node's relay was cut off) is gone until
	// it is rejoined, as the phoenix client does: pushes on it are answered
	// "unmatched topic" (not published), and the loop rejoins.
	var rejoin atomic.Bool
	tick := time.NewTicker(period)
	defer tick.Stop()
	for i := range n {
		if i > 0 {
			<-tick.C
		}
		if rejoin.Swap(false) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			cl.call(ctx, topic, "phx_join", struct{}{})
			cancel()
		}
		body := fmt.Sprintf("%s %d", tag, i)
		sent, ch, err := cl.pushAsync(topic, body)
		out[i] = psPush{Topic: topic, User: cl.user, Body: body, Sent: sent}
		if err != nil {
			out[i].Reply = psReply{Err: err}
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i].Reply = psAwait(ch)
			if out[i].Reply.reason() == "unmatched topic" {
				rejoin.Store(true)
			}
		}()
	}
	wg.Wait()
	return out
}

// rlStoredIDs returns the ids in the messages table of room, sorted, and
// the ids stored more than once.
func rlStoredIDs(t *testing.T, dbURL, room string) (ids, dups []string) {
	t.Helper()
	rows, err := psQueryRows(dbURL)
	if err != nil {
		t.Fatalf("read messages table: %v", err)
	}
	seen := make(map[string]bool)
	for _, r := range rows {
		if r.Room != room {
			continue
		}
		if seen[r.ID] {
			dups = append(dups, r.ID)
			continue
		}
		seen[r.ID] = true
		ids = append(ids, r.ID)
	}
	slices.Sort(ids)
	return ids, dups
}

// rlMissing returns the ids of want that are not in have.
func rlMissing(want []string, have []string) []string {
	set := make(map[string]bool, len(have))
	for _, id := range have {
		set[id] = true
	}
	var out []string
	for _, id := range want {
		if !set[id] {
			out = append(out, id)
		}
	}
	return out
}

// rlWaitStored polls room's rows until every id of want is stored or d
// passes, and returns the stored ids.
func rlWaitStored(t *testing.T, dbURL, room string, want []string, d time.Duration) []string {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ids, _ := rlStoredIDs(t, dbURL, room)
		if len(rlMissing(want, ids)) == 0 || time.Now().After(deadline) {
			return ids
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestRoomLogSinceOverCap (item 8): a join with "since" that missed more
// than 1,000 messages gets the newest 1,000, with recovered false. 1,500
// are missed: more than the 1,000 cap plus the 200 most recent a node keeps
// in memory, so an answer built from the oldest stored and the recent list
// has a hole.
func TestRoomLogSinceOverCap(t *testing.T) {
	t.Parallel()
	c := startServer(t, map[string]string{"CHAT_USER_RATE": "0", "CHAT_MAX_CONNS_PER_USER": "0"})
	const topic, missed, limit = "room:overcap", 1500, 1000
	pub := psDial(t, c, "overcap-pub")
	pub.join(t, topic, nil)
	first := psPushOne(pub, topic, "seen")
	if !first.ok() {
		t.Fatalf("push: %s %v", first.Reply.Raw, first.Reply.Err)
	}
	bodies := make([]string, missed)
	for i := range bodies {
		bodies[i] = fmt.Sprintf("missed %d", i)
	}
	ids := rlAckedIDs(psPushMany(pub, topic, bodies, 32))
	if len(ids) != missed {
		t.Fatalf("%d of %d pushes acknowledged", len(ids), missed)
	}
	j := psDial(t, c, "overcap-joiner")
	resp := j.join(t, topic, map[string]any{"since": first.Reply.id()})
	got := psIDs(resp.Messages)
	want := ids[len(ids)-limit:]
	inWant := 0
	for _, id := range got {
		if _, ok := slices.BinarySearch(want, id); ok {
			inWant++
		}
	}
	t.Logf(`join {"since": first} after %d missed: %d messages (%d of them among the newest %d), recovered=%s`, missed, len(got), inWant, limit, psBool(resp.Recovered))
	if same, diff := psSame(got, want); !same {
		t.Errorf("join since with %d missed: want exactly the newest %d, oldest first: %s", missed, limit, diff)
	}
	if resp.Recovered == nil || *resp.Recovered {
		t.Errorf("join since with %d missed: recovered=%s, want false", missed, psBool(resp.Recovered))
	}
}

// rlRaw is a raw Phoenix connection read by its own goroutine: every frame
// in arrival order, so a test can tell what came after what.
type rlRaw struct {
	conn   *websocket.Conn
	frames chan wire
}

func rlDialRaw(t *testing.T, c *testsvc.Chatd, user string) *rlRaw {
	t.Helper()
	cl := mustDial(t, socketURL(c, "vsn", "2.0.0", "token", mintToken(t, testSecret, user)), nil)
	r := &rlRaw{conn: cl.Conn, frames: make(chan wire, 100000)}
	go func() {
		defer close(r.frames)
		for {
			w, err := readFrame(context.Background(), r.conn)
			if err != nil {
				return
			}
			select {
			case r.frames <- w:
			default: // the test reads far fewer; never block the reader
				return
			}
		}
	}()
	return r
}

func (r *rlRaw) send(t *testing.T, frame string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r.conn.Write(ctx, websocket.MessageText, []byte(frame)); err != nil {
		t.Fatalf("write %s: %v", frame, err)
	}
}

// next returns the next frame, or ok false after d.
func (r *rlRaw) next(d time.Duration) (wire, bool) {
	select {
	case w, ok := <-r.frames:
		return w, ok
	case <-time.After(d):
		return wire{}, false
	}
}

func rlMsgID(w wire) string {
	var m psMsg
	_ = json.Unmarshal(w.Payload, &m)
	return m.ID
}

// TestRoomLogErroredChannelGetsNothing (item 2): once the server has sent
// phx_error on a channel (its node's Redis subscription was cut and is
// back), that channel receives no new_msg until it rejoins; the rejoin
// with since = the last message before the phx_error then gets every
// message after it, and the live stream follows without a gap or a
// duplicate.
func TestRoomLogErroredChannelGetsNothing(t *testing.T) {
	redis := testsvc.StartRedis(t)
	rc := rlRedisClient(t, redis)
	pg := testsvc.StartPostgres(t)
	nodes := clStartCluster(t, redis, 2, map[string]string{"CHAT_DATABASE_URL": pg.URL()})
	const topic = "room:errored"

	raw := rlDialRaw(t, nodes[0].Chatd, "errored-member")
	raw.send(t, `["1","1","room:errored","phx_join",{}]`)
	pub := psDial(t, nodes[1].Chatd, "errored-pub")
	pub.join(t, topic, nil)
	load := psStartLoad([]*psClient{pub}, []string{topic}, 50*time.Millisecond)
	loadStopped := false
	defer func() {
		if !loadStopped {
			load.stop()
		}
	}()

	// Joined, and reading live messages.
	lastBefore := ""
	joined := false
	for lastBefore == "" {
		w, ok := raw.next(10 * time.Second)
		if !ok {
			t.Fatalf("no join reply and live message within 10s (joined %v)", joined)
		}
		switch {
		case w.Event == "phx_reply" && w.Ref != nil && *w.Ref == "1":
			joined = true
		case w.Event == "new_msg" && joined:
			lastBefore = rlMsgID(w)
		}
	}
	n, err := rlKillPubSub(rc, redis, nodes[0].Pid())
	if err != nil || n == 0 {
		t.Fatalf("kill node1's pub/sub connection: killed %d, %v", n, err)
	}
	// Until phx_error: the last message read before it.
	deadline := time.Now().Add(15 * time.Second)
	for {
		w, ok := raw.next(time.Until(deadline))
		if !ok {
			t.Fatalf("no phx_error within 15s of cutting node1's subscription")
		}
		if w.Event == "new_msg" {
			lastBefore = rlMsgID(w)
		}
		if w.Event == "phx_error" && w.Topic == topic {
			if w.JoinRef == nil || *w.JoinRef != "1" {
				t.Errorf("phx_error %s: want join_ref \"1\"", w.Raw)
			}
			break
		}
	}
	// 2 s of the publisher's steady load: nothing may reach the errored
	// channel.
	var after []string
	until := time.Now().Add(2 * time.Second)
	for time.Now().Before(until) {
		w, ok := raw.next(time.Until(until))
		if !ok {
			break
		}
		if w.Event == "new_msg" {
			after = append(after, rlMsgID(w))
		}
	}
	t.Logf("after phx_error, the errored channel read %d new_msg broadcasts in 2s before rejoining (want 0)", len(after))
	if len(after) > 0 {
		t.Errorf("the errored channel received %d broadcasts after phx_error, before any rejoin, e.g. %v", len(after), after[:min(5, len(after))])
	}

	// Rejoin with since: the reply and the live stream after it hold every
	// message after lastBefore once, in order.
	raw.send(t, fmt.Sprintf(`["2","2","room:errored","phx_join",{"since":%q}]`, lastBefore))
	var got []string
	var recovered *bool
	replied := false
	for !replied {
		w, ok := raw.next(10 * time.Second)
		if !ok {
			t.Fatalf("no reply to the rejoin within 10s")
		}
		if w.Event == "phx_reply" && w.Ref != nil && *w.Ref == "2" {
			var r struct {
				Status   string         `json:"status"`
				Response psJoinResponse `json:"response"`
			}
			if err := json.Unmarshal(w.Payload, &r); err != nil || r.Status != "ok" {
				t.Fatalf("rejoin reply %s: %v", w.Raw, err)
			}
			got = append(got, psIDs(r.Response.Messages)...)
			recovered = r.Response.Recovered
			replied = true
		}
	}
	nReply := len(got)
	pushes := load.stop()
	loadStopped = true
	acked := rlAckedIDs(pushes)
	want := rlAfter(acked, lastBefore)
	fence := psPushOne(pub, topic, "errored fence")
	if !fence.ok() {
		t.Fatalf("fence push: %s %v", fence.Reply.Raw, fence.Reply.Err)
	}
	want = append(want, fence.Reply.id())
	for {
		w, ok := raw.next(10 * time.Second)
		if !ok {
			t.Fatalf("the fence message never reached the rejoined channel")
		}
		if w.Event == "new_msg" {
			id := rlMsgID(w)
			got = append(got, id)
			if id == fence.Reply.id() {
				break
			}
		}
	}
	t.Logf("rejoin since %s: %d messages in the reply (recovered=%s), %d live after it; %d acknowledged after since", lastBefore, nReply, psBool(recovered), len(got)-nReply, len(want))
	if same, diff := psSame(got, want); !same {
		t.Errorf("rejoin reply + live stream: %s", diff)
	}
	if recovered == nil || !*recovered {
		t.Errorf("rejoin since %s: recovered=%s, want true", lastBefore, psBool(recovered))
	}
}

// TestRoomLogSinceBeyondFrontier (item 3): a node with two local members in
// a room has its Redis subscription cut while a member on another node
// publishes, so the room object survives on the node; once the messages are
// all written, one member rejoins with since = the last message it read
// before the gap: it gets everything newer, recovered true.
func TestRoomLogSinceBeyondFrontier(t *testing.T) {
	redis := testsvc.StartRedis(t)
	rc := rlRedisClient(t, redis)
	pg := testsvc.StartPostgres(t)
	nodes := clStartCluster(t, redis, 2, map[string]string{"CHAT_DATABASE_URL": pg.URL()})
	const topic, room = "room:frontier", "frontier"
	m1 := psDial(t, nodes[0].Chatd, "frontier-m1")
	m1.join(t, topic, nil)
	m2 := psDial(t, nodes[0].Chatd, "frontier-m2")
	m2.join(t, topic, nil)
	pub := psDial(t, nodes[1].Chatd, "frontier-pub")
	pub.join(t, topic, nil)

	pushes := rlPushSeq(pub, topic, "seen", 5, 20*time.Millisecond)
	if ms, ok := m1.waitMessages(topic, 10*time.Second, func(ms []psMsg) bool { return len(ms) >= 5 }); !ok {
		t.Fatalf("m1 read %d of the first 5 messages", len(ms))
	}
	// Cut node1's subscription (again and again, as soon as it is back)
	// while pub publishes, until a round leaves node1 without the round's
	// last message: the gap reaches past what node1 delivered last.
	gapped := false
	for round := range 4 {
		errs := rlErrors(m1, topic)
		stop := rlKillLoop(rc, redis, nodes[0].Pid())
		time.Sleep(200 * time.Millisecond)
		ps := rlPushSeq(pub, topic, fmt.Sprintf("cut %d", round), 20, 30*time.Millisecond)
		time.Sleep(100 * time.Millisecond)
		killed := stop()
		pushes = append(pushes, ps...)
		rlWaitErrors(t, m1, topic, errs, 15*time.Second)
		ids := rlAckedIDs(ps)
		if len(ids) == 0 {
			t.Fatalf("round %d: none of the pushes on node2 was acknowledged", round)
		}
		seen := psIDs(m1.messages(topic))
		missing := rlMissing(ids, seen)
		t.Logf("round %d: %d kills of node1's pub/sub connection; %d of %d acknowledged messages never reached m1", round, killed, len(missing), len(ids))
		if slices.Contains(missing, ids[len(ids)-1]) {
			gapped = true
			break
		}
	}
	if !gapped {
		t.Fatalf("node1 read the last message of every round: no gap at the end to recover")
	}
	acked := rlAckedIDs(pushes)
	if stored := rlWaitStored(t, pg.URL(), room, acked, 30*time.Second); len(rlMissing(acked, stored)) > 0 {
		t.Fatalf("%d acknowledged messages not stored after 30s", len(rlMissing(acked, stored)))
	}
	seen := psIDs(m1.messages(topic))
	firstMissing := rlMissing(acked, seen)[0]
	since := ""
	for _, id := range seen {
		if id < firstMissing && id > since {
			since = id
		}
	}
	resp := m1.join(t, topic, map[string]any{"since": since})
	want := rlAfter(acked, since)
	got := psIDs(resp.Messages)
	t.Logf("m1 rejoins since %s (m2 still joined on node1): %d messages, recovered=%s; %d acknowledged after since, %d of them not in the reply",
		since, len(got), psBool(resp.Recovered), len(want), len(rlMissing(want, got)))
	if same, diff := psSame(got, want); !same {
		t.Errorf("rejoin since: %s", diff)
	}
	if resp.Recovered == nil || !*resp.Recovered {
		t.Errorf("rejoin since with every message stored: recovered=%s, want true", psBool(resp.Recovered))
	}
}

// TestRoomLogSinceOnNodeWithoutMembers (item 4): writes lag (0.3 s per
// INSERT statement); node2 accepts 50 messages; a client on node1, which
// has no member in the room, joins at once with since = the first: it gets
// the other 49, recovered true.
func TestRoomLogSinceOnNodeWithoutMembers(t *testing.T) {
	redis := testsvc.StartRedis(t)
	pg := testsvc.StartPostgres(t)
	nodes := clStartCluster(t, redis, 2, map[string]string{"CHAT_DATABASE_URL": pg.URL()})
	psSlowInserts(t, pg, 0.3)
	const topic = "room:unwritten"
	pub := psDial(t, nodes[1].Chatd, "unwritten-pub")
	pub.join(t, topic, nil)
	joiner := psDial(t, nodes[0].Chatd, "unwritten-joiner")
	bodies := make([]string, 50)
	for i := range bodies {
		bodies[i] = fmt.Sprintf("unwritten %d", i)
	}
	ids := rlAckedIDs(psPushMany(pub, topic, bodies, 50))
	if len(ids) != len(bodies) {
		t.Fatalf("%d of %d pushes acknowledged", len(ids), len(bodies))
	}
	resp := joiner.join(t, topic, map[string]any{"since": ids[0]})
	stored, _ := rlStoredIDs(t, pg.URL(), "unwritten")
	got := psIDs(resp.Messages)
	t.Logf("join since the first on node1 (no local member): %d of the 49 others, recovered=%s; %d of the 50 stored right after the reply",
		len(got), psBool(resp.Recovered), len(stored))
	if same, diff := psSame(got, ids[1:]); !same {
		t.Errorf("join since the first message: %s", diff)
	}
	if resp.Recovered == nil || !*resp.Recovered {
		t.Errorf("join since an acknowledged id: recovered=%s, want true", psBool(resp.Recovered))
	}
}

// TestRoomLogRedisStallTruth (item 5): Redis stalls 7 s (DEBUG SLEEP 7)
// while a member pushes 20 messages a second. A push answered with an error
// is never delivered to any member and never stored; every acknowledged
// one is stored exactly once once writes catch up.
func TestRoomLogRedisStallTruth(t *testing.T) {
	redis := testsvc.StartRedis(t)
	rc := rlRedisClient(t, redis)
	pg := testsvc.StartPostgres(t)
	nodes := clStartCluster(t, redis, 2, map[string]string{"CHAT_DATABASE_URL": pg.URL()})
	const topic, room = "room:stall", "stall"
	// The member pushes from 4 sockets, 2 on each node, 5 a second each: a
	// session waits for one push's outcome before the next.
	var pushers []*psClient
	for i := range 4 {
		p := psDial(t, nodes[i%2].Chatd, "stall-pusher")
		p.join(t, topic, nil)
		pushers = append(pushers, p)
	}
	local := psDial(t, nodes[0].Chatd, "stall-local")
	local.join(t, topic, nil)
	remote := psDial(t, nodes[1].Chatd, "stall-remote")
	remote.join(t, topic, nil)

	load := psStartLoad(pushers, []string{topic, topic, topic, topic}, 200*time.Millisecond)
	clWaitPushes(t, load, 10, 10*time.Second)
	stalled := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	err := rc.Do(ctx, "DEBUG", "SLEEP", "7").Err()
	cancel()
	if err != nil {
		t.Fatalf("DEBUG SLEEP 7: %v", err)
	}
	t.Logf("Redis stalled for %s", time.Since(stalled).Round(time.Millisecond))
	time.Sleep(3 * time.Second)
	pushes := load.stop()
	time.Sleep(3 * time.Second) // late deliveries

	errored := make(map[string]psPush)
	var acked []string
	for _, p := range pushes {
		switch {
		case p.ok():
			acked = append(acked, p.Reply.id())
		case p.Reply.Err == nil && p.Reply.Status == "error":
			errored[p.Body] = p
		default:
			t.Errorf("push %q: no reply: %v", p.Body, p.Reply.Err)
		}
	}
	slices.Sort(acked)
	t.Logf("%d pushes: %d acknowledged, %d answered with an error", len(pushes), len(acked), len(errored))
	if len(errored) == 0 {
		t.Logf("no push was answered with an error during the stall")
	}
	for i, m := range append(pushers, local, remote) {
		lies := 0
		var eg []string
		for _, x := range m.messages(topic) {
			if p, ok := errored[x.Body]; ok {
				lies++
				if len(eg) < 3 {
					eg = append(eg, fmt.Sprintf("%s %q (answered %s)", x.ID, x.Body, p.Reply.Raw))
				}
			}
		}
		if lies > 0 {
			t.Errorf("%s (socket %d) received %d messages whose push was answered with an error, e.g. %v", m.user, i, lies, eg)
		}
	}
	stored := rlWaitStored(t, pg.URL(), room, acked, 45*time.Second)
	storedIDs, dups := rlStoredIDs(t, pg.URL(), room)
	_ = stored
	if missing := rlMissing(acked, storedIDs); len(missing) > 0 {
		t.Errorf("%d of %d acknowledged messages not stored after 45s, e.g. %v", len(missing), len(acked), missing[:min(5, len(missing))])
	}
	if len(dups) > 0 {
		t.Errorf("ids stored more than once: %v", dups)
	}
	rows, err := psQueryRows(pg.URL())
	if err != nil {
		t.Fatal(err)
	}
	storedErrored := 0
	for _, r := range rows {
		if _, ok := errored[r.Body]; ok && r.Room == room {
			storedErrored++
		}
	}
	if storedErrored > 0 {
		t.Errorf("%d messages whose push was answered with an error are stored", storedErrored)
	}
	t.Logf("table: %d rows of the room for %d acknowledged; %d of the errored pushes stored", len(storedIDs), len(acked), storedErrored)
}

// TestRoomLogSIGKILLPublisherNode (item 6): writes lag (0.3 s per INSERT
// statement) and the node a publisher is on is SIGKILLed mid-stream. Every
// acknowledged message ends up in PostgreSQL exactly once (the survivors
// take over), and a later since join on a survivor returns them,
// recovered true.
func TestRoomLogSIGKILLPublisherNode(t *testing.T) {
	redis := testsvc.StartRedis(t)
	pg := testsvc.StartPostgres(t)
	// One writer per node: with 0.3 s per statement, messages wait in the
	// queue behind the statement in flight, as under load.
	nodes := clStartCluster(t, redis, 3, map[string]string{"CHAT_DATABASE_URL": pg.URL(), "CHAT_PERSIST_WORKERS": "1"})
	psSlowInserts(t, pg, 0.3)
	const topic, room = "room:killed", "killed"
	pub := psDial(t, nodes[2].Chatd, "killed-pub")
	pub.join(t, topic, nil)
	o1 := psDial(t, nodes[0].Chatd, "killed-o1")
	o1.join(t, topic, nil)
	o2 := psDial(t, nodes[1].Chatd, "killed-o2")
	o2.join(t, topic, nil)

	load := psStartLoad([]*psClient{pub}, []string{topic}, 10*time.Millisecond)
	clWaitPushes(t, load, 300, 30*time.Second)
	if err := nodes[2].Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killedAt := time.Now()
	if err := nodes[2].WaitTimeout(10 * time.Second); err == nil {
		t.Fatalf("node3 exited with status 0 after SIGKILL")
	}
	pushes := load.stop()
	acked := rlAckedIDs(pushes)
	unanswered := 0
	for _, p := range pushes {
		if !p.ok() {
			unanswered++
		}
	}
	t.Logf("node3 SIGKILLed after %d acknowledged pushes (%d more without an ok reply)", len(acked), unanswered)

	// The survivors see node3 dead in a few seconds; allow them 30 s more
	// to store what node3 acknowledged.
	stored := rlWaitStored(t, pg.URL(), room, acked, 45*time.Second)
	_, dups := rlStoredIDs(t, pg.URL(), room)
	missing := rlMissing(acked, stored)
	t.Logf("%s after the SIGKILL: %d rows of the room stored, %d of %d acknowledged missing, %d ids stored twice",
		time.Since(killedAt).Round(time.Millisecond), len(stored), len(missing), len(acked), len(dups))
	if len(missing) > 0 {
		t.Errorf("%d of %d acknowledged messages never reached PostgreSQL, e.g. %v", len(missing), len(acked), missing[:min(5, len(missing))])
	}
	if len(dups) > 0 {
		t.Errorf("ids stored more than once: %v", dups)
	}
	// Whatever else is stored was accepted (a push whose reply died with
	// node3): it must be one of the pushes.
	bodies := make(map[string]bool)
	for _, p := range pushes {
		bodies[p.Body] = true
	}
	rows, err := psQueryRows(pg.URL())
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rows {
		if r.Room == room && !bodies[r.Body] {
			t.Errorf("stored message %s %q was never pushed", r.ID, r.Body)
		}
	}

	j := psDial(t, nodes[0].Chatd, "killed-late")
	resp := j.join(t, topic, map[string]any{"since": acked[0]})
	got := psIDs(resp.Messages)
	// A message accepted at the kill without its ok reaching the client is
	// in the log, and the survivors' take-over stores it: wait for the
	// store to hold what the reply holds before comparing.
	stored = rlWaitStored(t, pg.URL(), room, got, 30*time.Second)
	wantAll := rlAfter(stored, acked[0])
	t.Logf("since join on node1 after the SIGKILL: %d messages, recovered=%s; %d stored after since, %d acknowledged ones missing from the reply",
		len(got), psBool(resp.Recovered), len(wantAll), len(rlMissing(rlAfter(acked, acked[0]), got)))
	if lost := rlMissing(rlAfter(acked, acked[0]), got); len(lost) > 0 {
		t.Errorf("since join on a survivor lacks %d acknowledged messages, e.g. %v", len(lost), lost[:min(5, len(lost))])
	}
	if same, diff := psSame(got, wantAll); !same {
		t.Errorf("since join on a survivor vs the stored messages: %s", diff)
	}
	if resp.Recovered == nil || !*resp.Recovered {
		t.Errorf("since join on a survivor: recovered=%s, want true", psBool(resp.Recovered))
	}
}

// TestRoomLogIDsIncreaseAcrossRedisLoss (item 10): two nodes publish into
// one room at once while Redis is flushed (FLUSHALL) again and again, then
// restarted without persistence: a member reads the room's ids strictly
// increasing throughout, and an id acknowledged after another's reply
// came is greater than it.
func TestRoomLogIDsIncreaseAcrossRedisLoss(t *testing.T) {
	redis := testsvc.StartRedis(t)
	rc := rlRedisClient(t, redis)
	nodes := clStartCluster(t, redis, 2, nil)
	const topic = "room:monotonic"
	observer := psDial(t, nodes[0].Chatd, "mono-observer")
	observer.join(t, topic, nil)
	p1 := psDial(t, nodes[0].Chatd, "mono-p1")
	p1.join(t, topic, nil)
	p2 := psDial(t, nodes[1].Chatd, "mono-p2")
	p2.join(t, topic, nil)
	load := psStartLoad([]*psClient{p1, p2}, []string{topic, topic}, 3*time.Millisecond)
	loadStopped := false
	defer func() {
		if !loadStopped {
			load.stop()
		}
	}()
	clWaitPushes(t, load, 50, 20*time.Second)
	const flushes = 20
	for range flushes {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := rc.FlushAll(ctx).Err(); err != nil {
			t.Fatalf("FLUSHALL: %v", err)
		}
		cancel()
		time.Sleep(100 * time.Millisecond)
	}
	flushed := len(load.snapshot())
	redis.Stop(t)
	time.Sleep(time.Second)
	redis.Start(t)
	for _, n := range nodes {
		psWaitReady(t, n.Chatd, http.StatusOK, 20*time.Second)
	}
	clWaitPushes(t, load, len(load.snapshot())+100, 20*time.Second)
	pushes := load.stop()
	loadStopped = true

	// Real-time order of acknowledgements.
	acks := slices.DeleteFunc(slices.Clone(pushes), func(p psPush) bool { return !p.ok() })
	slices.SortFunc(acks, func(a, b psPush) int { return a.Sent.Compare(b.Sent) })
	byReply := slices.Clone(acks)
	slices.SortFunc(byReply, func(a, b psPush) int { return a.Reply.At.Compare(b.Reply.At) })
	backwards := 0
	maxID, k := "", 0
	for _, p := range acks {
		for k < len(byReply) && byReply[k].Reply.At.Before(p.Sent) {
			maxID = max(maxID, byReply[k].Reply.id())
			k++
		}
		if p.Reply.id() <= maxID {
			if backwards++; backwards <= 5 {
				t.Errorf("push %q sent after id %s was acknowledged got the smaller id %s", p.Body, maxID, p.Reply.id())
			}
		}
	}
	// The member's stream.
	got := observer.messages(topic)
	down := 0
	for i := 1; i < len(got); i++ {
		if got[i].ID <= got[i-1].ID {
			if down++; down <= 5 {
				t.Errorf("observer read id %s (%q) after %s (%q): ids went backwards", got[i].ID, got[i].Body, got[i-1].ID, got[i-1].Body)
			}
		}
	}
	t.Logf("%d pushes (%d by the end of %d FLUSHALLs, then a Redis restart), %d acknowledged; the observer read %d messages; %d acknowledgements out of real-time order, %d steps backwards in the observer's stream",
		len(pushes), flushed, flushes, len(acks), len(got), backwards, down)
}

// rlJSMember is one member of roomlog.mjs's summary.
type rlJSMember struct {
	Name          string `json:"name"`
	SawStop       bool   `json:"saw_stop"`
	Drops         int    `json:"drops"`
	ChannelErrors int    `json:"channel_errors"`
	JoinErrors    int    `json:"join_errors"`
	Events        []struct {
		T         string   `json:"t"`
		ID        string   `json:"id"`
		Since     *string  `json:"since"`
		Recovered *bool    `json:"recovered"`
		IDs       []string `json:"ids"`
	} `json:"events"`
}

type rlJSSummary struct {
	OK      bool         `json:"ok"`
	Error   string       `json:"error"`
	Members []rlJSMember `json:"members"`
}

type rlJSSpec struct {
	Name        string `json:"name"`
	URL         string `json:"url"`
	Token       string `json:"token"`
	DropEveryMS int    `json:"drop_every_ms"`
}

// rlStartJS starts roomlog.mjs with members in room and waits until every
// member has joined. wait returns its summary once it has ended (after
// every member saw stopBody, or at timeout).
func rlStartJS(t *testing.T, room, stopBody string, timeout time.Duration, members []rlJSSpec) (wait func() rlJSSummary) {
	t.Helper()
	node := nodeAndPackages(t)
	cfg, err := json.Marshal(map[string]any{"room": room, "stop_body": stopBody, "timeout_ms": timeout.Milliseconds(), "members": members})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout+30*time.Second)
	cmd := exec.CommandContext(ctx, node, "roomlog.mjs", "--config", string(cfg))
	cmd.Dir = jsDir
	cmd.WaitDelay = 5 * time.Second
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start node roomlog.mjs: %v", err)
	}
	var out []byte
	outDone := make(chan struct{})
	go func() {
		defer close(outDone)
		out, _ = io.ReadAll(stdout)
	}()
	ready := make(chan struct{})
	errDone := make(chan struct{})
	var errLines []string
	go func() {
		defer close(errDone)
		sc := bufio.NewScanner(stderr)
		once := sync.OnceFunc(func() { close(ready) })
		for sc.Scan() {
			if sc.Text() == "ready" {
				once()
				continue
			}
			errLines = append(errLines, sc.Text())
		}
	}()
	var summary rlJSSummary
	var waited bool
	wait = func() rlJSSummary {
		if waited {
			return summary
		}
		waited = true
		<-outDone
		<-errDone
		err := cmd.Wait()
		cancel()
		if len(errLines) > 0 {
			t.Logf("roomlog.mjs stderr: %s", strings.Join(errLines, "\n"))
		}
		head := out[:min(len(out), 2000)]
		if err != nil {
			t.Fatalf("node roomlog.mjs: %v\n%s", err, head)
		}
		if err := json.Unmarshal(out, &summary); err != nil {
			t.Fatalf("roomlog.mjs summary (%d bytes): %v: %s", len(out), err, head)
		}
		if !summary.OK {
			t.Fatalf("roomlog.mjs: %s", summary.Error)
		}
		return summary
	}
	t.Cleanup(func() {
		cancel()
		if !waited {
			<-outDone
			<-errDone
			_ = cmd.Wait()
		}
	})
	select {
	case <-ready:
	case <-errDone:
		wait()
		t.Fatalf("roomlog.mjs ended before its members joined")
	case <-time.After(30 * time.Second):
		t.Fatalf("roomlog.mjs members not joined within 30s: %s", strings.Join(errLines, "\n"))
	}
	return wait
}

// rlCheckJSMember checks what one JS member read (join replies and live
// messages, in arrival order) against acked (every acknowledged id, sorted)
// and room (every id of the room, sorted: acknowledged or stored): every
// acknowledged message exactly once, ids strictly increasing, and no join
// reply saying recovered:true while missing a message of the room between
// its since and the next message the member read after it.
func rlCheckJSMember(t *testing.T, m rlJSMember, acked, room []string) {
	t.Helper()
	var seq []string
	joins, holes, unrecovered := 0, 0, 0
	for k, e := range m.Events {
		switch e.T {
		case "msg":
			seq = append(seq, e.ID)
		case "join":
			joins++
			seq = append(seq, e.IDs...)
			if e.Since != nil && (e.Recovered == nil || !*e.Recovered) {
				unrecovered++
			}
			if e.Since == nil || e.Recovered == nil || !*e.Recovered {
				continue
			}
			// The reply must hold every message of the room after since
			// and before the next one the member reads after the reply.
			next := ""
			for _, f := range m.Events[k+1:] {
				if f.T == "msg" {
					next = f.ID
				} else if len(f.IDs) > 0 {
					next = f.IDs[0]
				}
				if next != "" {
					break
				}
			}
			in := rlAfter(room, *e.Since)
			if next != "" {
				i, _ := slices.BinarySearch(in, next)
				in = in[:i]
			}
			if lost := rlMissing(in, e.IDs); len(lost) > 0 {
				if holes++; holes <= 3 {
					t.Errorf("%s: join since %s said recovered:true and lacks %d of the room's messages before the next one read, e.g. %v", m.Name, *e.Since, len(lost), lost[:min(3, len(lost))])
				}
			}
		}
	}
	count := make(map[string]int, len(seq))
	dups, down := 0, 0
	for i, id := range seq {
		if count[id]++; count[id] == 2 {
			dups++
		}
		if i > 0 && id <= seq[i-1] {
			down++
		}
	}
	var missing []string
	for _, id := range acked {
		if count[id] == 0 {
			missing = append(missing, id)
		}
	}
	t.Logf("%s: %d joins (%d with since not recovered), %d drops, %d channel errors, %d join errors; read %d messages: %d of %d acknowledged missing, %d duplicates, %d out of order, %d joins recovered:true over a hole",
		m.Name, joins, unrecovered, m.Drops, m.ChannelErrors, m.JoinErrors, len(seq), len(missing), len(acked), dups, down, holes)
	if len(missing) > 0 {
		t.Errorf("%s: %d of %d acknowledged messages never read, e.g. %v", m.Name, len(missing), len(acked), missing[:min(5, len(missing))])
	}
	if dups > 0 {
		t.Errorf("%s: %d messages read twice", m.Name, dups)
	}
	if down > 0 {
		t.Errorf("%s: %d messages read out of order", m.Name, down)
	}
	if !m.SawStop {
		t.Errorf("%s: never read the final message", m.Name)
	}
}

// rlHeadlineMessages is how many messages the publisher of
// TestRoomLogRecoveryUnderRelayCuts pushes, at 100 a second.
const rlHeadlineMessages = 1500

// TestRoomLogRecoveryUnderRelayCuts (issue 13 item 1, and "Done means"):
// three nodes, Redis, PostgreSQL with every INSERT statement slowed to
// 0.3 s; one member on node1 publishes rlHeadlineMessages messages at
// 100/s while every node's Redis pub/sub connection is killed twice.
// Members run the official phoenix client as the web page does: one on
// node1, two on node2, and one on node3 alone in the room there that drops
// its socket every 3 s and rejoins with since = the last id it saw. Every
// member reads every acknowledged message exactly once, in one order, and
// no join says recovered:true over a hole.
func TestRoomLogRecoveryUnderRelayCuts(t *testing.T) {
	redis := testsvc.StartRedis(t)
	rc := rlRedisClient(t, redis)
	pg := testsvc.StartPostgres(t)
	nodes := clStartCluster(t, redis, 3, map[string]string{"CHAT_DATABASE_URL": pg.URL()})
	psSlowInserts(t, pg, 0.3)
	const room = "cuts"
	const topic = "room:" + room
	pub := psDial(t, nodes[0].Chatd, "cuts-pub")
	pub.join(t, topic, nil)
	stopBody := "cuts fence"
	spec := func(name string, n *clNode, drop int) rlJSSpec {
		return rlJSSpec{Name: name, URL: n.URL(), Token: mintToken(t, testSecret, name), DropEveryMS: drop}
	}
	wait := rlStartJS(t, room, stopBody, 120*time.Second, []rlJSSpec{
		spec("js-node1", nodes[0], 0),
		spec("js-node2a", nodes[1], 0),
		spec("js-node2b", nodes[1], 0),
		spec("js-node3-dropper", nodes[2], 3000),
	})

	// Kill each node's pub/sub connection twice, staggered over the run.
	const period = 10 * time.Millisecond
	run := time.Duration(rlHeadlineMessages) * period
	killsDone := make(chan struct{})
	var killLog []string
	go func() {
		defer close(killsDone)
		start := time.Now()
		for k := range 2 {
			for i, n := range nodes {
				at := run * time.Duration(1+3*k+i) / 7
				time.Sleep(time.Until(start.Add(at)))
				killed, err := rlKillPubSub(rc, redis, n.Pid())
				killLog = append(killLog, fmt.Sprintf("%s at %s: %d killed (err %v)", n.name, time.Since(start).Round(time.Millisecond), killed, err))
			}
		}
	}()
	began := time.Now()
	pushes := rlPushSeq(pub, topic, "cuts", rlHeadlineMessages, period)
	<-killsDone
	t.Logf("pushed %d in %s; pub/sub kills: %s", len(pushes), time.Since(began).Round(time.Millisecond), strings.Join(killLog, "; "))
	acked := rlAckedIDs(pushes)
	errs := len(pushes) - len(acked)
	// The fence ends the JS run; retried while node1's relay may still be
	// coming back.
	var fence psPush
	for try := range 20 {
		fence = psPushOne(pub, topic, stopBody)
		if fence.ok() || try == 19 {
			break
		}
		if fence.Reply.reason() == "unmatched topic" { // told phx_error: rejoin
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			pub.call(ctx, topic, "phx_join", struct{}{})
			cancel()
		}
		time.Sleep(250 * time.Millisecond)
	}
	if !fence.ok() {
		t.Fatalf("fence push: %s %v", fence.Reply.Raw, fence.Reply.Err)
	}
	acked = append(acked, fence.Reply.id())
	summary := wait()
	t.Logf("%d acknowledged (%d pushes answered with an error), fence %s", len(acked), errs, fence.Reply.id())

	// The room's messages: acknowledged, or stored (accepted, reply lost).
	stored := rlWaitStored(t, pg.URL(), room, acked, 60*time.Second)
	all := slices.Compact(slices.Sorted(slices.Values(append(slices.Clone(acked), stored...))))
	for _, m := range summary.Members {
		rlCheckJSMember(t, m, acked, all)
	}
	if len(summary.Members) != 4 {
		t.Errorf("summary lists %d members, want 4", len(summary.Members))
	}
}
