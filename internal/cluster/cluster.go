// Package cluster starts a swarm of several real Docker engines on this
// machine, for tests that need more than one node: one dockerd per network
// namespace, each with a private /run (so its /var/run/docker.sock is its
// own) and its own data folder, joined to one swarm (the first node the
// manager, the others workers), with the images a test needs loaded from
// the host's engine.
//
// The nodes are wired to a switch: a namespace holding a bridge, with one
// veth pair per node. Addresses are 10.99.0.N/24 and exist only inside the
// namespaces the cluster made; the host's own network namespace gets no
// address, no link and no rule. Cut and Mend take a node's link down and
// up, the way a pulled cable would.
//
// Close tears everything down: services removed, swarm left, each dockerd
// stopped by its pid, namespaces (and with them the links) deleted, the
// scratch folder removed. It also checks that the host's firewall and
// forwarding settings are as Start found them, and puts them back (and says
// so) if they are not. Start first sweeps what a killed test process left:
// every cluster's folder is named after the pid that made it.
//
// Needs root, iproute2 (ip), util-linux (nsenter, unshare), dockerd and
// iptables-save/iptables-restore.
package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/client"
	"golang.org/x/sys/unix"
)

// Config says what cluster to start. The zero value (but for Log) is a
// three-node cluster with no images loaded.
type Config struct {
	// Nodes is how many engines (default 3; at most 200).
	Nodes int
	// Images are tags on the host engine (HostDocker) loaded into every node.
	Images     []string
	HostDocker client.APIClient
	// Root is where scratch folders go (default os.TempDir()/forge-cluster).
	// Keep it short: unix socket paths under it must fit in 108 bytes.
	Root string
	// Log receives progress lines (nil: discarded).
	Log io.Writer
}

// Cluster is a running swarm of Config.Nodes engines.
type Cluster struct {
	// Nodes are the engines, Nodes[0] the manager.
	Nodes []*Node

	dir    string
	prefix string // of every namespace and link name: fgc<pid>
	sw     string // the switch's namespace
	log    io.Writer
	host   hostState
	closed bool
}

// Node is one engine of the cluster.
type Node struct {
	Index    int        // 1-based
	Hostname string     // node1, node2, ...; swarm's node.hostname
	NetNS    string     // name under /run/netns
	Addr     netip.Addr // 10.99.0.Index, the address swarm advertises
	Socket   string     // the engine's unix socket, as seen from the host
	Host     string     // unix://Socket, for DOCKER_HOST or --docker-host
	ID       string     // swarm node id
	Client   *client.Client

	dir  string
	link string // the switch side of the node's veth pair
	cmd  *exec.Cmd
	done chan struct{} // closed when dockerd has exited
	err  error         // how it exited, once done is closed
}

// Manager is the node that runs swarm's manager: Nodes[0].
func (c *Cluster) Manager() *Node { return c.Nodes[0] }

// Subnet is the nodes' network.
var Subnet = netip.MustParsePrefix("10.99.0.0/24")

const swarmPort = 2377

// running is set while this process has a cluster: names are made from
// the pid, so a process has one at a time.
var running atomic.Bool

