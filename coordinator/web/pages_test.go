package web

import (
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/auth"
	"github.com/forge-ci/forge/coordinator/store"
)

const stepsConfig = "image: busybox:1.36\nsetup: [\"echo setup\"]\nexecute:\n  - make test\n  - |\n    ./deploy.sh \\\n      --now\n"

// evilLog is output no page may render as anything but text: markup,
// colours, cursor moves, a title, a link, invalid UTF-8, carriage returns,
// a 10,000-character line.
var evilLog = "+ echo setup\nsetup\n+ make test\n" +
	"<script>alert(1)</script><img src=x onerror=alert(2)>\n" +
	"\x1b[1;31mFAIL\x1b[0m \x1b[32mok\x1b[0m\n" +
	"\x1b[2J\x1b[H\x1b[10;10Hmoved\x1b]0;title\x07\x1b]8;;javascript:alert(3)\x1b\\link\x1b]8;;\x1b\\\n" +
	"bad \xff\xfe utf8\n" +
	"10%\r50%\r100%\n" +
	strings.Repeat("y", 10000) + "\n"

func TestBuildPageLog(t *testing.T) {
	b := build("b1", coordinator.Failure, time.Now().Add(-time.Minute))
	code := 2
	b.ExitCode, b.Config, b.NodeID = &code, stepsConfig, "n1"
	b.Started, b.Finished = time.Now().Add(-50*time.Second), time.Now().Add(-5*time.Second)
	e := newAPIEnv(t, b)
	e.logs["b1"] = evilLog + "partial, no newline"

	status, _, page := e.do("GET", "/builds/b1")
	if status != 200 {
		t.Fatalf("page: %d %s", status, page)
	}
	for _, bad := range []string{"<script>alert", "<img", "\x1b", "javascript:", "title\x07", "\xff"} {
		if strings.Contains(page, bad) {
			t.Errorf("the page holds %q", bad)
		}
	}
	if !utf8.ValidString(page) {
		t.Error("the page is not valid UTF-8")
	}
	for _, want := range []string{
		`&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;`,
		`<span class="ansi-f1 ansi-bold">FAIL</span> <span class="ansi-f2">ok</span>`,
		`movedlink`, "bad \ufffd\ufffd utf8", `<span class="lc">100%</span>`,
		strings.Repeat("y", 10000),
		`<div class="ll" id="L1"><a class="ln" href="#L1">1</a>`,
		`id="L10"><a class="ln" href="#L10">10</a><span class="lt"></span><span class="lc">partial, no newline</span>`,
		`data-offset="` + strconv.Itoa(len(evilLog)+len("partial, no newline")) + `"`,
		`data-final="1"`, `data-done="1"`, `<code>busybox:1.36</code>`,
		`<dd id="elapsed">45s</dd>`, `<dd id="exit">2</dd>`, `<dd id="node">h1</dd>`,
	} {
		if !strings.Contains(page, want) {
			t.Errorf("the page lacks %q", want)
		}
	}
	// The steps as forgexec marked them: setup and make test ran, make
	// test failed (the build failed), the deploy never started. A
	// command of several lines is known by its first.
	steps := regexp.MustCompile(`<li class="step (\w+)" data-marker="([^"]*)">.*?<a class="goto"( href="#L\d+")?[ >]`).FindAllStringSubmatch(page, -1)
	want := [][3]string{{"done", "&#43; echo setup", ` href="#L1"`}, {"failed", "&#43; make test", ` href="#L3"`}, {"skipped", "&#43; ./deploy.sh \\", ""}}
	if len(steps) != len(want) {
		t.Fatalf("steps: %q", steps)
	}
	for i, w := range want {
		if steps[i][1] != w[0] || steps[i][2] != w[1] || steps[i][3] != w[2] {
			t.Errorf("step %d: %q, want %q", i, steps[i][1:], w)
		}
	}
}

