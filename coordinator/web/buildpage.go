package web

import (
	"context"
	"net/http"
	"time"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/auth"
	"github.com/forge-ci/forge/coordinator/config"
)

// buildView is what the build page shows besides the record: the image
// and steps of its .forge.yml, its log, how long it ran and where.
type buildView struct {
	Image   string
	Steps   []step
	Next    int // the step whose marker the live page looks for next
	Log     logView
	Elapsed string
	Node    string
	// Times for the page's script, in Unix milliseconds (0: not yet):
	// Now is the server's clock, so the page's elapsed times do not
	// depend on the browser's.
	StartedMS, FinishedMS, NowMS int64
	Final                        bool
}

func (a *API) buildPage(w http.ResponseWriter, r *http.Request, p *auth.Principal) {
	b := a.build(w, r, p, coordinator.Read, false)
	if b == nil {
		return
	}
	d := a.data(p, "Build "+b.ID)
	d.Build = b
	var err error
	if d.Reruns, err = a.cfg.Store.Reruns(r.Context(), b.ID); err != nil {
		a.errorPage(w, r, http.StatusInternalServerError, err)
		return
	}
	if p.Kind != auth.Anonymous {
		// One question for the buttons of both levels.
		if got, err := a.auth.Access(r.Context(), p, b.Owner, b.Repo, b.Public); err == nil {
			if got >= coordinator.Write {
				d.CanCancel = !b.State.Final()
				d.CanApprove = d.CanCancel && b.AwaitingApproval()
				// A build from GitHub, once over: its commit is built again.
				d.CanRerun = b.State.Final() && b.InstallationID != 0 && a.cfg.Reruns != nil
			}
			d.CanSecrets = a.cfg.Secrets != nil && got >= coordinator.Admin
		}
	}
	if b.State.Final() {
		// A running build's come with its end: the page's script asks.
		list, err := a.cfg.Artifacts.List(b.ID)
		if err != nil {
			a.log.Warn("artifacts of the build page", "build", b.ID, "err", err)
		}
		d.Artifacts = artifactViews(list)
	}
	d.BP = a.buildView(r.Context(), b)
	a.render(w, http.StatusOK, "build", d)
}

func (a *API) buildView(ctx context.Context, b *coordinator.Build) *buildView {
	now := time.Now()
	v := &buildView{Node: nodeName(a.hostnames(), b.NodeID), Final: b.State.Final(), Elapsed: elapsed(b, now),
		StartedMS: unixMS(b.Started), FinishedMS: unixMS(b.Finished), NowMS: now.UnixMilli()}
	if cfg, err := config.Parse(".forge.yml", []byte(b.Config)); err == nil && b.Config != "" {
		v.Image = cfg.Image
		v.Steps = stepsOf(cfg, b.Action)
	}
	sc := &logScanner{steps: v.Steps}
	err := a.cfg.Logs.Follow(ctx, b.ID, sc, false)
	v.Log = sc.view(v.Final)
	v.Log.Note = a.logMissing(b, err)
	v.Next = sc.next
	stepStates(v.Steps, sc.next, v.Final, b.State == coordinator.Success)
	return v
}

func unixMS(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}
