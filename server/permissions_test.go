package server

import (
	"context"
	"encoding/base64"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"

	"github.com/chatd/chatd/chat"
)

// signClaims signs claims with testSecret, so that tests can build tokens
// MintRoomsToken refuses to. Map claims without exp or iat get an hour's
// lifetime from now.
func signClaims(tb testing.TB, claims jwt.Claims) string {
	tb.Helper()
	if m, ok := claims.(jwt.MapClaims); ok {
		if _, ok := m["exp"]; !ok {
			m["exp"] = time.Now().Add(time.Hour).Unix()
		}
		if _, ok := m["iat"]; !ok {
			m["iat"] = time.Now().Unix()
		}
	}
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(testSecret)
	if err != nil {
		tb.Fatal(err)
	}
	return tok
}

func TestVerifyTokenRoomClaims(t *testing.T) {
	for _, tc := range []struct {
		name            string
		claims          jwt.MapClaims
		ok              bool
		rooms, readRoom []string
	}{
		{"no claims", jwt.MapClaims{"sub": "u"}, true, nil, nil},
		{"rooms", jwt.MapClaims{"sub": "u", "rooms": []any{"team-42-*", "dm.alice.bob"}}, true, []string{"team-42-*", "dm.alice.bob"}, nil},
		{"read_rooms", jwt.MapClaims{"sub": "u", "read_rooms": []any{"news"}}, true, nil, []string{"news"}},
		{"both", jwt.MapClaims{"sub": "u", "rooms": []any{"*"}, "read_rooms": []any{"news"}}, true, []string{"*"}, []string{"news"}},
		{"empty arrays", jwt.MapClaims{"sub": "u", "rooms": []any{}, "read_rooms": []any{}}, true, nil, nil},
		{"null", jwt.MapClaims{"sub": "u", "rooms": nil}, true, nil, nil},
		{"rooms a string", jwt.MapClaims{"sub": "u", "rooms": "lobby"}, false, nil, nil},
		{"rooms of numbers", jwt.MapClaims{"sub": "u", "rooms": []any{1}}, false, nil, nil},
		{"rooms an object", jwt.MapClaims{"sub": "u", "rooms": map[string]any{"lobby": true}}, false, nil, nil},
		{"bad pattern", jwt.MapClaims{"sub": "u", "rooms": []any{"team-*-x"}}, false, nil, nil},
		{"empty pattern", jwt.MapClaims{"sub": "u", "rooms": []any{""}}, false, nil, nil},
		{"topic not name", jwt.MapClaims{"sub": "u", "read_rooms": []any{"room:lobby"}}, false, nil, nil},
		{"bad read pattern", jwt.MapClaims{"sub": "u", "read_rooms": []any{"a b"}}, false, nil, nil},
		{"no sub", jwt.MapClaims{"rooms": []any{"lobby"}}, false, nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tok, err := VerifyToken(testSecret, signClaims(t, tc.claims))
			if (err == nil) != tc.ok {
				t.Fatalf("VerifyToken: %+v, %v; want ok %v", tok, err, tc.ok)
			}
			if !tc.ok {
				return
			}
			if tok.UserID != "u" || !samePatterns(tok.Rooms, tc.rooms) || !samePatterns(tok.ReadRooms, tc.readRoom) {
				t.Fatalf("VerifyToken = %+v, want rooms %v read_rooms %v", tok, tc.rooms, tc.readRoom)
			}
		})
	}
}

func samePatterns(ps chat.Patterns, want []string) bool {
	if len(ps) != len(want) {
		return false
	}
	for i := range ps {
		if string(ps[i]) != want[i] {
			return false
		}
	}
	return true
}

