package store

import (
	"context"
	"testing"
	"time"
)

func TestWatermarkWaitsForEarlierCommitsOnly(t *testing.T) {
	m := newWatermark()
	a, b, c := m.assign(), m.assign(), m.assign()
	m.finish(b)
	m.finish(c)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := m.wait(ctx); err == nil {
		t.Fatal("wait returned while the first commit is unfinished")
	}
	done := make(chan error, 1)
	target := m.mark()
	go func() { done <- m.waitFor(context.Background(), target) }()
	later := m.assign() // after the mark: not waited for
	m.finish(a)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if len(m.done) != 0 || m.low != later {
		t.Fatalf("low %d, done %v", m.low, m.done)
	}
	if err := newWatermark().wait(context.Background()); err != nil {
		t.Fatal("wait with nothing committed:", err)
	}
}
