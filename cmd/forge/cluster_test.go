//go:build cluster

package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"

	"github.com/forge-ci/forge/agent"
	"github.com/forge-ci/forge/coordinator/agents"
	"github.com/forge-ci/forge/coordinator/plan"
	"github.com/forge-ci/forge/internal/cluster"
	"github.com/forge-ci/forge/internal/dockertest"
	"github.com/forge-ci/forge/internal/fakegithub"
	"github.com/forge-ci/forge/internal/fakegithub/fakegithubtest"
	"github.com/forge-ci/forge/internal/syncbuf"
	"github.com/forge-ci/forge/wire"
)

// Forge across a real swarm of three engines on this machine
// (internal/cluster): the real `forge coordinator` runs in the manager's
// network namespace against the manager's engine, a real `forge agent`
// runs in each node's namespace against that node's engine, and a fake
// GitHub serves in the manager's namespace. Builds come in as signed
// webhooks; placement constraints pin them to nodes. `make test-cluster`
// runs these (build tag cluster).
//
// One cluster serves every test of the run: it starts with the first test
// that needs it and is torn down after the last (TestMain). Each test has
// its own coordinator, agents, fake GitHub and repository.

var (
	clusterOnce sync.Once
	theCluster  *cluster.Cluster
	clusterErr  error
	clusterBin  string // the forge binary the processes run
	clusterTmp  string
	clusterUp   time.Duration
)

func init() {
	afterTests = append(afterTests, func() error {
		var errs []error
		if theCluster != nil {
			began := time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			errs = append(errs, theCluster.Close(ctx))
			fmt.Fprintf(os.Stderr, "cluster: up in %v, down in %v\n", clusterUp.Round(time.Millisecond), time.Since(began).Round(time.Millisecond))
		}
		if clusterTmp != "" {
			errs = append(errs, os.RemoveAll(clusterTmp))
		}
		return errors.Join(errs...)
	})
}

// getCluster starts the shared cluster, with the busybox image on every
// node, and builds the forge binary the nodes' processes run.
func getCluster(t *testing.T) *cluster.Cluster {
	t.Helper()
	host := dockertest.Client(t)
	img := dockertest.EnsureBusybox(t, host)
	clusterOnce.Do(func() {
		if clusterTmp, clusterErr = os.MkdirTemp("", "forge-cluster-test-"); clusterErr != nil {
			return
		}
		clusterBin = filepath.Join(clusterTmp, "forge")
		if out, err := exec.Command("go", "build", "-o", clusterBin, ".").CombinedOutput(); err != nil {
			clusterErr = fmt.Errorf("go build forge: %v\n%s", err, out)
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		began := time.Now()
		theCluster, clusterErr = cluster.Start(ctx, cluster.Config{Nodes: 3, Images: []string{img}, HostDocker: host, Log: os.Stderr})
		clusterUp = time.Since(began)
	})
	if clusterErr != nil {
		t.Fatalf("cluster: %v", clusterErr)
	}
	return theCluster
}

// proc is a forge program running as its own process in a node's
// network namespace.
type proc struct {
	name string
	cmd  *exec.Cmd
	out  *syncbuf.Buffer
	done chan struct{}
	err  error
}

func startProc(t *testing.T, n *cluster.Node, name string, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, cmd: n.Command(clusterBin, args...), out: &syncbuf.Buffer{}, done: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop(t)
		if t.Failed() {
			t.Logf("%s said:\n%s", p.name, p.out.String())
		}
	})
	return p
}

// stop sends SIGTERM and waits for the program to return (SIGKILL after
// 30 s, which fails the test).
func (p *proc) stop(t *testing.T) {
	t.Helper()
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		t.Errorf("%s did not stop within 30s of SIGTERM", p.name)
	}
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// clusterRig is a ghRig whose coordinator runs on the cluster's manager,
// with an agent per node.
type clusterRig struct {
	*ghRig
	c         *cluster.Cluster
	certs     string
	dir       string // the test's own files
	agentAddr string // the coordinator's agent listener
	coord     *proc
	agents    map[string]*proc // by hostname
}

