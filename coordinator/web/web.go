package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/forge-ci/forge/coordinator/store"
)

// API serves the coordinator's HTTP edge (DESIGN §3): builds, their logs,
// cancel, agents, health, metrics and the HTML pages.
type API struct {
	Agents  *AgentServer
	Store   *store.Store
	Logs    *LogStore
	Manager *Manager
	Metrics *Metrics
	// Webhook, when set, serves POST /webhook.
	Webhook http.Handler
}

// Handler returns the routes.
func (a *API) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /api/agents", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, a.Agents.Agents())
	})
	if a.Store != nil {
		mux.HandleFunc("GET /api/builds", a.listBuilds)
		mux.HandleFunc("GET /api/builds/{id}", a.getBuild)
		mux.HandleFunc("GET /api/builds/{id}/log", a.getLog)
		mux.HandleFunc("POST /api/builds/{id}/cancel", a.cancelBuild)
		mux.HandleFunc("GET /{$}", a.indexPage)
		mux.HandleFunc("GET /builds/{id}", a.buildPage)
	}
	if a.Metrics != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(a.Metrics.Registry, promhttp.HandlerOpts{}))
	}
	if a.Webhook != nil {
		mux.Handle("POST /webhook", a.Webhook)
	}
	return mux
}

// BuildView is a build as the API shows it. State is the coordinator's
// record, fed by the agents: swarm's own task state stays "failed" for
// every build (its start of the container fails by design) and says
// nothing about the build.
type BuildView struct {
	ID          string     `json:"id"`
	Owner       string     `json:"owner"`
	Repo        string     `json:"repo"`
	PullRequest int        `json:"pull_request,omitempty"`
	Branch      string     `json:"branch,omitempty"`
	SHA         string     `json:"sha"`
	Ref         string     `json:"ref,omitempty"`
	Action      string     `json:"action"`
	Trigger     string     `json:"trigger"`
	Fork        bool       `json:"fork"`
	State       string     `json:"state"`
	Reason      string     `json:"reason,omitempty"`
	ExitCode    *int       `json:"exit_code"`
	NodeID      string     `json:"node_id,omitempty"`
	ContainerID string     `json:"container_id,omitempty"`
	Service     string     `json:"service,omitempty"`
	Created     time.Time  `json:"created"`
	Started     *time.Time `json:"started,omitempty"`
	Finished    *time.Time `json:"finished,omitempty"`
}

func viewOf(b *store.Build) BuildView {
	opt := func(t time.Time) *time.Time {
		if t.IsZero() {
			return nil
		}
		return &t
	}
	return BuildView{ID: b.ID, Owner: b.Owner, Repo: b.Repo, PullRequest: b.PullRequest, Branch: b.Branch,
		SHA: b.SHA, Ref: b.Ref, Action: b.Action, Trigger: b.Trigger, Fork: b.Fork, State: string(b.State),
		Reason: b.Reason, ExitCode: b.ExitCode, NodeID: b.NodeID, ContainerID: b.ContainerID, Service: b.ServiceName,
		Created: b.Created, Started: opt(b.Started), Finished: opt(b.Finished)}
}

func (a *API) listBuilds(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	o := store.ListOptions{Owner: q.Get("owner"), Repo: q.Get("repo"), State: store.State(q.Get("state")), Before: q.Get("before")}
	if l := q.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 {
			httpError(w, http.StatusBadRequest, "limit %q: want a positive number", l)
			return
		}
		o.Limit = n
	}
	bs, err := a.Store.ListBuilds(r.Context(), o)
	if errors.Is(err, store.ErrNotFound) {
		httpError(w, http.StatusBadRequest, "before %q: no such build", o.Before)
		return
	}
	if err != nil {
		httpError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	out := make([]BuildView, 0, len(bs))
	for _, b := range bs {
		out = append(out, viewOf(b))
	}
	writeJSON(w, http.StatusOK, out)
}

// build loads the build named in the path, answering 404 itself.
func (a *API) build(w http.ResponseWriter, r *http.Request) *store.Build {
	b, err := a.Store.Build(r.Context(), r.PathValue("id"))
	if errors.Is(err, store.ErrNotFound) {
		httpError(w, http.StatusNotFound, "no build %q", r.PathValue("id"))
		return nil
	}
	if err != nil {
		httpError(w, http.StatusInternalServerError, "%v", err)
		return nil
	}
	return b
}

func (a *API) getBuild(w http.ResponseWriter, r *http.Request) {
	if b := a.build(w, r); b != nil {
		writeJSON(w, http.StatusOK, viewOf(b))
	}
}

// getLog writes the build's output as plain text; with ?follow=1 it
// streams until the build ends (or the client goes).
func (a *API) getLog(w http.ResponseWriter, r *http.Request) {
	b := a.build(w, r)
	if b == nil {
		return
	}
	follow := r.URL.Query().Get("follow") == "1" && !b.State.Final()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	fw := &flushWriter{w: w, rc: http.NewResponseController(w)}
	ctx := r.Context()
	if follow {
		// The log ends when the exit is recorded; a build that ends without
		// one (cancelled before it started) ends the stream through Wait.
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(ctx)
		defer cancel()
		go func() {
			a.Manager.Wait(ctx, b.ID)
			cancel()
		}()
	}
	err := a.Logs.Follow(ctx, b.ID, fw, follow)
	if err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintf(fw, "\n[forge: log unavailable: %v]\n", err)
	}
}

