package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/swarm"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/config"
	"github.com/forge-ci/forge/coordinator/plan"
	"github.com/forge-ci/forge/forgexec"
	"github.com/forge-ci/forge/wire"
)

// admit takes a queued build to execute: it waits for the build's
// approval when it needs one, then for its slot in the queue. t is its
// place in the queue when it took one already (nil: it takes one once
// approved). request gives the build's Request once it may run.
func (r *Runner) admit(ctx context.Context, b *coordinator.Build, t *ticket, request func(context.Context) (coordinator.Request, error)) {
	if b.AwaitingApproval() {
		nb, err := r.awaitApproval(ctx, b)
		if err != nil {
			r.finishCause(ctx, b, err)
			return
		}
		b = nb
	}
	req, err := request(ctx)
	if err != nil {
		if t != nil {
			r.adm.leave(t)
		}
		r.finishCause(ctx, b, err)
		return
	}
	if t == nil {
		t = r.enter(b)
	}
	release, b, err := r.queue(ctx, b, t)
	if err != nil {
		r.finishCause(ctx, b, err)
		return
	}
	defer release()
	r.execute(ctx, b, req, release)
}

// execute is a build's whole life after it is admitted: create, land,
// launch, await. ctx is the run's: its cause says why it ended. release
// gives its slot in the queue back (once).
func (r *Runner) execute(ctx context.Context, b *coordinator.Build, req coordinator.Request, release func()) {
	// Before anything exists in swarm: a secret that is not set ends
	// the build here, as error naming it.
	sec, err := r.secretsOf(ctx, b, req)
	if err != nil {
		r.finishCause(ctx, b, err)
		return
	}
	// Agents may see the container before swarm's task list shows it.
	landings, stopLandings := r.cfg.Agents.Landings(b.ID)
	defer stopLandings()

	svc, execSpec, err := r.create(ctx, b, req)
	if err != nil {
		r.finishCause(ctx, b, err)
		return
	}
	defer r.removeService(svc, b.ID)
	// The slot goes back as the build ends, before its service's removal,
	// which a busy engine takes its time over (docs/benchmarks.md, queue).
	defer release()
	b, err = r.update(ctx, b, func(x *coordinator.Build) {
		x.State, x.ServiceID, x.ServiceName = coordinator.Running, svc.ID, svc.Name
		x.Reason = "" // its place in the queue, or its approval, is past
	})
	if err != nil {
		// Final already (cancelled meanwhile) or the store failed: the
		// deferred removal takes the service away again.
		r.log.Warn("record service", "build", b.ID, "err", err)
		return
	}

	node, cid, err := r.land(ctx, landings, svc.ID)
	if err != nil {
		r.finishCause(ctx, b, err)
		return
	}
	b, _ = r.update(ctx, b, func(x *coordinator.Build) { x.NodeID, x.ContainerID = node, cid })
	b.NodeID, b.ContainerID = node, cid // even if the record failed: launch goes there

	// Before the launch: a short build may exit before await begins.
	w := wantedOf(req.Config)
	releaseLog := r.holdLog(b.ID, w)
	defer releaseLog()
	if err := r.launch(ctx, b, execSpec, req, sec); err != nil {
		r.finishCause(ctx, b, err)
		return
	}
	started := time.Now()
	if r.cfg.OnDispatch != nil {
		r.cfg.OnDispatch(started.Sub(svc.Created))
	}
	b, _ = r.update(ctx, b, func(x *coordinator.Build) { x.Started = started.UTC() })
	b.Started = started.UTC()
	r.await(ctx, b, req.Config.Timeout, started, w, releaseLog)
}

// finishCause ends a build that failed before it started: with the cancel
// reason when it was cancelled, with err otherwise; not at all when the
// coordinator is shutting down (Recover finishes it after the restart).
func (r *Runner) finishCause(ctx context.Context, b *coordinator.Build, err error) {
	switch why, ok := cancelled(ctx); {
	case ok:
		r.finishAs(ctx, b, coordinator.Error, why.Ending, why.Reason, nil)
	case ctx.Err() == nil:
		r.finish(ctx, b, coordinator.Error, err.Error(), nil)
	}
}

// service is a build's swarm service once created.
type service struct {
	ID, Name string
	Created  time.Time
}

