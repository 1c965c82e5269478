// Package server is chatd's HTTP surface: the WebSocket endpoint, auth,
// health and the dev token endpoint.
package server

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/chatd/chatd/chat"
)

// Config holds the server's settings. The zero value of each field picks the
// default given in its comment; withDefaults fills them in and validates
// the whole.
type Config struct {
	// JWTSecret verifies client tokens (HS256). Empty: dev mode, where tokens
	// are signed with DevSecret and POST /api/dev/token mints them.
	JWTSecret []byte
	// AllowedOrigins are host patterns (path.Match, or "scheme://host"
	// patterns) a browser's Origin may match besides the request's own host.
	// Empty: same-origin only. Requests without an Origin header (non-browser
	// clients) are not subject to the check.
	AllowedOrigins []string
	// DevTokenTTL is the lifetime of dev-mode tokens. Zero: 24 h, and at
	// most MaxTokenTTL.
	DevTokenTTL time.Duration
	// ReadyTimeout bounds each dependency check. Zero: 2 s.
	ReadyTimeout time.Duration
	// AdminToken opens the ops endpoints (/api/stats) to bearers of it.
	// Empty: they answer only direct loopback clients. It must differ from
	// APIKey.
	AdminToken string
	// DrainDelay is how long Shutdown keeps the listener open after
	// readiness turns 503 (refusing new WebSocket connections), so that load
	// balancers notice before connections are closed. Zero: no delay.
	DrainDelay time.Duration
	// APIKey opens the server API for backends (server/api.go: publish,
	// delete, disconnect) to bearers of it. Empty: the API is off (404).
	APIKey string
	// TrustedProxies are CIDRs or addresses (CHAT_TRUSTED_PROXIES) whose
	// X-Forwarded-For / X-Real-IP give the client address in logs and
	// ClientIP. Empty: the direct peer is the client.
	TrustedProxies []string
	// MaxTokenTTL is the longest lifetime (exp - iat) of a client token
	// the server accepts; tokens without iat are refused too. It bounds
	// how long a revocation must be remembered (RevocationTTL). Zero:
	// DefaultMaxTokenTTL (24 h).
	MaxTokenTTL time.Duration
	// PublicRooms are the room patterns (chat.ParsePattern) any valid token
	// may join, read and post in (CHAT_PUBLIC_ROOMS); a token's rooms and
	// read_rooms claims open more. Nil: ["*"], every room; empty and
	// non-nil: none.
	PublicRooms []string
}

// The defaults of Config.
const (
	defaultDevTokenTTL  = 24 * time.Hour
	defaultReadyTimeout = 2 * time.Second
	// DefaultMaxTokenTTL is the longest lifetime (exp - iat) of a token the
	// server accepts when Config.MaxTokenTTL is zero.
	DefaultMaxTokenTTL = 24 * time.Hour
)

// withDefaults returns c with every zero field set to its default, or an
// error naming the first setting out of range.
func (c Config) withDefaults() (Config, error) {
	for _, f := range []struct {
		name string
		v    time.Duration
	}{
		{"DevTokenTTL", c.DevTokenTTL},
		{"ReadyTimeout", c.ReadyTimeout},
		{"DrainDelay", c.DrainDelay},
		{"MaxTokenTTL", c.MaxTokenTTL},
	} {
		if f.v < 0 {
			return c, fmt.Errorf("server: %s must not be negative (%v)", f.name, f.v)
		}
	}
	if c.DevTokenTTL == 0 {
		c.DevTokenTTL = defaultDevTokenTTL
	}
	if c.ReadyTimeout == 0 {
		c.ReadyTimeout = defaultReadyTimeout
	}
	if c.MaxTokenTTL == 0 {
		c.MaxTokenTTL = DefaultMaxTokenTTL
	}
	if c.DevTokenTTL > c.MaxTokenTTL {
		c.DevTokenTTL = c.MaxTokenTTL
	}
	if c.PublicRooms == nil {
		c.PublicRooms = []string{"*"}
	}
	if c.APIKey != "" && c.APIKey == c.AdminToken {
		return c, errors.New("server: the API key must differ from the admin token")
	}
	for _, p := range c.AllowedOrigins {
		if _, err := path.Match(p, ""); err != nil {
			return c, fmt.Errorf("server: allowed origin %q: %w", p, err)
		}
	}
	if _, err := ParseTrustedProxies(c.TrustedProxies); err != nil {
		return c, fmt.Errorf("server: %w", err)
	}
	if _, err := chat.ParsePatterns(c.PublicRooms); err != nil {
		return c, fmt.Errorf("server: public rooms: %w", err)
	}
	return c, nil
}

