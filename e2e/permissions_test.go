package e2e

// Rooms and permissions end to end: CHAT_PUBLIC_ROOMS and the tokens'
// rooms / read_rooms claims (minted by `chatd token --room --read-room`),
// seen by the official phoenix client, the REST API and the web page.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
	"github.com/golang-jwt/jwt/v5"
)

// permToken mints a token with `chatd token` and extra args.
func permToken(t *testing.T, user string, args ...string) string {
	t.Helper()
	tok, err := cliToken(t, map[string]string{"CHAT_JWT_SECRET": testSecret}, append([]string{"--user", user}, args...)...)
	if err != nil || tok == "" {
		t.Fatalf("chatd token --user %s %v: %v", user, args, err)
	}
	return tok
}

type jsReply struct {
	Status   string `json:"status"`
	Response struct {
		Reason string `json:"reason"`
		ID     string `json:"id"`
	} `json:"response"`
}

type roomsSummary struct {
	OK                  bool        `json:"ok"`
	Error               string      `json:"error"`
	Steps               []string    `json:"steps"`
	WriterURLHasToken   bool        `json:"writer_url_has_token"`
	WriterProtocol      string      `json:"writer_protocol"`
	WriterJoin          jsReply     `json:"writer_join"`
	ReaderJoin          jsReply     `json:"reader_join"`
	OutsiderJoin        jsReply     `json:"outsider_join"`
	ReaderPush          jsReply     `json:"reader_push"`
	WriterPush          jsReply     `json:"writer_push"`
	WriterOtherTeamJoin jsReply     `json:"writer_other_team_join"`
	OutsiderLobbyJoin   jsReply     `json:"outsider_lobby_join"`
	WriterSeen          []compatMsg `json:"writer_seen"`
	ReaderSeen          []compatMsg `json:"reader_seen"`
}

// TestPhoenixJSRoomPermissions: with the official phoenix client (js/
// rooms.mjs) against a chatd whose only public room is lobby, a token with
// rooms ["team-42-*"], connected with the client's authToken option, joins
// and posts in team-42-news; a read_rooms token joins it and receives, but
// its push gets unauthorized and no one receives it; a token without
// claims is refused the join with {"reason": "unauthorized"} and joins
// lobby; the pattern opens no other team's room.
func TestPhoenixJSRoomPermissions(t *testing.T) {
	t.Parallel()
	node := nodeAndPackages(t)
	c := startServer(t, map[string]string{"CHAT_PUBLIC_ROOMS": "lobby"})
	writer := permToken(t, "writer", "--room", "team-42-*")
	reader := permToken(t, "reader", "--read-room", "team-42-news")
	outsider := permToken(t, "outsider")

	var s roomsSummary
	runNodeScript(t, node, jsDir, 45*time.Second, &s, "rooms.mjs",
		"--url", c.URL(), "--writer", writer, "--reader", reader, "--outsider", outsider)
	t.Logf("rooms.mjs steps: %s", strings.Join(s.Steps, "; "))
	if !s.OK {
		t.Fatalf("rooms.mjs reports ok=false: %s", s.Error)
	}
	if s.WriterURLHasToken || s.WriterProtocol != "phoenix" {
		t.Errorf("authToken socket: token in URL %v, selected subprotocol %q; want no token in the URL and phoenix", s.WriterURLHasToken, s.WriterProtocol)
	}
	if s.WriterJoin.Status != "ok" || s.ReaderJoin.Status != "ok" {
		t.Fatalf("joins of team-42-news: writer %+v, reader %+v; want ok", s.WriterJoin, s.ReaderJoin)
	}
	unauthorized := func(what string, r jsReply) {
		t.Helper()
		if r.Status != "error" || r.Response.Reason != "unauthorized" {
			t.Errorf("%s: %+v, want error with reason unauthorized", what, r)
		}
	}
	unauthorized("outsider's join of team-42-news", s.OutsiderJoin)
	unauthorized("reader's push", s.ReaderPush)
	unauthorized("writer's join of team-43-news", s.WriterOtherTeamJoin)
	if s.OutsiderLobbyJoin.Status != "ok" {
		t.Errorf("outsider's join of the public lobby: %+v, want ok", s.OutsiderLobbyJoin)
	}
	if s.WriterPush.Status != "ok" || s.WriterPush.Response.ID == "" {
		t.Fatalf("writer's push: %+v, want ok with an id", s.WriterPush)
	}
	for name, seen := range map[string][]compatMsg{"writer": s.WriterSeen, "reader": s.ReaderSeen} {
		if len(seen) != 1 || seen[0].ID != s.WriterPush.Response.ID || seen[0].UserID != "writer" || seen[0].Body != "from the writer" {
			t.Errorf("%s received %+v, want only the writer's message %s", name, seen, s.WriterPush.Response.ID)
		}
	}

	// The refused push was not stored either.
	st, _, body := httpGetAuth(t, c.URL()+"/api/rooms/team-42-news/messages", writer)
	var page psHistoryPage
	if err := json.Unmarshal(body, &page); st != http.StatusOK || err != nil {
		t.Fatalf("history: %d %s", st, body)
	}
	for _, m := range page.Messages {
		if m.UserID == "reader" {
			t.Errorf("the reader's refused push is in the history: %+v", m)
		}
	}
}

// httpGetAuth GETs rawURL with a bearer token.
func httpGetAuth(t *testing.T, rawURL, token string) (int, http.Header, []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", rawURL, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: read body: %v", rawURL, err)
	}
	return resp.StatusCode, resp.Header, b
}

