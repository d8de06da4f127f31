// Package fakegithub is a fake GitHub API for tests: an httptest server
// that answers like api.github.com (paths, JSON shapes, status codes, the
// tarball redirect to a pre-signed download), but under /api/v3/ as GitHub
// Enterprise does, so that tests prove the configured API base is used.
//
// It checks what GitHub checks: access-token requests and installation
// look-ups carry an app JWT signed with the app's key (AppKeyPEM) whose iss
// is AppID; every other API call carries an installation token the fake
// issued, for an installation that may see the repository. A request the
// fake does not know fails the test.
//
// Repositories are named "owner/repo". Codertocat/Hello-World, the
// repository of GitHub's example payloads, is installation 1 from the
// start; SetInstallation adds others.
package fakegithub

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// AppID is the GitHub App's id: JWTs must carry it as iss.
const AppID = 4242

// ExampleRepo is the repository of GitHub's example payloads, installed
// as ExampleInstallation from the start.
const (
	ExampleRepo         = "Codertocat/Hello-World"
	ExampleInstallation = 1
)

var (
	keyOnce sync.Once
	appKey  *rsa.PrivateKey
	keyErr  error
)

// key is the app's key, made once per test binary (RSA key generation is
// slow under -race).
func key(t testing.TB) *rsa.PrivateKey {
	t.Helper()
	keyOnce.Do(func() { appKey, keyErr = rsa.GenerateKey(rand.Reader, 2048) })
	if keyErr != nil {
		t.Fatalf("fake GitHub: app key: %v", keyErr)
	}
	return appKey
}

// AppKeyPEM is the app's private key as GitHub issues it (PKCS #1 PEM).
func AppKeyPEM(t testing.TB) []byte {
	t.Helper()
	return pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key(t))})
}

// Status is a commit status the fake accepted.
type Status struct {
	Inst             int64 // the installation of the token that set it
	Owner, Repo, SHA string
	State, Context   string
	Description      string
	TargetURL        string
	Token            string // the Authorization header
}

// Server is the fake. Its methods are safe for concurrent use.
type Server struct {
	t   testing.TB
	srv *httptest.Server
	key *rsa.PrivateKey

	mu            sync.Mutex
	tokenCalls    map[int64]int
	tokens        map[string]int64  // token -> installation
	installations map[string]int64  // "o/r" -> installation
	files         map[string]string // "o/r@sha" -> .forge.yml
	tarballs      map[string][]byte // "o/r@sha" -> tar.gz
	statuses      []Status
	taken         int           // statuses returned by NextStatus
	posted        chan struct{} // closed and replaced at every status
	statusFail    int           // the next N status posts fail
	statusFailHow string
	requests      []string
	holds         []*Hold
}

// New starts a fake GitHub on loopback, closed when the test ends.
func New(t testing.TB) *Server {
	t.Helper()
	return NewListener(t, nil)
}

// NewListener starts a fake GitHub serving on ln (one in another network
// namespace, say), or on loopback when ln is nil. The server closes ln
// when the test ends.
func NewListener(t testing.TB, ln net.Listener) *Server {
	t.Helper()
	f := &Server{t: t, key: key(t), tokenCalls: map[int64]int{}, tokens: map[string]int64{},
		installations: map[string]int64{ExampleRepo: ExampleInstallation}, files: map[string]string{},
		tarballs: map[string][]byte{}, posted: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /api/v3/app/installations/{id}/access_tokens", f.accessToken)
	mux.HandleFunc("GET /api/v3/repos/{o}/{r}/installation", f.installation)
	mux.HandleFunc("GET /api/v3/repos/{o}/{r}/contents/{path...}", f.contents)
	mux.HandleFunc("GET /api/v3/repos/{o}/{r}/tarball/{sha}", f.tarball)
	mux.HandleFunc("GET /codeload/{o}/{r}/legacy.tar.gz/{sha}", f.codeload)
	mux.HandleFunc("POST /api/v3/repos/{o}/{r}/statuses/{sha}", f.status)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		f.t.Errorf("fake GitHub: unexpected request %s %s", r.Method, r.URL)
		notFound(w)
	})
	f.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req := r.Method + " " + r.URL.RequestURI()
		f.mu.Lock()
		f.requests = append(f.requests, req)
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
		mux.ServeHTTP(w, r)
	}))
	if ln != nil {
		f.srv.Listener.Close()
		f.srv.Listener = ln
	}
	f.srv.Start()
	t.Cleanup(f.srv.Close)
	// Before the server closes (cleanups run last first): a held request
	// would keep Close waiting.
	t.Cleanup(func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, h := range f.holds {
			h.Release()
		}
	})
	return f
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
// /path?query", as Requests lists them) wait until the Hold is released.
// Every Hold is released when the test ends.
func (f *Server) Hold(prefix string) *Hold {
	h := &Hold{prefix: prefix, arrived: make(chan struct{}), released: make(chan struct{})}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.holds = append(f.holds, h)
	return h
}

