package lifecycle

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/swarm"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/plan"
	"github.com/forge-ci/forge/internal/buildsim"
	"github.com/forge-ci/forge/internal/testwait"
	"github.com/forge-ci/forge/wire"
)

// 12b. Close stops the watchers without cancelling the builds or removing
// their services; a restarted manager's Recover takes them over.
func TestRunnerCloseThenRecover(t *testing.T) {
	e := newRunnerEnv(t)
	e.sw.Tasks = func(s *buildsim.Service, poll int) []swarm.Task {
		if s.Spec.Labels[plan.LabelSHA] == testSHA('b') {
			return []swarm.Task{buildsim.TaskAssigned("node-b")} // lands never
		}
		return []swarm.Task{buildsim.TaskFailedStart("node-a", "c-"+s.ID)}
	}
	running := e.submit(e.request(testSHA('a'), ""))
	landing := e.submit(e.request(testSHA('b'), ""))
	e.waitStored(running.ID, "the build to start", func(b *coordinator.Build) bool { return !b.Started.IsZero() })
	waitFor(t, "the landing build's task list", func() bool { return e.sw.Polls(landing.ID) >= 2 })
	// Let the running build's watcher settle in its wait for the exit.
	testwait.Pause(t, 50*time.Millisecond)

	done := make(chan struct{})
	go func() { e.r.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(testWait):
		t.Fatal("Close did not return")
	}
	if c := e.ag.CancelCalls(); len(c) != 0 {
		t.Errorf("Close cancelled builds: %+v", c)
	}
	if n := e.sw.TotalRemovals(); n != 0 {
		t.Errorf("Close removed %d services", n)
	}
	for _, id := range []string{running.ID, landing.ID} {
		if b := e.stored(id); b.State != coordinator.Running {
			t.Errorf("after Close build %s is %s %q", id, b.State, b.Reason)
		}
		e.checkChanges(id, coordinator.Queued, coordinator.Running)
		// The build is not final: Wait gives up with its context.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
		b, err := e.r.Wait(ctx, id)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Wait after Close of a running build: %v, %v; want the context's error", b, err)
		}
	}

	// The coordinator restarts.
	r2 := e.newRunner()
	t.Cleanup(r2.Close)
	if err := r2.Recover(context.Background()); err != nil {
		t.Fatal(err)
	}
	sl := e.mustService(landing.ID)
	gl := waitRunner(t, r2, landing.ID)
	checkBuild(t, gl, want{state: coordinator.Error, reason: "the coordinator restarted before the build started; run it again",
		serviceName: sl.Spec.Name, serviceID: sl.ID})
	e.checkRemovedOnce(sl)

	sr := e.mustService(running.ID)
	testwait.Pause(t, 5*testPollInterval)
	if b := e.stored(running.ID); b.State != coordinator.Running || e.sw.Removals(sr.ID) != 0 {
		t.Fatalf("recovered running build: %s %q, service removed %d times", b.State, b.Reason, e.sw.Removals(sr.ID))
	}
	e.ag.Report(running.ID, "ok\n", &wire.Exit{ExitCode: 0})
	gr := waitRunner(t, r2, running.ID)
	checkBuild(t, gr, want{state: coordinator.Success, exit: intPtr(0), node: "node-a", container: "c-" + sr.ID,
		serviceName: sr.Spec.Name, serviceID: sr.ID})
	e.checkChanges(running.ID, coordinator.Queued, coordinator.Running, coordinator.Success)
	e.checkRemovedOnce(sr)
	if n := len(e.ag.LaunchCalls()); n != 1 {
		t.Errorf("%d launches, want 1 (a recovered build is not launched again)", n)
	}
}

