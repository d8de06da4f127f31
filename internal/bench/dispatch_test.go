package bench

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/client"

	"github.com/forge-ci/forge/agent"
	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/config"
	"github.com/forge-ci/forge/coordinator/daemon"
	"github.com/forge-ci/forge/coordinator/plan"
	"github.com/forge-ci/forge/internal/dockertest"
	"github.com/forge-ci/forge/wire/wiretest"
)

// trivialConfig is the build every dispatch sample runs.
const trivialConfig = "image: %s\nexecute: [\"true\"]\n"

const (
	floorImage = "forge-bench/floor:latest"
	benchSHA   = "0123456789abcdef0123456789abcdef01234567"
)

// BenchmarkDispatch measures create-the-service -> executor-running three
// ways, FORGE_BENCH_BUILDS (25) times each after 2 untimed rounds, the
// three kinds taking turns (the order rotates each round) so that load
// from elsewhere on the machine falls on all of them alike:
//
//   - forge: a build submitted to a whole coordinator (coordinator.Server:
//     store, manager, agent server) whose agent, in this process, reaches
//     it over mTLS + yamux on loopback; swarm places the task on this node.
//   - baseline: this process makes the same service (plan.ServiceSpec),
//     learns its container from the engine's create event, and calls
//     agent.Inject itself (wait for swarm's failed start, put the archive,
//     start), as the original design did over a remote Docker socket.
//   - floor: the same service with an image that already holds the
//     executor and its build.json, so swarm starts it itself.
//
// For every kind a sample is the engine's own timestamp of the
// container's start event minus the time taken just before ServiceCreate
// (for forge, inside the coordinator, through a wrapper of its Docker
// client). Swarm's failed start of a /forgexec-less container emits no
// start event, so the one start event is the executor's.
func BenchmarkDispatch(b *testing.B) {
	builds := envInt("FORGE_BENCH_BUILDS", 25)
	cli := dockertest.Client(b)
	dockertest.Swarm(b, cli)
	ctx := dockertest.Context(b, 14*time.Minute)
	info, err := cli.Info(ctx)
	if err != nil {
		b.Fatal(err)
	}
	node := info.Swarm.NodeID
	runID := dockertest.ID(b)
	dockertest.Cleanup(b, cli, runID)
	image := dockertest.EnsureBusybox(b, cli)
	exe := dockertest.Forgexec(b)

	ev := watchEngine(b, cli, runID)
	r := &dispatchRig{cli: cli, ev: ev, node: node, runID: runID, exe: exe, image: image}
	r.buildFloorImage(b)
	r.startForge(b)

	kinds := []struct {
		name string
		run  func(b *testing.B, i int) sample
	}{{"forge", r.forge}, {"baseline", r.baseline}, {"floor", r.floor}}
	samples := map[string][]time.Duration{}
	creates := map[string][]time.Duration{}
	for i := -2; i < builds; i++ {
		for k := range kinds {
			kind := kinds[(k+i+2)%len(kinds)]
			s := kind.run(b, i+2)
			if i >= 0 {
				samples[kind.name] = append(samples[kind.name], s.started)
				creates[kind.name] = append(creates[kind.name], s.created)
			}
		}
	}
	q := func(kind string, p float64) float64 { return Percentile(Millis(samples[kind]), p) }
	qc := func(kind string) float64 { return Percentile(Millis(creates[kind]), 0.5) }
	ratio := q("forge", 0.5) / q("baseline", 0.5)
	b.ReportMetric(q("forge", 0.5), "forge-p50-ms")
	b.ReportMetric(q("baseline", 0.5), "baseline-p50-ms")
	b.ReportMetric(q("floor", 0.5), "floor-p50-ms")
	b.ReportMetric(ratio, "ratio")
	record(b, map[string]any{
		"dispatch.forge_ms_p50":    q("forge", 0.5),
		"dispatch.forge_ms_p90":    q("forge", 0.9),
		"dispatch.baseline_ms_p50": q("baseline", 0.5),
		"dispatch.baseline_ms_p90": q("baseline", 0.9),
		"dispatch.floor_ms_p50":    q("floor", 0.5),
		"dispatch.floor_ms_p90":    q("floor", 0.9),
		"dispatch.ratio":           ratio,
		"dispatch.samples":         float64(builds),
		// Where the time goes: ServiceCreate -> the container's create
		// event, medians.
		"dispatch.forge_created_ms_p50":    qc("forge"),
		"dispatch.baseline_created_ms_p50": qc("baseline"),
		"dispatch.floor_created_ms_p50":    qc("floor"),
	})
	for _, k := range kinds {
		b.Logf("%-8s ms: %v", k.name, roundAll(Millis(samples[k.name])))
	}
}

