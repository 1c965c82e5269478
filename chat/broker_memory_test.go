package chat_test

import (
	"testing"

	"github.com/chatd/chatd/chat"
	"github.com/chatd/chatd/chat/chattest"
)

// The memory broker is single-node: it runs the single-node properties only.
func TestMemoryBroker(t *testing.T) {
	chattest.RunBrokerTests(t, func(t *testing.T, h chat.BrokerHandler) chat.Broker {
		return chat.NewMemoryBroker(h)
	})
}

func TestMemoryBrokerLog(t *testing.T) {
	chattest.RunLogTests(t, func(t *testing.T, h chat.BrokerHandler) chat.Broker {
		return chat.NewMemoryBroker(h)
	})
}
