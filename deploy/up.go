package deploy

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
	"unicode"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/api/types/system"

	"github.com/forge-ci/forge/internal/atomicfile"
)

// UpConfig is forge deploy up's configuration.
type UpConfig struct {
	Config
	// Settings as given (flags or environment); the empty ones come from
	// forge.env, else their defaults.
	Settings Settings
	// GitHubKeyFile is the GitHub App's private key, copied into the state
	// folder (FORGE_GITHUB_KEY_FILE); later runs need it no more.
	GitHubKeyFile string
	// GitHubClientSecretFile is the secret of the OAuth client that signs
	// people in with GitHub, copied into the state folder likewise
	// (FORGE_GITHUB_CLIENT_SECRET_FILE).
	GitHubClientSecretFile string
	// Version is the images' tag (make's VERSION); empty: git describe
	// --always --dirty, else dev.
	Version string

	// Socket is the manager's Docker socket: the services get its group
	// ("/var/run/docker.sock").
	Socket string
	// DockerCLI runs the docker command with env added to this process's
	// environment, and returns its output; nil runs the docker on PATH.
	DockerCLI func(ctx context.Context, env []string, args ...string) ([]byte, error)
}

const (
	defaultUpTimeout = 180 * time.Second
	defaultSocket    = "/var/run/docker.sock"
	// coordinatorHost is the coordinator's service name in stack.yml: the
	// host agents dial, which its certificate must name.
	coordinatorHost = "coordinator"
	// cliTimeout bounds one docker command (a registry may be slow).
	cliTimeout = 5 * time.Minute
)

// The files of the state folder that become Docker secrets, besides the
// certificates.
const (
	webhookSecretFile = "webhook-secret"
	// adminTokenFile holds the bearer token with every right that make up
	// and make down, and the operator, use against the coordinator's API.
	adminTokenFile = "admin-token"
	// sessionKeyFile signs the coordinator's session cookies: kept here,
	// sessions outlive a new data volume.
	sessionKeyFile = "session-key"
	// secretsKeyFile seals repositories' secrets in the coordinator's
	// database (--secrets-key-file): lose it, and they must all be set
	// again.
	secretsKeyFile   = "secrets-key"
	appKeyFile       = "github-app-key.pem"
	clientSecretFile = "github-client-secret"
	// adminTokenPrefix makes the token recognisable in logs and to
	// secret scanners.
	adminTokenPrefix = "forge_admin_"
)

// Up deploys Forge on this swarm, creating what is missing, and waits
// until it works. Running it again is safe: what exists is kept, and an
// unchanged deployment is left running as it is. Every failure is written
// to Err, like every other line, before Up returns it.
func Up(ctx context.Context, c UpConfig) error {
	if c.Timeout <= 0 {
		c.Timeout = defaultUpTimeout
	}
	if c.Socket == "" {
		c.Socket = defaultSocket
	}
	if c.DockerCLI == nil {
		c.DockerCLI = dockerCLI
	}
	r, err := c.start("make up")
	if err != nil {
		return r.finish(err)
	}
	u := &up{run: r, c: c}
	return r.finish(u.up(ctx))
}

// up is one run of Up.
type up struct {
	*run
	c     UpConfig
	info  system.Info
	began time.Time
	s     Settings // as resolved; User and AgentUser as given
	// The services' uid:gid, and the uid the secrets are given to.
	user, agentUser, uid string
	// The Docker secrets the deployment uses, in the order of secretFiles.
	secrets []deployed
	token   string // the admin token, for the coordinator's API
	// The forge.deployment labels of this deployment's services.
	coordinatorDeployment, agentDeployment string
	detach                                 bool // docker stack deploy has --detach
}

func (u *up) up(ctx context.Context) error {
	if err := u.checkEngine(ctx); err != nil {
		return err
	}
	if err := u.settings(); err != nil {
		return err
	}
	if err := makeCerts(filepath.Join(u.StateDir, "certs"), u.say); err != nil {
		return err
	}
	if err := u.makeRandomFiles(); err != nil {
		return err
	}
	token, err := readAdminToken(u.StateDir)
	if err != nil {
		return err
	}
	u.token = token
	if err := u.makeSecrets(ctx); err != nil {
		return err
	}
	if err := u.deploy(ctx); err != nil {
		return err
	}
	if err := u.wait(ctx); err != nil {
		return err
	}
	u.removeUnused(ctx)
	return u.report(ctx)
}

