// Package lifecycle runs builds (DESIGN §2): it records each build,
// supersedes older ones, creates its swarm service, learns where the task
// landed, has that node's agent start it, awaits its exit and records the
// outcome; after a restart it picks up the builds a previous run left.
//
// Each build has one goroutine and one context; cancelling that context,
// with the reason as its cause, is the only way to stop a build.
package lifecycle

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/docker/docker/api/types/swarm"
	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/config"
	"github.com/forge-ci/forge/coordinator/plan"
	"github.com/forge-ci/forge/coordinator/store"
	"github.com/forge-ci/forge/internal/redact"
	"github.com/forge-ci/forge/wire"
)

// Logs is where a build's output will go: the lifecycle makes the (empty)
// log of each new build, so agents can attach to it, adds Forge's own
// lines after the exit, and has a build's secrets masked (logs.Store).
type Logs interface {
	Create(buildID string) error
	// Hold keeps the log open past the exit until release: its followers
	// wait for the notes.
	Hold(buildID string) (release func(), err error)
	// Note appends Forge's own lines.
	Note(buildID, text string) error
	// Mask hides values in the build's output from now on; Forget drops
	// them when the build is over, and Seal refuses its output for good.
	Mask(buildID string, values [][]byte)
	Forget(buildID string)
	Seal(buildID string)
}

// Config is what a Runner needs; zero durations take the defaults.
type Config struct {
	Swarm    coordinator.Swarm
	Store    *store.Store
	Logs     Logs
	Agents   coordinator.Agents
	Executor *coordinator.Executor
	Log      *slog.Logger
	// Instance names this coordinator's state: its services carry it in
	// coordinator.LabelCoordinator, and Recover touches no other services,
	// so two coordinators (or test runs) on one swarm leave each other's
	// builds alone.
	Instance   string
	AllowPorts bool
	// Sandbox is what builds are allowed (plan.Options.Sandbox); zero
	// fields take plan.DefaultSandbox's values.
	Sandbox plan.Sandbox
	// Nodes, when set, is asked before each build whether the swarm has a
	// ready worker, which keeps builds off managers; nil places builds as
	// if it had none.
	Nodes Nodes
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
	// PollInterval paces the look at the task list while a build lands;
	// agents' Landed reports usually answer first. Default 250 ms.
	PollInterval time.Duration
	// OnChange, when set, is called after every state change of a build
	// (queued, running, final), in order for each build, with a copy.
	OnChange func(b *coordinator.Build)
	// OnDispatch, when set, is told how long create -> started took.
	OnDispatch func(d time.Duration)
	// MaxBuilds bounds the builds that run at once, MaxBuildsPerRepo those
	// of one repository (0: no bound); the others stay queued, in order.
	MaxBuilds, MaxBuildsPerRepo int
	// Resume makes again the Request of a build an earlier coordinator
	// recorded but never created (awaiting approval, or queued), once it
	// may run. nil: such a build ends as error when it would start.
	Resume func(ctx context.Context, b *coordinator.Build) (coordinator.Request, error)
	// Artifacts keeps what the agents copy out of finished builds; nil
	// collects none.
	Artifacts ArtifactStore
	// MaxArtifactsSize bounds each build's artifacts
	// (--max-artifacts-size). Default DefaultMaxArtifactsSize.
	MaxArtifactsSize int64
	// Secrets opens the repository secrets builds name in .forge.yml;
	// nil: the coordinator has no secrets key, and a trusted build that
	// names secrets ends as error saying so.
	Secrets coordinator.Secrets
	// Caches, when set, gives builds with cache: in their config their
	// cache (caches.Store); nil: builds run without.
	Caches coordinator.Caches
}

// Nodes lists the swarm's nodes; *client.Client satisfies it.
type Nodes interface {
	NodeList(ctx context.Context, opts swarm.NodeListOptions) ([]swarm.Node, error)
}

// Runner runs builds; it is the coordinator.Builds of the coordinator.
// Each build runs in a goroutine the runner owns; Close stops watching
// (the builds themselves go on in swarm, and Recover picks them up after a
// restart).
type Runner struct {
	cfg   Config
	log   *slog.Logger
	since time.Time // when this runner started: builds from before are Recover's
	base  context.Context
	stop  context.CancelFunc
	wg    sync.WaitGroup

	adm *admission

	mu   sync.Mutex
	runs map[string]*run
	kick chan struct{} // closed and replaced when a run starts or a build ends
}

