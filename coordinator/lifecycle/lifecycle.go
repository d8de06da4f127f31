package coordinator

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/swarm"

	"github.com/forge-ci/forge/coordinator/config"
	"github.com/forge-ci/forge/coordinator/plan"
	"github.com/forge-ci/forge/coordinator/store"
	"github.com/forge-ci/forge/forgexec"
	"github.com/forge-ci/forge/wire"
)

// Swarm is the part of the manager's Engine API that runs builds, always
// through the manager's local socket.
type Swarm interface {
	ServiceCreate(ctx context.Context, spec swarm.ServiceSpec, opts swarm.ServiceCreateOptions) (swarm.ServiceCreateResponse, error)
	ServiceRemove(ctx context.Context, id string) error
	ServiceList(ctx context.Context, opts swarm.ServiceListOptions) ([]swarm.Service, error)
	TaskList(ctx context.Context, opts swarm.TaskListOptions) ([]swarm.Task, error)
}

// Source produces a build's source tree as a tar stream of known size.
// It is called once, when the build's container is ready for it.
type Source func(ctx context.Context) (io.ReadCloser, int64, error)

// Request is a build to run.
type Request struct {
	// Build carries the identity fields (Owner, Repo, PullRequest, Branch,
	// SHA, Ref, Action, CommitCount, Fork, Trigger, Key, InstallationID);
	// the manager fills in ID, state and times.
	Build      store.Build
	Config     *config.Config
	ConfigText string
	Source     Source // nil: no source
	// Node pins the build to a swarm node (forge run).
	Node string
	// Labels are added to the service and its container.
	Labels map[string]string
}

// Dispatcher is how the manager reaches agents; *AgentServer is one.
type Dispatcher interface {
	WaitAgent(ctx context.Context, nodeID string) error
	Launch(ctx context.Context, nodeID string, req LaunchRequest) (*LaunchResult, error)
	Cancel(ctx context.Context, nodeID, buildID, containerID string, grace time.Duration) (*wire.Cancelled, error)
}

// Manager runs builds: it plans and creates each build's service, learns
// where its task landed, has that node's agent start it, and records what
// happens until the service is removed.
//
// Submit, Cancel and CancelKey may be called concurrently. Each build runs
// in a goroutine the manager owns; Close stops watching (the builds
// themselves go on in swarm, and Recover picks them up after a restart).
type Manager struct {
	Swarm    Swarm
	Store    *store.Store
	Logs     *LogStore
	Agents   Dispatcher
	Executor *Executor
	Log      *slog.Logger
	// Instance names this coordinator's state: its services carry it in
	// LabelCoordinator, and Recover touches no other services, so two
	// coordinators (or test runs) on one swarm leave each other's builds
	// alone.
	Instance string

	AllowPorts bool
	// LandTimeout bounds create -> the task's container exists on a node
	// (image pulls happen in between). Default 10 min.
	LandTimeout time.Duration
	// AgentWait bounds the wait for an agent on the node where a task
	// landed. Default 30 s.
	AgentWait time.Duration
	// UnplaceableGrace is how long a task may stay pending with a
	// scheduling error before the build ends as error. Default 3 s.
	UnplaceableGrace time.Duration
	// CancelGrace is how long a cancelled build's commands get between
	// SIGTERM and SIGKILL. Default 10 s.
	CancelGrace time.Duration
	// PollInterval paces the manager's look at the task list while a
	// build lands; agents' Landed reports usually answer first. Default
	// 250 ms.
	PollInterval time.Duration

	// OnChange, when set, is called after every state change of a build
	// (queued, running, final), in order for each build.
	OnChange func(b *store.Build)
	// OnDispatch, when set, is told how long create -> started took.
	OnDispatch func(d time.Duration)

	mu     sync.Mutex
	runs   map[string]*run
	landed map[string]chan landing
	kick   chan struct{}
	since  time.Time // when this manager started: builds from before are Recover's
	base   context.Context
	stop   context.CancelFunc
	wg     sync.WaitGroup
}

// run is one build being watched.
type run struct {
	cancel    chan string // a reason; buffered 1
	done      chan struct{}
	cancelled atomic.Bool // set by Cancel before it sends: seen without a receive
}

const (
	maxNameTries = 5                // service names tried when swarm says one is taken
	timeoutGrace = 30 * time.Second // after the executor's own timeout
	exitWait     = 45 * time.Second // for the exit after a cancel
)