// startClusterRig starts the coordinator on the manager and an agent on
// each of the nodes named (all when none), and waits until those agents
// are bound.
func startClusterRig(t *testing.T, withAgents ...string) *clusterRig {
	t.Helper()
	return startClusterRigWith(t, nil, withAgents...)
}

// startClusterRigWith is startClusterRig with more flags for the
// coordinator.
func startClusterRigWith(t *testing.T, coordFlags []string, withAgents ...string) *clusterRig {
	t.Helper()
	c := getCluster(t)
	m := c.Manager()
	r := &clusterRig{c: c, agents: map[string]*proc{}, ghRig: &ghRig{t: t, cli: m.Client, owner: ghOwner,
		repo: dockertest.ID(t), inst: 5000 + int64(os.Getpid()%1000), secret: []byte(randHex(t, 16)),
		admin: "forge_admin_" + randHex(t, 16), image: dockertest.BusyboxImage,
		// The test process is in the host's namespace; the coordinator
		// listens in the manager's.
		hc: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DialContext: m.DialContext}}}}
	r.full = r.owner + "/" + r.repo
	t.Cleanup(func() {
		if err := dockertest.RemoveLabelled(context.Background(), m.Client, "forge.repo="+r.full); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	ln, err := m.Listen("tcp", netip.AddrPortFrom(m.Addr, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	r.fake = fakegithubtest.NewListener(t, ln)
	r.fake.SetInstallation(r.full, r.inst)

	dir := t.TempDir()
	r.dir = dir
	r.certs = issueCerts(t, dir, m.Addr.String())
	secretFile := writeGHFile(t, dir, "webhook-secret", r.secret, 0o600)
	adminFile := writeGHFile(t, dir, "admin-token", []byte(r.admin), 0o600)
	exe := writeGHFile(t, dir, "forgexec", dockertest.Forgexec(t), 0o755)
	keyFile := writeGHFile(t, dir, "app-key.pem", fakegithubtest.AppKeyPEM(t), 0o600)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("fake GitHub requests:\n%s", strings.Join(r.fake.Requests(), "\n"))
		}
	})
	args := []string{"coordinator", "--listen", netip.AddrPortFrom(m.Addr, 0).String(),
		"--agent-listen", netip.AddrPortFrom(m.Addr, 0).String(), "--metrics-listen", "127.0.0.1:0",
		"--data", filepath.Join(dir, "data"), "--forgexec", exe, "--webhook-secret-file", secretFile,
		"--admin-token-file", adminFile, "--public-url", ghPublicURL,
		"--tls-ca", filepath.Join(r.certs, "ca.pem"), "--tls-cert", filepath.Join(r.certs, "coordinator.pem"),
		"--tls-key", filepath.Join(r.certs, "coordinator-key.pem"),
		"--github-app-id", strconv.Itoa(fakegithub.AppID), "--github-key-file", keyFile, "--github-api", r.fake.APIBase(),
		"--tls-ca-key", filepath.Join(r.certs, "ca-key.pem"), "--join-token-file", filepath.Join(r.certs, "join-token"),
		// The tests pin builds to every node, the manager too.
		"--builds-on-managers"}
	r.coord = startProc(t, m, "forge coordinator on "+m.Hostname, []string{"DOCKER_HOST=" + m.Host}, append(args, coordFlags...)...)

	ghUntil(t, 60*time.Second, "the coordinator's \"coordinator serving\" line", func() bool {
		if r.coord.exited() {
			t.Fatalf("forge coordinator returned before serving: %v\n%s", r.coord.err, r.coord.out.String())
		}
		mm := servingLine.FindStringSubmatch(r.coord.out.String())
		if mm == nil {
			return false
		}
		r.agentAddr, r.base = mm[1], "http://"+mm[2]
		return true
	})
	if len(withAgents) == 0 {
		for _, n := range c.Nodes {
			withAgents = append(withAgents, n.Hostname)
		}
	}
	for _, h := range withAgents {
		r.startAgent(c.Node(h))
	}
	for _, h := range withAgents {
		r.waitBound(c.Node(h))
	}
	return r
}

// startAgent runs `forge agent` in n's namespace against n's engine.
func (r *clusterRig) startAgent(n *cluster.Node) *proc {
	return r.startAgentAs(n, n)
}

