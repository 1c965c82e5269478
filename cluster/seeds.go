package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
)

// LookupHostFunc resolves a host name to its addresses, like
// (*net.Resolver).LookupHost: every A and AAAA record, as text.
type LookupHostFunc func(ctx context.Context, host string) ([]string, error)

// ParseSeeds splits a seed list as written in CHAT_CLUSTER_JOIN: entries are
// separated by commas (or white space), surrounding space is trimmed and empty
// entries are dropped. It does not resolve or validate anything.
func ParseSeeds(s string) []string {
	fields := strings.FieldsFunc(s, func(r rune) bool {
		return r == ',' || r == ' ' || r == '\t' || r == '\n' || r == '\r'
	})
	if len(fields) == 0 {
		return nil
	}
	return fields
}

// splitSeed parses one seed, "host:port", "host" (then defaultPort applies),
// "[v6]:port" or a bare IPv6 address.
func splitSeed(seed string, defaultPort int) (host string, port int, err error) {
	seed = strings.TrimSpace(seed)
	if seed == "" {
		return "", 0, errors.New("empty seed")
	}
	var h, p string
	if ip := net.ParseIP(seed); ip != nil {
		// A bare IP, including an IPv6 one whose colons would confuse SplitHostPort.
		h = ip.String()
	} else if h, p, err = net.SplitHostPort(seed); err != nil {
		var addrErr *net.AddrError
		if !errors.As(err, &addrErr) || addrErr.Err != "missing port in address" {
			return "", 0, fmt.Errorf("seed %q: %w", seed, err)
		}
		h, p = seed, ""
	}
	if h == "" {
		return "", 0, fmt.Errorf("seed %q: empty host", seed)
	}
	port = defaultPort
	if p != "" {
		port, err = strconv.Atoi(p)
		if err != nil || port < 1 || port > 65535 {
			return "", 0, fmt.Errorf("seed %q: invalid port %q", seed, p)
		}
	}
	if port < 1 || port > 65535 {
		return "", 0, fmt.Errorf("seed %q: no port given and no default port", seed)
	}
	return h, port, nil
}

// validateSeeds checks the syntax of every seed without resolving anything.
func validateSeeds(seeds []string, defaultPort int) error {
	var errs []error
	for _, s := range seeds {
		if _, _, err := splitSeed(s, defaultPort); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// resolveSeeds turns seeds into a de-duplicated list of "ip:port" addresses.
// An IP seed is taken as is; a DNS name contributes every address lookup
// returns for it (a Kubernetes headless service lists one per pod), each with
// the seed's port. A seed without a port gets defaultPort.
//
// Resolution is best effort: the addresses of the seeds that did resolve are
// returned together with the errors of those that did not (joined), so one
// stale name never hides the others.
func resolveSeeds(ctx context.Context, seeds []string, defaultPort int, lookup LookupHostFunc) ([]string, error) {
	var (
		out  []string
		errs []error
		seen = make(map[string]bool)
	)
	add := func(ip net.IP, port int) {
		a := net.JoinHostPort(ip.String(), strconv.Itoa(port))
		if !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	for _, s := range seeds {
		host, port, err := splitSeed(s, defaultPort)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if ip := net.ParseIP(host); ip != nil {
			add(ip, port)
			continue
		}
		addrs, err := lookup(ctx, host)
		if err != nil {
			errs = append(errs, fmt.Errorf("resolve seed %q: %w", host, err))
			continue
		}
		n := 0
		for _, a := range addrs {
			// A resolver may return a zoned IPv6 address ("fe80::1%eth0").
			a, _, _ = strings.Cut(a, "%")
			if ip := net.ParseIP(a); ip != nil {
				add(ip, port)
				n++
			}
		}
		if n == 0 {
			errs = append(errs, fmt.Errorf("resolve seed %q: no addresses", host))
		}
	}
	return out, errors.Join(errs...)
}
