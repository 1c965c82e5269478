package ws

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"
)

const acceptGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

func acceptKey(key string) string {
	h := sha1.Sum([]byte(key + acceptGUID))
	return base64.StdEncoding.EncodeToString(h[:])
}

func maskKey() uint32 { return mrand.Uint32() }

// headerHasToken reports whether a comma-separated header of h lists
// token, case-insensitively, as net/http itself checks.
func headerHasToken(h http.Header, name, token string) bool {
	return httpguts.HeaderValuesContainsToken(h.Values(name), token)
}

// HandshakeError is a refused opening handshake; Upgrade has answered it
// with Status.
type HandshakeError struct {
	Status int
	Reason string
}

func (e *HandshakeError) Error() string { return "ws: bad handshake: " + e.Reason }

// checkRequest validates a client's opening handshake (RFC 6455, 4.2.1).
func checkRequest(r *http.Request) *HandshakeError {
	switch {
	case r.Method != http.MethodGet:
		return &HandshakeError{http.StatusMethodNotAllowed, "method must be GET"}
	case !headerHasToken(r.Header, "Connection", "upgrade"):
		return &HandshakeError{http.StatusUpgradeRequired, `Connection header must include "upgrade"`}
	case !headerHasToken(r.Header, "Upgrade", "websocket"):
		return &HandshakeError{http.StatusUpgradeRequired, `Upgrade header must include "websocket"`}
	case r.Header.Get("Sec-WebSocket-Version") != "13":
		return &HandshakeError{http.StatusBadRequest, "Sec-WebSocket-Version must be 13"}
	}
	key, err := base64.StdEncoding.DecodeString(r.Header.Get("Sec-WebSocket-Key"))
	if err != nil || len(key) != 16 {
		return &HandshakeError{http.StatusBadRequest, "invalid Sec-WebSocket-Key"}
	}
	return nil
}

// Upgrade completes the server side of the opening handshake and takes the
// connection over from the HTTP server. A bad handshake is answered with a
// plain-text HTTP error and returned as a *HandshakeError. Headers already
// set on w (a request id, say) are sent with the 101 response, which is
// written on the taken-over connection rather than through w. The
// connection borrows its write buffers from bufs (nil: its own per write).
func Upgrade(w http.ResponseWriter, r *http.Request, bufs *BufferPool) (*Conn, error) {
	if herr := checkRequest(r); herr != nil {
		if herr.Status == http.StatusUpgradeRequired || herr.Status == http.StatusBadRequest {
			w.Header().Set("Sec-WebSocket-Version", "13")
			if herr.Status == http.StatusUpgradeRequired {
				w.Header().Set("Connection", "Upgrade")
				w.Header().Set("Upgrade", "websocket")
			}
		}
		http.Error(w, herr.Reason, herr.Status)
		return nil, herr
	}
	// The connection is taken over before the 101 is sent, so nothing the
	// client sends after it can reach the HTTP server's reader.
	nc, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return nil, fmt.Errorf("ws: hijack: %w", err)
	}
	var pre []byte
	if n := brw.Reader.Buffered(); n > 0 {
		pre, _ = brw.Reader.Peek(n)
	}
	var b strings.Builder
	b.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ")
	b.WriteString(acceptKey(r.Header.Get("Sec-WebSocket-Key")))
	b.WriteString("\r\n")
	for name, vs := range w.Header() {
		switch http.CanonicalHeaderKey(name) {
		case "Upgrade", "Connection", "Sec-Websocket-Accept", "Content-Length", "Transfer-Encoding":
			continue
		}
		for _, v := range vs {
			if strings.ContainsAny(v, "\r\n") {
				continue
			}
			b.WriteString(name)
			b.WriteString(": ")
			b.WriteString(v)
			b.WriteString("\r\n")
		}
	}
	b.WriteString("\r\n")
	_ = nc.SetWriteDeadline(time.Now().Add(closeTimeout))
	if _, err := io.WriteString(nc, b.String()); err != nil {
		nc.Close()
		return nil, fmt.Errorf("ws: write handshake: %w", err)
	}
	_ = nc.SetDeadline(time.Time{})
	return newConn(nc, pre, false, 0, bufs), nil
}