// startAgentAs runs `forge agent` in from's namespace against the engine
// of as: an agent that speaks for another node than the one it runs on.
func (r *clusterRig) startAgentAs(from, as *cluster.Node) *proc {
	r.t.Helper()
	name := "forge agent on " + from.Hostname
	if from != as {
		name += " (with " + as.Hostname + "'s engine)"
	}
	// --debug: the agent logs every Launch and Cancel it receives.
	p := startProc(r.t, from, name, nil, append([]string{"agent", "--debug", "--coordinator", r.agentAddr, "--docker-host", as.Host},
		agentJoinFlags(r.certs, r.stateDir(from, as))...)...)
	if from == as {
		r.agents[from.Hostname] = p
	}
	return p
}

// stateDir is the folder of the agent that runs on from with as's engine:
// its key and certificate.
func (r *clusterRig) stateDir(from, as *cluster.Node) string {
	if from == as {
		return filepath.Join(r.dir, "state-"+from.Hostname)
	}
	return filepath.Join(r.dir, "state-"+from.Hostname+"-as-"+as.Hostname)
}

// agentsBound is GET /api/agents, by node id.
func (r *clusterRig) agentsBound() map[string]agents.AgentInfo {
	r.t.Helper()
	code, body := r.get("/api/agents")
	var list []agents.AgentInfo
	if code != http.StatusOK || json.Unmarshal([]byte(body), &list) != nil {
		r.t.Fatalf("GET /api/agents: %d %s", code, body)
	}
	out := map[string]agents.AgentInfo{}
	for _, a := range list {
		out[a.NodeID] = a
	}
	return out
}

// waitBound waits until the coordinator has bound n's agent, and checks
// it is known by n's own address.
func (r *clusterRig) waitBound(n *cluster.Node) {
	r.t.Helper()
	var a agents.AgentInfo
	ghUntil(r.t, 60*time.Second, "the agent of "+n.Hostname+" at /api/agents", func() bool {
		if p := r.agents[n.Hostname]; p != nil && p.exited() {
			r.t.Fatalf("%s returned: %v", p.name, p.err)
		}
		var ok bool
		a, ok = r.agentsBound()[n.ID]
		return ok
	})
	if host, _, _ := strings.Cut(a.Address, ":"); host != n.Addr.String() || a.Hostname != n.Hostname {
		r.t.Errorf("agent of %s bound as %+v, want address %s", n.Hostname, a, n.Addr)
	}
}

// waitUnbound waits until the coordinator no longer lists n's agent.
func (r *clusterRig) waitUnbound(n *cluster.Node, d time.Duration) {
	r.t.Helper()
	ghUntil(r.t, d, "the agent of "+n.Hostname+" to leave /api/agents", func() bool {
		_, ok := r.agentsBound()[n.ID]
		return !ok
	})
}

// pinned is a .forge.yml running commands on node n only.
func (r *clusterRig) pinned(n *cluster.Node, commands []string, extra ...string) string {
	return r.config(commands, append([]string{fmt.Sprintf("constraints: [\"node.hostname==%s\"]", n.Hostname)}, extra...)...)
}

// open delivers pull_request.opened for a new commit with forgeYML, as
// pull request number, and returns the commit.
func (r *clusterRig) open(number int, forgeYML string) string {
	r.t.Helper()
	sha := randSHA(r.t)
	r.commit(sha, forgeYML, "hello\n")
	r.deliver("pull_request", r.prPayload("pull_request.opened.json", number, sha, "pr-"+strconv.Itoa(number)), http.StatusAccepted)
	return sha
}

// started is the agent log line of a build it launched.
func started(id string) string { return `msg="build started" build=` + id }

// launches are the builds an agent received a Launch for, from its
// --debug log, in order.
func launches(p *proc) []string {
	var ids []string
	for _, m := range launchReceived.FindAllStringSubmatch(p.out.String(), -1) {
		ids = append(ids, m[1])
	}
	return ids
}

var launchReceived = regexp.MustCompile(`msg="launch received" build=(\S+)`)