// A running build's page holds its complete lines; the live page reads
// the unfinished one, and what follows, from data-offset.
func TestBuildPageRunning(t *testing.T) {
	b := build("b1", coordinator.Running, time.Now())
	b.Config, b.Started = stepsConfig, time.Now()
	e := newAPIEnv(t, b)
	e.logs["b1"] = "+ echo setup\n\x1b[33mhalf a line"
	_, _, page := e.do("GET", "/builds/b1")
	for _, want := range []string{`data-offset="13"`, `data-final=""`, `data-sgr="-1;-1;0;0;0;0"`, `data-next="1"`,
		`<li class="step running" data-marker="&#43; echo setup">`, `<li class="step pending" data-marker="&#43; make test">`} {
		if !strings.Contains(page, want) {
			t.Errorf("the page lacks %q", want)
		}
	}
	if strings.Contains(page, "half a line") || strings.Contains(page, `id="L2"`) {
		t.Error("the page renders the unfinished line")
	}
	// The live page's read: from the offset on.
	status, _, rest := e.do("GET", "/api/builds/b1/log?offset=13")
	if status != 200 || rest != "\x1b[33mhalf a line" {
		t.Errorf("log from offset 13: %d %q", status, rest)
	}
	if status, _, rest := e.do("GET", "/api/builds/b1/log?offset=1000"); status != 200 || rest != "" {
		t.Errorf("log from past its end: %d %q", status, rest)
	}
	for _, bad := range []string{"-1", "x", "1.5"} {
		if status, _, body := e.do("GET", "/api/builds/b1/log?offset="+bad); status != 400 || !strings.Contains(body, "offset") {
			t.Errorf("offset %s: %d %s", bad, status, body)
		}
	}
}

// A long log: the page shows its tail, says so, and numbers lines as the
// whole log does; a log deleted by retention says so instead.
func TestBuildPageLongLog(t *testing.T) {
	b := build("b1", coordinator.Success, time.Now())
	old := build("old", coordinator.Success, time.Now().Add(-100*24*time.Hour))
	old.Finished = time.Now().Add(-91 * 24 * time.Hour)
	e := newAPIEnv(t, b, old)
	var sb strings.Builder
	for i := 1; i <= pageLogLines+500; i++ {
		sb.WriteString("line " + strconv.Itoa(i) + "\n")
	}
	e.logs["b1"] = sb.String()
	delete(e.logs, "old")
	_, _, page := e.do("GET", "/builds/b1")
	if !strings.Contains(page, "The first 500 lines are not shown here") || strings.Contains(page, `id="L500"`) ||
		!strings.Contains(page, `id="L501"><a class="ln" href="#L501">501</a><span class="lt"></span><span class="lc">line 501</span>`) {
		t.Errorf("the long log's page: %.3000s", page)
	}
	_, _, page = e.do("GET", "/builds/old")
	if !strings.Contains(page, "deleted by retention") {
		t.Errorf("a pruned log's page: %.3000s", page)
	}
}

func TestBuildsPageFilters(t *testing.T) {
	t0 := time.Now().Add(-time.Hour)
	mk := func(id, repo, branch string, pr int, st coordinator.State, at int) *coordinator.Build {
		b := build(id, st, t0.Add(time.Duration(at)*time.Second))
		b.Repo, b.Branch, b.PullRequest = repo, branch, pr
		return b
	}
	p := mk("p1", "secret", "main", 0, coordinator.Success, 9)
	p.Public = false
	withNode := mk("a5", "widgets", "main", 0, coordinator.Success, 5)
	withNode.NodeID, withNode.Author = "n1", "octocat"
	withNode.Started, withNode.Finished = t0, t0.Add(83*time.Second)
	e := newAPIEnv(t, mk("a1", "widgets", "main", 0, coordinator.Success, 1), mk("a2", "widgets", "feature", 3, coordinator.Failure, 2),
		mk("a3", "gadgets", "main", 0, coordinator.Running, 3), mk("a4", "widgets", "main", 4, coordinator.Error, 4), withNode, p)

	rows := func(query string) []string {
		t.Helper()
		status, _, page := e.do("GET", "/"+query)
		if status != 200 {
			t.Fatalf("/%s: %d %.500s", query, status, page)
		}
		var ids []string
		for _, m := range regexp.MustCompile(`<td><a href="/builds/(\w+)">`).FindAllStringSubmatch(page, -1) {
			ids = append(ids, m[1])
		}
		return ids
	}
	for q, want := range map[string]string{
		"":                   "a5 a4 a3 a2 a1", // not the private p1
		"?repo=acme/widgets": "a5 a4 a2 a1",
		"?repo=gadgets":      "a3",
		"?branch=main":       "a5 a4 a3 a1",
		"?pr=3":              "a2",
		"?pr=%234":           "a4",
		"?state=error":       "a4",
		"?repo=acme/widgets&branch=main&state=success": "a5 a1",
		"?limit=2":           "a5 a4",
		"?limit=2&before=a4": "a3 a2",
		"?repo=acme/nope":    "",
	} {
		if got := strings.Join(rows(q), " "); got != want {
			t.Errorf("/%s: %q, want %q", q, got, want)
		}
	}
	_, _, page := e.do("GET", "/?repo=acme/widgets&limit=2")
	for _, want := range []string{`value="acme/widgets"`, `href="/?before=a4&amp;limit=2&amp;repo=acme%2Fwidgets"`, `data-live="1"`,
		`<td class="wide" data-label="by">octocat</td>`, `<td data-label="ran">1m 23s</td><td class="wide" data-label="on">h1</td>`, `<code title="0123456789abcdef0123456789abcdef01234567">0123456</code>`} {
		if !strings.Contains(page, want) {
			t.Errorf("the page lacks %q", want)
		}
	}
	_, _, page = e.do("GET", "/?limit=2&before=a4")
	if !strings.Contains(page, `id="newest" href="/?limit=2"`) || strings.Contains(page, `data-live`) {
		t.Errorf("an older page: no link to the newest, or live: %.3000s", page)
	}
	for q, want := range map[string]string{"?pr=x": `pr &#34;x&#34;`, "?pr=0": "pull request", "?state=done": `state &#34;done&#34;`,
		"?limit=0": "limit", "?before=nope": "no such build", "?before=p1": "no such build"} {
		if status, _, page := e.do("GET", "/"+q); status != 400 || !strings.Contains(page, want) {
			t.Errorf("/%s: %d, want 400 saying %q: %.300s", q, status, want, page)
		}
	}
	// The API takes the same filters.
	for q, want := range map[string]int{"?branch=main&pull_request=4": 200, "?pull_request=x": 400, "?state=done": 400} {
		if status, _, body := e.do("GET", "/api/builds"+q); status != want {
			t.Errorf("/api/builds%s: %d %s", q, status, body)
		}
	}
	if _, _, body := e.do("GET", "/api/builds?branch=main&pull_request=4"); !strings.Contains(body, `"id": "a4"`) || strings.Contains(body, `"id": "a1"`) {
		t.Errorf("/api/builds?branch=main&pull_request=4: %s", body)
	}
}

