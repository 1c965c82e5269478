package chattest

import (
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/chatd/chatd/chat"
)

// NewConnLimiterNode returns the ConnLimiter of the node named node, with a
// limit of max connections per user (0: no limit). Every node one test
// makes shares one backend (a Redis server, say), so the limit holds across
// them. An implementation that is not distributed (the in-memory one) may
// return one instance for every name with the same max: the cross-node
// properties then hold trivially. The factory arranges for the node to be
// stopped when t ends.
type NewConnLimiterNode func(t *testing.T, node string, max int) chat.ConnLimiter

// RunConnLimiterTests runs the properties every chat.ConnLimiter has. Each
// test uses users no other test uses, so a factory may share one backend
// across tests. A connection is released on the node that acquired it, as
// a server does.
func RunConnLimiterTests(t *testing.T, newNode NewConnLimiterNode) {
	t.Run("LimitPerUser", func(t *testing.T) { testLimitPerUser(t, newNode) })
	t.Run("ReacquireIsIdempotent", func(t *testing.T) { testReacquire(t, newNode) })
	t.Run("ReleaseFrees", func(t *testing.T) { testReleaseFrees(t, newNode) })
	t.Run("ReleaseUnknownIsNoOp", func(t *testing.T) { testReleaseUnknown(t, newNode) })
	t.Run("OtherUsersUnaffected", func(t *testing.T) { testOtherUsers(t, newNode) })
	t.Run("ZeroMeansNoLimit", func(t *testing.T) { testNoLimit(t, newNode) })
	t.Run("LimitAcrossNodes", func(t *testing.T) { testLimitAcrossNodes(t, newNode) })
	t.Run("ConcurrentAcquiresAcrossNodes", func(t *testing.T) { testAcquireRace(t, newNode, 3, 3, 20) })
}

// UserName returns a user id no other test uses.
func UserName() string { return "user-" + RoomName() }

// MustAcquire fails t unless l.Acquire(user, conn) succeeds.
func MustAcquire(t testing.TB, l chat.ConnLimiter, user, conn string) {
	t.Helper()
	if err := l.Acquire(ctxFor(t), user, conn); err != nil {
		t.Fatalf("Acquire(%s, %s): %v", user, conn, err)
	}
}

// MustRefuse fails t unless l.Acquire(user, conn) fails with
// chat.ErrTooManyConnections.
func MustRefuse(t testing.TB, l chat.ConnLimiter, user, conn string) {
	t.Helper()
	if err := l.Acquire(ctxFor(t), user, conn); !errors.Is(err, chat.ErrTooManyConnections) {
		t.Fatalf("Acquire(%s, %s) = %v, want ErrTooManyConnections", user, conn, err)
	}
}

// MustRelease fails t unless l.Release(user, conn) succeeds.
func MustRelease(t testing.TB, l chat.ConnLimiter, user, conn string) {
	t.Helper()
	if err := l.Release(ctxFor(t), user, conn); err != nil {
		t.Fatalf("Release(%s, %s): %v", user, conn, err)
	}
}

func testLimitPerUser(t *testing.T, newNode NewConnLimiterNode) {
	l := newNode(t, "n-"+RoomName(), 3)
	user := UserName()
	for i := range 3 {
		MustAcquire(t, l, user, fmt.Sprintf("c%d", i))
	}
	MustRefuse(t, l, user, "c3")
	MustRefuse(t, l, user, "c4")
}

func testReacquire(t *testing.T, newNode NewConnLimiterNode) {
	l := newNode(t, "n-"+RoomName(), 2)
	user := UserName()
	MustAcquire(t, l, user, "a")
	MustAcquire(t, l, user, "a")
	MustAcquire(t, l, user, "b") // "a" twice took one slot
	MustRefuse(t, l, user, "c")
	// A held connection is re-acquired even when every slot is taken.
	MustAcquire(t, l, user, "a")
	MustAcquire(t, l, user, "b")
	// One Release frees a twice-acquired slot.
	MustRelease(t, l, user, "a")
	MustAcquire(t, l, user, "c")
	MustRefuse(t, l, user, "d")
}

func testReleaseFrees(t *testing.T, newNode NewConnLimiterNode) {
	l := newNode(t, "n-"+RoomName(), 2)
	user := UserName()
	MustAcquire(t, l, user, "a")
	MustAcquire(t, l, user, "b")
	MustRefuse(t, l, user, "c")
	MustRelease(t, l, user, "a")
	MustAcquire(t, l, user, "c")
	MustRefuse(t, l, user, "a")
	MustRelease(t, l, user, "b")
	MustRelease(t, l, user, "c")
	MustAcquire(t, l, user, "d")
	MustAcquire(t, l, user, "e")
	MustRefuse(t, l, user, "f")
}