type flushWriter struct {
	w  io.Writer
	rc *http.ResponseController
}

func (f *flushWriter) Write(p []byte) (int, error) { return f.w.Write(p) }
func (f *flushWriter) Flush()                      { f.rc.Flush() }

func (a *API) cancelBuild(w http.ResponseWriter, r *http.Request) {
	b := a.build(w, r)
	if b == nil {
		return
	}
	err := a.Manager.Cancel(r.Context(), b.ID, "cancelled through the API")
	if errors.Is(err, ErrNotRunning) {
		httpError(w, http.StatusConflict, "build %s is %s already", b.ID, b.State)
		return
	}
	if err != nil {
		httpError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	writeJSON(w, http.StatusAccepted, map[string]string{"id": b.ID, "status": "cancelling"})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func httpError(w http.ResponseWriter, code int, format string, args ...any) {
	writeJSON(w, code, map[string]string{"error": fmt.Sprintf(format, args...)})
}

// Metrics are the coordinator's Prometheus metrics.
type Metrics struct {
	Registry *prometheus.Registry
	Dispatch prometheus.Histogram
}

// NewMetrics registers builds by state (read from the store when scraped),
// the dispatch latency histogram and the connected agents.
func NewMetrics(st *store.Store, agents *AgentServer) *Metrics {
	m := &Metrics{Registry: prometheus.NewRegistry()}
	m.Dispatch = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "forge_dispatch_seconds",
		Help:    "Time from creating a build's service to its executor running.",
		Buckets: []float64{.1, .25, .5, .75, 1, 1.5, 2, 3, 5, 10, 30, 60, 300},
	})
	m.Registry.MustRegister(m.Dispatch, &stateCollector{st: st},
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "forge_agents_connected", Help: "Agents with a session now."},
			func() float64 { return float64(len(agents.Agents())) }))
	return m
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

var pages = template.Must(template.New("").Funcs(template.FuncMap{
	"ago": func(t time.Time) string { return time.Since(t).Round(time.Second).String() + " ago" },
}).Parse(`
{{define "head"}}<!doctype html><html><head><meta charset="utf-8"><title>{{.}} · Forge</title>
<style>body{font:14px system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse}
td,th{padding:.3em .8em;text-align:left;border-bottom:1px solid #ddd}pre{background:#111;color:#eee;padding:1em;overflow:auto;white-space:pre-wrap}
.success{color:#1a7f37}.failure,.error{color:#cf222e}.running,.queued{color:#9a6700}a{color:#0969da}</style></head><body>
<p><a href="/">Forge</a></p>{{end}}
{{define "index"}}{{template "head" "Builds"}}<h1>Builds</h1>
<table><tr><th>Build</th><th>Repository</th><th>Ref</th><th>Action</th><th>State</th><th>Created</th></tr>
{{range .}}<tr><td><a href="/builds/{{.ID}}">{{.ID}}</a></td><td>{{.Owner}}/{{.Repo}}</td>
<td>{{if .PullRequest}}#{{.PullRequest}}{{else}}{{.Branch}}{{end}} {{printf "%.7s" .SHA}}</td><td>{{.Action}}</td>
<td class="{{.State}}">{{.State}}</td><td>{{ago .Created}}</td></tr>{{else}}<tr><td colspan="6">No builds yet.</td></tr>{{end}}
</table></body></html>{{end}}
{{define "build"}}{{template "head" .ID}}<h1>Build {{.ID}}</h1>
<p>{{.Owner}}/{{.Repo}} {{if .PullRequest}}pull request #{{.PullRequest}}{{else}}{{.Branch}}{{end}} at {{.SHA}}, action <b>{{.Action}}</b></p>
<p>State: <b class="{{.State}}" id="state">{{.State}}</b>{{with .Reason}} ({{.}}){{end}}{{with .ExitCode}}, exit code {{.}}{{end}}
{{with .NodeID}}· node {{.}}{{end}}</p>
<p><small>This page shows Forge's record, which the agents feed. Swarm lists every build's task as failed:
its own start of the container fails by design, before the agent starts the executor.</small></p>
<pre id="log">loading…</pre>
<script>
(async () => {
  const pre = document.getElementById("log");
  const res = await fetch("/api/builds/{{.ID}}/log?follow=1");
  const rd = res.body.getReader(); const dec = new TextDecoder(); pre.textContent = "";
  for (;;) { const {value, done} = await rd.read(); if (done) break; pre.textContent += dec.decode(value, {stream: true}); }
  const b = await (await fetch("/api/builds/{{.ID}}")).json();
  const s = document.getElementById("state"); s.textContent = b.state; s.className = b.state;
})();
</script></body></html>{{end}}`))

func (a *API) indexPage(w http.ResponseWriter, r *http.Request) {
	bs, err := a.Store.ListBuilds(r.Context(), store.ListOptions{Limit: 100})
	if err != nil {
		httpError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	pages.ExecuteTemplate(w, "index", bs)
}

func (a *API) buildPage(w http.ResponseWriter, r *http.Request) {
	b := a.build(w, r)
	if b == nil {
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	pages.ExecuteTemplate(w, "build", b)
}
