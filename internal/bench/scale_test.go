package bench

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/forge-ci/forge/agent"
	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/agents"
	"github.com/forge-ci/forge/internal/fakedocker"
	"github.com/forge-ci/forge/internal/syncbuf"
	"github.com/forge-ci/forge/internal/testwait"
	"github.com/forge-ci/forge/wire"
	"github.com/forge-ci/forge/wire/wiretest"
)

// The scale benchmark runs its agents in a child process: this test
// binary, re-executed with these variables.
const (
	envChild      = "FORGE_BENCH_CHILD"       // "agents"
	envChildAddr  = "FORGE_BENCH_CHILD_ADDR"  // the coordinator's agent address
	envChildN     = "FORGE_BENCH_CHILD_N"     // how many agents
	envChildCerts = "FORGE_BENCH_CHILD_CERTS" // folder with ca.pem, agent.pem, agent-key.pem
)

// standInExecutorSize is the size of the executor the scale benchmark
// sends. The real forgexec is about 2.3 MB; each agent keeps the one it
// received, and a thousand real ones would take gigabytes in the agents'
// process. Measured launches find it cached, so its size does not enter
// them (only its digest crosses the wire).
const standInExecutorSize = 256 << 10

// BenchmarkScale connects FORGE_BENCH_AGENTS (1000) real agents, each with
// its own TLS + yamux session and a fake Docker, to one AgentServer in this
// process, and measures
//
//   - scale.connect_s: from starting the agents' process to all bound;
//   - scale.coordinator_kib_per_agent: the growth of this process's
//     HeapInuse + StackInuse (after GC, before and after all agents are
//     connected and idle), divided by the number of agents. The agents run
//     in a child process, so nothing of theirs is counted;
//   - scale.launch_*: the round trip of AgentServer.Launch to random
//     agents, FORGE_BENCH_LAUNCHES (5000) of them with 50 in flight at
//     any time (a new one starts as soon as one returns), after every
//     agent has received the executor once (the first launch of each is
//     reported as launch_first_p99_ms); launch_waves_* are half as many
//     launches sent in waves of 50, each wave after the last returned;
//   - scale.reconnect_s: from stopping the AgentServer (every session
//     closed) and starting a new one on the same address at once, to all
//     agents bound again; agents use the default back-off (250 ms to 30 s).
func BenchmarkScale(b *testing.B) {
	n := envInt("FORGE_BENCH_AGENTS", 1000)
	launches := envInt("FORGE_BENCH_LAUNCHES", 5000)
	const concurrency = 50
	if lim, err := raiseNoFile(); err != nil || lim < uint64(n)+512 {
		b.Fatalf("open-file limit %d (%v): need more than %d", lim, err, n+512)
	}
	p := wiretest.MustPKI(b)
	certs := b.TempDir()
	caKey, err := p.CA.KeyPEM()
	if err != nil {
		b.Fatal(err)
	}
	// The child signs each agent's certificate, for its own node.
	for name, data := range map[string][]byte{"ca.pem": p.CA.CertPEM(), "ca-key.pem": caKey} {
		if err := os.WriteFile(filepath.Join(certs, name), data, 0o600); err != nil {
			b.Fatal(err)
		}
	}
	exeBytes := make([]byte, standInExecutorSize)
	rand.Read(exeBytes)
	exe, err := coordinator.NewExecutor(exeBytes)
	if err != nil {
		b.Fatal(err)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	addr := ln.Addr().String()
	srv := startAgentServer(b, p, ln)

	// Before: the coordinator listening, no agent.
	before := memAfterGC()

	start := time.Now()
	child := startAgentsChild(b, addr, n, certs)
	waitBound(b, srv.s, n, 3*time.Minute, child)
	connect := time.Since(start)
	testwait.Pause(b, 3*time.Second) // let hand-shake garbage and first keep-alives pass
	after := memAfterGC()
	writeProfile(b, "heap", "coordinator-idle.heap")
	heap := float64(int64(after.HeapInuse)-int64(before.HeapInuse)) / float64(n) / 1024
	stack := float64(int64(after.StackInuse)-int64(before.StackInuse)) / float64(n) / 1024
	sys := float64(int64(after.Sys)-int64(before.Sys)) / float64(n) / 1024
	gor := float64(after.goroutines-before.goroutines) / float64(n)
	b.ReportMetric(heap+stack, "KiB/agent")

	// Launches: every agent once (it receives the executor), then random
	// agents, concurrency at a time.
	nodes := make([]string, n)
	for i := range nodes {
		nodes[i] = nodeName(i)
	}
	order := mrand.Perm(n)
	first := runLaunches(b, srv.s, exe, n, concurrency, func(i int) string { return nodes[order[i]] }, true)
	stopProfiles := child.startProfiles(b)
	sc0, csc0 := syscalls(os.Getpid()), syscalls(child.cmd.Process.Pid)
	cpu0, ccpu0, t0 := cpuTime(os.Getpid()), cpuTime(child.cmd.Process.Pid), time.Now()
	lat := runLaunches(b, srv.s, exe, launches, concurrency, func(int) string { return nodes[mrand.IntN(n)] }, false)
	cpu1, ccpu1, wall := cpuTime(os.Getpid()), cpuTime(child.cmd.Process.Pid), time.Since(t0)
	sc1, csc1 := syscalls(os.Getpid()), syscalls(child.cmd.Process.Pid)
	stopProfiles()
	p99 := Percentile(lat, 0.99)
	b.ReportMetric(p99, "launch-p99-ms")
	// What the latency follows on two saturated cores: CPU time and
	// system calls (each a TLS record written or read) per launch, counts
	// that outside load moves far less than the latency itself.
	b.ReportMetric(Percentile(lat, 0.5), "launch-p50-ms")
	b.ReportMetric((cpu1-cpu0).Seconds()*1000/float64(len(lat)), "coord-cpu-ms/launch")
	b.ReportMetric((ccpu1-ccpu0).Seconds()*1000/float64(len(lat)), "agents-cpu-ms/launch")
	perLaunch := func(before, after [2]int64, i int) float64 { return float64(after[i]-before[i]) / float64(len(lat)) }
	b.ReportMetric(perLaunch(sc0, sc1, 1), "coord-writes/launch")
	b.ReportMetric(perLaunch(sc0, sc1, 0), "coord-reads/launch")
	b.ReportMetric(perLaunch(csc0, csc1, 1), "agents-writes/launch")
	b.ReportMetric(perLaunch(csc0, csc1, 0), "agents-reads/launch")
	// The same launches in waves: 50 at once, the next wave when all are
	// back (the other reading of "50 at a time"; for comparison).
	var waves []float64
	for len(waves) < launches/2 {
		waves = append(waves, runLaunches(b, srv.s, exe, concurrency, concurrency, func(int) string { return nodes[mrand.IntN(n)] }, false)...)
	}

	// Restart the coordinator's agent side on the same address.
	t0 = time.Now()
	slow := time.AfterFunc(time.Second, func() {
		// Say what the stop waits for, when it is slow.
		f, err := os.CreateTemp("", "forge-bench-slow-stop-*.txt")
		if err == nil {
			pprof.Lookup("goroutine").WriteTo(f, 1)
			b.Logf("the agent server is slow to stop; goroutines in %s", f.Name())
			f.Close()
		}
	})
	srv.stop(b)
	slow.Stop()
	down := time.Since(t0)
	ln2, err := net.Listen("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	srv2 := startAgentServer(b, p, ln2)
	waitBound(b, srv2.s, n, 3*time.Minute, child)
	reconnect := time.Since(t0)
	b.ReportMetric(reconnect.Seconds(), "reconnect-s")

	record(b, map[string]any{
		"scale.agents":                           float64(n),
		"scale.connect_s":                        connect.Seconds(),
		"scale.coordinator_kib_per_agent":        heap + stack,
		"scale.coordinator_heap_kib_per_agent":   heap,
		"scale.coordinator_stack_kib_per_agent":  stack,
		"scale.coordinator_sys_kib_per_agent":    sys,
		"scale.coordinator_goroutines_per_agent": gor,
		"scale.launch_first_p99_ms":              Percentile(first, 0.99),
		"scale.launch_p50_ms":                    Percentile(lat, 0.5),
		"scale.launch_p90_ms":                    Percentile(lat, 0.9),
		"scale.launch_p99_ms":                    p99,
		"scale.launches":                         float64(len(lat)),
		"scale.launch_waves_p50_ms":              Percentile(waves, 0.5),
		"scale.launch_waves_p99_ms":              Percentile(waves, 0.99),
		"scale.launch_rate_per_s":                float64(len(lat)) / wall.Seconds(),
		"scale.launch_cpu_ms_coordinator":        (cpu1 - cpu0).Seconds() * 1000 / float64(len(lat)),
		"scale.launch_cpu_ms_agents":             (ccpu1 - ccpu0).Seconds() * 1000 / float64(len(lat)),
		"scale.launch_writes_coordinator":        perLaunch(sc0, sc1, 1),
		"scale.launch_writes_agents":             perLaunch(csc0, csc1, 1),
		"scale.reconnect_s":                      reconnect.Seconds(),
		"scale.restart_down_s":                   down.Seconds(),
	})
	srv2.stop(b)
	child.stop(b)
}

// cpuTime is the user + system CPU time a process has used so far.
func cpuTime(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command may hold spaces; the fields after its ")" are fixed.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ, 100 on Linux
}

// syscalls is how many read and write system calls a process has made
// (syscr and syscw of /proc/<pid>/io), or zeros.
func syscalls(pid int) (rw [2]int64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return rw
	}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(l, ":")
		n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		switch k {
		case "syscr":
			rw[0] = n
		case "syscw":
			rw[1] = n
		}
	}
	return rw
}

