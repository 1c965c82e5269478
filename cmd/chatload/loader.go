package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"
)

// loader opens connections and runs the configured scenario.
type loader struct {
	cfg     *config
	log     io.Writer
	clients []*http.Client // one per source address
	next    atomic.Uint64
	hist    histogram // end-to-end latency of deliveries

	delivered  atomic.Int64
	acked      atomic.Int64 // ok replies to pushes
	refused    atomic.Int64 // error replies to pushes
	sent       atomic.Int64
	dropped    atomic.Int64 // connections that ended during the run
	closing    atomic.Bool  // the run is over: connection ends are expected
	acksByRoom sync.Map     // room -> *atomic.Int64

	runStart time.Time
}

func newLoader(cfg *config, log io.Writer) (*loader, error) {
	l := &loader{cfg: cfg, log: log}
	sources := cfg.sources
	if len(sources) == 0 {
		n := cfg.conns
		if cfg.scenario != "idle" {
			n = cfg.rooms * cfg.members
		}
		sources = defaultSources(n)
	}
	for _, src := range sources {
		d := &net.Dialer{
			Timeout:   10 * time.Second,
			LocalAddr: &net.TCPAddr{IP: src.AsSlice()},
			Control:   bindAddressNoPort,
		}
		// Upgraded connections leave the transport: it pools nothing.
		l.clients = append(l.clients, &http.Client{Transport: &http.Transport{DialContext: d.DialContext}})
	}
	return l, nil
}

// bindAddressNoPort sets IP_BIND_ADDRESS_NO_PORT on a socket bound to a
// chosen source address, so the kernel picks its port at connect time,
// knowing the destination, instead of at bind time, where finding a free
// port among thousands in use costs more than the whole handshake.
func bindAddressNoPort(network, address string, rc syscall.RawConn) error {
	var serr error
	err := rc.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, ipBindAddressNoPort, 1)
	})
	if err != nil {
		return err
	}
	return serr
}

// ipBindAddressNoPort is IP_BIND_ADDRESS_NO_PORT (Linux 4.2).
const ipBindAddressNoPort = 24

// lconn is one load connection.
type lconn struct {
	ws   *websocket.Conn
	room string
	ref  atomic.Uint64
}

func (l *loader) token(user string) (string, error) {
	secret := l.cfg.secret
	if secret == "" {
		secret = devSecret
	}
	// chatd refuses tokens without iat, or living longer than its
	// CHAT_MAX_TOKEN_TTL (24 h by default).
	now := time.Now()
	return jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.RegisteredClaims{
		Subject:   user,
		IssuedAt:  jwt.NewNumericDate(now),
		ExpiresAt: jwt.NewNumericDate(now.Add(2 * time.Hour)),
	}).SignedString([]byte(secret))
}

// dial connects user to target and joins room; the reader goroutine it
// starts records deliveries until ctx ends.
func (l *loader) dial(ctx context.Context, wg *sync.WaitGroup, target *url.URL, user, room string) (*lconn, time.Duration, error) {
	tok, err := l.token(user)
	if err != nil {
		return nil, 0, err
	}
	u := *target
	u.RawQuery = url.Values{"vsn": {"2.0.0"}, "token": {tok}}.Encode()
	client := l.clients[l.next.Add(1)%uint64(len(l.clients))]
	start := time.Now()
	dctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	conn, resp, err := websocket.Dial(dctx, u.String(), &websocket.DialOptions{HTTPClient: client})
	if resp != nil && resp.Body != nil {
		resp.Body.Close()
	}
	if err != nil {
		return nil, 0, fmt.Errorf("connect %s: %w", user, err)
	}
	conn.SetReadLimit(1 << 20)
	c := &lconn{ws: conn, room: room}
	joined := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		l.read(ctx, c, joined)
	}()
	if err := c.write([]byte(`["1","1","room:` + room + `","phx_join",{}]`)); err != nil {
		conn.CloseNow()
		return nil, 0, err
	}
	select {
	case err := <-joined:
		if err != nil {
			conn.CloseNow()
			return nil, 0, err
		}
	case <-dctx.Done():
		conn.CloseNow()
		return nil, 0, fmt.Errorf("join %s: %w", room, dctx.Err())
	}
	return c, time.Since(start), nil
}

func (c *lconn) write(frame []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return c.ws.Write(ctx, websocket.MessageText, frame)
}

var (
	bodyMark   = []byte(`"body":"t=`)
	replyOK    = []byte(`"phx_reply",{"status":"ok"`)
	replyError = []byte(`"phx_reply",{"status":"error"`)
	joinReply  = []byte(`["1","1",`)
)