// TestBadge: a branch's newest finished push build, as an SVG; a
// repository Forge never built and a private one the caller may not read
// get the same 404, which names nothing the caller did not give.
func TestBadge(t *testing.T) {
	t0 := time.Now().Add(-time.Hour)
	mk := func(id, repo, branch string, pr int, st coordinator.State, at int, public bool) *coordinator.Build {
		b := build(id, st, t0.Add(time.Duration(at)*time.Second))
		b.Repo, b.Branch, b.PullRequest, b.Public = repo, branch, pr, public
		return b
	}
	e := newAPIEnv(t,
		mk("w1", "widgets", "main", 0, coordinator.Failure, 1, true),
		mk("w2", "widgets", "main", 0, coordinator.Success, 2, true),
		mk("w3", "widgets", "main", 7, coordinator.Failure, 3, true), // a pull request from main: not the branch's
		mk("w4", "widgets", "main", 0, coordinator.Running, 4, true), // not finished
		mk("w5", "widgets", "dev", 0, coordinator.Failure, 5, true),
		mk("w6", "widgets", "dev", 0, coordinator.Error, 6, true), // cancelled, say: says nothing of the code
		mk("s1", "secret", "main", 0, coordinator.Failure, 7, false))
	e.gh.set("alice", "acme/secret", coordinator.Read)
	alice, bob := e.signIn("alice"), e.signIn("bob")

	for _, c := range []struct {
		who   *caller
		path  string
		state string
	}{
		{nobody, "/badge/acme/widgets.svg?branch=main", "passing"},
		{nobody, "/badge/acme/widgets.svg?branch=dev", "failing"},
		{nobody, "/badge/acme/widgets.svg?branch=gone", "no builds"},
		{nobody, "/badge/acme/widgets.svg", "failing"}, // any branch
		{alice, "/badge/acme/secret.svg?branch=main", "failing"},
		{&caller{name: "admin", bearer: adminToken}, "/badge/acme/secret.svg?branch=main", "failing"},
	} {
		status, hdr, body := e.call(c.who, "GET", c.path, "")
		if status != 200 || hdr.Get("Content-Type") != "image/svg+xml; charset=utf-8" || !strings.HasPrefix(hdr.Get("Cache-Control"), "no-cache") ||
			!strings.Contains(body, "<title>forge: "+c.state+"</title>") || !strings.HasPrefix(body, "<svg ") {
			t.Errorf("%s as %s: %d %v %.300s", c.path, c.who.name, status, hdr, body)
		}
		if strings.Contains(body, "widgets") || strings.Contains(body, "secret") {
			t.Errorf("%s: the badge names the repository: %s", c.path, body)
		}
	}

	// Refusals: all alike, for a private repository and for none.
	notFound := func(who *caller, path string) (int, string) {
		status, hdr, body := e.call(who, "GET", path, "")
		if hdr.Get("Content-Type") != "application/json" {
			t.Errorf("%s as %s: %s", path, who.name, hdr.Get("Content-Type"))
		}
		return status, strings.ReplaceAll(body, "secret", "nothing")
	}
	st0, unknown := notFound(nobody, "/badge/acme/nothing.svg?branch=main")
	if st0 != http.StatusNotFound || !strings.Contains(unknown, "Forge has no badge for acme/nothing") {
		t.Fatalf("unknown repository: %d %s", st0, unknown)
	}
	for _, c := range []struct {
		who  *caller
		path string
	}{
		{nobody, "/badge/acme/secret.svg?branch=main"},
		{bob, "/badge/acme/secret.svg?branch=main"},
		{bob, "/badge/acme/nothing.svg?branch=main"},
		{nobody, "/badge/acme/secret.svg"},
	} {
		status, body := notFound(c.who, c.path)
		if status != st0 || body != unknown {
			t.Errorf("%s as %s: %d %s\nwant the unknown repository's %d %s", c.path, c.who.name, status, body, st0, unknown)
		}
	}
	if status, _, body := e.do("GET", "/badge/acme/widgets"); status != 404 || !strings.Contains(body, "REPO.svg") {
		t.Errorf("a badge without .svg: %d %s", status, body)
	}
	if status, _, _ := e.call(&caller{name: "bad", bearer: "forge_pat_nope"}, "GET", "/badge/acme/widgets.svg", ""); status != 401 {
		t.Errorf("a refused credential: %d", status)
	}
}

