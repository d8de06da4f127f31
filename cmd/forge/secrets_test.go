package main

import (
	"bytes"
	"context"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/forge-ci/forge/coordinator/auth"
	"github.com/forge-ci/forge/coordinator/secrets"
	"github.com/forge-ci/forge/coordinator/store"
	"github.com/forge-ci/forge/coordinator/web"
)

// runIn is run with standard input in.
func runIn(t *testing.T, in string, args ...string) (string, error) {
	t.Helper()
	app := newApp()
	var out bytes.Buffer
	app.Writer, app.ErrWriter, app.Reader = &out, &out, strings.NewReader(in)
	err := app.Run(append([]string{"forge"}, args...))
	return out.String(), err
}

// TestSecretsCommands runs forge secrets set, ls and rm against the
// coordinator's real API and a real keeper: the value comes from standard
// input (its trailing newline dropped), is never printed, and what is
// refused (locally or by the server) stores nothing.
func TestSecretsCommands(t *testing.T) {
	st, err := store.Open(":memory:")
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	const adminToken = "forge_admin_0123456789abcdef0123"
	front, err := auth.New(auth.Config{Store: st, Key: bytes.Repeat([]byte{7}, 32), AdminToken: adminToken})
	if err != nil {
		t.Fatal(err)
	}
	carolToken, _, err := front.NewToken(context.Background(), "carol", "cli")
	if err != nil {
		t.Fatal(err)
	}
	keeper, err := secrets.New(bytes.Repeat([]byte{3}, secrets.KeySize), st)
	if err != nil {
		t.Fatal(err)
	}
	api, err := web.New(web.Config{Builds: noBuilds{}, Store: st, Logs: noLogs{}, Agents: &hubFake{}, Auth: front, Secrets: keeper})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(api.Handler())
	defer srv.Close()
	tokenFile := filepath.Join(t.TempDir(), "admin-token")
	if err := os.WriteFile(tokenFile, []byte(adminToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	withFile := []string{"--server", srv.URL, "--admin-token-file", tokenFile}
	const value = "tok3n with spaces"
	stored := func() map[string][]byte {
		ss, _ := st.SealedSecrets(context.Background(), "acme", "app", []string{"DEPLOY_TOKEN", "lower"})
		return ss
	}

	for _, c := range []struct {
		in    string
		args  []string
		want  []string
		fails bool
	}{
		{value, append([]string{"secrets", "set"}, append(withFile, "acme/app", "lower")...), []string{`secret name "lower"`}, true},
		{value, append([]string{"secrets", "set"}, append(withFile, "acme", "TOKEN")...), []string{"want OWNER/REPO"}, true},
		{value, append([]string{"secrets", "set"}, append(withFile, "acme/app")...), []string{"OWNER/REPO NAME"}, true},
		{value, []string{"secrets", "set", "acme/app", "DEPLOY_TOKEN", "--admin-token-file", tokenFile}, []string{"flags go before the arguments"}, true},
		{"", append([]string{"secrets", "set"}, append(withFile, "acme/app", "DEPLOY_TOKEN")...), []string{"empty value", "standard input"}, true},
		{strings.Repeat("x", 70000), append([]string{"secrets", "set"}, append(withFile, "acme/app", "DEPLOY_TOKEN")...), []string{"max 65536"}, true},
		{value, []string{"secrets", "set", "--server", srv.URL, "--token", carolToken, "acme/app", "DEPLOY_TOKEN"}, []string{"no repository acme/app"}, true}, // carol may not see it
		{value, []string{"secrets", "set", "--server", srv.URL, "acme/app", "DEPLOY_TOKEN"}, []string{"need admin permission on the repository", "--token"}, true},
	} {
		out, err := runIn(t, c.in, c.args...)
		if err == nil {
			t.Errorf("forge %s succeeded:\n%s", strings.Join(c.args, " "), out)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("forge %s: %v lacks %q", strings.Join(c.args, " "), err, w)
			}
		}
		if n := len(stored()); n != 0 {
			t.Fatalf("forge %s failed, yet %d secrets are stored", strings.Join(c.args, " "), n)
		}
	}

	out, err := runIn(t, value+"\n", append([]string{"secrets", "set"}, append(withFile, "acme/app", "DEPLOY_TOKEN")...)...)
	if err != nil || out != "set DEPLOY_TOKEN of acme/app (17 bytes)\n" {
		t.Fatalf("set: %q %v", out, err)
	}
	if got, err := keeper.Values(context.Background(), "acme", "app", []string{"DEPLOY_TOKEN"}); err != nil || string(got["DEPLOY_TOKEN"]) != value {
		t.Fatalf("stored %q %v", got, err)
	}
	out, err = runIn(t, "", append([]string{"secrets", "ls"}, append(withFile, "acme/app")...)...)
	if err != nil || !strings.Contains(out, "NAME") || !strings.Contains(out, "DEPLOY_TOKEN") || !strings.Contains(out, "admin token") || strings.Contains(out, value) {
		t.Errorf("ls: %q %v", out, err)
	}
	if out, err := runIn(t, "", append([]string{"secrets", "rm"}, append(withFile, "acme/app", "DEPLOY_TOKEN")...)...); err != nil || out != "deleted DEPLOY_TOKEN of acme/app\n" {
		t.Errorf("rm: %q %v", out, err)
	}
	if _, err := runIn(t, "", append([]string{"secrets", "rm"}, append(withFile, "acme/app", "DEPLOY_TOKEN")...)...); err == nil || !strings.Contains(err.Error(), "has no secret DEPLOY_TOKEN") {
		t.Errorf("rm again: %v", err)
	}
	if n := len(stored()); n != 0 {
		t.Errorf("%d secrets left", n)
	}
}
