//go:build linux

package forgexec

// These tests run real processes through Runner.Run in the test process. Run
// reaps every child of the process while it is active, so none of these
// tests (nor any other test of this package that starts processes) may use
// t.Parallel.

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func needShell(t *testing.T) {
	t.Helper()
	if isExecutable("/bin/sh") != nil {
		t.Skip("no /bin/sh on this host")
	}
}

// runSpec runs spec with r, its output captured in one buffer, and fails the
// test if Run has not returned within a generous deadline.
func runSpec(t *testing.T, r Runner, spec *Spec) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var buf bytes.Buffer
	r.Stdout, r.Stderr = &buf, &buf
	code := r.Run(ctx, spec)
	if ctx.Err() != nil {
		t.Fatalf("Run did not finish within the deadline; output:\n%s", buf.String())
	}
	return code, buf.String()
}

func newSpec(t *testing.T, cmds ...string) *Spec {
	return &Spec{Version: 1, Commands: cmds, Workdir: t.TempDir()}
}

// waitFor polls cond every 10 ms until it holds or d has passed.
func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if cond() {
			return true
		}
		select {
		case <-deadline.C:
			return cond()
		case <-tick.C:
		}
	}
}

// running tells whether a process with this exact command line (its
// arguments each ended by NUL) runs on the machine.
func running(cmdline string) bool {
	dirs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, d := range dirs {
		if b, err := os.ReadFile(d); err == nil && string(b) == cmdline {
			return true
		}
	}
	return false
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func TestRunPassing(t *testing.T) {
	needShell(t)
	spec := newSpec(t, "echo two", "echo three >&2", "echo 'four  five'")
	spec.Setup = []string{"echo one"}
	code, out := runSpec(t, Runner{}, spec)
	if code != 0 {
		t.Fatalf("code %d, output:\n%s", code, out)
	}
	want := "+ echo one\none\n+ echo two\ntwo\n+ echo three >&2\nthree\n+ echo 'four  five'\nfour  five\n"
	if out != want {
		t.Fatalf("output:\n%q\nwant:\n%q", out, want)
	}
}

func TestRunStopsAtFirstFailure(t *testing.T) {
	needShell(t)
	spec := newSpec(t, "echo a", "exit 3", "echo never")
	spec.Setup = []string{"echo setup"}
	code, out := runSpec(t, Runner{}, spec)
	if code != 3 {
		t.Errorf("code %d, want 3", code)
	}
	if strings.Contains(out, "never") {
		t.Errorf("a command after the failure ran:\n%s", out)
	}

	// A failing setup command stops the build before the commands.
	spec = newSpec(t, "echo never")
	spec.Setup = []string{"exit 4"}
	code, out = runSpec(t, Runner{}, spec)
	if code != 4 || strings.Contains(out, "never") {
		t.Errorf("failing setup: code %d, output:\n%s", code, out)
	}
}

func TestRunExitCodes(t *testing.T) {
	needShell(t)
	for _, tc := range []struct {
		name, cmd string
		want      int
	}{
		{"missing program", "forgexec-no-such-program", 127},
		{"not executable", "./plain.txt", 126},
		{"killed by SIGKILL", "kill -9 $$", 128 + 9},
		{"killed by SIGTERM", "kill -TERM $$", 128 + 15},
		{"exit code", "exit 42", 42},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := newSpec(t, tc.cmd)
			if err := os.WriteFile(filepath.Join(spec.Workdir, "plain.txt"), []byte("echo hi\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			code, out := runSpec(t, Runner{}, spec)
			if code != tc.want {
				t.Errorf("code %d, want %d; output:\n%s", code, tc.want, out)
			}
		})
	}
}

func TestRunEnv(t *testing.T) {
	needShell(t)
	t.Setenv("FORGE_BUILD_ID", "from-container")
	t.Setenv("FORGEXEC_TEST_BASE", "base")
	t.Setenv("FORGEXEC_TEST_OVER", "container")
	t.Setenv("FORGE_ACTION", "") // restored after the test
	os.Unsetenv("FORGE_ACTION")
	spec := newSpec(t, `echo "$FOO|$FORGEXEC_TEST_BASE|$FORGEXEC_TEST_OVER|$FORGE_ACTION|$FORGE_BUILD_ID"`)
	spec.Env = map[string]string{"FOO": "bar baz", "FORGEXEC_TEST_OVER": "spec"}
	spec.Action, spec.BuildID = "execute", "from-spec"
	code, out := runSpec(t, Runner{}, spec)
	if code != 0 {
		t.Fatalf("code %d:\n%s", code, out)
	}
	// The container's FORGE_BUILD_ID wins over the spec's; FORGE_ACTION
	// is missing from the container, so the spec's is added.
	if want := "bar baz|base|spec|execute|from-container\n"; !strings.HasSuffix(out, want) {
		t.Fatalf("output %q, want it to end with %q", out, want)
	}
}

func TestBuildEnv(t *testing.T) {
	got := buildEnv([]string{"A=1", "B=2", "A=3", "junk"}, map[string]string{"C": "4", "B": "5"}, "act", "")
	want := []string{"A=3", "B=5", "C=4", "FORGE_ACTION=act"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("got %q, want %q", got, want)
	}
}

func TestRunWorkdir(t *testing.T) {
	needShell(t)
	dir := filepath.Join(t.TempDir(), "a", "b")
	spec := &Spec{Version: 1, Commands: []string{"pwd", "touch made-here"}, Workdir: dir}
	code, out := runSpec(t, Runner{}, spec)
	if code != 0 {
		t.Fatalf("code %d:\n%s", code, out)
	}
	if !strings.Contains(out, "\n"+dir+"\n") {
		t.Errorf("pwd did not print %s:\n%s", dir, out)
	}
	fi, err := os.Stat(dir)
	if err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("work directory: %v, %v", fi, err)
	}
	if !exists(filepath.Join(dir, "made-here")) {
		t.Error("command did not run in the work directory")
	}
}

