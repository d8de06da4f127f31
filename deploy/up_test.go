package deploy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/swarm"

	"github.com/forge-ci/forge/internal/syncbuf"
	"github.com/forge-ci/forge/wire"
)

// upRig runs Up against a fake swarm and a fake coordinator.
type upRig struct {
	t        *testing.T
	sw       *fakeSwarm
	co       *fakeCoordinator
	state    string
	port     string
	socket   string
	keyFile  string
	out, err *syncbuf.Buffer
}

func newUpRig(t *testing.T) *upRig {
	r := &upRig{t: t, sw: newFakeSwarm(t), co: &fakeCoordinator{agents: []string{"node1"}},
		state: filepath.Join(t.TempDir(), "state"), socket: fakeSocket(t)}
	// The coordinator wants the admin token that up makes.
	r.co.tokenFile = filepath.Join(r.state, "admin-token")
	r.port = r.co.start(t)
	r.keyFile = filepath.Join(t.TempDir(), "app.pem")
	if err := os.WriteFile(r.keyFile, []byte("-----BEGIN RSA PRIVATE KEY-----\nMII\n-----END RSA PRIVATE KEY-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return r
}

func (r *upRig) config(s Settings) UpConfig {
	r.out, r.err = &syncbuf.Buffer{}, &syncbuf.Buffer{}
	if s.HTTPPort == "" {
		s.HTTPPort = r.port
	}
	return UpConfig{
		Config: Config{StateDir: r.state, Timeout: 5 * time.Second, Out: r.out, Err: r.err,
			Engine: r.sw.engine(), Interval: 5 * time.Millisecond},
		Settings: s, Version: "v1", Socket: r.socket, DockerCLI: r.sw.dockerCLI,
	}
}

// up runs Up and wants it to succeed; it returns what Up said.
func (r *upRig) up(c UpConfig) string {
	r.t.Helper()
	if err := Up(context.Background(), c); err != nil {
		r.t.Fatalf("Up: %v\nout:\n%s\nerr:\n%s", err, r.out, r.err)
	}
	return r.out.String()
}

func (r *upRig) lastEnv() map[string]string {
	r.t.Helper()
	if len(r.sw.envs) == 0 {
		r.t.Fatal("docker stack deploy never ran")
	}
	m := map[string]string{}
	for _, kv := range r.sw.envs[len(r.sw.envs)-1] {
		k, v, _ := strings.Cut(kv, "=")
		m[k] = v
	}
	return m
}

func wantLines(t *testing.T, out string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("output lacks %q:\n%s", w, out)
		}
	}
}

