// Package web is the coordinator's HTTP edge (DESIGN §3): the API, the
// pages and the metrics.
package web

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/agents"
	"github.com/forge-ci/forge/coordinator/auth"
	"github.com/forge-ci/forge/coordinator/store"
	"github.com/forge-ci/forge/internal/redact"
	"github.com/forge-ci/forge/wire"
)

// Config is what the handler serves from.
type Config struct {
	Builds coordinator.Builds // cancel, and the end of a followed log
	Store  *store.Store       // the records
	Logs   Logs
	Agents AgentLister
	// AgentAdmin revokes and allows nodes' agents; nil: Agents, when it
	// has Revoke and Allow (agents.Hub does), else those routes answer 501.
	AgentAdmin AgentAdmin
	// Auth is the front door: who asks, and what they may do. Required.
	Auth *auth.Auth
	// Webhook, when set, serves POST /webhook.
	Webhook http.Handler
	// Metrics, when set, is served at GET /metrics to Forge admins (the
	// metrics listener serves it to whoever reaches it).
	Metrics http.Handler
	// Secrets keeps repositories' secrets; nil: the coordinator has no
	// secrets key, and the secrets routes answer 503.
	Secrets coordinator.Secrets
	// Log notes refusals of credentials; nil discards.
	Log *slog.Logger
	// Retain is how long final builds' logs are kept (--retain; 0:
	// forever): a log gone after it says so rather than "unknown".
	Retain time.Duration
	// Artifacts is where builds' artifacts are read; nil: builds have
	// none.
	Artifacts Artifacts
	// Reruns re-runs builds (github.Forge); nil: the re-run routes answer
	// 501 (no GitHub App to fetch sources from).
	Reruns Rerunner
}

// Rerunner starts a new build of a build's SHA and action, linked to it,
// for who; a build that cannot be re-run gives an error wrapping
// coordinator.ErrNotRerunnable that says why.
type Rerunner interface {
	Rerun(ctx context.Context, b *coordinator.Build, who string) (*coordinator.Build, error)
}

// Logs is where build output is read (logs.Store).
type Logs interface {
	Follow(ctx context.Context, id string, w io.Writer, follow bool) error
}

// AgentLister lists the connected agents (agents.Hub).
type AgentLister interface {
	Agents() []agents.AgentInfo
}

// AgentAdmin revokes and allows the agents of swarm nodes (agents.Hub,
// forge agents revoke|allow).
type AgentAdmin interface {
	// Revoke closes the node's session and refuses its certificates and
	// joins until Allow.
	Revoke(ctx context.Context, node string) error
	// Allow lifts the node's revocation and reports whether it was revoked.
	Allow(ctx context.Context, node string) (bool, error)
}

// The hub is what the daemon gives as Agents; it must serve these routes.
var _ AgentAdmin = (*agents.Hub)(nil)

// API serves the coordinator's HTTP edge: builds, their logs, cancel,
// agents, health, sign-in, tokens and the HTML pages.
type API struct {
	cfg  Config
	auth *auth.Auth
	log  *slog.Logger
}

