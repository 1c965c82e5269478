package server

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// TrustedProxies is the set of networks (CHAT_TRUSTED_PROXIES) whose
// X-Forwarded-For and X-Real-IP headers are believed. A request whose
// direct peer is not in the set is taken at its word's absence: its
// forwarded headers are ignored, so a client cannot pick the address its
// logs and address-based limits are charged to. The zero value (and nil)
// trusts no one.
type TrustedProxies struct {
	prefixes []netip.Prefix
}

// ParseTrustedProxies parses a list of CIDRs ("10.0.0.0/8", "fd00::/8") and
// bare addresses ("127.0.0.1", "::1"). Empty items are skipped.
func ParseTrustedProxies(list []string) (*TrustedProxies, error) {
	p := &TrustedProxies{}
	for _, item := range list {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		if strings.Contains(item, "/") {
			pfx, err := netip.ParsePrefix(item)
			if err != nil {
				return nil, fmt.Errorf("trusted proxy %q: not a CIDR: %w", item, err)
			}
			p.prefixes = append(p.prefixes, pfx.Masked())
			continue
		}
		addr, err := netip.ParseAddr(item)
		if err != nil {
			return nil, fmt.Errorf("trusted proxy %q: not an IP address or CIDR: %w", item, err)
		}
		addr = addr.Unmap()
		p.prefixes = append(p.prefixes, netip.PrefixFrom(addr, addr.BitLen()))
	}
	return p, nil
}

// Empty reports whether no proxy is trusted.
func (p *TrustedProxies) Empty() bool { return p == nil || len(p.prefixes) == 0 }

// Trusted reports whether addr is a trusted proxy.
func (p *TrustedProxies) Trusted(addr netip.Addr) bool {
	if p == nil || !addr.IsValid() {
		return false
	}
	addr = addr.Unmap()
	for _, pfx := range p.prefixes {
		if pfx.Contains(addr) {
			return true
		}
	}
	return false
}

// ClientIP returns the address of the client that made r. It is the direct
// peer (r.RemoteAddr) unless that peer is a trusted proxy; then it is the
// right-most address of X-Forwarded-For that is not itself a trusted proxy
// (each proxy appends the peer it saw, so addresses left of the first
// untrusted one may be forged), else X-Real-IP, else the peer. A malformed
// forwarded entry stops the walk: the last address reached is returned.
func (p *TrustedProxies) ClientIP(r *http.Request) string {
	peer := peerAddr(r.RemoteAddr)
	if !peer.IsValid() {
		return r.RemoteAddr // not host:port (a test request, a unix socket)
	}
	if !p.Trusted(peer) {
		return peer.String()
	}
	if xff := r.Header.Values("X-Forwarded-For"); len(xff) > 0 {
		hops := strings.Split(strings.Join(xff, ","), ",")
		client := peer
		for i := len(hops) - 1; i >= 0; i-- {
			hop, err := netip.ParseAddr(stripPort(strings.TrimSpace(hops[i])))
			if err != nil {
				break
			}
			client = hop.Unmap()
			if !p.Trusted(client) {
				break
			}
		}
		return client.String()
	}
	if real, err := netip.ParseAddr(stripPort(strings.TrimSpace(r.Header.Get("X-Real-IP")))); err == nil {
		return real.Unmap().String()
	}
	return peer.String()
}

// peerAddr parses the IP of a "host:port" remote address.
func peerAddr(remote string) netip.Addr {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		host = remote
	}
	addr, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}
	}
	return addr.Unmap()
}

// stripPort drops a port from "1.2.3.4:5" and "[::1]:5" (some proxies
// forward with the port); a bare address is returned as is.
func stripPort(s string) string {
	if host, _, err := net.SplitHostPort(s); err == nil {
		return host
	}
	return strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")
}

type clientIPKey struct{}

// withClientIP records the client address of a request for ClientIP.
func withClientIP(ctx context.Context, ip string) context.Context {
	return context.WithValue(ctx, clientIPKey{}, ip)
}

// ClientIP returns the client address of a request served by Server (as
// the access log shows it, CHAT_TRUSTED_PROXIES applied), for rate limits
// keyed by address. It is r.RemoteAddr's host for a request that did not
// pass through Server's handler.
func ClientIP(r *http.Request) string {
	if ip, ok := r.Context().Value(clientIPKey{}).(string); ok {
		return ip
	}
	if a := peerAddr(r.RemoteAddr); a.IsValid() {
		return a.String()
	}
	return r.RemoteAddr
}
