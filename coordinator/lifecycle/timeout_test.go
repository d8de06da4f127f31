package lifecycle

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/forgexec"
	"github.com/forge-ci/forge/internal/buildsim"
	"github.com/forge-ci/forge/internal/testwait"
	"github.com/forge-ci/forge/wire"
)

// 9a. The coordinator's own deadline is the config's timeout plus
// timeoutGrace (30 s): the executor enforces the timeout itself (exit
// 124), the coordinator only catches an executor that cannot. So a build
// whose exit is late by less than the grace is not stopped.
func TestRunnerTimeoutLeavesExecutorItsGrace(t *testing.T) {
	e := newRunnerEnv(t)
	e.sw.Tasks = buildsim.LandsOn("node-a")
	const cfg = "image: alpine\nexecute:\n  - sleep 1000\ntimeout: 100ms\n"
	q := e.submit(e.requestWith(testSHA('5'), "", cfg))
	b := e.waitStored(q.ID, "the build to start", func(b *coordinator.Build) bool { return !b.Started.IsZero() })
	testwait.Pause(t, time.Until(b.Started.Add(100*time.Millisecond+300*time.Millisecond)))
	if b := e.stored(q.ID); b.State != coordinator.Running {
		t.Fatalf("stopped %v after a 100ms timeout: %s %q", time.Since(b.Started), b.State, b.Reason)
	}
	if c := e.ag.CancelCalls(); len(c) != 0 {
		t.Fatalf("Dispatcher.Cancel called within the grace: %v", c)
	}
	// The executor's own timeout then reports 124.
	e.ag.Report(q.ID, "", &wire.Exit{ExitCode: forgexec.ExitTimeout})
	b = e.wait(q.ID)
	svc := e.mustService(q.ID)
	checkBuild(t, b, want{state: coordinator.Error, reason: "timed out after 100ms", ending: coordinator.EndTimedOut, exit: intPtr(124),
		node: "node-a", container: "c-" + svc.ID, serviceName: svc.Spec.Name, serviceID: svc.ID})
	e.checkRemovedOnce(svc)
}

// recoverOverdue has the manager recover a running build of a 1 s timeout
// that started more than timeout+timeoutGrace ago, on node in container,
// with service svc (named forge-svc): its deadline has passed.
func (e *runnerEnv) recoverOverdue(id, sha, node, container, svc string) {
	e.t.Helper()
	const cfg = "image: alpine\nexecute:\n  - sleep 1000\ntimeout: 1s\n"
	ctx := context.Background()
	started := time.Now().Add(-(time.Second + timeoutGrace + 2*time.Second)).UTC()
	b := &coordinator.Build{ID: id, Subject: coordinator.Subject{Owner: "octo", Repo: "hello", SHA: sha, Action: "execute"},
		Config: cfg, State: coordinator.Running, NodeID: node, ContainerID: container, ServiceID: svc, ServiceName: "forge-" + svc,
		Created: started.Add(-time.Second), Started: started}
	if err := e.st.CreateBuild(ctx, b); err != nil {
		e.t.Fatal(err)
	}
	if err := e.logs.Create(id); err != nil {
		e.t.Fatal(err)
	}
	e.sw.Add(testInstance, svc, id)
	if err := e.r.Recover(ctx); err != nil {
		e.t.Fatal(err)
	}
}

// 9b. The coordinator enforces the timeout when no exit ever comes. The
// deadline counts from the build's Started time, so a build recovered
// after a restart with Started more than timeout+timeoutGrace ago is
// stopped at once: that exercises the enforcement without waiting 30 s.
func TestRunnerTimeoutEnforcedByCoordinator(t *testing.T) {
	e := newRunnerEnv(t)
	id := "20260101T000000-t1meot"
	e.recoverOverdue(id, testSHA('6'), "node-a", "c-a", "svc-t")
	got := e.wait(id)
	checkBuild(t, got, want{state: coordinator.Error, reason: "timed out after 1s", ending: coordinator.EndTimedOut, exit: intPtr(143),
		node: "node-a", container: "c-a", serviceName: "forge-svc-t", serviceID: "svc-t"})
	e.checkChanges(id, coordinator.Error)
	if c := e.ag.CancelCalls(); len(c) != 1 || c[0] != (buildsim.CancelCall{Node: "node-a", Build: id, Container: "c-a", Grace: testCancelGrace}) {
		t.Errorf("Dispatcher.Cancel calls %+v, want one to node-a for c-a with grace %v", c, testCancelGrace)
	}
	if n := e.sw.Removals("svc-t"); n != 1 {
		t.Errorf("service removed %d times, want once", n)
	}
}

// 9c. The same through Submit: takes timeoutGrace (30 s) and more, so it
// runs only with FORGE_SLOW_TESTS=1.
func TestRunnerTimeoutEnforcedSlow(t *testing.T) {
	if os.Getenv("FORGE_SLOW_TESTS") == "" {
		t.Skip("slow (timeoutGrace is 30 s); set FORGE_SLOW_TESTS=1")
	}
	e := newRunnerEnv(t)
	e.sw.Tasks = buildsim.LandsOn("node-a")
	const cfg = "image: alpine\nexecute:\n  - sleep 1000\ntimeout: 100ms\n"
	q := e.submit(e.requestWith(testSHA('7'), "", cfg))
	ctx, cancel := context.WithTimeout(context.Background(), timeoutGrace+testWait)
	defer cancel()
	b, err := e.r.Wait(ctx, q.ID)
	if err != nil {
		t.Fatal(err)
	}
	svc := e.mustService(q.ID)
	checkBuild(t, b, want{state: coordinator.Error, reason: "timed out after 100ms", exit: intPtr(143),
		node: "node-a", container: "c-" + svc.ID, serviceName: svc.Spec.Name, serviceID: svc.ID})
	if d := b.Finished.Sub(b.Started); d < 100*time.Millisecond+timeoutGrace {
		t.Errorf("stopped after %v", d)
	}
	e.checkRemovedOnce(svc)
}

// 9d. The timeout comes while the node has no agent (cut off, agent
// down): the build ends at once, saying nobody confirmed the stop, and
// its service is removed; it does not wait exitWait for an exit.
func TestRunnerTimeoutWithoutAgent(t *testing.T) {
	e := newRunnerEnv(t)
	e.ag.CancelFunc = func(ctx context.Context, c buildsim.CancelCall) (*wire.Cancelled, error) {
		return nil, fmt.Errorf("%w %s", coordinator.ErrNoAgent, c.Node)
	}
	id := "20260101T000000-n0agnt"
	began := time.Now()
	e.recoverOverdue(id, testSHA('7'), "node-c", "c-c", "svc-n")
	got := e.wait(id)
	checkBuild(t, got, want{state: coordinator.Error,
		reason: "timed out after 1s; node node-c has no agent connected to confirm the stop", ending: coordinator.EndTimedOut,
		node: "node-c", container: "c-c", serviceName: "forge-svc-n", serviceID: "svc-n"})
	if d := time.Since(began); d > exitWait/2 {
		t.Errorf("took %v: waited for an exit no agent can send", d)
	}
	if n := e.sw.Removals("svc-n"); n != 1 {
		t.Errorf("service removed %d times, want once", n)
	}
}
