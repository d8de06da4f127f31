package fakegithub_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/bradleyfalzon/ghinstallation/v2"
	gh "github.com/google/go-github/v62/github"

	"github.com/forge-ci/forge/internal/fakegithub"
	"github.com/forge-ci/forge/internal/fakegithub/fakegithubtest"
)

// clients are go-github clients on the fake, as the app and as
// installation inst, the way a GitHub App talks to GitHub Enterprise.
func clients(t *testing.T, f *fakegithubtest.Server, inst int64, key *rsa.PrivateKey) (app, install *gh.Client) {
	t.Helper()
	return clientsAt(t, f.APIBase(), f.Client().Transport, fakegithub.AppID, inst, key)
}

// clientsAt are clients of the app appID on the API at base, through rt.
func clientsAt(t *testing.T, base string, rt http.RoundTripper, appID, inst int64, key *rsa.PrivateKey) (app, install *gh.Client) {
	t.Helper()
	atr := ghinstallation.NewAppsTransportFromPrivateKey(rt, appID, key)
	atr.BaseURL = strings.TrimSuffix(base, "/")
	itr := ghinstallation.NewFromAppsTransport(atr, inst)
	itr.BaseURL = atr.BaseURL
	app, err := gh.NewClient(&http.Client{Transport: atr}).WithEnterpriseURLs(base, base)
	if err != nil {
		t.Fatal(err)
	}
	install, err = gh.NewClient(&http.Client{Transport: itr}).WithEnterpriseURLs(base, base)
	if err != nil {
		t.Fatal(err)
	}
	return app, install
}

func TestFlow(t *testing.T) {
	f := fakegithubtest.New(t)
	f.SetInstallation("o/r", 7)
	const sha = "0123456789abcdef0123456789abcdef01234567"
	f.SetFile("o/r", sha, "image: busybox\n")
	f.SetTarball("o/r", sha, fakegithubtest.Tarball(t, "o-r-0123456", map[string]string{"hello.txt": "hi\n", "src/a/b.go": "package a\n"}))
	app, inst := clients(t, f, 7, fakegithubtest.AppKey(t))
	ctx := context.Background()

	in, _, err := app.Apps.FindRepositoryInstallation(ctx, "o", "r")
	if err != nil || in.GetID() != 7 {
		t.Fatalf("installation %v, %v", in.GetID(), err)
	}
	file, _, _, err := inst.Repositories.GetContents(ctx, "o", "r", ".forge.yml", &gh.RepositoryContentGetOptions{Ref: sha})
	if err != nil {
		t.Fatal(err)
	}
	if text, _ := file.GetContent(); text != "image: busybox\n" {
		t.Errorf("content %q", text)
	}
	if _, _, resp, err := inst.Repositories.GetContents(ctx, "o", "r", ".forge.yml", &gh.RepositoryContentGetOptions{Ref: "main"}); resp == nil || resp.StatusCode != 404 {
		t.Errorf("absent file: %v", err)
	}

	link, _, err := inst.Repositories.GetArchiveLink(ctx, "o", "r", gh.Tarball, &gh.RepositoryContentGetOptions{Ref: sha}, 1)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := f.Client().Get(link.String())
	if err != nil {
		t.Fatal(err)
	}
	tgz, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	got := list(t, tgz)
	want := "o-r-0123456/ o-r-0123456/hello.txt=hi\n o-r-0123456/src/ o-r-0123456/src/a/ o-r-0123456/src/a/b.go=package a\n"
	if got != want {
		t.Errorf("tarball\n got %q\nwant %q", got, want)
	}

	go func() {
		select { // every wait honours a context: give up if the test has ended
		case <-t.Context().Done():
			return
		case <-time.After(50 * time.Millisecond):
		}
		inst.Repositories.CreateStatus(ctx, "o", "r", sha, &gh.RepoStatus{State: gh.String("pending"),
			Context: gh.String("forge/execute"), TargetURL: gh.String("http://forge.test/builds/1")})
	}()
	s := f.NextStatus(t, 10*time.Second)
	if s.State != "pending" || s.Context != "forge/execute" || s.SHA != sha || s.Inst != 7 || s.Owner != "o" || s.Repo != "r" ||
		s.TargetURL != "http://forge.test/builds/1" || s.Token != "token ghs_7_1" {
		t.Errorf("status %+v", s)
	}
	if n := len(f.Statuses()); n != 1 {
		t.Errorf("%d statuses", n)
	}
	f.FailStatuses(1, "422")
	if _, _, err := inst.Repositories.CreateStatus(ctx, "o", "r", sha, &gh.RepoStatus{State: gh.String("bogus")}); err == nil {
		t.Error("a failing status post succeeded")
	}
	if f.TokenCount(7) != 1 {
		t.Errorf("%d tokens", f.TokenCount(7))
	}
	reqs := f.Requests()
	if len(reqs) == 0 || !strings.HasPrefix(reqs[0], "GET /api/v3/repos/o/r/installation") {
		t.Errorf("requests %q", reqs)
	}
	for _, r := range reqs {
		if strings.HasPrefix(r, "GET /api/v3/repos/o/r/contents/.forge.yml") && !strings.Contains(r, "ref=") {
			t.Errorf("contents request without its ref: %s", r)
		}
	}
}

