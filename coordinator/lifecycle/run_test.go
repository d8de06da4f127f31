package lifecycle

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/docker/docker/api/types/swarm"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/config"
	"github.com/forge-ci/forge/coordinator/plan"
	"github.com/forge-ci/forge/coordinator/store"
	"github.com/forge-ci/forge/forgexec"
	"github.com/forge-ci/forge/internal/buildsim"
	"github.com/forge-ci/forge/wire"
)

// 1. A build that passes: the task gets its node from the task list, the
// container from the agent's Landed report; Launch goes to that node.
func TestRunnerSuccess(t *testing.T) {
	e := newRunnerEnv(t)
	e.sw.Tasks = func(*buildsim.Service, int) []swarm.Task { return []swarm.Task{buildsim.TaskAssigned("node-a")} }
	e.sw.OnCreate = func(s *buildsim.Service) {
		e.ag.Landed("node-a", wire.Landed{BuildID: s.BuildID, ContainerID: "c-a", Created: time.Now()})
	}
	e.ag.SetLaunch(e.ag.ExitAfterLaunch(wire.Exit{ExitCode: 0}))
	src := newTestSource(t)
	req := e.request(testSHA('a'), "octo/hello#7")
	req.Source = src.source

	q := e.submit(req)
	if q.Action != config.DefaultAction || q.Config != testConfigText || q.Created.IsZero() {
		t.Errorf("queued build: action %q, config %q, created %v", q.Action, q.Config, q.Created)
	}
	b := e.wait(q.ID)
	svc := e.mustService(q.ID)
	checkBuild(t, b, want{state: coordinator.Success, exit: intPtr(0), node: "node-a", container: "c-a",
		serviceName: svc.Spec.Name, serviceID: svc.ID})
	if b.Started.IsZero() {
		t.Error("Started not recorded")
	}
	e.checkChanges(q.ID, coordinator.Queued, coordinator.Running, coordinator.Success)
	e.checkRemovedOnce(svc)

	// The service.
	if !strings.HasPrefix(svc.Spec.Name, "forge-octo-hello-7-") {
		t.Errorf("service name %q", svc.Spec.Name)
	}
	for k, v := range map[string]string{plan.LabelBuild: q.ID, plan.LabelSHA: req.Subject.SHA, plan.LabelRepo: "octo/hello", coordinator.LabelCoordinator: testInstance,
		plan.LabelPullRequest: "7", plan.LabelAction: "execute", "com.example.test": "manager"} {
		if got := svc.Spec.Labels[k]; got != v {
			t.Errorf("service label %s=%q, want %q", k, got, v)
		}
	}

	// The launch: once, to the task's node, with everything the agent needs.
	if w := e.ag.WaitCalls(); !slices.Equal(w, []string{"node-a"}) {
		t.Errorf("WaitAgent calls %v, want [node-a]", w)
	}
	ls := e.ag.LaunchCalls()
	if len(ls) != 1 {
		t.Fatalf("%d launches, want 1", len(ls))
	}
	l := ls[0]
	if l.Node != "node-a" || l.Req.BuildID != q.ID || l.Req.ContainerID != "c-a" {
		t.Errorf("launch to %s of build %s container %s, want node-a %s c-a", l.Node, l.Req.BuildID, l.Req.ContainerID, q.ID)
	}
	if l.Req.Executor != e.exe {
		t.Error("launch does not carry the manager's executor")
	}
	if l.Req.Workdir != "/work/src" {
		t.Errorf("launch workdir %q, want /work/src", l.Req.Workdir)
	}
	if !bytes.Equal(l.Source, src.data) || l.Req.SourceSize != int64(len(src.data)) {
		t.Errorf("launch source: %d bytes, size %d; want the %d bytes of the source", len(l.Source), l.Req.SourceSize, len(src.data))
	}
	if n, c := src.calls.Load(), src.closed.Load(); n != 1 || c != 1 {
		t.Errorf("source opened %d times and closed %d times, want once each", n, c)
	}
	if l.RemovedBefore != 0 {
		t.Error("the service was removed before the launch")
	}
	var spec forgexec.Spec
	if err := json.Unmarshal(l.Req.Spec, &spec); err != nil {
		t.Fatalf("launch spec: %v\n%s", err, l.Req.Spec)
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
	if c := e.ag.CancelCalls(); len(c) != 0 {
		t.Errorf("Dispatcher.Cancel called for a passing build: %v", c)
	}
}

// 2. Landing through the task list alone: no Landed report comes.
func TestRunnerLandsFromTaskList(t *testing.T) {
	e := newRunnerEnv(t)
	e.sw.Tasks = buildsim.LandsOn("node-b")
	e.ag.SetLaunch(e.ag.ExitAfterLaunch(wire.Exit{ExitCode: 0}))
	q := e.submit(e.request(testSHA('b'), ""))
	b := e.wait(q.ID)
	svc := e.mustService(q.ID)
	checkBuild(t, b, want{state: coordinator.Success, exit: intPtr(0), node: "node-b", container: "c-" + svc.ID,
		serviceName: svc.Spec.Name, serviceID: svc.ID})
	e.checkChanges(q.ID, coordinator.Queued, coordinator.Running, coordinator.Success)
	e.checkRemovedOnce(svc)
	ls := e.ag.LaunchCalls()
	if len(ls) != 1 || ls[0].Node != "node-b" || ls[0].Req.ContainerID != "c-"+svc.ID {
		t.Fatalf("launches %+v, want one to node-b", ls)
	}
	// No source: nothing is sent, and the work directory is the config's.
	if ls[0].Req.Source != nil || ls[0].Req.SourceSize != 0 || ls[0].Req.Workdir != "/work/src" {
		t.Errorf("launch without source: source %v size %d workdir %q", ls[0].Req.Source, ls[0].Req.SourceSize, ls[0].Req.Workdir)
	}
	if n := e.dispatches.Load(); n != 1 {
		t.Errorf("OnDispatch called %d times, want once", n)
	}
}

// 3. A Landed report from the agent of another node than the task's is
// not believed: the launch goes to the task's node only.
func TestRunnerIgnoresLandedFromOtherNode(t *testing.T) {
	e := newRunnerEnv(t)
	var reported atomic.Bool
	e.sw.OnCreate = func(s *buildsim.Service) {
		e.ag.Landed("node-evil", wire.Landed{BuildID: s.BuildID, ContainerID: "c-evil", Created: time.Now()})
	}
	e.sw.Tasks = func(s *buildsim.Service, poll int) []swarm.Task {
		// The wrong report has been read for a while (polls go on only
		// because it was not taken); then the task's own agent reports.
		if poll >= 5 && reported.CompareAndSwap(false, true) {
			e.ag.Landed("node-a", wire.Landed{BuildID: s.BuildID, ContainerID: "c-a", Created: time.Now()})
		}
		return []swarm.Task{buildsim.TaskAssigned("node-a")}
	}
	e.ag.SetLaunch(e.ag.ExitAfterLaunch(wire.Exit{ExitCode: 0}))
	q := e.submit(e.request(testSHA('c'), ""))
	b := e.wait(q.ID)
	svc := e.mustService(q.ID)
	checkBuild(t, b, want{state: coordinator.Success, exit: intPtr(0), node: "node-a", container: "c-a",
		serviceName: svc.Spec.Name, serviceID: svc.ID})
	e.checkChanges(q.ID, coordinator.Queued, coordinator.Running, coordinator.Success)
	e.checkRemovedOnce(svc)
	if !reported.Load() {
		t.Error("the build landed before the task's own agent reported")
	}
	ls := e.ag.LaunchCalls()
	if len(ls) != 1 || ls[0].Node != "node-a" || ls[0].Req.ContainerID != "c-a" {
		t.Fatalf("launches %+v, want one to node-a, container c-a", ls)
	}
	if w := e.ag.WaitCalls(); !slices.Equal(w, []string{"node-a"}) {
		t.Errorf("WaitAgent calls %v, want [node-a]", w)
	}
}

// A Landed report for a build nobody watches is dropped.
func TestRunnerLandedUnknownBuild(t *testing.T) {
	e := newRunnerEnv(t)
	e.ag.Landed("node-a", wire.Landed{BuildID: "nope", ContainerID: "c"}) // no panic, no effect
}

// 4. A rejected task ends the build with swarm's own message.
func TestRunnerRejectedTask(t *testing.T) {
	e := newRunnerEnv(t)
	const msg = "No such image: golang:no-such-tag"
	e.sw.Tasks = func(*buildsim.Service, int) []swarm.Task {
		return []swarm.Task{{NodeID: "node-a", Status: swarm.TaskStatus{State: swarm.TaskStateRejected, Message: "preparing", Err: msg}}}
	}
	q := e.submit(e.request(testSHA('d'), ""))
	b := e.wait(q.ID)
	svc := e.mustService(q.ID)
	checkBuild(t, b, want{state: coordinator.Error, reason: "swarm rejected the task: " + msg,
		serviceName: svc.Spec.Name, serviceID: svc.ID})
	e.checkChanges(q.ID, coordinator.Queued, coordinator.Running, coordinator.Error)
	e.checkRemovedOnce(svc)
	if ls := e.ag.LaunchCalls(); len(ls) != 0 {
		t.Errorf("launched a rejected build: %+v", ls)
	}
	if w := e.ag.WaitCalls(); len(w) != 0 {
		t.Errorf("waited for an agent for a rejected build: %v", w)
	}
	if n := e.dispatches.Load(); n != 0 {
		t.Errorf("OnDispatch called %d times", n)
	}
}

// 5. A task swarm cannot place ends the build after the grace, with
// swarm's message.
func TestRunnerUnplaceableTask(t *testing.T) {
	e := newRunnerEnv(t)
	const msg = "no suitable node (scheduling constraints not satisfied on 3 nodes)"
	e.sw.Tasks = func(*buildsim.Service, int) []swarm.Task {
		return []swarm.Task{{Status: swarm.TaskStatus{State: swarm.TaskStatePending, Message: "pending task scheduling", Err: msg}}}
	}
	q := e.submit(e.request(testSHA('e'), ""))
	b := e.wait(q.ID)
	svc := e.mustService(q.ID)
	checkBuild(t, b, want{state: coordinator.Error, reason: "swarm cannot place the task: " + msg,
		serviceName: svc.Spec.Name, serviceID: svc.ID})
	e.checkChanges(q.ID, coordinator.Queued, coordinator.Running, coordinator.Error)
	e.checkRemovedOnce(svc)
	if d := b.Finished.Sub(svc.Created); d < testUnplaceableGrace {
		t.Errorf("gave up after %v, before the grace of %v", d, testUnplaceableGrace)
	}
	if ls := e.ag.LaunchCalls(); len(ls) != 0 {
		t.Errorf("launched an unplaceable build: %+v", ls)
	}
}

// A task pending with a scheduling error for less than the grace that is
// then placed runs normally.
func TestRunnerPendingThenPlaced(t *testing.T) {
	// far beyond the 3 polls, even on a loaded machine
	e := newRunnerEnv(t, func(c *Config) { c.UnplaceableGrace = 2 * time.Second })
	e.sw.Tasks = func(s *buildsim.Service, poll int) []swarm.Task {
		if poll <= 3 {
			return []swarm.Task{{Status: swarm.TaskStatus{State: swarm.TaskStatePending, Err: "no suitable node (insufficient resources on 1 node)"}}}
		}
		return []swarm.Task{buildsim.TaskFailedStart("node-a", "c-a")}
	}
	e.ag.SetLaunch(e.ag.ExitAfterLaunch(wire.Exit{ExitCode: 0}))
	q := e.submit(e.request(testSHA('e'), ""))
	b := e.wait(q.ID)
	svc := e.mustService(q.ID)
	checkBuild(t, b, want{state: coordinator.Success, exit: intPtr(0), node: "node-a", container: "c-a",
		serviceName: svc.Spec.Name, serviceID: svc.ID})
	e.checkRemovedOnce(svc)
}

// The task never gets a container: the build ends after LandTimeout.
func TestRunnerLandTimeout(t *testing.T) {
	e := newRunnerEnv(t, func(c *Config) { c.LandTimeout = 150 * time.Millisecond })
	e.sw.Tasks = func(*buildsim.Service, int) []swarm.Task {
		return []swarm.Task{{NodeID: "node-a", Status: swarm.TaskStatus{State: swarm.TaskStatePreparing}}}
	}
	q := e.submit(e.request(testSHA('f'), ""))
	b := e.wait(q.ID)
	svc := e.mustService(q.ID)
	checkBuild(t, b, want{state: coordinator.Error, reason: "the task did not start a container within 150ms",
		serviceName: svc.Spec.Name, serviceID: svc.ID})
	e.checkChanges(q.ID, coordinator.Queued, coordinator.Running, coordinator.Error)
	e.checkRemovedOnce(svc)
	if ls := e.ag.LaunchCalls(); len(ls) != 0 {
		t.Errorf("launched: %+v", ls)
	}
}

// 6. No agent on the node where the task landed: error naming the node,
// within AgentWait.
func TestRunnerNoAgent(t *testing.T) {
	e := newRunnerEnv(t)
	e.sw.Tasks = buildsim.LandsOn("node-z")
	var waitStart atomic.Int64
	e.ag.WaitAgentFunc = func(ctx context.Context, node string) error {
		waitStart.Store(time.Now().UnixNano())
		<-ctx.Done()
		return fmt.Errorf("%w %s: %w", coordinator.ErrNoAgent, node, ctx.Err())
	}
	q := e.submit(e.request(testSHA('1'), ""))
	b := e.wait(q.ID)
	svc := e.mustService(q.ID)
	checkBuild(t, b, want{state: coordinator.Error, reason: "no agent on node node-z within 100ms",
		node: "node-z", container: "c-" + svc.ID, serviceName: svc.Spec.Name, serviceID: svc.ID})
	e.checkChanges(q.ID, coordinator.Queued, coordinator.Running, coordinator.Error)
	e.checkRemovedOnce(svc)
	waited := b.Finished.Sub(time.Unix(0, waitStart.Load()))
	if waited < testAgentWait-5*time.Millisecond || waited > testAgentWait+2*time.Second {
		t.Errorf("gave up on the agent after %v, want about %v", waited, testAgentWait)
	}
	if w := e.ag.WaitCalls(); !slices.Equal(w, []string{"node-z"}) {
		t.Errorf("WaitAgent calls %v, want [node-z]", w)
	}
	if ls := e.ag.LaunchCalls(); len(ls) != 0 {
		t.Errorf("launched without an agent: %+v", ls)
	}
}

// 7. The agent refuses the launch: error with the agent's message.
func TestRunnerLaunchRefused(t *testing.T) {
	e := newRunnerEnv(t)
	e.sw.Tasks = buildsim.LandsOn("node-a")
	const msg = "container c-svc-1 has forge.build=other, not this build"
	e.ag.SetLaunch(func(context.Context, string, coordinator.LaunchRequest) (*coordinator.LaunchResult, error) {
		return nil, &wire.RefusedError{Want: wire.TypeLaunchReady, Code: wire.RefusedForbidden, Message: msg}
	})
	q := e.submit(e.request(testSHA('2'), ""))
	b := e.wait(q.ID)
	svc := e.mustService(q.ID)
	wantErr := (&wire.RefusedError{Want: wire.TypeLaunchReady, Code: wire.RefusedForbidden, Message: msg}).Error()
	checkBuild(t, b, want{state: coordinator.Error, reason: wantErr,
		node: "node-a", container: "c-" + svc.ID, serviceName: svc.Spec.Name, serviceID: svc.ID})
	if !strings.Contains(b.Reason, msg) {
		t.Errorf("reason %q does not carry the agent's message", b.Reason)
	}
	e.checkChanges(q.ID, coordinator.Queued, coordinator.Running, coordinator.Error)
	e.checkRemovedOnce(svc)
	if !b.Started.IsZero() {
		t.Error("a refused build has a Started time")
	}
	if n := e.dispatches.Load(); n != 0 {
		t.Errorf("OnDispatch called %d times for a refused launch", n)
	}
	if ls := e.ag.LaunchCalls(); len(ls) != 1 {
		t.Errorf("%d launches, want 1", len(ls))
	}
}

// The source cannot be produced: error, nothing launched.
func TestRunnerSourceError(t *testing.T) {
	e := newRunnerEnv(t)
	e.sw.Tasks = buildsim.LandsOn("node-a")
	req := e.request(testSHA('3'), "")
	req.Source = func(context.Context) (io.ReadCloser, int64, error) {
		return nil, 0, errors.New("download tarball: 502 Bad Gateway")
	}
	q := e.submit(req)
	b := e.wait(q.ID)
	svc := e.mustService(q.ID)
	checkBuild(t, b, want{state: coordinator.Error, reason: "source: download tarball: 502 Bad Gateway",
		node: "node-a", container: "c-" + svc.ID, serviceName: svc.Spec.Name, serviceID: svc.ID})
	e.checkRemovedOnce(svc)
	if ls := e.ag.LaunchCalls(); len(ls) != 0 {
		t.Errorf("launched without source: %+v", ls)
	}
}

// A source error that carries a signed link (GitHub's tarball URL holds
// its token in the query) is recorded, reported and shown without it.
func TestRunnerReasonRedacted(t *testing.T) {
	var reasons []string
	var mu sync.Mutex
	e := newRunnerEnv(t, func(c *Config) {
		c.OnChange = func(b *coordinator.Build) {
			mu.Lock()
			reasons = append(reasons, b.Reason)
			mu.Unlock()
		}
	})
	e.sw.Tasks = buildsim.LandsOn("node-a")
	req := e.request(testSHA('4'), "")
	req.Source = func(context.Context) (io.ReadCloser, int64, error) {
		return nil, 0, &url.Error{Op: "Get", URL: "https://codeload.github.com/o/r/legacy.tar.gz/abc?token=AAAASECRETTOKEN", Err: errors.New("EOF")}
	}
	q := e.submit(req)
	b := e.wait(q.ID)
	want := `source: Get "https://codeload.github.com/o/r/legacy.tar.gz/abc?[redacted]": EOF`
	if b.State != coordinator.Error || b.Reason != want {
		t.Errorf("recorded %s %q, want error %q", b.State, b.Reason, want)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, r := range reasons {
		if strings.Contains(r, "SECRET") {
			t.Errorf("OnChange was told %q", r)
		}
	}
}

// 8. What the exit says.
func TestRunnerExitCodes(t *testing.T) {
	for _, tc := range []struct {
		name   string
		exit   wire.Exit
		state  coordinator.State
		reason string
		code   *int
		ending coordinator.Ending
	}{
		{"pass", wire.Exit{ExitCode: 0}, coordinator.Success, "", intPtr(0), ""},
		{"fail", wire.Exit{ExitCode: 3}, coordinator.Failure, "exit code 3", intPtr(3), ""},
		{"executor timeout", wire.Exit{ExitCode: forgexec.ExitTimeout}, coordinator.Error, "timed out after 30m0s", intPtr(124), coordinator.EndTimedOut},
		{"agent fault", wire.Exit{ExitCode: -1, Error: "container vanished"}, coordinator.Error, "container vanished", nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newRunnerEnv(t)
			e.sw.Tasks = buildsim.LandsOn("node-a")
			e.ag.SetLaunch(e.ag.ExitAfterLaunch(tc.exit))
			q := e.submit(e.request(testSHA('4'), ""))
			b := e.wait(q.ID)
			svc := e.mustService(q.ID)
			checkBuild(t, b, want{state: tc.state, reason: tc.reason, exit: tc.code, ending: tc.ending,
				node: "node-a", container: "c-" + svc.ID, serviceName: svc.Spec.Name, serviceID: svc.ID})
			e.checkChanges(q.ID, coordinator.Queued, coordinator.Running, tc.state)
			e.checkRemovedOnce(svc)
			if c := e.ag.CancelCalls(); len(c) != 0 {
				t.Errorf("Dispatcher.Cancel called: %v", c)
			}
		})
	}
}

// 12a. Wait: the final build, or the context's error while it runs.
func TestRunnerWait(t *testing.T) {
	e := newRunnerEnv(t)
	e.sw.Tasks = buildsim.LandsOn("node-a")
	q := e.submit(e.request(testSHA('d'), ""))
	e.waitStored(q.ID, "the build to start", func(b *coordinator.Build) bool { return !b.Started.IsZero() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	if b, err := e.r.Wait(ctx, q.ID); !errors.Is(err, context.DeadlineExceeded) || b != nil {
		t.Errorf("Wait of a running build with an ending context: %v, %v", b, err)
	}
	e.ag.Report(q.ID, "", &wire.Exit{ExitCode: 0})
	b := e.wait(q.ID)
	if b.State != coordinator.Success {
		t.Errorf("Wait returned %s", b.State)
	}
	stored := e.stored(q.ID)
	if b.State != stored.State || b.Reason != stored.Reason || !b.Finished.Equal(stored.Finished) || !sameExitCode(b.ExitCode, stored.ExitCode) {
		t.Errorf("Wait returned %+v, the store has %+v", b, stored)
	}
	ctx, cancel = context.WithTimeout(context.Background(), testWait)
	defer cancel()
	if _, err := e.r.Wait(ctx, "20260101T000000-000000"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Wait of an unknown build: %v", err)
	}
}

// 14. ServiceCreate fails: error naming the service.
func TestRunnerServiceCreateError(t *testing.T) {
	e := newRunnerEnv(t)
	e.sw.CreateErr = errors.New("Error response from daemon: rpc error: code = AlreadyExists desc = name conflicts with an existing object")
	q := e.submit(e.request(testSHA('e'), ""))
	b := e.wait(q.ID)
	specs := e.sw.Created()
	if len(specs) != 1 {
		t.Fatalf("%d ServiceCreate calls, want 1", len(specs))
	}
	name := specs[0].Name
	checkBuild(t, b, want{state: coordinator.Error, reason: "create service " + name + ": " + e.sw.CreateErr.Error()})
	e.checkChanges(q.ID, coordinator.Queued, coordinator.Error)
	if n := e.sw.TotalRemovals(); n != 0 {
		t.Errorf("%d ServiceRemove calls for a service never created", n)
	}
	if ls := e.ag.LaunchCalls(); len(ls) != 0 {
		t.Errorf("launched: %+v", ls)
	}
	if tl := e.sw.TaskLists(); tl != 0 {
		t.Errorf("listed tasks %d times for a service never created", tl)
	}
}

// A build that cannot be planned (ports without --allow-ports) ends as
// error before any service.
func TestRunnerPlanError(t *testing.T) {
	e := newRunnerEnv(t)
	const cfg = "image: alpine\nexecute:\n  - ./serve\nports: [\"8000:8000\"]\n"
	q := e.submit(e.requestWith(testSHA('e'), "", cfg))
	b := e.wait(q.ID)
	if b.State != coordinator.Error || !strings.HasPrefix(b.Reason, "plan service for build "+q.ID+": ports:") {
		t.Errorf("%s %q", b.State, b.Reason)
	}
	e.checkChanges(q.ID, coordinator.Queued, coordinator.Error)
	if n := len(e.sw.Created()); n != 0 {
		t.Errorf("%d services created", n)
	}
}

// Submit without a config is refused and records nothing.
func TestRunnerSubmitNoConfig(t *testing.T) {
	e := newRunnerEnv(t)
	req := e.request(testSHA('e'), "")
	req.Config = nil
	if _, err := e.r.Submit(context.Background(), req); err == nil {
		t.Fatal("Submit without a config succeeded")
	}
	if bs, _ := e.st.Active(context.Background()); len(bs) != 0 {
		t.Errorf("recorded %d builds", len(bs))
	}
}
