// Package fakegithub is a fake GitHub API: an http.Handler that answers
// like api.github.com (paths, JSON shapes, status codes, the tarball
// redirect to a pre-signed download), but under /api/v3/ as GitHub
// Enterprise does, so that its clients prove the configured API base is
// used.
//
// It checks what GitHub checks: access-token requests and installation
// look-ups carry an app JWT signed with the app's key whose iss is the
// app's id; every other API call carries an installation token the fake
// issued, for an installation that may see the repository. Every request
// it refuses, and every one it does not know, goes to Options.Refuse and
// into Refused.
//
// Repositories are named "owner/repo". Codertocat/Hello-World, the
// repository of GitHub's example payloads, is installation 1 from the
// start; SetInstallation adds others. With Options.Tree, every repository
// is installed and holds that tree at every commit.
//
// It also plays GitHub's web side, at the server root as on GitHub
// Enterprise (https://HOST/login/oauth/...): the OAuth web flow of the
// app's client (Options.ClientID), a sign-in page offering the users
// AddUser adds, the user access tokens (ghu_) that flow issues, and for
// them GET /api/v3/user and GET /api/v3/repos/{owner}/{repo} with the
// permissions SetPermission and SetPrivate set. A user token sees every
// repository its user may read, installed or not (GitHub also requires
// the app to be installed there).
//
// Refused, and reported, are the requests only a client bug makes: an
// unknown route, an unknown client_id, a wrong client secret (or one sent
// as Basic auth rather than in the body, as GitHub's docs send it), a
// redirect_uri that is not an absolute http(s) URL or not the one the
// code was issued for, a login nobody added, a missing token or one the
// fake never issued, an installation token asking who its user is.
// Answers a correct client must expect are not: a code already used,
// unknown or expired (a reloaded callback), a revoked user token's 401, a
// private repository's 404.
//
// It serves the Checks API's check runs (checks.go) to installations whose
// tokens carry checks: write (SetPermissions, GrantChecks; by default
// they carry statuses: write only, as an app made for commit statuses).
//
// Under /_fake/ it tells a client in another process what happened: GET
// /_fake/statuses lists the commit statuses posted, in order, GET
// /_fake/check-runs the check runs with their requests, and GET
// /_fake/requests every request and the refused ones. Tests in this
// process use fakegithubtest, which serves it on loopback for a test.
package fakegithub

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net/http"
	"path"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// AppID is the GitHub App's id the tests use: JWTs must carry it as iss.
const AppID = 4242

// ExampleRepo is the repository of GitHub's example payloads, installed
// as ExampleInstallation from the start.
const (
	ExampleRepo         = "Codertocat/Hello-World"
	ExampleInstallation = 1
)

// Options configure a fake.
type Options struct {
	AppID int64          // the app's id, iss of its JWTs; AppID when 0
	Key   *rsa.PublicKey // the app's key; without it every JWT is refused

	// Tree, when set, is served as every repository at every commit that
	// has no .forge.yml or tarball set of its own, and every repository
	// not set otherwise is ExampleInstallation.
	Tree fs.FS

	// ClientID and ClientSecret are the app's OAuth client; without
	// both, every OAuth request is refused as of an unknown client.
	ClientID, ClientSecret string

	// Refuse, when set, is told of every refused or unknown request.
	Refuse func(msg string)
	// Logf, when set, notes the commit statuses posted.
	Logf func(format string, args ...any)
}

// Status is a commit status the fake accepted.
type Status struct {
	Inst        int64  `json:"installation"` // the installation of the token that set it
	Owner       string `json:"owner"`
	Repo        string `json:"repo"`
	SHA         string `json:"sha"`
	State       string `json:"state"`
	Context     string `json:"context"`
	Description string `json:"description"`
	TargetURL   string `json:"target_url"`
	Token       string `json:"token"` // the Authorization header
}

