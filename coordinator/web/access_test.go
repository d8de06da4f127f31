package web

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/auth"
	"github.com/forge-ci/forge/coordinator/secrets"
)

const adminToken = "forge_admin_test_0123456789abcdef"

// fakeGitHub is GitHub's sign-in side, for the logic of the front door.
// A code is the login it signs in; tokens are "tok-<login>".
type fakeGitHub struct {
	mu      sync.Mutex
	perms   map[string]coordinator.Permission // "login owner/repo"
	revoked map[string]bool
	asked   int // Permission calls
}

func newFakeGitHub() *fakeGitHub {
	return &fakeGitHub{perms: map[string]coordinator.Permission{}, revoked: map[string]bool{}}
}

func (f *fakeGitHub) set(login, repo string, p coordinator.Permission) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.perms[login+" "+repo] = p
}

func (f *fakeGitHub) AuthorizeURL(state, redirect string) string {
	return "https://github.test/login/oauth/authorize?" + url.Values{"state": {state}, "redirect_uri": {redirect}}.Encode()
}

func (f *fakeGitHub) Exchange(ctx context.Context, code, redirect string) (string, error) {
	if code == "" || redirect != "http://forge.test/login/callback" {
		return "", errors.New("bad_verification_code")
	}
	return "tok-" + code, nil
}

func (f *fakeGitHub) login(token string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	l := strings.TrimPrefix(token, "tok-")
	if f.revoked[l] {
		return "", fmt.Errorf("%w: 401 Bad credentials", coordinator.ErrBadCredential)
	}
	return l, nil
}

func (f *fakeGitHub) User(ctx context.Context, token string) (string, int64, error) {
	l, err := f.login(token)
	return l, int64(len(l)), err
}