func (m *Manager) init() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.runs != nil {
		return
	}
	m.runs = map[string]*run{}
	m.landed = map[string]chan landing{}
	m.kick = make(chan struct{})
	m.since = time.Now().UTC()
	m.base, m.stop = context.WithCancel(context.Background())
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&m.LandTimeout, 10*time.Minute)
	def(&m.AgentWait, 30*time.Second)
	def(&m.UnplaceableGrace, 3*time.Second)
	def(&m.CancelGrace, 10*time.Second)
	def(&m.PollInterval, 250*time.Millisecond)
	if m.Log == nil {
		m.Log = slog.New(slog.DiscardHandler)
	}
}

// Close stops every build's watcher and waits for them. Builds are not
// cancelled.
func (m *Manager) Close() {
	m.init()
	m.stop()
	m.wg.Wait()
}

// NewBuildID returns a new build id: sortable by time, unique.
func NewBuildID(now time.Time) string {
	var b [3]byte
	rand.Read(b[:])
	return now.UTC().Format("20060102T150405") + "-" + hex.EncodeToString(b[:])
}

// Submit records a build, supersedes older active builds with the same
// key, and starts it. It returns the queued build.
func (m *Manager) Submit(ctx context.Context, req Request) (*store.Build, error) {
	m.init()
	if req.Config == nil {
		return nil, errors.New("submit: no config")
	}
	b := req.Build
	now := time.Now().UTC()
	b.ID, b.State, b.Created, b.Config = NewBuildID(now), store.Queued, now, req.ConfigText
	if b.Action == "" {
		b.Action = config.DefaultAction
	}
	if err := m.Logs.Create(b.ID); err != nil {
		return nil, err
	}
	if err := m.Store.CreateBuild(ctx, &b); err != nil {
		return nil, fmt.Errorf("record build: %w", err)
	}
	m.changed(&b)
	if b.Key != "" {
		m.supersede(ctx, b.Key, &b, "superseded by "+short(b.SHA))
	}
	m.start(&b, func(ctx context.Context, r *run) { m.execute(ctx, r, &b, req) })
	return &b, nil
}

func short(sha string) string {
	if len(sha) > 7 {
		return sha[:7]
	}
	return sha
}

// supersede cancels the active builds of key that are older than keep
// (all of them when keep is nil). Only older ones: two builds of one key
// submitted at once must not cancel each other.
func (m *Manager) supersede(ctx context.Context, key string, keep *store.Build, reason string) {
	olds, err := m.Store.ActiveByKey(ctx, key)
	if err != nil {
		m.Log.Error("find builds to supersede", "key", key, "err", err)
		return
	}
	for _, o := range olds {
		if keep == nil || o.Created.Before(keep.Created) || (o.Created.Equal(keep.Created) && o.ID < keep.ID) {
			m.Cancel(ctx, o.ID, reason)
		}
	}
}

// CancelKey cancels every active build of key (a closed pull request).
func (m *Manager) CancelKey(ctx context.Context, key, reason string) {
	m.init()
	m.supersede(ctx, key, nil, reason)
}

// ErrNotRunning is returned by Cancel for a build that is already final.
var ErrNotRunning = errors.New("build is not running")

// Cancel asks a build to stop; it ends as error with reason. It returns at
// once; the build's goroutine does the work.
func (m *Manager) Cancel(ctx context.Context, id, reason string) error {
	m.init()
	m.mu.Lock()
	r := m.runs[id]
	m.mu.Unlock()
	if r == nil {
		b, err := m.Store.Build(ctx, id)
		if err != nil {
			return err
		}
		if b.State.Final() {
			return fmt.Errorf("%w: %s is %s", ErrNotRunning, id, b.State)
		}
		// Recorded as active but watched by nobody (a restart lost it).
		m.finish(ctx, b, store.Error, reason, nil)
		return nil
	}
	r.cancelled.Store(true)
	select {
	case r.cancel <- reason:
	default: // a cancel is pending already
	}
	return nil
}

