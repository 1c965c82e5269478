package store

import (
	"context"
	"fmt"
	"testing"

	"github.com/chatd/chatd/chat"
	"github.com/google/uuid"
)

// storeAll writes msgs through a Writer and waits until they are stored.
func storeAll(t testing.TB, db *DB, msgs []chat.Message) {
	t.Helper()
	w := newTestWriter(t, db, WriterConfig{QueueSize: len(msgs) + 1})
	for _, m := range msgs {
		if err := w.Enqueue(m); err != nil {
			t.Fatal(err)
		}
	}
	closeWriter(t, w)
}

// checkMessages fails t unless got is want, in order.
func checkMessages(t testing.TB, what string, got, want []chat.Message) {
	t.Helper()
	if got == nil {
		t.Errorf("%s: nil slice, want an empty one", what)
	}
	if len(got) != len(want) {
		t.Errorf("%s: %d messages, want %d (%s)", what, len(got), len(want), describe(got))
		return
	}
	for i := range got {
		if !sameMessage(want[i], got[i]) {
			t.Errorf("%s: [%d] = %+v, want %+v", what, i, got[i], want[i])
			return
		}
	}
}

func describe(msgs []chat.Message) string {
	s := "bodies"
	for _, m := range msgs {
		s += " " + m.Body
	}
	return s
}

func reversed(msgs []chat.Message) []chat.Message {
	out := make([]chat.Message, len(msgs))
	for i, m := range msgs {
		out[len(msgs)-1-i] = m
	}
	return out
}

func newID(t testing.TB) string {
	t.Helper()
	id, err := uuid.NewV7()
	if err != nil {
		t.Fatal(err)
	}
	return id.String()
}

func TestHistory(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		db := migratedDB(t, b)
		h := NewHistory(db)

		tooOld := newID(t) // before every stored message
		var lobby, other []chat.Message
		var all []chat.Message
		for i := range 260 {
			m := newMessage(t, "lobby", fmt.Sprintf("u%d", i%3), fmt.Sprintf("l%d", i))
			lobby = append(lobby, m)
			all = append(all, m)
			if i%10 == 0 {
				o := newMessage(t, "other", "u", fmt.Sprintf("o%d", i))
				other = append(other, o)
				all = append(all, o)
			}
		}
		notStored := newID(t) // after every stored message
		storeAll(t, db, all)

		t.Run("Recent", func(t *testing.T) {
			for _, tc := range []struct {
				room string
				n    int
				want []chat.Message
			}{
				{"lobby", 3, lobby[257:]},
				{"lobby", 1, lobby[259:]},
				{"lobby", 1000, lobby},
				{"lobby", 0, nil},
				{"lobby", -5, nil},
				{"other", 200, other},
				{"nobody-here", 10, nil},
			} {
				got, err := h.Recent(ctx, tc.room, tc.n)
				if err != nil {
					t.Fatalf("Recent(%s, %d): %v", tc.room, tc.n, err)
				}
				checkMessages(t, fmt.Sprintf("Recent(%s, %d)", tc.room, tc.n), got, tc.want)
			}
		})

		t.Run("After", func(t *testing.T) {
			for _, tc := range []struct {
				name      string
				room, id  string
				limit     int
				want      []chat.Message
				wantFound bool
			}{
				{"middle", "lobby", lobby[4].ID, 3, lobby[5:8], true},
				{"rest", "lobby", lobby[250].ID, 100, lobby[251:], true},
				{"newest", "lobby", lobby[259].ID, 100, nil, true},
				{"zero limit", "lobby", lobby[10].ID, 0, nil, true},
				{"other room's id", "lobby", other[3].ID, 5, nil, false},
				{"unknown id, after all", "lobby", notStored, 5, nil, false},
				{"too old", "lobby", tooOld, 4, lobby[:4], false},
				{"not an id", "lobby", "garbage", 5, nil, false},
				{"empty id", "lobby", "", 2, lobby[:2], false},
				{"unknown room", "nobody-here", lobby[1].ID, 5, nil, false},
			} {
				got, found, err := h.After(ctx, tc.room, tc.id, tc.limit)
				if err != nil {
					t.Fatalf("%s: After: %v", tc.name, err)
				}
				if found != tc.wantFound {
					t.Errorf("%s: found = %v, want %v", tc.name, found, tc.wantFound)
				}
				if tc.name == "other room's id" {
					// Ids of other rooms are no reference point in this
					// one; only found matters.
					continue
				}
				checkMessages(t, tc.name, got, tc.want)
			}
		})

		t.Run("Page", func(t *testing.T) {
			for _, tc := range []struct {
				name string
				q    PageQuery
				want []chat.Message
			}{
				{"default: newest first, 50", PageQuery{}, reversed(lobby[210:])},
				{"limit", PageQuery{Limit: 5}, reversed(lobby[255:])},
				{"limit capped", PageQuery{Limit: 1000}, reversed(lobby[60:])},
				{"negative limit is the default", PageQuery{Limit: -1}, reversed(lobby[210:])},
				{"before", PageQuery{Before: lobby[100].ID, Limit: 10}, reversed(lobby[90:100])},
				{"before the first", PageQuery{Before: lobby[0].ID}, nil},
				{"before, short page", PageQuery{Before: lobby[3].ID, Limit: 10}, reversed(lobby[:3])},
				{"after: oldest first", PageQuery{After: lobby[100].ID, Limit: 10}, lobby[101:111]},
				{"after, default limit", PageQuery{After: lobby[0].ID}, lobby[1:51]},
				{"after the last", PageQuery{After: lobby[259].ID}, nil},
				{"after too old", PageQuery{After: tooOld, Limit: 3}, lobby[:3]},
				{"after and before", PageQuery{After: lobby[10].ID, Before: lobby[14].ID}, lobby[11:14]},
				{"after unknown id", PageQuery{After: notStored}, nil},
			} {
				got, err := h.Page(ctx, "lobby", tc.q)
				if err != nil {
					t.Fatalf("%s: Page: %v", tc.name, err)
				}
				checkMessages(t, tc.name, got, tc.want)
			}
		})

		t.Run("Page walks", func(t *testing.T) {
			// Back in time from the newest, page by page.
			var back []chat.Message
			q := PageQuery{Limit: 33}
			for {
				page, err := h.Page(ctx, "lobby", q)
				if err != nil {
					t.Fatal(err)
				}
				back = append(back, page...)
				if len(page) < q.Limit {
					break
				}
				q.Before = page[len(page)-1].ID
			}
			checkMessages(t, "walking back", back, reversed(lobby))

			// Forward from the oldest.
			var fwd []chat.Message
			q = PageQuery{After: tooOld, Limit: MaxPageLimit}
			for {
				page, err := h.Page(ctx, "lobby", q)
				if err != nil {
					t.Fatal(err)
				}
				fwd = append(fwd, page...)
				if len(page) < q.Limit {
					break
				}
				q.After = page[len(page)-1].ID
			}
			checkMessages(t, "walking forward", fwd, lobby)
		})

		t.Run("cancelled context", func(t *testing.T) {
			cctx, cancel := context.WithCancel(ctx)
			cancel()
			if _, err := h.Recent(cctx, "lobby", 5); err == nil {
				t.Error("Recent with a cancelled ctx succeeded")
			}
			if _, _, err := h.After(cctx, "lobby", lobby[0].ID, 5); err == nil {
				t.Error("After with a cancelled ctx succeeded")
			}
			if _, err := h.Page(cctx, "lobby", PageQuery{}); err == nil {
				t.Error("Page with a cancelled ctx succeeded")
			}
		})
	})
}