func testReleaseUnknown(t *testing.T, newNode NewConnLimiterNode) {
	l := newNode(t, "n-"+RoomName(), 1)
	user := UserName()
	MustRelease(t, l, user, "never-acquired")
	MustRelease(t, l, UserName(), "never-acquired")
	MustAcquire(t, l, user, "a")
	MustRelease(t, l, user, "other")   // not held: a keeps its slot
	MustRelease(t, l, UserName(), "a") // another user's conn of that id
	MustRefuse(t, l, user, "b")
	MustRelease(t, l, user, "a")
	MustRelease(t, l, user, "a") // twice: frees one slot, once
	MustAcquire(t, l, user, "b")
	MustRefuse(t, l, user, "c")
}

func testOtherUsers(t *testing.T, newNode NewConnLimiterNode) {
	l := newNode(t, "n-"+RoomName(), 2)
	u1, u2 := UserName(), UserName()
	MustAcquire(t, l, u1, "a")
	MustAcquire(t, l, u1, "b")
	MustRefuse(t, l, u1, "c")
	// Connection ids are per user: u2's "a" is another connection.
	MustAcquire(t, l, u2, "a")
	MustAcquire(t, l, u2, "c")
	MustRefuse(t, l, u2, "d")
	MustRelease(t, l, u2, "a")
	MustRefuse(t, l, u1, "c")
}

func testNoLimit(t *testing.T, newNode NewConnLimiterNode) {
	l := newNode(t, "n-"+RoomName(), 0)
	user := UserName()
	for i := range 50 {
		MustAcquire(t, l, user, fmt.Sprintf("c%d", i))
	}
	for i := range 50 {
		MustRelease(t, l, user, fmt.Sprintf("c%d", i))
	}
}

func testLimitAcrossNodes(t *testing.T, newNode NewConnLimiterNode) {
	ls := limiterNodes(t, newNode, 3, 3)
	user := UserName()
	for i, l := range ls {
		MustAcquire(t, l, user, fmt.Sprintf("c%d", i))
	}
	for i, l := range ls {
		MustRefuse(t, l, user, fmt.Sprintf("x%d", i))
	}
	MustRelease(t, ls[1], user, "c1")
	MustAcquire(t, ls[2], user, "c3")
	MustRefuse(t, ls[0], user, "x")
}

func limiterNodes(t *testing.T, newNode NewConnLimiterNode, n, max int) []chat.ConnLimiter {
	t.Helper()
	ls := make([]chat.ConnLimiter, n)
	for i := range ls {
		ls[i] = newNode(t, fmt.Sprintf("node%d-%s", i, RoomName()), max)
	}
	return ls
}

// testAcquireRace starts 4×limit Acquires for one user at once, spread
// over nodes nodes, rounds times: exactly limit must succeed each time and
// every other one fail with ErrTooManyConnections. Then the winners release
// and as many new connections get in.
func testAcquireRace(t *testing.T, newNode NewConnLimiterNode, nodes, limit, rounds int) {
	ls := limiterNodes(t, newNode, nodes, limit)
	ctx := ctxFor(t)
	for round := range rounds {
		user := UserName()
		start := make(chan struct{})
		errs := make([]error, 4*limit)
		var wg sync.WaitGroup
		for i := range errs {
			wg.Go(func() {
				<-start
				errs[i] = ls[i%nodes].Acquire(ctx, user, fmt.Sprintf("c%d", i))
			})
		}
		close(start)
		wg.Wait()
		var won []int
		for i, err := range errs {
			switch {
			case err == nil:
				won = append(won, i)
			case errors.Is(err, chat.ErrTooManyConnections):
			default:
				t.Fatalf("round %d: Acquire %d: %v", round, i, err)
			}
		}
		if len(won) != limit {
			t.Fatalf("round %d: %d of %d concurrent Acquires succeeded, want exactly %d", round, len(won), len(errs), limit)
		}
		MustRefuse(t, ls[round%nodes], user, "late")
		for _, i := range won {
			MustRelease(t, ls[i%nodes], user, fmt.Sprintf("c%d", i))
		}
		for i := range limit {
			MustAcquire(t, ls[(round+i)%nodes], user, fmt.Sprintf("again%d", i))
		}
		MustRefuse(t, ls[round%nodes], user, "late")
	}
}
