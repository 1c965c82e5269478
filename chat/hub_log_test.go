package chat

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
)

// frames decodes the frames queued for s.
func frames(t *testing.T, s *Session) []Frame {
	t.Helper()
	var out []Frame
	for _, b := range s.take(nil) {
		f, err := DecodeFrame(b)
		if err != nil {
			t.Fatalf("queued %q: %v", b, err)
		}
		out = append(out, f)
	}
	return out
}

func joinFrame(topic, ref, payload string) Frame {
	return Frame{JoinRef: ref, Ref: ref, Topic: topic, Event: EventJoin, Payload: json.RawMessage(payload)}
}

// joinReply joins s to topic with payload and returns the reply's response.
func joinReply(t *testing.T, s *Session, topic, ref, payload string) joinResponse {
	t.Helper()
	s.handle(context.Background(), joinFrame(topic, ref, payload))
	for _, f := range frames(t, s) {
		if f.Event != EventReply || f.Ref != ref {
			continue
		}
		var r struct {
			Status   string       `json:"status"`
			Response joinResponse `json:"response"`
		}
		if err := json.Unmarshal(f.Payload, &r); err != nil || r.Status != "ok" {
			t.Fatalf("join reply %s: %v", f.Payload, err)
		}
		return r.Response
	}
	t.Fatalf("no reply to join %s", ref)
	return joinResponse{}
}

// joined returns a hub (made with opts) and a session of user joined to
// room, without history.
func joined(t *testing.T, opts Options, user, room string) (*Hub, *Session, *room) {
	t.Helper()
	h, err := NewHub(Config{}, opts)
	if err != nil {
		t.Fatal(err)
	}
	s := newTestSession(h, user)
	r, _, err := h.join(context.Background(), s, room, "1", false)
	if err != nil {
		t.Fatal(err)
	}
	return h, s, r
}

func newMsgEvents(fs []Frame) (ids []string) {
	for _, f := range fs {
		if f.Event == EventNewMsg {
			m, _ := decodeMessage(f.Payload)
			ids = append(ids, m.ID)
		}
	}
	return ids
}

// A join with since on a node where the room has no members reads the
// room's log, which holds what every node accepted, stored or not.
func TestJoinSinceReadsTheLog(t *testing.T) {
	h, pub, r := joined(t, Options{}, "pub", "lobby")
	ctx := context.Background()
	var ids []string
	for range 5 {
		m, err := h.publish(ctx, r.name, "pub", "hi")
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, m.ID)
	}
	h.leave(pub, r)

	s := newTestSession(h, "s")
	resp := joinReply(t, s, "room:lobby", "1", `{"since":"`+ids[0]+`"}`)
	var got []string
	for _, m := range resp.Messages {
		got = append(got, m.ID)
	}
	if len(got) != 4 || got[0] != ids[1] || got[3] != ids[4] || resp.Recovered == nil || !*resp.Recovered {
		t.Fatalf("since %s: %v recovered %v; want %v, true", ids[0], got, resp.Recovered, ids[1:])
	}
	// An id the log does not know, with no store behind it: not recovered.
	resp = joinReply(t, s, "room:lobby", "2", `{"since":"`+uuid.Must(uuid.NewV7()).String()+`"}`)
	if resp.Recovered == nil || *resp.Recovered {
		t.Fatal("an unknown since id was reported recovered")
	}
}

// A node's ids keep increasing past every id it has seen, so a room whose
// log was lost (Redis restarted empty) does not see ids go backwards.
func TestIDsAfterTheHighestSeen(t *testing.T) {
	h, _, r := joined(t, Options{}, "s", "lobby")
	ctx := context.Background()
	// A message from a node whose clock runs an hour ahead.
	ahead, _ := uuid.NewV7()
	ms := time.Now().Add(time.Hour).UnixMilli()
	for i := range 6 {
		ahead[i] = byte(ms >> (40 - 8*i))
	}
	h.deliver("lobby", EncodeMessage("room:lobby", Message{ID: ahead.String(), Room: "lobby", UserID: "x", Body: "b"}))
	m, err := h.publish(ctx, r.name, "s", "later")
	if err != nil {
		t.Fatal(err)
	}
	if m.ID <= ahead.String() {
		t.Fatalf("id %s is not after the highest seen %s", m.ID, ahead)
	}
}

