package github

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/store"
)

// Reporter turns build changes into check runs, where the installation
// may write checks, or commit statuses (DESIGN §3, "Reports to GitHub").
// Set the fields, then call Run; BuildChanged may be called
// before Run (reports wait in the queue).
type Reporter struct {
	App GitHub
	// PublicURL is the base of the links to builds (--public-url); ""
	// sends reports without a link.
	PublicURL string
	Log       *slog.Logger
	// Checks keeps the check runs made for builds; nil sends commit
	// statuses only.
	Checks CheckRunStore
	// Logs, when set, gives a finished build's check run the last lines
	// of its log.
	Logs LogReader
	// Statuses sends commit statuses even where the installation may
	// write checks (--github-statuses).
	Statuses bool
	// StatusQueue bounds the reports waiting to be sent (default 256);
	// past it, a report of yet another build or commit is dropped with a
	// warning rather than block a build. A newer report of one already
	// waiting replaces it: GitHub shows only the latest, and a long build
	// queue changes "queued: N ahead" often.
	StatusQueue int
	// StatusSenders send reports concurrently (default 4). Reports of one
	// commit and context always go through the same sender, in order.
	StatusSenders int

	once    sync.Once
	senders []*sender

	mu       sync.Mutex
	byStatus map[string]bool // builds being reported with commit statuses, until final
}

// CheckRunStore keeps the check runs Forge made (*store.Store).
type CheckRunStore interface {
	AddCheckRun(ctx context.Context, cr coordinator.CheckRun) error
	SetCheckRunStatus(ctx context.Context, id int64, status string) error
	// LatestCheckRun gives store.ErrNotFound when the build has none.
	LatestCheckRun(ctx context.Context, buildID string) (*coordinator.CheckRun, error)
}

// LogReader reads a build's output (logs.Store).
type LogReader interface {
	Follow(ctx context.Context, id string, w io.Writer, follow bool) error
}

var _ CheckRunStore = (*store.Store)(nil)

// report is one thing to tell GitHub about a commit: a build's state, or
// a problem that left the commit without a build.
type report struct {
	inst                     int64
	owner, repo, sha, action string
	build                    *coordinator.Build // nil for a problem
	problem                  problem
}

// problem is why a commit got no build.
type problem struct {
	desc           string // one line: a commit status's description
	title, summary string // a check run's
	err            error  // config errors put annotations on .forge.yml
}

// reportKey is what one waiting report stands for: a build (each has a
// check run of its own), or a commit's problem (build "").
type reportKey struct{ owner, repo, sha, context, build string }

func (u report) key() reportKey {
	k := reportKey{u.owner, u.repo, u.sha, statusContext(u.action), ""}
	if u.build != nil {
		k.build = u.build.ID
	}
	return k
}

// sender holds the reports waiting for one sending goroutine: the latest
// of each key, in the order the keys began to wait.
type sender struct {
	limit int
	wake  chan struct{} // buffered 1: something waits

	mu    sync.Mutex
	order []reportKey
	next  map[reportKey]report
}

// put queues u, replacing a report of its key not sent yet; false when
// the sender has limit keys waiting already.
func (s *sender) put(u report) bool {
	k := u.key()
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.next[k]; !ok {
		if len(s.order) >= s.limit {
			return false
		}
		s.order = append(s.order, k)
	}
	s.next[k] = u
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return true
}

// pop takes the report that has waited longest.
func (s *sender) pop() (report, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.order) == 0 {
		return report{}, false
	}
	k := s.order[0]
	s.order = s.order[1:]
	u := s.next[k]
	delete(s.next, k)
	return u, true
}

func (s *sender) waiting() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.order)
}

func (r *Reporter) init() {
	r.once.Do(func() {
		if r.Log == nil {
			r.Log = slog.New(slog.DiscardHandler)
		}
		if r.StatusQueue <= 0 {
			r.StatusQueue = 256
		}
		if r.StatusSenders <= 0 {
			r.StatusSenders = 4
		}
		per := max(r.StatusQueue/r.StatusSenders, 1)
		r.senders = make([]*sender, r.StatusSenders)
		for i := range r.senders {
			r.senders[i] = &sender{limit: per, wake: make(chan struct{}, 1), next: map[reportKey]report{}}
		}
		r.byStatus = map[string]bool{}
	})
}

// Run sends queued reports until ctx ends, then returns once its senders
// have stopped.
func (r *Reporter) Run(ctx context.Context) {
	r.init()
	var wg sync.WaitGroup
	for _, s := range r.senders {
		wg.Go(func() { r.send(ctx, s) })
	}
	<-ctx.Done()
	wg.Wait()
	for _, s := range r.senders {
		if n := s.waiting(); n > 0 {
			r.Log.Warn("reports to GitHub not sent at shutdown", "count", n)
		}
	}
}

// BuildChanged is the lifecycle's OnChange: it queues the report of the
// build's new state and returns at once. Builds without a GitHub
// installation (forge run) get none.
func (r *Reporter) BuildChanged(b *coordinator.Build) {
	if b == nil || b.InstallationID == 0 || b.SHA == "" || b.Owner == "" || b.Repo == "" {
		return
	}
	r.queue(report{inst: b.InstallationID, owner: b.Owner, repo: b.Repo, sha: b.SHA, action: b.Action, build: b.Clone()})
}

// reportProblem queues the report of a commit that gets no build for action:
// an error status, or a failed check run (annotated when p is a config
// error). It returns at once.
func (r *Reporter) reportProblem(inst int64, owner, repo, sha, action string, p problem) {
	r.queue(report{inst: inst, owner: owner, repo: repo, sha: sha, action: action, problem: p})
}