// startProfiles, when FORGE_BENCH_PROFILE_DIR is set, records CPU
// profiles of this process (coordinator.cpu) and of the agents' process
// (agents.cpu, started and stopped with SIGUSR1 and SIGUSR2), and this
// process's block and mutex profiles (coordinator.block, .mutex), until
// the returned function is called. (The heap of the idle coordinator is
// written to coordinator-idle.heap.)
func (c *agentsChild) startProfiles(b *testing.B) func() {
	dir := os.Getenv(envProfileDir)
	if dir == "" {
		return func() {}
	}
	runtime.SetBlockProfileRate(int(time.Microsecond))
	runtime.SetMutexProfileFraction(1)
	stopCPU := startCPUProfile(b, "coordinator.cpu")
	c.cmd.Process.Signal(syscall.SIGUSR1)
	return func() {
		stopCPU()
		writeProfile(b, "block", "coordinator.block")
		writeProfile(b, "mutex", "coordinator.mutex")
		runtime.SetBlockProfileRate(0)
		runtime.SetMutexProfileFraction(0)
		c.cmd.Process.Signal(syscall.SIGUSR2)
		testwait.Pause(b, 200*time.Millisecond)
	}
}

// startCPUProfile, when FORGE_BENCH_PROFILE_DIR is set, records this
// process's CPU profile into file there until the returned function is
// called.
func startCPUProfile(b *testing.B, file string) func() {
	dir := os.Getenv(envProfileDir)
	if dir == "" {
		return func() {}
	}
	f, err := os.Create(filepath.Join(dir, file))
	if err != nil {
		b.Fatal(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		b.Logf("no CPU profile %s: %v", file, err) // go test -cpuprofile is on
		f.Close()
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}
}

// writeProfile writes the named runtime profile into
// FORGE_BENCH_PROFILE_DIR, when that is set.
func writeProfile(b *testing.B, name, file string) {
	dir := os.Getenv(envProfileDir)
	if dir == "" {
		return
	}
	f, err := os.Create(filepath.Join(dir, file))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := pprof.Lookup(name).WriteTo(f, 0); err != nil {
		b.Fatal(err)
	}
}

// envProfileDir names the folder where the scale benchmark writes CPU
// profiles of the launch phase.
const envProfileDir = "FORGE_BENCH_PROFILE_DIR"

func nodeName(i int) string { return fmt.Sprintf("bench-node-%05d", i) }

type memStats struct {
	runtime.MemStats
	goroutines int
}

func memAfterGC() memStats {
	var m memStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m.MemStats)
	m.goroutines = runtime.NumGoroutine()
	return m
}

