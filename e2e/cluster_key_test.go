package e2e

// End to end: gossip encryption (CHAT_CLUSTER_KEY). Real chatd processes
// relaying through one real Redis; strangers are real chatd processes with
// another key or none, and a forged memberlist "dead" packet sent over UDP
// from the test, as anyone who reaches the gossip port could send it.

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/chatd/chatd/internal/testsvc"
)

// ckForgedDead is memberlist's "dead" message (message type 5, then the
// msgpack map {Incarnation, Node, From}) declaring node dead, with an
// incarnation above any a live node has, behind the gossip label chatd
// uses (public: it is not a secret, the key is). Sent in clear.
func ckForgedDead(t *testing.T, node string) []byte {
	t.Helper()
	msg := []byte{5, 0x83}
	str := func(s string) { msg = append(append(msg, 0xa0|byte(len(s))), s...) } // fixstr: < 32 bytes
	str("Incarnation")
	msg = binary.BigEndian.AppendUint32(append(msg, 0xce), 1<<30)
	str("Node")
	str(node)
	str("From")
	str("intruder")
	pkt, err := memberlist.AddLabelHeaderToPacket(msg, "chatd")
	if err != nil {
		t.Fatal(err)
	}
	return pkt
}

// ckSendDead sends the forged packet to a node's gossip address (UDP)
// every 100 ms for d.
func ckSendDead(t *testing.T, to, node string, d time.Duration) {
	t.Helper()
	conn, err := net.Dial("udp", to)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	pkt := ckForgedDead(t, node)
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if _, err := conn.Write(pkt); err != nil {
			t.Fatalf("send the forged dead packet to %s: %v", to, err)
		}
	}
}

func ckKey(b byte) string {
	key := make([]byte, 32)
	for i := range key {
		key[i] = b
	}
	return base64.StdEncoding.EncodeToString(key)
}

// TestClusterKeyKeepsStrangersOut: two nodes with key A form a cluster. A
// node with key B and one with no key, both pointed at them (and at the
// same Redis), never appear in either node's /api/stats, nor see them; and
// a forged "dead" packet about node2 sent to node1's gossip port makes no
// one declare anyone dead: both nodes list each other alive throughout
// and neither frees the other's connection slots. The control subtest
// sends the same packet to a cluster without a key: node1 declares node2
// dead, which is what the key prevents.
func TestClusterKeyKeepsStrangersOut(t *testing.T) {
	t.Run("control without a key", func(t *testing.T) {
		nodes := clStartCluster(t, testsvc.StartRedis(t), 2, map[string]string{"CHAT_CLUSTER_KEY": ""})
		ckSendDead(t, clGossipAddr(t, nodes[0]), "node2", time.Second)
		deadline := time.Now().Add(10 * time.Second)
		for !strings.Contains(nodes[0].Logs(), "declared dead") {
			if time.Now().After(deadline) {
				t.Fatalf("the forged dead packet did not make node1 declare node2 dead without a key: the test's packet is wrong; node1's log:\n%s", nodes[0].Logs())
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Logf("without a key, a forged packet made node1 declare node2 dead")
	})

	redis := testsvc.StartRedis(t)
	nodes := clStartCluster(t, redis, 2, map[string]string{"CHAT_CLUSTER_KEY": ckKey(0xa)})
	seed := clGossipAddr(t, nodes[0])
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	watches := []*clWatch{clStartWatch(ctx, nodes[0], "node2"), clStartWatch(ctx, nodes[1], "node1")}
	strangers := []*clNode{
		clStartNode(t, redis, "stranger-key-b", seed, map[string]string{"CHAT_CLUSTER_KEY": ckKey(0xb)}),
		clStartNode(t, redis, "stranger-no-key", seed, map[string]string{"CHAT_CLUSTER_KEY": ""}),
	}
	ckSendDead(t, seed, "node2", 2*time.Second)
	// The strangers retry joining every 5 s (CHAT_CLUSTER_JOIN's rejoin
	// interval): watch for more than one retry.
	for end := time.Now().Add(7 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		for _, n := range nodes {
			s, err := clGetStats(n.Chatd)
			if err != nil {
				t.Fatalf("%s: %v", n.name, err)
			}
			if len(s.Nodes) != 2 {
				t.Fatalf("%s lists a stranger: %v", n.name, s)
			}
		}
		for _, n := range strangers {
			s, err := clGetStats(n.Chatd)
			if err != nil {
				t.Fatalf("%s: %v", n.name, err)
			}
			if len(s.Nodes) != 1 {
				t.Fatalf("stranger %s sees the cluster: %v", n.name, s)
			}
		}
	}
	cancel()
	for _, w := range watches {
		<-w.done
		if st := w.states(); len(st) != 1 || st[0] != "alive" {
			t.Errorf("%s saw %s as %v, want alive throughout", w.observer.name, w.node, st)
		}
	}
	for _, n := range nodes {
		logs := n.Logs()
		for _, bad := range []string{"declared dead", "freed what a dead node held", "stranger-"} {
			if strings.Contains(logs, bad) {
				t.Errorf("%s's log mentions %q: a stranger got through", n.name, bad)
			}
		}
	}
	// The strangers did reach node1, and were turned away (memberlist's
	// words): the key-B node's streams did not decrypt, the keyless one's
	// were plaintext, the forged packets were not encrypted.
	logs := nodes[0].Logs()
	for what, msg := range map[string]string{
		"the key-B stranger":     "no installed keys could decrypt the message",
		"the keyless stranger":   "encryption is configured but remote state is not encrypted",
		"the forged dead packet": "Decrypt packet failed",
	} {
		if !strings.Contains(logs, msg) {
			t.Errorf("node1's log does not show %s turned away (%q): did it reach node1?", what, msg)
		}
	}
}
