package cluster

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-sockaddr"
	"github.com/hashicorp/memberlist"
)

// Failure-detection profiles for MembershipConfig.Profile.
const (
	// ProfileLAN is memberlist.DefaultLANConfig: probe every 1 s, a dead node
	// is declared after roughly 5-6 s in a small cluster. For production.
	ProfileLAN = "lan"
	// ProfileWAN is memberlist.DefaultWANConfig: slower probes, longer timeouts.
	ProfileWAN = "wan"
	// ProfileLocal is memberlist.DefaultLocalConfig with a 500 ms probe
	// interval: a dead node is declared within about 2-3 s. For tests and for
	// clusters on one machine.
	ProfileLocal = "local"
)

const (
	// DefaultGossipPort is the memberlist port used when BindAddr is empty.
	DefaultGossipPort = 7946
	// DefaultGossipLabel is the label of chatd's gossip (MembershipConfig.Label).
	DefaultGossipLabel = "chatd"

	defaultRejoinInterval     = 5 * time.Second
	defaultSeedRejoinInterval = 30 * time.Second
	defaultMetaInterval       = 2 * time.Second
	// defaultLeaveTimeout bounds the graceful leave in Close when its context
	// has no deadline.
	defaultLeaveTimeout = 5 * time.Second
	// eventQueueSize bounds the queue between memberlist's callbacks and the
	// goroutine that logs events and runs OnLeave callbacks.
	eventQueueSize = 256
)

// MembershipConfig configures a Membership. The zero value of every field but
// NodeName is usable.
type MembershipConfig struct {
	// NodeName names this node in the cluster; it must be unique among live
	// nodes. Required.
	NodeName string
	// BindAddr is the gossip address, "ip:port", used for both TCP and UDP.
	// An empty host binds every interface; port 0 lets the kernel pick one
	// (see LocalAddr). Empty: ":7946".
	BindAddr string
	// AdvertiseAddr is the "ip" or "ip:port" other nodes reach this node at
	// (a Kubernetes pod IP, a NAT address). Empty: memberlist picks the bind
	// IP, or a private interface address when bound to all interfaces, and
	// the bound port.
	AdvertiseAddr string
	// Join lists the seeds: each "host:port", where host is an IP or a DNS
	// name every A/AAAA record of which is a seed (a Kubernetes headless
	// service such as "chatd-headless.ns.svc:7946"). A seed without a port
	// uses the bind port. Empty: the node does not join anyone; others may
	// join it.
	Join []string
	// LookupHost resolves seed names. Nil: net.DefaultResolver.LookupHost.
	LookupHost LookupHostFunc
	// RejoinInterval is how often a node that is alone (no other live
	// member) re-resolves the seeds and tries to join them. Zero: 5 s.
	RejoinInterval time.Duration
	// SeedRejoinInterval is how often a node that is not alone re-resolves
	// the seeds and joins those that are not live members (declared dead,
	// or never met), leaving out its own address. This is what merges the
	// two sides of a network partition once it heals: each side declared
	// the other dead, and memberlist alone never contacts a dead node
	// again. It costs little: in a healthy cluster every seed is a live
	// member and nothing is sent; otherwise one TCP push/pull of the member
	// list per lost seed (a seed that is really gone costs a connect
	// attempt, up to the profile's TCP timeout). It is checked every
	// RejoinInterval, so it is rounded up to a multiple of that. Zero: 30 s.
	SeedRejoinInterval time.Duration
	// Meta builds this node's metadata; it is called from a goroutine of the
	// Membership, at Start and every MetaInterval. A zero StartedAt is
	// replaced with the time Start was called. Nil: the node advertises only
	// StartedAt.
	Meta func() NodeMeta
	// MetaInterval is how often Meta is polled; changed metadata is
	// re-broadcast to the cluster. Zero: 2 s.
	MetaInterval time.Duration
	// Profile selects memberlist's timing: ProfileLAN, ProfileWAN or
	// ProfileLocal. Empty: ProfileLAN.
	Profile string
	// ProbeInterval overrides the profile's interval between failure probes;
	// the time to declare a node dead scales with it. Zero: the profile's.
	ProbeInterval time.Duration
	// SuspicionMult overrides the profile's suspicion multiplier: a suspect
	// node is declared dead after about SuspicionMult * ProbeInterval (times
	// log10 of the cluster size, for clusters above 10). Zero: the profile's.
	SuspicionMult int
	// SecretKey encrypts and authenticates every gossip packet and stream
	// (AES-GCM, memberlist's keyring): 16, 24 or 32 bytes for AES-128, -192
	// or -256. A node with another key, or none, cannot join, add members
	// or declare anyone dead: its messages are dropped. Every node of a
	// cluster must use the same key. Nil: gossip is plaintext and anyone
	// who reaches the gossip port is believed.
	SecretKey []byte
	// Label is written on every gossip packet and stream (and is the
	// encryption's authenticated data): a node with another label is kept
	// out, whatever its key. Empty: DefaultGossipLabel.
	Label string
	// Logger receives membership events and memberlist's own log lines
	// (errors and warnings at warn, the rest at debug). Nil: discarded.
	Logger *slog.Logger
}

