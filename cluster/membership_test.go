package cluster

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// testLogger logs through t.Logf and goes quiet once the test is over
// (memberlist may still log from its goroutines while shutting down).
// CHATD_TEST_DEBUG=1 includes debug records (memberlist's own chatter).
func testLogger(t testing.TB, node string) *slog.Logger {
	t.Helper()
	h := &tHandler{t: t, done: new(atomic.Bool), mu: new(sync.Mutex), level: slog.LevelInfo}
	if os.Getenv("CHATD_TEST_DEBUG") != "" {
		h.level = slog.LevelDebug
	}
	t.Cleanup(func() { h.mu.Lock(); h.done.Store(true); h.mu.Unlock() })
	return slog.New(h).With("node", node)
}

type tHandler struct {
	t     testing.TB
	done  *atomic.Bool
	mu    *sync.Mutex
	level slog.Level
	attrs string
}

func (h *tHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= h.level }

func (h *tHandler) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Time.Format("15:04:05.000 "))
	b.WriteString(r.Level.String())
	b.WriteString(" ")
	b.WriteString(r.Message)
	b.WriteString(h.attrs)
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.done.Load() {
		h.t.Logf("%s", b.String())
	}
	return nil
}

func (h *tHandler) WithAttrs(as []slog.Attr) slog.Handler {
	h2 := *h
	for _, a := range as {
		h2.attrs += fmt.Sprintf(" %s=%v", a.Key, a.Value)
	}
	return &h2
}

func (h *tHandler) WithGroup(string) slog.Handler { return h }

// freePort returns a loopback port that is free for both TCP and UDP at the
// time of the call, for a seed that must be known before its node starts.
func freePort(t testing.TB) int {
	t.Helper()
	for range 50 {
		tl, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatalf("listen tcp: %v", err)
		}
		port := tl.Addr().(*net.TCPAddr).Port
		ul, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
		tl.Close()
		if err == nil {
			ul.Close()
			return port
		}
	}
	t.Fatal("no port free for both TCP and UDP")
	return 0
}

// testNode is one Membership with metadata the test can change.
type testNode struct {
	name  string
	m     *Membership
	conns atomic.Int64

	mu     sync.Mutex
	leaves []Member // OnLeave calls, in order
}

func (n *testNode) leaveCalls() []Member {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]Member(nil), n.leaves...)
}

func (n *testNode) httpAddr() string {
	return "127.0.0.1:4" + strconv.Itoa(len(n.name)) + "00/" + n.name
}

