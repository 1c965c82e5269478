package chat

// Error is a client-facing error. Its Reason is sent to the client in an
// error reply, {"status":"error","response":{"reason":Reason}}, and is stable:
// clients may match on it.
type Error struct {
	Reason string
}

func (e *Error) Error() string { return "chat: " + e.Reason }

// The stable reasons of error replies.
var (
	// ErrUnmatchedTopic: the topic is not one this server routes, or the
	// connection has not joined it (or joined it under another join_ref).
	ErrUnmatchedTopic = &Error{Reason: "unmatched topic"}
	// ErrInvalidPayload: the payload is not an object of the expected shape.
	ErrInvalidPayload = &Error{Reason: "invalid payload"}
	// ErrInvalidFrame: the frame is not a [join_ref, ref, topic, event,
	// payload] JSON array; the reply carries null refs.
	ErrInvalidFrame = &Error{Reason: "invalid frame"}
	// ErrBinaryUnsupported: a binary frame; only the JSON text serializer is
	// spoken.
	ErrBinaryUnsupported = &Error{Reason: "binary frames not supported"}
	// ErrUnknownEvent: an event the topic does not handle.
	ErrUnknownEvent = &Error{Reason: "unknown event"}
	// ErrRateLimited: the user sent more than its rate allows.
	ErrRateLimited = &Error{Reason: "rate_limited"}
	// ErrTooManyChannels: the connection has joined as many topics as it may.
	ErrTooManyChannels = &Error{Reason: "too many channels joined"}
	// ErrBodyTooLong: the message body has more characters than allowed.
	ErrBodyTooLong = &Error{Reason: "body too long"}
	// ErrUnavailable: the message could not be relayed to the room; it was
	// not delivered and the sender may retry.
	ErrUnavailable = &Error{Reason: "unavailable"}
	// ErrOutcomeUnknown: the relay did not answer in time, so whether the
	// message was accepted is not known yet. It may still reach the room
	// (and then it is stored); a client finds out by rejoining with since
	// rather than by sending it again.
	ErrOutcomeUnknown = &Error{Reason: "outcome unknown"}
	// ErrUnauthorized: the connection's token does not allow this in the
	// room (a join of a room it may not read, a push to a room it may only
	// read: Phoenix's {:error, %{reason: "unauthorized"}}), or the user may
	// not do it (delete another user's message).
	ErrUnauthorized = &Error{Reason: "unauthorized"}
	// ErrNotFound: no such message in the room (or it was deleted).
	ErrNotFound = &Error{Reason: "not found"}
	// ErrTooManyConnections: the user holds as many connections as allowed.
	ErrTooManyConnections = &Error{Reason: "too many connections"}
)
