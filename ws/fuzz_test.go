package ws

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"testing/iotest"
	"time"
	"unicode/utf8"
)

// memConn is a net.Conn that reads from r and keeps what is written.
type memConn struct {
	r io.Reader
	w bytes.Buffer
}

func (m *memConn) Read(p []byte) (int, error)       { return m.r.Read(p) }
func (m *memConn) Write(p []byte) (int, error)      { return m.w.Write(p) }
func (m *memConn) Close() error                     { return nil }
func (m *memConn) LocalAddr() net.Addr              { return memAddr{} }
func (m *memConn) RemoteAddr() net.Addr             { return memAddr{} }
func (m *memConn) SetDeadline(time.Time) error      { return nil }
func (m *memConn) SetReadDeadline(time.Time) error  { return nil }
func (m *memConn) SetWriteDeadline(time.Time) error { return nil }

type memAddr struct{}

func (memAddr) Network() string { return "mem" }
func (memAddr) String() string  { return "mem" }

// decoded is everything a server connection did with one input stream.
type decoded struct {
	msgs    []message
	err     error
	written []byte
}

// decode reads stream as a server connection with the given read limit
// until ReadMessage fails. split chooses how the bytes reach the
// connection.
func decode(t *testing.T, stream []byte, limit int64, split string) decoded {
	t.Helper()
	var (
		r          io.Reader = bytes.NewReader(stream)
		pre        []byte
		readBuffer int
	)
	switch split {
	case "whole":
	case "one byte per read":
		r = iotest.OneByteReader(r)
	case "data with EOF":
		r = iotest.DataErrReader(iotest.HalfReader(r))
	case "buffered":
		readBuffer = 16
	case "half with the handshake":
		pre = stream[:len(stream)/2]
		r = bytes.NewReader(stream[len(stream)/2:])
	default:
		t.Fatalf("unknown split %q", split)
	}
	mc := &memConn{r: r}
	c := newConn(mc, pre, false, readBuffer, nil)
	c.SetReadLimit(limit)
	var d decoded
	// Every message takes at least a 2-byte header, so a stream of n bytes
	// holds at most n/2 of them.
	for calls := 0; ; calls++ {
		if calls > len(stream)/2+1 {
			t.Fatalf("%s: ReadMessage returned %d messages from %d bytes", split, calls, len(stream))
		}
		op, p, err := c.ReadMessage()
		if err != nil {
			d.err = err
			break
		}
		d.msgs = append(d.msgs, message{op, p})
	}
	d.written = mc.w.Bytes()
	return d
}

// checkDecoded checks what holds for any input: messages within the
// limit, text valid UTF-8, a known way to end, and on the wire only pongs
// and at most one close frame that matches the error.
func checkDecoded(t *testing.T, d decoded, limit int64) {
	t.Helper()
	for i, m := range d.msgs {
		if m.op != OpText && m.op != OpBinary {
			t.Fatalf("message %d with opcode %d", i, m.op)
		}
		if int64(len(m.data)) > limit {
			t.Fatalf("message %d of %d bytes over the limit of %d", i, len(m.data), limit)
		}
		if m.op == OpText && !utf8.Valid(m.data) {
			t.Fatalf("text message %d is not UTF-8: %q", i, m.data)
		}
	}
	var ce *CloseError
	switch {
	case errors.As(d.err, &ce):
	case d.err == io.EOF, d.err == io.ErrUnexpectedEOF:
	default:
		t.Fatalf("reading ended with %v (%T)", d.err, d.err)
	}
	r := bytes.NewReader(d.written)
	var closes []wireFrame
	for r.Len() > 0 {
		f, err := readWireFrame(r)
		if err != nil {
			t.Fatalf("the connection wrote a bad frame: %v", err)
		}
		if !f.fin || f.masked || len(f.payload) > 125 {
			t.Fatalf("the connection wrote fin=%v masked=%v with %d bytes", f.fin, f.masked, len(f.payload))
		}
		switch f.op {
		case OpPong:
			if len(closes) > 0 {
				t.Fatal("a pong after the close frame")
			}
		case OpClose:
			closes = append(closes, f)
		default:
			t.Fatalf("the connection wrote opcode %d", f.op)
		}
	}
	if ce == nil {
		if len(closes) != 0 {
			t.Fatalf("close frame %q written, but reading ended with %v", closes[0].payload, d.err)
		}
		return
	}
	if len(closes) != 1 {
		t.Fatalf("%d close frames written for %v", len(closes), ce)
	}
	want := closePayload(ce.Code, ce.Reason)
	if ce.Remote {
		// The peer's status is echoed without a reason.
		echo := ce.Code
		if echo == StatusNoStatusRcvd {
			echo = StatusNormalClosure
		}
		want = closePayload(echo, "")
	} else if ce.Code != StatusProtocolError && ce.Code != StatusInvalidPayload && ce.Code != StatusMessageTooBig {
		t.Fatalf("failed with status %d", ce.Code)
	}
	if string(closes[0].payload) != want {
		t.Fatalf("close frame %q written for %v", closes[0].payload, ce)
	}
}

