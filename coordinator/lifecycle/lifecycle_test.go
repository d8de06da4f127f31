package coordinator

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/swarm"

	"github.com/forge-ci/forge/coordinator/config"
	"github.com/forge-ci/forge/coordinator/plan"
	"github.com/forge-ci/forge/coordinator/store"
	"github.com/forge-ci/forge/forgexec"
	"github.com/forge-ci/forge/internal/testwait"
	"github.com/forge-ci/forge/wire"
)

// Manager timings for the tests: small, so that every test is quick.
const (
	testPollInterval     = 10 * time.Millisecond
	testUnplaceableGrace = 50 * time.Millisecond
	testAgentWait        = 100 * time.Millisecond
	testLandTimeout      = 2 * time.Second
	testCancelGrace      = 1 * time.Second
)

// testInstance is the Manager's Instance in these tests.
const testInstance = "test"

// testWait bounds every wait of these tests.
const testWait = 10 * time.Second

// fakeEngine is a Swarm with function fields.
type fakeEngine struct {
	create func(spec swarm.ServiceSpec) (swarm.ServiceCreateResponse, error)
	remove func(id string) error
	list   func(opts swarm.ServiceListOptions) ([]swarm.Service, error)
	tasks  func(opts swarm.TaskListOptions) ([]swarm.Task, error)
}

func (f *fakeEngine) ServiceCreate(_ context.Context, spec swarm.ServiceSpec, _ swarm.ServiceCreateOptions) (swarm.ServiceCreateResponse, error) {
	return f.create(spec)
}

func (f *fakeEngine) ServiceRemove(_ context.Context, id string) error { return f.remove(id) }

func (f *fakeEngine) ServiceList(_ context.Context, opts swarm.ServiceListOptions) ([]swarm.Service, error) {
	return f.list(opts)
}

func (f *fakeEngine) TaskList(_ context.Context, opts swarm.TaskListOptions) ([]swarm.Task, error) {
	return f.tasks(opts)
}

// fakeDispatcher is a Dispatcher with function fields.
type fakeDispatcher struct {
	waitAgent func(ctx context.Context, nodeID string) error
	launch    func(ctx context.Context, nodeID string, req LaunchRequest) (*LaunchResult, error)
	cancel    func(ctx context.Context, nodeID, buildID, containerID string, grace time.Duration) (*wire.Cancelled, error)
}

func (f *fakeDispatcher) WaitAgent(ctx context.Context, nodeID string) error {
	return f.waitAgent(ctx, nodeID)
}

func (f *fakeDispatcher) Launch(ctx context.Context, nodeID string, req LaunchRequest) (*LaunchResult, error) {
	return f.launch(ctx, nodeID, req)
}

func (f *fakeDispatcher) Cancel(ctx context.Context, nodeID, buildID, containerID string, grace time.Duration) (*wire.Cancelled, error) {
	return f.cancel(ctx, nodeID, buildID, containerID, grace)
}

// simService is a service the simulated swarm holds.
type simService struct {
	ID, BuildID string
	Spec        swarm.ServiceSpec
	Created     time.Time
	polls       int // task lists asked for it
}

// swarmSim simulates the manager node's Engine API behind a fakeEngine:
// services are created, listed and removed, and tasks says what the task
// list of a service shows.
type swarmSim struct {
	t  *testing.T
	mu sync.Mutex
	n  int

	services []*simService // in creation order; listed by ServiceList unless removed
	specs    []swarm.ServiceSpec
	removed  map[string]int // service id -> ServiceRemove calls
	taskList int            // TaskList calls

	// createErr, when set, fails every ServiceCreate.
	createErr error
	// onCreate, when set, is called after a service is created.
	onCreate func(s *simService)
	// tasks says what the task list shows for s on its poll-th listing
	// (from 1); nil shows one new task with no node.
	tasks func(s *simService, poll int) []swarm.Task
}

func newSwarmSim(t *testing.T) *swarmSim {
	return &swarmSim{t: t, removed: map[string]int{}}
}

func (s *swarmSim) engine() *fakeEngine {
	return &fakeEngine{
		create: func(spec swarm.ServiceSpec) (swarm.ServiceCreateResponse, error) {
			s.mu.Lock()
			s.specs = append(s.specs, spec)
			if s.createErr != nil {
				s.mu.Unlock()
				return swarm.ServiceCreateResponse{}, s.createErr
			}
			s.n++
			svc := &simService{ID: fmt.Sprintf("svc-%d", s.n), BuildID: spec.Labels[plan.LabelBuild], Spec: spec, Created: time.Now()}
			s.services = append(s.services, svc)
			hook := s.onCreate
			s.mu.Unlock()
			if hook != nil {
				hook(svc)
			}
			return swarm.ServiceCreateResponse{ID: svc.ID}, nil
		},
		remove: func(id string) error {
			s.mu.Lock()
			defer s.mu.Unlock()
			s.removed[id]++
			if s.removed[id] > 1 || s.byID(id) == nil {
				return cerrdefs.ErrNotFound
			}
			return nil
		},
		list: func(opts swarm.ServiceListOptions) ([]swarm.Service, error) {
			s.mu.Lock()
			defer s.mu.Unlock()
			labels := opts.Filters.Get("label")
			if !slices.Contains(labels, plan.LabelBuild) {
				s.t.Errorf("ServiceList filters by labels %q, without %q", labels, plan.LabelBuild)
			}
			var out []swarm.Service
			for _, svc := range s.services {
				if s.removed[svc.ID] == 0 && hasLabels(svc.Spec.Labels, labels) {
					out = append(out, swarm.Service{ID: svc.ID, Spec: svc.Spec})
				}
			}
			return out, nil
		},
		tasks: func(opts swarm.TaskListOptions) ([]swarm.Task, error) {
			ids := opts.Filters.Get("service")
			s.mu.Lock()
			s.taskList++
			if len(ids) != 1 {
				s.mu.Unlock()
				s.t.Errorf("TaskList filters by service %q, want one service", ids)
				return nil, nil
			}
			svc := s.byID(ids[0])
			if svc == nil {
				s.mu.Unlock()
				s.t.Errorf("TaskList for unknown service %s", ids[0])
				return nil, nil
			}
			svc.polls++
			poll, tasks := svc.polls, s.tasks
			s.mu.Unlock()
			var out []swarm.Task
			if tasks == nil {
				out = []swarm.Task{{Status: swarm.TaskStatus{State: swarm.TaskStateNew}}}
			} else {
				out = tasks(svc, poll)
			}
			for i := range out {
				out[i].ServiceID = svc.ID
				if out[i].ID == "" {
					out[i].ID = "task-" + svc.ID
				}
			}
			return out, nil
		},
	}
}

// hasLabels says whether labels match every filter, "key" or "key=value",
// as the Engine's label filter does.
func hasLabels(labels map[string]string, filters []string) bool {
	for _, f := range filters {
		k, v, withValue := strings.Cut(f, "=")
		got, ok := labels[k]
		if !ok || withValue && got != v {
			return false
		}
	}
	return true
}

// byID returns the service with that id; s.mu is held.
func (s *swarmSim) byID(id string) *simService {
	for _, svc := range s.services {
		if svc.ID == id {
			return svc
		}
	}
	return nil
}

// add puts a service in the swarm as if created before the test (Recover).
func (s *swarmSim) add(id, buildID string) { s.addOf(testInstance, id, buildID) }

// addOf adds a service made by the coordinator instance.
func (s *swarmSim) addOf(instance, id, buildID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	labels := map[string]string{plan.LabelBuild: buildID, LabelCoordinator: instance}
	s.services = append(s.services, &simService{ID: id, BuildID: buildID,
		Spec: swarm.ServiceSpec{Annotations: swarm.Annotations{Name: "forge-" + id, Labels: labels}}})
}

// service returns the service created for a build, or nil.
func (s *swarmSim) service(buildID string) *simService {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, svc := range s.services {
		if svc.BuildID == buildID {
			return svc
		}
	}
	return nil
}

func (s *swarmSim) polls(buildID string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, svc := range s.services {
		if svc.BuildID == buildID {
			return svc.polls
		}
	}
	return 0
}

func (s *swarmSim) removals(serviceID string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.removed[serviceID]
}

func (s *swarmSim) totalRemovals() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, c := range s.removed {
		n += c
	}
	return n
}

func (s *swarmSim) created() []swarm.ServiceSpec {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.specs)
}

// launchCall is one Dispatcher.Launch the manager made.
type launchCall struct {
	node   string
	req    LaunchRequest
	source []byte // what req.Source held
	// removedBefore counts ServiceRemove calls of the build's service
	// before the launch.
	removedBefore int
}

// cancelCall is one Dispatcher.Cancel the manager made.
type cancelCall struct {
	node, build, container string
	grace                  time.Duration
}

// agentSim simulates the agents behind a fakeDispatcher. Its default
// agent is there on every node, starts every build and never reports an
// exit; the test says what a Launch or a Cancel does. It writes what an
// agent reports into the real LogStore, as the agent server does.
type agentSim struct {
	t    *testing.T
	logs *LogStore
	sw   *swarmSim

	mu       sync.Mutex
	waits    []string
	launches []launchCall
	cancels  []cancelCall
	bg       sync.WaitGroup

	// waitAgent, when set, replaces "the agent is there".
	waitAgent func(ctx context.Context, node string) error
	// launch, when set, is what the agent does with a Launch (after it
	// is recorded); nil: started, no exit yet.
	launch func(ctx context.Context, node string, req LaunchRequest) (*LaunchResult, error)
	// cancel, when set, is what the agent does with a Cancel (after it is
	// recorded); nil: the container is stopped and exits 143.
	cancel func(ctx context.Context, c cancelCall) (*wire.Cancelled, error)
}