// TestUpMakesThenKeeps: a first run makes the CA, the coordinator's
// certificate, the join token, webhook secret, admin token, session key,
// secrets key and Docker secrets, deploys and waits
// (asking the coordinator with the admin token); a second one makes
// nothing and deploys the same; a changed file becomes a new secret that
// changes only the services that use it, and the old secret goes.
func TestUpMakesThenKeeps(t *testing.T) {
	r := newUpRig(t)
	r.sw.secrets["forge_webhook_secret_0123456789ab"] = swarm.Secret{ID: "old", Spec: swarm.SecretSpec{
		Annotations: swarm.Annotations{Name: "forge_webhook_secret_0123456789ab", Labels: map[string]string{"forge.stack": "forge"}}}}
	settings := Settings{GitHubAppID: "42", PublicURL: "https://forge.example.com/"}
	c := r.config(settings)
	c.GitHubKeyFile = r.keyFile
	out := r.up(c)
	wantLines(t, out,
		"make up: copied the GitHub App key into "+filepath.Join(r.state, "github-app-key.pem"),
		"make up: made a new CA in "+filepath.Join(r.state, "certs"),
		"make up: issued "+filepath.Join(r.state, "certs", "coordinator.pem")+" (it was missing;",
		"make up: made a join token: "+filepath.Join(r.state, "certs", "join-token"),
		"make up: made a random webhook secret: ",
		"make up: made an admin token: "+filepath.Join(r.state, "admin-token")+"\n",
		"make up: made a session key: "+filepath.Join(r.state, "session-key")+"\n",
		"make up: made a secrets key: "+filepath.Join(r.state, "secrets-key")+"\n",
		"make up: deploying stack forge (forge/coordinator and forge/agent:v1, as 65532:",
		"make up: Creating service forge_coordinator\n",
		"make up: waiting (at most 5s) for the coordinator at http://127.0.0.1:"+r.port+" and an agent on every node\n",
		"make up: removed the unused secret forge_webhook_secret_0123456789ab\n",
		"make up: Forge is up: the coordinator and 1 agent(s), one on every node\n",
		"make up:   webhook URL     https://forge.example.com/webhook\n",
		"make up: GitHub App 42 configured",
		"make up:   admin token     "+r.state+"/admin-token (every right: send it as Authorization: Bearer <token>, or\n",
		"make up:                   FORGE_SERVER=http://10.0.0.1:"+r.port+" FORGE_TOKEN=$(cat "+r.state+"/admin-token) bin/forge builds)\n",
	)
	if strings.Contains(out, "Sign-in with GitHub") {
		t.Errorf("sign-in reported, but not configured:\n%s", out)
	}
	if len(r.sw.created) != 10 {
		t.Errorf("created the secrets %q, want 10", r.sw.created)
	}
	for _, name := range r.sw.created {
		s := r.sw.secrets[name]
		what := strings.TrimSuffix(strings.TrimPrefix(name, "forge_"), name[len(name)-13:])
		if s.Spec.Labels["forge.stack"] != "forge" || s.Spec.Labels["forge.secret"] != what {
			t.Errorf("secret %s: labels %v", name, s.Spec.Labels)
		}
	}
	if got := strings.Join(r.sw.deploys[0][:7], " "); got != "stack deploy --detach=true --prune --resolve-image never -c" ||
		len(r.sw.deploys[0]) != 11 || r.sw.deploys[0][10] != "forge" {
		t.Errorf("docker %q", r.sw.deploys[0])
	}
	env := r.lastEnv()
	webhook, _ := os.ReadFile(filepath.Join(r.state, "webhook-secret"))
	token, _ := os.ReadFile(filepath.Join(r.state, "admin-token"))
	sessionKey, _ := os.ReadFile(filepath.Join(r.state, "session-key"))
	secretsKey, _ := os.ReadFile(filepath.Join(r.state, "secrets-key"))
	if !regexp.MustCompile(`^[0-9a-f]{64}$`).Match(secretsKey) || bytes.Equal(secretsKey, sessionKey) ||
		env["FORGE_SECRET_SECRETS_KEY"] != secretName("forge", "secrets_key", secretsKey) ||
		!bytes.Equal(r.sw.secrets[env["FORGE_SECRET_SECRETS_KEY"]].Spec.Data, secretsKey) {
		t.Errorf("secrets key %q, deployed as %q", secretsKey, env["FORGE_SECRET_SECRETS_KEY"])
	}
	if !regexp.MustCompile(`^forge_admin_[0-9a-f]{64}$`).Match(token) || !regexp.MustCompile(`^[0-9a-f]{64}$`).Match(sessionKey) ||
		bytes.Contains(token, sessionKey[:16]) || bytes.Contains(webhook, sessionKey[:16]) {
		t.Errorf("admin token %q, session key %q (webhook secret %q)", token, sessionKey, webhook)
	}
	if env["FORGE_SECRET_ADMIN_TOKEN"] != secretName("forge", "admin_token", token) ||
		env["FORGE_SECRET_SESSION_KEY"] != secretName("forge", "session_key", sessionKey) ||
		r.sw.secrets[env["FORGE_SECRET_ADMIN_TOKEN"]].Spec.Labels["forge.secret"] != "admin_token" ||
		r.sw.secrets[env["FORGE_SECRET_SESSION_KEY"]].Spec.Labels["forge.secret"] != "session_key" {
		t.Errorf("the admin token and session key are not the secrets deployed: %v", env)
	}
	if !bytes.Equal(r.sw.secrets[env["FORGE_SECRET_ADMIN_TOKEN"]].Spec.Data, token) {
		t.Errorf("the secret %s does not hold the admin token", env["FORGE_SECRET_ADMIN_TOKEN"])
	}
	if len(webhook) != 64 || env["FORGE_SECRET_WEBHOOK"] != secretName("forge", "webhook_secret", webhook) ||
		env["FORGE_GITHUB_APP_ID"] != "42" || env["FORGE_COORDINATOR_NODE"] != "node1" || env["FORGE_UID"] != "65532" ||
		env["FORGE_SECRET_GITHUB_KEY"] == "" || env["DOCKER_HOST"] != "unix:///fake/docker.sock" {
		t.Errorf("environment of docker stack deploy: %v", env)
	}
	saved, _ := os.ReadFile(filepath.Join(r.state, "forge.env"))
	wantEnv := "FORGE_HTTP_PORT=" + r.port + "\nFORGE_PUBLIC_URL=https://forge.example.com/\nFORGE_GITHUB_APP_ID=42\n" +
		"FORGE_GITHUB_API=\nFORGE_GITHUB_CLIENT_ID=\nFORGE_GITHUB_WEB=\nFORGE_REGISTRY=\nFORGE_USER=\nFORGE_AGENT_USER=\n"
	if !strings.HasSuffix(string(saved), wantEnv) {
		t.Errorf("forge.env:\n%s\nwant it to end with:\n%s", saved, wantEnv)
	}
	for file, mode := range map[string]os.FileMode{"": 0o700, "certs/ca-key.pem": 0o600, "certs/coordinator-key.pem": 0o600,
		"certs/join-token": 0o600, "webhook-secret": 0o600, "admin-token": 0o600, "session-key": 0o600, "secrets-key": 0o600,
		"github-app-key.pem": 0o600, "certs/ca.pem": 0o644} {
		if fi, err := os.Stat(filepath.Join(r.state, file)); err != nil || fi.Mode().Perm() != mode {
			t.Errorf("%s: %v, %v; want mode %#o", file, fi.Mode(), err, mode)
		}
	}

	// Again, with the settings from forge.env: nothing new, the same deployment.
	first := r.lastEnv()
	created := len(r.sw.created)
	out = r.up(r.config(Settings{HTTPPort: r.port}))
	if len(r.sw.created) != created || strings.Contains(out, "made a") || strings.Contains(out, "issued") || strings.Contains(out, "removed") {
		t.Errorf("the second run made or removed things:\n%s", out)
	}
	if again := r.lastEnv(); !mapsEqual(again, first) {
		t.Errorf("the second run deployed\n%v\nafter\n%v", again, first)
	}
	for file, before := range map[string][]byte{"admin-token": token, "session-key": sessionKey, "secrets-key": secretsKey} {
		if now, err := os.ReadFile(filepath.Join(r.state, file)); err != nil || !bytes.Equal(now, before) {
			t.Errorf("%s changed: %q, then %q (%v)", file, before, now, err)
		}
	}

	// A new webhook secret: one new Docker secret, the coordinator's
	// deployment changes and the agents' does not, the old secret goes.
	if err := os.WriteFile(filepath.Join(r.state, "webhook-secret"), []byte("rotated"), 0o600); err != nil {
		t.Fatal(err)
	}
	out = r.up(r.config(Settings{}))
	newName := secretName("forge", "webhook_secret", []byte("rotated"))
	if got := r.sw.created[created:]; !slices.Equal(got, []string{newName}) {
		t.Errorf("created %q, want only %s", got, newName)
	}
	third := r.lastEnv()
	if third["FORGE_COORDINATOR_DEPLOYMENT"] == first["FORGE_COORDINATOR_DEPLOYMENT"] ||
		third["FORGE_AGENT_DEPLOYMENT"] != first["FORGE_AGENT_DEPLOYMENT"] {
		t.Errorf("deployments: coordinator %s then %s, agent %s then %s", first["FORGE_COORDINATOR_DEPLOYMENT"],
			third["FORGE_COORDINATOR_DEPLOYMENT"], first["FORGE_AGENT_DEPLOYMENT"], third["FORGE_AGENT_DEPLOYMENT"])
	}
	wantLines(t, out, "make up: removed the unused secret "+first["FORGE_SECRET_WEBHOOK"]+"\n")

	// The join token and the CA key are secrets; no agent certificate is.
	joinToken, _ := os.ReadFile(filepath.Join(r.state, "certs", "join-token"))
	caKey, _ := os.ReadFile(filepath.Join(r.state, "certs", "ca-key.pem"))
	if third["FORGE_SECRET_JOIN_TOKEN"] != secretName("forge", "join_token", joinToken) ||
		!bytes.Equal(r.sw.secrets[third["FORGE_SECRET_JOIN_TOKEN"]].Spec.Data, joinToken) ||
		third["FORGE_SECRET_CA_KEY"] != secretName("forge", "ca_key", caKey) {
		t.Errorf("the join token and the CA key are not the secrets deployed: %v", third)
	}
	for k := range third {
		if strings.Contains(k, "AGENT_CERT") || strings.Contains(k, "AGENT_KEY") {
			t.Errorf("docker stack deploy got %s: agents have no certificate of make up's", k)
		}
	}
	// A new join token (forge certs join-token --force): a new secret for
	// the coordinator and the agents; the old one goes.
	if err := os.WriteFile(filepath.Join(r.state, "certs", "join-token"), []byte("forge_join_rotated"), 0o600); err != nil {
		t.Fatal(err)
	}
	created = len(r.sw.created)
	out = r.up(r.config(Settings{}))
	newName = secretName("forge", "join_token", []byte("forge_join_rotated"))
	fourth := r.lastEnv()
	if got := r.sw.created[created:]; !slices.Equal(got, []string{newName}) || fourth["FORGE_SECRET_JOIN_TOKEN"] != newName {
		t.Errorf("created %q, want only %s", got, newName)
	}
	if fourth["FORGE_COORDINATOR_DEPLOYMENT"] == third["FORGE_COORDINATOR_DEPLOYMENT"] ||
		fourth["FORGE_AGENT_DEPLOYMENT"] == third["FORGE_AGENT_DEPLOYMENT"] {
		t.Errorf("a new join token left a deployment as it was: %v then %v", third, fourth)
	}
	wantLines(t, out, "make up: removed the unused secret "+third["FORGE_SECRET_JOIN_TOKEN"]+"\n")
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// TestUpWithoutApp: no App, the next steps are said, and
// stack.github.yml is not deployed.
func TestUpWithoutApp(t *testing.T) {
	r := newUpRig(t)
	r.sw.nodes = append(r.sw.nodes, node("node2", "host2", swarm.NodeStateDown, swarm.NodeAvailabilityActive))
	out := r.up(r.config(Settings{}))
	wantLines(t, out,
		"make up: note: the images exist on this machine only. Every other node needs forge/agent:v1:",
		"make up:   webhook URL     http://10.0.0.1:"+r.port+"/webhook",
		"make up: next: create a GitHub App",
		"make up: set FORGE_PUBLIC_URL",
		"make up: Forge is up: the coordinator and 1 agent(s)")
	if len(r.sw.created) != 9 || r.lastEnv()["FORGE_SECRET_GITHUB_KEY"] != "" {
		t.Errorf("created %q; FORGE_SECRET_GITHUB_KEY=%q", r.sw.created, r.lastEnv()["FORGE_SECRET_GITHUB_KEY"])
	}
	if args := r.sw.deploys[0]; slices.ContainsFunc(args, func(a string) bool { return strings.HasSuffix(a, "stack.github.yml") }) {
		t.Errorf("docker %q", args)
	}
}

// TestUpSignIn: an OAuth client id and secret file; the secret is copied
// into the state folder and becomes a secret, stack.signin.yml is
// deployed with the id and GitHub's web address, and later runs need
// neither setting again.
func TestUpSignIn(t *testing.T) {
	r := newUpRig(t)
	secretFile := filepath.Join(t.TempDir(), "client-secret")
	if err := os.WriteFile(secretFile, []byte("0123456789abcdef0123456789abcdef01234567\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c := r.config(Settings{GitHubClientID: "Iv1.8a61f9b3a7aba766", GitHubWeb: "https://github.example.com",
		PublicURL: "https://forge.example.com"})
	c.GitHubClientSecretFile = secretFile
	out := r.up(c)
	kept := filepath.Join(r.state, "github-client-secret")
	wantLines(t, out, "make up: copied the GitHub OAuth client secret into "+kept+"\n",
		"make up: Sign-in with GitHub: OAuth client Iv1.8a61f9b3a7aba766; its callback URL must be https://forge.example.com/login/callback.\n")
	content, err := os.ReadFile(kept)
	if fi, statErr := os.Stat(kept); err != nil || statErr != nil || fi.Mode().Perm() != 0o600 || string(content) != "0123456789abcdef0123456789abcdef01234567\n" {
		t.Fatalf("%s: %q, %v, %v", kept, content, err, statErr)
	}
	env := r.lastEnv()
	name := secretName("forge", "github_client_secret", content)
	if env["FORGE_SECRET_GITHUB_CLIENT_SECRET"] != name || !slices.Contains(r.sw.created, name) ||
		env["FORGE_GITHUB_CLIENT_ID"] != "Iv1.8a61f9b3a7aba766" || env["FORGE_GITHUB_WEB"] != "https://github.example.com" {
		t.Errorf("environment of docker stack deploy: %v", env)
	}
	if args := r.sw.deploys[0]; !slices.ContainsFunc(args, func(a string) bool { return strings.HasSuffix(a, "/stack.signin.yml") }) ||
		slices.ContainsFunc(args, func(a string) bool { return strings.HasSuffix(a, "/stack.github.yml") }) {
		t.Errorf("docker %q", args)
	}

	// Again with no setting: the same deployment from forge.env and the copy.
	r.up(r.config(Settings{}))
	if again := r.lastEnv(); !mapsEqual(again, env) {
		t.Errorf("the second run deployed\n%v\nafter\n%v", again, env)
	}
}

// TestUpKeepsGivenSecrets: an admin token and a session key the operator
// wrote are kept, and the token is the one up asks the coordinator with.
func TestUpKeepsGivenSecrets(t *testing.T) {
	r := newUpRig(t)
	if err := os.MkdirAll(r.state, 0o700); err != nil {
		t.Fatal(err)
	}
	token := []byte("forge_admin_chosen-by-the-operator\n")
	key := []byte(strings.Repeat("ab", 32) + "\n")
	os.WriteFile(filepath.Join(r.state, "admin-token"), token, 0o600)
	os.WriteFile(filepath.Join(r.state, "session-key"), key, 0o600)
	seen := make(chan string, 100)
	c := r.config(Settings{})
	c.HTTP = &http.Client{Transport: roundTripper(func(req *http.Request) (*http.Response, error) {
		select {
		case seen <- req.URL.Path + " " + req.Header.Get("Authorization"):
		default:
		}
		return http.DefaultTransport.RoundTrip(req)
	})}
	out := r.up(c)
	if strings.Contains(out, "made an admin token") || strings.Contains(out, "made a session key") {
		t.Errorf("made anew:\n%s", out)
	}
	for file, want := range map[string][]byte{"admin-token": token, "session-key": key} {
		if got, _ := os.ReadFile(filepath.Join(r.state, file)); !bytes.Equal(got, want) {
			t.Errorf("%s: %q, want %q kept", file, got, want)
		}
	}
	if env := r.lastEnv(); env["FORGE_SECRET_ADMIN_TOKEN"] != secretName("forge", "admin_token", token) {
		t.Errorf("FORGE_SECRET_ADMIN_TOKEN=%s", env["FORGE_SECRET_ADMIN_TOKEN"])
	}
	close(seen)
	agents := 0
	for s := range seen {
		if !strings.HasSuffix(s, " Bearer forge_admin_chosen-by-the-operator") {
			t.Errorf("asked %s", s)
		}
		if strings.HasPrefix(s, "/api/agents ") {
			agents++
		}
	}
	if agents == 0 {
		t.Error("never asked /api/agents")
	}
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestUpTokenRefused: a coordinator that refuses the admin token; up
// gives up saying so.
func TestUpTokenRefused(t *testing.T) {
	r := newUpRig(t)
	other := filepath.Join(t.TempDir(), "admin-token")
	os.WriteFile(other, []byte("forge_admin_another"), 0o600)
	r.co.mu.Lock()
	r.co.tokenFile = other
	r.co.mu.Unlock()
	c := r.config(Settings{})
	c.Timeout = time.Second
	err := Up(context.Background(), c)
	want := "gave up after 1s waiting for the coordinator to accept the admin token of " + filepath.Join(r.state, "admin-token") +
		" (GET /api/agents: a bad or missing credential)"
	if err == nil || err.Error() != want {
		t.Fatalf("Up: %v, want %s", err, want)
	}
}

// TestUpGivesUp: an agent that never connects; up gives up at the
// deadline and says which node and what its agent logged.
func TestUpGivesUp(t *testing.T) {
	r := newUpRig(t)
	r.co.agents = nil
	r.sw.agentLogs = "dial unix /var/run/docker.sock: connect: permission denied\n"
	c := r.config(Settings{})
	c.Timeout = time.Second
	err := Up(context.Background(), c)
	if err == nil || err.Error() != "gave up after 1s waiting for an agent on every node (missing: node1)" {
		t.Fatalf("Up: %v", err)
	}
	wantLines(t, r.err.String(),
		"make up: tasks of forge_coordinator:\n",
		"make up:   host1: Running ",
		"make up: no agent connected from node node1 (host1)\n",
		"make up:   dial unix /var/run/docker.sock: connect: permission denied\n",
		"make up: set FORGE_AGENT_USER=65532:<its gid> (stat -c %g /var/run/docker.sock there) or FORGE_AGENT_USER=0:0\n",
		"make up: gave up after 1s waiting for an agent on every node (missing: node1)\n")
	if strings.Contains(r.out.String(), "removed") {
		t.Errorf("secrets removed although the deployment never converged:\n%s", r.out)
	}
}

// TestUpRefuses: what up refuses, before it deploys anything.
func TestUpRefuses(t *testing.T) {
	notPEM := filepath.Join(t.TempDir(), "key.txt")
	os.WriteFile(notPEM, []byte("not a key"), 0o600)
	for _, tc := range []struct {
		name  string
		setup func(r *upRig, c *UpConfig)
		want  string
	}{
		{"no swarm", func(r *upRig, c *UpConfig) { r.sw.state = swarm.LocalNodeStateInactive },
			"Docker is not in swarm mode (inactive), and make up does not turn it on for you.\n  On the machine"},
		{"worker", func(r *upRig, c *UpConfig) { r.sw.worker = true },
			"this node is a swarm worker; run make up on a manager (docker node ls lists them)"},
		{"no docker command", func(r *upRig, c *UpConfig) {
			c.DockerCLI = func(context.Context, []string, ...string) ([]byte, error) { return nil, exec.ErrNotFound }
		}, "the docker command is not installed"},
		{"no socket", func(r *upRig, c *UpConfig) { c.Socket = filepath.Join(t.TempDir(), "none") },
			"none is not here: the coordinator uses the manager's local Docker socket"},
		{"port", func(r *upRig, c *UpConfig) { c.Settings.HTTPPort = "80a" }, "FORGE_HTTP_PORT=80a: want a port number"},
		{"app id", func(r *upRig, c *UpConfig) { c.Settings.GitHubAppID = "x1" },
			"FORGE_GITHUB_APP_ID=x1: want the App's number (App settings, About)"},
		{"app id without key", func(r *upRig, c *UpConfig) { c.Settings.GitHubAppID = "1" },
			"FORGE_GITHUB_APP_ID is set but there is no App private key"},
		{"key without app id", func(r *upRig, c *UpConfig) { c.GitHubKeyFile = r.keyFile }, "but no App id: add FORGE_GITHUB_APP_ID=<id>"},
		{"key not PEM", func(r *upRig, c *UpConfig) { c.GitHubKeyFile = notPEM }, "is not a PEM private key"},
		{"key missing", func(r *upRig, c *UpConfig) { c.GitHubKeyFile = notPEM + ".none" }, ".none: cannot read it"},
		{"user", func(r *upRig, c *UpConfig) { c.Settings.User = "65532" }, "FORGE_USER=65532: want uid:gid"},
		{"agent user", func(r *upRig, c *UpConfig) { c.Settings.AgentUser = "0" }, "FORGE_AGENT_USER=0: want uid:gid"},
		{"uids differ", func(r *upRig, c *UpConfig) { c.Settings.AgentUser = "0:0" },
			"FORGE_USER and FORGE_AGENT_USER must have the same uid (the secrets are given to it)"},
		{"no image", func(r *upRig, c *UpConfig) { c.Version = "v2" }, "image forge/coordinator:v2 is missing: run make images (make up does)"},
		{"registry image", func(r *upRig, c *UpConfig) { c.Settings.Registry = "reg.example.com:5000/" },
			"image reg.example.com:5000/forge/coordinator:v1 is missing"},
		{"session key", func(r *upRig, c *UpConfig) {
			os.MkdirAll(r.state, 0o700)
			os.WriteFile(filepath.Join(r.state, "session-key"), []byte("0123abcd"), 0o600)
		}, "session-key: want 64 hex characters (32 random bytes); remove it and make up makes a new one"},
		{"secrets key", func(r *upRig, c *UpConfig) {
			os.MkdirAll(r.state, 0o700)
			os.WriteFile(filepath.Join(r.state, "secrets-key"), []byte("not hex"), 0o600)
		}, "secrets-key: want 64 hex characters (32 random bytes); put the right key back: a new one cannot open the secrets sealed with it"},
		{"client id without secret", func(r *upRig, c *UpConfig) { c.Settings.GitHubClientID = "Iv1.c" },
			"FORGE_GITHUB_CLIENT_ID is set but there is no client secret: add FORGE_GITHUB_CLIENT_SECRET_FILE="},
		{"client secret without id", func(r *upRig, c *UpConfig) { c.GitHubClientSecretFile = r.keyFile },
			"but no client id: add FORGE_GITHUB_CLIENT_ID=<id>"},
		{"client secret empty", func(r *upRig, c *UpConfig) {
			c.Settings.GitHubClientID = "Iv1.c"
			c.GitHubClientSecretFile = filepath.Join(t.TempDir(), "empty")
			os.WriteFile(c.GitHubClientSecretFile, []byte("\n"), 0o600)
		}, "empty is empty"},
		{"github web", func(r *upRig, c *UpConfig) { c.Settings.GitHubWeb = "github.example.com" },
			"FORGE_GITHUB_WEB=github.example.com: want GitHub's web address, e.g. https://github.example.com"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newUpRig(t)
			c := r.config(Settings{})
			tc.setup(r, &c)
			err := Up(context.Background(), c)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Up: %v, want %q", err, tc.want)
			}
			if !strings.HasSuffix(r.err.String(), "make up: "+err.Error()+"\n") {
				t.Errorf("stderr:\n%s\nwant it to end with make up: %v", r.err, err)
			}
			if len(r.sw.deploys) > 0 {
				t.Errorf("deployed: %q", r.sw.deploys)
			}
		})
	}
}