// create plans the build and creates its service.
func (r *Runner) create(ctx context.Context, b *coordinator.Build, req coordinator.Request) (service, []byte, error) {
	labels := map[string]string{}
	for k, v := range req.Labels {
		labels[k] = v
	}
	labels[coordinator.LabelCoordinator] = r.cfg.Instance // Recover relies on it
	pb := planOf(b)
	// An untrusted build (approved, or let run by --require-approval none)
	// is planned sandboxed; it gets no secrets (secretsOf, launch).
	opt := plan.Options{AllowPorts: r.cfg.AllowPorts, Node: req.Node, ExtraLabels: labels, Sandbox: r.cfg.Sandbox, Untrusted: b.Untrusted}
	if req.Node == "" && !r.cfg.Sandbox.BuildsOnManagers {
		var err error
		if opt.HasWorkers, err = r.hasWorkers(ctx); err != nil {
			return service{}, nil, err
		}
	}
	spec, err := plan.ServiceSpec(pb, req.Config, opt)
	if err != nil {
		return service{}, nil, err
	}
	execSpec, err := plan.ExecutorSpec(pb, req.Config)
	if err != nil {
		return service{}, nil, err
	}
	if ctx.Err() != nil {
		return service{}, nil, context.Cause(ctx)
	}
	created := time.Now()
	// Names have a one-second timestamp: two builds of one pull request in
	// the same second (the older one superseded but not yet removed) would
	// share one. A name swarm says is taken is tried again with a suffix.
	// A cancel does not interrupt the create (only shutdown does): the
	// service is removed once created.
	tried := map[string]bool{}
	for {
		resp, err := r.cfg.Swarm.ServiceCreate(r.base, spec, swarm.ServiceCreateOptions{})
		if err == nil {
			return service{ID: resp.ID, Name: spec.Name, Created: created}, execSpec, nil
		}
		if !errdefs.IsConflict(err) || len(tried) >= maxNameTries {
			return service{}, nil, fmt.Errorf("create service %s: %v", spec.Name, err)
		}
		tried[spec.Name] = true
		opt.Name = plan.ServiceName(pb, func(n string) bool { return tried[n] })
		spec.Annotations.Name = opt.Name
	}
}

