// Package chattest holds conformance suites for the interfaces package chat
// declares, to run against every implementation (in-memory, Redis, ...). It
// is imported by tests only.
package chattest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/chatd/chatd/chat"
)

// NewBrokerNode makes one node of a broker cluster, not running yet: the
// suites run it with their own handler (Broker.Run), as the hub does. The
// nodes one test makes belong to the same cluster (they share a Redis
// server, say). The factory arranges for the node to be stopped when t ends.
type NewBrokerNode func(t *testing.T) chat.Broker

// waitTimeout bounds every wait for an expected delivery.
const waitTimeout = 10 * time.Second

// absentGrace is how long a test waits, after a sentinel publication
// arrived, for a publication that must not be delivered to turn up.
const absentGrace = 100 * time.Millisecond

// RunBrokerTests runs the properties every chat.Broker has, using one node.
func RunBrokerTests(t *testing.T, newNode NewBrokerNode) {
	t.Run("DeliversToSubscribersOnly", func(t *testing.T) { testSubscribersOnly(t, newNode) })
	t.Run("NoDeliveryAfterLastUnsubscribe", func(t *testing.T) { testUnsubscribe(t, newNode) })
	t.Run("SubscribeCounting", func(t *testing.T) { testCounting(t, newNode) })
	t.Run("OutOfOrderError", func(t *testing.T) { testOutOfOrder(t, newNode) })
	t.Run("EmptyIDNotOrderChecked", func(t *testing.T) { testEmptyID(t, newNode) })
	t.Run("DataIntact", func(t *testing.T) { testDataIntact(t, newNode) })
	t.Run("PublishRightAfterSubscribe", func(t *testing.T) { testPublishAfterSubscribe(t, newNode, 1) })
	t.Run("ConcurrentPublishersOneOrder", func(t *testing.T) {
		testConcurrentOrder(t, newNode, 1, 4, 200)
	})
}

// RunClusterBrokerTests runs the properties of a broker with several nodes:
// delivery across nodes, one order on every node, subscription handoff.
func RunClusterBrokerTests(t *testing.T, newNode NewBrokerNode) {
	t.Run("DeliversAcrossNodes", func(t *testing.T) { testAcrossNodes(t, newNode) })
	t.Run("NoDeliveryAfterUnsubscribeOnOneNode", func(t *testing.T) { testUnsubscribeOneNode(t, newNode) })
	t.Run("OutOfOrderAcrossNodes", func(t *testing.T) { testOutOfOrderAcrossNodes(t, newNode) })
	t.Run("PublishFromOtherNodeRightAfterSubscribe", func(t *testing.T) { testPublishAfterSubscribe(t, newNode, 2) })
	t.Run("ConcurrentPublishersOneOrderOnEveryNode", func(t *testing.T) {
		testConcurrentOrder(t, newNode, 3, 4, 200)
	})
}

// Delivery is one call of a broker handler.
type Delivery struct {
	Room string
	Data []byte
}

// Recorder is a BrokerHandler that keeps every delivery, for assertions.
type Recorder struct {
	mu      sync.Mutex
	got     []Delivery
	changed chan struct{} // closed and replaced on every delivery
}

// NewRecorder returns an empty Recorder.
func NewRecorder() *Recorder { return &Recorder{changed: make(chan struct{})} }

// Handle is the chat.BrokerHandler. It copies data and never blocks long.
func (r *Recorder) Handle(room string, data []byte) {
	r.mu.Lock()
	r.got = append(r.got, Delivery{Room: room, Data: bytes.Clone(data)})
	close(r.changed)
	r.changed = make(chan struct{})
	r.mu.Unlock()
}

// Room returns the data delivered for room so far, in delivery order.
func (r *Recorder) Room(room string) [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out [][]byte
	for _, d := range r.got {
		if d.Room == room {
			out = append(out, d.Data)
		}
	}
	return out
}

// Has reports whether data was delivered for room.
func (r *Recorder) Has(room string, data []byte) bool {
	for _, d := range r.Room(room) {
		if bytes.Equal(d, data) {
			return true
		}
	}
	return false
}

// WaitFor waits until cond, evaluated after every delivery, holds; it
// fails t after waitTimeout.
func (r *Recorder) WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	timer := time.NewTimer(waitTimeout)
	defer timer.Stop()
	for {
		r.mu.Lock()
		changed := r.changed
		r.mu.Unlock()
		if cond() {
			return
		}
		select {
		case <-changed:
		case <-timer.C:
			t.Fatalf("timed out after %v waiting for %s", waitTimeout, what)
		}
	}
}

