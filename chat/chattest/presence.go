package chattest

import (
	"cmp"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/chatd/chatd/chat"
)

// NewPresenceNode returns the Presence of the node named node. Every node
// one test makes shares one backend (a Redis server, say), so what one node
// adds every other node sees. An implementation that is not distributed
// (the in-memory one) may return one instance for every name: the
// cross-node properties then hold trivially. The factory arranges for the
// node to be stopped when t ends.
type NewPresenceNode func(t *testing.T, node string) chat.Presence

// RunPresenceTests runs the properties every chat.Presence has. Each test
// uses rooms, users and refs no other test uses, so a factory may share one
// backend across tests.
func RunPresenceTests(t *testing.T, newNode NewPresenceNode) {
	t.Run("AddListRemove", func(t *testing.T) { testPresenceAddListRemove(t, newNode) })
	t.Run("EmptyRoom", func(t *testing.T) { testPresenceEmptyRoom(t, newNode) })
	t.Run("AddIsIdempotentByRef", func(t *testing.T) { testPresenceIdempotentAdd(t, newNode) })
	t.Run("RemoveReportsPresence", func(t *testing.T) { testPresenceRemoveReports(t, newNode) })
	t.Run("TwoRefsOfOneUserAreTwoEntries", func(t *testing.T) { testPresenceTwoRefs(t, newNode) })
	t.Run("VisibleFromEveryNode", func(t *testing.T) { testPresenceAcrossNodes(t, newNode) })
	t.Run("RoomsAreIndependent", func(t *testing.T) { testPresenceRooms(t, newNode) })
	t.Run("ConcurrentAddsAndRemoves", func(t *testing.T) { testPresenceConcurrent(t, newNode, 3, 4, 25) })
}

// PresenceEntry returns an entry of user on node with a fresh, unique
// phx_ref.
func PresenceEntry(user, node string) chat.PresenceEntry {
	return chat.PresenceEntry{
		UserID: user,
		Meta: chat.PresenceMeta{
			PhxRef:   "ref-" + RoomName(),
			Node:     node,
			OnlineAt: time.Now().Unix(),
		},
	}
}

// SortEntries sorts entries by phx_ref, for comparisons.
func SortEntries(es []chat.PresenceEntry) []chat.PresenceEntry {
	slices.SortFunc(es, func(a, b chat.PresenceEntry) int { return cmp.Compare(a.Meta.PhxRef, b.Meta.PhxRef) })
	return es
}

// AssertPresence checks that List(room) on p returns exactly want (in any
// order).
func AssertPresence(t testing.TB, p chat.Presence, room string, want ...chat.PresenceEntry) {
	t.Helper()
	got, err := p.List(ctxFor(t), room)
	if err != nil {
		t.Fatalf("List(%s): %v", room, err)
	}
	got = SortEntries(got)
	want = SortEntries(slices.Clone(want))
	if !slices.Equal(got, want) {
		t.Fatalf("List(%s) = %+v\nwant %+v", room, got, want)
	}
}

func mustAdd(t testing.TB, p chat.Presence, room string, e chat.PresenceEntry) {
	t.Helper()
	if err := p.Add(ctxFor(t), room, e); err != nil {
		t.Fatalf("Add(%s, %+v): %v", room, e, err)
	}
}

func mustRemove(t testing.TB, p chat.Presence, room, ref string, want bool) {
	t.Helper()
	got, err := p.Remove(ctxFor(t), room, ref)
	if err != nil {
		t.Fatalf("Remove(%s, %s): %v", room, ref, err)
	}
	if got != want {
		t.Fatalf("Remove(%s, %s) = %v, want %v", room, ref, got, want)
	}
}

func presenceNodes(t *testing.T, newNode NewPresenceNode, n int) []chat.Presence {
	t.Helper()
	ps := make([]chat.Presence, n)
	for i := range ps {
		ps[i] = newNode(t, fmt.Sprintf("node%d-%s", i, RoomName()))
	}
	return ps
}

func testPresenceAddListRemove(t *testing.T, newNode NewPresenceNode) {
	p := newNode(t, "n-"+RoomName())
	room := RoomName()
	a, b := PresenceEntry("alice", "n"), PresenceEntry("bob", "n")
	mustAdd(t, p, room, a)
	AssertPresence(t, p, room, a)
	mustAdd(t, p, room, b)
	AssertPresence(t, p, room, a, b)
	mustRemove(t, p, room, a.Meta.PhxRef, true)
	AssertPresence(t, p, room, b)
	mustRemove(t, p, room, b.Meta.PhxRef, true)
	AssertPresence(t, p, room)
}

func testPresenceEmptyRoom(t *testing.T, newNode NewPresenceNode) {
	p := newNode(t, "n-"+RoomName())
	got, err := p.List(ctxFor(t), RoomName())
	if err != nil || len(got) != 0 {
		t.Fatalf("List of a room nobody joined = %+v, %v; want nothing, no error", got, err)
	}
}