func roundAll(xs []float64) []float64 {
	out := make([]float64, len(xs))
	for i, x := range xs {
		out[i] = float64(int(x*10)) / 10
	}
	return out
}

type dispatchRig struct {
	cli   *client.Client
	ev    *engineEvents
	node  string
	runID string
	exe   []byte
	image string

	srv     *daemon.Coordinator
	created *timedSwarm
}

// timedSwarm is the coordinator's Docker client with the time taken just
// before each ServiceCreate, by build id.
type timedSwarm struct {
	*client.Client
	mu sync.Mutex
	at map[string]time.Time
}

func (t *timedSwarm) ServiceCreate(ctx context.Context, spec swarm.ServiceSpec, opts swarm.ServiceCreateOptions) (swarm.ServiceCreateResponse, error) {
	t.mu.Lock()
	t.at[spec.Labels[plan.LabelBuild]] = time.Now()
	t.mu.Unlock()
	return t.Client.ServiceCreate(ctx, spec, opts)
}

func (t *timedSwarm) createdAt(build string) (time.Time, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	at, ok := t.at[build]
	return at, ok
}

// startForge runs a coordinator (default session settings, no HTTP) and
// one real agent against this engine.
func (r *dispatchRig) startForge(b *testing.B) {
	r.created = &timedSwarm{Client: r.cli, at: map[string]time.Time{}}
	r.srv, _ = startForge(b, wiretest.MustPKI(b), r.cli, r.node, r.created, daemon.Config{Executor: r.exe})
}

// startForge runs a coordinator of cfg (TLS from p, a data folder of its
// own, no HTTP) on docker, and one real agent of node against cli, and
// waits until the agent is bound. stop ends both, agent first; it may be
// called again, and the benchmark's cleanup calls it too.
func startForge(b *testing.B, p *wiretest.PKI, cli *client.Client, node string, docker daemon.Docker, cfg daemon.Config) (*daemon.Coordinator, func()) {
	b.Helper()
	return startForgeHTTP(b, p, cli, node, docker, cfg, nil)
}

// startForgeHTTP is startForge with the coordinator's HTTP edge served on
// httpLn (nil: none).
func startForgeHTTP(b *testing.B, p *wiretest.PKI, cli *client.Client, node string, docker daemon.Docker, cfg daemon.Config, httpLn net.Listener) (*daemon.Coordinator, func()) {
	b.Helper()
	cfg.TLS, cfg.DataDir = p.ServerTLS(), b.TempDir()
	srv, err := daemon.New(dockertest.Context(b, 30*time.Second), cfg, docker)
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		srv.Close()
		b.Fatal(err)
	}
	sctx, sstop := context.WithCancel(context.Background())
	sdone := make(chan error, 1)
	go func() { sdone <- srv.Serve(sctx, daemon.Listeners{Agents: ln, HTTP: httpLn}) }()
	stopSrv := sync.OnceFunc(func() {
		sstop()
		if err := <-sdone; err != nil {
			b.Errorf("coordinator: %v", err)
		}
	})
	b.Cleanup(stopSrv)
	a, err := agent.New(agent.Config{Coordinator: ln.Addr().String(), TLS: p.MustAgentTLS(b, node), Docker: cli})
	if err != nil {
		b.Fatal(err)
	}
	actx, astop := context.WithCancel(context.Background())
	adone := make(chan error, 1)
	go func() { adone <- a.Run(actx) }()
	stopAgent := sync.OnceFunc(func() {
		astop()
		if err := <-adone; err != nil {
			b.Errorf("agent: %v", err)
		}
	})
	b.Cleanup(stopAgent)
	wctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := srv.Agents.WaitAgent(wctx, node); err != nil {
		b.Fatal(err)
	}
	return srv, func() { stopAgent(); stopSrv() }
}

func (r *dispatchRig) config(b *testing.B, image string) *config.Config {
	cfg, err := config.Parse(".forge.yml", []byte(fmt.Sprintf(trivialConfig, image)))
	if err != nil {
		b.Fatal(err)
	}
	return cfg
}

// sample is one build's times from just before ServiceCreate: to the
// container's create event and to its start event (the engine's clock).
type sample struct{ created, started time.Duration }

