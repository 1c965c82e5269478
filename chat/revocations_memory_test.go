package chat_test

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/chatd/chatd/chat"
	"github.com/chatd/chatd/chat/chattest"
)

// The memory store is single-node: one instance per test serves every node
// name.
func TestMemoryRevocationsConformance(t *testing.T) {
	var mu sync.Mutex
	stores := make(map[*testing.T]*chat.MemoryRevocations)
	chattest.RunRevocationsTests(t, func(t *testing.T, _ string, ttl time.Duration) chat.Revocations {
		mu.Lock()
		defer mu.Unlock()
		if r := stores[t]; r != nil {
			return r
		}
		r, err := chat.NewMemoryRevocations(chat.MemoryRevocationsConfig{TTL: ttl})
		if err != nil {
			t.Fatal(err)
		}
		stores[t] = r
		return r
	})
}

// A full store refuses a new user's revocation rather than forget one, and
// takes it once an older one has expired; a user it holds is revoked again.
func TestMemoryRevocationsBounded(t *testing.T) {
	const ttl = 300 * time.Millisecond
	r, err := chat.NewMemoryRevocations(chat.MemoryRevocationsConfig{TTL: ttl, MaxUsers: 2})
	if err != nil {
		t.Fatal(err)
	}
	at := time.Unix(1_700_000_000, 0)
	chattest.MustRevoke(t, r, "a", at)
	chattest.MustRevoke(t, r, "b", at)
	if err := r.Revoke(t.Context(), "c", at); !errors.Is(err, chat.ErrRevocationsFull) {
		t.Fatalf("third user's Revoke = %v, want ErrRevocationsFull", err)
	}
	chattest.MustRevoke(t, r, "a", at.Add(time.Second))
	for _, u := range []string{"a", "b"} {
		if got := chattest.RevokedAt(t, r, u); got.IsZero() {
			t.Fatalf("%s forgotten while the store was full", u)
		}
	}
	if got := chattest.RevokedAt(t, r, "c"); !got.IsZero() {
		t.Fatalf("refused revocation of c is remembered: %v", got)
	}
	deadline := time.Now().Add(10 * time.Second)
	for r.Revoke(t.Context(), "c", at) != nil {
		if time.Now().After(deadline) {
			t.Fatal("still full 10 s after every revocation's ttl")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := chattest.RevokedAt(t, r, "c"); !got.Equal(at) {
		t.Fatalf("RevokedAt(c) = %v, want %v", got, at)
	}
}

func TestMemoryRevocationsConfig(t *testing.T) {
	if _, err := chat.NewMemoryRevocations(chat.MemoryRevocationsConfig{TTL: -1}); err == nil {
		t.Fatal("negative TTL accepted")
	}
	if _, err := chat.NewMemoryRevocations(chat.MemoryRevocationsConfig{MaxUsers: -1}); err == nil {
		t.Fatal("negative MaxUsers accepted")
	}
}
