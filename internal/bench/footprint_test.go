package bench

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/forge-ci/forge/coordinator/agents"
	"github.com/forge-ci/forge/internal/dockertest"
	"github.com/forge-ci/forge/internal/syncbuf"
	"github.com/forge-ci/forge/internal/testwait"
	"github.com/forge-ci/forge/wire"
)

// BenchmarkAgentFootprint runs the real `forge agent` program, built the
// way `make build` builds it (or FORGE_BENCH_FORGE=path), with
// certificates made by `forge certs`, against an AgentServer in this
// process that checks it against swarm like the coordinator does. Once
// the agent is bound to this node, it idles for FORGE_BENCH_IDLE (10 s);
// agent.rss_mib is the largest VmRSS from /proc/<pid>/status sampled every
// 250 ms over that idle time, agent.rss_peak_mib is VmHWM (the peak since
// start, hand-shake included).
func BenchmarkAgentFootprint(b *testing.B) {
	idle := time.Duration(envInt("FORGE_BENCH_IDLE", 10)) * time.Second
	cli := dockertest.Client(b)
	dockertest.Swarm(b, cli)
	info, err := cli.Info(dockertest.Context(b, 10*time.Second))
	if err != nil {
		b.Fatal(err)
	}
	node := info.Swarm.NodeID
	dir := b.TempDir()
	forge := os.Getenv("FORGE_BENCH_FORGE")
	if forge == "" {
		forge = filepath.Join(dir, "forge")
		build := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", forge, "github.com/forge-ci/forge/cmd/forge")
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			b.Fatalf("go build forge: %v\n%s", err, out)
		}
	}
	certs := filepath.Join(dir, "certs")
	run := func(args ...string) {
		if out, err := exec.Command(forge, args...).CombinedOutput(); err != nil {
			b.Fatalf("forge %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	run("certs", "init", "--dir", certs)
	run("certs", "issue", "--dir", certs, "--role", "coordinator", "--name", "coordinator", "--host", "127.0.0.1")
	run("certs", "issue", "--dir", certs, "--role", "agent", "--name", "agent", "--node", node)
	pool, err := wire.LoadCAPool(filepath.Join(certs, "ca.pem"))
	if err != nil {
		b.Fatal(err)
	}
	pair, err := wire.LoadKeyPair(filepath.Join(certs, "coordinator.pem"), filepath.Join(certs, "coordinator-key.pem"))
	if err != nil {
		b.Fatal(err)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := agents.New(agents.Config{TLS: wire.ServerConfig(pool, pair), Logs: doneLogs{},
		Verify: &agents.SwarmVerifier{Docker: cli, LocalNodeID: node}})
	ctx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, ln) }()
	defer func() { stop(); <-served }()

	cmd := exec.Command(forge, "agent", "--coordinator", ln.Addr().String(),
		"--tls-ca", filepath.Join(certs, "ca.pem"), "--tls-cert", filepath.Join(certs, "agent.pem"),
		"--tls-key", filepath.Join(certs, "agent-key.pem"))
	logs := &syncbuf.Buffer{Max: childOutputMax}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	}()
	wctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	err = srv.WaitAgent(wctx, node)
	cancel()
	if err != nil {
		b.Fatalf("agent not connected: %v\n%s", err, logs.String())
	}

	var rss float64
	for end := time.Now().Add(idle); time.Now().Before(end); testwait.Pause(b, 250*time.Millisecond) {
		st, err := procStatus(cmd.Process.Pid)
		if err != nil {
			b.Fatalf("agent: %v\n%s", err, logs.String())
		}
		rss = max(rss, st["VmRSS"])
	}
	st, err := procStatus(cmd.Process.Pid)
	if err != nil {
		b.Fatal(err)
	}
	if len(srv.Agents()) != 1 {
		b.Fatalf("agent not connected after idling\n%s", logs.String())
	}
	b.ReportMetric(rss, "RSS-MiB")
	record(b, map[string]any{
		"agent.rss_mib":      rss,
		"agent.rss_peak_mib": st["VmHWM"],
		"agent.rss_anon_mib": st["RssAnon"],
		"agent.rss_file_mib": st["RssFile"],
	})
	b.Logf("forge agent (pid %d) status: VmRSS %.1f MiB (anon %.1f, file %.1f), VmHWM %.1f MiB, threads %v; this benchmark process: %s",
		cmd.Process.Pid, st["VmRSS"], st["RssAnon"], st["RssFile"], st["VmHWM"], st["Threads"], runtime.Version())
}

// procStatus reads the kB fields of /proc/<pid>/status, in MiB (Threads
// as a count).
func procStatus(pid int) (map[string]float64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fields := strings.Fields(v)
		if len(fields) == 0 {
			continue
		}
		n, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			continue
		}
		if len(fields) == 2 && fields[1] == "kB" {
			n /= 1024
		}
		out[k] = n
	}
	return out, sc.Err()
}
