package cluster

import (
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// gossipProxy stands between one node and the rest of the cluster: it
// listens on the address the node advertises, UDP and TCP on one port as
// memberlist does, and forwards datagrams and streams to the address the
// node binds. Every peer reaches the node through it, so the test can cut
// the node off and restore it.
//
// A datagram's sender is known by its source port (memberlist sends UDP from
// its bound socket), so a cut drops only the datagrams of the nodes it
// names. A TCP stream's is not (memberlist dials from ephemeral ports), so
// a cut refuses every stream, and closes the open ones. Within a group UDP
// probes and gossip keep the members alive: memberlist falls back to TCP
// only for probes that UDP did not answer, and a failed periodic push/pull
// only logs.
type gossipProxy struct {
	t      *testing.T
	addr   string                      // advertised "127.0.0.1:port"
	target atomic.Pointer[net.UDPAddr] // the node's bind address
	udp    *net.UDPConn
	tcp    *net.TCPListener

	blocked  atomic.Pointer[map[int]bool] // UDP source ports dropped
	tcpCut   atomic.Bool
	dropped  atomic.Int64 // datagrams dropped and streams refused
	lastDrop atomic.Int64 // unix nanoseconds of the last datagram dropped

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// startGossipProxy listens on a free loopback port for both UDP and TCP and
// forwards to 127.0.0.1:targetPort (see setTarget).
func startGossipProxy(t *testing.T, targetPort int) *gossipProxy {
	t.Helper()
	p := &gossipProxy{t: t, conns: make(map[net.Conn]struct{})}
	p.setTarget(targetPort)
	p.blocked.Store(&map[int]bool{})
	for range 50 {
		tl, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatalf("proxy: listen tcp: %v", err)
		}
		port := tl.Addr().(*net.TCPAddr).Port
		ul, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
		if err != nil {
			tl.Close()
			continue
		}
		p.tcp, p.udp = tl, ul
		p.addr = "127.0.0.1:" + strconv.Itoa(port)
		break
	}
	if p.udp == nil {
		t.Fatal("proxy: no port free for both TCP and UDP")
	}
	p.wg.Add(2)
	go p.serveUDP()
	go p.serveTCP()
	t.Cleanup(p.close)
	return p
}

func (p *gossipProxy) serveUDP() {
	defer p.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		n, from, err := p.udp.ReadFromUDP(buf)
		if err != nil {
			return // closed
		}
		if (*p.blocked.Load())[from.Port] {
			p.dropped.Add(1)
			p.lastDrop.Store(time.Now().UnixNano())
			continue
		}
		if _, err := p.udp.WriteToUDP(buf[:n], p.target.Load()); err != nil && !errors.Is(err, net.ErrClosed) {
			p.t.Logf("proxy %s: forward datagram: %v", p.addr, err)
		}
	}
}

func (p *gossipProxy) serveTCP() {
	defer p.wg.Done()
	for {
		c, err := p.tcp.Accept()
		if err != nil {
			return // closed
		}
		if p.tcpCut.Load() {
			p.dropped.Add(1)
			c.Close()
			continue
		}
		p.wg.Add(1)
		go p.forwardStream(c)
	}
}

// forwardStream copies one stream both ways until either side closes it.
func (p *gossipProxy) forwardStream(c net.Conn) {
	defer p.wg.Done()
	u, err := net.DialTimeout("tcp", p.target.Load().String(), 2*time.Second)
	if err != nil {
		c.Close()
		return
	}
	if !p.track(c, u) {
		return
	}
	defer p.untrack(c, u)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = io.Copy(u, c)
		u.Close()
	}()
	_, _ = io.Copy(c, u)
	c.Close()
	<-done
}

// track registers the stream's two connections, or closes them when the
// proxy is closed or cut meanwhile.
func (p *gossipProxy) track(cs ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.tcpCut.Load() {
		for _, c := range cs {
			c.Close()
		}
		return false
	}
	for _, c := range cs {
		p.conns[c] = struct{}{}
	}
	return true
}

func (p *gossipProxy) untrack(cs ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range cs {
		delete(p.conns, c)
	}
}

