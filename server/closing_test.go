package server

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/chatd/chatd/chat"
)

// rawClient speaks WebSocket frames by hand, so that it can do what no
// library client does: keep sending after the server's close frame.
type rawClient struct {
	tb testing.TB
	nc net.Conn
	br *bufio.Reader
}

func (s *testServer) dialRaw(tb testing.TB, user string) *rawClient {
	tb.Helper()
	u, _ := url.Parse(s.wsURL(mint(tb, user)))
	nc, err := net.DialTimeout("tcp", u.Host, 5*time.Second)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { nc.Close() })
	var key [16]byte
	rand.Read(key[:])
	fmt.Fprintf(nc, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n",
		u.RequestURI(), u.Host, base64.StdEncoding.EncodeToString(key[:]))
	br := bufio.NewReader(nc)
	nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		tb.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		tb.Fatalf("upgrade: HTTP %d", resp.StatusCode)
	}
	return &rawClient{tb: tb, nc: nc, br: br}
}

// write sends one masked, final frame of opcode op.
func (c *rawClient) write(op byte, payload []byte) error {
	c.nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, err := c.nc.Write(wsFrame(0x80|op, true, payload))
	return err
}

// read returns the next frame's opcode and payload.
func (c *rawClient) read(timeout time.Duration) (byte, []byte, error) {
	c.nc.SetReadDeadline(time.Now().Add(timeout))
	var h [2]byte
	if _, err := io.ReadFull(c.br, h[:]); err != nil {
		return 0, nil, err
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var l [2]byte
		if _, err := io.ReadFull(c.br, l[:]); err != nil {
			return 0, nil, err
		}
		n = uint64(binary.BigEndian.Uint16(l[:]))
	case 127:
		var l [8]byte
		if _, err := io.ReadFull(c.br, l[:]); err != nil {
			return 0, nil, err
		}
		n = binary.BigEndian.Uint64(l[:])
	}
	p := make([]byte, n)
	_, err := io.ReadFull(c.br, p)
	return h[0] & 0x0f, p, err
}

// readUntilClose reads frames until the server's close frame and returns
// its status code.
func (c *rawClient) readUntilClose(timeout time.Duration) int {
	c.tb.Helper()
	for {
		op, p, err := c.read(timeout)
		if err != nil {
			c.tb.Fatalf("no close frame from the server: %v", err)
		}
		if op == 0x8 {
			if len(p) < 2 {
				return 1005
			}
			return int(binary.BigEndian.Uint16(p))
		}
	}
}

// Frames that arrive after the server sent its close are not handled: a
// new_msg then would be published and stored while its reply is dropped,
// and the client would resend it (issue 13, item 12).
func TestFramesAfterServerCloseAreNotHandled(t *testing.T) {
	for _, tc := range []struct {
		name  string
		close func(s *testServer) // makes the server close the raw client
		code  int
	}{
		{"idle timeout", func(*testServer) {}, 1008},
		{"shutdown", func(s *testServer) {
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				s.Shutdown(ctx)
			}()
		}, 1001},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := startServer(t, chat.Config{IdleTimeout: 1500 * time.Millisecond}, nil)
			raw := s.dialRaw(t, "alice")
			if err := raw.write(0x1, chat.AppendFrame(nil, "1", "1", "room:lobby", chat.EventJoin, []byte(`{}`))); err != nil {
				t.Fatal(err)
			}
			for {
				_, p, err := raw.read(5 * time.Second)
				if err != nil {
					t.Fatalf("join: %v", err)
				}
				if f, _ := chat.DecodeFrame(p); f.Event == chat.EventReply && f.Ref == "1" {
					if !strings.Contains(string(f.Payload), `"ok"`) {
						t.Fatalf("join reply %s", f.Payload)
					}
					break
				}
			}
			tc.close(s)
			if code := raw.readUntilClose(10 * time.Second); code != tc.code {
				t.Fatalf("server closed with %d, want %d", code, tc.code)
			}
			// The client has not seen the close yet, as far as the server
			// knows: it goes on pushing, then answers the close.
			const n = 5
			for i := range n {
				f := chat.AppendFrame(nil, "1", fmt.Sprint(i+2), "room:lobby", chat.EventNewMsg, fmt.Appendf(nil, `{"body":"after close %d"}`, i))
				if err := raw.write(0x1, f); err != nil {
					t.Fatalf("push %d after close: %v", i, err)
				}
			}
			time.Sleep(200 * time.Millisecond)
			if err := raw.write(0x8, []byte{0x03, 0xe8}); err != nil {
				t.Fatal(err)
			}
			for {
				op, p, err := raw.read(10 * time.Second)
				if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || (err == nil && op == 0x8) {
					break
				}
				if err != nil {
					t.Fatalf("waiting for the connection to end: %v", err)
				}
				if f, _ := chat.DecodeFrame(p); f.Event != "" {
					t.Errorf("frame after close: %s", p)
				}
			}
			waitFor(t, func() bool { return s.hub.Stats().Connections == 0 })
			if st := s.hub.Stats(); st.MessagesIn != 0 {
				t.Fatalf("%d of %d pushes sent after the server's close were published", st.MessagesIn, n)
			}
		})
	}
}

// waitFor polls cond for up to 10 s.
func waitFor(tb testing.TB, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatal("condition not met in 10 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