// Builds pinned to each node run there, each started by that node's
// agent; no other agent hears of them.
func TestClusterBuildsRunOnTheirNode(t *testing.T) {
	r := startClusterRig(t)
	shas := map[string]string{}
	for i, n := range r.c.Nodes {
		shas[n.Hostname] = r.open(10+i, r.pinned(n, []string{"echo built on " + n.Hostname, "cat hello.txt"}))
	}
	ids := map[string]string{}
	for _, n := range r.c.Nodes {
		last, id := r.final(shas[n.Hostname], "forge/execute")
		if last.State != "success" {
			t.Errorf("build on %s: %+v, want success", n.Hostname, last)
		}
		ids[n.Hostname] = id
		b := r.build(id)
		if b.NodeID != n.ID {
			t.Errorf("build %s pinned to %s ran on node %s, want %s", id, n.Hostname, b.NodeID, n.ID)
		}
		r.log(id, "built on "+n.Hostname, "hello")
	}
	for _, n := range r.c.Nodes {
		// Each agent received exactly one Launch: its own node's build.
		if got := launches(r.agents[n.Hostname]); len(got) != 1 || got[0] != ids[n.Hostname] {
			t.Errorf("the agent of %s received Launches for %v, want [%s]", n.Hostname, got, ids[n.Hostname])
		}
		out := r.agents[n.Hostname].out.String()
		for _, other := range r.c.Nodes {
			id := ids[other.Hostname]
			if other == n && !strings.Contains(out, started(id)) {
				t.Errorf("the agent of %s did not start build %s", n.Hostname, id)
			}
			if other != n && strings.Contains(out, id) {
				t.Errorf("the agent of %s heard of build %s, which ran on %s", n.Hostname, id, other.Hostname)
			}
		}
	}
	r.done()
}

// An agent that speaks for another node than the one it runs on (here:
// it runs on node2 and uses node3's engine, so it says it is node3) is
// refused, is never bound, and never gets node3's builds; node3's own
// agent then is bound and does.
func TestClusterAgentClaimingAnotherNode(t *testing.T) {
	r := startClusterRig(t, "node1", "node2")
	n2, n3 := r.c.Node("node2"), r.c.Node("node3")
	impostor := r.startAgentAs(n2, n3)
	ghUntil(t, 60*time.Second, "the coordinator to refuse the agent claiming node3 from node2", func() bool {
		return strings.Contains(r.coord.out.String(), "connection from "+n2.Addr.String()+" is not from node "+n3.ID)
	})
	ghUntil(t, 30*time.Second, "the impostor to be told", func() bool {
		return strings.Contains(impostor.out.String(), "refused")
	})
	if a, ok := r.agentsBound()[n3.ID]; ok {
		t.Fatalf("an agent is bound for node3: %+v", a)
	}
	if impostor.exited() {
		t.Logf("the impostor gave up: %v", impostor.err)
	}

	r.startAgent(n3)
	r.waitBound(n3)
	sha := r.open(20, r.pinned(n3, []string{"echo on node3"}))
	last, id := r.final(sha, "forge/execute")
	if last.State != "success" {
		t.Errorf("build on node3: %+v, want success", last)
	}
	if !strings.Contains(r.agents["node3"].out.String(), started(id)) {
		t.Errorf("node3's agent did not start build %s", id)
	}
	if strings.Contains(impostor.out.String(), id) || len(launches(impostor)) != 0 {
		t.Errorf("the impostor heard of build %s or received a Launch", id)
	}
	if got := launches(r.agents["node3"]); len(got) != 1 || got[0] != id {
		t.Errorf("node3's agent received Launches for %v, want [%s]", got, id)
	}
	t.Logf("the impostor said:\n%s", impostor.out.String())
	r.done()
}

