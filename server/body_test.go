package server

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/chatd/chatd/chat"
)

// TestBodyReadTimeout: a request that announces a body and never sends it
// (Content-Length: 1000, nothing) is answered and its connection closed
// once the body timeout passes, instead of holding it open for ever.
func TestBodyReadTimeout(t *testing.T) {
	log := testLogger(t)
	hub, err := chat.NewHub(chat.Config{}, chat.Options{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(Config{}, Options{Hub: hub, Logger: log}) // dev mode: POST /api/dev/token reads its body
	if err != nil {
		t.Fatal(err)
	}
	srv.bodyTimeout = 500 * time.Millisecond
	ts := httptest.NewUnstartedServer(nil)
	ts.Config = srv.httpSrv
	ts.Start()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		ts.Close()
	})
	nc, err := net.Dial("tcp", ts.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	fmt.Fprintf(nc, "POST /api/dev/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
	start := time.Now()
	_ = nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(nc), nil)
	if err != nil {
		t.Fatalf("no answer within 10s to a request whose body never comes: %v", err)
	}
	resp.Body.Close()
	t.Logf("answered %s after %s", resp.Status, time.Since(start).Round(time.Millisecond))
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("status %d, want 400", resp.StatusCode)
	}
}