func (f *fakeGitHub) Permission(ctx context.Context, token, owner, repo string) (coordinator.Permission, error) {
	l, err := f.login(token)
	if err != nil {
		return coordinator.NoAccess, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.asked++
	return f.perms[l+" "+owner+"/"+repo], nil
}

// caller is one kind of requester.
type caller struct {
	name    string
	bearer  string         // Authorization: Bearer
	cookies []*http.Cookie // a browser's
	csrf    string         // its session's CSRF token
	header  http.Header    // more headers
}

var nobody = &caller{name: "nobody"}

func (e *apiEnv) call(c *caller, method, path, body string) (int, http.Header, string) {
	e.t.Helper()
	req, err := http.NewRequest(method, e.url+path, strings.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	if c.bearer != "" {
		req.Header.Set("Authorization", "Bearer "+c.bearer)
	}
	for _, ck := range c.cookies {
		req.AddCookie(ck)
	}
	if c.csrf != "" && method != http.MethodGet {
		req.Header.Set(auth.CSRFHeader, c.csrf)
	}
	for k, v := range c.header {
		req.Header[k] = v
	}
	if strings.HasPrefix(body, "{") {
		req.Header.Set("Content-Type", "application/json")
	} else if body != "" {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	hc := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := hc.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// signIn goes through /login and /login/callback as login, and reads the
// session's CSRF token off a page, as a browser would.
func (e *apiEnv) signIn(login string) *caller {
	e.t.Helper()
	status, hdr, _ := e.call(nobody, "GET", "/login?next=/tokens", "")
	loc, _ := url.Parse(hdr.Get("Location"))
	if status != http.StatusFound || loc == nil || loc.Query().Get("state") == "" {
		e.t.Fatalf("/login: %d to %q", status, hdr.Get("Location"))
	}
	state := loc.Query().Get("state")
	browser := &caller{name: login, cookies: cookiesOf(hdr)}
	status, hdr, body := e.call(browser, "GET", "/login/callback?"+url.Values{"code": {login}, "state": {state}}.Encode(), "")
	if status != http.StatusFound || hdr.Get("Location") != "/tokens" {
		e.t.Fatalf("/login/callback: %d to %q: %s", status, hdr.Get("Location"), body)
	}
	browser.cookies = nil
	for _, ck := range cookiesOf(hdr) {
		if ck.Name == auth.SessionCookie {
			browser.cookies = []*http.Cookie{ck}
			if !ck.HttpOnly || ck.SameSite != http.SameSiteLaxMode || ck.Secure || ck.MaxAge <= 0 {
				e.t.Errorf("session cookie %+v: want HttpOnly, SameSite=Lax, not Secure on http, expiring", ck)
			}
		}
	}
	if len(browser.cookies) != 1 {
		e.t.Fatalf("no session cookie after the callback: %v", hdr["Set-Cookie"])
	}
	_, _, page := e.call(browser, "GET", "/tokens", "")
	m := csrfRE.FindStringSubmatch(page)
	if m == nil {
		e.t.Fatalf("no CSRF token on /tokens: %s", page)
	}
	browser.csrf = m[1]
	return browser
}

func cookiesOf(h http.Header) []*http.Cookie {
	return (&http.Response{Header: h}).Cookies()
}

// personalToken makes a token for the browser's person.
func (e *apiEnv) personalToken(b *caller, name string) (id, token string) {
	e.t.Helper()
	status, _, body := e.call(b, "POST", "/api/tokens", `{"name":"`+name+`"}`)
	m := regexp.MustCompile(`"id": "([^"]+)"[\s\S]*"token": "(forge_pat_[^"]+)"`).FindStringSubmatch(body)
	if status != http.StatusCreated || m == nil {
		e.t.Fatalf("POST /api/tokens: %d %s", status, body)
	}
	return m[1], m[2]
}

// readmeRoutes is the route table of the README.
func readmeRoutes(t *testing.T) map[string]string {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "<!-- routes -->")
	table, _, ok2 := strings.Cut(rest, "<!-- /routes -->")
	if !ok || !ok2 {
		t.Fatal("README.md has no <!-- routes --> table")
	}
	out := map[string]string{}
	row := regexp.MustCompile("^\\| `([A-Z]+ [^`]+)` \\| ([a-z-]+) \\|")
	for _, line := range strings.Split(table, "\n") {
		if m := row.FindStringSubmatch(line); m != nil {
			// The mux cannot match "{repo}.svg": the badge's handler cuts it.
			out[strings.Replace(m[1], "{repo}.svg", "{repo}", 1)] = m[2]
		}
	}
	return out
}

// TestRoutesAsREADME tries every route of the README's table with every
// kind of caller, and checks the answer its "who" promises; refused
// writes change nothing.
func TestRoutesAsREADME(t *testing.T) {
	now := time.Now()
	pub := build("pub", coordinator.Running, now)
	pub.Repo = "open"
	priv := build("priv", coordinator.Running, now.Add(time.Second))
	priv.Repo, priv.Public = "secret", false
	pub.InstallationID, priv.InstallationID = 1, 1 // from GitHub: they may be re-run
	e := newAPIEnv(t, pub, priv)
	e.gh.set("alice", "acme/secret", coordinator.Read)
	e.gh.set("bob", "acme/secret", coordinator.Write)
	e.gh.set("bob", "acme/open", coordinator.Write)

	alice, bob, carol, dave := e.signIn("alice"), e.signIn("bob"), e.signIn("carol"), e.signIn("dave")
	_, bobToken := e.personalToken(bob, "ci")
	revokedID, revoked := e.personalToken(alice, "old")
	if status, _, _ := e.call(alice, "DELETE", "/api/tokens/"+revokedID, ""); status != http.StatusNoContent {
		t.Fatalf("revoke: %d", status)
	}
	forged := &caller{name: "forged cookie", cookies: []*http.Cookie{{Name: auth.SessionCookie, Value: strings.Replace(alice.cookies[0].Value, ".", "x.", 1)}}}
	admin := &caller{name: "admin token", bearer: adminToken}

	type kind struct {
		c       *caller
		perm    map[string]coordinator.Permission // per build
		bad     bool                              // a refused credential
		person  bool                              // a login of its own
		browser bool
		admin   bool
	}
	callers := []kind{
		{c: nobody},
		{c: &caller{name: "malformed bearer", header: http.Header{"Authorization": {"Basic Zm9vOmJhcg=="}}}, bad: true},
		{c: &caller{name: "unknown bearer", bearer: "forge_pat_nope"}, bad: true},
		{c: &caller{name: "revoked token", bearer: revoked}, bad: true},
		{c: forged, bad: true},
		{c: alice, perm: map[string]coordinator.Permission{"priv": coordinator.Read}, person: true, browser: true},
		{c: bob, perm: map[string]coordinator.Permission{"priv": coordinator.Write, "pub": coordinator.Write}, person: true, browser: true},
		{c: &caller{name: "bob's token", bearer: bobToken}, perm: map[string]coordinator.Permission{"priv": coordinator.Write, "pub": coordinator.Write}, person: true},
		{c: carol, person: true, browser: true},
		{c: dave, person: true, browser: true, admin: true},
		{c: admin, perm: map[string]coordinator.Permission{"priv": coordinator.Admin, "pub": coordinator.Admin}, admin: true},
	}

	routes := readmeRoutes(t)
	api, _ := New(Config{Builds: &fakeBuilds{}, Store: e.st, Logs: fakeLogs{}, Agents: fakeAgents{}, Auth: mustAuth(t, e),
		Webhook: http.NotFoundHandler(), Metrics: http.NotFoundHandler(), Artifacts: e.arts, Secrets: e.keeper})
	served := map[string]string{}
	for _, r := range api.Routes() {
		served[r.Pattern] = r.Who
	}
	for p, who := range served {
		if routes[strings.Replace(p, "{$}", "", 1)] != who {
			t.Errorf("route %s (who: %s) is %q in the README's table", p, who, routes[p])
		}
	}
	for p := range routes {
		if _, ok := served[p]; !ok && served[p+"{$}"] == "" {
			t.Errorf("the README lists %s, which is not served", p)
		}
	}

	for pattern, who := range routes {
		method, path, _ := strings.Cut(pattern, " ")
		page := !strings.HasPrefix(path, "/api/") && !strings.HasPrefix(path, "/badge/") && path != "/metrics"
		ids := []string{""}
		if strings.Contains(path, "{id}") || strings.Contains(path, "{repo}") {
			ids = []string{"pub", "priv"}
		}
		for _, id := range ids {
			for _, k := range callers {
				p := strings.ReplaceAll(path, "{id}", id)
				p = strings.ReplaceAll(p, "{file}", "forge.css")
				p = strings.ReplaceAll(p, "{node}", "n1")
				p = strings.ReplaceAll(p, "{path...}", "dist/report.txt")
				// A repository's routes: the repository of build id.
				repo := map[string]string{"pub": "acme/open", "priv": "acme/secret"}[id]
				if strings.HasPrefix(p, "/badge/") {
					repo += ".svg"
				}
				p = strings.ReplaceAll(p, "{owner}/{repo}", repo)
				p = strings.ReplaceAll(p, "{name}", "WALK")
				body := ""
				switch pattern {
				case "POST /api/tokens":
					body = `{"name":"walk"}`
				case "POST /tokens":
					body = "name=walk"
				case "PUT /api/repos/{owner}/{repo}/secrets/{name}":
					body = "walk-value"
				case "POST /repos/{owner}/{repo}/secrets":
					body = "name=WALK&value=walk-value"
				}
				if strings.Contains(pattern, "tokens/{id}") || (pattern == "POST /logout" && k.browser) {
					continue // a token's id, and signing out, are tried in their own tests
				}
				cancels, approvals, agentCalls, reruns := len(e.cancels), len(e.approvals), len(e.agents.called()), len(e.reruns)
				stored := e.buildCount()
				secretsBefore := secretRows(t, e.st)
				status, _, got := e.call(k.c, method, p, body)
				if status == http.StatusConflict && strings.HasSuffix(pattern, "/approve") {
					// These builds run already: the caller passed the door.
					status = http.StatusOK
				}
				if status == http.StatusNotFound && method == "DELETE" && strings.Contains(got, "has no secret") {
					// Not set (yet): the caller passed the door.
					status = http.StatusNoContent
				}
				if status >= 400 && len(e.approvals) != approvals {
					t.Errorf("%s %s as %s: refused with %d, yet a build was approved", method, p, k.c.name, status)
				}
				want := expect(who, id, k.perm[id], k.c == nobody, k.bad, k.person, k.browser, k.admin, page, method)
				if !want(status) {
					t.Errorf("%s %s as %s: %d %.200s", method, p, k.c.name, status, got)
				}
				if status >= 400 && len(e.cancels) != cancels {
					t.Errorf("%s %s as %s: refused with %d, yet a build was cancelled", method, p, k.c.name, status)
				}
				if status >= 400 && (len(e.reruns) != reruns || e.buildCount() != stored) {
					t.Errorf("%s %s as %s: refused with %d, yet a build was re-run", method, p, k.c.name, status)
				}
				if n := secretRows(t, e.st); status >= 400 && n != secretsBefore {
					t.Errorf("%s %s as %s: refused with %d, yet the secrets changed (%d rows, %d before)", method, p, k.c.name, status, n, secretsBefore)
				}
				if status >= 400 && len(e.agents.called()) != agentCalls {
					t.Errorf("%s %s as %s: refused with %d, yet the hub was asked %q", method, p, k.c.name, status, e.agents.called()[agentCalls:])
				}
				if status >= 400 && !page && !strings.Contains(got, `"message"`) {
					t.Errorf("%s %s as %s: refusal %d without a JSON message: %s", method, p, k.c.name, status, got)
				}
			}
		}
	}
}

func mustAuth(t *testing.T, e *apiEnv) *auth.Auth {
	a, err := auth.New(auth.Config{Store: e.st, GitHub: e.gh, PublicURL: "http://forge.test", Key: bytes.Repeat([]byte{7}, 32), AdminToken: adminToken})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// expect is what a "who" promises one caller: the answer's status must
// pass the returned check.
func expect(who, id string, perm coordinator.Permission, nobody, bad, person, browser, admin, page bool, method string) func(int) bool {
	is := func(codes ...int) func(int) bool {
		return func(s int) bool {
			for _, c := range codes {
				if s == c {
					return true
				}
			}
			return false
		}
	}
	ok := func(s int) bool {
		return s >= 200 && s < 400 && s != http.StatusSeeOther || (s == http.StatusSeeOther && method == "POST")
	}
	// Refused for no credential: a page sends a browser to sign in.
	unauth := is(http.StatusUnauthorized)
	if page && method == "GET" {
		unauth = is(http.StatusSeeOther)
	}
	if who == Anyone {
		// Open: no credential is asked for (bad input is still refused).
		return func(s int) bool {
			return s != http.StatusUnauthorized && s != http.StatusForbidden || s == http.StatusForbidden && method == "GET"
		}
	}
	if bad {
		return unauth
	}
	if id == "pub" && perm < coordinator.Read {
		perm = coordinator.Read
	}
	if who == Public && id != "" {
		// One repository's (a badge): public when it is, else read.
		who = Reader
	}
	switch who {
	case Public:
		return ok
	case Reader, Writer, RepoAdmin:
		need := map[string]coordinator.Permission{Reader: coordinator.Read, Writer: coordinator.Write, RepoAdmin: coordinator.Admin}[who]
		switch {
		case perm >= need:
			return ok
		case perm == coordinator.NoAccess:
			return is(http.StatusNotFound)
		case nobody:
			return unauth
		}
		return is(http.StatusForbidden)
	case Admin:
		switch {
		case admin:
			return ok
		case nobody:
			return unauth
		}
		return is(http.StatusForbidden)
	case Person, Browser:
		switch {
		case nobody:
			return unauth
		case !person, who == Browser && !browser:
			return is(http.StatusForbidden)
		}
		return ok
	}
	return func(int) bool { return false }
}

// clock is a settable time for the front door.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func privateBuild(id string) *coordinator.Build {
	b := build(id, coordinator.Running, time.Now())
	b.Repo, b.Public = "secret", false
	return b
}

func TestSessionExpiresAndSignsOut(t *testing.T) {
	ck := &clock{t: time.Now()}
	e := newAPIEnvWith(t, func(c *auth.Config) { c.Now = ck.now }, privateBuild("priv"))
	e.gh.set("alice", "acme/secret", coordinator.Read)
	alice := e.signIn("alice")
	if status, _, _ := e.call(alice, "GET", "/api/builds/priv", ""); status != 200 {
		t.Fatalf("signed in: %d", status)
	}
	ck.add(auth.DefaultSessionTTL + time.Second)
	status, hdr, _ := e.call(alice, "GET", "/api/builds/priv", "")
	if status != 401 || hdr.Get("WWW-Authenticate") == "" {
		t.Errorf("expired session: %d %v", status, hdr)
	}
	if status, hdr, _ := e.call(alice, "GET", "/builds/priv", ""); status != 303 || !strings.HasPrefix(hdr.Get("Location"), "/login?next=") {
		t.Errorf("expired session, a page: %d to %q, want to sign in", status, hdr.Get("Location"))
	}

	// Signing out ends the session on the server: the old cookie is no
	// longer taken.
	ck.add(-auth.DefaultSessionTTL)
	bob := e.signIn("bob")
	if status, _, _ := e.call(&caller{name: "bob without csrf", cookies: bob.cookies}, "POST", "/logout", ""); status != 403 {
		t.Errorf("sign-out without CSRF: %d", status)
	}
	if status, _, _ := e.call(bob, "GET", "/api/tokens", ""); status != 200 {
		t.Errorf("after a refused sign-out: %d", status)
	}
	if status, _, _ := e.call(bob, "POST", "/logout", ""); status != 303 {
		t.Errorf("sign-out: %d", status)
	}
	if status, _, _ := e.call(bob, "GET", "/api/tokens", ""); status != 401 {
		t.Errorf("the cookie of a signed-out session: %d, want 401", status)
	}
}

func TestSignInRefusals(t *testing.T) {
	e := newAPIEnv(t)
	_, hdr, _ := e.call(nobody, "GET", "/login", "")
	loc, _ := url.Parse(hdr.Get("Location"))
	state, started := loc.Query().Get("state"), &caller{name: "browser", cookies: cookiesOf(hdr)}
	for _, c := range []struct {
		name string
		who  *caller
		q    url.Values
	}{
		{"no state cookie", nobody, url.Values{"code": {"mallory"}, "state": {state}}},
		{"another state", started, url.Values{"code": {"mallory"}, "state": {"x" + state}}},
		{"no state", started, url.Values{"code": {"mallory"}}},
		{"a forged state cookie", &caller{cookies: []*http.Cookie{{Name: "forge_signin", Value: "abc." + "Lw.9999999999.bad"}}}, url.Values{"code": {"mallory"}, "state": {"abc"}}},
	} {
		status, hdr, body := e.call(c.who, "GET", "/login/callback?"+c.q.Encode(), "")
		if status != 403 || !strings.Contains(body, "state does not match") {
			t.Errorf("%s: %d %.100s", c.name, status, body)
		}
		for _, ck := range cookiesOf(hdr) {
			if ck.Name == auth.SessionCookie && ck.Value != "" {
				t.Errorf("%s: a session cookie was set", c.name)
			}
		}
	}
	// The right state works once; replayed, the callback is refused.
	q := "/login/callback?" + url.Values{"code": {"alice"}, "state": {state}}.Encode()
	if status, _, _ := e.call(started, "GET", q, ""); status != 302 {
		t.Fatalf("callback: %d", status)
	}
	if status, _, _ := e.call(&caller{}, "GET", q, ""); status != 403 {
		t.Errorf("replayed callback: %d", status)
	}
	// A next that leaves the site goes home instead.
	for _, next := range []string{"//evil.example/x", "https://evil.example/", "/\\evil.example"} {
		_, hdr, _ := e.call(nobody, "GET", "/login?next="+url.QueryEscape(next), "")
		loc, _ := url.Parse(hdr.Get("Location"))
		b := &caller{cookies: cookiesOf(hdr)}
		_, hdr, _ = e.call(b, "GET", "/login/callback?"+url.Values{"code": {"alice"}, "state": {loc.Query().Get("state")}}.Encode(), "")
		if hdr.Get("Location") != "/" {
			t.Errorf("next %q: sent to %q", next, hdr.Get("Location"))
		}
	}
	var n int
	if err := e.st.DB().QueryRow(`SELECT count(*) FROM sessions WHERE login = 'mallory'`).Scan(&n); err != nil || n != 0 {
		t.Errorf("sessions of refused sign-ins: %d %v", n, err)
	}
}

func TestCrossSiteWritesRefused(t *testing.T) {
	e := newAPIEnv(t, privateBuild("priv"))
	e.gh.set("bob", "acme/secret", coordinator.Write)
	bob := e.signIn("bob")
	noCSRF := &caller{name: "no csrf", cookies: bob.cookies}
	wrongCSRF := &caller{name: "wrong csrf", cookies: bob.cookies, csrf: "x" + bob.csrf}
	crossSite := &caller{name: "cross-site", cookies: bob.cookies, csrf: bob.csrf, header: http.Header{"Sec-Fetch-Site": {"cross-site"}}}
	otherOrigin := &caller{name: "other origin", cookies: bob.cookies, csrf: bob.csrf, header: http.Header{"Origin": {"https://evil.example"}}}
	for _, c := range []*caller{noCSRF, wrongCSRF, crossSite, otherOrigin} {
		for _, p := range []string{"/api/builds/priv/cancel", "/builds/priv/cancel", "/api/builds/priv/approve", "/builds/priv/approve", "/api/tokens", "/tokens"} {
			body := `{"name":"x"}`
			if !strings.HasPrefix(p, "/api/") {
				body = "name=x"
			}
			if status, _, _ := e.call(c, "POST", p, body); status != 403 {
				t.Errorf("POST %s with %s: %d, want 403", p, c.name, status)
			}
		}
	}
	if len(e.cancels) != 0 || len(e.approvals) != 0 {
		t.Errorf("cancelled or approved by refused requests: %v %v", e.cancels, e.approvals)
	}
	if ts, _ := e.st.APITokens(context.Background(), "bob"); len(ts) != 0 {
		t.Errorf("tokens made by refused requests: %v", ts)
	}
	// The same, done right, works; a bearer token needs no CSRF token.
	if status, _, _ := e.call(bob, "POST", "/api/builds/priv/cancel", ""); status != 202 {
		t.Errorf("cancel with the CSRF token: %d", status)
	}
	_, tok := e.personalToken(bob, "script")
	if status, _, _ := e.call(&caller{bearer: tok}, "POST", "/api/builds/priv/cancel", ""); status != 202 {
		t.Errorf("cancel with a personal token: %d", status)
	}
}

func TestPersonalTokens(t *testing.T) {
	e := newAPIEnv(t, privateBuild("priv"))
	e.gh.set("alice", "acme/secret", coordinator.Read)
	alice := e.signIn("alice")
	id, tok := e.personalToken(alice, "laptop")
	// Kept as a hash only: the token appears nowhere in the database.
	var n int
	if err := e.st.DB().QueryRow(`SELECT count(*) FROM api_tokens WHERE hash = ? AND id = ?`, auth.HashToken(tok), id).Scan(&n); err != nil || n != 1 {
		t.Fatalf("stored hash: %d %v", n, err)
	}
	if err := e.st.DB().QueryRow(`SELECT count(*) FROM api_tokens WHERE hash = ? OR name = ? OR id = ?`, tok, tok, tok).Scan(&n); err != nil || n != 0 {
		t.Errorf("the token itself is stored: %d %v", n, err)
	}
	me := &caller{name: "alice's token", bearer: tok}
	if status, _, body := e.call(me, "GET", "/api/tokens", ""); status != 200 || strings.Contains(body, tok) || !strings.Contains(body, "laptop") {
		t.Errorf("list: %d %s", status, body)
	}
	if status, _, _ := e.call(me, "GET", "/api/builds/priv", ""); status != 200 {
		t.Errorf("alice's token reading alice's repository: %d", status)
	}
	// A token cannot make another; another person cannot revoke it.
	if status, _, _ := e.call(me, "POST", "/api/tokens", `{"name":"more"}`); status != 403 {
		t.Errorf("a token making a token: %d", status)
	}
	carol := e.signIn("carol")
	if status, _, _ := e.call(carol, "DELETE", "/api/tokens/"+id, ""); status != 404 {
		t.Errorf("carol revoking alice's token: %d", status)
	}
	if status, _, _ := e.call(me, "GET", "/api/builds/priv", ""); status != 200 {
		t.Errorf("after carol's try: %d", status)
	}
	for _, name := range []string{"", strings.Repeat("x", 101)} {
		if status, _, _ := e.call(alice, "POST", "/api/tokens", `{"name":"`+name+`"}`); status != 400 {
			t.Errorf("token named %q: %d", name, status)
		}
	}
	if status, _, _ := e.call(alice, "DELETE", "/api/tokens/"+id, ""); status != 204 {
		t.Errorf("revoke: %d", status)
	}
	if status, _, body := e.call(me, "GET", "/api/builds/priv", ""); status != 401 || !strings.Contains(body, "revoked") {
		t.Errorf("a revoked token: %d %s", status, body)
	}
}

// GitHub is asked once per person and repository in 5 minutes; when
// GitHub no longer takes the person's authorisation they must sign in
// again.
func TestPermissionsFromGitHub(t *testing.T) {
	ck := &clock{t: time.Now()}
	e := newAPIEnvWith(t, func(c *auth.Config) { c.Now = ck.now }, privateBuild("priv"))
	e.gh.set("alice", "acme/secret", coordinator.Read)
	alice := e.signIn("alice")
	for range 3 {
		if status, _, _ := e.call(alice, "GET", "/api/builds/priv", ""); status != 200 {
			t.Fatalf("read: %d", status)
		}
	}
	if e.gh.asked != 1 {
		t.Errorf("GitHub asked %d times in 5 minutes, want 1", e.gh.asked)
	}
	e.gh.set("alice", "acme/secret", coordinator.NoAccess)
	ck.add(auth.PermissionTTL + time.Second)
	if status, _, _ := e.call(alice, "GET", "/api/builds/priv", ""); status != 404 {
		t.Errorf("after GitHub took read away: %d, want 404", status)
	}
	if e.gh.asked != 2 {
		t.Errorf("GitHub asked %d times, want 2", e.gh.asked)
	}
	e.gh.mu.Lock()
	e.gh.revoked["alice"] = true
	e.gh.mu.Unlock()
	ck.add(auth.PermissionTTL + time.Second)
	if status, _, body := e.call(alice, "GET", "/api/builds/priv", ""); status != 401 || !strings.Contains(body, "sign in again") {
		t.Errorf("revoked GitHub authorisation: %d %s", status, body)
	}
}

func TestRequireSignIn(t *testing.T) {
	e := newAPIEnvWith(t, func(c *auth.Config) { c.RequireSignIn = true }, build("pub", coordinator.Running, time.Now()))
	for _, p := range []string{"/api/builds", "/api/builds/pub", "/api/builds/pub/log"} {
		if status, _, _ := e.do("GET", p); status != 401 {
			t.Errorf("%s without a credential under --require-sign-in: %d", p, status)
		}
	}
	for _, p := range []string{"/", "/builds/pub"} {
		if status, hdr, _ := e.do("GET", p); status != 303 || !strings.HasPrefix(hdr.Get("Location"), "/login") {
			t.Errorf("%s without a credential under --require-sign-in: %d %q", p, status, hdr.Get("Location"))
		}
	}
	if status, _, _ := e.call(e.signIn("carol"), "GET", "/api/builds/pub", ""); status != 200 {
		t.Errorf("signed in under --require-sign-in: %d", status)
	}
	if status, _, _ := e.do("GET", "/healthz"); status != 200 {
		t.Errorf("healthz: %d", status)
	}
}

func TestSignInNotConfigured(t *testing.T) {
	e := newAPIEnvWith(t, func(c *auth.Config) { c.GitHub = nil }, build("pub", coordinator.Running, time.Now()))
	if status, _, body := e.do("GET", "/login"); status != 501 || !strings.Contains(body, "not configured") {
		t.Errorf("/login: %d %s", status, body)
	}
	if _, _, body := e.do("GET", "/"); !strings.Contains(body, "sign-in is not configured") {
		t.Errorf("the builds page does not say sign-in is off: %s", body)
	}
	if status, _, _ := e.admin("GET", "/api/builds/pub"); status != 200 {
		t.Errorf("admin token: %d", status)
	}
}

// Revoking and allowing a node's agent: Forge admins only, a browser with
// its CSRF token, a well-formed node id; every refusal leaves the hub
// unasked.
func TestAgentRevokeAllow(t *testing.T) {
	e := newAPIEnv(t)
	carol, dave := e.signIn("carol"), e.signIn("dave") // dave is a Forge admin
	_, carolToken := e.personalToken(carol, "ci")
	admin := &caller{name: "admin token", bearer: adminToken}
	unasked := func(what string, status int, body string) {
		t.Helper()
		if calls := e.agents.called(); len(calls) != 0 {
			t.Errorf("%s: %d %s, yet the hub was asked %q", what, status, body, calls)
		}
	}
	for _, c := range []struct {
		who  *caller
		want int
	}{
		{nobody, http.StatusUnauthorized},
		{&caller{name: "unknown bearer", bearer: "forge_pat_nope"}, http.StatusUnauthorized},
		{carol, http.StatusForbidden},
		{&caller{name: "carol's token", bearer: carolToken}, http.StatusForbidden},
		{&caller{name: "dave without csrf", cookies: dave.cookies}, http.StatusForbidden},
		{&caller{name: "dave with a wrong csrf", cookies: dave.cookies, csrf: "x" + dave.csrf}, http.StatusForbidden},
		{&caller{name: "dave cross-site", cookies: dave.cookies, csrf: dave.csrf, header: http.Header{"Sec-Fetch-Site": {"cross-site"}}}, http.StatusForbidden},
	} {
		for _, action := range []string{"revoke", "allow"} {
			status, _, body := e.call(c.who, "POST", "/api/agents/n1/"+action, "")
			if status != c.want || !strings.Contains(body, `"message"`) {
				t.Errorf("%s as %s: %d %s, want %d", action, c.who.name, status, body, c.want)
			}
			unasked(action+" as "+c.who.name, status, body)
		}
	}
	for _, node := range []string{"bad.node", "n%201", strings.Repeat("n", 65), "n%2F1"} {
		for _, action := range []string{"revoke", "allow"} {
			status, _, body := e.call(admin, "POST", "/api/agents/"+node+"/"+action, "")
			var m map[string]string
			if status != http.StatusBadRequest || json.Unmarshal([]byte(body), &m) != nil || !strings.Contains(m["message"], "node ") {
				t.Errorf("%s of node %q: %d %s, want 400 naming the node", action, node, status, body)
			}
			unasked(action+" of "+node, status, body)
		}
	}
	if status, _, _ := e.call(admin, "GET", "/api/agents/n1/revoke", ""); status != http.StatusMethodNotAllowed {
		t.Errorf("GET of revoke: %d", status)
	}
	unasked("GET of revoke", 0, "")

	// Done right: the admin token, or an admin's browser with its token.
	status, _, body := e.call(admin, "POST", "/api/agents/n1/revoke", "")
	var got AgentAccess
	if status != 200 || json.Unmarshal([]byte(body), &got) != nil || got.NodeID != "n1" || !got.Revoked || got.WasRevoked != nil {
		t.Errorf("revoke: %d %s", status, body)
	}
	for i, want := range []bool{true, false} {
		status, _, body = e.call(dave, "POST", "/api/agents/n1/allow", "")
		got = AgentAccess{}
		if status != 200 || json.Unmarshal([]byte(body), &got) != nil || got.NodeID != "n1" || got.Revoked || got.WasRevoked == nil || *got.WasRevoked != want {
			t.Errorf("allow #%d: %d %s, want was_revoked %v", i+1, status, body, want)
		}
	}
	if calls := e.agents.called(); !slices.Equal(calls, []string{"revoke n1", "allow n1", "allow n1"}) {
		t.Errorf("the hub was asked %q", calls)
	}

	// The hub's failure is the answer.
	e.agents.onRevoke(func(context.Context, string) error { return errors.New("store: disk full") })
	if status, _, body := e.call(admin, "POST", "/api/agents/n2/revoke", ""); status != 500 || !strings.Contains(body, "revoke node n2: store: disk full") {
		t.Errorf("a failed revoke: %d %s", status, body)
	}
}

// Without an AgentAdmin, Agents serves the routes when it can (the hub);
// otherwise they answer 501.
func TestAgentAdminFromAgents(t *testing.T) {
	e := newAPIEnv(t)
	admin := &caller{name: "admin token", bearer: adminToken}
	both := struct {
		fakeAgents
		*fakeAgentAdmin
	}{fakeAgents{}, newFakeAgentAdmin()}
	for _, tc := range []struct {
		agents AgentLister
		want   int
	}{{both, 200}, {fakeAgents{}, 501}} {
		api, err := New(Config{Builds: &fakeBuilds{}, Store: e.st, Logs: fakeLogs{}, Agents: tc.agents, Auth: mustAuth(t, e)})
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewServer(api.Handler())
		e.url = srv.URL
		status, _, body := e.call(admin, "POST", "/api/agents/n1/revoke", "")
		srv.Close()
		if status != tc.want || !strings.Contains(body, "n1") && status == 200 {
			t.Errorf("Agents %T: %d %s, want %d", tc.agents, status, body, tc.want)
		}
	}
	if calls := both.called(); !slices.Equal(calls, []string{"revoke n1"}) {
		t.Errorf("the hub behind Agents was asked %q", calls)
	}
}

// With a secrets key, a person's GitHub token is sealed in the store and
// bound to them. A token stored in clear before the key is sealed at its
// next use. A sealed token that cannot be opened (no key, another key,
// another person's row) means "sign in again", and GitHub is not asked.
func TestGitHubTokensSealed(t *testing.T) {
	keyOf := func(b byte) coordinator.TokenSealer {
		k, err := secrets.New(bytes.Repeat([]byte{b}, secrets.KeySize), nil)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	e := newAPIEnvWith(t, func(c *auth.Config) { c.Tokens = keyOf(1) }, privateBuild("priv"))
	e.gh.set("alice", "acme/secret", coordinator.Read)
	e.gh.set("bob", "acme/secret", coordinator.Read)
	alice := e.signIn("alice")
	ctx := t.Context()
	u, err := e.st.User(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(u.Token, coordinator.SealedTokenPrefix) || strings.Contains(u.Token, "tok-alice") {
		t.Fatalf("alice's token as stored: %q, want it sealed", u.Token)
	}
	if status, _, body := e.call(alice, "GET", "/api/builds/priv", ""); status != 200 {
		t.Fatalf("alice reads with her sealed token: %d %s", status, body)
	}

	// Bob's token, stored in clear before the key, works and is sealed.
	if err := e.st.PutUser(ctx, coordinator.User{Login: "bob", GitHubID: 3, Token: "tok-bob"}); err != nil {
		t.Fatal(err)
	}
	a := func(tokens coordinator.TokenSealer) *auth.Auth {
		a, err := auth.New(auth.Config{Store: e.st, GitHub: e.gh, PublicURL: "http://forge.test", Key: bytes.Repeat([]byte{7}, 32), Tokens: tokens})
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	access := func(a *auth.Auth, login string) (coordinator.Permission, error) {
		return a.Access(ctx, &auth.Principal{Kind: auth.Token, Login: login}, "acme", "secret", false)
	}
	if p, err := access(a(keyOf(1)), "bob"); err != nil || p != coordinator.Read {
		t.Fatalf("bob's clear token: %v %v", p, err)
	}
	bob, err := e.st.User(ctx, "bob")
	if err != nil || !strings.HasPrefix(bob.Token, coordinator.SealedTokenPrefix) {
		t.Fatalf("bob's token after its use: %q %v, want it sealed", bob.Token, err)
	}

	// Alice's sealed token in bob's row does not open as bob's.
	asked := e.gh.asked
	bob.Token = u.Token
	if err := e.st.PutUser(ctx, bob); err != nil {
		t.Fatal(err)
	}
	for what, tc := range map[string]struct {
		a     *auth.Auth
		login string
	}{
		"no key":              {a(nil), "alice"},
		"another key":         {a(keyOf(2)), "alice"},
		"alice's token moved": {a(keyOf(1)), "bob"},
	} {
		if p, err := access(tc.a, tc.login); !errors.Is(err, coordinator.ErrBadCredential) || !strings.Contains(err.Error(), "sign in again") || p != coordinator.NoAccess {
			t.Errorf("%s: %v %v, want ErrBadCredential saying sign in again", what, p, err)
		}
	}
	if e.gh.asked != asked {
		t.Errorf("GitHub was asked %d times with tokens that did not open", e.gh.asked-asked)
	}
}