// run is one build being watched.
type run struct {
	ctx    context.Context // ends with the run; its cause says why
	cancel context.CancelCauseFunc
	done   chan struct{}
	// approved is closed by Approve.
	approved    chan struct{}
	approveOnce sync.Once
}

// Cancelled is the cause of a run's context when the build was cancelled:
// the build ends as error with Reason, and Ending says how it was cancelled.
type Cancelled struct {
	Reason string
	Ending coordinator.Ending
}

func (c Cancelled) Error() string { return c.Reason }

const (
	maxNameTries   = 5                   // service names tried when swarm says one is taken
	timeoutGrace   = 30 * time.Second    // after the executor's own timeout
	exitWait       = 45 * time.Second    // for the exit after a cancel
	requestTimeout = wire.RequestTimeout // one request to an agent, beyond its own grace
	recordTimeout  = 10 * time.Second    // one write of a build's record
)

var _ coordinator.Builds = (*Runner)(nil)

// New returns a runner; call Recover once before submitting builds.
func New(cfg Config) *Runner {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&cfg.LandTimeout, 10*time.Minute)
	def(&cfg.AgentWait, 30*time.Second)
	def(&cfg.UnplaceableGrace, 3*time.Second)
	def(&cfg.CancelGrace, 10*time.Second)
	def(&cfg.PollInterval, 250*time.Millisecond)
	if cfg.MaxArtifactsSize <= 0 {
		cfg.MaxArtifactsSize = DefaultMaxArtifactsSize
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Runner{cfg: cfg, log: log, since: time.Now().UTC(), runs: map[string]*run{}, kick: make(chan struct{}),
		adm: newAdmission(cfg.MaxBuilds, cfg.MaxBuildsPerRepo)}
	r.base, r.stop = context.WithCancel(context.Background())
	return r
}

// Close stops every build's watcher and waits for them. Builds are not
// cancelled.
func (r *Runner) Close() {
	r.stop()
	r.wg.Wait()
}

// NewBuildID returns a new build id: sortable by time, unique.
func NewBuildID(now time.Time) string {
	var b [3]byte
	rand.Read(b[:])
	return now.UTC().Format("20060102T150405") + "-" + hex.EncodeToString(b[:])
}

