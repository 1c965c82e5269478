package chat

import (
	"bytes"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// countingConn records each Write the CorkConn makes on the socket.
type countingConn struct {
	net.Conn
	mu     sync.Mutex
	writes [][]byte
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.writes = append(c.writes, append([]byte(nil), p...))
	c.mu.Unlock()
	return len(p), nil
}

func (c *countingConn) SetWriteDeadline(time.Time) error { return nil }

func TestCorkConnCoalescesABatch(t *testing.T) {
	raw := &countingConn{}
	c := NewCorkConn(raw)
	c.Write([]byte("a"))
	c.Cork()
	c.Write([]byte("b"))
	c.Write([]byte("c"))
	if len(raw.writes) != 1 {
		t.Fatalf("corked writes reached the socket: %q", raw.writes)
	}
	if err := c.Uncork(time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("d"))
	want := []string{"a", "bc", "d"}
	if len(raw.writes) != len(want) {
		t.Fatalf("writes %q, want %q", raw.writes, want)
	}
	for i, w := range want {
		if string(raw.writes[i]) != w {
			t.Fatalf("writes %q, want %q", raw.writes, want)
		}
	}
	if c.buf != nil {
		t.Fatal("an uncorked connection keeps a buffer")
	}
}

// TestCorkConnKeepsBatchesWhole: frames written from another goroutine
// never land inside a batch.
func TestCorkConnKeepsBatchesWhole(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	c := NewCorkConn(a)
	const rounds = 200
	var got bytes.Buffer
	done := make(chan struct{})
	go func() {
		io.Copy(&got, b)
		close(done)
	}()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for i := 0; i < rounds; i++ {
			c.Cork()
			c.Write([]byte("<"))
			c.Write([]byte("="))
			c.Write([]byte(">"))
			if err := c.Uncork(time.Now().Add(5 * time.Second)); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	go func() {
		defer wg.Done()
		for i := 0; i < rounds; i++ {
			c.Write([]byte("x"))
		}
	}()
	wg.Wait()
	a.Close()
	<-done
	s := got.String()
	if bytes.Count(got.Bytes(), []byte("<=>")) != rounds || bytes.Count(got.Bytes(), []byte("x")) != rounds {
		t.Fatalf("batches were split or lost: %q", s)
	}
}