func TestSecretName(t *testing.T) {
	sum := sha256.Sum256([]byte("content"))
	if got, want := secretName("forge", "ca", []byte("content")), "forge_ca_"+hex.EncodeToString(sum[:])[:12]; got != want {
		t.Errorf("secretName = %s, want %s", got, want)
	}
	if secretName("forge", "ca", []byte("a")) == secretName("forge", "ca", []byte("b")) {
		t.Error("other content, same name")
	}
}

// TestDeploymentDigest: the hash of each input on a line of its own, then
// the compose files.
func TestDeploymentDigest(t *testing.T) {
	h := sha256.New()
	h.Write([]byte("sha256:c1\n65532:999\n\n"))
	h.Write(stackYML)
	h.Write(stackGitHubYML)
	h.Write(stackSigninYML)
	want := hex.EncodeToString(h.Sum(nil))[:16]
	if got := deploymentDigest("sha256:c1", "65532:999", ""); got != want {
		t.Errorf("deploymentDigest = %s, want %s", got, want)
	}
	if deploymentDigest("a", "b") == deploymentDigest("a", "c") || deploymentDigest("a", "") == deploymentDigest("a") {
		t.Error("other inputs, same digest")
	}
}

func TestConverged(t *testing.T) {
	task := func(state swarm.TaskState, deployment string) swarm.Task {
		return swarm.Task{Status: swarm.TaskStatus{State: state},
			Spec: swarm.TaskSpec{ContainerSpec: &swarm.ContainerSpec{Labels: map[string]string{"forge.deployment": deployment}}}}
	}
	for _, tc := range []struct {
		name  string
		tasks []swarm.Task
		want  bool
	}{
		{"no task", nil, false},
		{"running this deployment", []swarm.Task{task(swarm.TaskStateRunning, "d1"), task(swarm.TaskStateRunning, "d1")}, true},
		{"one starting", []swarm.Task{task(swarm.TaskStateRunning, "d1"), task(swarm.TaskStateStarting, "d1")}, false},
		{"one of the earlier deployment", []swarm.Task{task(swarm.TaskStateRunning, "d1"), task(swarm.TaskStateRunning, "d0")}, false},
		{"no container spec", []swarm.Task{{Status: swarm.TaskStatus{State: swarm.TaskStateRunning}}}, false},
	} {
		if got := converged(tc.tasks, "d1"); got != tc.want {
			t.Errorf("%s: converged = %v", tc.name, got)
		}
	}
}

