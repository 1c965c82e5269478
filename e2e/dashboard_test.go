package e2e

// The live dashboard (GET /dashboard) in a real browser: Debian's Chromium,
// headless, driven with chromedp, against a real 3-node cluster.

import (
	"context"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/chatd/chatd/internal/testsvc"
)

// dashChromium is Debian's Chromium (installed by ./scripts/deps.sh).
const dashChromium = "/usr/bin/chromium"

// dashBrowser starts a headless Chromium with a throw-away profile and
// returns a tab's context; everything is stopped and removed when t ends.
func dashBrowser(t *testing.T) context.Context {
	t.Helper()
	if _, err := os.Stat(dashChromium); err != nil {
		t.Fatalf("Chromium is needed for the dashboard test (%v): run ./scripts/deps.sh", err)
	}
	dir, err := os.MkdirTemp("", "chatd-dashboard-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(dashChromium),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("no-first-run", true),
		chromedp.UserDataDir(dir),
		chromedp.WindowSize(1200, 800),
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(allocCtx)
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
		for range 50 { // Chromium's children may write for a moment after it stops
			if err := os.RemoveAll(dir); err == nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start %s: %v", dashChromium, err)
	}
	return ctx
}

// dashEval evaluates a JavaScript expression in the page.
func dashEval[T any](ctx context.Context, expr string) (T, error) {
	return chromedp.Run(ctx, chromedp.Evaluate[T](expr))
}

// dashRowsText is the text of the dashboard's node rows.
const dashRowsText = `(() => { const tb = document.querySelector('tbody[data-role="nodes"]'); return tb ? tb.innerText : "" })()`

// dashText is the text of the element with data-role role.
func dashText(role string) string {
	return `(() => { const e = document.querySelector('[data-role="` + role + `"]'); return e ? e.textContent : "" })()`
}

// TestDashboardShowsCluster: the dashboard of a running 3-node cluster,
// opened on node2 with the admin token, lists the three nodes alive with
// their connections, runs its own script and style under its strict CSP,
// and shows a killed node as dead.
func TestDashboardShowsCluster(t *testing.T) {
	redis := testsvc.StartRedis(t)
	nodes := clStartCluster(t, redis, 3, nil)
	psDial(t, nodes[0].Chatd, "dash-ann")
	psDial(t, nodes[2].Chatd, "dash-bob")

	bctx := dashBrowser(t)
	ctx, cancel := context.WithTimeout(bctx, 90*time.Second)
	defer cancel()

	// The page itself is an ops endpoint: the browser sends the admin
	// token on navigation; the page's script takes it from the fragment
	// for its own fetches.
	url := nodes[1].URL() + "/dashboard?interval=500#token=" + clAdminToken
	start := time.Now()
	err := chromedp.Do(ctx,
		chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
			if _, err := cdp.Call(ctx, tg, network.Enable, network.EnableParams{}); err != nil {
				return err
			}
			_, err := cdp.Call(ctx, tg, network.SetExtraHTTPHeaders,
				network.SetExtraHTTPHeadersParams{Headers: network.Headers{"Authorization": "Bearer " + clAdminToken}})
			return err
		}),
		chromedp.Navigate(url),
	)
	if err != nil {
		t.Fatalf("dashboard on node2: %v", err)
	}
	// Wait for the three nodes and the gossiped connection counts
	// (metadata every 2 s).
	var text, conns string
	deadline := time.Now().Add(20 * time.Second)
	for {
		text, err = dashEval[string](ctx, dashRowsText)
		if err != nil {
			t.Fatal(err)
		}
		conns, _ = dashEval[string](ctx, dashText("connections"))
		if strings.Count(text, "alive") == 3 && strings.TrimSpace(conns) == "2" {
			break
		}
		if time.Now().After(deadline) {
			status, _ := dashEval[string](ctx, dashText("status"))
			t.Fatalf("dashboard shows %q, total connections %q, status %q; want 3 alive nodes and 2 connections", text, conns, status)
		}
		time.Sleep(250 * time.Millisecond)
	}
	for _, n := range []string{"node1", "node2 (this node)", "node3"} {
		if !strings.Contains(text, n) {
			t.Errorf("dashboard rows lack %q: %q", n, text)
		}
	}
	loc, _ := dashEval[string](ctx, "location.href")
	if strings.Contains(loc, "token") {
		t.Errorf("the admin token stays in the address bar: %s", loc)
	}
	status, _ := dashEval[string](ctx, dashText("status"))
	statusErr, _ := dashEval[bool](ctx, `document.querySelector('[data-role="status"]').classList.contains("error")`)
	if statusErr || !strings.Contains(status, "node2") {
		t.Errorf("status line %q (error: %v)", status, statusErr)
	}
	// The stylesheet applied: style-src 'self' lets the page's own CSS in.
	if radius, _ := dashEval[string](ctx, `getComputedStyle(document.querySelector(".card")).borderTopLeftRadius`); radius != "6px" {
		t.Errorf("the dashboard's stylesheet did not apply (card radius %q)", radius)
	}
	t.Logf("dashboard on node2 showed the 3 nodes %s after navigation: %q", time.Since(start).Round(time.Millisecond), text)

	// Kill node3: the page turns it dead (or drops it) by itself.
	if err := nodes[2].Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	deadline = killed.Add(20 * time.Second)
	for {
		dead, err := dashEval[bool](ctx, `(() => { const r = document.querySelector('tbody[data-role="nodes"] tr[data-node="node3"]'); return !r || r.classList.contains("dead") })()`)
		if err != nil {
			t.Fatal(err)
		}
		if dead {
			text, _ = dashEval[string](ctx, dashRowsText)
			t.Logf("dashboard showed node3 dead %s after SIGKILL: %q", time.Since(killed).Round(time.Millisecond), text)
			break
		}
		if time.Now().After(deadline) {
			text, _ = dashEval[string](ctx, dashRowsText)
			t.Fatalf("dashboard still shows node3 alive %s after SIGKILL: %q", time.Since(killed).Round(time.Millisecond), text)
		}
		time.Sleep(250 * time.Millisecond)
	}
}
