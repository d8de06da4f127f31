package e2e

import (
	"context"
	"slices"
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
			case b.State == coordinator.Running && !slices.Contains(started, b.ID):
				started = append(started, b.ID)
				running++
				maxSeen = max(maxSeen, running)
			case b.State.Final() && slices.Contains(started, b.ID):
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
	// In order: the builds given slots at once (two) may start either way
	// round, but none starts ahead of a build submitted two or more
	// places before it.
	if len(started) != len(submitted) {
		t.Fatalf("%d builds started, want %d", len(started), len(submitted))
	}
	for i, id := range started {
		if pos := slices.Index(submitted, id); pos >= i+2 {
			t.Errorf("build %d of the queue started %dth: the order was %v, submitted %v", pos+1, i+1, started, submitted)
		}
	}
	for _, want := range []string{"queued: 7 ahead", "queued: 1 ahead"} {
		if !places[want] {
			t.Errorf("no build said %q; said %v", want, places)
		}
	}
}
