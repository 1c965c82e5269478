package server

import (
	"context"
	"errors"
	"net/http"
	"net/http/pprof"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/chatd/chatd/chat"
)

// Connection refusal reasons, the label values of
// chatd_connections_refused_total.
const (
	RefusedVersion     = "version"     // a missing or other vsn: 400
	RefusedDraining    = "draining"    // the node shuts down: 503
	RefusedAuth        = "auth"        // a bad or missing token: 401
	RefusedOrigin      = "origin"      // a foreign browser origin: 403
	RefusedLimit       = "limit"       // over CHAT_MAX_CONNS_PER_USER: 429
	RefusedAddrLimit   = "addr_limit"  // over CHAT_MAX_CONNS_PER_IP: 429
	RefusedUnavailable = "unavailable" // the limit could not be checked: 503
)

var refusalReasons = []string{RefusedVersion, RefusedDraining, RefusedAuth, RefusedOrigin, RefusedLimit, RefusedAddrLimit, RefusedUnavailable}

// MetricsSources are the components /metrics reads besides the hub. Each
// nil field leaves its metrics out. The functions are called on every
// scrape and must be cheap (the Stats methods are: atomics and short locks).
type MetricsSources struct {
	// Writer is the persistence queue (the store's writer).
	Writer func() QueueStats
	// Relay is the Redis relay.
	Relay func() RelayStats
	// PresenceEntries is how many presence entries this node tracks.
	PresenceEntries func() int
	// SlotsHeld is how many connection slots this node holds in the
	// cluster-wide connection limiter.
	SlotsHeld func() int
	// MemberStates is the state of every member of the cluster as
	// memberlist sees it: MemberAlive, MemberDead or MemberLeft.
	MemberStates func() []string
}

// The member states of MetricsSources.MemberStates (cluster.MemberState's
// values), each a label value of chatd_cluster_members.
const (
	MemberAlive = "alive"
	MemberDead  = "dead"
	MemberLeft  = "left"
)

// QueueStats are the persistence queue's figures /metrics reports.
type QueueStats struct {
	QueueDepth, QueueCapacity, InFlight           int
	Lag                                           time.Duration
	Written, Retries, Failures, Dropped, Rejected uint64
}

// RelayStats are the relay's figures /metrics reports.
type RelayStats struct {
	Published, Received, Reconnects int64
	// Rooms is how many rooms this node subscribes to.
	Rooms int
}

// Metrics is one node's Prometheus registry: a registry of its own (never
// the global default one) with the Go runtime and process collectors,
// histograms fed where latency is measured, and a collector that reads the
// components' Stats snapshots at scrape time, so the hot paths only bump
// the atomics they already had. Make it before the components it
// instruments (InstrumentBroker, ObserveBatch), then SetSources.
type Metrics struct {
	node string
	reg  *prometheus.Registry

	hub     atomic.Pointer[chat.Hub]
	sources atomic.Pointer[MetricsSources]

	refused map[string]prometheus.Counter

	relayPublish    prometheus.Histogram
	relayErrors     prometheus.Counter
	relayOutOfOrder prometheus.Counter
	batchSize       prometheus.Histogram
	writeSeconds    prometheus.Histogram
}

// NewMetrics returns the registry of the node named node.
func NewMetrics(node string) *Metrics {
	m := &Metrics{
		node:    node,
		reg:     prometheus.NewRegistry(),
		refused: make(map[string]prometheus.Counter, len(refusalReasons)),
		relayPublish: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "chatd_relay_publish_duration_seconds",
			Help:    "Time one publish to the relay (Redis, or in memory on a single node) took, failed ones included.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}),
		relayErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "chatd_relay_publish_errors_total",
			Help: "Publishes to the relay that failed (not counting ids refused as out of order, which are retried).",
		}),
		relayOutOfOrder: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "chatd_relay_publish_out_of_order_total",
			Help: "Publishes refused because a concurrent publisher took the room's next id; they are retried with a greater id.",
		}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "chatd_persist_batch_size",
			Help:    "Rows in each successful multi-row INSERT of the persistence queue.",
			Buckets: []float64{1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000},
		}),
		writeSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "chatd_persist_write_duration_seconds",
			Help:    "Duration of each successful batch INSERT.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
	}
	refused := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "chatd_connections_refused_total",
		Help: "WebSocket handshakes refused before the upgrade, by reason: version, draining, auth, origin, limit, unavailable.",
	}, []string{"reason"})
	for _, r := range refusalReasons {
		m.refused[r] = refused.WithLabelValues(r) // every reason shows, at 0 until it happens
	}
	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		refused, m.relayPublish, m.relayErrors, m.relayOutOfOrder, m.batchSize, m.writeSeconds,
		statsCollector{m},
	)
	return m
}

// Registry returns the registry, for tests and extra collectors.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// SetSources sets what the scrape reads besides the hub.
func (m *Metrics) SetSources(src MetricsSources) { m.sources.Store(&src) }