// binds and joins.
func NewMembership(cfg MembershipConfig) (*Membership, error) {
	if cfg.NodeName == "" {
		return nil, errors.New("cluster: membership: NodeName is required")
	}
	if cfg.RejoinInterval < 0 || cfg.SeedRejoinInterval < 0 || cfg.MetaInterval < 0 || cfg.ProbeInterval < 0 || cfg.SuspicionMult < 0 {
		return nil, errors.New("cluster: membership: intervals and SuspicionMult must not be negative")
	}
	var mc *memberlist.Config
	switch cfg.Profile {
	case "", ProfileLAN:
		mc = memberlist.DefaultLANConfig()
	case ProfileWAN:
		mc = memberlist.DefaultWANConfig()
	case ProfileLocal:
		mc = memberlist.DefaultLocalConfig()
		mc.ProbeInterval = 500 * time.Millisecond
	default:
		return nil, fmt.Errorf("cluster: membership: unknown Profile %q (want %q, %q or %q)",
			cfg.Profile, ProfileLAN, ProfileWAN, ProfileLocal)
	}
	if cfg.ProbeInterval > 0 {
		mc.ProbeInterval = cfg.ProbeInterval
		if mc.ProbeTimeout >= mc.ProbeInterval {
			mc.ProbeTimeout = mc.ProbeInterval / 2
		}
	}
	if cfg.SuspicionMult > 0 {
		mc.SuspicionMult = cfg.SuspicionMult
	}
	if cfg.SecretKey != nil {
		if err := memberlist.ValidateKey(cfg.SecretKey); err != nil {
			return nil, fmt.Errorf("cluster: membership: SecretKey is %d bytes, want 16, 24 or 32 (AES-128, -192 or -256)", len(cfg.SecretKey))
		}
		// Copied: memberlist's keyring keeps the slice.
		mc.SecretKey = slices.Clone(cfg.SecretKey)
		// Both default to true; kept so: a plaintext or wrongly keyed
		// message is dropped, never believed.
		mc.GossipVerifyIncoming, mc.GossipVerifyOutgoing = true, true
	}
	mc.Label = cfg.Label
	if mc.Label == "" {
		mc.Label = DefaultGossipLabel
	}
	if len(mc.Label) > memberlist.LabelMaxSize {
		return nil, fmt.Errorf("cluster: membership: Label is %d bytes, over memberlist's %d", len(mc.Label), memberlist.LabelMaxSize)
	}

	bind := cfg.BindAddr
	if bind == "" {
		bind = ":" + strconv.Itoa(DefaultGossipPort)
	}
	bindIP, bindPort, err := splitIPPort(bind, -1)
	if err != nil {
		return nil, fmt.Errorf("cluster: membership: BindAddr: %w", err)
	}
	if bindIP == "" {
		bindIP = "0.0.0.0"
	}
	mc.Name = cfg.NodeName
	mc.BindAddr = bindIP
	mc.BindPort = bindPort
	mc.AdvertiseAddr = ""
	mc.AdvertisePort = bindPort
	if cfg.AdvertiseAddr != "" {
		advIP, advPort, err := splitIPPort(cfg.AdvertiseAddr, bindPort)
		if err != nil {
			return nil, fmt.Errorf("cluster: membership: AdvertiseAddr: %w", err)
		}
		if advIP == "" {
			return nil, fmt.Errorf("cluster: membership: AdvertiseAddr %q has no IP", cfg.AdvertiseAddr)
		}
		mc.AdvertiseAddr = advIP
		mc.AdvertisePort = advPort
	}
	if err := validateSeeds(cfg.Join, bindPort); err != nil {
		return nil, fmt.Errorf("cluster: membership: Join: %w", err)
	}

	m := &Membership{
		cfg:          cfg,
		log:          cfg.Logger,
		mlConf:       mc,
		lookup:       cfg.LookupHost,
		rejoinEvery:  cfg.RejoinInterval,
		seedsEvery:   cfg.SeedRejoinInterval,
		metaEvery:    cfg.MetaInterval,
		tombstoneTTL: mc.GossipToTheDeadTime,
		events:       make(chan memberEvent, eventQueueSize),
		kick:         make(chan struct{}, 1),
		members:      make(map[string]*Member),
		overflow:     make(map[string]memberEvent),
		stopDisp:     make(chan struct{}),
		metaDone:     make(chan struct{}),
		closed:       make(chan struct{}),
	}
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	if m.lookup == nil {
		m.lookup = net.DefaultResolver.LookupHost
	}
	if m.rejoinEvery == 0 {
		m.rejoinEvery = defaultRejoinInterval
	}
	if m.seedsEvery == 0 {
		m.seedsEvery = defaultSeedRejoinInterval
	}
	if m.metaEvery == 0 {
		m.metaEvery = defaultMetaInterval
	}
	if m.tombstoneTTL <= 0 {
		m.tombstoneTTL = 30 * time.Second
	}
	m.loopCtx, m.stopLoops = context.WithCancel(context.Background())

	// memberlist logs through a *log.Logger; bridge it into slog.
	mc.Logger = log.New(&logBridge{log: m.log.With("component", "memberlist")}, "", 0)
	mc.LogOutput = nil
	m.log = m.log.With("component", "cluster.membership")
	mc.Delegate = &metaDelegate{m: m}
	mc.Events = &eventDelegate{m: m}
	return m, nil
}