// startNode starts a node on 127.0.0.1 with the fast failure-detection
// profile. bind "" means an ephemeral port; edit adjusts the config.
func startNode(t *testing.T, name, bind string, seeds []string, edit func(*MembershipConfig)) *testNode {
	t.Helper()
	n, err := tryStartNode(t, name, bind, seeds, edit)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// tryStartNode is startNode returning Start's error (a port taken since
// it was picked) instead of failing the test.
func tryStartNode(t *testing.T, name, bind string, seeds []string, edit func(*MembershipConfig)) (*testNode, error) {
	t.Helper()
	if bind == "" {
		bind = "127.0.0.1:0"
	}
	n := &testNode{name: name}
	cfg := MembershipConfig{
		NodeName:           name,
		BindAddr:           bind,
		Join:               seeds,
		RejoinInterval:     100 * time.Millisecond,
		SeedRejoinInterval: 200 * time.Millisecond,
		MetaInterval:       50 * time.Millisecond,
		Profile:            ProfileLocal,
		Logger:             testLogger(t, name),
		Meta: func() NodeMeta {
			return NodeMeta{HTTPAddr: n.httpAddr(), Connections: int(n.conns.Load()), Users: 1, Rooms: 2}
		},
	}
	if edit != nil {
		edit(&cfg)
	}
	m, err := NewMembership(cfg)
	if err != nil {
		t.Fatalf("NewMembership(%s): %v", name, err)
	}
	n.m = m
	m.OnLeave(func(mb Member) {
		n.mu.Lock()
		n.leaves = append(n.leaves, mb)
		n.mu.Unlock()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := m.Start(ctx); err != nil {
		return nil, fmt.Errorf("Start(%s): %w", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := m.Close(ctx); err != nil {
			t.Errorf("Close(%s): %v", name, err)
		}
	})
	return n, nil
}

// eventually polls cond until it returns "" (success) or the deadline
// passes, then fails with cond's last explanation.
func eventually(t *testing.T, within time.Duration, cond func() string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		why := cond()
		if why == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", within, why)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func memberNamed(ms []Member, name string) (Member, bool) {
	for _, mb := range ms {
		if mb.Name == name {
			return mb, true
		}
	}
	return Member{}, false
}

// allSee reports "" once every observer sees exactly the named nodes alive.
func allSee(observers []*testNode, alive ...*testNode) string {
	for _, o := range observers {
		if n := o.m.NumMembers(); n != len(alive) {
			return fmt.Sprintf("%s: NumMembers = %d, want %d", o.name, n, len(alive))
		}
		ms := o.m.Members()
		for _, a := range alive {
			mb, ok := memberNamed(ms, a.name)
			if !ok || mb.State != MemberAlive {
				return fmt.Sprintf("%s does not see %s alive: %+v", o.name, a.name, ms)
			}
		}
	}
	return ""
}

// threeNodes starts a, then b and c joining through a.
func threeNodes(t *testing.T) (a, b, c *testNode) {
	t.Helper()
	a = startNode(t, "node-a", "", nil, nil)
	seed := []string{a.m.LocalAddr()}
	b = startNode(t, "node-b", "", seed, nil)
	c = startNode(t, "node-c", "", seed, nil)
	all := []*testNode{a, b, c}
	eventually(t, 10*time.Second, func() string { return allSee(all, all...) })
	return a, b, c
}

func TestMembershipThreeNodesMetadata(t *testing.T) {
	a, b, c := threeNodes(t)
	all := []*testNode{a, b, c}

	for _, o := range all {
		ms := o.m.Members()
		if len(ms) != 3 {
			t.Fatalf("%s: %d members, want 3: %+v", o.name, len(ms), ms)
		}
		for i, mb := range ms {
			want := all[i] // Members is sorted by name
			if mb.Name != want.name {
				t.Fatalf("%s: member %d is %q, want %q", o.name, i, mb.Name, want.name)
			}
			if mb.Addr != want.m.LocalAddr() {
				t.Errorf("%s sees %s at %q, want %q", o.name, mb.Name, mb.Addr, want.m.LocalAddr())
			}
			if mb.Local != (mb.Name == o.name) {
				t.Errorf("%s: %s Local = %v", o.name, mb.Name, mb.Local)
			}
			if mb.Meta.HTTPAddr != want.httpAddr() || mb.Meta.Users != 1 || mb.Meta.Rooms != 2 || mb.Meta.StartedAt.IsZero() {
				t.Errorf("%s sees %s meta %+v", o.name, mb.Name, mb.Meta)
			}
			if mb.Leaving || mb.Since.IsZero() {
				t.Errorf("%s sees %s as %+v", o.name, mb.Name, mb)
			}
		}
	}

	// A metadata change reaches the others within a few seconds.
	start := time.Now()
	b.conns.Store(42)
	eventually(t, 5*time.Second, func() string {
		for _, o := range all {
			mb, _ := memberNamed(o.m.Members(), b.name)
			if mb.Meta.Connections != 42 {
				return fmt.Sprintf("%s sees %s with %d connections", o.name, b.name, mb.Meta.Connections)
			}
		}
		return ""
	})
	t.Logf("metadata change propagated in %s", time.Since(start).Round(time.Millisecond))
}

func TestMembershipGracefulLeave(t *testing.T) {
	a, b, c := threeNodes(t)

	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.m.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	closeTook := time.Since(start)
	if err := c.m.Close(ctx); err != nil { // idempotent
		t.Fatalf("second Close: %v", err)
	}

	for _, o := range []*testNode{a, b} {
		eventually(t, 3*time.Second, func() string {
			mb, ok := memberNamed(o.m.Members(), c.name)
			if !ok || mb.State != MemberLeft {
				return fmt.Sprintf("%s sees %s as %+v", o.name, c.name, mb)
			}
			calls := o.leaveCalls()
			if len(calls) != 1 || calls[0].Name != c.name || calls[0].State != MemberLeft {
				return fmt.Sprintf("%s OnLeave calls: %+v", o.name, calls)
			}
			if calls[0].Meta.HTTPAddr != c.httpAddr() {
				return fmt.Sprintf("%s OnLeave member lost its metadata: %+v", o.name, calls[0])
			}
			return ""
		})
		if n := o.m.NumMembers(); n != 2 {
			t.Errorf("%s: NumMembers = %d after the leave, want 2", o.name, n)
		}
	}
	t.Logf("Close took %s; peers saw the leave %s after Close began",
		closeTook.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))

	// The node that left reported itself as left too, and no OnLeave for itself.
	if calls := c.leaveCalls(); len(calls) != 0 {
		t.Errorf("closed node's OnLeave calls: %+v", calls)
	}
}

func TestMembershipFailureDetection(t *testing.T) {
	a, b, c := threeNodes(t)

	start := time.Now()
	c.m.shutdownWithoutLeave() // a crash: no leave message
	detected := make(map[string]time.Duration)
	eventually(t, 15*time.Second, func() string {
		for _, o := range []*testNode{a, b} {
			mb, _ := memberNamed(o.m.Members(), c.name)
			if mb.State != MemberDead {
				return fmt.Sprintf("%s sees %s as %q", o.name, c.name, mb.State)
			}
			if _, ok := detected[o.name]; !ok {
				detected[o.name] = time.Since(start)
			}
			calls := o.leaveCalls()
			if len(calls) != 1 || calls[0].Name != c.name || calls[0].State != MemberDead {
				return fmt.Sprintf("%s OnLeave calls: %+v", o.name, calls)
			}
		}
		return ""
	})
	t.Logf("killed node declared dead after: %s by %s, %s by %s (profile %q, probe interval %s)",
		detected[a.name].Round(time.Millisecond), a.name, detected[b.name].Round(time.Millisecond), b.name,
		ProfileLocal, a.m.mlConf.ProbeInterval)
	for _, o := range []*testNode{a, b} {
		if n := o.m.NumMembers(); n != 2 {
			t.Errorf("%s: NumMembers = %d, want 2", o.name, n)
		}
	}
}

func TestMembershipJoinThroughDNSName(t *testing.T) {
	a := startNode(t, "node-a", "", nil, nil)
	_, port, err := net.SplitHostPort(a.m.LocalAddr())
	if err != nil {
		t.Fatal(err)
	}
	var lookups atomic.Int64
	resolver := fakeResolver(map[string][]string{"seeds.chatd.test": {"127.0.0.1"}})
	lookup := func(ctx context.Context, host string) ([]string, error) {
		lookups.Add(1)
		return resolver(ctx, host)
	}
	// A stale name among the seeds must not stop the join.
	seeds := []string{"gone.chatd.test:" + port, "seeds.chatd.test:" + port}
	b := startNode(t, "node-b", "", seeds, func(c *MembershipConfig) { c.LookupHost = lookup })

	both := []*testNode{a, b}
	eventually(t, 10*time.Second, func() string { return allSee(both, both...) })
	if lookups.Load() == 0 {
		t.Fatal("the injected resolver was not used")
	}
}

func TestMembershipJoinsSeedThatAppearsLater(t *testing.T) {
	tests := []struct {
		name string
		// dnsBeforeSeed: the seed's name already resolves before the seed
		// runs (joins are refused) rather than being unknown (a Kubernetes
		// headless service with no ready pod yet).
		dnsBeforeSeed bool
	}{
		{name: "connection refused", dnsBeforeSeed: true},
		{name: "name not yet in DNS", dnsBeforeSeed: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			port := freePort(t)
			var seedUp atomic.Bool
			var lookups atomic.Int64
			lookup := func(ctx context.Context, host string) ([]string, error) {
				lookups.Add(1)
				if host == "late.chatd.test" && (tt.dnsBeforeSeed || seedUp.Load()) {
					return []string{"127.0.0.1"}, nil
				}
				return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
			}

			// b starts first: its seed does not exist yet. Start must not fail.
			b := startNode(t, "node-b", "", []string{"late.chatd.test:" + strconv.Itoa(port)},
				func(c *MembershipConfig) { c.LookupHost = lookup })
			me, ok := memberNamed(b.m.Members(), b.name)
			if n := b.m.NumMembers(); n != 1 || !ok || !me.Local || me.State != MemberAlive {
				t.Fatalf("lone node: NumMembers = %d, Members = %+v", n, b.m.Members())
			}
			// It keeps re-resolving and retrying, and stays up and alone.
			eventually(t, 5*time.Second, func() string {
				if n := lookups.Load(); n < 3 {
					return fmt.Sprintf("%d join attempts so far", n)
				}
				return ""
			})
			if n := b.m.NumMembers(); n != 1 {
				t.Fatalf("NumMembers = %d while alone, want 1", n)
			}

			// The seed appears; it knows nothing of b, so b must join by itself.
			a := startNode(t, "node-a", "127.0.0.1:"+strconv.Itoa(port), nil, nil)
			seedUp.Store(true)
			both := []*testNode{a, b}
			eventually(t, 10*time.Second, func() string { return allSee(both, both...) })
		})
	}
}

func TestMembershipMetadataLimit(t *testing.T) {
	long := strings.Repeat("x", 600)
	if _, err := encodeMeta(NodeMeta{HTTPAddr: long}, false); err == nil || !strings.Contains(err.Error(), "512") {
		t.Fatalf("oversized metadata: error = %v", err)
	}
	// The largest values every field but HTTPAddr can take leave room for a
	// realistic address.
	b, err := encodeMeta(NodeMeta{
		HTTPAddr:    "[fd00:1234:5678:9abc:def0:1234:5678:9abc]:4000",
		Connections: 1<<63 - 1, Users: 1<<63 - 1, Rooms: 1<<63 - 1,
		StartedAt: time.Date(2026, 12, 31, 23, 59, 59, 999999999, time.FixedZone("x", -12*3600)),
	}, true)
	if err != nil {
		t.Fatalf("large but valid metadata: %v", err)
	}
	w, err := decodeMeta(b)
	if err != nil || !w.Leaving || w.Connections != 1<<63-1 {
		t.Fatalf("round trip: %+v, %v", w, err)
	}

	m, err := NewMembership(MembershipConfig{
		NodeName: "big", BindAddr: "127.0.0.1:0", Logger: testLogger(t, "big"),
		Meta: func() NodeMeta { return NodeMeta{HTTPAddr: long} },
	})
	if err != nil {
		t.Fatal(err)
	}
	err = m.Start(context.Background())
	if err == nil || !strings.Contains(err.Error(), "512-byte limit") {
		t.Fatalf("Start with oversized metadata: error = %v", err)
	}
	if err := m.Close(context.Background()); err != nil {
		t.Fatalf("Close after failed Start: %v", err)
	}
}

func TestMembershipConfigErrors(t *testing.T) {
	tests := []struct {
		name    string
		cfg     MembershipConfig
		wantErr string
	}{
		{"no name", MembershipConfig{}, "NodeName is required"},
		{"unknown profile", MembershipConfig{NodeName: "n", Profile: "fast"}, "unknown Profile"},
		{"bind host not an IP", MembershipConfig{NodeName: "n", BindAddr: "localhost:7946"}, "must be an IP"},
		{"bind without port", MembershipConfig{NodeName: "n", BindAddr: "127.0.0.1"}, "no port"},
		{"bad advertise", MembershipConfig{NodeName: "n", AdvertiseAddr: "pod.local:7946"}, "AdvertiseAddr"},
		{"bad seed", MembershipConfig{NodeName: "n", Join: []string{"10.0.0.1:x"}}, "Join"},
		{"negative interval", MembershipConfig{NodeName: "n", RejoinInterval: -time.Second}, "negative"},
		{"negative seed interval", MembershipConfig{NodeName: "n", SeedRejoinInterval: -time.Second}, "negative"},
		{"short key", MembershipConfig{NodeName: "n", SecretKey: make([]byte, 10)}, "SecretKey is 10 bytes"},
		{"long label", MembershipConfig{NodeName: "n", Label: strings.Repeat("x", 256)}, "Label"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewMembership(tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.HasPrefix(err.Error(), "cluster: ") {
				t.Fatalf("error = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}

	m, err := NewMembership(MembershipConfig{NodeName: "n", AdvertiseAddr: "10.0.0.9", BindAddr: ":7000"})
	if err != nil {
		t.Fatal(err)
	}
	if m.mlConf.BindAddr != "0.0.0.0" || m.mlConf.BindPort != 7000 || m.mlConf.AdvertiseAddr != "10.0.0.9" || m.mlConf.AdvertisePort != 7000 {
		t.Fatalf("memberlist config: bind %s:%d advertise %s:%d", m.mlConf.BindAddr, m.mlConf.BindPort, m.mlConf.AdvertiseAddr, m.mlConf.AdvertisePort)
	}
	if m.rejoinEvery != defaultRejoinInterval || m.seedsEvery != 30*time.Second || m.metaEvery != defaultMetaInterval || m.mlConf.ProbeInterval != time.Second {
		t.Fatalf("defaults: rejoin %s seed rejoin %s meta %s probe %s", m.rejoinEvery, m.seedsEvery, m.metaEvery, m.mlConf.ProbeInterval)
	}
	// Close before Start is fine, and idempotent.
	for range 2 {
		if err := m.Close(context.Background()); err != nil {
			t.Fatalf("Close before Start: %v", err)
		}
	}
	if err := m.Start(context.Background()); err == nil {
		t.Fatal("Start after Close succeeded")
	}
}

func TestMembershipCloseStopsGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	a := startNode(t, "node-a", "", nil, nil)
	b := startNode(t, "node-b", "", []string{a.m.LocalAddr()}, nil)
	both := []*testNode{a, b}
	eventually(t, 10*time.Second, func() string { return allSee(both, both...) })
	if err := b.m.Start(context.Background()); err == nil {
		t.Fatal("second Start succeeded")
	}
	for _, n := range both {
		if err := n.m.Close(context.Background()); err != nil {
			t.Fatalf("Close(%s): %v", n.name, err)
		}
	}
	eventually(t, 5*time.Second, func() string {
		if now := runtime.NumGoroutine(); now > before {
			buf := make([]byte, 1<<16)
			return fmt.Sprintf("%d goroutines, %d before:\n%s", now, before, buf[:runtime.Stack(buf, true)])
		}
		return ""
	})
}

func TestMembershipLogBridge(t *testing.T) {
	var mu sync.Mutex
	var got []string
	h := &recordHandler{fn: func(r slog.Record) {
		mu.Lock()
		got = append(got, r.Level.String()+" "+r.Message)
		mu.Unlock()
	}}
	w := &logBridge{log: slog.New(h)}
	for _, line := range []string{
		"[DEBUG] memberlist: Stream connection from=127.0.0.1:1\n",
		"[WARN] memberlist: Refuting a suspect message (from: b)\n",
		"[ERR] memberlist: Failed to send gossip\n",
		"[INFO] memberlist: Marking c as failed\n",
		"no prefix\n",
	} {
		if _, err := w.Write([]byte(line)); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{
		"DEBUG Stream connection from=127.0.0.1:1",
		"WARN Refuting a suspect message (from: b)",
		"WARN Failed to send gossip",
		"DEBUG Marking c as failed",
		"DEBUG no prefix",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("bridged records:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

type recordHandler struct{ fn func(slog.Record) }

func (h *recordHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *recordHandler) Handle(_ context.Context, r slog.Record) error {
	h.fn(r)
	return nil
}
func (h *recordHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *recordHandler) WithGroup(string) slog.Handler      { return h }

// TestMembershipKeyKeepsStrangersOut: two nodes sharing a SecretKey form a
// cluster; a node with another key, one with no key and one with the key
// but another label keep trying to join them (every 100 ms) and are never
// listed by either, nor ever see them; the keyed pair never loses each
// other.
func TestMembershipKeyKeepsStrangersOut(t *testing.T) {
	keyA, keyB := bytes.Repeat([]byte{0xa}, 32), bytes.Repeat([]byte{0xb}, 16)
	withKey := func(key []byte, label string) func(*MembershipConfig) {
		return func(c *MembershipConfig) { c.SecretKey, c.Label = key, label }
	}
	a := startNode(t, "keyed-a", "", nil, withKey(keyA, ""))
	seed := []string{a.m.LocalAddr()}
	b := startNode(t, "keyed-b", "", seed, withKey(keyA, ""))
	eventually(t, 10*time.Second, func() string { return allSee([]*testNode{a, b}, a, b) })

	strangers := []*testNode{
		startNode(t, "other-key", "", seed, withKey(keyB, "")),
		startNode(t, "no-key", "", seed, nil),
		startNode(t, "other-label", "", seed, withKey(keyA, "not-chatd")),
	}
	// Long enough for many join attempts and, were a stranger believed,
	// for it to be listed and for failure detection to act.
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		if why := allSee([]*testNode{a, b}, a, b); why != "" {
			t.Fatalf("a stranger got in or the keyed pair split: %s", why)
		}
		for _, s := range strangers {
			if why := allSee([]*testNode{s}, s); why != "" {
				t.Fatalf("stranger %s is not alone: %s", s.name, why)
			}
		}
		if l := append(a.leaveCalls(), b.leaveCalls()...); len(l) > 0 {
			t.Fatalf("the keyed nodes saw leaves: %+v", l)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