// read records what c receives: the join reply, deliveries (with their
// latency from the timestamp in the body) and push replies.
func (l *loader) read(ctx context.Context, c *lconn, joined chan<- error) {
	defer c.ws.CloseNow()
	stop := context.AfterFunc(ctx, func() { c.ws.CloseNow() })
	defer stop()
	first := true
	for {
		_, data, err := c.ws.Read(context.Background())
		if err != nil {
			if ctx.Err() == nil && !l.closing.Load() {
				l.dropped.Add(1)
			}
			if first {
				joined <- err
			}
			return
		}
		now := time.Now()
		switch {
		case first && bytes.HasPrefix(data, joinReply) && bytes.Contains(data, []byte(`"phx_reply"`)):
			first = false
			if bytes.Contains(data, replyOK) {
				joined <- nil
			} else {
				joined <- fmt.Errorf("join refused: %s", data)
			}
		case bytes.HasPrefix(data, []byte(`[null,null,`)):
			if ns, ok := sentAt(data); ok {
				l.hist.add(now.Sub(time.Unix(0, ns)))
				l.delivered.Add(1)
			}
		case bytes.Contains(data, replyOK):
			l.acked.Add(1)
			l.roomAcks(c.room).Add(1)
		case bytes.Contains(data, replyError):
			l.refused.Add(1)
		}
	}
}

// sentAt returns the send time in a delivery's body, "t=<unix ns>;...".
// It looks for the body's ';' (one fast byte search; nothing else in the
// frame has one) and reads the digits before it, so the load tool's own
// core spends little per delivery.
func sentAt(data []byte) (int64, bool) {
	j := bytes.IndexByte(data, ';')
	if j < 0 {
		return 0, false
	}
	i := j
	for i > 0 && data[i-1] >= '0' && data[i-1] <= '9' {
		i--
	}
	if i < len(bodyMark) || !bytes.Equal(data[i-len(bodyMark):i], bodyMark) {
		return 0, false
	}
	ns, err := strconv.ParseInt(string(data[i:j]), 10, 64)
	return ns, err == nil
}

func (l *loader) roomAcks(room string) *atomic.Int64 {
	if v, ok := l.acksByRoom.Load(room); ok {
		return v.(*atomic.Int64)
	}
	v, _ := l.acksByRoom.LoadOrStore(room, new(atomic.Int64))
	return v.(*atomic.Int64)
}

// push sends one timestamped message from c.
func (l *loader) push(ctx context.Context, c *lconn, pad string) error {
	ref := c.ref.Add(1) + 1
	frame := fmt.Appendf(nil, `["1","%d","room:%s","new_msg",{"body":"t=%d;%s"}]`, ref, c.room, time.Now().UnixNano(), pad)
	l.sent.Add(1)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return c.write(frame)
}

// connectAll opens n connections with bounded concurrency; spec(i) names
// the i-th connection's target, user and room.
func (l *loader) connectAll(ctx context.Context, wg *sync.WaitGroup, n int, spec func(i int) (*url.URL, string, string)) ([]*lconn, time.Duration, *histogram, error) {
	conns := make([]*lconn, n)
	var connectHist histogram
	sem := make(chan struct{}, l.cfg.concurrency)
	var mu sync.Mutex
	var firstErr error
	var cwg sync.WaitGroup
	sctx, cancel := context.WithTimeout(ctx, l.cfg.setupTimeout)
	defer cancel()
	start := time.Now()
	for i := 0; i < n; i++ {
		select {
		case sem <- struct{}{}:
		case <-sctx.Done():
		}
		if sctx.Err() != nil {
			break
		}
		mu.Lock()
		failed := firstErr != nil
		mu.Unlock()
		if failed {
			<-sem
			break
		}
		cwg.Add(1)
		go func() {
			defer cwg.Done()
			defer func() { <-sem }()
			target, user, room := spec(i)
			c, took, err := l.dial(ctx, wg, target, user, room)
			if err != nil {
				mu.Lock()
				if firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
				return
			}
			connectHist.add(took)
			conns[i] = c
		}()
	}
	cwg.Wait()
	took := time.Since(start)
	if firstErr == nil && sctx.Err() != nil {
		firstErr = fmt.Errorf("connecting took longer than -setup-timeout %s", l.cfg.setupTimeout)
	}
	return conns, took, &connectHist, firstErr
}

var errNoConnections = errors.New("no connection could be opened")

// connected returns the opened connections.
func connected(conns []*lconn) []*lconn {
	out := conns[:0:0]
	for _, c := range conns {
		if c != nil {
			out = append(out, c)
		}
	}
	return out
}

func (l *loader) closeAll(conns []*lconn) {
	l.closing.Store(true)
	// Each close waits for the server's answer: they run a few at a time.
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	for _, c := range conns {
		if c == nil {
			continue
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			c.ws.Close(websocket.StatusNormalClosure, "load done")
		})
	}
	wg.Wait()
}