// splitIPPort parses "ip:port", ":port", "ip" (then defaultPort; -1 means a
// port is required) or a bare IPv6 address. The host must be an IP literal:
// memberlist binds and advertises IPs, not names.
func splitIPPort(s string, defaultPort int) (string, int, error) {
	if ip := net.ParseIP(s); ip != nil {
		if defaultPort < 0 {
			return "", 0, fmt.Errorf("%q has no port", s)
		}
		return ip.String(), defaultPort, nil
	}
	host, p, err := net.SplitHostPort(s)
	if err != nil {
		if defaultPort >= 0 && !strings.Contains(s, ":") {
			host, p = s, strconv.Itoa(defaultPort)
		} else {
			return "", 0, fmt.Errorf("%q: %w", s, err)
		}
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("%q: invalid port %q", s, p)
	}
	if host != "" {
		ip := net.ParseIP(host)
		if ip == nil {
			return "", 0, fmt.Errorf("%q: host must be an IP address", s)
		}
		host = ip.String()
	}
	return host, port, nil
}

func profileName(p string) string {
	if p == "" {
		return ProfileLAN
	}
	return p
}

// AdvertiseIP returns the IP other nodes reach this node's gossip at, as
// Start picks it: the IP of AdvertiseAddr, else the bind IP, else (bound
// to every interface) a private interface address, which memberlist
// picks the same way. It works before Start.
func (m *Membership) AdvertiseIP() (string, error) {
	switch ip := m.mlConf.BindAddr; {
	case m.mlConf.AdvertiseAddr != "":
		return m.mlConf.AdvertiseAddr, nil
	case ip != "0.0.0.0" && ip != "::":
		return ip, nil
	}
	ip, err := sockaddr.GetPrivateIP()
	if err != nil {
		return "", fmt.Errorf("cluster: membership: advertise address: %w", err)
	}
	if ip == "" {
		return "", errors.New("cluster: membership: no private IP address found to advertise; set AdvertiseAddr")
	}
	return ip, nil
}