// checkEngine: the docker command, a swarm manager, its local socket.
func (u *up) checkEngine(ctx context.Context) error {
	info, err := u.swarmManager(ctx)
	if err != nil {
		return err
	}
	if state := info.Swarm.LocalNodeState; state != swarm.LocalNodeStateActive {
		return fmt.Errorf("Docker is not in swarm mode (%s), and make up does not turn it on for you.\n"+
			"  On the machine that is to be the manager:\n"+
			"      docker swarm init --advertise-addr <this machine's address on the cluster network>\n"+
			"  (a single machine: docker swarm init --advertise-addr 127.0.0.1); on every other node, the\n"+
			"  command that 'docker swarm join-token worker' prints. Then run make up again.", state)
	}
	u.info = info
	if err := u.probeCLI(ctx); err != nil {
		return err
	}
	if fi, err := os.Stat(u.c.Socket); err != nil || fi.Mode()&fs.ModeSocket == 0 {
		return fmt.Errorf("%s is not here: the coordinator uses the manager's local Docker socket", u.c.Socket)
	}
	return nil
}

// settings resolves, checks and saves the settings, and copies the
// GitHub App's key into the state folder.
func (u *up) settings() error {
	if err := os.MkdirAll(u.StateDir, 0o700); err != nil {
		return fmt.Errorf("the state folder: %w", err)
	}
	if err := os.Chmod(u.StateDir, 0o700); err != nil {
		return fmt.Errorf("the state folder: %w", err)
	}
	s, err := u.c.Settings.withSaved(u.StateDir)
	if err != nil {
		return err
	}
	if s.HTTPPort == "" {
		s.HTTPPort = defaultHTTPPort
	}
	if !digits(s.HTTPPort) {
		return fmt.Errorf("FORGE_HTTP_PORT=%s: want a port number", s.HTTPPort)
	}
	if s.GitHubAppID != "" && !digits(s.GitHubAppID) {
		return fmt.Errorf("FORGE_GITHUB_APP_ID=%s: want the App's number (App settings, About)", s.GitHubAppID)
	}
	if err := u.copyIn(u.c.GitHubKeyFile, "FORGE_GITHUB_KEY_FILE", appKeyFile, "the GitHub App key", isPEMKey); err != nil {
		return err
	}
	switch {
	case s.GitHubAppID != "" && !exists(u.stateFile(appKeyFile)):
		return errors.New("FORGE_GITHUB_APP_ID is set but there is no App private key: add FORGE_GITHUB_KEY_FILE=path/to/app.private-key.pem")
	case s.GitHubAppID == "" && exists(u.stateFile(appKeyFile)):
		return fmt.Errorf("there is a GitHub App key (%s) but no App id: add FORGE_GITHUB_APP_ID=<id>", u.stateFile(appKeyFile))
	}
	if err := u.copyIn(u.c.GitHubClientSecretFile, "FORGE_GITHUB_CLIENT_SECRET_FILE", clientSecretFile,
		"the GitHub OAuth client secret", notEmpty); err != nil {
		return err
	}
	switch {
	case s.GitHubClientID != "" && !exists(u.stateFile(clientSecretFile)):
		return errors.New("FORGE_GITHUB_CLIENT_ID is set but there is no client secret: add FORGE_GITHUB_CLIENT_SECRET_FILE=path/to/client-secret")
	case s.GitHubClientID == "" && exists(u.stateFile(clientSecretFile)):
		return fmt.Errorf("there is a GitHub OAuth client secret (%s) but no client id: add FORGE_GITHUB_CLIENT_ID=<id>", u.stateFile(clientSecretFile))
	}
	if s.GitHubWeb != "" {
		if w, err := url.Parse(s.GitHubWeb); err != nil || (w.Scheme != "http" && w.Scheme != "https") || w.Host == "" {
			return fmt.Errorf("FORGE_GITHUB_WEB=%s: want GitHub's web address, e.g. https://github.example.com", s.GitHubWeb)
		}
	}
	if err := u.users(s); err != nil {
		return err
	}
	u.s = s
	return atomicfile.Write(filepath.Join(u.StateDir, envFile), s.envFileText(), 0o644)
}

func digits(s string) bool {
	return s != "" && strings.Trim(s, "0123456789") == ""
}

func (u *up) stateFile(name string) string { return filepath.Join(u.StateDir, name) }

// copyIn copies from, the file the setting env names, into the state
// folder as name (0600) when it differs from the copy there: later runs
// need the setting no more.
func (u *up) copyIn(from, env, name, what string, check func([]byte) error) error {
	if from == "" {
		return nil
	}
	content, err := os.ReadFile(from)
	if err != nil {
		return fmt.Errorf("%s=%s: cannot read it", env, from)
	}
	if err := check(content); err != nil {
		return fmt.Errorf("%s=%s %v", env, from, err)
	}
	to := u.stateFile(name)
	if kept, err := os.ReadFile(to); err == nil && bytes.Equal(kept, content) {
		return nil
	}
	if err := atomicfile.Write(to, content, 0o600); err != nil {
		return fmt.Errorf("copy %s: %w", what, err)
	}
	u.say("copied %s into %s", what, to)
	return nil
}

