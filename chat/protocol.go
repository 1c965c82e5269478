package chat

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"unicode/utf8"
)

// Phoenix Channels V2 JSON serializer: every text frame is the array
// [join_ref, ref, topic, event, payload]. join_ref and ref are strings or
// null; topic and event are non-empty strings; payload is a JSON object.

// Events of the protocol.
const (
	EventJoin      = "phx_join"
	EventLeave     = "phx_leave"
	EventReply     = "phx_reply"
	EventClose     = "phx_close"
	EventError     = "phx_error"
	EventHeartbeat = "heartbeat"
	EventNewMsg    = "new_msg"

	// TopicPhoenix is the socket's own topic (heartbeats).
	TopicPhoenix = "phoenix"
	// RoomPrefix starts every room topic: "room:<name>".
	RoomPrefix = "room:"
)

// Frame is one decoded protocol message. An empty JoinRef or Ref stands for
// null on the wire.
type Frame struct {
	JoinRef string
	Ref     string
	Topic   string
	Event   string
	Payload json.RawMessage
}

// errFrameShape is wrapped by every DecodeFrame error.
var errFrameShape = errors.New("chat: invalid frame")

// DecodeFrame parses one text frame. It fails when data is not a five-element
// JSON array with string-or-null refs and non-empty string topic and event.
// The payload is kept raw and is not validated beyond being JSON: a frame
// whose refs are readable can still get an error reply on its own ref.
func DecodeFrame(data []byte) (Frame, error) {
	var parts []json.RawMessage
	if err := json.Unmarshal(data, &parts); err != nil {
		return Frame{}, fmt.Errorf("%w: %v", errFrameShape, err)
	}
	if len(parts) != 5 {
		return Frame{}, fmt.Errorf("%w: want 5 elements, got %d", errFrameShape, len(parts))
	}
	var f Frame
	var err error
	if f.JoinRef, err = decodeRef(parts[0]); err != nil {
		return Frame{}, fmt.Errorf("%w: join_ref: %v", errFrameShape, err)
	}
	if f.Ref, err = decodeRef(parts[1]); err != nil {
		return Frame{}, fmt.Errorf("%w: ref: %v", errFrameShape, err)
	}
	if err := json.Unmarshal(parts[2], &f.Topic); err != nil || f.Topic == "" {
		return Frame{}, fmt.Errorf("%w: topic must be a non-empty string", errFrameShape)
	}
	if err := json.Unmarshal(parts[3], &f.Event); err != nil || f.Event == "" {
		return Frame{}, fmt.Errorf("%w: event must be a non-empty string", errFrameShape)
	}
	f.Payload = parts[4]
	return f, nil
}

func decodeRef(raw json.RawMessage) (string, error) {
	if bytes.Equal(raw, []byte("null")) {
		return "", nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", errors.New("must be a string or null")
	}
	return s, nil
}

// AppendFrame appends the encoding of [joinRef, ref, topic, event, payload]
// to dst. Empty refs encode as null. payload must be valid JSON.
func AppendFrame(dst []byte, joinRef, ref, topic, event string, payload []byte) []byte {
	dst = append(dst, '[')
	dst = appendRef(dst, joinRef)
	dst = append(dst, ',')
	dst = appendRef(dst, ref)
	dst = append(dst, ',')
	dst = appendString(dst, topic)
	dst = append(dst, ',')
	dst = appendString(dst, event)
	dst = append(dst, ',')
	dst = append(dst, payload...)
	return append(dst, ']')
}

// EncodeFrame returns the encoding of f.
func EncodeFrame(f Frame) []byte {
	return AppendFrame(make([]byte, 0, 32+len(f.Topic)+len(f.Event)+len(f.Payload)), f.JoinRef, f.Ref, f.Topic, f.Event, f.Payload)
}

func appendRef(dst []byte, ref string) []byte {
	if ref == "" {
		return append(dst, "null"...)
	}
	return appendString(dst, ref)
}

// appendString appends s as a JSON string. Plain printable ASCII, the common
// case for refs, topics and events, is copied as it is.
func appendString(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c == '"' || c == '\\' || c >= utf8.RuneSelf {
			b, _ := json.Marshal(s) // a string always marshals
			return append(dst, b...)
		}
	}
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"')
}

// replyPayload is the payload of a phx_reply.
type replyPayload struct {
	Status   string `json:"status"`
	Response any    `json:"response"`
}

type reasonResponse struct {
	Reason string `json:"reason"`
}

var emptyObject = json.RawMessage("{}")

// EncodeReply encodes an ok reply to f carrying response (nil: {}).
func EncodeReply(f Frame, response any) []byte {
	if response == nil {
		response = emptyObject
	}
	b, err := json.Marshal(replyPayload{Status: "ok", Response: response})
	if err != nil {
		// Responses are built by the server from plain values; failing to
		// encode one is a bug, reported to the client as an error reply.
		return EncodeError(f, &Error{Reason: "internal error"})
	}
	return AppendFrame(nil, f.JoinRef, f.Ref, f.Topic, EventReply, b)
}

// EncodeError encodes an error reply to f with e's stable reason.
func EncodeError(f Frame, e *Error) []byte {
	b, _ := json.Marshal(replyPayload{Status: "error", Response: reasonResponse{Reason: e.Reason}})
	return AppendFrame(nil, f.JoinRef, f.Ref, f.Topic, EventReply, b)
}

// EncodeBroadcast encodes a server push [null, null, topic, event, payload].
func EncodeBroadcast(topic, event string, payload any) ([]byte, error) {
	b, err := json.Marshal(payload)
	if err != nil {
		return nil, fmt.Errorf("chat: encode %s: %w", event, err)
	}
	return AppendFrame(make([]byte, 0, len(b)+len(topic)+len(event)+20), "", "", topic, event, b), nil
}

// ValidRoomName reports whether name is 1-64 characters of [A-Za-z0-9_.-].
func ValidRoomName(name string) bool {
	if len(name) < 1 || len(name) > 64 {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '.', c == '-':
		default:
			return false
		}
	}
	return true
}

// RoomFromTopic returns the room name of a "room:<name>" topic, and whether
// topic is a valid room topic.
func RoomFromTopic(topic string) (string, bool) {
	if len(topic) <= len(RoomPrefix) || topic[:len(RoomPrefix)] != RoomPrefix {
		return "", false
	}
	name := topic[len(RoomPrefix):]
	return name, ValidRoomName(name)
}

// binaryPushHeader parses the header of a Phoenix V2 binary push
// (kind 0: join_ref, ref, topic and event lengths, then the strings), so that
// a binary frame can be answered on its own ref. ok is false when data is not
// such a push.
func binaryPushHeader(data []byte) (f Frame, ok bool) {
	if len(data) < 5 || data[0] != 0 {
		return Frame{}, false
	}
	n := [4]int{int(data[1]), int(data[2]), int(data[3]), int(data[4])}
	rest := data[5:]
	var s [4]string
	for i, l := range n {
		if len(rest) < l {
			return Frame{}, false
		}
		s[i], rest = string(rest[:l]), rest[l:]
		if !utf8.ValidString(s[i]) {
			return Frame{}, false
		}
	}
	if s[2] == "" {
		return Frame{}, false
	}
	return Frame{JoinRef: s[0], Ref: s[1], Topic: s[2], Event: s[3]}, true
}
