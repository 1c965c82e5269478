package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/chatd/chatd/internal/testsvc"
)

// apiKey is the CHAT_API_KEY of the servers these tests start.
const apiKey = "e2e-api-key-0123456789abcdef"

// apiDo sends a server API request with "Authorization: Bearer <bearer>"
// (none when bearer is empty).
func apiDo(t *testing.T, c *testsvc.Chatd, method, path, bearer, body string) (int, []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, c.URL()+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return resp.StatusCode, b
}

// apiPublish publishes body as user to room through c's server API and
// returns the message id.
func apiPublish(t *testing.T, c *testsvc.Chatd, room, user, body string) string {
	t.Helper()
	payload, _ := json.Marshal(map[string]string{"user_id": user, "body": body})
	status, resp := apiDo(t, c, "POST", "/api/rooms/"+room+"/messages", apiKey, string(payload))
	var got struct {
		ID string `json:"id"`
	}
	if status != http.StatusCreated || json.Unmarshal(resp, &got) != nil || got.ID == "" {
		t.Fatalf("API publish to %s: %d %s; want 201 {\"id\"}", room, status, resp)
	}
	return got.ID
}

// apiWantError checks a refusal: status, and the stable reason in the
// JSON body.
func apiWantError(t *testing.T, what string, status int, body []byte, wantStatus int, wantReason string) {
	t.Helper()
	var e struct {
		Error  string `json:"error"`
		Reason string `json:"reason"`
	}
	if status != wantStatus || json.Unmarshal(body, &e) != nil || e.Error == "" || (wantReason != "" && e.Reason != wantReason) {
		t.Errorf("%s: %d %s; want %d with reason %q", what, status, body, wantStatus, wantReason)
	}
}