// Under --require-sign-in a badge needs a credential, for every
// repository alike.
func TestBadgeRequireSignIn(t *testing.T) {
	e := newAPIEnvWith(t, func(c *auth.Config) { c.RequireSignIn = true }, build("w1", coordinator.Success, time.Now()))
	for _, p := range []string{"/badge/acme/widgets.svg", "/badge/acme/nothing.svg"} {
		if status, _, _ := e.do("GET", p); status != 401 {
			t.Errorf("%s without a credential: %d", p, status)
		}
	}
	if status, _, body := e.admin("GET", "/badge/acme/widgets.svg"); status != 200 || !strings.Contains(body, "passing") {
		t.Errorf("with the admin token: %d %s", status, body)
	}
}

func TestAgentsPage(t *testing.T) {
	b := build("r1", coordinator.Running, time.Now())
	b.NodeID = "n1"
	e := newAPIEnv(t, b, build("q1", coordinator.Queued, time.Now()))
	if err := e.st.AgentConnected(t.Context(), store.AgentSeen{NodeID: "n2", Hostname: "old-host", AgentVersion: "v0"}); err != nil {
		t.Fatal(err)
	}
	if err := e.st.RevokeAgent(t.Context(), "n2", time.Now()); err != nil {
		t.Fatal(err)
	}
	dave := e.signIn("dave") // a Forge admin
	status, _, page := e.call(dave, "GET", "/agents", "")
	if status != 200 {
		t.Fatalf("dave: %d %s", status, page)
	}
	for _, want := range []string{`<code title="n1">n1</code>`, "<td>h1</td>", `<td data-label="agent">v <small>(protocol 0)</small></td>`, `<td data-label="engine">20.10</td>`,
		`<td class="warn" data-label="certificate expires" title="2026-01-02 00:00 UTC · serial 0a1b2c">expired`, `<td data-label="builds running">1 <a href="/builds/r1">r1</a></td>`,
		`id="agents-gone"`, "old-host", `<b class="error">revoked</b>`, `id="nav-agents"`} {
		if !strings.Contains(page, want) {
			t.Errorf("the agents page lacks %q", want)
		}
	}
	if strings.Contains(page, "q1") {
		t.Error("a queued build is listed as running")
	}
	alice := e.signIn("alice")
	if status, _, page := e.call(alice, "GET", "/agents", ""); status != 403 || strings.Contains(page, "20.10") {
		t.Errorf("alice, no admin: %d", status)
	}
	if _, _, page := e.call(alice, "GET", "/", ""); strings.Contains(page, "nav-agents") {
		t.Error("alice is offered the agents page")
	}
	if status, hdr, _ := e.do("GET", "/agents"); status != 303 || !strings.HasPrefix(hdr.Get("Location"), "/login") {
		t.Errorf("nobody: %d %s", status, hdr.Get("Location"))
	}
}
