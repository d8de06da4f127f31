package github

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"context"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/bradleyfalzon/ghinstallation/v2"
	gh "github.com/google/go-github/v62/github"

	"github.com/forge-ci/forge/coordinator/config"
)

const (
	// DefaultAPI is the public GitHub API base (--github-api).
	DefaultAPI = "https://api.github.com/"
	// ConfigFile is the build configuration at a repository's root.
	ConfigFile = ".forge.yml"
	// DefaultMaxSource caps a source tarball (and the plain tar made of
	// it) when Source is given no cap.
	DefaultMaxSource = 512 << 20
	// MaxDescription is GitHub's limit for a commit status description,
	// in characters.
	MaxDescription = 140

	userAgent = "forge-ci"
)

var (
	// ErrNotInstalled: the GitHub App is not installed on the repository.
	ErrNotInstalled = errors.New("the GitHub App is not installed on the repository")
	// ErrSourceTooLarge: a source tarball is over the size cap.
	ErrSourceTooLarge = errors.New("source archive too large")
	// ErrUnsafeArchive: a source tarball holds an entry that could land
	// outside the work directory (absolute path, "..", a path through a
	// symbolic link) or of a kind a git tree never holds.
	ErrUnsafeArchive = errors.New("unsafe entry in source archive")
)

// App is Forge's GitHub App: it signs app JWTs, trades them for
// installation tokens (cached per installation until a minute before they
// expire, by ghinstallation), and makes every call to the configured API
// base, never to a URL found in a webhook payload.
//
// Its methods are safe for concurrent use.
type App struct {
	// TempDir holds downloaded sources until the build has them; "" is
	// os.TempDir().
	TempDir string
	// Log, when set, receives retry notes.
	Log *slog.Logger

	id      int64
	key     *rsa.PrivateKey
	tr      http.RoundTripper // the caller's transport, under every client
	timeout time.Duration     // the caller's client timeout, for API calls only
	base    *url.URL          // the API base, ending in "/"
	app     *gh.Client        // authenticated as the app (JWT)
	retry   retryPolicy

	mu       sync.Mutex
	installs map[int64]*installation
}

// installation is what is kept per installation id: its token-caching
// transport and the clients built on it.
type installation struct {
	client   *gh.Client   // API calls, authenticated as the installation
	download *http.Client // the archive download; credentials only for the API host
	token    *ghinstallation.Transport
	perms    *perms // what its latest token may do
}

// NewApp returns the GitHub App appID, authenticating with the PEM
// private key (PKCS #1, as GitHub issues it, or PKCS #8), talking to
// apiBase ("" is DefaultAPI; GitHub Enterprise is
// https://HOST/api/v3/) through hc (nil: http.DefaultClient). Only hc's
// Transport and Timeout are used; the timeout applies to API calls, not to
// source downloads, which are bounded by their context.
func NewApp(appID int64, privateKeyPEM []byte, apiBase string, hc *http.Client) (*App, error) {
	if appID <= 0 {
		return nil, fmt.Errorf("github app: invalid app id %d", appID)
	}
	key, err := parseKey(privateKeyPEM)
	if err != nil {
		return nil, fmt.Errorf("github app: private key: %w", err)
	}
	if apiBase == "" {
		apiBase = DefaultAPI
	}
	u, err := url.Parse(apiBase)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("github app: API base %q is not an http(s) URL", apiBase)
	}
	if hc == nil {
		hc = http.DefaultClient
	}
	a := &App{id: appID, key: key, tr: hc.Transport, timeout: hc.Timeout, retry: defaultRetry,
		installs: map[int64]*installation{}}
	if a.tr == nil {
		a.tr = http.DefaultTransport
	}
	atr := ghinstallation.NewAppsTransportFromPrivateKey(a.tr, appID, key)
	// WithEnterpriseURLs adds "api/v3/" to a bare GHE host name and
	// leaves api.github.com (and a base already ending in /api/v3/)
	// alone; the result is the one base every call and token request
	// uses.
	a.app, err = gh.NewClient(&http.Client{Transport: atr, Timeout: a.timeout}).WithEnterpriseURLs(apiBase, apiBase)
	if err != nil {
		return nil, fmt.Errorf("github app: API base %q: %w", apiBase, err)
	}
	a.app.UserAgent = userAgent
	a.base = a.app.BaseURL
	atr.BaseURL = a.tokenBase()
	return a, nil
}