// New returns the API; Handler gives its routes.
func New(cfg Config) (*API, error) {
	if cfg.Auth == nil || cfg.Store == nil || cfg.Builds == nil || cfg.Logs == nil || cfg.Agents == nil {
		return nil, errors.New("web: Auth, Store, Builds, Logs and Agents are all required")
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.AgentAdmin == nil {
		cfg.AgentAdmin, _ = cfg.Agents.(AgentAdmin)
	}
	if cfg.Artifacts == nil {
		cfg.Artifacts = noArtifacts{}
	}
	return &API{cfg: cfg, auth: cfg.Auth, log: log}, nil
}

// Who may use a route (README, "HTTP API, and who may use it"). The
// handlers enforce it; TestRoutesAsREADME checks them against the README.
const (
	Anyone  = "anyone"
	Public  = "public"  // anyone for public repositories, else read
	Reader  = "read"    // the person's permission on the build's repository
	Writer  = "write"   //
	Admin   = "admin"   // a Forge admin
	Person  = "person"  // a browser session or a personal token
	Browser = "browser" // a browser session only
	// RepoAdmin is the person's admin permission on the repository of the
	// path (its secrets), or the admin token.
	RepoAdmin = "repo-admin"
)

// Route is one of the edge's routes and who may use it.
type Route struct {
	Pattern, Who string
	h            http.Handler
}

// Routes lists every route the handler serves.
func (a *API) Routes() []Route {
	hf := func(f http.HandlerFunc) http.Handler { return f }
	rs := []Route{
		{"GET /healthz", Anyone, hf(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.Write([]byte("ok\n"))
		})},
		{"GET /login", Anyone, hf(a.auth.Login)},
		{"GET " + auth.CallbackPath, Anyone, hf(a.auth.Callback)},
		{"GET /static/{file}", Anyone, http.FileServerFS(staticFS)},
		{"GET /favicon.ico", Anyone, hf(favicon)},

		{"GET /api/builds", Public, a.api(a.listBuilds)},
		{"GET /api/builds/{id}", Reader, a.api(a.getBuild)},
		{"GET /api/builds/{id}/log", Reader, a.api(a.getLog)},
		{"POST /api/builds/{id}/cancel", Writer, a.api(a.cancelBuild)},
		{"POST /api/builds/{id}/approve", Writer, a.api(a.approveBuild)},
		{"POST /api/builds/{id}/rerun", Writer, a.api(a.rerunBuild)},
		{"GET /api/builds/{id}/artifacts", Reader, a.api(a.listArtifacts)},
		{"GET /api/builds/{id}/artifacts/{path...}", Reader, a.api(a.getArtifact)},
		{"GET /api/builds/{id}/artifacts.tar.gz", Reader, a.api(a.getArtifactsTarGz)},
		{"GET /{$}", Public, a.html(a.indexPage)},
		{"GET /builds/{id}", Reader, a.html(a.buildPage)},
		{"POST /builds/{id}/cancel", Writer, a.html(a.cancelForm)},
		{"POST /builds/{id}/approve", Writer, a.html(a.approveForm)},
		{"POST /builds/{id}/rerun", Writer, a.html(a.rerunForm)},

		{"GET /api/agents", Admin, a.api(a.listAgents)},
		{"POST /api/agents/{node}/revoke", Admin, a.api(a.revokeAgent)},
		{"POST /api/agents/{node}/allow", Admin, a.api(a.allowAgent)},
		{"GET /agents", Admin, a.html(a.agentsPage)},
		{"GET /badge/{owner}/{repo}", Public, a.api(a.badge)},

		{"GET /api/tokens", Person, a.api(a.listTokens)},
		{"POST /api/tokens", Browser, a.api(a.createToken)},
		{"DELETE /api/tokens/{id}", Person, a.api(a.revokeToken)},
		{"GET /tokens", Person, a.html(a.tokensPage)},
		{"POST /tokens", Browser, a.html(a.createTokenForm)},
		{"POST /tokens/{id}/revoke", Person, a.html(a.revokeTokenForm)},
		{"GET /logout", Anyone, a.html(a.logoutPage)},
		{"POST /logout", Anyone, hf(a.logout)},

		{"GET /api/repos/{owner}/{repo}/secrets", RepoAdmin, a.api(a.listSecrets)},
		{"PUT /api/repos/{owner}/{repo}/secrets/{name}", RepoAdmin, a.api(a.putSecret)},
		{"DELETE /api/repos/{owner}/{repo}/secrets/{name}", RepoAdmin, a.api(a.deleteSecret)},
		{"GET /repos/{owner}/{repo}/secrets", RepoAdmin, a.html(a.secretsPage)},
		{"POST /repos/{owner}/{repo}/secrets", RepoAdmin, a.html(a.setSecretForm)},
		{"POST /repos/{owner}/{repo}/secrets/{name}/delete", RepoAdmin, a.html(a.deleteSecretForm)},
	}
	if a.cfg.Webhook != nil {
		rs = append(rs, Route{"POST /webhook", Anyone, a.cfg.Webhook})
	}
	if a.cfg.Metrics != nil {
		rs = append(rs, Route{"GET /metrics", Admin, a.api(a.metrics)})
	}
	return rs
}