// apiWaitDeleted waits until c received msg_deleted {"id": id} on topic.
func apiWaitDeleted(t *testing.T, c *psClient, topic, id string) {
	t.Helper()
	want := fmt.Sprintf(`[null,null,%q,"msg_deleted",{"id":%q}]`, topic, id)
	deadline := time.Now().Add(10 * time.Second)
	for {
		for _, f := range c.otherFrames() {
			if f == want {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never received %s; other frames: %q", c.user, want, c.otherFrames())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// apiNotDeleted fails t if c received a msg_deleted for id.
func apiNotDeleted(t *testing.T, c *psClient, id string) {
	t.Helper()
	for _, f := range c.otherFrames() {
		if strings.Contains(f, "msg_deleted") && strings.Contains(f, id) {
			t.Errorf("%s received %s", c.user, f)
		}
	}
}

// apiREST returns room's stored history as c's REST API pages it (newest
// first), read with user's token.
func apiREST(t *testing.T, c *testsvc.Chatd, room, user string) []psMsg {
	t.Helper()
	status, body := apiDo(t, c, "GET", "/api/rooms/"+room+"/messages?limit=200", mustToken(t, user), "")
	var page struct {
		Messages []psMsg `json:"messages"`
	}
	if status != http.StatusOK || json.Unmarshal(body, &page) != nil {
		t.Fatalf("REST history of %s: %d %s", room, status, body)
	}
	return page.Messages
}

func mustToken(t *testing.T, user string) string {
	t.Helper()
	tok, err := psToken(user)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// apiWaitREST polls c's REST history of room until cond holds.
func apiWaitREST(t *testing.T, c *testsvc.Chatd, room, what string, cond func([]psMsg) bool) []psMsg {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		msgs := apiREST(t, c, room, "reader")
		if cond(msgs) {
			return msgs
		}
		if time.Now().After(deadline) {
			t.Fatalf("REST history of %s on %s: never %s; it holds %v", room, c.Addr(), what, msgs)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func apiHas(msgs []psMsg, id string) bool {
	for _, m := range msgs {
		if m.ID == id {
			return true
		}
	}
	return false
}

// apiCheckGone checks, on node c, that no history returns the message id
// (or its body): REST history, a join's "history", and "since" recovery
// from since (which must still be recovered). keep is a message that
// must be there.
func apiCheckGone(t *testing.T, c *testsvc.Chatd, room, id, body, since, keep string) {
	t.Helper()
	topic := "room:" + room
	check := func(what string, msgs []psMsg) {
		t.Helper()
		if !apiHas(msgs, keep) {
			t.Errorf("%s on %s lacks the message %s that was kept: %v", what, c.Addr(), keep, msgs)
		}
		for _, m := range msgs {
			if m.ID == id || m.Body == body {
				t.Errorf("%s on %s returns the deleted message: %+v", what, c.Addr(), m)
			}
		}
	}
	check("REST history", apiWaitREST(t, c, room, "holding the kept message", func(msgs []psMsg) bool { return apiHas(msgs, keep) }))
	r := psDial(t, c, "late-reader")
	check("join history", r.join(t, topic, map[string]any{"history": 50}).Messages)
	resp := r.join(t, topic, map[string]any{"since": since})
	check("since recovery", resp.Messages)
	if resp.Recovered == nil || !*resp.Recovered {
		t.Errorf("since %s on %s: recovered %v, want true", since, c.Addr(), resp.Recovered)
	}
	r.close()
}

// apiSlowLiveInserts makes every INSERT of a live messages row (the
// writer's: deleted_at is null) sleep secs before the row is written, as
// psSlowInserts does for every statement, while tombstones go in at once:
// a deleted message's tombstone then lands before its writer's insert.
func apiSlowLiveInserts(t testing.TB, pg *testsvc.Postgres, secs float64) {
	t.Helper()
	pg.Exec(t, fmt.Sprintf(`CREATE OR REPLACE FUNCTION api_slow_live_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	PERFORM pg_sleep(%g);
	RETURN NEW;
END $$`, secs))
	pg.Exec(t, `CREATE TRIGGER api_slow_live_insert BEFORE INSERT ON messages FOR EACH ROW WHEN (NEW.deleted_at IS NULL) EXECUTE FUNCTION api_slow_live_insert()`)
}

// apiPersistPending reads the persistence queue's pending count from c's
// /api/stats.
func apiPersistPending(t *testing.T, c *testsvc.Chatd) (pending, written int) {
	t.Helper()
	status, body := apiDo(t, c, "GET", "/api/stats", clAdminToken, "")
	var st struct {
		Persistence struct {
			Pending int `json:"pending"`
			Written int `json:"written"`
		} `json:"persistence"`
	}
	if status != http.StatusOK || json.Unmarshal(body, &st) != nil {
		t.Fatalf("stats: %d %s", status, body)
	}
	return st.Persistence.Pending, st.Persistence.Written
}

// TestAPIClusterPublishDelete: two nodes with Redis and PostgreSQL. A
// message published on node1's server API reaches a member on node2;
// deleted on node2's API, members on both nodes receive msg_deleted and
// no history on either node returns it (REST, join history, since
// recovery, read from the room's log and the database). delete_msg
// deletes the author's own message only. A message deleted while its
// writer is still inserting it is not brought back by that insert.
func TestAPIClusterPublishDelete(t *testing.T) {
	t.Parallel()
	pg := testsvc.StartPostgres(t)
	redis := testsvc.StartRedis(t)
	nodes := clStartCluster(t, redis, 2, map[string]string{"CHAT_DATABASE_URL": pg.URL(), "CHAT_API_KEY": apiKey})
	n1, n2 := nodes[0].Chatd, nodes[1].Chatd
	const room = "api-cluster"
	topic := "room:" + room

	alice := psDial(t, n1, "alice")
	bob := psDial(t, n2, "bob")
	alice.join(t, topic, nil)
	bob.join(t, topic, nil)

	first := apiPublish(t, n1, room, "alice", "first, kept")
	const doomedBody = "published by the backend, then taken down"
	doomed := apiPublish(t, n1, room, "alice", doomedBody)
	last := apiPublish(t, n2, room, "carol", "last, kept")
	for _, c := range []*psClient{alice, bob} {
		msgs, ok := c.waitMessages(topic, 10*time.Second, func(m []psMsg) bool { return len(m) >= 3 })
		if !ok || msgs[0].ID != first || msgs[1].ID != doomed || msgs[2].ID != last ||
			msgs[1].UserID != "alice" || msgs[1].Body != doomedBody || msgs[2].UserID != "carol" {
			t.Fatalf("%s received %+v; want the 3 API messages in order, as their users", c.user, msgs)
		}
	}
	// Stored before it is deleted: the delete must blank a stored row.
	for _, n := range []*testsvc.Chatd{n1, n2} {
		apiWaitREST(t, n, room, "holding the message to delete", func(m []psMsg) bool { return apiHas(m, doomed) && apiHas(m, last) })
	}

	if status, body := apiDo(t, n2, "DELETE", "/api/rooms/"+room+"/messages/"+doomed, apiKey, ""); status != http.StatusNoContent {
		t.Fatalf("API delete: %d %s; want 204", status, body)
	}
	apiWaitDeleted(t, alice, topic, doomed)
	apiWaitDeleted(t, bob, topic, doomed)
	for _, n := range []*testsvc.Chatd{n1, n2} {
		apiCheckGone(t, n, room, doomed, doomedBody, first, last)
	}
	status, body := apiDo(t, n1, "DELETE", "/api/rooms/"+room+"/messages/"+doomed, apiKey, "")
	apiWantError(t, "deleting again", status, body, http.StatusNotFound, "not found")

	// delete_msg: bob's own message, from node1 by alice (refused), then by
	// bob on node2.
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	r, err := bob.call(ctx, topic, "new_msg", map[string]string{"body": "bob's, to delete"})
	if err != nil || r.Status != "ok" {
		t.Fatalf("bob's push: %v %s", err, r.Raw)
	}
	bobs := r.id()
	alice.waitMessages(topic, 10*time.Second, func(m []psMsg) bool { return apiHas(m, bobs) })
	if r, err := alice.call(ctx, topic, "delete_msg", map[string]string{"id": bobs}); err != nil || r.Status != "error" || r.reason() != "unauthorized" {
		t.Fatalf("alice's delete_msg of bob's message: %v %s; want error unauthorized", err, r.Raw)
	}
	if got := psDial(t, n2, "check").join(t, topic, map[string]any{"history": 10}).Messages; !apiHas(got, bobs) {
		t.Fatalf("bob's message is gone after alice's refused delete_msg: %+v", got)
	}
	apiNotDeleted(t, alice, bobs)
	apiNotDeleted(t, bob, bobs)
	if r, err := bob.call(ctx, topic, "delete_msg", map[string]string{"id": bobs}); err != nil || r.Status != "ok" {
		t.Fatalf("bob's delete_msg of his message: %v %s; want ok", err, r.Raw)
	}
	apiWaitDeleted(t, alice, topic, bobs)
	apiWaitDeleted(t, bob, topic, bobs)
	apiCheckGone(t, n1, room, bobs, "bob's, to delete", first, last)

	// A lagging writer: node1's insert of the next message sleeps 2 s;
	// it is deleted on node2 meanwhile.
	apiSlowLiveInserts(t, pg, 2)
	const lateBody = "deleted while its insert sleeps"
	late := apiPublish(t, n1, room, "alice", lateBody)
	if status, body := apiDo(t, n2, "DELETE", "/api/rooms/"+room+"/messages/"+late, apiKey, ""); status != http.StatusNoContent {
		t.Fatalf("API delete of a message not stored yet: %d %s; want 204", status, body)
	}
	if pending, _ := apiPersistPending(t, n1); pending == 0 {
		t.Fatal("node1's writer is not inserting the deleted message any more: the test did not make it lag")
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if pending, _ := apiPersistPending(t, n1); pending == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("node1's writer never finished")
		}
		time.Sleep(100 * time.Millisecond)
	}
	var storedBody string
	var deletedAt *time.Time
	conn, err := pgx.Connect(ctx, pg.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if err := conn.QueryRow(ctx, `SELECT body, deleted_at FROM messages WHERE id = $1`, late).Scan(&storedBody, &deletedAt); err != nil {
		t.Fatalf("the deleted message's row: %v", err)
	}
	if storedBody != "" || deletedAt == nil {
		t.Fatalf("after the lagging insert the row holds body %q, deleted_at %v: the message was brought back", storedBody, deletedAt)
	}
	for _, n := range []*testsvc.Chatd{n1, n2} {
		apiCheckGone(t, n, room, late, lateBody, first, last)
	}
}

// TestAPISingleNode: one node with the in-memory log and SQLite. The API
// publishes into a room with no member, answers its refusals with stable
// reasons, and deletes; delete_msg works for the author only. The API key
// is the only credential that opens the API.
func TestAPISingleNode(t *testing.T) {
	t.Parallel()
	const admin = "e2e-api-admin-token"
	c := startServer(t, map[string]string{
		"CHAT_API_KEY":      apiKey,
		"CHAT_ADMIN_TOKEN":  admin,
		"CHAT_DATABASE_URL": filepath.Join(t.TempDir(), "chat.db"),
		"CHAT_MAX_BODY":     "100",
		"CHAT_USER_RATE":    "0",
	})
	const room = "api-solo"
	topic := "room:" + room
	path := "/api/rooms/" + room + "/messages"
	valid := `{"user_id":"alice","body":"hi"}`

	// Only the API key opens the API.
	for _, tc := range []struct{ what, bearer string }{
		{"no Authorization", ""},
		{"a wrong key", apiKey + "x"},
		{"a user's token", mustToken(t, "alice")},
		{"the admin token", admin},
	} {
		status, body := apiDo(t, c, "POST", path, tc.bearer, valid)
		apiWantError(t, "publish with "+tc.what, status, body, http.StatusUnauthorized, "")
		status, body = apiDo(t, c, "DELETE", path+"/01970000-0000-7000-8000-000000000000", tc.bearer, "")
		apiWantError(t, "delete with "+tc.what, status, body, http.StatusUnauthorized, "")
	}

	// Published with no member on the node: the log and the store have it.
	first := apiPublish(t, c, room, "alice", "into an empty room")
	alice := psDial(t, c, "alice")
	bob := psDial(t, c, "bob")
	if got := alice.join(t, topic, map[string]any{"history": 10}).Messages; len(got) != 1 || got[0].ID != first {
		t.Fatalf("join history after an API publish into an empty room: %+v", got)
	}
	bob.join(t, topic, nil)
	second := apiPublish(t, c, room, "dave", "seen live")
	if msgs, ok := bob.waitMessages(topic, 10*time.Second, func(m []psMsg) bool { return apiHas(m, second) }); !ok {
		t.Fatalf("bob never received the API message: %+v", msgs)
	}

	// Refusals, with the stable reasons of a push.
	for _, tc := range []struct {
		what, path, body string
		status           int
		reason           string
	}{
		{"an invalid room", "/api/rooms/bad%20room/messages", valid, 400, ""},
		{"no body", path, `{"user_id":"alice"}`, 400, "invalid payload"},
		{"no user", path, `{"body":"hi"}`, 400, "invalid payload"},
		{"an empty body", path, `{"user_id":"alice","body":""}`, 400, "invalid payload"},
		{"a body that is not a string", path, `{"user_id":"alice","body":5}`, 400, "invalid payload"},
		{"not JSON", path, `hi`, 400, "invalid payload"},
		{"a body too long", path, `{"user_id":"alice","body":"` + strings.Repeat("é", 101) + `"}`, 413, "body too long"},
	} {
		status, body := apiDo(t, c, "POST", tc.path, apiKey, tc.body)
		apiWantError(t, "publish with "+tc.what, status, body, tc.status, tc.reason)
	}
	status, body := apiDo(t, c, "DELETE", path+"/01970000-0000-7000-8000-000000000000", apiKey, "")
	apiWantError(t, "delete of an unknown id", status, body, http.StatusNotFound, "not found")
	status, body = apiDo(t, c, "DELETE", path+"/not-an-id", apiKey, "")
	apiWantError(t, "delete of a malformed id", status, body, http.StatusNotFound, "not found")

	// delete_msg: alice's message, by bob (refused), then by alice.
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	const mineBody = "alice's own"
	r, err := alice.call(ctx, topic, "new_msg", map[string]string{"body": mineBody})
	if err != nil || r.Status != "ok" {
		t.Fatalf("alice's push: %v %s", err, r.Raw)
	}
	mine := r.id()
	bob.waitMessages(topic, 10*time.Second, func(m []psMsg) bool { return apiHas(m, mine) })
	for _, p := range []any{map[string]any{"id": 5}, map[string]any{}, map[string]string{"id": ""}} {
		if r, err := bob.call(ctx, topic, "delete_msg", p); err != nil || r.Status != "error" || r.reason() != "invalid payload" {
			t.Errorf("delete_msg %v: %v %s; want error invalid payload", p, err, r.Raw)
		}
	}
	if r, err := bob.call(ctx, topic, "delete_msg", map[string]string{"id": mine}); err != nil || r.Status != "error" || r.reason() != "unauthorized" {
		t.Fatalf("bob's delete_msg of alice's message: %v %s; want error unauthorized", err, r.Raw)
	}
	if r, err := bob.call(ctx, "room:elsewhere", "delete_msg", map[string]string{"id": mine}); err != nil || r.Status != "error" || r.reason() != "unmatched topic" {
		t.Errorf("delete_msg on a topic not joined: %v %s; want error unmatched topic", err, r.Raw)
	}
	if got := psDial(t, c, "check").join(t, topic, map[string]any{"history": 10}).Messages; !apiHas(got, mine) {
		t.Fatalf("alice's message is gone after bob's refused delete_msg: %+v", got)
	}
	apiNotDeleted(t, alice, mine)
	if r, err := alice.call(ctx, topic, "delete_msg", map[string]string{"id": mine}); err != nil || r.Status != "ok" {
		t.Fatalf("alice's delete_msg of her message: %v %s; want ok", err, r.Raw)
	}
	apiWaitDeleted(t, alice, topic, mine)
	apiWaitDeleted(t, bob, topic, mine)
	apiCheckGone(t, c, room, mine, mineBody, first, second)
	if r, err := alice.call(ctx, topic, "delete_msg", map[string]string{"id": mine}); err != nil || r.Status != "error" || r.reason() != "not found" {
		t.Errorf("delete_msg again: %v %s; want error not found", err, r.Raw)
	}

	// The API deletes anyone's message.
	third := apiPublish(t, c, room, "erin", "kept")
	if status, body := apiDo(t, c, "DELETE", path+"/"+second, apiKey, ""); status != http.StatusNoContent {
		t.Fatalf("API delete: %d %s; want 204", status, body)
	}
	apiWaitDeleted(t, bob, topic, second)
	apiCheckGone(t, c, room, second, "seen live", first, third)
}

// TestAPIOff: with no CHAT_API_KEY the server API answers 404, whatever
// the credential.
func TestAPIOff(t *testing.T) {
	t.Parallel()
	c := startServer(t, map[string]string{"CHAT_DATABASE_URL": filepath.Join(t.TempDir(), "chat.db")})
	for _, bearer := range []string{"", apiKey, mustToken(t, "alice")} {
		status, body := apiDo(t, c, "POST", "/api/rooms/lobby/messages", bearer, `{"user_id":"alice","body":"hi"}`)
		apiWantError(t, "publish with the API off", status, body, http.StatusNotFound, "")
	}
}