func (r *dispatchRig) sample(b *testing.B, id string, t0, started time.Time) sample {
	b.Helper()
	r.ev.waitCreate(b, id)
	return sample{created: r.ev.createdAt(id).Sub(t0), started: started.Sub(t0)}
}

func (r *dispatchRig) forge(b *testing.B, i int) sample {
	b.Helper()
	ctx := dockertest.Context(b, 2*time.Minute)
	yml := fmt.Sprintf(trivialConfig, r.image)
	bd, err := r.srv.Builds.Submit(ctx, coordinator.Request{
		Subject: coordinator.Subject{Owner: "acme", Repo: "widgets", Branch: fmt.Sprintf("forge-%d", i), SHA: benchSHA,
			Action: "execute", Trigger: "api"},
		Config: r.config(b, r.image), ConfigText: yml, Node: r.node,
		Labels: map[string]string{dockertest.LabelTest: r.runID},
	})
	if err != nil {
		b.Fatal(err)
	}
	started := r.ev.waitStart(b, bd.ID)
	final, err := r.srv.Builds.Wait(ctx, bd.ID)
	if err != nil {
		b.Fatal(err)
	}
	if final.State != coordinator.Success {
		b.Fatalf("forge build %s: %s (%s)", bd.ID, final.State, final.Reason)
	}
	t0, ok := r.created.createdAt(bd.ID)
	if !ok {
		b.Fatalf("no ServiceCreate seen for %s", bd.ID)
	}
	s := r.sample(b, bd.ID, t0, started)
	r.remove(b, bd.ID)
	return s
}

// plan returns the service and build.json the coordinator would make.
func (r *dispatchRig) plan(b *testing.B, kind string, i int, image string) (string, swarm.ServiceSpec, []byte, *config.Config) {
	b.Helper()
	cfg := r.config(b, image)
	now := time.Now()
	id := fmt.Sprintf("%s-%d-%d", kind, i, now.UnixNano()%1e9)
	pb := plan.Build{ID: id, Owner: "acme", Repo: "widgets", Branch: kind, SHA: benchSHA, Ref: "refs/heads/" + kind,
		Action: "execute", CommitCount: 1, Created: now}
	spec, err := plan.ServiceSpec(pb, cfg, plan.Options{Node: r.node, Name: "forge-bench-" + id,
		ExtraLabels: map[string]string{dockertest.LabelTest: r.runID}})
	if err != nil {
		b.Fatal(err)
	}
	execSpec, err := plan.ExecutorSpec(pb, cfg)
	if err != nil {
		b.Fatal(err)
	}
	return id, spec, execSpec, cfg
}

func (r *dispatchRig) baseline(b *testing.B, i int) sample {
	b.Helper()
	ctx := dockertest.Context(b, 2*time.Minute)
	id, spec, execSpec, cfg := r.plan(b, "base", i, r.image)
	t0 := time.Now()
	if _, err := r.cli.ServiceCreate(ctx, spec, swarm.ServiceCreateOptions{}); err != nil {
		b.Fatal(err)
	}
	cid := r.ev.waitCreate(b, id)
	err := agent.Inject(ctx, r.cli, cid, id, agent.Payload{
		Executor: bytes.NewReader(r.exe), ExecutorSize: int64(len(r.exe)), Spec: execSpec, Workdir: cfg.Workdir,
	})
	if err != nil {
		b.Fatal(err)
	}
	started := r.ev.waitStart(b, id)
	r.waitExit(b, cid, id)
	s := sample{created: r.ev.createdAt(id).Sub(t0), started: started.Sub(t0)}
	r.remove(b, id)
	return s
}

func (r *dispatchRig) floor(b *testing.B, i int) sample {
	b.Helper()
	ctx := dockertest.Context(b, 2*time.Minute)
	id, spec, _, _ := r.plan(b, "floor", i, floorImage)
	t0 := time.Now()
	if _, err := r.cli.ServiceCreate(ctx, spec, swarm.ServiceCreateOptions{}); err != nil {
		b.Fatal(err)
	}
	started := r.ev.waitStart(b, id)
	r.waitExit(b, r.ev.waitCreate(b, id), id)
	s := sample{created: r.ev.createdAt(id).Sub(t0), started: started.Sub(t0)}
	r.remove(b, id)
	return s
}

