package web

import (
	"context"
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
// the dispatch latency histogram and the connected agents.
func NewMetrics(st *store.Store, agents AgentLister) *Metrics {
	m := &Metrics{Registry: prometheus.NewRegistry()}
	m.Dispatch = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "forge_dispatch_seconds",
		Help:    "Time from creating a build's service to its executor running.",
		Buckets: []float64{.1, .25, .5, .75, 1, 1.5, 2, 3, 5, 10, 30, 60, 300},
	})
	m.Registry.MustRegister(m.Dispatch, &stateCollector{st: st}, &certCollector{agents: agents},
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "forge_agents_connected", Help: "Agents with a session now."},
			func() float64 { return float64(len(agents.Agents())) }))
	return m
}

// Expiry registers a gauge name (a _seconds name) holding the Unix time
// at which a certificate expires: the CA's, the coordinator's.
func (m *Metrics) Expiry(name, help string, at time.Time) {
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help})
	g.Set(float64(at.Unix()))
	m.Registry.MustRegister(g)
}

var agentCertDesc = prometheus.NewDesc("forge_agent_cert_expiry_seconds",
	"Unix time at which the latest certificate of each connected agent expires.", []string{"node"}, nil)

// certCollector reads the agents' certificate expiry when scraped: a
// renewal changes it.
type certCollector struct{ agents AgentLister }

func (c *certCollector) Describe(ch chan<- *prometheus.Desc) { ch <- agentCertDesc }

func (c *certCollector) Collect(ch chan<- prometheus.Metric) {
	for _, a := range c.agents.Agents() {
		if a.CertExpires.IsZero() {
			continue
		}
		ch <- prometheus.MustNewConstMetric(agentCertDesc, prometheus.GaugeValue, float64(a.CertExpires.Unix()), a.NodeID)
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