// Start makes the namespaces and links, starts the engines, forms the
// swarm and loads the images. On error it tears down what it made. A
// process runs one cluster at a time (tests share it).
func Start(ctx context.Context, cfg Config) (_ *Cluster, err error) {
	if !running.CompareAndSwap(false, true) {
		return nil, errors.New("cluster: this process already runs a cluster (Close it first)")
	}
	defer func() {
		if err != nil {
			running.Store(false)
		}
	}()
	if cfg.Nodes == 0 {
		cfg.Nodes = 3
	}
	if cfg.Nodes < 1 || cfg.Nodes > 200 {
		return nil, fmt.Errorf("cluster: %d nodes: want 1 to 200", cfg.Nodes)
	}
	if cfg.Root == "" {
		cfg.Root = filepath.Join(os.TempDir(), "forge-cluster")
	}
	if cfg.Log == nil {
		cfg.Log = io.Discard
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("cluster: network namespaces and engines need root")
	}
	for _, tool := range []string{"ip", "nsenter", "unshare", "dockerd", "iptables-save", "iptables-restore"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("cluster: %s not found: %w", tool, err)
		}
	}
	if err := os.MkdirAll(cfg.Root, 0o755); err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	Sweep(ctx, cfg.Root, cfg.Log)

	host, err := readHostState(ctx)
	if err != nil {
		return nil, err
	}
	pid := os.Getpid()
	c := &Cluster{dir: filepath.Join(cfg.Root, strconv.Itoa(pid)), prefix: namePrefix(pid), log: cfg.Log, host: host}
	c.sw = c.prefix + "sw"
	if err := os.RemoveAll(c.dir); err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	if err := os.MkdirAll(c.dir, 0o755); err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	defer func() {
		if err != nil {
			ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
			defer cancel()
			if cerr := c.Close(ctx); cerr != nil {
				err = fmt.Errorf("%w (and tearing down: %v)", err, cerr)
			}
		}
	}()
	began := time.Now()

	if err := c.network(ctx, cfg.Nodes); err != nil {
		return nil, err
	}
	// Engines start in parallel: each takes a second or two, mostly waiting.
	errs := make([]error, len(c.Nodes))
	var wg sync.WaitGroup
	for i, n := range c.Nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = c.startEngine(ctx, n)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	fmt.Fprintf(c.log, "cluster: %d engines up after %v\n", len(c.Nodes), time.Since(began).Round(time.Millisecond))

	if err := c.formSwarm(ctx); err != nil {
		return nil, err
	}
	fmt.Fprintf(c.log, "cluster: swarm of %d nodes ready after %v\n", len(c.Nodes), time.Since(began).Round(time.Millisecond))
	if len(cfg.Images) > 0 {
		if cfg.HostDocker == nil {
			return nil, errors.New("cluster: Images given without HostDocker")
		}
		if err := CopyImages(ctx, cfg.HostDocker, cfg.Images, c.Nodes...); err != nil {
			return nil, err
		}
		fmt.Fprintf(c.log, "cluster: images %v loaded after %v\n", cfg.Images, time.Since(began).Round(time.Millisecond))
	}
	return c, nil
}

// namePrefix keeps every name of one cluster unique on the machine and
// short: link names have at most 15 bytes (fgc + 7 digits + a1 fits).
func namePrefix(pid int) string { return "fgc" + strconv.Itoa(pid) }

// network makes the switch and the nodes' namespaces and links.
func (c *Cluster) network(ctx context.Context, nodes int) error {
	if err := ip(ctx, "netns", "add", c.sw); err != nil {
		return err
	}
	if err := ip(ctx, "-n", c.sw, "link", "add", "br0", "type", "bridge"); err != nil {
		return err
	}
	if err := ip(ctx, "-n", c.sw, "link", "set", "br0", "up"); err != nil {
		return err
	}
	for i := 1; i <= nodes; i++ {
		n := &Node{Index: i, Hostname: "node" + strconv.Itoa(i), NetNS: c.prefix + "n" + strconv.Itoa(i),
			Addr: Subnet.Addr().Next(), dir: filepath.Join(c.dir, "n"+strconv.Itoa(i)), done: make(chan struct{})}
		for range i - 1 {
			n.Addr = n.Addr.Next()
		}
		nodeEnd, swEnd := c.prefix+"a"+strconv.Itoa(i), c.prefix+"b"+strconv.Itoa(i)
		n.link = swEnd
		n.Socket = filepath.Join(n.dir, "run", "docker.sock")
		n.Host = "unix://" + n.Socket
		c.Nodes = append(c.Nodes, n)
		for _, args := range [][]string{
			{"netns", "add", n.NetNS},
			{"link", "add", nodeEnd, "type", "veth", "peer", "name", swEnd},
			{"link", "set", nodeEnd, "netns", n.NetNS},
			{"link", "set", swEnd, "netns", c.sw},
			{"-n", c.sw, "link", "set", swEnd, "master", "br0", "up"},
			{"-n", n.NetNS, "addr", "add", netip.PrefixFrom(n.Addr, Subnet.Bits()).String(), "dev", nodeEnd},
			{"-n", n.NetNS, "link", "set", nodeEnd, "up"},
			{"-n", n.NetNS, "link", "set", "lo", "up"},
		} {
			if err := ip(ctx, args...); err != nil {
				return err
			}
		}
	}
	return nil
}

