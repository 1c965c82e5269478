package server

import (
	"encoding/json"
	"fmt"
	"sync"
	"testing"

	"github.com/coder/websocket"

	"github.com/chatd/chatd/chat"
)

type joinResp struct {
	Messages  []chat.Message `json:"messages"`
	Recovered *bool          `json:"recovered"`
}

// joinWith joins room with payload and returns the join_ref and response.
func (c *client) joinWith(room string, payload any) (string, joinResp) {
	c.tb.Helper()
	c.ref++
	joinRef := fmt.Sprint(c.ref)
	p, _ := json.Marshal(payload)
	c.sendRaw(websocket.MessageText, chat.AppendFrame(nil, joinRef, joinRef, "room:"+room, chat.EventJoin, p))
	r := c.expectReply("room:"+room, joinRef, "ok")
	var resp joinResp
	if err := json.Unmarshal(r.Response, &resp); err != nil {
		c.tb.Fatal(err)
	}
	return joinRef, resp
}

func ids(msgs []chat.Message) []string {
	out := make([]string, len(msgs))
	for i, m := range msgs {
		out[i] = m.ID
	}
	return out
}

func TestJoinHistoryAndSinceFromRecentMessages(t *testing.T) {
	s := startServer(t, chat.Config{}, nil)
	alice := s.dial(t, "alice")
	aj := alice.join("lobby")
	var sent []string
	for i := 0; i < 5; i++ {
		sent = append(sent, alice.push(aj, "lobby", fmt.Sprint("m", i)))
		alice.expectMsg("lobby")
	}

	bob := s.dial(t, "bob")
	_, resp := bob.joinWith("lobby", map[string]any{"history": 3})
	if got := ids(resp.Messages); fmt.Sprint(got) != fmt.Sprint(sent[2:]) {
		t.Fatalf("history 3 = %v, want %v", got, sent[2:])
	}
	if resp.Recovered != nil {
		t.Fatal("recovered reported without since")
	}
	if resp.Messages[0].Body != "m2" || resp.Messages[0].UserID != "alice" || resp.Messages[0].Room != "lobby" {
		t.Fatalf("history message %+v", resp.Messages[0])
	}

	carol := s.dial(t, "carol")
	_, resp = carol.joinWith("lobby", map[string]any{"since": sent[1]})
	carol = s.dial(t, "carol")
	if got := ids(resp.Messages); fmt.Sprint(got) != fmt.Sprint(sent[2:]) || resp.Recovered == nil || !*resp.Recovered {
		t.Fatalf("since %s = %v recovered %v, want %v", sent[1], got, resp.Recovered, sent[2:])
	}
	_, resp = carol.joinWith("other", map[string]any{"since": sent[1]})
	if len(resp.Messages) != 0 || resp.Recovered == nil || *resp.Recovered {
		t.Fatalf("since an id of another room: %+v", resp)
	}
	carol = s.dial(t, "carol")
	_, resp = carol.joinWith("lobby", map[string]any{"since": "01234567-89ab-7def-8123-456789abcdef"})
	if resp.Recovered == nil || *resp.Recovered {
		t.Fatalf("since an unknown id: recovered %v", resp.Recovered)
	}
	// The latest id: nothing missed.
	carol = s.dial(t, "carol")
	_, resp = carol.joinWith("lobby", map[string]any{"since": sent[4]})
	if len(resp.Messages) != 0 || !*resp.Recovered {
		t.Fatalf("since the last id: %+v", resp)
	}
}

// TestSinceJoinDuringTrafficHasNoGapOrDuplicate joins with "since" while
// messages keep flowing: the reply's messages followed by the live ones
// must be exactly the room's messages after the since id.
func TestSinceJoinDuringTrafficHasNoGapOrDuplicate(t *testing.T) {
	s := startServer(t, chat.Config{}, nil)
	sender, watcher := s.dial(t, "sender"), s.dial(t, "watcher")
	sj := sender.join("busy")
	watcher.join("busy")
	first := sender.push(sj, "busy", "first")

	const n = 150 // within what a room remembers, as no store is configured
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < n; i++ {
			sender.push(sj, "busy", fmt.Sprint(i))
			sender.pending = sender.pending[:0]
		}
	}()
	var all []string // every message, as a member from the start saw them
	for len(all) < n/3 {
		all = append(all, watcher.expectMsg("busy").ID)
	}
	// Join in the middle of the traffic.
	joiner := s.dial(t, "joiner")
	_, resp := joiner.joinWith("busy", map[string]any{"since": first})
	if resp.Recovered == nil || !*resp.Recovered {
		t.Fatalf("not recovered")
	}
	got := ids(resp.Messages)
	for len(all) < n+1 {
		all = append(all, watcher.expectMsg("busy").ID)
	}
	wg.Wait()
	for len(got) < n {
		got = append(got, joiner.expectMsg("busy").ID)
	}
	want := all[1:]
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("since join saw %d messages, not the %d the room had (gap or duplicate)", len(got), len(want))
	}
	t.Logf("%d messages came in the join reply, %d live", len(resp.Messages), n-len(resp.Messages))
	joiner.heartbeat() // and nothing more: no duplicate after the last
}