// Server is the fake. Its methods are safe for concurrent use.
type Server struct {
	opts Options
	mux  *http.ServeMux

	mu            sync.Mutex
	tokenCalls    map[int64]int
	tokens        map[string]int64  // token -> installation
	installations map[string]int64  // "o/r" -> installation
	files         map[string]string // "o/r@sha" -> .forge.yml
	tarballs      map[string][]byte // "o/r@sha" -> tar.gz
	statuses      []Status
	taken         int                          // statuses returned by WaitStatus
	posted        chan struct{}                // closed and replaced at every status
	statusFail    failures                     // of status posts
	tokenPerms    map[string]map[string]string // token -> its permissions
	instPerms     map[int64]map[string]string  // installation -> its tokens' permissions
	checkRuns     []*CheckRun
	nextCheckRun  int64
	checkFail     failures // of check-run requests
	requests      []string
	refused       []string
	holds         []*Hold
	closed        bool

	now        func() time.Time     // the clock codes expire by
	users      map[string]int64     // login -> id
	perms      map[string]string    // "login o/r" -> permission
	private    map[string]bool      // "o/r" -> private
	codes      map[string]oauthCode // OAuth code -> what it was issued for
	userTokens map[string]userToken // ghu_ token -> its user
}

// New makes a fake GitHub; serve it with any http.Server.
func New(opts Options) *Server {
	if opts.AppID == 0 {
		opts.AppID = AppID
	}
	f := &Server{opts: opts, mux: http.NewServeMux(), tokenCalls: map[int64]int{}, tokens: map[string]int64{},
		installations: map[string]int64{ExampleRepo: ExampleInstallation}, files: map[string]string{},
		tarballs: map[string][]byte{}, posted: make(chan struct{}),
		tokenPerms: map[string]map[string]string{}, instPerms: map[int64]map[string]string{},
		now: time.Now, users: map[string]int64{}, perms: map[string]string{}, private: map[string]bool{},
		codes: map[string]oauthCode{}, userTokens: map[string]userToken{}}
	f.mux.HandleFunc("POST /api/v3/app/installations/{id}/access_tokens", f.accessToken)
	f.mux.HandleFunc("GET /api/v3/repos/{o}/{r}/installation", f.installation)
	f.mux.HandleFunc("GET /api/v3/repos/{o}/{r}/contents/{path...}", f.contents)
	f.mux.HandleFunc("GET /api/v3/repos/{o}/{r}/tarball/{sha}", f.tarball)
	f.mux.HandleFunc("GET /codeload/{o}/{r}/legacy.tar.gz/{sha}", f.codeload)
	f.mux.HandleFunc("POST /api/v3/repos/{o}/{r}/statuses/{sha}", f.status)
	f.mux.HandleFunc("POST /api/v3/repos/{o}/{r}/check-runs", f.createCheckRun)
	f.mux.HandleFunc("PATCH /api/v3/repos/{o}/{r}/check-runs/{id}", f.updateCheckRun)
	f.mux.HandleFunc("GET /api/v3/repos/{o}/{r}", f.repository)
	f.mux.HandleFunc("GET /api/v3/user", f.user)
	f.mux.HandleFunc("GET /login/oauth/authorize", f.authorize)
	f.mux.HandleFunc("POST /login/oauth/authorize", f.authorize)
	f.mux.HandleFunc("POST /login/oauth/access_token", f.exchange)
	f.mux.HandleFunc("GET /avatars/u/{id}", avatar)
	// Browsers on the sign-in pages ask for it.
	f.mux.HandleFunc("GET /favicon.ico", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	f.mux.HandleFunc("GET /_fake/statuses", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, append([]Status{}, f.Statuses()...))
	})
	f.mux.HandleFunc("GET /_fake/check-runs", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, f.CheckRuns())
	})
	f.mux.HandleFunc("GET /_fake/requests", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string][]string{"requests": f.Requests(), "refused": f.Refused()})
	})
	f.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		f.refuse("unexpected request " + r.Method + " " + r.URL.RequestURI())
		notFound(w)
	})
	return f
}

// ServeHTTP records the request, waits while a Hold matches it, and
// answers.
func (f *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	req := r.Method + " " + r.URL.RequestURI()
	f.mu.Lock()
	if !strings.HasPrefix(r.URL.Path, "/_fake/") {
		f.requests = append(f.requests, req)
	}
	var held []*Hold
	for _, h := range f.holds {
		if strings.HasPrefix(req, h.prefix) {
			held = append(held, h)
		}
	}
	f.mu.Unlock()
	for _, h := range held {
		h.arrive()
		select {
		case <-h.released:
		case <-r.Context().Done():
			return
		}
	}
	f.mux.ServeHTTP(w, r)
}

// Close releases every Hold, now and later, so that a server serving the
// fake can shut down.
func (f *Server) Close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	for _, h := range f.holds {
		h.Release()
	}
}

// Hold keeps the requests it matches waiting until it is released, so a
// test can order what a concurrent client does (GitHub answers in
// hundreds of milliseconds, the fake in microseconds).
type Hold struct {
	prefix      string
	arriveOnce  sync.Once
	arrived     chan struct{}
	releaseOnce sync.Once
	released    chan struct{}
}

