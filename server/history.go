package server

import (
	"context"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/chatd/chatd/chat"
)

// PageQuery selects one page of a room's stored messages.
type PageQuery struct {
	// Before and After are message ids; at most one is set.
	Before, After string
	// Limit is the most messages asked for; the pager caps it (the
	// store's MaxPageLimit). Zero: the pager's default.
	Limit int
}

// MessagePager pages through a room's stored messages (the store's
// History, behind an adapter of the node's).
type MessagePager interface {
	// Page returns one page of room's messages: with q.After set, oldest
	// first going forward; otherwise newest first going back from q.Before
	// (or from the newest).
	Page(ctx context.Context, room string, q PageQuery) ([]chat.Message, error)
}

type historyPage struct {
	Messages []chat.Message `json:"messages"`
	// Order is "newest_first" or "oldest_first".
	Order string `json:"order"`
}

// handleMessages serves GET /api/rooms/{room}/messages?before=&after=&limit=
// to a bearer of a valid user token.
func (s *Server) handleMessages(w http.ResponseWriter, r *http.Request) {
	room, ok := s.bearerReader(w, r)
	if !ok {
		return
	}
	if s.pager == nil {
		writeError(w, http.StatusNotFound, "not_found", "no message store is configured")
		return
	}
	q := r.URL.Query()
	pq := PageQuery{Before: q.Get("before"), After: q.Get("after")}
	if len(pq.Before) > 64 || len(pq.After) > 64 {
		writeError(w, http.StatusBadRequest, "bad_request", "before and after must be message ids")
		return
	}
	if l := q.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 {
			writeError(w, http.StatusBadRequest, "bad_request", "limit must be a positive integer")
			return
		}
		pq.Limit = n
	}
	msgs, err := s.pager.Page(r.Context(), room, pq)
	if err != nil {
		requestLogger(r.Context(), s.log).Warn("history query failed", "room", room, "err", err)
		writeError(w, http.StatusServiceUnavailable, "unavailable", "the message store did not answer")
		return
	}
	page := historyPage{Messages: msgs, Order: "newest_first"}
	if pq.After != "" {
		page.Order = "oldest_first"
	}
	if page.Messages == nil {
		page.Messages = []chat.Message{}
	}
	writeJSON(w, http.StatusOK, page)
}

// bearerReader authenticates "Authorization: Bearer <user token>" and
// checks that the token may read the request's {room}. It answers 401
// without a valid token, 400 for an invalid room name and 403 for a room
// the token may not read, and then returns false.
func (s *Server) bearerReader(w http.ResponseWriter, r *http.Request) (string, bool) {
	tok, ok := s.bearerToken(w, r)
	if !ok {
		return "", false
	}
	room := r.PathValue("room")
	if !chat.ValidRoomName(room) {
		writeError(w, http.StatusBadRequest, "bad_request", "room must be 1-64 characters of [A-Za-z0-9_.-]")
		return "", false
	}
	if !tok.Grants(s.public).CanJoin(room) {
		writeError(w, http.StatusForbidden, "forbidden", "this token may not read room "+room)
		return "", false
	}
	return room, true
}

// bearerToken authenticates "Authorization: Bearer <user token>"; on failure
// it answers 401 and returns false.
func (s *Server) bearerToken(w http.ResponseWriter, r *http.Request) (Token, bool) {
	auth := r.Header.Get("Authorization")
	token, ok := strings.CutPrefix(auth, "Bearer ")
	if !ok {
		w.Header().Set("WWW-Authenticate", `Bearer realm="chatd"`)
		writeError(w, http.StatusUnauthorized, "unauthorized", "an Authorization: Bearer <token> header is required")
		return Token{}, false
	}
	claims, aerr := s.authorize(r.Context(), strings.TrimSpace(token))
	if aerr != nil {
		if aerr.status == http.StatusUnauthorized {
			w.Header().Set("WWW-Authenticate", `Bearer realm="chatd", error="invalid_token"`)
		}
		writeError(w, aerr.status, aerr.code, aerr.reason)
		return Token{}, false
	}
	return claims, true
}

// handlePresence serves GET /api/rooms/{room}/presence: who is online in
// the room, cluster-wide, in the shape of presence_state.
func (s *Server) handlePresence(w http.ResponseWriter, r *http.Request) {
	room, ok := s.bearerReader(w, r)
	if !ok {
		return
	}
	limit := DefaultPresenceLimit
	if l := r.URL.Query().Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 {
			writeError(w, http.StatusBadRequest, "bad_request", "limit must be a positive integer")
			return
		}
		limit = min(n, MaxPresenceLimit)
	}
	state, err := s.hub.PresenceState(r.Context(), room)
	if err != nil {
		requestLogger(r.Context(), s.log).Warn("presence query failed", "room", room, "err", err)
		writeError(w, http.StatusServiceUnavailable, "unavailable", "presence did not answer")
		return
	}
	users := len(state)
	truncated := users > limit
	if truncated {
		// The first users by id, so that the answer is stable.
		for _, u := range slices.Sorted(maps.Keys(state))[limit:] {
			delete(state, u)
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"room": room, "presences": state, "users": users, "truncated": truncated})
}

// The presence API answers at most DefaultPresenceLimit users (the first
// by user id), or ?limit= up to MaxPresenceLimit; "users" counts them all
// and "truncated" says some were left out.
const (
	DefaultPresenceLimit = 1000
	MaxPresenceLimit     = 10000
)
