package chat

import "context"

// ConnLimiter caps how many connections one user holds at once.
type ConnLimiter interface {
	// Acquire takes one of user's connection slots for the connection conn.
	// It is atomic: concurrent Acquires never take more slots than the limit.
	// It returns ErrTooManyConnections when every slot is taken.
	Acquire(ctx context.Context, user, conn string) error
	// Release frees the slot that conn holds. Releasing a slot that is not
	// held is a no-op.
	Release(ctx context.Context, user, conn string) error
}
