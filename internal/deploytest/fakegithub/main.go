// Command fakegithub is a minimal fake GitHub API, for the test of the
// deployed stack (deploy/deploy_engine_test.go). That test builds it into a
// FROM scratch image and runs it as a container on the stack's overlay
// network, so the deployed coordinator, configured with
// --github-api http://fakegithub:8080/api/v3/, talks to it as it would to
// GitHub Enterprise. (internal/fakegithub is the fake for in-process
// tests; it listens on loopback only and lives inside a *testing.T, so it
// cannot serve another container.)
//
// It serves one repository for every owner/name and commit: the files
// under -repo (its .forge.yml through the contents API, all of them as the
// tarball). It checks the app JWT (RS256 under -key, iss = -app-id) on
// token requests and installation look-ups, and the installation token it
// issued on every other call. Under /_fake/ it tells the test what
// happened: GET /_fake/statuses (the commit statuses posted, in order) and
// GET /_fake/requests (every request, and the refused ones).
package main

import (
	"archive/tar"
	"compress/gzip"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Status is a commit status the fake accepted.
type Status struct {
	Owner       string `json:"owner"`
	Repo        string `json:"repo"`
	SHA         string `json:"sha"`
	State       string `json:"state"`
	Context     string `json:"context"`
	Description string `json:"description"`
	TargetURL   string `json:"target_url"`
}

type fake struct {
	appID int64
	key   *rsa.PublicKey
	repo  string

	mu       sync.Mutex
	tokens   map[string]bool
	statuses []Status
	requests []string
	refused  []string
}

func main() {
	listen := flag.String("listen", ":8080", "address to serve on")
	appID := flag.Int64("app-id", 4242, "the GitHub App's id (iss of its JWTs)")
	keyFile := flag.String("key", "/app-key.pub.pem", "the App's public key (PEM)")
	repo := flag.String("repo", "/repo", "folder served as the repository at every commit")
	flag.Parse()
	pub, err := readPublicKey(*keyFile)
	if err != nil {
		log.Fatalf("fakegithub: %v", err)
	}
	f := &fake{appID: *appID, key: pub, repo: *repo, tokens: map[string]bool{}}
	log.Printf("fakegithub: serving %s on %s", *repo, *listen)
	srv := &http.Server{Addr: *listen, Handler: f.routes(), ReadHeaderTimeout: 10 * time.Second}
	log.Fatal(srv.ListenAndServe())
}

func readPublicKey(path string) (*rsa.PublicKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, fmt.Errorf("%s: no PEM block", path)
	}
	k, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	rk, ok := k.(*rsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("%s: a %T, not an RSA key", path, k)
	}
	return rk, nil
}

func (f *fake) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /api/v3/app/installations/{id}/access_tokens", f.accessToken)
	mux.HandleFunc("GET /api/v3/repos/{o}/{r}/installation", f.installation)
	mux.HandleFunc("GET /api/v3/repos/{o}/{r}/contents/{path...}", f.contents)
	mux.HandleFunc("GET /api/v3/repos/{o}/{r}/tarball/{sha}", f.tarball)
	mux.HandleFunc("GET /codeload/{o}/{r}/legacy.tar.gz/{sha}", f.codeload)
	mux.HandleFunc("POST /api/v3/repos/{o}/{r}/statuses/{sha}", f.status)
	mux.HandleFunc("GET /_fake/statuses", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		writeJSON(w, http.StatusOK, append([]Status{}, f.statuses...))
	})
	mux.HandleFunc("GET /_fake/requests", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		writeJSON(w, http.StatusOK, map[string][]string{"requests": f.requests, "refused": f.refused})
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		f.refuse(r, "unknown request")
		notFound(w)
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, "/_fake/") {
			f.mu.Lock()
			f.requests = append(f.requests, r.Method+" "+r.URL.RequestURI())
			f.mu.Unlock()
		}
		mux.ServeHTTP(w, r)
	})
}

func (f *fake) refuse(r *http.Request, why string) {
	log.Printf("fakegithub: refused %s %s: %s", r.Method, r.URL.RequestURI(), why)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.refused = append(f.refused, r.Method+" "+r.URL.RequestURI()+": "+why)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func notFound(w http.ResponseWriter) {
	writeJSON(w, http.StatusNotFound, map[string]string{"message": "Not Found"})
}

// checkJWT checks an app JWT: RS256 under the app's key, iss = app id, not
// expired.
func (f *fake) checkJWT(r *http.Request) error {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return errors.New("no bearer token")
	}
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return errors.New("not a JWT")
	}
	var hdr struct{ Alg string }
	var claims struct {
		Iss string
		Exp int64
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
	if hdr.Alg != "RS256" || claims.Iss != strconv.FormatInt(f.appID, 10) || claims.Exp < time.Now().Unix() {
		return fmt.Errorf("alg %q, iss %q, exp %d", hdr.Alg, claims.Iss, claims.Exp)
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return err
	}
	sum := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if err := rsa.VerifyPKCS1v15(f.key, crypto.SHA256, sum[:], sig); err != nil {
		return errors.New("JWT not signed with the app's key")
	}
	return nil
}