// startEngine runs the node's dockerd in its namespace, as the recipe of
// notes/swarm-facts.md does: `ip netns exec` would remount /sys and
// dockerd then finds no devices cgroup, so nsenter joins the network
// namespace only and unshare gives a private mount and UTS namespace.
func (c *Cluster) startEngine(ctx context.Context, n *Node) error {
	for _, d := range []string{"run", "root", "exec"} {
		if err := os.MkdirAll(filepath.Join(n.dir, d), 0o755); err != nil {
			return fmt.Errorf("node %s: %w", n.Hostname, err)
		}
	}
	// Its own (empty) config file: the host's /etc/docker/daemon.json names
	// the host's data root and storage driver, which would clash.
	conf := filepath.Join(n.dir, "daemon.json")
	if err := os.WriteFile(conf, []byte("{}\n"), 0o644); err != nil {
		return fmt.Errorf("node %s: %w", n.Hostname, err)
	}
	logf, err := os.Create(filepath.Join(n.dir, "dockerd.log"))
	if err != nil {
		return fmt.Errorf("node %s: %w", n.Hostname, err)
	}
	defer logf.Close()
	// vfs: the images are a few MB, and it needs neither overlay support
	// nor fuse in the node's mount namespace.
	script := fmt.Sprintf(`hostname %s && mount --bind %s /run && exec dockerd --config-file %s -H unix:///run/docker.sock --data-root %s --exec-root %s --pidfile /run/docker.pid --storage-driver vfs`,
		n.Hostname, filepath.Join(n.dir, "run"), conf, filepath.Join(n.dir, "root"), filepath.Join(n.dir, "exec"))
	// nsenter and unshare exec what they run, so the pid is dockerd's.
	n.cmd = exec.Command("nsenter", "--net=/run/netns/"+n.NetNS, "unshare", "-m", "-u", "--propagation", "private", "sh", "-c", script)
	n.cmd.Stdout, n.cmd.Stderr = logf, logf
	// Its own process group: a ^C to the test is not dockerd's to get first.
	n.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := n.cmd.Start(); err != nil {
		close(n.done)
		return fmt.Errorf("node %s: start dockerd: %w", n.Hostname, err)
	}
	go func() {
		n.err = n.cmd.Wait()
		close(n.done)
	}()
	if n.Client, err = client.NewClientWithOpts(client.WithHost(n.Host), client.WithAPIVersionNegotiation()); err != nil {
		return fmt.Errorf("node %s: %w", n.Hostname, err)
	}
	deadline := time.NewTimer(60 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := n.Client.Ping(pctx)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-n.done:
			return fmt.Errorf("node %s: dockerd exited (%v); its log: %s", n.Hostname, n.err, tail(filepath.Join(n.dir, "dockerd.log")))
		case <-deadline.C:
			return fmt.Errorf("node %s: dockerd not answering after 60s (%v); its log: %s", n.Hostname, err, tail(filepath.Join(n.dir, "dockerd.log")))
		case <-ctx.Done():
			return fmt.Errorf("node %s: %w", n.Hostname, ctx.Err())
		case <-tick.C:
		}
	}
}

func (c *Cluster) formSwarm(ctx context.Context) error {
	m := c.Manager()
	if _, err := m.Client.SwarmInit(ctx, swarm.InitRequest{
		ListenAddr:    netip.AddrPortFrom(m.Addr, swarmPort).String(),
		AdvertiseAddr: m.Addr.String(),
		Spec:          swarm.Spec{Annotations: swarm.Annotations{Name: "default"}},
	}); err != nil {
		return fmt.Errorf("swarm init on %s: %w", m.Hostname, err)
	}
	sw, err := m.Client.SwarmInspect(ctx)
	if err != nil {
		return fmt.Errorf("swarm inspect on %s: %w", m.Hostname, err)
	}
	for _, n := range c.Nodes[1:] {
		if err := n.Client.SwarmJoin(ctx, swarm.JoinRequest{
			ListenAddr:    netip.AddrPortFrom(n.Addr, swarmPort).String(),
			AdvertiseAddr: n.Addr.String(),
			RemoteAddrs:   []string{netip.AddrPortFrom(m.Addr, swarmPort).String()},
			JoinToken:     sw.JoinTokens.Worker,
		}); err != nil {
			return fmt.Errorf("swarm join of %s: %w", n.Hostname, err)
		}
	}
	for _, n := range c.Nodes {
		info, err := n.Client.Info(ctx)
		if err != nil {
			return fmt.Errorf("info of %s: %w", n.Hostname, err)
		}
		n.ID = info.Swarm.NodeID
	}
	return c.WaitReady(ctx, 60*time.Second)
}

