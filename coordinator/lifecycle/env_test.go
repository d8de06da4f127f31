package lifecycle

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/config"
	"github.com/forge-ci/forge/coordinator/logs"
	"github.com/forge-ci/forge/coordinator/store"
	"github.com/forge-ci/forge/internal/buildsim"
	"github.com/forge-ci/forge/internal/testwait"
)

// Runner timings for the tests: small, so that every test is quick.
const (
	testPollInterval     = 10 * time.Millisecond
	testUnplaceableGrace = 50 * time.Millisecond
	testAgentWait        = 100 * time.Millisecond
	testLandTimeout      = 2 * time.Second
	testCancelGrace      = 1 * time.Second
)

// testInstance is the Runner's Instance in these tests.
const testInstance = "test"

// testWait bounds every wait of these tests.
const testWait = 10 * time.Second

// runnerEnv is a Runner on a real store and logs.Store, with a simulated
// swarm and simulated agents.
type runnerEnv struct {
	t       *testing.T
	r       *Runner
	exe     *coordinator.Executor
	st      *store.Store
	logs    *logs.Store
	sw      *buildsim.Swarm
	ag      *buildsim.Agents
	changes *buildsim.Changes
	opts    []func(*Config)

	dispatches atomic.Int32
	dispatched atomic.Int64 // the last OnDispatch duration
}

// newRunnerEnv returns a Runner with the test timings, changed by opts.
func newRunnerEnv(t *testing.T, opts ...func(*Config)) *runnerEnv {
	t.Helper()
	st, err := store.Open(":memory:")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ls := &logs.Store{Dir: t.TempDir()}
	t.Cleanup(func() { ls.Close() })
	exe, err := coordinator.NewExecutor([]byte("#!forgexec (test)\n"))
	if err != nil {
		t.Fatal(err)
	}
	e := &runnerEnv{t: t, st: st, logs: ls, exe: exe, sw: buildsim.NewSwarm(t), changes: &buildsim.Changes{}, opts: opts}
	e.ag = buildsim.NewAgents(t, ls, e.sw) // its reports are written before the logs close
	e.r = e.newRunner()
	return e
}

// newRunner returns a Runner on e's store, logs, swarm and agents, as a
// restarted coordinator would have; it is closed when the test ends.
func (e *runnerEnv) newRunner() *Runner {
	cfg := Config{
		Swarm: e.sw, Store: e.st, Logs: e.logs, Agents: e.ag, Executor: e.exe, Instance: testInstance,
		PollInterval: testPollInterval, UnplaceableGrace: testUnplaceableGrace, AgentWait: testAgentWait,
		LandTimeout: testLandTimeout, CancelGrace: testCancelGrace,
		OnChange: e.changes.Record,
		OnDispatch: func(d time.Duration) {
			e.dispatches.Add(1)
			e.dispatched.Store(int64(d))
		},
	}
	for _, o := range e.opts {
		o(&cfg)
	}
	r := New(cfg)
	e.t.Cleanup(r.Close)
	return r
}

// waitFor polls cond until it holds, failing the test after testWait.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testWait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		testwait.Pause(t, testPollInterval)
	}
}

const testConfigText = `image: golang:1.22
setup:
  - go mod download
execute:
  - go vet ./...
  - go test ./...
timeout: 30m
workdir: /work/src
`

