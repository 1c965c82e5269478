package cluster_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatd/chatd/chat"
	"github.com/chatd/chatd/chat/chattest"
	"github.com/chatd/chatd/cluster"
	"github.com/chatd/chatd/internal/testsvc"
)

// clusterClient returns a client of c as the node makes it (no retries,
// context deadlines on the socket), closed when tb ends.
func clusterClient(tb testing.TB, c *testsvc.RedisCluster) *redis.ClusterClient {
	cc := redis.NewClusterClient(&redis.ClusterOptions{
		Addrs: c.Addrs(), MaxRetries: -1, ContextTimeoutEnabled: true,
		DialTimeout: time.Second,
	})
	tb.Cleanup(func() { cc.Close() })
	return cc
}

// clusterNodes makes broker nodes on the Redis Cluster c, each with its
// own cluster client, not running yet.
func clusterNodes(c *testsvc.RedisCluster, cfg cluster.RedisBrokerConfig) chattest.NewBrokerNode {
	return func(t *testing.T) chat.Broker {
		cfg := cfg
		cfg.Client = clusterClient(t, c)
		cfg.Logger = testsvc.Logger(t)
		b, err := cluster.NewRedisBroker(cfg)
		return closing(t, b, err)
	}
}

// The broker's conformance suites, on a 3-master Redis Cluster: each room
// on the master of its slot, with sharded pub/sub.
func TestRedisClusterBroker(t *testing.T) {
	c := testsvc.StartRedisCluster(t, 3)
	nodes := clusterNodes(c, cluster.RedisBrokerConfig{})
	t.Run("Broker", func(t *testing.T) { chattest.RunBrokerTests(t, nodes) })
	t.Run("Cluster", func(t *testing.T) { chattest.RunClusterBrokerTests(t, nodes) })
	t.Run("Log", func(t *testing.T) {
		chattest.RunLogTests(t, nodes)
		chattest.RunClusterLogTests(t, nodes)
	})
}

// resyncRecorder records, for each Resync, which of the rooms asked about
// it named.
type resyncRecorder struct {
	rooms []string
	mu    sync.Mutex
	calls [][]string // per Resync, the rooms of rooms it covered
}

func (r *resyncRecorder) Resync(cutOff func(string) bool) {
	var got []string
	for _, room := range r.rooms {
		if cutOff == nil || cutOff(room) {
			got = append(got, room)
		}
	}
	r.mu.Lock()
	r.calls = append(r.calls, got)
	r.mu.Unlock()
}

func (*resyncRecorder) RoomLastID(string) string { return "" }

func (r *resyncRecorder) Calls() [][]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([][]string(nil), r.calls...)
}

// roomsOnEveryMaster returns n rooms and the index of the master of each
// room's slot, failing unless every master has one.
func roomsOnEveryMaster(t *testing.T, c *testsvc.RedisCluster, prefix string, n int) ([]string, map[string]int) {
	t.Helper()
	rooms := make([]string, n)
	master := make(map[string]int, n)
	count := make(map[int]int)
	for i := range rooms {
		rooms[i] = fmt.Sprintf("%s-%d", chattest.RoomName(), i)
		m := c.Master(t, prefix+":{"+rooms[i]+"}:log")
		master[rooms[i]] = m
		count[m]++
	}
	if len(count) != len(c.Addrs()) {
		t.Fatalf("the slots of %d rooms are on %d of %d masters: %v", n, len(count), len(c.Addrs()), count)
	}
	return rooms, master
}

