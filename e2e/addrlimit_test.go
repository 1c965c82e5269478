package e2e

// End to end: CHAT_MAX_CONNS_PER_IP across a two-node cluster (real chatd
// processes, one real Redis). Clients connect from distinct loopback source
// addresses (127.0.0.2, 127.0.0.3: any 127.0.0.0/8 address is local on
// Linux), and through a "proxy" on 127.0.0.1 (CHAT_TRUSTED_PROXIES) that
// names the client in X-Forwarded-For.

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/chatd/chatd/internal/testsvc"
)

// alDial attempts a handshake with c as user from source address src, with
// extra headers. An upgraded connection is closed when t ends.
func alDial(t *testing.T, c *testsvc.Chatd, src, user string, header http.Header) dialResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	u := socketURL(c, "vsn", "2.0.0", "token", mintToken(t, testSecret, user))
	conn, resp, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPClient: nxHTTPClient(src), HTTPHeader: header})
	r := dialResult{conn: conn, err: err}
	if resp != nil {
		r.status, r.header = resp.StatusCode, resp.Header
		if resp.Body != nil {
			buf := make([]byte, 1024)
			n, _ := resp.Body.Read(buf)
			r.body = buf[:n]
		}
	}
	if conn != nil {
		t.Cleanup(func() { conn.CloseNow() })
	}
	return r
}

// alUpgraded checks that r upgraded.
func alUpgraded(t *testing.T, what string, r dialResult) *websocket.Conn {
	t.Helper()
	if r.conn == nil || r.status != http.StatusSwitchingProtocols {
		t.Fatalf("%s: status %d (err %v, body %q), want 101", what, r.status, r.err, r.body)
	}
	return r.conn
}

func xff(addr string) http.Header { return http.Header{"X-Forwarded-For": {addr}} }

// TestConnLimitPerAddress: with CHAT_MAX_CONNS_PER_IP=2 on both nodes of a
// cluster, an address holds two connections (one per node) and its third,
// on either node, gets HTTP 429 with a JSON body before the upgrade, while
// another address connects. The users differ (the per-user limit is off):
// the address is what is counted. An X-Forwarded-For from a peer that is
// not a trusted proxy changes nothing; from the trusted proxy (127.0.0.1)
// it names the client, whose connections are counted apart from the
// proxy's other clients. Closing a connection frees its address's slot on
// the other node too.
func TestConnLimitPerAddress(t *testing.T) {
	redis := testsvc.StartRedis(t)
	nodes := clStartCluster(t, redis, 2, map[string]string{
		"CHAT_MAX_CONNS_PER_IP": "2",
		"CHAT_TRUSTED_PROXIES":  "127.0.0.1",
	})
	n1, n2 := nodes[0].Chatd, nodes[1].Chatd

	first := alUpgraded(t, "127.0.0.2's first connection (node1)", alDial(t, n1, "127.0.0.2", "al-a", nil))
	alUpgraded(t, "127.0.0.2's second connection (node2)", alDial(t, n2, "127.0.0.2", "al-b", nil))
	for _, n := range []*testsvc.Chatd{n1, n2} {
		body := wantRefused(t, "127.0.0.2's third connection", alDial(t, n, "127.0.0.2", "al-c", nil), http.StatusTooManyRequests)
		if body["error"] != "too_many_connections" {
			t.Errorf("127.0.0.2's third connection: body %v, want error too_many_connections", body)
		}
		// Its own word about its address is not believed.
		wantRefused(t, "127.0.0.2 claiming another address", alDial(t, n, "127.0.0.2", "al-d", xff("198.51.100.9")), http.StatusTooManyRequests)
	}
	alUpgraded(t, "127.0.0.3's connection", alDial(t, n1, "127.0.0.3", "al-e", nil))

	// Through the trusted proxy: each forwarded client has its own two.
	alUpgraded(t, "client 203.0.113.1 via the proxy (node1)", alDial(t, n1, "127.0.0.1", "al-p1", xff("203.0.113.1")))
	alUpgraded(t, "client 203.0.113.1 via the proxy (node2)", alDial(t, n2, "127.0.0.1", "al-p2", xff("203.0.113.1")))
	wantRefused(t, "client 203.0.113.1's third via the proxy", alDial(t, n2, "127.0.0.1", "al-p3", xff("203.0.113.1")), http.StatusTooManyRequests)
	alUpgraded(t, "client 203.0.113.2 via the proxy", alDial(t, n1, "127.0.0.1", "al-p4", xff("203.0.113.2")))
	// A forged hop left of the proxy's own is ignored: the right-most
	// untrusted address is the client.
	wantRefused(t, "client 203.0.113.1 with a forged first hop", alDial(t, n1, "127.0.0.1", "al-p5", xff("192.0.2.77, 203.0.113.1")), http.StatusTooManyRequests)

	// 127.0.0.2 closes its node1 connection: a slot is free again, on
	// node2 as well.
	if err := first.Close(websocket.StatusNormalClosure, ""); err != nil {
		t.Fatalf("close 127.0.0.2's first connection: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		r := alDial(t, n2, "127.0.0.2", "al-f", nil)
		if r.conn != nil {
			alUpgraded(t, "127.0.0.2 after closing one", r)
			break
		}
		if r.status != http.StatusTooManyRequests || time.Now().After(deadline) {
			t.Fatalf("127.0.0.2 after closing a connection: status %d (err %v, body %q), want 101 within 10s", r.status, r.err, r.body)
		}
		time.Sleep(50 * time.Millisecond)
	}
	wantRefused(t, "127.0.0.2 at its limit again", alDial(t, n1, "127.0.0.2", "al-g", nil), http.StatusTooManyRequests)
}

// TestConnLimitPerAddressSingleNode: without Redis the limit is the node's
// own: an address's second connection is refused with 429, another
// address connects, and a closed connection frees its slot.
func TestConnLimitPerAddressSingleNode(t *testing.T) {
	t.Parallel()
	c := startServer(t, map[string]string{"CHAT_MAX_CONNS_PER_IP": "1", "CHAT_MAX_CONNS_PER_USER": "0"})
	first := alUpgraded(t, "127.0.0.2's connection", alDial(t, c, "127.0.0.2", "sn-a", nil))
	wantRefused(t, "127.0.0.2's second connection", alDial(t, c, "127.0.0.2", "sn-b", nil), http.StatusTooManyRequests)
	alUpgraded(t, "127.0.0.3's connection", alDial(t, c, "127.0.0.3", "sn-a", nil))
	if err := first.Close(websocket.StatusNormalClosure, ""); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		r := alDial(t, c, "127.0.0.2", "sn-c", nil)
		if r.conn != nil {
			break
		}
		if r.status != http.StatusTooManyRequests || time.Now().After(deadline) {
			t.Fatalf("127.0.0.2 after closing its connection: status %d (err %v, body %q), want 101 within 10s", r.status, r.err, r.body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
