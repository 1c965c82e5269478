package ws

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// testTimeout bounds every wait in these tests, so that a regression fails
// instead of hanging.
const testTimeout = 10 * time.Second

// testServer is an httptest server whose handler upgrades each request with
// Upgrade and hands the connection to serve. Its cleanup closes the server
// and waits for every handler to return.
type testServer struct {
	*httptest.Server
	handlers sync.WaitGroup
	bufs     BufferPool
	// upgradeErrs receives what Upgrade returned when it refused a request.
	upgradeErrs chan error
}

func newTestServer(t testing.TB, serve func(c *Conn, r *http.Request)) *testServer {
	t.Helper()
	return startTestServer(t, nil, serve)
}

// startTestServer is newTestServer with prepare, when non-nil, run on each
// request before Upgrade.
func startTestServer(t testing.TB, prepare func(http.ResponseWriter, *http.Request), serve func(c *Conn, r *http.Request)) *testServer {
	t.Helper()
	ts := &testServer{upgradeErrs: make(chan error, 16)}
	ts.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ts.handlers.Add(1)
		defer ts.handlers.Done()
		if prepare != nil {
			prepare(w, r)
		}
		c, err := Upgrade(w, r, &ts.bufs)
		if err != nil {
			select {
			case ts.upgradeErrs <- err:
			default:
			}
			return
		}
		defer c.CloseNow()
		serve(c, r)
	}))
	t.Cleanup(func() {
		// Close returns once every request was answered or hijacked, so
		// no handler starts after it.
		ts.Close()
		waitTimeout(t, &ts.handlers, "server handlers")
	})
	return ts
}

func (ts *testServer) wsURL() string { return "ws" + strings.TrimPrefix(ts.URL, "http") }

func (ts *testServer) addr() string { return ts.Listener.Addr().String() }

func waitTimeout(t testing.TB, wg *sync.WaitGroup, what string) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(testTimeout):
		t.Errorf("%s did not return within %v", what, testTimeout)
	}
}

// recv receives one value from ch, failing the test after testTimeout.
func recv[T any](t testing.TB, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(testTimeout):
		t.Fatalf("nothing received within %v", testTimeout)
		panic("unreachable")
	}
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// message is one message as ReadMessage returned it.
type message struct {
	op   Opcode
	data []byte
}

func textMsg(s string) message { return message{OpText, []byte(s)} }

// readResult is what a connection read before ReadMessage failed.
type readResult struct {
	msgs []message
	err  error
}

// readAll reads messages until ReadMessage fails.
func readAll(c *Conn) readResult {
	var res readResult
	for {
		op, p, err := c.ReadMessage()
		if err != nil {
			res.err = err
			return res
		}
		res.msgs = append(res.msgs, message{op, p})
	}
}

// serveRead returns a serve function that applies limit (when non-zero),
// reads until ReadMessage fails, reports what it read on results and then
// closes with Linger.
func serveRead(limit int64, results chan<- readResult) func(*Conn, *http.Request) {
	return func(c *Conn, _ *http.Request) {
		if limit != 0 {
			c.SetReadLimit(limit)
		}
		results <- readAll(c)
		c.Linger()
	}
}

func sameMessages(t testing.TB, got, want []message) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d messages, want %d: %s", len(got), len(want), describe(got))
	}
	for i := range want {
		if got[i].op != want[i].op || !bytes.Equal(got[i].data, want[i].data) {
			t.Errorf("message %d: got opcode %d with %s, want opcode %d with %s",
				i, got[i].op, short(got[i].data), want[i].op, short(want[i].data))
		}
	}
}

func describe(msgs []message) string {
	var b strings.Builder
	for _, m := range msgs {
		fmt.Fprintf(&b, "[%d %s] ", m.op, short(m.data))
	}
	return b.String()
}

func short(p []byte) string {
	if len(p) > 40 {
		return fmt.Sprintf("%q... (%d bytes)", p[:40], len(p))
	}
	return fmt.Sprintf("%q", p)
}

// wantCloseError checks that err is a *CloseError equal to want.
func wantCloseError(t testing.TB, err error, want CloseError) {
	t.Helper()
	var ce *CloseError
	if !errors.As(err, &ce) {
		t.Fatalf("got error %v (%T), want %v", err, err, &want)
	}
	if *ce != want {
		t.Fatalf("got %#v, want %#v", *ce, want)
	}
}

// testMask is the masking key the hand-written client frames use (the
// example key of RFC 6455, section 5.7).
var testMask = [4]byte{0x37, 0xfa, 0x21, 0x3d}

// encodeFrame encodes one frame with a minimal length; b0 carries FIN, RSV
// and the opcode. A masked frame uses testMask.
func encodeFrame(b0 byte, payload []byte, masked bool) []byte {
	b := []byte{b0}
	var m byte
	if masked {
		m = 0x80
	}
	switch n := len(payload); {
	case n <= 125:
		b = append(b, m|byte(n))
	case n <= 0xffff:
		b = append(b, m|126, byte(n>>8), byte(n))
	default:
		b = append(b, m|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	return appendPayload(b, payload, masked)
}

// encodeFrame64 encodes one frame with a 64-bit length field, whatever the
// payload's size.
func encodeFrame64(b0 byte, payload []byte, masked bool) []byte {
	b := []byte{b0, 127}
	if masked {
		b[1] |= 0x80
	}
	b = binary.BigEndian.AppendUint64(b, uint64(len(payload)))
	return appendPayload(b, payload, masked)
}

func appendPayload(b, payload []byte, masked bool) []byte {
	if !masked {
		return append(b, payload...)
	}
	b = append(b, testMask[:]...)
	for i, c := range payload {
		b = append(b, c^testMask[i&3])
	}
	return b
}

// clientFrame encodes one masked frame, as a client sends it.
func clientFrame(b0 byte, payload string) []byte { return encodeFrame(b0, []byte(payload), true) }

// lengthOnly is a masked frame header announcing n bytes of payload that
// never follow.
func lengthOnly(b0 byte, n uint64) []byte {
	b := []byte{b0, 0x80 | 127}
	b = binary.BigEndian.AppendUint64(b, n)
	return append(b, testMask[:]...)
}

func closePayload(code StatusCode, reason string) string {
	return string(binary.BigEndian.AppendUint16(nil, uint16(code))) + reason
}

func cat(frames ...[]byte) []byte { return bytes.Join(frames, nil) }

// wireFrame is one frame as read off the wire, unmasked.
type wireFrame struct {
	fin     bool
	op      Opcode
	masked  bool
	payload []byte
}

// readWireFrame reads one frame, independently of the package's decoder.
func readWireFrame(r io.Reader) (wireFrame, error) {
	var h [2]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return wireFrame{}, err
	}
	if h[0]&0x70 != 0 {
		return wireFrame{}, fmt.Errorf("frame with RSV bits %#x", h[0]&0x70)
	}
	f := wireFrame{fin: h[0]&0x80 != 0, op: Opcode(h[0] & 0x0f), masked: h[1]&0x80 != 0}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var b [2]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return wireFrame{}, err
		}
		n = uint64(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return wireFrame{}, err
		}
		n = binary.BigEndian.Uint64(b[:])
	}
	if n > 16<<20 {
		return wireFrame{}, fmt.Errorf("frame of %d bytes", n)
	}
	var key [4]byte
	if f.masked {
		if _, err := io.ReadFull(r, key[:]); err != nil {
			return wireFrame{}, err
		}
	}
	f.payload = make([]byte, n)
	if _, err := io.ReadFull(r, f.payload); err != nil {
		return wireFrame{}, err
	}
	if f.masked {
		for i := range f.payload {
			f.payload[i] ^= key[i&3]
		}
	}
	return f, nil
}