// recorder notes the failures the fake reports instead of failing.
type recorder struct {
	testing.TB
	mu   sync.Mutex
	errs []string
}

func (r *recorder) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

func (r *recorder) all() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.errs, "\n")
}

func TestRefusals(t *testing.T) {
	rec := &recorder{TB: t}
	f := fakegithubtest.New(rec)
	f.SetInstallation("o/r", 7)
	f.SetInstallation("o/other", 8)
	f.SetFile("o/other", "x", "image: x\n")
	ctx := context.Background()

	// A JWT signed with another key: refused, and reported.
	other, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	bad, _ := clients(t, f, 7, other)
	if _, _, err := bad.Apps.FindRepositoryInstallation(ctx, "o", "r"); err == nil {
		t.Error("a JWT of another key was accepted")
	}
	if !strings.Contains(rec.all(), "not signed with the app's key") {
		t.Errorf("reported %q", rec.all())
	}

	// A token of installation 7 does not see installation 8's repository.
	_, inst := clients(t, f, 7, fakegithubtest.AppKey(t))
	if _, _, resp, _ := inst.Repositories.GetContents(ctx, "o", "other", ".forge.yml", &gh.RepositoryContentGetOptions{Ref: "x"}); resp == nil || resp.StatusCode != 404 {
		t.Errorf("another installation's repository: %v", resp)
	}
	// No token at all.
	resp, err := http.Get(f.APIBase() + "repos/o/r/contents/.forge.yml?ref=x")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Errorf("no token: %d", resp.StatusCode)
	}

	// The client refuses other hosts; paths the fake does not know are
	// reported.
	if _, err := f.Client().Get("https://api.github.com/repos/o/r"); err == nil {
		t.Error("the client reached api.github.com")
	}
	if r, err := http.Get(f.URL() + "/repos/o/r/statuses/x"); err == nil {
		r.Body.Close()
	}
	all := rec.all()
	if !strings.Contains(all, "api.github.com") || !strings.Contains(all, "unexpected request GET /repos/o/r/statuses/x") {
		t.Errorf("reported %q", all)
	}
}

func TestHold(t *testing.T) {
	// The requests carry no token: refused, noted, not failing the test.
	f := fakegithubtest.New(&recorder{TB: t})
	h := f.Hold("GET /api/v3/repos/o/r/contents/.forge.yml?ref=slow")
	done := make(chan int, 2)
	get := func(ref string) {
		resp, err := http.Get(f.APIBase() + "repos/o/r/contents/.forge.yml?ref=" + ref)
		if err != nil {
			done <- 0
			return
		}
		resp.Body.Close()
		done <- resp.StatusCode
	}
	go get("slow")
	select {
	case <-h.Arrived():
	case <-time.After(10 * time.Second):
		t.Fatal("the held request did not arrive")
	}
	go get("fast") // not held: answered (401, no token) while the other waits
	if code := <-done; code != 401 {
		t.Errorf("unheld request: %d", code)
	}
	select {
	case code := <-done:
		t.Fatalf("the held request was answered (%d) before Release", code)
	case <-time.After(50 * time.Millisecond):
	}
	h.Release()
	select {
	case code := <-done:
		if code != 401 {
			t.Errorf("released request: %d", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the released request was not answered")
	}
	// A Hold left unreleased does not keep the test's end waiting.
	f.Hold("GET /api/v3/repos/o/r/tarball/")
	go http.Get(f.APIBase() + "repos/o/r/tarball/x")
}

func TestAppKeyPEM(t *testing.T) {
	b := fakegithubtest.AppKeyPEM(t)
	if !bytes.HasPrefix(b, []byte("-----BEGIN RSA PRIVATE KEY-----")) || !bytes.Equal(b, fakegithubtest.AppKeyPEM(t)) {
		t.Errorf("key %.40q", b)
	}
}

// list is a tarball's entries in order, "name" or "name=body", after
// checking GitHub's pax global header.
func list(t *testing.T, tgz []byte) string {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(tgz))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	var out []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeXGlobalHeader {
			if len(out) > 0 || h.PAXRecords["comment"] == "" {
				t.Errorf("pax global header %+v", h)
			}
			continue
		}
		e := h.Name
		if h.Typeflag == tar.TypeReg {
			b, _ := io.ReadAll(tr)
			e += "=" + string(b)
		}
		out = append(out, e)
	}
	return strings.Join(out, " ")
}

