package chat

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// A connection whose token was checked before its user was disconnected on
// this node is refused as it starts; one checked after, or another user's,
// is not.
func TestKickedConnectionsPredatingDisconnect(t *testing.T) {
	h, err := NewHub(Config{}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	before := time.Now()
	time.Sleep(time.Millisecond)
	if n := h.disconnectLocal("alice", "bye", true); n != 0 {
		t.Fatalf("closed %d connections of a user with none", n)
	}
	time.Sleep(time.Millisecond)
	after := time.Now()
	h.sessMu.Lock()
	defer h.sessMu.Unlock()
	for _, tc := range []struct {
		info ConnInfo
		want bool
	}{
		{ConnInfo{UserID: "alice", AuthorizedAt: before}, true},
		{ConnInfo{UserID: "alice", AuthorizedAt: after}, false},
		{ConnInfo{UserID: "alice"}, false},
		{ConnInfo{UserID: "bob", AuthorizedAt: before}, false},
	} {
		k, got := h.kickedLocked(tc.info)
		if got != tc.want {
			t.Errorf("%+v: kicked = %v, want %v", tc.info, got, tc.want)
		}
		if got && (k.code != CloseRevoked || k.reason != "bye") {
			t.Errorf("%+v: kick %+v, want %d bye", tc.info, k, CloseRevoked)
		}
	}
}

// The users remembered that way are bounded, the oldest forgotten first.
func TestKicksBounded(t *testing.T) {
	h, err := NewHub(Config{}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	h.sessMu.Lock()
	defer h.sessMu.Unlock()
	for i := range maxKicks + 10 {
		h.rememberKickLocked(fmt.Sprint("u", i), kick{at: now})
	}
	h.rememberKickLocked("u5000", kick{at: now}) // again: one entry
	if len(h.kicks) > maxKicks || len(h.kickOrder) > maxKicks+1 {
		t.Fatalf("%d kicks, %d in order; at most %d", len(h.kicks), len(h.kickOrder), maxKicks)
	}
	if _, ok := h.kicks["u0"]; ok {
		t.Fatal("the oldest kick was kept past the bound")
	}
	if _, ok := h.kicks[fmt.Sprint("u", maxKicks+9)]; !ok {
		t.Fatal("the newest kick was forgotten")
	}
	// Past kickMemory everything older is forgotten.
	h.rememberKickLocked("late", kick{at: now.Add(kickMemory)})
	if len(h.kicks) != 1 || len(h.kickOrder) != 1 {
		t.Fatalf("%d kicks after kickMemory, want 1", len(h.kicks))
	}
}

func TestCloseReasonCut(t *testing.T) {
	long := strings.Repeat("é", 100) // 200 bytes
	got := closeReason(long, false)
	if len(got) > maxCloseReason || !strings.HasPrefix(long, got) || len(got) < maxCloseReason-1 {
		t.Fatalf("cut to %d bytes: %q", len(got), got)
	}
	if closeReason("", true) != "token revoked" || closeReason("", false) == "" {
		t.Fatal("no default reason")
	}
}
