package chattest

import (
	"fmt"
	"slices"
	"testing"

	"github.com/chatd/chatd/chat"
)

// RunLogTests runs the properties of every broker's room log, using one
// node.
func RunLogTests(t *testing.T, newNode NewBrokerNode) {
	t.Run("ReadNewestAndAfter", func(t *testing.T) { testLogRead(t, newNode) })
	t.Run("LoggedWithoutSubscribers", func(t *testing.T) { testLogUnsubscribed(t, newNode) })
	t.Run("FramesWithoutIDNotLogged", func(t *testing.T) { testLogNoID(t, newNode) })
	t.Run("KeepsAtLeastMaxRecoverPlusOne", func(t *testing.T) { testLogFull(t, newNode) })
	t.Run("ResolveAccepted", func(t *testing.T) { testResolveAccepted(t, newNode) })
	t.Run("DeletedLeftOut", func(t *testing.T) { testLogDelete(t, newNode) })
	t.Run("ReadOneID", func(t *testing.T) { testLogReadID(t, newNode) })
	t.Run("DeletedLeftOutOfAFullLog", func(t *testing.T) { testLogDeleteFull(t, newNode) })
}

// RunClusterLogTests runs the properties of a room log shared by several
// nodes.
func RunClusterLogTests(t *testing.T, newNode NewBrokerNode) {
	t.Run("EveryNodeReadsEveryNodesMessages", func(t *testing.T) { testLogAcrossNodes(t, newNode) })
	t.Run("DeletedOnEveryNode", func(t *testing.T) { testLogDeleteAcrossNodes(t, newNode) })
}

// publishN publishes n messages to room through b, returning their ids and
// frames in order.
func publishN(t testing.TB, b chat.Broker, room string, n int) (ids []string, data [][]byte) {
	t.Helper()
	after := ""
	for i := range n {
		id, err := PublishMessage(ctxFor(t), b, room, after, func(id string) []byte {
			return fmt.Appendf(nil, "m%d %s", i, id)
		})
		if err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
		ids = append(ids, id)
		data = append(data, fmt.Appendf(nil, "m%d %s", i, id))
		after = id
	}
	return ids, data
}

func mustRead(t testing.TB, b chat.Broker, room string, q chat.LogQuery) chat.LogRead {
	t.Helper()
	r, err := b.ReadLog(ctxFor(t), room, q)
	if err != nil {
		t.Fatalf("ReadLog(%s, %+v): %v", room, q, err)
	}
	return r
}

func entryIDs(es []chat.LogEntry) []string {
	ids := make([]string, len(es))
	for i, e := range es {
		ids[i] = e.ID
	}
	return ids
}

func testLogRead(t *testing.T, newNode NewBrokerNode) {
	n := newNodes(t, newNode, 1)[0]
	room := RoomName()
	mustSubscribe(t, n.b, room)
	if r := mustRead(t, n.b, room, chat.LogQuery{Limit: 5}); r.Len != 0 || len(r.Entries) != 0 || r.Oldest != "" || r.Full {
		t.Fatalf("empty log read %+v", r)
	}
	ids, data := publishN(t, n.b, room, 10)

	r := mustRead(t, n.b, room, chat.LogQuery{Limit: 4})
	if got := entryIDs(r.Entries); !slices.Equal(got, ids[6:]) || !r.More || r.Len != 10 || r.Oldest != ids[0] || r.Full {
		t.Fatalf("newest 4: ids %v More %v Len %d Oldest %s Full %v; want %v, true, 10, %s, false", got, r.More, r.Len, r.Oldest, r.Full, ids[6:], ids[0])
	}
	if r.Newest != ids[9] {
		t.Fatalf("Newest = %s, want %s", r.Newest, ids[9])
	}
	if string(r.Entries[3].Data) != string(data[9]) {
		t.Fatalf("entry data %q, want %q", r.Entries[3].Data, data[9])
	}
	r = mustRead(t, n.b, room, chat.LogQuery{Limit: 20})
	if got := entryIDs(r.Entries); !slices.Equal(got, ids) || r.More {
		t.Fatalf("newest 20: %v More %v; want all 10, false", got, r.More)
	}
	r = mustRead(t, n.b, room, chat.LogQuery{After: ids[3], Limit: 100})
	if got := entryIDs(r.Entries); !slices.Equal(got, ids[4:]) || !r.Found || r.More {
		t.Fatalf("after %s: %v Found %v More %v; want %v, true, false", ids[3], got, r.Found, r.More, ids[4:])
	}
	r = mustRead(t, n.b, room, chat.LogQuery{After: ids[1], Limit: 3})
	if got := entryIDs(r.Entries); !slices.Equal(got, ids[7:]) || !r.More {
		t.Fatalf("after %s limit 3: %v More %v; want the newest 3 %v, true", ids[1], got, r.More, ids[7:])
	}
	r = mustRead(t, n.b, room, chat.LogQuery{After: ids[9], Limit: 3})
	if len(r.Entries) != 0 || !r.Found || r.More {
		t.Fatalf("after the last: %+v; want nothing, found", r)
	}
	// An id that is not in the log, between two that are.
	gap := RoomName()
	xyz := SortedIDs(3)
	mustPublish(t, n.b, gap, xyz[0], []byte("x"))
	mustPublish(t, n.b, gap, xyz[2], []byte("z"))
	r = mustRead(t, n.b, gap, chat.LogQuery{After: xyz[1], Limit: 100})
	if got := entryIDs(r.Entries); !slices.Equal(got, xyz[2:]) || r.Found {
		t.Fatalf("after an unknown id: %v Found %v; want %v, false", got, r.Found, xyz[2:])
	}
	// An id older than the log.
	r = mustRead(t, n.b, room, chat.LogQuery{After: "00000000-0000-7000-8000-000000000000", Limit: 100})
	if got := entryIDs(r.Entries); !slices.Equal(got, ids) || r.Found {
		t.Fatalf("after an old id: %v Found %v; want all, false", got, r.Found)
	}
}

