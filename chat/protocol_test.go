package chat

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestDecodeFrame(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want Frame
		err  bool
	}{
		{"join", `["1","1","room:lobby","phx_join",{}]`, Frame{"1", "1", "room:lobby", "phx_join", json.RawMessage(`{}`)}, false},
		{"heartbeat null join_ref", `[null,"5","phoenix","heartbeat",{}]`, Frame{"", "5", "phoenix", "heartbeat", json.RawMessage(`{}`)}, false},
		{"spaces", ` [ "1" , null , "room:a" , "new_msg" , {"body":"x"} ] `, Frame{"1", "", "room:a", "new_msg", json.RawMessage(`{"body":"x"}`)}, false},
		{"payload kept raw", `["1","2","room:a","new_msg","str"]`, Frame{"1", "2", "room:a", "new_msg", json.RawMessage(`"str"`)}, false},
		{"not json", `hello`, Frame{}, true},
		{"object", `{}`, Frame{}, true},
		{"too short", `["1","2","t","e"]`, Frame{}, true},
		{"too long", `["1","2","t","e",{},1]`, Frame{}, true},
		{"numeric join_ref", `[1,"2","t","e",{}]`, Frame{}, true},
		{"numeric ref", `["1",2,"t","e",{}]`, Frame{}, true},
		{"null topic", `["1","2",null,"e",{}]`, Frame{}, true},
		{"empty event", `["1","2","t","",{}]`, Frame{}, true},
		{"trailing garbage", `["1","2","t","e",{}]x`, Frame{}, true},
		{"empty", ``, Frame{}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DecodeFrame([]byte(tc.in))
			if tc.err {
				if err == nil {
					t.Fatalf("want error, got %+v", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.JoinRef != tc.want.JoinRef || got.Ref != tc.want.Ref || got.Topic != tc.want.Topic ||
				got.Event != tc.want.Event || !bytes.Equal(got.Payload, tc.want.Payload) {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestEncodeFrame(t *testing.T) {
	f := Frame{JoinRef: "1", Ref: "2", Topic: "room:lobby", Event: "phx_reply", Payload: json.RawMessage(`{"status":"ok","response":{}}`)}
	if got, want := string(EncodeFrame(f)), `["1","2","room:lobby","phx_reply",{"status":"ok","response":{}}]`; got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
	// Refs that need escaping come back as they were sent.
	odd := Frame{JoinRef: "a\"b\\c\n\x00é", Ref: "</script>", Topic: "t", Event: "e", Payload: json.RawMessage(`{}`)}
	back, err := DecodeFrame(EncodeFrame(odd))
	if err != nil || back.JoinRef != odd.JoinRef || back.Ref != odd.Ref {
		t.Fatalf("round trip: %+v %v", back, err)
	}
}

func TestReplies(t *testing.T) {
	f := Frame{JoinRef: "1", Ref: "7", Topic: "room:x"}
	if got, want := string(EncodeReply(f, map[string]string{"id": "abc"})), `["1","7","room:x","phx_reply",{"status":"ok","response":{"id":"abc"}}]`; got != want {
		t.Fatalf("got %s", got)
	}
	if got, want := string(EncodeError(f, ErrBodyTooLong)), `["1","7","room:x","phx_reply",{"status":"error","response":{"reason":"body too long"}}]`; got != want {
		t.Fatalf("got %s", got)
	}
	msg := Message{ID: "id", Room: "x", UserID: "u", Body: "b", InsertedAt: time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC)}
	b := EncodeMessage("room:x", msg)
	if want := `[null,null,"room:x","new_msg",{"id":"id","room":"x","user_id":"u","body":"b","inserted_at":"2026-01-02T03:04:05.000006Z"}]`; string(b) != want {
		t.Fatalf("got %s", b)
	}
}

func TestRoomFromTopic(t *testing.T) {
	for topic, want := range map[string]bool{
		"room:lobby": true, "room:a": true, "room:A-b_c.9": true, "room:" + strings.Repeat("x", 64): true,
		"room:": false, "room:" + strings.Repeat("x", 65): false, "room:a b": false, "room:é": false,
		"room:a/b": false, "lobby": false, "rooms:a": false, "": false, "ROOM:a": false,
	} {
		if _, ok := RoomFromTopic(topic); ok != want {
			t.Errorf("RoomFromTopic(%q) = %v, want %v", topic, ok, want)
		}
	}
}

func TestBinaryPushHeader(t *testing.T) {
	data := append([]byte{0, 1, 2, 6, 7}, "1"+"22"+"room:a"+"new_msg"+"payload"...)
	f, ok := binaryPushHeader(data)
	if !ok || f.JoinRef != "1" || f.Ref != "22" || f.Topic != "room:a" || f.Event != "new_msg" {
		t.Fatalf("got %+v %v", f, ok)
	}
	for _, bad := range [][]byte{nil, {0}, {1, 0, 0, 1, 0, 'x'}, {0, 5, 0, 0, 0, 'a'}, {0, 0, 0, 0, 0}} {
		if _, ok := binaryPushHeader(bad); ok {
			t.Errorf("binaryPushHeader(%q) accepted", bad)
		}
	}
}

// FuzzDecodeFrame checks that no input panics the decoder, and that every
// frame it accepts re-encodes to a frame that decodes the same.
func FuzzDecodeFrame(f *testing.F) {
	for _, s := range []string{
		`["1","1","room:lobby","phx_join",{}]`,
		`[null,"5","phoenix","heartbeat",{}]`,
		`["1","2","room:lobby","new_msg",{"body":"hi"}]`,
		`["1","2","room:lobby","new_msg",{"body":"\u00e9\ud83d\ude00"}]`,
		`[null,null,"room:x","new_msg",{"id":"x","room":"x","user_id":"u","body":"b","inserted_at":"2026-01-01T00:00:00Z"}]`,
		`["1","2","t","e"]`, `[1,2,3,4,5]`, `{}`, `[]`, `null`, `"x"`, `["\"","\\","\n","\u0000",[]]`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fr, err := DecodeFrame(data)
		if err != nil {
			return
		}
		if fr.Topic == "" || fr.Event == "" {
			t.Fatalf("accepted a frame without topic or event: %q", data)
		}
		enc := EncodeFrame(fr)
		if !json.Valid(enc) {
			t.Fatalf("re-encoding of %q is not JSON: %q", data, enc)
		}
		back, err := DecodeFrame(enc)
		if err != nil {
			t.Fatalf("re-encoding of %q does not decode: %v", data, err)
		}
		if back.JoinRef != fr.JoinRef || back.Ref != fr.Ref || back.Topic != fr.Topic || back.Event != fr.Event {
			t.Fatalf("round trip changed %+v into %+v", fr, back)
		}
		RoomFromTopic(fr.Topic)
		isObject(fr.Payload)
	})
}

// FuzzBinaryPushHeader checks the binary header parser on any input.
func FuzzBinaryPushHeader(f *testing.F) {
	f.Add(append([]byte{0, 1, 2, 6, 7}, "1"+"22"+"room:a"+"new_msg"+"payload"...))
	f.Add([]byte{0, 255, 255, 255, 255})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		fr, ok := binaryPushHeader(data)
		if ok && (fr.Topic == "" || len(fr.JoinRef)+len(fr.Ref)+len(fr.Topic)+len(fr.Event)+5 > len(data)) {
			t.Fatalf("bad header accepted: %+v from %q", fr, data)
		}
	})
}

var sinkFrame Frame

func BenchmarkDecodeFrame(b *testing.B) {
	data := []byte(`["3","17","room:lobby","new_msg",{"body":"hello there, how is everyone doing today?"}]`)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		fr, err := DecodeFrame(data)
		if err != nil {
			b.Fatal(err)
		}
		sinkFrame = fr
	}
}

func benchMessage() Message {
	return Message{ID: "019a1fc9-86f6-7ef3-bb24-5e36c5233480", Room: "lobby", UserID: "alice",
		Body: "hello there, how is everyone doing today?", InsertedAt: time.Now().UTC()}
}

// BenchmarkEncodeMessage is the encoder messages take.
func BenchmarkEncodeMessage(b *testing.B) {
	msg := benchMessage()
	b.ReportAllocs()
	for b.Loop() {
		EncodeMessage("room:lobby", msg)
	}
}

func BenchmarkDecodeMessage(b *testing.B) {
	payload := appendMessage(nil, benchMessage())
	b.ReportAllocs()
	for b.Loop() {
		if _, err := decodeMessage(payload); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEncodeReply(b *testing.B) {
	f := Frame{JoinRef: "3", Ref: "17", Topic: "room:lobby"}
	resp := map[string]string{"id": "019a1fc9-86f6-7ef3-bb24-5e36c5233480"}
	b.ReportAllocs()
	for b.Loop() {
		EncodeReply(f, resp)
	}
}

// FuzzStringMember checks the scanner that reads a push's body against
// encoding/json: for every valid JSON object, the raw value it finds for a
// key is the one json.Unmarshal keeps (the last occurrence).
func FuzzStringMember(f *testing.F) {
	for _, seed := range []string{
		`{"body":"hi"}`,
		`{}`,
		` { "a" : [1, {"body": "inner"}], "body" : "outer" } `,
		`{"body":"x","body":"y"}`,
		`{"b\u006fdy":"escaped key"}`,
		`{"body":{"nested":["]","}"]},"z":null}`,
		`{"body":"a \"quoted\" \\ string"}`,
		`{"n":-1.5e3,"t":true,"f":false,"body":"last"}`,
		`[1,2]`,
		`"body"`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if !json.Valid(data) {
			return
		}
		raw, ok := stringMember(data, "body")
		var m map[string]json.RawMessage
		isObject := json.Unmarshal(data, &m) == nil && m != nil // "null" decodes into a map too
		if ok != isObject {
			t.Fatalf("stringMember(%q) ok=%v, encoding/json object=%v", data, ok, isObject)
		}
		if !ok {
			return
		}
		want, found := m["body"]
		if found != (raw != nil) || !bytes.Equal(bytes.TrimSpace(raw), bytes.TrimSpace(want)) {
			t.Fatalf("stringMember(%q) = %q, encoding/json has %q (found %v)", data, raw, want, found)
		}
	})
}

func TestDecodeFrameShapes(t *testing.T) {
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{`["1","2","room:a","new_msg",{"body":"hi"}]`, true},
		{` [ null , "2" , "phoenix" , "heartbeat" , {} ] `, true},
		{`["1","2","room:a","new_msg",{}]x`, false},
		{`["1","2","room:a","new_msg",{},3]`, false},
		{`["1","2","room:a","new_msg"]`, false},
		{`["1","2","room:a","new_msg",]`, false},
		{`[1,"2","room:a","new_msg",{}]`, false},
		{`["1","2","","new_msg",{}]`, false},
		{`["1","2","room:\u0061","new_msg",{"a":[1,{"b":"]"}]}]`, true},
		{`["1","2","room:a","new_msg",{"a":1]`, false},
		{"[\"1\",\"2\",\"room:\x01\",\"e\",{}]", false},
	} {
		f, err := DecodeFrame([]byte(tc.in))
		if (err == nil) != tc.ok {
			t.Errorf("DecodeFrame(%s): err %v, want ok=%v", tc.in, err, tc.ok)
		}
		if err == nil && !json.Valid(f.Payload) {
			t.Errorf("DecodeFrame(%s): payload %q is not JSON", tc.in, f.Payload)
		}
	}
	f, _ := DecodeFrame([]byte(`["1","2","room:\u0061","new_msg",{"a":[1,{"b":"]"}]}]`))
	if f.Topic != "room:a" || string(f.Payload) != `{"a":[1,{"b":"]"}]}` {
		t.Errorf("escaped topic or nested payload: %+v", f)
	}
}

// FuzzMessageCodec checks the new_msg encoder and decoder against
// encoding/json.
func FuzzMessageCodec(f *testing.F) {
	f.Add("0190f0a0-0000-7000-8000-000000000000", "lobby", "alice", "hello", int64(1763712345123456000))
	f.Add("x", "r", `a"<&>\u2028`, "é \x00 \xff", int64(0))
	f.Add("", "", "", "", int64(-62135596800000000))
	f.Fuzz(func(t *testing.T, id, room, user, body string, ns int64) {
		m := Message{ID: id, Room: room, UserID: user, Body: body, InsertedAt: time.Unix(0, ns).UTC()}
		got := appendMessage(nil, m)
		want, err := json.Marshal(m)
		if err != nil {
			return // a time encoding/json refuses
		}
		var a, b Message
		if err := json.Unmarshal(got, &a); err != nil {
			t.Fatalf("appendMessage wrote invalid JSON %s: %v", got, err)
		}
		if err := json.Unmarshal(want, &b); err != nil {
			t.Fatal(err)
		}
		if !a.InsertedAt.Equal(b.InsertedAt) || a.ID != b.ID || a.Room != b.Room || a.UserID != b.UserID || a.Body != b.Body {
			t.Fatalf("appendMessage = %s, encoding/json = %s", got, want)
		}
		for _, enc := range [][]byte{got, want} {
			d, err := decodeMessage(enc)
			var w Message
			werr := json.Unmarshal(enc, &w)
			if (err == nil) != (werr == nil) {
				t.Fatalf("decodeMessage(%s) err %v, encoding/json err %v", enc, err, werr)
			}
			if err == nil && (!d.InsertedAt.Equal(w.InsertedAt) || d.ID != w.ID || d.Room != w.Room || d.UserID != w.UserID || d.Body != w.Body) {
				t.Fatalf("decodeMessage(%s) = %+v, encoding/json = %+v", enc, d, w)
			}
		}
	})
}