func TestRunInvalidSpec(t *testing.T) {
	code, out := runSpec(t, Runner{}, &Spec{Version: 1})
	if code != ExitUsage || !strings.Contains(out, "commands: at least one") {
		t.Fatalf("code %d, output %q", code, out)
	}
}

func TestRunNoShell(t *testing.T) {
	if _, _, err := lookPath("printf", "/", DefaultPath); err != nil {
		t.Skip("no printf program on this host")
	}
	r := Runner{NoShell: true}

	spec := newSpec(t, `printf "%s|" 'a b' c "" $HOME 'x;y'`)
	code, out := runSpec(t, r, spec)
	if code != 0 {
		t.Fatalf("code %d:\n%s", code, out)
	}
	if want := "a b|c||$HOME|x;y|"; !strings.HasSuffix(out, want) {
		t.Errorf("output %q, want it to end with %q", out, want)
	}

	// PATH comes from the command's environment, spec.Env included.
	bin := t.TempDir()
	if err := os.WriteFile(filepath.Join(bin, "forgexec-hello"), []byte("#!/bin/sh\necho hello \"$@\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	spec = newSpec(t, "forgexec-hello world")
	spec.Env = map[string]string{"PATH": bin + ":/usr/bin:/bin"}
	if isExecutable("/bin/sh") == nil {
		code, out = runSpec(t, r, spec)
		if code != 0 || !strings.HasSuffix(out, "hello world\n") {
			t.Errorf("PATH from spec: code %d, output %q", code, out)
		}
	}

	for _, tc := range []struct {
		name, cmd string
		want      int
		msg       string
	}{
		{"not found", "forgexec-no-such-program x", 127, "forgexec: forgexec-no-such-program: command not found"},
		{"path not found", "./missing", 127, "forgexec: ./missing: no such file or directory"},
		{"not executable", "./plain.txt", 126, "permission denied"},
		{"directory", "./sub", 126, "is a directory"},
		{"split error", "printf 'oops", 2, "unterminated single quote"},
		{"exit code", "false", 1, ""},
		{"relative path", "./hello.sh", 0, "hi from script"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := newSpec(t, tc.cmd)
			os.WriteFile(filepath.Join(spec.Workdir, "plain.txt"), []byte("x"), 0o644)
			os.WriteFile(filepath.Join(spec.Workdir, "hello.sh"), []byte("#!/bin/sh\necho hi from script\n"), 0o755)
			os.Mkdir(filepath.Join(spec.Workdir, "sub"), 0o755)
			if tc.name == "relative path" && isExecutable("/bin/sh") != nil {
				t.Skip("no /bin/sh for the script")
			}
			code, out := runSpec(t, r, spec)
			if code != tc.want || !strings.Contains(out, tc.msg) {
				t.Errorf("code %d (want %d), output %q (want %q)", code, tc.want, out, tc.msg)
			}
		})
	}
}

func TestLookPathDeniedThenFound(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	os.WriteFile(filepath.Join(a, "tool"), []byte("x"), 0o644)
	os.WriteFile(filepath.Join(b, "tool"), []byte("x"), 0o755)
	// Like bash, a non-executable match does not hide a later good one.
	p, _, err := lookPath("tool", "/", a+":"+b)
	if err != nil || p != filepath.Join(b, "tool") {
		t.Fatalf("got %q, %v", p, err)
	}
	_, code, err := lookPath("tool", "/", a)
	if code != 126 || err == nil {
		t.Fatalf("only a non-executable match: code %d, err %v", code, err)
	}
	// An empty PATH entry is the work directory.
	p, _, err = lookPath("tool", b, ":/nonexistent")
	if err != nil || p != filepath.Join(b, "tool") {
		t.Fatalf("empty entry: got %q, %v", p, err)
	}
}

func TestRunShellOverride(t *testing.T) {
	needShell(t)
	// An explicit shell that does not exist: the command cannot run.
	code, out := runSpec(t, Runner{Shell: "/nonexistent/sh"}, newSpec(t, "true"))
	if code != 127 || !strings.Contains(out, "/nonexistent/sh") {
		t.Fatalf("code %d, output %q", code, out)
	}
}

// TestRunCancel: cancelling ctx stops a command that ignores SIGTERM with
// SIGKILL after KillGrace, and no later command runs.
func TestRunCancel(t *testing.T) {
	needShell(t)
	spec := newSpec(t, "trap '' TERM; touch ready; sleep 30", "echo never")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		waitFor(10*time.Second, func() bool { return exists(filepath.Join(spec.Workdir, "ready")) })
		cancel()
	}()
	var buf bytes.Buffer
	r := Runner{Stdout: &buf, Stderr: &buf, KillGrace: 200 * time.Millisecond}
	start := time.Now()
	code := r.Run(ctx, spec)
	took := time.Since(start)
	out := buf.String()
	if code != 143 {
		t.Errorf("code %d, want 143", code)
	}
	if !strings.Contains(out, "forgexec: cancelled, stopping") || !strings.Contains(out, "sending SIGKILL") {
		t.Errorf("output:\n%s", out)
	}
	if strings.Contains(out, "never") {
		t.Errorf("a later command ran:\n%s", out)
	}
	if took > 10*time.Second {
		t.Errorf("Run took %v", took)
	}
}

