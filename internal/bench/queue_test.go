package bench

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/client"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/config"
	"github.com/forge-ci/forge/coordinator/daemon"
	"github.com/forge-ci/forge/internal/dockertest"
	"github.com/forge-ci/forge/wire/wiretest"
)

// BenchmarkQueue submits FORGE_BENCH_QUEUE_BUILDS (200) trivial builds
// at once to a coordinator with --max-builds FORGE_BENCH_QUEUE_MAX (20),
// against the real engine with one real agent, and waits for all; then,
// as the baseline, the same builds to a coordinator without a bound
// (MaxBuilds 0) that the benchmark itself feeds with at most 20 in flight,
// submitting the next as soon as one ends: what a user would do without
// the queue. Each mode gets a coordinator and an agent of its own, one
// after the other, and one untimed build first (the agent's executor).
//
// Slot-to-create: for the k-th ServiceCreate in time order (k >= max),
// its time (taken just before the call, inside the coordinator) minus
// the time of the (k-max)-th build to become final (OnChange), both
// counted from 0: the k-th create needs k-max+1 slots given back, each
// after its build ended. CPU per build is this process's (coordinator,
// agent and benchmark) user + system time over the mode, divided by N.
func BenchmarkQueue(b *testing.B) {
	n := envInt("FORGE_BENCH_QUEUE_BUILDS", 200)
	maxB := envInt("FORGE_BENCH_QUEUE_MAX", 20)
	cli, node, runID, image := benchEngine(b)
	cfg, err := config.Parse(".forge.yml", []byte(fmt.Sprintf(trivialConfig, image)))
	if err != nil {
		b.Fatal(err)
	}
	rig := &queueRig{cli: cli, node: node, runID: runID, exe: dockertest.Forgexec(b),
		pki: wiretest.MustPKI(b), cfg: cfg, yml: fmt.Sprintf(trivialConfig, image)}

	forge := rig.mode(b, "forge", n, maxB, maxB, false)
	if forge.peak > maxB {
		b.Fatalf("forge: %d builds ran at once with --max-builds %d", forge.peak, maxB)
	}
	base := rig.mode(b, "baseline", n, maxB, 0, true)

	q := func(r queueResult, p float64) float64 { return Percentile(Millis(r.slot), p) }
	perBuild := func(r queueResult) float64 { return float64(r.cpu) / float64(time.Millisecond) / float64(n) }
	b.ReportMetric(q(forge, 0.99), "slot-p99-ms")
	b.ReportMetric(q(base, 0.99), "baseline-slot-p99-ms")
	b.ReportMetric(perBuild(forge), "cpu-ms/build")
	record(b, map[string]any{
		"queue.slot_to_create_ms_p50":          q(forge, 0.5),
		"queue.slot_to_create_ms_p99":          q(forge, 0.99),
		"queue.baseline_slot_to_create_ms_p50": q(base, 0.5),
		"queue.baseline_slot_to_create_ms_p99": q(base, 0.99),
		"queue.cpu_ms_per_build":               perBuild(forge),
		"queue.baseline_cpu_ms_per_build":      perBuild(base),
		"queue.wall_s":                         forge.wall.Seconds(),
		"queue.baseline_wall_s":                base.wall.Seconds(),
		"queue.builds":                         float64(n),
		"queue.max_builds":                     float64(maxB),
	})
	for _, r := range []struct {
		name string
		r    queueResult
	}{{"forge", forge}, {"baseline", base}} {
		b.Logf("%-8s wall %.1fs, cpu %.1f ms/build, at most %d running, slot-to-create ms p50 %.1f p90 %.1f p99 %.1f max %.1f",
			r.name, r.r.wall.Seconds(), perBuild(r.r), r.r.peak, q(r.r, 0.5), q(r.r, 0.9), q(r.r, 0.99), q(r.r, 1))
	}
}

type queueRig struct {
	cli   *client.Client
	node  string
	runID string
	exe   []byte
	pki   *wiretest.PKI
	cfg   *config.Config
	yml   string
}

type queueResult struct {
	slot []time.Duration // slot-to-create, one per create after the first max
	cpu  time.Duration   // this process's CPU over the mode
	wall time.Duration   // first submit to all builds waited for
	peak int             // most builds running at once (OnChange)
}

// queueWatch is the coordinator's OnChange: when each build became
// final, and how many ran at once (Running seen, final not yet).
type queueWatch struct {
	mu      sync.Mutex
	final   map[string]time.Time
	running map[string]bool
	peak    int
}

func (w *queueWatch) changed(bd *coordinator.Build) {
	now := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case bd.State.Final():
		if _, ok := w.final[bd.ID]; !ok {
			w.final[bd.ID] = now
		}
		delete(w.running, bd.ID)
	case bd.State == coordinator.Running:
		w.running[bd.ID] = true
		w.peak = max(w.peak, len(w.running))
	}
}

