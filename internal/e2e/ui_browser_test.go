package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	cdplog "github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/daemon"
	"github.com/forge-ci/forge/coordinator/github"
	"github.com/forge-ci/forge/internal/dockertest"
	"github.com/forge-ci/forge/internal/fakegithub"
	"github.com/forge-ci/forge/internal/fakegithub/fakegithubtest"
)

// EnvScreenshots names the folder the browser tests save screenshots in;
// unset, they make one under the system's temporary folder. Either way
// the test's output names it.
const EnvScreenshots = "FORGE_SCREENSHOTS"

func screenshotDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv(EnvScreenshots)
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "forge-screenshots-"); err != nil {
			t.Fatal(err)
		}
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshots in %s", dir)
	return dir
}

// shoot saves the browser's viewport as dir/name.png.
func shoot(t *testing.T, ctx context.Context, dir, name string) {
	t.Helper()
	var png []byte
	step(t, ctx, 20*time.Second, "screenshot "+name, chromedp.CaptureScreenshot(&png))
	if err := os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644); err != nil {
		t.Fatal(err)
	}
}

// console gathers what the browser reports as errors: console.error,
// uncaught exceptions, its own log's errors (failed loads, CSP
// violations) and dialogs a page opened.
type console struct {
	mu   sync.Mutex
	errs []string
}

func watchConsole(ctx context.Context) *console {
	c := &console{}
	chromedp.ListenTarget(ctx, func(ev any) {
		var msg string
		switch ev := ev.(type) {
		case *runtime.EventConsoleAPICalled:
			if ev.Type != runtime.APITypeError && ev.Type != runtime.APITypeAssert {
				return
			}
			var args []string
			for _, a := range ev.Args {
				args = append(args, string(a.Value)+a.Description)
			}
			msg = "console." + string(ev.Type) + ": " + strings.Join(args, " ")
		case *runtime.EventExceptionThrown:
			msg = "exception: " + ev.ExceptionDetails.Text
			if ex := ev.ExceptionDetails.Exception; ex != nil {
				msg += " " + ex.Description
			}
		case *cdplog.EventEntryAdded:
			if ev.Entry.Level != cdplog.LevelError {
				return
			}
			msg = "log: " + ev.Entry.Text + " " + ev.Entry.URL
		case *page.EventJavascriptDialogOpening:
			msg = "dialog: " + ev.Message
		default:
			return
		}
		c.mu.Lock()
		c.errs = append(c.errs, msg)
		c.mu.Unlock()
	})
	return c
}

// check fails the test with every error the browser reported so far.
func (c *console) check(t *testing.T, where string) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range c.errs {
		t.Errorf("%s: the browser reported: %s", where, e)
	}
	c.errs = nil
}

// Viewports: a desktop's, and a phone's (CSS pixels, as an iPhone 14).
var (
	desktop = chromedp.EmulateViewport(1280, 900)
	phone   = chromedp.EmulateViewport(390, 844, chromedp.EmulateMobile, chromedp.EmulateScale(2))
)

// jsFits: the page needs no sideways scrolling.
const jsFits = `document.documentElement.scrollWidth <= window.innerWidth + 1`

// liveScript is a build that writes coloured lines for a minute, and
// every ten lines after the first 20 (which the page sees arrive) what a
// page must show only as text: markup, invalid UTF-8, carriage returns,
// cursor moves and a title, a 10,000-character line.
const liveScript = `image: %s
setup:
  - echo preparing
execute:
  - printf '\033[1;32mready\033[0m <b>not bold</b>\n'
  - |
    i=0
    while [ $i -lt 150 ]; do
      i=$((i+1))
      printf '\033[3%%dmline %%d in colour %%d\033[0m\n' $((i %% 7 + 1)) $i $((i %% 7 + 1))
      if [ $i -gt 20 ] && [ $((i %% 10)) = 5 ]; then
        printf 'bad \377\376 utf8 <script>alert(1)</script><img src=x onerror=alert(2)>\n'
        printf '10%%%%\r50%%%%\r100%%%%\n'
        printf '\033[2J\033[H\033[5;5Hmoved \033]0;title\007done\n'
        printf '%%010000d\n' 0
      fi
      sleep 0.4
    done
`

