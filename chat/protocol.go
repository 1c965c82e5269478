package chat

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"
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
	// EventDeleteMsg is a member's push deleting its own message, payload
	// {"id": ...}; EventMsgDeleted tells a room's members that a message
	// was taken down, payload {"id": ...}.
	EventDeleteMsg  = "delete_msg"
	EventMsgDeleted = "msg_deleted"

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
	d := frameDecoder{b: data}
	d.space()
	if !d.take('[') {
		return Frame{}, fmt.Errorf("%w: not a JSON array", errFrameShape)
	}
	var f Frame
	var ok bool
	if f.JoinRef, ok = d.ref(); !ok {
		return Frame{}, fmt.Errorf("%w: join_ref must be a string or null", errFrameShape)
	}
	if !d.take(',') {
		return Frame{}, errFrameLength
	}
	if f.Ref, ok = d.ref(); !ok {
		return Frame{}, fmt.Errorf("%w: ref must be a string or null", errFrameShape)
	}
	if !d.take(',') {
		return Frame{}, errFrameLength
	}
	if f.Topic, ok = d.str(); !ok || f.Topic == "" {
		return Frame{}, fmt.Errorf("%w: topic must be a non-empty string", errFrameShape)
	}
	if !d.take(',') {
		return Frame{}, errFrameLength
	}
	if f.Event, ok = d.str(); !ok || f.Event == "" {
		return Frame{}, fmt.Errorf("%w: event must be a non-empty string", errFrameShape)
	}
	if !d.take(',') {
		return Frame{}, errFrameLength
	}
	// The rest is the payload, one JSON value, and the closing bracket.
	rest := bytes.TrimRight(data[d.i:], jsonSpace)
	if len(rest) == 0 || rest[len(rest)-1] != ']' {
		return Frame{}, fmt.Errorf("%w: unterminated array", errFrameShape)
	}
	payload := bytes.TrimSpace(rest[:len(rest)-1])
	if len(payload) == 0 || !json.Valid(payload) {
		return Frame{}, fmt.Errorf("%w: want 5 elements, the last one a JSON value", errFrameShape)
	}
	f.Payload = payload
	return f, nil
}

var errFrameLength = fmt.Errorf("%w: want 5 elements", errFrameShape)

const jsonSpace = " \t\n\r"

// frameDecoder reads the fixed head of a frame: strings and nulls. It
// does not recurse, so decoding keeps a small stack.
type frameDecoder struct {
	b []byte
	i int
}

func (d *frameDecoder) space() {
	for d.i < len(d.b) {
		switch d.b[d.i] {
		case ' ', '\t', '\n', '\r':
			d.i++
		default:
			return
		}
	}
}

// take skips whitespace and c; false when the next byte is not c.
func (d *frameDecoder) take(c byte) bool {
	d.space()
	if d.i < len(d.b) && d.b[d.i] == c {
		d.i++
		d.space()
		return true
	}
	return false
}

// ref reads a string or null (as "").
func (d *frameDecoder) ref() (string, bool) {
	if bytes.HasPrefix(d.b[d.i:], []byte("null")) {
		d.i += 4
		return "", true
	}
	return d.str()
}

// str reads a JSON string.
func (d *frameDecoder) str() (string, bool) {
	if d.i >= len(d.b) || d.b[d.i] != '"' {
		return "", false
	}
	start := d.i
	escaped := false
	for j := start + 1; j < len(d.b); j++ {
		switch c := d.b[j]; {
		case c == '"':
			d.i = j + 1
			if raw := d.b[start+1 : j]; !escaped && utf8.Valid(raw) {
				return string(raw), true
			}
			// Escapes, or invalid UTF-8 to replace as encoding/json does.
			var s string
			if json.Unmarshal(d.b[start:j+1], &s) != nil {
				return "", false
			}
			return s, true
		case c == '\\':
			escaped = true
			j++
		case c < 0x20:
			return "", false
		}
	}
	return "", false
}

// stringMember returns the raw value of key in obj, a JSON object already
// known to be valid JSON; the last occurrence wins, as in encoding/json.
// ok is false when obj is not an object.
func stringMember(obj []byte, key string) (raw []byte, ok bool) {
	var v [1][]byte
	ok = objectMembers(obj, []string{key}, v[:])
	return v[0], ok
}

// objectMembers finds the raw values of keys in obj, a JSON object already
// known to be valid JSON, in one pass without recursion: vals[i] is
// keys[i]'s value, nil when absent (the last occurrence wins, as in
// encoding/json). It returns false when obj is not an object.
func objectMembers(obj []byte, keys []string, vals [][]byte) bool {
	d := frameDecoder{b: obj}
	d.space()
	if !d.take('{') {
		return false
	}
	if d.take('}') {
		return true
	}
	for {
		k, ok := d.keyIndex(keys)
		if !ok || !d.take(':') {
			return false
		}
		start := d.i
		d.skipValue()
		if k >= 0 {
			vals[k] = obj[start:d.i]
		}
		d.space()
		if d.take(',') {
			continue
		}
		return d.take('}')
	}
}