// setTarget points the proxy at the node's gossip port.
func (p *gossipProxy) setTarget(port int) {
	p.target.Store(&net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
}

// cut drops the datagrams sent from the given gossip ports and refuses
// every TCP stream, closing the open ones.
func (p *gossipProxy) cut(fromPorts ...int) {
	b := make(map[int]bool, len(fromPorts))
	for _, port := range fromPorts {
		b[port] = true
	}
	p.blocked.Store(&b)
	p.tcpCut.Store(true)
	p.closeConns()
}

// restore forwards everything again.
func (p *gossipProxy) restore() {
	p.blocked.Store(&map[int]bool{})
	p.tcpCut.Store(false)
}

func (p *gossipProxy) closeConns() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
	}
}

func (p *gossipProxy) close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.udp.Close()
	p.tcp.Close()
	p.closeConns()
	p.wg.Wait()
}

// proxiedNode is a node whose gossip goes through its own proxy.
type proxiedNode struct {
	*testNode
	bindPort int
	proxy    *gossipProxy
}

// startPartitionCluster starts four nodes a, b, c, d on loopback, each
// behind its gossip proxy and advertising the proxy's address, all with the
// four proxies as seeds (as a headless service would list them), and waits
// until every node sees all four alive.
func startPartitionCluster(t *testing.T, seedRejoin time.Duration) []*proxiedNode {
	t.Helper()
	names := []string{"node-a", "node-b", "node-c", "node-d"}
	nodes := make([]*proxiedNode, len(names))
	var seeds []string
	for i := range names {
		port := freePort(t)
		nodes[i] = &proxiedNode{bindPort: port, proxy: startGossipProxy(t, port)}
		seeds = append(seeds, nodes[i].proxy.addr)
	}
	for i, name := range names {
		pn := nodes[i]
		// The node binds a port picked in advance (memberlist advertises
		// the bound port when told to bind port 0); it may have been taken
		// since, by a connection of the nodes already running: pick again.
		for attempt := 1; ; attempt++ {
			n, err := tryStartNode(t, name, "127.0.0.1:"+strconv.Itoa(pn.bindPort), seeds, func(c *MembershipConfig) {
				c.AdvertiseAddr = pn.proxy.addr
				c.SeedRejoinInterval = seedRejoin
			})
			if err == nil {
				pn.testNode = n
				break
			}
			if attempt == 5 {
				t.Fatal(err)
			}
			t.Logf("%v; picking another port", err)
			pn.bindPort = freePort(t)
			pn.proxy.setTarget(pn.bindPort)
		}
		if got := pn.m.LocalAddr(); got != pn.proxy.addr {
			t.Fatalf("%s advertises %s, want its proxy %s", name, got, pn.proxy.addr)
		}
	}
	all := testNodes(nodes)
	eventually(t, 20*time.Second, func() string { return allSee(all, all...) })
	return nodes
}

func testNodes(ps []*proxiedNode) []*testNode {
	out := make([]*testNode, len(ps))
	for i, p := range ps {
		out[i] = p.testNode
	}
	return out
}

// partition cuts the gossip between groups g1 and g2 and waits until each
// node sees its own group alive and the other group dead, then until no
// datagram has tried to cross for a second. memberlist gossips its last
// messages (the dead messages themselves) to the recently dead too, and a
// node that gets one about itself refutes it, which would merge the groups
// at once on restore; once they have been sent out nothing more crosses
// (the nodes' metadata does not change), and a split lasting longer than
// memberlist's GossipToTheDeadTime looks the same.
func partition(t *testing.T, g1, g2 []*proxiedNode) {
	t.Helper()
	ports := func(g []*proxiedNode) []int {
		var out []int
		for _, n := range g {
			out = append(out, n.bindPort)
		}
		return out
	}
	for _, n := range g1 {
		n.proxy.cut(ports(g2)...)
	}
	for _, n := range g2 {
		n.proxy.cut(ports(g1)...)
	}
	start := time.Now()
	eventually(t, 30*time.Second, func() string {
		for _, side := range [][2][]*proxiedNode{{g1, g2}, {g2, g1}} {
			own, other := side[0], side[1]
			if why := allSee(testNodes(own), testNodes(own)...); why != "" {
				return why
			}
			for _, o := range own {
				for _, x := range other {
					if mb, _ := memberNamed(o.m.Members(), x.name); mb.State != MemberDead {
						return fmt.Sprintf("%s sees %s as %q, want dead", o.name, x.name, mb.State)
					}
				}
			}
		}
		return ""
	})
	t.Logf("partition: each group declared the other dead after %s", time.Since(start).Round(time.Millisecond))
	const quiet = time.Second
	eventually(t, 30*time.Second, func() string {
		for _, n := range append(slices.Clone(g1), g2...) {
			if since := time.Since(time.Unix(0, n.proxy.lastDrop.Load())); since < quiet {
				return fmt.Sprintf("%s's proxy dropped a datagram %s ago", n.name, since.Round(time.Millisecond))
			}
		}
		return ""
	})
	t.Logf("partition: no gossip tried to cross for %s, %s after the cut", quiet, time.Since(start).Round(time.Millisecond))
}