func sameDecoded(t *testing.T, split string, got, want decoded) {
	t.Helper()
	if len(got.msgs) != len(want.msgs) {
		t.Fatalf("%s: %d messages, read whole: %d", split, len(got.msgs), len(want.msgs))
	}
	for i := range want.msgs {
		if got.msgs[i].op != want.msgs[i].op || !bytes.Equal(got.msgs[i].data, want.msgs[i].data) {
			t.Fatalf("%s: message %d differs", split, i)
		}
	}
	var gce, wce *CloseError
	switch {
	case errors.As(got.err, &gce) && errors.As(want.err, &wce):
		if *gce != *wce {
			t.Fatalf("%s: ended with %v, read whole: %v", split, gce, wce)
		}
	case got.err != want.err:
		t.Fatalf("%s: ended with %v, read whole: %v", split, got.err, want.err)
	}
	if !bytes.Equal(got.written, want.written) {
		t.Fatalf("%s: wrote %q, read whole: %q", split, got.written, want.written)
	}
}

// fuzzSeeds are client streams for FuzzReadMessage, with the read limit
// to apply: valid traffic, fragmented messages, and every violation of
// TestProtocolViolations.
func fuzzSeeds() []struct {
	limit  uint16
	stream []byte
} {
	type seed = struct {
		limit  uint16
		stream []byte
	}
	seeds := []seed{
		{1024, clientFrame(0x81, "hello")},
		{1024, cat(clientFrame(0x81, ""), clientFrame(0x82, "\x00\xff"), clientFrame(0x81, "héllo 世界"))},
		{1024, clientFrame(0x81, strings.Repeat("x", 300))},
		{1024, encodeFrame64(0x82, []byte("64-bit length"), true)},
		{1024, cat(clientFrame(0x01, "Hel"), clientFrame(0x89, "p1"), clientFrame(0x00, "lo, "), clientFrame(0x8a, "x"), clientFrame(0x80, "world"))},
		{1024, cat(clientFrame(0x01, "caf\xc3"), clientFrame(0x80, "\xa9"), clientFrame(0x88, closePayload(1000, "bye")))},
		{16, cat(clientFrame(0x01, "01234567"), clientFrame(0x80, "89abcdef"), clientFrame(0x81, "next"))},
		{1024, cat(clientFrame(0x89, "ping"), clientFrame(0x88, ""))},
		{1024, clientFrame(0x88, closePayload(4999, "à bientôt"))},
		{1024, clientFrame(0x81, "cut sh")[:9]},
		{0, clientFrame(0x81, "")},
	}
	for _, vc := range violationCases {
		limit := uint16(1024)
		if vc.limit != 0 {
			limit = uint16(vc.limit)
		}
		seeds = append(seeds, seed{limit, cat(vc.frames...)})
	}
	return seeds
}