// Handler returns the routes.
func (a *API) Handler() http.Handler {
	mux := http.NewServeMux()
	for _, rt := range a.Routes() {
		mux.Handle(rt.Pattern, rt.h)
	}

	// A cross-site write from a browser is refused before any handler
	// (Sec-Fetch-Site, then Origin against Host); GitHub's webhook
	// posts carry neither header. Browser sessions also need their CSRF
	// token (a.api, a.html).
	cop := http.NewCrossOriginProtection()
	cop.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.refuse(w, r, auth.ErrCSRF, strings.HasPrefix(r.URL.Path, "/api/"))
	}))
	return headers(cop.Handler(mux))
}

// headers sets what every answer carries: no sniffing, no framing, no
// script but the site's own, no referrer to other sites.
func headers(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("X-Frame-Options", "DENY")
		hd.Set("Referrer-Policy", "same-origin")
		hd.Set("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
		h.ServeHTTP(w, r)
	})
}

type handler func(w http.ResponseWriter, r *http.Request, p *auth.Principal)

// api wraps an API handler: who asks, their CSRF token when they are a
// browser, and refusals as JSON.
func (a *API) api(h handler) http.HandlerFunc { return a.with(h, false) }

// html wraps a page: refusals send the browser to sign in.
func (a *API) html(h handler) http.HandlerFunc { return a.with(h, true) }

func (a *API) with(h handler, page bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		p, err := a.auth.Identify(r)
		if err == nil {
			err = a.auth.CheckCSRF(r, p)
		}
		if err != nil {
			a.refuse(w, r, err, !page)
			return
		}
		h(w, r, p)
	}
}

// refuse answers a refusal of the front door, the same way everywhere:
// 401 (a browser is sent to sign in), 403, or 404 for what may not be
// known to exist.
func (a *API) refuse(w http.ResponseWriter, r *http.Request, err error, api bool) {
	code := http.StatusBadGateway
	switch {
	case errors.Is(err, auth.ErrNoCredential), errors.Is(err, auth.ErrBadCredential):
		code = http.StatusUnauthorized
		a.log.Info("refused", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr, "why", redact.Error(err))
		if errors.Is(err, auth.ErrBadCredential) && r.Header.Get("Authorization") == "" {
			a.auth.ClearSession(w)
		}
		if !api && r.Method == http.MethodGet {
			http.Redirect(w, r, "/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
			return
		}
		w.Header().Set("WWW-Authenticate", `Bearer realm="forge"`)
	case errors.Is(err, auth.ErrForbidden), errors.Is(err, auth.ErrCSRF):
		code = http.StatusForbidden
		a.log.Info("refused", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr, "why", redact.Error(err))
	case errors.Is(err, auth.ErrHidden):
		// The same answer as for a build that does not exist.
		code, err = http.StatusNotFound, fmt.Errorf("no build %q", r.PathValue("id"))
	}
	if api {
		httpError(w, code, "%v", err)
		return
	}
	a.errorPage(w, r, code, err)
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
	Author      string     `json:"author,omitempty"`
	Untrusted   bool       `json:"untrusted"`
	// AwaitingApproval: the build waits for a person with write
	// permission to approve it (POST /api/builds/{id}/approve).
	AwaitingApproval bool       `json:"awaiting_approval"`
	ApprovedBy       string     `json:"approved_by,omitempty"`
	Approved         *time.Time `json:"approved,omitempty"`
	// Ending says why an error ended (cancelled, superseded, timed_out).
	Ending string `json:"ending,omitempty"`
	// RerunOf is the build this one re-runs, and RerunBy who asked;
	// Reruns (GET /api/builds/{id} only) the builds that re-run this one,
	// oldest first.
	RerunOf string   `json:"rerun_of,omitempty"`
	RerunBy string   `json:"rerun_by,omitempty"`
	Reruns  []string `json:"reruns,omitempty"`
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
		Created: b.Created, Started: opt(b.Started), Finished: opt(b.Finished),
		Author: b.Author, Untrusted: b.Untrusted, AwaitingApproval: b.AwaitingApproval(), ApprovedBy: b.ApprovedBy, Approved: opt(b.Approved),
		Ending: string(b.Ending), RerunOf: b.RerunOf, RerunBy: b.RerunBy}
}

// logout ends a browser's session; one whose credential is bad already
// only loses its cookie.
func (a *API) logout(w http.ResponseWriter, r *http.Request) {
	p, err := a.auth.Identify(r)
	if err != nil {
		a.auth.ClearSession(w)
		http.Redirect(w, r, "/", http.StatusSeeOther)
		return
	}
	if err := a.auth.CheckCSRF(r, p); err != nil {
		a.refuse(w, r, err, false)
		return
	}
	a.auth.Logout(w, r, p)
}