// DialOptions configures Dial.
type DialOptions struct {
	// Dialer opens the TCP connection; nil: a net.Dialer.
	Dialer *net.Dialer
	// Header is sent with the handshake request.
	Header http.Header
	// ReadBuffer is the size of a buffered reader in front of the
	// connection; zero reads the socket directly.
	ReadBuffer int
	// Buffers lends write buffers; nil: the connection's own per write.
	Buffers *BufferPool
}

// DialError is a refused handshake; Status and Body are the server's
// answer.
type DialError struct {
	Status int
	Body   []byte
}

func (e *DialError) Error() string {
	return fmt.Sprintf("ws: handshake refused: HTTP %d: %s", e.Status, strings.TrimSpace(string(e.Body)))
}

// Dial opens a client connection to a ws:// URL. A handshake refused by
// the server returns a *DialError.
func Dial(ctx context.Context, rawURL string, opts *DialOptions) (*Conn, error) {
	if opts == nil {
		opts = &DialOptions{}
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, err
	}
	if u.Scheme != "ws" {
		return nil, fmt.Errorf("ws: unsupported scheme %q", u.Scheme)
	}
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), "80")
	}
	d := opts.Dialer
	if d == nil {
		d = &net.Dialer{}
	}
	nc, err := d.DialContext(ctx, "tcp", host)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = nc.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = nc.SetDeadline(time.Now()) })
	c, err := clientHandshake(nc, u, opts)
	if !stop() && err == nil {
		err = ctx.Err()
	}
	if err != nil {
		nc.Close()
		return nil, err
	}
	_ = nc.SetDeadline(time.Time{})
	return c, nil
}

func clientHandshake(nc net.Conn, u *url.URL, opts *DialOptions) (*Conn, error) {
	var nonce [16]byte
	_, _ = rand.Read(nonce[:])
	key := base64.StdEncoding.EncodeToString(nonce[:])
	var b strings.Builder
	fmt.Fprintf(&b, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n", u.RequestURI(), u.Host)
	fmt.Fprintf(&b, "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n", key)
	for name, vs := range opts.Header {
		for _, v := range vs {
			fmt.Fprintf(&b, "%s: %s\r\n", name, v)
		}
	}
	b.WriteString("\r\n")
	if _, err := io.WriteString(nc, b.String()); err != nil {
		return nil, err
	}
	br := bufio.NewReaderSize(nc, 4096)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodGet, URL: u})
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		return nil, &DialError{Status: resp.StatusCode, Body: body}
	}
	if !headerHasToken(resp.Header, "Upgrade", "websocket") || !headerHasToken(resp.Header, "Connection", "upgrade") ||
		resp.Header.Get("Sec-WebSocket-Accept") != acceptKey(key) {
		return nil, errors.New("ws: invalid handshake response")
	}
	var pre []byte
	if n := br.Buffered(); n > 0 {
		pre, _ = br.Peek(n)
	}
	return newConn(nc, pre, true, opts.ReadBuffer, opts.Buffers), nil
}

// Subprotocols returns the subprotocols a client's opening handshake
// offers (its Sec-WebSocket-Protocol headers), in order. The server selects
// one by setting Sec-WebSocket-Protocol on the response writer before
// Upgrade, which sends the headers set there with the 101.
func Subprotocols(r *http.Request) []string {
	var out []string
	for _, v := range r.Header.Values("Sec-WebSocket-Protocol") {
		for _, p := range strings.Split(v, ",") {
			if p = strings.TrimSpace(p); p != "" {
				out = append(out, p)
			}
		}
	}
	return out
}