func TestReadyNodesAndMissingAgents(t *testing.T) {
	nodes := []swarm.Node{
		node("n3", "c", swarm.NodeStateReady, swarm.NodeAvailabilityActive),
		node("n1", "a", swarm.NodeStateReady, swarm.NodeAvailabilityActive),
		node("n2", "b", swarm.NodeStateDown, swarm.NodeAvailabilityActive),
		node("n4", "d", swarm.NodeStateReady, swarm.NodeAvailabilityDrain),
	}
	ready := readyNodes(nodes)
	if !slices.Equal(ready, []string{"n1", "n3"}) {
		t.Errorf("readyNodes = %q", ready)
	}
	if got := missingAgents(ready, []string{"n3", "n2"}); !slices.Equal(got, []string{"n1"}) {
		t.Errorf("missingAgents = %q", got)
	}
	if got := missingAgents(ready, []string{"n1", "n3"}); got != nil {
		t.Errorf("missingAgents = %q", got)
	}
}

// answering serves body with 200 to every request, as a coordinator
// at port would; it returns the coordinator client of that port.
func answering(t *testing.T, body string) coordinator {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, body)
	}))
	t.Cleanup(srv.Close)
	u, err := url.Parse(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	co, err := newCoordinator(u.Port(), "", srv.Client())
	if err != nil {
		t.Fatal(err)
	}
	return co
}

