package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/client"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/logs"
	"github.com/forge-ci/forge/internal/dockertest"
	"github.com/forge-ci/forge/wire"
	"github.com/forge-ci/forge/wire/wiretest"
)

// exitCounter counts the exits the store actually records.
type exitCounter struct {
	*logs.Store
	mu       sync.Mutex
	recorded map[string]int
}

func (e *exitCounter) Exit(ctx context.Context, id string, x *wire.Exit) error {
	// Held across the record, so whoever saw the exit in the store and
	// then reads the count sees it counted.
	e.mu.Lock()
	defer e.mu.Unlock()
	before, _ := e.Store.Exited(id)
	if err := e.Store.Exit(ctx, id, x); err != nil {
		return err
	}
	if before == nil {
		e.recorded[id]++
	}
	return nil
}

type env struct {
	cli   *client.Client
	node  string
	pki   *wiretest.PKI
	exe   *coordinator.Executor
	image string
}

func newEnv(t testing.TB) *env {
	t.Helper()
	cli := dockertest.Client(t)
	e := &env{cli: cli, node: localNode(t, cli), pki: wiretest.MustPKI(t)}
	exe, err := coordinator.NewExecutor(dockertest.Forgexec(t))
	if err != nil {
		t.Fatal(err)
	}
	e.exe = exe
	e.image = dockertest.EnsureBusybox(t, cli)
	return e
}

func (e *env) coord(t testing.TB, addr string) *coord {
	return startCoord(t, e.pki, swarmVerifier(e.cli, e.node), addr)
}

