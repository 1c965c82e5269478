package chat_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/chatd/chatd/chat"
	"github.com/chatd/chatd/chat/chattest"
)

// The memory broker is single-node: it runs the single-node properties only.
func TestMemoryBroker(t *testing.T) {
	chattest.RunBrokerTests(t, func(t *testing.T) chat.Broker {
		return chat.NewMemoryBroker()
	})
}

func TestMemoryBrokerLog(t *testing.T) {
	chattest.RunLogTests(t, func(t *testing.T) chat.Broker {
		return chat.NewMemoryBroker()
	})
}

// The logs of all rooms together stay within MaxLogMessages (give or take
// the log being written), however many rooms are written at once: the
// least recently written are dropped whole.
func TestMemoryBrokerLogBound(t *testing.T) {
	b := chat.NewMemoryBrokerWith(chat.MemoryBrokerConfig{MaxLogMessages: 3000})
	if err := b.Run(func(string, []byte) {}, nil); err != nil {
		t.Fatal(err)
	}
	const rooms, writers, perWriter = 40, 8, 500
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			after := map[string]string{}
			for i := range perWriter {
				room := fmt.Sprintf("r%d", (w*perWriter+i)%rooms)
				id, err := chattest.PublishMessage(context.Background(), b, room, after[room], func(id string) []byte { return []byte(id) })
				if err != nil {
					t.Error(err)
					return
				}
				after[room] = id
			}
		}()
	}
	wg.Wait()
	total := 0
	for r := range rooms {
		lr, err := b.ReadLog(context.Background(), fmt.Sprintf("r%d", r), chat.LogQuery{Limit: 1})
		if err != nil {
			t.Fatal(err)
		}
		total += lr.Len
	}
	if total > 3000 || total < 3000-chat.MaxRecover-1 {
		t.Fatalf("the logs hold %d messages, want about 3000 (at most)", total)
	}
}
