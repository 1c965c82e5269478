package testsvc

import (
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// DelayProxy is a TCP proxy on a free loopback port in front of a server
// (a Redis), which holds back what its clients send: each chunk read from
// a client is forwarded to the server Delay(chunk) after it was read, in
// order on its connection, while the other connections go on. It models a
// connection held up on its way to the server, as by a lost packet's
// retransmission timeout or a congested path. Replies are not delayed.
type DelayProxy struct {
	ln     net.Listener
	target string
	delay  func(chunk []byte) time.Duration

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup // the accept loop and every connection's goroutines
}

// delayProxyQueue bounds the chunks a connection holds back; reading from
// the client waits while it is full.
const delayProxyQueue = 256

// StartDelayProxy starts a DelayProxy in front of target (host:port); delay
// (nil: none) tells how long to hold each chunk back. It is closed when t
// ends.
func StartDelayProxy(t testing.TB, target string, delay func(chunk []byte) time.Duration) *DelayProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testsvc: delay proxy: %v", err)
	}
	if delay == nil {
		delay = func([]byte) time.Duration { return 0 }
	}
	p := &DelayProxy{ln: ln, target: target, delay: delay, conns: make(map[net.Conn]struct{})}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.Close)
	return p
}

// Addr is the proxy's host:port.
func (p *DelayProxy) Addr() string { return p.ln.Addr().String() }

// RedisURL is the redis:// URL of database 0 through the proxy.
func (p *DelayProxy) RedisURL() string { return "redis://" + p.Addr() + "/0" }

// Close stops accepting, closes every proxied connection and waits for the
// proxy's goroutines.
func (p *DelayProxy) Close() {
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.ln.Close()
	p.wg.Wait()
}

// track registers c to be closed by Close; it reports false (and closes c)
// once the proxy is closed.
func (p *DelayProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		c.Close()
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *DelayProxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	c.Close()
}

func (p *DelayProxy) accept() {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return // closed
		}
		if !p.track(client) {
			return
		}
		p.wg.Add(1)
		go p.serve(client)
	}
}

// delayedChunk is a chunk from a client and when it is due at the server.
type delayedChunk struct {
	data []byte
	due  time.Time
}

// serve proxies one connection until either side ends it.
func (p *DelayProxy) serve(client net.Conn) {
	defer p.wg.Done()
	defer p.untrack(client)
	server, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil || !p.track(server) {
		return
	}
	defer p.untrack(server)

	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // replies, at once
		defer wg.Done()
		_, _ = io.Copy(client, server)
		client.Close()
		server.Close()
	}()
	queue := make(chan delayedChunk, delayProxyQueue)
	go func() { // requests, each when due
		defer wg.Done()
		for c := range queue {
			time.Sleep(time.Until(c.due))
			if _, err := server.Write(c.data); err != nil {
				break
			}
		}
		client.Close()
		server.Close()
		for range queue { // let the reader below finish
		}
	}()
	var last time.Time // a chunk is never due before the one read before it
	buf := make([]byte, 64<<10)
	for {
		n, err := client.Read(buf)
		if n > 0 {
			data := append([]byte(nil), buf[:n]...)
			due := time.Now().Add(p.delay(data))
			if due.Before(last) {
				due = last
			}
			last = due
			queue <- delayedChunk{data: data, due: due}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				server.Close()
			}
			break
		}
	}
	close(queue)
	wg.Wait()
}