func (r *dispatchRig) waitExit(b *testing.B, cid, id string) {
	b.Helper()
	ctx := dockertest.Context(b, time.Minute)
	res, errs := r.cli.ContainerWait(ctx, cid, container.WaitConditionNotRunning)
	select {
	case w := <-res:
		if w.StatusCode != 0 {
			b.Fatalf("build %s exited %d", id, w.StatusCode)
		}
	case err := <-errs:
		b.Fatalf("wait for %s: %v", id, err)
	}
}

// remove takes the build's service and container away and waits until
// they are gone, so the next sample starts on a quiet engine.
func (r *dispatchRig) remove(b *testing.B, id string) {
	b.Helper()
	if err := dockertest.RemoveLabelled(context.Background(), r.cli, plan.LabelBuild+"="+id); err != nil {
		b.Fatal(err)
	}
	// The container has run and is gone: a second start event would mean
	// the sample measured the wrong start (swarm's own start of a
	// /forgexec-less container must emit none).
	if _, starts := r.ev.chans(id); len(starts) > 0 {
		b.Fatalf("build %s: more than one start event", id)
	}
}

// buildFloorImage makes an image that already holds the executor, the
// build.json of the trivial config and a shell for its command.
func (r *dispatchRig) buildFloorImage(b *testing.B) {
	b.Helper()
	bb := mustRead(b, dockertest.BusyboxPath)
	_, _, execSpec, _ := r.plan(b, "floor", 0, floorImage)
	files := []dockertest.File{
		{Name: "bin/busybox", Mode: 0o755, Body: bb},
		{Name: "bin/sh", Link: "busybox"},
		{Name: "bin/true", Link: "busybox"},
		{Name: "forgexec", Mode: 0o755, Body: r.exe},
		{Name: ".forge/build.json", Body: execSpec},
	}
	dockertest.EnsureImage(b, r.cli, floorImage, files)
}

// engineEvents follows the engine's create and start events of the
// containers of this run, by build id.
type engineEvents struct {
	mu      sync.Mutex
	creates map[string]chan created
	starts  map[string]chan time.Time
	created map[string]time.Time // the create event's time, once waited for
}

type created struct {
	id string
	at time.Time
}

func (e *engineEvents) chans(build string) (chan created, chan time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.creates[build] == nil {
		e.creates[build] = make(chan created, 4)
		e.starts[build] = make(chan time.Time, 4)
	}
	return e.creates[build], e.starts[build]
}

func watchEngine(b *testing.B, cli *client.Client, runID string) *engineEvents {
	e := &engineEvents{creates: map[string]chan created{}, starts: map[string]chan time.Time{}, created: map[string]time.Time{}}
	ctx, cancel := context.WithCancel(context.Background())
	f := filters.NewArgs(filters.Arg("type", string(events.ContainerEventType)),
		filters.Arg("event", string(events.ActionCreate)), filters.Arg("event", string(events.ActionStart)),
		filters.Arg("label", dockertest.LabelTest+"="+runID))
	msgs, errs := cli.Events(ctx, events.ListOptions{Filters: f})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case m := <-msgs:
				build := m.Actor.Attributes[plan.LabelBuild]
				creates, starts := e.chans(build)
				switch m.Action {
				case events.ActionCreate:
					creates <- created{m.Actor.ID, time.Unix(0, m.TimeNano)}
				case events.ActionStart:
					starts <- time.Unix(0, m.TimeNano)
				}
			case err := <-errs:
				if ctx.Err() == nil {
					b.Errorf("engine events: %v", err)
				}
				return
			}
		}
	}()
	b.Cleanup(func() { cancel(); <-done })
	return e
}

func (e *engineEvents) waitCreate(b *testing.B, build string) string {
	b.Helper()
	c, _ := e.chans(build)
	select {
	case cr := <-c:
		e.mu.Lock()
		e.created[build] = cr.at
		e.mu.Unlock()
		return cr.id
	case <-time.After(time.Minute):
		b.Fatalf("no create event for %s", build)
		return ""
	}
}

// createdAt is the time of the create event waitCreate returned.
func (e *engineEvents) createdAt(build string) time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.created[build]
}

// waitStart returns the time of the container's start event.
func (e *engineEvents) waitStart(b *testing.B, build string) time.Time {
	b.Helper()
	_, c := e.chans(build)
	select {
	case t := <-c:
		return t
	case <-time.After(time.Minute):
		b.Fatalf("no start event for %s", build)
		return time.Time{}
	}
}
