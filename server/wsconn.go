package server

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"

	"github.com/chatd/chatd/chat"
)

// The server's WebSocket is github.com/coder/websocket, shaped beneath the
// library for many mostly idle connections that receive more than they
// send:
//
//   - An idle connection holds no buffer of note: the library reads and
//     writes through the bufio.Reader and Writer the hijack hands over,
//     and hijackWriter hands over the smallest bufio allows instead of
//     net/http's 4 KiB each (what net/http had already read past the
//     handshake, the client's first frames perhaps, is kept and read
//     first).
//   - The frames of one batch leave in one system call: beneath the
//     library's writer, a coalescer gathers them in a pooled buffer, held
//     only while the batch is written.
//   - No goroutine or timer per connection or per write: reads and writes
//     use a context that never ends (coder/websocket then arms no
//     context.AfterFunc), and a batch's deadline is the net.Conn's write
//     deadline, set by the coalescer.

// Sizes of the buffers handed to the library; bufio's smallest reader is
// 16 bytes, which holds a frame header (at most 14 bytes).
const (
	minReadBuffer  = 16
	minWriteBuffer = 16
)

// maxBatch is how many bytes of a batch are gathered before they are
// written; a batch larger than this takes more than one system call.
const maxBatch = 64 << 10

// closeWriteGrace is how long Close lets a batch being written finish: a
// write still blocked after it is on a peer that does not read, which will
// not read the close frame either.
const closeWriteGrace = time.Second

// closeTimeout bounds how long a connection that sent a close frame after
// a protocol violation waits for the peer to close its side (as
// coder/websocket bounds its own closing handshake).
const closeTimeout = 5 * time.Second

// controlWriteTimeout bounds the library's own writes (pongs, close
// frames), which it also bounds by a context of the same length.
const controlWriteTimeout = 5 * time.Second

// hijackWriter wraps the ResponseWriter of a WebSocket handshake so that
// Hijack hands coder/websocket minimal buffers: net/http's 4 KiB reader
// and writer are dropped (and collected) once the upgrade is done.
type hijackWriter struct {
	http.ResponseWriter
	bufs *bufferPool
	// Set by Hijack.
	conn *preConn
	out  *coalescer
}

// Unwrap gives http.ResponseController the wrapped writer.
func (w *hijackWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Hijack takes the connection over. The 101 response has been flushed by
// net/http at this point (the library calls WriteHeader first), so
// nothing is left in its writer; what its reader holds beyond the
// handshake request is the start of the WebSocket stream.
func (w *hijackWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	nc, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	if brw.Writer.Buffered() > 0 {
		if err := brw.Writer.Flush(); err != nil {
			nc.Close()
			return nil, nil, fmt.Errorf("server: flush before the hijack: %w", err)
		}
	}
	pc := &preConn{Conn: nc}
	if n := brw.Reader.Buffered(); n > 0 {
		b, _ := brw.Reader.Peek(n)
		pc.pre = append([]byte(nil), b...)
	}
	w.conn = pc
	w.out = &coalescer{nc: nc, bufs: w.bufs}
	rw := bufio.NewReadWriter(bufio.NewReaderSize(pc, minReadBuffer), bufio.NewWriterSize(w.out, minWriteBuffer))
	return pc, rw, nil
}

// preConn is a hijacked connection that first yields the bytes net/http
// had read past the handshake. coder/websocket reads it through the
// bufio.Reader; its Close lingers when asked to (see wsConn.fail).
type preConn struct {
	net.Conn
	pre []byte // the reader's only
	// linger makes Close half-close the connection and read what the peer
	// still sends until it closes too, or closeTimeout passes, before
	// dropping it: dropping a connection with unread data sends a reset,
	// which may destroy the close frame before the peer reads it.
	linger atomic.Bool
}

func (c *preConn) Read(p []byte) (int, error) {
	if len(c.pre) > 0 {
		n := copy(p, c.pre)
		c.pre = c.pre[n:]
		if len(c.pre) == 0 {
			c.pre = nil
		}
		return n, nil
	}
	return c.Conn.Read(p)
}

func (c *preConn) Close() error {
	if c.linger.Swap(false) {
		if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
		_ = c.Conn.SetReadDeadline(time.Now().Add(closeTimeout))
		var buf [512]byte
		for {
			if _, err := c.Conn.Read(buf[:]); err != nil {
				break
			}
		}
	}
	return c.Conn.Close()
}

// coalescer is the writer beneath the library's bufio.Writer. While a
// batch is written it gathers what the library writes (whole frames, the
// library's own control frames included) in a pooled buffer, sent by
// flush; otherwise it writes through. I/O of the two kinds never overlaps:
// the library writes a frame (through here) under its own write lock,
// which every frame of a batch takes after the direct writes before it
// are done, and while a batch is flushed everything is gathered.
type coalescer struct {
	nc   net.Conn
	bufs *bufferPool

	// mu guards the fields below; it is never held across I/O.
	mu       sync.Mutex
	batching bool
	pending  *[]byte   // what is gathered; nil outside a batch
	deadline time.Time // the write deadline in force
	closeBy  time.Time // set by cut: no batch is written beyond it
}

// bufferPool lends the coalescers of a server their buffers, each held
// only while a batch is written, so idle connections hold none. The zero
// value is ready to use.
type bufferPool struct{ p sync.Pool }

func (bp *bufferPool) get() *[]byte {
	if b, ok := bp.p.Get().(*[]byte); ok {
		return b
	}
	b := make([]byte, 0, 16<<10)
	return &b
}

func (bp *bufferPool) put(b *[]byte) {
	if b != nil && cap(*b) <= 4*maxBatch {
		*b = (*b)[:0]
		bp.p.Put(b)
	}
}

func (c *coalescer) Write(p []byte) (int, error) {
	c.mu.Lock()
	if c.batching {
		if c.pending == nil {
			c.pending = c.bufs.get()
		}
		*c.pending = append(*c.pending, p...)
		c.mu.Unlock()
		return len(p), nil
	}
	err := c.setDeadlineLocked(time.Now().Add(controlWriteTimeout), false)
	c.mu.Unlock()
	if err != nil {
		return 0, err
	}
	return c.nc.Write(p)
}

// begin starts gathering a batch.
func (c *coalescer) begin() {
	c.mu.Lock()
	c.batching = true
	c.mu.Unlock()
}

// gathered returns how many bytes are gathered.
func (c *coalescer) gathered() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pending == nil {
		return 0
	}
	return len(*c.pending)
}