func testPresenceIdempotentAdd(t *testing.T, newNode NewPresenceNode) {
	p := newNode(t, "n-"+RoomName())
	room := RoomName()
	e := PresenceEntry("alice", "n")
	mustAdd(t, p, room, e)
	mustAdd(t, p, room, e)
	AssertPresence(t, p, room, e)
	// The same ref again, with other metadata (a retried join): still one
	// entry, the latest.
	e2 := e
	e2.Meta.OnlineAt++
	mustAdd(t, p, room, e2)
	AssertPresence(t, p, room, e2)
	mustRemove(t, p, room, e.Meta.PhxRef, true)
	AssertPresence(t, p, room)
}

func testPresenceRemoveReports(t *testing.T, newNode NewPresenceNode) {
	p := newNode(t, "n-"+RoomName())
	room := RoomName()
	mustRemove(t, p, room, "never-added", false)
	e := PresenceEntry("alice", "n")
	mustAdd(t, p, room, e)
	mustRemove(t, p, room, "other-ref", false)
	mustRemove(t, p, RoomName(), e.Meta.PhxRef, false) // same ref, other room
	AssertPresence(t, p, room, e)
	mustRemove(t, p, room, e.Meta.PhxRef, true)
	mustRemove(t, p, room, e.Meta.PhxRef, false)
	AssertPresence(t, p, room)
}

func testPresenceTwoRefs(t *testing.T, newNode NewPresenceNode) {
	p := newNode(t, "n-"+RoomName())
	room := RoomName()
	user := "u-" + RoomName()
	a, b := PresenceEntry(user, "n"), PresenceEntry(user, "n")
	mustAdd(t, p, room, a)
	mustAdd(t, p, room, b)
	AssertPresence(t, p, room, a, b)
	mustRemove(t, p, room, a.Meta.PhxRef, true)
	AssertPresence(t, p, room, b)
}

func testPresenceAcrossNodes(t *testing.T, newNode NewPresenceNode) {
	ps := presenceNodes(t, newNode, 3)
	room := RoomName()
	es := make([]chat.PresenceEntry, len(ps))
	for i, p := range ps {
		es[i] = PresenceEntry(fmt.Sprintf("user%d", i), fmt.Sprintf("node%d", i))
		mustAdd(t, p, room, es[i])
	}
	for _, p := range ps {
		AssertPresence(t, p, room, es...)
	}
	// An entry can be removed through any node.
	mustRemove(t, ps[1], room, es[0].Meta.PhxRef, true)
	mustRemove(t, ps[2], room, es[0].Meta.PhxRef, false)
	for _, p := range ps {
		AssertPresence(t, p, room, es[1:]...)
	}
	// Adding on one node an entry another node added keeps one entry.
	mustAdd(t, ps[0], room, es[1])
	for _, p := range ps {
		AssertPresence(t, p, room, es[1:]...)
	}
}

func testPresenceRooms(t *testing.T, newNode NewPresenceNode) {
	ps := presenceNodes(t, newNode, 2)
	r1, r2 := RoomName(), RoomName()
	user := "u-" + RoomName()
	a, b := PresenceEntry(user, "n0"), PresenceEntry(user, "n1")
	mustAdd(t, ps[0], r1, a)
	mustAdd(t, ps[1], r2, b)
	// The same ref in a second room is a second, independent entry.
	mustAdd(t, ps[1], r2, a)
	AssertPresence(t, ps[0], r1, a)
	AssertPresence(t, ps[0], r2, a, b)
	mustRemove(t, ps[0], r2, a.Meta.PhxRef, true)
	AssertPresence(t, ps[1], r1, a)
	AssertPresence(t, ps[1], r2, b)
	mustRemove(t, ps[1], r1, a.Meta.PhxRef, true)
	AssertPresence(t, ps[0], r1)
	AssertPresence(t, ps[0], r2, b)
}

// testPresenceConcurrent has perNode goroutines on each of nodes nodes add
// count entries each, to two rooms, and remove every other one as they go
// (some through another node). Each room must end up with exactly the
// entries that were not removed.
func testPresenceConcurrent(t *testing.T, newNode NewPresenceNode, nodes, perNode, count int) {
	ps := presenceNodes(t, newNode, nodes)
	rooms := []string{RoomName(), RoomName()}
	ctx := ctxFor(t)
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		kept = make(map[string][]chat.PresenceEntry)
	)
	errs := make(chan error, nodes*perNode)
	for ni, p := range ps {
		for g := range perNode {
			wg.Go(func() {
				other := ps[(ni+1)%len(ps)]
				for i := range count {
					room := rooms[(g+i)%len(rooms)]
					e := PresenceEntry(fmt.Sprintf("user%d-%d", ni, g%2), fmt.Sprintf("node%d", ni))
					if err := p.Add(ctx, room, e); err != nil {
						errs <- fmt.Errorf("node %d: Add: %w", ni, err)
						return
					}
					if i%2 == 1 {
						remover := p
						if i%4 == 1 {
							remover = other
						}
						ok, err := remover.Remove(ctx, room, e.Meta.PhxRef)
						if err != nil || !ok {
							errs <- fmt.Errorf("node %d: Remove of an entry just added = %v, %v", ni, ok, err)
							return
						}
						continue
					}
					mu.Lock()
					kept[room] = append(kept[room], e)
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for _, room := range rooms {
		for _, p := range ps {
			AssertPresence(t, p, room, kept[room]...)
		}
	}
}
