package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/docker/docker/api/types/swarm"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/plan"
	"github.com/forge-ci/forge/coordinator/store"
	"github.com/forge-ci/forge/internal/buildsim"
	"github.com/forge-ci/forge/internal/testwait"
	"github.com/forge-ci/forge/wire"
)

// 10a. Cancel while the build runs: the agent of its node is asked to stop
// its container, and the exit it reports is kept.
func TestRunnerCancelRunning(t *testing.T) {
	e := newRunnerEnv(t)
	e.sw.Tasks = buildsim.LandsOn("node-a")
	q := e.submit(e.request(testSHA('8'), ""))
	e.waitStored(q.ID, "the build to start", func(b *coordinator.Build) bool { return !b.Started.IsZero() })
	ctx := context.Background()
	if err := e.r.Cancel(ctx, q.ID, "cancelled by alice"); err != nil {
		t.Fatal(err)
	}
	if err := e.r.Cancel(ctx, q.ID, "cancelled twice"); err != nil { // pending or done: not an error
		t.Fatal(err)
	}
	b := e.wait(q.ID)
	svc := e.mustService(q.ID)
	checkBuild(t, b, want{state: coordinator.Error, reason: "cancelled by alice", ending: coordinator.EndCancelled, exit: intPtr(143),
		node: "node-a", container: "c-" + svc.ID, serviceName: svc.Spec.Name, serviceID: svc.ID})
	e.checkChanges(q.ID, coordinator.Queued, coordinator.Running, coordinator.Error)
	e.checkRemovedOnce(svc)
	c := e.ag.CancelCalls()
	if len(c) != 1 || c[0] != (buildsim.CancelCall{Node: "node-a", Build: q.ID, Container: "c-" + svc.ID, Grace: testCancelGrace}) {
		t.Errorf("Dispatcher.Cancel calls %+v, want one to node-a for c-%s with grace %v", c, svc.ID, testCancelGrace)
	}
	if got := e.logText(q.ID); got != "terminated\n" {
		t.Errorf("stored output %q", got)
	}
	if err := e.r.Cancel(ctx, q.ID, "again"); !errors.Is(err, coordinator.ErrNotRunning) {
		t.Errorf("Cancel of a final build: %v, want coordinator.ErrNotRunning", err)
	}
}