func isPEMKey(b []byte) error {
	if !bytes.Contains(b, []byte("PRIVATE KEY-----")) {
		return errors.New("is not a PEM private key (GitHub App settings, Private keys)")
	}
	return nil
}

func notEmpty(b []byte) error {
	if len(bytes.TrimSpace(b)) == 0 {
		return errors.New("is empty")
	}
	return nil
}

// users sets the services' uid:gid. They run as an unprivileged uid with
// the group that may use the docker socket, and nothing more. Swarm sets
// one user per service, so every node's socket must have that group id;
// nodes that differ need FORGE_AGENT_USER (or FORGE_AGENT_USER=0:0).
func (u *up) users(s Settings) error {
	fi, err := os.Stat(u.c.Socket)
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("%s: cannot read its group", u.c.Socket)
	}
	u.user, u.agentUser = s.User, s.AgentUser
	if u.user == "" {
		u.user = fmt.Sprintf("65532:%d", st.Gid)
	}
	if u.agentUser == "" {
		u.agentUser = u.user
	}
	uid, _, ok := strings.Cut(u.user, ":")
	if !ok {
		return fmt.Errorf("FORGE_USER=%s: want uid:gid", u.user)
	}
	agentUID, _, ok := strings.Cut(u.agentUser, ":")
	if !ok {
		return fmt.Errorf("FORGE_AGENT_USER=%s: want uid:gid", u.agentUser)
	}
	if uid != agentUID {
		return errors.New("FORGE_USER and FORGE_AGENT_USER must have the same uid (the secrets are given to it)")
	}
	u.uid = uid
	return nil
}

// randomFile is a random secret of the state folder, made when it is
// missing or blank and kept after that: rotating it is rewriting it.
type randomFile struct {
	name, what string // its file name; what make up calls it
	make       func() string
	check      func(kept string) error // what a kept one must be; nil: anything
	// fix says what to do about a kept one that fails check; "": make
	// up makes a new one once it is removed.
	fix string
}

var randomFiles = []randomFile{
	{webhookSecretFile, "a random webhook secret", randomHex, nil, ""},
	{adminTokenFile, "an admin token", func() string { return adminTokenPrefix + randomHex() }, nil, ""},
	{sessionKeyFile, "a session key", randomHex, checkHexKey, ""},
	{secretsKeyFile, "a secrets key", randomHex, checkHexKey,
		"put the right key back: a new one cannot open the secrets sealed with it (removed, make up makes a new one, and every secret must be set again)"},
}

// randomHex is 32 random bytes in hex.
func randomHex() string {
	b := make([]byte, 32)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// checkHexKey: the coordinator's --session-key-file and
// --secrets-key-file are 32 bytes in hex.
func checkHexKey(key string) error {
	if b, err := hex.DecodeString(key); err != nil || len(b) != 32 {
		return errors.New("want 64 hex characters (32 random bytes)")
	}
	return nil
}

// makeRandomFiles makes the random secrets that are missing, and checks
// the ones kept.
func (u *up) makeRandomFiles() error {
	for _, f := range randomFiles {
		file := u.stateFile(f.name)
		kept, err := os.ReadFile(file)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("read %s: %w", file, err)
		}
		if k := strings.TrimSpace(string(kept)); k != "" {
			if f.check != nil {
				if err := f.check(k); err != nil {
					fix := f.fix
					if fix == "" {
						fix = "remove it and make up makes a new one"
					}
					return fmt.Errorf("%s: %v; %s", file, err, fix)
				}
			}
			continue
		}
		if err := atomicfile.Write(file, []byte(f.make()), 0o600); err != nil {
			return fmt.Errorf("write %s: %w", file, err)
		}
		u.say("made %s: %s", f.what, file)
	}
	return nil
}

// readAdminToken reads the admin token of the state folder: "" when there
// is none, trailing whitespace trimmed as the coordinator does.
func readAdminToken(stateDir string) (string, error) {
	b, err := os.ReadFile(filepath.Join(stateDir, adminTokenFile))
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("the admin token: %w", err)
	}
	return strings.TrimRightFunc(string(b), unicode.IsSpace), nil
}

// secretFile is a file of the state folder given to the services as a
// Docker secret, and the variable that names the secret in the stack files.
type secretFile struct {
	what, env, path string
}

