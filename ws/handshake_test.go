package ws

import (
	"bufio"
	"context"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// wantAccept computes Sec-WebSocket-Accept for key as RFC 6455, section
// 4.2.2 defines it.
func wantAccept(key string) string {
	h := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	return base64.StdEncoding.EncodeToString(h[:])
}

// handshakeWith is handshakeLines with each override ("Name: value")
// replacing the line of that name; "Name:" alone removes it, and a name
// not in the handshake is added.
func handshakeWith(overrides ...string) []string {
	lines := handshakeLines()
	for _, o := range overrides {
		name, value, _ := strings.Cut(o, ":")
		i := 0
		for ; i < len(lines); i++ {
			if strings.HasPrefix(lines[i], name+":") {
				break
			}
		}
		switch {
		case i < len(lines) && strings.TrimSpace(value) == "":
			lines = append(lines[:i], lines[i+1:]...)
		case i < len(lines):
			lines[i] = o
		default:
			lines = append(lines, o)
		}
	}
	return lines
}

func TestAcceptKeyRFCExample(t *testing.T) {
	const want = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" // RFC 6455, section 1.3
	if got := acceptKey(rfcKey); got != want {
		t.Errorf("acceptKey(%q) = %q, want %q", rfcKey, got, want)
	}
	if got := wantAccept(rfcKey); got != want {
		t.Errorf("the test's own computation gives %q", got)
	}
}

// TestUpgradeResponse checks the 101 answer on the wire: the RFC example's
// accept value, the upgrade headers, headers the handler set before
// Upgrade, and no body framing.
func TestUpgradeResponse(t *testing.T) {
	results := make(chan readResult, 1)
	ts := startTestServer(t, func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-Request-Id", "req-42")
		h.Add("Set-Cookie", "node=a")
		h.Add("Set-Cookie", "lb=b")
		// Framing and upgrade headers are the handshake's own.
		h.Set("Content-Length", "5")
		h.Set("Transfer-Encoding", "chunked")
		h.Set("Connection", "keep-alive")
		h.Set("Upgrade", "h2c")
		h.Set("Sec-WebSocket-Accept", "bogus")
		// A value that would end the header line is not sent.
		h.Set("X-Trace", "1\r\nX-Injected: yes")
	}, serveRead(0, results))
	rc := rawUpgrade(t, ts, nil)
	h := rc.resp.Header
	for name, want := range map[string][]string{
		"Sec-Websocket-Accept":     {"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="},
		"Upgrade":                  {"websocket"},
		"Connection":               {"Upgrade"},
		"X-Request-Id":             {"req-42"},
		"Set-Cookie":               {"node=a", "lb=b"},
		"Content-Length":           nil,
		"Transfer-Encoding":        nil,
		"X-Trace":                  nil,
		"X-Injected":               nil,
		"Sec-Websocket-Protocol":   nil,
		"Sec-Websocket-Extensions": nil,
	} {
		if got := h[name]; strings.Join(got, "|") != strings.Join(want, "|") {
			t.Errorf("%s: %q, want %q", name, got, want)
		}
	}
	if rc.resp.TransferEncoding != nil || rc.resp.ContentLength > 0 {
		t.Errorf("101 response with transfer encoding %v, length %d", rc.resp.TransferEncoding, rc.resp.ContentLength)
	}
	rc.send(t, clientFrame(0x81, "hi"), clientFrame(0x88, closePayload(1000, "")))
	rc.expectClose(t, StatusNormalClosure)
	rc.expectEOF(t)
	res := recv(t, results)
	sameMessages(t, res.msgs, []message{textMsg("hi")})
	wantCloseError(t, res.err, CloseError{Code: 1000, Remote: true})
}