func (h *Hold) arrive() { h.arriveOnce.Do(func() { close(h.arrived) }) }

// Arrived is closed when the first matching request is waiting.
func (h *Hold) Arrived() <-chan struct{} { return h.arrived }

// Release lets the waiting requests, and every later one, through.
func (h *Hold) Release() { h.releaseOnce.Do(func() { close(h.released) }) }

// URL is the server's root, http://127.0.0.1:PORT.
func (f *Server) URL() string { return f.srv.URL }

// APIBase is the API base to configure: GitHub Enterprise style,
// http://127.0.0.1:PORT/api/v3/.
func (f *Server) APIBase() string { return f.srv.URL + "/api/v3/" }

// Client is an HTTP client that refuses every host but the fake's: a
// request built from a URL in a payload (api.github.com,
// raw.githubusercontent.com) fails the test.
func (f *Server) Client() *http.Client {
	host := strings.TrimPrefix(f.srv.URL, "http://")
	return &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		if r.URL.Host != host {
			f.t.Errorf("fake GitHub: request to a host other than the configured API: %s %s", r.Method, r.URL)
			return nil, fmt.Errorf("fake GitHub transport: host %s refused", r.URL.Host)
		}
		return http.DefaultTransport.RoundTrip(r)
	})}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (fn roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return fn(r) }

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
	f.statusFail, f.statusFailHow = n, how
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

// Requests are the requests served so far, in order, each as
// "METHOD /path?query".
func (f *Server) Requests() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.requests...)
}

// NextStatus returns the first accepted status that NextStatus has not
// returned yet, waiting for it up to timeout (then it fails the test).
func (f *Server) NextStatus(t testing.TB, timeout time.Duration) Status {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		f.mu.Lock()
		if f.taken < len(f.statuses) {
			s := f.statuses[f.taken]
			f.taken++
			f.mu.Unlock()
			return s
		}
		posted := f.posted
		f.mu.Unlock()
		select {
		case <-posted:
		case <-deadline.C:
			t.Fatalf("fake GitHub: no commit status within %v", timeout)
			return Status{}
		}
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

// checkJWT checks an app JWT: RS256 under the app's key, iss = AppID,
// not expired.
func (f *Server) checkJWT(r *http.Request) error {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return fmt.Errorf("no bearer token: %q", r.Header.Get("Authorization"))
	}
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return fmt.Errorf("not a JWT")
	}
	var hdr struct{ Alg string }
	var claims struct {
		Iss      string
		Exp, Iat int64
	}
	for i, v := range []any{&hdr, &claims} {
		raw, err := base64.RawURLEncoding.DecodeString(parts[i])
		if err != nil {
			return err
		}
		if err := json.Unmarshal(raw, v); err != nil {
			return err
		}
	}
	if hdr.Alg != "RS256" {
		return fmt.Errorf("alg %q", hdr.Alg)
	}
	if claims.Iss != strconv.Itoa(AppID) {
		return fmt.Errorf("iss %q, want the app id %d", claims.Iss, AppID)
	}
	if claims.Exp < time.Now().Unix() {
		return fmt.Errorf("expired JWT")
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return err
	}
	sum := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if err := rsa.VerifyPKCS1v15(&f.key.PublicKey, crypto.SHA256, sum[:], sig); err != nil {
		return fmt.Errorf("JWT not signed with the app's key: %w", err)
	}
	return nil
}

// checkToken returns the installation of the request's token, or answers
// as GitHub does and returns false.
func (f *Server) checkToken(w http.ResponseWriter, r *http.Request) (int64, bool) {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "token ")
	f.mu.Lock()
	inst, known := f.tokens[tok]
	want, has := f.installations[r.PathValue("o")+"/"+r.PathValue("r")]
	f.mu.Unlock()
	if !ok || !known {
		writeJSON(w, http.StatusUnauthorized, map[string]string{"message": "Bad credentials"})
		return 0, false
	}
	if has && want != inst {
		notFound(w) // GitHub hides repositories a token cannot see
		return 0, false
	}
	return inst, true
}

