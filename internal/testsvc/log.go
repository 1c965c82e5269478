package testsvc

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"
)

// Logger returns a logger that writes through t.Logf, so a test's log lines
// show only when it fails (or with -v). Lines logged after t has ended (a
// straggling goroutine) are dropped instead of panicking.
func Logger(t testing.TB) *slog.Logger {
	l, _ := CaptureLogger(t)
	return l
}

// CaptureLogger is Logger that also keeps every line (text format) in the
// returned Capture, for tests that assert on what was logged.
func CaptureLogger(t testing.TB) (*slog.Logger, *Capture) {
	c := &Capture{t: t}
	t.Cleanup(func() {
		c.mu.Lock()
		c.done = true
		c.mu.Unlock()
	})
	h := slog.NewTextHandler(&captureWriter{c: c}, &slog.HandlerOptions{Level: slog.LevelDebug})
	return slog.New(h), c
}

// Capture holds the lines a CaptureLogger logged.
type Capture struct {
	t    testing.TB
	mu   sync.Mutex
	done bool
	buf  bytes.Buffer
}

// String returns everything logged so far.
func (c *Capture) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.String()
}

// Contains reports whether some logged line contains every one of parts.
func (c *Capture) Contains(parts ...string) bool {
	for line := range strings.SplitSeq(c.String(), "\n") {
		ok := true
		for _, p := range parts {
			if !strings.Contains(line, p) {
				ok = false
				break
			}
		}
		if ok && line != "" {
			return true
		}
	}
	return false
}

type captureWriter struct{ c *Capture }

// Write receives exactly one record per call from slog's text handler.
func (w *captureWriter) Write(p []byte) (int, error) {
	w.c.mu.Lock()
	defer w.c.mu.Unlock()
	w.c.buf.Write(p)
	if !w.c.done {
		w.c.t.Logf("%s", bytes.TrimRight(p, "\n"))
	}
	return len(p), nil
}
