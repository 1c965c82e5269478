package chat

import (
	"fmt"
	"time"
)

// Conn is one client connection as the hub sees it: a WebSocket, whose
// transport lives outside chat (server's adapter over coder/websocket).
// One goroutine reads (the session's reader) and one at a time writes
// batches (the session's writer); Close and CloseNow may be called from
// any goroutine, concurrently with both.
type Conn interface {
	// Read returns the next message. It answers pings itself and blocks
	// until a message arrives or the connection ends; the connection
	// applies the read limit (Config.ReadLimit). It returns a *CloseError
	// when the peer closed (Remote), or when the peer broke the protocol
	// (a malformed frame, a message over the read limit, text that is not
	// UTF-8): the connection has then sent a close frame with the matching
	// status and let the peer read it before dropping the connection. Any
	// other error is the connection's failure.
	Read() (MessageType, []byte, error)
	// WriteBatch writes frames as text messages, in order, in as few
	// system calls as their sizes allow, each before deadline (or sooner,
	// once Close has begun). An error means the connection is broken:
	// nothing more can be written.
	WriteBatch(deadline time.Time, frames ...[]byte) error
	// Close performs the closing handshake: it sends a close frame with
	// code and reason, waits a bounded time for the peer's, and closes the
	// connection. A batch being written gets a short grace, then is cut
	// off. It may block for that bounded time; later calls, and calls
	// after CloseNow, return without waiting for the handshake.
	Close(code StatusCode, reason string) error
	// CloseNow drops the connection without a closing handshake; it makes
	// Read, WriteBatch and a Close in progress return. It may be called
	// more than once.
	CloseNow() error
}

// MessageType is the type of a WebSocket message.
type MessageType int

// The message types of RFC 6455.
const (
	MessageText   MessageType = 1
	MessageBinary MessageType = 2
)

// StatusCode is a WebSocket close status code (RFC 6455, section 7.4).
type StatusCode int

// The close status codes the hub sends or reads.
const (
	StatusNormalClosure   StatusCode = 1000
	StatusGoingAway       StatusCode = 1001
	StatusProtocolError   StatusCode = 1002
	StatusUnsupportedData StatusCode = 1003
	StatusNoStatusRcvd    StatusCode = 1005
	StatusInvalidPayload  StatusCode = 1007
	StatusPolicyViolation StatusCode = 1008
	StatusMessageTooBig   StatusCode = 1009
	StatusInternalError   StatusCode = 1011
)

// CloseError ends Conn.Read: a close frame received from the peer
// (Remote), or one sent to it because of what it sent.
type CloseError struct {
	Code   StatusCode
	Reason string
	// Remote is set when the peer closed; otherwise this side closed, after
	// a protocol violation by the peer.
	Remote bool
}

func (e *CloseError) Error() string {
	who := "sent"
	if e.Remote {
		who = "received"
	}
	return fmt.Sprintf("chat: close %s: %d %q", who, e.Code, e.Reason)
}