// A node whose agent is stopped: a build placed there ends as an error
// naming the node within the bounded wait; builds elsewhere go on; once
// the agent is back, builds there run.
func TestClusterAgentStopped(t *testing.T) {
	r := startClusterRig(t)
	n2, n3 := r.c.Node("node2"), r.c.Node("node3")
	r.agents["node2"].stop(t)
	r.waitUnbound(n2, 30*time.Second)

	began := time.Now()
	orphan := r.open(30, r.pinned(n2, []string{"echo must not run"}))
	other := r.open(31, r.pinned(n3, []string{"echo fine on node3"}))
	last, id := r.final(orphan, "forge/execute")
	waited := time.Since(began)
	if last.State != "error" || !strings.Contains(last.Description, "no agent on node "+n2.ID) {
		t.Errorf("build on node2 without an agent: %+v, want error \"no agent on node %s ...\"", last, n2.ID)
	}
	if b := r.build(id); b.State != "error" || !strings.Contains(b.Reason, "no agent on node "+n2.ID) {
		t.Errorf("build %+v", b)
	}
	t.Logf("the build on node2 ended as %q after %v", last.Description, waited.Round(time.Millisecond))
	if last, _ := r.final(other, "forge/execute"); last.State != "success" {
		t.Errorf("build on node3: %+v, want success", last)
	}

	r.startAgent(n2)
	r.waitBound(n2)
	again := r.open(32, r.pinned(n2, []string{"echo node2 is back"}))
	last, id = r.final(again, "forge/execute")
	if last.State != "success" {
		t.Errorf("build on node2 after its agent returned: %+v, want success", last)
	}
	r.log(id, "node2 is back")
	if got := launches(r.agents["node2"]); len(got) != 1 || got[0] != id {
		t.Errorf("node2's new agent received Launches for %v, want only [%s]", got, id)
	}
	if !strings.Contains(r.agents["node2"].out.String(), started(id)) {
		t.Errorf("node2's new agent did not start build %s", id)
	}
	r.done()
}

// A worker cut off from the manager mid-build. The coordinator drops its
// agent when the session's keep-alive fails and says so; the build it
// cannot hear from stays running, except one whose time is up, which it
// ends; builds on other nodes go on. When the link returns, the agent
// reconnects, the running build's log arrives whole and its exit is
// recorded, and new builds on the node run.
func TestClusterWorkerCutOff(t *testing.T) {
	r := startClusterRig(t)
	n2, n3 := r.c.Node("node2"), r.c.Node("node3")
	long := r.open(40, r.pinned(n3, []string{"echo before the cut", "sleep 40", "echo after the cut"}))
	short := r.open(41, r.pinned(n3, []string{"echo short build", "sleep 600"}, "timeout: 5s"))
	longID := r.running(long, "before the cut")
	shortID := r.running(short, "short build")

	cut := time.Now()
	if err := r.c.Cut(context.Background(), n3); err != nil {
		t.Fatal(err)
	}
	mended := false
	defer func() {
		if !mended {
			if err := r.c.Mend(context.Background(), n3); err != nil {
				t.Errorf("mend node3: %v", err)
			}
		}
	}()
	// What the coordinator knows: the session is gone...
	r.waitUnbound(n3, 60*time.Second)
	t.Logf("node3's agent left /api/agents %v after the cut", time.Since(cut).Round(time.Millisecond))
	if b := r.build(longID); b.State != "running" {
		t.Errorf("the long build is %s while its node is cut off, want running: %+v", b.State, b)
	}
	// ...builds elsewhere are unaffected...
	elsewhere := r.open(42, r.pinned(n2, []string{"echo node2 works"}))
	if last, _ := r.final(elsewhere, "forge/execute"); last.State != "success" {
		t.Errorf("build on node2 during the cut: %+v, want success", last)
	}
	// ...and a build whose time is up ends, though no agent confirms it.
	last, _ := r.final(short, "forge/execute")
	if last.State != "error" || !strings.Contains(last.Description, "timed out after 5s") {
		t.Errorf("the short build while cut off: %+v, want error \"timed out after 5s\"", last)
	}
	t.Logf("the 5s build on the cut-off node ended as %q, %v after the cut", last.Description, time.Since(cut).Round(time.Millisecond))

	if err := r.c.Mend(context.Background(), n3); err != nil {
		t.Fatal(err)
	}
	mended = true
	mend := time.Now()
	r.waitBound(n3)
	t.Logf("node3's agent was back %v after the link", time.Since(mend).Round(time.Millisecond))
	last, id := r.final(long, "forge/execute")
	if id != longID || last.State != "success" {
		t.Errorf("the long build after the link returned: %+v (build %s), want success of %s", last, id, longID)
	}
	text := r.log(longID, "before the cut", "after the cut")
	for _, line := range []string{"before the cut", "after the cut"} {
		if n := countLines(text, line); n != 1 {
			t.Errorf("the long build's log has the line %q %d times, want once:\n%s", line, n, text)
		}
	}
	if b := r.build(shortID); b.State != "error" {
		t.Errorf("the short build changed after the link returned: %+v", b)
	}
	if err := r.c.WaitReady(context.Background(), 60*time.Second); err != nil {
		t.Error(err)
	}
	// The short build's service was removed while node3 was away: once
	// back, swarm removes its container there, though it still runs.
	ghUntil(t, 60*time.Second, "the timed-out build's container to leave node3", func() bool {
		cs, err := n3.Client.ContainerList(context.Background(), container.ListOptions{All: true,
			Filters: filters.NewArgs(filters.Arg("label", plan.LabelBuild+"="+shortID))})
		if err != nil {
			t.Fatalf("list containers on node3: %v", err)
		}
		return len(cs) == 0
	})
	again := r.open(43, r.pinned(n3, []string{"echo node3 is back"}))
	if last, _ := r.final(again, "forge/execute"); last.State != "success" {
		t.Errorf("build on node3 after the link returned: %+v, want success", last)
	}
	r.done()
}

