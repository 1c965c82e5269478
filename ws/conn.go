// Package ws is chatd's WebSocket transport (RFC 6455), shaped for many
// mostly idle connections that receive more than they send:
//
//   - An idle connection holds no buffer: its reader waits on the socket
//     with the few header bytes of the next frame as its only read buffer,
//     and a message is read into memory of its exact size.
//   - Writes are batched: WriteText frames every queued message into one
//     pooled buffer and sends it in one system call.
//   - No compression and no subprotocols are negotiated.
//
// One goroutine reads (ReadMessage, which also answers pings and the
// peer's close); any goroutine may write. The client side (Dial) exists for
// chatd's load tool and tests.
package ws

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// Opcode is a frame's opcode.
type Opcode byte

// The opcodes of RFC 6455, section 5.2.
const (
	OpContinuation Opcode = 0x0
	OpText         Opcode = 0x1
	OpBinary       Opcode = 0x2
	OpClose        Opcode = 0x8
	OpPing         Opcode = 0x9
	OpPong         Opcode = 0xA
)

// StatusCode is a close status code (RFC 6455, section 7.4).
type StatusCode int

// The close status codes chatd sends or reads.
const (
	StatusNormalClosure   StatusCode = 1000
	StatusGoingAway       StatusCode = 1001
	StatusProtocolError   StatusCode = 1002
	StatusUnsupportedData StatusCode = 1003
	StatusNoStatusRcvd    StatusCode = 1005
	StatusAbnormal        StatusCode = 1006
	StatusInvalidPayload  StatusCode = 1007
	StatusPolicyViolation StatusCode = 1008
	StatusMessageTooBig   StatusCode = 1009
	StatusInternalError   StatusCode = 1011
)

// CloseError is the error that ends reading when a close frame was
// received from the peer (Remote) or sent because of what the peer sent.
type CloseError struct {
	Code   StatusCode
	Reason string
	Remote bool // the peer closed; otherwise this side did, after a protocol violation
}

func (e *CloseError) Error() string {
	who := "sent"
	if e.Remote {
		who = "received"
	}
	return fmt.Sprintf("ws: close %s: %d %q", who, e.Code, e.Reason)
}

// CloseStatus returns the status code of the close frame that ended err, or
// -1 when err is not a *CloseError.
func CloseStatus(err error) StatusCode {
	var ce *CloseError
	if errors.As(err, &ce) {
		return ce.Code
	}
	return -1
}

// ErrClosed is returned by writes after the connection was closed.
var ErrClosed = errors.New("ws: connection closed")

// closeTimeout bounds how long a closing connection waits for the peer's
// close frame, and the write of a close frame.
const closeTimeout = 5 * time.Second

// closeWriteGrace is how long Close lets a write in progress finish: a
// write still blocked after it is on a peer that does not read, which will
// not read the close frame either.
const closeWriteGrace = time.Second

// maxHeader is the longest frame header: 2 bytes, 8 of length, 4 of mask.
const maxHeader = 14

// Conn is one WebSocket connection.
type Conn struct {
	nc     net.Conn
	client bool // masks what it sends; expects unmasked frames
	bufs   *BufferPool

	// Reader goroutine only.
	src       io.Reader // nc, or a buffered reader in front of it
	pre       []byte    // bytes that arrived with the handshake
	hb        [maxHeader]byte
	hs, he    int // hb[hs:he] holds bytes read and not yet used
	readLimit int64

	// wmu serialises writes; closeSent, wdeadline and werr are guarded by it.
	wmu       sync.Mutex
	closeSent bool
	wdeadline time.Time // the write deadline in force
	werr      error     // a failed write: the frame stream is broken
	// closeBy is set by Close (unix nanoseconds): no data write lasts
	// beyond it, the one in progress included.
	closeBy atomic.Int64
}

