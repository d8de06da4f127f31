package fakegithub_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
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

// callback is the client's redirect_uri, with a query of its own that
// the redirect must keep.
const callback = "http://forge.test/login/callback?next=%2Fbuilds%2F1"

// noRedirect stops at redirects, so that a test reads where GitHub sends
// the browser (a host the test does not serve).
var noRedirect = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

// authorizeURL is the authorization page's URL with params.
func authorizeURL(f *fakegithubtest.Server, params url.Values) string {
	return f.WebBase() + "/login/oauth/authorize?" + params.Encode()
}

// redirected checks that resp sends the browser back to callback with
// state, and returns the code.
func redirected(t *testing.T, resp *http.Response, state string) string {
	t.Helper()
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("authorize: %s, want a 302", resp.Status)
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		t.Fatal(err)
	}
	q := loc.Query()
	if loc.Scheme+"://"+loc.Host+loc.Path != "http://forge.test/login/callback" ||
		!strings.HasPrefix(loc.RawQuery, "next=%2Fbuilds%2F1&") || q.Get("state") != state || len(q.Get("code")) != 20 {
		t.Fatalf("redirected to %s (state %q)", loc, q.Get("state"))
	}
	return q.Get("code")
}

// authCode signs login in with login= and returns the code, checking that
// state comes back unchanged.
func authCode(t *testing.T, f *fakegithubtest.Server, login, state string) string {
	t.Helper()
	resp, err := noRedirect.Get(authorizeURL(f, url.Values{"client_id": {fakegithubtest.ClientID},
		"redirect_uri": {callback}, "state": {state}, "login": {login}}))
	if err != nil {
		t.Fatal(err)
	}
	return redirected(t, resp, state)
}