func testLogUnsubscribed(t *testing.T, newNode NewBrokerNode) {
	n := newNodes(t, newNode, 1)[0]
	room := RoomName()
	ids, _ := publishN(t, n.b, room, 3)
	r := mustRead(t, n.b, room, chat.LogQuery{Limit: 10})
	if got := entryIDs(r.Entries); !slices.Equal(got, ids) {
		t.Fatalf("log of a room nobody subscribes: %v, want %v", got, ids)
	}
}

func testLogNoID(t *testing.T, newNode NewBrokerNode) {
	n := newNodes(t, newNode, 1)[0]
	room := RoomName()
	mustSubscribe(t, n.b, room)
	ids, _ := publishN(t, n.b, room, 1)
	mustPublish(t, n.b, room, "", []byte("presence"))
	n.rec.WaitData(t, room, []byte("presence"))
	r := mustRead(t, n.b, room, chat.LogQuery{Limit: 10})
	if got := entryIDs(r.Entries); !slices.Equal(got, ids) {
		t.Fatalf("log %v, want only the message %v", got, ids)
	}
}

func testLogFull(t *testing.T, newNode NewBrokerNode) {
	n := newNodes(t, newNode, 1)[0]
	room := RoomName()
	total := chat.MaxRecover + 300
	ids, _ := publishN(t, n.b, room, total)
	r := mustRead(t, n.b, room, chat.LogQuery{Limit: chat.MaxRecover})
	if !r.Full || r.Len < chat.MaxRecover+1 || r.Len >= total || !r.More {
		t.Fatalf("after %d messages: Len %d Full %v More %v; want at least %d, fewer than all, full, more", total, r.Len, r.Full, r.More, chat.MaxRecover+1)
	}
	if got := entryIDs(r.Entries); !slices.Equal(got, ids[total-chat.MaxRecover:]) {
		t.Fatalf("newest %d are not the last published", chat.MaxRecover)
	}
	if i := slices.Index(ids, r.Oldest); i != total-r.Len {
		t.Fatalf("oldest kept is message %d, want %d (Len %d)", i, total-r.Len, r.Len)
	}
	r = mustRead(t, n.b, room, chat.LogQuery{After: ids[0], Limit: chat.MaxRecover})
	if r.Found {
		t.Fatal("the first message is still found in a full log")
	}
}

func testResolveAccepted(t *testing.T, newNode NewBrokerNode) {
	n := newNodes(t, newNode, 1)[0]
	room := RoomName()
	ids, _ := publishN(t, n.b, room, 2)
	for _, id := range ids {
		if ok, err := n.b.Resolve(ctxFor(t), room, id); err != nil || !ok {
			t.Fatalf("Resolve(%s) of an accepted message = %v, %v; want true", id, ok, err)
		}
	}
	if ok, err := n.b.Resolve(ctxFor(t), room, NextID(ids[1])); err != nil || ok {
		t.Fatalf("Resolve of a message never published = %v, %v; want false", ok, err)
	}
}