// flush writes what is gathered before deadline (or closeBy), and what is
// gathered meanwhile; with end, it then stops gathering. On an error it
// stops gathering and drops what is left.
func (c *coalescer) flush(deadline time.Time, end bool) error {
	for {
		c.mu.Lock()
		p := c.pending
		c.pending = nil
		if p == nil || len(*p) == 0 {
			if end {
				c.batching = false
			}
			c.mu.Unlock()
			c.bufs.put(p)
			return nil
		}
		err := c.setDeadlineLocked(deadline, true)
		c.mu.Unlock()
		if err == nil {
			_, err = c.nc.Write(*p)
		}
		c.bufs.put(p)
		if err != nil {
			c.abort()
			return err
		}
	}
}

// abort stops gathering and drops what was gathered.
func (c *coalescer) abort() {
	c.mu.Lock()
	p := c.pending
	c.pending, c.batching = nil, false
	c.mu.Unlock()
	c.bufs.put(p)
}

// deadlineSlack is how much earlier than wanted the write deadline in
// force may be and still be kept: setting it costs a timer update, and a
// busy connection writes hundreds of batches a second.
const deadlineSlack = time.Second

// setDeadlineLocked makes d (for a batch, at most closeBy) the write
// deadline, or keeps the one in force when it is at most deadlineSlack
// earlier than d and still at least half as far away, so every write gets
// at least half its time. mu is held.
func (c *coalescer) setDeadlineLocked(d time.Time, batch bool) error {
	if batch && !c.closeBy.IsZero() && d.After(c.closeBy) {
		d = c.closeBy
	}
	if early := d.Sub(c.deadline); early >= 0 && early <= min(deadlineSlack, time.Until(d)/2) {
		return nil
	}
	if err := c.nc.SetWriteDeadline(d); err != nil {
		return err
	}
	c.deadline = d
	return nil
}

// cut bounds the batch being written, and those to come, to t.
func (c *coalescer) cut(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closeBy.IsZero() || t.Before(c.closeBy) {
		c.closeBy = t
	}
	if c.batching && (c.deadline.IsZero() || c.deadline.After(c.closeBy)) {
		if c.nc.SetWriteDeadline(c.closeBy) == nil {
			c.deadline = c.closeBy
		}
	}
}

// wsConn is a client's WebSocket as the hub sees it (chat.Conn), over
// coder/websocket.
type wsConn struct {
	ws  *websocket.Conn
	nc  *preConn
	out *coalescer
}