// FuzzReadMessage feeds arbitrary bytes to a server connection as the
// client's stream. Whatever the bytes, reading must not panic, must end
// when the stream does, and must deliver only messages within the read
// limit (text ones valid UTF-8); how the bytes are split across reads must
// not change the outcome.
func FuzzReadMessage(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s.limit, s.stream)
	}
	f.Fuzz(func(t *testing.T, limit uint16, stream []byte) {
		want := decode(t, stream, int64(limit), "whole")
		checkDecoded(t, want, int64(limit))
		for _, split := range []string{"one byte per read", "data with EOF", "buffered", "half with the handshake"} {
			sameDecoded(t, split, decode(t, stream, int64(limit), split), want)
		}
	})
}

// TestReadMessageAnyReadSize decodes one stream with exact expectations,
// whatever the sizes of the reads that deliver it and wherever the bytes
// that came with the handshake end.
func TestReadMessageAnyReadSize(t *testing.T) {
	big := strings.Repeat("0123456789", 7000) // a 64-bit length
	stream := cat(
		clientFrame(0x81, ""),
		clientFrame(0x81, strings.Repeat("a", 125)),
		clientFrame(0x82, strings.Repeat("b", 126)),
		clientFrame(0x81, big),
		clientFrame(0x01, "Hel"), clientFrame(0x89, "ping"), clientFrame(0x80, "lo"),
		clientFrame(0x88, closePayload(1001, "bye")),
	)
	wantMsgs := []message{
		textMsg(""), textMsg(strings.Repeat("a", 125)), {OpBinary, []byte(strings.Repeat("b", 126))}, textMsg(big), textMsg("Hello"),
	}
	wantWritten := cat(encodeFrame(0x8a, []byte("ping"), false), encodeFrame(0x88, []byte(closePayload(1001, "")), false))
	check := func(t *testing.T, d decoded) {
		t.Helper()
		sameMessages(t, d.msgs, wantMsgs)
		wantCloseError(t, d.err, CloseError{Code: 1001, Reason: "bye", Remote: true})
		if !bytes.Equal(d.written, wantWritten) {
			t.Errorf("wrote %q, want %q", d.written, wantWritten)
		}
	}
	for _, split := range []string{"whole", "one byte per read", "data with EOF", "buffered", "half with the handshake"} {
		t.Run(split, func(t *testing.T) { check(t, decode(t, stream, 1<<20, split)) })
	}
	// Handshake leftovers ending at every offset of the first frames.
	for n := 1; n <= 200; n++ {
		mc := &memConn{r: bytes.NewReader(stream[n:])}
		c := newConn(mc, stream[:n], false, 0, nil)
		c.SetReadLimit(1 << 20)
		res := readAll(c)
		d := decoded{msgs: res.msgs, err: res.err, written: mc.w.Bytes()}
		t.Run(fmt.Sprintf("handshake leftovers of %d bytes", n), func(t *testing.T) { check(t, d) })
	}
	// A client connection reads the same stream unmasked.
	t.Run("client", func(t *testing.T) {
		var unmasked []byte
		for r := bytes.NewReader(stream); r.Len() > 0; {
			f, err := readWireFrame(r)
			if err != nil {
				t.Fatal(err)
			}
			b0 := byte(f.op)
			if f.fin {
				b0 |= 0x80
			}
			unmasked = append(unmasked, encodeFrame(b0, f.payload, false)...)
		}
		mc := &memConn{r: bufio.NewReader(bytes.NewReader(unmasked))}
		c := newConn(mc, nil, true, 0, nil)
		c.SetReadLimit(1 << 20)
		res := readAll(c)
		sameMessages(t, res.msgs, wantMsgs)
		wantCloseError(t, res.err, CloseError{Code: 1001, Reason: "bye", Remote: true})
		// The client's pong and close are masked.
		var got []wireFrame
		for r := bytes.NewReader(mc.w.Bytes()); r.Len() > 0; {
			f, err := readWireFrame(r)
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, f)
		}
		if len(got) != 2 || !got[0].masked || got[0].op != OpPong || string(got[0].payload) != "ping" ||
			!got[1].masked || got[1].op != OpClose || string(got[1].payload) != closePayload(1001, "") {
			t.Errorf("client wrote %+v", got)
		}
	})
}

