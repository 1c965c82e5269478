package server

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"github.com/chatd/chatd/chat"
)

// The server API, for backends: every route is wrapped in requireAPIKey.

// requireAPIKey guards the server API: the request must carry
// "Authorization: Bearer <APIKey>", compared in constant time; a user's
// token or the admin token never opens it. Without an APIKey the API is
// off and answers 404.
func (s *Server) requireAPIKey(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if s.cfg.APIKey == "" {
			writeError(w, http.StatusNotFound, "not_found", "the server API is off: set CHAT_API_KEY")
			return
		}
		key, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		// Hashes of equal length: the comparison's time tells nothing,
		// not even the key's length.
		want := sha256.Sum256([]byte(s.cfg.APIKey))
		got := sha256.Sum256([]byte(strings.TrimSpace(key)))
		if !ok || subtle.ConstantTimeCompare(want[:], got[:]) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="chatd api"`)
			writeError(w, http.StatusUnauthorized, "unauthorized", "the server API needs Authorization: Bearer <CHAT_API_KEY>")
			return
		}
		next(w, r)
	}
}

func (s *Server) apiRoutes() {
	s.mux.HandleFunc("POST /api/rooms/{room}/messages", s.requireAPIKey(s.handleAPIPublish))
	s.mux.HandleFunc("DELETE /api/rooms/{room}/messages/{id}", s.requireAPIKey(s.handleAPIDelete))
	s.mux.HandleFunc("POST /api/users/{user}/disconnect", s.requireAPIKey(s.handleDisconnect))
}

type apiPublishRequest struct {
	UserID *string `json:"user_id"`
	Body   *string `json:"body"`
}

// handleAPIPublish serves POST /api/rooms/{room}/messages {"user_id",
// "body"}: the message is published as that user (chat.Hub.Publish) and
// the answer is 201 {"id"}.
func (s *Server) handleAPIPublish(w http.ResponseWriter, r *http.Request) {
	room := r.PathValue("room")
	if !chat.ValidRoomName(room) {
		writeError(w, http.StatusBadRequest, "bad_request", "room must be 1-64 characters of [A-Za-z0-9_.-]")
		return
	}
	// A request as large as the largest WebSocket frame.
	var req apiPublishRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, s.hub.Config().ReadLimit))
	if err := dec.Decode(&req); err != nil {
		if mbe := (*http.MaxBytesError)(nil); errors.As(err, &mbe) {
			writeError(w, http.StatusRequestEntityTooLarge, "too_large", chat.ErrBodyTooLong.Reason)
			return
		}
		writeError(w, http.StatusBadRequest, "bad_request", chat.ErrInvalidPayload.Reason)
		return
	}
	if req.UserID == nil || req.Body == nil || len(*req.UserID) > MaxUserIDLen {
		writeError(w, http.StatusBadRequest, "bad_request", chat.ErrInvalidPayload.Reason)
		return
	}
	msg, err := s.hub.Publish(r.Context(), room, *req.UserID, *req.Body)
	if err != nil {
		writeChatError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, map[string]string{"id": msg.ID})
}

// handleAPIDelete serves DELETE /api/rooms/{room}/messages/{id}: the
// message is taken down (chat.Hub.DeleteMessage), 204.
func (s *Server) handleAPIDelete(w http.ResponseWriter, r *http.Request) {
	room := r.PathValue("room")
	if !chat.ValidRoomName(room) {
		writeError(w, http.StatusBadRequest, "bad_request", "room must be 1-64 characters of [A-Za-z0-9_.-]")
		return
	}
	if err := s.hub.DeleteMessage(r.Context(), room, r.PathValue("id"), ""); err != nil {
		writeChatError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// writeChatError answers a refusal of the hub with its stable reason.
func writeChatError(w http.ResponseWriter, err error) {
	var ce *chat.Error
	if !errors.As(err, &ce) {
		ce = chat.ErrUnavailable
	}
	switch ce {
	case chat.ErrInvalidPayload:
		writeError(w, http.StatusBadRequest, "bad_request", ce.Reason)
	case chat.ErrBodyTooLong:
		writeError(w, http.StatusRequestEntityTooLarge, "too_large", ce.Reason)
	case chat.ErrNotFound:
		writeError(w, http.StatusNotFound, "not_found", ce.Reason)
	case chat.ErrUnauthorized:
		writeError(w, http.StatusForbidden, "forbidden", ce.Reason)
	default: // overloaded, unavailable
		writeError(w, http.StatusServiceUnavailable, "unavailable", ce.Reason)
	}
}