// TestBrowserUI drives headless Chromium against a real coordinator and
// agent on this engine: the builds list and its filters, a running
// build's log growing live in colour with bad output shown as text, its
// steps, its cancel button, a badge, the agents page; each at a desktop's
// and a phone's width, with screenshots, and no error in the browser's
// console.
func TestBrowserUI(t *testing.T) {
	e := newEnv(t)
	fake := fakegithubtest.New(t)
	fake.AddUser("alice", 1)
	fake.SetPermission("alice", "acme/widgets", "write")
	signin, err := github.NewSignIn(fakegithubtest.ClientID, fakegithubtest.ClientSecret, fake.WebBase(), fake.APIBase(), nil)
	if err != nil {
		t.Fatal(err)
	}
	s := startServerWith(t, e, t.TempDir(), "", func(cfg *daemon.Config) {
		cfg.Access.SignIn, cfg.Access.Admins = signin, []string{"alice"}
	})
	startAgent(t, e.pki, s.agents, nil, nil)
	testID := dockertest.ID(t)
	dockertest.Cleanup(t, e.cli, testID)
	shots := screenshotDir(t)

	subject := func(branch string, pr int, author, sha string) coordinator.Subject {
		return coordinator.Subject{Owner: "acme", Repo: "widgets", Branch: branch, PullRequest: pr, Author: author,
			SHA: strings.Repeat(sha, 40/len(sha)), Action: "execute", Trigger: map[bool]string{true: "pull_request", false: "push"}[pr > 0], Public: true}
	}
	// A passing push to main and a failing pull request, both over, then
	// a build that runs while the pages are open.
	pass := s.submitAs(t, e, subject("main", 0, "", "a1b2c3d4"),
		"image: "+e.image+"\nexecute:\n  - printf '\\033[32mall good\\033[0m\\n'\n", testID)
	fail := s.submitAs(t, e, subject("feature", 7, "octocat", "f00dfeed"),
		"image: "+e.image+"\nexecute:\n  - printf '\\033[31mnot ok\\033[0m\\n'; exit 3\n", testID)
	for _, b := range []*coordinator.Build{pass, fail} {
		if _, err := s.srv.Builds.Wait(dockertest.Context(t, time.Minute), b.ID); err != nil {
			t.Fatal(err)
		}
	}
	live := s.submitAs(t, e, subject("main", 0, "", "c0ffee00"), fmt.Sprintf(liveScript, e.image), testID)
	waitStarted(t, s, live.ID)

	alice := browser(t)
	con := watchConsole(alice)
	signIn(t, alice, s, "alice", "/")

	// The list: three builds, each row with its state, ref, commit,
	// author, duration and node.
	host := ""
	for _, a := range s.srv.Agents.Agents() {
		host = a.Hostname
	}
	var rows []string
	step(t, alice, 20*time.Second, "the builds list", desktop, chromedp.Navigate(s.http+"/"),
		chromedp.Evaluate(`Array.from(document.querySelectorAll("#builds tbody tr"), r => Array.from(r.cells, c => c.textContent.trim()).join("|"))`, &rows))
	want := []string{
		"running|" + live.ID + "|acme/widgets|main|execute|c0ffee0|—|",
		"failure|" + fail.ID + "|acme/widgets|#7|execute|f00dfee|octocat|",
		"success|" + pass.ID + "|acme/widgets|main|execute|a1b2c3d|—|",
	}
	if len(rows) != len(want) {
		t.Fatalf("rows: %q", rows)
	}
	for i, w := range want {
		if !strings.HasPrefix(rows[i], w) || !strings.Contains(rows[i], "|"+host+"|") {
			t.Errorf("row %d: %q, want it to start %q and name node %q", i, rows[i], w, host)
		}
	}
	shoot(t, alice, shots, "list")
	con.check(t, "the builds list")

	// A filter through the form: pull request 7, then failures.
	var loc string
	step(t, alice, 20*time.Second, "filter by pull request",
		chromedp.SetValue(`#filters input[name="pr"]`, "7", chromedp.ByQuery),
		chromedp.Submit(`#filters`, chromedp.ByQuery),
		chromedp.WaitVisible(`#clear`, chromedp.ByQuery),
		chromedp.Location(&loc),
		chromedp.Evaluate(`Array.from(document.querySelectorAll("#builds tbody a"), a => a.textContent)`, &rows))
	if !strings.Contains(loc, "pr=7") || len(rows) != 1 || rows[0] != fail.ID {
		t.Errorf("filtered by pull request 7 (%s): %q", loc, rows)
	}
	step(t, alice, 20*time.Second, "filter by state",
		chromedp.Navigate(s.http+"/"),
		chromedp.SetValue(`#filters select[name="state"]`, "success", chromedp.ByQuery),
		chromedp.Submit(`#filters`, chromedp.ByQuery),
		chromedp.WaitVisible(`#clear`, chromedp.ByQuery),
		chromedp.Evaluate(`Array.from(document.querySelectorAll("#builds tbody a"), a => a.textContent)`, &rows))
	if len(rows) != 1 || rows[0] != pass.ID {
		t.Errorf("filtered by success: %q", rows)
	}
	con.check(t, "the filters")

	// The running build: its log grows live, in colour, with times.
	const jsLive = `document.querySelectorAll("#log .ll .lt:not(:empty)")`
	var before int
	step(t, alice, 30*time.Second, "open the running build", chromedp.Navigate(s.http+"/builds/"+live.ID),
		chromedp.WaitVisible("#log", chromedp.ByQuery), chromedp.Evaluate(jsLogLines+`.length`, &before))
	step(t, alice, 30*time.Second, "the log grows live, in colour",
		chromedp.Poll(fmt.Sprintf(`%s.length > %d && Array.from(%s).some(t => t.nextElementSibling.querySelector("span[class^='ansi-f']"))`,
			jsLogLines, before+4, jsLive), nil, chromedp.WithPollingTimeout(25*time.Second)))
	var colour, lineText string
	step(t, alice, 10*time.Second, "a live line's colour",
		chromedp.Evaluate(`(() => { const s = Array.from(`+jsLive+`).map(t => t.nextElementSibling.querySelector("span[class^='ansi-f']")).filter(Boolean).pop();
			return [s.className, getComputedStyle(s).color, s.textContent]; })()[1]`, &colour),
		chromedp.Evaluate(`Array.from(`+jsLive+`).map(t => t.nextElementSibling.textContent).filter(x => x.startsWith("line ")).pop()`, &lineText))
	if colour == "" || colour == "rgb(230, 237, 243)" || !strings.HasPrefix(lineText, "line ") {
		t.Errorf("a live line: %q in %q, want a colour of its own", lineText, colour)
	}

	// The steps as forgexec marks them: the loop runs, the others are done.
	var steps []string
	step(t, alice, 10*time.Second, "the steps", chromedp.Evaluate(`Array.from(document.querySelectorAll("#steps li"), li => li.className + " " + (li.querySelector("a.goto").getAttribute("href") || ""))`, &steps))
	if len(steps) != 3 || !strings.HasPrefix(steps[0], "step done #L") || !strings.HasPrefix(steps[1], "step done #L") || !strings.HasPrefix(steps[2], "step running #L") {
		t.Errorf("steps: %q", steps)
	}
	var elapsed1, elapsed2 string
	step(t, alice, 10*time.Second, "the elapsed time ticks", chromedp.Text("#elapsed", &elapsed1, chromedp.ByQuery),
		chromedp.Sleep(2100*time.Millisecond), chromedp.Text("#elapsed", &elapsed2, chromedp.ByQuery))
	if elapsed1 == elapsed2 || !strings.HasSuffix(elapsed2, "s") {
		t.Errorf("elapsed: %q then %q", elapsed1, elapsed2)
	}
	step(t, alice, 10*time.Second, "the top of a taller page", chromedp.EmulateViewport(1280, 1150), chromedp.Evaluate(`window.scrollTo(0, 0)`, nil))
	shoot(t, alice, shots, "build")
	step(t, alice, 10*time.Second, "a desktop again", desktop)
	con.check(t, "the running build")

	// Bad output, live and as rendered on the server: text, never HTML.
	step(t, alice, 60*time.Second, "bad output comes live",
		chromedp.Poll(`Array.from(`+jsLive+`).some(t => /^0{10000}$/.test(t.nextElementSibling.textContent))`, nil,
			chromedp.WithPollingTimeout(55*time.Second)))
	checkBad(t, alice, "live", true)
	step(t, alice, 20*time.Second, "reload", chromedp.Reload(), chromedp.WaitVisible("#log", chromedp.ByQuery))
	checkBad(t, alice, "rendered by the server", false)
	con.check(t, "bad output")

	// The live page's parser gives what the server's gives, case by case
	// (coordinator/web/testdata/ansi.json), and bounds a line alike.
	checkANSI(t, alice)

	// A line's link.
	var target string
	step(t, alice, 20*time.Second, "a line's link", chromedp.Navigate(s.http+"/builds/"+live.ID+"#L3"),
		chromedp.WaitVisible("#L3.hl", chromedp.ByQuery), chromedp.Text("#L3 .lc", &target, chromedp.ByQuery))
	if target != "+ printf '\\033[1;32mready\\033[0m <b>not bold</b>\\n'" {
		t.Errorf("line 3: %q", target)
	}

	// The agents page: this node, its host, its versions, the build on it.
	var agentRow string
	step(t, alice, 20*time.Second, "the agents page", chromedp.Navigate(s.http+"/agents"),
		chromedp.Text("#agents tbody tr", &agentRow, chromedp.ByQuery))
	for _, w := range []string{e.node, host, "in ", live.ID} {
		if !strings.Contains(agentRow, w) {
			t.Errorf("the agents page's row lacks %q: %q", w, agentRow)
		}
	}
	shoot(t, alice, shots, "agents")
	con.check(t, "the agents page")

	// A phone's width: every page fits, nothing scrolls sideways.
	for _, pg := range []struct{ name, path string }{{"list-phone", "/"}, {"build-phone", "/builds/" + live.ID}, {"agents-phone", "/agents"}} {
		var fits bool
		step(t, alice, 20*time.Second, pg.name, phone, chromedp.Navigate(s.http+pg.path), chromedp.WaitReady("main", chromedp.ByQuery),
			chromedp.Sleep(500*time.Millisecond), chromedp.Evaluate(jsFits, &fits))
		if !fits {
			t.Errorf("%s: the page is wider than a phone", pg.name)
		}
		shoot(t, alice, shots, pg.name)
	}
	con.check(t, "a phone's width")

	// Cancel from the page, at a phone's width: the page ends with the
	// build's final state and offers no more cancel.
	step(t, alice, 10*time.Second, "cancel", chromedp.Navigate(s.http+"/builds/"+live.ID), chromedp.WaitVisible("#cancel button", chromedp.ByQuery),
		chromedp.Click("#cancel button", chromedp.ByQuery))
	waitPage(t, alice, `document.getElementById("state").textContent == "error" && document.getElementById("log").dataset.done == "1" && !document.getElementById("cancel")`)
	con.check(t, "cancel")

	// The badge: the newest finished push to main passed; the feature
	// branch has only a pull request's build; an unknown repository is 404.
	var title string
	step(t, alice, 20*time.Second, "the badge", desktop, chromedp.Navigate(s.http+"/badge/acme/widgets.svg?branch=main"),
		chromedp.Evaluate(`document.querySelector("title").textContent`, &title))
	if title != "forge: passing" {
		t.Errorf("main's badge: %q", title)
	}
	shoot(t, alice, shots, "badge")
	for path, want := range map[string]string{"/badge/acme/widgets.svg?branch=feature": "forge: no builds", "/badge/acme/widgets.svg?branch=main": "forge: passing"} {
		resp, err := http.Get(s.http + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "image/svg+xml; charset=utf-8" || !strings.Contains(string(body), "<title>"+want+"</title>") {
			t.Errorf("GET %s without a credential: %d %s", path, resp.StatusCode, body)
		}
	}
	if resp, err := http.Get(s.http + "/badge/acme/nothing.svg?branch=main"); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Errorf("an unknown repository's badge: %v %v", resp.Status, err)
	} else {
		resp.Body.Close()
	}
	con.check(t, "the badge")
}

