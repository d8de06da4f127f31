package e2e

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/forge-ci/forge/coordinator/daemon"
	"github.com/forge-ci/forge/coordinator/github"
	"github.com/forge-ci/forge/internal/fakegithub/fakegithubtest"
)

// TestBrowserSecrets: a repository's admin sets a secret on its secrets
// page in a real browser and deletes it again; the page never shows the
// value, the browser refuses a lowercase name before sending it, and a
// person with write permission only gets no page and no form, and his
// POST sets nothing. No error in the admin's browser console.
func TestBrowserSecrets(t *testing.T) {
	e := newEnv(t)
	fake := fakegithubtest.New(t)
	fake.AddUser("alice", 1)
	fake.AddUser("bob", 2)
	fake.SetPrivate("acme/widgets", true)
	fake.SetPermission("alice", "acme/widgets", "admin")
	fake.SetPermission("bob", "acme/widgets", "write")
	signin, err := github.NewSignIn(fakegithubtest.ClientID, fakegithubtest.ClientSecret, fake.WebBase(), fake.APIBase(), nil)
	if err != nil {
		t.Fatal(err)
	}
	s := startServerWith(t, e, t.TempDir(), "", func(cfg *daemon.Config) {
		cfg.Access.SignIn, cfg.SecretsKey = signin, []byte(strings.Repeat("k", 32))
	})
	const page, value = "/repos/acme/widgets/secrets", "s3cret-Value-Never-Shown"
	names := func() []string {
		resp := admin(t, http.MethodGet, s.http+"/api"+page)
		defer resp.Body.Close()
		var ss []struct{ Name string }
		if err := json.NewDecoder(resp.Body).Decode(&ss); err != nil {
			t.Fatalf("the secrets API: %s: %v", resp.Status, err)
		}
		var out []string
		for _, s := range ss {
			out = append(out, s.Name)
		}
		return out
	}

	alice := browser(t)
	cons := watchConsole(alice)
	signIn(t, alice, s, "alice", page)
	var valid bool
	step(t, alice, 20*time.Second, "a lowercase name is refused by the page",
		chromedp.WaitVisible("#set-secret", chromedp.ByQuery),
		chromedp.SendKeys(`#set-secret input[name="name"]`, "lower", chromedp.ByQuery),
		chromedp.Evaluate(`document.querySelector('#set-secret input[name="name"]').checkValidity()`, &valid))
	if valid {
		t.Error("the page takes the secret name \"lower\"")
	}
	var body string
	// Each form's answer is a new page: wait for it (waitPage rides out the
	// navigation), not for what the old one already shows.
	step(t, alice, 30*time.Second, "alice sets DEPLOY_TOKEN",
		chromedp.SetValue(`#set-secret input[name="name"]`, "DEPLOY_TOKEN", chromedp.ByQuery),
		chromedp.SendKeys(`#set-secret textarea[name="value"]`, value, chromedp.ByQuery),
		chromedp.Click(`#set-secret button`, chromedp.ByQuery))
	waitPage(t, alice, `!!document.getElementById("message")`)
	step(t, alice, 10*time.Second, "the page after the form", chromedp.OuterHTML("html", &body, chromedp.ByQuery))
	if !strings.Contains(body, "Secret DEPLOY_TOKEN set.") || !strings.Contains(body, "<code>DEPLOY_TOKEN</code>") || strings.Contains(body, value) {
		t.Errorf("the page after setting the secret:\n%s", body)
	}
	if got := names(); len(got) != 1 || got[0] != "DEPLOY_TOKEN" {
		t.Fatalf("secrets after the form: %v", got)
	}
	shoot(t, alice, screenshotDir(t), "secrets")
	step(t, alice, 30*time.Second, "alice deletes it", chromedp.Click(`#secrets form button`, chromedp.ByQuery))
	waitPage(t, alice, `!!document.getElementById("secrets") && document.getElementById("secrets").textContent.includes("No secrets.")`)
	if got := names(); len(got) != 0 {
		t.Errorf("secrets after the delete: %v", got)
	}
	cons.check(t, "alice's secrets page")

	// Bob's refused loads are errors in his console by design: not checked.
	bob := browser(t)
	signIn(t, bob, s, "bob", page)
	var forms int
	var title string
	step(t, bob, 20*time.Second, "bob's view of the page",
		chromedp.Title(&title),
		chromedp.Evaluate(`document.querySelectorAll("#set-secret, #secrets").length`, &forms))
	if forms != 0 || strings.HasPrefix(title, "Secrets of") {
		t.Errorf("bob (write, not admin) gets %q with %d secrets forms or tables", title, forms)
	}
	// And the form's POST, sent by bob's browser with his session's CSRF
	// token (from his tokens page), is refused and sets nothing.
	var res []any
	step(t, bob, 20*time.Second, "bob posts the form anyway",
		chromedp.Evaluate(`(async () => {
			const page = await (await fetch("/tokens")).text();
			const m = page.match(/name="csrf" value="([^"]+)"/);
			const body = new URLSearchParams({name: "BOB", value: "x", csrf: m ? m[1] : ""});
			return [m ? m[1].length : 0, (await fetch("`+page+`", {method: "POST", body})).status];
		})()`, &res, awaitPromise))
	if len(res) != 2 || res[0].(float64) == 0 || res[1].(float64) < 400 {
		t.Errorf("bob's POST to the secrets form with his CSRF token: [csrf length, status] = %v", res)
	}
	t.Logf("bob's POST with his CSRF token: %v", res[1])
	if got := names(); len(got) != 0 {
		t.Errorf("secrets after bob's POST: %v", got)
	}
}

func awaitPromise(p *runtime.EvaluateParams) *runtime.EvaluateParams { return p.WithAwaitPromise(true) }
