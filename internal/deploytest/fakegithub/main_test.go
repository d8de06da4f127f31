package main

import (
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/forge-ci/forge/internal/fakegithub/fakegithubtest"
)

// TestSetup signs in as a -user and reads a -private repository with the
// -permission the flags give.
func TestSetup(t *testing.T) {
	dir := t.TempDir()
	der, err := x509.MarshalPKIXPublicKey(&fakegithubtest.AppKey(t).PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dir, "key.pem")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	base := []string{"-key", keyFile, "-repo", dir, "-oauth-client-id", "cid", "-oauth-client-secret", "sec"}
	f, listen, err := setup(append(base, "-listen", ":9", "-user", "alice:1001", "-user", "bob:1002",
		"-permission", "alice:o/r:admin", "-private", "o/r"))
	if err != nil || listen != ":9" {
		t.Fatalf("setup: %q, %v", listen, err)
	}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)

	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := noRedirect.Get(srv.URL + "/login/oauth/authorize?" + url.Values{"client_id": {"cid"},
		"redirect_uri": {"http://forge.test/cb"}, "login": {"alice"}}.Encode())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil || resp.StatusCode != http.StatusFound {
		t.Fatalf("authorize: %s %v", resp.Status, err)
	}
	req, _ := http.NewRequest("POST", srv.URL+"/login/oauth/access_token", strings.NewReader(url.Values{"client_id": {"cid"},
		"client_secret": {"sec"}, "code": {loc.Query().Get("code")}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	do(t, req, &tok)
	req, _ = http.NewRequest("GET", srv.URL+"/api/v3/repos/o/r", nil)
	req.Header.Set("Authorization", "Bearer "+tok.AccessToken)
	var repo struct {
		Private     bool
		Permissions map[string]bool
	}
	do(t, req, &repo)
	if !repo.Private || !repo.Permissions["admin"] {
		t.Errorf("repository %+v", repo)
	}

	for _, bad := range [][]string{{"-user", "alice"}, {"-user", "alice:x"}, {"-permission", "alice:o/r"},
		{"-permission", "alice:o/r:owner"}, {"-private", "o"}, {"-key", filepath.Join(dir, "none")}} {
		if _, _, err := setup(append(base, bad...)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func do(t *testing.T, req *http.Request, v any) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil || resp.StatusCode != 200 {
		t.Fatalf("%s %s: %s, %v", req.Method, req.URL, resp.Status, err)
	}
}