func testLogAcrossNodes(t *testing.T, newNode NewBrokerNode) {
	nodes := newNodes(t, newNode, 2)
	room := RoomName()
	ids0, _ := publishN(t, nodes[0].b, room, 3)
	after := ids0[2]
	id, err := PublishMessage(ctxFor(t), nodes[1].b, room, after, func(id string) []byte { return []byte("n1 " + id) })
	if err != nil {
		t.Fatal(err)
	}
	want := append(ids0, id)
	for i, n := range nodes {
		r := mustRead(t, n.b, room, chat.LogQuery{Limit: 10})
		if got := entryIDs(r.Entries); !slices.Equal(got, want) {
			t.Fatalf("node %d reads %v, want %v", i, got, want)
		}
	}
}

func mustDelete(t testing.TB, b chat.Broker, room, id string, data []byte) bool {
	t.Helper()
	held, err := b.Delete(ctxFor(t), room, id, data)
	if err != nil {
		t.Fatalf("Delete(%s, %s): %v", room, id, err)
	}
	return held
}

func testLogDelete(t *testing.T, newNode NewBrokerNode) {
	n := newNodes(t, newNode, 1)[0]
	room := RoomName()
	mustSubscribe(t, n.b, room)
	ids, _ := publishN(t, n.b, room, 6)
	if !mustDelete(t, n.b, room, ids[2], []byte("deleted 2")) {
		t.Fatalf("Delete of a logged message reports it was not held")
	}
	n.rec.WaitData(t, room, []byte("deleted 2"))
	if !mustDelete(t, n.b, room, ids[4], []byte("deleted 4")) {
		t.Fatalf("Delete of a logged message reports it was not held")
	}
	n.rec.WaitData(t, room, []byte("deleted 4"))
	kept := []string{ids[0], ids[1], ids[3], ids[5]}

	r := mustRead(t, n.b, room, chat.LogQuery{Limit: 10})
	if got := entryIDs(r.Entries); !slices.Equal(got, kept) || r.More || r.Len != 6 || r.Oldest != ids[0] {
		t.Fatalf("newest 10 after deleting 2 and 4: %v More %v Len %d Oldest %s; want %v, false, 6, %s", got, r.More, r.Len, r.Oldest, kept, ids[0])
	}
	// Deleted messages do not count against Limit.
	r = mustRead(t, n.b, room, chat.LogQuery{Limit: 3})
	if got := entryIDs(r.Entries); !slices.Equal(got, kept[1:]) || !r.More {
		t.Fatalf("newest 3: %v More %v; want %v, true", got, r.More, kept[1:])
	}
	r = mustRead(t, n.b, room, chat.LogQuery{Limit: 4})
	if got := entryIDs(r.Entries); !slices.Equal(got, kept) || r.More {
		t.Fatalf("newest 4: %v More %v; want %v, false", got, r.More, kept)
	}
	r = mustRead(t, n.b, room, chat.LogQuery{After: ids[0], Limit: 2})
	if got := entryIDs(r.Entries); !slices.Equal(got, kept[2:]) || !r.More {
		t.Fatalf("after %s limit 2: %v More %v; want %v, true", ids[0], got, r.More, kept[2:])
	}
	// A deleted message is still a place in the log: since it works.
	r = mustRead(t, n.b, room, chat.LogQuery{After: ids[2], Limit: 10})
	if got := entryIDs(r.Entries); !slices.Equal(got, kept[2:]) || !r.Found || r.More {
		t.Fatalf("after the deleted %s: %v Found %v More %v; want %v, true, false", ids[2], got, r.Found, r.More, kept[2:])
	}
	// Again, and a message the log never held: harmless, published.
	if !mustDelete(t, n.b, room, ids[2], []byte("deleted 2 again")) {
		t.Fatalf("a second Delete reports the message was not held")
	}
	n.rec.WaitData(t, room, []byte("deleted 2 again"))
	if mustDelete(t, n.b, room, NextID(ids[5]), []byte("never logged")) {
		t.Fatalf("Delete of a message never published reports it was held")
	}
	n.rec.WaitData(t, room, []byte("never logged"))
	if r = mustRead(t, n.b, room, chat.LogQuery{Limit: 10}); !slices.Equal(entryIDs(r.Entries), kept) {
		t.Fatalf("after repeated deletes: %v, want %v", entryIDs(r.Entries), kept)
	}
	// A message published after a delete is read.
	id, err := PublishMessage(ctxFor(t), n.b, room, ids[5], func(id string) []byte { return []byte("late " + id) })
	if err != nil {
		t.Fatal(err)
	}
	if r = mustRead(t, n.b, room, chat.LogQuery{Limit: 10}); !slices.Equal(entryIDs(r.Entries), append(kept, id)) {
		t.Fatalf("after a new message: %v, want %v", entryIDs(r.Entries), append(kept, id))
	}
}