// TestRESTRoomPermissions: the history and presence of a room a token may
// not read answer 403 with the JSON error body; a read_rooms or rooms
// token, and any token for a public room, reads them; a token with a
// malformed rooms claim is refused with 401, on the socket too.
func TestRESTRoomPermissions(t *testing.T) {
	t.Parallel()
	c := startServer(t, map[string]string{"CHAT_PUBLIC_ROOMS": "lobby,help-*"})
	plain := permToken(t, "plain")
	reader := permToken(t, "reader", "--read-room", "news")
	dm := permToken(t, "alice", "--room", "dm.alice.bob")
	for _, tc := range []struct {
		who, token, room string
		want             int
	}{
		{"plain", plain, "lobby", http.StatusOK},
		{"plain", plain, "help-desk", http.StatusOK},
		{"plain", plain, "news", http.StatusForbidden},
		{"plain", plain, "dm.alice.bob", http.StatusForbidden},
		{"reader", reader, "news", http.StatusOK},
		{"reader", reader, "news2", http.StatusForbidden},
		{"alice", dm, "dm.alice.bob", http.StatusOK},
		{"alice", dm, "dm.alice.carol", http.StatusForbidden},
	} {
		for _, api := range []string{"messages", "presence"} {
			u := c.URL() + "/api/rooms/" + tc.room + "/" + api
			st, h, body := httpGetAuth(t, u, tc.token)
			if st != tc.want {
				t.Errorf("%s: GET %s: %d %s, want %d", tc.who, u, st, body, tc.want)
				continue
			}
			if st == http.StatusForbidden {
				if obj := wantJSONError(t, u, h, body); obj["error"] != "forbidden" {
					t.Errorf("%s: GET %s: error %v, want forbidden", tc.who, u, obj["error"])
				}
			}
		}
	}

	bad, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": "mallory", "exp": time.Now().Add(time.Hour).Unix(), "rooms": "lobby",
	}).SignedString([]byte(testSecret))
	if err != nil {
		t.Fatal(err)
	}
	st, h, body := httpGetAuth(t, c.URL()+"/api/rooms/lobby/messages", bad)
	if st != http.StatusUnauthorized {
		t.Errorf("malformed rooms claim: history %d %s, want 401", st, body)
	} else {
		wantJSONError(t, "malformed claim", h, body)
	}
	wantRefused(t, "socket with a malformed rooms claim", dial(t, socketURL(c, "vsn", "2.0.0", "token", bad), nil), http.StatusUnauthorized)
}

// TestWebRoomPermissions: the web page, which connects with authToken (no
// token in the WebSocket URL), shows a refused join's reason in
// [data-role=error] and drops the room, and shows a refused push in a
// room its token may only read, giving the text back.
func TestWebRoomPermissions(t *testing.T) {
	c := startServer(t, map[string]string{"CHAT_PUBLIC_ROOMS": "lobby", "CHAT_USER_RATE": "0"})
	b := webBrowser(t)
	tok := permToken(t, "alice", "--read-room", "news")

	ctx, cancel := chromedp.NewContext(b)
	t.Cleanup(cancel)
	var mu sync.Mutex
	var wsURLs []string
	if err := chromedp.Listen(ctx, func(ev any) {
		if e, ok := ev.(*network.EventWebSocketCreated); ok {
			mu.Lock()
			wsURLs = append(wsURLs, e.URL)
			mu.Unlock()
		}
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := chromedp.Call(ctx, network.Enable, network.EnableParams{}); err != nil {
		t.Fatalf("enable network domain: %v", err)
	}
	p := &webPage{t: t, name: "alice", ctx: ctx, close: cancel}
	if err := chromedp.Do(ctx, chromedp.EmulateViewport(1200, 800), chromedp.Navigate(c.URL()+"/?room=lobby#token="+tok)); err != nil {
		t.Fatalf("open the page: %v", err)
	}
	p.waitReady()
	mu.Lock()
	urls := append([]string(nil), wsURLs...)
	mu.Unlock()
	if len(urls) == 0 {
		t.Errorf("no WebSocket seen by the browser")
	}
	for _, u := range urls {
		if strings.Contains(u, "token=") {
			t.Errorf("the page's WebSocket URL carries the token: %s", u)
		}
	}

	joinForm := func(room string) {
		t.Helper()
		if err := chromedp.Do(ctx, chromedp.SendKeys(chromedp.CSS(`[data-role=join-form] input[name=room]`), room+kb.Enter)); err != nil {
			t.Fatalf("join %s: %v", room, err)
		}
	}
	joinForm("secret")
	p.waitJS("the refusal is shown", `!document.querySelector("[data-role=error]").hidden &&
		document.querySelector("[data-role=error]").textContent.includes("Could not join #secret") &&
		document.querySelector("[data-role=error]").textContent.includes("does not allow")`)
	p.waitJS("the refused room is dropped", `!document.querySelector("[data-role=rooms] [data-room=secret]")`)

	joinForm("news")
	p.waitJS("news joined", `document.querySelector("[data-role=messages]").dataset.room === "news" &&
		document.querySelector("[data-role=composer]").dataset.ready === "true"`)
	const body = "readers cannot post"
	p.send(body)
	p.waitJS("the refused push is shown", `document.querySelector("[data-role=error]").textContent.includes("does not allow") &&
		document.querySelector("input[name=body]").value === `+fmt.Sprintf("%q", body))
	if ms := p.messages(); len(ms) != 0 {
		t.Errorf("messages shown after a refused push: %+v", ms)
	}
}