func (f *Server) accessToken(w http.ResponseWriter, r *http.Request) {
	if err := f.checkJWT(r); err != nil {
		f.t.Errorf("fake GitHub: access token request: %v", err)
		writeJSON(w, http.StatusUnauthorized, map[string]string{"message": err.Error()})
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
	f.mu.Unlock()
	writeJSON(w, http.StatusCreated, map[string]any{"token": tok,
		"expires_at": time.Now().Add(time.Hour).UTC().Format(time.RFC3339)})
}

func (f *Server) installation(w http.ResponseWriter, r *http.Request) {
	if err := f.checkJWT(r); err != nil {
		f.t.Errorf("fake GitHub: installation request: %v", err)
		writeJSON(w, http.StatusUnauthorized, map[string]string{"message": err.Error()})
		return
	}
	f.mu.Lock()
	id, ok := f.installations[r.PathValue("o")+"/"+r.PathValue("r")]
	f.mu.Unlock()
	if !ok {
		notFound(w)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"id": id, "app_id": AppID})
}

func (f *Server) contents(w http.ResponseWriter, r *http.Request) {
	if _, ok := f.checkToken(w, r); !ok {
		return
	}
	p := r.PathValue("path")
	f.mu.Lock()
	text, ok := f.files[r.PathValue("o")+"/"+r.PathValue("r")+"@"+r.URL.Query().Get("ref")]
	f.mu.Unlock()
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
	if !ok {
		notFound(w)
		return
	}
	// Pre-signed, like codeload's links for private repositories.
	http.Redirect(w, r, f.srv.URL+"/codeload/"+o+"/"+rp+"/legacy.tar.gz/"+sha+"?token=SIGNED", http.StatusFound)
}

func (f *Server) codeload(w http.ResponseWriter, r *http.Request) {
	if r.URL.Query().Get("token") != "SIGNED" {
		notFound(w)
		return
	}
	f.mu.Lock()
	tgz, ok := f.tarballs[r.PathValue("o")+"/"+r.PathValue("r")+"@"+r.PathValue("sha")]
	f.mu.Unlock()
	if !ok {
		notFound(w)
		return
	}
	w.Header().Set("Content-Type", "application/x-gzip")
	w.Write(tgz)
}

func (f *Server) status(w http.ResponseWriter, r *http.Request) {
	inst, ok := f.checkToken(w, r)
	if !ok {
		return
	}
	f.mu.Lock()
	if f.statusFail > 0 {
		f.statusFail--
		how := f.statusFailHow
		f.mu.Unlock()
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
		return
	}
	f.mu.Unlock()
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
	f.mu.Lock()
	f.statuses = append(f.statuses, s)
	close(f.posted)
	f.posted = make(chan struct{})
	f.mu.Unlock()
	writeJSON(w, http.StatusCreated, map[string]any{"id": 1, "state": in.State, "context": in.Context,
		"description": in.Description, "target_url": in.TargetURL})
}

// Entry is one entry of an archive made by TarballEntries. Type is a tar
// type flag (0 is a regular file).
type Entry struct {
	Name, Body, Link string
	Type             byte
}

// Tarball makes a source archive as GitHub serves it: a gzip tar with a
// pax global header, the folder topFolder (GitHub's
// "owner-repo-sha7"), and files (path -> content, "/"-separated) under
// it with their folders.
func Tarball(t testing.TB, topFolder string, files map[string]string) []byte {
	t.Helper()
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
	return TarballEntries(t, entries...)
}

// TarballEntries makes a gzip tar of entries exactly as given (names
// included, whatever they hold), after a pax global header with a commit
// id as GitHub writes one: for archives GitHub would never serve.
func TarballEntries(t testing.TB, entries ...Entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	must := func(err error) {
		if err != nil {
			t.Fatalf("fake GitHub: make tarball: %v", err)
		}
	}
	must(tw.WriteHeader(&tar.Header{Typeflag: tar.TypeXGlobalHeader, Name: "pax_global_header",
		PAXRecords: map[string]string{"comment": "ec26c3e57ca3a959ca5aad62de7213c562f8c821"}}))
	for _, e := range entries {
		h := &tar.Header{Name: e.Name, Mode: 0o644, Typeflag: e.Type, Linkname: e.Link, ModTime: time.Unix(1700000000, 0)}
		switch e.Type {
		case 0, tar.TypeReg:
			h.Typeflag, h.Size = tar.TypeReg, int64(len(e.Body))
		case tar.TypeDir:
			h.Mode = 0o755
		}
		must(tw.WriteHeader(h))
		if h.Typeflag == tar.TypeReg {
			_, err := io.WriteString(tw, e.Body)
			must(err)
		}
	}
	must(tw.Close())
	must(zw.Close())
	return buf.Bytes()
}