// runningServer is an AgentServer serving one listener.
type runningServer struct {
	s      *agents.Hub
	cancel context.CancelFunc
	done   chan error
}

func startAgentServer(b *testing.B, p *wiretest.PKI, ln net.Listener) *runningServer {
	r := &runningServer{
		s:    agents.New(agents.Config{TLS: p.ServerTLS(), Verify: anyNode{}, Logs: doneLogs{}}),
		done: make(chan error, 1),
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() { r.done <- r.s.Serve(ctx, ln) }()
	b.Cleanup(func() { r.stop(b) })
	return r
}

func (r *runningServer) stop(b *testing.B) {
	if r.cancel == nil {
		return
	}
	r.cancel()
	r.cancel = nil
	select {
	case err := <-r.done:
		if err != nil {
			b.Errorf("agent server: %v", err)
		}
	case <-time.After(time.Minute):
		b.Errorf("agent server did not stop")
	}
}

// anyNode lets every agent speak for the node it names: the agents of
// this benchmark are fakes on loopback, not swarm nodes.
type anyNode struct{}

func (anyNode) VerifyAgent(context.Context, string, net.Addr) error { return nil }

// doneLogs answers every attach with done: the fake builds have no output
// worth keeping, and the agent forgets them at once.
type doneLogs struct{}

func (doneLogs) Attach(context.Context, string, *wire.Attach) (*wire.Attached, error) {
	return &wire.Attached{NextSeq: 1, Done: true}, nil
}
func (doneLogs) Log(context.Context, string, *wire.Log) error   { return nil }
func (doneLogs) Exit(context.Context, string, *wire.Exit) error { return nil }
func (doneLogs) Exited(string) (*wire.Exit, error)              { return nil, nil }

// waitBound waits until n agents are bound to s.
func waitBound(b *testing.B, s *agents.Hub, n int, d time.Duration, c *agentsChild) {
	b.Helper()
	deadline := time.Now().Add(d)
	for {
		got := len(s.Agents())
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d agents bound after %v; agents' process: %s", got, n, d, c.output())
		}
		if c.exited() {
			b.Fatalf("agents' process ended: %s", c.output())
		}
		testwait.Pause(b, 20*time.Millisecond)
	}
}