// setHub is called by New with the server's hub.
func (m *Metrics) setHub(h *chat.Hub) { m.hub.Store(h) }

// refuse counts a refused handshake; reason is one of the Refused*
// constants.
func (m *Metrics) refuse(reason string) {
	if c, ok := m.refused[reason]; ok {
		c.Inc()
	}
}

// ObserveBatch records one successful insert of the persistence queue; it
// is store.WriterConfig.OnBatch.
func (m *Metrics) ObserveBatch(rows int, took time.Duration) {
	m.batchSize.Observe(float64(rows))
	m.writeSeconds.Observe(took.Seconds())
}

// InstrumentBroker returns b with its Publish calls timed and their
// failures counted.
func (m *Metrics) InstrumentBroker(b chat.Broker) chat.Broker {
	return &timedBroker{Broker: b, m: m}
}

type timedBroker struct {
	chat.Broker
	m *Metrics
}

func (t *timedBroker) Publish(ctx context.Context, room, id string, data []byte) error {
	start := time.Now()
	err := t.Broker.Publish(ctx, room, id, data)
	t.m.relayPublish.Observe(time.Since(start).Seconds())
	if err != nil {
		var ooe *chat.OutOfOrderError
		if errors.As(err, &ooe) {
			t.m.relayOutOfOrder.Inc()
		} else {
			t.m.relayErrors.Inc()
		}
	}
	return err
}

// statsCollector turns the Stats snapshots into metrics at scrape time.
type statsCollector struct{ m *Metrics }

var (
	descConnections = prometheus.NewDesc("chatd_connections",
		"WebSocket connections open on this node.", []string{"node"}, nil)
	descUsers = prometheus.NewDesc("chatd_users",
		"Distinct users connected to this node.", nil, nil)
	descRooms = prometheus.NewDesc("chatd_rooms",
		"Rooms with at least one member on this node.", nil, nil)
	descConnects = prometheus.NewDesc("chatd_connects_total",
		"WebSocket connections accepted (upgraded) since start.", nil, nil)
	descReceived = prometheus.NewDesc("chatd_messages_received_total",
		"Chat messages accepted from this node's clients (published and queued for storage).", nil, nil)
	descMsgRefused = prometheus.NewDesc("chatd_messages_refused_total",
		"Pushes answered with an error, by reason: rate, body_too_long, invalid, overloaded, unavailable.", []string{"reason"}, nil)
	descDelivered = prometheus.NewDesc("chatd_messages_delivered_total",
		"Frames of rooms (messages, presence diffs) handed to local members' send queues.", nil, nil)
	descDropped = prometheus.NewDesc("chatd_messages_dropped_total",
		"Frames not delivered, by reason: slow_consumer (queued for a connection closed as too slow), invalid_relay_frame.", []string{"reason"}, nil)
	descSlow = prometheus.NewDesc("chatd_slow_consumers_total",
		"Connections closed because their send queue overflowed.", nil, nil)

	descQueueDepth = prometheus.NewDesc("chatd_persist_queue_depth",
		"Accepted messages waiting for a persistence worker.", nil, nil)
	descQueueCap = prometheus.NewDesc("chatd_persist_queue_capacity",
		"Places in the persistence queue (CHAT_PERSIST_QUEUE).", nil, nil)
	descInFlight = prometheus.NewDesc("chatd_persist_in_flight",
		"Messages held by persistence workers: being written or waiting for a retry.", nil, nil)
	descLag = prometheus.NewDesc("chatd_persist_lag_seconds",
		"How long the oldest message held by a worker has waited to be written (0 when idle).", nil, nil)
	descWritten = prometheus.NewDesc("chatd_persist_messages_written_total",
		"Messages written by successful inserts.", nil, nil)
	descRetries = prometheus.NewDesc("chatd_persist_retries_total",
		"Insert attempts made after a failure.", nil, nil)
	descFailures = prometheus.NewDesc("chatd_persist_failures_total",
		"Failed insert attempts.", nil, nil)
	descPDropped = prometheus.NewDesc("chatd_persist_dropped_total",
		"Accepted messages that can never be stored (refused by the database), each logged.", nil, nil)
	descRejected = prometheus.NewDesc("chatd_persist_rejected_total",
		"Pushes refused because the persistence queue was full (overloaded).", nil, nil)

	descRelayPublished = prometheus.NewDesc("chatd_relay_published_total",
		"Publications Redis accepted from this node.", nil, nil)
	descRelayReceived = prometheus.NewDesc("chatd_relay_received_total",
		"Publications this node received from Redis.", nil, nil)
	descRelayReconnects = prometheus.NewDesc("chatd_relay_reconnects_total",
		"Recoveries of the Redis pub/sub connection after a failure.", nil, nil)
	descRelayRooms = prometheus.NewDesc("chatd_relay_subscribed_rooms",
		"Rooms this node subscribes to on Redis.", nil, nil)

	descPresence = prometheus.NewDesc("chatd_presence_entries",
		"Presence entries (one per joined channel) tracked by this node.", nil, nil)
	descSlots = prometheus.NewDesc("chatd_connection_slots_held",
		"Cluster-wide connection slots held by this node.", nil, nil)
	descMembers = prometheus.NewDesc("chatd_cluster_members",
		"Cluster nodes this node knows, by memberlist state: alive, dead, left.", []string{"state"}, nil)

	descDependencyUp = prometheus.NewDesc("chatd_dependency_up",
		"1 when a shared dependency (database, redis) answered its check at this scrape, else 0. It does not decide readiness.", []string{"dependency"}, nil)
)

