package e2e

// End-to-end tests of the web chat page (GET /) in a real browser: Debian's
// Chromium, headless, driven with chromedp, against real chatd processes.
// The page runs the official phoenix client served by the binary; the tests
// use only the page's stable hooks: input[name=body] in a form (Enter
// sends), [data-role=messages] (li[data-id][data-user] with a .body),
// [data-role=presence] (li[data-user]), [data-role=status] (data-state
// connected, connecting or disconnected) and [data-role=error].

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"github.com/chatd/chatd/internal/testsvc"
)

// webChromium is Debian's Chromium (package chromium, installed by
// ./scripts/deps.sh).
const webChromium = "/usr/bin/chromium"

// webTimeout bounds every wait for the page.
const webTimeout = 30 * time.Second

// webBrowser starts a headless Chromium for t and returns its context; new
// pages are tabs of it (webOpen). The browser is stopped and its profile
// removed when t ends.
func webBrowser(t *testing.T) context.Context {
	t.Helper()
	if _, err := os.Stat(webChromium); err != nil {
		t.Fatalf("Chromium is needed for the web tests (%v): run ./scripts/deps.sh", err)
	}
	dir, err := os.MkdirTemp("", "chatd-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(webChromium),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.Flag("no-default-browser-check", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		// Every tab is a user: none may be throttled as a background tab.
		chromedp.Flag("disable-background-timer-throttling", true),
		chromedp.Flag("disable-backgrounding-occluded-windows", true),
		chromedp.Flag("disable-renderer-backgrounding", true),
		chromedp.UserDataDir(dir),
		chromedp.WindowSize(1200, 800),
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	bctx, cancel := chromedp.NewContext(allocCtx)
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
		// Chromium's children may still write for a moment after it stops.
		for range 50 {
			if err := os.RemoveAll(dir); err == nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
	if err := chromedp.Do(bctx); err != nil {
		t.Fatalf("start %s: %v", webChromium, err)
	}
	return bctx
}

// webPage is one tab with the chat page.
type webPage struct {
	t     *testing.T
	name  string
	ctx   context.Context
	close context.CancelFunc
}

// webOpen opens url in a new tab of the browser and waits until the page
// has signed in and joined its room (the composer is ready).
func webOpen(t *testing.T, bctx context.Context, name, url string) *webPage {
	t.Helper()
	ctx, cancel := chromedp.NewContext(bctx)
	t.Cleanup(cancel)
	p := &webPage{t: t, name: name, ctx: ctx, close: cancel}
	if err := chromedp.Do(ctx, chromedp.EmulateViewport(1200, 800), chromedp.Navigate(url)); err != nil {
		t.Fatalf("%s: open %s: %v", name, url, err)
	}
	p.waitReady()
	return p
}

// eval evaluates a JavaScript expression in the page.
func webEval[T any](p *webPage, expr string) (T, error) {
	ctx, cancel := context.WithTimeout(p.ctx, 10*time.Second)
	defer cancel()
	return chromedp.Run(ctx, chromedp.Evaluate[T](expr))
}

// waitJS polls a boolean JavaScript expression until it is true.
func (p *webPage) waitJS(what, expr string) {
	p.t.Helper()
	deadline := time.Now().Add(webTimeout)
	var lastErr error
	for time.Now().Before(deadline) {
		ok, err := webEval[bool](p, expr)
		if err == nil && ok {
			return
		}
		lastErr = err
		time.Sleep(100 * time.Millisecond)
	}
	p.t.Fatalf("%s: %s: not true after %s (last error %v); page: %s", p.name, what, webTimeout, lastErr, p.state())
}

func (p *webPage) waitReady() {
	p.t.Helper()
	p.waitJS("connected and joined", `document.body.dataset.ready === "true" &&
		document.querySelector("[data-role=composer]").dataset.ready === "true"`)
}

// webMsg is a message as the page shows it.
type webMsg struct {
	ID   string `json:"id"`
	User string `json:"user"`
	Body string `json:"body"`
}

const webMessagesJS = `Array.from(document.querySelectorAll("[data-role=messages] li[data-id]")).map(li => ({
	id: li.dataset.id, user: li.dataset.user, body: li.querySelector(".body").textContent}))`

func (p *webPage) messages() []webMsg {
	p.t.Helper()
	ms, err := webEval[[]webMsg](p, webMessagesJS)
	if err != nil {
		p.t.Fatalf("%s: read messages: %v", p.name, err)
	}
	return ms
}

func (p *webPage) presence() []string {
	p.t.Helper()
	us, err := webEval[[]string](p, `Array.from(document.querySelectorAll("[data-role=presence] li[data-user]")).map(li => li.dataset.user)`)
	if err != nil {
		p.t.Fatalf("%s: read presence: %v", p.name, err)
	}
	return us
}

// state describes the page for failure messages.
func (p *webPage) state() string {
	s, err := webEval[string](p, `JSON.stringify({
		status: document.querySelector("[data-role=status]").dataset.state,
		banner: document.querySelector("[data-role=banner]").textContent,
		error: document.querySelector("[data-role=error]").textContent,
		presence: Array.from(document.querySelectorAll("[data-role=presence] li")).map(li => li.dataset.user),
		messages: Array.from(document.querySelectorAll("[data-role=messages] li[data-id]")).map(li => li.dataset.user + ": " + li.querySelector(".body").textContent),
	})`)
	if err != nil {
		return fmt.Sprintf("(unreadable: %v)", err)
	}
	return s
}

// send types body into input[name=body] and presses Enter.
func (p *webPage) send(body string) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 10*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, chromedp.SendKeys(chromedp.CSS(`form input[name=body]`), body+kb.Enter)); err != nil {
		p.t.Fatalf("%s: type %q: %v", p.name, body, err)
	}
}