// TestDecodeAgents reads GET /api/agents as the coordinator writes it
// (agents.AgentInfo, indented).
func TestDecodeAgents(t *testing.T) {
	ctx := context.Background()
	body := `[
  {"node_id": "n2", "hostname": "b", "agent_version": "v1", "engine_version": "28", "protocol": 1,
   "address": "10.0.1.5:40000", "connected_since": "2025-01-01T00:00:00Z", "session_id": "s"},
  {"node_id": "n1", "hostname": "a"},
  {"node_id": "n2", "hostname": "b"}
]`
	nodes, err := answering(t, body).agentNodes(ctx)
	if err != nil || !slices.Equal(nodes, []string{"n1", "n2"}) {
		t.Errorf("decodeAgents = %q, %v", nodes, err)
	}
	if nodes, err := answering(t, "[]\n").agentNodes(ctx); err != nil || len(nodes) != 0 {
		t.Errorf("decodeAgents([]) = %q, %v", nodes, err)
	}
	for _, bad := range []string{"", "{}", `{"error": "x"}`, "<html>"} {
		if _, err := answering(t, bad).agentNodes(ctx); err == nil {
			t.Errorf("decodeAgents(%q): no error", bad)
		}
	}
}

func TestDecodeBuildIDs(t *testing.T) {
	ctx := context.Background()
	ids, err := answering(t, `[{"id": "b1", "state": "running", "exit_code": null}, {"id": "b2"}]`).buildIDs(ctx, "running")
	if err != nil || !slices.Equal(ids, []string{"b1", "b2"}) {
		t.Errorf("decodeBuildIDs = %q, %v", ids, err)
	}
	if _, err := answering(t, `{"error": "limit"}`).buildIDs(ctx, "running"); err == nil {
		t.Error("an error answer decoded")
	}
}

