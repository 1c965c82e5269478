package e2e

// End to end through nginx: the real nginx (Debian package) runs the
// project's nginx/chatd.conf, with its upstream servers replaced by three
// local chatd nodes (a cluster relaying through a real Redis) and its
// listen address by a free loopback port. Clients connect from distinct
// loopback source addresses (127.0.0.2, 127.0.0.3, ...), so that nginx's
// hash of $remote_addr sees distinct clients.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"text/template"
	"time"

	"github.com/coder/websocket"

	"github.com/chatd/chatd/internal/testsvc"
)

// nxNginx is an nginx process started by startNginx.
type nxNginx struct {
	url    string // http://127.0.0.1:PORT
	prefix string
	cmd    *exec.Cmd
	logs   *bytes.Buffer
}

// nginxConfig returns nginx/chatd.conf with the upstream's servers replaced
// by upstreams (each keeping the parameters of the file's first server:
// max_fails, fail_timeout) and the listen address by listen.
func nginxConfig(t *testing.T, upstreams []string, listen string) string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(repoRoot(t), "nginx", "chatd.conf"))
	if err != nil {
		t.Fatal(err)
	}
	conf := string(raw)
	up := regexp.MustCompile(`(?s)upstream chatd \{.*?\n\}`).FindStringIndex(conf)
	if up == nil {
		t.Fatal("nginx/chatd.conf: no `upstream chatd { ... }` block")
	}
	block := conf[up[0]:up[1]]
	serverRe := regexp.MustCompile(`(?m)^(\s*)server\s+\S+:\d+([^;\n]*);\n`)
	servers := serverRe.FindAllStringSubmatch(block, -1)
	if len(servers) == 0 {
		t.Fatal("nginx/chatd.conf: the upstream lists no server host:port")
	}
	for _, want := range []string{"hash $remote_addr consistent;"} {
		if !strings.Contains(block, want) {
			t.Errorf("nginx/chatd.conf: the upstream lacks %q", want)
		}
	}
	if !strings.Contains(servers[0][2], "max_fails=") || !strings.Contains(servers[0][2], "fail_timeout=") {
		t.Errorf("nginx/chatd.conf: upstream servers have no passive health check (max_fails/fail_timeout): %q", servers[0][0])
	}
	var repl strings.Builder
	for _, u := range upstreams {
		fmt.Fprintf(&repl, "%sserver %s%s;\n", servers[0][1], u, servers[0][2])
	}
	first := true
	block = serverRe.ReplaceAllStringFunc(block, func(string) string {
		if first {
			first = false
			return repl.String()
		}
		return ""
	})
	conf = conf[:up[0]] + block + conf[up[1]:]
	listenRe := regexp.MustCompile(`(?m)^(\s*)listen\s+80;`)
	if !listenRe.MatchString(conf) {
		t.Fatal("nginx/chatd.conf: no `listen 80;` to substitute")
	}
	conf = listenRe.ReplaceAllString(conf, "${1}listen "+listen+";")
	// Timeouts: longer than the heartbeat.
	for _, d := range []string{"proxy_read_timeout", "proxy_send_timeout"} {
		m := regexp.MustCompile(`(?s)location /socket/ \{.*?` + d + `\s+(\d+)s;`).FindStringSubmatch(conf)
		if m == nil {
			t.Errorf("nginx/chatd.conf: the /socket/ location sets no %s in seconds", d)
			continue
		}
		if n, _ := strconv.Atoi(m[1]); n < 75 {
			t.Errorf("nginx/chatd.conf: %s %ss is not longer than the heartbeat interval and idle limit (want >= 75s)", d, m[1])
		}
	}
	for _, want := range []string{"proxy_set_header Upgrade $http_upgrade;", "X-Forwarded-For $proxy_add_x_forwarded_for", "X-Real-IP $remote_addr", "proxy_next_upstream error timeout", "proxy_http_version 1.1;"} {
		if !strings.Contains(conf, want) {
			t.Errorf("nginx/chatd.conf lacks %q", want)
		}
	}
	return conf
}

