package auth

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/store"
)

const (
	// signInCookie holds the state of a sign-in under way, for the
	// callback to check.
	signInCookie = "forge_signin"
	signInTTL    = 10 * time.Minute

	CallbackPath = "/login/callback"
)

// sign is the MAC of a cookie's fields under the key, for one purpose.
func (a *Auth) sign(purpose string, fields ...string) string {
	m := hmac.New(sha256.New, a.cfg.Key)
	m.Write([]byte(purpose))
	for _, f := range fields {
		m.Write([]byte{0})
		m.Write([]byte(f))
	}
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// sealed is fields joined with their MAC and expiry: f1.f2...expiry.mac.
func (a *Auth) seal(purpose string, expires time.Time, fields ...string) string {
	fields = append(fields, strconv.FormatInt(expires.Unix(), 10))
	return strings.Join(fields, ".") + "." + a.sign(purpose, fields...)
}

// open checks a sealed value and returns its n fields.
func (a *Auth) open(purpose, v string, n int) ([]string, error) {
	parts := strings.Split(v, ".")
	if len(parts) != n+2 {
		return nil, fmt.Errorf("%w: malformed cookie", ErrBadCredential)
	}
	mac := parts[n+1]
	if !hmac.Equal([]byte(mac), []byte(a.sign(purpose, parts[:n+1]...))) {
		return nil, fmt.Errorf("%w: cookie signature does not match", ErrBadCredential)
	}
	exp, err := strconv.ParseInt(parts[n], 10, 64)
	if err != nil || !a.cfg.Now().Before(time.Unix(exp, 0)) {
		return nil, fmt.Errorf("%w: cookie expired", ErrBadCredential)
	}
	return parts[:n], nil
}

func (a *Auth) cookie(name, value, path string, maxAge int) *http.Cookie {
	return &http.Cookie{Name: name, Value: value, Path: path, MaxAge: maxAge,
		HttpOnly: true, Secure: a.secure, SameSite: http.SameSiteLaxMode}
}

func sessionID(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

func (a *Auth) session(ctx context.Context, v string) (*Principal, error) {
	f, err := a.open("session", v, 1)
	if err != nil {
		return nil, err
	}
	se, err := a.cfg.Store.Session(ctx, sessionID(f[0]))
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%w: signed out", ErrBadCredential)
	}
	if err != nil {
		return nil, err
	}
	if !a.cfg.Now().Before(se.Expires) {
		return nil, fmt.Errorf("%w: session expired", ErrBadCredential)
	}
	return &Principal{Kind: Browser, Login: se.Login, Admin: a.admins[strings.ToLower(se.Login)], Session: &se}, nil
}

// ClearSession tells the browser to drop its session cookie.
func (a *Auth) ClearSession(w http.ResponseWriter) {
	http.SetCookie(w, a.cookie(SessionCookie, "", "/", -1))
}

// CheckCSRF answers nil unless r is a browser session's state-changing
// request without the session's CSRF token (header or form field).
func (a *Auth) CheckCSRF(r *http.Request, p *Principal) error {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return nil
	}
	if p.Kind != Browser {
		return nil
	}
	tok := r.Header.Get(CSRFHeader)
	if tok == "" {
		tok = r.PostFormValue(CSRFField)
	}
	if tok == "" || !hmac.Equal([]byte(tok), []byte(p.Session.CSRF)) {
		return ErrCSRF
	}
	return nil
}

// Login starts a sign-in: GitHub's authorize page, with a state that the
// callback checks against a cookie only this browser holds.
func (a *Auth) Login(w http.ResponseWriter, r *http.Request) {
	if a.cfg.GitHub == nil {
		page(w, http.StatusNotImplemented, "Sign-in is not configured",
			"This coordinator has no GitHub OAuth client (--github-client-id, --github-client-secret-file). Scripts and the forge CLI can use the admin token.")
		return
	}
	state := random(32)
	next := localPath(r.URL.Query().Get("next"))
	http.SetCookie(w, a.cookie(signInCookie, a.seal("signin", a.cfg.Now().Add(signInTTL), state,
		base64.RawURLEncoding.EncodeToString([]byte(next))), CallbackPath, int(signInTTL/time.Second)))
	http.Redirect(w, r, a.cfg.GitHub.AuthorizeURL(state, a.callbackURL()), http.StatusFound)
}

func (a *Auth) callbackURL() string { return strings.TrimRight(a.cfg.PublicURL, "/") + CallbackPath }

