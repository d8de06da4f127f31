package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/daemon"
	"github.com/forge-ci/forge/coordinator/github"
	"github.com/forge-ci/forge/internal/dockertest"
	"github.com/forge-ci/forge/internal/fakegithub/fakegithubtest"
)

// browser starts headless Chromium (Debian's chromium) for one person:
// a browser of its own, so cookies are not shared.
func browser(t *testing.T) context.Context {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		dockertest.Unavailable(t, "no chromium: %v (apt-get install chromium)", err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(path), chromedp.NoSandbox)
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancel)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(cancel)
	// Every step below has its own deadline; this one bounds the browser.
	ctx, cancel = context.WithTimeout(ctx, 3*time.Minute)
	t.Cleanup(cancel)
	if err := chromedp.Run(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return ctx
}

// jsLogLines is the text of the build page's log lines, as an array.
const jsLogLines = `Array.from(document.querySelectorAll("#log .ll .lc"), e => e.textContent)`

// step runs actions with a deadline, failing the test with what.
func step(t *testing.T, ctx context.Context, d time.Duration, what string, actions ...chromedp.Action) {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	if err := chromedp.Run(sctx, actions...); err != nil {
		var loc, body string
		chromedp.Run(ctx, chromedp.Location(&loc), chromedp.OuterHTML("body", &body, chromedp.ByQuery))
		t.Fatalf("%s: %v\nat %s:\n%.2000s", what, err, loc, body)
	}
}

// signIn signs in through the fake GitHub's pages as login, choosing the
// account on its authorize page, and lands on next.
func signIn(t *testing.T, ctx context.Context, s *server, login, next string) {
	t.Helper()
	var loc string
	step(t, ctx, 30*time.Second, login+" signs in",
		chromedp.Navigate(s.http+"/"),
		chromedp.Click("#signin", chromedp.ByQuery),
		chromedp.WaitVisible("#login-"+login, chromedp.ByQuery),
		chromedp.Click("#login-"+login, chromedp.ByQuery),
		chromedp.WaitVisible("#login", chromedp.ByQuery),
		chromedp.Location(&loc))
	if !strings.HasPrefix(loc, s.http+"/") {
		t.Fatalf("after sign-in the browser is at %s", loc)
	}
	var who string
	step(t, ctx, 10*time.Second, "who is signed in", chromedp.Text("#login", &who, chromedp.ByQuery))
	if who != login {
		t.Fatalf("signed in as %q, want %q", who, login)
	}
	step(t, ctx, 10*time.Second, "open "+next, chromedp.Navigate(s.http+next))
}