func (a *API) listBuilds(w http.ResponseWriter, r *http.Request, p *auth.Principal) {
	if err := a.auth.NeedSignIn(p, true); err != nil {
		a.refuse(w, r, err, true)
		return
	}
	q := r.URL.Query()
	o := store.ListOptions{Owner: q.Get("owner"), Repo: q.Get("repo"), State: coordinator.State(q.Get("state")), Before: q.Get("before"),
		Branch: q.Get("branch")}
	var err error
	if o.PullRequest, o.Limit, err = listNumbers(q, "pull_request", o.State); err != nil {
		httpError(w, http.StatusBadRequest, "%v", err)
		return
	}
	bs, err := a.visible(r.Context(), p, o)
	switch {
	case errors.Is(err, store.ErrNotFound), errors.Is(err, auth.ErrHidden):
		httpError(w, http.StatusBadRequest, "before %q: no such build", o.Before)
		return
	case errors.Is(err, auth.ErrBadCredential):
		a.refuse(w, r, err, true)
		return
	case err != nil:
		httpError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	out := make([]BuildView, 0, len(bs))
	for _, b := range bs {
		out = append(out, viewOf(b))
	}
	writeJSON(w, http.StatusOK, out)
}

// visible lists the builds o selects that p may read, newest first, up
// to o's limit: pages of the store are read until it is filled.
func (a *API) visible(ctx context.Context, p *auth.Principal, o store.ListOptions) ([]*coordinator.Build, error) {
	if o.Before != "" {
		// A cursor that names a hidden build is no cursor.
		b, err := a.cfg.Store.Build(ctx, o.Before)
		if err != nil {
			return nil, err
		}
		if err := a.auth.Need(ctx, p, b.Owner, b.Repo, b.Public, coordinator.Read); err != nil {
			return nil, err
		}
	}
	o.Limit = store.ClampLimit(o.Limit)
	want := o.Limit
	o.PublicOnly = p.Kind == auth.Anonymous
	var out []*coordinator.Build
	for {
		page, err := a.cfg.Store.ListBuilds(ctx, o)
		if err != nil {
			return nil, err
		}
		for _, b := range page {
			err := a.auth.Need(ctx, p, b.Owner, b.Repo, b.Public, coordinator.Read)
			switch {
			case err == nil:
				out = append(out, b)
			case errors.Is(err, auth.ErrHidden), errors.Is(err, auth.ErrForbidden):
			default:
				return nil, err
			}
			if len(out) == want {
				return out, nil
			}
		}
		if len(page) < o.Limit {
			return out, nil
		}
		o.Before = page[len(page)-1].ID
	}
}

// build loads the build named in the path if p may act on it with need,
// answering the refusal itself: a build p may not read is as unknown as
// one that does not exist.
func (a *API) build(w http.ResponseWriter, r *http.Request, p *auth.Principal, need coordinator.Permission, api bool) *coordinator.Build {
	err := a.auth.NeedSignIn(p, true)
	var b *coordinator.Build
	if err == nil {
		b, err = a.cfg.Store.Build(r.Context(), r.PathValue("id"))
		if errors.Is(err, store.ErrNotFound) {
			err = auth.ErrHidden
		}
	}
	if err == nil {
		err = a.auth.Need(r.Context(), p, b.Owner, b.Repo, b.Public, need)
	}
	if err != nil {
		a.refuse(w, r, err, api)
		return nil
	}
	return b
}

func (a *API) getBuild(w http.ResponseWriter, r *http.Request, p *auth.Principal) {
	b := a.build(w, r, p, coordinator.Read, true)
	if b == nil {
		return
	}
	v := viewOf(b)
	var err error
	if v.Reruns, err = a.cfg.Store.Reruns(r.Context(), b.ID); err != nil {
		httpError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

// getLog writes the build's output as plain text; with ?follow=1 it
// streams until the build ends (or the client goes).
func (a *API) getLog(w http.ResponseWriter, r *http.Request, p *auth.Principal) {
	b := a.build(w, r, p, coordinator.Read, true)
	if b == nil {
		return
	}
	follow := r.URL.Query().Get("follow") == "1" && !b.State.Final()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
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
	var out io.Writer = fw
	if off := r.URL.Query().Get("offset"); off != "" {
		// The build page holds the log up to offset already.
		n, err := strconv.ParseInt(off, 10, 64)
		if err != nil || n < 0 {
			httpError(w, http.StatusBadRequest, "offset %q: want a number of bytes", off)
			return
		}
		out = &skipWriter{w: fw, skip: n}
	}
	err := a.cfg.Logs.Follow(ctx, b.ID, out, follow)
	if note := a.logMissing(b, err); note != "" {
		lead := "\n" // after whatever output came before the failure
		// Pruned or never recorded: no output came before.
		if errors.Is(err, coordinator.ErrUnknownBuild) && b.State.Final() {
			lead = ""
		}
		fmt.Fprintf(fw, "%s[forge: %s]\n", lead, note)
	}
}

// logMissing says why Follow gave err for b's log; "" when it did not fail.
func (a *API) logMissing(b *coordinator.Build, err error) string {
	switch {
	case err == nil, errors.Is(err, context.Canceled):
		return ""
	case errors.Is(err, coordinator.ErrUnknownBuild) && a.pruned(b):
		return fmt.Sprintf("this build's log was deleted by retention: logs are kept %s after a build ends (--retain)", days(a.cfg.Retain))
	case errors.Is(err, coordinator.ErrUnknownBuild) && b.State.Final():
		why := string(b.State)
		if b.Reason != "" {
			why += ": " + b.Reason
		}
		return fmt.Sprintf("no log was recorded for this build, which ended as %s", why)
	}
	return fmt.Sprintf("log unavailable: %v", redact.Error(err))
}

// pruned says whether retention may have deleted b's log.
func (a *API) pruned(b *coordinator.Build) bool {
	return a.cfg.Retain > 0 && b.State.Final() && !b.Finished.IsZero() && time.Since(b.Finished) > a.cfg.Retain
}

// days writes d in days when it is whole days ("90 days"), else as Go does.
func days(d time.Duration) string {
	const day = 24 * time.Hour
	if d%day == 0 {
		if d == day {
			return "1 day"
		}
		return fmt.Sprintf("%d days", d/day)
	}
	return d.String()
}

type flushWriter struct {
	w  io.Writer
	rc *http.ResponseController
}

func (f *flushWriter) Write(p []byte) (int, error) { return f.w.Write(p) }
func (f *flushWriter) Flush()                      { f.rc.Flush() }

// skipWriter drops the first skip bytes written through it.
type skipWriter struct {
	w    *flushWriter
	skip int64
}

func (s *skipWriter) Write(p []byte) (int, error) {
	n := len(p)
	d := min(s.skip, int64(n))
	s.skip -= d
	if int(d) == n {
		return n, nil
	}
	if _, err := s.w.Write(p[d:]); err != nil {
		return 0, err
	}
	return n, nil
}

func (s *skipWriter) Flush() { s.w.Flush() }

func (a *API) cancelBuild(w http.ResponseWriter, r *http.Request, p *auth.Principal) {
	b := a.build(w, r, p, coordinator.Write, true)
	if b == nil {
		return
	}
	if err := a.cancel(r.Context(), b, p); err != nil {
		if errors.Is(err, coordinator.ErrNotRunning) {
			httpError(w, http.StatusConflict, "build %s is %s already", b.ID, b.State)
			return
		}
		httpError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	writeJSON(w, http.StatusAccepted, map[string]string{"id": b.ID, "status": "cancelling"})
}

func (a *API) cancel(ctx context.Context, b *coordinator.Build, p *auth.Principal) error {
	return a.cfg.Builds.Cancel(ctx, b.ID, "cancelled by "+p.Name())
}

// approveBuild lets a build that awaits approval run: 200 with the
// build, 409 when it does not await approval.
func (a *API) approveBuild(w http.ResponseWriter, r *http.Request, p *auth.Principal) {
	b := a.build(w, r, p, coordinator.Write, true)
	if b == nil {
		return
	}
	nb, err := a.cfg.Builds.Approve(r.Context(), b.ID, p.Name())
	if err != nil {
		if errors.Is(err, coordinator.ErrNotAwaiting) {
			httpError(w, http.StatusConflict, "%s", notAwaitingMessage(r.Context(), a.cfg.Store, b))
			return
		}
		httpError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	a.log.Info("build approved", "build", b.ID, "by", p.Name())
	writeJSON(w, http.StatusOK, viewOf(nb))
}

// notAwaitingMessage says why b, just refused approval, does not await it.
func notAwaitingMessage(ctx context.Context, st *store.Store, b *coordinator.Build) string {
	if cur, err := st.Build(ctx, b.ID); err == nil {
		b = cur
	}
	switch {
	case b.ApprovedBy != "":
		return fmt.Sprintf("build %s is not awaiting approval: %s approved it already", b.ID, b.ApprovedBy)
	case b.State.Final():
		return fmt.Sprintf("build %s is not awaiting approval: it is %s already", b.ID, b.State)
	case !b.NeedsApproval:
		return fmt.Sprintf("build %s is not awaiting approval: it needs none (it is %s)", b.ID, b.State)
	}
	return fmt.Sprintf("build %s is not awaiting approval", b.ID)
}

func (a *API) listAgents(w http.ResponseWriter, r *http.Request, p *auth.Principal) {
	if err := a.auth.NeedAdmin(p); err != nil {
		a.refuse(w, r, err, true)
		return
	}
	writeJSON(w, http.StatusOK, a.cfg.Agents.Agents())
}

// AgentAccess is the answer of POST /api/agents/{node}/revoke and
// /allow: the node, and whether it is revoked now.
type AgentAccess struct {
	NodeID  string `json:"node_id"`
	Revoked bool   `json:"revoked"`
	// WasRevoked, from allow only, says whether there was a revocation to
	// lift.
	WasRevoked *bool `json:"was_revoked,omitempty"`
}

// agentNode is the node of an agent route, once the caller is known to be
// a Forge admin and the node id is well formed; nil when it answered.
func (a *API) agentNode(w http.ResponseWriter, r *http.Request, p *auth.Principal) (string, AgentAdmin) {
	if err := a.auth.NeedAdmin(p); err != nil {
		a.refuse(w, r, err, true)
		return "", nil
	}
	node := r.PathValue("node")
	if err := wire.ValidNodeID(node); err != nil {
		httpError(w, http.StatusBadRequest, "node %q: %v (want a swarm node's full id, as docker node ls shows it)", node, err)
		return "", nil
	}
	if a.cfg.AgentAdmin == nil {
		httpError(w, http.StatusNotImplemented, "this coordinator cannot revoke or allow agents")
		return "", nil
	}
	return node, a.cfg.AgentAdmin
}

func (a *API) revokeAgent(w http.ResponseWriter, r *http.Request, p *auth.Principal) {
	node, admin := a.agentNode(w, r, p)
	if admin == nil {
		return
	}
	if err := admin.Revoke(r.Context(), node); err != nil {
		httpError(w, http.StatusInternalServerError, "revoke node %s: %v", node, err)
		return
	}
	a.log.Info("agent revoked", "node", node, "by", p.Name())
	writeJSON(w, http.StatusOK, AgentAccess{NodeID: node, Revoked: true})
}

func (a *API) allowAgent(w http.ResponseWriter, r *http.Request, p *auth.Principal) {
	node, admin := a.agentNode(w, r, p)
	if admin == nil {
		return
	}
	was, err := admin.Allow(r.Context(), node)
	if err != nil {
		httpError(w, http.StatusInternalServerError, "allow node %s: %v", node, err)
		return
	}
	a.log.Info("agent allowed", "node", node, "was_revoked", was, "by", p.Name())
	writeJSON(w, http.StatusOK, AgentAccess{NodeID: node, WasRevoked: &was})
}

func (a *API) metrics(w http.ResponseWriter, r *http.Request, p *auth.Principal) {
	if err := a.auth.NeedAdmin(p); err != nil {
		a.refuse(w, r, err, true)
		return
	}
	a.cfg.Metrics.ServeHTTP(w, r)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// httpError answers {"message": ...}, GitHub's shape, with nothing secret
// in it.
func httpError(w http.ResponseWriter, code int, format string, args ...any) {
	writeJSON(w, code, map[string]string{"message": redact.String(fmt.Sprintf(format, args...))})
}
