package server

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/chatd/chatd/chat"
)

// MaxUserIDLen bounds the length of a token's subject.
const MaxUserIDLen = 128

// DevSecret signs tokens in dev mode (no CHAT_JWT_SECRET set). It is public:
// dev mode is for a laptop, never for a deployment.
const DevSecret = "chatd-dev-mode-insecure-secret"

// Token is what a verified token says.
type Token struct {
	// UserID is the token's subject.
	UserID string
	// Rooms is its "rooms" claim: rooms it may join, read and post in,
	// besides the public ones.
	Rooms chat.Patterns
	// ReadRooms is its "read_rooms" claim: rooms it may join and read.
	ReadRooms chat.Patterns
	// IssuedAt is the iat claim; zero when the token has none.
	IssuedAt time.Time
	// Expires is the exp claim.
	Expires time.Time
}

// Grants returns what the token allows, given the server's public rooms.
func (t Token) Grants(public chat.Patterns) chat.Grants {
	return chat.Grants{Public: public, Rooms: t.Rooms, ReadRooms: t.ReadRooms}
}

// tokenClaims are the claims chatd reads and writes: the registered ones
// and the room patterns (JSON arrays of strings; absent: none).
type tokenClaims struct {
	jwt.RegisteredClaims
	Rooms     []string `json:"rooms,omitempty"`
	ReadRooms []string `json:"read_rooms,omitempty"`
}

// tokenLeeway is the clock skew allowed on a token's exp.
const tokenLeeway = 5 * time.Second

// VerifyToken verifies an HS256 JWT signed with secret and returns what it
// says. The token must carry an unexpired exp claim and a sub; its rooms and
// read_rooms claims, when present, must be arrays of valid room patterns
// (chat.ParsePattern): a token with a malformed one is refused, never read
// as granting less or more.
func VerifyToken(secret []byte, token string) (Token, error) {
	if token == "" {
		return Token{}, errors.New("missing token")
	}
	var claims tokenClaims
	_, err := jwt.ParseWithClaims(token, &claims, func(*jwt.Token) (any, error) {
		return secret, nil
	},
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithExpirationRequired(),
		jwt.WithLeeway(tokenLeeway),
	)
	if err != nil {
		return Token{}, fmt.Errorf("invalid token: %w", err)
	}
	sub := claims.Subject
	if sub == "" || len(sub) > MaxUserIDLen {
		return Token{}, fmt.Errorf("invalid token: sub must be 1-%d bytes", MaxUserIDLen)
	}
	rooms, err := chat.ParsePatterns(claims.Rooms)
	if err != nil {
		return Token{}, fmt.Errorf("invalid token: rooms claim: %w", err)
	}
	read, err := chat.ParsePatterns(claims.ReadRooms)
	if err != nil {
		return Token{}, fmt.Errorf("invalid token: read_rooms claim: %w", err)
	}
	t := Token{UserID: sub, Rooms: rooms, ReadRooms: read, Expires: claims.ExpiresAt.Time}
	if claims.IssuedAt != nil {
		t.IssuedAt = claims.IssuedAt.Time
	}
	return t, nil
}

// RevocationTTL returns how long a revocation must be remembered so that
// every token it refuses has expired: a refused token was issued at or
// before the revocation's second, lives at most maxTokenTTL, and is
// accepted tokenLeeway past its exp; a minute covers that second, the
// leeway and clock skew between nodes.
func RevocationTTL(maxTokenTTL time.Duration) time.Duration { return maxTokenTTL + time.Minute }

// revocationTimeout bounds the revocation check of one token.
const revocationTimeout = 2 * time.Second

// authError is a refused client token: the HTTP status and error code to
// answer with, and why.
type authError struct {
	status       int
	code, reason string
}

func (e *authError) Error() string { return e.reason }

