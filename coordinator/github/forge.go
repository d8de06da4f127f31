// Package github is Forge's GitHub side (DESIGN §2.1-2.3, §2.8, §3): the
// webhook handler, the GitHub App client, and the glue that turns events
// into builds (re-runs included) and build changes into check runs or
// commit statuses.
//
// The pieces and their goroutines:
//
//	POST /webhook -> Webhook (answers at once) -> Queue -> Forge workers
//	    -> App (installation token, .forge.yml) -> Builds.Submit
//	lifecycle OnChange -> Reporter.BuildChanged -> report queue -> senders
//	    -> App.CreateCheckRun, UpdateCheckRun or SetStatus (retried)
//
// Forge.Run owns the workers, Reporter.Run the senders; coordinator/daemon
// wires them.
package github

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/config"
)

// GitHub is what Forge asks of GitHub; *App is the real one.
type GitHub interface {
	Installation(ctx context.Context, owner, repo string) (int64, error)
	Config(ctx context.Context, inst int64, owner, repo, sha string) (data []byte, found bool, err error)
	Source(ctx context.Context, inst int64, owner, repo, sha string, maxBytes int64) (path string, size int64, err error)
	SetStatus(ctx context.Context, inst int64, owner, repo, sha, state, statusContext, description, targetURL string) error
	ChecksAllowed(ctx context.Context, inst int64) (bool, error)
	CreateCheckRun(ctx context.Context, inst int64, owner, repo string, c CheckRun) (int64, error)
	UpdateCheckRun(ctx context.Context, inst int64, owner, repo string, id int64, c CheckRun) error
}

// Builds is what Forge asks of the lifecycle (coordinator.Builds).
type Builds interface {
	Submit(ctx context.Context, req coordinator.Request) (*coordinator.Build, error)
	CancelKey(ctx context.Context, key, reason string)
}

var (
	_ GitHub = (*App)(nil)
	_ Builds = coordinator.Builds(nil)
)

// Commit status states (DESIGN §3).
const (
	StatePending = "pending"
	StateSuccess = "success"
	StateFailure = "failure"
	StateError   = "error"
)

// Forge turns webhook events into builds. Set the fields, then call Run.
type Forge struct {
	App    GitHub
	Builds Builds
	// Reporter reports the configs that cannot build.
	Reporter *Reporter
	// Queue is where the Webhook puts events; nil: Run starts no workers.
	Queue *Queue
	Log   *slog.Logger

	// Workers handle events concurrently (default 4).
	Workers int
	// EventTimeout bounds the handling of one event (default 2 min).
	EventTimeout time.Duration
	// MaxSource caps a source download (default DefaultMaxSource).
	MaxSource int64
	// RequireApproval is which pull requests wait for a person's approval
	// (--require-approval); "" is coordinator.ApproveForks.
	RequireApproval coordinator.ApprovalMode
	// Records are the builds, for re-runs; nil: GitHub's re-runs are not
	// taken, and re-runs keep no supersede key.
	Records Records

	once sync.Once
}

func (f *Forge) init() {
	f.once.Do(func() {
		if f.Log == nil {
			f.Log = slog.New(slog.DiscardHandler)
		}
		if f.Workers <= 0 {
			f.Workers = 4
		}
		if f.EventTimeout <= 0 {
			f.EventTimeout = 2 * time.Minute
		}
		if f.MaxSource <= 0 {
			f.MaxSource = DefaultMaxSource
		}
	})
}

// Run handles queued events and sends statuses until ctx ends, then
// returns once every goroutine it started has stopped. Events still queued
// then are dropped (and logged with their delivery ids, so that they can
// be redelivered from the app's settings); the queue refuses new ones.
func (f *Forge) Run(ctx context.Context) {
	f.init()
	var wg sync.WaitGroup
	if f.Queue != nil {
		// Events of one pull request or branch are handled in delivery
		// order by one worker: a closed pull request must not be built
		// after its cancel, nor an older head supersede a newer one.
		workers := make([]chan Event, f.Workers)
		for i := range workers {
			workers[i] = make(chan Event)
			wg.Go(func() { f.work(ctx, workers[i]) })
		}
		wg.Go(func() { f.route(ctx, workers) })
	}
	<-ctx.Done()
	if f.Queue != nil {
		for _, ev := range f.Queue.stop() {
			f.Log.Warn("event dropped at shutdown", "delivery", ev.Delivery, "event", ev.Name, "repo", ev.Owner+"/"+ev.Repo)
		}
	}
	wg.Wait()
}