// WaitData waits until data is delivered for room.
func (r *Recorder) WaitData(t testing.TB, room string, data []byte) {
	t.Helper()
	r.WaitFor(t, fmt.Sprintf("%q in room %s", data, room), func() bool { return r.Has(room, data) })
}

// WaitCount waits until n publications of room have been delivered.
func (r *Recorder) WaitCount(t testing.TB, room string, n int) {
	t.Helper()
	r.WaitFor(t, fmt.Sprintf("%d deliveries in room %s", n, room), func() bool { return len(r.Room(room)) >= n })
}

// node is a broker with its recorder.
type node struct {
	b   chat.Broker
	rec *Recorder
}

func newNodes(t *testing.T, newNode NewBrokerNode, n int) []node {
	t.Helper()
	nodes := make([]node, n)
	for i := range nodes {
		rec := NewRecorder()
		b := newNode(t)
		if err := b.Run(rec.Handle, nil); err != nil {
			t.Fatalf("Run: %v", err)
		}
		if err := b.Run(rec.Handle, nil); err == nil {
			t.Fatal("second Run: no error")
		}
		nodes[i] = node{b: b, rec: rec}
	}
	return nodes
}

// RoomName returns a room name no other test uses, so that tests sharing a
// backend (and its rooms' last ids) do not see each other.
func RoomName() string {
	var b [6]byte
	rand.Read(b[:])
	return "t" + hex.EncodeToString(b[:])
}

func ctxFor(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	t.Cleanup(cancel)
	return ctx
}

func mustSubscribe(t testing.TB, b chat.Broker, room string) {
	t.Helper()
	if err := b.Subscribe(ctxFor(t), room); err != nil {
		t.Fatalf("Subscribe(%s): %v", room, err)
	}
}

func mustUnsubscribe(t testing.TB, b chat.Broker, room string) {
	t.Helper()
	if err := b.Unsubscribe(ctxFor(t), room); err != nil {
		t.Fatalf("Unsubscribe(%s): %v", room, err)
	}
}

func mustPublish(t testing.TB, b chat.Broker, room, id string, data []byte) {
	t.Helper()
	if err := b.Publish(ctxFor(t), room, id, data); err != nil {
		t.Fatalf("Publish(%s, %q, %q): %v", room, id, data, err)
	}
}

// assertAbsent publishes a sentinel to sentinelRoom (which n subscribes),
// waits for it and a little longer, then checks that data was not delivered
// to n in room.
func assertAbsent(t testing.TB, pub chat.Broker, n node, sentinelRoom, room string, data []byte) {
	t.Helper()
	sentinel := []byte("sentinel-" + RoomName())
	mustPublish(t, pub, sentinelRoom, "", sentinel)
	n.rec.WaitData(t, sentinelRoom, sentinel)
	time.Sleep(absentGrace)
	if n.rec.Has(room, data) {
		t.Fatalf("%q was delivered in room %s, which is not subscribed", data, room)
	}
}

// exactlyOnce checks that room's deliveries on n are exactly want, in order.
func exactlyOnce(t testing.TB, n node, room string, want ...[]byte) {
	t.Helper()
	got := n.rec.Room(room)
	if !slices.EqualFunc(got, want, bytes.Equal) {
		t.Fatalf("room %s delivered %q, want %q", room, got, want)
	}
}

func testSubscribersOnly(t *testing.T, newNode NewBrokerNode) {
	n := newNodes(t, newNode, 1)[0]
	sub, other, sentinel := RoomName(), RoomName(), RoomName()
	mustSubscribe(t, n.b, sub)
	mustSubscribe(t, n.b, sentinel)
	mustPublish(t, n.b, other, "", []byte("not for us"))
	mustPublish(t, n.b, sub, "", []byte("hello"))
	n.rec.WaitData(t, sub, []byte("hello"))
	assertAbsent(t, n.b, n, sentinel, other, []byte("not for us"))
	exactlyOnce(t, n, sub, []byte("hello"))
}