// rawConn is a client connection driven by hand: handshake, frames and
// close are written and checked byte by byte.
type rawConn struct {
	net.Conn
	br   *bufio.Reader
	resp *http.Response
}

// rfcKey is the Sec-WebSocket-Key of the example in RFC 6455, section 1.3.
const rfcKey = "dGhlIHNhbXBsZSBub25jZQ=="

// handshakeLines are the header lines of a valid opening handshake.
func handshakeLines() []string {
	return []string{
		"Upgrade: websocket",
		"Connection: Upgrade",
		"Sec-WebSocket-Key: " + rfcKey,
		"Sec-WebSocket-Version: 13",
	}
}

func rawRequest(method, host string, lines []string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s /chat HTTP/1.1\r\nHost: %s\r\n", method, host)
	for _, l := range lines {
		b.WriteString(l + "\r\n")
	}
	b.WriteString("\r\n")
	return b.String()
}

// dialRaw opens a TCP connection to ts and writes request followed by
// after in one write, then reads the response's header.
func dialRaw(t testing.TB, ts *testServer, request string, after []byte) *rawConn {
	t.Helper()
	nc, err := net.Dial("tcp", ts.addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	_ = nc.SetDeadline(time.Now().Add(testTimeout))
	if _, err := nc.Write(append([]byte(request), after...)); err != nil {
		t.Fatal(err)
	}
	rc := &rawConn{Conn: nc, br: bufio.NewReader(nc)}
	rc.resp, err = http.ReadResponse(rc.br, nil)
	if err != nil {
		t.Fatalf("reading the handshake response: %v", err)
	}
	return rc
}

// rawUpgrade completes a valid opening handshake by hand; after is written
// in the same TCP write as the request.
func rawUpgrade(t testing.TB, ts *testServer, after []byte) *rawConn {
	t.Helper()
	rc := dialRaw(t, ts, rawRequest(http.MethodGet, ts.addr(), handshakeLines()), after)
	if rc.resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake answered %s", rc.resp.Status)
	}
	return rc
}

func (rc *rawConn) send(t testing.TB, frames ...[]byte) {
	t.Helper()
	if _, err := rc.Write(cat(frames...)); err != nil {
		t.Fatal(err)
	}
}

// next reads the server's next frame, which must be final and unmasked.
func (rc *rawConn) next(t testing.TB) wireFrame {
	t.Helper()
	f, err := readWireFrame(rc.br)
	if err != nil {
		t.Fatalf("reading a frame: %v", err)
	}
	if !f.fin || f.masked {
		t.Fatalf("server frame with fin=%v masked=%v", f.fin, f.masked)
	}
	return f
}

// expectClose reads a close frame with code and returns its reason.
func (rc *rawConn) expectClose(t testing.TB, code StatusCode) string {
	t.Helper()
	f := rc.next(t)
	if f.op != OpClose {
		t.Fatalf("got opcode %d with %s, want a close frame", f.op, short(f.payload))
	}
	if len(f.payload) < 2 {
		t.Fatalf("close frame with a %d-byte payload", len(f.payload))
	}
	if got := StatusCode(binary.BigEndian.Uint16(f.payload)); got != code {
		t.Fatalf("close frame with status %d (%q), want %d", got, f.payload[2:], code)
	}
	return string(f.payload[2:])
}

// expectEOF checks that the server sends nothing more and ends the
// connection.
func (rc *rawConn) expectEOF(t testing.TB) {
	t.Helper()
	if f, err := readWireFrame(rc.br); err != io.EOF {
		t.Fatalf("got frame %+v, error %v; want the connection to end", f, err)
	}
}

// violationCase is a client stream that breaks the protocol.
type violationCase struct {
	name   string
	limit  int64 // read limit; zero keeps the default
	frames [][]byte
	msgs   []message // delivered before the violation
	pongs  int       // pongs answering pings before the violation
	want   StatusCode
}

