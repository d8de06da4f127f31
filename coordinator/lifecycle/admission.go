package lifecycle

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/forge-ci/forge/coordinator"
)

// admission is the build queue (--max-builds, --max-builds-per-repo): at
// most max builds run at once (0: any number), at most perRepo of one
// repository (0: any number); the others wait, oldest first. Each
// waiting build's own goroutine waits on its ticket; the admission only
// hands out slots, under its mutex, and never blocks.
type admission struct {
	max, perRepo int

	mu      sync.Mutex
	running int
	repos   map[string]int // running builds per repository
	waiting []*ticket      // oldest first (created, then id)
}

// ticket is one build's place in the queue.
type ticket struct {
	id, repo string
	created  time.Time
	granted  chan struct{} // closed when the build may start
	moved    chan struct{} // 1-buffered: ahead changed
	ahead    int           // under mu
	admitted bool          // under mu: holds a slot
}

func newAdmission(max, perRepo int) *admission {
	return &admission{max: max, perRepo: perRepo, repos: map[string]int{}}
}

// enter puts a build in the queue; its ticket is granted at once when a
// slot is free and no older build waits for it.
func (a *admission) enter(id, repo string, created time.Time) *ticket {
	t := &ticket{id: id, repo: repo, created: created, granted: make(chan struct{}), moved: make(chan struct{}, 1), ahead: -1}
	a.mu.Lock()
	defer a.mu.Unlock()
	i, _ := slices.BinarySearchFunc(a.waiting, t, func(x, y *ticket) int {
		if c := x.created.Compare(y.created); c != 0 {
			return c
		}
		return strings.Compare(x.id, y.id)
	})
	a.waiting = slices.Insert(a.waiting, i, t)
	a.promote()
	return t
}

// leave gives back t's slot, or takes it out of the queue; the builds
// behind move up. Once per ticket.
func (a *admission) leave(t *ticket) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if t.admitted {
		t.admitted = false
		a.running--
		if a.repos[t.repo]--; a.repos[t.repo] <= 0 {
			delete(a.repos, t.repo)
		}
	} else if i := slices.Index(a.waiting, t); i >= 0 {
		a.waiting = slices.Delete(a.waiting, i, i+1)
	}
	a.promote()
}

// place is how many builds are ahead of a waiting t.
func (a *admission) place(t *ticket) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return t.ahead
}

// counts is how many builds run and wait.
func (a *admission) counts() (running, waiting int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.running, len(a.waiting)
}

// promote grants slots to the oldest builds that may start, then tells
// the others whose place changed. A build held back only by its
// repository's limit does not hold back other repositories' builds.
// Called with mu held.
func (a *admission) promote() {
	for i := 0; i < len(a.waiting); {
		if a.max > 0 && a.running >= a.max {
			break
		}
		t := a.waiting[i]
		if a.perRepo > 0 && a.repos[t.repo] >= a.perRepo {
			i++
			continue
		}
		a.waiting = slices.Delete(a.waiting, i, i+1)
		a.running++
		a.repos[t.repo]++
		t.admitted = true
		close(t.granted)
	}
	// Ahead counts the builds a waiting one waits behind: all older ones
	// under a global limit, else the older ones of its repository.
	same := map[string]int{}
	for i, t := range a.waiting {
		ahead := same[t.repo]
		if a.max > 0 {
			ahead = i
		}
		same[t.repo]++
		if ahead != t.ahead {
			t.ahead = ahead
			select {
			case t.moved <- struct{}{}:
			default:
			}
		}
	}
}

// enter takes b's place in the queue. Submit and Recover call it before
// the build's goroutine starts, so that builds queue in the order they
// came and not in the order their goroutines run.
func (r *Runner) enter(b *coordinator.Build) *ticket {
	return r.adm.enter(b.ID, b.Owner+"/"+b.Repo, b.Created)
}

// Places of builds this far back or further are written at most once per
// noteEvery: every freed slot moves every waiting build up one, and each
// write is a store transaction and a status. At once a second these
// writes were 40 % of the coordinator's CPU under a burst of 200 builds
// (docs/benchmarks.md, queue.*).
const (
	exactPlaces = 10
	noteEvery   = 5 * time.Second
)