func (a *agentSim) dispatcher() *fakeDispatcher {
	return &fakeDispatcher{
		waitAgent: func(ctx context.Context, node string) error {
			a.mu.Lock()
			a.waits = append(a.waits, node)
			wait := a.waitAgent
			a.mu.Unlock()
			if wait != nil {
				return wait(ctx, node)
			}
			return nil
		},
		launch: func(ctx context.Context, node string, req LaunchRequest) (*LaunchResult, error) {
			var src []byte
			if req.Source != nil {
				var err error
				if src, err = io.ReadAll(req.Source); err != nil {
					a.t.Errorf("read the source of %s: %v", req.BuildID, err)
				}
			}
			removed := 0
			if svc := a.sw.service(req.BuildID); svc != nil {
				removed = a.sw.removals(svc.ID)
			}
			a.mu.Lock()
			a.launches = append(a.launches, launchCall{node: node, req: req, source: src, removedBefore: removed})
			launch := a.launch
			a.mu.Unlock()
			if launch != nil {
				return launch(ctx, node, req)
			}
			return &LaunchResult{Started: wire.Started{ContainerID: req.ContainerID, StartedAt: time.Now()}}, nil
		},
		cancel: func(ctx context.Context, node, build, container string, grace time.Duration) (*wire.Cancelled, error) {
			c := cancelCall{node: node, build: build, container: container, grace: grace}
			a.mu.Lock()
			a.cancels = append(a.cancels, c)
			cancel := a.cancel
			a.mu.Unlock()
			if cancel != nil {
				return cancel(ctx, c)
			}
			code := 143
			a.report(build, "terminated\n", &wire.Exit{ExitCode: code})
			return &wire.Cancelled{ExitCode: &code}, nil
		},
	}
}

// report writes, in the background, what an agent reports of a build: an
// output chunk (if out is set) and then, if x is set, the exit.
func (a *agentSim) report(buildID, out string, x *wire.Exit) {
	a.bg.Add(1)
	go func() {
		defer a.bg.Done()
		ctx := context.Background()
		var seq uint64
		if out != "" {
			seq = 1
			if err := a.logs.Log(ctx, buildID, &wire.Log{Seq: seq, Stream: wire.StreamStdout, Data: []byte(out)}); err != nil {
				a.t.Errorf("log of %s: %v", buildID, err)
			}
		}
		if x != nil {
			e := *x
			e.LastSeq, e.FinishedAt = seq, time.Now().UTC()
			if err := a.logs.Exit(ctx, buildID, &e); err != nil {
				a.t.Errorf("exit of %s: %v", buildID, err)
			}
		}
	}()
}

// exitAfterLaunch is a launch behaviour: the container starts, prints
// "hello" and exits with x.
func (a *agentSim) exitAfterLaunch(x wire.Exit) func(context.Context, string, LaunchRequest) (*LaunchResult, error) {
	return func(_ context.Context, _ string, req LaunchRequest) (*LaunchResult, error) {
		a.report(req.BuildID, "hello\n", &x)
		return &LaunchResult{Started: wire.Started{ContainerID: req.ContainerID, StartedAt: time.Now()}}, nil
	}
}

func (a *agentSim) setLaunch(fn func(context.Context, string, LaunchRequest) (*LaunchResult, error)) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.launch = fn
}

func (a *agentSim) launchCalls() []launchCall {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.launches)
}

func (a *agentSim) cancelCalls() []cancelCall {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.cancels)
}

func (a *agentSim) waitCalls() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.waits)
}

// changeLog records OnChange calls.
type changeLog struct {
	mu     sync.Mutex
	states map[string][]store.State
}

func (c *changeLog) record(b *store.Build) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.states[b.ID] = append(c.states[b.ID], b.State)
}

func (c *changeLog) of(id string) []store.State {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.states[id])
}

// managerEnv is a Manager on a real store and LogStore, with a simulated
// swarm and simulated agents.
type managerEnv struct {
	t       *testing.T
	m       *Manager
	st      *store.Store
	logs    *LogStore
	sw      *swarmSim
	ag      *agentSim
	changes *changeLog

	dispatches atomic.Int32
	dispatched atomic.Int64 // the last OnDispatch duration
}

func newManagerEnv(t *testing.T) *managerEnv {
	t.Helper()
	st, err := store.Open(":memory:")
	if err != nil {
		t.Fatal(err)
	}
	logs := &LogStore{Dir: t.TempDir()}
	e := &managerEnv{t: t, st: st, logs: logs, sw: newSwarmSim(t),
		changes: &changeLog{states: map[string][]store.State{}}}
	e.ag = &agentSim{t: t, logs: logs, sw: e.sw}
	t.Cleanup(func() { st.Close() })
	t.Cleanup(func() { logs.Close() })
	t.Cleanup(e.ag.bg.Wait)
	e.m = e.newManager()
	t.Cleanup(e.m.Close)
	return e
}