func testLogReadID(t *testing.T, newNode NewBrokerNode) {
	n := newNodes(t, newNode, 1)[0]
	room := RoomName()
	ids, data := publishN(t, n.b, room, 3)
	r := mustRead(t, n.b, room, chat.LogQuery{ID: ids[1]})
	if len(r.Entries) != 1 || r.Entries[0].ID != ids[1] || string(r.Entries[0].Data) != string(data[1]) || !r.Found || r.Len != 3 {
		t.Fatalf("read id %s: %+v; want that one entry, found, Len 3", ids[1], r)
	}
	mustDelete(t, n.b, room, ids[1], []byte("deleted"))
	if r = mustRead(t, n.b, room, chat.LogQuery{ID: ids[1]}); len(r.Entries) != 0 || !r.Found {
		t.Fatalf("read deleted id %s: %+v; want no entry, found", ids[1], r)
	}
	if r = mustRead(t, n.b, room, chat.LogQuery{ID: NextID(ids[2])}); len(r.Entries) != 0 || r.Found {
		t.Fatalf("read an id never published: %+v; want nothing", r)
	}
	if r = mustRead(t, n.b, RoomName(), chat.LogQuery{ID: ids[0]}); len(r.Entries) != 0 || r.Found {
		t.Fatalf("read an id in an empty room: %+v; want nothing", r)
	}
}

// testLogDeleteFull: in a log that trims its oldest messages, deleted
// messages stay left out, however many follow.
func testLogDeleteFull(t *testing.T, newNode NewBrokerNode) {
	n := newNodes(t, newNode, 1)[0]
	room := RoomName()
	ids, _ := publishN(t, n.b, room, chat.MaxRecover)
	// Deleted near the log's end: still there after more are published.
	deleted := map[string]bool{ids[len(ids)-1]: true, ids[len(ids)-3]: true}
	for id := range deleted {
		mustDelete(t, n.b, room, id, []byte("deleted"))
	}
	more, _ := publishN(t, n.b, room, 200)
	all := append(ids, more...)
	const limit = 500
	r := mustRead(t, n.b, room, chat.LogQuery{Limit: limit})
	if len(r.Entries) != limit || !r.More || !r.Full {
		t.Fatalf("newest %d of a full log with 2 deleted: %d entries, More %v, Full %v", limit, len(r.Entries), r.More, r.Full)
	}
	var want []string
	for _, id := range all {
		if !deleted[id] {
			want = append(want, id)
		}
	}
	if got := entryIDs(r.Entries); !slices.Equal(got, want[len(want)-limit:]) {
		t.Fatalf("newest %d are not the last published but the deleted", limit)
	}
	r = mustRead(t, n.b, room, chat.LogQuery{After: ids[len(ids)-4], Limit: chat.MaxRecover})
	if got := entryIDs(r.Entries); !r.Found || r.More || !slices.Equal(got, want[len(want)-201:]) {
		t.Fatalf("after %s: Found %v More %v, %d entries; want found, the 201 after it but the deleted", ids[len(ids)-4], r.Found, r.More, len(got))
	}
}

func testLogDeleteAcrossNodes(t *testing.T, newNode NewBrokerNode) {
	nodes := newNodes(t, newNode, 2)
	room := RoomName()
	for _, n := range nodes {
		mustSubscribe(t, n.b, room)
	}
	ids, _ := publishN(t, nodes[0].b, room, 3)
	if !mustDelete(t, nodes[1].b, room, ids[1], []byte("deleted on 1")) {
		t.Fatal("Delete on the other node reports the message was not held")
	}
	for i, n := range nodes {
		n.rec.WaitData(t, room, []byte("deleted on 1"))
		r := mustRead(t, n.b, room, chat.LogQuery{Limit: 10})
		if got, want := entryIDs(r.Entries), []string{ids[0], ids[2]}; !slices.Equal(got, want) {
			t.Fatalf("node %d reads %v, want %v", i, got, want)
		}
	}
}