var violationCases = []violationCase{
	{name: "unmasked client frame", frames: [][]byte{encodeFrame(0x81, []byte("hello"), false)}, want: StatusProtocolError},
	{name: "unmasked ping", frames: [][]byte{encodeFrame(0x89, nil, false)}, want: StatusProtocolError},
	{name: "RSV1 set", frames: [][]byte{clientFrame(0xc1, "hello")}, want: StatusProtocolError},
	{name: "RSV2 set", frames: [][]byte{clientFrame(0xa1, "hello")}, want: StatusProtocolError},
	{name: "RSV3 set", frames: [][]byte{clientFrame(0x91, "hello")}, want: StatusProtocolError},
	{name: "RSV bit on a ping", frames: [][]byte{clientFrame(0xc9, "")}, want: StatusProtocolError},
	{name: "reserved data opcode 0x3", frames: [][]byte{clientFrame(0x83, "x")}, want: StatusProtocolError},
	{name: "reserved data opcode 0x7", frames: [][]byte{clientFrame(0x87, "x")}, want: StatusProtocolError},
	{name: "reserved control opcode 0xB", frames: [][]byte{clientFrame(0x8b, "")}, want: StatusProtocolError},
	{name: "reserved control opcode 0xF", frames: [][]byte{clientFrame(0x8f, "x")}, want: StatusProtocolError},
	{name: "ping with 126 bytes of payload", frames: [][]byte{clientFrame(0x89, strings.Repeat("p", 126))}, want: StatusProtocolError},
	{name: "close with 126 bytes of payload", frames: [][]byte{clientFrame(0x88, closePayload(1000, strings.Repeat("r", 124)))}, want: StatusProtocolError},
	{name: "ping with a 64-bit length", frames: [][]byte{lengthOnly(0x89, 1<<20)}, want: StatusProtocolError},
	{name: "ping with a 64-bit length with the top bit set", frames: [][]byte{lengthOnly(0x89, 1<<63|5)}, want: StatusProtocolError},
	{name: "reserved control opcode with a 64-bit length over 2^62", frames: [][]byte{lengthOnly(0x8d, 1<<62+1)}, want: StatusProtocolError},
	{name: "pong with a 64-bit length with the top bit set", frames: [][]byte{lengthOnly(0x8a, 1<<63)}, want: StatusProtocolError},
	{name: "ping without FIN", frames: [][]byte{clientFrame(0x09, "x")}, want: StatusProtocolError},
	{name: "close without FIN", frames: [][]byte{clientFrame(0x08, closePayload(1000, ""))}, want: StatusProtocolError},
	{name: "continuation without a message", frames: [][]byte{clientFrame(0x80, "x")}, want: StatusProtocolError},
	{name: "non-final continuation without a message", frames: [][]byte{clientFrame(0x00, "x")}, want: StatusProtocolError},
	{name: "continuation after a complete message", frames: [][]byte{clientFrame(0x81, "done"), clientFrame(0x80, "x")}, msgs: []message{textMsg("done")}, want: StatusProtocolError},
	{name: "text frame inside a fragmented message", frames: [][]byte{clientFrame(0x01, "a"), clientFrame(0x81, "b")}, want: StatusProtocolError},
	{name: "binary frame inside a fragmented text message", frames: [][]byte{clientFrame(0x01, "a"), clientFrame(0x82, "b")}, want: StatusProtocolError},
	{name: "non-final text frame inside a fragmented message", frames: [][]byte{clientFrame(0x02, "a"), clientFrame(0x01, "b")}, want: StatusProtocolError},
	{name: "invalid UTF-8 text", frames: [][]byte{clientFrame(0x81, "\xff\xfe")}, want: StatusInvalidPayload},
	{name: "UTF-16 surrogate in text", frames: [][]byte{clientFrame(0x81, "\xed\xa0\x80")}, want: StatusInvalidPayload},
	{name: "text ending inside a rune", frames: [][]byte{clientFrame(0x01, "caf"), clientFrame(0x80, "\xc3")}, want: StatusInvalidPayload},
	{name: "invalid UTF-8 after a valid message", frames: [][]byte{clientFrame(0x81, "ok"), clientFrame(0x81, "\xc0\xaf")}, msgs: []message{textMsg("ok")}, want: StatusInvalidPayload},
	{name: "text over the read limit", limit: 16, frames: [][]byte{clientFrame(0x81, strings.Repeat("a", 17))}, want: StatusMessageTooBig},
	{name: "binary over the read limit", limit: 16, frames: [][]byte{clientFrame(0x82, strings.Repeat("a", 17))}, want: StatusMessageTooBig},
	{name: "read limit exceeded across fragments", limit: 16, frames: [][]byte{clientFrame(0x01, strings.Repeat("a", 10)), clientFrame(0x00, strings.Repeat("b", 6)), clientFrame(0x80, "c")}, want: StatusMessageTooBig},
	{name: "announced length over the read limit", limit: 16, frames: [][]byte{lengthOnly(0x81, 1000)}, want: StatusMessageTooBig},
	{name: "one byte over the default read limit", frames: [][]byte{lengthOnly(0x82, 64<<10+1)}, want: StatusMessageTooBig},
	{name: "64-bit length with the top bit set", frames: [][]byte{lengthOnly(0x81, 1<<63)}, want: StatusMessageTooBig},
	{name: "64-bit length of all ones", frames: [][]byte{lengthOnly(0x82, ^uint64(0))}, want: StatusMessageTooBig},
	{name: "64-bit length with the top bit set in a continuation", frames: [][]byte{clientFrame(0x01, "a"), lengthOnly(0x80, 1<<63|1)}, want: StatusMessageTooBig},
	{name: "close with a 1-byte payload", frames: [][]byte{clientFrame(0x88, "\x03")}, want: StatusProtocolError},
	{name: "close code 1005", frames: [][]byte{clientFrame(0x88, closePayload(1005, ""))}, want: StatusProtocolError},
	{name: "close code 1006", frames: [][]byte{clientFrame(0x88, closePayload(1006, ""))}, want: StatusProtocolError},
	{name: "close code 1004", frames: [][]byte{clientFrame(0x88, closePayload(1004, ""))}, want: StatusProtocolError},
	{name: "close code 1015", frames: [][]byte{clientFrame(0x88, closePayload(1015, ""))}, want: StatusProtocolError},
	{name: "close code 1016", frames: [][]byte{clientFrame(0x88, closePayload(1016, ""))}, want: StatusProtocolError},
	{name: "close code 999", frames: [][]byte{clientFrame(0x88, closePayload(999, "x"))}, want: StatusProtocolError},
	{name: "close code 0", frames: [][]byte{clientFrame(0x88, closePayload(0, ""))}, want: StatusProtocolError},
	{name: "close code 2999", frames: [][]byte{clientFrame(0x88, closePayload(2999, ""))}, want: StatusProtocolError},
	{name: "close code 5000", frames: [][]byte{clientFrame(0x88, closePayload(5000, ""))}, want: StatusProtocolError},
	{name: "close reason not UTF-8", frames: [][]byte{clientFrame(0x88, closePayload(1000, "\xff"))}, want: StatusInvalidPayload},
	{name: "violation inside a fragmented message after a ping", frames: [][]byte{clientFrame(0x01, "a"), clientFrame(0x89, ""), clientFrame(0x83, "b")}, pongs: 1, want: StatusProtocolError},
}