func testUnsubscribe(t *testing.T, newNode NewBrokerNode) {
	n := newNodes(t, newNode, 1)[0]
	room, sentinel := RoomName(), RoomName()
	mustSubscribe(t, n.b, sentinel)
	mustSubscribe(t, n.b, room)
	mustPublish(t, n.b, room, "", []byte("before"))
	n.rec.WaitData(t, room, []byte("before"))
	mustUnsubscribe(t, n.b, room)
	mustPublish(t, n.b, room, "", []byte("after"))
	assertAbsent(t, n.b, n, sentinel, room, []byte("after"))

	// Subscribing again resumes delivery.
	mustSubscribe(t, n.b, room)
	mustPublish(t, n.b, room, "", []byte("again"))
	n.rec.WaitData(t, room, []byte("again"))
	exactlyOnce(t, n, room, []byte("before"), []byte("again"))
	mustUnsubscribe(t, n.b, room)
	mustUnsubscribe(t, n.b, sentinel)
}

func testCounting(t *testing.T, newNode NewBrokerNode) {
	n := newNodes(t, newNode, 1)[0]
	room, sentinel := RoomName(), RoomName()
	mustSubscribe(t, n.b, sentinel)
	mustSubscribe(t, n.b, room)
	mustSubscribe(t, n.b, room)
	mustUnsubscribe(t, n.b, room)
	mustPublish(t, n.b, room, "", []byte("one left"))
	n.rec.WaitData(t, room, []byte("one left"))

	// Two Subscribes still deliver once.
	mustSubscribe(t, n.b, room)
	mustPublish(t, n.b, room, "", []byte("twice subscribed"))
	n.rec.WaitData(t, room, []byte("twice subscribed"))
	mustUnsubscribe(t, n.b, room)
	mustPublish(t, n.b, room, "", []byte("still one left"))
	n.rec.WaitData(t, room, []byte("still one left"))

	mustUnsubscribe(t, n.b, room)
	mustPublish(t, n.b, room, "", []byte("none left"))
	assertAbsent(t, n.b, n, sentinel, room, []byte("none left"))
	exactlyOnce(t, n, room, []byte("one left"), []byte("twice subscribed"), []byte("still one left"))
}

func testOutOfOrder(t *testing.T, newNode NewBrokerNode) {
	n := newNodes(t, newNode, 1)[0]
	room := RoomName()
	mustSubscribe(t, n.b, room)
	ids := SortedIDs(3)
	mustPublish(t, n.b, room, ids[1], []byte("m1"))

	for _, id := range []string{ids[1], ids[0]} {
		err := n.b.Publish(ctxFor(t), room, id, []byte("rejected "+id))
		var ooe *chat.OutOfOrderError
		if !errors.As(err, &ooe) {
			t.Fatalf("Publish with id %s after %s: err %v, want *chat.OutOfOrderError", id, ids[1], err)
		}
		if ooe.Last != ids[1] {
			t.Fatalf("OutOfOrderError.Last = %q, want %q", ooe.Last, ids[1])
		}
	}
	mustPublish(t, n.b, room, ids[2], []byte("m2"))
	n.rec.WaitData(t, room, []byte("m2"))
	exactlyOnce(t, n, room, []byte("m1"), []byte("m2"))
}

func testEmptyID(t *testing.T, newNode NewBrokerNode) {
	n := newNodes(t, newNode, 1)[0]
	room := RoomName()
	mustSubscribe(t, n.b, room)
	ids := SortedIDs(3)
	mustPublish(t, n.b, room, ids[1], []byte("m1"))
	mustPublish(t, n.b, room, "", []byte("frame a"))
	mustPublish(t, n.b, room, "", []byte("frame b"))
	// A frame without id does not move the room's last id.
	var ooe *chat.OutOfOrderError
	if err := n.b.Publish(ctxFor(t), room, ids[0], []byte("old")); !errors.As(err, &ooe) || ooe.Last != ids[1] {
		t.Fatalf("Publish of an older id after frames without id: err %v, want OutOfOrderError{Last: %s}", err, ids[1])
	}
	mustPublish(t, n.b, room, ids[2], []byte("m2"))
	n.rec.WaitData(t, room, []byte("m2"))
	exactlyOnce(t, n, room, []byte("m1"), []byte("frame a"), []byte("frame b"), []byte("m2"))
}

func testDataIntact(t *testing.T, newNode NewBrokerNode) {
	n := newNodes(t, newNode, 1)[0]
	room := RoomName()
	mustSubscribe(t, n.b, room)
	big := make([]byte, 64<<10)
	rand.Read(big)
	payloads := [][]byte{
		[]byte(`[null,null,"room:x","new_msg",{"body":"héllo \u2603 \"quoted\""}]`),
		{0, 1, 2, 0, 255, '\r', '\n'},
		big,
	}
	for _, p := range payloads {
		mustPublish(t, n.b, room, "", p)
	}
	n.rec.WaitCount(t, room, len(payloads))
	exactlyOnce(t, n, room, payloads...)
}