func TestMintRoomsToken(t *testing.T) {
	raw, err := MintRoomsToken(testSecret, "alice", time.Minute, []string{"team-42-*"}, []string{"news"})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := VerifyToken(testSecret, raw)
	if err != nil || tok.UserID != "alice" || !samePatterns(tok.Rooms, []string{"team-42-*"}) || !samePatterns(tok.ReadRooms, []string{"news"}) {
		t.Fatalf("VerifyToken = %+v, %v", tok, err)
	}
	if _, err := MintRoomsToken(testSecret, "alice", time.Minute, []string{"bad room"}, nil); err == nil {
		t.Fatal("minted a token with an invalid pattern")
	}
	g := tok.Grants(chat.Patterns{"lobby"})
	if !g.CanPost("lobby") || !g.CanPost("team-42-x") || g.CanPost("news") || !g.CanJoin("news") || g.CanJoin("other") {
		t.Fatalf("grants %+v", g)
	}
}

// FuzzVerifyTokenClaims signs arbitrary rooms claims: a token is accepted
// exactly when every pattern is one ParsePattern accepts, and never grants
// a room none of them matches.
func FuzzVerifyTokenClaims(f *testing.F) {
	f.Add("lobby", "team-*", "news")
	f.Add("*", "", "a b")
	f.Add("team-*-x", "room:lobby", "**")
	f.Fuzz(func(t *testing.T, a, b, read string) {
		tok, err := VerifyToken(testSecret, signClaims(t, jwt.MapClaims{"sub": "u", "rooms": []any{a, b}, "read_rooms": []any{read}}))
		valid := true
		for _, s := range []string{a, b, read} {
			if _, perr := chat.ParsePattern(s); perr != nil {
				valid = false
			}
		}
		if (err == nil) != valid {
			t.Fatalf("rooms %q %q read %q: err %v, patterns valid %v", a, b, read, err, valid)
		}
		if err == nil && tok.Grants(nil).CanJoin("zz-no-such-room") != (chat.Patterns{chat.Pattern(a), chat.Pattern(b), chat.Pattern(read)}).Match("zz-no-such-room") {
			t.Fatalf("grants of %+v disagree with its patterns", tok)
		}
	})
}

// dialToken dials s with a raw token (no minting).
func (s *testServer) dialToken(tb testing.TB, user, token string) *client {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, resp, err := websocket.Dial(ctx, s.wsURL(token), nil)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		tb.Fatalf("dial as %s: %v (HTTP %d)", user, err, status)
	}
	tb.Cleanup(func() { conn.CloseNow() })
	return &client{tb: tb, conn: conn, user: user}
}

func (c *client) joinRefused(room, reason string) {
	c.tb.Helper()
	ref := c.send("9"+c.user, "room:"+room, chat.EventJoin, map[string]any{})
	c.expectError("room:"+room, ref, reason)
}

func TestSocketRoomPermissions(t *testing.T) {
	s := startServer(t, chat.Config{}, func(c *Config, _ *Options) { c.PublicRooms = []string{"lobby"} })
	mintRooms := func(user string, rooms, read []string) string {
		tok, err := MintRoomsToken(testSecret, user, time.Hour, rooms, read)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	editor := s.dialToken(t, "editor", mintRooms("editor", []string{"news", "team-42-*"}, nil))
	reader := s.dialToken(t, "reader", mintRooms("reader", nil, []string{"news"}))
	plain := s.dial(t, "plain")

	// Public rooms: any token.
	pj := plain.join("lobby")
	plain.push(pj, "lobby", "hi")
	plain.expectMsg("lobby")
	plain.joinRefused("news", "unauthorized")
	plain.joinRefused("team-42-general", "unauthorized")

	// A prefix pattern opens every room it matches, and no other.
	tj := editor.join("team-42-general")
	editor.push(tj, "team-42-general", "in the team")
	editor.expectMsg("team-42-general")
	editor.joinRefused("team-43-general", "unauthorized")

	// A reader joins and receives, but its push is refused and never
	// broadcast: the editor's next message is the next frame both see.
	ej := editor.join("news")
	rj := reader.join("news")
	ref := reader.send(rj, "room:news", chat.EventNewMsg, map[string]string{"body": "not allowed"})
	reader.expectError("room:news", ref, "unauthorized")
	editor.push(ej, "news", "headline")
	for _, c := range []*client{editor, reader} {
		if m := c.expectMsg("news"); m.Body != "headline" || m.UserID != "editor" {
			t.Fatalf("%s: next message %+v, want the editor's headline", c.user, m)
		}
	}
	if got := s.hub.Stats().Refused["unauthorized"]; got != 1 {
		t.Errorf("refused[unauthorized] = %d, want 1", got)
	}
	reader.joinRefused("lobby2", "unauthorized")
	// The refusals did not end the connection.
	reader.heartbeat()
}

func TestSocketRefusesMalformedRoomClaims(t *testing.T) {
	s := startServer(t, chat.Config{}, nil)
	for _, claims := range []jwt.MapClaims{
		{"sub": "u", "rooms": "lobby"},
		{"sub": "u", "rooms": []any{"lob by"}},
		{"sub": "u", "read_rooms": []any{"*x"}},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		conn, resp, err := websocket.Dial(ctx, s.wsURL(signClaims(t, claims)), nil)
		cancel()
		if err == nil {
			conn.CloseNow()
			t.Fatalf("claims %v: upgraded", claims)
		}
		if resp == nil || resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("claims %v: %v, want HTTP 401", claims, err)
		}
	}
}