func parseTestConfig(t *testing.T, text string) *config.Config {
	t.Helper()
	cfg, err := config.Parse(".forge.yml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// testSHA returns a 40-digit commit sha starting with c repeated.
func testSHA(c byte) string {
	return strings.Repeat(string(c), 7) + "0123456789abcdef0123456789abcdef0"
}

// request is a pull request build of octo/hello#7 at sha with testConfigText.
func (e *runnerEnv) request(sha, key string) coordinator.Request {
	return e.requestWith(sha, key, testConfigText)
}

func (e *runnerEnv) requestWith(sha, key, cfgText string) coordinator.Request {
	return coordinator.Request{
		Subject: coordinator.Subject{Owner: "octo", Repo: "hello", PullRequest: 7, Branch: "feature", SHA: sha,
			Ref: "refs/pull/7/head", CommitCount: 3, Trigger: "pull_request", Key: key, InstallationID: 42},
		Config:     parseTestConfig(e.t, cfgText),
		ConfigText: cfgText,
		Labels:     map[string]string{"com.example.test": "manager"},
	}
}

func (e *runnerEnv) submit(req coordinator.Request) *coordinator.Build {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	b, err := e.r.Submit(ctx, req)
	if err != nil {
		e.t.Fatalf("Submit: %v", err)
	}
	if b.State != coordinator.Queued || b.ID == "" {
		e.t.Fatalf("Submit returned %s %q, want a queued build with an id", b.State, b.ID)
	}
	return b
}

// wait returns the build once it is final.
func (e *runnerEnv) wait(id string) *coordinator.Build {
	e.t.Helper()
	return waitRunner(e.t, e.r, id)
}

func waitRunner(t *testing.T, r *Runner, id string) *coordinator.Build {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	b, err := r.Wait(ctx, id)
	if err != nil {
		t.Fatalf("Wait %s: %v", id, err)
	}
	if !b.State.Final() {
		t.Fatalf("Wait %s returned a build in state %s", id, b.State)
	}
	return b
}

func (e *runnerEnv) stored(id string) *coordinator.Build {
	e.t.Helper()
	b, err := e.st.Build(context.Background(), id)
	if err != nil {
		e.t.Fatal(err)
	}
	return b
}

// waitStored waits until the stored build satisfies cond.
func (e *runnerEnv) waitStored(id, what string, cond func(b *coordinator.Build) bool) *coordinator.Build {
	e.t.Helper()
	var b *coordinator.Build
	waitFor(e.t, what, func() bool {
		b = e.stored(id)
		return cond(b)
	})
	return b
}

// want is what a final build must hold.
type want struct {
	state       coordinator.State
	reason      string // exact
	exit        *int
	node        string
	container   string
	serviceName string
	serviceID   string
	ending      coordinator.Ending
}

func intPtr(i int) *int { return &i }

func exitString(p *int) string {
	if p == nil {
		return "<nil>"
	}
	return fmt.Sprint(*p)
}

func checkBuild(t *testing.T, b *coordinator.Build, w want) {
	t.Helper()
	if b.State != w.state {
		t.Errorf("state %s, want %s (reason %q)", b.State, w.state, b.Reason)
	}
	if b.Reason != w.reason {
		t.Errorf("reason %q\nwant   %q", b.Reason, w.reason)
	}
	if !sameExitCode(b.ExitCode, w.exit) {
		t.Errorf("exit code %s, want %s", exitString(b.ExitCode), exitString(w.exit))
	}
	if b.NodeID != w.node {
		t.Errorf("node %q, want %q", b.NodeID, w.node)
	}
	if b.ContainerID != w.container {
		t.Errorf("container %q, want %q", b.ContainerID, w.container)
	}
	if b.ServiceName != w.serviceName {
		t.Errorf("service name %q, want %q", b.ServiceName, w.serviceName)
	}
	if b.ServiceID != w.serviceID {
		t.Errorf("service id %q, want %q", b.ServiceID, w.serviceID)
	}
	if b.Ending != w.ending {
		t.Errorf("ending %q, want %q", b.Ending, w.ending)
	}
	if b.State.Final() && b.Finished.IsZero() {
		t.Error("final build has no Finished time")
	}
}

func sameExitCode(a, b *int) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

func (e *runnerEnv) checkChanges(id string, want ...coordinator.State) {
	e.t.Helper()
	if got := e.changes.Of(id); !slices.Equal(got, want) {
		e.t.Errorf("OnChange states of %s: %v, want %v", id, got, want)
	}
}

// checkRemovedOnce checks that the build's service was removed exactly once.
func (e *runnerEnv) checkRemovedOnce(svc *buildsim.Service) {
	e.t.Helper()
	if svc == nil {
		e.t.Error("no service was created")
		return
	}
	if n := e.sw.Removals(svc.ID); n != 1 {
		e.t.Errorf("service %s removed %d times, want once", svc.ID, n)
	}
}

func (e *runnerEnv) mustService(id string) *buildsim.Service {
	e.t.Helper()
	svc := e.sw.Service(id)
	if svc == nil {
		e.t.Fatalf("no service created for build %s", id)
	}
	return svc
}

// testSource is a build's source tree: a small tar, with its reads and
// closes counted.
type testSource struct {
	data   []byte
	calls  atomic.Int32
	closed atomic.Int32
}

func newTestSource(t *testing.T) *testSource {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	body := []byte("package main\n")
	if err := tw.WriteHeader(&tar.Header{Name: "main.go", Mode: 0o644, Size: int64(len(body))}); err != nil {
		t.Fatal(err)
	}
	tw.Write(body)
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return &testSource{data: buf.Bytes()}
}

type countingCloser struct {
	io.Reader
	closed *atomic.Int32
}

func (c countingCloser) Close() error { c.closed.Add(1); return nil }

func (s *testSource) source(ctx context.Context) (io.ReadCloser, int64, error) {
	s.calls.Add(1)
	return countingCloser{bytes.NewReader(s.data), &s.closed}, int64(len(s.data)), nil
}

// logText is the stored output of a build.
func (e *runnerEnv) logText(id string) string {
	e.t.Helper()
	var buf bytes.Buffer
	if err := e.logs.Follow(context.Background(), id, &buf, false); err != nil {
		e.t.Fatal(err)
	}
	return buf.String()
}