// Check is one shared dependency (database, Redis), checked by
// /health/ready and /metrics.
type Check struct {
	Name  string
	Check func(ctx context.Context) error
}

// Options are the server's collaborators.
type Options struct {
	// Hub serves accepted connections. Required.
	Hub *chat.Hub
	// Limiter caps connections per user. Nil: no limit.
	Limiter chat.ConnLimiter
	// AddrLimiter caps connections per client address (ClientIP, so
	// TrustedProxies applies), keyed by the address. Nil: no limit.
	AddrLimiter chat.ConnLimiter
	// Checks are the shared dependencies (database, Redis): /health/ready
	// reports them in its body and /metrics as chatd_dependency_up; they
	// do not decide readiness.
	Checks []Check
	// Messages serves the history API. Nil: the API answers 404.
	Messages MessagePager
	// Stats builds the /api/stats document. Nil: 404.
	Stats StatsFunc
	// Metrics is the registry /metrics serves. Nil: one made by New, with
	// the hub's metrics only.
	Metrics *Metrics
	// Logger receives access and connection logs. Nil: discard.
	Logger *slog.Logger
	// Revocations remembers revoked tokens (POST
	// /api/users/{user}/disconnect with revoke) and is checked on every
	// token. It must remember a revocation for at least
	// RevocationTTL(MaxTokenTTL). Nil: a MemoryRevocations, right for a
	// single node.
	Revocations chat.Revocations
}

// Server serves chatd's HTTP routes.
type Server struct {
	cfg     Config
	secret  []byte
	devMode bool
	hub     *chat.Hub
	limiter chat.ConnLimiter
	// addrLimiter caps connections per client address; nil: no limit.
	addrLimiter chat.ConnLimiter
	checks      []Check
	pager       MessagePager
	stats       StatsFunc
	metrics     *Metrics
	log         *slog.Logger
	mux         *http.ServeMux
	proxies     *TrustedProxies
	// revocations is checked on every client token.
	revocations chat.Revocations
	// public are the rooms of Config.PublicRooms, shared by every
	// connection's grants.
	public chat.Patterns
	// wsBufs lends the connections their write buffers.
	wsBufs bufferPool

	// baseCtx outlives requests: it is the context of upgraded
	// connections, cancelled only once they have been closed.
	baseCtx    context.Context
	cancelBase context.CancelFunc

	// bodyTimeout bounds the reading of a request's body (see withBodyTimeout).
	bodyTimeout time.Duration

	draining atomic.Bool
	shutOnce sync.Once
	// conns counts the goroutines serving upgraded connections.
	conns   sync.WaitGroup
	shutErr error
	httpSrv *http.Server
}