// testPublishAfterSubscribe checks that a publication made right after
// Subscribe returns is delivered, from another node when there are two.
func testPublishAfterSubscribe(t *testing.T, newNode NewBrokerNode, nodes int) {
	ns := newNodes(t, newNode, nodes)
	sub, pub := ns[0], ns[len(ns)-1]
	const rounds = 30
	for i := range rounds {
		room := RoomName()
		mustSubscribe(t, sub.b, room)
		data := fmt.Appendf(nil, "right after subscribe %d", i)
		mustPublish(t, pub.b, room, "", data)
		sub.rec.WaitData(t, room, data)
		mustUnsubscribe(t, sub.b, room)
	}
}

func testAcrossNodes(t *testing.T, newNode NewBrokerNode) {
	ns := newNodes(t, newNode, 3)
	room, sentinel := RoomName(), RoomName()
	mustSubscribe(t, ns[0].b, room)
	mustSubscribe(t, ns[1].b, room)
	mustSubscribe(t, ns[2].b, sentinel)
	ids := SortedIDs(2)
	mustPublish(t, ns[2].b, room, ids[0], []byte("from 2"))
	mustPublish(t, ns[0].b, room, ids[1], []byte("from 0"))
	for _, n := range ns[:2] {
		n.rec.WaitData(t, room, []byte("from 0"))
	}
	assertAbsent(t, ns[0].b, ns[2], sentinel, room, []byte("from 2"))
	for _, n := range ns[:2] {
		exactlyOnce(t, n, room, []byte("from 2"), []byte("from 0"))
	}
}

func testUnsubscribeOneNode(t *testing.T, newNode NewBrokerNode) {
	ns := newNodes(t, newNode, 2)
	room, sentinel := RoomName(), RoomName()
	for _, n := range ns {
		mustSubscribe(t, n.b, room)
	}
	mustSubscribe(t, ns[0].b, sentinel)
	mustPublish(t, ns[1].b, room, "", []byte("both"))
	for _, n := range ns {
		n.rec.WaitData(t, room, []byte("both"))
	}
	mustUnsubscribe(t, ns[0].b, room)
	mustPublish(t, ns[1].b, room, "", []byte("only 1"))
	ns[1].rec.WaitData(t, room, []byte("only 1"))
	assertAbsent(t, ns[1].b, ns[0], sentinel, room, []byte("only 1"))
	exactlyOnce(t, ns[0], room, []byte("both"))
	exactlyOnce(t, ns[1], room, []byte("both"), []byte("only 1"))
}

func testOutOfOrderAcrossNodes(t *testing.T, newNode NewBrokerNode) {
	ns := newNodes(t, newNode, 2)
	room := RoomName()
	for _, n := range ns {
		mustSubscribe(t, n.b, room)
	}
	ids := SortedIDs(3)
	mustPublish(t, ns[0].b, room, ids[1], []byte("m1"))
	for _, id := range []string{ids[1], ids[0]} {
		var ooe *chat.OutOfOrderError
		err := ns[1].b.Publish(ctxFor(t), room, id, []byte("rejected"))
		if !errors.As(err, &ooe) || ooe.Last != ids[1] {
			t.Fatalf("Publish on node 1 with id %s after node 0 published %s: err %v, want OutOfOrderError{Last: %[2]s}", id, ids[1], err)
		}
	}
	mustPublish(t, ns[1].b, room, ids[2], []byte("m2"))
	for _, n := range ns {
		n.rec.WaitData(t, room, []byte("m2"))
		exactlyOnce(t, n, room, []byte("m1"), []byte("m2"))
	}
}