// TestRunSignal sends SIGINT to the test process while a command runs:
// Run forwards it to the command and returns 130.
func TestRunSignal(t *testing.T) {
	needShell(t)
	// An odd duration names this sleep among the machine's processes.
	spec := newSpec(t, "touch ready; sleep 30.017", "echo never")
	done := make(chan struct{})
	defer close(done)
	go func() {
		// Run has registered for SIGINT once its first command runs; the
		// signal goes once sleep itself runs, not while the shell is
		// between touch and sleep (where it raced, now and then).
		if waitFor(10*time.Second, func() bool {
			return exists(filepath.Join(spec.Workdir, "ready")) && running("sleep\x0030.017\x00")
		}) {
			syscall.Kill(os.Getpid(), syscall.SIGINT)
		}
	}()
	code, out := runSpec(t, Runner{KillGrace: 5 * time.Second}, spec)
	if code != 130 {
		t.Errorf("code %d, want 130", code)
	}
	if !strings.Contains(out, "forgexec: received interrupt, stopping") || strings.Contains(out, "never") {
		t.Errorf("output:\n%s", out)
	}
	if strings.Contains(out, "SIGKILL") {
		t.Errorf("sleep should have died of SIGINT without SIGKILL:\n%s", out)
	}
}

func TestRunTimeout(t *testing.T) {
	needShell(t)
	spec := newSpec(t, "sleep 30", "echo never")
	spec.Timeout = Duration(300 * time.Millisecond)
	start := time.Now()
	code, out := runSpec(t, Runner{}, spec)
	if code != ExitTimeout {
		t.Errorf("code %d, want 124", code)
	}
	if !strings.Contains(out, "forgexec: timeout after 300ms, stopping") || strings.Contains(out, "never") {
		t.Errorf("output:\n%s", out)
	}
	t.Logf("timeout build took %v", time.Since(start))

	// The timeout spans setup and commands, and a stop between commands
	// prevents the next one from starting.
	spec = newSpec(t, "sleep 0.2", "sleep 0.2", "echo never")
	spec.Setup = []string{"sleep 0.2"}
	spec.Timeout = Duration(500 * time.Millisecond)
	code, out = runSpec(t, Runner{}, spec)
	if code != ExitTimeout || strings.Contains(out, "never") {
		t.Errorf("timeout across commands: code %d, output:\n%s", code, out)
	}
}

// TestRunBackgroundProcesses: a daemon started by setup survives into the
// commands, and is killed when the build ends.
func TestRunBackgroundProcesses(t *testing.T) {
	needShell(t)
	spec := newSpec(t, `kill -0 "$(cat daemon.pid)"`, `sleep 30 & echo $! > last.pid`)
	spec.Setup = []string{`sleep 30 & echo $! > daemon.pid`}
	start := time.Now()
	code, out := runSpec(t, Runner{}, spec)
	if code != 0 {
		t.Fatalf("code %d:\n%s", code, out)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("Run waited for the background sleep: %v", took)
	}
	for _, f := range []string{"daemon.pid", "last.pid"} {
		b, err := os.ReadFile(filepath.Join(spec.Workdir, f))
		if err != nil {
			t.Fatal(err)
		}
		pid := strings.TrimSpace(string(b))
		// Killed and reaped: its /proc entry is gone (a zombie keeps one).
		if exists("/proc/" + pid) {
			st, _ := os.ReadFile("/proc/" + pid + "/stat")
			t.Errorf("%s: process %s still exists after Run: %s", f, pid, st)
		}
	}
}