// TestTree is the fake as the deployment test's container runs it: one
// tree for every repository and commit, an app of its own, and what
// happened told under /_fake/.
func TestTree(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	var refused []string
	var mu sync.Mutex
	f := fakegithub.New(fakegithub.Options{AppID: 99, Key: &key.PublicKey,
		Tree:   fstest.MapFS{".forge.yml": {Data: []byte("image: x\n")}, "sub/a.txt": {Data: []byte("a\n")}},
		Refuse: func(msg string) { mu.Lock(); refused = append(refused, msg); mu.Unlock() }})
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	t.Cleanup(f.Close)
	app, inst := clientsAt(t, srv.URL+"/api/v3/", http.DefaultTransport, 99, 1, key)
	ctx := t.Context()
	const sha = "0123456789abcdef0123456789abcdef01234567"

	if in, _, err := app.Apps.FindRepositoryInstallation(ctx, "any", "repo"); err != nil || in.GetID() != 1 || in.GetAppID() != 99 {
		t.Fatalf("installation %+v, %v", in, err)
	}
	file, _, _, err := inst.Repositories.GetContents(ctx, "any", "repo", ".forge.yml", &gh.RepositoryContentGetOptions{Ref: sha})
	if err != nil {
		t.Fatal(err)
	}
	if text, _ := file.GetContent(); text != "image: x\n" {
		t.Errorf("content %q", text)
	}
	link, _, err := inst.Repositories.GetArchiveLink(ctx, "any", "repo", gh.Tarball, &gh.RepositoryContentGetOptions{Ref: sha}, 1)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get(link.String())
	if err != nil {
		t.Fatal(err)
	}
	tgz, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if got, want := list(t, tgz), "any-repo-0123456/ any-repo-0123456/.forge.yml=image: x\n any-repo-0123456/sub/ any-repo-0123456/sub/a.txt=a\n"; got != want {
		t.Errorf("tarball\n got %q\nwant %q", got, want)
	}
	if _, _, err := inst.Repositories.CreateStatus(ctx, "any", "repo", sha, &gh.RepoStatus{State: gh.String("success"),
		Context: gh.String("forge/execute"), TargetURL: gh.String("http://forge.test/builds/1")}); err != nil {
		t.Fatal(err)
	}
	// A JWT of another app, and a request the fake does not know.
	bad, _ := clientsAt(t, srv.URL+"/api/v3/", http.DefaultTransport, 98, 1, key)
	if _, _, err := bad.Apps.FindRepositoryInstallation(ctx, "any", "repo"); err == nil {
		t.Error("a JWT of another app was accepted")
	}
	if r, err := http.Get(srv.URL + "/nowhere"); err == nil {
		r.Body.Close()
	}

	// Decoded as deploy/deploy_engine_test.go decodes them.
	var statuses []struct {
		Owner, Repo, SHA, State, Context, Description string
		TargetURL                                     string `json:"target_url"`
	}
	getJSON(t, srv.URL+"/_fake/statuses", &statuses)
	if len(statuses) != 1 || statuses[0].Owner != "any" || statuses[0].Repo != "repo" || statuses[0].SHA != sha ||
		statuses[0].State != "success" || statuses[0].TargetURL != "http://forge.test/builds/1" {
		t.Errorf("statuses %+v", statuses)
	}
	var reqs struct{ Requests, Refused []string }
	getJSON(t, srv.URL+"/_fake/requests", &reqs)
	if len(reqs.Refused) != 2 || !strings.Contains(reqs.Refused[0], `iss "98"`) || reqs.Refused[1] != "unexpected request GET /nowhere" {
		t.Errorf("refused %q", reqs.Refused)
	}
	mu.Lock()
	if !slices.Equal(refused, reqs.Refused) {
		t.Errorf("told of %q, listed %q", refused, reqs.Refused)
	}
	mu.Unlock()
	if len(reqs.Requests) != 8 || slices.ContainsFunc(reqs.Requests, func(r string) bool { return strings.Contains(r, "/_fake/") }) {
		t.Errorf("requests %q", reqs.Requests)
	}
}

// TestEmptyLists: before anything happened /_fake/statuses is an empty
// JSON list, not null.
func TestEmptyLists(t *testing.T) {
	srv := httptest.NewServer(fakegithub.New(fakegithub.Options{}))
	t.Cleanup(srv.Close)
	resp, err := http.Get(srv.URL + "/_fake/statuses")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || strings.TrimSpace(string(b)) != "[]" {
		t.Errorf("%d %q", resp.StatusCode, b)
	}
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("%s: %v", url, err)
	}
}