// countingConn is a memConn that records the size of each write.
type countingConn struct {
	memConn
	writes []int
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes = append(c.writes, len(p))
	return c.memConn.Write(p)
}

// TestWriteTextBatching checks that WriteText gathers a batch into as few
// writes as its sizes allow: a write is issued once maxBatch bytes are
// gathered, so it never holds more than that plus one frame.
func TestWriteTextBatching(t *testing.T) {
	repeat := func(n, size int) [][]byte {
		msgs := make([][]byte, n)
		for i := range msgs {
			msgs[i] = bytes.Repeat([]byte{byte('a' + i%26)}, size)
		}
		return msgs
	}
	cases := []struct {
		name   string
		msgs   [][]byte
		writes int
	}{
		{"no messages", nil, 0},
		{"one", repeat(1, 10), 1},
		{"a hundred of 200 bytes", repeat(100, 200), 1},
		{"five of 30000 bytes", repeat(5, 30000), 2},
		{"one of 300 KB", repeat(1, 300<<10), 1},
	}
	for _, tc := range cases {
		for _, client := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/client=%v", tc.name, client), func(t *testing.T) {
				cc := &countingConn{memConn: memConn{r: bytes.NewReader(nil)}}
				c := newConn(cc, nil, client, 0, &BufferPool{})
				if err := c.WriteText(time.Time{}, tc.msgs...); err != nil {
					t.Fatal(err)
				}
				if len(cc.writes) != tc.writes {
					t.Errorf("%d writes %v, want %d", len(cc.writes), cc.writes, tc.writes)
				}
				largest := 0
				for _, m := range tc.msgs {
					largest = max(largest, maxHeader+len(m))
				}
				for i, n := range cc.writes {
					if i < len(cc.writes)-1 && n < maxBatch {
						t.Errorf("write %d of %d bytes before the batch was full", i, n)
					}
					if n > maxBatch+largest {
						t.Errorf("write %d of %d bytes, over a batch plus one frame", i, n)
					}
				}
				r := bytes.NewReader(cc.w.Bytes())
				for i, want := range tc.msgs {
					f, err := readWireFrame(r)
					if err != nil {
						t.Fatalf("frame %d: %v", i, err)
					}
					if !f.fin || f.op != OpText || f.masked != client || !bytes.Equal(f.payload, want) {
						t.Fatalf("frame %d: fin=%v opcode %d masked=%v with %s", i, f.fin, f.op, f.masked, short(f.payload))
					}
				}
				if r.Len() != 0 {
					t.Errorf("%d bytes after the last frame", r.Len())
				}
			})
		}
	}
}

// loopReader reads the same bytes over and over.
type loopReader struct {
	b   []byte
	off int
}

func (l *loopReader) Read(p []byte) (int, error) {
	n := copy(p, l.b[l.off:])
	l.off = (l.off + n) % len(l.b)
	return n, nil
}

// BenchmarkReadMessage reads masked 200-byte text frames, as a server
// reads its clients' messages, from an in-memory stream.
func BenchmarkReadMessage(b *testing.B) {
	payload := strings.Repeat("m", 200)
	var stream []byte
	for range 256 {
		stream = append(stream, clientFrame(0x81, payload)...)
	}
	for _, bc := range []struct {
		name       string
		readBuffer int
	}{{"socket read directly", 0}, {"read buffer", 4096}} {
		b.Run(bc.name, func(b *testing.B) {
			c := newConn(&memConn{r: &loopReader{b: stream}}, nil, false, bc.readBuffer, nil)
			b.SetBytes(int64(len(payload)))
			b.ReportAllocs()
			for b.Loop() {
				op, p, err := c.ReadMessage()
				if err != nil || op != OpText || len(p) != len(payload) {
					b.Fatalf("ReadMessage: %d, %d bytes, %v", op, len(p), err)
				}
			}
		})
	}
}
