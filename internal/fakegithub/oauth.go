package fakegithub

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"html/template"
	"image"
	"image/png"
	"io"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strings"
	"time"
)

// codeTTL is how long GitHub accepts an OAuth code.
const codeTTL = 10 * time.Minute

// permLevels are a user's permissions on a repository, weakest first.
var permLevels = []string{"none", "read", "triage", "write", "maintain", "admin"}

// oauthCode is what an OAuth code was issued for.
type oauthCode struct {
	login, redirectURI string
	issued             time.Time
}

// userToken is the user a user access token (ghu_) speaks for.
type userToken struct {
	login   string
	revoked bool
}

// AddUser adds a GitHub user, whom the sign-in page offers.
func (f *Server) AddUser(login string, id int64) {
	if login == "" || id <= 0 {
		f.refuse(fmt.Sprintf("AddUser(%q, %d): a user needs a login and an id above 0", login, id))
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.users[login] = id
}

// SetPermission sets login's permission on repo ("owner/name"): one of
// "admin", "maintain", "write", "triage", "read" or "none".
func (f *Server) SetPermission(login, repo, perm string) {
	if !slices.Contains(permLevels, perm) || !validRepo(repo) {
		f.refuse(fmt.Sprintf("SetPermission(%q, %q, %q): want a repository owner/name and a permission of %q", login, repo, perm, permLevels))
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.perms[login+" "+repo] = perm
}

// SetPrivate makes repo ("owner/name") private, or public again:
// repositories are public unless set private.
func (f *Server) SetPrivate(repo string, private bool) {
	if !validRepo(repo) {
		f.refuse(fmt.Sprintf("SetPrivate(%q): want a repository owner/name", repo))
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.private[repo] = private
}

// RevokeUserTokens revokes every user access token of login issued so
// far, as a user revoking the app's authorization does: they then get 401
// Bad credentials. Signing in again issues new ones.
func (f *Server) RevokeUserTokens(login string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for tok, ut := range f.userTokens {
		if ut.login == login {
			ut.revoked = true
			f.userTokens[tok] = ut
		}
	}
}

// UserTokens is the number of user access tokens of login that are not
// revoked.
func (f *Server) UserTokens(login string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, ut := range f.userTokens {
		if ut.login == login && !ut.revoked {
			n++
		}
	}
	return n
}

func validRepo(repo string) bool {
	o, r, ok := strings.Cut(repo, "/")
	return ok && o != "" && r != "" && !strings.Contains(r, "/")
}

// authorize is GitHub's authorization page: without login, a page to
// choose a user on; with a login (GitHub's param suggests an account, the
// fake's chooses it, as the page's form does), the redirect back to the
// client with a code.
func (f *Server) authorize(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		f.refuse("refused " + r.Method + " " + r.URL.RequestURI() + ": " + err.Error())
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	clientID, redirectURI, state, login := r.Form.Get("client_id"), r.Form.Get("redirect_uri"), r.Form.Get("state"), r.Form.Get("login")
	if f.opts.ClientID == "" || clientID != f.opts.ClientID {
		f.refuse(fmt.Sprintf("refused %s %s: unknown client_id %q", r.Method, r.URL.RequestURI(), clientID))
		pageNotFound(w)
		return
	}
	u, err := url.Parse(redirectURI)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		f.refuse(fmt.Sprintf("refused %s %s: redirect_uri %q is not an absolute http(s) URL", r.Method, r.URL.RequestURI(), redirectURI))
		http.Error(w, "redirect_uri must be an absolute http(s) URL", http.StatusBadRequest)
		return
	}
	if login == "" {
		f.signInPage(w, clientID, redirectURI, state)
		return
	}
	code, err := f.issueCode(login, redirectURI)
	if err != nil {
		f.refuse(fmt.Sprintf("refused %s %s: %v", r.Method, r.URL.RequestURI(), err))
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	// Appended, so that the client's own query stays as it wrote it.
	q := "code=" + url.QueryEscape(code)
	if state != "" {
		q += "&state=" + url.QueryEscape(state)
	}
	if u.RawQuery != "" {
		q = u.RawQuery + "&" + q
	}
	u.RawQuery = q
	http.Redirect(w, r, u.String(), http.StatusFound)
}

func (f *Server) issueCode(login, redirectURI string) (string, error) {
	b := make([]byte, 10)
	rand.Read(b)
	code := hex.EncodeToString(b) // GitHub's codes are 20 hex digits
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.users[login]; !ok {
		return "", fmt.Errorf("no user %q: add it with AddUser", login)
	}
	now := f.now()
	for c, oc := range f.codes {
		if now.Sub(oc.issued) > codeTTL {
			delete(f.codes, c)
		}
	}
	f.codes[code] = oauthCode{login: login, redirectURI: redirectURI, issued: now}
	return code, nil
}

var signIn = template.Must(template.New("signin").Parse(`<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>Sign in to GitHub</title></head>
<body>
<h1>Sign in to GitHub</h1>
<p>to continue to {{.ClientID}}</p>
<form method="post" action="/login/oauth/authorize">
<input type="hidden" name="client_id" value="{{.ClientID}}">
<input type="hidden" name="redirect_uri" value="{{.RedirectURI}}">
<input type="hidden" name="state" value="{{.State}}">
{{range .Logins}}<button name="login" value="{{.}}" id="login-{{.}}">Sign in as {{.}}</button>
{{else}}<p>No users: add them with AddUser.</p>
{{end}}</form>
</body>
</html>
`))

func (f *Server) signInPage(w http.ResponseWriter, clientID, redirectURI, state string) {
	f.mu.Lock()
	logins := make([]string, 0, len(f.users))
	for l := range f.users {
		logins = append(logins, l)
	}
	f.mu.Unlock()
	sort.Strings(logins)
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if err := signIn.Execute(w, map[string]any{"ClientID": clientID, "RedirectURI": redirectURI,
		"State": state, "Logins": logins}); err != nil {
		f.logf("fakegithub: sign-in page: %v", err)
	}
}

// exchange trades a code for a user access token, answering as GitHub
// does: errors are 200s too, JSON when asked for, form-encoded otherwise.
func (f *Server) exchange(w http.ResponseWriter, r *http.Request) {
	asJSON := strings.Contains(r.Header.Get("Accept"), "application/json")
	p, err := tokenParams(r)
	if err != nil || f.opts.ClientID == "" || f.opts.ClientSecret == "" ||
		p.Get("client_id") != f.opts.ClientID || p.Get("client_secret") != f.opts.ClientSecret {
		why := fmt.Sprintf("client_id %q or its secret incorrect", p.Get("client_id"))
		if err != nil {
			why = err.Error()
		} else if _, _, basic := r.BasicAuth(); basic && p.Get("client_id") == "" {
			// x/oauth2 tries Basic first unless told AuthStyleInParams, as its
			// endpoint for GitHub is; a fake that knows one way is stricter.
			why = "client credentials in an Authorization header: send client_id and client_secret in the body"
		}
		f.refuse("refused " + r.Method + " " + r.URL.RequestURI() + ": " + why)
		oauthAnswer(w, asJSON, url.Values{"error": {"incorrect_client_credentials"},
			"error_description": {"The client_id and/or client_secret passed are incorrect."},
			"error_uri":         {tokenErrorsDoc + "#incorrect-client-credentials"}})
		return
	}
	code, redirectURI := p.Get("code"), p.Get("redirect_uri")
	f.mu.Lock()
	c, known := f.codes[code]
	delete(f.codes, code) // single use, whatever the outcome
	expired := known && f.now().Sub(c.issued) > codeTTL
	// GitHub takes the token request without a redirect_uri; with one, it
	// must be the code's.
	mismatch := known && redirectURI != "" && redirectURI != c.redirectURI
	var tok string
	if known && !expired && !mismatch {
		tok = "ghu_" + rand.Text()
		f.userTokens[tok] = userToken{login: c.login}
	}
	f.mu.Unlock()
	if mismatch {
		f.refuse(fmt.Sprintf("refused %s %s: redirect_uri %q, the code was issued for %q", r.Method, r.URL.RequestURI(), redirectURI, c.redirectURI))
	}
	if tok == "" {
		oauthAnswer(w, asJSON, url.Values{"error": {"bad_verification_code"},
			"error_description": {"The code passed is incorrect or expired."},
			"error_uri":         {tokenErrorsDoc + "#bad-verification-code"}})
		return
	}
	oauthAnswer(w, asJSON, url.Values{"access_token": {tok}, "token_type": {"bearer"}, "scope": {""}})
}

const tokenErrorsDoc = "https://docs.github.com/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors/"

// tokenParams are the token request's parameters: a form, as GitHub's
// docs and x/oauth2 send them, or a JSON object.
func tokenParams(r *http.Request) (url.Values, error) {
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" {
		if err := r.ParseForm(); err != nil {
			return url.Values{}, fmt.Errorf("read the form: %w", err)
		}
		return r.Form, nil
	}
	var in map[string]string
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&in); err != nil {
		return url.Values{}, fmt.Errorf("read the JSON body: %w", err)
	}
	p := url.Values{}
	for k, v := range in {
		p.Set(k, v)
	}
	return p, nil
}

func oauthAnswer(w http.ResponseWriter, asJSON bool, v url.Values) {
	if asJSON {
		m := map[string]string{}
		for k := range v {
			m[k] = v.Get(k)
		}
		writeJSON(w, http.StatusOK, m)
		return
	}
	w.Header().Set("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")
	io.WriteString(w, v.Encode())
}

// bearer is the token of the request's Authorization header, sent as
// "token T" or "Bearer T".
func bearer(r *http.Request) string {
	scheme, tok, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	if !strings.EqualFold(scheme, "token") && !strings.EqualFold(scheme, "bearer") {
		return ""
	}
	return strings.TrimSpace(tok)
}

// badCredentials is GitHub's 401; why, when set, is a client bug to
// report.
func (f *Server) badCredentials(w http.ResponseWriter, r *http.Request, why string) {
	if why != "" {
		f.refuse("refused " + r.Method + " " + r.URL.RequestURI() + ": " + why)
	}
	writeJSON(w, http.StatusUnauthorized, map[string]string{"message": "Bad credentials",
		"documentation_url": "https://docs.github.com/rest"})
}

func (f *Server) user(w http.ResponseWriter, r *http.Request) {
	tok := bearer(r)
	f.mu.Lock()
	ut, isUser := f.userTokens[tok]
	_, isInst := f.tokens[tok]
	id := f.users[ut.login]
	f.mu.Unlock()
	switch {
	case isInst:
		f.refuse("refused " + r.Method + " " + r.URL.RequestURI() + ": an installation token is no user's")
		writeJSON(w, http.StatusForbidden, map[string]string{"message": "Resource not accessible by integration",
			"documentation_url": "https://docs.github.com/rest/users/users#get-the-authenticated-user"})
	case !isUser:
		f.badCredentials(w, r, "no user token of the fake's")
	case ut.revoked:
		f.badCredentials(w, r, "")
	default:
		u := account(r.Host, ut.login, id, "User")
		u["name"] = ut.login
		writeJSON(w, http.StatusOK, u)
	}
}

// repository answers a user token with the user's permissions, hiding a
// private repository the user may not read; an installation token as
// checkToken does, without permissions.
func (f *Server) repository(w http.ResponseWriter, r *http.Request) {
	o, name := r.PathValue("o"), r.PathValue("r")
	full := o + "/" + name
	tok := bearer(r)
	f.mu.Lock()
	ut, isUser := f.userTokens[tok]
	inst, isInst := f.tokens[tok]
	want, installed := f.installations[full]
	private := f.private[full]
	perm := f.perms[ut.login+" "+full]
	ownerID, ownerIsUser := f.users[o]
	f.mu.Unlock()
	var perms map[string]bool
	switch {
	case isInst:
		if installed && want != inst {
			notFound(w)
			return
		}
	case !isUser:
		f.badCredentials(w, r, "no token of the fake's")
		return
	case ut.revoked:
		f.badCredentials(w, r, "")
		return
	default:
		perms = permissions(perm, private)
		if !perms["pull"] {
			notFound(w) // as GitHub: a private repository's existence does not leak
			return
		}
	}
	ownerType := "User"
	if !ownerIsUser {
		ownerType, ownerID = "Organization", fakeID(o)
	}
	visibility := "public"
	if private {
		visibility = "private"
	}
	id := fakeID(full)
	body := map[string]any{"id": id, "node_id": nodeID("Repository", id), "name": name, "full_name": full,
		"owner": account(r.Host, o, ownerID, ownerType), "private": private, "visibility": visibility,
		"html_url": "http://" + r.Host + "/" + full, "description": nil, "fork": false,
		"url": "http://" + r.Host + "/api/v3/repos/" + full, "default_branch": "main", "archived": false, "disabled": false}
	if perms != nil {
		body["permissions"] = perms
	}
	writeJSON(w, http.StatusOK, body)
}

// permissions are GitHub's flags for a user with permission perm: each
// level implies those below it, and everyone may pull a public
// repository.
func permissions(perm string, private bool) map[string]bool {
	l := max(slices.Index(permLevels, perm), 0)
	return map[string]bool{"admin": l >= 5, "maintain": l >= 4, "push": l >= 3, "triage": l >= 2, "pull": l >= 1 || !private}
}

// account is a user or organization as the REST API shows one.
func account(host, login string, id int64, typ string) map[string]any {
	return map[string]any{"login": login, "id": id, "node_id": nodeID(typ, id),
		"avatar_url": fmt.Sprintf("http://%s/avatars/u/%d?v=4", host, id), "gravatar_id": "",
		"url": "http://" + host + "/api/v3/users/" + login, "html_url": "http://" + host + "/" + login,
		"type": typ, "site_admin": false}
}

// nodeID is a GraphQL id in GitHub's legacy form, base64 of "04:User1".
func nodeID(typ string, id int64) string {
	return base64.StdEncoding.EncodeToString(fmt.Appendf(nil, "0%d:%s%d", len(typ), typ, id))
}

// fakeID is a stable id for a name the tests did not give one.
func fakeID(name string) int64 {
	h := fnv.New32a()
	h.Write([]byte(name))
	return int64(h.Sum32())
}

// avatar is a 1×1 image, so that a page showing a user's avatar_url loads.
func avatar(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "image/png")
	png.Encode(w, image.NewGray(image.Rect(0, 0, 1, 1)))
}

func pageNotFound(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(http.StatusNotFound)
	io.WriteString(w, "<!DOCTYPE html>\n<title>Page not found · GitHub</title>\n<h1>404</h1>\n<p>This is not the web page you are looking for.</p>\n")
}
