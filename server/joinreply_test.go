package server

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/chatd/chatd/chat"
)

// A join reply larger than the send queue's byte bound reaches the joiner,
// who stays connected: before, it was closed as a slow consumer, and its
// rejoin was too, forever (issue 13, item 9). The bounds are the defaults.
func TestJoinReplyLargerThanSendQueue(t *testing.T) {
	s := startServer(t, chat.Config{}, nil)
	bound := s.hub.Config().SendQueueBytes

	// 200 bodies of 4,000 characters that JSON escapes to 6 bytes each:
	// the history reply is about 4.8 MB.
	sender := s.dial(t, "sender")
	sj := sender.join("big")
	body := strings.Repeat("\u0001", 4000)
	for range chat.MaxHistory {
		sender.push(sj, "big", body)
		sender.pending = sender.pending[:0]
	}

	joiner := s.dial(t, "joiner")
	joiner.conn.SetReadLimit(64 << 20)
	joiner.readTimeout = time.Minute
	for attempt := range 2 { // the rejoin is answered the same way
		ref := joiner.send(fmt.Sprint("j", attempt), "room:big", chat.EventJoin, map[string]any{"history": chat.MaxHistory})
		if attempt > 0 {
			joiner.expectChannelClosed("room:big")
		}
		r := joiner.expectReply("room:big", ref, "ok")
		if len(r.Response) <= bound {
			t.Fatalf("join reply of %d bytes does not exceed the bound of %d: the test proves nothing", len(r.Response), bound)
		}
		var resp struct{ Messages []chat.Message }
		if err := json.Unmarshal(r.Response, &resp); err != nil {
			t.Fatal(err)
		}
		if len(resp.Messages) != chat.MaxHistory || resp.Messages[0].Body != body {
			t.Fatalf("join reply has %d messages", len(resp.Messages))
		}
		t.Logf("join reply of %d bytes (bound %d) delivered", len(r.Response), bound)
	}
	// Still connected, and live messages follow.
	sender.push(sj, "big", "after")
	for {
		if m := joiner.expectMsg("big"); m.Body == "after" {
			break
		}
	}
	if st := s.hub.Stats(); st.SlowConsumers != 0 {
		t.Fatalf("slow consumers = %d", st.SlowConsumers)
	}
}

// The presence_state of a room with 45,000 presences is larger than the
// send queue's byte bound: the joiner gets it and stays connected, and the
// presence API answers a bounded page that says it was cut.
func TestPresenceOfAHugeRoom(t *testing.T) {
	presence := chat.NewMemoryPresence()
	s := startServerWith(t, chat.Config{}, chat.Options{Presence: presence}, nil)
	const n = 45000
	for i := range n {
		e := chat.PresenceEntry{UserID: fmt.Sprintf("member-with-a-long-user-id-%06d", i),
			Meta: chat.PresenceMeta{PhxRef: fmt.Sprintf("ref-%012d", i), Node: "elsewhere", OnlineAt: 1700000000}}
		if err := presence.Add(t.Context(), "huge", e); err != nil {
			t.Fatal(err)
		}
	}

	c := s.dial(t, "joiner")
	c.conn.SetReadLimit(64 << 20)
	c.readTimeout = time.Minute
	for attempt := range 2 {
		if attempt > 0 {
			// The rejoin closes the first channel before its reply.
			c.ref++
			ref := fmt.Sprint(c.ref)
			c.sendRaw(websocket.MessageText, chat.AppendFrame(nil, ref, ref, "room:huge", chat.EventJoin, []byte("{}")))
			c.expectChannelClosed("room:huge")
			c.expectReply("room:huge", ref, "ok")
		} else {
			c.join("huge")
		}
		f := c.nextPresence()
		for f.Event != chat.EventPresenceState {
			f = c.nextPresence()
		}
		if len(f.Payload) <= s.hub.Config().SendQueueBytes {
			t.Fatalf("presence_state of %d bytes does not exceed the bound: the test proves nothing", len(f.Payload))
		}
		var state map[string]metas
		if err := json.Unmarshal(f.Payload, &state); err != nil {
			t.Fatal(err)
		}
		if len(state) != n+1 {
			t.Fatalf("presence_state has %d users, want %d", len(state), n+1)
		}
		t.Logf("presence_state of %d bytes delivered", len(f.Payload))
	}
	c.heartbeat()

	for _, tc := range []struct {
		query string
		want  int
	}{{"", 1000}, {"?limit=10", 10}, {"?limit=1000000", 10000}} {
		status, api := s.presenceAPI(t, "huge", tc.query)
		if status != 200 || len(api.Presences) != tc.want || api.Users != n+1 || !api.Truncated {
			t.Fatalf("presence API%s: %d, %d users of %d, truncated %v", tc.query, status, len(api.Presences), api.Users, api.Truncated)
		}
		if _, ok := api.Presences["member-with-a-long-user-id-000000"]; !ok {
			t.Fatalf("presence API%s: not the first users by id", tc.query)
		}
	}
}

// expectChannelClosed reads the next frame and checks it is the phx_close
// of topic (a rejoin replacing the channel).
func (c *client) expectChannelClosed(topic string) {
	c.tb.Helper()
	if f := c.read(); f.Event != chat.EventClose || f.Topic != topic {
		c.tb.Fatalf("%s: want phx_close on %s, got %+v", c.user, topic, f)
	}
}
