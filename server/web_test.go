package server

import (
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"github.com/chatd/chatd/chat"
)

// webGet fetches path from s with optional header pairs and returns the
// response (body read) and its body.
func webGet(t *testing.T, s *testServer, path string, hdr ...string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, s.ts.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(body)
}

// cspDirectives parses a Content-Security-Policy header.
func cspDirectives(csp string) map[string][]string {
	out := map[string][]string{}
	for _, d := range strings.Split(csp, ";") {
		f := strings.Fields(d)
		if len(f) > 0 {
			out[f[0]] = f[1:]
		}
	}
	return out
}

func checkWebSecurityHeaders(t *testing.T, path string, resp *http.Response) {
	t.Helper()
	h := resp.Header
	for k, want := range map[string]string{
		"X-Content-Type-Options":       "nosniff",
		"X-Frame-Options":              "DENY",
		"Referrer-Policy":              "no-referrer",
		"Cross-Origin-Opener-Policy":   "same-origin",
		"Cross-Origin-Resource-Policy": "same-origin",
	} {
		if got := h.Get(k); got != want {
			t.Errorf("GET %s: %s = %q, want %q", path, k, got, want)
		}
	}
	if h.Get("Permissions-Policy") == "" {
		t.Errorf("GET %s: no Permissions-Policy", path)
	}
	csp := h.Get("Content-Security-Policy")
	d := cspDirectives(csp)
	want := map[string]string{
		"default-src":     "'none'",
		"script-src":      "'self'",
		"style-src":       "'self'",
		"frame-ancestors": "'none'",
		"base-uri":        "'none'",
	}
	for k, v := range want {
		if got := strings.Join(d[k], " "); got != v {
			t.Errorf("GET %s: CSP %s = %q, want %q (CSP %q)", path, k, got, v, csp)
		}
	}
	for _, src := range d["script-src"] {
		if strings.Contains(src, "unsafe") || strings.HasPrefix(src, "'nonce-") || strings.HasPrefix(src, "'sha") {
			t.Errorf("GET %s: script-src allows %s", path, src)
		}
	}
	if _, ok := d["require-trusted-types-for"]; !ok {
		t.Errorf("GET %s: CSP without require-trusted-types-for: %q", path, csp)
	}
	host := strings.TrimPrefix(resp.Request.URL.String(), "http://")
	host = host[:strings.Index(host, "/")]
	if got, want := strings.Join(d["connect-src"], " "), "'self' ws://"+host+" wss://"+host; got != want {
		t.Errorf("GET %s: CSP connect-src = %q, want %q", path, got, want)
	}
}

func TestWebPage(t *testing.T) {
	s := startServer(t, chat.Config{}, nil)
	resp, body := webGet(t, s, "/")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /: %s", resp.Status)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/html; charset=utf-8" {
		t.Errorf("GET /: Content-Type %q", ct)
	}
	checkWebSecurityHeaders(t, "/", resp)
	if resp.Header.Get("Cache-Control") != "no-cache" || resp.Header.Get("ETag") == "" {
		t.Errorf("GET /: Cache-Control %q, ETag %q", resp.Header.Get("Cache-Control"), resp.Header.Get("ETag"))
	}

	// The stable hooks.
	for _, hook := range []string{`name="body"`, `data-role="messages"`, `data-role="presence"`, `data-role="composer"`} {
		if !strings.Contains(body, hook) {
			t.Errorf("GET /: no %s in the page", hook)
		}
	}
	if !regexp.MustCompile(`(?s)<form[^>]*data-role="composer"[^>]*>.*<input name="body"`).MatchString(body) {
		t.Errorf("GET /: input[name=body] is not inside the composer form")
	}
	// No inline script: every <script> has a src, and no on* attributes.
	for _, m := range regexp.MustCompile(`<script[^>]*>`).FindAllString(body, -1) {
		if !strings.Contains(m, `src="/static/`) {
			t.Errorf("GET /: inline or foreign script %s", m)
		}
	}
	if regexp.MustCompile(`(?i)\son[a-z]+\s*=`).MatchString(body) {
		t.Errorf("GET /: inline event handler attribute in the page")
	}
	if strings.Contains(body, "<style") || strings.Contains(body, "style=") {
		t.Errorf("GET /: inline style in the page (CSP style-src 'self' blocks it)")
	}
}