// runLaunches runs count launches, concurrency at a time, to the agent
// node(i) names, and returns their round trips in milliseconds.
func runLaunches(b *testing.B, s *agents.Hub, exe *coordinator.Executor, count, concurrency int, node func(i int) string, wantExecutor bool) []float64 {
	b.Helper()
	spec := []byte(`{"version":1,"build_id":"x","action":"execute","commands":["true"],"workdir":"/forge/src"}`)
	out := make([]float64, count)
	var next atomic.Int64
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for w := 0; w < concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= count {
					return
				}
				build := fmt.Sprintf("b-%d-%d", time.Now().UnixNano(), i)
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				t := time.Now()
				res, err := s.Launch(ctx, node(i), coordinator.LaunchRequest{
					BuildID: build, ContainerID: fakedocker.IdleContainerID(build), Executor: exe,
					Spec: spec, Workdir: "/forge/src",
				})
				out[i] = float64(time.Since(t)) / float64(time.Millisecond)
				cancel()
				if err == nil && res.ExecutorSent != wantExecutor {
					err = fmt.Errorf("launch %d: executor sent %v, want %v", i, res.ExecutorSent, wantExecutor)
				}
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		b.Fatal(firstErr)
	}
	return out
}

// childOutputMax bounds what is kept of a child process's output.
const childOutputMax = 64 << 10

