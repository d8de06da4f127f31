package web

import (
	"embed"
	"encoding/json"
	"errors"
	"html/template"
	"io"
	"net/http"
	"time"

	"github.com/docker/go-units"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/auth"
	"github.com/forge-ci/forge/coordinator/store"
	"github.com/forge-ci/forge/internal/redact"
)

// pages are the HTML templates. Build output goes through them only as
// text in runs that renderLine made (html/template escapes it); the build
// page's script adds what follows with textContent, never as HTML.
// Scripts and styles are files under /static/, so the pages' CSP allows
// no inline script.
//
//go:embed templates/*.html
var templateFS embed.FS

//go:embed static/*
var staticFS embed.FS

var pages = template.Must(template.New("").Funcs(template.FuncMap{
	"ago":         func(t time.Time) string { return duration(time.Since(t)) + " ago" },
	"short":       func(sha string) string { return sha[:min(len(sha), 7)] },
	"artifactURL": artifactURL,
	"size":        func(n int64) string { return units.BytesSize(float64(n)) },
	"when": func(t time.Time) string {
		if t.IsZero() {
			return "never"
		}
		return t.UTC().Format("2006-01-02 15:04 UTC")
	},
}).ParseFS(templateFS, "templates/*.html"))

// favicon answers the browsers that ask /favicon.ico whatever the page
// names (an SVG image opened on its own, for one).
func favicon(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "image/svg+xml")
	w.Header().Set("Cache-Control", "max-age=86400")
	http.ServeFileFS(w, r, staticFS, "static/favicon.svg")
}

// pageData is what every page gets: who is looking, and the CSRF token
// its forms send back.
type pageData struct {
	Title  string
	P      *auth.Principal
	SignIn bool // GitHub sign-in is configured
	CSRF   string

	List       *listView // the builds page
	Build      *coordinator.Build
	BP         *buildView  // the build page's log, steps and times
	Agents     *agentsView // the agents page
	CanCancel  bool
	CanApprove bool
	Artifacts  []ArtifactView // of a final build
	Tokens     []coordinator.APIToken
	NewToken   string
	Message    string
	// A repository's secrets page; CanSecrets: the build page links to it.
	Owner, Repo string
	Secrets     []coordinator.Secret
	CanSecrets  bool
}

func (a *API) data(p *auth.Principal, title string) *pageData {
	d := &pageData{Title: title, P: p, SignIn: a.auth.SignInConfigured()}
	if p.Session != nil {
		d.CSRF = p.Session.CSRF
	}
	return d
}

func (a *API) render(w http.ResponseWriter, code int, name string, d *pageData) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	if err := pages.ExecuteTemplate(w, name, d); err != nil {
		a.log.Error("page", "name", name, "err", err)
	}
}

func (a *API) errorPage(w http.ResponseWriter, r *http.Request, code int, err error) {
	p, perr := a.auth.Identify(r)
	if perr != nil {
		p = &auth.Principal{Kind: auth.Anonymous}
	}
	d := a.data(p, http.StatusText(code))
	d.Message = redact.String(err.Error())
	a.render(w, code, "error", d)
}

// cancelForm is the build page's cancel button, for browsers without
// script as much as with.
func (a *API) cancelForm(w http.ResponseWriter, r *http.Request, p *auth.Principal) {
	b := a.build(w, r, p, coordinator.Write, false)
	if b == nil {
		return
	}
	if err := a.cancel(r.Context(), b, p); err != nil && !errors.Is(err, coordinator.ErrNotRunning) {
		a.errorPage(w, r, http.StatusInternalServerError, err)
		return
	}
	http.Redirect(w, r, "/builds/"+b.ID, http.StatusSeeOther)
}

// approveForm is the build page's approve button.
func (a *API) approveForm(w http.ResponseWriter, r *http.Request, p *auth.Principal) {
	b := a.build(w, r, p, coordinator.Write, false)
	if b == nil {
		return
	}
	if _, err := a.cfg.Builds.Approve(r.Context(), b.ID, p.Name()); err != nil {
		code := http.StatusInternalServerError
		if errors.Is(err, coordinator.ErrNotAwaiting) {
			code, err = http.StatusConflict, errors.New(notAwaitingMessage(r.Context(), a.cfg.Store, b))
		}
		a.errorPage(w, r, code, err)
		return
	}
	http.Redirect(w, r, "/builds/"+b.ID, http.StatusSeeOther)
}

func (a *API) logoutPage(w http.ResponseWriter, r *http.Request, p *auth.Principal) {
	a.render(w, http.StatusOK, "logout", a.data(p, "Sign out"))
}

