package github

import (
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/internal/fakegithub/fakegithubtest"
)

// TestSignInFlow goes through the App's OAuth web flow against the fake
// GitHub, then asks it who signed in and what they may do.
func TestSignInFlow(t *testing.T) {
	fake := fakegithubtest.New(t)
	fake.AddUser("alice", 11)
	fake.SetPermission("alice", "acme/secret", "write")
	fake.SetPermission("alice", "acme/peek", "triage")
	fake.SetPrivate("acme/secret", true)
	fake.SetPrivate("acme/hidden", true)
	fake.SetPrivate("acme/peek", true)
	s, err := NewSignIn(fakegithubtest.ClientID, fakegithubtest.ClientSecret, fake.WebBase(), fake.APIBase(), fake.Client())
	if err != nil {
		t.Fatal(err)
	}
	const callback = "http://forge.test/login/callback"
	au, err := url.Parse(s.AuthorizeURL("st4te", callback))
	if err != nil || au.Path != "/login/oauth/authorize" || au.Query().Get("client_id") != fakegithubtest.ClientID {
		t.Fatalf("authorize URL %v %v", au, err)
	}
	q := au.Query()
	q.Set("login", "alice") // the fake's way of choosing the account
	au.RawQuery = q.Encode()
	hc := fake.Client()
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	res, err := hc.Get(au.String())
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	back, _ := url.Parse(res.Header.Get("Location"))
	if res.StatusCode != http.StatusFound || back.Query().Get("state") != "st4te" {
		t.Fatalf("authorize: %s to %v", res.Status, back)
	}
	code := back.Query().Get("code")
	tok, err := s.Exchange(t.Context(), code, callback)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Exchange(t.Context(), code, callback); !errors.Is(err, ErrSignIn) {
		t.Errorf("a code used twice: %v", err)
	}
	login, id, err := s.User(t.Context(), tok)
	if err != nil || login != "alice" || id != 11 {
		t.Fatalf("User: %q %d %v", login, id, err)
	}
	for repo, want := range map[string]coordinator.Permission{
		"acme/secret": coordinator.Write, "acme/peek": coordinator.Read, "acme/hidden": coordinator.NoAccess, "acme/open": coordinator.Read,
	} {
		o, r, _ := strings.Cut(repo, "/")
		got, err := s.Permission(t.Context(), tok, o, r)
		if err != nil || got != want {
			t.Errorf("Permission(%s) = %v %v, want %v", repo, got, err, want)
		}
	}
	fake.RevokeUserTokens("alice")
	if _, err := s.Permission(t.Context(), tok, "acme", "secret"); !errors.Is(err, coordinator.ErrBadCredential) {
		t.Errorf("a revoked token: %v", err)
	}
	if _, _, err := s.User(t.Context(), tok); !errors.Is(err, coordinator.ErrBadCredential) {
		t.Errorf("a revoked token: %v", err)
	}

}
