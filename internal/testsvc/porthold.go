package testsvc

import (
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"
)

// portHold keeps a stopped server's loopback port taken until it starts
// again. Without it, another test process could start its own server on the
// freed port during an outage, and the clients of the stopped one would
// reconnect to a stranger. The hold accepts connections and closes them at
// once, so clients still see the server as down.
type portHold struct {
	ln   net.Listener
	wg   sync.WaitGroup
	once sync.Once
}

// holdPort takes 127.0.0.1:port, retrying briefly while the exiting server
// still has it.
func holdPort(port int) (*portHold, error) {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	var ln net.Listener
	var err error
	for deadline := time.Now().Add(5 * time.Second); ; {
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("hold port %d while the server is down: %w", port, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	h := &portHold{ln: ln}
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return h, nil
}

// release frees the port for the server to start on again. Safe on nil and
// more than once.
func (h *portHold) release() {
	if h == nil {
		return
	}
	h.once.Do(func() {
		h.ln.Close()
		h.wg.Wait()
	})
}