// New returns a server for opts.Hub.
func New(cfg Config, opts Options) (*Server, error) {
	if opts.Hub == nil {
		return nil, errors.New("server: a hub is required")
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg:         cfg,
		secret:      cfg.JWTSecret,
		devMode:     len(cfg.JWTSecret) == 0,
		hub:         opts.Hub,
		limiter:     opts.Limiter,
		addrLimiter: opts.AddrLimiter,
		checks:      opts.Checks,
		pager:       opts.Messages,
		stats:       opts.Stats,
		metrics:     opts.Metrics,
		log:         opts.Logger,
		mux:         http.NewServeMux(),

		revocations: opts.Revocations,

		bodyTimeout: 30 * time.Second,
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.devMode {
		s.secret = []byte(DevSecret)
	}
	if s.revocations == nil {
		mem, err := chat.NewMemoryRevocations(chat.MemoryRevocationsConfig{TTL: RevocationTTL(cfg.MaxTokenTTL)})
		if err != nil {
			return nil, fmt.Errorf("server: %w", err)
		}
		s.revocations = mem
	}
	if s.metrics == nil {
		s.metrics = NewMetrics(opts.Hub.Config().NodeName)
	}
	s.metrics.setHub(opts.Hub)
	if len(s.checks) > 0 {
		// One server per registry; a second one's checks are not added.
		_ = s.metrics.reg.Register(depCollector{s})
	}
	s.baseCtx, s.cancelBase = context.WithCancel(context.Background())
	if s.proxies, err = ParseTrustedProxies(cfg.TrustedProxies); err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	if s.public, err = chat.ParsePatterns(cfg.PublicRooms); err != nil {
		return nil, fmt.Errorf("server: public rooms: %w", err)
	}
	s.routes()
	s.httpSrv = &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	return s, nil
}

// DevMode reports whether the server runs without a JWT secret.
func (s *Server) DevMode() bool { return s.devMode }

func (s *Server) routes() {
	s.mux.HandleFunc("GET /socket/websocket", s.handleSocket)
	s.mux.HandleFunc("GET /health/live", s.handleLive)
	s.mux.HandleFunc("GET /health/ready", s.handleReady)
	s.mux.HandleFunc("POST /api/dev/token", s.handleDevToken)
	s.mux.HandleFunc("GET /api/rooms/{room}/messages", s.handleMessages)
	s.mux.HandleFunc("GET /api/rooms/{room}/presence", s.handlePresence)
	s.apiRoutes()
	s.mux.HandleFunc("GET /api/stats", s.opsOnly(s.handleStats))
	s.mux.HandleFunc("GET /metrics", s.opsOnly(s.handleMetrics().ServeHTTP))
	s.pprofRoutes()
	s.dashboardRoutes()
	s.webRoutes()
}

// Handler returns the server's routes with request ids, access logs and a
// deadline on reading request bodies.
func (s *Server) Handler() http.Handler {
	return s.withRequestID(s.withBodyTimeout(s.mux))
}

// withBodyTimeout gives a request with a body bodyTimeout to send it: a
// client that announces a body and never sends it would otherwise hold
// its connection (and its handler) forever. The deadline is lifted once
// the body has been read, so a long handler (a pprof profile) is not cut
// short; http.Server's ReadTimeout would also apply to requests without a
// body. WebSocket upgrades have no body, and the hijack clears deadlines.
func (s *Server) withBodyTimeout(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
			next.ServeHTTP(w, r)
			return
		}
		rc := http.NewResponseController(w)
		if err := rc.SetReadDeadline(time.Now().Add(s.bodyTimeout)); err == nil {
			r.Body = &deadlineBody{ReadCloser: r.Body, rc: rc}
		}
		next.ServeHTTP(w, r)
	})
}

// deadlineBody lifts the connection's read deadline once the body is read.
type deadlineBody struct {
	io.ReadCloser
	rc   *http.ResponseController
	done bool
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF && !b.done {
		b.done = true
		_ = b.rc.SetReadDeadline(time.Time{})
	}
	return n, err
}

// Serve accepts connections on ln until Shutdown. It returns nil after a
// Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	err := s.httpSrv.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown turns readiness to 503, waits DrainDelay, stops accepting
// connections, waits for requests in flight for at most half of the time
// left in ctx (then closes their connections), closes open sockets with
// status 1001 and waits for them, all within ctx. It returns ctx.Err()
// when time ran out. Calling it again returns the first result.
func (s *Server) Shutdown(ctx context.Context) error {
	s.shutOnce.Do(func() {
		s.draining.Store(true)
		if s.cfg.DrainDelay > 0 {
			t := time.NewTimer(s.cfg.DrainDelay)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
			}
		}
		var errs []error
		// Requests in flight get half of what is left, then they are cut
		// off: one client stalling its request must not take the time of
		// the sockets' close and of what runs after Shutdown.
		hctx, cancel := ctx, context.CancelFunc(func() {})
		if dl, ok := ctx.Deadline(); ok {
			hctx, cancel = context.WithDeadline(ctx, time.Now().Add(time.Until(dl)/2))
		}
		if err := s.httpSrv.Shutdown(hctx); err != nil {
			s.log.Warn("requests still open at their share of the shutdown time: closing them", "err", err)
			if err := s.httpSrv.Close(); err != nil {
				errs = append(errs, fmt.Errorf("server: http close: %w", err))
			}
		}
		cancel()
		if err := s.hub.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("server: closing connections: %w", err))
		}
		s.cancelBase()
		// The connections' goroutines end with their sessions; wait for
		// their last steps (freeing connection slots).
		done := make(chan struct{})
		go func() {
			s.conns.Wait()
			close(done)
		}()
		select {
		case <-done:
		case <-ctx.Done():
			errs = append(errs, fmt.Errorf("server: connection goroutines: %w", ctx.Err()))
		}
		s.shutErr = errors.Join(errs...)
	})
	return s.shutErr
}

