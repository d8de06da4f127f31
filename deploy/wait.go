package deploy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/pkg/stdcopy"

	"github.com/forge-ci/forge/coordinator/web"
)

// wait waits, at most Timeout, until both services run this deployment,
// the coordinator answers, and every node that takes tasks has its agent
// connected. When it gives up it shows what may explain why.
func (u *up) wait(ctx context.Context) error {
	co, err := newCoordinator(u.s.HTTPPort, u.token, u.HTTP)
	if err != nil {
		return err
	}
	seconds := int(u.Timeout.Seconds())
	deadline := time.Now().Add(u.Timeout)
	u.say("waiting (at most %ds) for the coordinator at %s and an agent on every node", seconds, co.base)
	lookCtx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	what, missing := "the services to converge", []string(nil)
	for {
		w, m, done := u.look(lookCtx, co)
		if done {
			return nil
		}
		if lookCtx.Err() == nil { // a look the deadline cut short tells nothing
			what, missing = w, m
		}
		if !time.Now().Before(deadline) {
			u.diagnose(ctx, missing)
			return fmt.Errorf("gave up after %ds waiting for %s", seconds, what)
		}
		if u.pause(lookCtx) != nil && ctx.Err() != nil {
			return context.Cause(ctx)
		}
	}
}

// look says what is still awaited, and which nodes have no agent yet.
func (u *up) look(ctx context.Context, co coordinator) (what string, missing []string, done bool) {
	if !u.converged(ctx, "coordinator", u.coordinatorDeployment) || !u.converged(ctx, "agent", u.agentDeployment) {
		return "the services to converge", nil, false
	}
	if !co.healthy(ctx) {
		return "the coordinator to answer " + co.base + "/healthz", nil, false
	}
	nodes, err := u.engine.NodeList(ctx, swarm.NodeListOptions{})
	if err != nil {
		return "the list of nodes (" + err.Error() + ")", nil, false
	}
	agents, err := co.agentNodes(ctx) // none yet while it fails
	if errors.Is(err, web.ErrUnauthorized) {
		return "the coordinator to accept the admin token of " + u.stateFile(adminTokenFile) +
			" (GET /api/agents: " + err.Error() + ")", nil, false
	}
	missing = missingAgents(readyNodes(nodes), agents)
	if len(missing) == 0 {
		return "", nil, true
	}
	return "an agent on every node (missing: " + strings.Join(missing, " ") + ")", missing, false
}

func (u *up) converged(ctx context.Context, service, deployment string) bool {
	tasks, err := u.engine.TaskList(ctx, swarm.TaskListOptions{Filters: filters.NewArgs(
		filters.Arg("service", u.service(service)), filters.Arg("desired-state", "running"))})
	return err == nil && converged(tasks, deployment)
}

// converged: every task swarm wants running carries this deployment's
// label (tasks of an earlier one are being replaced) and runs.
func converged(tasks []swarm.Task, deployment string) bool {
	for _, t := range tasks {
		if t.Status.State != swarm.TaskStateRunning || t.Spec.ContainerSpec == nil ||
			t.Spec.ContainerSpec.Labels["forge.deployment"] != deployment {
			return false
		}
	}
	return len(tasks) > 0
}

// readyNodes are the nodes that must have an agent: ready, and taking
// tasks; sorted.
func readyNodes(nodes []swarm.Node) []string {
	var ids []string
	for _, n := range nodes {
		if n.Status.State == swarm.NodeStateReady && n.Spec.Availability == swarm.NodeAvailabilityActive {
			ids = append(ids, n.ID)
		}
	}
	slices.Sort(ids)
	return ids
}

// missingAgents are the nodes of expected that agents lacks.
func missingAgents(expected, agents []string) []string {
	var missing []string
	for _, n := range expected {
		if !slices.Contains(agents, n) {
			missing = append(missing, n)
		}
	}
	return missing
}

// socketDenied is what an agent logs when its node's socket has another group.
var socketDenied = regexp.MustCompile(`docker.sock.*permission denied`)