// newManager returns a Manager on e's store, logs, swarm and agents, as a
// restarted coordinator would have.
func (e *managerEnv) newManager() *Manager {
	exe, err := NewExecutor([]byte("#!forgexec (test)\n"))
	if err != nil {
		e.t.Fatal(err)
	}
	return &Manager{
		Swarm: e.sw.engine(), Store: e.st, Logs: e.logs, Agents: e.ag.dispatcher(), Executor: exe, Instance: testInstance,
		PollInterval: testPollInterval, UnplaceableGrace: testUnplaceableGrace, AgentWait: testAgentWait,
		LandTimeout: testLandTimeout, CancelGrace: testCancelGrace,
		OnChange: e.changes.record,
		OnDispatch: func(d time.Duration) {
			e.dispatches.Add(1)
			e.dispatched.Store(int64(d))
		},
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
func (e *managerEnv) request(sha, key string) Request {
	return e.requestWith(sha, key, testConfigText)
}

func (e *managerEnv) requestWith(sha, key, cfgText string) Request {
	return Request{
		Build: store.Build{Owner: "octo", Repo: "hello", PullRequest: 7, Branch: "feature", SHA: sha,
			Ref: "refs/pull/7/head", CommitCount: 3, Trigger: "pull_request", Key: key, InstallationID: 42},
		Config:     parseTestConfig(e.t, cfgText),
		ConfigText: cfgText,
		Labels:     map[string]string{"com.example.test": "manager"},
	}
}

func (e *managerEnv) submit(req Request) *store.Build {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	b, err := e.m.Submit(ctx, req)
	if err != nil {
		e.t.Fatalf("Submit: %v", err)
	}
	if b.State != store.Queued || b.ID == "" {
		e.t.Fatalf("Submit returned %s %q, want a queued build with an id", b.State, b.ID)
	}
	return b
}

// wait returns the build once it is final.
func (e *managerEnv) wait(id string) *store.Build {
	e.t.Helper()
	return waitManager(e.t, e.m, id)
}

func waitManager(t *testing.T, m *Manager, id string) *store.Build {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	b, err := m.Wait(ctx, id)
	if err != nil {
		t.Fatalf("Wait %s: %v", id, err)
	}
	if !b.State.Final() {
		t.Fatalf("Wait %s returned a build in state %s", id, b.State)
	}
	return b
}

func (e *managerEnv) stored(id string) *store.Build {
	e.t.Helper()
	b, err := e.st.Build(context.Background(), id)
	if err != nil {
		e.t.Fatal(err)
	}
	return b
}

// waitStored waits until the stored build satisfies cond.
func (e *managerEnv) waitStored(id, what string, cond func(b *store.Build) bool) *store.Build {
	e.t.Helper()
	var b *store.Build
	waitFor(e.t, what, func() bool {
		b = e.stored(id)
		return cond(b)
	})
	return b
}

// want is what a final build must hold.
type want struct {
	state       store.State
	reason      string // exact
	exit        *int
	node        string
	container   string
	serviceName string
	serviceID   string
}

func intPtr(i int) *int { return &i }

func exitString(p *int) string {
	if p == nil {
		return "<nil>"
	}
	return fmt.Sprint(*p)
}

func checkBuild(t *testing.T, b *store.Build, w want) {
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

func (e *managerEnv) checkChanges(id string, want ...store.State) {
	e.t.Helper()
	if got := e.changes.of(id); !slices.Equal(got, want) {
		e.t.Errorf("OnChange states of %s: %v, want %v", id, got, want)
	}
}

// checkRemovedOnce checks that the build's service was removed exactly once.
func (e *managerEnv) checkRemovedOnce(svc *simService) {
	e.t.Helper()
	if svc == nil {
		e.t.Error("no service was created")
		return
	}
	if n := e.sw.removals(svc.ID); n != 1 {
		e.t.Errorf("service %s removed %d times, want once", svc.ID, n)
	}
}

func (e *managerEnv) mustService(id string) *simService {
	e.t.Helper()
	svc := e.sw.service(id)
	if svc == nil {
		e.t.Fatalf("no service created for build %s", id)
	}
	return svc
}

// Task states as swarm shows them.

// taskAssigned is a task placed on node, its container not created yet.
func taskAssigned(node string) swarm.Task {
	return swarm.Task{NodeID: node, Status: swarm.TaskStatus{State: swarm.TaskStateAssigned, Message: "assigned"}}
}

// taskFailedStart is what swarm shows once a build's container exists:
// the start of /forgexec failed (DESIGN.md §2), the container stays.
func taskFailedStart(node, container string) swarm.Task {
	return swarm.Task{NodeID: node, Status: swarm.TaskStatus{
		State: swarm.TaskStateFailed, Message: "starting container failed",
		Err:             `starting container failed: exec: "/forgexec": stat /forgexec: no such file or directory`,
		ContainerStatus: &swarm.ContainerStatus{ContainerID: container, ExitCode: 127},
	}}
}

// landsOn makes every service's task land on node with container
// "c-<service id>", seen in the task list from the second poll on.
func landsOn(node string) func(*simService, int) []swarm.Task {
	return func(s *simService, poll int) []swarm.Task {
		if poll < 2 {
			return []swarm.Task{taskAssigned(node)}
		}
		return []swarm.Task{taskFailedStart(node, "c-"+s.ID)}
	}
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
func (e *managerEnv) logText(id string) string {
	e.t.Helper()
	var buf bytes.Buffer
	if err := e.logs.Follow(context.Background(), id, &buf, false); err != nil {
		e.t.Fatal(err)
	}
	return buf.String()
}

// 1. A build that passes: the task gets its node from the task list, the
// container from the agent's Landed report; Launch goes to that node.
func TestManagerSuccess(t *testing.T) {
	e := newManagerEnv(t)
	e.sw.tasks = func(*simService, int) []swarm.Task { return []swarm.Task{taskAssigned("node-a")} }
	e.sw.onCreate = func(s *simService) {
		e.m.Landed("node-a", wire.Landed{BuildID: s.BuildID, ContainerID: "c-a", Created: time.Now()})
	}
	e.ag.setLaunch(e.ag.exitAfterLaunch(wire.Exit{ExitCode: 0}))
	src := newTestSource(t)
	req := e.request(testSHA('a'), "octo/hello#7")
	req.Source = src.source

	q := e.submit(req)
	if q.Action != config.DefaultAction || q.Config != testConfigText || q.Created.IsZero() {
		t.Errorf("queued build: action %q, config %q, created %v", q.Action, q.Config, q.Created)
	}
	b := e.wait(q.ID)
	svc := e.mustService(q.ID)
	checkBuild(t, b, want{state: store.Success, exit: intPtr(0), node: "node-a", container: "c-a",
		serviceName: svc.Spec.Name, serviceID: svc.ID})
	if b.Started.IsZero() {
		t.Error("Started not recorded")
	}
	e.checkChanges(q.ID, store.Queued, store.Running, store.Success)
	e.checkRemovedOnce(svc)

	// The service.
	if !strings.HasPrefix(svc.Spec.Name, "forge-octo-hello-7-") {
		t.Errorf("service name %q", svc.Spec.Name)
	}
	for k, v := range map[string]string{plan.LabelBuild: q.ID, plan.LabelSHA: req.Build.SHA, plan.LabelRepo: "octo/hello", LabelCoordinator: testInstance,
		plan.LabelPullRequest: "7", plan.LabelAction: "execute", "com.example.test": "manager"} {
		if got := svc.Spec.Labels[k]; got != v {
			t.Errorf("service label %s=%q, want %q", k, got, v)
		}
	}

	// The launch: once, to the task's node, with everything the agent needs.
	if w := e.ag.waitCalls(); !slices.Equal(w, []string{"node-a"}) {
		t.Errorf("WaitAgent calls %v, want [node-a]", w)
	}
	ls := e.ag.launchCalls()
	if len(ls) != 1 {
		t.Fatalf("%d launches, want 1", len(ls))
	}
	l := ls[0]
	if l.node != "node-a" || l.req.BuildID != q.ID || l.req.ContainerID != "c-a" {
		t.Errorf("launch to %s of build %s container %s, want node-a %s c-a", l.node, l.req.BuildID, l.req.ContainerID, q.ID)
	}
	if l.req.Executor != e.m.Executor {
		t.Error("launch does not carry the manager's executor")
	}
	if l.req.Workdir != "/work/src" {
		t.Errorf("launch workdir %q, want /work/src", l.req.Workdir)
	}
	if !bytes.Equal(l.source, src.data) || l.req.SourceSize != int64(len(src.data)) {
		t.Errorf("launch source: %d bytes, size %d; want the %d bytes of the source", len(l.source), l.req.SourceSize, len(src.data))
	}
	if n, c := src.calls.Load(), src.closed.Load(); n != 1 || c != 1 {
		t.Errorf("source opened %d times and closed %d times, want once each", n, c)
	}
	if l.removedBefore != 0 {
		t.Error("the service was removed before the launch")
	}
	var spec forgexec.Spec
	if err := json.Unmarshal(l.req.Spec, &spec); err != nil {
		t.Fatalf("launch spec: %v\n%s", err, l.req.Spec)
	}
	if spec.BuildID != q.ID || spec.Action != "execute" || spec.Workdir != "/work/src" ||
		time.Duration(spec.Timeout) != 30*time.Minute ||
		!slices.Equal(spec.Setup, []string{"go mod download"}) ||
		!slices.Equal(spec.Commands, []string{"go vet ./...", "go test ./..."}) {
		t.Errorf("launch spec %+v", spec)
	}
	if err := spec.Validate(); err != nil {
		t.Errorf("launch spec: %v", err)
	}

	if n := e.dispatches.Load(); n != 1 {
		t.Errorf("OnDispatch called %d times, want once", n)
	}
	if d := time.Duration(e.dispatched.Load()); d <= 0 {
		t.Errorf("OnDispatch told %v", d)
	}
	if got := e.logText(q.ID); got != "hello\n" {
		t.Errorf("stored output %q", got)
	}
	if c := e.ag.cancelCalls(); len(c) != 0 {
		t.Errorf("Dispatcher.Cancel called for a passing build: %v", c)
	}
}

// 2. Landing through the task list alone: no Landed report comes.
func TestManagerLandsFromTaskList(t *testing.T) {
	e := newManagerEnv(t)
	e.sw.tasks = landsOn("node-b")
	e.ag.setLaunch(e.ag.exitAfterLaunch(wire.Exit{ExitCode: 0}))
	q := e.submit(e.request(testSHA('b'), ""))
	b := e.wait(q.ID)
	svc := e.mustService(q.ID)
	checkBuild(t, b, want{state: store.Success, exit: intPtr(0), node: "node-b", container: "c-" + svc.ID,
		serviceName: svc.Spec.Name, serviceID: svc.ID})
	e.checkChanges(q.ID, store.Queued, store.Running, store.Success)
	e.checkRemovedOnce(svc)
	ls := e.ag.launchCalls()
	if len(ls) != 1 || ls[0].node != "node-b" || ls[0].req.ContainerID != "c-"+svc.ID {
		t.Fatalf("launches %+v, want one to node-b", ls)
	}
	// No source: nothing is sent, and the work directory is the config's.
	if ls[0].req.Source != nil || ls[0].req.SourceSize != 0 || ls[0].req.Workdir != "/work/src" {
		t.Errorf("launch without source: source %v size %d workdir %q", ls[0].req.Source, ls[0].req.SourceSize, ls[0].req.Workdir)
	}
	if n := e.dispatches.Load(); n != 1 {
		t.Errorf("OnDispatch called %d times, want once", n)
	}
}

// 3. A Landed report from the agent of another node than the task's is
// not believed: the launch goes to the task's node only.
func TestManagerIgnoresLandedFromOtherNode(t *testing.T) {
	e := newManagerEnv(t)
	var reported atomic.Bool
	e.sw.onCreate = func(s *simService) {
		e.m.Landed("node-evil", wire.Landed{BuildID: s.BuildID, ContainerID: "c-evil", Created: time.Now()})
	}
	e.sw.tasks = func(s *simService, poll int) []swarm.Task {
		// The wrong report has been read for a while (polls go on only
		// because it was not taken); then the task's own agent reports.
		if poll >= 5 && reported.CompareAndSwap(false, true) {
			e.m.Landed("node-a", wire.Landed{BuildID: s.BuildID, ContainerID: "c-a", Created: time.Now()})
		}
		return []swarm.Task{taskAssigned("node-a")}
	}
	e.ag.setLaunch(e.ag.exitAfterLaunch(wire.Exit{ExitCode: 0}))
	q := e.submit(e.request(testSHA('c'), ""))
	b := e.wait(q.ID)
	svc := e.mustService(q.ID)
	checkBuild(t, b, want{state: store.Success, exit: intPtr(0), node: "node-a", container: "c-a",
		serviceName: svc.Spec.Name, serviceID: svc.ID})
	e.checkChanges(q.ID, store.Queued, store.Running, store.Success)
	e.checkRemovedOnce(svc)
	if !reported.Load() {
		t.Error("the build landed before the task's own agent reported")
	}
	ls := e.ag.launchCalls()
	if len(ls) != 1 || ls[0].node != "node-a" || ls[0].req.ContainerID != "c-a" {
		t.Fatalf("launches %+v, want one to node-a, container c-a", ls)
	}
	if w := e.ag.waitCalls(); !slices.Equal(w, []string{"node-a"}) {
		t.Errorf("WaitAgent calls %v, want [node-a]", w)
	}
}

// A Landed report for a build nobody watches is dropped.
func TestManagerLandedUnknownBuild(t *testing.T) {
	e := newManagerEnv(t)
	e.m.Landed("node-a", wire.Landed{BuildID: "nope", ContainerID: "c"}) // no panic, no effect
}

// 4. A rejected task ends the build with swarm's own message.
func TestManagerRejectedTask(t *testing.T) {
	e := newManagerEnv(t)
	const msg = "No such image: golang:no-such-tag"
	e.sw.tasks = func(*simService, int) []swarm.Task {
		return []swarm.Task{{NodeID: "node-a", Status: swarm.TaskStatus{State: swarm.TaskStateRejected, Message: "preparing", Err: msg}}}
	}
	q := e.submit(e.request(testSHA('d'), ""))
	b := e.wait(q.ID)
	svc := e.mustService(q.ID)
	checkBuild(t, b, want{state: store.Error, reason: "swarm rejected the task: " + msg,
		serviceName: svc.Spec.Name, serviceID: svc.ID})
	e.checkChanges(q.ID, store.Queued, store.Running, store.Error)
	e.checkRemovedOnce(svc)
	if ls := e.ag.launchCalls(); len(ls) != 0 {
		t.Errorf("launched a rejected build: %+v", ls)
	}
	if w := e.ag.waitCalls(); len(w) != 0 {
		t.Errorf("waited for an agent for a rejected build: %v", w)
	}
	if n := e.dispatches.Load(); n != 0 {
		t.Errorf("OnDispatch called %d times", n)
	}
}

// 5. A task swarm cannot place ends the build after the grace, with
// swarm's message.
func TestManagerUnplaceableTask(t *testing.T) {
	e := newManagerEnv(t)
	const msg = "no suitable node (scheduling constraints not satisfied on 3 nodes)"
	e.sw.tasks = func(*simService, int) []swarm.Task {
		return []swarm.Task{{Status: swarm.TaskStatus{State: swarm.TaskStatePending, Message: "pending task scheduling", Err: msg}}}
	}
	q := e.submit(e.request(testSHA('e'), ""))
	b := e.wait(q.ID)
	svc := e.mustService(q.ID)
	checkBuild(t, b, want{state: store.Error, reason: "swarm cannot place the task: " + msg,
		serviceName: svc.Spec.Name, serviceID: svc.ID})
	e.checkChanges(q.ID, store.Queued, store.Running, store.Error)
	e.checkRemovedOnce(svc)
	if d := b.Finished.Sub(svc.Created); d < testUnplaceableGrace {
		t.Errorf("gave up after %v, before the grace of %v", d, testUnplaceableGrace)
	}
	if ls := e.ag.launchCalls(); len(ls) != 0 {
		t.Errorf("launched an unplaceable build: %+v", ls)
	}
}

// A task pending with a scheduling error for less than the grace that is
// then placed runs normally.
func TestManagerPendingThenPlaced(t *testing.T) {
	e := newManagerEnv(t)
	e.m.UnplaceableGrace = 2 * time.Second // far beyond the 3 polls, even on a loaded machine
	e.sw.tasks = func(s *simService, poll int) []swarm.Task {
		if poll <= 3 {
			return []swarm.Task{{Status: swarm.TaskStatus{State: swarm.TaskStatePending, Err: "no suitable node (insufficient resources on 1 node)"}}}
		}
		return []swarm.Task{taskFailedStart("node-a", "c-a")}
	}
	e.ag.setLaunch(e.ag.exitAfterLaunch(wire.Exit{ExitCode: 0}))
	q := e.submit(e.request(testSHA('e'), ""))
	b := e.wait(q.ID)
	svc := e.mustService(q.ID)
	checkBuild(t, b, want{state: store.Success, exit: intPtr(0), node: "node-a", container: "c-a",
		serviceName: svc.Spec.Name, serviceID: svc.ID})
	e.checkRemovedOnce(svc)
}

// The task never gets a container: the build ends after LandTimeout.
func TestManagerLandTimeout(t *testing.T) {
	e := newManagerEnv(t)
	e.m.LandTimeout = 150 * time.Millisecond
	e.sw.tasks = func(*simService, int) []swarm.Task {
		return []swarm.Task{{NodeID: "node-a", Status: swarm.TaskStatus{State: swarm.TaskStatePreparing}}}
	}
	q := e.submit(e.request(testSHA('f'), ""))
	b := e.wait(q.ID)
	svc := e.mustService(q.ID)
	checkBuild(t, b, want{state: store.Error, reason: "the task did not start a container within 150ms",
		serviceName: svc.Spec.Name, serviceID: svc.ID})
	e.checkChanges(q.ID, store.Queued, store.Running, store.Error)
	e.checkRemovedOnce(svc)
	if ls := e.ag.launchCalls(); len(ls) != 0 {
		t.Errorf("launched: %+v", ls)
	}
}

// 6. No agent on the node where the task landed: error naming the node,
// within AgentWait.
func TestManagerNoAgent(t *testing.T) {
	e := newManagerEnv(t)
	e.sw.tasks = landsOn("node-z")
	var waitStart atomic.Int64
	e.ag.waitAgent = func(ctx context.Context, node string) error {
		waitStart.Store(time.Now().UnixNano())
		<-ctx.Done()
		return fmt.Errorf("%w %s: %w", ErrNoAgent, node, ctx.Err())
	}
	q := e.submit(e.request(testSHA('1'), ""))
	b := e.wait(q.ID)
	svc := e.mustService(q.ID)
	checkBuild(t, b, want{state: store.Error, reason: "no agent on node node-z within 100ms",
		node: "node-z", container: "c-" + svc.ID, serviceName: svc.Spec.Name, serviceID: svc.ID})
	e.checkChanges(q.ID, store.Queued, store.Running, store.Error)
	e.checkRemovedOnce(svc)
	waited := b.Finished.Sub(time.Unix(0, waitStart.Load()))
	if waited < testAgentWait-5*time.Millisecond || waited > testAgentWait+2*time.Second {
		t.Errorf("gave up on the agent after %v, want about %v", waited, testAgentWait)
	}
	if w := e.ag.waitCalls(); !slices.Equal(w, []string{"node-z"}) {
		t.Errorf("WaitAgent calls %v, want [node-z]", w)
	}
	if ls := e.ag.launchCalls(); len(ls) != 0 {
		t.Errorf("launched without an agent: %+v", ls)
	}
}

// 7. The agent refuses the launch: error with the agent's message.
func TestManagerLaunchRefused(t *testing.T) {
	e := newManagerEnv(t)
	e.sw.tasks = landsOn("node-a")
	const msg = "container c-svc-1 has forge.build=other, not this build"
	e.ag.setLaunch(func(context.Context, string, LaunchRequest) (*LaunchResult, error) {
		return nil, &wire.RefusedError{Want: wire.TypeLaunchReady, Code: wire.RefusedForbidden, Message: msg}
	})
	q := e.submit(e.request(testSHA('2'), ""))
	b := e.wait(q.ID)
	svc := e.mustService(q.ID)
	wantErr := (&wire.RefusedError{Want: wire.TypeLaunchReady, Code: wire.RefusedForbidden, Message: msg}).Error()
	checkBuild(t, b, want{state: store.Error, reason: wantErr,
		node: "node-a", container: "c-" + svc.ID, serviceName: svc.Spec.Name, serviceID: svc.ID})
	if !strings.Contains(b.Reason, msg) {
		t.Errorf("reason %q does not carry the agent's message", b.Reason)
	}
	e.checkChanges(q.ID, store.Queued, store.Running, store.Error)
	e.checkRemovedOnce(svc)
	if !b.Started.IsZero() {
		t.Error("a refused build has a Started time")
	}
	if n := e.dispatches.Load(); n != 0 {
		t.Errorf("OnDispatch called %d times for a refused launch", n)
	}
	if ls := e.ag.launchCalls(); len(ls) != 1 {
		t.Errorf("%d launches, want 1", len(ls))
	}
}

// The source cannot be produced: error, nothing launched.
func TestManagerSourceError(t *testing.T) {
	e := newManagerEnv(t)
	e.sw.tasks = landsOn("node-a")
	req := e.request(testSHA('3'), "")
	req.Source = func(context.Context) (io.ReadCloser, int64, error) {
		return nil, 0, errors.New("download tarball: 502 Bad Gateway")
	}
	q := e.submit(req)
	b := e.wait(q.ID)
	svc := e.mustService(q.ID)
	checkBuild(t, b, want{state: store.Error, reason: "source: download tarball: 502 Bad Gateway",
		node: "node-a", container: "c-" + svc.ID, serviceName: svc.Spec.Name, serviceID: svc.ID})
	e.checkRemovedOnce(svc)
	if ls := e.ag.launchCalls(); len(ls) != 0 {
		t.Errorf("launched without source: %+v", ls)
	}
}

// 8. What the exit says.
func TestManagerExitCodes(t *testing.T) {
	for _, tc := range []struct {
		name   string
		exit   wire.Exit
		state  store.State
		reason string
		code   *int
	}{
		{"pass", wire.Exit{ExitCode: 0}, store.Success, "", intPtr(0)},
		{"fail", wire.Exit{ExitCode: 3}, store.Failure, "exit code 3", intPtr(3)},
		{"executor timeout", wire.Exit{ExitCode: forgexec.ExitTimeout}, store.Error, "timed out after 30m0s", intPtr(124)},
		{"agent fault", wire.Exit{ExitCode: -1, Error: "container vanished"}, store.Error, "container vanished", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newManagerEnv(t)
			e.sw.tasks = landsOn("node-a")
			e.ag.setLaunch(e.ag.exitAfterLaunch(tc.exit))
			q := e.submit(e.request(testSHA('4'), ""))
			b := e.wait(q.ID)
			svc := e.mustService(q.ID)
			checkBuild(t, b, want{state: tc.state, reason: tc.reason, exit: tc.code,
				node: "node-a", container: "c-" + svc.ID, serviceName: svc.Spec.Name, serviceID: svc.ID})
			e.checkChanges(q.ID, store.Queued, store.Running, tc.state)
			e.checkRemovedOnce(svc)
			if c := e.ag.cancelCalls(); len(c) != 0 {
				t.Errorf("Dispatcher.Cancel called: %v", c)
			}
		})
	}
}

// 9a. The coordinator's own deadline is the config's timeout plus
// timeoutGrace (30 s): the executor enforces the timeout itself (exit
// 124), the coordinator only catches an executor that cannot. So a build
// whose exit is late by less than the grace is not stopped.
func TestManagerTimeoutLeavesExecutorItsGrace(t *testing.T) {
	e := newManagerEnv(t)
	e.sw.tasks = landsOn("node-a")
	const cfg = "image: alpine\nexecute:\n  - sleep 1000\ntimeout: 100ms\n"
	q := e.submit(e.requestWith(testSHA('5'), "", cfg))
	b := e.waitStored(q.ID, "the build to start", func(b *store.Build) bool { return !b.Started.IsZero() })
	testwait.Pause(t, time.Until(b.Started.Add(100*time.Millisecond+300*time.Millisecond)))
	if b := e.stored(q.ID); b.State != store.Running {
		t.Fatalf("stopped %v after a 100ms timeout: %s %q", time.Since(b.Started), b.State, b.Reason)
	}
	if c := e.ag.cancelCalls(); len(c) != 0 {
		t.Fatalf("Dispatcher.Cancel called within the grace: %v", c)
	}
	// The executor's own timeout then reports 124.
	e.ag.report(q.ID, "", &wire.Exit{ExitCode: forgexec.ExitTimeout})
	b = e.wait(q.ID)
	svc := e.mustService(q.ID)
	checkBuild(t, b, want{state: store.Error, reason: "timed out after 100ms", exit: intPtr(124),
		node: "node-a", container: "c-" + svc.ID, serviceName: svc.Spec.Name, serviceID: svc.ID})
	e.checkRemovedOnce(svc)
}

// recoverOverdue has the manager recover a running build of a 1 s timeout
// that started more than timeout+timeoutGrace ago, on node in container,
// with service svc (named forge-svc): its deadline has passed.
func (e *managerEnv) recoverOverdue(id, sha, node, container, svc string) {
	e.t.Helper()
	const cfg = "image: alpine\nexecute:\n  - sleep 1000\ntimeout: 1s\n"
	ctx := context.Background()
	started := time.Now().Add(-(time.Second + timeoutGrace + 2*time.Second)).UTC()
	b := &store.Build{ID: id, Owner: "octo", Repo: "hello", SHA: sha, Action: "execute", Config: cfg,
		State: store.Running, NodeID: node, ContainerID: container, ServiceID: svc, ServiceName: "forge-" + svc,
		Created: started.Add(-time.Second), Started: started}
	if err := e.st.CreateBuild(ctx, b); err != nil {
		e.t.Fatal(err)
	}
	if err := e.logs.Create(id); err != nil {
		e.t.Fatal(err)
	}
	e.sw.add(svc, id)
	if err := e.m.Recover(ctx); err != nil {
		e.t.Fatal(err)
	}
}

// 9b. The coordinator enforces the timeout when no exit ever comes. The
// deadline counts from the build's Started time, so a build recovered
// after a restart with Started more than timeout+timeoutGrace ago is
// stopped at once: that exercises the enforcement without waiting 30 s.
func TestManagerTimeoutEnforcedByCoordinator(t *testing.T) {
	e := newManagerEnv(t)
	id := "20260101T000000-t1meot"
	e.recoverOverdue(id, testSHA('6'), "node-a", "c-a", "svc-t")
	got := e.wait(id)
	checkBuild(t, got, want{state: store.Error, reason: "timed out after 1s", exit: intPtr(143),
		node: "node-a", container: "c-a", serviceName: "forge-svc-t", serviceID: "svc-t"})
	e.checkChanges(id, store.Error)
	if c := e.ag.cancelCalls(); len(c) != 1 || c[0] != (cancelCall{node: "node-a", build: id, container: "c-a", grace: testCancelGrace}) {
		t.Errorf("Dispatcher.Cancel calls %+v, want one to node-a for c-a with grace %v", c, testCancelGrace)
	}
	if n := e.sw.removals("svc-t"); n != 1 {
		t.Errorf("service removed %d times, want once", n)
	}
}

// 9c. The same through Submit: takes timeoutGrace (30 s) and more, so it
// runs only with FORGE_SLOW_TESTS=1.
func TestManagerTimeoutEnforcedSlow(t *testing.T) {
	if os.Getenv("FORGE_SLOW_TESTS") == "" {
		t.Skip("slow (timeoutGrace is 30 s); set FORGE_SLOW_TESTS=1")
	}
	e := newManagerEnv(t)
	e.sw.tasks = landsOn("node-a")
	const cfg = "image: alpine\nexecute:\n  - sleep 1000\ntimeout: 100ms\n"
	q := e.submit(e.requestWith(testSHA('7'), "", cfg))
	ctx, cancel := context.WithTimeout(context.Background(), timeoutGrace+testWait)
	defer cancel()
	b, err := e.m.Wait(ctx, q.ID)
	if err != nil {
		t.Fatal(err)
	}
	svc := e.mustService(q.ID)
	checkBuild(t, b, want{state: store.Error, reason: "timed out after 100ms", exit: intPtr(143),
		node: "node-a", container: "c-" + svc.ID, serviceName: svc.Spec.Name, serviceID: svc.ID})
	if d := b.Finished.Sub(b.Started); d < 100*time.Millisecond+timeoutGrace {
		t.Errorf("stopped after %v", d)
	}
	e.checkRemovedOnce(svc)
}

// 10a. Cancel while the build runs: the agent of its node is asked to stop
// its container, and the exit it reports is kept.
// 9d. The timeout comes while the node has no agent (cut off, agent
// down): the build ends at once, saying nobody confirmed the stop, and
// its service is removed; it does not wait exitWait for an exit.
func TestManagerTimeoutWithoutAgent(t *testing.T) {
	e := newManagerEnv(t)
	e.ag.cancel = func(ctx context.Context, c cancelCall) (*wire.Cancelled, error) {
		return nil, fmt.Errorf("%w %s", ErrNoAgent, c.node)
	}
	id := "20260101T000000-n0agnt"
	began := time.Now()
	e.recoverOverdue(id, testSHA('7'), "node-c", "c-c", "svc-n")
	got := e.wait(id)
	checkBuild(t, got, want{state: store.Error,
		reason: "timed out after 1s; node node-c has no agent connected to confirm the stop",
		node:   "node-c", container: "c-c", serviceName: "forge-svc-n", serviceID: "svc-n"})
	if d := time.Since(began); d > exitWait/2 {
		t.Errorf("took %v: waited for an exit no agent can send", d)
	}
	if n := e.sw.removals("svc-n"); n != 1 {
		t.Errorf("service removed %d times, want once", n)
	}
}

func TestManagerCancelRunning(t *testing.T) {
	e := newManagerEnv(t)
	e.sw.tasks = landsOn("node-a")
	q := e.submit(e.request(testSHA('8'), ""))
	e.waitStored(q.ID, "the build to start", func(b *store.Build) bool { return !b.Started.IsZero() })
	ctx := context.Background()
	if err := e.m.Cancel(ctx, q.ID, "cancelled by alice"); err != nil {
		t.Fatal(err)
	}
	if err := e.m.Cancel(ctx, q.ID, "cancelled twice"); err != nil { // pending or done: not an error
		t.Fatal(err)
	}
	b := e.wait(q.ID)
	svc := e.mustService(q.ID)
	checkBuild(t, b, want{state: store.Error, reason: "cancelled by alice", exit: intPtr(143),
		node: "node-a", container: "c-" + svc.ID, serviceName: svc.Spec.Name, serviceID: svc.ID})
	e.checkChanges(q.ID, store.Queued, store.Running, store.Error)
	e.checkRemovedOnce(svc)
	c := e.ag.cancelCalls()
	if len(c) != 1 || c[0] != (cancelCall{node: "node-a", build: q.ID, container: "c-" + svc.ID, grace: testCancelGrace}) {
		t.Errorf("Dispatcher.Cancel calls %+v, want one to node-a for c-%s with grace %v", c, svc.ID, testCancelGrace)
	}
	if got := e.logText(q.ID); got != "terminated\n" {
		t.Errorf("stored output %q", got)
	}
	if err := e.m.Cancel(ctx, q.ID, "again"); !errors.Is(err, ErrNotRunning) {
		t.Errorf("Cancel of a final build: %v, want ErrNotRunning", err)
	}
}

// 10b. Cancel while the build lands: no container yet, nothing launched.
func TestManagerCancelLanding(t *testing.T) {
	e := newManagerEnv(t) // the task never gets a node
	q := e.submit(e.request(testSHA('9'), ""))
	waitFor(t, "the task list to be read", func() bool { return e.sw.polls(q.ID) >= 2 })
	if err := e.m.Cancel(context.Background(), q.ID, "cancelled by bob"); err != nil {
		t.Fatal(err)
	}
	b := e.wait(q.ID)
	svc := e.mustService(q.ID)
	checkBuild(t, b, want{state: store.Error, reason: "cancelled by bob",
		serviceName: svc.Spec.Name, serviceID: svc.ID})
	e.checkChanges(q.ID, store.Queued, store.Running, store.Error)
	e.checkRemovedOnce(svc)
	if ls := e.ag.launchCalls(); len(ls) != 0 {
		t.Errorf("launched a cancelled build: %+v", ls)
	}
	if w := e.ag.waitCalls(); len(w) != 0 {
		t.Errorf("waited for an agent: %v", w)
	}
	if c := e.ag.cancelCalls(); len(c) != 0 {
		t.Errorf("Dispatcher.Cancel called with no container: %+v", c)
	}
}

// Cancel while the manager waits for the agent of the node where the
// task landed: Cancel's contract is that the build "ends as error with
// reason", and nothing should be launched for a build already cancelled
// (a superseded commit must say "superseded by ...").
//
// manager.go execute: the cancel channel is not watched during WaitAgent
// (nor during launch); the cancel waits in the channel for await. When no
// agent comes, the build ends after the whole AgentWait (30 s by default)
// as "no agent on node ... within ..." and the cancel's reason is lost;
// when the agent does come, the cancelled build is launched (source sent,
// container started) and only then stopped.
func TestManagerCancelWhileWaitingForAgent(t *testing.T) {
	for _, agentComes := range []bool{false, true} {
		name := "no agent comes"
		if agentComes {
			name = "the agent comes"
		}
		t.Run(name, func(t *testing.T) {
			e := newManagerEnv(t)
			e.m.AgentWait = 2 * time.Second
			e.sw.tasks = landsOn("node-a")
			waiting, cancelDone := make(chan struct{}), make(chan struct{})
			var once sync.Once
			e.ag.waitAgent = func(ctx context.Context, node string) error {
				once.Do(func() { close(waiting) })
				if agentComes {
					select {
					case <-cancelDone:
						return nil
					case <-ctx.Done():
					}
				}
				<-ctx.Done()
				return fmt.Errorf("%w %s: %w", ErrNoAgent, node, ctx.Err())
			}
			q := e.submit(e.request(testSHA('a'), ""))
			select {
			case <-waiting:
			case <-time.After(testWait):
				t.Fatal("the manager never waited for an agent")
			}
			cancelled := time.Now()
			if err := e.m.Cancel(context.Background(), q.ID, "cancelled by alice"); err != nil {
				t.Fatal(err)
			}
			close(cancelDone)
			b := e.wait(q.ID)
			svc := e.mustService(q.ID)
			if b.State != store.Error || b.Reason != "cancelled by alice" {
				t.Errorf("%s %q, want error \"cancelled by alice\"", b.State, b.Reason)
			}
			if d := b.Finished.Sub(cancelled); d > time.Second {
				t.Errorf("the cancel took %v to end the build (AgentWait is %v)", d, e.m.AgentWait)
			}
			e.checkRemovedOnce(svc)
			if ls := e.ag.launchCalls(); len(ls) != 0 {
				t.Errorf("launched a cancelled build (%d launches)", len(ls))
			}
		})
	}
}

// 10c. Cancel of a final build is ErrNotRunning; of an unknown one,
// the store's ErrNotFound.
func TestManagerCancelFinalOrUnknown(t *testing.T) {
	e := newManagerEnv(t)
	e.sw.tasks = landsOn("node-a")
	e.ag.setLaunch(e.ag.exitAfterLaunch(wire.Exit{ExitCode: 3}))
	q := e.submit(e.request(testSHA('a'), ""))
	before := e.wait(q.ID)
	ctx := context.Background()
	if err := e.m.Cancel(ctx, q.ID, "too late"); !errors.Is(err, ErrNotRunning) {
		t.Errorf("Cancel of a final build: %v, want ErrNotRunning", err)
	}
	after := e.stored(q.ID)
	if after.State != before.State || after.Reason != before.Reason {
		t.Errorf("Cancel changed a final build: %s %q -> %s %q", before.State, before.Reason, after.State, after.Reason)
	}
	if err := e.m.Cancel(ctx, "20260101T000000-000000", "who"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Cancel of an unknown build: %v, want ErrNotFound", err)
	}
	e.checkChanges(q.ID, store.Queued, store.Running, store.Failure)
}

// 11a. A second build with the same key supersedes the first, whether it
// is still landing or already running.
func TestManagerSupersede(t *testing.T) {
	for _, running := range []bool{false, true} {
		name := "landing"
		if running {
			name = "running"
		}
		t.Run(name, func(t *testing.T) {
			e := newManagerEnv(t)
			first, second := testSHA('a'), testSHA('b')
			e.sw.tasks = func(s *simService, poll int) []swarm.Task {
				if s.Spec.Labels[plan.LabelSHA] == first && !running {
					return []swarm.Task{{Status: swarm.TaskStatus{State: swarm.TaskStatePending}}}
				}
				return []swarm.Task{taskFailedStart("node-"+s.Spec.Labels[plan.LabelSHA][:1], "c-"+s.ID)}
			}
			a := e.submit(e.request(first, "octo/hello#7"))
			if running {
				e.waitStored(a.ID, "the first build to start", func(b *store.Build) bool { return !b.Started.IsZero() })
			} else {
				waitFor(t, "the first build's task list", func() bool { return e.sw.polls(a.ID) >= 2 })
			}
			e.ag.setLaunch(e.ag.exitAfterLaunch(wire.Exit{ExitCode: 0}))
			b := e.submit(e.request(second, "octo/hello#7"))

			ga := e.wait(a.ID)
			sa := e.mustService(a.ID)
			wa := want{state: store.Error, reason: "superseded by bbbbbbb", serviceName: sa.Spec.Name, serviceID: sa.ID}
			if running {
				wa.exit, wa.node, wa.container = intPtr(143), "node-a", "c-"+sa.ID
			}
			checkBuild(t, ga, wa)
			e.checkChanges(a.ID, store.Queued, store.Running, store.Error)
			e.checkRemovedOnce(sa)

			gb := e.wait(b.ID)
			sb := e.mustService(b.ID)
			checkBuild(t, gb, want{state: store.Success, exit: intPtr(0), node: "node-b", container: "c-" + sb.ID,
				serviceName: sb.Spec.Name, serviceID: sb.ID})
			e.checkChanges(b.ID, store.Queued, store.Running, store.Success)
			e.checkRemovedOnce(sb)

			var launchedA int
			for _, l := range e.ag.launchCalls() {
				if l.req.BuildID == a.ID {
					launchedA++
				}
			}
			c := e.ag.cancelCalls()
			if running {
				if launchedA != 1 || len(c) != 1 || c[0].build != a.ID || c[0].node != "node-a" {
					t.Errorf("running first build: %d launches, cancels %+v", launchedA, c)
				}
			} else if launchedA != 0 || len(c) != 0 {
				t.Errorf("landing first build: %d launches, cancels %+v", launchedA, c)
			}
		})
	}
}

// Two Submits of the same key that run concurrently (the webhook workers
// handle two pushes to a pull request at once): one of them must survive,
// the later one. The OnChange hook, called by the first Submit between
// its CreateBuild and its supersede, stands in for the second worker so
// that the interleaving is deterministic.
//
// manager.go Submit/supersede: each Submit cancels every other active
// build of its key, whatever their age. The second Submit supersedes the
// first (right), then the first Submit, resuming, supersedes the second
// ("superseded by <the older sha>"): both end as error and the pull
// request's newest commit is never built.
func TestManagerConcurrentSupersede(t *testing.T) {
	e := newManagerEnv(t)
	e.sw.tasks = landsOn("node-a")
	e.ag.setLaunch(e.ag.exitAfterLaunch(wire.Exit{ExitCode: 0}))
	first, second := testSHA('a'), testSHA('b')
	var secondID atomic.Value
	e.m.OnChange = func(b *store.Build) {
		e.changes.record(b)
		if b.State == store.Queued && b.SHA == first {
			nb := e.submit(e.request(second, "octo/hello#7"))
			secondID.Store(nb.ID)
		}
	}
	a := e.submit(e.request(first, "octo/hello#7"))
	bID, _ := secondID.Load().(string)
	if bID == "" {
		t.Fatal("the second build was not submitted")
	}
	ga, gb := e.wait(a.ID), e.wait(bID)
	if gb.State != store.Success {
		t.Errorf("the later build: %s %q, want success", gb.State, gb.Reason)
	}
	if ga.State != store.Error || ga.Reason != "superseded by bbbbbbb" {
		t.Errorf("the earlier build: %s %q, want error \"superseded by bbbbbbb\"", ga.State, ga.Reason)
	}
	for _, l := range e.ag.launchCalls() {
		if l.req.BuildID == a.ID {
			t.Error("the superseded build was launched")
		}
	}
}

// 11b. CancelKey cancels every active build of the key, watched or not,
// and no other.
func TestManagerCancelKey(t *testing.T) {
	e := newManagerEnv(t)
	e.sw.tasks = landsOn("node-a")
	a := e.submit(e.request(testSHA('a'), "octo/hello#7"))
	other := e.submit(e.request(testSHA('c'), "octo/hello#8"))
	for _, id := range []string{a.ID, other.ID} {
		e.waitStored(id, "the build to start", func(b *store.Build) bool { return !b.Started.IsZero() })
	}
	// An active record of the same key that no goroutine watches (left
	// over by a restart).
	ctx := context.Background()
	orphan := &store.Build{ID: "20260101T000000-0rphan", Owner: "octo", Repo: "hello", PullRequest: 7, SHA: testSHA('0'),
		Action: "execute", Key: "octo/hello#7", State: store.Running, Created: time.Now().UTC()}
	if err := e.st.CreateBuild(ctx, orphan); err != nil {
		t.Fatal(err)
	}

	e.m.CancelKey(ctx, "octo/hello#7", "pull request closed")
	ga := e.wait(a.ID)
	sa := e.mustService(a.ID)
	checkBuild(t, ga, want{state: store.Error, reason: "pull request closed", exit: intPtr(143),
		node: "node-a", container: "c-" + sa.ID, serviceName: sa.Spec.Name, serviceID: sa.ID})
	e.checkRemovedOnce(sa)
	gorph := e.wait(orphan.ID)
	checkBuild(t, gorph, want{state: store.Error, reason: "pull request closed"})
	e.checkChanges(orphan.ID, store.Error)

	// The other key's build goes on, and finishes normally.
	testwait.Pause(t, 5*testPollInterval)
	if b := e.stored(other.ID); b.State != store.Running {
		t.Fatalf("build of another key is %s %q", b.State, b.Reason)
	}
	e.ag.report(other.ID, "", &wire.Exit{ExitCode: 0})
	gb := e.wait(other.ID)
	if gb.State != store.Success {
		t.Errorf("build of another key: %s %q", gb.State, gb.Reason)
	}
	if c := e.ag.cancelCalls(); len(c) != 1 || c[0].build != a.ID {
		t.Errorf("Dispatcher.Cancel calls %+v, want only %s", c, a.ID)
	}
}

// 12a. Wait: the final build, or the context's error while it runs.
func TestManagerWait(t *testing.T) {
	e := newManagerEnv(t)
	e.sw.tasks = landsOn("node-a")
	q := e.submit(e.request(testSHA('d'), ""))
	e.waitStored(q.ID, "the build to start", func(b *store.Build) bool { return !b.Started.IsZero() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	if b, err := e.m.Wait(ctx, q.ID); !errors.Is(err, context.DeadlineExceeded) || b != nil {
		t.Errorf("Wait of a running build with an ending context: %v, %v", b, err)
	}
	e.ag.report(q.ID, "", &wire.Exit{ExitCode: 0})
	b := e.wait(q.ID)
	if b.State != store.Success {
		t.Errorf("Wait returned %s", b.State)
	}
	stored := e.stored(q.ID)
	if b.State != stored.State || b.Reason != stored.Reason || !b.Finished.Equal(stored.Finished) || !sameExitCode(b.ExitCode, stored.ExitCode) {
		t.Errorf("Wait returned %+v, the store has %+v", b, stored)
	}
	ctx, cancel = context.WithTimeout(context.Background(), testWait)
	defer cancel()
	if _, err := e.m.Wait(ctx, "20260101T000000-000000"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Wait of an unknown build: %v", err)
	}
}

// 12b. Close stops the watchers without cancelling the builds or removing
// their services; a restarted manager's Recover takes them over.
func TestManagerCloseThenRecover(t *testing.T) {
	e := newManagerEnv(t)
	e.sw.tasks = func(s *simService, poll int) []swarm.Task {
		if s.Spec.Labels[plan.LabelSHA] == testSHA('b') {
			return []swarm.Task{taskAssigned("node-b")} // lands never
		}
		return []swarm.Task{taskFailedStart("node-a", "c-"+s.ID)}
	}
	running := e.submit(e.request(testSHA('a'), ""))
	landing := e.submit(e.request(testSHA('b'), ""))
	e.waitStored(running.ID, "the build to start", func(b *store.Build) bool { return !b.Started.IsZero() })
	waitFor(t, "the landing build's task list", func() bool { return e.sw.polls(landing.ID) >= 2 })
	// Let the running build's watcher settle in its wait for the exit.
	testwait.Pause(t, 50*time.Millisecond)

	done := make(chan struct{})
	go func() { e.m.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(testWait):
		t.Fatal("Close did not return")
	}
	if c := e.ag.cancelCalls(); len(c) != 0 {
		t.Errorf("Close cancelled builds: %+v", c)
	}
	if n := e.sw.totalRemovals(); n != 0 {
		t.Errorf("Close removed %d services", n)
	}
	for _, id := range []string{running.ID, landing.ID} {
		if b := e.stored(id); b.State != store.Running {
			t.Errorf("after Close build %s is %s %q", id, b.State, b.Reason)
		}
		e.checkChanges(id, store.Queued, store.Running)
		// The build is not final: Wait gives up with its context.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
		b, err := e.m.Wait(ctx, id)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Wait after Close of a running build: %v, %v; want the context's error", b, err)
		}
	}

	// The coordinator restarts.
	m2 := e.newManager()
	t.Cleanup(m2.Close)
	if err := m2.Recover(context.Background()); err != nil {
		t.Fatal(err)
	}
	sl := e.mustService(landing.ID)
	gl := waitManager(t, m2, landing.ID)
	checkBuild(t, gl, want{state: store.Error, reason: "the coordinator restarted before the build started; run it again",
		serviceName: sl.Spec.Name, serviceID: sl.ID})
	e.checkRemovedOnce(sl)

	sr := e.mustService(running.ID)
	testwait.Pause(t, 5*testPollInterval)
	if b := e.stored(running.ID); b.State != store.Running || e.sw.removals(sr.ID) != 0 {
		t.Fatalf("recovered running build: %s %q, service removed %d times", b.State, b.Reason, e.sw.removals(sr.ID))
	}
	e.ag.report(running.ID, "ok\n", &wire.Exit{ExitCode: 0})
	gr := waitManager(t, m2, running.ID)
	checkBuild(t, gr, want{state: store.Success, exit: intPtr(0), node: "node-a", container: "c-" + sr.ID,
		serviceName: sr.Spec.Name, serviceID: sr.ID})
	e.checkChanges(running.ID, store.Queued, store.Running, store.Success)
	e.checkRemovedOnce(sr)
	if n := len(e.ag.launchCalls()); n != 1 {
		t.Errorf("%d launches, want 1 (a recovered build is not launched again)", n)
	}
}

// 13. Recover matches swarm's services with the records.
func TestManagerRecover(t *testing.T) {
	e := newManagerEnv(t)
	ctx := context.Background()
	now := time.Now().UTC()
	mk := func(id string, st store.State, started bool) *store.Build {
		b := &store.Build{ID: id, Owner: "octo", Repo: "hello", PullRequest: 7, SHA: testSHA('f'), Action: "execute",
			Config: testConfigText, State: st, Created: now.Add(-time.Minute), NodeID: "node-a", ContainerID: "c-" + id}
		if started {
			b.Started = now.Add(-30 * time.Second)
		}
		if st.Final() {
			b.ExitCode = intPtr(0)
		}
		if err := e.st.CreateBuild(ctx, b); err != nil {
			t.Fatal(err)
		}
		if err := e.logs.Create(id); err != nil {
			t.Fatal(err)
		}
		return b
	}
	final := mk("20260101T000000-f1na10", store.Success, true)
	e.sw.add("svc-final", final.ID)
	e.sw.add("svc-unknown", "20260101T000000-a0a0a0")          // no record
	e.sw.addOf("other", "svc-other", "20260101T000000-b0b0b0") // another coordinator's
	lost := mk("20260101T000000-10571a", store.Running, true)
	lostQueued := mk("20260101T000000-10575b", store.Queued, false)
	unstarted := mk("20260101T000000-0n5ta7", store.Running, false)
	e.sw.add("svc-unstarted", unstarted.ID)
	watched := mk("20260101T000000-wa7c4d", store.Running, true)
	e.sw.add("svc-watched", watched.ID)
	exited := mk("20260101T000000-ex17ed", store.Running, true) // the exit came just before the restart
	e.sw.add("svc-exited", exited.ID)
	if err := e.logs.Exit(ctx, exited.ID, &wire.Exit{ExitCode: 2}); err != nil {
		t.Fatal(err)
	}

	if err := e.m.Recover(ctx); err != nil {
		t.Fatal(err)
	}

	for _, svc := range []string{"svc-final", "svc-unknown", "svc-unstarted"} {
		if n := e.sw.removals(svc); n != 1 {
			t.Errorf("%s removed %d times, want once", svc, n)
		}
	}
	if n := e.sw.removals("svc-other"); n != 0 {
		t.Errorf("Recover removed another coordinator's service %d times", n)
	}
	if got := e.stored(final.ID); got.State != store.Success || got.Reason != "" {
		t.Errorf("final build changed: %s %q", got.State, got.Reason)
	}
	e.checkChanges(final.ID)

	const lostReason = "lost in a coordinator restart: its service is gone"
	checkBuild(t, waitManager(t, e.m, lost.ID), want{state: store.Error, reason: lostReason, exit: nil,
		node: "node-a", container: "c-" + lost.ID})
	e.checkChanges(lost.ID, store.Error)
	checkBuild(t, waitManager(t, e.m, lostQueued.ID), want{state: store.Error, reason: lostReason,
		node: "node-a", container: "c-" + lostQueued.ID})
	e.checkChanges(lostQueued.ID, store.Error)
	checkBuild(t, waitManager(t, e.m, unstarted.ID), want{state: store.Error,
		reason: "the coordinator restarted before the build started; run it again",
		node:   "node-a", container: "c-" + unstarted.ID})
	e.checkChanges(unstarted.ID, store.Error)

	checkBuild(t, waitManager(t, e.m, exited.ID), want{state: store.Failure, reason: "exit code 2", exit: intPtr(2),
		node: "node-a", container: "c-" + exited.ID})
	e.checkChanges(exited.ID, store.Failure)

	// The started build is watched again: it goes on until its exit.
	testwait.Pause(t, 5*testPollInterval)
	if b := e.stored(watched.ID); b.State != store.Running {
		t.Fatalf("recovered build is %s %q", b.State, b.Reason)
	}
	if n := e.sw.removals("svc-watched"); n != 0 {
		t.Fatalf("service of a recovered running build removed %d times", n)
	}
	e.ag.report(watched.ID, "done\n", &wire.Exit{ExitCode: 0})
	checkBuild(t, waitManager(t, e.m, watched.ID), want{state: store.Success, exit: intPtr(0),
		node: "node-a", container: "c-" + watched.ID})
	e.checkChanges(watched.ID, store.Success)
	for _, svc := range []string{"svc-watched", "svc-exited"} {
		if n := e.sw.removals(svc); n != 1 {
			t.Errorf("%s removed %d times, want once", svc, n)
		}
	}
	if n := len(e.ag.launchCalls()) + len(e.ag.cancelCalls()); n != 0 {
		t.Errorf("Recover launched or cancelled %d times", n)
	}
}

// Recover leaves alone the builds submitted to this manager, even when
// it is called after them: they are neither lost nor unstarted.
func TestManagerRecoverLeavesOwnBuilds(t *testing.T) {
	e := newManagerEnv(t) // tasks never land
	q := e.submit(e.request(testSHA('a'), ""))
	waitFor(t, "the task list to be read", func() bool { return e.sw.polls(q.ID) >= 2 })
	if err := e.m.Recover(context.Background()); err != nil {
		t.Fatal(err)
	}
	testwait.Pause(t, 5*testPollInterval)
	b := e.stored(q.ID)
	if b.State != store.Running {
		t.Fatalf("Recover touched a build of its own manager: %s %q", b.State, b.Reason)
	}
	svc := e.mustService(q.ID)
	if n := e.sw.removals(svc.ID); n != 0 {
		t.Errorf("Recover removed the service of a build of its own manager")
	}
	if err := e.m.Cancel(context.Background(), q.ID, "done"); err != nil {
		t.Fatal(err)
	}
	checkBuild(t, e.wait(q.ID), want{state: store.Error, reason: "done", serviceName: svc.Spec.Name, serviceID: svc.ID})
	e.checkRemovedOnce(svc)
}

// Recover fails when swarm cannot list the services, touching nothing.
func TestManagerRecoverListError(t *testing.T) {
	e := newManagerEnv(t)
	eng := e.sw.engine()
	eng.list = func(swarm.ServiceListOptions) ([]swarm.Service, error) { return nil, errors.New("swarm is down") }
	e.m.Swarm = eng
	err := e.m.Recover(context.Background())
	if err == nil || !strings.Contains(err.Error(), "swarm is down") {
		t.Errorf("Recover: %v", err)
	}
}

// 14. ServiceCreate fails: error naming the service.
func TestManagerServiceCreateError(t *testing.T) {
	e := newManagerEnv(t)
	e.sw.createErr = errors.New("Error response from daemon: rpc error: code = AlreadyExists desc = name conflicts with an existing object")
	q := e.submit(e.request(testSHA('e'), ""))
	b := e.wait(q.ID)
	specs := e.sw.created()
	if len(specs) != 1 {
		t.Fatalf("%d ServiceCreate calls, want 1", len(specs))
	}
	name := specs[0].Name
	checkBuild(t, b, want{state: store.Error, reason: "create service " + name + ": " + e.sw.createErr.Error()})
	e.checkChanges(q.ID, store.Queued, store.Error)
	if n := e.sw.totalRemovals(); n != 0 {
		t.Errorf("%d ServiceRemove calls for a service never created", n)
	}
	if ls := e.ag.launchCalls(); len(ls) != 0 {
		t.Errorf("launched: %+v", ls)
	}
	e.sw.mu.Lock()
	tl := e.sw.taskList
	e.sw.mu.Unlock()
	if tl != 0 {
		t.Errorf("listed tasks %d times for a service never created", tl)
	}
}

// A build that cannot be planned (ports without --allow-ports) ends as
// error before any service.
func TestManagerPlanError(t *testing.T) {
	e := newManagerEnv(t)
	const cfg = "image: alpine\nexecute:\n  - ./serve\nports: [\"8000:8000\"]\n"
	q := e.submit(e.requestWith(testSHA('e'), "", cfg))
	b := e.wait(q.ID)
	if b.State != store.Error || !strings.HasPrefix(b.Reason, "plan service for build "+q.ID+": ports:") {
		t.Errorf("%s %q", b.State, b.Reason)
	}
	e.checkChanges(q.ID, store.Queued, store.Error)
	if n := len(e.sw.created()); n != 0 {
		t.Errorf("%d services created", n)
	}
}

// Submit without a config is refused and records nothing.
func TestManagerSubmitNoConfig(t *testing.T) {
	e := newManagerEnv(t)
	req := e.request(testSHA('e'), "")
	req.Config = nil
	if _, err := e.m.Submit(context.Background(), req); err == nil {
		t.Fatal("Submit without a config succeeded")
	}
	if bs, _ := e.st.Active(context.Background()); len(bs) != 0 {
		t.Errorf("recorded %d builds", len(bs))
	}
}

// A Cancel (or CancelKey, for a closed pull request) that comes while
// Submit has recorded a build but not yet started its goroutine finds no
// run and finishes the record itself. The build must then stay an error
// with that reason, never be launched, and any service made for it must
// be removed. OnChange, called by Submit in that window, stands in for the
// concurrent caller so that the timing is deterministic. (Before 61a0184,
// execute dereferenced the nil build m.update returned here and panicked.)
func TestManagerCancelKeyWhileSubmitting(t *testing.T) {
	e := newManagerEnv(t)
	e.sw.tasks = landsOn("node-a")
	e.m.OnChange = func(b *store.Build) {
		e.changes.record(b)
		if b.State == store.Queued {
			e.m.CancelKey(context.Background(), b.Key, "pull request closed")
		}
	}
	q := e.submit(e.request(testSHA('a'), "octo/hello#7"))
	b := e.wait(q.ID)
	checkBuild(t, b, want{state: store.Error, reason: "pull request closed"})
	e.checkChanges(q.ID, store.Queued, store.Error)
	if ls := e.ag.launchCalls(); len(ls) != 0 {
		t.Errorf("launched a cancelled build: %+v", ls)
	}
	if svc := e.sw.service(q.ID); svc != nil && e.sw.removals(svc.ID) != 1 {
		t.Errorf("service %s of a cancelled build removed %d times, want once", svc.ID, e.sw.removals(svc.ID))
	}
}

// Close while a Launch is answered: the agent started the container just
// as the coordinator stops. The build goes on in swarm; the record must say
// it started (so that Recover watches it again rather than ending it as
// "restarted before the build started") and the service must stay.
//
// manager.go execute: the update that records Started runs with the
// cancelled base context and fails (its error is dropped), so Started is
// never recorded. await is then entered with a cancelled context: its
// WaitExit goroutine fails at once and closes exits, and the first select
// picks at random between ctx.Done() and the closed exits channel, which
// it reads as an exit: m.exited dereferences a nil *wire.Exit and panics
// (about one run in two).
func TestManagerCloseDuringLaunch(t *testing.T) {
	e := newManagerEnv(t)
	e.sw.tasks = landsOn("node-a")
	inLaunch := make(chan struct{})
	e.ag.setLaunch(func(ctx context.Context, _ string, req LaunchRequest) (*LaunchResult, error) {
		close(inLaunch)
		<-ctx.Done() // the coordinator stops while the agent starts the container
		return &LaunchResult{Started: wire.Started{ContainerID: req.ContainerID, StartedAt: time.Now()}}, nil
	})
	q := e.submit(e.request(testSHA('a'), ""))
	select {
	case <-inLaunch:
	case <-time.After(testWait):
		t.Fatal("no launch")
	}
	e.m.Close()
	b := e.stored(q.ID)
	if b.State != store.Running || b.Started.IsZero() {
		t.Errorf("after Close: %s %q, started %v; want running with Started recorded", b.State, b.Reason, b.Started)
	}
	if n := e.sw.totalRemovals(); n != 0 {
		t.Errorf("Close removed %d services", n)
	}
}

// Recover of a started build whose log is missing from the LogStore (a
// lost or pruned log directory). WaitExit fails at once, await's exits
// channel is closed, and a closed channel is read as an exit.
//
// manager.go await: `case x := <-exits: m.exited(ctx, b, x, timeout)`
// does not check ok, so exited dereferences a nil *wire.Exit: panic. The
// same select can also pick the closed channel instead of ctx.Done() when
// Close comes just as await starts.
func TestManagerRecoverWithoutLog(t *testing.T) {
	e := newManagerEnv(t)
	ctx := context.Background()
	id := "20260101T000000-n0l0g0"
	b := &store.Build{ID: id, Owner: "octo", Repo: "hello", SHA: testSHA('a'), Action: "execute", Config: testConfigText,
		State: store.Running, NodeID: "node-a", ContainerID: "c-a", Created: time.Now().UTC(), Started: time.Now().UTC()}
	if err := e.st.CreateBuild(ctx, b); err != nil {
		t.Fatal(err)
	}
	e.sw.add("svc-nolog", id) // no e.logs.Create(id)
	if err := e.m.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	// Whatever the manager decides (watch on, or end the build as error),
	// it must not crash and must not call the build a success.
	testwait.Pause(t, 10*testPollInterval)
	if got := e.stored(id); got.State == store.Success || got.State == store.Failure {
		t.Errorf("build without a log ended as %s %q", got.State, got.Reason)
	}
}
