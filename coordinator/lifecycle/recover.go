package lifecycle

import (
	"context"
	"errors"
	"fmt"

	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/swarm"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/config"
	"github.com/forge-ci/forge/coordinator/plan"
	"github.com/forge-ci/forge/coordinator/store"
)

// Recover is called once at start-up, before new builds are submitted.
// It matches swarm's build services with the records: services of builds
// that are over or unknown are removed; builds that had started are
// watched again (their agents re-attach and report the exit); builds
// awaiting approval wait again, as do queued ones without a service when
// Config.Resume can make their Request again; other builds that had not
// started cannot be resumed, since their source is gone, and end as error.
func (r *Runner) Recover(ctx context.Context) error {
	svcs, err := r.cfg.Swarm.ServiceList(ctx, swarm.ServiceListOptions{Filters: filters.NewArgs(
		filters.Arg("label", plan.LabelBuild), filters.Arg("label", coordinator.LabelCoordinator+"="+r.cfg.Instance))})
	if err != nil {
		return fmt.Errorf("recover: list build services: %w", err)
	}
	byBuild := map[string]service{}
	for _, s := range svcs {
		id := s.Spec.Labels[plan.LabelBuild]
		svc := service{ID: s.ID, Name: s.Spec.Name}
		b, err := r.cfg.Store.Build(ctx, id)
		if err == nil && !b.State.Final() {
			byBuild[id] = svc
			continue
		}
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("recover: %w", err)
		}
		r.log.Info("removing the service of a finished or unknown build", "service", svc.Name, "build", id)
		r.removeService(svc, id)
	}
	active, err := r.cfg.Store.Active(ctx)
	if err != nil {
		return fmt.Errorf("recover: %w", err)
	}
	for _, b := range active {
		r.mu.Lock()
		mine := r.runs[b.ID] != nil || !b.Created.Before(r.since)
		r.mu.Unlock()
		if mine {
			continue // submitted to this runner, not left by an earlier one
		}
		svc, ok := byBuild[b.ID]
		switch {
		case !ok && b.State == coordinator.Queued && (b.AwaitingApproval() || r.cfg.Resume != nil):
			// Never created: it waits again for its approval, then its
			// place in the queue, with its Request made anew.
			r.log.Info("a queued build waits again after a restart", "build", b.ID, "reason", b.Reason)
			var t *ticket
			if !b.AwaitingApproval() {
				t = r.enter(b)
			}
			r.start(b.ID, func(ctx context.Context) { r.admit(ctx, b, t, r.resume(b)) })
		case !ok:
			r.finish(ctx, b, coordinator.Error, "lost in a coordinator restart: its service is gone", nil)
		case b.Started.IsZero():
			r.finish(ctx, b, coordinator.Error, "the coordinator restarted before the build started; run it again", nil)
			r.removeService(svc, b.ID)
		default:
			// Before its agent can attach again (the agents are served
			// after Recover): its output is masked from the first byte.
			cfg, perr := config.Parse(".forge.yml", []byte(b.Config))
			if perr != nil {
				cfg = nil // a config that never parsed named no secrets it was given
			}
			if err := r.remask(ctx, b, cfg); err != nil {
				r.log.Warn("stopping a build whose secrets cannot be masked after a restart", "build", b.ID, "err", err)
				r.cfg.Logs.Seal(b.ID)
				r.finish(ctx, b, coordinator.Error, err.Error(), nil)
				r.removeService(svc, b.ID)
				continue
			}
			timeout, w := config.DefaultTimeout, wanted{}
			if cfg != nil {
				timeout, w = cfg.Timeout, wantedOf(cfg)
			}
			r.log.Info("watching a build again after a restart", "build", b.ID, "node", b.NodeID)
			r.start(b.ID, func(ctx context.Context) {
				defer r.removeService(svc, b.ID)
				releaseLog := r.holdLog(b.ID, w)
				defer releaseLog()
				r.await(ctx, b, timeout, b.Started, w, releaseLog)
			})
		}
	}
	return nil
}

// resume gives the Request of a build recorded by an earlier coordinator.
func (r *Runner) resume(b *coordinator.Build) func(context.Context) (coordinator.Request, error) {
	return func(ctx context.Context) (coordinator.Request, error) {
		if r.cfg.Resume == nil {
			return coordinator.Request{}, errors.New("the coordinator restarted before the build started and cannot fetch its source again; run it again")
		}
		req, err := r.cfg.Resume(ctx, b)
		if err != nil {
			return req, fmt.Errorf("resume after a restart: %w", err)
		}
		return req, nil
	}
}