// route hands each queued event to the worker of its key.
func (f *Forge) route(ctx context.Context, workers []chan Event) {
	for {
		ev, ok := f.Queue.take(ctx)
		if !ok {
			return
		}
		h := fnv.New32a()
		h.Write([]byte(orderKey(ev)))
		select {
		case workers[h.Sum32()%uint32(len(workers))] <- ev:
		case <-ctx.Done():
			f.Log.Warn("event dropped at shutdown", "delivery", ev.Delivery, "event", ev.Name, "repo", ev.Owner+"/"+ev.Repo)
			return
		}
	}
}

// orderKey names what an event's order matters for: its pull request, or
// its branch.
func orderKey(ev Event) string {
	if ev.PullRequest != 0 {
		return prKey(ev)
	}
	return ev.Owner + "/" + ev.Repo + "@" + ev.Branch
}

func (f *Forge) work(ctx context.Context, events <-chan Event) {
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-events:
			f.handle(ctx, ev)
		}
	}
}

// handle runs one event with its own deadline; a panic in it fails the
// event, not the coordinator.
func (f *Forge) handle(ctx context.Context, ev Event) {
	ctx, cancel := context.WithTimeout(ctx, f.EventTimeout)
	defer cancel()
	defer func() {
		if r := recover(); r != nil {
			f.Log.Error("panic while handling a webhook event", "delivery", ev.Delivery, "panic", r)
		}
	}()
	if err := f.HandleEvent(ctx, ev); err != nil {
		f.Log.Error("webhook event failed", "delivery", ev.Delivery, "event", ev.Name, "action", ev.Action,
			"repo", ev.Owner+"/"+ev.Repo, "err", err)
	}
}

// HandleEvent does what an event asks (the workers call it): build a pull
// request's head, cancel a closed pull request's builds, build a pushed
// branch that .forge.yml maps to an action, or re-run builds. A repository without
// .forge.yml gets nothing; an invalid one gets an error status and no
// build.
func (f *Forge) HandleEvent(ctx context.Context, ev Event) error {
	f.init()
	switch ev.Kind {
	case KindPullRequestClosed:
		f.Builds.CancelKey(ctx, prKey(ev), "pull request closed")
		return nil
	case KindPullRequest:
		return f.build(ctx, ev, config.DefaultAction)
	case KindPush:
		if ev.Branch == "" {
			return nil // tags and deleted refs never become events
		}
		return f.build(ctx, ev, "")
	case KindRerunCheckRun, KindRerunCheckSuite:
		return f.rerunEvent(ctx, ev)
	}
	return fmt.Errorf("event of unknown kind %q", ev.Kind)
}

func prKey(ev Event) string { return fmt.Sprintf("%s/%s#%d", ev.Owner, ev.Repo, ev.PullRequest) }

// build reads the config at ev.SHA and submits the build. action "" means
// a push: the config's on.push picks it, or there is nothing to build.
func (f *Forge) build(ctx context.Context, ev Event, action string) error {
	log := f.Log.With("delivery", ev.Delivery, "repo", ev.Owner+"/"+ev.Repo, "sha", ev.SHA)
	inst := ev.Installation
	if inst == 0 {
		var err error
		if inst, err = f.App.Installation(ctx, ev.Owner, ev.Repo); err != nil {
			return err
		}
	}
	data, cfg, found, invalid, err := f.readConfig(ctx, inst, ev.Owner, ev.Repo, ev.SHA)
	if err != nil {
		return err
	}
	if !found {
		log.Debug("no " + ConfigFile + ": the repository does not use Forge")
		return nil
	}
	if invalid != nil {
		// An invalid config cannot say which action a push would run,
		// so the error goes on the pull-request context, forge/execute,
		// for pushes too: the author learns of it either way.
		log.Info("invalid "+ConfigFile, "err", invalid)
		f.Reporter.reportProblem(inst, ev.Owner, ev.Repo, ev.SHA, config.DefaultAction, invalidConfig(invalid))
		return nil
	}
	b := coordinator.Subject{Owner: ev.Owner, Repo: ev.Repo, Branch: ev.Branch, SHA: ev.SHA, Action: action,
		CommitCount: ev.CommitCount, Fork: ev.Fork, Trigger: string(ev.Kind), InstallationID: inst, Public: ev.Public,
		BaseBranch: ev.BaseBranch, DefaultBranch: ev.DefaultBranch}
	if ev.Kind == KindPullRequest {
		b.PullRequest, b.Ref, b.Key = ev.PullRequest, fmt.Sprintf("refs/pull/%d/head", ev.PullRequest), prKey(ev)
	} else {
		mapped, ok := cfg.OnPush[ev.Branch]
		if !ok {
			log.Debug("push to a branch that .forge.yml does not map", "branch", ev.Branch)
			return nil
		}
		b.Action, b.Ref, b.Key = mapped, "refs/heads/"+ev.Branch, fmt.Sprintf("%s/%s@%s", ev.Owner, ev.Repo, ev.Branch)
	}
	if ev.Kind == KindPullRequest {
		// A fork's head, or an author who is not an owner, member or
		// collaborator, runs code nobody with write access vouched for
		// (DESIGN §5): it is sandboxed, never gets secrets (the lifecycle
		// checks, before launch), and may have to wait for approval.
		b.Author = ev.Author
		b.Untrusted = ev.Fork || !coordinator.TrustedAssociation(ev.Association)
	}
	b.NeedsApproval = f.RequireApproval.NeedsApproval(b) // "" is ApproveForks
	if b.Untrusted {
		log.Info("untrusted pull request", "pr", ev.PullRequest, "fork", ev.Fork, "author", ev.Author,
			"association", ev.Association, "needs_approval", b.NeedsApproval)
	}
	req := coordinator.Request{Subject: b, Config: cfg, ConfigText: string(data),
		Source: f.source(inst, ev.Owner, ev.Repo, ev.SHA)}
	nb, err := f.Builds.Submit(ctx, req)
	if err != nil {
		f.Reporter.reportProblem(inst, ev.Owner, ev.Repo, ev.SHA, b.Action, notQueued)
		return fmt.Errorf("submit build of %s/%s@%s: %w", ev.Owner, ev.Repo, ev.SHA, err)
	}
	log.Info("build submitted", "build", nb.ID, "action", nb.Action, "key", nb.Key)
	return nil
}

