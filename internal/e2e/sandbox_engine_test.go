package e2e

import (
	"io"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/swarm"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/config"
	"github.com/forge-ci/forge/coordinator/daemon"
	"github.com/forge-ci/forge/coordinator/plan"
	"github.com/forge-ci/forge/internal/dockertest"
)

// testSandbox is small, so the fork bomb stays gentle on a shared machine.
var testSandbox = plan.Sandbox{Memory: 256 << 20, NanoCPUs: 5e8, Pids: 64}

// TestSandboxForkBomb: a fork bomb in a build is held by the pids limit
// (the build's own next fork fails, so it ends as failure, well within
// its timeout), and a normal build on the same node then succeeds. The
// normal build's service carries the sandbox, and the container shows
// it from inside: pids.max, NET_RAW gone from the effective capabilities.
func TestSandboxForkBomb(t *testing.T) {
	e := newEnv(t)
	s := startServerWith(t, e, t.TempDir(), "", func(cfg *daemon.Config) { cfg.Sandbox = testSandbox })
	startAgent(t, e.pki, s.agents, nil, nil)
	id := dockertest.ID(t)
	dockertest.Cleanup(t, e.cli, id)

	// Every process of the bomb forks for ever, the build's own shell
	// too (it runs b itself), so the container stays at its pids limit
	// and that shell meets a refused fork: busybox sh exits 2 there. Its
	// own forking matters: bomb processes exit at their refused fork too,
	// and a bomb run in the background could die out, leaving the shell
	// to fork freely until the timeout. A failure (not a timeout, which
	// is an error) says the limit held. stderr goes away: every refused
	// fork would print a line.
	const bomb = `echo bombing; exec 2>/dev/null; b(){ while :; do b & done; }; b; echo the shell outlived a refused fork; exit 1`
	began := time.Now()
	b := s.submit(t, e, "image: "+e.image+"\ntimeout: 30s\nexecute: ['"+bomb+"']\n", id)
	final, err := s.srv.Builds.Wait(dockertest.Context(t, 3*time.Minute), b.ID)
	if err != nil {
		t.Fatal(err)
	}
	if final.State != coordinator.Failure || final.ExitCode == nil || *final.ExitCode == 0 {
		t.Fatalf("fork bomb: %s (%s), want failure", final.State, final.Reason)
	}
	if log := buildLog(t, s, b.ID); !strings.Contains(log, "\nbombing\n") || strings.Contains(log, "\nthe shell outlived") {
		t.Errorf("fork bomb log %q", log)
	}
	t.Logf("fork bomb contained in %v", time.Since(began).Round(time.Millisecond))

	// The next build, not pinned: the coordinator asks swarm for workers
	// (this single-node swarm has none, so it may land on the manager).
	const normal = `cat /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/pids.max 2>/dev/null; grep CapEff /proc/self/status; sleep 2; echo done`
	yml := "image: " + e.image + "\ntimeout: 60s\nexecute: ['" + normal + "']\n"
	cfg, err := config.Parse(".forge.yml", []byte(yml))
	if err != nil {
		t.Fatal(err)
	}
	ctx := dockertest.Context(t, 2*time.Minute)
	b2, err := s.srv.Builds.Submit(ctx, coordinator.Request{
		Subject: coordinator.Subject{Owner: "acme", Repo: "widgets", Branch: "main", SHA: "89abcdef0123456789abcdef0123456789abcdef", Action: "execute", Trigger: "api"},
		Config:  cfg, ConfigText: yml, Labels: map[string]string{dockertest.LabelTest: id},
	})
	if err != nil {
		t.Fatal(err)
	}
	waitStarted(t, s, b2.ID)
	rec, err := s.srv.Store.Build(ctx, b2.ID)
	if err != nil {
		t.Fatal(err)
	}
	svc, _, err := e.cli.ServiceInspectWithRaw(ctx, rec.ServiceID, swarm.ServiceInspectOptions{})
	if err != nil {
		t.Fatalf("inspect the running build's service: %v", err)
	}
	checkSandboxSpec(t, svc.Spec)

	final, err = s.srv.Builds.Wait(ctx, b2.ID)
	if err != nil {
		t.Fatal(err)
	}
	if final.State != coordinator.Success {
		t.Fatalf("normal build after the bomb: %s (%s)", final.State, final.Reason)
	}
	log := buildLog(t, s, b2.ID)
	if !regexp.MustCompile(`(?m)^64$`).MatchString(log) {
		t.Errorf("the container's pids.max is not 64: %q", log)
	}
	m := regexp.MustCompile(`CapEff:\s*([0-9a-f]+)`).FindStringSubmatch(log)
	if m == nil {
		t.Fatalf("no CapEff in %q", log)
	}
	caps, _ := strconv.ParseUint(m[1], 16, 64)
	const capChown, capNetRaw = 0, 13
	if caps&(1<<capNetRaw) != 0 || caps&(1<<capChown) == 0 {
		t.Errorf("effective capabilities %#x: want NET_RAW (bit 13) dropped and Docker's default set (CHOWN) kept", caps)
	}
}

// checkSandboxSpec checks what swarm kept of the sandbox.
func checkSandboxSpec(t *testing.T, spec swarm.ServiceSpec) {
	t.Helper()
	tt := spec.TaskTemplate
	if r := tt.Resources; r == nil || r.Limits == nil ||
		*r.Limits != (swarm.Limit{MemoryBytes: testSandbox.Memory, NanoCPUs: testSandbox.NanoCPUs, Pids: testSandbox.Pids}) {
		t.Errorf("service resources %+v", r)
	}
	if cs := tt.ContainerSpec; cs == nil || !slices.Contains(cs.CapabilityDrop, "CAP_NET_RAW") || len(cs.CapabilityAdd) != 0 {
		t.Errorf("service container spec %+v", cs)
	}
	if ld := tt.LogDriver; ld == nil || ld.Name != "json-file" || !maps.Equal(ld.Options, map[string]string{"max-size": "10m", "max-file": "3"}) {
		t.Errorf("service log driver %+v", ld)
	}
	if p := tt.Placement; p != nil && slices.Contains(p.Constraints, "node.role==worker") {
		t.Errorf("a swarm without workers got %q", p.Constraints)
	}
}

func buildLog(t *testing.T, s *server, id string) string {
	t.Helper()
	resp := admin(t, "GET", s.http+"/api/builds/"+id+"/log")
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return string(data)
}