// startNginx runs nginx in the foreground with a temp prefix in front of
// upstreams; it is stopped when t ends.
func startNginx(t *testing.T, upstreams []string) *nxNginx {
	t.Helper()
	bin, err := exec.LookPath("nginx")
	if err != nil {
		if _, err2 := os.Stat("/usr/sbin/nginx"); err2 == nil {
			bin = "/usr/sbin/nginx"
		} else {
			t.Fatal("nginx is not installed: run ./scripts/deps.sh (apt-get install nginx)")
		}
	}
	prefix := t.TempDir()
	if err := os.Chmod(prefix, 0o755); err != nil {
		t.Fatal(err)
	}
	port := testsvc.FreePort(t)
	listen := "127.0.0.1:" + strconv.Itoa(port)
	if err := os.WriteFile(filepath.Join(prefix, "chatd.conf"), []byte(nginxConfig(t, upstreams, listen)), 0o644); err != nil {
		t.Fatal(err)
	}
	tmpl, err := template.ParseFiles(filepath.Join(repoRoot(t), "nginx", "test-main.conf.tmpl"))
	if err != nil {
		t.Fatal(err)
	}
	var main bytes.Buffer
	if err := tmpl.Execute(&main, map[string]any{"Prefix": prefix, "Root": os.Geteuid() == 0}); err != nil {
		t.Fatal(err)
	}
	mainPath := filepath.Join(prefix, "nginx.conf")
	if err := os.WriteFile(mainPath, main.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"-p", prefix + "/", "-c", mainPath, "-e", "stderr"}
	if out, err := exec.Command(bin, append(args, "-t")...).CombinedOutput(); err != nil {
		t.Fatalf("nginx -t: %v\n%s\n--- nginx.conf\n%s\n--- chatd.conf\n%s", err, out, main.String(), nginxConfig(t, upstreams, listen))
	}
	n := &nxNginx{url: "http://" + listen, prefix: prefix, logs: &bytes.Buffer{}}
	n.cmd = exec.Command(bin, append(args, "-g", "daemon off;")...)
	var mu sync.Mutex
	n.cmd.Stdout = lockedWriter{&mu, n.logs}
	n.cmd.Stderr = lockedWriter{&mu, n.logs}
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = n.cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = n.cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = n.cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			mu.Lock()
			t.Logf("nginx output:\n%s", n.logs.String())
			mu.Unlock()
			if b, err := os.ReadFile(filepath.Join(prefix, "error.log")); err == nil {
				t.Logf("nginx error.log (tail):\n%s", tail(string(b), 60))
			}
			if b, err := os.ReadFile(filepath.Join(prefix, "access.log")); err == nil {
				t.Logf("nginx access.log (tail):\n%s", tail(string(b), 60))
			}
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", listen, time.Second)
		if err == nil {
			c.Close()
			return n
		}
		select {
		case <-exited:
			t.Fatalf("nginx exited at start:\n%s", n.logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("nginx does not accept on %s: %v", listen, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// nxHTTPClient is an HTTP client whose connections come from source
// address src (any 127.0.0.0/8 address is local on Linux).
func nxHTTPClient(src string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	return &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true},
	}
}

// nxNodeOf asks nginx, from src, which node serves it: /api/stats (with the
// admin token) names the node that answered.
func nxNodeOf(n *nxNginx, src string) (string, error) {
	req, err := http.NewRequest(http.MethodGet, n.url+"/api/stats", nil)
	if err != nil {
		return "", err
	}
	req.Header.Set("Authorization", "Bearer "+clAdminToken)
	resp, err := nxHTTPClient(src).Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var s clStats
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET /api/stats via nginx from %s: %s", src, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		return "", err
	}
	return s.Node, nil
}

// nxDial connects user through nginx from source address src.
func nxDial(n *nxNginx, src, user string) (*psClient, error) {
	tok, err := psToken(user)
	if err != nil {
		return nil, err
	}
	u, _ := url.Parse(n.url)
	u.Scheme = "ws"
	u.Path = "/socket/websocket"
	u.RawQuery = url.Values{"vsn": {"2.0.0"}, "token": {tok}}.Encode()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, resp, err := websocket.Dial(ctx, u.String(), &websocket.DialOptions{HTTPClient: nxHTTPClient(src)})
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		return nil, fmt.Errorf("dial via nginx from %s: status %d: %w", src, status, err)
	}
	conn.SetReadLimit(1 << 24)
	cl := &psClient{
		user:     user,
		conn:     conn,
		joinRefs: make(map[string]string),
		pending:  make(map[string]chan psReply),
		msgs:     make(map[string][]psMsg),
		changed:  make(chan struct{}),
		done:     make(chan struct{}),
		hbStop:   make(chan struct{}),
	}
	go cl.readLoop()
	go cl.heartbeat()
	return cl, nil
}

