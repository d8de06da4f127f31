package deploy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/swarm"
)

// probeCLI checks that the docker command is there, and whether its stack
// deploy has --detach: newer ones wait for the services to converge unless
// told not to, and up waits itself, with a deadline.
func (u *up) probeCLI(ctx context.Context) error {
	out, err := u.c.DockerCLI(ctx, nil, "stack", "deploy", "--help")
	if errors.Is(err, exec.ErrNotFound) {
		return errors.New("the docker command is not installed")
	}
	if err != nil {
		return fmt.Errorf("docker stack deploy --help: %w\n%s", err, out)
	}
	u.detach = bytes.Contains(out, []byte("--detach"))
	return nil
}

// deploy runs docker stack deploy with the compose files and the
// variables they interpolate. Swarm replaces a service's tasks only when
// its spec changes, and each spec carries a forge.deployment label that
// hashes what it is deployed with: an unchanged deployment stays as it is.
func (u *up) deploy(ctx context.Context) error {
	version := u.c.Version
	if version == "" {
		version = gitDescribe(ctx)
	}
	prefix, resolve := "", "never" // the images are on this machine only
	if u.s.Registry != "" {
		prefix = strings.TrimSuffix(u.s.Registry, "/") + "/"
		resolve = "always" // pin the pushed images' digests, which every node pulls
	}
	coordinatorImage, err := u.imageID(ctx, prefix+"forge/coordinator:"+version)
	if err != nil {
		return err
	}
	agentImage, err := u.imageID(ctx, prefix+"forge/agent:"+version)
	if err != nil {
		return err
	}
	u.began = time.Now()
	u.agentDeployment = deploymentDigest(agentImage, u.agentUser, u.secret("ca"), u.secret("join_token"))
	inputs := []string{coordinatorImage, u.user, u.info.Swarm.NodeID, u.s.HTTPPort, u.s.PublicURL, u.s.GitHubAPI, u.s.GitHubAppID,
		u.s.GitHubClientID, u.s.GitHubWeb}
	for _, s := range u.secrets {
		inputs = append(inputs, s.name)
	}
	u.coordinatorDeployment = deploymentDigest(inputs...)

	dir, err := os.MkdirTemp("", "forge-stack-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	args := []string{"stack", "deploy"}
	if u.detach {
		args = append(args, "--detach=true")
	}
	args = append(args, "--prune", "--resolve-image", resolve)
	files := map[string][]byte{"stack.yml": stackYML}
	if u.s.GitHubAppID != "" {
		files["stack.github.yml"] = stackGitHubYML
	}
	if u.s.GitHubClientID != "" {
		files["stack.signin.yml"] = stackSigninYML
	}
	for _, name := range []string{"stack.yml", "stack.github.yml", "stack.signin.yml"} {
		if content, ok := files[name]; ok {
			if err := os.WriteFile(filepath.Join(dir, name), content, 0o644); err != nil {
				return err
			}
			args = append(args, "-c", filepath.Join(dir, name))
		}
	}
	args = append(args, u.Stack)

	u.say("deploying stack %s (%sforge/coordinator and forge/agent:%s, as %s)", u.Stack, prefix, version, u.user)
	out, err := u.c.DockerCLI(ctx, u.stackEnv(version, prefix), args...)
	if err != nil {
		u.Err.Write(out)
		return fmt.Errorf("docker stack deploy failed: %w", err)
	}
	for line := range strings.Lines(string(out)) {
		u.say("%s", strings.TrimRight(line, "\n"))
	}
	if u.s.Registry == "" {
		nodes, err := u.engine.NodeList(ctx, swarm.NodeListOptions{})
		if err != nil {
			return fmt.Errorf("list the swarm's nodes: %w", err)
		}
		if len(nodes) > 1 {
			u.say("note: the images exist on this machine only. Every other node needs forge/agent:%s:", version)
			u.say("      docker save forge/agent:%s | ssh NODE docker load   (or set FORGE_REGISTRY)", version)
		}
	}
	return nil
}

func (u *up) imageID(ctx context.Context, ref string) (string, error) {
	img, err := u.engine.ImageInspect(ctx, ref)
	if cerrdefs.IsNotFound(err) {
		return "", fmt.Errorf("image %s is missing: run make images (make up does)", ref)
	}
	if err != nil {
		return "", fmt.Errorf("image %s: %w", ref, err)
	}
	return img.ID, nil
}

// deploymentDigest is the forge.deployment label of a service: a hash of
// what it is deployed with and of both compose files, so a rebuilt image
// under the same tag, a new secret or a changed setting changes it.
func deploymentDigest(inputs ...string) string {
	h := sha256.New()
	for _, in := range inputs {
		io.WriteString(h, in+"\n")
	}
	h.Write(stackYML)
	h.Write(stackGitHubYML)
	h.Write(stackSigninYML)
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// stackEnv is what docker stack deploy runs with: the variables the
// compose files interpolate, and the engine this run talks to.
func (u *up) stackEnv(version, prefix string) []string {
	env := []string{
		"DOCKER_HOST=" + u.engine.DaemonHost(),
		"FORGE_VERSION=" + version,
		"FORGE_IMAGE_PREFIX=" + prefix,
		"FORGE_COORDINATOR_NODE=" + u.info.Swarm.NodeID,
		"FORGE_HTTP_PORT=" + u.s.HTTPPort,
		"FORGE_PUBLIC_URL=" + u.s.PublicURL,
		"FORGE_GITHUB_API=" + u.s.GitHubAPI,
		"FORGE_GITHUB_APP_ID=" + u.s.GitHubAppID,
		"FORGE_GITHUB_CLIENT_ID=" + u.s.GitHubClientID,
		"FORGE_GITHUB_WEB=" + u.s.GitHubWeb,
		"FORGE_USER=" + u.user,
		"FORGE_AGENT_USER=" + u.agentUser,
		"FORGE_UID=" + u.uid,
		"FORGE_COORDINATOR_DEPLOYMENT=" + u.coordinatorDeployment,
		"FORGE_AGENT_DEPLOYMENT=" + u.agentDeployment,
	}
	for _, s := range u.secrets {
		env = append(env, s.env+"="+s.name)
	}
	// Not one from this process's environment.
	if u.secret("github_app_key") == "" {
		env = append(env, "FORGE_SECRET_GITHUB_KEY=")
	}
	if u.secret("github_client_secret") == "" {
		env = append(env, "FORGE_SECRET_GITHUB_CLIENT_SECRET=")
	}
	return env
}