// exchange posts a token request with params (client_id and
// client_secret filled in unless set) as a form and returns the JSON
// answer.
func exchange(t *testing.T, f *fakegithubtest.Server, params url.Values) map[string]string {
	t.Helper()
	p := url.Values{"client_id": {fakegithubtest.ClientID}, "client_secret": {fakegithubtest.ClientSecret}}
	maps.Copy(p, params)
	req, _ := http.NewRequest("POST", f.WebBase()+"/login/oauth/access_token", strings.NewReader(p.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]string
	if err := json.NewDecoder(resp.Body).Decode(&out); resp.StatusCode != 200 || err != nil {
		t.Fatalf("token request: %s, %v", resp.Status, err)
	}
	return out
}

// userToken runs the whole flow for login.
func userToken(t *testing.T, f *fakegithubtest.Server, login string) string {
	t.Helper()
	tok := exchange(t, f, url.Values{"code": {authCode(t, f, login, "st")}, "redirect_uri": {callback}})["access_token"]
	if !strings.HasPrefix(tok, "ghu_") {
		t.Fatalf("no user token: %q", tok)
	}
	return tok
}

// api GETs path under the API with the Authorization header auth and
// decodes the JSON answer.
func api(t *testing.T, f *fakegithubtest.Server, auth, path string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest("GET", f.APIBase()+path, nil)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	return resp.StatusCode, out
}

func TestOAuthFlow(t *testing.T) {
	f := fakegithubtest.New(t)
	f.AddUser("alice", 1001)
	f.SetPermission("alice", "o/r", "write")
	f.SetPrivate("o/r", true)

	const state = `s p&a=c/é+%"<`
	c := authCode(t, f, "alice", state)
	got := exchange(t, f, url.Values{"code": {c}, "redirect_uri": {callback}})
	tok := got["access_token"]
	if scope, ok := got["scope"]; !strings.HasPrefix(tok, "ghu_") || got["token_type"] != "bearer" || !ok || scope != "" || len(got) != 3 {
		t.Errorf("token answer %q", got)
	}
	for _, auth := range []string{"token " + tok, "Bearer " + tok} {
		code, u := api(t, f, auth, "user")
		if code != 200 || u["login"] != "alice" || u["id"] != 1001.0 || u["type"] != "User" || u["site_admin"] != false ||
			u["node_id"] != "MDQ6VXNlcjEwMDE=" || u["name"] != "alice" || u["html_url"] != f.WebBase()+"/alice" ||
			!strings.HasPrefix(u["avatar_url"].(string), f.WebBase()+"/avatars/u/1001") {
			t.Errorf("%s: %d %v", auth, code, u)
		}
	}
	code, repo := api(t, f, "Bearer "+tok, "repos/o/r")
	if code != 200 || repo["full_name"] != "o/r" || repo["name"] != "r" || repo["private"] != true || repo["visibility"] != "private" ||
		repo["default_branch"] != "main" || repo["html_url"] != f.WebBase()+"/o/r" || repo["id"] == nil {
		t.Errorf("repository: %d %v", code, repo)
	}
	if owner, _ := repo["owner"].(map[string]any); owner["login"] != "o" || owner["type"] != "Organization" || owner["id"] == nil {
		t.Errorf("owner %v", repo["owner"])
	}
	want := map[string]any{"admin": false, "maintain": false, "push": true, "triage": true, "pull": true}
	if !maps.Equal(repo["permissions"].(map[string]any), want) {
		t.Errorf("permissions %v, want %v", repo["permissions"], want)
	}
	if n := f.UserTokens("alice"); n != 1 {
		t.Errorf("%d tokens", n)
	}

	// Without Accept: application/json the answer is form-encoded, as
	// GitHub's; a JSON body is taken too.
	post := func(contentType, body, accept string) (*http.Response, []byte) {
		t.Helper()
		req, _ := http.NewRequest("POST", f.WebBase()+"/login/oauth/access_token", strings.NewReader(body))
		req.Header.Set("Content-Type", contentType)
		if accept != "" {
			req.Header.Set("Accept", accept)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp, b
	}
	resp, b := post("application/x-www-form-urlencoded", url.Values{"client_id": {fakegithubtest.ClientID},
		"client_secret": {fakegithubtest.ClientSecret}, "code": {authCode(t, f, "alice", "x")}}.Encode(), "")
	form, err := url.ParseQuery(string(b))
	if err != nil || resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/x-www-form-urlencoded") ||
		!strings.HasPrefix(form.Get("access_token"), "ghu_") || form.Get("token_type") != "bearer" || !form.Has("scope") {
		t.Errorf("form answer %s %q", resp.Status, b)
	}
	js, _ := json.Marshal(map[string]string{"client_id": fakegithubtest.ClientID, "client_secret": fakegithubtest.ClientSecret,
		"code": authCode(t, f, "alice", "y"), "redirect_uri": callback})
	resp, b = post("application/json", string(js), "application/json")
	var out map[string]string
	if err := json.Unmarshal(b, &out); err != nil || resp.StatusCode != 200 || !strings.HasPrefix(out["access_token"], "ghu_") {
		t.Errorf("JSON body: %s %q", resp.Status, b)
	}
	if n := f.UserTokens("alice"); n != 3 {
		t.Errorf("%d tokens", n)
	}
}

func TestOAuthPermissions(t *testing.T) {
	f := fakegithubtest.New(t)
	f.AddUser("alice", 1001)
	tok := "token " + userToken(t, f, "alice")
	// What GitHub shows for each role: every role implies those below.
	want := map[string]string{"admin": "admin maintain push triage pull", "maintain": "maintain push triage pull",
		"write": "push triage pull", "triage": "triage pull", "read": "pull", "none": ""}
	for perm, flags := range want {
		for _, private := range []bool{false, true} {
			repo := fmt.Sprintf("o/%s-%v", perm, private)
			f.SetPermission("alice", repo, perm)
			f.SetPrivate(repo, private)
			code, r := api(t, f, tok, "repos/"+repo)
			if private && perm == "none" {
				if code != 404 || r["message"] != "Not Found" {
					t.Errorf("%s: %d %v, want 404 Not Found", repo, code, r)
				}
				continue
			}
			if !private && flags == "" {
				flags = "pull" // everyone may read a public repository
			}
			var got []string
			for _, k := range []string{"admin", "maintain", "push", "triage", "pull"} {
				if v, ok := r["permissions"].(map[string]any)[k]; !ok {
					t.Errorf("%s: no %s in %v", repo, k, r["permissions"])
				} else if v == true {
					got = append(got, k)
				}
			}
			if code != 200 || strings.Join(got, " ") != flags || r["private"] != private {
				t.Errorf("%s: %d %v, want %q", repo, code, r, flags)
			}
		}
	}
	// A repository nothing was set on is public; the owner a user.
	if code, r := api(t, f, tok, "repos/alice/mine"); code != 200 || r["visibility"] != "public" ||
		r["owner"].(map[string]any)["type"] != "User" || r["owner"].(map[string]any)["id"] != 1001.0 {
		t.Errorf("alice/mine: %d %v", code, r)
	}
	// Making a repository public again shows it.
	f.SetPrivate("o/none-true", false)
	if code, r := api(t, f, tok, "repos/o/none-true"); code != 200 || r["visibility"] != "public" {
		t.Errorf("made public: %d %v", code, r)
	}
}

// TestOAuthPage submits the sign-in page's form as a browser would.
func TestOAuthPage(t *testing.T) {
	f := fakegithubtest.New(t)
	f.AddUser("alice", 1001)
	f.AddUser("bob", 1002)
	const state = `"><script>&x=1`
	resp, err := http.Get(authorizeURL(f, url.Values{"client_id": {fakegithubtest.ClientID}, "redirect_uri": {callback}, "state": {state}}))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	page := string(b)
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") || !strings.Contains(page, "Sign in to GitHub") ||
		!strings.Contains(page, `<button name="login" value="alice" id="login-alice">`) || !strings.Contains(page, `<button name="login" value="bob" id="login-bob">`) ||
		strings.Contains(page, "<script>") {
		t.Fatalf("%s\n%s", resp.Status, page)
	}
	action := regexp.MustCompile(`<form method="post" action="([^"]+)">`).FindStringSubmatch(page)
	if action == nil {
		t.Fatalf("no form in\n%s", page)
	}
	form := url.Values{"login": {"bob"}}
	for _, m := range regexp.MustCompile(`<input type="hidden" name="(\w+)" value="([^"]*)">`).FindAllStringSubmatch(page, -1) {
		form.Set(m[1], html.UnescapeString(m[2]))
	}
	resp, err = noRedirect.PostForm(f.WebBase()+html.UnescapeString(action[1]), form)
	if err != nil {
		t.Fatal(err)
	}
	c := redirected(t, resp, state)
	tok := exchange(t, f, url.Values{"code": {c}, "redirect_uri": {callback}})["access_token"]
	if code, u := api(t, f, "Bearer "+tok, "user"); code != 200 || u["login"] != "bob" || u["id"] != 1002.0 {
		t.Errorf("user %d %v", code, u)
	}
}

func TestOAuthRefusals(t *testing.T) {
	rec := &recorder{TB: t}
	f := fakegithubtest.New(rec)
	f.AddUser("alice", 1001)
	seen := 0
	// refused checks the requests refused since it last looked: one for
	// each of wants, holding it.
	refused := func(step string, wants ...string) {
		t.Helper()
		all := f.Refused()
		got := all[seen:]
		seen = len(all)
		if len(got) != len(wants) {
			t.Errorf("%s: refused %q, want %d", step, got, len(wants))
			return
		}
		for i, w := range wants {
			if !strings.Contains(got[i], w) {
				t.Errorf("%s: refused %q, want %q", step, got[i], w)
			}
		}
	}
	get := func(u string) (int, string) {
		t.Helper()
		resp, err := noRedirect.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(b)
	}

	if code, body := get(authorizeURL(f, url.Values{"client_id": {"nope"}, "redirect_uri": {callback}, "login": {"alice"}})); code != 404 || !strings.Contains(body, "<title>") {
		t.Errorf("unknown client: %d %q", code, body)
	}
	refused("unknown client", `unknown client_id "nope"`)
	for _, bad := range []string{"", "/login/callback", "ftp://forge.test/cb", "http:///cb"} {
		if code, _ := get(authorizeURL(f, url.Values{"client_id": {fakegithubtest.ClientID}, "redirect_uri": {bad}, "login": {"alice"}})); code != 400 {
			t.Errorf("redirect_uri %q: %d", bad, code)
		}
		refused("redirect_uri "+bad, "not an absolute http(s) URL")
	}
	if code, _ := get(authorizeURL(f, url.Values{"client_id": {fakegithubtest.ClientID}, "redirect_uri": {callback}, "login": {"mallory"}})); code != 400 {
		t.Errorf("unknown login: %d", code)
	}
	refused("unknown login", `no user "mallory"`)

	// A wrong secret: refused, and the code not used up.
	c := authCode(t, f, "alice", "st")
	badCreds := map[string]string{"error": "incorrect_client_credentials", "error_description": "The client_id and/or client_secret passed are incorrect.",
		"error_uri": "https://docs.github.com/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors/#incorrect-client-credentials"}
	if got := exchange(t, f, url.Values{"code": {c}, "client_secret": {"wrong"}}); !maps.Equal(got, badCreds) {
		t.Errorf("wrong secret: %q", got)
	}
	refused("wrong secret", `client_id "`+fakegithubtest.ClientID+`" or its secret incorrect`)
	// Client credentials as Basic auth, which x/oauth2 tries first unless
	// told otherwise.
	req, _ := http.NewRequest("POST", f.WebBase()+"/login/oauth/access_token", strings.NewReader("code="+c))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(fakegithubtest.ClientID, fakegithubtest.ClientSecret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if q, _ := url.ParseQuery(string(b)); resp.StatusCode != 200 || q.Get("error") != "incorrect_client_credentials" {
		t.Errorf("Basic auth: %s %q", resp.Status, b)
	}
	refused("Basic auth", "client credentials in an Authorization header")
	// The code still works, once; GitHub takes a token request without a
	// redirect_uri.
	if tok := exchange(t, f, url.Values{"code": {c}})["access_token"]; !strings.HasPrefix(tok, "ghu_") {
		t.Errorf("the code after a wrong secret: %q", tok)
	}
	badCode := map[string]string{"error": "bad_verification_code", "error_description": "The code passed is incorrect or expired.",
		"error_uri": "https://docs.github.com/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors/#bad-verification-code"}
	if got := exchange(t, f, url.Values{"code": {c}}); !maps.Equal(got, badCode) {
		t.Errorf("code used twice: %q", got)
	}
	if got := exchange(t, f, url.Values{"code": {"0123456789abcdef0123"}}); !maps.Equal(got, badCode) {
		t.Errorf("unknown code: %q", got)
	}
	refused("code used twice, or unknown") // a reloaded callback: no client bug

	// Another redirect_uri than the code's: refused, and the code gone.
	c = authCode(t, f, "alice", "st")
	if got := exchange(t, f, url.Values{"code": {c}, "redirect_uri": {"http://forge.test/other"}}); !maps.Equal(got, badCode) {
		t.Errorf("other redirect_uri: %q", got)
	}
	refused("other redirect_uri", `redirect_uri "http://forge.test/other", the code was issued for "`+callback+`"`)
	if got := exchange(t, f, url.Values{"code": {c}, "redirect_uri": {callback}}); !maps.Equal(got, badCode) {
		t.Errorf("code after another redirect_uri: %q", got)
	}

	// A code expires after ten minutes.
	var mu sync.Mutex
	now := time.Now()
	f.SetClock(func() time.Time { mu.Lock(); defer mu.Unlock(); return now })
	late, early := authCode(t, f, "alice", "st"), authCode(t, f, "alice", "st")
	mu.Lock()
	now = now.Add(10*time.Minute + time.Second)
	mu.Unlock()
	if got := exchange(t, f, url.Values{"code": {late}}); !maps.Equal(got, badCode) {
		t.Errorf("expired code: %q", got)
	}
	mu.Lock()
	now = now.Add(-2 * time.Second)
	mu.Unlock()
	if tok := exchange(t, f, url.Values{"code": {early}})["access_token"]; !strings.HasPrefix(tok, "ghu_") {
		t.Errorf("code of 9m59s: %q", tok)
	}
	refused("expiry")

	// A revoked token gets 401, which is no client bug.
	tok := userToken(t, f, "alice")
	if code, _ := api(t, f, "token "+tok, "user"); code != 200 {
		t.Errorf("user before revoking: %d", code)
	}
	f.RevokeUserTokens("alice")
	for _, p := range []string{"user", "repos/o/r"} {
		if code, body := api(t, f, "token "+tok, p); code != 401 || body["message"] != "Bad credentials" || body["documentation_url"] != "https://docs.github.com/rest" {
			t.Errorf("%s with a revoked token: %d %v", p, code, body)
		}
	}
	if n := f.UserTokens("alice"); n != 0 {
		t.Errorf("%d tokens after revoking", n)
	}
	refused("revoked")
	if code, _ := api(t, f, "token "+userToken(t, f, "alice"), "user"); code != 200 {
		t.Errorf("signed in again: %d", code)
	}

	// No token, or one the fake never issued: a client bug.
	for _, auth := range []string{"", "token ghu_never", "Basic " + tok} {
		if code, body := api(t, f, auth, "user"); code != 401 || body["message"] != "Bad credentials" {
			t.Errorf("%q: %d %v", auth, code, body)
		}
	}
	refused("no token", "no user token of the fake's", "no user token of the fake's", "no user token of the fake's")
	// A private repository is 404 to whom may not read it, and no bug.
	f.SetPrivate("o/secret", true)
	if code, body := api(t, f, "token "+userToken(t, f, "alice"), "repos/o/secret"); code != 404 || body["message"] != "Not Found" {
		t.Errorf("private repository: %d %v", code, body)
	}
	refused("private repository")
	// An installation token is no user's.
	_, inst := clients(t, f, 1, fakegithubtest.AppKey(t))
	if _, resp, err := inst.Users.Get(t.Context(), ""); resp == nil || resp.StatusCode != 403 {
		t.Errorf("installation token on /user: %v", err)
	}
	refused("installation token on /user", "an installation token is no user's")

	// Bad settings are reported, not obeyed.
	f.SetPermission("alice", "o/r", "owner")
	f.SetPermission("alice", "o", "read")
	f.SetPrivate("o/r/x", true)
	f.AddUser("", 3)
	refused("settings", `SetPermission("alice", "o/r", "owner")`, `SetPermission("alice", "o", "read")`, `SetPrivate("o/r/x")`, `AddUser("", 3)`)
	if len(strings.Split(rec.all(), "\n")) != len(f.Refused()) {
		t.Errorf("reported %q, refused %q", rec.all(), f.Refused())
	}
}

// TestOAuthNoClient: a fake without an OAuth client knows no client_id.
func TestOAuthNoClient(t *testing.T) {
	var mu sync.Mutex
	var refused []string
	f := fakegithub.New(fakegithub.Options{Refuse: func(msg string) { mu.Lock(); refused = append(refused, msg); mu.Unlock() }})
	f.AddUser("alice", 1)
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	resp, err := noRedirect.Get(srv.URL + "/login/oauth/authorize?" + url.Values{"client_id": {""}, "redirect_uri": {callback}, "login": {"alice"}}.Encode())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Errorf("authorize: %s", resp.Status)
	}
	resp, err = http.PostForm(srv.URL+"/login/oauth/access_token", url.Values{"client_id": {""}, "client_secret": {""}, "code": {"x"}})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if q, _ := url.ParseQuery(string(b)); q.Get("error") != "incorrect_client_credentials" {
		t.Errorf("token: %q", b)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(refused) != 2 {
		t.Errorf("refused %q", refused)
	}
}

// TestOAuthGoGitHub: the shapes decode in go-github, as the coordinator
// reads them with a user token.
func TestOAuthGoGitHub(t *testing.T) {
	f := fakegithubtest.New(t)
	f.AddUser("alice", 1001)
	f.AddUser("bob", 1002)
	f.SetPermission("alice", "o/r", "maintain")
	f.SetPrivate("o/r", true)
	ctx := t.Context()
	user := func(login string) *gh.Client {
		c, err := gh.NewClient(f.Client()).WithAuthToken(userToken(t, f, login)).WithEnterpriseURLs(f.APIBase(), f.APIBase())
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	alice := user("alice")

	u, _, err := alice.Users.Get(ctx, "")
	if err != nil || u.GetLogin() != "alice" || u.GetID() != 1001 || u.GetType() != "User" || u.GetNodeID() == "" || u.GetSiteAdmin() {
		t.Fatalf("user %v, %v", u, err)
	}
	resp, err := f.Client().Get(u.GetAvatarURL()) // the page showing it loads it from the fake
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "image/png" {
		t.Errorf("avatar: %s %s", resp.Status, resp.Header.Get("Content-Type"))
	}

	r, _, err := alice.Repositories.Get(ctx, "o", "r")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"admin": false, "maintain": true, "push": true, "triage": true, "pull": true}
	if !maps.Equal(r.GetPermissions(), want) || !r.GetPrivate() || r.GetVisibility() != "private" || r.GetFullName() != "o/r" ||
		r.GetOwner().GetLogin() != "o" || r.GetOwner().GetType() != "Organization" || r.GetDefaultBranch() != "main" || r.GetID() == 0 {
		t.Errorf("repository %v, permissions %v", r, r.GetPermissions())
	}
	var ghErr *gh.ErrorResponse
	if _, _, err := user("bob").Repositories.Get(ctx, "o", "r"); !errors.As(err, &ghErr) || ghErr.Response.StatusCode != 404 {
		t.Errorf("bob on a private repository: %v", err)
	}
	f.RevokeUserTokens("alice")
	if _, _, err := alice.Users.Get(ctx, ""); !errors.As(err, &ghErr) || ghErr.Response.StatusCode != 401 || ghErr.Message != "Bad credentials" {
		t.Errorf("revoked: %v", err)
	}

	// Installation tokens read repositories as before: no permissions, and
	// only their installation's.
	f.SetInstallation("o/r", 7)
	_, inst7 := clients(t, f, 7, fakegithubtest.AppKey(t))
	if r, _, err := inst7.Repositories.Get(ctx, "o", "r"); err != nil || r.GetFullName() != "o/r" || r.Permissions != nil {
		t.Errorf("installation 7: %v, %v", r, err)
	}
	_, inst1 := clients(t, f, 1, fakegithubtest.AppKey(t))
	if _, _, err := inst1.Repositories.Get(ctx, "o", "r"); !errors.As(err, &ghErr) || ghErr.Response.StatusCode != 404 {
		t.Errorf("another installation's repository: %v", err)
	}
}