// WaitReady waits until the manager sees every node ready.
func (c *Cluster) WaitReady(ctx context.Context, d time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		nodes, err := c.Manager().Client.NodeList(ctx, swarm.NodeListOptions{})
		ready := 0
		var states []string
		for _, n := range nodes {
			if n.Status.State == swarm.NodeStateReady {
				ready++
			}
			states = append(states, n.Description.Hostname+"="+string(n.Status.State))
		}
		if err == nil && ready == len(c.Nodes) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("nodes not all ready after %v: %v (last error: %v)", d, states, err)
		case <-tick.C:
		}
	}
}

// CopyImages saves images from src once and loads them into each of
// nodes, as `docker save | docker load` would, checking each arrived.
func CopyImages(ctx context.Context, src client.APIClient, images []string, nodes ...*Node) error {
	rc, err := src.ImageSave(ctx, images)
	if err != nil {
		return fmt.Errorf("save %v: %w", images, err)
	}
	data, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		return fmt.Errorf("save %v: %w", images, err)
	}
	for _, n := range nodes {
		resp, err := n.Client.ImageLoad(ctx, bytes.NewReader(data), client.ImageLoadWithQuiet(true))
		if err != nil {
			return fmt.Errorf("load %v into %s: %w", images, n.Hostname, err)
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil {
			return fmt.Errorf("load %v into %s: %w", images, n.Hostname, err)
		}
		for _, ref := range images {
			if _, err := n.Client.ImageInspect(ctx, ref); err != nil {
				return fmt.Errorf("image %s on %s after load: %w", ref, n.Hostname, err)
			}
		}
	}
	return nil
}

// TestLog is a Config.Log that writes each line to the test's log.
func TestLog(t testing.TB) io.Writer { return testLog{t} }

type testLog struct{ t testing.TB }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// Node returns the node with that hostname, or nil.
func (c *Cluster) Node(hostname string) *Node {
	for _, n := range c.Nodes {
		if n.Hostname == hostname {
			return n
		}
	}
	return nil
}

// Cut takes the node's link down at the switch: the node is still
// running but reaches, and is reached by, nothing.
func (c *Cluster) Cut(ctx context.Context, n *Node) error {
	return ip(ctx, "-n", c.sw, "link", "set", n.link, "down")
}

// Mend brings the node's link back up.
func (c *Cluster) Mend(ctx context.Context, n *Node) error {
	return ip(ctx, "-n", c.sw, "link", "set", n.link, "up")
}

// Command is a command run in the node's network namespace (and the
// host's mount namespace: the node's socket is n.Socket there).
func (n *Node) Command(name string, arg ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--net=/run/netns/" + n.NetNS, "--", name}, arg...)...)
}