// testConcurrentOrder has perNode goroutines on each of nodes nodes publish
// count messages each to one room, with ids from NextID retried on
// OutOfOrderError as the hub does. Every node must receive every message
// exactly once, in one order shared by all nodes, with increasing ids, each
// publisher's messages in the order it published them.
func testConcurrentOrder(t *testing.T, newNode NewBrokerNode, nodes, perNode, count int) {
	ns := newNodes(t, newNode, nodes)
	room := RoomName()
	for _, n := range ns {
		mustSubscribe(t, n.b, room)
	}
	total := nodes * perNode * count
	ctx := ctxFor(t)
	var wg sync.WaitGroup
	errs := make(chan error, nodes*perNode)
	for ni, n := range ns {
		for g := range perNode {
			wg.Go(func() {
				after := ""
				for seq := range count {
					id, err := PublishMessage(ctx, n.b, room, after, func(id string) []byte {
						return fmt.Appendf(nil, "%s|%d|%d|%d", id, ni, g, seq)
					})
					if err != nil {
						errs <- fmt.Errorf("publisher %d/%d message %d: %w", ni, g, seq, err)
						return
					}
					after = id
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	var first [][]byte
	for ni, n := range ns {
		n.rec.WaitCount(t, room, total)
		got := n.rec.Room(room)
		if len(got) != total {
			t.Fatalf("node %d got %d deliveries, want %d", ni, len(got), total)
		}
		if ni == 0 {
			first = got
			checkSequence(t, got, nodes, perNode, count)
			continue
		}
		if i := firstDiff(first, got); i >= 0 {
			t.Fatalf("node %d's order differs from node 0's at delivery %d: %q vs %q", ni, i, got[i], first[i])
		}
	}
}

// checkSequence checks deliveries of testConcurrentOrder: increasing ids,
// every message once, each publisher in order.
func checkSequence(t *testing.T, got [][]byte, nodes, perNode, count int) {
	t.Helper()
	next := make(map[[2]int]int)
	prevID := ""
	for i, d := range got {
		var id string
		var ni, g, seq int
		parts := strings.Split(string(d), "|")
		if len(parts) != 4 {
			t.Fatalf("delivery %d: malformed %q", i, d)
		}
		id = parts[0]
		if _, err := fmt.Sscanf(parts[1]+" "+parts[2]+" "+parts[3], "%d %d %d", &ni, &g, &seq); err != nil {
			t.Fatalf("delivery %d: malformed %q", i, d)
		}
		if id <= prevID {
			t.Fatalf("delivery %d: id %s not after the previous delivery's %s", i, id, prevID)
		}
		prevID = id
		key := [2]int{ni, g}
		if seq != next[key] {
			t.Fatalf("delivery %d: publisher %d/%d message %d, want its message %d (lost, duplicated or reordered)", i, ni, g, seq, next[key])
		}
		next[key]++
	}
	for ni := range nodes {
		for g := range perNode {
			if n := next[[2]int{ni, g}]; n != count {
				t.Fatalf("publisher %d/%d: %d messages delivered, want %d", ni, g, n, count)
			}
		}
	}
}

func firstDiff(a, b [][]byte) int {
	for i := range min(len(a), len(b)) {
		if !bytes.Equal(a[i], b[i]) {
			return i
		}
	}
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	return -1
}

// maxPublishAttempts bounds PublishMessage's retries; contention of a dozen
// publishers on one room needs a few.
const maxPublishAttempts = 1000

// PublishMessage publishes a message to room the way the hub does: with an
// id from NextID(after), built into the data by encode, retried with a
// greater id on *chat.OutOfOrderError. It returns the accepted id.
func PublishMessage(ctx context.Context, b chat.Broker, room, after string, encode func(id string) []byte) (string, error) {
	for range maxPublishAttempts {
		id := NextID(after)
		err := b.Publish(ctx, room, id, encode(id))
		var ooe *chat.OutOfOrderError
		if errors.As(err, &ooe) {
			if ooe.Last < id {
				return "", fmt.Errorf("OutOfOrderError for id %s names an earlier last id %s", id, ooe.Last)
			}
			after = ooe.Last
			continue
		}
		return id, err
	}
	return "", fmt.Errorf("no place found in %d attempts", maxPublishAttempts)
}

// NextID returns a time-ordered id (a UUIDv7 string) greater than after:
// a new one when the clock has passed after, else after's successor.
func NextID(after string) string {
	id := uuid.Must(uuid.NewV7())
	if s := id.String(); s > after {
		return s
	}
	last := uuid.MustParse(after)
	// Add one to the low 62 bits (below the variant bits); their carry out
	// is astronomically unlikely and ignored.
	for i := 15; i >= 8; i-- {
		if i == 8 {
			last[8] = last[8]&0xc0 | (last[8]+1)&0x3f
			break
		}
		last[i]++
		if last[i] != 0 {
			break
		}
	}
	return last.String()
}

// SortedIDs returns n increasing ids.
func SortedIDs(n int) []string {
	ids := make([]string, n)
	after := ""
	for i := range ids {
		ids[i] = NextID(after)
		after = ids[i]
	}
	return ids
}
