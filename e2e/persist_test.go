package e2e

// End-to-end tests of persistence: real chatd processes (race-enabled when
// the tests are) on a real PostgreSQL (testsvc.StartPostgres), checked from
// the outside only: WebSocket replies and broadcasts, the HTTP API, the
// process's exit and log, and the messages table itself.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os/exec"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/chatd/chatd/internal/testsvc"
)

// psStartChatd starts chatd on dbURL with the per-user limits off (these
// tests push as fast as they can from few users) and extra env.
func psStartChatd(t *testing.T, dbURL string, extra map[string]string) *testsvc.Chatd {
	t.Helper()
	env := map[string]string{
		"CHAT_DATABASE_URL":       dbURL,
		"CHAT_USER_RATE":          "0",
		"CHAT_MAX_CONNS_PER_USER": "0",
	}
	for k, v := range extra {
		env[k] = v
	}
	return startServer(t, env)
}

// psPush is one push and its outcome.
type psPush struct {
	Topic string
	User  string
	Body  string
	Sent  time.Time
	Reply psReply // Reply.Err set when no reply came
}

func (p psPush) ok() bool { return p.Reply.Err == nil && p.Reply.Status == "ok" && p.Reply.id() != "" }

// msg is the message the push asked for, with the id its ok reply gave.
func (p psPush) msg() psMsg {
	return psMsg{ID: p.Reply.id(), Room: strings.TrimPrefix(p.Topic, "room:"), UserID: p.User, Body: p.Body}
}

// psReplyTimeout bounds the wait for one push's reply.
const psReplyTimeout = 30 * time.Second

// psAwait waits for a reply on ch, psReplyTimeout at most.
func psAwait(ch <-chan psReply) psReply {
	select {
	case r := <-ch:
		return r
	case <-time.After(psReplyTimeout):
		return psReply{Err: fmt.Errorf("no reply within %s", psReplyTimeout)}
	}
}

// psPushMany pushes bodies on topic with at most window pushes awaiting
// their reply, and returns every push with its outcome, in send order.
func psPushMany(cl *psClient, topic string, bodies []string, window int) []psPush {
	out := make([]psPush, len(bodies))
	sem := make(chan struct{}, window)
	var wg sync.WaitGroup
	for i, body := range bodies {
		sem <- struct{}{}
		sent, ch, err := cl.pushAsync(topic, body)
		out[i] = psPush{Topic: topic, User: cl.user, Body: body, Sent: sent}
		if err != nil {
			out[i].Reply = psReply{Err: err}
			<-sem
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i].Reply = psAwait(ch)
			<-sem
		}()
	}
	wg.Wait()
	return out
}

// psPushOne pushes one message and waits for the reply.
func psPushOne(cl *psClient, topic, body string) psPush {
	sent, ch, err := cl.pushAsync(topic, body)
	p := psPush{Topic: topic, User: cl.user, Body: body, Sent: sent}
	if err != nil {
		p.Reply = psReply{Err: err}
		return p
	}
	p.Reply = psAwait(ch)
	return p
}

// psLoad keeps clients pushing at a steady pace until stop.
type psLoad struct {
	stopCh chan struct{}
	wg     sync.WaitGroup
	mu     sync.Mutex
	pushes []psPush // completed, in reply order
}

// psStartLoad makes every client push to its topic every period, each push
// without waiting for the previous reply (a chat client does not wait),
// until stop or until its connection fails.
func psStartLoad(clients []*psClient, topics []string, period time.Duration) *psLoad {
	l := &psLoad{stopCh: make(chan struct{})}
	for i, cl := range clients {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			tick := time.NewTicker(period)
			defer tick.Stop()
			var replies sync.WaitGroup
			defer replies.Wait()
			for seq := 0; ; seq++ {
				select {
				case <-l.stopCh:
					return
				case <-tick.C:
				}
				body := fmt.Sprintf("%s load %d %s", cl.user, seq, uuid.NewString()[:8])
				sent, ch, err := cl.pushAsync(topics[i], body)
				p := psPush{Topic: topics[i], User: cl.user, Body: body, Sent: sent}
				if err != nil {
					// The connection is gone: this client's load ends.
					return
				}
				replies.Add(1)
				go func() {
					defer replies.Done()
					p.Reply = psAwait(ch)
					l.add(p)
				}()
			}
		}()
	}
	return l
}

func (l *psLoad) add(p psPush) {
	l.mu.Lock()
	l.pushes = append(l.pushes, p)
	l.mu.Unlock()
}

// snapshot returns the pushes completed so far.
func (l *psLoad) snapshot() []psPush {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.pushes)
}

// stop stops pushing, waits for the outstanding replies and returns every
// push.
func (l *psLoad) stop() []psPush {
	close(l.stopCh)
	l.wg.Wait()
	return l.snapshot()
}

// psAcked indexes the ok pushes by id, failing t on a duplicate id.
func psAcked(t *testing.T, pushes []psPush) map[string]psMsg {
	t.Helper()
	acked := make(map[string]psMsg, len(pushes))
	for _, p := range pushes {
		if !p.ok() {
			continue
		}
		m := p.msg()
		if prev, dup := acked[m.ID]; dup {
			t.Errorf("id %s acknowledged twice: for %q and %q", m.ID, prev.Body, m.Body)
		}
		acked[m.ID] = m
	}
	return acked
}

// psRow is a row of the messages table.
type psRow struct {
	ID, Room, UserID, Body string
	InsertedAt             time.Time
}

// psQueryRows reads the whole messages table.
func psQueryRows(dbURL string) ([]psRow, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, `SELECT id, room, user_id, body, inserted_at FROM messages ORDER BY id`)
	if err != nil {
		return nil, err
	}
	var out []psRow
	for rows.Next() {
		var r psRow
		if err := rows.Scan(&r.ID, &r.Room, &r.UserID, &r.Body, &r.InsertedAt); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// psCount counts the rows of the messages table.
func psCount(dbURL string) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.Background())
	var n int
	err = conn.QueryRow(ctx, `SELECT count(*) FROM messages`).Scan(&n)
	return n, err
}

