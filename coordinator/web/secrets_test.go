package web

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/secrets"
	"github.com/forge-ci/forge/coordinator/store"
	"github.com/forge-ci/forge/wire"
)

func newKeeper(t *testing.T, st *store.Store) *secrets.Keeper {
	t.Helper()
	k, err := secrets.New(bytes.Repeat([]byte{9}, secrets.KeySize), st)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// secretRows counts the stored secrets, whatever their repository.
func secretRows(t *testing.T, st *store.Store) int {
	t.Helper()
	var n int
	if err := st.DB().QueryRow(`SELECT count(*) FROM secrets`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

const acmeSecrets = "/api/repos/acme/secret/secrets"

// The admin token sets, lists (names and times, never values) and deletes
// a repository's secrets; bad names and values are refused with the
// problem named, and nothing is stored.
func TestSecretsAPI(t *testing.T) {
	e := newAPIEnv(t, privateBuild("priv"))
	admin := &caller{name: "admin token", bearer: adminToken}
	value := "v4lue-never-shown"
	if status, _, body := e.call(admin, "PUT", acmeSecrets+"/DEPLOY_TOKEN", value); status != http.StatusOK || strings.Contains(body, value) {
		t.Fatalf("put: %d %s", status, body)
	}
	got, err := e.keeper.Values(context.Background(), "acme", "secret", []string{"DEPLOY_TOKEN"})
	if err != nil || string(got["DEPLOY_TOKEN"]) != value {
		t.Fatalf("stored %q %v", got, err)
	}
	status, _, body := e.call(admin, "GET", acmeSecrets, "")
	var list []SecretView
	if status != http.StatusOK || json.Unmarshal([]byte(body), &list) != nil || len(list) != 1 || list[0].Name != "DEPLOY_TOKEN" ||
		list[0].UpdatedBy != "admin token" || list[0].Updated.IsZero() || strings.Contains(body, value) {
		t.Fatalf("list: %d %s", status, body)
	}

	for _, tc := range []struct {
		name, value, want string
	}{
		{"lower_case", "v", `lower_case\": use upper-case`},
		{"1ABC", "v", `1ABC\": use upper-case`},
		{"BIG", strings.Repeat("x", wire.MaxSecretSize+1), "larger than 64 KiB"},
		{"EMPTY", "", "empty value"},
		{"NUL", "a\x00b", "NUL byte"},
	} {
		status, _, body := e.call(admin, "PUT", acmeSecrets+"/"+tc.name, tc.value)
		if status != http.StatusBadRequest || !strings.Contains(body, tc.want) {
			t.Errorf("put %s: %d %s, want 400 %q", tc.name, status, body, tc.want)
		}
	}
	if status, _, body := e.call(admin, "PUT", "/api/repos/acme/..%2f/secrets/A", "v"); status != http.StatusBadRequest && status != http.StatusNotFound {
		t.Errorf("a bad repository: %d %s", status, body)
	}
	if n := secretRows(t, e.st); n != 1 {
		t.Errorf("%d secrets stored after the refusals, want 1", n)
	}

	if status, _, _ := e.call(admin, "DELETE", acmeSecrets+"/DEPLOY_TOKEN", ""); status != http.StatusNoContent {
		t.Errorf("delete: %d", status)
	}
	if status, _, body := e.call(admin, "DELETE", acmeSecrets+"/DEPLOY_TOKEN", ""); status != http.StatusNotFound || !strings.Contains(body, "no secret DEPLOY_TOKEN") {
		t.Errorf("delete again: %d %s", status, body)
	}
	if n := secretRows(t, e.st); n != 0 {
		t.Errorf("%d secrets after the delete", n)
	}
}

// Only admin permission on the repository sets or lists its secrets: a
// person with read or write is refused, a browser without its CSRF token
// or from another site too, and nothing is stored.
func TestSecretsPermissions(t *testing.T) {
	e := newAPIEnv(t, privateBuild("priv"))
	e.gh.set("alice", "acme/secret", coordinator.Read)
	e.gh.set("bob", "acme/secret", coordinator.Write)
	e.gh.set("erin", "acme/secret", coordinator.Admin)
	alice, bob, carol, erin := e.signIn("alice"), e.signIn("bob"), e.signIn("carol"), e.signIn("erin")
	_, bobToken := e.personalToken(bob, "ci")
	_, erinToken := e.personalToken(erin, "ci")
	noCSRF := &caller{name: "erin without CSRF", cookies: erin.cookies}
	crossSite := &caller{name: "erin cross-site", cookies: erin.cookies, csrf: erin.csrf, header: http.Header{"Sec-Fetch-Site": {"cross-site"}}}
	for _, tc := range []struct {
		c    *caller
		want int
	}{
		{nobody, http.StatusNotFound}, // a private repository: as unknown as one that is not there
		{alice, http.StatusForbidden},
		{bob, http.StatusForbidden},
		{&caller{name: "bob's token", bearer: bobToken}, http.StatusForbidden},
		{carol, http.StatusNotFound},
		{noCSRF, http.StatusForbidden},
		{crossSite, http.StatusForbidden},
	} {
		for _, m := range []struct{ method, path string }{
			{"PUT", acmeSecrets + "/TOKEN"}, {"DELETE", acmeSecrets + "/TOKEN"}, {"GET", acmeSecrets},
		} {
			if m.method == "GET" && (tc.c == noCSRF || tc.c == crossSite) {
				continue // reading needs no token
			}
			status, _, body := e.call(tc.c, m.method, m.path, "stolen")
			if status != tc.want || strings.Contains(body, "TOKEN\"") {
				t.Errorf("%s %s as %s: %d %s, want %d", m.method, m.path, tc.c.name, status, body, tc.want)
			}
		}
		if n := secretRows(t, e.st); n != 0 {
			t.Fatalf("%d secrets stored after %s was refused", n, tc.c.name)
		}
	}
	// With admin permission, a browser with its token, and a personal
	// token, may.
	for _, c := range []*caller{erin, {name: "erin's token", bearer: erinToken}} {
		if status, _, body := e.call(c, "PUT", acmeSecrets+"/TOKEN", "v"); status != http.StatusOK {
			t.Errorf("put as %s: %d %s", c.name, status, body)
		}
		if status, _, body := e.call(c, "GET", acmeSecrets, ""); status != http.StatusOK || !strings.Contains(body, `"TOKEN"`) {
			t.Errorf("list as %s: %d %s", c.name, status, body)
		}
	}
}

// Without a secrets key the routes say so, to whoever may use them.
func TestSecretsDisabled(t *testing.T) {
	e := newAPIEnv(t, privateBuild("priv"))
	e.gh.set("bob", "acme/secret", coordinator.Write)
	api, err := New(Config{Builds: &fakeBuilds{}, Store: e.st, Logs: fakeLogs{}, Agents: fakeAgents{}, Auth: mustAuth(t, e)})
	if err != nil {
		t.Fatal(err)
	}
	req := func(bearer, method, path string) (int, string) {
		r, _ := http.NewRequest(method, path, strings.NewReader("v"))
		r.Header.Set("Authorization", "Bearer "+bearer)
		w := httptest.NewRecorder()
		api.Handler().ServeHTTP(w, r)
		return w.Code, w.Body.String()
	}
	if status, body := req(adminToken, "PUT", acmeSecrets+"/TOKEN"); status != http.StatusServiceUnavailable || !strings.Contains(body, "--secrets-key-file") {
		t.Errorf("put without a key: %d %s", status, body)
	}
	if status, body := req(adminToken, "GET", "/repos/acme/secret/secrets"); status != http.StatusServiceUnavailable || !strings.Contains(body, "--secrets-key-file") {
		t.Errorf("page without a key: %d %s", status, body)
	}
	if n := secretRows(t, e.st); n != 0 {
		t.Errorf("%d secrets stored", n)
	}
}

// The secrets page lists names, never values; its form sets a secret
// (a textarea's CRLF made LF) and its button deletes one.
func TestSecretsPage(t *testing.T) {
	e := newAPIEnv(t, privateBuild("priv"))
	e.gh.set("erin", "acme/secret", coordinator.Admin)
	erin := e.signIn("erin")
	form := url.Values{"csrf": {erin.csrf}, "name": {"PEM_KEY"}, "value": {"line one\r\nline two"}}.Encode()
	status, _, body := e.call(&caller{name: "erin", cookies: erin.cookies}, "POST", "/repos/acme/secret/secrets", form)
	if status != http.StatusOK || !strings.Contains(body, "PEM_KEY") || strings.Contains(body, "line one") {
		t.Fatalf("set: %d %s", status, body)
	}
	got, err := e.keeper.Values(context.Background(), "acme", "secret", []string{"PEM_KEY"})
	if err != nil || string(got["PEM_KEY"]) != "line one\nline two" {
		t.Errorf("stored %q %v", got, err)
	}
	if status, _, body := e.call(erin, "GET", "/repos/acme/secret/secrets", ""); status != http.StatusOK || !strings.Contains(body, "<code>PEM_KEY</code>") || strings.Contains(body, "line two") {
		t.Errorf("page: %d %s", status, body)
	}
	bad := url.Values{"csrf": {erin.csrf}, "name": {"lower"}, "value": {"v"}}.Encode()
	if status, _, body := e.call(&caller{name: "erin", cookies: erin.cookies}, "POST", "/repos/acme/secret/secrets", bad); status != http.StatusBadRequest || !strings.Contains(body, "lower") {
		t.Errorf("bad name: %d %s", status, body)
	}
	del := url.Values{"csrf": {erin.csrf}}.Encode()
	if status, _, _ := e.call(&caller{name: "erin", cookies: erin.cookies}, "POST", "/repos/acme/secret/secrets/PEM_KEY/delete", del); status != http.StatusSeeOther {
		t.Errorf("delete: %d", status)
	}
	if n := secretRows(t, e.st); n != 0 {
		t.Errorf("%d secrets left", n)
	}
	// The build page links there for erin only.
	if _, _, body := e.call(erin, "GET", "/builds/priv", ""); !strings.Contains(body, `href="/repos/acme/secret/secrets"`) {
		t.Error("the build page has no secrets link for an admin of the repository")
	}
	e.gh.set("bob", "acme/secret", coordinator.Write)
	if _, _, body := e.call(e.signIn("bob"), "GET", "/builds/priv", ""); strings.Contains(body, "/secrets") {
		t.Error("the build page links to the secrets for a writer")
	}
}
