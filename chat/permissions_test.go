package chat

import (
	"strings"
	"testing"
)

func TestParsePattern(t *testing.T) {
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{"lobby", true},
		{"dm.alice.bob", true},
		{"team-42-*", true},
		{"*", true},
		{"a_b.C-9*", true},
		{strings.Repeat("a", 64), true},
		{strings.Repeat("a", 64) + "*", true},
		{"", false},
		{"**", false},
		{"team-*-x", false},
		{"*lobby", false},
		{"room:lobby", false},
		{"lob by", false},
		{"lobby/x", false},
		{"é", false},
		{strings.Repeat("a", 65), false},
		{strings.Repeat("a", 65) + "*", false},
	} {
		t.Run(tc.in, func(t *testing.T) {
			p, err := ParsePattern(tc.in)
			if (err == nil) != tc.ok {
				t.Fatalf("ParsePattern(%q) = %q, %v; want ok %v", tc.in, p, err, tc.ok)
			}
			if err == nil && string(p) != tc.in {
				t.Fatalf("ParsePattern(%q) = %q", tc.in, p)
			}
		})
	}
}

func TestPatternMatch(t *testing.T) {
	for _, tc := range []struct {
		pattern, room string
		want          bool
	}{
		{"lobby", "lobby", true},
		{"lobby", "lobby2", false},
		{"lobby", "Lobby", false},
		{"lobby", "lobb", false},
		{"team-42-*", "team-42-general", true},
		{"team-42-*", "team-42-", true},
		{"team-42-*", "team-42", false},
		{"team-42-*", "team-421-general", false},
		{"team-42-*", "xteam-42-general", false},
		{"*", "anything", true},
		{"dm.alice.bob", "dm.alice.bobby", false},
		{"dm.alice.*", "dm.alice.bob", true},
	} {
		if got := Pattern(tc.pattern).Match(tc.room); got != tc.want {
			t.Errorf("%q.Match(%q) = %v, want %v", tc.pattern, tc.room, got, tc.want)
		}
	}
}

func TestParsePatterns(t *testing.T) {
	ps, err := ParsePatterns([]string{"lobby", "team-*"})
	if err != nil || len(ps) != 2 {
		t.Fatalf("ParsePatterns = %v, %v", ps, err)
	}
	if !ps.Match("team-7") || !ps.Match("lobby") || ps.Match("other") {
		t.Errorf("%v matches wrongly", ps)
	}
	if ps, err := ParsePatterns(nil); err != nil || ps != nil || ps.Match("lobby") {
		t.Errorf("ParsePatterns(nil) = %v, %v; want nil, matching nothing", ps, err)
	}
	if _, err := ParsePatterns([]string{"lobby", "bad pattern"}); err == nil {
		t.Error("a list with an invalid pattern accepted")
	}
}

func TestGrants(t *testing.T) {
	g := Grants{
		Public:    Patterns{"lobby"},
		Rooms:     Patterns{"team-42-*", "dm.alice.bob"},
		ReadRooms: Patterns{"announcements", "team-42-*"},
	}
	for _, tc := range []struct {
		room          string
		canJoin, post bool
	}{
		{"lobby", true, true},
		{"team-42-general", true, true},
		{"dm.alice.bob", true, true},
		{"announcements", true, false},
		{"team-43-general", false, false},
		{"dm.alice.carol", false, false},
	} {
		if got := g.CanJoin(tc.room); got != tc.canJoin {
			t.Errorf("CanJoin(%q) = %v, want %v", tc.room, got, tc.canJoin)
		}
		if got := g.CanPost(tc.room); got != tc.post {
			t.Errorf("CanPost(%q) = %v, want %v", tc.room, got, tc.post)
		}
	}
	var zero Grants
	if zero.CanJoin("lobby") || zero.CanPost("lobby") {
		t.Error("the zero Grants allows a room")
	}
}

// FuzzParsePattern: a pattern that parses has a valid room name as its
// prefix, matches the rooms it names, and never panics.
func FuzzParsePattern(f *testing.F) {
	for _, s := range []string{"lobby", "team-42-*", "*", "", "**", "a*b", "dm.alice.bob"} {
		f.Add(s, "team-42-x")
	}
	f.Fuzz(func(t *testing.T, s, room string) {
		p, err := ParsePattern(s)
		if err != nil {
			return
		}
		prefix, star := strings.CutSuffix(string(p), "*")
		if strings.Contains(prefix, "*") || (!star && !ValidRoomName(prefix)) || (star && prefix != "" && !ValidRoomName(prefix)) {
			t.Fatalf("ParsePattern accepted %q", s)
		}
		if !star && !p.Match(prefix) {
			t.Fatalf("%q does not match itself", p)
		}
		if p.Match(room) != (room == prefix || (star && strings.HasPrefix(room, prefix))) {
			t.Fatalf("%q.Match(%q) = %v", p, room, p.Match(room))
		}
	})
}