// Hold makes every request that starts with prefix ("METHOD
// /path?query", as Requests lists them) wait until the Hold is released,
// or the fake closed.
func (f *Server) Hold(prefix string) *Hold {
	h := &Hold{prefix: prefix, arrived: make(chan struct{}), released: make(chan struct{})}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.holds = append(f.holds, h)
	if f.closed {
		h.Release()
	}
	return h
}

func (h *Hold) arrive() { h.arriveOnce.Do(func() { close(h.arrived) }) }

// Arrived is closed when the first matching request is waiting.
func (h *Hold) Arrived() <-chan struct{} { return h.arrived }

// Release lets the waiting requests, and every later one, through.
func (h *Hold) Release() { h.releaseOnce.Do(func() { close(h.released) }) }

// SetInstallation installs the app on repo ("owner/name") as installation
// id: tokens of other installations then get 404 for it, as on GitHub.
func (f *Server) SetInstallation(repo string, id int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.installations[repo] = id
}

// SetFile sets the .forge.yml of repo at commit sha.
func (f *Server) SetFile(repo, sha, text string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.files[repo+"@"+sha] = text
}

// RemoveFile takes the .forge.yml of repo at commit sha away again.
func (f *Server) RemoveFile(repo, sha string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.files, repo+"@"+sha)
}

// SetTarball sets the source archive (gzip tar, see Tarball) of repo at
// commit sha.
func (f *Server) SetTarball(repo, sha string, tgz []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tarballs[repo+"@"+sha] = tgz
}

// FailStatuses makes the next n status posts fail, how: "502" (the
// default: an HTML 502 Bad Gateway), "abuse" (a secondary rate limit, 403
// with Retry-After: 1) or "422" (Validation Failed).
func (f *Server) FailStatuses(n int, how string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.statusFail = failures{n: n, how: how}
}

// TokenCount is the number of access tokens made for installation inst.
func (f *Server) TokenCount(inst int64) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.tokenCalls[inst]
}

// Statuses are the commit statuses accepted so far, in order.
func (f *Server) Statuses() []Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Status(nil), f.statuses...)
}

// Requests are the requests served so far but those under /_fake/, in
// order, each as "METHOD /path?query".
func (f *Server) Requests() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.requests...)
}

// Refused are the requests refused so far, in order, each with why.
func (f *Server) Refused() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.refused...)
}

// WaitStatus returns the first accepted status that WaitStatus has not
// returned yet, waiting for it until ctx ends.
func (f *Server) WaitStatus(ctx context.Context) (Status, error) {
	for {
		f.mu.Lock()
		if f.taken < len(f.statuses) {
			s := f.statuses[f.taken]
			f.taken++
			f.mu.Unlock()
			return s, nil
		}
		posted := f.posted
		f.mu.Unlock()
		select {
		case <-posted:
		case <-ctx.Done():
			return Status{}, fmt.Errorf("fake GitHub: wait for a commit status: %w", context.Cause(ctx))
		}
	}
}

// ParsePublicKey reads an app's public key as PEM (PKIX, "PUBLIC KEY").
func ParsePublicKey(pemBytes []byte) (*rsa.PublicKey, error) {
	block, _ := pem.Decode(pemBytes)
	if block == nil {
		return nil, errors.New("no PEM block")
	}
	k, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("public key: %w", err)
	}
	rk, ok := k.(*rsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("a %T, not an RSA key", k)
	}
	return rk, nil
}

func (f *Server) refuse(msg string) {
	f.mu.Lock()
	f.refused = append(f.refused, msg)
	f.mu.Unlock()
	if f.opts.Refuse != nil {
		f.opts.Refuse(msg)
	}
}