// A master that goes away takes only its own rooms down: their
// publications are refused as not published, Ping names it, and the rooms
// of the other masters keep relaying. Once it is back its rooms relay
// again, and the node is told to resync exactly those rooms.
func TestRedisClusterBrokerMasterDown(t *testing.T) {
	c := testsvc.StartRedisCluster(t, 3)
	rooms, master := roomsOnEveryMaster(t, c, "chatd", 24)
	ev := &resyncRecorder{rooms: rooms}
	cfg := cluster.RedisBrokerConfig{Client: clusterClient(t, c), PingInterval: 200 * time.Millisecond, OpTimeout: time.Second, MaxBackoff: 200 * time.Millisecond}
	pubRec, subRec := chattest.NewRecorder(), chattest.NewRecorder()
	pub := startBrokerEvents(t, cfg, pubRec.Handle, nil)
	cfg.Client = clusterClient(t, c)
	sub := startBrokerEvents(t, cfg, subRec.Handle, ev)
	ctx := context.Background()
	ids := make(map[string]string)
	publish := func(b *cluster.RedisBroker, room, text string) error {
		id := chattest.NextID(ids[room])
		octx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		err := b.Publish(octx, room, id, []byte(text))
		if err == nil {
			ids[room] = id
		}
		return err
	}
	for _, room := range rooms {
		if err := sub.Subscribe(ctx, room); err != nil {
			t.Fatal(err)
		}
		if err := publish(pub, room, room+" before"); err != nil {
			t.Fatal(err)
		}
	}
	for _, room := range rooms {
		subRec.WaitData(t, room, []byte(room+" before"))
	}
	if s := sub.Stats(); s.Rooms != len(rooms) || s.Connections != 3 {
		t.Fatalf("subscriber stats %+v: want %d rooms on 3 pub/sub connections", s, len(rooms))
	}

	const down = 1
	c.Stop(t, down)
	c.WaitFailed(t, down)
	addr := c.Addrs()[down]
	// The subscriber notices its connection to the master is gone.
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := sub.Ping(ctx)
		if err != nil && strings.Contains(err.Error(), addr) {
			for i, a := range c.Addrs() {
				if i != down && strings.Contains(err.Error(), a) {
					t.Fatalf("Ping names master %s, which is up: %v", a, err)
				}
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Ping = %v, want an error naming master %s", err, addr)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, room := range rooms {
		if master[room] == down {
			for _, b := range []*cluster.RedisBroker{pub, sub} {
				if err := publish(b, room, room+" during"); !errors.Is(err, chat.ErrNotPublished) {
					t.Fatalf("publish to room %s on the down master = %v, want chat.ErrNotPublished", room, err)
				}
			}
			continue
		}
		if err := publish(pub, room, room+" during"); err != nil {
			t.Fatalf("publish to room %s on a live master: %v", room, err)
		}
		subRec.WaitData(t, room, []byte(room+" during"))
	}
	if n := len(ev.Calls()); n != 0 {
		t.Fatalf("%d Resync calls while a master is down, want none yet", n)
	}

	c.Start(t, down)
	deadline = time.Now().Add(30 * time.Second)
	for sub.Ping(ctx) != nil {
		if time.Now().After(deadline) {
			t.Fatalf("Ping after the master returned: %v", sub.Ping(ctx))
		}
		time.Sleep(50 * time.Millisecond)
	}
	calls := ev.Calls()
	if len(calls) != 1 {
		t.Fatalf("Resync calls %v, want one, for the down master's rooms", calls)
	}
	var want []string
	for _, room := range rooms {
		if master[room] == down {
			want = append(want, room)
		}
	}
	if fmt.Sprint(calls[0]) != fmt.Sprint(want) {
		t.Fatalf("Resync covered %v, want the down master's rooms %v", calls[0], want)
	}
	// Its rooms relay again: their logs were lost with the master's data,
	// so the first message starts each log anew.
	for _, room := range want {
		deadline := time.Now().Add(10 * time.Second)
		for {
			err := publish(pub, room, room+" after")
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("publish to room %s after its master returned: %v", room, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
		subRec.WaitData(t, room, []byte(room+" after"))
	}
}

// A room whose slot moves to another master (resharding, or a replica
// promoted in its master's place) follows it: the node subscribes to it on
// the new master, has its members resync, and it relays again there. The
// other rooms of the old master are left alone.
func TestRedisClusterBrokerSlotMoves(t *testing.T) {
	c := testsvc.StartRedisCluster(t, 3)
	rooms, master := roomsOnEveryMaster(t, c, "chatd", 24)
	var moving, staying string
	for _, room := range rooms {
		if master[room] != master[rooms[0]] {
			continue
		}
		if moving == "" {
			moving = room
		} else if staying == "" {
			staying = room
		}
	}
	if staying == "" {
		t.Fatalf("no two rooms on master %d: %v", master[rooms[0]], master)
	}
	ev := &resyncRecorder{rooms: []string{moving, staying}}
	cfg := cluster.RedisBrokerConfig{Client: clusterClient(t, c), PingInterval: 200 * time.Millisecond, OpTimeout: time.Second, MaxBackoff: 200 * time.Millisecond}
	pubRec, subRec := chattest.NewRecorder(), chattest.NewRecorder()
	pub := startBrokerEvents(t, cfg, pubRec.Handle, nil)
	cfg.Client = clusterClient(t, c)
	sub := startBrokerEvents(t, cfg, subRec.Handle, ev)
	ctx := context.Background()
	last := make(map[string]string)
	publish := func(room, text string) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for {
			id := chattest.NextID(last[room])
			err := pub.Publish(ctx, room, id, []byte(text))
			if err == nil {
				last[room] = id
				subRec.WaitData(t, room, []byte(text))
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("publish %q to room %s: %v", text, room, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	for _, room := range []string{moving, staying} {
		if err := sub.Subscribe(ctx, room); err != nil {
			t.Fatal(err)
		}
		publish(room, room+" before")
	}

	to := (master[moving] + 1) % 3
	c.MoveSlot(t, "chatd:{"+moving+"}:log", to)
	deadline := time.Now().Add(20 * time.Second)
	for len(ev.Calls()) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no Resync after the room's slot moved")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if calls := ev.Calls(); len(calls) != 1 || fmt.Sprint(calls[0]) != fmt.Sprint([]string{moving}) {
		t.Fatalf("Resync calls %v, want one for room %s only", calls, moving)
	}
	// The log moved with the slot: the order goes on from it.
	publish(moving, moving+" after")
	publish(staying, staying+" after")
	if calls := ev.Calls(); len(calls) != 1 {
		t.Fatalf("Resync calls %v, want only the one for room %s: the other rooms' connection stayed", calls, moving)
	}
	if got := len(subRec.Room(moving)); got != 2 {
		t.Fatalf("room %s: %d deliveries, want 2: %q", moving, got, subRec.Room(moving))
	}
	if s := sub.Stats(); s.Connections != 2 || s.Rooms != 2 {
		t.Fatalf("subscriber stats %+v: want 2 rooms on 2 masters' connections", s)
	}
}