// TestProtocolViolations checks that each violation is answered with a
// close frame of the right status, after which the server sends nothing
// and ReadMessage reports the close it sent.
func TestProtocolViolations(t *testing.T) {
	for _, tc := range violationCases {
		for _, withHandshake := range []bool{false, true} {
			name := tc.name + "/after the handshake"
			if withHandshake {
				name = tc.name + "/with the handshake"
			}
			t.Run(name, func(t *testing.T) {
				results := make(chan readResult, 1)
				ts := newTestServer(t, serveRead(tc.limit, results))
				var rc *rawConn
				if withHandshake {
					rc = rawUpgrade(t, ts, cat(tc.frames...))
				} else {
					rc = rawUpgrade(t, ts, nil)
					rc.send(t, tc.frames...)
				}
				for range tc.pongs {
					if f := rc.next(t); f.op != OpPong {
						t.Fatalf("got opcode %d, want a pong", f.op)
					}
				}
				reason := rc.expectClose(t, tc.want)
				rc.expectEOF(t)
				res := recv(t, results)
				sameMessages(t, res.msgs, tc.msgs)
				wantCloseError(t, res.err, CloseError{Code: tc.want, Reason: reason, Remote: false})
				if reason == "" {
					t.Error("the close frame gives no reason")
				}
			})
		}
	}
}

// TestPeerClose checks the close frames a client may send: ReadMessage
// returns the peer's status and reason, and the server echoes the status.
func TestPeerClose(t *testing.T) {
	cases := []struct {
		name    string
		payload string
		want    CloseError
		echo    StatusCode
	}{
		{"no status", "", CloseError{Code: StatusNoStatusRcvd, Remote: true}, StatusNormalClosure},
		{"1000", closePayload(1000, ""), CloseError{Code: 1000, Remote: true}, 1000},
		{"1000 with a reason", closePayload(1000, "bye"), CloseError{Code: 1000, Reason: "bye", Remote: true}, 1000},
		{"1001", closePayload(1001, "tab closed"), CloseError{Code: 1001, Reason: "tab closed", Remote: true}, 1001},
		{"1003", closePayload(1003, ""), CloseError{Code: 1003, Remote: true}, 1003},
		{"1007", closePayload(1007, ""), CloseError{Code: 1007, Remote: true}, 1007},
		{"1008", closePayload(1008, ""), CloseError{Code: 1008, Remote: true}, 1008},
		{"1011", closePayload(1011, ""), CloseError{Code: 1011, Remote: true}, 1011},
		{"1014", closePayload(1014, ""), CloseError{Code: 1014, Remote: true}, 1014},
		{"3000", closePayload(3000, ""), CloseError{Code: 3000, Remote: true}, 3000},
		{"4999 with a UTF-8 reason", closePayload(4999, "à bientôt"), CloseError{Code: 4999, Reason: "à bientôt", Remote: true}, 4999},
		{"longest reason", closePayload(1000, strings.Repeat("r", 123)), CloseError{Code: 1000, Reason: strings.Repeat("r", 123), Remote: true}, 1000},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			results := make(chan readResult, 1)
			ts := newTestServer(t, serveRead(0, results))
			rc := rawUpgrade(t, ts, nil)
			rc.send(t, clientFrame(0x88, tc.payload))
			if reason := rc.expectClose(t, tc.echo); reason != "" {
				t.Errorf("echoed close carries reason %q", reason)
			}
			rc.expectEOF(t)
			res := recv(t, results)
			sameMessages(t, res.msgs, nil)
			wantCloseError(t, res.err, tc.want)
		})
	}
}

