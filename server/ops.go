package server

import (
	"context"
	"crypto/subtle"
	"net"
	"net/http"
	"strings"
)

// opsOnly guards the operators' endpoints: with an admin token configured,
// the request must carry "Authorization: Bearer <admin token>" (or Basic
// credentials whose password is the admin token, which is how a browser
// opens /dashboard); without
// one, only direct loopback clients (not proxied requests) are let in. A
// chat user's token never opens them.
func (s *Server) opsOnly(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if s.cfg.AdminToken != "" {
			token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			if !ok {
				// A browser opening /dashboard answers the Basic challenge:
				// any user name, the admin token as password.
				_, token, ok = r.BasicAuth()
			}
			if !ok || subtle.ConstantTimeCompare([]byte(strings.TrimSpace(token)), []byte(s.cfg.AdminToken)) != 1 {
				w.Header().Set("WWW-Authenticate", `Bearer realm="chatd ops"`)
				w.Header().Add("WWW-Authenticate", `Basic realm="chatd ops", charset="UTF-8"`)
				writeError(w, http.StatusUnauthorized, "unauthorized", "ops endpoints need Authorization: Bearer <CHAT_ADMIN_TOKEN>")
				return
			}
			next(w, r)
			return
		}
		if !directLoopback(r) {
			writeError(w, http.StatusForbidden, "forbidden", "with no CHAT_ADMIN_TOKEN set, ops endpoints answer only loopback clients")
			return
		}
		next(w, r)
	}
}

// directLoopback reports whether r comes from a loopback address and was not
// forwarded by a proxy on this host.
func directLoopback(r *http.Request) bool {
	for _, h := range []string{"X-Forwarded-For", "X-Real-Ip", "Forwarded"} {
		if r.Header.Get(h) != "" {
			return false
		}
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// StatsFunc builds the /api/stats document.
type StatsFunc func(ctx context.Context) any

func (s *Server) handleStats(w http.ResponseWriter, r *http.Request) {
	if s.stats == nil {
		writeError(w, http.StatusNotFound, "not_found", "no stats source is configured")
		return
	}
	writeJSON(w, http.StatusOK, s.stats(r.Context()))
}