// keyIndex reads an object key and returns its index in keys, -1 when it
// is none of them; it allocates only for a key with escapes.
func (d *frameDecoder) keyIndex(keys []string) (int, bool) {
	start := d.i
	if d.i >= len(d.b) || d.b[d.i] != '"' {
		return -1, false
	}
	end := start + 1
	for end < len(d.b) && d.b[end] != '"' && d.b[end] != '\\' && d.b[end] >= 0x20 {
		end++
	}
	if end < len(d.b) && d.b[end] == '"' {
		d.i = end + 1
		for i, want := range keys {
			if string(d.b[start+1:end]) == want {
				return i, true
			}
		}
		return -1, true
	}
	k, ok := d.str()
	return slices.Index(keys, k), ok
}

// skipValue moves past one value of valid JSON, without recursion.
func (d *frameDecoder) skipValue() {
	depth := 0
	for d.i < len(d.b) {
		switch d.b[d.i] {
		case '"':
			d.i++
			for d.i < len(d.b) && d.b[d.i] != '"' {
				if d.b[d.i] == '\\' {
					d.i++
				}
				d.i++
			}
			d.i++
			if depth == 0 {
				return
			}
			continue
		case '{', '[':
			depth++
		case '}', ']':
			if depth == 0 {
				return // the end of the enclosing object
			}
			depth--
			if depth == 0 {
				d.i++
				return
			}
		case ',', ' ', '\t', '\n', '\r':
			if depth == 0 {
				return
			}
		}
		d.i++
	}
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

// encodeIDReply encodes the ok reply to a push: {"id": id}.
func encodeIDReply(f Frame, id string) []byte {
	b := append(make([]byte, 0, 64+len(id)), `{"status":"ok","response":{"id":`...)
	b = appendString(b, id)
	b = append(b, "}}"...)
	return AppendFrame(nil, f.JoinRef, f.Ref, f.Topic, EventReply, b)
}

// EncodeMessage encodes the new_msg broadcast of m to topic,
// [null, null, topic, "new_msg", m], without reflection.
func EncodeMessage(topic string, m Message) []byte {
	payload := appendMessage(make([]byte, 0, 128+len(m.Body)), m)
	return AppendFrame(make([]byte, 0, len(payload)+len(topic)+32), "", "", topic, EventNewMsg, payload)
}

// appendMessage appends m as encoding/json writes it.
func appendMessage(dst []byte, m Message) []byte {
	dst = append(dst, `{"id":`...)
	dst = appendString(dst, m.ID)
	dst = append(dst, `,"room":`...)
	dst = appendString(dst, m.Room)
	dst = append(dst, `,"user_id":`...)
	dst = appendString(dst, m.UserID)
	dst = append(dst, `,"body":`...)
	dst = appendString(dst, m.Body)
	dst = append(dst, `,"inserted_at":"`...)
	dst = m.InsertedAt.AppendFormat(dst, time.RFC3339Nano)
	return append(dst, `"}`...)
}

// decodeMessage reads a new_msg payload as appendMessage writes it,
// without reflection; anything else is left to encoding/json.
func decodeMessage(payload []byte) (Message, error) {
	var m Message
	var raw [5][]byte
	if !objectMembers(payload, []string{"id", "room", "user_id", "body", "inserted_at"}, raw[:]) {
		return slowDecodeMessage(payload)
	}
	for i, dst := range [...]*string{&m.ID, &m.Room, &m.UserID, &m.Body} {
		if len(raw[i]) == 0 || raw[i][0] != '"' {
			return slowDecodeMessage(payload)
		}
		d := frameDecoder{b: raw[i]}
		var ok bool
		if *dst, ok = d.str(); !ok {
			return slowDecodeMessage(payload)
		}
	}
	at := raw[4]
	if len(at) < 2 || at[0] != '"' || at[len(at)-1] != '"' {
		return slowDecodeMessage(payload)
	}
	t, err := time.Parse(time.RFC3339Nano, string(at[1:len(at)-1]))
	if err != nil {
		return slowDecodeMessage(payload)
	}
	m.InsertedAt = t
	return m, nil
}

func slowDecodeMessage(payload []byte) (Message, error) {
	var m Message
	err := json.Unmarshal(payload, &m)
	return m, err
}

// EncodeError encodes an error reply to f with e's stable reason.
func EncodeError(f Frame, e *Error) []byte {
	b, _ := json.Marshal(replyPayload{Status: "error", Response: reasonResponse{Reason: e.Reason}})
	return AppendFrame(nil, f.JoinRef, f.Ref, f.Topic, EventReply, b)
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
