package github

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
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// The fake GitHub answers like api.github.com (paths, JSON shapes, status
// codes, the tarball redirect), but under /api/v3/ as GitHub Enterprise
// does, so the tests prove that the configured base is used.

const testAppID = 4242

var (
	keyOnce sync.Once
	testKey *rsa.PrivateKey
)

// appKey is the app's key pair, made once per test binary (RSA key
// generation is slow under -race).
func appKey(t testing.TB) (*rsa.PrivateKey, []byte) {
	keyOnce.Do(func() {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic(err)
		}
		testKey = k
	})
	return testKey, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(testKey)})
}

type fakeStatus struct {
	Inst                                          int64
	Owner, Repo, SHA                              string
	State, Context, Description, TargetURL, Token string
}

type fakeGitHub struct {
	t   testing.TB
	srv *httptest.Server
	key *rsa.PrivateKey

	mu            sync.Mutex
	tokenCalls    map[int64]int
	tokens        map[string]int64  // token -> installation
	installations map[string]int64  // "o/r" -> installation
	files         map[string]string // "o/r@sha" -> .forge.yml
	tarballs      map[string][]byte // "o/r@sha" -> tar.gz
	statuses      []fakeStatus
	statusFail    int    // the next N status posts fail
	statusFailHow string // "502" (default), "abuse", "404"
	requests      []string
	statusCh      chan fakeStatus
}

func newFakeGitHub(t testing.TB) *fakeGitHub {
	key, _ := appKey(t)
	f := &fakeGitHub{t: t, key: key, tokenCalls: map[int64]int{}, tokens: map[string]int64{},
		installations: map[string]int64{"Codertocat/Hello-World": 1}, files: map[string]string{},
		tarballs: map[string][]byte{}, statusCh: make(chan fakeStatus, 100)}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /api/v3/app/installations/{id}/access_tokens", f.accessToken)
	mux.HandleFunc("GET /api/v3/repos/{o}/{r}/installation", f.installation)
	mux.HandleFunc("GET /api/v3/repos/{o}/{r}/contents/{path...}", f.contents)
	mux.HandleFunc("GET /api/v3/repos/{o}/{r}/tarball/{sha}", f.tarball)
	mux.HandleFunc("GET /codeload/{o}/{r}/legacy.tar.gz/{sha}", f.codeload)
	mux.HandleFunc("POST /api/v3/repos/{o}/{r}/statuses/{sha}", f.status)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("fake GitHub: unexpected request %s %s", r.Method, r.URL)
		notFound(w)
	})
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.requests = append(f.requests, r.Method+" "+r.URL.Path)
		f.mu.Unlock()
		mux.ServeHTTP(w, r)
	}))
	t.Cleanup(f.srv.Close)
	return f
}

// apiBase is the base the App is given: GitHub Enterprise style.
func (f *fakeGitHub) apiBase() string { return f.srv.URL + "/api/v3/" }

// client refuses every host but the fake's: a request built from a URL in
// a payload (api.github.com) fails the test.
func (f *fakeGitHub) client() *http.Client {
	host := strings.TrimPrefix(f.srv.URL, "http://")
	return &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		if r.URL.Host != host {
			f.t.Errorf("request to a host other than the configured API: %s %s", r.Method, r.URL)
			return nil, fmt.Errorf("test transport: host %s refused", r.URL.Host)
		}
		return http.DefaultTransport.RoundTrip(r)
	})}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (fn roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return fn(r) }

// newApp is an App on the fake, with retries fast enough for tests.
func (f *fakeGitHub) newApp(t testing.TB) *App {
	_, pemKey := appKey(t)
	app, err := NewApp(testAppID, pemKey, f.apiBase(), f.client())
	if err != nil {
		t.Fatal(err)
	}
	app.TempDir = t.TempDir()
	app.retry = retryPolicy{tries: 5, base: time.Millisecond, max: 10 * time.Millisecond, budget: 10 * time.Second, maxRetryAfter: 2 * time.Second}
	return app
}

func (f *fakeGitHub) setFile(repo, sha, text string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.files[repo+"@"+sha] = text
}

func (f *fakeGitHub) setTarball(repo, sha string, tgz []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tarballs[repo+"@"+sha] = tgz
}

func (f *fakeGitHub) failStatuses(n int, how string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.statusFail, f.statusFailHow = n, how
}

func (f *fakeGitHub) tokenCount(inst int64) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.tokenCalls[inst]
}