// faultyBroker fails Publish after (or instead of) publishing, as a Redis
// that timed out does.
type faultyBroker struct {
	*MemoryBroker
	publishFirst bool
	resolves     int
	// unknownUntil, when set, makes every Resolve fail until then.
	unknownUntil time.Time
	mu           sync.Mutex
}

var errTimeout = errors.New("i/o timeout")

func (b *faultyBroker) Publish(ctx context.Context, room, id string, data []byte) error {
	if id != "" && b.publishFirst {
		if err := b.MemoryBroker.Publish(ctx, room, id, data); err != nil {
			return err
		}
	}
	if id != "" {
		return errTimeout
	}
	return b.MemoryBroker.Publish(ctx, room, id, data)
}

func (b *faultyBroker) Resolve(ctx context.Context, room, id string) (bool, error) {
	b.mu.Lock()
	b.resolves++
	n, until := b.resolves, b.unknownUntil
	b.mu.Unlock()
	if n == 1 || time.Now().Before(until) {
		return false, errTimeout // still unknown: tried again
	}
	return b.MemoryBroker.Resolve(ctx, room, id)
}

// A publish whose outcome is unknown is settled against the log before the
// sender is answered: accepted means ok and stored, not accepted means an
// error and nothing delivered.
func TestPublishUnknownOutcomeResolved(t *testing.T) {
	for _, accepted := range []bool{true, false} {
		sink := &countingSink{}
		fb := &faultyBroker{MemoryBroker: NewMemoryBroker(), publishFirst: accepted}
		h, s, r := joined(t, Options{Sink: sink, Broker: fb}, "s", "lobby")
		ctx := context.Background()
		m, err := h.publish(ctx, r.name, "s", "hi")
		delivered := newMsgEvents(frames(t, s))
		switch {
		case accepted && (err != nil || len(delivered) != 1 || delivered[0] != m.ID || sink.committed.Load() != 1):
			t.Fatalf("accepted: err %v, delivered %v, stored %d", err, delivered, sink.committed.Load())
		case !accepted && (err == nil || len(delivered) != 0 || sink.committed.Load() != 0 || sink.cancelled.Load() != 1):
			t.Fatalf("not accepted: err %v, delivered %v, stored %d", err, delivered, sink.committed.Load())
		}
		if fb.resolves != 2 {
			t.Fatalf("%d resolves, want 2 (one failed)", fb.resolves)
		}
	}
}

// An outcome still unknown when the sender must be answered is answered
// "outcome unknown" and settled in the background: the accepted message
// is then stored, a refused one's place given back.
func TestPublishSettledLate(t *testing.T) {
	for _, accepted := range []bool{true, false} {
		sink := &countingSink{}
		fb := &faultyBroker{MemoryBroker: NewMemoryBroker(), publishFirst: accepted,
			unknownUntil: time.Now().Add(600 * time.Millisecond)}
		h, err := NewHub(Config{RelayTimeout: 50 * time.Millisecond, ResolveTimeout: 200 * time.Millisecond},
			Options{Sink: sink, Broker: fb})
		if err != nil {
			t.Fatal(err)
		}
		s := newTestSession(h, "s")
		r, _, err := h.join(context.Background(), s, "lobby", "1", false)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := h.publish(context.Background(), r.name, "s", "hi"); err != ErrOutcomeUnknown {
			t.Fatalf("publish with Redis silent past ResolveTimeout: %v, want %v", err, ErrOutcomeUnknown)
		}
		deadline := time.Now().Add(5 * time.Second)
		for sink.committed.Load()+sink.cancelled.Load() == 0 {
			if time.Now().After(deadline) {
				t.Fatal("never settled")
			}
			time.Sleep(10 * time.Millisecond)
		}
		if accepted && (sink.committed.Load() != 1 || sink.cancelled.Load() != 0) {
			t.Fatalf("accepted: committed %d, cancelled %d", sink.committed.Load(), sink.cancelled.Load())
		}
		if !accepted && (sink.committed.Load() != 0 || sink.cancelled.Load() != 1) {
			t.Fatalf("not accepted: committed %d, cancelled %d", sink.committed.Load(), sink.cancelled.Load())
		}
		if err := h.Shutdown(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
}

type countingSink struct{ committed, cancelled atomic.Int64 }

func (c *countingSink) Reserve() error { return nil }
func (c *countingSink) Commit(Message) { c.committed.Add(1) }
func (c *countingSink) Cancel()        { c.cancelled.Add(1) }