// BaseURL is the API base every call goes to.
func (a *App) BaseURL() string { return a.base.String() }

// tokenBase is the base as ghinstallation wants it (it appends
// "/app/installations/{id}/access_tokens").
func (a *App) tokenBase() string { return strings.TrimRight(a.base.String(), "/") }

func parseKey(data []byte) (*rsa.PrivateKey, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM block")
	}
	switch block.Type {
	case "RSA PRIVATE KEY":
		return x509.ParsePKCS1PrivateKey(block.Bytes)
	case "PRIVATE KEY":
		k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			return nil, err
		}
		rk, ok := k.(*rsa.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("a %T, not an RSA key (GitHub Apps sign with RS256)", k)
		}
		return rk, nil
	}
	return nil, fmt.Errorf("PEM block %q is not a private key", block.Type)
}

// installation returns the clients of installation id, made once and kept:
// ghinstallation caches the token inside the Transport, so keeping one
// Transport per id is what makes one token serve many calls.
func (a *App) installation(id int64) (*installation, error) {
	if id <= 0 {
		return nil, fmt.Errorf("github app: no installation id")
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if in := a.installs[id]; in != nil {
		return in, nil
	}
	// An AppsTransport of its own per installation: ghinstallation's
	// token refresh writes fields of the AppsTransport it was made from,
	// under the installation's lock only, so sharing one between
	// installations would be a data race.
	p := &perms{}
	atr := ghinstallation.NewAppsTransportFromPrivateKey(&tokenWatch{rt: a.tr, perms: p}, a.id, a.key)
	atr.BaseURL = a.tokenBase()
	itr := ghinstallation.NewFromAppsTransport(atr, id)
	itr.BaseURL = a.tokenBase()
	client, err := gh.NewClient(&http.Client{Transport: itr, Timeout: a.timeout}).WithEnterpriseURLs(a.base.String(), a.base.String())
	if err != nil {
		return nil, fmt.Errorf("github app: %w", err)
	}
	client.UserAgent = userAgent
	in := &installation{
		token:    itr,
		perms:    p,
		client:   client,
		download: &http.Client{Transport: &apiHostOnly{scheme: a.base.Scheme, host: a.base.Host, auth: itr, plain: a.tr}},
	}
	a.installs[id] = in
	return in, nil
}

// apiHostOnly sends the installation's token to the API host only. The
// archive link GitHub redirects to is pre-signed (on github.com it is
// codeload.github.com with a short-lived token in the query), so other
// hosts, and whatever they redirect to, get the request without our
// credentials.
type apiHostOnly struct {
	scheme, host string
	auth, plain  http.RoundTripper
}

func (t *apiHostOnly) RoundTrip(r *http.Request) (*http.Response, error) {
	if strings.EqualFold(r.URL.Scheme, t.scheme) && strings.EqualFold(r.URL.Host, t.host) {
		return t.auth.RoundTrip(r)
	}
	return t.plain.RoundTrip(r)
}

// Installation finds the installation of the app on owner/repo (GET
// /repos/{owner}/{repo}/installation, as the app), for payloads that carry
// none.
func (a *App) Installation(ctx context.Context, owner, repo string) (int64, error) {
	var id int64
	err := a.retry.do(ctx, a.log(), "find installation", func(ctx context.Context) (*gh.Response, error) {
		inst, resp, err := a.app.Apps.FindRepositoryInstallation(ctx, owner, repo)
		id = inst.GetID()
		return resp, err
	})
	if statusOf(err) == http.StatusNotFound {
		return 0, fmt.Errorf("find installation of %s/%s: %w", owner, repo, ErrNotInstalled)
	}
	if err != nil {
		return 0, fmt.Errorf("find installation of %s/%s: %w", owner, repo, err)
	}
	if id <= 0 {
		return 0, fmt.Errorf("find installation of %s/%s: the answer has no id", owner, repo)
	}
	return id, nil
}

// Config reads .forge.yml at sha through the contents API. A missing file
// (404) is found=false with no error. A file that cannot be a config (a
// directory, over config.MaxSize) is found=true with a *config.Error, so
// that the commit gets an error status like any invalid config.
func (a *App) Config(ctx context.Context, inst int64, owner, repo, sha string) (data []byte, found bool, err error) {
	in, err := a.installation(inst)
	if err != nil {
		return nil, false, err
	}
	var file *gh.RepositoryContent
	err = a.retry.do(ctx, a.log(), "get "+ConfigFile, func(ctx context.Context) (*gh.Response, error) {
		f, _, resp, err := in.client.Repositories.GetContents(ctx, owner, repo, ConfigFile, &gh.RepositoryContentGetOptions{Ref: sha})
		file = f
		return resp, err
	})
	if statusOf(err) == http.StatusNotFound {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("get %s of %s/%s@%s: %w", ConfigFile, owner, repo, sha, err)
	}
	bad := func(msg string) ([]byte, bool, error) {
		return nil, true, fmt.Errorf("get %s of %s/%s@%s: %w", ConfigFile, owner, repo, sha, &config.Error{File: ConfigFile, Msg: msg})
	}
	if file == nil {
		return bad("is a directory, not a file")
	}
	if t := file.GetType(); t != "file" {
		return bad(fmt.Sprintf("is a %s, not a file", t))
	}
	if file.GetSize() > config.MaxSize {
		return bad(fmt.Sprintf("is %d bytes, more than the limit of %d", file.GetSize(), config.MaxSize))
	}
	text, err := file.GetContent()
	if err != nil {
		return nil, true, fmt.Errorf("get %s of %s/%s@%s: decode: %w", ConfigFile, owner, repo, sha, err)
	}
	if len(text) > config.MaxSize {
		return bad(fmt.Sprintf("is %d bytes, more than the limit of %d", len(text), config.MaxSize))
	}
	return []byte(text), true, nil
}

// SetStatus sets a commit status, retrying server errors, network errors
// and rate limits within the retry budget. description is cut to
// MaxDescription characters. It blocks for as long as the retries take:
// call it from a queue (Forge does), never from a build.
func (a *App) SetStatus(ctx context.Context, inst int64, owner, repo, sha, state, statusContext, description, targetURL string) error {
	in, err := a.installation(inst)
	if err != nil {
		return err
	}
	st := &gh.RepoStatus{State: gh.String(state), Context: gh.String(statusContext),
		Description: gh.String(cut(description, MaxDescription))}
	if targetURL != "" {
		st.TargetURL = gh.String(targetURL)
	}
	err = a.retry.do(ctx, a.log(), "set status", func(ctx context.Context) (*gh.Response, error) {
		_, resp, err := in.client.Repositories.CreateStatus(ctx, owner, repo, sha, st)
		return resp, err
	})
	if err != nil {
		return fmt.Errorf("set status %s=%s on %s/%s@%s: %w", statusContext, state, owner, repo, sha, err)
	}
	return nil
}

// Source downloads the tarball of owner/repo at sha through the API and
// writes it into a temporary file as a plain tar without the top folder
// GitHub puts around the tree. It returns the file's path (the caller
// removes it) and size. Both the download and the tar written are capped at
// maxBytes (<= 0: DefaultMaxSource).
func (a *App) Source(ctx context.Context, inst int64, owner, repo, sha string, maxBytes int64) (path string, size int64, err error) {
	if maxBytes <= 0 {
		maxBytes = DefaultMaxSource
	}
	in, err := a.installation(inst)
	if err != nil {
		return "", 0, err
	}
	what := fmt.Sprintf("%s/%s@%s", owner, repo, sha)
	var link *url.URL
	err = a.retry.do(ctx, a.log(), "get archive link", func(ctx context.Context) (*gh.Response, error) {
		// maxRedirects 1 follows a 301 of a renamed repository; the
		// 302 to the archive itself is returned as the link.
		u, resp, err := in.client.Repositories.GetArchiveLink(ctx, owner, repo, gh.Tarball, &gh.RepositoryContentGetOptions{Ref: sha}, 1)
		link = u
		return resp, err
	})
	if err != nil {
		return "", 0, fmt.Errorf("get the tarball link of %s: %w", what, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, link.String(), nil)
	if err != nil {
		return "", 0, fmt.Errorf("download %s: %w", what, err)
	}
	resp, err := in.download.Do(req)
	if err != nil {
		return "", 0, fmt.Errorf("download %s: %w", what, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", 0, fmt.Errorf("download %s: %s", what, resp.Status)
	}
	if resp.ContentLength > maxBytes {
		return "", 0, fmt.Errorf("download %s: %w: %d bytes, the limit is %d", what, ErrSourceTooLarge, resp.ContentLength, maxBytes)
	}
	f, err := os.CreateTemp(a.TempDir, "forge-source-*.tar")
	if err != nil {
		return "", 0, fmt.Errorf("download %s: %w", what, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	size, err = Retar(f, resp.Body, maxBytes)
	if err != nil {
		return "", 0, fmt.Errorf("source of %s: %w", what, err)
	}
	if err := f.Close(); err != nil {
		return "", 0, fmt.Errorf("source of %s: %w", what, err)
	}
	return f.Name(), size, nil
}

// Retar reads a gzip-compressed tar with one top folder (GitHub's
// "owner-repo-sha7/") from src and writes the same tree to dst as a plain
// tar without that folder. It reads at most max compressed bytes and
// writes at most max bytes, else ErrSourceTooLarge; entries with an
// absolute path, a ".." element, a path through a symbolic link of the
// archive, or a type git cannot produce are ErrUnsafeArchive. It returns
// the bytes written.
func Retar(dst io.Writer, src io.Reader, max int64) (int64, error) {
	in := &capReader{r: src, left: max}
	zr, err := gzip.NewReader(bufio.NewReader(in))
	if err != nil {
		return 0, fmt.Errorf("not a gzip archive: %w", orTooLarge(in, err))
	}
	defer zr.Close()
	bw := bufio.NewWriter(dst)
	out := &capWriter{w: bw, left: max}
	tr, tw := tar.NewReader(zr), tar.NewWriter(out)
	top := ""
	links := map[string]bool{} // symbolic links written so far
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return out.n, fmt.Errorf("read tar: %w", orTooLarge(in, err))
		}
		if h.Typeflag == tar.TypeXGlobalHeader {
			continue // GitHub's pax header: the commit id as a comment
		}
		name, err := entryName(h.Name, &top)
		if err != nil {
			return out.n, err
		}
		if name == "" {
			continue // the top folder itself
		}
		if l := throughLink(links, name); l != "" {
			return out.n, fmt.Errorf("%w: %q goes through or replaces the symbolic link %q", ErrUnsafeArchive, h.Name, l)
		}
		nh := &tar.Header{Name: name, Mode: h.Mode & 0o777, ModTime: h.ModTime, Typeflag: h.Typeflag, Format: tar.FormatPAX}
		switch h.Typeflag {
		case tar.TypeReg:
			nh.Size = h.Size
		case tar.TypeDir:
			nh.Name = strings.TrimSuffix(name, "/") + "/"
		case tar.TypeSymlink:
			// The target is data of the repository, resolved inside
			// the build container; only paths through it are refused.
			nh.Linkname = h.Linkname
			links[strings.TrimSuffix(name, "/")] = true
		case tar.TypeLink:
			target, err := entryName(h.Linkname, &top)
			if err != nil || target == "" || throughLink(links, target) != "" {
				return out.n, fmt.Errorf("%w: hard link %q to %q", ErrUnsafeArchive, h.Name, h.Linkname)
			}
			nh.Linkname = target
		default:
			return out.n, fmt.Errorf("%w: %q has type %q", ErrUnsafeArchive, h.Name, string(h.Typeflag))
		}
		if err := tw.WriteHeader(nh); err != nil {
			return out.n, fmt.Errorf("write tar: %w", orTooLarge(in, err))
		}
		if nh.Typeflag == tar.TypeReg {
			if _, err := io.Copy(tw, tr); err != nil {
				return out.n, fmt.Errorf("copy %s: %w", name, orTooLarge(in, err))
			}
		}
	}
	if err := tw.Close(); err != nil {
		return out.n, fmt.Errorf("write tar: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return out.n, fmt.Errorf("write tar: %w", err)
	}
	if top == "" {
		return out.n, errors.New("the archive is empty")
	}
	return out.n, nil
}

// entryName checks an archive path and strips its first element, which
// must be the same for every entry (*top records it).
func entryName(name string, top *string) (string, error) {
	if name == "" || strings.HasPrefix(name, "/") || strings.Contains(name, "\\") || strings.ContainsRune(name, 0) {
		return "", fmt.Errorf("%w: %q", ErrUnsafeArchive, name)
	}
	for _, el := range strings.Split(name, "/") {
		if el == ".." {
			return "", fmt.Errorf("%w: %q", ErrUnsafeArchive, name)
		}
	}
	first, rest, _ := strings.Cut(strings.TrimPrefix(name, "./"), "/")
	if *top == "" {
		*top = first
	} else if first != *top {
		return "", fmt.Errorf("%w: %q is outside the top folder %q", ErrUnsafeArchive, name, *top)
	}
	return strings.TrimPrefix(rest, "./"), nil
}

// throughLink returns the symbolic link of the archive that p is, or
// passes through, or "". git never stores a path under a symbolic link, so
// only a crafted archive has one; extracting it could write where the
// link points.
func throughLink(links map[string]bool, p string) string {
	for p = strings.TrimSuffix(p, "/"); p != ""; p = parentOf(p) {
		if links[p] {
			return p
		}
	}
	return ""
}

func parentOf(p string) string {
	p = strings.TrimSuffix(p, "/")
	if i := strings.LastIndexByte(p, '/'); i > 0 {
		return p[:i]
	}
	return ""
}

// orTooLarge reports a read that hit the cap as ErrSourceTooLarge rather
// than as the decompressor's complaint about a cut stream.
func orTooLarge(in *capReader, err error) error {
	if in.hit {
		return ErrSourceTooLarge
	}
	return err
}

// capReader reads at most left bytes, then fails.
type capReader struct {
	r    io.Reader
	left int64
	hit  bool
}

func (c *capReader) Read(p []byte) (int, error) {
	if c.left <= 0 {
		c.hit = true
		return 0, fmt.Errorf("%w: the download is over the limit", ErrSourceTooLarge)
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.r.Read(p)
	c.left -= int64(n)
	return n, err
}

// capWriter writes at most left bytes, then fails; n counts what was
// written.
type capWriter struct {
	w    io.Writer
	left int64
	n    int64
}

func (c *capWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > c.left {
		return 0, fmt.Errorf("%w: the tar is over the limit of %d bytes", ErrSourceTooLarge, c.n+c.left)
	}
	n, err := c.w.Write(p)
	c.n += int64(n)
	c.left -= int64(n)
	return n, err
}

// cut makes s one line of at most max characters (runes), ending in "…"
// when it was cut.
func cut(s string, max int) string {
	s = strings.Join(strings.Fields(s), " ")
	if utf8.RuneCountInString(s) <= max {
		return s
	}
	r := []rune(s)[:max-1]
	return strings.TrimRight(string(r), " ") + "…"
}

func (a *App) log() *slog.Logger {
	if a.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return a.Log
}
