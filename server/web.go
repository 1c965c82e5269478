package server

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"net/http"
	"path"
	"strings"
	"time"
)

// webFiles is the web chat page: index.html, app.js, style.css and the
// official phoenix client (vendor/phoenix: phoenix.mjs, its source map, its
// LICENSE.md and a VERSION note), served as they are: no build step.
//
//go:embed web
var webFiles embed.FS

// webAsset is one embedded file, read once at start.
type webAsset struct {
	body        []byte
	contentType string
	etag        string
}

// webAssets maps a URL path ("/", "/static/app.js", ...) to its file.
var webAssets = loadWebAssets()

// webContentTypes are the types of the embedded files, by extension: set
// explicitly so they never depend on the host's mime tables.
var webContentTypes = map[string]string{
	".html": "text/html; charset=utf-8",
	".js":   "text/javascript; charset=utf-8",
	".mjs":  "text/javascript; charset=utf-8",
	".css":  "text/css; charset=utf-8",
	".map":  "application/json; charset=utf-8",
	".md":   "text/markdown; charset=utf-8",
	".svg":  "image/svg+xml",
	"":      "text/plain; charset=utf-8", // VERSION
}

func loadWebAssets() map[string]webAsset {
	assets := make(map[string]webAsset)
	err := fs.WalkDir(webFiles, "web", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		body, err := webFiles.ReadFile(p)
		if err != nil {
			return err
		}
		ct, ok := webContentTypes[path.Ext(p)]
		if !ok {
			ct = "application/octet-stream"
		}
		sum := sha256.Sum256(body)
		a := webAsset{body: body, contentType: ct, etag: `"` + hex.EncodeToString(sum[:8]) + `"`}
		rel := strings.TrimPrefix(p, "web/")
		if rel == "index.html" {
			assets["/"] = a
		} else {
			assets["/static/"+rel] = a
		}
		return nil
	})
	if err != nil {
		panic("server: embedded web files: " + err.Error())
	}
	return assets
}

// webRoutes registers the web chat page and its static files.
func (s *Server) webRoutes() {
	s.mux.HandleFunc("GET /{$}", s.handleWeb)
	s.mux.HandleFunc("GET /static/", s.handleWeb)
}

// handleWeb serves one embedded file with the security headers. Only "/"
// and the files under /static/ exist: anything else is 404.
func (s *Server) handleWeb(w http.ResponseWriter, r *http.Request) {
	setWebSecurityHeaders(w.Header(), r.Host)
	a, ok := webAssets[r.URL.Path]
	if !ok {
		http.Error(w, "404 page not found", http.StatusNotFound)
		return
	}
	h := w.Header()
	h.Set("Content-Type", a.contentType)
	h.Set("ETag", a.etag)
	// The files change with the binary: always revalidate (cheap, by ETag).
	h.Set("Cache-Control", "no-cache")
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(a.body))
}

// setWebSecurityHeaders sets the headers of the page and every asset: a
// strict Content-Security-Policy (no inline script, no eval, no framing,
// connections only back to this origin), nosniff, no referrer, and
// same-origin isolation.
func setWebSecurityHeaders(h http.Header, host string) {
	h.Set("Content-Security-Policy", webCSP(host))
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	h.Set("Cross-Origin-Resource-Policy", "same-origin")
	h.Set("Permissions-Policy", "camera=(), microphone=(), geolocation=(), payment=(), usb=()")
}

// webCSP returns the page's Content-Security-Policy. connect-src names this
// origin's WebSocket endpoints exactly when the Host header is a plain
// host[:port] ('self' covers ws/wss of the same host in CSP 3 browsers, the
// explicit sources cover older ones); a Host of any other shape is never
// copied into the header, and only 'self' is allowed.
func webCSP(host string) string {
	connect := "'self'"
	if validCSPHost(host) {
		connect += " ws://" + host + " wss://" + host
	}
	return strings.Join([]string{
		"default-src 'none'",
		"script-src 'self'",
		"style-src 'self'",
		"img-src 'self' data:",
		"connect-src " + connect,
		"base-uri 'none'",
		"form-action 'self'",
		"frame-ancestors 'none'",
		"require-trusted-types-for 'script'",
	}, "; ")
}

// validCSPHost reports whether host is safe to put in a CSP source: letters,
// digits, '.', '-', ':' and the brackets of an IPv6 literal only.
func validCSPHost(host string) bool {
	if host == "" || len(host) > 255 {
		return false
	}
	for _, c := range host {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '.', c == '-', c == ':', c == '[', c == ']':
		default:
			return false
		}
	}
	return true
}
