package chat

import (
	"encoding/json"
	"reflect"
	"testing"
)

// FuzzAppendPresence checks the presence_state encoder against
// encoding/json's encoding of the same grouping.
func FuzzAppendPresence(f *testing.F) {
	f.Add("alice", "bob", "alice", "ref1", "node-a", int64(1700000000))
	f.Add(`a"b`, "<script>&", "é\u2028", "r\\2", "n\x01", int64(-1))
	f.Add("", "z", "a", "", "", int64(0))
	f.Fuzz(func(t *testing.T, u1, u2, u3, ref, node string, at int64) {
		entries := []PresenceEntry{
			{UserID: u1, Meta: PresenceMeta{PhxRef: ref, Node: node, OnlineAt: at}},
			{UserID: u2, Meta: PresenceMeta{PhxRef: ref + "2", Node: node, OnlineAt: at + 1}},
			{UserID: u3, Meta: PresenceMeta{PhxRef: ref + "3", Node: node, OnlineAt: at - 1}},
		}
		got := appendPresence(nil, entries)
		want, err := json.Marshal(groupMetas(entries))
		if err != nil {
			t.Fatal(err)
		}
		if !json.Valid(got) {
			t.Fatalf("invalid JSON %q", got)
		}
		var g, w map[string]presenceMetas
		if err := json.Unmarshal(got, &g); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(want, &w); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(g, w) {
			t.Fatalf("appendPresence = %s, encoding/json = %s", got, want)
		}
	})
}

func TestAppendPresenceEmpty(t *testing.T) {
	if got := string(appendPresence(nil, nil)); got != "{}" {
		t.Fatalf("empty presence: %s", got)
	}
}