// TestReadMessage checks the messages a server reads from hand-written
// client frames, and the pongs it answers with.
func TestReadMessage(t *testing.T) {
	big := strings.Repeat("0123456789abcdef", 4096) // 64 KiB, the default limit
	cases := []struct {
		name   string
		limit  int64
		frames [][]byte
		msgs   []message
		pongs  []string
	}{
		{name: "text", frames: [][]byte{clientFrame(0x81, "hello")}, msgs: []message{textMsg("hello")}},
		{name: "binary", frames: [][]byte{clientFrame(0x82, "\x00\xff\x01")}, msgs: []message{{OpBinary, []byte("\x00\xff\x01")}}},
		{name: "empty text", frames: [][]byte{clientFrame(0x81, "")}, msgs: []message{textMsg("")}},
		{name: "125 bytes", frames: [][]byte{clientFrame(0x81, strings.Repeat("x", 125))}, msgs: []message{textMsg(strings.Repeat("x", 125))}},
		{name: "16-bit length", frames: [][]byte{clientFrame(0x81, strings.Repeat("x", 126))}, msgs: []message{textMsg(strings.Repeat("x", 126))}},
		{name: "largest 16-bit length", frames: [][]byte{clientFrame(0x81, big[:0xffff])}, msgs: []message{textMsg(big[:0xffff])}},
		{name: "64-bit length at the default read limit", frames: [][]byte{clientFrame(0x81, big)}, msgs: []message{textMsg(big)}},
		{name: "64-bit length for a short message", frames: [][]byte{encodeFrame64(0x81, []byte("short"), true)}, msgs: []message{textMsg("short")}},
		{name: "raised read limit", limit: 1 << 20, frames: [][]byte{clientFrame(0x82, big+big)}, msgs: []message{{OpBinary, []byte(big + big)}}},
		{name: "message at a small read limit", limit: 16, frames: [][]byte{clientFrame(0x81, strings.Repeat("a", 16))}, msgs: []message{textMsg(strings.Repeat("a", 16))}},
		{name: "UTF-8 text", frames: [][]byte{clientFrame(0x81, "héllo, 世界 👋")}, msgs: []message{textMsg("héllo, 世界 👋")}},
		{name: "binary need not be UTF-8", frames: [][]byte{clientFrame(0x82, "\xff\xfe")}, msgs: []message{{OpBinary, []byte("\xff\xfe")}}},
		{
			name:   "text in three fragments",
			frames: [][]byte{clientFrame(0x01, "Hel"), clientFrame(0x00, "lo, "), clientFrame(0x80, "world")},
			msgs:   []message{textMsg("Hello, world")},
		},
		{
			name:   "binary in two fragments",
			frames: [][]byte{clientFrame(0x02, "\x00\x01"), clientFrame(0x80, "\x02\x03")},
			msgs:   []message{{OpBinary, []byte{0, 1, 2, 3}}},
		},
		{
			name:   "control frames between fragments",
			frames: [][]byte{clientFrame(0x01, "Hel"), clientFrame(0x89, "p1"), clientFrame(0x00, "lo, "), clientFrame(0x8a, "unsolicited"), clientFrame(0x89, ""), clientFrame(0x80, "world")},
			msgs:   []message{textMsg("Hello, world")},
			pongs:  []string{"p1", ""},
		},
		{
			name:   "rune split across fragments",
			frames: [][]byte{clientFrame(0x01, "caf\xc3"), clientFrame(0x80, "\xa9")},
			msgs:   []message{textMsg("café")},
		},
		{
			name:   "empty fragments",
			frames: [][]byte{clientFrame(0x01, ""), clientFrame(0x00, ""), clientFrame(0x80, "x")},
			msgs:   []message{textMsg("x")},
		},
		{
			name:   "fragments filling the read limit exactly",
			limit:  16,
			frames: [][]byte{clientFrame(0x01, "01234567"), clientFrame(0x80, "89abcdef")},
			msgs:   []message{textMsg("0123456789abcdef")},
		},
		{
			name:   "messages back to back",
			frames: [][]byte{clientFrame(0x81, "a"), clientFrame(0x01, "b"), clientFrame(0x80, "c"), clientFrame(0x82, "d"), clientFrame(0x81, "e")},
			msgs:   []message{textMsg("a"), textMsg("bc"), {OpBinary, []byte("d")}, textMsg("e")},
		},
		{name: "ping with a payload", frames: [][]byte{clientFrame(0x89, "are you there?")}, pongs: []string{"are you there?"}},
		{name: "empty ping", frames: [][]byte{clientFrame(0x89, "")}, pongs: []string{""}},
		{name: "ping with 125 bytes", frames: [][]byte{clientFrame(0x89, strings.Repeat("p", 125))}, pongs: []string{strings.Repeat("p", 125)}},
		{name: "ping with a non-minimal 64-bit length", frames: [][]byte{encodeFrame64(0x89, []byte("p"), true)}, pongs: []string{"p"}},
		{name: "pings in a row", frames: [][]byte{clientFrame(0x89, "1"), clientFrame(0x89, "2"), clientFrame(0x89, "3")}, pongs: []string{"1", "2", "3"}},
		{name: "unsolicited pong is ignored", frames: [][]byte{clientFrame(0x8a, "beat"), clientFrame(0x81, "after")}, msgs: []message{textMsg("after")}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			results := make(chan readResult, 1)
			ts := newTestServer(t, serveRead(tc.limit, results))
			rc := rawUpgrade(t, ts, nil)
			rc.send(t, append(tc.frames, clientFrame(0x88, closePayload(1000, "")))...)
			for i, want := range tc.pongs {
				f := rc.next(t)
				if f.op != OpPong || string(f.payload) != want {
					t.Fatalf("frame %d: got opcode %d with %s, want a pong with %q", i, f.op, short(f.payload), want)
				}
			}
			rc.expectClose(t, StatusNormalClosure)
			rc.expectEOF(t)
			res := recv(t, results)
			sameMessages(t, res.msgs, tc.msgs)
			wantCloseError(t, res.err, CloseError{Code: StatusNormalClosure, Remote: true})
		})
	}
}

// TestWriteTextFrames checks the frames WriteText puts on the wire: one
// final, unmasked text frame per message, in order, with minimal lengths.
func TestWriteTextFrames(t *testing.T) {
	sizes := []int{0, 1, 125, 126, 0xffff, 0x10000, 70000}
	msgs := make([][]byte, len(sizes))
	for i, n := range sizes {
		msgs[i] = bytes.Repeat([]byte{'a' + byte(i)}, n)
	}
	writeErr := make(chan error, 1)
	results := make(chan readResult, 1)
	ts := newTestServer(t, func(c *Conn, r *http.Request) {
		writeErr <- c.WriteText(time.Now().Add(testTimeout), msgs...)
		serveRead(0, results)(c, r)
	})
	rc := rawUpgrade(t, ts, nil)
	for i, want := range msgs {
		hdr, _ := rc.br.Peek(2)
		wantLen := byte(len(want))
		switch {
		case len(want) > 0xffff:
			wantLen = 127
		case len(want) > 125:
			wantLen = 126
		}
		if hdr[1] != wantLen {
			t.Errorf("message %d of %d bytes: length byte %d, want %d", i, len(want), hdr[1], wantLen)
		}
		f := rc.next(t)
		if f.op != OpText || !bytes.Equal(f.payload, want) {
			t.Fatalf("frame %d: got opcode %d with %s, want text %s", i, f.op, short(f.payload), short(want))
		}
	}
	if err := recv(t, writeErr); err != nil {
		t.Fatalf("WriteText: %v", err)
	}
	rc.send(t, clientFrame(0x88, closePayload(1000, "")))
	rc.expectClose(t, StatusNormalClosure)
	rc.expectEOF(t)
	wantCloseError(t, recv(t, results).err, CloseError{Code: 1000, Remote: true})
}

// TestWriteTextDeadline checks that a write past its deadline fails and
// sends nothing.
func TestWriteTextDeadline(t *testing.T) {
	writeErr := make(chan error, 1)
	results := make(chan readResult, 1)
	ts := newTestServer(t, func(c *Conn, r *http.Request) {
		writeErr <- c.WriteText(time.Now().Add(-time.Second), []byte("late"))
		serveRead(0, results)(c, r)
	})
	rc := rawUpgrade(t, ts, nil)
	if err := recv(t, writeErr); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("WriteText past its deadline: %v, want %v", err, os.ErrDeadlineExceeded)
	}
	rc.send(t, clientFrame(0x88, closePayload(1000, "")))
	rc.expectClose(t, StatusNormalClosure) // and no "late" before it
	rc.expectEOF(t)
	wantCloseError(t, recv(t, results).err, CloseError{Code: 1000, Remote: true})
}