// psWaitCount polls the messages table until it holds at least want rows,
// failing t after d. It returns the count and when it was reached.
func psWaitCount(t *testing.T, dbURL string, want int, d time.Duration) (int, time.Time) {
	t.Helper()
	deadline := time.Now().Add(d)
	var n int
	var err error
	for {
		n, err = psCount(dbURL)
		if err == nil && n >= want {
			return n, time.Now()
		}
		if time.Now().After(deadline) {
			t.Fatalf("messages table: %d rows (err %v) after %s, want %d", n, err, d, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// psCheckStored checks that the messages table holds exactly the acked
// messages: each once, with its room, user and body (and inserted_at, when
// known), and nothing else. It returns the rows.
func psCheckStored(t *testing.T, dbURL string, acked map[string]psMsg) []psRow {
	t.Helper()
	rows, err := psQueryRows(dbURL)
	if err != nil {
		t.Fatalf("read messages table: %v", err)
	}
	byID := make(map[string]psRow, len(rows))
	bodies := make(map[string]int, len(rows))
	var extra, dupIDs []string
	for _, r := range rows {
		if _, dup := byID[r.ID]; dup {
			dupIDs = append(dupIDs, r.ID)
		}
		byID[r.ID] = r
		bodies[r.Room+"\x00"+r.Body]++
		if _, ok := acked[r.ID]; !ok {
			extra = append(extra, fmt.Sprintf("%s %s %s %q", r.ID, r.Room, r.UserID, r.Body))
		}
	}
	if len(dupIDs) > 0 {
		t.Errorf("ids stored more than once: %v", dupIDs)
	}
	if len(extra) > 0 {
		t.Errorf("%d stored messages were never acknowledged, e.g. %v", len(extra), extra[:min(len(extra), 10)])
	}
	var missing, wrong []string
	for id, m := range acked {
		r, ok := byID[id]
		if !ok {
			missing = append(missing, fmt.Sprintf("%s %s %q", id, m.Room, m.Body))
			continue
		}
		if r.Room != m.Room || r.UserID != m.UserID || r.Body != m.Body {
			wrong = append(wrong, fmt.Sprintf("%s: stored (%s, %s, %q), acked (%s, %s, %q)", id, r.Room, r.UserID, r.Body, m.Room, m.UserID, m.Body))
		}
		if !m.InsertedAt.IsZero() && !r.InsertedAt.Equal(m.InsertedAt) {
			wrong = append(wrong, fmt.Sprintf("%s: stored inserted_at %s, broadcast %s", id, r.InsertedAt.UTC().Format(time.RFC3339Nano), m.InsertedAt.Format(time.RFC3339Nano)))
		}
		if n := bodies[m.Room+"\x00"+m.Body]; n > 1 {
			wrong = append(wrong, fmt.Sprintf("%s: body %q stored %d times", id, m.Body, n))
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("%d of %d acknowledged messages are not stored, e.g. %v", len(missing), len(acked), missing[:min(len(missing), 10)])
	}
	if len(wrong) > 0 {
		t.Errorf("%d stored messages differ from what was acknowledged, e.g. %v", len(wrong), wrong[:min(len(wrong), 10)])
	}
	return rows
}

// psCheckBroadcasts checks that every member of each topic received every
// acked message of the topic exactly once, in increasing id order (so all
// members in the same order), and nothing else: it waits up to d for them.
func psCheckBroadcasts(t *testing.T, members map[string][]*psClient, acked map[string]psMsg, d time.Duration) {
	t.Helper()
	want := make(map[string]map[string]psMsg)
	for id, m := range acked {
		topic := "room:" + m.Room
		if want[topic] == nil {
			want[topic] = make(map[string]psMsg)
		}
		want[topic][id] = m
	}
	for topic, clients := range members {
		w := want[topic]
		for _, cl := range clients {
			got, _ := cl.waitMessages(topic, d, func(ms []psMsg) bool { return len(ms) >= len(w) })
			seen := make(map[string]bool, len(got))
			var problems []string
			for i, m := range got {
				a, ok := w[m.ID]
				switch {
				case !ok:
					problems = append(problems, fmt.Sprintf("unacknowledged %s %q", m.ID, m.Body))
				case seen[m.ID]:
					problems = append(problems, fmt.Sprintf("duplicate %s", m.ID))
				case a.Body != m.Body || a.UserID != m.UserID || a.Room != m.Room:
					problems = append(problems, fmt.Sprintf("%s: broadcast (%s, %s, %q), acked (%s, %s, %q)", m.ID, m.Room, m.UserID, m.Body, a.Room, a.UserID, a.Body))
				}
				if i > 0 && m.ID <= got[i-1].ID {
					problems = append(problems, fmt.Sprintf("out of order: %s after %s", m.ID, got[i-1].ID))
				}
				seen[m.ID] = true
			}
			for id := range w {
				if !seen[id] {
					problems = append(problems, "missing "+id)
				}
			}
			if len(problems) > 0 {
				t.Errorf("%s on %s: %d broadcasts for %d acked messages; %d problems, e.g. %v", cl.user, topic, len(got), len(w), len(problems), problems[:min(len(problems), 10)])
				if other := cl.otherFrames(); len(other) > 0 {
					t.Logf("%s: other frames read: %v", cl.user, other[:min(len(other), 5)])
				}
				if err := cl.ended(); err != nil {
					t.Logf("%s: connection ended: %v", cl.user, err)
				}
			}
		}
	}
}

// psFillInsertedAt copies inserted_at from broadcasts into acked messages,
// so psCheckStored also compares it.
func psFillInsertedAt(acked map[string]psMsg, cl *psClient, topic string) {
	for _, m := range cl.messages(topic) {
		if a, ok := acked[m.ID]; ok {
			a.InsertedAt = m.InsertedAt
			acked[m.ID] = a
		}
	}
}

// TestPersistExactlyOnce: 20 connections in 4 rooms push 4,000 messages as
// fast as the server answers; every acknowledged message is broadcast to
// every member of its room once and in order, and stored exactly once with
// its room, user and body, and nothing else is stored.
func TestPersistExactlyOnce(t *testing.T) {
	t.Parallel()
	pg := testsvc.StartPostgres(t)
	c := psStartChatd(t, pg.URL(), nil)

	const conns, rooms, perConn, window = 20, 4, 200, 8
	clients := make([]*psClient, conns)
	members := make(map[string][]*psClient)
	for i := range clients {
		topic := fmt.Sprintf("room:once-%d", i%rooms)
		clients[i] = psDial(t, c, fmt.Sprintf("user-%02d", i))
		clients[i].join(t, topic, nil)
		members[topic] = append(members[topic], clients[i])
	}

	began := time.Now()
	results := make([][]psPush, conns)
	var wg sync.WaitGroup
	for i, cl := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			bodies := make([]string, perConn)
			for j := range bodies {
				bodies[j] = fmt.Sprintf("once %s #%d ünïcode ✓", cl.user, j)
			}
			results[i] = psPushMany(cl, fmt.Sprintf("room:once-%d", i%rooms), bodies, window)
		}()
	}
	wg.Wait()
	pushed := time.Since(began)

	var all []psPush
	for _, r := range results {
		all = append(all, r...)
	}
	bad := 0
	for _, p := range all {
		if !p.ok() {
			if bad++; bad <= 5 {
				t.Errorf("push %q by %s: %v %s", p.Body, p.User, p.Reply.Err, p.Reply.Raw)
			}
		}
	}
	acked := psAcked(t, all)
	if len(acked) != conns*perConn {
		t.Fatalf("%d of %d pushes acknowledged (%d not ok)", len(acked), conns*perConn, bad)
	}

	_, storedAt := psWaitCount(t, pg.URL(), len(acked), 60*time.Second)
	persisted := storedAt.Sub(began)
	t.Logf("%d messages acknowledged in %s (%.0f/s); all in the table %s after the first push (%.0f persisted/s through the process)",
		len(acked), pushed.Round(time.Millisecond), float64(len(acked))/pushed.Seconds(),
		persisted.Round(time.Millisecond), float64(len(acked))/persisted.Seconds())

	psCheckBroadcasts(t, members, acked, 30*time.Second)
	for topic, cls := range members {
		psFillInsertedAt(acked, cls[0], topic)
	}

	// Stop the process: after a clean exit nothing more can be written, so
	// the table is final.
	if err := c.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitTimeout(30 * time.Second); err != nil {
		t.Fatalf("chatd exit after SIGTERM: %v, want status 0", err)
	}
	rows := psCheckStored(t, pg.URL(), acked)
	t.Logf("table holds %d rows: exactly the %d acknowledged messages", len(rows), len(acked))
}

// psProbe is one answer of a health endpoint.
type psProbe struct {
	path       string
	start, end time.Time
	status     int
	body       string
	err        error
}

// psMonitor polls /health/live and /health/ready of base every period
// until ctx ends; the returned function lists the answers so far.
func psMonitor(ctx context.Context, base string, period time.Duration) func() []psProbe {
	var mu sync.Mutex
	var probes []psProbe
	client := &http.Client{Timeout: 5 * time.Second}
	for _, path := range []string{"/health/live", "/health/ready"} {
		go func() {
			for ctx.Err() == nil {
				p := psProbe{path: path, start: time.Now()}
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
				resp, err := client.Do(req)
				if err == nil {
					b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
					resp.Body.Close()
					p.status, p.body = resp.StatusCode, string(b)
				} else if ctx.Err() != nil {
					return
				}
				p.err, p.end = err, time.Now()
				mu.Lock()
				probes = append(probes, p)
				mu.Unlock()
				select {
				case <-ctx.Done():
				case <-time.After(period):
				}
			}
		}()
	}
	return func() []psProbe {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(probes)
	}
}

// psWaitReady polls /health/ready until it answers status, failing t after
// d; it returns the body of that answer.
func psWaitReady(t *testing.T, c *testsvc.Chatd, status int, d time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(d)
	client := &http.Client{Timeout: 5 * time.Second}
	var last string
	for {
		resp, err := client.Get(c.URL() + "/health/ready")
		if err == nil {
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
			last = fmt.Sprintf("%d %s", resp.StatusCode, b)
			if resp.StatusCode == status {
				if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
					t.Errorf("/health/ready %d: Content-Type %q, want application/json", status, ct)
				}
				return string(b)
			}
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			t.Fatalf("/health/ready did not answer %d within %s; last answer: %s", status, d, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// psWaitDependency polls /health/ready until it answers 200 with dep
// named in "degraded" (down) or not (up), failing t after d; it returns
// that answer's body. Readiness answers for the pod: a shared dependency's
// state is in the body, never in the status.
func psWaitDependency(t *testing.T, c *testsvc.Chatd, dep string, down bool, d time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		body := psWaitReady(t, c, http.StatusOK, time.Until(deadline)+time.Second)
		if psDegraded(body, dep) == down {
			return body
		}
		if time.Now().After(deadline) {
			t.Fatalf("/health/ready did not report %s down=%v within %s; last answer: %s", dep, down, d, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// psDegraded reports whether the /health/ready body names dep as degraded.
func psDegraded(body, dep string) bool {
	var rb struct {
		Degraded []string `json:"degraded"`
	}
	return json.Unmarshal([]byte(body), &rb) == nil && slices.Contains(rb.Degraded, dep)
}

// psOutage is how long TestPersistPostgresOutage keeps PostgreSQL down: the
// minute the README promises to ride out (4 clients at 40 msg/s fill 9,600
// of the 10,000 places of the queue).
const psOutage = 60 * time.Second

// TestPersistPostgresOutage: PostgreSQL is stopped for a minute while clients
// chat. Pushes keep getting ok replies and broadcasts keep arriving,
// /health/ready answers 200 throughout (the database is shared by every
// pod), naming the database as degraded while it is down and not after,
// /health/live answers 200 throughout, and once PostgreSQL is back
// every acknowledged message is stored exactly once.
func TestPersistPostgresOutage(t *testing.T) {
	t.Parallel()
	pg := testsvc.StartPostgres(t)
	c := psStartChatd(t, pg.URL(), nil)

	topics := []string{"room:outage-a", "room:outage-a", "room:outage-b", "room:outage-b"}
	clients := make([]*psClient, len(topics))
	members := make(map[string][]*psClient)
	for i, topic := range topics {
		clients[i] = psDial(t, c, fmt.Sprintf("outage-%d", i))
		clients[i].join(t, topic, nil)
		members[topic] = append(members[topic], clients[i])
	}
	psWaitReady(t, c, http.StatusOK, 10*time.Second)

	mctx, stopMonitor := context.WithCancel(context.Background())
	defer stopMonitor()
	probes := psMonitor(mctx, c.URL(), 100*time.Millisecond)
	load := psStartLoad(clients, topics, 25*time.Millisecond) // 4 x 40 msg/s
	defer func() {
		select {
		case <-load.stopCh:
		default:
			load.stop()
		}
	}()

	// Some chat with the database up first.
	waitPushes := func(n int, d time.Duration) {
		t.Helper()
		deadline := time.Now().Add(d)
		for len(load.snapshot()) < n {
			if time.Now().After(deadline) {
				t.Fatalf("only %d pushes answered within %s, want %d", len(load.snapshot()), d, n)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitPushes(100, 10*time.Second)

	pg.Stop(t)
	downAt := time.Now()
	t.Logf("PostgreSQL stopped after %d pushes", len(load.snapshot()))
	body := psWaitDependency(t, c, "database", true, 10*time.Second)
	t.Logf("/health/ready %s after the stop: 200 %s", time.Since(downAt).Round(time.Millisecond), strings.TrimSpace(body))

	// Chat through the outage: polled, not slept, so a stall shows.
	for time.Since(downAt) < psOutage {
		time.Sleep(100 * time.Millisecond)
		if err := clients[0].ended(); err != nil {
			t.Fatalf("a client's connection ended during the outage: %v", err)
		}
	}
	upCalled := time.Now()
	pg.Start(t)
	upAt := time.Now()
	t.Logf("PostgreSQL started again after %s down (start took %s)", upCalled.Sub(downAt).Round(time.Millisecond), upAt.Sub(upCalled).Round(time.Millisecond))
	psWaitDependency(t, c, "database", false, 15*time.Second)
	t.Logf("/health/ready reports the database up again %s after PostgreSQL accepted connections", time.Since(upAt).Round(time.Millisecond))
	waitPushes(len(load.snapshot())+100, 10*time.Second) // chat goes on after the outage
	pushes := load.stop()
	stopMonitor()

	// Every push got an ok reply, before, during and after the outage.
	var during []psPush
	bad := 0
	for _, p := range pushes {
		if !p.ok() {
			if bad++; bad <= 5 {
				t.Errorf("push %q: %v %s", p.Body, p.Reply.Err, p.Reply.Raw)
			}
			continue
		}
		if p.Sent.After(downAt) && p.Reply.At.Before(upCalled) {
			during = append(during, p)
		}
	}
	if bad > 0 {
		t.Errorf("%d of %d pushes did not get an ok reply", bad, len(pushes))
	}
	sort.Slice(during, func(i, j int) bool { return during[i].Reply.At.Before(during[j].Reply.At) })
	if len(during) < 100 {
		t.Fatalf("only %d pushes were acknowledged while PostgreSQL was down", len(during))
	}
	gap, prev := time.Duration(0), downAt
	for _, p := range append(during, psPush{Reply: psReply{At: upCalled}}) {
		gap, prev = max(gap, p.Reply.At.Sub(prev)), p.Reply.At
	}
	t.Logf("%d pushes in all; %d acknowledged while PostgreSQL was down; longest wait between acknowledgements then: %s", len(pushes), len(during), gap.Round(time.Millisecond))
	if gap > 3*time.Second {
		t.Errorf("acknowledgements stalled for %s while PostgreSQL was down: chat must not wait on the database", gap)
	}
	acked := psAcked(t, pushes)

	// Broadcasts kept arriving during the outage, and every member got
	// every message.
	recvDuring := 0
	for _, m := range clients[3].messages(topics[3]) {
		if m.At.After(downAt) && m.At.Before(upCalled) {
			recvDuring++
		}
	}
	t.Logf("%s received %d broadcasts while PostgreSQL was down", clients[3].user, recvDuring)
	if recvDuring < 50 {
		t.Errorf("%s received only %d broadcasts while PostgreSQL was down", clients[3].user, recvDuring)
	}
	psCheckBroadcasts(t, members, acked, 15*time.Second)
	for topic, cls := range members {
		psFillInsertedAt(acked, cls[0], topic)
	}

	// Health across the outage.
	var liveBad []string
	var readyDown, readyDownBad, readyNot200, lives int
	for _, p := range probes() {
		if p.path == "/health/live" {
			lives++
			if p.err != nil || p.status != http.StatusOK {
				liveBad = append(liveBad, fmt.Sprintf("%s: %d %v", p.start.Format("15:04:05.000"), p.status, p.err))
			}
			continue
		}
		if p.err != nil || p.status != http.StatusOK {
			readyNot200++
			if readyNot200 <= 3 {
				t.Errorf("/health/ready at %s: %d %q %v, want 200 throughout: the pod can serve", p.start.Format("15:04:05.000"), p.status, p.body, p.err)
			}
		}
		// Asked after the stop had completed and answered before the start
		// began: the database was down for the whole request.
		if p.start.After(downAt) && p.end.Before(upCalled) {
			readyDown++
			if !psDegraded(p.body, "database") {
				readyDownBad++
				if readyDownBad <= 3 {
					t.Errorf("/health/ready while PostgreSQL was down: %d %q, want the database named as degraded", p.status, p.body)
				}
			}
		}
	}
	t.Logf("/health/live: %d answers, %d not 200; /health/ready: %d not 200; while down: %d answers, %d not naming the database", lives, len(liveBad), readyNot200, readyDown, readyDownBad)
	if len(liveBad) > 0 {
		t.Errorf("/health/live did not answer 200 throughout: %v", liveBad[:min(len(liveBad), 5)])
	}
	if lives < 100 {
		t.Errorf("only %d /health/live answers in a %s outage", lives, psOutage)
	}

	// Everything acknowledged reaches the table, exactly once.
	psWaitCount(t, pg.URL(), len(acked), 60*time.Second)
	if err := c.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitTimeout(30 * time.Second); err != nil {
		t.Fatalf("chatd exit after SIGTERM: %v, want status 0", err)
	}
	psCheckStored(t, pg.URL(), acked)
	if !strings.Contains(c.Logs(), "batch written after failures") {
		t.Errorf("the log does not report batches written after failures: the outage did not reach the writer?")
	}
}

// TestPersistOverload: with a persistence queue of 50 and PostgreSQL down,
// pushes end up answered "overloaded"; those messages are neither
// broadcast nor ever stored, while every acknowledged one is stored once
// PostgreSQL is back.
func TestPersistOverload(t *testing.T) {
	t.Parallel()
	pg := testsvc.StartPostgres(t)
	const queue, workers, batch = 50, 2, 10
	c := psStartChatd(t, pg.URL(), map[string]string{
		"CHAT_PERSIST_QUEUE":   strconv.Itoa(queue),
		"CHAT_PERSIST_WORKERS": strconv.Itoa(workers),
		"CHAT_PERSIST_BATCH":   strconv.Itoa(batch),
	})
	const topic = "room:overload"
	sender := psDial(t, c, "sender")
	sender.join(t, topic, nil)
	watcher := psDial(t, c, "watcher")
	watcher.join(t, topic, nil)

	var pushes []psPush
	for i := range 10 {
		p := psPushOne(sender, topic, fmt.Sprintf("before outage %d", i))
		if !p.ok() {
			t.Fatalf("push with PostgreSQL up: %v %s", p.Reply.Err, p.Reply.Raw)
		}
		pushes = append(pushes, p)
	}
	psWaitCount(t, pg.URL(), 10, 10*time.Second)

	pg.Stop(t)
	// Push one at a time until the queue is full, then some more: every
	// reply is either ok or overloaded.
	var okDown, overloaded []psPush
	for i := 0; len(overloaded) < 30; i++ {
		if i >= 2000 {
			t.Fatalf("%d pushes with PostgreSQL down and a queue of %d, and only %d overloaded", i, queue, len(overloaded))
		}
		p := psPushOne(sender, topic, fmt.Sprintf("during outage %d", i))
		pushes = append(pushes, p)
		switch {
		case p.ok():
			if len(overloaded) > 0 {
				t.Errorf("push %d acknowledged after an overloaded reply, with PostgreSQL still down: %s", i, p.Reply.Raw)
			}
			okDown = append(okDown, p)
		case p.Reply.Err == nil && p.Reply.Status == "error" && p.Reply.reason() == "overloaded":
			overloaded = append(overloaded, p)
		default:
			t.Fatalf("push %d with PostgreSQL down: %v %s, want ok or overloaded", i, p.Reply.Err, p.Reply.Raw)
		}
	}
	t.Logf("PostgreSQL down: %d pushes acknowledged, then %d overloaded; first overloaded reply: %s", len(okDown), len(overloaded), overloaded[0].Reply.Raw)
	// The queue holds `queue` places; the workers hold at most a batch each.
	if limit := queue + workers*batch; len(okDown) < queue || len(okDown) > limit {
		t.Errorf("%d pushes acknowledged with PostgreSQL down, want between %d (the queue) and %d (queue + workers x batch)", len(okDown), queue, limit)
	}

	pg.Start(t)
	// Once the writer has caught up, pushes are accepted again.
	deadline := time.Now().Add(30 * time.Second)
	for i := 0; ; i++ {
		p := psPushOne(sender, topic, fmt.Sprintf("after outage %d", i))
		pushes = append(pushes, p)
		if p.ok() {
			break
		}
		if p.Reply.Err != nil || p.Reply.reason() != "overloaded" {
			t.Fatalf("push after PostgreSQL returned: %v %s", p.Reply.Err, p.Reply.Raw)
		}
		overloaded = append(overloaded, p)
		if time.Now().After(deadline) {
			t.Fatalf("pushes still overloaded 30 s after PostgreSQL returned")
		}
		time.Sleep(50 * time.Millisecond)
	}
	acked := psAcked(t, pushes)
	last := pushes[len(pushes)-1].Reply.id()

	// Room order: once the last acknowledged message has arrived, any
	// broadcast of an overloaded message would have arrived before it.
	members := map[string][]*psClient{topic: {sender, watcher}}
	for _, cl := range members[topic] {
		cl.waitMessages(topic, 15*time.Second, func(ms []psMsg) bool { return len(ms) > 0 && ms[len(ms)-1].ID == last })
	}
	psCheckBroadcasts(t, members, acked, time.Second)
	overBodies := make(map[string]bool)
	for _, p := range overloaded {
		overBodies[p.Body] = true
	}
	for _, cl := range members[topic] {
		for _, m := range cl.messages(topic) {
			if overBodies[m.Body] {
				t.Errorf("%s received a broadcast of a message answered overloaded: %s %q", cl.user, m.ID, m.Body)
			}
		}
	}

	psWaitCount(t, pg.URL(), len(acked), 30*time.Second)
	if err := c.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitTimeout(30 * time.Second); err != nil {
		t.Fatalf("chatd exit after SIGTERM: %v, want status 0", err)
	}
	psFillInsertedAt(acked, watcher, topic)
	rows := psCheckStored(t, pg.URL(), acked) // also: nothing unacknowledged
	for _, r := range rows {
		if overBodies[r.Body] {
			t.Errorf("a message answered overloaded was stored: %s %q", r.ID, r.Body)
		}
	}
	t.Logf("%d acknowledged messages stored, %d overloaded ones neither broadcast nor stored", len(acked), len(overloaded))
}

// TestPersistSIGTERMDrainsQueue: with PostgreSQL down, clients get ~500
// messages acknowledged; PostgreSQL comes back (slowed: 0.1 s per INSERT,
// two writers of 10-row batches, so the queue takes seconds to drain) and
// chatd gets SIGTERM at once, while clients keep pushing: it exits 0 after
// writing every acknowledged message.
func TestPersistSIGTERMDrainsQueue(t *testing.T) {
	t.Parallel()
	pg := testsvc.StartPostgres(t)
	c := psStartChatd(t, pg.URL(), map[string]string{
		"CHAT_SHUTDOWN_TIMEOUT": "30s",
		"CHAT_PERSIST_WORKERS":  "2",
		"CHAT_PERSIST_BATCH":    "10",
	})
	psSlowInserts(t, pg, 0.1)
	topics := []string{"room:drain-a", "room:drain-b", "room:drain-a", "room:drain-b"}
	clients := make([]*psClient, len(topics))
	for i, topic := range topics {
		clients[i] = psDial(t, c, fmt.Sprintf("drain-%d", i))
		clients[i].join(t, topic, nil)
	}

	pg.Stop(t)
	var pushes []psPush
	var wg sync.WaitGroup
	var mu sync.Mutex
	for i, cl := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			bodies := make([]string, 125)
			for j := range bodies {
				bodies[j] = fmt.Sprintf("queued %s %d", cl.user, j)
			}
			r := psPushMany(cl, topics[i], bodies, 8)
			mu.Lock()
			pushes = append(pushes, r...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	queued := psAcked(t, pushes)
	if len(queued) != 500 {
		t.Fatalf("%d of 500 pushes acknowledged with PostgreSQL down", len(queued))
	}

	// Clients keep pushing (200 msg/s) across what follows: pushes
	// acknowledged until the sockets close must be written too.
	load := psStartLoad(clients, topics, 20*time.Millisecond)
	defer func() {
		select {
		case <-load.stopCh:
		default:
			load.stop()
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for len(load.snapshot()) < 40 {
		if time.Now().After(deadline) {
			t.Fatalf("load: %d pushes answered in 10 s", len(load.snapshot()))
		}
		time.Sleep(10 * time.Millisecond)
	}
	// PostgreSQL is back, and at once SIGTERM.
	pg.Start(t)
	sent := time.Now()
	if err := c.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	exitErr := c.WaitTimeout(40 * time.Second)
	took := time.Since(sent)
	more := load.stop()
	if exitErr != nil {
		t.Fatalf("chatd exit %s after SIGTERM with a loaded queue: %v, want status 0", took.Round(time.Millisecond), exitErr)
	}
	pushes = append(pushes, more...)
	acked := psAcked(t, pushes)
	noReply := 0
	for _, p := range more {
		if p.Reply.Err != nil {
			noReply++
		} else if !p.ok() {
			t.Errorf("push during shutdown answered %s", p.Reply.Raw)
		}
	}
	t.Logf("exit 0 %s after SIGTERM; %d acknowledged with PostgreSQL down + %d more by the load (%d load pushes unanswered as the sockets closed)",
		took.Round(time.Millisecond), len(queued), len(acked)-len(queued), noReply)
	if m := psDrainingRE.FindStringSubmatch(c.Logs()); m == nil {
		t.Errorf("the log has no %q line with pending=N", "store: writer draining")
	} else if n, _ := strconv.Atoi(m[1]); n == 0 {
		t.Errorf("the writer's queue was empty at shutdown (pending=0): the test did not load it")
	} else {
		t.Logf("log: the writer began draining with pending=%d", n)
	}

	// Unanswered pushes may or may not have been accepted; acknowledged
	// ones must be stored, and nothing else.
	rows, err := psQueryRows(pg.URL())
	if err != nil {
		t.Fatal(err)
	}
	unanswered := make(map[string]bool)
	for _, p := range more {
		if p.Reply.Err != nil {
			unanswered[p.Body] = true
		}
	}
	byID := make(map[string]bool, len(rows))
	for _, r := range rows {
		byID[r.ID] = true
		if _, ok := acked[r.ID]; !ok && !unanswered[r.Body] {
			t.Errorf("stored message %s %q was never pushed or was refused", r.ID, r.Body)
		}
	}
	missing := 0
	for id := range acked {
		if !byID[id] {
			missing++
		}
	}
	if missing > 0 {
		t.Errorf("%d of %d acknowledged messages are not stored after a clean exit", missing, len(acked))
	}
	for id := range acked {
		delete(byID, id)
	}
	t.Logf("table: %d rows = %d acknowledged + %d of the unanswered pushes", len(rows), len(acked), len(byID))
	for _, want := range []string{"store: writer draining", "store: writer closed", "shutdown complete"} {
		if !strings.Contains(c.Logs(), want) {
			t.Errorf("log has no %q", want)
		}
	}
}

var psDrainingRE = regexp.MustCompile(`store: writer draining.*\bpending=(\d+)`)

// psSlowInserts makes every INSERT statement into the messages table of
// pg's database take at least secs seconds: a statement-level trigger that
// sleeps. The table must exist (chatd migrates it at start).
func psSlowInserts(t testing.TB, pg *testsvc.Postgres, secs float64) {
	t.Helper()
	pg.Exec(t, fmt.Sprintf(`CREATE OR REPLACE FUNCTION ps_slow_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	PERFORM pg_sleep(%g);
	RETURN NULL;
END $$`, secs))
	pg.Exec(t, `CREATE TRIGGER ps_slow_insert BEFORE INSERT ON messages FOR EACH STATEMENT EXECUTE FUNCTION ps_slow_insert()`)
}

// psCountAfterStart starts the stopped pg and counts the messages table.
func psCountAfterStart(t *testing.T, pg *testsvc.Postgres) (int, error) {
	t.Helper()
	pg.Start(t)
	return psCount(pg.URL())
}

var psUnwrittenRE = regexp.MustCompile(`store: writer closed before writing every accepted message.*\bunwritten=(\d+)`)

// TestPersistSIGTERMDatabaseDown: PostgreSQL stays down and
// CHAT_SHUTDOWN_TIMEOUT is 2s: chatd gives up on its queue in time, exits
// non-zero, and its log says how many acknowledged messages were not
// written.
func TestPersistSIGTERMDatabaseDown(t *testing.T) {
	t.Parallel()
	pg := testsvc.StartPostgres(t)
	const timeout = 2 * time.Second
	c := psStartChatd(t, pg.URL(), map[string]string{"CHAT_SHUTDOWN_TIMEOUT": timeout.String()})
	cl := psDial(t, c, "doomed")
	cl.join(t, "room:doomed", nil)

	pg.Stop(t)
	bodies := make([]string, 120)
	for i := range bodies {
		bodies[i] = fmt.Sprintf("doomed %d", i)
	}
	acked := psAcked(t, psPushMany(cl, "room:doomed", bodies, 8))
	if len(acked) != len(bodies) {
		t.Fatalf("%d of %d pushes acknowledged with PostgreSQL down", len(acked), len(bodies))
	}

	sent := time.Now()
	if err := c.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	exitErr := c.WaitTimeout(timeout + 10*time.Second)
	took := time.Since(sent)
	t.Logf("chatd exited %s after SIGTERM (shutdown timeout %s): %v", took.Round(time.Millisecond), timeout, exitErr)
	var ee *exec.ExitError
	switch {
	case exitErr == nil:
		t.Errorf("chatd exited 0 although %d acknowledged messages could not be written; want a non-zero status", len(acked))
	case !errors.As(exitErr, &ee):
		t.Fatalf("chatd did not exit: %v", exitErr)
	}
	// The deadline plus the time a race-enabled process needs to log and
	// exit on a busy 2-core machine.
	if took > timeout+3*time.Second {
		t.Errorf("chatd took %s to exit after SIGTERM, want about the %s shutdown timeout", took.Round(time.Millisecond), timeout)
	}
	m := psUnwrittenRE.FindStringSubmatch(c.Logs())
	if m == nil {
		t.Fatalf("the log does not report how many messages were not written (want a line matching %s)", psUnwrittenRE)
	}
	n, _ := strconv.Atoi(m[1])
	t.Logf("log: unwritten=%d", n)
	if n != len(acked) {
		t.Errorf("log reports %d unwritten messages, want %d (every acknowledged message; none could be written)", n, len(acked))
	}
	// And it is the truth: none of them is in the table.
	if got, err := psCountAfterStart(t, pg); err != nil || got != 0 {
		t.Errorf("messages table after the failed drain: %d rows (err %v), want 0", got, err)
	}
}

// psHistoryPage is the body of GET /api/rooms/{room}/messages.
type psHistoryPage struct {
	Messages []psMsg `json:"messages"`
	Order    string  `json:"order"`
}

// psGetHistory calls the history API with query q and token tok ("": no
// Authorization header), returning the status and body.
func psGetHistory(t *testing.T, c *testsvc.Chatd, room string, q url.Values, auth string) (int, http.Header, []byte) {
	t.Helper()
	u := c.URL() + "/api/rooms/" + room + "/messages"
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: read body: %v", u, err)
	}
	return resp.StatusCode, resp.Header, b
}

func psPage(t *testing.T, c *testsvc.Chatd, room, tok string, kv ...string) psHistoryPage {
	t.Helper()
	q := url.Values{}
	for i := 0; i+1 < len(kv); i += 2 {
		q.Set(kv[i], kv[i+1])
	}
	status, _, body := psGetHistory(t, c, room, q, "Bearer "+tok)
	if status != http.StatusOK {
		t.Fatalf("GET history of %s %v: %d %s", room, q, status, body)
	}
	var p psHistoryPage
	if err := json.Unmarshal(body, &p); err != nil {
		t.Fatalf("GET history of %s %v: %v: %s", room, q, err, body)
	}
	if p.Messages == nil {
		t.Errorf("GET history of %s %v: messages is not a list: %s", room, q, body)
	}
	return p
}

func psIDs(ms []psMsg) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.ID
	}
	return out
}

func psReversed(s []string) []string {
	out := slices.Clone(s)
	slices.Reverse(out)
	return out
}

// psSame reports whether got equals want, with a short description of the
// first difference.
func psSame(got, want []string) (bool, string) {
	if slices.Equal(got, want) {
		return true, ""
	}
	for i := range min(len(got), len(want)) {
		if got[i] != want[i] {
			return false, fmt.Sprintf("%d ids, want %d; first difference at %d: %s, want %s", len(got), len(want), i, got[i], want[i])
		}
	}
	return false, fmt.Sprintf("%d ids, want %d (one is a prefix of the other)", len(got), len(want))
}

// TestPersistHistory: the history API pages through stored messages
// (newest first going back with before, oldest first going forward with
// after; limit capped at 200; 401 without a valid bearer token; 400 for a
// bad room or limit), and a join replays history: "history": N gives the N
// newest oldest first, "since": id exactly the messages after it.
func TestPersistHistory(t *testing.T) {
	t.Parallel()
	pg := testsvc.StartPostgres(t)
	c := psStartChatd(t, pg.URL(), nil)
	const room, total = "hist", 250
	pusher := psDial(t, c, "historian")
	pusher.join(t, "room:"+room, nil)
	bodies := make([]string, total)
	for i := range bodies {
		bodies[i] = fmt.Sprintf("history %03d — ünïcode ✓ \"quoted\" <b>", i)
	}
	pushes := psPushMany(pusher, "room:"+room, bodies, 4)
	var ids []string
	byID := make(map[string]psPush)
	for _, p := range pushes {
		if !p.ok() {
			t.Fatalf("push %q: %v %s", p.Body, p.Reply.Err, p.Reply.Raw)
		}
		ids = append(ids, p.Reply.id())
		byID[p.Reply.id()] = p
	}
	if !slices.IsSorted(ids) {
		t.Errorf("ids of one connection's pushes to one room are not increasing")
	}
	sort.Strings(ids)
	// A message in another room, which no query of this room may return.
	other := psDial(t, c, "elsewhere")
	other.join(t, "room:hist-other", nil)
	if p := psPushOne(other, "room:hist-other", "not in hist"); !p.ok() {
		t.Fatalf("push to hist-other: %s", p.Reply.Raw)
	}
	psWaitCount(t, pg.URL(), total+1, 30*time.Second)
	tok := mintToken(t, testSecret, "reader")

	t.Run("api", func(t *testing.T) {
		// Auth first.
		for _, tc := range []struct{ name, auth string }{
			{"no header", ""},
			{"not bearer", "Basic " + tok},
			{"garbage", "Bearer not-a-token"},
			{"other secret", "Bearer " + mintToken(t, "another-secret", "reader")},
		} {
			status, header, body := psGetHistory(t, c, room, nil, tc.auth)
			if status != http.StatusUnauthorized {
				t.Errorf("%s: status %d %s, want 401", tc.name, status, body)
				continue
			}
			wantJSONError(t, tc.name, header, body)
			if strings.Contains(string(body), "history ") {
				t.Errorf("%s: the 401 body carries messages: %s", tc.name, body)
			}
		}
		// Bad requests.
		for _, tc := range []struct {
			name, room string
			q          url.Values
		}{
			{"room too long", strings.Repeat("r", 65), nil},
			{"room with a space", "bad%20room", nil},
			{"room with a bang", "bad%21room", nil},
			{"limit 0", room, url.Values{"limit": {"0"}}},
			{"limit -1", room, url.Values{"limit": {"-1"}}},
			{"limit abc", room, url.Values{"limit": {"abc"}}},
			{"limit 1.5", room, url.Values{"limit": {"1.5"}}},
		} {
			status, header, body := psGetHistory(t, c, tc.room, tc.q, "Bearer "+tok)
			if status != http.StatusBadRequest {
				t.Errorf("%s: status %d %s, want 400", tc.name, status, body)
				continue
			}
			wantJSONError(t, tc.name, header, body)
		}

		// Default page: the 50 newest, newest first, with every field.
		p := psPage(t, c, room, tok)
		if p.Order != "newest_first" {
			t.Errorf("default page order %q, want newest_first", p.Order)
		}
		if ok, diff := psSame(psIDs(p.Messages), psReversed(ids[total-50:])); !ok {
			t.Errorf("default page: %s", diff)
		}
		for _, m := range p.Messages {
			want := byID[m.ID]
			if m.Room != room || m.UserID != "historian" || m.Body != want.Body || m.InsertedAt.IsZero() {
				t.Errorf("history message %+v, want room %s, user historian, body %q, inserted_at set", m, room, want.Body)
				break
			}
		}
		// limit is capped at 200.
		if p := psPage(t, c, room, tok, "limit", "500"); len(p.Messages) != 200 {
			t.Errorf("limit=500: %d messages, want 200 (the cap)", len(p.Messages))
		} else if ok, diff := psSame(psIDs(p.Messages), psReversed(ids[total-200:])); !ok {
			t.Errorf("limit=500: %s", diff)
		}
		if p := psPage(t, c, room, tok, "limit", "7"); len(p.Messages) != 7 {
			t.Errorf("limit=7: %d messages", len(p.Messages))
		}

		// Back in time with before: pages of 60, newest first, cover
		// everything once.
		var back []string
		before := ""
		for range 10 {
			kv := []string{"limit", "60"}
			if before != "" {
				kv = append(kv, "before", before)
			}
			p := psPage(t, c, room, tok, kv...)
			if p.Order != "newest_first" {
				t.Errorf("before page order %q, want newest_first", p.Order)
			}
			if len(p.Messages) == 0 {
				break
			}
			back = append(back, psIDs(p.Messages)...)
			before = p.Messages[len(p.Messages)-1].ID
		}
		if ok, diff := psSame(back, psReversed(ids)); !ok {
			t.Errorf("paging back with before: %s", diff)
		}

		// Forward with after: oldest first, from the oldest.
		var fwd []string
		after := "00000000-0000-0000-0000-000000000000"
		for range 10 {
			p := psPage(t, c, room, tok, "limit", "80", "after", after)
			if p.Order != "oldest_first" {
				t.Errorf("after page order %q, want oldest_first", p.Order)
			}
			if len(p.Messages) == 0 {
				break
			}
			fwd = append(fwd, psIDs(p.Messages)...)
			after = p.Messages[len(p.Messages)-1].ID
		}
		if ok, diff := psSame(fwd, ids); !ok {
			t.Errorf("paging forward with after: %s", diff)
		}

		// A window: after and before together.
		p = psPage(t, c, room, tok, "after", ids[10], "before", ids[20])
		if ok, diff := psSame(psIDs(p.Messages), ids[11:20]); !ok || p.Order != "oldest_first" {
			t.Errorf("after=ids[10]&before=ids[20] (%s): %s", p.Order, diff)
		}
		// An empty room is an empty list.
		if p := psPage(t, c, room+"-empty", tok); len(p.Messages) != 0 {
			t.Errorf("empty room: %d messages", len(p.Messages))
		}
	})

	t.Run("join history", func(t *testing.T) {
		j := psDial(t, c, "joiner")
		resp := j.join(t, "room:"+room, map[string]any{"history": 5})
		if ok, diff := psSame(psIDs(resp.Messages), ids[total-5:]); !ok {
			t.Errorf(`join {"history": 5}: %s`, diff)
		}
		for _, m := range resp.Messages {
			if m.Body != byID[m.ID].Body || m.UserID != "historian" || m.Room != room {
				t.Errorf(`join {"history": 5}: message %+v differs from what was pushed`, m)
			}
		}
		resp = j.join(t, "room:"+room, map[string]any{"history": 200})
		if ok, diff := psSame(psIDs(resp.Messages), ids[total-200:]); !ok {
			t.Errorf(`join {"history": 200}: %s`, diff)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if r, err := j.call(ctx, "room:"+room, "phx_join", map[string]any{"history": 201}); err != nil || r.Status != "error" || r.reason() != "invalid payload" {
			t.Errorf(`join {"history": 201}: %s %v, want error "invalid payload"`, r.Raw, err)
		}
	})

	t.Run("join since", func(t *testing.T) {
		j := psDial(t, c, "rejoiner")
		resp := j.join(t, "room:"+room, map[string]any{"since": ids[230]})
		if ok, diff := psSame(psIDs(resp.Messages), ids[231:]); !ok {
			t.Errorf(`join {"since": ids[230]}: %s`, diff)
		}
		if resp.Recovered == nil || !*resp.Recovered {
			t.Errorf(`join {"since": ids[230]}: recovered %v, want true`, psBool(resp.Recovered))
		}
		resp = j.join(t, "room:"+room, map[string]any{"since": ids[total-1]})
		if len(resp.Messages) != 0 || resp.Recovered == nil || !*resp.Recovered {
			t.Errorf(`join {"since": newest}: %d messages, recovered %v; want none, true`, len(resp.Messages), psBool(resp.Recovered))
		}
		resp = j.join(t, "room:"+room, map[string]any{"since": ids[0]})
		if ok, diff := psSame(psIDs(resp.Messages), ids[1:]); !ok || resp.Recovered == nil || !*resp.Recovered {
			t.Errorf(`join {"since": oldest}: recovered %v; %s`, psBool(resp.Recovered), diff)
		}
		// An id that was never sent: not recovered.
		unknown := ids[100][:len(ids[100])-4] + "0000"
		if unknown == ids[100] {
			unknown = ids[100][:len(ids[100])-4] + "ffff"
		}
		resp = j.join(t, "room:"+room, map[string]any{"since": unknown})
		if resp.Recovered == nil || *resp.Recovered {
			t.Errorf(`join {"since": unknown id}: recovered %v, want false`, psBool(resp.Recovered))
		}
		for _, m := range resp.Messages {
			if m.ID <= unknown {
				t.Errorf(`join {"since": unknown id}: message %s is not after it`, m.ID)
			}
		}
		resp = j.join(t, "room:"+room, map[string]any{"since": uuid.Must(uuid.NewV7()).String()})
		if resp.Recovered == nil || *resp.Recovered || len(resp.Messages) != 0 {
			t.Errorf(`join {"since": a future unknown id}: %d messages, recovered %v; want none, false`, len(resp.Messages), psBool(resp.Recovered))
		}
		// Another room's id: not found in this room.
		otherID := other.messages("room:hist-other")
		if len(otherID) == 1 {
			resp = j.join(t, "room:"+room, map[string]any{"since": otherID[0].ID})
			if resp.Recovered == nil || *resp.Recovered {
				t.Errorf(`join {"since": another room's id}: recovered %v, want false`, psBool(resp.Recovered))
			}
		}
	})
}

// TestPersistJoinSinceRace: clients join with "since" while a pusher
// pushes as fast as it can into the room; each joiner's reply plus the live
// stream after it must hold every message after "since" exactly once, in
// order. Once with the default writer, once with writers that do not wait
// for a batch to fill (CHAT_PERSIST_BATCH_WAIT < 0): each message is
// written as soon as a writer is free, so writes of different writers land
// out of order more often.
func TestPersistJoinSinceRace(t *testing.T) {
	t.Parallel()
	pg := testsvc.StartPostgres(t)
	for _, tc := range []struct {
		name string
		env  map[string]string
	}{
		{"default writer", nil},
		{"no batch wait", map[string]string{"CHAT_PERSIST_BATCH_WAIT": "-1ms"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := psStartChatd(t, pg.NewDatabase(t), tc.env)
			psCheckJoinSinceWhilePushing(t, c, "room:race", 24)
		})
	}
}

// TestPersistRecoverAfterRoomEmptied: the room's last member leaves right
// after sending, while PostgreSQL is slow (every INSERT takes 2 s), so the
// messages are acknowledged and broadcast but not yet written. A client
// that rejoins with since = the last message it saw must then get the
// messages it missed; if the server cannot know them it must say
// recovered=false, never recovered=true with messages missing.
func TestPersistRecoverAfterRoomEmptied(t *testing.T) {
	t.Parallel()
	pg := testsvc.StartPostgres(t)
	c := psStartChatd(t, pg.URL(), nil)
	const topic = "room:emptied"
	alice := psDial(t, c, "alice")
	alice.join(t, topic, nil)
	bob := psDial(t, c, "bob")
	bob.join(t, topic, nil)
	p0 := psPushOne(bob, topic, "seen by alice")
	if !p0.ok() {
		t.Fatalf("push: %s", p0.Reply.Raw)
	}
	if ms, ok := alice.waitMessages(topic, 10*time.Second, func(ms []psMsg) bool { return len(ms) == 1 }); !ok || ms[0].ID != p0.Reply.id() {
		t.Fatalf("alice did not see the first message: %v", psIDs(ms))
	}
	psWaitCount(t, pg.URL(), 1, 10*time.Second)
	psSlowInserts(t, pg, 2)

	leave := func(cl *psClient) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if r, err := cl.call(ctx, topic, "phx_leave", struct{}{}); err != nil || r.Status != "ok" {
			t.Fatalf("%s: leave: %v %s", cl.user, err, r.Raw)
		}
	}
	leave(alice) // alice goes away (the reply means the server has removed her)
	var missed []string
	for i := range 5 {
		p := psPushOne(bob, topic, fmt.Sprintf("while alice was away %d", i))
		if !p.ok() {
			t.Fatalf("push: %s", p.Reply.Raw)
		}
		missed = append(missed, p.Reply.id())
	}
	leave(bob) // the room has no member left on the node

	resp := alice.join(t, topic, map[string]any{"since": p0.Reply.id()})
	stored, err := psCount(pg.URL())
	if err != nil {
		t.Fatal(err)
	}
	got := psIDs(resp.Messages)
	t.Logf(`rejoin {"since": %q}: recovered=%s, messages %v; acknowledged after it: %v; rows in the table right after the reply: %d`,
		p0.Reply.id(), psBool(resp.Recovered), got, missed, stored)
	if resp.Recovered == nil {
		t.Fatalf("join with since: no recovered field")
	}
	if *resp.Recovered {
		if same, diff := psSame(got, missed); !same {
			t.Errorf("join with since answered recovered=true but its messages are not the %d acknowledged since: %s", len(missed), diff)
		}
	} else {
		t.Logf("the server could not recover the gap and said so (recovered=false)")
	}
	// Once written, the messages are all there.
	psWaitCount(t, pg.URL(), 1+len(missed), 30*time.Second)
	resp = alice.join(t, topic, map[string]any{"since": p0.Reply.id()})
	if same, diff := psSame(psIDs(resp.Messages), missed); !same || resp.Recovered == nil || !*resp.Recovered {
		t.Errorf("join with since once written: recovered=%s, %s", psBool(resp.Recovered), diff)
	}
}

func psBool(b *bool) string {
	if b == nil {
		return "absent"
	}
	return strconv.FormatBool(*b)
}

// psCheckJoinSinceWhilePushing: a pusher pushes as fast as it can while
// clients join with "since" its latest acknowledged id; each joiner's
// reply plus the live broadcasts after it hold exactly the messages after
// that id: none lost, none twice, in order.
func psCheckJoinSinceWhilePushing(t *testing.T, c *testsvc.Chatd, topic string, joiners int) {
	pusher := psDial(t, c, "racer")
	pusher.join(t, topic, nil)
	first := psPushOne(pusher, topic, "race seed")
	if !first.ok() {
		t.Fatalf("seed push: %s", first.Reply.Raw)
	}

	var mu sync.Mutex
	acks := []string{first.Reply.id()}
	var failed []string
	stop := make(chan struct{})
	pushDone := make(chan struct{})
	go func() {
		defer close(pushDone)
		sem := make(chan struct{}, 4)
		var wg sync.WaitGroup
		defer wg.Wait()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case sem <- struct{}{}:
			}
			_, ch, err := pusher.pushAsync(topic, fmt.Sprintf("race %d", i))
			if err != nil {
				mu.Lock()
				failed = append(failed, err.Error())
				mu.Unlock()
				<-sem
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				r := psAwait(ch)
				mu.Lock()
				defer mu.Unlock()
				if r.Err != nil || r.Status != "ok" {
					failed = append(failed, fmt.Sprintf("%v %s", r.Err, r.Raw))
					return
				}
				acks = append(acks, r.id())
			}()
		}
	}()
	ackCount := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(acks)
	}
	waitAcks := func(n int) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for ackCount() < n {
			if time.Now().After(deadline) {
				t.Fatalf("pusher: %d acks, want %d", ackCount(), n)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}

	type joined struct {
		cl    *psClient
		since string
		resp  psJoinResponse
	}
	var joins []joined
	for k := range joiners {
		waitAcks(ackCount() + 30)
		mu.Lock()
		since := slices.Max(acks)
		if k%2 == 1 && len(acks) > 20 {
			// Also from a little further back, so the reply is not empty.
			sorted := slices.Sorted(slices.Values(acks))
			since = sorted[len(sorted)-20]
		}
		mu.Unlock()
		j := psDial(t, c, fmt.Sprintf("racejoin-%d", k))
		joins = append(joins, joined{cl: j, since: since, resp: j.join(t, topic, map[string]any{"since": since})})
	}
	waitAcks(ackCount() + 50)
	close(stop)
	<-pushDone
	mu.Lock()
	all := slices.Sorted(slices.Values(acks))
	if len(failed) > 0 {
		t.Errorf("pusher: %d pushes failed, e.g. %v", len(failed), failed[:min(5, len(failed))])
	}
	mu.Unlock()
	last := all[len(all)-1]

	for k, j := range joins {
		live, ok := j.cl.waitMessages(topic, 15*time.Second, func(ms []psMsg) bool { return len(ms) > 0 && ms[len(ms)-1].ID >= last })
		if !ok {
			t.Errorf("joiner %d: the live stream never reached the last message %s (got %d)", k, last, len(live))
		}
		got := append(psIDs(j.resp.Messages), psIDs(live)...)
		i, _ := slices.BinarySearch(all, j.since)
		want := all[i+1:]
		if same, diff := psSame(got, want); !same {
			replyIDs := psIDs(j.resp.Messages)
			t.Errorf("joiner %d (since %s): reply (%d) + live (%d): %s", k, j.since, len(replyIDs), len(live), diff)
			seen := map[string]int{}
			for _, id := range got {
				seen[id]++
			}
			for _, id := range want {
				if seen[id] == 0 {
					t.Errorf("joiner %d: acknowledged message %s is in neither the join reply nor the live stream", k, id)
				}
			}
			for id, n := range seen {
				if n > 1 {
					t.Errorf("joiner %d: %s received %d times", k, id, n)
				}
			}
			t.Logf("joiner %d: join reply ids (recovered=%s): %v", k, psBool(j.resp.Recovered), replyIDs)
			t.Logf("joiner %d: first live ids: %v", k, psIDs(live[:min(len(live), 5)]))
		}
		if j.resp.Recovered == nil || !*j.resp.Recovered {
			t.Errorf("joiner %d: recovered %v, want true (since an acknowledged id)", k, psBool(j.resp.Recovered))
		}
		t.Logf("joiner %d: %d messages in the join reply, %d live after it", k, len(j.resp.Messages), len(live))
	}
	t.Logf("%d messages pushed while %d clients joined with since", len(all), joiners)
}

// TestPersistRestartRecovery: a client sees messages; chatd is stopped
// (SIGTERM) and a new process started on the same database; more messages
// are sent to it; the client reconnects and joins with since = the last id
// it saw, and gets exactly the messages it missed, recovered.
func TestPersistRestartRecovery(t *testing.T) {
	t.Parallel()
	pg := testsvc.StartPostgres(t)
	const topic = "room:restart"
	c1 := psStartChatd(t, pg.URL(), nil)
	alice := psDial(t, c1, "alice")
	alice.join(t, topic, nil)
	bob := psDial(t, c1, "bob")
	bob.join(t, topic, nil)
	var before []string
	for i := range 20 {
		p := psPushOne(bob, topic, fmt.Sprintf("before restart %d", i))
		if !p.ok() {
			t.Fatalf("push: %s", p.Reply.Raw)
		}
		before = append(before, p.Reply.id())
	}
	seen, ok := alice.waitMessages(topic, 10*time.Second, func(ms []psMsg) bool { return len(ms) >= 20 })
	if !ok {
		t.Fatalf("alice saw %d of 20 messages", len(seen))
	}
	lastSeen := seen[len(seen)-1].ID
	if lastSeen != before[19] {
		t.Fatalf("alice's last message %s, want %s", lastSeen, before[19])
	}

	if err := c1.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := c1.WaitTimeout(30 * time.Second); err != nil {
		t.Fatalf("first chatd exit after SIGTERM: %v", err)
	}

	c2 := psStartChatd(t, pg.URL(), nil)
	bob2 := psDial(t, c2, "bob")
	bob2.join(t, topic, nil)
	var missed []string
	for i := range 15 {
		p := psPushOne(bob2, topic, fmt.Sprintf("while alice was away %d", i))
		if !p.ok() {
			t.Fatalf("push to the new process: %s", p.Reply.Raw)
		}
		missed = append(missed, p.Reply.id())
	}
	if missed[0] <= before[19] {
		t.Errorf("the new process's first id %s is not after the old process's last %s", missed[0], before[19])
	}

	alice2 := psDial(t, c2, "alice")
	resp := alice2.join(t, topic, map[string]any{"since": lastSeen})
	if same, diff := psSame(psIDs(resp.Messages), missed); !same {
		t.Errorf("join since the last seen id after the restart: %s", diff)
	}
	if resp.Recovered == nil || !*resp.Recovered {
		t.Errorf("join since the last seen id after the restart: recovered %s, want true", psBool(resp.Recovered))
	}
	for i, m := range resp.Messages {
		if want := fmt.Sprintf("while alice was away %d", i); m.Body != want || m.UserID != "bob" || m.Room != "restart" {
			t.Errorf("recovered message %d: %+v, want bob's %q", i, m, want)
		}
	}
	// Live again, without replays.
	p := psPushOne(bob2, topic, "welcome back")
	if !p.ok() {
		t.Fatalf("push: %s", p.Reply.Raw)
	}
	live, ok := alice2.waitMessages(topic, 10*time.Second, func(ms []psMsg) bool { return len(ms) >= 1 })
	if !ok || len(live) != 1 || live[0].ID != p.Reply.id() {
		t.Errorf("after recovery alice's live stream is %v, want just %s", psIDs(live), p.Reply.id())
	}
	t.Logf("after the restart alice recovered %d missed messages (recovered=%s)", len(resp.Messages), psBool(resp.Recovered))
}

// TestPersistSIGTERMWithStalledRequest: clients chat on a node with
// PostgreSQL while another client holds a request whose body never comes
// (Content-Length: 1000, nothing sent). SIGTERM with a 20 s shutdown
// timeout: the stalled request gets only its share of the time, so the
// node exits 0 within 10 s, and every acknowledged message is in
// PostgreSQL.
func TestPersistSIGTERMWithStalledRequest(t *testing.T) {
	t.Parallel()
	pg := testsvc.StartPostgres(t)
	c := psStartChatd(t, pg.URL(), map[string]string{"CHAT_SHUTDOWN_TIMEOUT": "20s"})
	topics := []string{"room:stall", "room:stall"}
	clients := []*psClient{psDial(t, c, "stall-a"), psDial(t, c, "stall-b")}
	for i, cl := range clients {
		cl.join(t, topics[i], nil)
	}
	load := psStartLoad(clients, topics, 20*time.Millisecond)
	stopped := false
	defer func() {
		if !stopped {
			load.stop()
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for len(load.snapshot()) < 50 {
		if time.Now().After(deadline) {
			t.Fatalf("only %d pushes answered in 10s", len(load.snapshot()))
		}
		time.Sleep(20 * time.Millisecond)
	}

	stall, err := net.Dial("tcp", c.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer stall.Close()
	if _, err := fmt.Fprintf(stall, "POST /api/rooms/stall/messages HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n", c.Addr()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // the server is reading its body

	sigAt := time.Now()
	if err := c.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	exitErr := c.WaitTimeout(30 * time.Second)
	took := time.Since(sigAt)
	pushes := load.stop()
	stopped = true
	t.Logf("chatd exited %s after SIGTERM (err %v), %d pushes", took.Round(time.Millisecond), exitErr, len(pushes))
	if exitErr != nil {
		t.Fatalf("chatd exit after SIGTERM: %v, want status 0", exitErr)
	}
	if took > 10*time.Second {
		t.Errorf("chatd took %s to exit with a stalled request open, want within 10s", took.Round(time.Millisecond))
	}
	acked := psAcked(t, pushes)
	t.Logf("%d pushes acknowledged", len(acked))
	psCheckStored(t, pg.URL(), acked)
}