// queue waits for b's slot (t), keeping b's Reason at its place in the queue
// ("queued: 3 ahead") as that changes. It returns the release of the slot,
// or ctx's cause when the build is cancelled or the coordinator stops
// first (the build then leaves the queue at once).
func (r *Runner) queue(ctx context.Context, b *coordinator.Build, t *ticket) (release func(), _ *coordinator.Build, _ error) {
	reported := -1
	var (
		noted time.Time
		later <-chan time.Time // a deep place waits to be written
	)
	for {
		select {
		case <-t.granted:
			return sync.OnceFunc(func() { r.adm.leave(t) }), b, nil
		case <-t.moved:
		case <-later:
			later = nil
		case <-ctx.Done():
			r.adm.leave(t)
			return nil, b, context.Cause(ctx)
		}
		select {
		case <-t.granted:
			continue // started already: no place to report
		default:
		}
		ahead := r.adm.place(t)
		if ahead == reported || later != nil && ahead >= exactPlaces {
			continue
		}
		if wait := noteEvery - time.Since(noted); ahead >= exactPlaces && wait > 0 {
			later = time.After(wait)
			continue
		}
		reported, noted, later = ahead, time.Now(), nil
		b = r.note(ctx, b, fmt.Sprintf("queued: %d ahead", ahead))
	}
}

// note sets the Reason of a queued build and reports it (OnChange): the
// state stays, so update alone would not tell.
func (r *Runner) note(ctx context.Context, b *coordinator.Build, reason string) *coordinator.Build {
	nb, err := r.update(ctx, b, func(x *coordinator.Build) {
		if x.State == coordinator.Queued {
			x.Reason = reason
		}
	})
	if err != nil {
		r.log.Warn("record a queued build's place", "build", b.ID, "err", err)
		return b
	}
	if nb.State == coordinator.Queued {
		r.changed(nb)
	}
	return nb
}

// awaitApproval waits until b, a build that needs approval, is approved
// (Approve), and returns it as approved; or ctx's cause when it is
// cancelled, superseded or the coordinator stops. No service exists
// meanwhile, and after a restart Recover waits again.
func (r *Runner) awaitApproval(ctx context.Context, b *coordinator.Build) (*coordinator.Build, error) {
	r.mu.Lock()
	rn := r.runs[b.ID]
	r.mu.Unlock()
	for {
		// The record decides: an Approve before this run was registered
		// found no run to tell.
		cur, err := r.cfg.Store.Build(ctx, b.ID)
		if err != nil {
			if ctx.Err() != nil {
				return nil, context.Cause(ctx)
			}
			return nil, err
		}
		if cur.State.Final() {
			return nil, fmt.Errorf("%w: %s is %s", coordinator.ErrNotRunning, b.ID, cur.State)
		}
		if !cur.AwaitingApproval() {
			return cur, nil
		}
		select {
		case <-rn.approved:
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
	}
}

// Approve implements coordinator.Builds: it records who approved the
// build and when, and lets its run go on to the queue. The approval is
// for this build alone (its SHA): a new push is a new build that waits
// again.
func (r *Runner) Approve(ctx context.Context, id, who string) (*coordinator.Build, error) {
	if who == "" {
		return nil, fmt.Errorf("approve %s: no approver named", id)
	}
	nb, err := r.cfg.Store.UpdateBuild(ctx, id, func(x *coordinator.Build) error {
		if !x.AwaitingApproval() {
			return fmt.Errorf("%w: %s", coordinator.ErrNotAwaiting, notAwaiting(x))
		}
		x.ApprovedBy, x.Approved, x.Reason = who, time.Now().UTC(), "approved by "+who
		return nil
	})
	if err != nil {
		return nil, err
	}
	r.log.Info("build approved", "build", id, "by", who, "sha", nb.SHA)
	r.changed(nb)
	r.mu.Lock()
	rn := r.runs[id]
	r.mu.Unlock()
	if rn != nil {
		rn.approveOnce.Do(func() { close(rn.approved) })
	}
	return nb, nil
}

// notAwaiting says why b does not await approval.
func notAwaiting(b *coordinator.Build) string {
	switch {
	case b.State.Final():
		return fmt.Sprintf("build %s is %s already", b.ID, b.State)
	case b.ApprovedBy != "":
		return fmt.Sprintf("build %s was approved by %s already", b.ID, b.ApprovedBy)
	case !b.NeedsApproval:
		return fmt.Sprintf("build %s does not need approval", b.ID)
	}
	return fmt.Sprintf("build %s is %s", b.ID, b.State)
}
