package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// MaxUserIDLen bounds the length of a token's subject.
const MaxUserIDLen = 128

// DevSecret signs tokens in dev mode (no CHAT_JWT_SECRET set). It is public:
// dev mode is for a laptop, never for a deployment.
const DevSecret = "chatd-dev-mode-insecure-secret"

// ParseToken verifies an HS256 JWT signed with secret and returns its
// subject, the user id. The token must carry an unexpired exp claim.
func ParseToken(secret []byte, token string) (string, error) {
	c, err := parseClaims(secret, token)
	return c.User, err
}

// tokenClaims is what chatd reads from a verified client token.
type tokenClaims struct {
	// User is the subject.
	User string
	// IssuedAt is the iat claim; zero when the token has none.
	IssuedAt time.Time
	// Expires is the exp claim.
	Expires time.Time
}

// tokenLeeway is the clock skew allowed on a token's exp.
const tokenLeeway = 5 * time.Second

// parseClaims verifies an HS256 JWT signed with secret, with an unexpired
// exp, and returns its claims.
func parseClaims(secret []byte, token string) (tokenClaims, error) {
	if token == "" {
		return tokenClaims{}, errors.New("missing token")
	}
	var claims jwt.RegisteredClaims
	_, err := jwt.ParseWithClaims(token, &claims, func(*jwt.Token) (any, error) {
		return secret, nil
	},
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithExpirationRequired(),
		jwt.WithLeeway(tokenLeeway),
	)
	if err != nil {
		return tokenClaims{}, fmt.Errorf("invalid token: %w", err)
	}
	sub := claims.Subject
	if sub == "" || len(sub) > MaxUserIDLen {
		return tokenClaims{}, fmt.Errorf("invalid token: sub must be 1-%d bytes", MaxUserIDLen)
	}
	c := tokenClaims{User: sub, Expires: claims.ExpiresAt.Time}
	if claims.IssuedAt != nil {
		c.IssuedAt = claims.IssuedAt.Time
	}
	return c, nil
}

// DefaultMaxTokenTTL is the longest lifetime (exp - iat) of a token the
// server accepts when Config.MaxTokenTTL is zero.
const DefaultMaxTokenTTL = 24 * time.Hour

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

// authorize checks a client token: its signature and claims, its lifetime
// (an iat is required, and exp - iat must be at most MaxTokenTTL, so that
// a revocation outlives every token it refuses), and its user's
// revocation (a token issued at or before the user's latest revocation is
// refused). A bad, too long-lived or revoked token is a 401; a revocation
// store that does not answer is a 503 "unavailable": the token could be a
// revoked one, so it is not let in.
func (s *Server) authorize(ctx context.Context, token string) (tokenClaims, *authError) {
	c, err := parseClaims(s.secret, token)
	if err != nil {
		return c, &authError{http.StatusUnauthorized, "unauthorized", err.Error()}
	}
	if c.IssuedAt.IsZero() {
		return c, &authError{http.StatusUnauthorized, "unauthorized", "invalid token: an iat claim is required"}
	}
	if c.Expires.Sub(c.IssuedAt) > s.cfg.MaxTokenTTL {
		return c, &authError{http.StatusUnauthorized, "unauthorized",
			fmt.Sprintf("invalid token: it lives longer (exp - iat) than the %s this server accepts (CHAT_MAX_TOKEN_TTL)", s.cfg.MaxTokenTTL)}
	}
	rctx, cancel := context.WithTimeout(ctx, revocationTimeout)
	defer cancel()
	revoked, err := s.revocations.RevokedAt(rctx, c.User)
	if err != nil {
		requestLogger(ctx, s.log).Warn("token revocation check failed: connection refused", "user_id", c.User, "err", err)
		return c, &authError{http.StatusServiceUnavailable, "unavailable", "the token's revocation could not be checked; try again"}
	}
	if !revoked.IsZero() && c.IssuedAt.Unix() <= revoked.Unix() {
		return c, &authError{http.StatusUnauthorized, "unauthorized", "token revoked: a token issued after " + revoked.UTC().Format(time.RFC3339) + " is needed"}
	}
	return c, nil
}

// MintToken returns an HS256 JWT for user that expires after ttl.
func MintToken(secret []byte, user string, ttl time.Duration) (string, error) {
	if user == "" || len(user) > MaxUserIDLen {
		return "", fmt.Errorf("server: user id must be 1-%d bytes", MaxUserIDLen)
	}
	if ttl <= 0 {
		return "", errors.New("server: token ttl must be positive")
	}
	now := time.Now()
	claims := jwt.RegisteredClaims{
		Subject:   user,
		IssuedAt:  jwt.NewNumericDate(now),
		ExpiresAt: jwt.NewNumericDate(now.Add(ttl)),
	}
	return jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(secret)
}
