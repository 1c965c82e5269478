package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// config is what one chatload run does.
type config struct {
	urls        []*url.URL // ws:// endpoints, /socket/websocket added if missing
	scenario    string
	conns       int // idle: connections to open
	rooms       int
	members     int // per room
	publishers  int // fanout: publishing members
	rate        float64
	duration    time.Duration
	body        int // body size in bytes (at least the timestamp)
	secret      string
	sources     []netip.Addr
	concurrency int    // connects in flight
	serverPIDs  []int  // chatd processes on this machine: memory of the first, CPU of all
	redisAddr   string // host:port of the nodes' Redis, to report its CPU per message
	jsonOut     string
	cpuProfile  string
	allowRemote bool

	setupTimeout time.Duration
}

// devSecret is chatd's dev-mode signing secret: tokens for a node without
// CHAT_JWT_SECRET.
const devSecret = "chatd-dev-mode-insecure-secret"

func parseConfig(args []string, stderr io.Writer) (*config, error) {
	fs := flag.NewFlagSet("chatload", flag.ContinueOnError)
	fs.SetOutput(stderr)
	c := &config{}
	var urls, sources, pids string
	fs.StringVar(&urls, "url", "ws://127.0.0.1:4000", "comma list of chatd WebSocket URLs (crossnode: publishers on the first, members on the second)")
	fs.StringVar(&c.scenario, "scenario", "fanout", "idle, fanout, rooms or crossnode")
	fs.IntVar(&c.conns, "conns", 1000, "idle: connections to open, each joined to a room")
	fs.IntVar(&c.rooms, "rooms", 1, "rooms, crossnode: how many rooms")
	fs.IntVar(&c.members, "members", 100, "members per room")
	fs.IntVar(&c.publishers, "publishers", 4, "fanout/crossnode: how many connections publish (crossnode: spread over the rooms)")
	fs.Float64Var(&c.rate, "rate", 100, "messages per second published in all")
	fs.DurationVar(&c.duration, "duration", 10*time.Second, "how long to publish (and, for idle, to hold)")
	fs.IntVar(&c.body, "body", 64, "message body size in bytes")
	fs.StringVar(&c.secret, "secret", "", "the nodes' CHAT_JWT_SECRET (empty: dev mode)")
	fs.StringVar(&sources, "sources", "", "comma list of local source addresses to spread connections over (default: 127.0.0.1-127.0.0.N as needed for loopback targets)")
	fs.IntVar(&c.concurrency, "concurrency", 64, "connects in flight at once")
	fs.StringVar(&pids, "server-pid", "", "pid of the chatd process on this machine, to report its memory and CPU; a comma list adds up the CPU of several (memory: the first)")
	fs.StringVar(&c.redisAddr, "redis-addr", "", "host:port of the nodes' Redis on this machine, to report its CPU (INFO cpu) per accepted message")
	fs.StringVar(&c.jsonOut, "json", "", "write the results as JSON to this file")
	fs.BoolVar(&c.allowRemote, "allow-remote", false, "allow targets that are not loopback addresses")
	fs.DurationVar(&c.setupTimeout, "setup-timeout", 2*time.Minute, "how long connecting may take")
	fs.StringVar(&c.cpuProfile, "cpuprofile", "", "write the load tool's own CPU profile to this file")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	for _, raw := range strings.Split(urls, ",") {
		u, err := url.Parse(strings.TrimSpace(raw))
		if err != nil || u.Scheme != "ws" || u.Host == "" {
			return nil, fmt.Errorf("-url %q: want ws://host:port", raw)
		}
		if u.Path == "" || u.Path == "/" {
			u.Path = "/socket/websocket"
		}
		if !c.allowRemote {
			if err := checkLoopback(u.Hostname()); err != nil {
				return nil, err
			}
		}
		c.urls = append(c.urls, u)
	}
	if c.redisAddr != "" && !c.allowRemote {
		host, _, err := net.SplitHostPort(c.redisAddr)
		if err != nil {
			return nil, fmt.Errorf("-redis-addr %q: want host:port", c.redisAddr)
		}
		if err := checkLoopback(host); err != nil {
			return nil, err
		}
	}
	switch c.scenario {
	case "idle", "fanout", "rooms":
	case "crossnode":
		if len(c.urls) < 2 {
			return nil, errors.New("crossnode needs two -url values")
		}
	default:
		return nil, fmt.Errorf("-scenario %q: want idle, fanout, rooms or crossnode", c.scenario)
	}
	switch {
	case c.conns < 1, c.rooms < 1, c.members < 1, c.publishers < 1, c.concurrency < 1:
		return nil, errors.New("counts must be positive")
	case c.rate <= 0:
		return nil, errors.New("-rate must be positive")
	case c.duration <= 0 || c.duration > time.Hour:
		return nil, errors.New("-duration must be between 0 and 1h")
	case c.conns > 1_000_000 || c.rooms*c.members > 1_000_000:
		return nil, errors.New("at most 1,000,000 connections")
	}
	if c.body < 32 {
		c.body = 32
	}
	if pids != "" {
		for _, p := range strings.Split(pids, ",") {
			pid, err := strconv.Atoi(strings.TrimSpace(p))
			if err != nil || pid <= 0 {
				return nil, fmt.Errorf("-server-pid %q: want process ids", pids)
			}
			c.serverPIDs = append(c.serverPIDs, pid)
		}
	}
	if sources != "" {
		for _, s := range strings.Split(sources, ",") {
			a, err := netip.ParseAddr(strings.TrimSpace(s))
			if err != nil {
				return nil, fmt.Errorf("-sources: %w", err)
			}
			c.sources = append(c.sources, a)
		}
	}
	return c, nil
}

// checkLoopback refuses a target host that resolves to anything but
// loopback addresses.
func checkLoopback(host string) error {
	addrs, err := net.LookupHost(host)
	if err != nil {
		return fmt.Errorf("target %s: %w", host, err)
	}
	for _, a := range addrs {
		ip, err := netip.ParseAddr(a)
		if err != nil || !ip.IsLoopback() {
			return fmt.Errorf("target %s (%s) is not a loopback address; pass -allow-remote to load another machine", host, a)
		}
	}
	return nil
}

// defaultSources returns enough loopback source addresses for n
// connections, about 2,000 per address (far below the ephemeral port range).
func defaultSources(n int) []netip.Addr {
	// A few thousand connections per address: the kernel finds a free
	// port for a connect quickly while most of the range is unused.
	k := n/2000 + 1
	out := make([]netip.Addr, 0, k)
	for i := 1; i <= k && i < 255; i++ {
		out = append(out, netip.AddrFrom4([4]byte{127, 0, 0, byte(i)}))
	}
	return out
}

// raiseFileLimit raises the soft limit of open files to the hard limit.
func raiseFileLimit() (uint64, error) {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return 0, err
	}
	if l.Cur < l.Max {
		l.Cur = l.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
			return 0, err
		}
	}
	return l.Cur, nil
}