// TestUpgradeAcceptsHeaderVariants checks handshakes that spell the
// required headers differently but validly.
func TestUpgradeAcceptsHeaderVariants(t *testing.T) {
	const otherKey = "AQIDBAUGBwgJCgsMDQ4PEA==" // 16 bytes: 1 to 16
	cases := []struct {
		name  string
		lines []string
		key   string
	}{
		{"canonical", handshakeLines(), rfcKey},
		{"Connection token list", handshakeWith("Connection: keep-alive, Upgrade"), rfcKey},
		{"Connection in two header lines", append(handshakeWith("Connection: keep-alive"), "Connection: upgrade"), rfcKey},
		{"case-insensitive tokens", handshakeWith("Upgrade: WebSocket", "Connection: UPGRADE"), rfcKey},
		{"lower-case header names", []string{"upgrade: websocket", "connection: upgrade", "sec-websocket-key: " + rfcKey, "sec-websocket-version: 13"}, rfcKey},
		{"Upgrade token list", handshakeWith("Upgrade: h2c, websocket"), rfcKey},
		{"another key", handshakeWith("Sec-WebSocket-Key: " + otherKey), otherKey},
		{"extra headers", handshakeWith("Origin: http://example.com", "Sec-WebSocket-Protocol: chat", "Sec-WebSocket-Extensions: permessage-deflate"), rfcKey},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			results := make(chan readResult, 1)
			ts := newTestServer(t, serveRead(0, results))
			rc := dialRaw(t, ts, rawRequest(http.MethodGet, ts.addr(), tc.lines), nil)
			if rc.resp.StatusCode != http.StatusSwitchingProtocols {
				t.Fatalf("answered %s", rc.resp.Status)
			}
			if got, want := rc.resp.Header.Get("Sec-WebSocket-Accept"), wantAccept(tc.key); got != want {
				t.Errorf("Sec-WebSocket-Accept %q, want %q", got, want)
			}
			// Neither a subprotocol nor an extension is ever negotiated.
			for _, name := range []string{"Sec-WebSocket-Protocol", "Sec-WebSocket-Extensions"} {
				if v := rc.resp.Header.Get(name); v != "" {
					t.Errorf("%s: %q", name, v)
				}
			}
			rc.send(t, clientFrame(0x88, ""))
			rc.expectClose(t, StatusNormalClosure)
			wantCloseError(t, recv(t, results).err, CloseError{Code: StatusNoStatusRcvd, Remote: true})
		})
	}
}

// TestUpgradeRefusesBadHandshake checks each refused handshake: the HTTP
// status, the headers that tell the client what to send, the reason in
// the body, and the *HandshakeError Upgrade returns.
func TestUpgradeRefusesBadHandshake(t *testing.T) {
	upgradeHeaders := map[string]string{"Sec-WebSocket-Version": "13", "Upgrade": "websocket"}
	versionHeader := map[string]string{"Sec-WebSocket-Version": "13", "Upgrade": ""}
	cases := []struct {
		name   string
		method string
		lines  []string
		status int
		header map[string]string // "" asserts the header is absent
	}{
		{"POST", http.MethodPost, handshakeLines(), http.StatusMethodNotAllowed, map[string]string{"Sec-WebSocket-Version": "", "Upgrade": ""}},
		{"PUT", http.MethodPut, handshakeLines(), http.StatusMethodNotAllowed, nil},
		{"no Upgrade header", http.MethodGet, handshakeWith("Upgrade:"), http.StatusUpgradeRequired, upgradeHeaders},
		{"Upgrade to another protocol", http.MethodGet, handshakeWith("Upgrade: h2c"), http.StatusUpgradeRequired, upgradeHeaders},
		{"no Connection header", http.MethodGet, handshakeWith("Connection:"), http.StatusUpgradeRequired, upgradeHeaders},
		{"Connection without upgrade", http.MethodGet, handshakeWith("Connection: keep-alive"), http.StatusUpgradeRequired, upgradeHeaders},
		{"version 8", http.MethodGet, handshakeWith("Sec-WebSocket-Version: 8"), http.StatusBadRequest, versionHeader},
		{"version 14", http.MethodGet, handshakeWith("Sec-WebSocket-Version: 14"), http.StatusBadRequest, versionHeader},
		{"no version", http.MethodGet, handshakeWith("Sec-WebSocket-Version:"), http.StatusBadRequest, versionHeader},
		{"no key", http.MethodGet, handshakeWith("Sec-WebSocket-Key:"), http.StatusBadRequest, versionHeader},
		{"key not base64", http.MethodGet, handshakeWith("Sec-WebSocket-Key: not base64!"), http.StatusBadRequest, versionHeader},
		{"key of 15 bytes", http.MethodGet, handshakeWith("Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAA"), http.StatusBadRequest, versionHeader},
		{"key of 17 bytes", http.MethodGet, handshakeWith("Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAAA="), http.StatusBadRequest, versionHeader},
		{"unpadded key", http.MethodGet, handshakeWith("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ"), http.StatusBadRequest, versionHeader},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ts := newTestServer(t, func(c *Conn, r *http.Request) {
				t.Error("Upgrade accepted the handshake")
			})
			rc := dialRaw(t, ts, rawRequest(tc.method, ts.addr(), tc.lines), nil)
			body, err := io.ReadAll(rc.resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			if rc.resp.StatusCode != tc.status {
				t.Fatalf("answered %s (%q), want %d", rc.resp.Status, body, tc.status)
			}
			for name, want := range tc.header {
				if got := rc.resp.Header.Get(name); got != want {
					t.Errorf("%s: %q, want %q", name, got, want)
				}
			}
			var herr *HandshakeError
			if err := recv(t, ts.upgradeErrs); !errors.As(err, &herr) {
				t.Fatalf("Upgrade returned %v (%T), want a *HandshakeError", err, err)
			}
			if herr.Status != tc.status {
				t.Errorf("HandshakeError.Status %d, want %d", herr.Status, tc.status)
			}
			if want := herr.Reason + "\n"; string(body) != want {
				t.Errorf("body %q, want %q", body, want)
			}
			if !strings.HasPrefix(herr.Error(), "ws: bad handshake: ") {
				t.Errorf("Error() = %q", herr.Error())
			}
		})
	}
}