// Wait returns the build once it is final, or ctx's error. A build that
// nobody watches yet (Recover has not reached it) is waited for too.
func (m *Manager) Wait(ctx context.Context, id string) (*store.Build, error) {
	m.init()
	for {
		m.mu.Lock()
		r, kick := m.runs[id], m.kick
		m.mu.Unlock()
		if r != nil {
			select {
			case <-r.done:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		b, err := m.Store.Build(ctx, id)
		if err != nil || b.State.Final() {
			return b, err
		}
		if r != nil {
			continue // the run ended without a final state: shutdown
		}
		select {
		case <-kick:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// kicked wakes Waits that found no run: a run started or a build ended.
func (m *Manager) kicked() {
	m.mu.Lock()
	close(m.kick)
	m.kick = make(chan struct{})
	m.mu.Unlock()
}

// Landed is the agent server's OnLanded: an agent saw a build's container
// created on its node.
func (m *Manager) Landed(nodeID string, l wire.Landed) {
	m.init()
	m.mu.Lock()
	ch := m.landed[l.BuildID]
	m.mu.Unlock()
	if ch == nil {
		return
	}
	select {
	case ch <- landing{node: nodeID, container: l.ContainerID}:
	default:
	}
}

// start runs fn in a goroutine the manager owns, registered as a run.
func (m *Manager) start(b *store.Build, fn func(ctx context.Context, r *run)) {
	r := &run{cancel: make(chan string, 1), done: make(chan struct{})}
	m.mu.Lock()
	m.runs[b.ID] = r
	m.landed[b.ID] = make(chan landing, 4)
	m.mu.Unlock()
	m.kicked()
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		defer func() {
			m.mu.Lock()
			delete(m.runs, b.ID)
			delete(m.landed, b.ID)
			m.mu.Unlock()
			close(r.done)
		}()
		fn(m.base, r)
	}()
}

func (m *Manager) changed(b *store.Build) {
	if m.OnChange != nil {
		c := *b
		m.OnChange(&c)
	}
}

// update writes fn's changes to b's record and tells OnChange when the
// state moved. It returns the stored build, or b itself and the error.
func (m *Manager) update(ctx context.Context, b *store.Build, fn func(*store.Build) error) (*store.Build, error) {
	// A record must be written even as the coordinator shuts down (a
	// build that started must be known to have started after a restart).
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	var before store.State
	nb, err := m.Store.UpdateBuild(ctx, b.ID, func(x *store.Build) error {
		before = x.State
		return fn(x)
	})
	if err != nil {
		return b, err
	}
	b = nb
	if b.State != before {
		m.changed(b)
	}
	return b, nil
}

// finish records a final state, once.
func (m *Manager) finish(ctx context.Context, b *store.Build, st store.State, reason string, code *int) *store.Build {
	nb, err := m.update(ctx, b, func(x *store.Build) error {
		x.State, x.Reason, x.ExitCode, x.Finished = st, reason, code, time.Now().UTC()
		return nil
	})
	if err != nil {
		if !errors.Is(err, store.ErrFinal) {
			m.Log.Error("record the end of a build", "build", b.ID, "err", err)
		}
		return b
	}
	m.Log.Info("build finished", "build", b.ID, "state", st, "reason", reason)
	m.kicked()
	return nb
}

// execute is a build's whole life after it is queued.
func (m *Manager) execute(ctx context.Context, r *run, b *store.Build, req Request) {
	pb := plan.Build{ID: b.ID, Owner: b.Owner, Repo: b.Repo, PullRequest: b.PullRequest, Branch: b.Branch,
		SHA: b.SHA, Ref: b.Ref, Action: b.Action, CommitCount: b.CommitCount, Fork: b.Fork, Created: b.Created}
	labels := map[string]string{}
	for k, v := range req.Labels {
		labels[k] = v
	}
	labels[LabelCoordinator] = m.Instance // Recover relies on it
	opt := plan.Options{AllowPorts: m.AllowPorts, Node: req.Node, ExtraLabels: labels}
	spec, err := plan.ServiceSpec(pb, req.Config, opt)
	if err != nil {
		m.finish(ctx, b, store.Error, err.Error(), nil)
		return
	}
	execSpec, err := plan.ExecutorSpec(pb, req.Config)
	if err != nil {
		m.finish(ctx, b, store.Error, err.Error(), nil)
		return
	}
	select {
	case reason := <-r.cancel:
		m.finish(ctx, b, store.Error, reason, nil)
		return
	default:
	}
	created := time.Now()
	// Names have a one-second timestamp: two builds of one pull request in
	// the same second (the older one superseded but not yet removed) would
	// share one. A name swarm says is taken is tried again with a suffix.
	tried := map[string]bool{}
	var resp swarm.ServiceCreateResponse
	for {
		resp, err = m.Swarm.ServiceCreate(ctx, spec, swarm.ServiceCreateOptions{})
		if err == nil || !errdefs.IsConflict(err) || len(tried) >= maxNameTries {
			break
		}
		tried[spec.Name] = true
		opt.Name = plan.ServiceName(pb, func(n string) bool { return tried[n] })
		spec.Annotations.Name = opt.Name
	}
	if err != nil {
		m.finish(ctx, b, store.Error, fmt.Sprintf("create service %s: %v", spec.Name, err), nil)
		return
	}
	defer m.removeService(resp.ID, b.ID)
	b, err = m.update(ctx, b, func(x *store.Build) error {
		x.State, x.ServiceID, x.ServiceName = store.Running, resp.ID, spec.Name
		return nil
	})
	if err != nil {
		// Final already (cancelled meanwhile) or the store failed: the
		// deferred removal takes the service away again.
		m.Log.Warn("record service", "build", b.ID, "err", err)
		return
	}

	// Land: where did swarm put the task, and which container is it?
	lctx, lcancel := context.WithTimeout(ctx, m.LandTimeout)
	node, cid, err := m.land(lctx, r, b.ID, resp.ID)
	lcancel()
	if err != nil {
		var c cancelled
		if errors.As(err, &c) {
			m.finish(ctx, b, store.Error, string(c), nil)
		} else if ctx.Err() == nil {
			m.finish(ctx, b, store.Error, err.Error(), nil)
		}
		return
	}
	b, _ = m.update(ctx, b, func(x *store.Build) error { x.NodeID, x.ContainerID = node, cid; return nil })
	b.NodeID, b.ContainerID = node, cid // even if the record failed: launch goes there

	// Launch through that node's agent and no other. A cancel meanwhile
	// stops the wait or the transfer; the reason is kept for the record.
	lctx, stopWatch, reason := watchCancel(ctx, r)
	actx, acancel := context.WithTimeout(lctx, m.AgentWait)
	err = m.Agents.WaitAgent(actx, node)
	acancel()
	if err == nil && r.cancelled.Load() {
		err = context.Canceled // cancelled as the agent came: no launch
	} else if err == nil {
		err = m.launch(lctx, b, execSpec, req.Config.Workdir, req.Source)
	} else if lctx.Err() == nil {
		err = fmt.Errorf("no agent on node %s within %v", node, m.AgentWait)
	}
	stopWatch()
	why := reason()
	if why == "" && r.cancelled.Load() {
		select { // sent, but not yet taken by the watcher when it stopped
		case why = <-r.cancel:
		default:
		}
	}
	if why != "" {
		if err == nil {
			r.cancel <- why // launched after all: await stops it through the agent
		} else {
			m.finish(ctx, b, store.Error, why, nil)
			return
		}
	}
	if err != nil {
		if ctx.Err() == nil {
			m.finish(ctx, b, store.Error, err.Error(), nil)
		}
		return
	}
	started := time.Now()
	if m.OnDispatch != nil {
		m.OnDispatch(started.Sub(created))
	}
	b, _ = m.update(ctx, b, func(x *store.Build) error { x.Started = started.UTC(); return nil })
	b.Started = started.UTC()
	m.await(ctx, r, b, req.Config.Timeout, started)
}

// LabelCoordinator carries the Instance of the coordinator that created a
// build's service.
const LabelCoordinator = "forge.coordinator"

// watchCancel returns a context that ends when ctx does or when the run
// is cancelled, and the cancel's reason ("" when none). stop must be
// called; after it, reason is stable.
func watchCancel(ctx context.Context, r *run) (context.Context, func(), func() string) {
	cctx, cancel := context.WithCancel(ctx)
	var why string
	done := make(chan struct{})
	go func() {
		defer close(done)
		select {
		case why = <-r.cancel:
			cancel()
		case <-cctx.Done():
		}
	}()
	stop := func() { cancel(); <-done }
	return cctx, stop, func() string { return why }
}

// landing is an agent's report that a build's container exists on its node.
type landing struct{ node, container string }

// cancelled is the reason a build was cancelled while it landed.
type cancelled string

func (c cancelled) Error() string { return string(c) }

// land waits until the build's task has a node and a container. An
// agent's Landed report usually comes first (the agent sees the container
// created); the manager's task list confirms the node, and is also the
// fallback. A rejected task, or one swarm cannot place, ends the wait with
// swarm's own message.
func (m *Manager) land(ctx context.Context, r *run, buildID, serviceID string) (node, container string, err error) {
	m.mu.Lock()
	landed := m.landed[buildID]
	m.mu.Unlock()
	tick := time.NewTicker(m.PollInterval)
	defer tick.Stop()
	claims := map[string]string{} // node -> container, from agents
	var pendingSince time.Time
	f := filters.NewArgs(filters.Arg("service", serviceID))
	for {
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return "", "", fmt.Errorf("the task did not start a container within %v", m.LandTimeout)
			}
			return "", "", ctx.Err()
		case reason := <-r.cancel:
			return "", "", cancelled(reason)
		case l := <-landed:
			claims[l.node] = l.container
		case <-tick.C:
		}
		tasks, err := m.Swarm.TaskList(ctx, swarm.TaskListOptions{Filters: f})
		if err != nil {
			m.Log.Warn("list tasks", "service", serviceID, "err", err)
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
					} else if time.Since(pendingSince) >= m.UnplaceableGrace {
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

// launch sends the Launch with the executor, spec and source.
func (m *Manager) launch(ctx context.Context, b *store.Build, spec []byte, workdir string, src Source) error {
	req := LaunchRequest{BuildID: b.ID, ContainerID: b.ContainerID, Executor: m.Executor, Spec: spec, Workdir: workdir}
	if src != nil {
		rc, size, err := src(ctx)
		if err != nil {
			return fmt.Errorf("source: %w", err)
		}
		defer rc.Close()
		req.Source, req.SourceSize = rc, size
	}
	if req.Workdir == "" {
		req.Workdir = config.DefaultWorkdir
	}
	_, err := m.Agents.Launch(ctx, b.NodeID, req)
	return err
}

// await waits for the build's exit, enforcing its timeout and honouring
// cancels, then records the result.
func (m *Manager) await(ctx context.Context, r *run, b *store.Build, timeout time.Duration, started time.Time) {
	if timeout <= 0 {
		timeout = config.DefaultTimeout
	}
	// The executor enforces the timeout itself (exit 124); this deadline
	// only catches a build whose executor cannot.
	deadline := time.NewTimer(time.Until(started.Add(timeout + timeoutGrace)))
	defer deadline.Stop()
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	type exitOrErr struct {
		x   *wire.Exit
		err error
	}
	exits := make(chan exitOrErr, 1)
	go func() {
		x, err := m.Logs.WaitExit(wctx, b.ID)
		exits <- exitOrErr{x, err}
	}()
	var reason string
	select {
	case e := <-exits:
		if e.err != nil {
			if ctx.Err() == nil {
				m.finish(ctx, b, store.Error, fmt.Sprintf("build log unavailable: %v", e.err), nil)
			}
			return
		}
		m.exited(ctx, b, e.x, timeout)
		return
	case <-ctx.Done():
		return // the coordinator stops; the build goes on and is recovered
	case reason = <-r.cancel:
	case <-deadline.C:
		reason = fmt.Sprintf("timed out after %v", timeout)
	}
	m.Log.Info("stopping build", "build", b.ID, "reason", reason)
	cctx, ccancel := context.WithTimeout(ctx, m.CancelGrace+requestTimeout)
	stopped, err := m.Agents.Cancel(cctx, b.NodeID, b.ID, b.ContainerID, m.CancelGrace)
	ccancel()
	var code *int
	if errors.Is(err, ErrNoAgent) {
		// The node is cut off or its agent is down: nobody can confirm the
		// stop or send the rest of the log, so say what is known now
		// rather than wait exitWait for an agent that may not come back.
		// Removing the service has swarm stop the container once the node
		// is reachable again.
		m.Log.Warn("cannot stop build: no agent on its node", "build", b.ID, "node", b.NodeID)
		select {
		case e := <-exits:
			if e.err == nil && e.x != nil {
				c := e.x.ExitCode
				code = &c
			}
		default:
			reason += fmt.Sprintf("; node %s has no agent connected to confirm the stop", b.NodeID)
		}
		m.finish(ctx, b, store.Error, reason, code)
		return
	}
	if err != nil {
		m.Log.Warn("cancel through the agent", "build", b.ID, "err", err)
	} else if stopped.ExitCode != nil {
		c := *stopped.ExitCode
		code = &c
	}
	// The output up to the stop is still worth having: wait a little for
	// the exit report, then record the reason whatever came.
	select {
	case e := <-exits:
		if e.err == nil && e.x != nil {
			c := e.x.ExitCode
			code = &c
		}
		m.finish(ctx, b, store.Error, reason, code)
	case <-time.After(exitWait):
		m.finish(ctx, b, store.Error, reason, code)
	case <-ctx.Done():
	}
}

// exited records a build's reported exit.
func (m *Manager) exited(ctx context.Context, b *store.Build, x *wire.Exit, timeout time.Duration) {
	code := x.ExitCode
	switch {
	case x.Error != "":
		m.finish(ctx, b, store.Error, x.Error, nil)
	case code == 0:
		m.finish(ctx, b, store.Success, "", &code)
	case code == forgexec.ExitTimeout:
		m.finish(ctx, b, store.Error, fmt.Sprintf("timed out after %v", timeout), &code)
	default:
		m.finish(ctx, b, store.Failure, fmt.Sprintf("exit code %d", code), &code)
	}
}

// removeService removes a build's service (and so its container) when
// the build is over, with a context of its own so that it happens even as
// the coordinator shuts down; a build that is still running then keeps its
// service, for Recover after the restart.
func (m *Manager) removeService(serviceID, buildID string) {
	if m.base.Err() != nil {
		b, err := m.Store.Build(context.Background(), buildID)
		if err == nil && !b.State.Final() {
			return // shutting down mid-build: the service stays for Recover
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := m.Swarm.ServiceRemove(ctx, serviceID); err != nil && !errdefs.IsNotFound(err) {
		m.Log.Warn("remove service", "service", serviceID, "build", buildID, "err", err)
	}
}

// Recover is called once at start-up, before new builds are submitted.
// It matches swarm's build services with the records: services of builds
// that are over or unknown are removed; builds that had started are
// watched again (their agents re-attach and report the exit); builds that
// had not started cannot be resumed, since their source is gone, and end
// as error.
func (m *Manager) Recover(ctx context.Context) error {
	m.init()
	svcs, err := m.Swarm.ServiceList(ctx, swarm.ServiceListOptions{Filters: filters.NewArgs(
		filters.Arg("label", plan.LabelBuild), filters.Arg("label", LabelCoordinator+"="+m.Instance))})
	if err != nil {
		return fmt.Errorf("recover: list build services: %w", err)
	}
	byBuild := map[string]swarm.Service{}
	for _, s := range svcs {
		id := s.Spec.Labels[plan.LabelBuild]
		b, err := m.Store.Build(ctx, id)
		if err == nil && !b.State.Final() {
			byBuild[id] = s
			continue
		}
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("recover: %w", err)
		}
		m.Log.Info("removing the service of a finished or unknown build", "service", s.Spec.Name, "build", id)
		m.removeService(s.ID, id)
	}
	active, err := m.Store.Active(ctx)
	if err != nil {
		return fmt.Errorf("recover: %w", err)
	}
	for _, b := range active {
		m.mu.Lock()
		mine := m.runs[b.ID] != nil || !b.Created.Before(m.since)
		m.mu.Unlock()
		if mine {
			continue // submitted to this manager, not left by an earlier one
		}
		s, ok := byBuild[b.ID]
		switch {
		case !ok:
			m.finish(ctx, b, store.Error, "lost in a coordinator restart: its service is gone", nil)
		case b.Started.IsZero():
			m.finish(ctx, b, store.Error, "the coordinator restarted before the build started; run it again", nil)
			m.removeService(s.ID, b.ID)
		default:
			timeout := config.DefaultTimeout
			if cfg, err := config.Parse(".forge.yml", []byte(b.Config)); err == nil {
				timeout = cfg.Timeout
			}
			m.Log.Info("watching a build again after a restart", "build", b.ID, "node", b.NodeID)
			m.start(b, func(ctx context.Context, r *run) {
				defer m.removeService(s.ID, b.ID)
				m.await(ctx, r, b, timeout, b.Started)
			})
		}
	}
	return nil
}