func (f *fakeGitHub) allStatuses() []fakeStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]fakeStatus(nil), f.statuses...)
}

func (f *fakeGitHub) allRequests() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.requests...)
}

func (f *fakeGitHub) countRequests(prefix string) int {
	n := 0
	for _, r := range f.allRequests() {
		if strings.HasPrefix(r, prefix) {
			n++
		}
	}
	return n
}

// nextStatus waits for the next status the fake accepted.
func (f *fakeGitHub) nextStatus(t testing.TB) fakeStatus {
	t.Helper()
	select {
	case s := <-f.statusCh:
		return s
	case <-time.After(10 * time.Second):
		t.Fatal("no commit status arrived")
		return fakeStatus{}
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

// checkJWT checks an app JWT: RS256 under the app's key, iss = app id,
// not expired.
func (f *fakeGitHub) checkJWT(r *http.Request) error {
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
	if claims.Iss != strconv.Itoa(testAppID) {
		return fmt.Errorf("iss %q, want the app id %d", claims.Iss, testAppID)
	}
	if claims.Exp < time.Now().Unix() {
		return fmt.Errorf("expired JWT")
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return err
	}
	sum := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	return rsa.VerifyPKCS1v15(&f.key.PublicKey, crypto.SHA256, sum[:], sig)
}

// checkToken returns the installation of the request's token.
func (f *fakeGitHub) checkToken(w http.ResponseWriter, r *http.Request) (int64, bool) {
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

func (f *fakeGitHub) accessToken(w http.ResponseWriter, r *http.Request) {
	if err := f.checkJWT(r); err != nil {
		f.t.Errorf("access token request: %v", err)
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

func (f *fakeGitHub) installation(w http.ResponseWriter, r *http.Request) {
	if err := f.checkJWT(r); err != nil {
		f.t.Errorf("installation request: %v", err)
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
	writeJSON(w, http.StatusOK, map[string]any{"id": id, "app_id": testAppID})
}

func (f *fakeGitHub) contents(w http.ResponseWriter, r *http.Request) {
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

func (f *fakeGitHub) tarball(w http.ResponseWriter, r *http.Request) {
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

func (f *fakeGitHub) codeload(w http.ResponseWriter, r *http.Request) {
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

func (f *fakeGitHub) status(w http.ResponseWriter, r *http.Request) {
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
	s := fakeStatus{Inst: inst, Owner: r.PathValue("o"), Repo: r.PathValue("r"), SHA: r.PathValue("sha"),
		State: in.State, Context: in.Context, Description: in.Description, TargetURL: in.TargetURL,
		Token: r.Header.Get("Authorization")}
	f.mu.Lock()
	f.statuses = append(f.statuses, s)
	f.mu.Unlock()
	f.statusCh <- s
	writeJSON(w, http.StatusCreated, map[string]any{"id": 1, "state": in.State, "context": in.Context,
		"description": in.Description, "target_url": in.TargetURL})
}

// tarEntry is one entry of a test archive.
type tarEntry struct {
	name, body, link string
	typ              byte
}

// tarball makes a gzip tar as GitHub serves it: a pax global header with
// the commit id, then everything under top.
func tarball(t testing.TB, entries ...tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(tw.WriteHeader(&tar.Header{Typeflag: tar.TypeXGlobalHeader, Name: "pax_global_header",
		PAXRecords: map[string]string{"comment": "ec26c3e57ca3a959ca5aad62de7213c562f8c821"}}))
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Mode: 0o644, Typeflag: e.typ, Linkname: e.link, ModTime: time.Unix(1700000000, 0)}
		switch e.typ {
		case 0, tar.TypeReg:
			h.Typeflag, h.Size = tar.TypeReg, int64(len(e.body))
		case tar.TypeDir:
			h.Mode = 0o755
		}
		must(tw.WriteHeader(h))
		if h.Typeflag == tar.TypeReg {
			_, err := io.WriteString(tw, e.body)
			must(err)
		}
	}
	must(tw.Close())
	must(zw.Close())
	return buf.Bytes()
}

// readTar lists a plain tar: name -> body (or "-> link" for links, "/"
// for directories).
func readTar(t testing.TB, r io.Reader) map[string]string {
	t.Helper()
	out := map[string]string{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		switch h.Typeflag {
		case tar.TypeDir:
			out[h.Name] = "/"
		case tar.TypeSymlink, tar.TypeLink:
			out[h.Name] = "-> " + h.Linkname
		default:
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			out[h.Name] = string(b)
		}
	}
}
