package web

import (
	"context"
	"crypto/x509"
	"fmt"
	"net/http"
	"time"

	"github.com/forge-ci/forge/coordinator/store"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are the coordinator's Prometheus metrics.
type Metrics struct {
	Registry *prometheus.Registry
	Dispatch prometheus.Histogram
}

// NewMetrics registers builds by state (read from the store when scraped),
// the dispatch latency histogram, the connected agents and when each one's
// certificate expires.
func NewMetrics(st *store.Store, agents AgentLister) *Metrics {
	m := &Metrics{Registry: prometheus.NewRegistry()}
	m.Dispatch = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "forge_dispatch_seconds",
		Help:    "Time from creating a build's service to its executor running.",
		Buckets: []float64{.1, .25, .5, .75, 1, 1.5, 2, 3, 5, 10, 30, 60, 300},
	})
	m.Registry.MustRegister(m.Dispatch, &stateCollector{st: st},
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "forge_agents_connected", Help: "Agents with a session now."},
			func() float64 { return float64(len(agents.Agents())) }),
		&agentCertCollector{agents: agents})
	return m
}

// Certificates registers when the CA's and the coordinator's own
// certificates expire (forge_ca_cert_expiry_seconds,
// forge_coordinator_cert_expiry_seconds, Unix time), read when scraped:
// a function may return a certificate that was replaced. Call it once.
func (m *Metrics) Certificates(ca, coordinator func() *x509.Certificate) error {
	for _, c := range []struct {
		name, help string
		cert       func() *x509.Certificate
	}{
		{"forge_ca_cert_expiry_seconds", "When the Forge CA's certificate expires, Unix time.", ca},
		{"forge_coordinator_cert_expiry_seconds", "When the coordinator's TLS certificate expires, Unix time.", coordinator},
	} {
		cert := c.cert
		if err := m.Registry.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: c.name, Help: c.help}, func() float64 {
			if x := cert(); x != nil {
				return float64(x.NotAfter.Unix())
			}
			return 0
		})); err != nil {
			return fmt.Errorf("web: metric %s: %w", c.name, err)
		}
	}
	return nil
}

var agentCertDesc = prometheus.NewDesc("forge_agent_cert_expiry_seconds",
	"When the latest certificate of each connected agent's session expires, Unix time.", []string{"node"}, nil)

// agentCertCollector reports each connected agent's certificate expiry.
type agentCertCollector struct{ agents AgentLister }

func (c *agentCertCollector) Describe(ch chan<- *prometheus.Desc) { ch <- agentCertDesc }

func (c *agentCertCollector) Collect(ch chan<- prometheus.Metric) {
	for _, a := range c.agents.Agents() {
		if !a.CertExpires.IsZero() {
			ch <- prometheus.MustNewConstMetric(agentCertDesc, prometheus.GaugeValue, float64(a.CertExpires.Unix()), a.NodeID)
		}
	}
}

var buildsDesc = prometheus.NewDesc("forge_builds", "Builds by state, as recorded.", []string{"state"}, nil)

type stateCollector struct{ st *store.Store }

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) { ch <- buildsDesc }

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	counts, err := c.st.CountByState(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(buildsDesc, err)
		return
	}
	for st, n := range counts {
		ch <- prometheus.MustNewConstMetric(buildsDesc, prometheus.GaugeValue, float64(n), string(st))
	}
}

// Handler serves GET /metrics, for the metrics listener (--metrics-listen):
// it is not on the public port.
func (m *Metrics) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{}))
	return mux
}

var logsBytesDesc = prometheus.NewDesc("forge_logs_bytes", "Disk used by the builds' logs, in bytes (counted at most every 30 s).", nil, nil)

// LogsBytes registers forge_logs_bytes, read from usage when scraped (an
// error shows as an invalid metric). Call it once.
func (m *Metrics) LogsBytes(usage func() (int64, error)) error {
	if err := m.Registry.Register(funcCollector{desc: logsBytesDesc, read: usage}); err != nil {
		return fmt.Errorf("web: metric forge_logs_bytes: %w", err)
	}
	return nil
}

// funcCollector is a gauge read by a function that may fail.
type funcCollector struct {
	desc *prometheus.Desc
	read func() (int64, error)
}

func (c funcCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c funcCollector) Collect(ch chan<- prometheus.Metric) {
	n, err := c.read()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.desc, err)
		return
	}
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n))
}