// Submit implements coordinator.Builds.
func (r *Runner) Submit(ctx context.Context, req coordinator.Request) (*coordinator.Build, error) {
	if req.Config == nil {
		return nil, errors.New("submit: no config")
	}
	now := time.Now().UTC()
	b := &coordinator.Build{ID: NewBuildID(now), Subject: req.Subject, State: coordinator.Queued, Created: now, Config: req.ConfigText}
	if b.Action == "" {
		b.Action = config.DefaultAction
	}
	if b.NeedsApproval {
		b.Reason = coordinator.ReasonAwaitingApproval
	}
	if err := r.cfg.Logs.Create(b.ID); err != nil {
		return nil, err
	}
	if err := r.cfg.Store.CreateBuild(ctx, b); err != nil {
		return nil, fmt.Errorf("record build: %w", err)
	}
	r.changed(b)
	if b.Key != "" {
		r.supersede(ctx, b.Key, b, Cancelled{"superseded by " + short(b.SHA), coordinator.EndSuperseded})
	}
	queued := b.Clone()
	var t *ticket
	if !b.AwaitingApproval() {
		t = r.enter(b)
	}
	r.start(b.ID, func(ctx context.Context) {
		r.admit(ctx, b, t, func(context.Context) (coordinator.Request, error) { return req, nil })
	})
	return queued, nil
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
func (r *Runner) supersede(ctx context.Context, key string, keep *coordinator.Build, why Cancelled) {
	olds, err := r.cfg.Store.ActiveByKey(ctx, key)
	if err != nil {
		r.log.Error("find builds to supersede", "key", key, "err", err)
		return
	}
	for _, o := range olds {
		if keep == nil || o.Created.Before(keep.Created) || (o.Created.Equal(keep.Created) && o.ID < keep.ID) {
			r.cancel(ctx, o.ID, why)
		}
	}
}

// CancelKey implements coordinator.Builds.
func (r *Runner) CancelKey(ctx context.Context, key, reason string) {
	r.supersede(ctx, key, nil, Cancelled{reason, coordinator.EndCancelled})
}

// Cancel implements coordinator.Builds. It returns at once; the build's
// goroutine does the work. The first reason wins.
func (r *Runner) Cancel(ctx context.Context, id, reason string) error {
	return r.cancel(ctx, id, Cancelled{reason, coordinator.EndCancelled})
}

func (r *Runner) cancel(ctx context.Context, id string, why Cancelled) error {
	r.mu.Lock()
	rn := r.runs[id]
	r.mu.Unlock()
	if rn != nil {
		rn.cancel(why)
		return nil
	}
	b, err := r.cfg.Store.Build(ctx, id)
	if err != nil {
		return err
	}
	if b.State.Final() {
		return fmt.Errorf("%w: %s is %s", coordinator.ErrNotRunning, id, b.State)
	}
	// Recorded as active but watched by nobody (a restart lost it).
	r.finishAs(ctx, b, coordinator.Error, why.Ending, why.Reason, nil)
	return nil
}

// Wait implements coordinator.Builds. A build that nobody watches yet
// (Recover has not reached it) is waited for too.
func (r *Runner) Wait(ctx context.Context, id string) (*coordinator.Build, error) {
	for {
		r.mu.Lock()
		rn, kick := r.runs[id], r.kick
		r.mu.Unlock()
		if rn != nil {
			select {
			case <-rn.done:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		b, err := r.cfg.Store.Build(ctx, id)
		if err != nil || b.State.Final() {
			return b, err
		}
		if rn != nil {
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
func (r *Runner) kicked() {
	r.mu.Lock()
	close(r.kick)
	r.kick = make(chan struct{})
	r.mu.Unlock()
}

// start runs fn in a goroutine the runner owns, registered as the run of
// build id, with the run's context.
func (r *Runner) start(id string, fn func(ctx context.Context)) {
	ctx, cancel := context.WithCancelCause(r.base)
	rn := &run{ctx: ctx, cancel: cancel, done: make(chan struct{}), approved: make(chan struct{})}
	r.mu.Lock()
	r.runs[id] = rn
	r.mu.Unlock()
	r.kicked()
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer func() {
			r.mu.Lock()
			delete(r.runs, id)
			r.mu.Unlock()
			cancel(nil)
			close(rn.done)
		}()
		fn(ctx)
	}()
}

// cancelled is why the build of ctx was cancelled, and false when it was
// not (the context is live, or the coordinator is shutting down).
func cancelled(ctx context.Context) (Cancelled, bool) {
	var c Cancelled
	ok := errors.As(context.Cause(ctx), &c)
	return c, ok
}

func (r *Runner) changed(b *coordinator.Build) {
	if r.cfg.OnChange != nil {
		r.cfg.OnChange(b.Clone())
	}
}

// update writes fn's changes to b's record and tells OnChange when the
// state moved. It returns the stored build, or b itself and the error.
func (r *Runner) update(ctx context.Context, b *coordinator.Build, fn func(*coordinator.Build)) (*coordinator.Build, error) {
	// A record must be written even as the build is cancelled or the
	// coordinator shuts down (a build that started must be known to have
	// started after a restart).
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), recordTimeout)
	defer cancel()
	var before coordinator.State
	nb, err := r.cfg.Store.UpdateBuild(ctx, b.ID, func(x *coordinator.Build) error {
		before = x.State
		fn(x)
		return nil
	})
	if err != nil {
		return b, err
	}
	if nb.State != before {
		r.changed(nb)
	}
	return nb, nil
}

// finish records a final state, once. The reason is shown to people and
// sent to GitHub: secrets in it (a signed link's query) are taken out.
func (r *Runner) finish(ctx context.Context, b *coordinator.Build, st coordinator.State, reason string, code *int) *coordinator.Build {
	return r.finishAs(ctx, b, st, "", reason, code)
}

// finishAs is finish with the Ending of a build that ends as error.
func (r *Runner) finishAs(ctx context.Context, b *coordinator.Build, st coordinator.State, end coordinator.Ending, reason string, code *int) *coordinator.Build {
	reason = redact.String(reason)
	nb, err := r.update(ctx, b, func(x *coordinator.Build) {
		x.State, x.Reason, x.ExitCode, x.Finished, x.Ending = st, reason, code, time.Now().UTC(), end
	})
	if err != nil {
		if !errors.Is(err, store.ErrFinal) {
			r.log.Error("record the end of a build", "build", b.ID, "err", err)
		}
		return b
	}
	r.cfg.Logs.Forget(b.ID) // over: its secrets are dropped, and its log sealed
	r.log.Info("build finished", "build", b.ID, "state", st, "reason", reason)
	if r.cfg.Caches != nil {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), recordTimeout)
		r.cfg.Caches.Forget(fctx, b.ID) // what it may save is moot now
		cancel()
	}
	r.kicked()
	return nb
}
