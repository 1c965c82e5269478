package server

import (
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"github.com/chatd/chatd/chat"
)

// Every protocol violation of a raw client ends its connection with the
// status RFC 6455 gives it, read from the server's close frame; a binary
// frame is no violation: it is answered with an error and the connection
// stays.
func TestProtocolViolationCloseStatus(t *testing.T) {
	const readLimit = 1024
	join := chat.AppendFrame(nil, "1", "1", "room:lobby", chat.EventJoin, []byte(`{}`))
	for _, tc := range []struct {
		name  string
		frame []byte
		code  int // 0: not closed, a binary frame
	}{
		// RFC 6455 5.1: the server closes on an unmasked client frame.
		// coder/websocket returns an error without a close frame; the
		// server sends 1002 itself (wsConn.readError).
		{"unmasked", wsFrame(bitFin|opText, false, join), 1002},
		{"rsv1 without compression", wsFrame(bitFin|bitRSV1|opText, true, join), 1002},
		{"rsv2", wsFrame(bitFin|bitRSV2|opText, true, join), 1002},
		{"rsv3", wsFrame(bitFin|bitRSV3|opText, true, join), 1002},
		{"reserved data opcode", wsFrame(bitFin|0x3, true, join), 1002},
		{"reserved control opcode", wsFrame(bitFin|0xb, true, nil), 1002},
		{"fragmented ping", wsFrame(opPing, true, []byte("x")), 1002},
		{"ping over 125 bytes", wsFrame(bitFin|opPing, true, make([]byte, 126)), 1002},
		{"close over 125 bytes", wsFrame(bitFin|opClose, true, append([]byte{0x03, 0xe8}, make([]byte, 124)...)), 1002},
		{"continuation without a start", wsFrame(bitFin|0x0, true, join), 1002},
		{"over the read limit", wsFrame(bitFin|opText, true, make([]byte, readLimit+1)), 1009},
		// coder/websocket does not check UTF-8 (its Read returns the
		// bytes as sent); the server does, in wsConn.Read.
		{"invalid UTF-8", wsFrame(bitFin|opText, true, []byte("[null,\"1\",\"phoenix\",\"heartbeat\",{\"x\":\"\xff\xfe\"}]")), 1007},
		{"binary", wsFrame(bitFin|opBinary, true, []byte{0x07, 0x01, 0x02}), 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := startServer(t, chat.Config{ReadLimit: readLimit}, nil)
			raw := s.dialRaw(t, "mallory")
			raw.nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
			if _, err := raw.nc.Write(tc.frame); err != nil {
				t.Fatal(err)
			}
			if tc.code == 0 {
				expectRawError(t, raw, "binary frames not supported")
				// The connection works on.
				if err := raw.write(opText, chat.AppendFrame(nil, "", "9", "phoenix", chat.EventHeartbeat, []byte(`{}`))); err != nil {
					t.Fatal(err)
				}
				expectRawReply(t, raw, "9", `"status":"ok"`)
				return
			}
			if code := raw.readUntilClose(10 * time.Second); code != tc.code {
				t.Fatalf("close status %d, want %d", code, tc.code)
			}
			// Answer the close, as a client does, and hang up.
			raw.write(opClose, binary.BigEndian.AppendUint16(nil, uint16(tc.code)))
			raw.nc.Close()
			waitFor(t, func() bool { return s.hub.Stats().Connections == 0 })
		})
	}
}

// expectRawError reads frames until an error reply naming reason.
func expectRawError(tb testing.TB, raw *rawClient, reason string) {
	tb.Helper()
	expectRawReply(tb, raw, "", `"reason":"`+reason+`"`)
}

// expectRawReply reads frames until a reply to ref whose payload contains
// want; any other reply fails.
func expectRawReply(tb testing.TB, raw *rawClient, ref, want string) {
	tb.Helper()
	for {
		op, p, err := raw.read(5 * time.Second)
		if err != nil {
			tb.Fatalf("waiting for a reply to %q: %v", ref, err)
		}
		if op != opText {
			tb.Fatalf("opcode %#x, payload %q, waiting for a reply to %q", op, p, ref)
		}
		f, err := chat.DecodeFrame(p)
		if err != nil {
			tb.Fatalf("server frame %q: %v", p, err)
		}
		if f.Event != chat.EventReply {
			continue
		}
		if f.Ref != ref || !strings.Contains(string(f.Payload), want) {
			tb.Fatalf("reply %+v %s, want ref %q with %s", f, f.Payload, ref, want)
		}
		return
	}
}