// TestRunReapsOrphans: an orphaned grandchild is reparented to the runner
// (a subreaper when not PID 1) and reaped while the build goes on. The
// command itself waits for the grandchild's /proc entry to disappear, which
// happens only once it has been reaped; without reaping the build would hang
// until the test's deadline.
func TestRunReapsOrphans(t *testing.T) {
	needShell(t)
	cmd := `(sleep 0.2 & echo $! > gc.pid); gc=$(cat gc.pid); ` +
		`ppid=$(awk '/^PPid:/ {print $2}' /proc/$gc/status); echo "ppid=$ppid"; ` +
		`while [ -e /proc/$gc ]; do sleep 0.02; done; echo reaped`
	if _, _, err := lookPath("awk", "/", DefaultPath); err != nil {
		cmd = `(sleep 0.2 & echo $! > gc.pid); gc=$(cat gc.pid); while [ -e /proc/$gc ]; do sleep 0.02; done; echo reaped`
	}
	spec := newSpec(t, cmd)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var buf bytes.Buffer
	code := (&Runner{Stdout: &buf, Stderr: &buf}).Run(ctx, spec)
	out := buf.String()
	if code != 0 || !strings.Contains(out, "\nreaped\n") {
		t.Fatalf("code %d (143 means the orphan was never reaped), output:\n%s", code, out)
	}
	if strings.Contains(out, "ppid=") && !strings.Contains(out, "ppid="+strconv.Itoa(os.Getpid())+"\n") {
		t.Errorf("orphan was not reparented to the runner (pid %d):\n%s", os.Getpid(), out)
	}
	if zs := zombieChildren(os.Getpid()); len(zs) > 0 {
		t.Errorf("zombie children left: %v", zs)
	}
}

// TestRunNoGoroutineLeak: every goroutine Run starts (output copies) has
// ended when it returns, also when a process outside the build's process
// groups keeps an output pipe open.
func TestRunNoGoroutineLeak(t *testing.T) {
	needShell(t)
	var buf, ebuf bytes.Buffer
	r := &Runner{Stdout: &buf, Stderr: &ebuf, KillGrace: 100 * time.Millisecond}
	ctx := context.Background()
	r.Run(ctx, newSpec(t, "true")) // starts os/signal's own goroutine, once per process
	before := runtime.NumGoroutine()

	specs := []*Spec{
		newSpec(t, "echo out; echo err >&2"),
		newSpec(t, "exit 5"),
		newSpec(t, "forgexec-no-such-program"),
		func() *Spec { s := newSpec(t, "sleep 30"); s.Timeout = Duration(50 * time.Millisecond); return s }(),
	}
	if _, _, err := lookPath("setsid", "/", DefaultPath); err == nil {
		// setsid escapes the build's process groups, so the pipe stays
		// open; Run must give up on it after a while.
		s := newSpec(t, `setsid sh -c 'echo $$ > escaped.pid; exec sleep 3' & `+
			`while [ ! -s escaped.pid ]; do sleep 0.01; done`)
		specs = append(specs, s)
		t.Cleanup(func() {
			b, _ := os.ReadFile(filepath.Join(s.Workdir, "escaped.pid"))
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				syscall.Kill(pid, syscall.SIGKILL)
				var ws syscall.WaitStatus
				syscall.Wait4(pid, &ws, 0, nil) // it was reparented to us
			}
		})
	}
	for _, s := range specs {
		start := time.Now()
		r.Run(ctx, s)
		t.Logf("%q took %v", s.Commands[0], time.Since(start))
	}
	var after int
	ok := waitFor(2*time.Second, func() bool { after = runtime.NumGoroutine(); return after <= before })
	if !ok {
		stacks := make([]byte, 1<<20)
		stacks = stacks[:runtime.Stack(stacks, true)]
		t.Fatalf("goroutines: %d before, %d after\n%s", before, after, stacks)
	}
	if !strings.Contains(buf.String(), "out\n") || !strings.Contains(ebuf.String(), "err\n") {
		t.Errorf("stdout %q, stderr %q", buf.String(), ebuf.String())
	}
}

// zombieChildren lists the pids of zombie processes whose parent is ppid.
func zombieChildren(ppid int) []int {
	var zs []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...; comm may contain spaces and parens.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) >= 2 && f[0] == "Z" && f[1] == strconv.Itoa(ppid) {
			zs = append(zs, pid)
		}
	}
	return zs
}