// TestSettingsFile: forge.env as make up writes it, read back; the last
// line of a key wins; a given setting beats the saved one.
func TestSettingsFile(t *testing.T) {
	dir := t.TempDir()
	if s, err := (Settings{HTTPPort: "1"}).withSaved(dir); err != nil || s != (Settings{HTTPPort: "1"}) {
		t.Errorf("no forge.env: %+v, %v", s, err)
	}
	saved := Settings{HTTPPort: "9090", PublicURL: "https://f.example.com/a=b", GitHubAppID: "7", Registry: "r:5000", AgentUser: "0:0"}
	text := saved.envFileText()
	if !bytes.HasPrefix(text, []byte("# Settings of make up")) {
		t.Errorf("forge.env:\n%s", text)
	}
	text = append(text, "FORGE_REGISTRY=later\n# FORGE_USER=commented\nnonsense\n"...)
	if err := os.WriteFile(filepath.Join(dir, envFile), text, 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := Settings{GitHubAppID: "8"}.withSaved(dir)
	want := saved
	want.GitHubAppID, want.Registry = "8", "later"
	if err != nil || got != want {
		t.Errorf("withSaved = %+v, %v; want %+v", got, err, want)
	}
}

// TestMakeCerts: a CA, the coordinator's certificate and a join token
// once, and no agent certificate; a missing, foreign or aging coordinator
// certificate is issued again from the same CA; the shared agent
// certificate of older deployments goes; a kept join token stays; a CA key
// without its certificate is refused rather than replaced.
func TestMakeCerts(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certs")
	var said []string
	say := func(format string, args ...any) { said = append(said, fmt.Sprintf(format, args...)) }
	if err := makeCerts(dir, say); err != nil || len(said) != 3 {
		t.Fatalf("makeCerts: %v, said %q", err, said)
	}
	for name, mode := range map[string]os.FileMode{"ca.pem": 0o644, "ca-key.pem": 0o600, "coordinator.pem": 0o644,
		"coordinator-key.pem": 0o600, "join-token": 0o600} {
		if fi, err := os.Stat(filepath.Join(dir, name)); err != nil || fi.Mode().Perm() != mode {
			t.Errorf("%s: %v, %v; want mode %#o", name, fi, err, mode)
		}
	}
	if names := dirNames(t, dir); len(names) != 5 {
		t.Errorf("made %q, want the CA, the coordinator's pair and the join token only", names)
	}
	token, _ := os.ReadFile(filepath.Join(dir, "join-token"))
	if !regexp.MustCompile(`^forge_join_[A-Za-z0-9_-]{43}$`).Match(token) {
		t.Errorf("join token %q", token)
	}
	ca, _ := os.ReadFile(filepath.Join(dir, "ca.pem"))
	coord, _ := os.ReadFile(filepath.Join(dir, "coordinator.pem"))
	said = nil
	if err := makeCerts(dir, say); err != nil || len(said) != 0 {
		t.Errorf("second makeCerts: %v, said %q", err, said)
	}
	if again, _ := os.ReadFile(filepath.Join(dir, "coordinator.pem")); !bytes.Equal(again, coord) {
		t.Error("the second run re-issued a good coordinator certificate")
	}

	// What an older make up left: the certificate every agent shared.
	for _, f := range []string{"agent.pem", "agent-key.pem"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("old"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := makeCerts(dir, say); err != nil || len(said) != 2 || !strings.Contains(said[0], "removed "+filepath.Join(dir, "agent.pem")) {
		t.Errorf("makeCerts with the shared agent certificate: %v, said %q", err, said)
	}
	if exists(filepath.Join(dir, "agent.pem")) || exists(filepath.Join(dir, "agent-key.pem")) {
		t.Error("the shared agent certificate is still there")
	}

	reissued := func(why string) {
		t.Helper()
		said = nil
		if err := makeCerts(dir, say); err != nil || len(said) != 1 || !strings.Contains(said[0], "issued "+filepath.Join(dir, "coordinator.pem")+" ("+why) {
			t.Errorf("makeCerts: %v, said %q, want the coordinator's certificate issued because %s", err, said, why)
		}
		pool, err := wire.LoadCAPool(filepath.Join(dir, "ca.pem"))
		if err != nil {
			t.Fatal(err)
		}
		pair, err := wire.LoadKeyPair(filepath.Join(dir, "coordinator.pem"), filepath.Join(dir, "coordinator-key.pem"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := pair.Leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
			t.Errorf("the re-issued certificate: %v", err)
		}
	}
	os.Remove(filepath.Join(dir, "coordinator.pem"))
	reissued("it was missing")
	os.Remove(filepath.Join(dir, "coordinator-key.pem"))
	reissued("its key was missing")

	// Past two thirds of its life, the coordinator's certificate is
	// issued anew; before, it stays.
	own, err := loadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		age    time.Duration
		renews bool
	}{{59 * 24 * time.Hour, false}, {61 * 24 * time.Hour, true}, {100 * 24 * time.Hour, true}} {
		cert, key, err := own.Issue(wire.IssueRequest{Role: wire.RoleCoordinator, Name: "coordinator", Hosts: []string{"coordinator"},
			NotBefore: time.Now().Add(-tc.age), ValidFor: 90 * 24 * time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		if err := writePair(dir, "coordinator", cert, key); err != nil {
			t.Fatal(err)
		}
		if tc.renews {
			reissued("the old one expires ")
		} else if said = nil; makeCerts(dir, say) != nil || len(said) != 0 {
			t.Errorf("a coordinator certificate %s old: said %q", tc.age, said)
		}
	}
	// One from another CA.
	other, err := wire.NewCA("Other CA", 0)
	if err != nil {
		t.Fatal(err)
	}
	cert, key, err := other.Issue(wire.IssueRequest{Role: wire.RoleCoordinator, Name: "coordinator", Hosts: []string{"coordinator"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := writePair(dir, "coordinator", cert, key); err != nil {
		t.Fatal(err)
	}
	reissued("the old one was not from this CA")

	if again, _ := os.ReadFile(filepath.Join(dir, "ca.pem")); !bytes.Equal(again, ca) {
		t.Error("the CA changed")
	}
	if again, _ := os.ReadFile(filepath.Join(dir, "join-token")); !bytes.Equal(again, token) {
		t.Error("the join token changed")
	}

	// A join token written by hand is kept; a blank one is made anew; one
	// that is not one word is refused, and stays as it was.
	tokenFile := filepath.Join(dir, "join-token")
	os.WriteFile(tokenFile, []byte("forge_join_mine\n"), 0o600)
	if said = nil; makeCerts(dir, say) != nil || len(said) != 0 {
		t.Errorf("a token written by hand: said %q", said)
	}
	os.WriteFile(tokenFile, []byte("\n"), 0o600)
	if said = nil; makeCerts(dir, say) != nil || len(said) != 1 || !strings.Contains(said[0], "made a join token") {
		t.Errorf("a blank token: said %q", said)
	}
	os.WriteFile(tokenFile, []byte("two words"), 0o600)
	if err := makeCerts(dir, say); err == nil || !strings.Contains(err.Error(), tokenFile) {
		t.Errorf("a token of two words: %v", err)
	}
	if kept, _ := os.ReadFile(tokenFile); string(kept) != "two words" {
		t.Errorf("a refused token became %q", kept)
	}

	os.Remove(filepath.Join(dir, "ca.pem"))
	if err := makeCerts(dir, say); err == nil || !strings.Contains(err.Error(), "without ca.pem") {
		t.Errorf("makeCerts with a lone CA key: %v", err)
	}
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}