// TestHistoryErase: a message taken down leaves every history query, also
// when it was erased before the writer stored it (a lagging writer's
// insert does not bring it back); its id still counts as found for After.
func TestHistoryErase(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		db := migratedDB(t, b)
		h := NewHistory(db)
		var msgs []chat.Message
		for i := range 5 {
			msgs = append(msgs, newMessage(t, "erase", "u", fmt.Sprintf("m%d", i)))
		}
		storeAll(t, db, msgs[:4])

		if got, found, err := h.Message(ctx, "erase", msgs[1].ID); err != nil || !found || !sameMessage(msgs[1], got) {
			t.Fatalf("Message(%s) = %+v, %v, %v; want it", msgs[1].ID, got, found, err)
		}
		if _, found, err := h.Message(ctx, "other", msgs[1].ID); err != nil || found {
			t.Fatalf("Message of another room = %v, %v; want not found", found, err)
		}
		// m1 is stored; m4 is not yet (its writer lags).
		for _, m := range []chat.Message{msgs[1], msgs[4], msgs[1]} {
			if err := h.Erase(ctx, m); err != nil {
				t.Fatalf("Erase(%s): %v", m.Body, err)
			}
		}
		storeAll(t, db, msgs) // the lagging writer, and a retry of the rest
		kept := []chat.Message{msgs[0], msgs[2], msgs[3]}

		for _, id := range []string{msgs[1].ID, msgs[4].ID} {
			if _, found, err := h.Message(ctx, "erase", id); err != nil || found {
				t.Fatalf("Message(%s) after Erase = %v, %v; want not found", id, found, err)
			}
		}
		recent, err := h.Recent(ctx, "erase", 10)
		if err != nil {
			t.Fatal(err)
		}
		checkMessages(t, "Recent", recent, kept)
		after, found, err := h.After(ctx, "erase", msgs[1].ID, 10)
		if err != nil || !found {
			t.Fatalf("After the erased id: found %v, err %v; want found", found, err)
		}
		checkMessages(t, "After", after, kept[1:])
		page, err := h.Page(ctx, "erase", PageQuery{})
		if err != nil {
			t.Fatal(err)
		}
		checkMessages(t, "Page", page, reversed(kept))
		page, err = h.Page(ctx, "erase", PageQuery{After: msgs[0].ID})
		if err != nil {
			t.Fatal(err)
		}
		checkMessages(t, "Page after", page, kept[1:])

		// The bodies are gone from the table, not only from the queries.
		var bodies []string
		if err := db.gorm.Table("messages").Where("id IN ?", []string{msgs[1].ID, msgs[4].ID}).
			Where("deleted_at IS NOT NULL").Pluck("body", &bodies).Error; err != nil {
			t.Fatal(err)
		}
		if len(bodies) != 2 || bodies[0] != "" || bodies[1] != "" {
			t.Fatalf("tombstone bodies %q, want two empty ones", bodies)
		}
	})
}