// authorize checks a client token: its signature and claims
// (VerifyToken), its lifetime (an iat is required, and exp - iat must be
// at most MaxTokenTTL, so that a revocation outlives every token it
// refuses), and its user's revocation (a token issued at or before the
// user's latest revocation is refused). A bad, too long-lived or revoked
// token is a 401; a revocation store that does not answer is a 503
// "unavailable": the token could be a revoked one, so it is not let in.
func (s *Server) authorize(ctx context.Context, token string) (Token, *authError) {
	t, err := VerifyToken(s.secret, token)
	if err != nil {
		return t, &authError{http.StatusUnauthorized, "unauthorized", err.Error()}
	}
	if t.IssuedAt.IsZero() {
		return t, &authError{http.StatusUnauthorized, "unauthorized", "invalid token: an iat claim is required"}
	}
	if t.Expires.Sub(t.IssuedAt) > s.cfg.MaxTokenTTL {
		return t, &authError{http.StatusUnauthorized, "unauthorized",
			fmt.Sprintf("invalid token: it lives longer (exp - iat) than the %s this server accepts (CHAT_MAX_TOKEN_TTL)", s.cfg.MaxTokenTTL)}
	}
	rctx, cancel := context.WithTimeout(ctx, revocationTimeout)
	defer cancel()
	revoked, err := s.revocations.RevokedAt(rctx, t.UserID)
	if err != nil {
		requestLogger(ctx, s.log).Warn("token revocation check failed: connection refused", "user_id", t.UserID, "err", err)
		return t, &authError{http.StatusServiceUnavailable, "unavailable", "the token's revocation could not be checked; try again"}
	}
	if !revoked.IsZero() && t.IssuedAt.Unix() <= revoked.Unix() {
		return t, &authError{http.StatusUnauthorized, "unauthorized", "token revoked: a token issued after " + revoked.UTC().Format(time.RFC3339) + " is needed"}
	}
	return t, nil
}

// ParseToken verifies token as VerifyToken does and returns its subject,
// the user id.
func ParseToken(secret []byte, token string) (string, error) {
	t, err := VerifyToken(secret, token)
	return t.UserID, err
}

// MintToken returns an HS256 JWT for user that expires after ttl, with no
// room claims: it opens the public rooms only.
func MintToken(secret []byte, user string, ttl time.Duration) (string, error) {
	return MintRoomsToken(secret, user, ttl, nil, nil)
}

// MintRoomsToken returns an HS256 JWT for user that expires after ttl,
// whose rooms and read_rooms claims are the given patterns (empty: the
// claim is left out).
func MintRoomsToken(secret []byte, user string, ttl time.Duration, rooms, readRooms []string) (string, error) {
	if user == "" || len(user) > MaxUserIDLen {
		return "", fmt.Errorf("server: user id must be 1-%d bytes", MaxUserIDLen)
	}
	if ttl <= 0 {
		return "", errors.New("server: token ttl must be positive")
	}
	for _, list := range [][]string{rooms, readRooms} {
		if _, err := chat.ParsePatterns(list); err != nil {
			return "", fmt.Errorf("server: %w", err)
		}
	}
	now := time.Now()
	claims := tokenClaims{
		RegisteredClaims: jwt.RegisteredClaims{
			Subject:   user,
			IssuedAt:  jwt.NewNumericDate(now),
			ExpiresAt: jwt.NewNumericDate(now.Add(ttl)),
		},
		Rooms:     rooms,
		ReadRooms: readRooms,
	}
	return jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(secret)
}

// The phoenix client's authToken option (1.8) sends the token as a
// WebSocket subprotocol, beside "phoenix", the one the server selects.
const (
	phoenixSubprotocol = "phoenix"
	authTokenPrefix    = "base64url.bearer.phx."
)

// socketToken returns the token of a WebSocket handshake: the token query
// parameter, else the phoenix authToken subprotocol (base64url, unpadded;
// the standard alphabet is accepted too). selectPhoenix says whether the
// client offered the "phoenix" subprotocol, which the server then selects.
func socketToken(r *http.Request) (token string, selectPhoenix bool, err error) {
	var fromProtocol string
	for _, p := range subprotocols(r) {
		switch {
		case p == phoenixSubprotocol:
			selectPhoenix = true
		case strings.HasPrefix(p, authTokenPrefix) && fromProtocol == "":
			fromProtocol = strings.TrimPrefix(p, authTokenPrefix)
		}
	}
	if t := r.URL.Query().Get("token"); t != "" {
		return t, selectPhoenix, nil
	}
	if fromProtocol == "" {
		return "", selectPhoenix, nil
	}
	enc := strings.TrimRight(fromProtocol, "=")
	b, err := base64.RawURLEncoding.DecodeString(enc)
	if err != nil {
		b, err = base64.RawStdEncoding.DecodeString(enc)
	}
	if err != nil {
		return "", selectPhoenix, errors.New("invalid token: the authToken subprotocol is not base64url")
	}
	return string(b), selectPhoenix, nil
}

// subprotocols returns the subprotocols a WebSocket handshake offers (its
// Sec-WebSocket-Protocol headers), in order.
func subprotocols(r *http.Request) []string {
	var out []string
	for _, v := range r.Header.Values("Sec-WebSocket-Protocol") {
		for p := range strings.SplitSeq(v, ",") {
			if p = strings.TrimSpace(p); p != "" {
				out = append(out, p)
			}
		}
	}
	return out
}