func (u *up) secretFiles() []secretFile {
	certs := filepath.Join(u.StateDir, "certs")
	files := []secretFile{
		{"ca", "FORGE_SECRET_CA", filepath.Join(certs, "ca.pem")},
		// The coordinator signs agents' certificates with the CA key.
		{"ca_key", "FORGE_SECRET_CA_KEY", filepath.Join(certs, "ca-key.pem")},
		{"coordinator_cert", "FORGE_SECRET_COORDINATOR_CERT", filepath.Join(certs, "coordinator.pem")},
		{"coordinator_key", "FORGE_SECRET_COORDINATOR_KEY", filepath.Join(certs, "coordinator-key.pem")},
		{"join_token", "FORGE_SECRET_JOIN_TOKEN", filepath.Join(certs, JoinTokenFile)},
		{"webhook_secret", "FORGE_SECRET_WEBHOOK", u.stateFile(webhookSecretFile)},
		{"admin_token", "FORGE_SECRET_ADMIN_TOKEN", u.stateFile(adminTokenFile)},
		{"session_key", "FORGE_SECRET_SESSION_KEY", u.stateFile(sessionKeyFile)},
		{"secrets_key", "FORGE_SECRET_SECRETS_KEY", u.stateFile(secretsKeyFile)},
	}
	if u.s.GitHubAppID != "" {
		files = append(files, secretFile{"github_app_key", "FORGE_SECRET_GITHUB_KEY", u.stateFile(appKeyFile)})
	}
	if u.s.GitHubClientID != "" {
		files = append(files, secretFile{"github_client_secret", "FORGE_SECRET_GITHUB_CLIENT_SECRET", u.stateFile(clientSecretFile)})
	}
	return files
}

// deployed is a Docker secret of the deployment.
type deployed struct {
	secretFile
	name string
}

// secretName names the Docker secret that holds content. Secrets cannot
// change, so the name carries a hash of the content: new content is a new
// secret, and the same file is the same secret.
func secretName(stack, what string, content []byte) string {
	sum := sha256.Sum256(content)
	return stack + "_" + what + "_" + hex.EncodeToString(sum[:])[:12]
}

// makeSecrets creates the deployment's secrets that are missing.
func (u *up) makeSecrets(ctx context.Context) error {
	u.secrets = nil
	for _, f := range u.secretFiles() {
		content, err := os.ReadFile(f.path)
		if err != nil {
			return err
		}
		name := secretName(u.Stack, f.what, content)
		_, _, err = u.engine.SecretInspectWithRaw(ctx, name)
		if cerrdefs.IsNotFound(err) {
			_, err = u.engine.SecretCreate(ctx, swarm.SecretSpec{
				Annotations: swarm.Annotations{Name: name, Labels: map[string]string{"forge.stack": u.Stack, "forge.secret": f.what}},
				Data:        content,
			})
			if err == nil {
				u.say("created the Docker secret %s", name)
			}
		}
		if err != nil {
			return fmt.Errorf("the Docker secret %s: %w", name, err)
		}
		u.secrets = append(u.secrets, deployed{f, name})
	}
	return nil
}

// secret is the name of the deployment's secret of what ("" if none).
func (u *up) secret(what string) string {
	for _, s := range u.secrets {
		if s.what == what {
			return s.name
		}
	}
	return ""
}

// removeUnused removes the stack's secrets that the deployment no longer
// uses (replaced certificates, an old webhook secret), now that the
// services run with the new ones. One still in use stays for a later run.
func (u *up) removeUnused(ctx context.Context) {
	all, err := u.engine.SecretList(ctx, swarm.SecretListOptions{Filters: filters.NewArgs(filters.Arg("label", "forge.stack="+u.Stack))})
	if err != nil {
		u.warn("cannot list the stack's secrets: %v", err)
		return
	}
	for _, name := range unusedSecrets(all, u.secrets) {
		if err := u.engine.SecretRemove(ctx, name); err == nil {
			u.say("removed the unused secret %s", name)
		}
	}
}

// unusedSecrets names the secrets of all that are not used.
func unusedSecrets(all []swarm.Secret, used []deployed) []string {
	var unused []string
outer:
	for _, s := range all {
		for _, d := range used {
			if s.Spec.Name == d.name {
				continue outer
			}
		}
		unused = append(unused, s.Spec.Name)
	}
	return unused
}

// dockerCLI runs the docker on PATH.
func dockerCLI(ctx context.Context, env []string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, cliTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "docker", args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.WaitDelay = 5 * time.Second
	return cmd.CombinedOutput()
}

// gitDescribe is the version make gives the images when VERSION is unset.
func gitDescribe(ctx context.Context) string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "git", "describe", "--always", "--dirty").Output()
	if v := strings.TrimSpace(string(out)); err == nil && v != "" {
		return v
	}
	return "dev"
}
