package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/client"

	"github.com/forge-ci/forge/internal/dockertest"
)

// TestMain runs the benchmarks, or, when the scale benchmark re-executes
// this test binary with envChild set, the agents' side of that benchmark
// in a process of its own (so the coordinator's memory is measured alone);
// with envChild "followers", the log benchmark's followers.
func TestMain(m *testing.M) {
	switch os.Getenv(envChild) {
	case "":
	case "followers":
		os.Exit(runFollowersChild())
	default:
		os.Exit(runAgentsChild())
	}
	if os.Getenv(EnvOut) != "" {
		if err := Record(machineInfo()); err != nil {
			fmt.Fprintf(os.Stderr, "bench: record machine: %v\n", err)
		}
	}
	os.Exit(dockertest.Main(m))
}

// machineInfo describes where the numbers come from.
func machineInfo() map[string]any {
	out := map[string]any{
		"machine.nproc": strconv.Itoa(runtime.NumCPU()),
		"machine.go":    runtime.Version(),
		"machine.date":  time.Now().UTC().Format(time.RFC3339),
	}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				out["machine.cpu"] = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) >= 2 && f[0] == "MemTotal:" {
				kb, _ := strconv.ParseFloat(f[1], 64)
				out["machine.memory"] = fmt.Sprintf("%.1f GiB", kb/(1<<20))
			}
		}
	}
	if cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation()); err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if v, err := cli.ServerVersion(ctx); err == nil {
			out["machine.docker_server"] = fmt.Sprintf("Docker Engine %s (API %s), %s", v.Version, v.APIVersion, v.Os+"/"+v.Arch)
		}
		cancel()
		cli.Close()
	}
	return out
}

// record writes kv to the results file and fails b when it cannot.
func record(b testing.TB, kv map[string]any) {
	b.Helper()
	if err := Record(kv); err != nil {
		b.Fatalf("record results: %v", err)
	}
}

// raiseNoFile lifts the soft limit on open files to the hard limit: the
// scale benchmark holds a socket per agent on each side.
func raiseNoFile() (uint64, error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, err
	}
	if rl.Cur < rl.Max {
		rl.Cur = rl.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
			return 0, err
		}
	}
	return rl.Cur, nil
}

func mustRead(b testing.TB, path string) []byte {
	b.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		dockertest.Unavailable(b, "%s: %v", path, err)
	}
	return data
}

// benchEngine readies this engine for a benchmark: swarm mode, a run id
// whose services and containers are removed when the benchmark ends, the
// busybox image. It returns the client, this node's id, the run id and the
// image.
func benchEngine(b *testing.B) (cli *client.Client, node, runID, image string) {
	b.Helper()
	cli = dockertest.Client(b)
	dockertest.Swarm(b, cli)
	info, err := cli.Info(dockertest.Context(b, 30*time.Second))
	if err != nil {
		b.Fatal(err)
	}
	runID = dockertest.ID(b)
	dockertest.Cleanup(b, cli, runID)
	return cli, info.Swarm.NodeID, runID, dockertest.EnsureBusybox(b, cli)
}

// childCommand is this test binary run again as the other side of a
// benchmark (TestMain: envChild is kind), with env added.
func childCommand(b *testing.B, kind string, env ...string) *exec.Cmd {
	b.Helper()
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$", "-test.bench=^$")
	cmd.Env = append(append(os.Environ(), envChild+"="+kind, EnvOut+"="), env...)
	return cmd
}

// stopChild closes a child's standard input (once: *stdin becomes nil),
// its signal to stop, and waits until done is closed, killing it after
// 30 s. It reports whether the child stopped of itself.
func stopChild(b *testing.B, name string, cmd *exec.Cmd, stdin *io.WriteCloser, done <-chan struct{}) bool {
	if *stdin != nil {
		(*stdin).Close()
		*stdin = nil
	}
	select {
	case <-done:
		return true
	case <-time.After(30 * time.Second):
		cmd.Process.Signal(syscall.SIGKILL)
		<-done
		b.Errorf("%s process did not stop; killed", name)
		return false
	}
}

// childStart is how a benchmark's child process begins: the count it was
// given in env, with the open-file limit raised; 0, said on standard
// error, when the count is not a positive number.
func childStart(who, env string) int {
	n, err := strconv.Atoi(os.Getenv(env))
	if err != nil || n <= 0 {
		fmt.Fprintln(os.Stderr, who+": bad", env)
		return 0
	}
	if _, err := raiseNoFile(); err != nil {
		fmt.Fprintln(os.Stderr, who+": raise open-file limit:", err)
	}
	return n
}
