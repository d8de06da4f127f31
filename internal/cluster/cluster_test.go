//go:build cluster

package cluster_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/swarm"

	"github.com/forge-ci/forge/internal/cluster"
	"github.com/forge-ci/forge/internal/dockertest"
)

// The harness itself: three engines form one swarm, the image arrives on
// every node, the nodes reach one another and nothing else, a cut link
// cuts, and Close leaves no namespace, link, folder or engine behind.
func TestClusterHarness(t *testing.T) {
	host := dockertest.Client(t)
	img := dockertest.EnsureBusybox(t, host)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	root := t.TempDir()
	began := time.Now()
	c, err := cluster.Start(ctx, cluster.Config{Nodes: 3, Images: []string{img}, HostDocker: host, Root: root, Log: cluster.TestLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("up in %v", time.Since(began).Round(time.Millisecond))
	closed := false
	defer func() {
		if !closed {
			if err := c.Close(context.Background()); err != nil {
				t.Error(err)
			}
		}
	}()

	nodes, err := c.Manager().Client.NodeList(ctx, swarm.NodeListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes) != 3 {
		t.Fatalf("%d nodes, want 3", len(nodes))
	}
	for _, n := range nodes {
		cn := c.Node(n.Description.Hostname)
		if cn == nil || cn.ID != n.ID || n.Status.Addr != cn.Addr.String() || n.Status.State != swarm.NodeStateReady {
			t.Errorf("node %s (%s) at %s is %s; the harness has %+v", n.Description.Hostname, n.ID, n.Status.Addr, n.Status.State, cn)
		}
		if want := cn == c.Manager(); (n.ManagerStatus != nil) != want {
			t.Errorf("node %s: manager %v, want %v", cn.Hostname, n.ManagerStatus != nil, want)
		}
	}
	for _, n := range c.Nodes {
		if _, err := n.Client.ImageInspect(ctx, img); err != nil {
			t.Errorf("%s: %v", n.Hostname, err)
		}
		// Each engine is its own: the node's own hostname and no other's.
		info, err := n.Client.Info(ctx)
		if err != nil || info.Name != n.Hostname || info.Swarm.NodeID != n.ID {
			t.Errorf("%s: info %q %q, %v", n.Hostname, info.Name, info.Swarm.NodeID, err)
		}
	}

	// node2 listens; node3 reaches it; the host's namespace cannot.
	n2, n3 := c.Nodes[1], c.Nodes[2]
	ln, err := n2.Listen("tcp", netip.AddrPortFrom(n2.Addr, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			io.WriteString(conn, "hello from node2\n")
			conn.Close()
		}
	}()
	read := func(from *cluster.Node) (string, error) {
		dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		conn, err := from.DialContext(dctx, "tcp", ln.Addr().String())
		if err != nil {
			return "", err
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(2 * time.Second))
		b, err := io.ReadAll(conn)
		return string(b), err
	}
	if got, err := read(n3); err != nil || got != "hello from node2\n" {
		t.Fatalf("node3 -> node2: %q, %v", got, err)
	}
	if conn, err := (&net.Dialer{Timeout: time.Second}).Dial("tcp", ln.Addr().String()); err == nil {
		conn.Close()
		t.Errorf("the host's namespace reached %s", ln.Addr())
	}
	if err := c.Cut(ctx, n3); err != nil {
		t.Fatal(err)
	}
	if got, err := read(n3); err == nil {
		t.Errorf("node3 reached node2 through a cut link: %q", got)
	}
	if err := c.Mend(ctx, n3); err != nil {
		t.Fatal(err)
	}
	if got, err := read(n3); err != nil || got != "hello from node2\n" {
		t.Fatalf("node3 -> node2 after mending: %q, %v", got, err)
	}

	began = time.Now()
	closed = true
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("down in %v", time.Since(began).Round(time.Millisecond))
	if entries, _ := os.ReadDir(root); len(entries) != 0 {
		t.Errorf("left in %s: %v", root, entries)
	}
	ns, _ := os.ReadDir("/run/netns")
	for _, e := range ns {
		if strings.HasPrefix(e.Name(), "fgc") {
			t.Errorf("namespace %s left", e.Name())
		}
	}
	for _, n := range c.Nodes {
		if _, err := os.Stat(n.Socket); err == nil {
			t.Errorf("%s still has a socket", n.Hostname)
		}
	}
}

// A test process killed with its cluster up (by -timeout, say) never
// runs Close: the next Start's Sweep removes its engines, namespaces and
// folder. The process here is this test binary run again, which starts a
// cluster and kills itself.
func TestClusterSweepAfterKilledProcess(t *testing.T) {
	if os.Getenv("FORGE_CLUSTER_DIE") != "" {
		c, err := cluster.Start(context.Background(), cluster.Config{Nodes: 2, Root: os.Getenv("FORGE_CLUSTER_DIE")})
		if err != nil {
			t.Fatal(err)
		}
		fmt.Println("UP", c.Nodes[0].NetNS)
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {}
	}
	dockertest.Client(t) // the engine's tools are needed: fail under CI without them
	root := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run", "^TestClusterSweepAfterKilledProcess$")
	cmd.Env = append(os.Environ(), "FORGE_CLUSTER_DIE="+root)
	out, err := cmd.CombinedOutput()
	var ws syscall.WaitStatus
	if ee, ok := err.(*exec.ExitError); ok {
		ws, _ = ee.Sys().(syscall.WaitStatus)
	}
	if !ws.Signaled() || !strings.Contains(string(out), "UP ") {
		t.Fatalf("the child should have started a cluster and died of SIGKILL: %v\n%s", err, out)
	}
	dead := regexp.MustCompile(`UP (fgc(\d+))n1`).FindStringSubmatch(string(out))
	if dead == nil {
		t.Fatalf("child said %s", out)
	}
	left := func() (ns []string, dirs []os.DirEntry, engines []string) {
		entries, _ := os.ReadDir("/run/netns")
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), dead[1]) {
				ns = append(ns, e.Name())
			}
		}
		dirs, _ = os.ReadDir(root)
		procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
		for _, p := range procs {
			if b, err := os.ReadFile(p); err == nil && strings.HasPrefix(string(b), "dockerd\x00") && strings.Contains(string(b), root) {
				engines = append(engines, p)
			}
		}
		return
	}
	ns, dirs, engines := left()
	if len(ns) != 3 || len(dirs) != 1 || len(engines) != 2 {
		t.Fatalf("before the sweep: namespaces %v, folders %v, engines %v; want 3, 1 and 2", ns, dirs, engines)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cluster.Sweep(ctx, root, cluster.TestLog(t))
	if ns, dirs, engines := left(); len(ns)+len(dirs)+len(engines) != 0 {
		t.Errorf("after the sweep: namespaces %v, folders %v, engines %v", ns, dirs, engines)
	}
}

func TestMain(m *testing.M) { os.Exit(dockertest.Main(m)) }
