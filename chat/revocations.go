package chat

import (
	"context"
	"errors"
	"time"
)

// Revocations remembers, per user, the moment the user's tokens were
// revoked: a token of that user issued (its iat) at or before that moment
// is refused. Moments are kept to the second, the precision of a token's
// iat, and rounded down: a token minted in the same second as a revocation
// is refused too.
//
// A revocation is remembered for the store's lifetime (its TTL), which the
// caller chooses to outlast every token it revokes: chatd refuses tokens
// that live longer than CHAT_MAX_TOKEN_TTL, and keeps revocations a little
// longer than that.
type Revocations interface {
	// Revoke records that user's tokens issued at or before at are
	// refused. It keeps the latest of a user's revocations (an earlier at
	// does not undo a later one), remembered for the TTL from this call.
	// It is atomic and shared by every caller (every node, for a
	// distributed store). An error means the revocation may not be
	// recorded: the caller reports it and may retry (Revoke is
	// idempotent).
	Revoke(ctx context.Context, user string, at time.Time) error
	// RevokedAt returns the latest revocation of user still remembered,
	// rounded down to the second, or the zero time when there is none. An
	// error means the store could not answer.
	RevokedAt(ctx context.Context, user string) (time.Time, error)
}

// ErrRevocationsFull is returned by MemoryRevocations.Revoke when it holds
// as many revocations as it may: forgetting one early would let a revoked
// token in again, so the new one is refused instead.
var ErrRevocationsFull = errors.New("chat: revocation store is full")

// RevokedKey returns the key of user's revocation in a shared store:
// "chatd:{user:<id>}:revoked", in the hash slot of the user's other keys.
func RevokedKey(user string) string { return RateKey(user, "revoked") }
