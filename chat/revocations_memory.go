package chat

import (
	"container/list"
	"context"
	"errors"
	"sync"
	"time"
)

// MemoryRevocationsConfig configures MemoryRevocations. The zero value of
// each field picks the default given in its comment.
type MemoryRevocationsConfig struct {
	// TTL is how long a revocation is remembered after Revoke. Zero: 24 h
	// and 1 min (chatd's default longest token lifetime, and a margin).
	TTL time.Duration
	// MaxUsers bounds the users whose revocation is remembered at once;
	// past it, Revoke fails with ErrRevocationsFull until older ones
	// expire. Zero: 100,000 (a few MB).
	MaxUsers int
}

// MemoryRevocations is the single-node Revocations: a map bounded by
// MaxUsers, each entry kept for TTL. Its methods are safe for concurrent
// use and do no I/O.
type MemoryRevocations struct {
	ttl      time.Duration
	maxUsers int
	now      func() time.Time

	mu sync.Mutex
	// users maps a user to its entry in order, which lists entries by
	// expiry, soonest first (every entry lives TTL from its last Revoke).
	users map[string]*list.Element
	order list.List // of *memoryRevocation
}

type memoryRevocation struct {
	user    string
	at      int64 // unix seconds
	expires time.Time
}

var _ Revocations = (*MemoryRevocations)(nil)

// NewMemoryRevocations returns an empty store configured by cfg.
func NewMemoryRevocations(cfg MemoryRevocationsConfig) (*MemoryRevocations, error) {
	if cfg.TTL == 0 {
		cfg.TTL = 24*time.Hour + time.Minute
	}
	if cfg.MaxUsers == 0 {
		cfg.MaxUsers = 100_000
	}
	if cfg.TTL < 0 || cfg.MaxUsers < 0 {
		return nil, errors.New("chat: memory revocations: TTL and MaxUsers must not be negative")
	}
	return &MemoryRevocations{ttl: cfg.TTL, maxUsers: cfg.MaxUsers, now: time.Now, users: make(map[string]*list.Element)}, nil
}

// expireLocked drops the entries whose time is up; mu is held.
func (m *MemoryRevocations) expireLocked(now time.Time) {
	for e := m.order.Front(); e != nil; e = m.order.Front() {
		r := e.Value.(*memoryRevocation)
		if now.Before(r.expires) {
			return
		}
		m.order.Remove(e)
		delete(m.users, r.user)
	}
}

// Revoke implements Revocations.
func (m *MemoryRevocations) Revoke(_ context.Context, user string, at time.Time) error {
	now := m.now()
	m.mu.Lock()
	defer m.mu.Unlock()
	m.expireLocked(now)
	sec := at.Unix()
	if e, ok := m.users[user]; ok {
		r := e.Value.(*memoryRevocation)
		r.at = max(r.at, sec)
		r.expires = now.Add(m.ttl)
		m.order.MoveToBack(e)
		return nil
	}
	if len(m.users) >= m.maxUsers {
		return ErrRevocationsFull
	}
	m.users[user] = m.order.PushBack(&memoryRevocation{user: user, at: sec, expires: now.Add(m.ttl)})
	return nil
}

// RevokedAt implements Revocations.
func (m *MemoryRevocations) RevokedAt(_ context.Context, user string) (time.Time, error) {
	now := m.now()
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.users[user]
	if !ok {
		return time.Time{}, nil
	}
	r := e.Value.(*memoryRevocation)
	if !now.Before(r.expires) {
		return time.Time{}, nil
	}
	return time.Unix(r.at, 0), nil
}
