package daemon

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/forge-ci/forge/coordinator/store"
)

// deliveryRetention is how long webhook deliveries (ids and body hashes)
// are kept: GitHub redelivers only recent ones.
const deliveryRetention = 7 * 24 * time.Hour

// retainEvery is how often old logs and deliveries are deleted.
const retainEvery = time.Hour

// retain deletes old logs and deliveries at start and then hourly.
func (c *Coordinator) retain(ctx context.Context) {
	t := time.NewTicker(retainEvery)
	defer t.Stop()
	for {
		c.prune(ctx, time.Now())
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// prune deletes, as of now, the logs and artifacts of final builds that
// finished more than --retain ago (their rows stay: the history and
// GitHub's links keep working, the log is gone) and deliveries older than
// 7 days.
func (c *Coordinator) prune(ctx context.Context, now time.Time) {
	pctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	if keep := c.bounds.Retain; keep > 0 {
		cutoff := now.Add(-keep)
		over := func(ctx context.Context, id string) (bool, error) {
			b, err := c.Store.Build(ctx, id)
			if errors.Is(err, store.ErrNotFound) {
				return false, nil // not ours to judge: kept
			}
			if err != nil {
				return false, err
			}
			return b.State.Final() && b.Finished.Before(cutoff), nil
		}
		n, err := c.Logs.Prune(pctx, cutoff, over)
		if n > 0 || err != nil {
			c.log.Info("old build logs deleted (--retain)", "deleted", n, "older_than", cutoff, "err", err)
		}
		if c.Artifacts != nil {
			n, err := c.Artifacts.Prune(pctx, cutoff, over)
			if n > 0 || err != nil {
				c.log.Info("old builds' artifacts deleted (--retain)", "deleted", n, "older_than", cutoff, "err", err)
			}
		}
	}
	n, err := c.Store.PruneDeliveries(pctx, now.Add(-deliveryRetention))
	if n > 0 || err != nil {
		c.log.Info("old webhook deliveries forgotten", "forgotten", n, "err", err)
	}
}

// httpServer bounds what a client may hold: headers and bodies must come
// within their time-outs; responses have no write time-out, since a
// followed log is one long response.
func httpServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		// Request bodies are small (webhooks up to 25 MiB, JSON): 30 s
		// each, from the headers on.
		ReadTimeout:    30 * time.Second,
		IdleTimeout:    2 * time.Minute,
		MaxHeaderBytes: 64 << 10,
	}
}