// countLines counts the lines of text that are exactly line.
func countLines(text, line string) int {
	n := 0
	for _, l := range strings.Split(text, "\n") {
		if l == line {
			n++
		}
	}
	return n
}

// stateCert is the certificate the agent on from (with as's engine) keeps
// in its --state-dir.
func (r *clusterRig) stateCert(from, as *cluster.Node) *x509.Certificate {
	r.t.Helper()
	b, err := os.ReadFile(filepath.Join(r.stateDir(from, as), agent.StateFile))
	if err != nil {
		r.t.Fatalf("the certificate of the agent on %s: %v", from.Hostname, err)
	}
	c, err := wire.ParseCertPEM(b)
	if err != nil {
		r.t.Fatal(err)
	}
	return c
}

// forge runs a forge CLI command (its words, then its one argument) in
// the manager's namespace (where the coordinator's HTTP listener is) with
// the admin token, and returns its output once it has returned.
func (r *clusterRig) forge(cmd []string, arg string) string {
	r.t.Helper()
	m := r.c.Manager()
	args := append(append(cmd, "--server", r.base, "--admin-token-file", filepath.Join(r.dir, "admin-token")), arg)
	p := startProc(r.t, m, "forge "+strings.Join(args, " "), nil, args...)
	select {
	case <-p.done:
	case <-time.After(60 * time.Second):
		r.t.Fatalf("forge %s did not return", strings.Join(args, " "))
	}
	if p.err != nil {
		r.t.Fatalf("forge %s: %v\n%s", strings.Join(args, " "), p.err, p.out.String())
	}
	return p.out.String()
}