// TestUpgradeKeepsBytesAfterHandshake checks that frames a client writes
// right behind its handshake request, in the same TCP write, are read.
func TestUpgradeKeepsBytesAfterHandshake(t *testing.T) {
	big := strings.Repeat("b", 300)
	frames := cat(
		clientFrame(0x81, "first"),
		clientFrame(0x89, "ping"),
		clientFrame(0x82, big),
		clientFrame(0x01, "frag"),
		clientFrame(0x80, "mented"),
	)
	cases := []struct {
		name  string
		after []byte // sent with the handshake
		later []byte // sent once the handshake is answered
	}{
		{"whole frames", cat(frames, clientFrame(0x81, "last")), nil},
		{"two bytes of a header", frames, clientFrame(0x81, "last")},
		{"inside a header", cat(frames, clientFrame(0x81, "last")[:1]), clientFrame(0x81, "last")[1:]},
		{"inside the masking key", cat(frames, clientFrame(0x81, "last")[:4]), clientFrame(0x81, "last")[4:]},
		{"inside a payload", cat(frames, clientFrame(0x81, "last")[:8]), clientFrame(0x81, "last")[8:]},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			results := make(chan readResult, 1)
			ts := newTestServer(t, serveRead(0, results))
			rc := rawUpgrade(t, ts, tc.after)
			if f := rc.next(t); f.op != OpPong || string(f.payload) != "ping" {
				t.Fatalf("got opcode %d with %q, want the pong", f.op, f.payload)
			}
			rc.send(t, tc.later, clientFrame(0x88, closePayload(1000, "")))
			rc.expectClose(t, StatusNormalClosure)
			rc.expectEOF(t)
			res := recv(t, results)
			sameMessages(t, res.msgs, []message{
				textMsg("first"), {OpBinary, []byte(big)}, textMsg("fragmented"), textMsg("last"),
			})
			wantCloseError(t, res.err, CloseError{Code: 1000, Remote: true})
		})
	}
}