func newConn(nc net.Conn, pre []byte, client bool, readBuffer int, bufs *BufferPool) *Conn {
	c := &Conn{nc: nc, client: client, bufs: bufs, readLimit: 64 << 10}
	if len(pre) > 0 {
		c.pre = append([]byte(nil), pre...)
	}
	c.src = nc
	if readBuffer > 0 {
		c.src = bufio.NewReaderSize(nc, readBuffer)
	}
	return c
}

// SetReadLimit sets the largest message ReadMessage accepts, in bytes; a
// larger one is refused with status 1009 before it is read.
func (c *Conn) SetReadLimit(n int64) { c.readLimit = n }

func (c *Conn) read(p []byte) (int, error) {
	if len(c.pre) > 0 {
		n := copy(p, c.pre)
		c.pre = c.pre[n:]
		if len(c.pre) == 0 {
			c.pre = nil
		}
		return n, nil
	}
	return c.src.Read(p)
}

// fill makes at least n bytes available in hb[hs:he].
func (c *Conn) fill(n int) error {
	if c.he-c.hs >= n {
		return nil
	}
	if c.hs > 0 {
		c.he = copy(c.hb[:], c.hb[c.hs:c.he])
		c.hs = 0
	}
	for c.he < n {
		m, err := c.read(c.hb[c.he:])
		c.he += m
		if err != nil && c.he < n {
			if err == io.EOF && c.he > 0 {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
	}
	return nil
}

// header is a parsed frame header.
type header struct {
	fin    bool
	rsv    byte
	op     Opcode
	masked bool
	length int64
	mask   [4]byte
}

// readHeader reads one frame header.
func (c *Conn) readHeader() (header, error) {
	var h header
	if err := c.fill(2); err != nil {
		return h, err
	}
	b0, b1 := c.hb[c.hs], c.hb[c.hs+1]
	h.fin = b0&0x80 != 0
	h.rsv = b0 & 0x70
	h.op = Opcode(b0 & 0x0f)
	h.masked = b1&0x80 != 0
	need := 2
	switch l := b1 & 0x7f; l {
	case 126:
		need += 2
	case 127:
		need += 8
	default:
		h.length = int64(l)
	}
	if h.masked {
		need += 4
	}
	if err := c.fill(need); err != nil {
		return h, err
	}
	p := c.hb[c.hs+2 : c.hs+need]
	switch b1 & 0x7f {
	case 126:
		h.length = int64(binary.BigEndian.Uint16(p))
		p = p[2:]
	case 127:
		u := binary.BigEndian.Uint64(p)
		if u > 1<<62 {
			h.length = -1
		} else {
			h.length = int64(u)
		}
		p = p[8:]
	}
	if h.masked {
		copy(h.mask[:], p)
	}
	c.hs += need
	return h, nil
}

// readPayload reads n bytes of payload into a new slice.
func (c *Conn) readPayload(n int64) ([]byte, error) {
	buf := make([]byte, n)
	got := copy(buf, c.hb[c.hs:c.he])
	c.hs += got
	if got == len(buf) {
		return buf, nil
	}
	for got < len(buf) {
		n, err := c.read(buf[got:])
		got += n
		if err != nil && got < len(buf) {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
	return buf, nil
}

// ReadMessage reads the next text or binary message. It answers pings and
// the peer's close frame itself. It returns a *CloseError when the peer
// closed or sent something that breaks the protocol (the connection has
// then been sent a close frame with the matching status), and the network
// error otherwise. Only one goroutine may call it.
func (c *Conn) ReadMessage() (Opcode, []byte, error) {
	var (
		msgOp Opcode // opcode of a fragmented message being assembled
		msg   []byte
	)
	for {
		h, err := c.readHeader()
		if err != nil {
			return 0, nil, err
		}
		if h.rsv != 0 {
			return 0, nil, c.fail(StatusProtocolError, "reserved bits set")
		}
		if h.masked == c.client {
			if c.client {
				return 0, nil, c.fail(StatusProtocolError, "masked frame from the server")
			}
			return 0, nil, c.fail(StatusProtocolError, "unmasked frame from the client")
		}
		if h.op >= OpClose {
			if !h.fin || h.length < 0 || h.length > 125 {
				return 0, nil, c.fail(StatusProtocolError, "invalid control frame")
			}
			payload, err := c.readPayload(h.length)
			if err != nil {
				return 0, nil, err
			}
			unmask(payload, h.mask, h.masked)
			if err := c.control(h.op, payload); err != nil {
				return 0, nil, err
			}
			continue
		}
		switch h.op {
		case OpText, OpBinary:
			if msgOp != 0 {
				return 0, nil, c.fail(StatusProtocolError, "new message inside a fragmented one")
			}
		case OpContinuation:
			if msgOp == 0 {
				return 0, nil, c.fail(StatusProtocolError, "continuation without a message")
			}
		default:
			return 0, nil, c.fail(StatusProtocolError, "unknown opcode")
		}
		if h.length < 0 || int64(len(msg))+h.length > c.readLimit {
			return 0, nil, c.fail(StatusMessageTooBig, fmt.Sprintf("read limited at %d bytes", c.readLimit))
		}
		payload, err := c.readPayload(h.length)
		if err != nil {
			return 0, nil, err
		}
		unmask(payload, h.mask, h.masked)
		op := h.op
		if op == OpContinuation {
			op = msgOp
			msg = append(msg, payload...)
			payload = msg
		}
		if !h.fin {
			if msgOp == 0 {
				msgOp = op
				msg = payload
			}
			continue
		}
		if op == OpText && !utf8.Valid(payload) {
			return 0, nil, c.fail(StatusInvalidPayload, "invalid UTF-8")
		}
		return op, payload, nil
	}
}

// control handles a ping, pong or close frame.
func (c *Conn) control(op Opcode, payload []byte) error {
	switch op {
	case OpPing:
		if err := c.writeControl(OpPong, payload, time.Now().Add(closeTimeout)); err != nil && !errors.Is(err, ErrClosed) {
			return err
		}
		return nil
	case OpPong:
		return nil
	case OpClose:
		ce := &CloseError{Code: StatusNoStatusRcvd, Remote: true}
		if len(payload) == 1 {
			return c.fail(StatusProtocolError, "invalid close frame")
		}
		if len(payload) >= 2 {
			ce.Code = StatusCode(binary.BigEndian.Uint16(payload))
			ce.Reason = string(payload[2:])
			if !validCloseCode(ce.Code) {
				return c.fail(StatusProtocolError, "invalid close code")
			}
			if !utf8.ValidString(ce.Reason) {
				return c.fail(StatusInvalidPayload, "invalid UTF-8 in close reason")
			}
		}
		// Echo the status, then the caller drops the connection.
		echo := ce.Code
		if echo == StatusNoStatusRcvd {
			echo = StatusNormalClosure
		}
		_ = c.writeClose(echo, "")
		return ce
	default:
		return c.fail(StatusProtocolError, "unknown control opcode")
	}
}

func validCloseCode(code StatusCode) bool {
	switch {
	case code >= 3000 && code <= 4999:
		return true
	case code < 1000 || code >= 1016:
		return false
	}
	switch code {
	case 1004, 1005, 1006, 1015:
		return false
	}
	return true
}

// fail sends a close frame for a violation by the peer and returns the
// error that ends reading.
func (c *Conn) fail(code StatusCode, reason string) error {
	_ = c.writeClose(code, reason)
	return &CloseError{Code: code, Reason: reason}
}

// unmask XORs b with the masking key, a word at a time.
func unmask(b []byte, key [4]byte, masked bool) {
	if !masked || len(b) == 0 {
		return
	}
	k32 := binary.LittleEndian.Uint32(key[:])
	k64 := uint64(k32) | uint64(k32)<<32
	i := 0
	for ; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], binary.LittleEndian.Uint64(b[i:])^k64)
	}
	for ; i < len(b); i++ {
		b[i] ^= key[i&3]
	}
}

// appendHeader appends the header of a final frame of op with n bytes of
// payload, masked with key when the connection is a client's.
func appendHeader(b []byte, op Opcode, n int, key []byte) []byte {
	b = append(b, 0x80|byte(op))
	var mbit byte
	if key != nil {
		mbit = 0x80
	}
	switch {
	case n <= 125:
		b = append(b, mbit|byte(n))
	case n <= 0xffff:
		b = append(b, mbit|126, byte(n>>8), byte(n))
	default:
		b = append(b, mbit|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	if key != nil {
		b = append(b, key...)
	}
	return b
}

// BufferPool lends write buffers to the connections that share it; a
// buffer is only held while a batch is written, so idle connections hold
// none. The zero value is ready to use.
type BufferPool struct{ p sync.Pool }

func (bp *BufferPool) get() *[]byte {
	if bp != nil {
		if b, ok := bp.p.Get().(*[]byte); ok {
			return b
		}
	}
	b := make([]byte, 0, 16<<10)
	return &b
}

func (bp *BufferPool) put(b *[]byte) {
	if bp != nil && cap(*b) <= 4*maxBatch {
		*b = (*b)[:0]
		bp.p.Put(b)
	}
}

// maxBatch is how many bytes are gathered before a write is issued.
const maxBatch = 64 << 10

// WriteText writes each of msgs as a text message, gathering them into as
// few system calls as their sizes allow, all under one deadline (the one
// in force may be kept when it is a little earlier, see setWriteDeadline).
func (c *Conn) WriteText(deadline time.Time, msgs ...[]byte) error {
	bp := c.bufs.get()
	buf := (*bp)[:0]
	c.wmu.Lock()
	err := func() error {
		if c.closeSent {
			return ErrClosed
		}
		if c.werr != nil {
			return c.werr
		}
		if err := c.setDataDeadline(deadline); err != nil {
			return err
		}
		for _, m := range msgs {
			buf = c.appendFrame(buf, OpText, m)
			if len(buf) >= maxBatch {
				if n, err := c.nc.Write(buf); err != nil {
					c.broke(n, err)
					return err
				}
				buf = buf[:0]
			}
		}
		if len(buf) > 0 {
			if n, err := c.nc.Write(buf); err != nil {
				c.broke(n, err)
				return err
			}
		}
		return nil
	}()
	c.wmu.Unlock()
	*bp = buf
	c.bufs.put(bp)
	return err
}

// deadlineSlack is how much later than the write deadline in force a new
// one may be and still not be set: setting it costs a timer update, and a
// busy connection writes hundreds of times a second.
const deadlineSlack = time.Second

// setWriteDeadline makes d the write deadline, or leaves the one in force
// when that is at most deadlineSlack earlier than d and still at least
// half as far away as d, so every write gets at least half its time. wmu
// is held.
func (c *Conn) setWriteDeadline(d time.Time) error {
	if early := d.Sub(c.wdeadline); early >= 0 && early <= min(deadlineSlack, time.Until(d)/2) {
		return nil
	}
	if err := c.nc.SetWriteDeadline(d); err != nil {
		return err
	}
	c.wdeadline = d
	return nil
}

// broke records a write that failed after n bytes: part of a frame went
// out, so nothing more may be written (a close frame included). wmu is
// held.
func (c *Conn) broke(n int, err error) {
	if n > 0 {
		c.werr = err
	}
}

// setDataDeadline sets the deadline of a data write: d, or closeBy when
// Close has set an earlier one. It checks closeBy again after setting d:
// either it sees the closeBy Close stored, or Close's own cut of the
// deadline comes after this one. wmu is held.
func (c *Conn) setDataDeadline(d time.Time) error {
	if cb := c.closeBy.Load(); cb != 0 && d.UnixNano() > cb {
		d = time.Unix(0, cb)
	}
	if err := c.setWriteDeadline(d); err != nil {
		return err
	}
	if cb := c.closeBy.Load(); cb != 0 && c.wdeadline.UnixNano() > cb {
		return c.setWriteDeadline(time.Unix(0, cb))
	}
	return nil
}

// appendFrame appends one final frame of op carrying payload.
func (c *Conn) appendFrame(b []byte, op Opcode, payload []byte) []byte {
	if !c.client {
		b = appendHeader(b, op, len(payload), nil)
		return append(b, payload...)
	}
	var key [4]byte
	binary.LittleEndian.PutUint32(key[:], maskKey())
	b = appendHeader(b, op, len(payload), key[:])
	start := len(b)
	b = append(b, payload...)
	unmask(b[start:], key, true)
	return b
}

// writeControl writes one control frame.
func (c *Conn) writeControl(op Opcode, payload []byte, deadline time.Time) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.writeControlLocked(op, payload, deadline)
}

// writeControlLocked is writeControl with wmu held.
func (c *Conn) writeControlLocked(op Opcode, payload []byte, deadline time.Time) error {
	if c.closeSent {
		return ErrClosed
	}
	if op == OpClose {
		c.closeSent = true
	}
	if c.werr != nil {
		return c.werr
	}
	var arr [maxHeader + 125]byte
	b := c.appendFrame(arr[:0], op, payload)
	if err := c.setWriteDeadline(deadline); err != nil {
		return err
	}
	_, err := c.nc.Write(b)
	return err
}

// writeClose sends a close frame once; later calls do nothing. A write in
// progress gets closeWriteGrace to finish, then it is cut off (its
// deadline moved to then) and the connection is broken: a write blocked
// that long is on a peer that does not read, and must not hold the close
// for the whole write timeout.
func (c *Conn) writeClose(code StatusCode, reason string) error {
	if len(reason) > 123 {
		reason = reason[:123]
		for !utf8.ValidString(reason) {
			reason = reason[:len(reason)-1]
		}
	}
	var p [125]byte
	binary.BigEndian.PutUint16(p[:], uint16(code))
	n := 2 + copy(p[2:], reason)
	cb := time.Now().Add(closeWriteGrace)
	c.closeBy.CompareAndSwap(0, cb.UnixNano())
	if !c.wmu.TryLock() {
		_ = c.nc.SetWriteDeadline(time.Unix(0, c.closeBy.Load()))
		c.wmu.Lock()
		c.wdeadline = time.Time{} // changed behind the cache's back
	}
	defer c.wmu.Unlock()
	return c.writeControlLocked(OpClose, p[:n], time.Now().Add(closeTimeout))
}

// Close starts the closing handshake: it sends a close frame with code and
// reason and bounds how long the reader waits for the peer's answer, after
// which ReadMessage returns and the caller drops the connection with
// CloseNow. It does not block on the peer. Later calls do nothing.
func (c *Conn) Close(code StatusCode, reason string) error {
	err := c.writeClose(code, reason)
	if errors.Is(err, ErrClosed) {
		return nil
	}
	_ = c.nc.SetReadDeadline(time.Now().Add(closeTimeout))
	if err != nil {
		c.nc.Close()
	}
	return err
}

// Linger half-closes the connection, then reads and discards what the peer
// still sends until it closes its side or the close timeout passes. Call
// it once a close frame was sent (ReadMessage returned a *CloseError):
// dropping a connection with unread data sends a reset, which may destroy
// the close frame before the peer reads it.
func (c *Conn) Linger() {
	if cw, ok := c.nc.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	_ = c.nc.SetReadDeadline(time.Now().Add(closeTimeout))
	var buf [512]byte
	for {
		if _, err := c.read(buf[:]); err != nil {
			return
		}
	}
}

// CloseNow drops the connection without a closing handshake.
func (c *Conn) CloseNow() error {
	err := c.nc.Close()
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}