// Drain turns readiness to 503 without closing anything yet, so load
// balancers stop sending new clients before Shutdown.
func (s *Server) Drain() { s.draining.Store(true) }

type errorBody struct {
	Error  string `json:"error"`
	Reason string `json:"reason,omitempty"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, code, reason string) {
	writeJSON(w, status, errorBody{Error: code, Reason: reason})
}

func (s *Server) handleLive(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

type readyBody struct {
	Status string `json:"status"`
	Reason string `json:"reason,omitempty"`
	// Checks gives each shared dependency's state: "ok" or why it failed.
	Checks map[string]string `json:"checks,omitempty"`
	// Degraded names the dependencies that failed their check.
	Degraded []string `json:"degraded,omitempty"`
}

// handleReady answers for this pod: 200 once it serves and until it
// drains, 503 while draining. The shared dependencies (database, Redis)
// are checked and reported in the body (and in chatd_dependency_up), not
// used for the status: they are shared by every pod, so failing readiness
// on their outage would take every pod out of the Service at once, while
// chat goes on without the database by design and a Redis outage is
// answered per push ("unavailable") and healed by the relay itself.
func (s *Server) handleReady(w http.ResponseWriter, r *http.Request) {
	if s.draining.Load() || s.hub.Draining() {
		writeJSON(w, http.StatusServiceUnavailable, readyBody{Status: "unavailable", Reason: "draining"})
		return
	}
	body := readyBody{Status: "ok", Checks: make(map[string]string, len(s.checks))}
	for i, err := range s.runChecks(r.Context()) {
		name := s.checks[i].Name
		if err != nil {
			body.Checks[name] = err.Error()
			body.Degraded = append(body.Degraded, name)
		} else {
			body.Checks[name] = "ok"
		}
	}
	writeJSON(w, http.StatusOK, body)
}

// runChecks runs every dependency check at once, each bounded by
// ReadyTimeout, and returns their results in the order of s.checks.
func (s *Server) runChecks(ctx context.Context) []error {
	errs := make([]error, len(s.checks))
	var wg sync.WaitGroup
	for i, c := range s.checks {
		wg.Go(func() {
			cctx, cancel := context.WithTimeout(ctx, s.cfg.ReadyTimeout)
			defer cancel()
			errs[i] = c.Check(cctx)
		})
	}
	wg.Wait()
	return errs
}

type devTokenRequest struct {
	Name string `json:"name"`
}

func (s *Server) handleDevToken(w http.ResponseWriter, r *http.Request) {
	if !s.devMode {
		writeError(w, http.StatusNotFound, "not_found", "dev tokens are only minted when no CHAT_JWT_SECRET is set")
		return
	}
	var req devTokenRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096)).Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, "bad_request", `body must be {"name": "..."}`)
		return
	}
	name := strings.TrimSpace(req.Name)
	if name == "" || len(name) > MaxUserIDLen {
		writeError(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("name must be 1-%d bytes", MaxUserIDLen))
		return
	}
	token, err := MintToken(s.secret, name, s.cfg.DevTokenTTL)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "internal", "could not mint a token")
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"token": token, "user_id": name})
}

// handleSocket authenticates and upgrades a client connection.
func (s *Server) handleSocket(w http.ResponseWriter, r *http.Request) {
	// The logger is built where a line is logged: with the request's
	// attributes, it would otherwise be held by every open connection.
	log := s.connLogger(r)
	q := r.URL.Query()
	if vsn := q.Get("vsn"); vsn != "2.0.0" {
		s.metrics.refuse(RefusedVersion)
		writeError(w, http.StatusBadRequest, "unsupported_version",
			fmt.Sprintf("vsn=%q is not supported: only vsn=2.0.0 (Phoenix Channels V2 JSON) is spoken", vsn))
		return
	}
	if s.draining.Load() || s.hub.Draining() {
		s.metrics.refuse(RefusedDraining)
		writeError(w, http.StatusServiceUnavailable, "draining", "this node is shutting down; reconnect to another")
		return
	}
	authorizedAt := time.Now()
	raw, selectPhoenix, err := socketToken(r)
	var tok Token
	aerr := &authError{http.StatusUnauthorized, "unauthorized", ""}
	if err != nil {
		aerr.reason = err.Error()
	} else {
		tok, aerr = s.authorize(r.Context(), raw)
	}
	if aerr != nil {
		log().Info("connection refused", "reason", "auth", "err", aerr)
		if aerr.status == http.StatusServiceUnavailable {
			s.metrics.refuse(RefusedUnavailable)
		} else {
			s.metrics.refuse(RefusedAuth)
		}
		writeError(w, aerr.status, aerr.code, aerr.reason)
		return
	}
	user := tok.UserID
	if !s.originAllowed(r) {
		log().Info("connection refused", "reason", "origin", "origin", r.Header.Get("Origin"))
		s.metrics.refuse(RefusedOrigin)
		writeError(w, http.StatusForbidden, "forbidden_origin", "origin not allowed: set CHAT_ALLOWED_ORIGINS")
		return
	}
	connID := requestID(r.Context())
	// The slots are named by the server: a client-chosen X-Request-ID
	// repeated on many handshakes must not share one slot. The address's
	// slot is taken first: a flood from one address stops there.
	slotID := newRequestID()
	addr := ClientIP(r)
	releaseAddr, ok := s.takeSlot(w, r, log, s.addrLimiter, addr, slotID, RefusedAddrLimit,
		"this address holds as many connections as allowed", "remote")
	if !ok {
		return
	}
	releaseUser, ok := s.takeSlot(w, r, log, s.limiter, user, slotID, RefusedLimit,
		"this user holds as many connections as allowed", "user_id")
	if !ok {
		releaseAddr()
		return
	}
	release := func() {
		releaseUser()
		releaseAddr()
	}
	// Counted before the hijack: once hijacked, the HTTP server's Shutdown
	// no longer waits for this handler, ours does.
	s.conns.Add(1)
	// The phoenix client's authToken offers ["phoenix", the token]; a
	// browser fails the socket unless one offered is selected.
	conn, err := acceptConn(w, r, selectPhoenix, s.hub.Config().ReadLimit, &s.wsBufs)
	if err != nil {
		log().Info("upgrade failed", "err", err)
		release()
		s.conns.Done()
		return
	}
	grants := tok.Grants(s.public)
	log().Info("connected", "user_id", user)
	// The connection is served by a goroutine of its own, and this handler
	// returns: the HTTP server's goroutine, whose stack grew while it read
	// and routed the request, does not stay parked under every idle socket.
	info := &chat.ConnInfo{ID: connID, UserID: user, AuthorizedAt: authorizedAt, Grants: grants}
	go s.serveConn(conn, info, release, log)
}

// serveConn serves one accepted connection. Its goroutine stays parked
// under the idle connection (see chat.Hub.ServeConn): its frame is kept
// small, the log line is a call of its own.
func (s *Server) serveConn(conn chat.Conn, info *chat.ConnInfo, release func(), log func() *slog.Logger) {
	err := s.hub.ServeConn(s.baseCtx, conn, info)
	release()
	logDisconnected(log, info.UserID, err)
	s.conns.Done()
}

//go:noinline
func logDisconnected(log func() *slog.Logger, user string, err error) {
	log().Info("disconnected", "user_id", user, "err", err)
}

// takeSlot takes key's slot slotID from l (nil: no limit) for a handshake.
// When l refuses or fails it answers w (429, or 503 when the limit could
// not be checked) and returns false; else it returns the slot's release.
// attr names key in the log line of a refusal.
func (s *Server) takeSlot(w http.ResponseWriter, r *http.Request, log func() *slog.Logger, l chat.ConnLimiter,
	key, slotID, reason, message, attr string) (release func(), ok bool) {
	if l == nil {
		return func() {}, true
	}
	if err := l.Acquire(r.Context(), key, slotID); err != nil {
		if errors.Is(err, chat.ErrTooManyConnections) {
			log().Info("connection refused", "reason", reason, attr, key)
			s.metrics.refuse(reason)
			writeError(w, http.StatusTooManyRequests, "too_many_connections", message)
			return nil, false
		}
		log().Warn("connection limit check failed", "limit", reason, "err", err)
		s.metrics.refuse(RefusedUnavailable)
		writeError(w, http.StatusServiceUnavailable, "unavailable", "connection limit check failed")
		return nil, false
	}
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := l.Release(ctx, key, slotID); err != nil {
			log().Warn("connection slot release failed", "limit", reason, "err", err)
		}
	}, true
}

// originAllowed applies the same-origin rule plus AllowedOrigins to a
// browser's Origin header.
func (s *Server) originAllowed(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return false
	}
	if strings.EqualFold(u.Host, r.Host) {
		return true
	}
	for _, p := range s.cfg.AllowedOrigins {
		target := u.Host
		if strings.Contains(p, "://") {
			target = u.Scheme + "://" + u.Host
		}
		if ok, _ := path.Match(strings.ToLower(p), strings.ToLower(target)); ok {
			return true
		}
	}
	return false
}

type ctxKey int

const (
	keyRequestID ctxKey = iota
)

func requestID(ctx context.Context) string {
	id, _ := ctx.Value(keyRequestID).(string)
	return id
}

// requestLogger returns base with the attributes of the request served
// with ctx (its id and client address), or base itself outside a request.
func requestLogger(ctx context.Context, base *slog.Logger) *slog.Logger {
	id := requestID(ctx)
	if id == "" {
		return base
	}
	remote, _ := ctx.Value(clientIPKey{}).(string)
	return base.With("request_id", id, "remote", remote)
}

// connLogger returns a builder of r's logger that keeps only the two
// strings it needs, not r, so an upgraded connection can log later.
func (s *Server) connLogger(r *http.Request) func() *slog.Logger {
	id, remote := requestID(r.Context()), ClientIP(r)
	return func() *slog.Logger { return s.log.With("request_id", id, "remote", remote) }
}

func newRequestID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// withRequestID gives each request an id (from a well-formed X-Request-ID
// header, else a new one), echoes it and logs the request.
func (s *Server) withRequestID(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get("X-Request-ID")
		if !validRequestID(id) {
			id = newRequestID()
		}
		w.Header().Set("X-Request-ID", id)
		remote := s.proxies.ClientIP(r)
		ctx := context.WithValue(r.Context(), keyRequestID, id)
		ctx = withClientIP(ctx, remote)
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(rec, r.WithContext(ctx))
		if r.URL.Path == "/health/live" || r.URL.Path == "/health/ready" {
			return // probes every few seconds would drown the log
		}
		if s.log.Enabled(ctx, slog.LevelInfo) {
			requestLogger(ctx, s.log).Info("http request", "method", r.Method, "path", r.URL.Path, "status", rec.status,
				"duration_ms", float64(time.Since(start).Microseconds())/1000)
		}
	})
}

func validRequestID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// statusRecorder remembers the response status for the access log. It
// passes Hijack through for the WebSocket upgrade.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// Hijack passes the hijack through and records 101, the status of the
// WebSocket upgrade, the only hijacker.
func (r *statusRecorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := http.NewResponseController(r.ResponseWriter).Hijack()
	if err == nil {
		r.status = http.StatusSwitchingProtocols
	}
	return c, brw, err
}