// Do runs fn on an OS thread that is in the node's network namespace, so
// that sockets fn creates live there (and stay there, whatever thread
// later uses them). The thread goes back to the host's namespace before
// the runtime may use it again; if it cannot, it stays locked to the
// goroutine and exits with it.
func (n *Node) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		home, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("node %s: %w", n.Hostname, err)
			return
		}
		defer home.Close()
		f, err := os.Open("/run/netns/" + n.NetNS)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("node %s: %w", n.Hostname, err)
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("node %s: setns: %w", n.Hostname, err)
			return
		}
		err = fn()
		if unix.Setns(int(home.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// Listen listens in the node's network namespace.
func (n *Node) Listen(network, address string) (ln net.Listener, err error) {
	err = n.Do(func() error {
		ln, err = net.Listen(network, address)
		return err
	})
	return ln, err
}

// DialContext dials from the node's network namespace (a DialContext for
// an http.Transport).
func (n *Node) DialContext(ctx context.Context, network, address string) (conn net.Conn, err error) {
	err = n.Do(func() error {
		conn, err = (&net.Dialer{}).DialContext(ctx, network, address)
		return err
	})
	return conn, err
}

// Close tears the cluster down (see the package doc). It is safe to call
// twice and after a failed Start.
func (c *Cluster) Close(ctx context.Context) error {
	if c.closed {
		return nil
	}
	c.closed = true
	began := time.Now()
	var errs []error
	// Services first, from the manager: their containers are stopped by
	// their own engines, and nothing is left to restart.
	if len(c.Nodes) > 0 && c.Manager().Client != nil {
		if err := removeServices(ctx, c.Manager().Client); err != nil {
			errs = append(errs, err)
		}
	}
	// Workers leave before the manager, as an operator would.
	for i := len(c.Nodes) - 1; i >= 0; i-- {
		n := c.Nodes[i]
		if n.Client == nil || isDone(n.done) {
			continue
		}
		lctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		if err := n.Client.SwarmLeave(lctx, true); err != nil && !notInSwarm(err) {
			errs = append(errs, fmt.Errorf("swarm leave on %s: %w", n.Hostname, err))
		}
		cancel()
	}
	var wg sync.WaitGroup
	stopErrs := make([]error, len(c.Nodes))
	for i, n := range c.Nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			stopErrs[i] = n.stop(ctx)
		}()
	}
	wg.Wait()
	errs = append(errs, stopErrs...)
	for _, n := range c.Nodes {
		if n.Client != nil {
			n.Client.Close()
		}
	}
	names := []string{c.sw}
	for _, n := range c.Nodes {
		names = append(names, n.NetNS)
	}
	errs = append(errs, removeNamespaces(ctx, names))
	if err := os.RemoveAll(c.dir); err != nil {
		errs = append(errs, fmt.Errorf("remove %s: %w", c.dir, err))
	}
	_ = os.Remove(filepath.Dir(c.dir)) // the root too, unless another cluster uses it
	if c.host.iptables != "" {
		errs = append(errs, c.host.restore(ctx))
	}
	fmt.Fprintf(c.log, "cluster: torn down in %v\n", time.Since(began).Round(time.Millisecond))
	running.Store(false)
	return errors.Join(errs...)
}

// stop ends the node's dockerd by its pid: SIGTERM, which stops its
// containers and its containerd, then SIGKILL after 30 s.
func (n *Node) stop(ctx context.Context) error {
	if n.cmd == nil || n.cmd.Process == nil {
		return nil
	}
	if isDone(n.done) {
		return nil
	}
	if err := n.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stop dockerd of %s: %w", n.Hostname, err)
	}
	t := time.NewTimer(30 * time.Second)
	defer t.Stop()
	select {
	case <-n.done:
		return nil
	case <-t.C:
	case <-ctx.Done():
	}
	_ = n.cmd.Process.Kill()
	select {
	case <-n.done:
		return fmt.Errorf("dockerd of %s did not stop within 30s of SIGTERM; killed", n.Hostname)
	case <-time.After(10 * time.Second):
		return fmt.Errorf("dockerd of %s (pid %d) survives SIGKILL", n.Hostname, n.cmd.Process.Pid)
	}
}

func isDone(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

func removeServices(ctx context.Context, cli client.APIClient) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	svcs, err := cli.ServiceList(ctx, swarm.ServiceListOptions{})
	if err != nil {
		if notInSwarm(err) {
			return nil
		}
		return fmt.Errorf("list services: %w", err)
	}
	var errs []error
	for _, s := range svcs {
		if err := cli.ServiceRemove(ctx, s.ID); err != nil {
			errs = append(errs, fmt.Errorf("remove service %s: %w", s.Spec.Name, err))
		}
	}
	return errors.Join(errs...)
}

