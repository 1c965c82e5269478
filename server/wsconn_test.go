package server

import (
	"bufio"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/chatd/chatd/chat"
)

// Opcodes and header bits of RFC 6455, section 5.2.
const (
	opText   = 0x1
	opBinary = 0x2
	opClose  = 0x8
	opPing   = 0x9
	bitFin   = 0x80
	bitRSV1  = 0x40
	bitRSV2  = 0x20
	bitRSV3  = 0x10
)

// wsFrame builds one client frame by hand: first is the header's first byte
// (FIN, RSV and opcode bits), and the payload is masked when masked is set.
func wsFrame(first byte, masked bool, payload []byte) []byte {
	b := []byte{first}
	var maskBit byte
	if masked {
		maskBit = 0x80
	}
	switch n := len(payload); {
	case n < 126:
		b = append(b, maskBit|byte(n))
	case n < 1<<16:
		b = append(b, maskBit|126)
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		b = append(b, maskBit|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	if !masked {
		return append(b, payload...)
	}
	var mask [4]byte
	rand.Read(mask[:])
	b = append(b, mask[:]...)
	for i, x := range payload {
		b = append(b, x^mask[i%4])
	}
	return b
}

// acceptKey is the Sec-WebSocket-Accept answering key (RFC 6455, 4.2.2).
func acceptKey(key string) string {
	h := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	return base64.StdEncoding.EncodeToString(h[:])
}

// The client's first frames may arrive with its upgrade request, in the
// same TCP segment: net/http has then read them into its buffer along with
// the request, and the connection must hand them to the WebSocket library
// before anything it reads from the socket.
func TestFirstFrameInTheUpgradeWrite(t *testing.T) {
	s := startServer(t, chat.Config{}, nil)
	u, _ := url.Parse(s.wsURL(mint(t, "alice")))
	nc, err := net.DialTimeout("tcp", u.Host, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	var k [16]byte
	rand.Read(k[:])
	key := base64.StdEncoding.EncodeToString(k[:])

	out := fmt.Appendf(nil, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n",
		u.RequestURI(), u.Host, key)
	out = append(out, wsFrame(bitFin|opText, true, chat.AppendFrame(nil, "1", "1", "room:lobby", chat.EventJoin, []byte(`{}`)))...)
	out = append(out, wsFrame(bitFin|opText, true, chat.AppendFrame(nil, "", "2", "phoenix", chat.EventHeartbeat, []byte(`{}`)))...)
	nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if n, err := nc.Write(out); err != nil || n != len(out) {
		t.Fatalf("wrote %d of %d bytes: %v", n, len(out), err)
	}

	br := bufio.NewReader(nc)
	nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: HTTP %d", resp.StatusCode)
	}
	if got, want := resp.Header.Get("Sec-WebSocket-Accept"), acceptKey(key); got != want {
		t.Fatalf("Sec-WebSocket-Accept %q, want %q", got, want)
	}
	raw := &rawClient{tb: t, nc: nc, br: br}

	replies := map[string]string{}
	for len(replies) < 2 {
		op, p, err := raw.read(5 * time.Second)
		if err != nil {
			t.Fatalf("replies so far %v: %v", replies, err)
		}
		if op != opText {
			t.Fatalf("opcode %#x before the replies", op)
		}
		f, err := chat.DecodeFrame(p)
		if err != nil {
			t.Fatalf("server frame %q: %v", p, err)
		}
		if f.Event == chat.EventReply {
			replies[f.Ref] = string(f.Payload)
		}
	}
	for ref, topic := range map[string]string{"1": "room:lobby", "2": "phoenix"} {
		if !strings.Contains(replies[ref], `"status":"ok"`) {
			t.Errorf("reply to %s (ref %s): %s", topic, ref, replies[ref])
		}
	}
	if got := s.hub.Stats().Connections; got != 1 {
		t.Fatalf("%d connections, want 1", got)
	}
}