func (f *Server) logf(format string, args ...any) {
	if f.opts.Logf != nil {
		f.opts.Logf(format, args...)
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func notFound(w http.ResponseWriter) {
	writeJSON(w, http.StatusNotFound, map[string]string{"message": "Not Found",
		"documentation_url": "https://docs.github.com/rest"})
}

// checkJWT checks an app JWT: RS256 under the app's key, iss the app's
// id, not expired.
func (f *Server) checkJWT(r *http.Request) error {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return fmt.Errorf("no bearer token: %q", r.Header.Get("Authorization"))
	}
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return errors.New("not a JWT")
	}
	var hdr struct{ Alg string }
	var claims struct {
		Iss      string
		Exp, Iat int64
	}
	for i, v := range []any{&hdr, &claims} {
		raw, err := base64.RawURLEncoding.DecodeString(parts[i])
		if err != nil {
			return fmt.Errorf("JWT part %d: %w", i, err)
		}
		if err := json.Unmarshal(raw, v); err != nil {
			return fmt.Errorf("JWT part %d: %w", i, err)
		}
	}
	if hdr.Alg != "RS256" {
		return fmt.Errorf("alg %q", hdr.Alg)
	}
	if claims.Iss != strconv.FormatInt(f.opts.AppID, 10) {
		return fmt.Errorf("iss %q, want the app id %d", claims.Iss, f.opts.AppID)
	}
	if claims.Exp < time.Now().Unix() {
		return errors.New("expired JWT")
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return fmt.Errorf("JWT signature: %w", err)
	}
	if f.opts.Key == nil {
		return errors.New("JWT not signed with the app's key: the fake has no key")
	}
	sum := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if err := rsa.VerifyPKCS1v15(f.opts.Key, crypto.SHA256, sum[:], sig); err != nil {
		return fmt.Errorf("JWT not signed with the app's key: %w", err)
	}
	return nil
}

// appOnly answers as GitHub does and returns false when the request
// carries no valid app JWT.
func (f *Server) appOnly(w http.ResponseWriter, r *http.Request) bool {
	err := f.checkJWT(r)
	if err != nil {
		f.refuse("refused " + r.Method + " " + r.URL.RequestURI() + ": " + err.Error())
		writeJSON(w, http.StatusUnauthorized, map[string]string{"message": err.Error()})
	}
	return err == nil
}

// checkToken returns the installation of the request's token, or answers
// as GitHub does and returns false.
func (f *Server) checkToken(w http.ResponseWriter, r *http.Request) (int64, bool) {
	f.mu.Lock()
	inst, known := f.tokens[tokenOf(r)]
	want, has := f.installations[r.PathValue("o")+"/"+r.PathValue("r")]
	f.mu.Unlock()
	if !known {
		f.refuse("refused " + r.Method + " " + r.URL.RequestURI() + ": no installation token of the fake's")
		writeJSON(w, http.StatusUnauthorized, map[string]string{"message": "Bad credentials"})
		return 0, false
	}
	if has && want != inst {
		notFound(w) // GitHub hides repositories a token cannot see
		return 0, false
	}
	return inst, true
}

// tokenOf is the installation token a request carries, "" for none.
func tokenOf(r *http.Request) string {
	tok, _ := strings.CutPrefix(r.Header.Get("Authorization"), "token ")
	return tok
}

func (f *Server) accessToken(w http.ResponseWriter, r *http.Request) {
	if !f.appOnly(w, r) {
		return
	}
	inst, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil {
		notFound(w)
		return
	}
	f.mu.Lock()
	f.tokenCalls[inst]++
	tok := fmt.Sprintf("ghs_%d_%d", inst, f.tokenCalls[inst])
	f.tokens[tok] = inst
	perms := maps.Clone(f.permissionsOf(inst))
	f.tokenPerms[tok] = perms
	f.mu.Unlock()
	writeJSON(w, http.StatusCreated, map[string]any{"token": tok,
		"expires_at":           time.Now().Add(time.Hour).UTC().Format(time.RFC3339),
		"permissions":          perms,
		"repository_selection": "selected"})
}

func (f *Server) installation(w http.ResponseWriter, r *http.Request) {
	if !f.appOnly(w, r) {
		return
	}
	f.mu.Lock()
	id, ok := f.installations[r.PathValue("o")+"/"+r.PathValue("r")]
	f.mu.Unlock()
	if !ok && f.opts.Tree != nil {
		id, ok = ExampleInstallation, true
	}
	if !ok {
		notFound(w)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"id": id, "app_id": f.opts.AppID, "target_type": "User"})
}

