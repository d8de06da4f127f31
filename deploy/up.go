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
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

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
	if err := u.webhookSecret(); err != nil {
		return err
	}
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
	if err := u.copyAppKey(); err != nil {
		return err
	}
	_, err = os.Stat(u.appKeyFile())
	switch {
	case s.GitHubAppID != "" && err != nil:
		return errors.New("FORGE_GITHUB_APP_ID is set but there is no App private key: add FORGE_GITHUB_KEY_FILE=path/to/app.private-key.pem")
	case s.GitHubAppID == "" && err == nil:
		return fmt.Errorf("there is a GitHub App key (%s) but no App id: add FORGE_GITHUB_APP_ID=<id>", u.appKeyFile())
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

func (u *up) appKeyFile() string { return filepath.Join(u.StateDir, "github-app-key.pem") }

// copyAppKey copies FORGE_GITHUB_KEY_FILE into the state folder when it
// differs from the copy there.
func (u *up) copyAppKey() error {
	from := u.c.GitHubKeyFile
	if from == "" {
		return nil
	}
	key, err := os.ReadFile(from)
	if err != nil {
		return fmt.Errorf("FORGE_GITHUB_KEY_FILE=%s: cannot read it", from)
	}
	if !bytes.Contains(key, []byte("PRIVATE KEY-----")) {
		return fmt.Errorf("FORGE_GITHUB_KEY_FILE=%s is not a PEM private key (GitHub App settings, Private keys)", from)
	}
	if kept, err := os.ReadFile(u.appKeyFile()); err == nil && bytes.Equal(kept, key) {
		return nil
	}
	if err := atomicfile.Write(u.appKeyFile(), key, 0o600); err != nil {
		return fmt.Errorf("copy the GitHub App key: %w", err)
	}
	u.say("copied the GitHub App key into %s", u.appKeyFile())
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

// webhookSecret makes a random webhook secret when there is none.
func (u *up) webhookSecret() error {
	file := filepath.Join(u.StateDir, "webhook-secret")
	if fi, err := os.Stat(file); err == nil && fi.Size() > 0 {
		return nil
	}
	b := make([]byte, 32)
	rand.Read(b)
	if err := atomicfile.Write(file, []byte(hex.EncodeToString(b)), 0o600); err != nil {
		return fmt.Errorf("the webhook secret: %w", err)
	}
	u.say("made a random webhook secret: %s", file)
	return nil
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
		{"coordinator_cert", "FORGE_SECRET_COORDINATOR_CERT", filepath.Join(certs, "coordinator.pem")},
		{"coordinator_key", "FORGE_SECRET_COORDINATOR_KEY", filepath.Join(certs, "coordinator-key.pem")},
		{"agent_cert", "FORGE_SECRET_AGENT_CERT", filepath.Join(certs, "agent.pem")},
		{"agent_key", "FORGE_SECRET_AGENT_KEY", filepath.Join(certs, "agent-key.pem")},
		{"webhook_secret", "FORGE_SECRET_WEBHOOK", filepath.Join(u.StateDir, "webhook-secret")},
	}
	if u.s.GitHubAppID != "" {
		files = append(files, secretFile{"github_app_key", "FORGE_SECRET_GITHUB_KEY", u.appKeyFile()})
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
