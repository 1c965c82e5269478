package chat

import (
	"fmt"
	"strings"
)

// A Pattern names rooms: a room name ("dm.alice.bob") matches that room
// only; a prefix ending in "*" ("team-42-*") matches every room whose name
// starts with the prefix, the prefix itself included; "*" matches every
// room.
type Pattern string

// ParsePattern validates s: a room name (1-64 characters of
// [A-Za-z0-9_.-]) or such a prefix, possibly empty, followed by "*".
func ParsePattern(s string) (Pattern, error) {
	if prefix, ok := strings.CutSuffix(s, "*"); ok {
		if prefix == "" || ValidRoomName(prefix) {
			return Pattern(s), nil
		}
	} else if ValidRoomName(s) {
		return Pattern(s), nil
	}
	return "", fmt.Errorf("chat: room pattern %q: want a room name of 1-64 characters of [A-Za-z0-9_.-], or such a prefix ending in *", s)
}

// Match reports whether room is one of the rooms p names.
func (p Pattern) Match(room string) bool {
	if prefix, ok := strings.CutSuffix(string(p), "*"); ok {
		return strings.HasPrefix(room, prefix)
	}
	return string(p) == room
}

// Patterns is a list of patterns; it matches a room any of them matches.
type Patterns []Pattern

// ParsePatterns validates every pattern of list (see ParsePattern). An
// empty list gives nil, which matches no room.
func ParsePatterns(list []string) (Patterns, error) {
	if len(list) == 0 {
		return nil, nil
	}
	ps := make(Patterns, 0, len(list))
	for _, s := range list {
		p, err := ParsePattern(s)
		if err != nil {
			return nil, err
		}
		ps = append(ps, p)
	}
	return ps, nil
}

// Match reports whether any pattern of ps matches room.
func (ps Patterns) Match(room string) bool {
	for _, p := range ps {
		if p.Match(room) {
			return true
		}
	}
	return false
}

// Grants says what one connection may do in which rooms. It comes from the
// server's public rooms and the connection's token alone, so every node
// decides the same without asking another. The zero Grants allows no room.
type Grants struct {
	// Public are the rooms any valid token may join, read and post in
	// (CHAT_PUBLIC_ROOMS); shared by every connection, never modified.
	Public Patterns
	// Rooms are the token's "rooms" claim: join, read and post.
	Rooms Patterns
	// ReadRooms are the token's "read_rooms" claim: join and read only.
	ReadRooms Patterns
}

// CanJoin reports whether the connection may join room and read its
// history and presence.
func (g Grants) CanJoin(room string) bool {
	return g.CanPost(room) || g.ReadRooms.Match(room)
}

// CanPost reports whether the connection may post in room.
func (g Grants) CanPost(room string) bool {
	return g.Public.Match(room) || g.Rooms.Match(room)
}
