package chat_test

import (
	"testing"

	"github.com/chatd/chatd/chat"
	"github.com/chatd/chatd/chat/chattest"
)

// The memory presence is single-node: one instance serves every node name,
// so the cross-node properties hold trivially and the rest are checked.
func TestMemoryPresence(t *testing.T) {
	p := chat.NewMemoryPresence()
	chattest.RunPresenceTests(t, func(*testing.T, string) chat.Presence { return p })
}