// TestBrowserSignInFollowCancel: in headless Chromium, alice signs in
// through the fake GitHub's OAuth pages, sees her private repository's
// running build in the list, follows its log live and cancels it; bob,
// signed in too, gets 404 for it and does not see it listed.
func TestBrowserSignInFollowCancel(t *testing.T) {
	e := newEnv(t)
	fake := fakegithubtest.New(t)
	fake.AddUser("alice", 1)
	fake.AddUser("bob", 2)
	fake.SetPrivate("acme/widgets", true)
	fake.SetPermission("alice", "acme/widgets", "write")
	signin, err := github.NewSignIn(fakegithubtest.ClientID, fakegithubtest.ClientSecret, fake.WebBase(), fake.APIBase(), nil)
	if err != nil {
		t.Fatal(err)
	}
	// With a secrets key the people's GitHub tokens are sealed in the store.
	s := startServerWith(t, e, t.TempDir(), "", func(cfg *daemon.Config) {
		cfg.Access.SignIn, cfg.SecretsKey = signin, bytes.Repeat([]byte{5}, 32)
	})
	startAgent(t, e.pki, s.agents, nil, nil)
	id := dockertest.ID(t)
	dockertest.Cleanup(t, e.cli, id)

	yml := "image: " + e.image + "\nexecute: ['i=0; while [ $i -lt 120 ]; do i=$((i+1)); echo line$i; sleep 0.5; done']\n"
	// acme/widgets, not public (the fake GitHub's SetPrivate above).
	b := s.submit(t, e, yml, id)
	waitStarted(t, s, b.ID)

	// Nobody: the private build is as unknown as one that does not exist.
	if resp, err := http.Get(s.http + "/builds/" + b.ID); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Fatalf("the build page without signing in: %v %v", resp.Status, err)
	} else {
		resp.Body.Close()
	}

	alice := browser(t)
	signIn(t, alice, s, "alice", "/")
	if u, err := s.srv.Store.User(t.Context(), "alice"); err != nil || !strings.HasPrefix(u.Token, coordinator.SealedTokenPrefix) {
		t.Fatalf("alice's GitHub token as stored: %q %v, want it sealed", u.Token, err)
	}
	var list string
	step(t, alice, 10*time.Second, "alice's build list", chromedp.Text("#builds", &list, chromedp.ByQuery))
	if !strings.Contains(list, b.ID) || !strings.Contains(list, "acme/widgets") {
		t.Fatalf("alice's list lacks her build %s:\n%s", b.ID, list)
	}
	step(t, alice, 10*time.Second, "open the build", chromedp.Click(`a[href="/builds/`+b.ID+`"]`, chromedp.ByQuery),
		chromedp.WaitVisible("#log", chromedp.ByQuery))

	// The log grows while the page is open.
	var n int
	step(t, alice, 30*time.Second, "the log's first lines",
		chromedp.Poll(jsLogLines+`.includes("line2")`, nil, chromedp.WithPollingTimeout(25*time.Second)),
		chromedp.Evaluate(jsLogLines+`.length`, &n))
	step(t, alice, 30*time.Second, "the log grows",
		chromedp.Poll(fmt.Sprintf(`%s.length > %d`, jsLogLines, n+3), nil, chromedp.WithPollingTimeout(25*time.Second)))

	// Cancel: the button posts with the session's CSRF token; the page
	// comes back and ends with the build's final state.
	step(t, alice, 10*time.Second, "cancel", chromedp.Click("#cancel button", chromedp.ByQuery))
	waitPage(t, alice, `document.getElementById("state").textContent == "error" && document.getElementById("log").dataset.done == "1"`)
	final, err := s.srv.Builds.Wait(dockertest.Context(t, time.Minute), b.ID)
	if err != nil {
		t.Fatal(err)
	}
	if final.State != coordinator.Error || !strings.Contains(final.Reason, "cancelled by alice") {
		t.Errorf("after alice's cancel: %s (%s)", final.State, final.Reason)
	}
	var cancelButtons int
	step(t, alice, 10*time.Second, "no cancel button on a finished build",
		chromedp.Reload(), chromedp.WaitVisible("#log", chromedp.ByQuery),
		chromedp.Evaluate(`document.querySelectorAll("#cancel").length`, &cancelButtons))
	if cancelButtons != 0 {
		t.Errorf("a finished build's page offers cancel")
	}

	// Bob may not read acme/widgets: not listed, and 404.
	bob := browser(t)
	signIn(t, bob, s, "bob", "/")
	step(t, bob, 10*time.Second, "bob's build list", chromedp.Text("#builds", &list, chromedp.ByQuery))
	if strings.Contains(list, b.ID) {
		t.Errorf("bob's list shows alice's private build:\n%s", list)
	}
	var title, msg string
	step(t, bob, 10*time.Second, "bob opens the build",
		chromedp.Navigate(s.http+"/builds/"+b.ID), chromedp.Title(&title), chromedp.Text("#message", &msg, chromedp.ByQuery))
	if title != "Not Found · Forge" || !strings.Contains(msg, "no build") {
		t.Errorf("bob on alice's build: %q %q", title, msg)
	}
	var status int
	step(t, bob, 10*time.Second, "bob asks the API from his page",
		chromedp.Evaluate(`(async () => (await fetch("/api/builds/`+b.ID+`/log")).status)()`, &status, func(p *runtime.EvaluateParams) *runtime.EvaluateParams {
			return p.WithAwaitPromise(true)
		}))
	if status != http.StatusNotFound {
		t.Errorf("bob's fetch of the log: %d, want 404", status)
	}
}