// sendSeen sends body and waits until the page shows it.
func (p *webPage) sendSeen(body string) {
	p.t.Helper()
	p.send(body)
	p.waitBodies(body)
}

// waitBodies waits until the page shows messages with all these bodies.
func (p *webPage) waitBodies(bodies ...string) {
	p.t.Helper()
	deadline := time.Now().Add(webTimeout)
	for {
		var have []string
		for _, m := range p.messages() {
			have = append(have, m.Body)
		}
		missing := false
		for _, b := range bodies {
			if !slices.Contains(have, b) {
				missing = true
			}
		}
		if !missing {
			return
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("%s: messages %q not all shown after %s; page: %s", p.name, bodies, webTimeout, p.state())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitPresence waits until the online list is exactly users (sorted).
func (p *webPage) waitPresence(users ...string) {
	p.t.Helper()
	slices.Sort(users)
	deadline := time.Now().Add(webTimeout)
	for {
		got := p.presence()
		if slices.Equal(got, users) {
			return
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("%s: online list %q, want %q after %s; page: %s", p.name, got, users, webTimeout, p.state())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// screenshot writes the page to <module root>/artifacts/name (git-ignored)
// and logs the path.
func (p *webPage) screenshot(name string) {
	p.t.Helper()
	png, err := chromedp.Run(p.ctx, chromedp.CaptureScreenshot())
	if err != nil {
		p.t.Fatalf("%s: screenshot: %v", p.name, err)
	}
	root, err := filepath.Abs("..")
	if err != nil {
		p.t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		p.t.Fatalf("module root %s: %v", root, err)
	}
	dir := filepath.Join(root, "artifacts")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		p.t.Fatal(err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, png, 0o644); err != nil {
		p.t.Fatal(err)
	}
	p.t.Logf("screenshot of %s's page: %s", p.name, path)
}

// checkExactly fails unless the page shows exactly bodies, in this order,
// with strictly increasing ids (no duplicate, no gap).
func (p *webPage) checkExactly(bodies ...string) []webMsg {
	p.t.Helper()
	ms := p.messages()
	var got []string
	for i, m := range ms {
		got = append(got, m.Body)
		if i > 0 && !(ms[i-1].ID < m.ID) {
			p.t.Errorf("%s: message %d id %s is not after %s", p.name, i, m.ID, ms[i-1].ID)
		}
	}
	if !slices.Equal(got, bodies) {
		p.t.Errorf("%s: shows %q, want exactly %q", p.name, got, bodies)
	}
	return ms
}

// webDevServer starts a single chatd node in dev mode (no secret: the page
// gets its token from POST /api/dev/token) with extra env. Dev mode is
// asked for by name (CHAT_DEV_MODE), as it must be with PostgreSQL.
func webDevServer(t *testing.T, extra map[string]string) *testsvc.Chatd {
	t.Helper()
	env := map[string]string{"CHAT_JWT_SECRET": "", "CHAT_DEV_MODE": "true", "CHAT_USER_RATE": "0"}
	for k, v := range extra {
		env[k] = v
	}
	return testsvc.StartChatd(t, env, "serve")
}

// TestWebTwoUsers: two pages as two users in one room on one node see each
// other's messages and each other online; when one closes, the other sees
// the leave. A screenshot is kept in artifacts/.
func TestWebTwoUsers(t *testing.T) {
	c := webDevServer(t, nil)
	b := webBrowser(t)
	alice := webOpen(t, b, "alice", c.URL()+"/?name=alice&room=web-two")
	bob := webOpen(t, b, "bob", c.URL()+"/?name=bob&room=web-two")
	alice.waitPresence("alice", "bob")
	bob.waitPresence("alice", "bob")

	alice.sendSeen("hello from alice")
	bob.waitBodies("hello from alice")
	bob.sendSeen("hi alice, bob here")
	alice.waitBodies("hi alice, bob here")
	alice.sendSeen("how are you?")
	bob.waitBodies("how are you?")
	want := []string{"hello from alice", "hi alice, bob here", "how are you?"}
	am := alice.checkExactly(want...)
	bm := bob.checkExactly(want...)
	if !slices.Equal(am, bm) {
		t.Errorf("the pages differ: alice %+v, bob %+v", am, bm)
	}
	for i, u := range []string{"alice", "bob", "alice"} {
		if i < len(am) && am[i].User != u {
			t.Errorf("message %d by %q, want %q", i, am[i].User, u)
		}
	}
	alice.screenshot("web-chat.png")

	bob.close()
	alice.waitPresence("alice")
}

// TestWebCluster: two pages on two different nodes of a three-node cluster
// (Redis relay; the nodes have a secret, so the pages take their tokens
// from the URL fragment) chat with each other and see each other online.
func TestWebCluster(t *testing.T) {
	redis := testsvc.StartRedis(t)
	nodes := clStartCluster(t, redis, 3, nil)
	b := webBrowser(t)
	alice := webOpen(t, b, "alice@node1", nodes[0].URL()+"/?room=web-cluster#token="+mintToken(t, testSecret, "alice"))
	bob := webOpen(t, b, "bob@node3", nodes[2].URL()+"/?room=web-cluster#token="+mintToken(t, testSecret, "bob"))
	alice.waitPresence("alice", "bob")
	bob.waitPresence("alice", "bob")

	alice.sendSeen("hello from node1")
	bob.waitBodies("hello from node1")
	bob.sendSeen("hello from node3")
	alice.waitBodies("hello from node3")
	alice.checkExactly("hello from node1", "hello from node3")
	bob.checkExactly("hello from node1", "hello from node3")

	// The token left the address bar.
	if u, err := webEval[string](alice, `location.href`); err != nil || strings.Contains(u, "token") {
		t.Errorf("alice's address after sign-in: %q (%v), want no token", u, err)
	}
}

// TestWebXSS: a body that is HTML is shown as its characters, on the
// sender's page and the receiver's; no element is created and no script
// runs.
func TestWebXSS(t *testing.T) {
	c := webDevServer(t, nil)
	b := webBrowser(t)
	alice := webOpen(t, b, "alice", c.URL()+"/?name=alice&room=web-xss")
	bob := webOpen(t, b, "bob", c.URL()+"/?name=bob&room=web-xss")
	bodies := []string{
		`<img src=x onerror="window.__xss=1">`,
		`<script>window.__xss=2</script><b>bold</b>`,
	}
	for _, body := range bodies {
		alice.sendSeen(body)
	}
	bob.waitBodies(bodies...)
	time.Sleep(500 * time.Millisecond) // an image error handler would have run by now
	for _, p := range []*webPage{alice, bob} {
		p.checkExactly(bodies...)
		n, err := webEval[int](p, `document.querySelectorAll("[data-role=messages] img, [data-role=messages] script, [data-role=messages] b").length`)
		if err != nil || n != 0 {
			t.Errorf("%s: %d elements created from message bodies (%v), want 0", p.name, n, err)
		}
		flag, err := webEval[string](p, `typeof window.__xss`)
		if err != nil || flag != "undefined" {
			t.Errorf("%s: window.__xss is %s (%v): a script ran", p.name, flag, err)
		}
	}
}

// TestWebServerErrors: an error the server answers a push with is shown to
// the user, and the unsent text is given back.
func TestWebServerErrors(t *testing.T) {
	c := webDevServer(t, map[string]string{"CHAT_MAX_BODY": "10"})
	b := webBrowser(t)
	alice := webOpen(t, b, "alice", c.URL()+"/?name=alice&room=web-errors")
	const long = "this body is too long"
	alice.send(long)
	alice.waitJS("the error is shown", `!document.querySelector("[data-role=error]").hidden &&
		document.querySelector("[data-role=error]").textContent.includes("too long")`)
	alice.waitJS("the text is given back", `document.querySelector("input[name=body]").value === `+fmt.Sprintf("%q", long))
	if ms := alice.messages(); len(ms) != 0 {
		t.Errorf("messages shown after a refused push: %+v", ms)
	}
}

// TestWebReconnect: a page loses its connection when its node is stopped
// (SIGTERM); while it is down another client sends messages to a new chatd
// process on the same port and the same PostgreSQL database; the page
// shows it is disconnected, reconnects by itself and then shows exactly
// the messages it missed: no gap, no duplicate, in order.
//
// The page's network is emulated offline (DevTools network conditions,
// which fail new WebSocket handshakes) from the moment it shows the
// disconnection until the missed messages are sent, so it cannot reconnect
// early and receive them live instead.
func TestWebReconnect(t *testing.T) {
	pg := testsvc.StartPostgres(t)
	env := map[string]string{"CHAT_DATABASE_URL": pg.URL()}
	c1 := webDevServer(t, env)
	b := webBrowser(t)
	const room = "web-restart"
	alice := webOpen(t, b, "alice", c1.URL()+"/?name=alice&room="+room)
	bob := webOpen(t, b, "bob", c1.URL()+"/?name=bob&room="+room)
	var want []string
	for i := range 3 {
		body := fmt.Sprintf("before restart %d", i)
		bob.sendSeen(body)
		want = append(want, body)
	}
	alice.waitBodies(want...)

	if err := c1.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := c1.WaitTimeout(30 * time.Second); err != nil {
		t.Fatalf("chatd exit after SIGTERM: %v", err)
	}
	for _, p := range []*webPage{alice, bob} {
		p.waitJS("shows it is disconnected", `document.querySelector("[data-role=status]").dataset.state === "disconnected" &&
			!document.querySelector("[data-role=banner]").hidden &&
			document.querySelector("[data-role=composer] button").disabled`)
	}
	alice.setOffline(true)

	// Dev mode (asked for by name, with PostgreSQL): the pages' dev tokens
	// stay valid.
	env["CHAT_JWT_SECRET"], env["CHAT_DEV_MODE"] = "", "true"
	webStartChatdAt(t, c1.Addr(), env)
	bob.waitReady() // bob reconnected to the new process by himself
	for i := range 5 {
		body := fmt.Sprintf("while alice was away %d", i)
		bob.sendSeen(body)
		want = append(want, body)
	}

	alice.setOffline(false)
	alice.waitReady()
	alice.waitBodies(want...)
	bob.sendSeen("welcome back")
	want = append(want, "welcome back")
	alice.waitBodies("welcome back")
	alice.checkExactly(want...)
	bob.checkExactly(want...)
	alice.waitPresence("alice", "bob")
}

// setOffline emulates the page's network going down (new connections
// fail) or coming back.
func (p *webPage) setOffline(offline bool) {
	p.t.Helper()
	if _, err := chromedp.Call(p.ctx, network.Enable, network.EnableParams{}); err != nil {
		p.t.Fatalf("%s: enable network domain: %v", p.name, err)
	}
	conds := []*network.Conditions{}
	if offline {
		conds = append(conds, &network.Conditions{Offline: true})
	}
	if _, err := chromedp.Call(p.ctx, network.EmulateNetworkConditionsByRule,
		network.EmulateNetworkConditionsByRuleParams{MatchedNetworkConditions: conds}); err != nil {
		p.t.Fatalf("%s: set network offline=%v: %v", p.name, offline, err)
	}
}

// webStartChatdAt starts chatd serve listening on addr (a port an earlier
// process of the test had: testsvc.StartChatd always picks a new one) with
// env, and waits until it is live. It is stopped with SIGTERM when t ends.
func webStartChatdAt(t *testing.T, addr string, env map[string]string) {
	t.Helper()
	bin := testsvc.ChatdBinary(t)
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CHAT_") {
			out = append(out, kv)
		}
	}
	vars := map[string]string{
		"CHAT_LOG_FORMAT":   "text",
		"CHAT_CLUSTER_ADDR": fmt.Sprintf("127.0.0.1:%d", testsvc.FreePort(t)),
	}
	for k, v := range env {
		vars[k] = v
	}
	vars["CHAT_ADDR"] = addr
	for k, v := range vars {
		out = append(out, k+"="+v)
	}
	if _, ok := os.LookupEnv("GORACE"); !ok {
		out = append(out, "GORACE=atexit_sleep_ms=50")
	}
	logs := &webLog{}
	cmd := exec.Command(bin, "serve")
	cmd.Dir = t.TempDir()
	cmd.Env = out
	cmd.Stdout, cmd.Stderr = logs, logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start chatd on %s: %v", addr, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("chatd on %s exited with %v after SIGTERM", addr, err)
			}
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-done
			t.Errorf("chatd on %s still running 15s after SIGTERM: killed", addr)
		}
		l := logs.String()
		if strings.Contains(l, "WARNING: DATA RACE") {
			t.Errorf("chatd on %s reported a data race", addr)
		}
		if t.Failed() {
			t.Logf("log of chatd on %s:\n%s", addr, l)
		}
	})
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := client.Get("http://" + addr + "/health/live")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case err := <-done:
			done <- err
			t.Fatalf("chatd on %s exited during start (%v); log:\n%s", addr, err, logs.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("chatd on %s not live after 30s; log:\n%s", addr, logs.String())
		}
	}
}

// webLog collects a process's output.
type webLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *webLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *webLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}