var _ chat.Conn = (*wsConn)(nil)

// acceptConn upgrades the handshake r (checked already: token, origin,
// limits) and returns the connection, whose messages are limited to
// readLimit bytes and whose batches borrow their buffers from bufs. With
// phoenix, the phoenix subprotocol is selected (the client sent its token
// as a subprotocol, authToken). A bad handshake has been answered with a
// plain-text HTTP error.
func acceptConn(w http.ResponseWriter, r *http.Request, phoenix bool, readLimit int64, bufs *bufferPool) (*wsConn, error) {
	opts := &websocket.AcceptOptions{
		// The origin was checked before the upgrade (originAllowed), with
		// a JSON error.
		InsecureSkipVerify: true,
		CompressionMode:    websocket.CompressionDisabled,
	}
	if phoenix {
		opts.Subprotocols = []string{phoenixSubprotocol}
	}
	hw := &hijackWriter{ResponseWriter: w, bufs: bufs}
	c, err := websocket.Accept(hw, r, opts)
	if err != nil {
		return nil, err
	}
	if hw.conn == nil {
		// Not hijacked through hw: the library would use net/http's
		// buffers and bypass the coalescer.
		c.CloseNow()
		return nil, errors.New("server: the connection was not hijacked through the server's writer")
	}
	c.SetReadLimit(readLimit)
	return &wsConn{ws: c, nc: hw.conn, out: hw.out}, nil
}

// Read returns the next message; see chat.Conn.
func (c *wsConn) Read() (chat.MessageType, []byte, error) {
	typ, data, err := c.ws.Read(context.Background())
	if err != nil {
		return 0, nil, c.readError(err)
	}
	if typ == websocket.MessageText && !utf8.Valid(data) {
		return 0, nil, c.fail(chat.StatusInvalidPayload, "invalid UTF-8")
	}
	return chat.MessageType(typ), data, nil
}

// readError turns an error of the library's Read into chat's terms: the
// peer's close, a violation by the peer, or the connection's failure.
func (c *wsConn) readError(err error) error {
	var ce websocket.CloseError
	switch {
	case errors.As(err, &ce):
		return &chat.CloseError{Code: chat.StatusCode(ce.Code), Reason: ce.Reason, Remote: true}
	case errors.Is(err, websocket.ErrMessageTooBig):
		return c.fail(chat.StatusMessageTooBig, "message too big")
	case transportError(err):
		return err
	default:
		// What is left are the library's protocol errors (bad framing,
		// an unmasked frame): it has sent a close frame with 1002 for
		// most of them, and fail sends one for the others.
		return c.fail(chat.StatusProtocolError, "protocol error")
	}
}

// transportError reports whether err is the connection's failure rather
// than a violation by the peer.
func transportError(err error) bool {
	var ne net.Error
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.Canceled) ||
		errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne)
}

// fail ends the connection after a violation by the peer: it sends a
// close frame with code (the library's own, when it has sent one already),
// waits for the peer's, and lingers (see preConn.linger).
func (c *wsConn) fail(code chat.StatusCode, reason string) error {
	c.nc.linger.Store(true)
	_ = c.ws.Close(websocket.StatusCode(code), reason)
	c.nc.linger.Store(false)
	return &chat.CloseError{Code: code, Reason: reason}
}

// WriteBatch writes frames as text messages; see chat.Conn.
func (c *wsConn) WriteBatch(deadline time.Time, frames ...[]byte) error {
	c.out.begin()
	ctx := context.Background()
	for _, f := range frames {
		if err := c.ws.Write(ctx, websocket.MessageText, f); err != nil {
			c.out.abort()
			return err
		}
		if c.out.gathered() >= maxBatch {
			if err := c.out.flush(deadline, false); err != nil {
				return err
			}
		}
	}
	return c.out.flush(deadline, true)
}

// Close performs the closing handshake; see chat.Conn.
func (c *wsConn) Close(code chat.StatusCode, reason string) error {
	c.out.cut(time.Now().Add(closeWriteGrace))
	err := c.ws.Close(websocket.StatusCode(code), reason)
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// CloseNow drops the connection; see chat.Conn.
func (c *wsConn) CloseNow() error {
	c.nc.linger.Store(false)
	err := c.nc.Conn.Close()
	// The library's state ends with it; a Close in progress returns.
	_ = c.ws.CloseNow()
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}