// checkBad reads the build page's log for liveScript's bad output and
// checks that it is all text, shown as a terminal would: where says which
// rendering; live, that some of it arrived while the page was open (and
// so went through static/ansi.js rather than the server).
func checkBad(t *testing.T, ctx context.Context, where string, live bool) {
	t.Helper()
	var bad struct {
		Elements, Long, Runs int
		Bad, Progress, Moved []string
		LiveBad, LiveLong    int
	}
	step(t, ctx, 10*time.Second, "read the bad output "+where, chromedp.Evaluate(`(() => {
		const lines = Array.from(document.querySelectorAll("#log .ll"));
		const text = l => l.querySelector(".lc").textContent;
		const live = l => l.querySelector(".lt").textContent !== "";
		return {
			elements: document.querySelectorAll("#log script, #log img, #log b, #log a:not(.ln)").length,
			bad: lines.map(text).filter(t => t.startsWith("bad ")),
			progress: lines.map(text).filter(t => t.endsWith("%")),
			moved: lines.map(text).filter(t => t.startsWith("moved")),
			long: lines.map(text).filter(t => /^0+$/.test(t)).map(t => t.length).reduce((a, b) => Math.max(a, b), 0),
			livebad: lines.filter(l => live(l) && text(l).startsWith("bad ")).length,
			livelong: lines.filter(l => live(l) && /^0{10000}$/.test(text(l))).length,
			runs: document.querySelectorAll("#log .lc span").length,
		};
	})()`, &bad))
	if bad.Elements != 0 {
		t.Errorf("%s: the log made %d elements of its text", where, bad.Elements)
	}
	for _, l := range bad.Bad {
		if l != "bad \ufffd\ufffd utf8 <script>alert(1)</script><img src=x onerror=alert(2)>" {
			t.Errorf("%s: a bad line shown as %q", where, l)
		}
	}
	for _, l := range bad.Progress {
		if l != "100%" {
			t.Errorf("%s: a redrawn line shown as %q", where, l)
		}
	}
	for _, l := range bad.Moved {
		if l != "moved done" {
			t.Errorf("%s: cursor moves shown as %q", where, l)
		}
	}
	if len(bad.Bad) == 0 || len(bad.Progress) == 0 || len(bad.Moved) == 0 || bad.Long != 10000 || bad.Runs == 0 ||
		live != (bad.LiveBad > 0 && bad.LiveLong > 0) || !live && bad.LiveBad+bad.LiveLong > 0 {
		t.Errorf("%s: bad output: %+v", where, bad)
	}
}

