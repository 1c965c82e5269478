package server

import (
	"errors"
	"fmt"
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
	if token == "" {
		return "", errors.New("missing token")
	}
	var claims jwt.RegisteredClaims
	_, err := jwt.ParseWithClaims(token, &claims, func(*jwt.Token) (any, error) {
		return secret, nil
	},
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithExpirationRequired(),
		jwt.WithLeeway(5*time.Second),
	)
	if err != nil {
		return "", fmt.Errorf("invalid token: %w", err)
	}
	sub := claims.Subject
	if sub == "" || len(sub) > MaxUserIDLen {
		return "", fmt.Errorf("invalid token: sub must be 1-%d bytes", MaxUserIDLen)
	}
	return sub, nil
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