// agentsChild is the process that runs the agents.
type agentsChild struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *syncbuf.Buffer
	done  chan struct{}
	err   error
}

func startAgentsChild(b *testing.B, addr string, n int, certs string) *agentsChild {
	b.Helper()
	cmd := childCommand(b, "agents", envChildAddr+"="+addr, envChildN+"="+strconv.Itoa(n), envChildCerts+"="+certs)
	c := &agentsChild{cmd: cmd, out: &syncbuf.Buffer{Max: childOutputMax}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = c.out, c.out
	var err error
	if c.stdin, err = cmd.StdinPipe(); err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	go func() { c.err = cmd.Wait(); close(c.done) }()
	b.Cleanup(func() { c.stop(b) })
	return c
}

func (c *agentsChild) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

func (c *agentsChild) output() string {
	if c.exited() {
		return fmt.Sprintf("exit %v\n%s", c.err, c.out.String())
	}
	return c.out.String()
}

// stop closes the child's standard input, its signal to stop, and waits.
func (c *agentsChild) stop(b *testing.B) {
	stopChild(b, "agents'", c.cmd, &c.stdin, c.done)
}

// runAgentsChild runs the agents: envChildN agents with fake Dockers, node
// ids nodeName(i), all dialling envChildAddr, until standard input ends.
func runAgentsChild() int {
	n := childStart("agents", envChildN)
	if n == 0 {
		return 2
	}
	dir := os.Getenv(envChildCerts)
	pool, err := wire.LoadCAPool(filepath.Join(dir, "ca.pem"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "agents:", err)
		return 2
	}
	caCert, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "agents:", err)
		return 2
	}
	caKey, err := os.ReadFile(filepath.Join(dir, "ca-key.pem"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "agents:", err)
		return 2
	}
	ca, err := wire.LoadCA(caCert, caKey)
	if err != nil {
		fmt.Fprintln(os.Stderr, "agents:", err)
		return 2
	}
	addr := os.Getenv(envChildAddr)
	host, _, _ := net.SplitHostPort(addr)

	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		io.Copy(io.Discard, os.Stdin) // the parent closes it to stop us
		cancel()
	}()
	if dir := os.Getenv(envProfileDir); dir != "" {
		sig := make(chan os.Signal, 2)
		signal.Notify(sig, syscall.SIGUSR1, syscall.SIGUSR2)
		go func() {
			var f *os.File
			for s := range sig {
				switch {
				case s == syscall.SIGUSR1 && f == nil:
					f, _ = os.Create(filepath.Join(dir, "agents.cpu"))
					pprof.StartCPUProfile(f)
				case s == syscall.SIGUSR2 && f != nil:
					pprof.StopCPUProfile()
					f.Close()
					f = nil
				}
			}
		}()
	}
	var wg sync.WaitGroup
	var failed atomic.Int64
	for i := 0; i < n; i++ {
		certPEM, keyPEM, err := ca.Issue(wire.IssueRequest{Role: wire.RoleAgent, Name: nodeName(i), Node: nodeName(i)})
		if err != nil {
			fmt.Fprintln(os.Stderr, "agents:", err)
			return 2
		}
		pair, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			fmt.Fprintln(os.Stderr, "agents:", err)
			return 2
		}
		a, err := agent.New(agent.Config{
			Coordinator: addr, TLS: wire.ClientConfig(pool, pair, host), Docker: fakedocker.Idle(nodeName(i)),
			MinBackoff: 250 * time.Millisecond, MaxBackoff: 30 * time.Second, // the defaults, stated
		})
		if err != nil {
			fmt.Fprintln(os.Stderr, "agents:", err)
			return 2
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := a.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
				failed.Add(1)
				fmt.Fprintln(os.Stderr, "agent:", err)
			}
		}()
	}
	wg.Wait()
	if failed.Load() > 0 {
		return 1
	}
	return 0
}