// person is the signed-in person a token operation is for: tokens belong
// to a GitHub login, which the admin token has not. browser says the
// operation needs a browser session (making a token: a leaked token must
// not mint others that outlive its revocation).
func (a *API) person(w http.ResponseWriter, r *http.Request, p *auth.Principal, browser, api bool) bool {
	var err error
	switch {
	case p.Kind == auth.Anonymous:
		err = auth.ErrNoCredential
	case p.Login == "":
		err = errors.New("the admin token has no personal tokens: sign in with GitHub to make one")
	case browser && p.Kind != auth.Browser:
		err = errors.New("personal tokens are made in a signed-in browser, not with a token")
	}
	if err == nil {
		return true
	}
	if errors.Is(err, auth.ErrNoCredential) {
		a.refuse(w, r, err, api)
		return false
	}
	a.refuse(w, r, errors.Join(auth.ErrForbidden, err), api)
	return false
}

// TokenView is a personal token as the API shows it; Token is set only
// in the answer that made it.
type TokenView struct {
	ID       string     `json:"id"`
	Name     string     `json:"name"`
	Token    string     `json:"token,omitempty"`
	Created  time.Time  `json:"created"`
	LastUsed *time.Time `json:"last_used,omitempty"`
}

func tokenView(t coordinator.APIToken) TokenView {
	v := TokenView{ID: t.ID, Name: t.Name, Created: t.Created}
	if !t.LastUsed.IsZero() {
		v.LastUsed = &t.LastUsed
	}
	return v
}

func (a *API) listTokens(w http.ResponseWriter, r *http.Request, p *auth.Principal) {
	if !a.person(w, r, p, false, true) {
		return
	}
	ts, err := a.cfg.Store.APITokens(r.Context(), p.Login)
	if err != nil {
		httpError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	out := make([]TokenView, 0, len(ts))
	for _, t := range ts {
		out = append(out, tokenView(t))
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *API) createToken(w http.ResponseWriter, r *http.Request, p *auth.Principal) {
	if !a.person(w, r, p, true, true) {
		return
	}
	var in struct {
		Name string `json:"name"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 4<<10)).Decode(&in); err != nil {
		httpError(w, http.StatusBadRequest, "body: want {\"name\": \"...\"}: %v", err)
		return
	}
	tok, t, err := a.auth.NewToken(r.Context(), p.Login, in.Name)
	if err != nil {
		httpError(w, http.StatusBadRequest, "%v", err)
		return
	}
	v := tokenView(t)
	v.Token = tok
	writeJSON(w, http.StatusCreated, v)
}

func (a *API) revokeToken(w http.ResponseWriter, r *http.Request, p *auth.Principal) {
	if !a.person(w, r, p, false, true) {
		return
	}
	err := a.cfg.Store.DeleteAPIToken(r.Context(), p.Login, r.PathValue("id"))
	if errors.Is(err, store.ErrNotFound) {
		httpError(w, http.StatusNotFound, "no token %q of yours", r.PathValue("id"))
		return
	}
	if err != nil {
		httpError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *API) tokensPage(w http.ResponseWriter, r *http.Request, p *auth.Principal) {
	a.tokens(w, r, p, "")
}

func (a *API) tokens(w http.ResponseWriter, r *http.Request, p *auth.Principal, made string) {
	if !a.person(w, r, p, false, false) {
		return
	}
	ts, err := a.cfg.Store.APITokens(r.Context(), p.Login)
	if err != nil {
		a.errorPage(w, r, http.StatusInternalServerError, err)
		return
	}
	d := a.data(p, "Tokens")
	d.Tokens, d.NewToken = ts, made
	a.render(w, http.StatusOK, "tokens", d)
}

func (a *API) createTokenForm(w http.ResponseWriter, r *http.Request, p *auth.Principal) {
	if !a.person(w, r, p, true, false) {
		return
	}
	tok, _, err := a.auth.NewToken(r.Context(), p.Login, r.PostFormValue("name"))
	if err != nil {
		a.errorPage(w, r, http.StatusBadRequest, err)
		return
	}
	// Shown once, in this answer only.
	a.tokens(w, r, p, tok)
}

func (a *API) revokeTokenForm(w http.ResponseWriter, r *http.Request, p *auth.Principal) {
	if !a.person(w, r, p, false, false) {
		return
	}
	if err := a.cfg.Store.DeleteAPIToken(r.Context(), p.Login, r.PathValue("id")); err != nil && !errors.Is(err, store.ErrNotFound) {
		a.errorPage(w, r, http.StatusInternalServerError, err)
		return
	}
	http.Redirect(w, r, "/tokens", http.StatusSeeOther)
}
