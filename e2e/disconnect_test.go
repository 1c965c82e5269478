package e2e

// End-to-end tests of POST /api/users/{user}/disconnect: real chatd
// processes (two cluster nodes relaying through a real Redis, or one node
// alone), real WebSocket clients, the close codes they read and the
// handshakes refused afterwards.

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/chatd/chatd/internal/testsvc"
	"github.com/chatd/chatd/server"
)

// dcAPIKey is the CHAT_API_KEY of the servers these tests start.
const dcAPIKey = "e2e-server-api-key"

// dcAnswer is the answer of the disconnect API.
type dcAnswer struct {
	Closed    int        `json:"closed"`
	Revoked   bool       `json:"revoked"`
	RevokedAt *time.Time `json:"revoked_at"`
	Error     string     `json:"error"`
}

// dcDisconnect calls the disconnect API of c for user and wants a 200.
func dcDisconnect(t *testing.T, c *testsvc.Chatd, user string, revoke bool, reason string) dcAnswer {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"revoke": revoke, "reason": reason})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.URL()+"/api/users/"+user+"/disconnect", strings.NewReader(string(body)))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+dcAPIKey)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("disconnect %s: %v", user, err)
	}
	defer resp.Body.Close()
	var a dcAnswer
	if err := json.NewDecoder(resp.Body).Decode(&a); err != nil {
		t.Fatalf("disconnect %s: HTTP %d, body not JSON: %v", user, resp.StatusCode, err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("disconnect %s: HTTP %d %+v, want 200", user, resp.StatusCode, a)
	}
	return a
}

// dcWantClose waits for c's connection to end with code.
func dcWantClose(t *testing.T, what string, c *psClient, code websocket.StatusCode) {
	t.Helper()
	got, err := clCloseStatus(c, 10*time.Second)
	if got != code {
		t.Fatalf("%s: connection ended with status %d (%v), want %d", what, got, err, code)
	}
}

// dcStillServed checks that c's connection is open and served: a push to
// its joined topic is accepted.
func dcStillServed(t *testing.T, what string, c *psClient, topic string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := c.call(ctx, topic, "new_msg", map[string]string{"body": "still here"})
	if err != nil || r.Status != "ok" {
		t.Fatalf("%s: push after another user's disconnect: %v %s", what, err, r.Raw)
	}
}

// dcScenario runs the disconnect API's checks against api (the node the
// API is called on) and other (another node of its cluster, or api itself
// on a single node). The user names start with prefix.
func dcScenario(t *testing.T, api, other *testsvc.Chatd, prefix string) {
	const topic = "room:dc-lobby"
	alice, carol, bob := prefix+"alice", prefix+"carol", prefix+"bob"
	aliceHere, aliceThere := psDial(t, api, alice), psDial(t, other, alice)
	carolThere := psDial(t, other, carol)
	bobThere, bobHere := psDial(t, other, bob), psDial(t, api, bob)
	for _, c := range []*psClient{aliceHere, aliceThere, carolThere, bobThere, bobHere} {
		c.join(t, topic, nil)
	}

	// Without revoke: carol is closed with 4001 and her token still works.
	// The API's node counts the sockets it closed itself: carol's one is
	// on the other node, unless there is one node.
	wantClosed := 0
	if api == other {
		wantClosed = 1
	}
	if a := dcDisconnect(t, api, carol, false, "please reconnect"); a.Closed != wantClosed || a.Revoked {
		t.Errorf("disconnect of carol: %+v, want %d closed, not revoked", a, wantClosed)
	}
	dcWantClose(t, "carol's socket", carolThere, 4001)
	carolTok, _ := psToken(carol)
	for _, n := range []*testsvc.Chatd{api, other} {
		if r := dial(t, socketURL(n, "vsn", "2.0.0", "token", carolTok), nil); r.conn == nil {
			t.Fatalf("carol's token after a disconnect without revoke: HTTP %d %s", r.status, r.body)
		}
	}

	// With revoke: alice is closed on both nodes with 4003.
	a := dcDisconnect(t, api, alice, true, "banned")
	if !a.Revoked || a.RevokedAt == nil {
		t.Fatalf("disconnect of alice with revoke: %+v", a)
	}
	dcWantClose(t, "alice's socket on the API's node", aliceHere, 4003)
	dcWantClose(t, "alice's socket on the other node", aliceThere, 4003)
	if want := 1 + wantClosed; a.Closed != want {
		t.Errorf("the API's node reports %d closed, want %d", a.Closed, want)
	}
	// Her old token is refused, with 401 and a JSON body, on every node.
	oldTok, _ := psToken(alice)
	for _, n := range []*testsvc.Chatd{api, other} {
		body := wantRefused(t, "alice's revoked token", dial(t, socketURL(n, "vsn", "2.0.0", "token", oldTok), nil), http.StatusUnauthorized)
		if r, _ := body["reason"].(string); !strings.Contains(r, "revoked") {
			t.Errorf("refusal of a revoked token: %v", body)
		}
	}
	// A token minted after the revocation's second works on every node.
	time.Sleep(time.Until(a.RevokedAt.Add(time.Second)))
	newTok, err := server.MintToken([]byte(testSecret), alice, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []*testsvc.Chatd{api, other} {
		if r := dial(t, socketURL(n, "vsn", "2.0.0", "token", newTok), nil); r.conn == nil {
			t.Fatalf("alice's token minted after the revocation: HTTP %d %s", r.status, r.body)
		}
	}

	// Bob was never touched.
	dcStillServed(t, "bob on the other node", bobThere, topic)
	dcStillServed(t, "bob on the API's node", bobHere, topic)
}

// TestClusterDisconnectRevoke: two nodes, one Redis. The API, called on
// node1, closes the user's sockets on node1 and node2; with revoke the old
// token is refused on both nodes while a newer one works; without revoke
// the same token reconnects; another user's sockets stay open.
func TestClusterDisconnectRevoke(t *testing.T) {
	redis := testsvc.StartRedis(t)
	nodes := clStartCluster(t, redis, 2, map[string]string{"CHAT_API_KEY": dcAPIKey})
	dcScenario(t, nodes[0].Chatd, nodes[1].Chatd, "cl-")
}

// TestSingleNodeDisconnectRevoke: the same on one node without Redis
// (in-memory revocations and relay).
func TestSingleNodeDisconnectRevoke(t *testing.T) {
	c := startServer(t, map[string]string{"CHAT_API_KEY": dcAPIKey})
	dcScenario(t, c, c, "one-")
}
