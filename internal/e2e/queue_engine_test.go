package e2e

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/daemon"
	"github.com/forge-ci/forge/internal/dockertest"
)

// With --max-builds 2, ten builds submitted at once on the engine never run
// more than two at a time, start in the order they came, and all succeed;
// those waiting say their place in the queue.
func TestQueueMaxBuilds(t *testing.T) {
	e := newEnv(t)
	id := dockertest.ID(t)
	dockertest.Cleanup(t, e.cli, id)
	var (
		mu               sync.Mutex
		running, maxSeen int
		started          []string
		places           = map[string]bool{}
	)
	s := startServerWith(t, e, t.TempDir(), "", func(cfg *daemon.Config) {
		cfg.MaxBuilds = 2
		also := cfg.OnChange
		cfg.OnChange = func(b *coordinator.Build) {
			also(b)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case b.State == coordinator.Queued && b.Reason != "":
				places[b.Reason] = true
			case b.State == coordinator.Running && !contains(started, b.ID):
				started = append(started, b.ID)
				running++
				maxSeen = max(maxSeen, running)
			case b.State.Final() && contains(started, b.ID):
				running--
			}
		}
	})
	startAgent(t, e.pki, s.agents, nil, nil)
	yml := "image: " + e.image + "\nexecute: ['echo queued build; sleep 1']\n"
	var submitted []string
	for range 10 {
		submitted = append(submitted, s.submit(t, e, yml, id).ID)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for _, bid := range submitted {
		b, err := s.srv.Builds.Wait(ctx, bid)
		if err != nil {
			t.Fatal(err)
		}
		if b.State != coordinator.Success {
			t.Errorf("build %s: %s (%s), want success", bid, b.State, b.Reason)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if maxSeen != 2 {
		t.Errorf("at most %d builds ran at once, want 2", maxSeen)
	}
	for i := range submitted {
		if i >= len(started) || started[i] != submitted[i] {
			t.Fatalf("builds started in the order %v, want %v", started, submitted)
		}
	}
	for _, want := range []string{"queued: 7 ahead", "queued: 1 ahead"} {
		if !places[want] {
			t.Errorf("no build said %q; said %v", want, places)
		}
	}
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}
