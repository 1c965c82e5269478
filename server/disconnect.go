package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"
)

// disconnectRequest is the body of POST /api/users/{user}/disconnect.
type disconnectRequest struct {
	// Revoke refuses, from now on and on every node, the user's tokens
	// issued at or before this moment.
	Revoke bool `json:"revoke"`
	// Reason is the close frame's reason (at most 123 bytes are sent).
	Reason string `json:"reason"`
}

// disconnectResponse is the answer of POST /api/users/{user}/disconnect.
type disconnectResponse struct {
	UserID string `json:"user_id"`
	// Closed is how many connections this node closed; the other nodes
	// close theirs when the command reaches them.
	Closed  int  `json:"closed"`
	Revoked bool `json:"revoked"`
	// RevokedAt is the second the user's tokens are revoked at: tokens
	// with an iat at or before it are refused.
	RevokedAt *time.Time `json:"revoked_at,omitempty"`
	// Error and Reason are set on a 503: the other nodes may not have
	// been told (Closed still counts this node's).
	Error  string `json:"error,omitempty"`
	Reason string `json:"reason,omitempty"`
}

// maxDisconnectBody bounds the body of a disconnect request.
const maxDisconnectBody = 4 << 10

// handleDisconnect serves POST /api/users/{user}/disconnect: it closes
// every connection of the user on every node, and with "revoke" first
// records the revocation, so that the closed clients cannot come back with
// the same token. An empty body is {"revoke": false}.
func (s *Server) handleDisconnect(w http.ResponseWriter, r *http.Request) {
	user := r.PathValue("user")
	if user == "" || len(user) > MaxUserIDLen {
		writeError(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("user must be 1-%d bytes", MaxUserIDLen))
		return
	}
	var req disconnectRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxDisconnectBody)).Decode(&req); err != nil && !errors.Is(err, io.EOF) {
		writeError(w, http.StatusBadRequest, "bad_request", `body must be {"revoke": true|false, "reason": "..."}`)
		return
	}
	log := requestLogger(r.Context(), s.log)
	resp := disconnectResponse{UserID: user, Revoked: req.Revoke}
	if req.Revoke {
		at := time.Now().UTC().Truncate(time.Second)
		if err := s.revocations.Revoke(r.Context(), user, at); err != nil {
			log.Warn("token revocation failed", "user_id", user, "err", err)
			writeError(w, http.StatusServiceUnavailable, "unavailable", "the revocation could not be recorded; nothing was done, try again")
			return
		}
		resp.RevokedAt = &at
	}
	n, err := s.hub.Disconnect(r.Context(), user, req.Reason, req.Revoke)
	resp.Closed = n
	if err != nil {
		log.Warn("disconnect not relayed to the other nodes", "user_id", user, "err", err)
		resp.Error, resp.Reason = "unavailable", "the other nodes were not told; try again (it is harmless to repeat)"
		writeJSON(w, http.StatusServiceUnavailable, resp)
		return
	}
	log.Info("user disconnected by the server API", "user_id", user, "closed", n, "revoked", req.Revoke)
	writeJSON(w, http.StatusOK, resp)
}