func (f *Server) contents(w http.ResponseWriter, r *http.Request) {
	if _, ok := f.checkToken(w, r); !ok {
		return
	}
	p, ref := r.PathValue("path"), r.URL.Query().Get("ref")
	f.mu.Lock()
	text, ok := f.files[r.PathValue("o")+"/"+r.PathValue("r")+"@"+ref]
	f.mu.Unlock()
	if !ok && f.opts.Tree != nil && ref != "" {
		b, err := fs.ReadFile(f.opts.Tree, ".forge.yml")
		text, ok = string(b), err == nil
	}
	if p != ".forge.yml" || !ok {
		notFound(w)
		return
	}
	body := map[string]any{"type": "file", "name": p, "path": p, "size": len(text), "sha": "0123",
		// A payload-style URL that must never be followed.
		"download_url": "https://raw.githubusercontent.com/x/y/z/.forge.yml"}
	if len(text) > 1<<20 {
		// GitHub's answer for files over 1 MB: no content.
		body["encoding"], body["content"] = "none", ""
	} else {
		// GitHub wraps base64 at 60 characters.
		enc := base64.StdEncoding.EncodeToString([]byte(text))
		var b strings.Builder
		for len(enc) > 60 {
			b.WriteString(enc[:60] + "\n")
			enc = enc[60:]
		}
		b.WriteString(enc)
		body["encoding"], body["content"] = "base64", b.String()
	}
	writeJSON(w, http.StatusOK, body)
}

func (f *Server) tarball(w http.ResponseWriter, r *http.Request) {
	if _, ok := f.checkToken(w, r); !ok {
		return
	}
	o, rp, sha := r.PathValue("o"), r.PathValue("r"), r.PathValue("sha")
	f.mu.Lock()
	_, ok := f.tarballs[o+"/"+rp+"@"+sha]
	f.mu.Unlock()
	if !ok && f.opts.Tree == nil {
		notFound(w)
		return
	}
	// Pre-signed, like codeload's links for private repositories; on the
	// host the client used, as the fake has no other.
	http.Redirect(w, r, "http://"+r.Host+"/codeload/"+o+"/"+rp+"/legacy.tar.gz/"+sha+"?token=SIGNED", http.StatusFound)
}

func (f *Server) codeload(w http.ResponseWriter, r *http.Request) {
	if r.URL.Query().Get("token") != "SIGNED" {
		notFound(w)
		return
	}
	o, rp, sha := r.PathValue("o"), r.PathValue("r"), r.PathValue("sha")
	f.mu.Lock()
	tgz, ok := f.tarballs[o+"/"+rp+"@"+sha]
	f.mu.Unlock()
	if !ok && f.opts.Tree != nil {
		var err error
		if tgz, err = treeTarball(f.opts.Tree, o+"-"+rp+"-"+sha[:min(len(sha), 7)], sha); err != nil {
			f.logf("fakegithub: tarball of %s/%s@%s: %v", o, rp, sha, err)
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		ok = true
	}
	if !ok {
		notFound(w)
		return
	}
	w.Header().Set("Content-Type", "application/x-gzip")
	w.Write(tgz)
}

// writeFailure answers as GitHub does when it fails, how: "502" (the
// default: an HTML 502 Bad Gateway), "abuse" (a secondary rate limit, 403
// with Retry-After: 1) or "422" (Validation Failed).
func writeFailure(w http.ResponseWriter, how string) {
	switch how {
	case "abuse":
		w.Header().Set("Retry-After", "1")
		writeJSON(w, http.StatusForbidden, map[string]string{"message": "You have exceeded a secondary rate limit.",
			"documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits"})
	case "422":
		writeJSON(w, http.StatusUnprocessableEntity, map[string]string{"message": "Validation Failed"})
	default:
		w.WriteHeader(http.StatusBadGateway)
		io.WriteString(w, "<html>502 Bad Gateway</html>")
	}
}

// failures makes the next n requests of a kind fail, how (writeFailure).
type failures struct {
	n   int
	how string
}

// fail answers a failure that fl has due, and says so.
func (f *Server) fail(w http.ResponseWriter, fl *failures) bool {
	f.mu.Lock()
	if fl.n <= 0 {
		f.mu.Unlock()
		return false
	}
	fl.n--
	how := fl.how
	f.mu.Unlock()
	writeFailure(w, how)
	return true
}

func (f *Server) status(w http.ResponseWriter, r *http.Request) {
	inst, ok := f.checkToken(w, r)
	if !ok || !f.tokenMay(w, r, "statuses", "https://docs.github.com/rest/commits/statuses#create-a-commit-status") {
		return
	}
	if f.fail(w, &f.statusFail) {
		return
	}
	var in struct {
		State, Context, Description string
		TargetURL                   string `json:"target_url"`
	}
	if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"message": "Problems parsing JSON"})
		return
	}
	s := Status{Inst: inst, Owner: r.PathValue("o"), Repo: r.PathValue("r"), SHA: r.PathValue("sha"),
		State: in.State, Context: in.Context, Description: in.Description, TargetURL: in.TargetURL,
		Token: r.Header.Get("Authorization")}
	f.logf("fakegithub: status %s %s on %s/%s@%s: %s", s.Context, s.State, s.Owner, s.Repo, s.SHA, s.Description)
	f.mu.Lock()
	f.statuses = append(f.statuses, s)
	id := len(f.statuses)
	close(f.posted)
	f.posted = make(chan struct{})
	f.mu.Unlock()
	now := time.Now().UTC().Format(time.RFC3339)
	writeJSON(w, http.StatusCreated, map[string]any{"id": id, "node_id": fmt.Sprintf("SC_fake%d", id),
		"url":   "http://" + r.Host + "/api/v3/repos/" + s.Owner + "/" + s.Repo + "/statuses/" + s.SHA,
		"state": s.State, "context": s.Context, "description": s.Description, "target_url": s.TargetURL,
		"created_at": now, "updated_at": now})
}