// TestDial checks the client side against the server side: masked frames
// both ways, messages of every length class, and the close handshake.
func TestDial(t *testing.T) {
	cases := []struct {
		name string
		opts *DialOptions
	}{
		{"nil options", nil},
		{"read buffer", &DialOptions{ReadBuffer: 4096}},
		{"tiny read buffer", &DialOptions{ReadBuffer: 16}},
		{"shared buffers and a dialer", &DialOptions{ReadBuffer: 16 << 10, Buffers: &BufferPool{}, Dialer: &net.Dialer{Timeout: testTimeout}}},
	}
	msgs := [][]byte{
		[]byte("hello"),
		[]byte(""),
		[]byte(strings.Repeat("m", 200)),
		[]byte(strings.Repeat("é", 30000)), // 60 KB
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := make(chan message, len(msgs))
			done := make(chan error, 1)
			ts := newTestServer(t, serveEcho(got, done))
			ctx := testContext(t)
			c, err := Dial(ctx, ts.wsURL()+"/chat", tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.CloseNow() })
			_, buffered := c.src.(*bufio.Reader)
			if want := tc.opts != nil && tc.opts.ReadBuffer > 0; buffered != want {
				t.Errorf("buffered reader: %v, want %v", buffered, want)
			}
			// All messages in one batch, so the echoes arrive back to back.
			if err := c.WriteText(time.Now().Add(testTimeout), msgs...); err != nil {
				t.Fatal(err)
			}
			for i, want := range msgs {
				op, p, err := c.ReadMessage()
				if err != nil {
					t.Fatalf("echo %d: %v", i, err)
				}
				if op != OpText || string(p) != string(want) {
					t.Fatalf("echo %d: opcode %d with %s, want %s", i, op, short(p), short(want))
				}
				if m := recv(t, got); m.op != OpText || string(m.data) != string(want) {
					t.Fatalf("server read %d: opcode %d with %s", i, m.op, short(m.data))
				}
			}
			if err := c.Close(StatusNormalClosure, "done"); err != nil {
				t.Fatal(err)
			}
			if err := c.WriteText(time.Now().Add(testTimeout), []byte("x")); err != ErrClosed {
				t.Errorf("WriteText after Close: %v, want ErrClosed", err)
			}
			// The server's echo of the close ends the client's reading.
			_, _, err = c.ReadMessage()
			wantCloseError(t, err, CloseError{Code: StatusNormalClosure, Remote: true})
			wantCloseError(t, recv(t, done), CloseError{Code: StatusNormalClosure, Reason: "done", Remote: true})
		})
	}
}

// TestDialRequest checks what Dial sends: the path and query of the URL,
// the Host, and the caller's headers.
func TestDialRequest(t *testing.T) {
	type request struct {
		uri, host, auth, ua string
	}
	reqs := make(chan request, 1)
	ts := newTestServer(t, func(c *Conn, r *http.Request) {
		reqs <- request{r.URL.RequestURI(), r.Host, r.Header.Get("Authorization"), r.Header.Get("User-Agent")}
		_, _, _ = c.ReadMessage()
	})
	header := http.Header{}
	header.Set("Authorization", "Bearer t0ken")
	header.Set("User-Agent", "chatload")
	c, err := Dial(testContext(t), ts.wsURL()+"/ws?room=lobby&since=42", &DialOptions{Header: header})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	want := request{"/ws?room=lobby&since=42", ts.addr(), "Bearer t0ken", "chatload"}
	if got := recv(t, reqs); got != want {
		t.Errorf("server saw %+v, want %+v", got, want)
	}
}

func TestDialRefused(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "missing token", http.StatusUnauthorized)
	}))
	t.Cleanup(srv.Close)
	c, err := Dial(testContext(t), "ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err == nil {
		c.CloseNow()
		t.Fatal("Dial succeeded")
	}
	var derr *DialError
	if !errors.As(err, &derr) {
		t.Fatalf("Dial: %v (%T), want a *DialError", err, err)
	}
	if derr.Status != http.StatusUnauthorized || string(derr.Body) != "missing token\n" {
		t.Errorf("DialError{Status: %d, Body: %q}, want 401 and the body", derr.Status, derr.Body)
	}
	if want := "ws: handshake refused: HTTP 401: missing token"; err.Error() != want {
		t.Errorf("Error() = %q, want %q", err.Error(), want)
	}
}