func TestNewRefusesBadPublicRooms(t *testing.T) {
	hub, err := chat.NewHub(chat.Config{}, chat.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(Config{PublicRooms: []string{"lobby", "team-*-x"}}, Options{Hub: hub}); err == nil || !strings.Contains(err.Error(), "team-*-x") {
		t.Fatalf("New with a bad public room pattern: %v", err)
	}
}

func TestNoPublicRooms(t *testing.T) {
	s := startServer(t, chat.Config{}, func(c *Config, _ *Options) { c.PublicRooms = []string{} })
	c := s.dial(t, "alice")
	c.joinRefused("lobby", "unauthorized")
}

// authTokenProtocols are the subprotocols the phoenix client's authToken
// option sends.
func authTokenProtocols(token string) []string {
	return []string{"phoenix", "base64url.bearer.phx." + base64.RawURLEncoding.EncodeToString([]byte(token))}
}

func TestSocketAuthTokenSubprotocol(t *testing.T) {
	s := startServer(t, chat.Config{}, nil)
	noToken := strings.Replace(s.wsURL(""), "&token=", "", 1)
	dialWith := func(rawURL string, protocols []string) (*websocket.Conn, *http.Response, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		conn, resp, err := websocket.Dial(ctx, rawURL, &websocket.DialOptions{Subprotocols: protocols})
		if conn != nil {
			t.Cleanup(func() { conn.CloseNow() })
		}
		return conn, resp, err
	}

	conn, _, err := dialWith(noToken, authTokenProtocols(mint(t, "alice")))
	if err != nil {
		t.Fatalf("dial with authToken: %v", err)
	}
	if conn.Subprotocol() != "phoenix" {
		t.Fatalf("selected subprotocol %q, want phoenix", conn.Subprotocol())
	}
	c := &client{tb: t, conn: conn, user: "alice"}
	j := c.join("lobby")
	c.push(j, "lobby", "via authToken")
	if m := c.expectMsg("lobby"); m.UserID != "alice" {
		t.Fatalf("message from %q, want alice", m.UserID)
	}

	// The query token still works, and wins; phoenix is still selected.
	conn, _, err = dialWith(s.wsURL(mint(t, "bob")), []string{"phoenix"})
	if err != nil || conn.Subprotocol() != "phoenix" {
		t.Fatalf("dial with ?token= and phoenix: %v, subprotocol %q", err, conn.Subprotocol())
	}

	for name, protocols := range map[string][]string{
		"no token":       {"phoenix"},
		"bad signature":  authTokenProtocols(strings.TrimSuffix(mint(t, "eve"), "A") + "B"),
		"not base64":     {"phoenix", "base64url.bearer.phx.!!!"},
		"no subprotocol": nil,
	} {
		_, resp, err := dialWith(noToken, protocols)
		if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s: %v, want HTTP 401", name, err)
		}
	}
}