// 13. Recover matches swarm's services with the records.
func TestRunnerRecover(t *testing.T) {
	e := newRunnerEnv(t)
	ctx := context.Background()
	now := time.Now().UTC()
	mk := func(id string, st coordinator.State, started bool) *coordinator.Build {
		b := &coordinator.Build{ID: id,
			Subject: coordinator.Subject{Owner: "octo", Repo: "hello", PullRequest: 7, SHA: testSHA('f'), Action: "execute"},
			Config:  testConfigText, State: st, Created: now.Add(-time.Minute), NodeID: "node-a", ContainerID: "c-" + id}
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
	final := mk("20260101T000000-f1na10", coordinator.Success, true)
	e.sw.Add(testInstance, "svc-final", final.ID)
	e.sw.Add(testInstance, "svc-unknown", "20260101T000000-a0a0a0") // no record
	e.sw.Add("other", "svc-other", "20260101T000000-b0b0b0")        // another coordinator's
	lost := mk("20260101T000000-10571a", coordinator.Running, true)
	lostQueued := mk("20260101T000000-10575b", coordinator.Queued, false)
	unstarted := mk("20260101T000000-0n5ta7", coordinator.Running, false)
	e.sw.Add(testInstance, "svc-unstarted", unstarted.ID)
	watched := mk("20260101T000000-wa7c4d", coordinator.Running, true)
	e.sw.Add(testInstance, "svc-watched", watched.ID)
	exited := mk("20260101T000000-ex17ed", coordinator.Running, true) // the exit came just before the restart
	e.sw.Add(testInstance, "svc-exited", exited.ID)
	if err := e.logs.Exit(ctx, exited.ID, &wire.Exit{ExitCode: 2}); err != nil {
		t.Fatal(err)
	}

	if err := e.r.Recover(ctx); err != nil {
		t.Fatal(err)
	}

	for _, svc := range []string{"svc-final", "svc-unknown", "svc-unstarted"} {
		if n := e.sw.Removals(svc); n != 1 {
			t.Errorf("%s removed %d times, want once", svc, n)
		}
	}
	if n := e.sw.Removals("svc-other"); n != 0 {
		t.Errorf("Recover removed another coordinator's service %d times", n)
	}
	if got := e.stored(final.ID); got.State != coordinator.Success || got.Reason != "" {
		t.Errorf("final build changed: %s %q", got.State, got.Reason)
	}
	e.checkChanges(final.ID)

	const lostReason = "lost in a coordinator restart: its service is gone"
	checkBuild(t, waitRunner(t, e.r, lost.ID), want{state: coordinator.Error, reason: lostReason, exit: nil,
		node: "node-a", container: "c-" + lost.ID})
	e.checkChanges(lost.ID, coordinator.Error)
	checkBuild(t, waitRunner(t, e.r, lostQueued.ID), want{state: coordinator.Error, reason: lostReason,
		node: "node-a", container: "c-" + lostQueued.ID})
	e.checkChanges(lostQueued.ID, coordinator.Error)
	checkBuild(t, waitRunner(t, e.r, unstarted.ID), want{state: coordinator.Error,
		reason: "the coordinator restarted before the build started; run it again",
		node:   "node-a", container: "c-" + unstarted.ID})
	e.checkChanges(unstarted.ID, coordinator.Error)

	checkBuild(t, waitRunner(t, e.r, exited.ID), want{state: coordinator.Failure, reason: "exit code 2", exit: intPtr(2),
		node: "node-a", container: "c-" + exited.ID})
	e.checkChanges(exited.ID, coordinator.Failure)

	// The started build is watched again: it goes on until its exit.
	testwait.Pause(t, 5*testPollInterval)
	if b := e.stored(watched.ID); b.State != coordinator.Running {
		t.Fatalf("recovered build is %s %q", b.State, b.Reason)
	}
	if n := e.sw.Removals("svc-watched"); n != 0 {
		t.Fatalf("service of a recovered running build removed %d times", n)
	}
	e.ag.Report(watched.ID, "done\n", &wire.Exit{ExitCode: 0})
	checkBuild(t, waitRunner(t, e.r, watched.ID), want{state: coordinator.Success, exit: intPtr(0),
		node: "node-a", container: "c-" + watched.ID})
	e.checkChanges(watched.ID, coordinator.Success)
	for _, svc := range []string{"svc-watched", "svc-exited"} {
		if n := e.sw.Removals(svc); n != 1 {
			t.Errorf("%s removed %d times, want once", svc, n)
		}
	}
	if n := len(e.ag.LaunchCalls()) + len(e.ag.CancelCalls()); n != 0 {
		t.Errorf("Recover launched or cancelled %d times", n)
	}
}

// Recover leaves alone the builds submitted to this manager, even when
// it is called after them: they are neither lost nor unstarted.
func TestRunnerRecoverLeavesOwnBuilds(t *testing.T) {
	e := newRunnerEnv(t) // tasks never land
	q := e.submit(e.request(testSHA('a'), ""))
	waitFor(t, "the task list to be read", func() bool { return e.sw.Polls(q.ID) >= 2 })
	if err := e.r.Recover(context.Background()); err != nil {
		t.Fatal(err)
	}
	testwait.Pause(t, 5*testPollInterval)
	b := e.stored(q.ID)
	if b.State != coordinator.Running {
		t.Fatalf("Recover touched a build of its own manager: %s %q", b.State, b.Reason)
	}
	svc := e.mustService(q.ID)
	if n := e.sw.Removals(svc.ID); n != 0 {
		t.Errorf("Recover removed the service of a build of its own manager")
	}
	if err := e.r.Cancel(context.Background(), q.ID, "done"); err != nil {
		t.Fatal(err)
	}
	checkBuild(t, e.wait(q.ID), want{state: coordinator.Error, reason: "done", ending: coordinator.EndCancelled, serviceName: svc.Spec.Name, serviceID: svc.ID})
	e.checkRemovedOnce(svc)
}

// Recover fails when swarm cannot list the services, touching nothing.
func TestRunnerRecoverListError(t *testing.T) {
	e := newRunnerEnv(t)
	e.sw.ListErr = errors.New("swarm is down")
	err := e.r.Recover(context.Background())
	if err == nil || !strings.Contains(err.Error(), "swarm is down") {
		t.Errorf("Recover: %v", err)
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
func TestRunnerCloseDuringLaunch(t *testing.T) {
	e := newRunnerEnv(t)
	e.sw.Tasks = buildsim.LandsOn("node-a")
	inLaunch := make(chan struct{})
	e.ag.SetLaunch(func(ctx context.Context, _ string, req coordinator.LaunchRequest) (*coordinator.LaunchResult, error) {
		close(inLaunch)
		<-ctx.Done() // the coordinator stops while the agent starts the container
		return &coordinator.LaunchResult{Started: wire.Started{ContainerID: req.ContainerID, StartedAt: time.Now()}}, nil
	})
	q := e.submit(e.request(testSHA('a'), ""))
	select {
	case <-inLaunch:
	case <-time.After(testWait):
		t.Fatal("no launch")
	}
	e.r.Close()
	b := e.stored(q.ID)
	if b.State != coordinator.Running || b.Started.IsZero() {
		t.Errorf("after Close: %s %q, started %v; want running with Started recorded", b.State, b.Reason, b.Started)
	}
	if n := e.sw.TotalRemovals(); n != 0 {
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
func TestRunnerRecoverWithoutLog(t *testing.T) {
	e := newRunnerEnv(t)
	ctx := context.Background()
	id := "20260101T000000-n0l0g0"
	b := &coordinator.Build{ID: id, Subject: coordinator.Subject{Owner: "octo", Repo: "hello", SHA: testSHA('a'), Action: "execute"},
		Config: testConfigText, State: coordinator.Running, NodeID: "node-a", ContainerID: "c-a", Created: time.Now().UTC(), Started: time.Now().UTC()}
	if err := e.st.CreateBuild(ctx, b); err != nil {
		t.Fatal(err)
	}
	e.sw.Add(testInstance, "svc-nolog", id) // no e.logs.Create(id)
	if err := e.r.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	// Whatever the manager decides (watch on, or end the build as error),
	// it must not crash and must not call the build a success.
	testwait.Pause(t, 10*testPollInterval)
	if got := e.stored(id); got.State == coordinator.Success || got.State == coordinator.Failure {
		t.Errorf("build without a log ended as %s %q", got.State, got.Reason)
	}
}