// Entry is one entry of an archive made by TarballEntries. Type is a tar
// type flag (0 is a regular file).
type Entry struct {
	Name, Body, Link string
	Type             byte
}

// exampleCommit is the commit id in the pax header of the archives made
// by Tarball and TarballEntries: the example payloads' head.
const exampleCommit = "ec26c3e57ca3a959ca5aad62de7213c562f8c821"

// Tarball makes a source archive as GitHub serves it: a gzip tar with a
// pax global header, the folder topFolder (GitHub's "owner-repo-sha7"),
// and files (path -> content, "/"-separated) under it with their folders.
func Tarball(topFolder string, files map[string]string) ([]byte, error) {
	top := strings.Trim(topFolder, "/")
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	sort.Strings(names)
	entries := []Entry{{Name: top + "/", Type: tar.TypeDir}}
	dirs := map[string]bool{}
	for _, name := range names {
		var parents []string
		for d := path.Dir(name); d != "." && d != "/" && !dirs[d]; d = path.Dir(d) {
			dirs[d] = true
			parents = append(parents, d)
		}
		for i := len(parents) - 1; i >= 0; i-- {
			entries = append(entries, Entry{Name: top + "/" + parents[i] + "/", Type: tar.TypeDir})
		}
		entries = append(entries, Entry{Name: top + "/" + name, Body: files[name]})
	}
	return TarballEntries(entries...)
}

// TarballEntries makes a gzip tar of entries exactly as given (names
// included, whatever they hold), after a pax global header with a commit
// id as GitHub writes one: for archives GitHub would never serve.
func TarballEntries(entries ...Entry) ([]byte, error) {
	return tarball(exampleCommit, entries)
}

// treeTarball makes GitHub's archive of the files in tree: everything
// under top, the commit sha in the pax header.
func treeTarball(tree fs.FS, top, sha string) ([]byte, error) {
	entries := []Entry{{Name: top + "/", Type: tar.TypeDir}}
	err := fs.WalkDir(tree, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == "." {
			return err
		}
		if d.IsDir() {
			entries = append(entries, Entry{Name: top + "/" + p + "/", Type: tar.TypeDir})
			return nil
		}
		b, err := fs.ReadFile(tree, p)
		entries = append(entries, Entry{Name: top + "/" + p, Body: string(b)})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("read the tree: %w", err)
	}
	return tarball(sha, entries)
}

func tarball(commit string, entries []Entry) ([]byte, error) {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeXGlobalHeader, Name: "pax_global_header",
		PAXRecords: map[string]string{"comment": commit}})
	for _, e := range entries {
		if err != nil {
			break
		}
		h := &tar.Header{Name: e.Name, Mode: 0o644, Typeflag: e.Type, Linkname: e.Link, ModTime: time.Unix(1700000000, 0)}
		switch e.Type {
		case 0, tar.TypeReg:
			h.Typeflag, h.Size = tar.TypeReg, int64(len(e.Body))
		case tar.TypeDir:
			h.Mode = 0o755
		}
		if err = tw.WriteHeader(h); err == nil && h.Typeflag == tar.TypeReg {
			_, err = io.WriteString(tw, e.Body)
		}
	}
	if err == nil {
		err = tw.Close()
	}
	if err == nil {
		err = zw.Close()
	}
	if err != nil {
		return nil, fmt.Errorf("fake GitHub: make a tarball: %w", err)
	}
	return buf.Bytes(), nil
}
