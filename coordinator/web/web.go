// Package web is the coordinator's HTTP edge (DESIGN §3): the API, the
// pages and the metrics.
package web

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/agents"
	"github.com/forge-ci/forge/coordinator/store"
	"github.com/forge-ci/forge/internal/redact"
)

// Config is what the handler serves from.
type Config struct {
	Builds coordinator.Builds // cancel, and the end of a followed log
	Store  *store.Store       // the records
	Logs   Logs
	Agents AgentLister
	// Webhook, when set, serves POST /webhook.
	Webhook http.Handler
}

// Logs is where build output is read (logs.Store).
type Logs interface {
	Follow(ctx context.Context, id string, w io.Writer, follow bool) error
}

// AgentLister lists the connected agents (agents.Hub).
type AgentLister interface {
	Agents() []agents.AgentInfo
}

// API serves the coordinator's HTTP edge: builds, their logs, cancel,
// agents, health, metrics and the HTML pages.
type API struct{ cfg Config }

// New returns the API; Handler gives its routes.
func New(cfg Config) *API { return &API{cfg: cfg} }

// Handler returns the routes.
func (a *API) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /api/agents", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, a.cfg.Agents.Agents())
	})
	if a.cfg.Store != nil {
		mux.HandleFunc("GET /api/builds", a.listBuilds)
		mux.HandleFunc("GET /api/builds/{id}", a.getBuild)
		mux.HandleFunc("GET /api/builds/{id}/log", a.getLog)
		mux.HandleFunc("POST /api/builds/{id}/cancel", a.cancelBuild)
		mux.HandleFunc("GET /{$}", a.indexPage)
		mux.HandleFunc("GET /builds/{id}", a.buildPage)
	}
	if a.cfg.Webhook != nil {
		mux.Handle("POST /webhook", a.cfg.Webhook)
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

func viewOf(b *coordinator.Build) BuildView {
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
	o := store.ListOptions{Owner: q.Get("owner"), Repo: q.Get("repo"), State: coordinator.State(q.Get("state")), Before: q.Get("before")}
	if l := q.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 {
			httpError(w, http.StatusBadRequest, "limit %q: want a positive number", l)
			return
		}
		o.Limit = n
	}
	bs, err := a.cfg.Store.ListBuilds(r.Context(), o)
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
func (a *API) build(w http.ResponseWriter, r *http.Request) *coordinator.Build {
	b, err := a.cfg.Store.Build(r.Context(), r.PathValue("id"))
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
			a.cfg.Builds.Wait(ctx, b.ID)
			cancel()
		}()
	}
	err := a.cfg.Logs.Follow(ctx, b.ID, fw, follow)
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
	err := a.cfg.Builds.Cancel(r.Context(), b.ID, "cancelled through the API")
	if errors.Is(err, coordinator.ErrNotRunning) {
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
	writeJSON(w, code, map[string]string{"error": redact.String(fmt.Sprintf(format, args...))})
}

// pages are the HTML templates. Build output never goes through them:
// the build page fetches the log as text and sets textContent.
//
//go:embed templates/*.html
var templateFS embed.FS

var pages = template.Must(template.New("").Funcs(template.FuncMap{
	"ago": func(t time.Time) string { return time.Since(t).Round(time.Second).String() + " ago" },
}).ParseFS(templateFS, "templates/*.html"))

func (a *API) indexPage(w http.ResponseWriter, r *http.Request) {
	bs, err := a.cfg.Store.ListBuilds(r.Context(), store.ListOptions{Limit: 100})
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