func spec(t testing.TB, buildID string, cmds ...string) []byte {
	b, err := json.Marshal(map[string]any{"version": 1, "build_id": buildID, "action": "execute", "commands": cmds, "workdir": "/forge/src"})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// build creates a build service and returns its build id and container,
// learnt from the agent's Landed report.
func (e *env) build(t testing.TB, c *coord) (buildID, containerID string) {
	t.Helper()
	id := dockertest.ID(t)
	dockertest.Cleanup(t, e.cli, id)
	buildID = "b-" + id
	if err := c.logs.Create(buildID); err != nil {
		t.Fatal(err)
	}
	landed, stop := c.server.Landings(buildID)
	defer stop()
	dockertest.BuildService(t, e.cli, e.image, buildID, id)
	select {
	case l := <-landed:
		containerID = l.Container
	case <-time.After(30 * time.Second):
		t.Fatalf("no Landed report for %s", buildID)
	}
	return buildID, containerID
}

func (e *env) launch(t testing.TB, c *coord, buildID, cid string, cmds ...string) (*coordinator.LaunchResult, error) {
	ctx := dockertest.Context(t, time.Minute)
	return c.server.Launch(ctx, e.node, coordinator.LaunchRequest{
		BuildID: buildID, ContainerID: cid, Executor: e.exe, Spec: spec(t, buildID, cmds...), Workdir: "/forge/src",
	})
}

// output waits for the build's exit and returns its log and exit.
func output(t testing.TB, c *coord, buildID string) (string, *wire.Exit) {
	t.Helper()
	var out bytes.Buffer
	ctx := dockertest.Context(t, 2*time.Minute)
	if err := c.logs.Follow(ctx, buildID, &out, true); err != nil {
		t.Fatalf("follow %s: %v (so far %q)", buildID, err, out.String())
	}
	x, err := c.logs.Exited(buildID)
	if err != nil || x == nil {
		t.Fatalf("exit of %s: %v %v", buildID, x, err)
	}
	return out.String(), x
}

// TestLaunchThroughAgent: the coordinator learns where the task landed
// from the agent, sends Launch to that agent over mTLS and yamux, and gets
// the build's output and exit code back; the executor crosses the wire
// once.
func TestLaunchThroughAgent(t *testing.T) {
	e := newEnv(t)
	c := e.coord(t, "")
	startAgent(t, e.pki, c.addr, nil, nil)
	waitAgent(t, c, e.node, 30*time.Second)

	agents := c.server.Agents()
	if len(agents) != 1 || agents[0].NodeID != e.node || agents[0].EngineVersion == "" || agents[0].Hostname == "" {
		t.Fatalf("agents: %+v", agents)
	}
	for i, tc := range []struct {
		cmds     []string
		code     int
		out      string
		sendsExe bool
	}{
		{[]string{"echo hello", "echo to-stderr >&2"}, 0, "+ echo hello\nhello\n", true},
		{[]string{"echo second", "exit 5"}, 5, "second\n", false},
	} {
		t0 := time.Now()
		buildID, cid := e.build(t, c)
		t1 := time.Now()
		res, err := e.launch(t, c, buildID, cid, tc.cmds...)
		t.Logf("build %d: landed after %v, started %v later", i, t1.Sub(t0), time.Since(t1))
		if err != nil {
			t.Fatalf("build %d: launch: %v", i, err)
		}
		if res.ExecutorSent != tc.sendsExe {
			t.Errorf("build %d: executor sent %v, want %v", i, res.ExecutorSent, tc.sendsExe)
		}
		out, x := output(t, c, buildID)
		if x.ExitCode != tc.code || !strings.Contains(out, tc.out) {
			t.Errorf("build %d: exit %d, output %q; want %d and %q", i, x.ExitCode, out, tc.code, tc.out)
		}
	}
}

// TestLaunchRefused: the agent refuses containers it must not touch, and
// leaves them as they were.
func TestLaunchRefused(t *testing.T) {
	e := newEnv(t)
	c := e.coord(t, "")
	startAgent(t, e.pki, c.addr, nil, nil)
	waitAgent(t, c, e.node, 30*time.Second)
	ctx := dockertest.Context(t, 2*time.Minute)
	id := dockertest.ID(t)
	dockertest.Cleanup(t, e.cli, id)

	plain, err := e.cli.ContainerCreate(ctx, &container.Config{Image: e.image, Cmd: []string{"/forgexec"},
		Labels: map[string]string{dockertest.LabelTest: id}}, nil, nil, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	running, err := e.cli.ContainerCreate(ctx, &container.Config{Image: e.image, Cmd: []string{"sleep", "120"},
		Labels: map[string]string{dockertest.LabelTest: id, "forge.build": "b-running-" + id}}, nil, nil, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.cli.ContainerStart(ctx, running.ID, container.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	otherBuild, otherCID := e.build(t, c)

	for _, tc := range []struct {
		name, buildID, cid, code string
	}{
		{"no forge labels", "b-plain-" + id, plain.ID, wire.RefusedForbidden},
		{"another build's label", "b-not-" + otherBuild, otherCID, wire.RefusedForbidden},
		{"already running", "b-running-" + id, running.ID, wire.RefusedForbidden},
		{"no such container", "b-x", "0123456789ab", wire.RefusedNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var before container.InspectResponse
			if tc.code != wire.RefusedNotFound {
				before, _ = e.cli.ContainerInspect(ctx, tc.cid)
			}
			_, err := e.launch(t, c, tc.buildID, tc.cid, "echo must not run")
			var r *wire.RefusedError
			if !errors.As(err, &r) || r.Code != tc.code {
				t.Fatalf("launch: %v, want refused %s", err, tc.code)
			}
			t.Logf("refused: %v", err)
			if tc.code == wire.RefusedNotFound {
				return
			}
			after, err := e.cli.ContainerInspect(ctx, tc.cid)
			if err != nil {
				t.Fatal(err)
			}
			if after.State.Status != before.State.Status || after.State.StartedAt != before.State.StartedAt {
				t.Errorf("container changed: %s/%s -> %s/%s", before.State.Status, before.State.StartedAt, after.State.Status, after.State.StartedAt)
			}
			if _, err := e.cli.ContainerStatPath(ctx, tc.cid, "/forgexec"); err == nil {
				t.Errorf("the executor was put into a refused container")
			}
		})
	}
	// The build whose label was borrowed is still launchable afterwards.
	if _, err := e.launch(t, c, otherBuild, otherCID, "echo fine"); err != nil {
		t.Fatalf("launch of the untouched build: %v", err)
	}
	if _, x := output(t, c, otherBuild); x.ExitCode != 0 {
		t.Errorf("exit %d", x.ExitCode)
	}
}

// TestAgentBackAfterCoordinatorRestart: the coordinator's listener goes
// away and comes back on the same address; the agent reconnects within its
// back-off.
func TestAgentBackAfterCoordinatorRestart(t *testing.T) {
	e := newEnv(t)
	c := e.coord(t, "")
	sessions := make(chan string, 16)
	startAgent(t, e.pki, c.addr, nil, sessions)
	waitAgent(t, c, e.node, 30*time.Second)
	first := c.server.Agents()[0].SessionID

	c.stop()
	start := time.Now()
	c.listen(c.addr)
	waitAgent(t, c, e.node, 30*time.Second)
	t.Logf("agent back %v after the listener restarted", time.Since(start))
	if got := c.server.Agents()[0].SessionID; got == first {
		t.Errorf("same session %s after a restart", got)
	}
}

// TestStalledConnectionReplaced: a connection that stops carrying bytes
// (the proxy swallows them) is found dead by keep-alives on both sides,
// and the agent connects again once the path carries bytes.
func TestStalledConnectionReplaced(t *testing.T) {
	e := newEnv(t)
	c := e.coord(t, "")
	p := startProxy(t, c.addr)
	sessions := make(chan string, 16)
	startAgent(t, e.pki, p.addr(), nil, sessions)
	waitAgent(t, c, e.node, 30*time.Second)
	first := c.server.Agents()[0].SessionID
	<-sessions // the first session's id

	p.setStall(true)
	start := time.Now()
	select {
	case id := <-sessions:
		if id != "" {
			t.Fatalf("new session %s while stalled", id)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the agent did not notice the stalled connection")
	}
	t.Logf("agent noticed the stall after %v", time.Since(start))
	deadline := time.Now().Add(30 * time.Second)
	for len(c.server.Agents()) > 0 && time.Now().Before(deadline) {
		select {
		case <-time.After(50 * time.Millisecond):
		}
	}
	if a := c.server.Agents(); len(a) > 0 {
		t.Fatalf("coordinator still has the stalled session: %+v", a)
	}
	t.Logf("coordinator dropped the stalled session after %v", time.Since(start))
	p.setStall(false)
	p.cut()
	waitAgent(t, c, e.node, 30*time.Second)
	if got := c.server.Agents()[0].SessionID; got == first {
		t.Errorf("same session after the stall")
	}
}

// lineScript prints n numbered lines on stdout and on stderr, slowly
// enough that the session can be cut in the middle, then exits with code.
func lineScript(n, code int) string {
	return fmt.Sprintf("i=1; while [ $i -le %d ]; do echo out $i; echo err $i >&2; i=$((i+1)); sleep 0.02; done; exit %d", n, code)
}

func checkLines(t testing.TB, out string, n int) {
	t.Helper()
	var outs, errs []string
	for _, l := range strings.Split(out, "\n") {
		switch {
		case strings.HasPrefix(l, "out "):
			outs = append(outs, l)
		case strings.HasPrefix(l, "err "):
			errs = append(errs, l)
		}
	}
	for name, got := range map[string][]string{"out": outs, "err": errs} {
		if len(got) != n {
			t.Errorf("%d %s lines, want %d", len(got), name, n)
		}
		for i, l := range got {
			if want := fmt.Sprintf("%s %d", name, i+1); l != want {
				t.Errorf("%s line %d is %q, want %q", name, i+1, l, want)
				break
			}
		}
	}
}

// TestSessionDropMidBuild: the session is cut several times while a build
// writes; every line arrives once, in order, and the exit is recorded
// exactly once.
func TestSessionDropMidBuild(t *testing.T) {
	e := newEnv(t)
	c := e.coord(t, "")
	counter := c.exits
	p := startProxy(t, c.addr)
	startAgent(t, e.pki, p.addr(), nil, nil)
	waitAgent(t, c, e.node, 30*time.Second)

	const n = 150
	buildID, cid := e.build(t, c)
	if _, err := e.launch(t, c, buildID, cid, lineScript(n, 7)); err != nil {
		t.Fatal(err)
	}
	for cut := 0; cut < 3; cut++ {
		select {
		case <-time.After(500 * time.Millisecond):
		}
		p.cut()
		waitAgent(t, c, e.node, 30*time.Second)
	}
	out, x := output(t, c, buildID)
	checkLines(t, out, n)
	if x.ExitCode != 7 {
		t.Errorf("exit %d, want 7", x.ExitCode)
	}
	counter.mu.Lock()
	defer counter.mu.Unlock()
	if counter.recorded[buildID] != 1 {
		t.Errorf("exit recorded %d times", counter.recorded[buildID])
	}
}

// TestAgentRestartMidBuild: the agent process goes away while a build
// runs and a new one starts; it finds the build in the engine, resumes the
// log where the coordinator's copy ends, and reports the exit.
func TestAgentRestartMidBuild(t *testing.T) {
	e := newEnv(t)
	c := e.coord(t, "")
	const n = 100
	first := startAgent(t, e.pki, c.addr, nil, nil)
	waitAgent(t, c, e.node, 30*time.Second)
	buildID, cid := e.build(t, c)
	if _, err := e.launch(t, c, buildID, cid, lineScript(n, 3)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-time.After(700 * time.Millisecond):
	}
	first.stop()
	startAgent(t, e.pki, c.addr, nil, nil)
	out, x := output(t, c, buildID)
	checkLines(t, out, n)
	if x.ExitCode != 3 {
		t.Errorf("exit %d, want 3", x.ExitCode)
	}
}