func (f *fake) checkToken(w http.ResponseWriter, r *http.Request) bool {
	tok, _ := strings.CutPrefix(r.Header.Get("Authorization"), "token ")
	f.mu.Lock()
	ok := f.tokens[tok]
	f.mu.Unlock()
	if !ok {
		f.refuse(r, "no installation token of ours")
		writeJSON(w, http.StatusUnauthorized, map[string]string{"message": "Bad credentials"})
	}
	return ok
}

func (f *fake) accessToken(w http.ResponseWriter, r *http.Request) {
	if err := f.checkJWT(r); err != nil {
		f.refuse(r, err.Error())
		writeJSON(w, http.StatusUnauthorized, map[string]string{"message": err.Error()})
		return
	}
	f.mu.Lock()
	tok := fmt.Sprintf("ghs_fake_%s_%d", r.PathValue("id"), len(f.tokens)+1)
	f.tokens[tok] = true
	f.mu.Unlock()
	writeJSON(w, http.StatusCreated, map[string]any{"token": tok,
		"expires_at": time.Now().Add(time.Hour).UTC().Format(time.RFC3339)})
}

func (f *fake) installation(w http.ResponseWriter, r *http.Request) {
	if err := f.checkJWT(r); err != nil {
		f.refuse(r, err.Error())
		writeJSON(w, http.StatusUnauthorized, map[string]string{"message": err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"id": 1, "app_id": f.appID})
}

func (f *fake) contents(w http.ResponseWriter, r *http.Request) {
	if !f.checkToken(w, r) {
		return
	}
	p := r.PathValue("path")
	if p != ".forge.yml" || r.URL.Query().Get("ref") == "" {
		notFound(w)
		return
	}
	text, err := os.ReadFile(filepath.Join(f.repo, p))
	if err != nil {
		notFound(w)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"type": "file", "name": p, "path": p, "size": len(text),
		"encoding": "base64", "content": base64.StdEncoding.EncodeToString(text)})
}

func (f *fake) tarball(w http.ResponseWriter, r *http.Request) {
	if !f.checkToken(w, r) {
		return
	}
	// GitHub answers with a pre-signed link on another host; here the
	// same one, under the name the client used.
	http.Redirect(w, r, "http://"+r.Host+"/codeload/"+r.PathValue("o")+"/"+r.PathValue("r")+
		"/legacy.tar.gz/"+r.PathValue("sha")+"?token=SIGNED", http.StatusFound)
}

// codeload writes the repository folder as GitHub's tarball: gzip, a pax
// global header, everything under "owner-repo-sha7/".
func (f *fake) codeload(w http.ResponseWriter, r *http.Request) {
	if r.URL.Query().Get("token") != "SIGNED" {
		notFound(w)
		return
	}
	sha := r.PathValue("sha")
	if len(sha) > 7 {
		sha = sha[:7]
	}
	top := r.PathValue("o") + "-" + r.PathValue("r") + "-" + sha + "/"
	w.Header().Set("Content-Type", "application/x-gzip")
	zw := gzip.NewWriter(w)
	tw := tar.NewWriter(zw)
	err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeXGlobalHeader, Name: "pax_global_header",
		PAXRecords: map[string]string{"comment": r.PathValue("sha")}})
	if err == nil {
		err = tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: top, Mode: 0o755})
	}
	if err == nil {
		err = filepath.WalkDir(f.repo, func(p string, d fs.DirEntry, err error) error {
			if err != nil || p == f.repo {
				return err
			}
			rel, _ := filepath.Rel(f.repo, p)
			if d.IsDir() {
				return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: top + rel + "/", Mode: 0o755})
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: top + rel, Mode: 0o644, Size: int64(len(b))}); err != nil {
				return err
			}
			_, err = tw.Write(b)
			return err
		})
	}
	if err == nil {
		err = tw.Close()
	}
	if err == nil {
		err = zw.Close()
	}
	if err != nil {
		log.Printf("fakegithub: tarball: %v", err)
	}
}

func (f *fake) status(w http.ResponseWriter, r *http.Request) {
	if !f.checkToken(w, r) {
		return
	}
	var s Status
	if err := json.NewDecoder(r.Body).Decode(&s); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"message": "Problems parsing JSON"})
		return
	}
	s.Owner, s.Repo, s.SHA = r.PathValue("o"), r.PathValue("r"), r.PathValue("sha")
	log.Printf("fakegithub: status %s %s on %s/%s@%s: %s", s.Context, s.State, s.Owner, s.Repo, s.SHA, s.Description)
	f.mu.Lock()
	f.statuses = append(f.statuses, s)
	f.mu.Unlock()
	writeJSON(w, http.StatusCreated, map[string]any{"id": 1, "state": s.State, "context": s.Context})
}