// TestWriteTextShortDeadlines checks that a deadline kept from an earlier
// write never cuts a later one short: with timeouts under the one-second
// slack, an expired deadline in force is replaced.
func TestWriteTextShortDeadlines(t *testing.T) {
	writeErrs := make(chan error, 3)
	results := make(chan readResult, 1)
	ts := newTestServer(t, func(c *Conn, r *http.Request) {
		for _, m := range []string{"one", "two", "three"} {
			writeErrs <- c.WriteText(time.Now().Add(300*time.Millisecond), []byte(m))
			time.Sleep(400 * time.Millisecond) // the deadline in force expires
		}
		serveRead(0, results)(c, r)
	})
	rc := rawUpgrade(t, ts, nil)
	for _, want := range []string{"one", "two", "three"} {
		if err := recv(t, writeErrs); err != nil {
			t.Fatalf("WriteText %q: %v", want, err)
		}
		if f := rc.next(t); string(f.payload) != want {
			t.Fatalf("got %q, want %q", f.payload, want)
		}
	}
	rc.send(t, clientFrame(0x88, closePayload(1000, "")))
	rc.expectClose(t, StatusNormalClosure)
	wantCloseError(t, recv(t, results).err, CloseError{Code: 1000, Remote: true})
}

// TestCloseFromServer checks the server's side of a close it starts: one
// close frame, writes refused afterwards, a second Close ignored, and the
// peer's echo ending ReadMessage.
func TestCloseFromServer(t *testing.T) {
	type outcome struct {
		close1, close2, write error
	}
	outcomes := make(chan outcome, 1)
	results := make(chan readResult, 1)
	ts := newTestServer(t, func(c *Conn, r *http.Request) {
		var o outcome
		o.close1 = c.Close(StatusGoingAway, "server restart")
		o.close2 = c.Close(StatusNormalClosure, "again")
		o.write = c.WriteText(time.Now().Add(testTimeout), []byte("after close"))
		outcomes <- o
		serveRead(0, results)(c, r)
	})
	rc := rawUpgrade(t, ts, nil)
	o := recv(t, outcomes)
	if o.close1 != nil || o.close2 != nil {
		t.Errorf("Close: %v, then %v; want nil twice", o.close1, o.close2)
	}
	if o.write != ErrClosed {
		t.Errorf("WriteText after Close: %v, want ErrClosed", o.write)
	}
	if reason := rc.expectClose(t, StatusGoingAway); reason != "server restart" {
		t.Errorf("close reason %q", reason)
	}
	// A ping after the server's close is not answered: the server sends
	// nothing after its close frame.
	rc.send(t, clientFrame(0x89, "late ping"), clientFrame(0x88, closePayload(1001, "")))
	rc.expectEOF(t)
	wantCloseError(t, recv(t, results).err, CloseError{Code: StatusGoingAway, Remote: true})
}

// TestCloseReasonTruncated checks that a reason longer than a close frame
// can carry is cut at a rune boundary.
func TestCloseReasonTruncated(t *testing.T) {
	long := strings.Repeat("é", 100) // 200 bytes
	ts := newTestServer(t, func(c *Conn, r *http.Request) {
		_ = c.Close(StatusPolicyViolation, long)
		c.Linger()
	})
	rc := rawUpgrade(t, ts, nil)
	reason := rc.expectClose(t, StatusPolicyViolation)
	if want := long[:122]; reason != want {
		t.Errorf("reason of %d bytes %q, want the first 61 runes", len(reason), reason)
	}
}

func TestCloseStatus(t *testing.T) {
	cases := []struct {
		name string
		err  error
		want StatusCode
	}{
		{"nil", nil, -1},
		{"EOF", io.EOF, -1},
		{"other error", errors.New("boom"), -1},
		{"close error", &CloseError{Code: StatusPolicyViolation}, StatusPolicyViolation},
		{"wrapped close error", fmt.Errorf("session: %w", &CloseError{Code: StatusMessageTooBig, Remote: true}), StatusMessageTooBig},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := CloseStatus(tc.err); got != tc.want {
				t.Errorf("CloseStatus(%v) = %d, want %d", tc.err, got, tc.want)
			}
		})
	}
}

func TestCloseErrorMessage(t *testing.T) {
	cases := []struct {
		err  *CloseError
		want string
	}{
		{&CloseError{Code: 1002, Reason: "unknown opcode"}, `ws: close sent: 1002 "unknown opcode"`},
		{&CloseError{Code: 1000, Reason: "bye", Remote: true}, `ws: close received: 1000 "bye"`},
	}
	for _, tc := range cases {
		if got := tc.err.Error(); got != tc.want {
			t.Errorf("Error() = %q, want %q", got, tc.want)
		}
	}
}

// dialCoder connects the coder/websocket client to ts.
func dialCoder(t *testing.T, ts *testServer) *websocket.Conn {
	t.Helper()
	c, _, err := websocket.Dial(testContext(t), ts.wsURL(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.CloseNow() })
	c.SetReadLimit(1 << 20)
	return c
}

// serveEcho reports every message it reads on got and writes text
// messages back, until ReadMessage fails; the error goes to done.
func serveEcho(got chan<- message, done chan<- error) func(*Conn, *http.Request) {
	return func(c *Conn, _ *http.Request) {
		for {
			op, p, err := c.ReadMessage()
			if err != nil {
				done <- err
				return
			}
			got <- message{op, p}
			if op == OpText {
				if err := c.WriteText(time.Now().Add(testTimeout), p); err != nil {
					done <- err
					return
				}
			}
		}
	}
}

func TestInteropTextBothWays(t *testing.T) {
	got := make(chan message, 16)
	done := make(chan error, 1)
	ts := newTestServer(t, func(c *Conn, r *http.Request) {
		if err := c.WriteText(time.Now().Add(testTimeout), []byte("welcome")); err != nil {
			done <- err
			return
		}
		serveEcho(got, done)(c, r)
	})
	ctx := testContext(t)
	c := dialCoder(t, ts)

	typ, p, err := c.Read(ctx)
	if err != nil || typ != websocket.MessageText || string(p) != "welcome" {
		t.Fatalf("first read: %v %q %v", typ, p, err)
	}
	large := bytes.Repeat([]byte("chatd€"), 60<<10/8) // 60 KiB of UTF-8
	for _, m := range [][]byte{[]byte("hello"), []byte(""), []byte("héllo 世界"), large} {
		if err := c.Write(ctx, websocket.MessageText, m); err != nil {
			t.Fatal(err)
		}
		if s := recv(t, got); s.op != OpText || !bytes.Equal(s.data, m) {
			t.Fatalf("server read opcode %d with %s, want text %s", s.op, short(s.data), short(m))
		}
		typ, p, err := c.Read(ctx)
		if err != nil || typ != websocket.MessageText || !bytes.Equal(p, m) {
			t.Fatalf("echo of %s: %v %s %v", short(m), typ, short(p), err)
		}
	}
	if err := c.Write(ctx, websocket.MessageBinary, []byte{0, 1, 0xff}); err != nil {
		t.Fatal(err)
	}
	if s := recv(t, got); s.op != OpBinary || !bytes.Equal(s.data, []byte{0, 1, 0xff}) {
		t.Fatalf("server read opcode %d with %s, want the binary message", s.op, short(s.data))
	}
	if err := c.Close(websocket.StatusNormalClosure, ""); err != nil {
		t.Fatalf("client Close: %v", err)
	}
	wantCloseError(t, recv(t, done), CloseError{Code: StatusNormalClosure, Remote: true})
}

