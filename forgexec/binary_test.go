//go:build linux

package forgexec

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestBinary builds the real executor (static, as the agent ships it) and
// runs it as a subprocess with FORGEXEC_SPEC pointing at a spec file.
func TestBinary(t *testing.T) {
	needShell(t)
	if testing.Short() {
		t.Skip("builds the binary; skipped with -short")
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go tool to build the binary")
	}
	bin := filepath.Join(t.TempDir(), "forgexec")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, goTool, "build", "-trimpath", "-ldflags=-s -w", "-o", bin,
		"github.com/forge-ci/forge/cmd/forgexec")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	if fi, err := os.Stat(bin); err == nil {
		t.Logf("binary size %d bytes", fi.Size())
	}

	t.Run("ExitCode", func(t *testing.T) { testBinaryExitCode(t, bin) })
	t.Run("BadSpec", func(t *testing.T) { testBinaryBadSpec(t, bin) })
	t.Run("SIGTERM", func(t *testing.T) { testBinarySIGTERM(t, bin) })
	t.Run("Timeout", func(t *testing.T) { testBinaryTimeout(t, bin) })
	t.Run("ReapsOrphans", func(t *testing.T) { testBinaryReapsOrphans(t, bin) })
	t.Run("Secrets", func(t *testing.T) { testBinarySecrets(t, bin) })
}

// testBinarySecrets: the executor gives the secrets file's values to the
// commands and removes the file before the first one runs; it does not
// run at all with a file it cannot read.
func testBinarySecrets(t *testing.T, bin string) {
	path := writeSecrets(t, map[string][]byte{"DEPLOY_TOKEN": []byte("tok en")})
	spec := newSpec(t, `echo "[$DEPLOY_TOKEN]"`, `test ! -e "$FORGEXEC_SECRETS"`)
	cmd, stdout, stderr := forgexecCmd(t, bin, spec)
	cmd.Env = append(cmd.Env, "FORGEXEC_SECRETS="+path)
	if code := exitCodeOf(t, cmd.Run()); code != 0 || !strings.Contains(stdout.String(), "[tok en]") {
		t.Errorf("exit code %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	bad := filepath.Join(t.TempDir(), "secrets.json")
	os.WriteFile(bad, []byte("{"), 0o400)
	cmd, stdout, stderr = forgexecCmd(t, bin, newSpec(t, "echo ran"))
	cmd.Env = append(cmd.Env, "FORGEXEC_SECRETS="+bad)
	if code := exitCodeOf(t, cmd.Run()); code != ExitInternal || strings.Contains(stdout.String(), "ran") || !strings.Contains(stderr.String(), "secrets") {
		t.Errorf("bad secrets file: exit code %d, stdout %q, stderr %q", code, stdout, stderr)
	}
}

// forgexecCmd prepares the binary with spec written to a file. The returned
// command is bound to a context that kills it after the test's deadline.
func forgexecCmd(t *testing.T, bin string, spec *Spec) (*exec.Cmd, *bytes.Buffer, *bytes.Buffer) {
	t.Helper()
	b, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	return forgexecCmdRaw(t, bin, b)
}

func forgexecCmdRaw(t *testing.T, bin string, spec []byte) (*exec.Cmd, *bytes.Buffer, *bytes.Buffer) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "build.json")
	if err := os.WriteFile(path, spec, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	cmd := exec.CommandContext(ctx, bin)
	cmd.Env = append(os.Environ(), "FORGEXEC_SPEC="+path)
	cmd.WaitDelay = 2 * time.Second // do not hang on a pipe held by a stray process
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	return cmd, &stdout, &stderr
}

func exitCodeOf(t *testing.T, err error) int {
	t.Helper()
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("run forgexec: %v", err)
	}
	return ee.ExitCode()
}

func testBinaryExitCode(t *testing.T, bin string) {
	spec := newSpec(t, "echo hello", "exit 7", "echo never")
	cmd, stdout, stderr := forgexecCmd(t, bin, spec)
	code := exitCodeOf(t, cmd.Run())
	if code != 7 {
		t.Errorf("exit code %d, want 7; stderr:\n%s", code, stderr)
	}
	if want := "+ echo hello\nhello\n+ exit 7\n"; stdout.String() != want {
		t.Errorf("stdout %q, want %q", stdout, want)
	}
}

func testBinaryBadSpec(t *testing.T, bin string) {
	cmd, _, stderr := forgexecCmdRaw(t, bin, []byte(`{"version":9,"commands":["true"]}`))
	code := exitCodeOf(t, cmd.Run())
	if code != 2 || !strings.Contains(stderr.String(), "unsupported version 9") {
		t.Errorf("exit code %d, stderr %q", code, stderr)
	}
}