// handServer accepts connections on a loopback listener, reads each
// opening handshake and hands the connection to serve, which answers it by
// hand. It returns the ws:// URL to dial.
func handServer(t *testing.T, serve func(nc net.Conn, br *bufio.Reader, req *http.Request)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer nc.Close()
				_ = nc.SetDeadline(time.Now().Add(testTimeout))
				br := bufio.NewReader(nc)
				req, err := http.ReadRequest(br)
				if err != nil {
					t.Errorf("reading the handshake: %v", err)
					return
				}
				serve(nc, br, req)
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		waitTimeout(t, &wg, "hand-written server")
	})
	return "ws://" + ln.Addr().String() + "/"
}

func switchingProtocols(key string) string {
	return "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Accept: " + wantAccept(key) + "\r\n\r\n"
}

// expectClientFrame reads a frame a Dial'd client sent; it must be masked.
func expectClientFrame(t *testing.T, br *bufio.Reader, op Opcode, payload string) bool {
	t.Helper()
	f, err := readWireFrame(br)
	if err != nil {
		t.Errorf("reading the client's frame: %v", err)
		return false
	}
	if !f.fin || !f.masked || f.op != op || string(f.payload) != payload {
		t.Errorf("client sent fin=%v masked=%v opcode %d with %q; want a masked frame of opcode %d with %q",
			f.fin, f.masked, f.op, f.payload, op, payload)
		return false
	}
	return true
}

// TestDialKeepsBytesAfterHandshake checks that frames the server writes
// right behind its 101 response, in the same TCP write, are read.
func TestDialKeepsBytesAfterHandshake(t *testing.T) {
	for _, tc := range []struct {
		name       string
		readBuffer int
	}{{"socket read directly", 0}, {"read buffer", 64}} {
		t.Run(tc.name, func(t *testing.T) {
			u := handServer(t, func(nc net.Conn, br *bufio.Reader, req *http.Request) {
				resp := switchingProtocols(req.Header.Get("Sec-WebSocket-Key"))
				frames := cat(
					encodeFrame(0x81, []byte("hello"), false),
					encodeFrame(0x89, []byte("ping"), false),
					encodeFrame(0x01, []byte(strings.Repeat("a", 200)), false),
					encodeFrame(0x80, []byte("z"), false),
				)
				if _, err := nc.Write(append([]byte(resp), frames...)); err != nil {
					t.Error(err)
					return
				}
				if !expectClientFrame(t, br, OpPong, "ping") {
					return
				}
				if _, err := nc.Write(encodeFrame(0x88, []byte(closePayload(1000, "")), false)); err != nil {
					t.Error(err)
					return
				}
				expectClientFrame(t, br, OpClose, closePayload(1000, ""))
			})
			c, err := Dial(testContext(t), u, &DialOptions{ReadBuffer: tc.readBuffer})
			if err != nil {
				t.Fatal(err)
			}
			defer c.CloseNow()
			res := readAll(c)
			sameMessages(t, res.msgs, []message{textMsg("hello"), textMsg(strings.Repeat("a", 200) + "z")})
			wantCloseError(t, res.err, CloseError{Code: 1000, Remote: true})
		})
	}
}