// TestInteropFragmentedWriter checks messages the coder client sends as
// one frame per Write.
func TestInteropFragmentedWriter(t *testing.T) {
	cases := []struct {
		typ    websocket.MessageType
		parts  []string
		wantOp Opcode
	}{
		{websocket.MessageText, []string{"Hel", "lo, ", "world"}, OpText},
		{websocket.MessageText, []string{"caf\xc3", "\xa9"}, OpText},
		{websocket.MessageBinary, []string{"\x00\x01", "", "\x02"}, OpBinary},
		{websocket.MessageText, []string{strings.Repeat("a", 30000), strings.Repeat("b", 30000)}, OpText},
	}
	got := make(chan message, len(cases))
	done := make(chan error, 1)
	ts := newTestServer(t, func(c *Conn, r *http.Request) {
		for {
			op, p, err := c.ReadMessage()
			if err != nil {
				done <- err
				return
			}
			got <- message{op, p}
		}
	})
	ctx := testContext(t)
	c := dialCoder(t, ts)
	for _, tc := range cases {
		w, err := c.Writer(ctx, tc.typ)
		if err != nil {
			t.Fatal(err)
		}
		for _, part := range tc.parts {
			if _, err := io.WriteString(w, part); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		want := strings.Join(tc.parts, "")
		if m := recv(t, got); m.op != tc.wantOp || string(m.data) != want {
			t.Fatalf("server read opcode %d with %s, want opcode %d with %s", m.op, short(m.data), tc.wantOp, short([]byte(want)))
		}
	}
	if err := c.Close(websocket.StatusNormalClosure, ""); err != nil {
		t.Fatal(err)
	}
	wantCloseError(t, recv(t, done), CloseError{Code: StatusNormalClosure, Remote: true})
}

func TestInteropPing(t *testing.T) {
	done := make(chan error, 1)
	ts := newTestServer(t, serveEcho(make(chan message, 1), done))
	ctx := testContext(t)
	c := dialCoder(t, ts)
	readErr := make(chan error, 1)
	go func() {
		// coder's Ping waits for a reader to see the pong.
		_, _, err := c.Read(ctx)
		readErr <- err
	}()
	for i := range 3 {
		if err := c.Ping(ctx); err != nil {
			t.Fatalf("ping %d: %v", i, err)
		}
	}
	if err := c.Close(websocket.StatusNormalClosure, ""); err != nil {
		t.Fatalf("client Close: %v", err)
	}
	if err := recv(t, readErr); websocket.CloseStatus(err) != websocket.StatusNormalClosure {
		t.Errorf("client read ended with %v, want the echoed close 1000", err)
	}
	wantCloseError(t, recv(t, done), CloseError{Code: StatusNormalClosure, Remote: true})
}

func TestInteropServerClose(t *testing.T) {
	results := make(chan readResult, 1)
	writeErr := make(chan error, 1)
	ts := newTestServer(t, func(c *Conn, _ *http.Request) {
		if err := c.Close(StatusPolicyViolation, "idle timeout"); err != nil {
			writeErr <- err
			return
		}
		writeErr <- c.WriteText(time.Now().Add(testTimeout), []byte("too late"))
		results <- readAll(c)
	})
	ctx := testContext(t)
	c := dialCoder(t, ts)
	_, _, err := c.Read(ctx)
	var ce websocket.CloseError
	if !errors.As(err, &ce) {
		t.Fatalf("client read: %v, want a close error", err)
	}
	if ce.Code != websocket.StatusPolicyViolation || ce.Reason != "idle timeout" {
		t.Errorf("client saw close %d %q, want 1008 \"idle timeout\"", ce.Code, ce.Reason)
	}
	if err := recv(t, writeErr); err != ErrClosed {
		t.Errorf("WriteText after Close: %v, want ErrClosed", err)
	}
	res := recv(t, results)
	sameMessages(t, res.msgs, nil)
	// coder echoes the status and reason.
	wantCloseError(t, res.err, CloseError{Code: StatusPolicyViolation, Reason: "idle timeout", Remote: true})
}

func TestInteropClientClose(t *testing.T) {
	results := make(chan readResult, 1)
	ts := newTestServer(t, func(c *Conn, _ *http.Request) { results <- readAll(c) })
	c := dialCoder(t, ts)
	if err := c.Close(websocket.StatusNormalClosure, "bye"); err != nil {
		t.Fatalf("client Close: %v", err)
	}
	res := recv(t, results)
	sameMessages(t, res.msgs, nil)
	wantCloseError(t, res.err, CloseError{Code: StatusNormalClosure, Reason: "bye", Remote: true})
}

// TestInteropWriteTextBatch checks that every message of one WriteText
// call reaches the client as a message of its own, in order, including
// batches larger than one system call's worth.
func TestInteropWriteTextBatch(t *testing.T) {
	seq := func(n, size int) [][]byte {
		msgs := make([][]byte, n)
		for i := range msgs {
			m := fmt.Appendf(nil, "message %d ", i)
			for len(m) < size {
				m = append(m, byte('a'+i%26))
			}
			msgs[i] = m
		}
		return msgs
	}
	cases := []struct {
		name string
		msgs [][]byte
	}{
		{"one", seq(1, 10)},
		{"several", [][]byte{[]byte("first"), []byte("second"), []byte(""), []byte("fourth")}},
		{"a hundred small ones", seq(100, 200)},
		{"more than one batch", seq(5, 30000)},
		{"message larger than the pooled buffers", append(seq(2, 100), bytes.Repeat([]byte("x"), 300<<10))},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			writeErr := make(chan error, 1)
			done := make(chan error, 1)
			ts := newTestServer(t, func(c *Conn, r *http.Request) {
				writeErr <- c.WriteText(time.Now().Add(testTimeout), tc.msgs...)
				_, _, err := c.ReadMessage()
				done <- err
			})
			ctx := testContext(t)
			c := dialCoder(t, ts)
			for i, want := range tc.msgs {
				typ, p, err := c.Read(ctx)
				if err != nil {
					t.Fatalf("read %d: %v", i, err)
				}
				if typ != websocket.MessageText || !bytes.Equal(p, want) {
					t.Fatalf("message %d: %v %s, want text %s", i, typ, short(p), short(want))
				}
			}
			if err := recv(t, writeErr); err != nil {
				t.Fatalf("WriteText: %v", err)
			}
			if err := c.Close(websocket.StatusNormalClosure, ""); err != nil {
				t.Fatal(err)
			}
			wantCloseError(t, recv(t, done), CloseError{Code: StatusNormalClosure, Remote: true})
		})
	}
}