// hasWorkers reports whether the swarm has a worker that can take a task
// now: ready and active (a drained or paused node takes none).
func (r *Runner) hasWorkers(ctx context.Context) (bool, error) {
	if r.cfg.Nodes == nil {
		return false, nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	nodes, err := r.cfg.Nodes.NodeList(ctx, swarm.NodeListOptions{Filters: filters.NewArgs(filters.Arg("role", "worker"))})
	if err != nil {
		return false, fmt.Errorf("list swarm workers (to keep builds off managers): %w", err)
	}
	for _, n := range nodes {
		if n.Spec.Role == swarm.NodeRoleWorker && n.Status.State == swarm.NodeStateReady && n.Spec.Availability == swarm.NodeAvailabilityActive {
			return true, nil
		}
	}
	return false, nil
}

// planOf is what the plan needs of a build.
func planOf(b *coordinator.Build) plan.Build {
	return plan.Build{ID: b.ID, Owner: b.Owner, Repo: b.Repo, PullRequest: b.PullRequest, Branch: b.Branch,
		SHA: b.SHA, Ref: b.Ref, Action: b.Action, CommitCount: b.CommitCount, Fork: b.Fork, Created: b.Created}
}

// land waits until the build's task has a node and a container. An
// agent's Landed report usually comes first (the agent sees the container
// created); the task list confirms the node, and is also the fallback. A
// rejected task, or one swarm cannot place, ends the wait with swarm's own
// message.
func (r *Runner) land(ctx context.Context, landings <-chan coordinator.Landing, serviceID string) (node, container string, err error) {
	ctx, cancel := context.WithTimeoutCause(ctx, r.cfg.LandTimeout,
		fmt.Errorf("the task did not start a container within %v", r.cfg.LandTimeout))
	defer cancel()
	tick := time.NewTicker(r.cfg.PollInterval)
	defer tick.Stop()
	claims := map[string]string{} // node -> container, from agents
	var pendingSince time.Time
	f := filters.NewArgs(filters.Arg("service", serviceID))
	for {
		select {
		case <-ctx.Done():
			return "", "", context.Cause(ctx)
		case l := <-landings:
			claims[l.Node] = l.Container
		case <-tick.C:
		}
		tasks, err := r.cfg.Swarm.TaskList(ctx, swarm.TaskListOptions{Filters: f})
		if err != nil {
			r.log.Warn("list tasks", "service", serviceID, "err", err)
			continue
		}
		for _, t := range tasks {
			switch t.Status.State {
			case swarm.TaskStateRejected:
				return "", "", fmt.Errorf("swarm rejected the task: %s", taskMessage(t))
			case swarm.TaskStatePending, swarm.TaskStateNew:
				if t.Status.Err != "" {
					if pendingSince.IsZero() {
						pendingSince = time.Now()
					} else if time.Since(pendingSince) >= r.cfg.UnplaceableGrace {
						return "", "", fmt.Errorf("swarm cannot place the task: %s", taskMessage(t))
					}
				}
			}
			if t.NodeID == "" {
				continue
			}
			if c, ok := claims[t.NodeID]; ok {
				return t.NodeID, c, nil
			}
			if cs := t.Status.ContainerStatus; cs != nil && cs.ContainerID != "" {
				return t.NodeID, cs.ContainerID, nil
			}
		}
	}
}

func taskMessage(t swarm.Task) string {
	if t.Status.Err != "" {
		return t.Status.Err
	}
	return t.Status.Message
}

// launch waits for the agent of the build's node and has it, and no
// other, inject and start the build. A cancel meanwhile stops the wait or
// the transfer.
func (r *Runner) launch(ctx context.Context, b *coordinator.Build, spec []byte, req coordinator.Request, sec buildSecrets) error {
	actx, cancel := context.WithTimeout(ctx, r.cfg.AgentWait)
	err := r.cfg.Agents.WaitAgent(actx, b.NodeID)
	cancel()
	if err != nil {
		if ctx.Err() == nil {
			return fmt.Errorf("no agent on node %s within %v", b.NodeID, r.cfg.AgentWait)
		}
		return err
	}
	if ctx.Err() != nil {
		return context.Cause(ctx) // cancelled as the agent came: no launch
	}
	// The last check before the agent: a build whose Subject.Untrusted is
	// set is never given secrets, whatever secretsOf did.
	if b.Untrusted && len(sec.values) > 0 {
		return errors.New("refused to give secrets to an untrusted build")
	}
	lr := coordinator.LaunchRequest{BuildID: b.ID, ContainerID: b.ContainerID, Executor: r.cfg.Executor,
		Spec: spec, Workdir: req.Config.Workdir, Secrets: sec.values}
	if err := r.giveSecrets(b, sec); err != nil {
		return err
	}
	if lr.Workdir == "" {
		lr.Workdir = config.DefaultWorkdir
	}
	if req.Source != nil {
		rc, size, err := req.Source(ctx)
		if err != nil {
			return fmt.Errorf("source: %w", err)
		}
		defer rc.Close()
		lr.Source, lr.SourceSize = rc, size
	}
	if lr.Cache = r.cache(ctx, b, req, lr.Source); lr.Cache != nil && lr.Cache.Archive != nil {
		defer lr.Cache.Archive.Close()
	}
	_, err = r.cfg.Agents.Launch(ctx, b.NodeID, lr)
	return err
}

// cache is the build's cache for its launch, or nil. A cache that cannot
// be had is no reason to fail the build: it runs cold.
func (r *Runner) cache(ctx context.Context, b *coordinator.Build, req coordinator.Request, src io.Reader) *coordinator.CacheLaunch {
	if r.cfg.Caches == nil || req.Config.Cache == nil {
		return nil
	}
	// The key may hash the source's files: the source is read, then sent
	// from its start. Sources are files (GitHub's tarball, forge run's).
	seeker, _ := src.(io.ReadSeeker)
	cl, err := r.cfg.Caches.Prepare(ctx, b, req.Config, seeker)
	if err != nil {
		r.log.Warn("build runs without its cache", "build", b.ID, "err", err)
		return nil
	}
	return cl
}

// await waits for the build's exit, enforcing its timeout and honouring
// a cancel, then collects its artifacts (w) and records the result. A
// build the coordinator stops watching (shutdown) is left as it is, for
// Recover. releaseLog ends the log's hold (holdLog), before the build is
// final.
func (r *Runner) await(ctx context.Context, b *coordinator.Build, timeout time.Duration, started time.Time, w wanted, releaseLog func()) {
	if timeout <= 0 {
		timeout = config.DefaultTimeout
	}
	// The exit is still wanted after a cancel; only shutdown ends the wait.
	wctx, wcancel := context.WithCancel(r.base)
	defer wcancel()
	exits, err := r.cfg.Agents.WaitExit(wctx, b.ID)
	if err != nil {
		if r.base.Err() == nil {
			r.finish(ctx, b, coordinator.Error, fmt.Sprintf("build log unavailable: %v", err), nil)
		}
		return
	}
	// The executor enforces the timeout itself (exit 124); this deadline
	// only catches a build whose executor cannot.
	deadline := time.NewTimer(time.Until(started.Add(timeout + timeoutGrace)))
	defer deadline.Stop()
	var why Cancelled
	select {
	case x, ok := <-exits:
		if !ok {
			return
		}
		// After the action, pass or fail, and before the service (and
		// its container) is removed.
		if r.collects(w) && x.Error == "" {
			r.collect(ctx, b, w)
			if r.base.Err() != nil {
				return // shutting down: after the restart, Recover collects again
			}
		}
		releaseLog()
		r.exited(ctx, b, x, timeout)
		return
	case <-ctx.Done():
		var ok bool
		if why, ok = cancelled(ctx); !ok {
			return // the coordinator stops; the build goes on and is recovered
		}
	case <-deadline.C:
		why = Cancelled{fmt.Sprintf("timed out after %v", timeout), coordinator.EndTimedOut}
	}
	r.stopBuild(b, why, exits)
}

// stopBuild has the agent stop a build that is cancelled or overdue, and
// records it as error with why's reason and whatever exit code is known.
func (r *Runner) stopBuild(b *coordinator.Build, why Cancelled, exits <-chan wire.Exit) {
	ctx := r.base
	reason := why.Reason
	r.log.Info("stopping build", "build", b.ID, "reason", reason)
	cctx, ccancel := context.WithTimeout(ctx, r.cfg.CancelGrace+requestTimeout)
	stopped, err := r.cfg.Agents.Cancel(cctx, b.NodeID, b.ID, b.ContainerID, r.cfg.CancelGrace)
	ccancel()
	var code *int
	exitCode := func(x wire.Exit, ok bool) {
		if ok {
			c := x.ExitCode
			code = &c
		}
	}
	if errors.Is(err, coordinator.ErrNoAgent) {
		// The node is cut off or its agent is down: nobody can confirm the
		// stop or send the rest of the log, so say what is known now
		// rather than wait exitWait for an agent that may not come back.
		// Removing the service has swarm stop the container once the node
		// is reachable again.
		r.log.Warn("cannot stop build: no agent on its node", "build", b.ID, "node", b.NodeID)
		select {
		case x, ok := <-exits:
			exitCode(x, ok)
		default:
			reason += fmt.Sprintf("; node %s has no agent connected to confirm the stop", b.NodeID)
		}
		r.finishAs(ctx, b, coordinator.Error, why.Ending, reason, code)
		return
	}
	if err != nil {
		r.log.Warn("cancel through the agent", "build", b.ID, "err", err)
	} else if stopped.ExitCode != nil {
		c := *stopped.ExitCode
		code = &c
	}
	// The output up to the stop is still worth having: wait a little for
	// the exit report, then record the reason whatever came.
	wait := time.NewTimer(exitWait)
	defer wait.Stop()
	select {
	case x, ok := <-exits:
		exitCode(x, ok)
		if !ok && ctx.Err() != nil {
			return
		}
	case <-wait.C:
	case <-ctx.Done():
		return
	}
	r.finishAs(ctx, b, coordinator.Error, why.Ending, reason, code)
}

// exited records a build's reported exit.
func (r *Runner) exited(ctx context.Context, b *coordinator.Build, x wire.Exit, timeout time.Duration) {
	code := x.ExitCode
	switch {
	case x.Error != "":
		r.finish(ctx, b, coordinator.Error, x.Error, nil)
	case code == 0:
		r.finish(ctx, b, coordinator.Success, "", &code)
	case code == forgexec.ExitTimeout:
		r.finishAs(ctx, b, coordinator.Error, coordinator.EndTimedOut, fmt.Sprintf("timed out after %v", timeout), &code)
	default:
		r.finish(ctx, b, coordinator.Failure, fmt.Sprintf("exit code %d", code), &code)
	}
}

// removeService removes a build's service (and so its container) when
// the build is over, with a context of its own so that it happens even as
// the coordinator shuts down; a build that is still running then keeps its
// service, for Recover after the restart.
func (r *Runner) removeService(svc service, buildID string) {
	if r.base.Err() != nil {
		b, err := r.cfg.Store.Build(context.Background(), buildID)
		if err == nil && !b.State.Final() {
			return // shutting down mid-build: the service stays for Recover
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := r.cfg.Swarm.ServiceRemove(ctx, svc.ID); err != nil && !errdefs.IsNotFound(err) {
		r.log.Warn("remove service", "service", svc.ID, "build", buildID, "err", err)
	}
}