func rejoins(ns []*proxiedNode) int64 {
	var n int64
	for _, p := range ns {
		n += p.m.rejoined.Load()
	}
	return n
}

// TestPartitionHeals: two groups of two nodes that declared each other dead
// during a network partition merge back into one cluster of four by
// themselves once the network heals, through the periodic re-join of the
// seeds; with that re-join pushed out of reach they stay apart.
func TestPartitionHeals(t *testing.T) {
	t.Run("seeds re-joined", func(t *testing.T) {
		const every = 500 * time.Millisecond
		nodes := startPartitionCluster(t, every)
		g1, g2 := nodes[:2], nodes[2:]
		partition(t, g1, g2)
		for _, o := range g1 {
			calls := o.leaveCalls()
			if len(calls) != 2 || calls[0].State != MemberDead || calls[1].State != MemberDead {
				t.Fatalf("%s OnLeave calls during the partition: %+v", o.name, calls)
			}
		}
		before := rejoins(nodes)
		var dropped int64
		for _, n := range nodes {
			dropped += n.proxy.dropped.Load()
			n.proxy.restore()
		}
		if dropped == 0 {
			t.Fatal("the proxies dropped nothing: the partition did not go through them")
		}
		restored := time.Now()

		// No Join by the test: the nodes find each other again by themselves.
		all := testNodes(nodes)
		eventually(t, 30*time.Second, func() string { return allSee(all, all...) })
		t.Logf("merged back to 4 alive members on every node %s after the network healed (SeedRejoinInterval %s)",
			time.Since(restored).Round(time.Millisecond), every)
		// And it settles so: the refutations that follow a merge may make a
		// node doubt another for a moment, but not split the groups again.
		const settled = 2 * time.Second
		var since time.Time
		eventually(t, 30*time.Second, func() string {
			if why := allSee(all, all...); why != "" {
				since = time.Time{}
				return why
			}
			if since.IsZero() {
				since = time.Now()
			}
			if d := time.Since(since); d < settled {
				return fmt.Sprintf("4 alive members on every node for %s only", d.Round(time.Millisecond))
			}
			return ""
		})
		if after := rejoins(nodes); after <= before {
			t.Fatalf("merged without a seed re-join reaching a lost seed (%d before the heal, %d after)", before, after)
		}
		// Healed, every seed is a live member again: the re-joins send
		// nothing more.
		settledRejoins := rejoins(nodes)
		quietUntil := time.Now().Add(4 * every)
		for time.Now().Before(quietUntil) {
			if n := rejoins(nodes); n != settledRejoins {
				t.Fatalf("seed re-joins went on in the healed cluster: %d, then %d", settledRejoins, n)
			}
			time.Sleep(50 * time.Millisecond)
		}
		for _, o := range nodes {
			for _, x := range nodes {
				if mb, _ := memberNamed(o.m.Members(), x.name); mb.Addr != x.proxy.addr {
					t.Errorf("%s sees %s at %s, not at its proxy %s", o.name, x.name, mb.Addr, x.proxy.addr)
				}
			}
		}
	})

	t.Run("seeds not re-joined", func(t *testing.T) {
		const window = 5 * time.Second // ten times the re-join interval above
		nodes := startPartitionCluster(t, time.Hour)
		g1, g2 := nodes[:2], nodes[2:]
		partition(t, g1, g2)
		for _, n := range nodes {
			n.proxy.restore()
		}
		deadline := time.Now().Add(window)
		for time.Now().Before(deadline) {
			for _, side := range [][2][]*proxiedNode{{g1, g2}, {g2, g1}} {
				for _, o := range side[0] {
					for _, x := range side[1] {
						if mb, ok := memberNamed(o.m.Members(), x.name); ok && mb.State == MemberAlive {
							t.Fatalf("the groups did not stay apart without the seed re-join: %s sees %s alive", o.name, x.name)
						}
					}
				}
			}
			time.Sleep(50 * time.Millisecond)
		}
		if n := rejoins(nodes); n != 0 {
			t.Fatalf("%d seed re-joins with SeedRejoinInterval 1h", n)
		}
	})
}