// queue puts u in without waiting. Reports of one commit and context go
// to the same sender, so they are sent in the order they came.
func (r *Reporter) queue(u report) {
	r.init()
	h := fnv.New32a()
	io.WriteString(h, u.owner+"/"+u.repo+"@"+u.sha+" "+statusContext(u.action))
	if !r.senders[h.Sum32()%uint32(len(r.senders))].put(u) {
		r.Log.Warn("report queue full; report to GitHub dropped", "repo", u.owner+"/"+u.repo, "sha", u.sha,
			"context", statusContext(u.action))
	}
}

func (r *Reporter) send(ctx context.Context, s *sender) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.wake:
		}
		for ctx.Err() == nil {
			u, ok := s.pop()
			if !ok {
				break
			}
			if err := r.deliver(ctx, u); err != nil && ctx.Err() == nil {
				r.Log.Warn("report to GitHub not sent", "repo", u.owner+"/"+u.repo, "sha", u.sha,
					"context", statusContext(u.action), "err", err)
			}
		}
	}
}

// deliver sends u as a check run or a commit status. A check run GitHub
// refuses for want of the permission (revoked since the token was made)
// is sent as a status instead, and so is the rest of that build's life.
func (r *Reporter) deliver(ctx context.Context, u report) error {
	cur, checks, err := r.useChecks(ctx, u)
	if err != nil {
		return err
	}
	if checks {
		err := r.sendCheckRun(ctx, u, cur)
		if !errors.Is(err, ErrNoChecksPermission) {
			return err
		}
		r.Log.Warn("GitHub refused a check run: the app may not write checks; sending a commit status", "repo", u.owner+"/"+u.repo, "err", err)
	}
	return r.sendStatus(ctx, u) // which records the build as reported by statuses
}

// useChecks decides how u is reported, and returns the build's latest
// check run when it has one. A build keeps the way its first report
// went, so that a permission granted mid-build does not leave a pending
// status behind.
func (r *Reporter) useChecks(ctx context.Context, u report) (*coordinator.CheckRun, bool, error) {
	if r.Statuses || r.Checks == nil {
		return nil, false, nil
	}
	if u.build != nil {
		r.mu.Lock()
		byStatus := r.byStatus[u.build.ID]
		r.mu.Unlock()
		if byStatus {
			return nil, false, nil
		}
		cur, err := r.Checks.LatestCheckRun(ctx, u.build.ID)
		if err == nil {
			return cur, true, nil
		}
		if !errors.Is(err, store.ErrNotFound) {
			return nil, false, err
		}
	}
	ok, err := r.App.ChecksAllowed(ctx, u.inst)
	return nil, ok, err
}

// statusMode records that b is reported with statuses, until it is final.
func (r *Reporter) statusMode(b *coordinator.Build) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !b.State.Final() {
		r.byStatus[b.ID] = true
	} else {
		delete(r.byStatus, b.ID)
	}
}

// sendStatus sets u's commit status: queued and running are pending, then
// success, failure or error with the reason.
func (r *Reporter) sendStatus(ctx context.Context, u report) error {
	state, desc, to := StateError, u.problem.desc, ""
	if b := u.build; b != nil {
		r.statusMode(b)
		switch b.State {
		case coordinator.Queued:
			// "awaiting approval", "queued: 3 ahead", or just queued.
			state, desc = StatePending, or(b.Reason, "queued")
		case coordinator.Running:
			// Reported once per build: the lifecycle calls OnChange only
			// when the state moves. The node is not known yet then.
			state, desc = StatePending, "running"
		case coordinator.Success:
			state, desc = StateSuccess, or(b.Reason, "passed")
		case coordinator.Failure:
			d := "failed"
			if b.ExitCode != nil {
				d = "exit code " + strconv.Itoa(*b.ExitCode)
			}
			state, desc = StateFailure, or(b.Reason, d)
		case coordinator.Error:
			state, desc = StateError, or(b.Reason, "error")
		default:
			return nil
		}
		to = r.link(b)
	}
	return r.App.SetStatus(ctx, u.inst, u.owner, u.repo, u.sha, state, statusContext(u.action), desc, to)
}

// sendCheckRun makes or updates the check run of u's build (cur, its
// latest, or nil), or makes a failed one for u's problem. A build's check
// run that is completed is not reopened: when the build goes on (approved
// after awaiting approval), it gets a new one.
func (r *Reporter) sendCheckRun(ctx context.Context, u report, cur *coordinator.CheckRun) error {
	if u.build == nil {
		_, err := r.App.CreateCheckRun(ctx, u.inst, u.owner, u.repo, problemCheckRun(u))
		return err
	}
	b := u.build
	c := r.checkRunOf(ctx, b)
	if cur != nil && (cur.Status != CheckCompleted || c.Status == CheckCompleted) {
		if err := r.App.UpdateCheckRun(ctx, u.inst, u.owner, u.repo, cur.ID, c); err != nil {
			return err
		}
		if err := r.Checks.SetCheckRunStatus(ctx, cur.ID, c.Status); err != nil {
			return fmt.Errorf("record check run %d of build %s: %w", cur.ID, b.ID, err)
		}
		return nil
	}
	id, err := r.App.CreateCheckRun(ctx, u.inst, u.owner, u.repo, c)
	if err != nil {
		return err
	}
	if err := r.Checks.AddCheckRun(ctx, coordinator.CheckRun{ID: id, BuildID: b.ID, Owner: b.Owner, Repo: b.Repo, Status: c.Status}); err != nil {
		return fmt.Errorf("record check run %d of build %s: %w", id, b.ID, err)
	}
	return nil
}

// link is the build's page, "" without a public URL.
func (r *Reporter) link(b *coordinator.Build) string {
	if r.PublicURL == "" || b.ID == "" {
		return ""
	}
	return strings.TrimRight(r.PublicURL, "/") + "/builds/" + b.ID
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