// checkANSI runs static/ansi.js on the cases coordinator/web's
// TestRenderLine gives renderLine, on the page open in ctx.
func checkANSI(t *testing.T, ctx context.Context) {
	t.Helper()
	raw, err := os.ReadFile("../../coordinator/web/testdata/ansi.json")
	if err != nil {
		t.Fatal(err)
	}
	var got []struct {
		Name      string
		Got, Want [][2]string
		Cut       int
	}
	step(t, ctx, 10*time.Second, "ForgeANSI on the cases", chromedp.Evaluate(`(`+string(raw)+`).map(c => {
		const line = c.hex ? new TextDecoder().decode(Uint8Array.from(c.hex.match(/../g), h => parseInt(h, 16))) : c.in;
		const r = ForgeANSI.renderLine(line, ForgeANSI.plain());
		return {name: c.name, got: r.segs.map(s => [s.text, s.cls]), want: c.want, cut: r.cut};
	})`, &got))
	if len(got) < 20 {
		t.Fatalf("only %d cases", len(got))
	}
	for _, c := range got {
		if fmt.Sprint(c.Got) != fmt.Sprint(c.Want) || c.Cut != 0 {
			t.Errorf("ForgeANSI, %s: %q (cut %d), want %q", c.Name, c.Got, c.Cut, c.Want)
		}
	}
	var long []int
	step(t, ctx, 10*time.Second, "ForgeANSI on a long line", chromedp.Evaluate(`(() => {
		const r = ForgeANSI.renderLine("é".repeat(ForgeANSI.maxLineRunes + 5), ForgeANSI.plain());
		const ten = ForgeANSI.renderLine("x".repeat(10000), ForgeANSI.plain());
		return [r.segs[0].text.length, r.cut, ten.segs[0].text.length, ten.cut, ForgeANSI.maxLineRunes];
	})()`, &long))
	if len(long) != 5 || long[0] != long[4] || long[1] != 5 || long[2] != 10000 || long[3] != 0 || long[4] != 32<<10 {
		t.Errorf("ForgeANSI's bound on a line: %v", long)
	}
}