// depCollector checks the server's dependencies at scrape time (at once,
// each bounded by ReadyTimeout) as chatd_dependency_up.
type depCollector struct{ s *Server }

func (c depCollector) Describe(ch chan<- *prometheus.Desc) { ch <- descDependencyUp }

func (c depCollector) Collect(ch chan<- prometheus.Metric) {
	for i, err := range c.s.runChecks(context.Background()) {
		up := 1.0
		if err != nil {
			up = 0
		}
		ch <- prometheus.MustNewConstMetric(descDependencyUp, prometheus.GaugeValue, up, c.s.checks[i].Name)
	}
}

func (c statsCollector) Describe(ch chan<- *prometheus.Desc) {
	prometheus.DescribeByCollect(c, ch)
}

func (c statsCollector) Collect(ch chan<- prometheus.Metric) {
	m := c.m
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	if h := m.hub.Load(); h != nil {
		st := h.Stats()
		gauge(descConnections, float64(st.Connections), m.node)
		gauge(descUsers, float64(st.Users))
		gauge(descRooms, float64(st.Rooms))
		counter(descConnects, float64(st.Connects))
		counter(descReceived, float64(st.MessagesIn))
		counter(descDelivered, float64(st.Deliveries))
		counter(descSlow, float64(st.SlowConsumers))
		for reason, n := range st.Refused {
			counter(descMsgRefused, float64(n), reason)
		}
		for reason, n := range st.Dropped {
			counter(descDropped, float64(n), reason)
		}
	}
	src := m.sources.Load()
	if src == nil {
		return
	}
	if src.Writer != nil {
		ws := src.Writer()
		gauge(descQueueDepth, float64(ws.QueueDepth))
		gauge(descQueueCap, float64(ws.QueueCapacity))
		gauge(descInFlight, float64(ws.InFlight))
		gauge(descLag, ws.Lag.Seconds())
		counter(descWritten, float64(ws.Written))
		counter(descRetries, float64(ws.Retries))
		counter(descFailures, float64(ws.Failures))
		counter(descPDropped, float64(ws.Dropped))
		counter(descRejected, float64(ws.Rejected))
	}
	if src.Relay != nil {
		rs := src.Relay()
		counter(descRelayPublished, float64(rs.Published))
		counter(descRelayReceived, float64(rs.Received))
		counter(descRelayReconnects, float64(rs.Reconnects))
		gauge(descRelayRooms, float64(rs.Rooms))
	}
	if src.PresenceEntries != nil {
		gauge(descPresence, float64(src.PresenceEntries()))
	}
	if src.SlotsHeld != nil {
		gauge(descSlots, float64(src.SlotsHeld()))
	}
	if src.MemberStates != nil {
		counts := map[string]int{MemberAlive: 0, MemberDead: 0, MemberLeft: 0}
		for _, state := range src.MemberStates() {
			counts[state]++
		}
		for state, n := range counts {
			gauge(descMembers, float64(n), state)
		}
	}
}

// handleMetrics serves the registry in the Prometheus text format (or
// OpenMetrics when the scraper asks for it).
func (s *Server) handleMetrics() http.Handler {
	return promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{
		ErrorLog:          promErrorLog{s},
		EnableOpenMetrics: true,
		Timeout:           10 * time.Second,
	})
}

type promErrorLog struct{ s *Server }

func (l promErrorLog) Println(v ...any) { l.s.log.Warn("metrics: scrape error", "err", v) }

// pprofRoutes registers net/http/pprof's handlers on the server's own mux
// (not http.DefaultServeMux), behind opsOnly.
func (s *Server) pprofRoutes() {
	s.mux.HandleFunc("GET /debug/pprof/", s.opsOnly(pprof.Index))
	s.mux.HandleFunc("GET /debug/pprof/cmdline", s.opsOnly(pprof.Cmdline))
	s.mux.HandleFunc("GET /debug/pprof/profile", s.opsOnly(pprof.Profile))
	s.mux.HandleFunc("GET /debug/pprof/symbol", s.opsOnly(pprof.Symbol))
	s.mux.HandleFunc("POST /debug/pprof/symbol", s.opsOnly(pprof.Symbol))
	s.mux.HandleFunc("GET /debug/pprof/trace", s.opsOnly(pprof.Trace))
}