// TestConcurrentWriters checks that writes from several goroutines and the
// reader's pongs never interleave inside a frame.
func TestConcurrentWriters(t *testing.T) {
	const writers, rounds = 4, 50
	done := make(chan error, 1)
	ts := newTestServer(t, func(c *Conn, _ *http.Request) {
		var wg sync.WaitGroup
		for w := range writers {
			wg.Go(func() {
				for i := range rounds {
					a := fmt.Appendf(nil, "%d:%d:a:%s", w, i, strings.Repeat("x", 100*w))
					b := fmt.Appendf(nil, "%d:%d:b", w, i)
					if err := c.WriteText(time.Now().Add(testTimeout), a, b); err != nil {
						t.Errorf("writer %d: %v", w, err)
						return
					}
				}
			})
		}
		_, _, err := c.ReadMessage()
		wg.Wait()
		done <- err
	})
	ctx := testContext(t)
	c := dialCoder(t, ts)
	var pingers sync.WaitGroup
	pingers.Go(func() {
		for range 20 {
			if err := c.Ping(ctx); err != nil {
				t.Errorf("ping: %v", err)
				return
			}
		}
	})
	next := make([]int, writers) // next round expected from each writer
	half := make([]byte, writers)
	for range writers * rounds * 2 {
		_, p, err := c.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var w, i int
		var part string
		if _, err := fmt.Sscanf(strings.ReplaceAll(string(p), ":", " "), "%d %d %s", &w, &i, &part); err != nil {
			t.Fatalf("unexpected message %s", short(p))
		}
		wantPart := byte('a')
		if half[w] == 'a' {
			wantPart = 'b'
		}
		if i != next[w] || part[0] != wantPart {
			t.Fatalf("writer %d: got round %d part %s, want round %d part %c", w, i, part, next[w], wantPart)
		}
		if wantPart == 'b' {
			next[w]++
		}
		half[w] = wantPart
		if wantPart == 'a' && len(p) != len(fmt.Sprintf("%d:%d:a:", w, i))+100*w {
			t.Fatalf("writer %d round %d: message of %d bytes", w, i, len(p))
		}
	}
	// Keep reading while the pings finish, so their pongs are seen.
	readErr := make(chan error, 1)
	go func() {
		_, _, err := c.Read(ctx)
		readErr <- err
	}()
	pingers.Wait()
	if err := c.Close(websocket.StatusNormalClosure, ""); err != nil {
		t.Fatal(err)
	}
	<-readErr
	wantCloseError(t, recv(t, done), CloseError{Code: StatusNormalClosure, Remote: true})
}

// discardPeer is a loopback TCP connection whose far end reads and drops
// everything.
func discardPeer(b *testing.B) net.Conn {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		nc, err := ln.Accept()
		ln.Close()
		if err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, nc)
		nc.Close()
	}()
	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		nc.Close()
		<-done
	})
	return nc
}

// BenchmarkWriteText writes batches of 100 text messages of 200 bytes, as
// a fan-out to one connection does, to a loopback peer that discards them.
func BenchmarkWriteText(b *testing.B) {
	msgs := make([][]byte, 100)
	for i := range msgs {
		msgs[i] = bytes.Repeat([]byte{'m'}, 200)
	}
	for _, bc := range []struct {
		name   string
		client bool
	}{{"server", false}, {"client masked", true}} {
		b.Run(bc.name, func(b *testing.B) {
			c := newConn(discardPeer(b), nil, bc.client, 0, &BufferPool{})
			b.SetBytes(int64(len(msgs) * 200))
			b.ReportAllocs()
			for b.Loop() {
				if err := c.WriteText(time.Time{}, msgs...); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestCloseCutsBlockedWrite: a write blocked on a peer that reads nothing
// (under a 30 s deadline) does not hold a Close for its deadline: Close
// returns within a few seconds, the blocked write fails, and the
// connection is dropped (the peer sees its end).
func TestCloseCutsBlockedWrite(t *testing.T) {
	writeErr := make(chan error, 1)
	closed := make(chan time.Duration, 1)
	blocked := make(chan *Conn, 1)
	ts := newTestServer(t, func(c *Conn, r *http.Request) {
		blocked <- c
		big := bytes.Repeat([]byte("x"), 1<<20)
		for {
			if err := c.WriteText(time.Now().Add(30*time.Second), big); err != nil {
				writeErr <- err
				return
			}
		}
	})
	rc := rawUpgrade(t, ts, nil) // never reads until the end
	c := recv(t, blocked)
	time.Sleep(500 * time.Millisecond) // the socket buffers fill; the write blocks
	start := time.Now()
	go func() {
		c.Close(StatusGoingAway, "server shutting down")
		closed <- time.Since(start)
	}()
	select {
	case d := <-closed:
		t.Logf("Close returned after %s", d.Round(time.Millisecond))
	case <-time.After(10 * time.Second):
		t.Fatal("Close still blocked 10s after it began, behind a write with a 30s deadline")
	}
	select {
	case err := <-writeErr:
		t.Logf("blocked write: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the blocked write did not end within 10s of Close")
	}
	// The connection is dropped: draining what was buffered reaches its end.
	_ = rc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.Copy(io.Discard, rc.br); err != nil {
		t.Fatalf("reading to the end of the dropped connection: %v", err)
	}
}