// waitPage polls cond on the page, again on the next page when a form's
// answer navigates away mid-poll (a poll begun on the old page ends with
// it).
func waitPage(t *testing.T, ctx context.Context, cond string) {
	t.Helper()
	done := chromedp.Poll(cond, nil, chromedp.WithPollingTimeout(55*time.Second))
	for try := 0; ; try++ {
		pctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		err := chromedp.Run(pctx, done)
		cancel()
		if err == nil {
			return
		}
		if try == 3 || !strings.Contains(err.Error(), "navigated") && !strings.Contains(err.Error(), "context with specified id") {
			t.Fatalf("waiting for %s: %v", cond, err)
		}
	}
}

// A re-run from the build page: the page's button (write permission, a
// build from GitHub that is over) starts a new build of the same commit
// and action, with .forge.yml and the source fetched again from the fake
// GitHub; it appears at the top of the list, and both pages link each
// other.
func TestBrowserRerun(t *testing.T) {
	e := newEnv(t)
	fake := fakegithubtest.New(t)
	fake.AddUser("alice", 1)
	fake.SetPermission("alice", "acme/widgets", "write")
	const inst = 4242
	fake.SetInstallation("acme/widgets", inst)
	signin, err := github.NewSignIn(fakegithubtest.ClientID, fakegithubtest.ClientSecret, fake.WebBase(), fake.APIBase(), nil)
	if err != nil {
		t.Fatal(err)
	}
	app, err := github.NewApp(fakegithub.AppID, fakegithubtest.AppKeyPEM(t), fake.APIBase(), nil)
	if err != nil {
		t.Fatal(err)
	}
	s := startServerWith(t, e, t.TempDir(), "", func(cfg *daemon.Config) {
		cfg.Access.SignIn, cfg.Access.Admins = signin, []string{"alice"}
		cfg.GitHub = &daemon.GitHub{App: app, Secret: []byte("webhook secret"), PublicURL: cfg.Access.PublicURL, AppID: fakegithub.AppID}
	})
	startAgent(t, e.pki, s.agents, nil, nil)
	testID := dockertest.ID(t)
	dockertest.Cleanup(t, e.cli, testID)
	shots := screenshotDir(t)

	sha := strings.Repeat("5eed", 10)
	yml := "image: " + e.image + "\nexecute:\n  - echo built $FORGE_SHA\n"
	fake.SetFile("acme/widgets", sha, yml)
	fake.SetTarball("acme/widgets", sha, fakegithubtest.Tarball(t, "acme-widgets-5eed", map[string]string{".forge.yml": yml}))
	first := s.submitAs(t, e, coordinator.Subject{Owner: "acme", Repo: "widgets", Branch: "main", SHA: sha, Action: "execute",
		Trigger: "push", Public: true, InstallationID: inst}, yml, testID)
	if b, err := s.srv.Builds.Wait(dockertest.Context(t, time.Minute), first.ID); err != nil || b.State != coordinator.Success {
		t.Fatalf("the first build: %v %+v", err, b)
	}

	alice := browser(t)
	con := watchConsole(alice)
	signIn(t, alice, s, "alice", "/builds/"+first.ID)
	var loc string
	step(t, alice, 30*time.Second, "re-run from the build page", desktop, chromedp.Navigate(s.http+"/builds/"+first.ID),
		chromedp.WaitVisible("#rerun button", chromedp.ByQuery), chromedp.Click("#rerun button", chromedp.ByQuery),
		chromedp.WaitVisible("#rerun-of", chromedp.ByQuery), chromedp.Location(&loc))
	id, ok := strings.CutPrefix(loc, s.http+"/builds/")
	if !ok || id == first.ID || id == "" {
		t.Fatalf("after the re-run the page is %s, want a new build's", loc)
	}
	b, err := s.srv.Builds.Wait(dockertest.Context(t, time.Minute), id)
	if err != nil || b.State != coordinator.Success || b.SHA != sha || b.Action != "execute" || b.RerunOf != first.ID || b.RerunBy != "alice" {
		t.Fatalf("the re-run: %v %+v", err, b)
	}
	waitPage(t, alice, `document.getElementById("state").textContent == "success" && document.getElementById("log").dataset.done == "1"`)
	var text string
	step(t, alice, 10*time.Second, "the re-run's log", chromedp.Text("#log", &text, chromedp.ByQuery))
	if !strings.Contains(text, "built "+sha) {
		t.Errorf("the re-run's log: %q", text)
	}

	var rows []string
	step(t, alice, 20*time.Second, "the re-run in the list", chromedp.Navigate(s.http+"/"),
		chromedp.Evaluate(`Array.from(document.querySelectorAll("#builds tbody tr"), r => Array.from(r.cells, c => c.textContent.trim()).join("|"))`, &rows))
	if len(rows) != 2 || !strings.HasPrefix(rows[0], "success|"+id+"|acme/widgets|main|execute|5eed5ee|") ||
		!strings.HasPrefix(rows[1], "success|"+first.ID+"|") {
		t.Errorf("the list after the re-run: %q", rows)
	}
	shoot(t, alice, shots, "rerun-list")
	var reruns string
	step(t, alice, 20*time.Second, "the first build links its re-run", chromedp.Navigate(s.http+"/builds/"+first.ID),
		chromedp.Text("#reruns", &reruns, chromedp.ByQuery))
	if !strings.Contains(reruns, id) {
		t.Errorf("the first build's page: %q, want a link to %s", reruns, id)
	}
	con.check(t, "a re-run")
}
