package chattest

import (
	"sync"
	"testing"
	"time"

	"github.com/chatd/chatd/chat"
)

// NewRevocationsNode returns the Revocations of the node named node, that
// remembers a revocation for ttl. Every node one test makes shares one
// backend, so a revocation made on one is seen by all; an implementation
// that is not distributed may return one instance for every name with the
// same ttl. The factory arranges for the node to be stopped when t ends.
type NewRevocationsNode func(t *testing.T, node string, ttl time.Duration) chat.Revocations

// RunRevocationsTests runs the properties every chat.Revocations has. Each
// test uses users no other test uses.
func RunRevocationsTests(t *testing.T, newNode NewRevocationsNode) {
	t.Run("NoneUntilRevoked", func(t *testing.T) { testRevokeNone(t, newNode) })
	t.Run("RevokedToTheSecond", func(t *testing.T) { testRevokeSecond(t, newNode) })
	t.Run("LatestWins", func(t *testing.T) { testRevokeLatest(t, newNode) })
	t.Run("UsersAreIndependent", func(t *testing.T) { testRevokeUsers(t, newNode) })
	t.Run("SharedAcrossNodes", func(t *testing.T) { testRevokeAcrossNodes(t, newNode) })
	t.Run("ForgottenAfterTTL", func(t *testing.T) { testRevokeTTL(t, newNode) })
	t.Run("ConcurrentRevokes", func(t *testing.T) { testRevokeRace(t, newNode) })
}

// revokeTTL outlives every test but ForgottenAfterTTL.
const revokeTTL = time.Hour

// MustRevoke fails t unless r.Revoke(user, at) succeeds.
func MustRevoke(t testing.TB, r chat.Revocations, user string, at time.Time) {
	t.Helper()
	if err := r.Revoke(ctxFor(t), user, at); err != nil {
		t.Fatalf("Revoke(%s, %s): %v", user, at, err)
	}
}

// RevokedAt returns r.RevokedAt(user), failing t on an error.
func RevokedAt(t testing.TB, r chat.Revocations, user string) time.Time {
	t.Helper()
	at, err := r.RevokedAt(ctxFor(t), user)
	if err != nil {
		t.Fatalf("RevokedAt(%s): %v", user, err)
	}
	return at
}

func wantRevokedAt(t testing.TB, r chat.Revocations, user string, want time.Time) {
	t.Helper()
	if got := RevokedAt(t, r, user); !got.Equal(want) {
		t.Fatalf("RevokedAt(%s) = %v, want %v", user, got, want)
	}
}

func testRevokeNone(t *testing.T, newNode NewRevocationsNode) {
	r := newNode(t, "a", revokeTTL)
	wantRevokedAt(t, r, UserName(), time.Time{})
}

func testRevokeSecond(t *testing.T, newNode NewRevocationsNode) {
	r, user := newNode(t, "a", revokeTTL), UserName()
	at := time.Unix(1_700_000_000, 987_654_321)
	MustRevoke(t, r, user, at)
	wantRevokedAt(t, r, user, time.Unix(1_700_000_000, 0))
}

func testRevokeLatest(t *testing.T, newNode NewRevocationsNode) {
	r, user := newNode(t, "a", revokeTTL), UserName()
	later := time.Unix(1_700_000_100, 0)
	MustRevoke(t, r, user, time.Unix(1_700_000_000, 0))
	MustRevoke(t, r, user, later)
	wantRevokedAt(t, r, user, later)
	// An earlier revocation arriving late does not undo the later one.
	MustRevoke(t, r, user, time.Unix(1_700_000_050, 0))
	wantRevokedAt(t, r, user, later)
}

func testRevokeUsers(t *testing.T, newNode NewRevocationsNode) {
	r := newNode(t, "a", revokeTTL)
	alice, bob := UserName(), UserName()
	MustRevoke(t, r, alice, time.Unix(1_700_000_000, 0))
	wantRevokedAt(t, r, bob, time.Time{})
	// A user id that is a prefix of another is another user.
	wantRevokedAt(t, r, alice[:len(alice)-1], time.Time{})
}

func testRevokeAcrossNodes(t *testing.T, newNode NewRevocationsNode) {
	a, b := newNode(t, "a", revokeTTL), newNode(t, "b", revokeTTL)
	user := UserName()
	at := time.Unix(1_700_000_000, 0)
	MustRevoke(t, a, user, at)
	wantRevokedAt(t, b, user, at)
	later := at.Add(time.Minute)
	MustRevoke(t, b, user, later)
	wantRevokedAt(t, a, user, later)
}

func testRevokeTTL(t *testing.T, newNode NewRevocationsNode) {
	const ttl = 300 * time.Millisecond
	r, user := newNode(t, "a", ttl), UserName()
	at := time.Unix(1_700_000_000, 0)
	MustRevoke(t, r, user, at)
	wantRevokedAt(t, r, user, at)
	// A new revocation keeps the user's for ttl from then.
	time.Sleep(ttl / 2)
	MustRevoke(t, r, user, at)
	time.Sleep(ttl / 2)
	wantRevokedAt(t, r, user, at)
	deadline := time.Now().Add(waitTimeout)
	for !RevokedAt(t, r, user).IsZero() {
		if time.Now().After(deadline) {
			t.Fatalf("revocation still remembered %s after its ttl of %s", waitTimeout, ttl)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Forgotten, it can be made again.
	MustRevoke(t, r, user, at)
	wantRevokedAt(t, r, user, at)
}

// testRevokeRace revokes one user from two nodes at once with many times:
// the latest is what both read.
func testRevokeRace(t *testing.T, newNode NewRevocationsNode) {
	nodes := []chat.Revocations{newNode(t, "a", revokeTTL), newNode(t, "b", revokeTTL)}
	user := UserName()
	base := time.Unix(1_700_000_000, 0)
	const n = 20
	var wg sync.WaitGroup
	errs := make(chan error, 2*n)
	for i := range n {
		for j, r := range nodes {
			wg.Go(func() {
				if err := r.Revoke(ctxFor(t), user, base.Add(time.Duration(2*i+j)*time.Second)); err != nil {
					errs <- err
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("Revoke: %v", err)
	}
	want := base.Add((2*n - 1) * time.Second)
	for _, r := range nodes {
		wantRevokedAt(t, r, user, want)
	}
}