// mode runs one untimed build, then n timed ones on a coordinator of its
// own with MaxBuilds maxBuilds; throttle: the benchmark keeps at most
// inFlight submitted and not yet ended. The coordinator and its agent are
// stopped, and every service checked gone, before it returns.
func (r *queueRig) mode(b *testing.B, name string, n, inFlight, maxBuilds int, throttle bool) queueResult {
	b.Helper()
	watch := &queueWatch{final: map[string]time.Time{}, running: map[string]bool{}}
	created := &timedSwarm{Client: r.cli, at: map[string]time.Time{}}
	srv, stop := r.start(b, maxBuilds, created, watch.changed)
	ctx := dockertest.Context(b, 10*time.Minute)

	submit := func(i int) string {
		bd, err := srv.Builds.Submit(ctx, coordinator.Request{
			Subject: coordinator.Subject{Owner: "acme", Repo: "widgets", Branch: fmt.Sprintf("%s-%d", name, i), SHA: benchSHA,
				Action: "execute", Trigger: "api"},
			Config: r.cfg, ConfigText: r.yml, Node: r.node,
			Labels: map[string]string{dockertest.LabelTest: r.runID},
		})
		if err != nil {
			b.Fatalf("%s: submit build %d: %v", name, i, err)
		}
		return bd.ID
	}
	wait := func(id string) error {
		final, err := srv.Builds.Wait(ctx, id)
		if err != nil {
			return fmt.Errorf("%s: wait for %s: %w", name, id, err)
		}
		if final.State != coordinator.Success {
			return fmt.Errorf("%s: build %s: %s (%s)", name, id, final.State, final.Reason)
		}
		return nil
	}
	if err := wait(submit(-1)); err != nil {
		b.Fatal(err)
	}
	watch.mu.Lock()
	watch.peak = 0
	watch.mu.Unlock()

	ids := make([]string, 0, n)
	stopProfile := startCPUProfile(b, "queue-"+name+".cpu")
	cpu0, t0 := rusage(), time.Now()
	if !throttle {
		for i := range n {
			ids = append(ids, submit(i))
		}
		for _, id := range ids {
			if err := wait(id); err != nil {
				b.Fatal(err)
			}
		}
	} else {
		// Submit the next build as soon as one of inFlight ends.
		sem := make(chan struct{}, inFlight)
		var wg sync.WaitGroup
		var mu sync.Mutex
		var errs []error
		for i := range n {
			sem <- struct{}{}
			id := submit(i)
			ids = append(ids, id)
			wg.Go(func() {
				defer func() { <-sem }()
				if err := wait(id); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			b.Fatal(err)
		}
	}
	res := queueResult{wall: time.Since(t0), cpu: rusage() - cpu0}
	stopProfile()
	stop()

	var creates, finals []time.Time
	watch.mu.Lock()
	for _, id := range ids {
		c, ok := created.createdAt(id)
		f, okf := watch.final[id]
		if !ok || !okf {
			watch.mu.Unlock()
			b.Fatalf("%s: build %s: ServiceCreate seen %v, final seen %v", name, id, ok, okf)
		}
		creates, finals = append(creates, c), append(finals, f)
	}
	res.peak = watch.peak
	watch.mu.Unlock()
	slices.SortFunc(creates, time.Time.Compare)
	slices.SortFunc(finals, time.Time.Compare)
	for k := inFlight; k < len(creates); k++ {
		res.slot = append(res.slot, creates[k].Sub(finals[k-inFlight]))
	}
	r.checkGone(b, name)
	return res
}

// checkGone fails b if a service of this run is left (the lifecycle
// removes each build's service when it ends), then removes the task
// containers swarm is still taking away, so the next mode starts on a
// quiet engine.
func (r *queueRig) checkGone(b *testing.B, name string) {
	b.Helper()
	ctx := dockertest.Context(b, time.Minute)
	label := dockertest.LabelTest + "=" + r.runID
	svcs, err := r.cli.ServiceList(ctx, swarm.ServiceListOptions{Filters: filters.NewArgs(filters.Arg("label", label))})
	if err != nil {
		b.Fatal(err)
	}
	if len(svcs) > 0 {
		b.Fatalf("%s: %d services left after all builds ended, e.g. %s", name, len(svcs), svcs[0].Spec.Name)
	}
	if err := dockertest.RemoveLabelled(ctx, r.cli, label); err != nil {
		b.Fatal(err)
	}
}

// start runs a coordinator (no HTTP) with --max-builds maxBuilds and one
// real agent against this engine (startForge); stop ends both and may be
// called again.
func (r *queueRig) start(b *testing.B, maxBuilds int, docker *timedSwarm, onChange func(*coordinator.Build)) (*daemon.Coordinator, func()) {
	b.Helper()
	return startForge(b, r.pki, r.cli, r.node, docker, daemon.Config{Executor: r.exe, MaxBuilds: maxBuilds, OnChange: onChange})
}