// diagnose shows the services' tasks and recent logs, and the nodes
// without an agent.
func (u *up) diagnose(ctx context.Context, missing []string) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	nodes, _ := u.engine.NodeList(ctx, swarm.NodeListOptions{})
	hostname := func(id string) string {
		for _, n := range nodes {
			if n.ID == id {
				return n.Description.Hostname
			}
		}
		return id
	}
	for _, s := range []string{"coordinator", "agent"} {
		name := u.service(s)
		u.warn("tasks of %s:", name)
		tasks, err := u.engine.TaskList(ctx, swarm.TaskListOptions{Filters: filters.NewArgs(filters.Arg("service", name))})
		if err != nil {
			u.warn("  %v", err)
		}
		slices.SortFunc(tasks, func(a, b swarm.Task) int { return b.Meta.CreatedAt.Compare(a.Meta.CreatedAt) })
		for _, t := range tasks[:min(len(tasks), 8)] {
			state := string(t.Status.State)
			if state != "" {
				state = strings.ToUpper(state[:1]) + state[1:]
			}
			u.warn("  %s: %s %s ago %s", hostname(t.NodeID), state, time.Since(t.Status.Timestamp).Round(time.Second), t.Status.Err)
		}
		u.warn("its log since make up began:")
		for _, line := range u.logs(ctx, name, "10") {
			u.warn("  %s", line)
		}
	}
	for _, n := range missing {
		u.warn("no agent connected from node %s (%s)", n, hostname(n))
	}
	for _, line := range u.logs(ctx, u.service("agent"), "all") {
		if socketDenied.MatchString(line) {
			u.warn("an agent may not use its node's docker socket: that node's socket has another group;")
			u.warn("set FORGE_AGENT_USER=65532:<its gid> (stat -c %%g /var/run/docker.sock there) or FORGE_AGENT_USER=0:0")
			break
		}
	}
}

// logs are the last tail lines a service logged since up began (or what
// kept them from being read).
func (u *up) logs(ctx context.Context, service, tail string) []string {
	rc, err := u.engine.ServiceLogs(ctx, service, container.LogsOptions{
		ShowStdout: true, ShowStderr: true, Since: u.began.UTC().Format(time.RFC3339), Tail: tail})
	if err != nil {
		return []string{err.Error()}
	}
	defer rc.Close()
	var buf bytes.Buffer
	if _, err := stdcopy.StdCopy(&buf, &buf, rc); err != nil {
		fmt.Fprintf(&buf, "\n%v", err)
	}
	var lines []string
	sc := bufio.NewScanner(&buf)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	return lines
}

// report says where Forge is and what to do next.
func (u *up) report(ctx context.Context) error {
	nodes, err := u.engine.NodeList(ctx, swarm.NodeListOptions{})
	if err != nil {
		return fmt.Errorf("list the swarm's nodes: %w", err)
	}
	addr, port, state := u.info.Swarm.NodeAddr, u.s.HTTPPort, u.StateDir
	base := u.s.PublicURL
	if base == "" {
		base = "http://" + addr + ":" + port
	}
	base = strings.TrimSuffix(base, "/")
	u.say("Forge is up: the coordinator and %d agent(s), one on every node", len(readyNodes(nodes)))
	u.say("  UI and API      http://%s:%s/   (GET /api/agents, /api/builds)", addr, port)
	u.say("  webhook URL     %s/webhook", base)
	u.say("  webhook secret  %s", state+"/"+webhookSecretFile)
	u.say("  admin token     %s (every right: send it as Authorization: Bearer <token>, or", state+"/"+adminTokenFile)
	u.say("                  FORGE_SERVER=http://%s:%s FORGE_TOKEN=$(cat %s) bin/forge builds)", addr, port, state+"/"+adminTokenFile)
	u.say("  certificates    %s (the join token agents join with: %s)", state+"/certs", state+"/certs/"+JoinTokenFile)
	u.say("  settings        %s", state+"/"+envFile)
	if u.s.GitHubAppID == "" {
		u.say("next: create a GitHub App with that webhook URL and secret (permissions: checks write,")
		u.say("      contents read, commit statuses write, pull requests read; events: check run, check suite,")
		u.say("      pull request, push), install it, then")
		u.say("      make up FORGE_GITHUB_APP_ID=<App id> FORGE_GITHUB_KEY_FILE=<the App's private key .pem>")
		u.say("      Until then the coordinator answers webhooks 503.")
	} else {
		u.say("GitHub App %s configured; its webhook must be %s/webhook with the secret above.", u.s.GitHubAppID, base)
	}
	if u.s.GitHubClientID != "" {
		u.say("Sign-in with GitHub: OAuth client %s; its callback URL must be %s/login/callback.", u.s.GitHubClientID, base)
	}
	if u.s.PublicURL == "" {
		u.say("set FORGE_PUBLIC_URL (e.g. https://forge.example.com) for links in check runs and commit statuses")
	}
	u.say("stop: make down (make down PURGE=1 also deletes the secrets, the data volume and %s)", state)
	return nil
}
