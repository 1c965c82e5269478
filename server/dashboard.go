package server

import (
	"embed"
	"io/fs"
	"net/http"
)

// dashboardFiles is the live dashboard: plain HTML, CSS and JS that poll
// /api/stats. No inline script or style, so the page runs under a strict
// Content-Security-Policy.
//
//go:embed dashboard
var dashboardFiles embed.FS

// dashboardCSP allows the page its own script, style and fetches, nothing
// else.
const dashboardCSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; " +
	"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// dashboardRoutes registers /dashboard and its files, behind opsOnly like
// every ops endpoint.
func (s *Server) dashboardRoutes() {
	sub, err := fs.Sub(dashboardFiles, "dashboard")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	files := http.StripPrefix("/dashboard/", http.FileServerFS(sub))
	s.mux.HandleFunc("GET /dashboard", s.opsOnly(func(w http.ResponseWriter, r *http.Request) {
		dashboardHeaders(w)
		http.ServeFileFS(w, r, sub, "index.html")
	}))
	s.mux.HandleFunc("GET /dashboard/{file}", s.opsOnly(func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("file") == "index.html" {
			http.Redirect(w, r, "/dashboard", http.StatusMovedPermanently)
			return
		}
		dashboardHeaders(w)
		files.ServeHTTP(w, r)
	}))
}

func dashboardHeaders(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Security-Policy", dashboardCSP)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-store")
}