// Callback ends a sign-in: the state must be this browser's, the code is
// traded for the person's token (kept here), and the browser gets a
// session cookie.
func (a *Auth) Callback(w http.ResponseWriter, r *http.Request) {
	if a.cfg.GitHub == nil {
		page(w, http.StatusNotImplemented, "Sign-in is not configured", "")
		return
	}
	// The state is good once: whatever happens, it goes.
	http.SetCookie(w, a.cookie(signInCookie, "", CallbackPath, -1))
	q := r.URL.Query()
	c, err := r.Cookie(signInCookie)
	var f []string
	if err == nil {
		f, err = a.open("signin", c.Value, 2)
	}
	if err != nil || q.Get("state") == "" || !hmac.Equal([]byte(q.Get("state")), []byte(f[0])) {
		page(w, http.StatusForbidden, "Sign-in state does not match",
			"This sign-in was not started by this browser, was used already, or took too long. Start again.")
		return
	}
	if e := q.Get("error"); e != "" {
		page(w, http.StatusForbidden, "GitHub did not sign you in", e+": "+q.Get("error_description"))
		return
	}
	ctx := r.Context()
	tok, err := a.cfg.GitHub.Exchange(ctx, q.Get("code"), a.callbackURL())
	if err != nil {
		page(w, http.StatusForbidden, "GitHub did not sign you in", err.Error())
		return
	}
	login, id, err := a.cfg.GitHub.User(ctx, tok)
	if err != nil {
		page(w, http.StatusBadGateway, "GitHub did not say who you are", err.Error())
		return
	}
	if err := a.startSession(ctx, w, coordinator.User{Login: login, GitHubID: id, Token: tok}); err != nil {
		page(w, http.StatusInternalServerError, "Could not sign you in", err.Error())
		return
	}
	next, _ := base64.RawURLEncoding.DecodeString(f[1])
	http.Redirect(w, r, localPath(string(next)), http.StatusFound)
}

func (a *Auth) startSession(ctx context.Context, w http.ResponseWriter, u coordinator.User) error {
	u.Updated = a.cfg.Now()
	if a.cfg.Tokens != nil {
		u.Token = a.cfg.Tokens.SealToken(u.Login, u.Token)
	}
	if err := a.cfg.Store.PutUser(ctx, u); err != nil {
		return err
	}
	// A new sign-in asks GitHub afresh.
	a.forget(u.Login)
	secret := random(32)
	now := a.cfg.Now()
	se := coordinator.Session{ID: sessionID(secret), Login: u.Login, CSRF: random(32), Created: now, Expires: now.Add(a.cfg.SessionTTL)}
	if err := a.cfg.Store.CreateSession(ctx, se); err != nil {
		return err
	}
	http.SetCookie(w, a.cookie(SessionCookie, a.seal("session", se.Expires, secret), "/", int(a.cfg.SessionTTL/time.Second)))
	return nil
}

func (a *Auth) forget(login string) {
	prefix := strings.ToLower(login) + "\x00"
	a.mu.Lock()
	defer a.mu.Unlock()
	for k := range a.perms {
		if strings.HasPrefix(k, prefix) {
			delete(a.perms, k)
		}
	}
}

// Logout ends p's session (the caller has checked CSRF).
func (a *Auth) Logout(w http.ResponseWriter, r *http.Request, p *Principal) {
	if p.Kind == Browser {
		if err := a.cfg.Store.DeleteSession(r.Context(), p.Session.ID); err != nil {
			page(w, http.StatusInternalServerError, "Could not sign you out", err.Error())
			return
		}
	}
	a.ClearSession(w)
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

// localPath keeps a redirect on this site: a path, not "//host".
func localPath(p string) string {
	u, err := url.Parse(p)
	if err != nil || p == "" || !strings.HasPrefix(p, "/") || strings.HasPrefix(p, "//") || strings.HasPrefix(p, "/\\") || u.Host != "" || u.Scheme != "" {
		return "/"
	}
	return p
}

var pageTmpl = template.Must(template.New("").Parse(`<!doctype html><html><head><meta charset="utf-8"><title>{{.T}} · Forge</title>
<link rel="stylesheet" href="/static/forge.css"></head><body><p><a href="/">Forge</a></p><h1>{{.T}}</h1><p>{{.M}}</p>
<p><a href="/login">Sign in with GitHub</a></p></body></html>`))

func page(w http.ResponseWriter, code int, title, msg string) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(code)
	pageTmpl.Execute(w, struct{ T, M string }{title, msg})
}