// testBinarySIGTERM: forgexec forwards SIGTERM; the command ignores it, so it
// is killed after KillGrace, and forgexec exits with 143 soon after.
func testBinarySIGTERM(t *testing.T, bin string) {
	spec := newSpec(t, "trap '' TERM; touch ready; sleep 30", "echo never")
	cmd, stdout, stderr := forgexecCmd(t, bin, spec)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	if !waitFor(10*time.Second, func() bool { return exists(filepath.Join(spec.Workdir, "ready")) }) {
		t.Fatalf("command did not start; stderr:\n%s", stderr)
	}
	start := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	select {
	case err := <-exited:
		took := time.Since(start)
		t.Logf("forgexec exited %v after SIGTERM (requirement: < 2s)", took)
		if code := exitCodeOf(t, err); code != 143 {
			t.Errorf("exit code %d, want 143", code)
		}
		if took > 5*time.Second {
			t.Errorf("forgexec took %v to exit after SIGTERM", took)
		}
	case <-deadline.C:
		cmd.Process.Kill()
		<-exited
		t.Fatalf("forgexec still running 10s after SIGTERM; stderr:\n%s", stderr)
	}
	if !strings.Contains(stderr.String(), "forgexec: received terminated, stopping") {
		t.Errorf("stderr:\n%s", stderr)
	}
	if strings.Contains(stdout.String(), "never") {
		t.Errorf("a later command ran:\n%s", stdout)
	}
}

func testBinaryTimeout(t *testing.T, bin string) {
	spec := newSpec(t, "sleep 30")
	spec.Timeout = Duration(time.Second)
	cmd, _, stderr := forgexecCmd(t, bin, spec)
	start := time.Now()
	code := exitCodeOf(t, cmd.Run())
	t.Logf("timeout build took %v", time.Since(start))
	if code != 124 {
		t.Errorf("exit code %d, want 124", code)
	}
	if !strings.Contains(stderr.String(), "forgexec: timeout after 1s, stopping") {
		t.Errorf("stderr:\n%s", stderr)
	}
}

// testBinaryReapsOrphans: a grandchild orphaned by its parent is reparented
// to forgexec (a subreaper here, PID 1 in a container) and must be reaped
// when it exits, not left as a zombie. The build waits for a file from the
// test, so the check happens while forgexec is still running.
func testBinaryReapsOrphans(t *testing.T, bin string) {
	spec := newSpec(t,
		`(sleep 0.5 & echo $! > gc.tmp; mv gc.tmp gc.pid); `+
			`while [ ! -e release ]; do sleep 0.02; done`)
	cmd, _, stderr := forgexecCmd(t, bin, spec)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		os.WriteFile(filepath.Join(spec.Workdir, "release"), nil, 0o644)
		select {
		case err := <-exited:
			if code := exitCodeOf(t, err); code != 0 {
				t.Errorf("exit code %d; stderr:\n%s", code, stderr)
			}
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
			t.Errorf("forgexec did not exit after release")
		}
	}()

	var gc int
	if !waitFor(5*time.Second, func() bool {
		b, err := os.ReadFile(filepath.Join(spec.Workdir, "gc.pid"))
		if err != nil {
			return false
		}
		gc, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil
	}) {
		t.Fatalf("no grandchild pid; stderr:\n%s", stderr)
	}
	// While it sleeps, the orphan's parent must be forgexec; otherwise
	// it went to the host's init and this test would prove nothing. Its
	// subshell may still be exiting when gc.pid appears: wait for that.
	waitFor(time.Second, func() bool { ppid, _ := procParent(gc); return ppid == cmd.Process.Pid })
	if ppid, state := procParent(gc); ppid != cmd.Process.Pid {
		t.Fatalf("orphan %d has parent %d (state %s), want forgexec %d", gc, ppid, state, cmd.Process.Pid)
	}
	// Once it exits, forgexec must reap it: its /proc entry disappears.
	// Unreaped, it would stay there as a zombie (state Z).
	if !waitFor(5*time.Second, func() bool { return !exists("/proc/" + strconv.Itoa(gc)) }) {
		ppid, state := procParent(gc)
		t.Errorf("orphan %d not reaped: state %s, parent %d", gc, state, ppid)
	}
	if zs := zombieChildren(cmd.Process.Pid); len(zs) > 0 {
		t.Errorf("zombie children of forgexec: %v", zs)
	}
}

// procParent returns the parent pid and state of pid from /proc, or 0 and
// "gone".
func procParent(pid int) (int, string) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, "gone"
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 2 {
		return 0, "unknown"
	}
	ppid, _ := strconv.Atoi(f[1])
	return ppid, f[0]
}
