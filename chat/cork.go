package chat

import (
	"net"
	"sync"
	"time"
)

// CorkConn wraps the network connection under a WebSocket so that the
// frames a session writes in one batch leave in one system call: while
// corked, writes are collected in memory; Uncork sends them at once. The
// WebSocket library flushes after every message, so without it each frame
// costs a write system call, which dominates the cost of fan-out.
type CorkConn struct {
	net.Conn

	// wmu orders writes to the socket: a batch going out, and frames
	// written uncorked from other goroutines (pongs, close frames).
	wmu sync.Mutex
	// mu guards corked and buf.
	mu     sync.Mutex
	corked bool
	buf    []byte
}

// NewCorkConn wraps c.
func NewCorkConn(c net.Conn) *CorkConn { return &CorkConn{Conn: c} }

// Write implements net.Conn: it collects p while corked, and writes it
// through otherwise.
func (c *CorkConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	if c.corked {
		c.buf = append(c.buf, p...)
		c.mu.Unlock()
		return len(p), nil
	}
	c.mu.Unlock()
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.Conn.Write(p)
}

// Cork starts collecting writes.
func (c *CorkConn) Cork() {
	c.mu.Lock()
	c.corked = true
	c.mu.Unlock()
}

// Uncork writes what was collected in one call, bounded by deadline, and
// stops collecting. The buffer is dropped, so an idle connection holds none.
func (c *CorkConn) Uncork(deadline time.Time) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.mu.Lock()
	c.corked = false
	b := c.buf
	c.buf = nil
	c.mu.Unlock()
	if len(b) == 0 {
		return nil
	}
	_ = c.Conn.SetWriteDeadline(deadline)
	_, err := c.Conn.Write(b)
	_ = c.Conn.SetWriteDeadline(time.Time{})
	return err
}