// notInSwarm: the engine says it is not (or no longer) part of a swarm.
// The engine gives no typed error for it: errdefs classes it as
// "unavailable" (503), which is what this checks.
func notInSwarm(err error) bool {
	var st interface{ StatusCode() int }
	if errors.As(err, &st) {
		return st.StatusCode() == 503
	}
	return false
}

// removeNamespaces kills whatever still runs in the namespaces (a
// containerd-shim whose dockerd was killed, say), then deletes them; the
// links in them go with them.
func removeNamespaces(ctx context.Context, names []string) error {
	var errs []error
	for _, name := range names {
		if _, err := os.Stat("/run/netns/" + name); errors.Is(err, os.ErrNotExist) {
			continue
		}
		if out, err := exec.CommandContext(ctx, "ip", "netns", "pids", name).Output(); err == nil {
			for _, f := range strings.Fields(string(out)) {
				// Never this process: one of its threads may have been in
				// the namespace (Node.Do) when the process was listed.
				if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
		if err := ip(ctx, "netns", "delete", name); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Sweep removes what clusters of dead processes left: a test process
// killed by -timeout or a signal never runs its Close. Namespaces are
// named after the pid that made them (fgc<pid>...); for each whose maker
// is gone, Sweep stops the engines running in it (SIGTERM, so they stop
// their containers; SIGKILL for whatever is left after 15 s), deletes it,
// and removes the engines' folders (found from their --data-root). Then
// it removes folders under root whose maker is gone.
func Sweep(ctx context.Context, root string, log io.Writer) {
	nsEntries, _ := os.ReadDir("/run/netns")
	var names []string
	var engines []int
	dirs := map[string]bool{}
	for _, e := range nsEntries {
		m := nsName.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		if pid, _ := strconv.Atoi(m[1]); pid == os.Getpid() || processAlive(pid) {
			continue
		}
		names = append(names, e.Name())
		out, _ := exec.CommandContext(ctx, "ip", "netns", "pids", e.Name()).Output()
		for _, f := range strings.Fields(string(out)) {
			p, err := strconv.Atoi(f)
			if err != nil || p == os.Getpid() || command(p) != "dockerd" {
				continue
			}
			if d := dataRoot(p); d != "" && filepath.Base(filepath.Dir(filepath.Dir(d))) == m[1] {
				dirs[filepath.Dir(filepath.Dir(d))] = true // <root>/<pid>/nN/root
			}
			if syscall.Kill(p, syscall.SIGTERM) == nil {
				engines = append(engines, p)
			}
		}
	}
	if len(names) > 0 {
		fmt.Fprintf(log, "cluster: sweeping namespaces of dead processes: %v\n", names)
	}
	waitGone(ctx, engines, 15*time.Second)
	if err := removeNamespaces(ctx, names); err != nil {
		fmt.Fprintf(log, "cluster: sweep: %v\n", err)
	}
	entries, _ := os.ReadDir(root)
	for _, e := range entries {
		if pid, err := strconv.Atoi(e.Name()); err == nil && pid != os.Getpid() && !processAlive(pid) {
			dirs[filepath.Join(root, e.Name())] = true
		}
	}
	for d := range dirs {
		fmt.Fprintf(log, "cluster: sweeping %s\n", d)
		if err := os.RemoveAll(d); err != nil {
			fmt.Fprintf(log, "cluster: sweep: %v\n", err)
		}
	}
}

var nsName = regexp.MustCompile(`^fgc(\d+)(?:sw|n\d+)$`)

// dataRoot is the --data-root of dockerd process pid.
func dataRoot(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return ""
	}
	args := strings.Split(string(b), "\x00")
	for i, a := range args {
		if a == "--data-root" && i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}

// waitGone waits until none of pids is alive, or d has passed.
func waitGone(ctx context.Context, pids []int, d time.Duration) {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		alive := 0
		for _, p := range pids {
			if processAlive(p) && command(p) == "dockerd" {
				alive++
			}
		}
		if alive == 0 {
			return
		}
		select {
		case <-deadline.C:
			return
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// command is the name of process pid's program ("" if gone).
func command(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return strings.TrimSpace(string(b))
}

func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

func ip(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// tail is the end of a log file, for errors.
func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}