// 10b. Cancel while the build lands: no container yet, nothing launched.
func TestRunnerCancelLanding(t *testing.T) {
	e := newRunnerEnv(t) // the task never gets a node
	q := e.submit(e.request(testSHA('9'), ""))
	waitFor(t, "the task list to be read", func() bool { return e.sw.Polls(q.ID) >= 2 })
	if err := e.r.Cancel(context.Background(), q.ID, "cancelled by bob"); err != nil {
		t.Fatal(err)
	}
	b := e.wait(q.ID)
	svc := e.mustService(q.ID)
	checkBuild(t, b, want{state: coordinator.Error, reason: "cancelled by bob", ending: coordinator.EndCancelled,
		serviceName: svc.Spec.Name, serviceID: svc.ID})
	e.checkChanges(q.ID, coordinator.Queued, coordinator.Running, coordinator.Error)
	e.checkRemovedOnce(svc)
	if ls := e.ag.LaunchCalls(); len(ls) != 0 {
		t.Errorf("launched a cancelled build: %+v", ls)
	}
	if w := e.ag.WaitCalls(); len(w) != 0 {
		t.Errorf("waited for an agent: %v", w)
	}
	if c := e.ag.CancelCalls(); len(c) != 0 {
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
func TestRunnerCancelWhileWaitingForAgent(t *testing.T) {
	for _, agentComes := range []bool{false, true} {
		name := "no agent comes"
		if agentComes {
			name = "the agent comes"
		}
		t.Run(name, func(t *testing.T) {
			e := newRunnerEnv(t, func(c *Config) { c.AgentWait = 2 * time.Second })
			e.sw.Tasks = buildsim.LandsOn("node-a")
			waiting, cancelDone := make(chan struct{}), make(chan struct{})
			var once sync.Once
			e.ag.WaitAgentFunc = func(ctx context.Context, node string) error {
				once.Do(func() { close(waiting) })
				if agentComes {
					select {
					case <-cancelDone:
						return nil
					case <-ctx.Done():
					}
				}
				<-ctx.Done()
				return fmt.Errorf("%w %s: %w", coordinator.ErrNoAgent, node, ctx.Err())
			}
			q := e.submit(e.request(testSHA('a'), ""))
			select {
			case <-waiting:
			case <-time.After(testWait):
				t.Fatal("the manager never waited for an agent")
			}
			cancelled := time.Now()
			if err := e.r.Cancel(context.Background(), q.ID, "cancelled by alice"); err != nil {
				t.Fatal(err)
			}
			close(cancelDone)
			b := e.wait(q.ID)
			svc := e.mustService(q.ID)
			if b.State != coordinator.Error || b.Reason != "cancelled by alice" {
				t.Errorf("%s %q, want error \"cancelled by alice\"", b.State, b.Reason)
			}
			if d := b.Finished.Sub(cancelled); d > time.Second {
				t.Errorf("the cancel took %v to end the build (AgentWait is %v)", d, e.r.cfg.AgentWait)
			}
			e.checkRemovedOnce(svc)
			if ls := e.ag.LaunchCalls(); len(ls) != 0 {
				t.Errorf("launched a cancelled build (%d launches)", len(ls))
			}
		})
	}
}

// 10c. Cancel of a final build is coordinator.ErrNotRunning; of an unknown one,
// the store's ErrNotFound.
func TestRunnerCancelFinalOrUnknown(t *testing.T) {
	e := newRunnerEnv(t)
	e.sw.Tasks = buildsim.LandsOn("node-a")
	e.ag.SetLaunch(e.ag.ExitAfterLaunch(wire.Exit{ExitCode: 3}))
	q := e.submit(e.request(testSHA('a'), ""))
	before := e.wait(q.ID)
	ctx := context.Background()
	if err := e.r.Cancel(ctx, q.ID, "too late"); !errors.Is(err, coordinator.ErrNotRunning) {
		t.Errorf("Cancel of a final build: %v, want coordinator.ErrNotRunning", err)
	}
	after := e.stored(q.ID)
	if after.State != before.State || after.Reason != before.Reason {
		t.Errorf("Cancel changed a final build: %s %q -> %s %q", before.State, before.Reason, after.State, after.Reason)
	}
	if err := e.r.Cancel(ctx, "20260101T000000-000000", "who"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Cancel of an unknown build: %v, want ErrNotFound", err)
	}
	e.checkChanges(q.ID, coordinator.Queued, coordinator.Running, coordinator.Failure)
}

// 11a. A second build with the same key supersedes the first, whether it
// is still landing or already running.
func TestRunnerSupersede(t *testing.T) {
	for _, running := range []bool{false, true} {
		name := "landing"
		if running {
			name = "running"
		}
		t.Run(name, func(t *testing.T) {
			e := newRunnerEnv(t)
			first, second := testSHA('a'), testSHA('b')
			e.sw.Tasks = func(s *buildsim.Service, poll int) []swarm.Task {
				if s.Spec.Labels[plan.LabelSHA] == first && !running {
					return []swarm.Task{{Status: swarm.TaskStatus{State: swarm.TaskStatePending}}}
				}
				return []swarm.Task{buildsim.TaskFailedStart("node-"+s.Spec.Labels[plan.LabelSHA][:1], "c-"+s.ID)}
			}
			a := e.submit(e.request(first, "octo/hello#7"))
			if running {
				e.waitStored(a.ID, "the first build to start", func(b *coordinator.Build) bool { return !b.Started.IsZero() })
			} else {
				waitFor(t, "the first build's task list", func() bool { return e.sw.Polls(a.ID) >= 2 })
			}
			e.ag.SetLaunch(e.ag.ExitAfterLaunch(wire.Exit{ExitCode: 0}))
			b := e.submit(e.request(second, "octo/hello#7"))

			ga := e.wait(a.ID)
			sa := e.mustService(a.ID)
			wa := want{state: coordinator.Error, reason: "superseded by bbbbbbb", ending: coordinator.EndSuperseded, serviceName: sa.Spec.Name, serviceID: sa.ID}
			if running {
				wa.exit, wa.node, wa.container = intPtr(143), "node-a", "c-"+sa.ID
			}
			checkBuild(t, ga, wa)
			e.checkChanges(a.ID, coordinator.Queued, coordinator.Running, coordinator.Error)
			e.checkRemovedOnce(sa)

			gb := e.wait(b.ID)
			sb := e.mustService(b.ID)
			checkBuild(t, gb, want{state: coordinator.Success, exit: intPtr(0), node: "node-b", container: "c-" + sb.ID,
				serviceName: sb.Spec.Name, serviceID: sb.ID})
			e.checkChanges(b.ID, coordinator.Queued, coordinator.Running, coordinator.Success)
			e.checkRemovedOnce(sb)

			var launchedA int
			for _, l := range e.ag.LaunchCalls() {
				if l.Req.BuildID == a.ID {
					launchedA++
				}
			}
			c := e.ag.CancelCalls()
			if running {
				if launchedA != 1 || len(c) != 1 || c[0].Build != a.ID || c[0].Node != "node-a" {
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
func TestRunnerConcurrentSupersede(t *testing.T) {
	first, second := testSHA('a'), testSHA('b')
	var secondID atomic.Value
	var e *runnerEnv
	e = newRunnerEnv(t, func(c *Config) {
		c.OnChange = func(b *coordinator.Build) {
			e.changes.Record(b)
			if b.State == coordinator.Queued && b.SHA == first {
				nb := e.submit(e.request(second, "octo/hello#7"))
				secondID.Store(nb.ID)
			}
		}
	})
	e.sw.Tasks = buildsim.LandsOn("node-a")
	e.ag.SetLaunch(e.ag.ExitAfterLaunch(wire.Exit{ExitCode: 0}))
	a := e.submit(e.request(first, "octo/hello#7"))
	bID, _ := secondID.Load().(string)
	if bID == "" {
		t.Fatal("the second build was not submitted")
	}
	ga, gb := e.wait(a.ID), e.wait(bID)
	if gb.State != coordinator.Success {
		t.Errorf("the later build: %s %q, want success", gb.State, gb.Reason)
	}
	if ga.State != coordinator.Error || ga.Reason != "superseded by bbbbbbb" {
		t.Errorf("the earlier build: %s %q, want error \"superseded by bbbbbbb\"", ga.State, ga.Reason)
	}
	for _, l := range e.ag.LaunchCalls() {
		if l.Req.BuildID == a.ID {
			t.Error("the superseded build was launched")
		}
	}
}

// 11b. CancelKey cancels every active build of the key, watched or not,
// and no other.
func TestRunnerCancelKey(t *testing.T) {
	e := newRunnerEnv(t)
	e.sw.Tasks = buildsim.LandsOn("node-a")
	a := e.submit(e.request(testSHA('a'), "octo/hello#7"))
	other := e.submit(e.request(testSHA('c'), "octo/hello#8"))
	for _, id := range []string{a.ID, other.ID} {
		e.waitStored(id, "the build to start", func(b *coordinator.Build) bool { return !b.Started.IsZero() })
	}
	// An active record of the same key that no goroutine watches (left
	// over by a restart).
	ctx := context.Background()
	orphan := &coordinator.Build{ID: "20260101T000000-0rphan",
		Subject: coordinator.Subject{Owner: "octo", Repo: "hello", PullRequest: 7, SHA: testSHA('0'), Action: "execute", Key: "octo/hello#7"},
		State:   coordinator.Running, Created: time.Now().UTC()}
	if err := e.st.CreateBuild(ctx, orphan); err != nil {
		t.Fatal(err)
	}

	e.r.CancelKey(ctx, "octo/hello#7", "pull request closed")
	ga := e.wait(a.ID)
	sa := e.mustService(a.ID)
	checkBuild(t, ga, want{state: coordinator.Error, reason: "pull request closed", ending: coordinator.EndCancelled, exit: intPtr(143),
		node: "node-a", container: "c-" + sa.ID, serviceName: sa.Spec.Name, serviceID: sa.ID})
	e.checkRemovedOnce(sa)
	gorph := e.wait(orphan.ID)
	checkBuild(t, gorph, want{state: coordinator.Error, reason: "pull request closed", ending: coordinator.EndCancelled})
	e.checkChanges(orphan.ID, coordinator.Error)

	// The other key's build goes on, and finishes normally.
	testwait.Pause(t, 5*testPollInterval)
	if b := e.stored(other.ID); b.State != coordinator.Running {
		t.Fatalf("build of another key is %s %q", b.State, b.Reason)
	}
	e.ag.Report(other.ID, "", &wire.Exit{ExitCode: 0})
	gb := e.wait(other.ID)
	if gb.State != coordinator.Success {
		t.Errorf("build of another key: %s %q", gb.State, gb.Reason)
	}
	if c := e.ag.CancelCalls(); len(c) != 1 || c[0].Build != a.ID {
		t.Errorf("Dispatcher.Cancel calls %+v, want only %s", c, a.ID)
	}
}

// A Cancel (or CancelKey, for a closed pull request) that comes while
// Submit has recorded a build but not yet started its goroutine finds no
// run and finishes the record itself. The build must then stay an error
// with that reason, never be launched, and any service made for it must
// be removed. OnChange, called by Submit in that window, stands in for the
// concurrent caller so that the timing is deterministic. (Before 61a0184,
// execute dereferenced the nil build m.update returned here and panicked.)
func TestRunnerCancelKeyWhileSubmitting(t *testing.T) {
	var e *runnerEnv
	e = newRunnerEnv(t, func(c *Config) {
		c.OnChange = func(b *coordinator.Build) {
			e.changes.Record(b)
			if b.State == coordinator.Queued {
				e.r.CancelKey(context.Background(), b.Key, "pull request closed")
			}
		}
	})
	e.sw.Tasks = buildsim.LandsOn("node-a")
	q := e.submit(e.request(testSHA('a'), "octo/hello#7"))
	b := e.wait(q.ID)
	checkBuild(t, b, want{state: coordinator.Error, reason: "pull request closed", ending: coordinator.EndCancelled})
	e.checkChanges(q.ID, coordinator.Queued, coordinator.Error)
	if ls := e.ag.LaunchCalls(); len(ls) != 0 {
		t.Errorf("launched a cancelled build: %+v", ls)
	}
	if svc := e.sw.Service(q.ID); svc != nil && e.sw.Removals(svc.ID) != 1 {
		t.Errorf("service %s of a cancelled build removed %d times, want once", svc.ID, e.sw.Removals(svc.ID))
	}
}