// TestDialRefusesMaskedServerFrame checks that a client fails the
// connection when the server masks a frame.
func TestDialRefusesMaskedServerFrame(t *testing.T) {
	closeSeen := make(chan []byte, 1)
	u := handServer(t, func(nc net.Conn, br *bufio.Reader, req *http.Request) {
		resp := switchingProtocols(req.Header.Get("Sec-WebSocket-Key"))
		if _, err := nc.Write(append([]byte(resp), encodeFrame(0x81, []byte("masked"), true)...)); err != nil {
			t.Error(err)
			return
		}
		f, err := readWireFrame(br)
		if err != nil {
			t.Error(err)
			return
		}
		if !f.masked || f.op != OpClose {
			t.Errorf("client answered opcode %d masked=%v, want a masked close", f.op, f.masked)
		}
		closeSeen <- f.payload
	})
	c, err := Dial(testContext(t), u, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	_, _, err = c.ReadMessage()
	var ce *CloseError
	if !errors.As(err, &ce) || ce.Code != StatusProtocolError || ce.Remote {
		t.Fatalf("ReadMessage: %v, want a close 1002 sent", err)
	}
	if p := recv(t, closeSeen); string(p) != closePayload(1002, ce.Reason) {
		t.Errorf("close frame payload %q, want 1002 %q", p, ce.Reason)
	}
}

// TestDialBadResponse checks 101 answers that do not complete a WebSocket
// handshake.
func TestDialBadResponse(t *testing.T) {
	cases := []struct {
		name     string
		response func(key string) string
	}{
		{"wrong accept", func(string) string {
			return "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + wantAccept(rfcKey) + "\r\n\r\n"
		}},
		{"no accept", func(string) string {
			return "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
		}},
		{"no Upgrade", func(key string) string {
			return "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + wantAccept(key) + "\r\n\r\n"
		}},
		{"no Connection", func(key string) string {
			return "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: " + wantAccept(key) + "\r\n\r\n"
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			u := handServer(t, func(nc net.Conn, br *bufio.Reader, req *http.Request) {
				_, _ = io.WriteString(nc, tc.response(req.Header.Get("Sec-WebSocket-Key")))
				_, _ = io.Copy(io.Discard, br) // until the client hangs up
			})
			c, err := Dial(testContext(t), u, nil)
			if err == nil {
				c.CloseNow()
				t.Fatal("Dial succeeded")
			}
			if err.Error() != "ws: invalid handshake response" {
				t.Errorf("Dial: %v", err)
			}
		})
	}
}

func TestDialErrors(t *testing.T) {
	t.Run("unsupported schemes", func(t *testing.T) {
		for _, scheme := range []string{"http", "wss", "tcp"} {
			_, err := Dial(testContext(t), scheme+"://127.0.0.1:1/", nil)
			if want := `ws: unsupported scheme "` + scheme + `"`; err == nil || err.Error() != want {
				t.Errorf("Dial with scheme %q: %v, want %s", scheme, err, want)
			}
		}
	})
	t.Run("canceled before dialing", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		if _, err := Dial(ctx, "ws://127.0.0.1:1/", nil); !errors.Is(err, context.Canceled) {
			t.Errorf("Dial: %v, want %v", err, context.Canceled)
		}
	})
	t.Run("canceled during the handshake", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		u := handServer(t, func(nc net.Conn, br *bufio.Reader, req *http.Request) {
			cancel() // and never answer
			_, _ = io.Copy(io.Discard, br)
		})
		if _, err := Dial(ctx, u, nil); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("Dial: %v, want the handshake cut off", err)
		}
	})
	t.Run("deadline during the handshake", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
		defer cancel()
		u := handServer(t, func(nc net.Conn, br *bufio.Reader, req *http.Request) {
			_, _ = io.Copy(io.Discard, br) // never answers
		})
		if _, err := Dial(ctx, u, nil); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("Dial: %v, want the handshake cut off", err)
		}
	})
	t.Run("connection refused", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		var opErr *net.OpError
		if _, err := Dial(testContext(t), "ws://"+addr+"/", nil); !errors.As(err, &opErr) {
			t.Errorf("Dial: %v, want a *net.OpError", err)
		}
	})
}

func TestSubprotocols(t *testing.T) {
	for _, tc := range []struct {
		headers []string
		want    string
	}{
		{nil, ""},
		{[]string{"phoenix"}, "phoenix"},
		{[]string{"phoenix, base64url.bearer.phx.abc"}, "phoenix|base64url.bearer.phx.abc"},
		{[]string{" phoenix ,, x", "y"}, "phoenix|x|y"},
	} {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		for _, h := range tc.headers {
			r.Header.Add("Sec-WebSocket-Protocol", h)
		}
		if got := strings.Join(Subprotocols(r), "|"); got != tc.want {
			t.Errorf("Subprotocols(%q) = %q, want %q", tc.headers, got, tc.want)
		}
	}
}