// Every node's agent joins with the token and gets a certificate of its
// own, naming its node. A copy of node2's certificate used from node3 is
// refused. forge agents revoke closes node3's session at once and keeps it
// out, token or not, until forge agents allow; node3 then joins again and
// builds there.
func TestClusterAgentIdentity(t *testing.T) {
	r := startClusterRig(t)
	n2, n3 := r.c.Node("node2"), r.c.Node("node3")
	serials := map[string]bool{}
	bound := r.agentsBound()
	for _, n := range r.c.Nodes {
		c := r.stateCert(n, n)
		node, err := wire.NodeOf(c)
		if err != nil || node != n.ID || len(c.URIs) != 1 || c.URIs[0].String() != wire.AgentURI(n.ID).String() {
			t.Errorf("the certificate of %s's agent names %q (%v), URIs %v; want %s", n.Hostname, node, err, c.URIs, wire.AgentURI(n.ID))
		}
		if life := c.NotAfter.Sub(c.NotBefore); life > wire.DefaultAgentCertTTL+wire.ClockSkew {
			t.Errorf("the certificate of %s's agent is valid for %v, want the default 24h", n.Hostname, life)
		}
		serials[c.SerialNumber.Text(16)] = true
		if a := bound[n.ID]; a.CertSerial != c.SerialNumber.Text(16) || !a.CertExpires.Equal(c.NotAfter.UTC()) {
			t.Errorf("/api/agents shows %s with certificate %s expiring %v; its state dir has %x expiring %v",
				n.Hostname, a.CertSerial, a.CertExpires, c.SerialNumber, c.NotAfter)
		}
	}
	if len(serials) != len(r.c.Nodes) {
		t.Errorf("%d nodes share %d certificates", len(r.c.Nodes), len(serials))
	}

	// node2's key and certificate, copied to node3: its agent (no token)
	// speaks for node2 from node3's address, and is refused.
	stolen := r.stateDir(n3, n2)
	if err := os.MkdirAll(stolen, 0o700); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(r.stateDir(n2, n2), agent.StateFile))
	if err := os.WriteFile(filepath.Join(stolen, agent.StateFile), b, 0o600); err != nil {
		t.Fatal(err)
	}
	thief := startProc(t, n3, "forge agent on node3 with node2's certificate", nil, "agent", "--coordinator", r.agentAddr,
		"--docker-host", n2.Host, "--tls-ca", filepath.Join(r.certs, "ca.pem"), "--state-dir", stolen)
	refusal := "connection from " + n3.Addr.String() + " is not from node " + n2.ID
	ghUntil(t, 60*time.Second, "both sides to log the refusal of node2's certificate from node3", func() bool {
		return strings.Contains(r.coord.out.String(), refusal) && strings.Contains(thief.out.String(), refusal)
	})
	if a := r.agentsBound()[n2.ID]; !strings.HasPrefix(a.Address, n2.Addr.String()+":") {
		t.Errorf("node2 is bound to %+v, want its own agent", a)
	}
	thief.stop(t)

	// Revoke node3: its session ends at once.
	sessionBefore := r.agentsBound()[n3.ID].SessionID
	began := time.Now()
	out := r.forge([]string{"agents", "revoke"}, n3.ID)
	cliDone := time.Since(began)
	r.waitUnbound(n3, 10*time.Second)
	t.Logf("forge agents revoke: the CLI returned after %v; node3 was gone from /api/agents %v after it started (%q)",
		cliDone.Round(time.Millisecond), time.Since(began).Round(time.Millisecond), strings.TrimSpace(out))
	ghUntil(t, 30*time.Second, "node3's agent to be refused on its return", func() bool {
		return strings.Contains(r.agents["node3"].out.String(), "node is revoked")
	})
	sha := r.open(60, r.pinned(n3, []string{"echo revoked"}))
	if last, _ := r.final(sha, "forge/execute"); last.State != "error" {
		t.Errorf("a build on the revoked node: %+v, want error", last)
	}
	if _, ok := r.agentsBound()[n3.ID]; ok {
		t.Fatal("the revoked node is bound again")
	}
	if !strings.Contains(r.coord.out.String(), "agent join refused") {
		t.Error("the coordinator did not log the revoked node's join refused")
	}

	// Allow: the agent's old certificate stays refused, it joins again
	// with the token, and builds there run.
	r.forge([]string{"agents", "allow"}, n3.ID)
	r.waitBound(n3)
	a := r.agentsBound()[n3.ID]
	if a.SessionID == sessionBefore || a.CertSerial == bound[n3.ID].CertSerial {
		t.Errorf("after allow node3 is bound with session %s and certificate %s, want new ones", a.SessionID, a.CertSerial)
	}
	sha = r.open(61, r.pinned(n3, []string{"echo allowed again"}))
	if last, _ := r.final(sha, "forge/execute"); last.State != "success" {
		t.Errorf("a build on node3 after allow: %+v, want success", last)
	}
	r.done()
}