// Resume makes again the Request of a build recorded by an earlier
// coordinator that never started (lifecycle.Config.Resume): its config
// from the record, its source from GitHub at its SHA.
func (f *Forge) Resume(ctx context.Context, b *coordinator.Build) (coordinator.Request, error) {
	f.init()
	if b.InstallationID == 0 {
		return coordinator.Request{}, fmt.Errorf("build %s has no GitHub installation to fetch its source from", b.ID)
	}
	cfg, err := config.Parse(ConfigFile, []byte(b.Config))
	if err != nil {
		return coordinator.Request{}, fmt.Errorf("build %s: %w", b.ID, err)
	}
	return coordinator.Request{Subject: b.Subject, Config: cfg, ConfigText: b.Config,
		Source: f.source(b.InstallationID, b.Owner, b.Repo, b.SHA)}, nil
}

// source fetches the tarball when the build's container is ready for it
// (the manager calls it once), not when the event arrives: a build that is
// superseded or fails to land never downloads anything.
func (f *Forge) source(inst int64, owner, repo, sha string) coordinator.Source {
	return func(ctx context.Context) (io.ReadCloser, int64, error) {
		path, size, err := f.App.Source(ctx, inst, owner, repo, sha, f.MaxSource)
		if err != nil {
			return nil, 0, err
		}
		fh, err := os.Open(path)
		if err != nil {
			os.Remove(path)
			return nil, 0, fmt.Errorf("open source of %s/%s@%s: %w", owner, repo, sha, err)
		}
		return &tempFile{File: fh}, size, nil
	}
}

// tempFile removes itself when closed.
type tempFile struct{ *os.File }

func (t *tempFile) Close() error {
	err := t.File.Close()
	if rerr := os.Remove(t.Name()); rerr != nil && !errors.Is(rerr, os.ErrNotExist) && err == nil {
		err = rerr
	}
	return err
}

func statusContext(action string) string {
	if action == "" {
		action = config.DefaultAction
	}
	return "forge/" + action
}

// readConfig reads .forge.yml at sha and parses it. err is a failure to
// read it; found is false when the commit has none; invalid says why a
// file that is there is not a valid config (cfg is then nil).
func (f *Forge) readConfig(ctx context.Context, inst int64, owner, repo, sha string) (data []byte, cfg *config.Config, found bool, invalid, err error) {
	data, found, err = f.App.Config(ctx, inst, owner, repo, sha)
	var cerr *config.Error
	if err != nil && !errors.As(err, &cerr) {
		return nil, nil, false, nil, err
	}
	if !found {
		return nil, nil, false, nil, nil
	}
	if err != nil {
		return data, nil, true, err, nil
	}
	cfg, invalid = config.Parse(ConfigFile, data)
	return data, cfg, true, invalid, nil
}
