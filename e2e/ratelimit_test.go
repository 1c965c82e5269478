package e2e

import (
	"context"
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/chatd/chatd/internal/testsvc"
)

// The per-user message limit holds across reconnects and across nodes,
// and joins have a limit of their own (issue 13, item 13): before, each
// connection started with a full bucket on its node, so 5 quick
// reconnects at rate 1/s, burst 5, got 25 messages through, and joins
// were not limited at all.
func TestRateLimitAcrossReconnectsAndNodes(t *testing.T) {
	redis := testsvc.StartRedis(t)
	const rate, burst, joinBurst = 1.0, 5, 6
	nodes := clStartCluster(t, redis, 2, map[string]string{
		"CHAT_USER_RATE":  fmt.Sprint(rate),
		"CHAT_USER_BURST": fmt.Sprint(burst),
		"CHAT_JOIN_RATE":  "0.01", // no join comes back within the test
		"CHAT_JOIN_BURST": fmt.Sprint(joinBurst),
	})

	t.Run("messages", func(t *testing.T) {
		const topic, connects, pushes = "room:rated", 5, 10
		start := time.Now()
		accepted, refused := 0, 0
		for i := range connects {
			cl := psDial(t, nodes[i%2].Chatd, "pusher")
			cl.join(t, topic, nil)
			for range pushes {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				r, err := cl.call(ctx, topic, "new_msg", map[string]string{"body": "as fast as possible"})
				cancel()
				if err != nil {
					t.Fatalf("push: %v", err)
				}
				switch {
				case r.Status == "ok":
					accepted++
				case r.reason() == "rate_limited":
					refused++
				default:
					t.Fatalf("push answered %s", r.Raw)
				}
			}
			cl.close()
		}
		elapsed := time.Since(start)
		// A full bucket, plus what refilled while the test ran.
		most := burst + int(math.Ceil(elapsed.Seconds()*rate))
		t.Logf("%d connections alternating over 2 nodes pushed %d messages in %s: %d accepted (at most %d allowed), %d rate_limited",
			connects, connects*pushes, elapsed.Round(time.Millisecond), accepted, most, refused)
		if accepted < burst || accepted > most {
			t.Fatalf("%d messages accepted, want %d to %d", accepted, burst, most)
		}
	})

	t.Run("joins", func(t *testing.T) {
		a, b := psDial(t, nodes[0].Chatd, "joiner"), psDial(t, nodes[1].Chatd, "joiner")
		for i := range joinBurst {
			[]*psClient{a, b}[i%2].join(t, fmt.Sprintf("room:j%d", i), nil)
		}
		for i, cl := range []*psClient{a, b, psDial(t, nodes[1].Chatd, "joiner")} {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			r, err := cl.call(ctx, fmt.Sprintf("room:over%d", i), "phx_join", struct{}{})
			cancel()
			if err != nil {
				t.Fatal(err)
			}
			if r.Status != "error" || r.reason() != "rate_limited" {
				t.Fatalf("join %d past the burst of %d (connection %d): %s, want rate_limited", joinBurst+i+1, joinBurst, i, r.Raw)
			}
		}
		t.Logf("%d joins over 2 nodes accepted, the next ones refused with rate_limited on either node and after a reconnect", joinBurst)
	})
}