func TestWebAssets(t *testing.T) {
	s := startServer(t, chat.Config{}, nil)
	cases := []struct {
		path, ctype, contains string
	}{
		{"/static/app.js", "text/javascript; charset=utf-8", `from "./vendor/phoenix/phoenix.mjs"`},
		{"/static/style.css", "text/css; charset=utf-8", ":root"},
		{"/static/vendor/phoenix/phoenix.mjs", "text/javascript; charset=utf-8", "Presence"},
		{"/static/vendor/phoenix/phoenix.mjs.map", "application/json; charset=utf-8", `"sources"`},
		{"/static/vendor/phoenix/LICENSE.md", "text/markdown; charset=utf-8", "MIT License"},
		{"/static/vendor/phoenix/VERSION", "text/plain; charset=utf-8", "phoenix 1.8.16"},
	}
	for _, c := range cases {
		resp, body := webGet(t, s, c.path)
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s: %s", c.path, resp.Status)
			continue
		}
		if ct := resp.Header.Get("Content-Type"); ct != c.ctype {
			t.Errorf("GET %s: Content-Type %q, want %q", c.path, ct, c.ctype)
		}
		if !strings.Contains(body, c.contains) {
			t.Errorf("GET %s: body lacks %q", c.path, c.contains)
		}
		checkWebSecurityHeaders(t, c.path, resp)

		// Revalidation by ETag.
		etag := resp.Header.Get("ETag")
		resp2, _ := webGet(t, s, c.path, "If-None-Match", etag)
		if resp2.StatusCode != http.StatusNotModified {
			t.Errorf("GET %s with If-None-Match %s: %s, want 304", c.path, etag, resp2.Status)
		}
	}
	if _, body := webGet(t, s, "/static/vendor/phoenix/LICENSE.md"); !strings.Contains(body, "Chris McCord") {
		t.Errorf("the phoenix licence is not the one of the package")
	}
	// The page's copy of phoenix is the one the licence and VERSION describe.
	if _, body := webGet(t, s, "/static/vendor/phoenix/phoenix.mjs"); !strings.Contains(body, "export {") || !strings.Contains(body, "Socket") {
		t.Errorf("phoenix.mjs is not the ES module build")
	}
}

func TestWebNotFound(t *testing.T) {
	s := startServer(t, chat.Config{}, nil)
	for _, p := range []string{"/static/", "/static/nope.js", "/static/../server.go", "/index.html", "/static/index.html", "/nope"} {
		resp, _ := webGet(t, s, p)
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s: %s, want 404", p, resp.Status)
		}
	}
	// HEAD works, POST does not.
	req, _ := http.NewRequest(http.MethodHead, s.ts.URL+"/", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("HEAD /: %s", resp.Status)
	}
	resp, err = http.Post(s.ts.URL+"/", "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /: %s, want 405", resp.Status)
	}
}

func TestWebCSPHost(t *testing.T) {
	for host, want := range map[string]string{
		"chat.example.com":      "connect-src 'self' ws://chat.example.com wss://chat.example.com;",
		"127.0.0.1:4000":        "connect-src 'self' ws://127.0.0.1:4000 wss://127.0.0.1:4000;",
		"[::1]:4000":            "connect-src 'self' ws://[::1]:4000 wss://[::1]:4000;",
		"evil; script-src *":    "connect-src 'self';",
		"a.com 'unsafe-inline'": "connect-src 'self';",
		"":                      "connect-src 'self';",
	} {
		if got := webCSP(host); !strings.Contains(got, want) {
			t.Errorf("webCSP(%q) = %q, want it to contain %q", host, got, want)
		}
	}
}
