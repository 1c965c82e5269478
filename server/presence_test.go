package server

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/chatd/chatd/chat"
)

type metas struct {
	Metas []chat.PresenceMeta `json:"metas"`
}

// nextPresence returns the next presence frame of c, reading on if needed.
func (c *client) nextPresence() chat.Frame {
	c.tb.Helper()
	for len(c.presence) == 0 {
		f := c.readAny()
		if f.Event == chat.EventPresenceState || f.Event == chat.EventPresenceDiff {
			c.presence = append(c.presence, f)
		} else {
			c.pending = append(c.pending, f)
		}
	}
	f := c.presence[0]
	c.presence = c.presence[1:]
	return f
}

func TestPresenceStateAndDiffs(t *testing.T) {
	s := startServer(t, chat.Config{NodeName: "n1", PresenceInterval: 20 * time.Millisecond}, nil)
	alice := s.dial(t, "alice")
	aj := alice.join("lobby")
	f := alice.nextPresence()
	if f.Event != "presence_state" || f.JoinRef != aj {
		t.Fatalf("first presence frame %+v", f)
	}
	var state map[string]metas
	json.Unmarshal(f.Payload, &state)
	if len(state) != 1 || len(state["alice"].Metas) != 1 || state["alice"].Metas[0].Node != "n1" || state["alice"].Metas[0].PhxRef == "" {
		t.Fatalf("state %s", f.Payload)
	}
	// Alice's own join comes as a diff too.
	if f = alice.nextPresence(); f.Event != "presence_diff" {
		t.Fatalf("want alice's join diff, got %+v", f)
	}

	// Bob with two tabs is one key with two metas. A join's presence is
	// recorded after its reply, before its presence_state is sent: once
	// bob1 has its presence_state, bob2's join sees bob1.
	bob1, bob2 := s.dial(t, "bob"), s.dial(t, "bob")
	bob1.join("lobby")
	if f = bob1.nextPresence(); f.Event != "presence_state" {
		t.Fatalf("bob1's first presence frame %+v", f)
	}
	bob2.join("lobby")
	joined := map[string]int{}
	for joined["bob"] < 2 {
		f = alice.nextPresence()
		var d struct{ Joins, Leaves map[string]metas }
		json.Unmarshal(f.Payload, &d)
		for u, m := range d.Joins {
			joined[u] += len(m.Metas)
		}
	}
	f = bob2.nextPresence()
	json.Unmarshal(f.Payload, &state)
	if len(state["bob"].Metas) != 2 || len(state["alice"].Metas) != 1 {
		t.Fatalf("bob's second tab sees state %s", f.Payload)
	}

	// The presence API agrees.
	status, api := s.presenceAPI(t, "lobby", "")
	if status != 200 || len(api.Presences["bob"].Metas) != 2 || len(api.Presences["alice"].Metas) != 1 || api.Users != 2 || api.Truncated {
		t.Fatalf("presence API: %d %+v", status, api)
	}

	// One tab closing leaves one meta; the other closing removes bob.
	bob1.conn.CloseNow()
	left := 0
	for left < 1 {
		f = alice.nextPresence()
		var d struct{ Joins, Leaves map[string]metas }
		json.Unmarshal(f.Payload, &d)
		left += len(d.Leaves["bob"].Metas)
	}
	ref := bob2.send(bob2.channelRef("lobby"), "room:lobby", "phx_leave", map[string]any{})
	_ = ref
	for left < 2 {
		f = alice.nextPresence()
		var d struct{ Joins, Leaves map[string]metas }
		json.Unmarshal(f.Payload, &d)
		left += len(d.Leaves["bob"].Metas)
	}
	st, _ := s.hub.PresenceState(t.Context(), "lobby")
	if len(st) != 1 || st["alice"] == nil {
		t.Fatalf("presence after bob left: %v", st)
	}
}

func TestPresenceDiffsAreBatched(t *testing.T) {
	s := startServer(t, chat.Config{PresenceInterval: 300 * time.Millisecond}, nil)
	watcher := s.dial(t, "watcher")
	watcher.join("mass")
	watcher.nextPresence() // state
	watcher.nextPresence() // its own join
	const n = 30
	for i := 0; i < n; i++ {
		c := s.dial(t, fmt.Sprint("u", i))
		c.join("mass")
	}
	joins, diffs := 0, 0
	for joins < n {
		f := watcher.nextPresence()
		var d struct{ Joins map[string]metas }
		json.Unmarshal(f.Payload, &d)
		joins += len(d.Joins)
		diffs++
	}
	if diffs > n/3 {
		t.Fatalf("%d joins came in %d diffs: not batched", n, diffs)
	}
	t.Logf("%d joins in %d diffs", n, diffs)
}

// presenceBody is the answer of GET /api/rooms/{room}/presence.
type presenceBody struct {
	Presences map[string]metas `json:"presences"`
	Users     int              `json:"users"`
	Truncated bool             `json:"truncated"`
}

// presenceAPI asks the presence API about room, with query ("?limit=..."
// or empty), as a user.
func (s *testServer) presenceAPI(tb testing.TB, room, query string) (int, presenceBody) {
	tb.Helper()
	req, _ := http.NewRequest("GET", s.ts.URL+"/api/rooms/"+room+"/presence"+query, nil)
	req.Header.Set("Authorization", "Bearer "+mint(tb, "carol"))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	var api presenceBody
	json.NewDecoder(resp.Body).Decode(&api)
	return resp.StatusCode, api
}
