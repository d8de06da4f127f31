//go:build cluster

package deploy

import (
	"context"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/forge-ci/forge/internal/cluster"
	"github.com/forge-ci/forge/internal/dockertest"
)

// TestClusterDeploy is the deployment on a swarm of three engines
// (internal/cluster; make test-cluster): make images on the manager, the
// agent's image loaded into the workers as an operator without a registry
// would, make up run on the manager, then a pull request whose
// .forge.yml pins its build to a worker. The agents are the stack's
// global service, one task per node, and dial the coordinator over the
// overlay network, so the coordinator knows each by its task's address:
// the path of DESIGN §4 that the process-per-node tests do not take.
func TestClusterDeploy(t *testing.T) {
	host := dockertest.Client(t)
	busybox := dockertest.EnsureBusybox(t, host)
	payload, err := os.ReadFile(payloadFile)
	if err != nil {
		t.Fatal(err)
	}
	ctx := dockertest.Context(t, 10*time.Minute)
	start := time.Now()
	step := func(what string) { t.Logf("%6.1fs %s", time.Since(start).Seconds(), what) }
	c, err := cluster.Start(ctx, cluster.Config{Nodes: 3, Images: []string{busybox}, HostDocker: host, Log: cluster.TestLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(context.Background()); err != nil {
			t.Error(err)
		}
	})
	step("cluster up")
	m, worker := c.Manager(), c.Node("node3")

	id := dockertest.ID(t)
	const version = "clustertest"
	d := &deployment{t: t, cli: m.Client, netns: m.NetNS, stack: "forgecluster", dir: t.TempDir(),
		hc:  &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: m.DialContext}},
		url: "http://127.0.0.1:8080", port: 8080}
	pub := d.configure("DOCKER_HOST="+m.Host, "VERSION="+version)
	t.Cleanup(d.purge)

	d.make(ctx, 5*time.Minute, "images")
	step("make images on the manager")
	if err := cluster.CopyImages(ctx, m.Client, []string{"forge/agent:" + version}, c.Nodes[1:]...); err != nil {
		t.Fatal(err)
	}
	step("forge/agent loaded into the workers")
	fakeImage := "forge-test/fakegithub:" + id
	if err := buildFake(ctx, m.Client, fakeImage, d.dir, pub, busybox, "constraints: [\"node.hostname=="+worker.Hostname+"\"]\n"); err != nil {
		t.Fatal(err)
	}

	out := d.make(ctx, 5*time.Minute, "up")
	step("make up")
	if !strings.Contains(out, "one on every node") {
		t.Errorf("make up did not report an agent on every node:\n%s", out)
	}
	var ids []string
	for _, n := range c.Nodes {
		ids = append(ids, n.ID)
	}
	agents := d.waitAgent(ctx, ids...)
	for _, n := range c.Nodes {
		a := agents[n.ID]
		t.Logf("agent of %s (%s, %s): connected from %s", n.Hostname, n.Addr, n.ID, a.Address)
		addr, err := netip.ParseAddrPort(a.Address)
		if err != nil || a.Hostname != n.Hostname || cluster.Subnet.Contains(addr.Addr()) || addr.Addr().IsLoopback() {
			t.Errorf("the agent of %s is known as %+v: want its task's address on the overlay network", n.Hostname, a)
		}
	}
	step("an agent on every node, each by its task's address")

	fake := d.startFake(ctx, fakeImage, id)
	secret, err := os.ReadFile(filepath.Join(d.state, "webhook-secret"))
	if err != nil {
		t.Fatal(err)
	}
	d.secret = []byte(strings.TrimSpace(string(secret)))
	d.webhook(ctx, "cluster-test-"+id, payload)
	b := d.waitBuild(ctx, fake, headSHA, "success", "failure", "error")
	step("build " + b.ID + " " + b.State + " on node " + b.NodeID)
	if b.State != "success" || b.NodeID != worker.ID {
		log, _ := d.api(ctx, "/api/builds/"+b.ID+"/log")
		t.Fatalf("build %+v, want success on %s (%s); log:\n%s", b, worker.Hostname, worker.ID, log)
	}
	if log := d.get(ctx, "/api/builds/"+b.ID+"/log"); !strings.Contains(log, greeting) {
		t.Errorf("the build's log lacks %q:\n%s", greeting, log)
	}
	d.waitStatuses(ctx, fake, headSHA, `^(pending,)+success$`)

	if err := dockertest.RemoveLabelled(ctx, m.Client, dockertest.LabelTest+"="+id); err != nil {
		t.Fatal(err)
	}
	out = d.make(ctx, 2*time.Minute, "down", "PURGE=1")
	d.down = true
	step("make down PURGE=1")
	d.checkGone(ctx, b.Service)
}