// nxSocketNode returns the node a joined client's socket is on: the "node"
// of its own presence meta in the presence_state pushed after its join.
func nxSocketNode(cl *psClient, topic string, d time.Duration) (string, error) {
	deadline := time.Now().Add(d)
	for {
		for _, raw := range cl.otherFrames() {
			var f []json.RawMessage
			if json.Unmarshal([]byte(raw), &f) != nil || len(f) != 5 {
				continue
			}
			var tp, ev string
			_ = json.Unmarshal(f[2], &tp)
			_ = json.Unmarshal(f[3], &ev)
			if tp != topic || ev != "presence_state" {
				continue
			}
			var st map[string]struct {
				Metas []struct {
					Node string `json:"node"`
				} `json:"metas"`
			}
			if json.Unmarshal(f[4], &st) == nil && len(st[cl.user].Metas) == 1 {
				return st[cl.user].Metas[0].Node, nil
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("%s: no presence_state with its own meta on %s after %s: %v", cl.user, topic, d, cl.otherFrames())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// nxClient is one test client: a source address and its socket.
type nxClient struct {
	src, user, node string
	cl              *psClient
}

// nxChat makes every client push one message tagged tag and checks that
// every client receives every one of them (cross-node relay through Redis).
func nxChat(t *testing.T, clients []*nxClient, topic, tag string) {
	t.Helper()
	want := map[string]bool{}
	var wg sync.WaitGroup
	errs := make(chan error, len(clients))
	for _, c := range clients {
		body := tag + " from " + c.user + " on " + c.node
		want[body] = true
		wg.Add(1)
		go func() {
			defer wg.Done()
			if p := psPushOne(c.cl, topic, body); !p.ok() {
				errs <- fmt.Errorf("%s (via %s on %s): push %q: %s %v", c.user, c.src, c.node, body, p.Reply.Raw, p.Reply.Err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		t.FailNow()
	}
	for _, c := range clients {
		got, ok := c.cl.waitMessages(topic, 15*time.Second, func(ms []psMsg) bool {
			n := 0
			for _, m := range ms {
				if want[m.Body] {
					n++
				}
			}
			return n == len(want)
		})
		if !ok {
			t.Errorf("%s on %s: got %d messages, want the %d of %q from every node: %v (ended: %v)", c.user, c.node, len(got), len(want), tag, got, c.cl.ended())
		}
	}
	if t.Failed() {
		t.FailNow()
	}
}

func TestNginxStickyFailover(t *testing.T) {
	redis := testsvc.StartRedis(t)
	nodes := clStartCluster(t, redis, 3, nil)
	byName := map[string]*clNode{}
	var upstreams []string
	for _, n := range nodes {
		byName[n.name] = n
		upstreams = append(upstreams, n.Addr())
	}
	ng := startNginx(t, upstreams)
	const topic = "room:nginx"

	// Stickiness: a client address always lands on the same node, for
	// plain requests and for WebSocket (re)connects.
	var clients []*nxClient
	perNode := map[string][]*nxClient{}
	for i := range 12 {
		c := &nxClient{src: "127.0.0." + strconv.Itoa(i+2), user: fmt.Sprintf("nx%02d", i)}
		for k := range 4 {
			node, err := nxNodeOf(ng, c.src)
			if err != nil {
				t.Fatal(err)
			}
			if k == 0 {
				c.node = node
			} else if node != c.node {
				t.Fatalf("client %s: request %d went to %s, earlier ones to %s: not sticky", c.src, k+1, node, c.node)
			}
		}
		for k := range 2 { // connect, reconnect: same node both times
			cl, err := nxDial(ng, c.src, c.user)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(cl.close)
			cl.join(t, topic, nil)
			node, err := nxSocketNode(cl, topic, 10*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if node != c.node {
				t.Fatalf("client %s: WebSocket (connect %d) landed on %s, its requests on %s: not sticky", c.src, k+1, node, c.node)
			}
			if k == 0 {
				cl.close()
			} else {
				c.cl = cl
			}
		}
		clients = append(clients, c)
		perNode[c.node] = append(perNode[c.node], c)
	}
	var spread []string
	victim := ""
	for name, cs := range perNode {
		spread = append(spread, fmt.Sprintf("%s:%d", name, len(cs)))
		if victim == "" || len(cs) > len(perNode[victim]) {
			victim = name
		}
	}
	t.Logf("12 client addresses over the nodes: %v", spread)
	if len(perNode) < 2 {
		t.Fatalf("every client address hashed to one node (%v): the hash does not spread clients", spread)
	}

	// Cross-node messages flow through nginx.
	nxChat(t, clients, topic, "before")

	// Failover: stop the node with the most clients. Its clients' sockets
	// close; they reconnect through nginx (same address) and land on a
	// live node, while the other clients stay connected.
	if err := byName[victim].Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := byName[victim].WaitTimeout(30 * time.Second); err != nil {
		t.Fatalf("%s after SIGTERM: %v", victim, err)
	}
	stopped := time.Now()
	for _, c := range perNode[victim] {
		select {
		case <-c.cl.done:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: its socket on the stopped node %s is still open through nginx", c.user, victim)
		}
	}
	for _, c := range clients {
		if c.node == victim {
			continue
		}
		if err := c.cl.ended(); err != nil {
			t.Fatalf("%s on %s (a live node) lost its socket when %s stopped: %v", c.user, c.node, victim, err)
		}
	}
	for _, c := range perNode[victim] {
		var cl *psClient
		var err error
		for attempt := 0; attempt < 5; attempt++ { // a client retries, as phoenix.js does
			if cl, err = nxDial(ng, c.src, c.user); err == nil {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("%s: reconnect through nginx after %s stopped: %v", c.user, victim, err)
		}
		t.Cleanup(cl.close)
		cl.join(t, topic, nil)
		node, err := nxSocketNode(cl, topic, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if node == victim || byName[node] == nil {
			t.Fatalf("%s reconnected to %q, want a live node", c.user, node)
		}
		// And it stays there: its address now maps to that node.
		for range 3 {
			again, err := nxNodeOf(ng, c.src)
			if err != nil {
				t.Fatal(err)
			}
			if again != node {
				t.Errorf("%s after failover: a request went to %s, its socket is on %s", c.src, again, node)
			}
		}
		t.Logf("%s (%s): %s -> %s", c.user, c.src, victim, node)
		c.cl, c.node = cl, node
	}
	t.Logf("every client of %s reconnected through nginx within %s", victim, time.Since(stopped).Round(time.Millisecond))

	// Everyone keeps chatting, across the two remaining nodes.
	nxChat(t, clients, topic, "after")
}