// With 30-second certificates an agent renews on its live session: it
// stays connected, with the one session, across three renewals while a
// build runs, and the build's log arrives whole, each line once.
func TestClusterCertRenewal(t *testing.T) {
	r := startClusterRigWith(t, []string{"--agent-cert-ttl", "30s"}, "node2")
	n2 := r.c.Node("node2")
	first := r.agentsBound()[n2.ID]
	sha := r.open(70, r.pinned(n2, []string{"sh -c 'for i in $(seq 1 70); do echo line $i; sleep 1; done'"}))
	last, id := r.final(sha, "forge/execute")
	if last.State != "success" {
		t.Fatalf("the build: %+v, want success", last)
	}
	renewals := strings.Count(r.agents["node2"].out.String(), `msg="certificate renewed"`)
	now := r.agentsBound()[n2.ID]
	if renewals < 3 || now.SessionID != first.SessionID || now.CertSerial == first.CertSerial {
		t.Errorf("%d renewals, session %s -> %s, certificate %s -> %s: want 3 or more renewals on one session",
			renewals, first.SessionID, now.SessionID, first.CertSerial, now.CertSerial)
	}
	text := r.log(id, "line 70")
	for i := 1; i <= 70; i++ {
		if n := countLines(text, fmt.Sprintf("line %d", i)); n != 1 {
			t.Errorf("line %d is in the log %d times, want once", i, n)
		}
	}
	t.Logf("%d renewals in one session over a %d-line build", renewals, 70)
	r.done()
}

// A cache follows its repository from node to node: a push to master on
// node2 writes master's cache; a pull request built on node3 gets it
// restored there, and writes its own scope; master's next build, on
// node1, gets master's cache as node2 wrote it, not the pull request's.
// The key hashes a file of the source the coordinator fetched.
func TestClusterCacheAcrossNodes(t *testing.T) {
	r := startClusterRig(t)
	n1, n2, n3 := r.c.Node("node1"), r.c.Node("node2"), r.c.Node("node3")
	const script = `if [ -f /root/.cache/demo/stamp ]; then echo "restored: $(cat /root/.cache/demo/stamp)"; else echo "cold"; fi; ` +
		`mkdir -p /root/.cache/demo; echo "$FORGE_BUILD_ID on $(cat /etc/hostname)" > /root/.cache/demo/stamp`
	cfg := func(n *cluster.Node) string {
		return r.pinned(n, []string{script}, "cache:\n  paths: [/root/.cache/demo]\n  key: 'demo-{{ hashFiles \"hello.txt\" }}'",
			"on:\n  push:\n    master: execute")
	}
	push := func(n *cluster.Node) (fakegithub.Status, string) {
		t.Helper()
		sha := randSHA(t)
		r.commit(sha, cfg(n), "hello\n")
		r.deliver("push", r.pushPayload("master", sha, true), http.StatusAccepted)
		return r.final(sha, "forge/execute")
	}

	last, first := push(n2)
	if last.State != "success" {
		t.Fatalf("master on node2: %+v", last)
	}
	if b := r.build(first); b.NodeID != n2.ID {
		t.Fatalf("the first build ran on %s, want node2", b.NodeID)
	}
	r.log(first, "cold", "forge: cache: saved ")

	last, pr := r.final(r.open(80, cfg(n3)), "forge/execute")
	if last.State != "success" {
		t.Fatalf("pull request on node3: %+v", last)
	}
	if b := r.build(pr); b.NodeID != n3.ID {
		t.Fatalf("the pull request's build ran on %s, want node3", b.NodeID)
	}
	text := r.log(pr, "forge: cache: saved ")
	t.Logf("the pull request's build on node3:\n%s", text)
	if !strings.Contains(text, "forge: cache: restoring ") || !strings.Contains(text, "restored: "+first+" on ") {
		t.Errorf("node3 did not get the cache node2 wrote:\n%s", text)
	}
	if !strings.Contains(text, "of pull request #80") {
		t.Errorf("the pull request did not write its own scope:\n%s", text)
	}

	last, again := push(n1)
	if last.State != "success" {
		t.Fatalf("master on node1: %+v", last)
	}
	text = r.log(again, "forge: cache: restoring ")
	if !strings.Contains(text, "restored: "+first+" on ") || strings.Contains(text, pr) {
		t.Errorf("master's build on node1 did not get master's cache as node2 wrote it:\n%s", text)
	}
	if !strings.Contains(text, "is stored already") {
		t.Errorf("master's cache of the same key was saved again:\n%s", text)
	}
	r.done()
}
