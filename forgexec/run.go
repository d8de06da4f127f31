//go:build linux

package forgexec

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"reflect"
	"runtime"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"
)

// DefaultKillGrace is how long a stopped command's process group has between
// SIGTERM and SIGKILL. It is short on purpose: docker stop and swarm give a
// container 10 s by default, and forgexec must be gone well before that.
const DefaultKillGrace = 1500 * time.Millisecond

// DefaultPath is the PATH used to find programs in no-shell mode when the
// command's environment has no PATH (or an empty one).
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

const (
	// reapWait bounds the wait for processes that were sent SIGKILL at the
	// end of a build (and for a command that does not die after SIGKILL,
	// such as one stuck in uninterruptible sleep). forgexec exits anyway
	// after it; as PID 1 its exit takes the rest of the container with it.
	reapWait = 250 * time.Millisecond
	// drainWait bounds the wait for output still in a pipe (only when an
	// output is not an *os.File) once every known process is gone; a
	// process that left our process groups could hold the pipe open forever.
	drainWait = 500 * time.Millisecond

	prSetChildSubreaper = 36 // PR_SET_CHILD_SUBREAPER from <linux/prctl.h>
	prGetChildSubreaper = 37 // PR_GET_CHILD_SUBREAPER
)

// runMu serialises Run calls: a run reaps every child of the process, so two
// runs at once would steal each other's exit statuses.
var runMu sync.Mutex

// Runner runs a build spec. The zero value is ready to use and behaves like
// the executor binary: output to os.Stdout and os.Stderr, /bin/sh when the
// image has one.
//
// While Run is active it owns every child process of the calling process: it
// reaps them all with wait4(-1), as PID 1 must. Do not start other child
// processes (os/exec) in the same process while Run is running; they would
// lose their exit status. Calls to Run are serialised.
type Runner struct {
	// Stdout and Stderr receive the commands' output and forgexec's own
	// messages ("+ command" headers go to Stdout, errors to Stderr). When
	// they are *os.File (the real binary) the commands write to those file
	// descriptors directly, with no pipe and no buffering; otherwise output
	// goes through a pipe that is copied to the writer (one pipe when both
	// are the same writer, so the order is kept). nil means os.Stdout or
	// os.Stderr.
	Stdout, Stderr io.Writer

	// Shell runs each command as `<Shell> -c <command>`. Empty means
	// auto-detect: "/bin/sh" if it exists and is executable, otherwise
	// no-shell mode.
	Shell string

	// NoShell forces no-shell mode even when a shell exists: each command
	// is split with SplitWords and executed directly, the program found on
	// the PATH of the command's environment.
	NoShell bool

	// KillGrace is how long a process group has to exit after SIGTERM (on
	// a signal, cancellation or timeout) before it gets SIGKILL. Zero or
	// negative means DefaultKillGrace (1.5 s).
	KillGrace time.Duration

	// Secrets are given to every command as environment variables, over
	// the spec's Env ([TakeSecrets] reads them). They are never printed.
	Secrets map[string]string
}

// Run runs spec's setup commands, then its commands, in order, stopping at
// the first one that fails, and returns the code to exit with (see the
// package documentation).
//
// Each command runs in its own process group in the spec's work directory
// (created if missing), with the process environment overlaid with spec.Env,
// plus FORGE_ACTION and FORGE_BUILD_ID from the spec when not already set.
// Its stdin is /dev/null.
//
// SIGTERM and SIGINT received while Run is active are forwarded to the
// running command's process group, which gets SIGKILL if it has not exited
// within KillGrace; no further commands run and Run returns 128+signal.
// Cancelling ctx does the same as SIGTERM (returning 143). The spec's
// timeout does the same with exit code 124.
//
// When the build ends, whatever is left in the process groups of its commands
// (daemons started in the background) is killed, so that the container can
// exit. Background processes of one command do survive into the following
// commands, so setup may start a service that the commands use.
//
// When the process is not PID 1, Run makes it a child subreaper for its
// duration, so orphaned grandchildren are reparented to it and reaped exactly
// as they would be by PID 1.
func (r *Runner) Run(ctx context.Context, spec *Spec) int {
	runMu.Lock()
	defer runMu.Unlock()

	stderr := orDefault(r.Stderr, os.Stderr)
	if err := spec.Validate(); err != nil {
		fmt.Fprintf(stderr, "forgexec: invalid spec: %v\n", err)
		return ExitUsage
	}

	b := &build{
		dir:     spec.WorkdirOrDefault(),
		env:     buildEnv(os.Environ(), overlay(spec.Env, r.Secrets), spec.Action, spec.BuildID),
		shell:   r.shell(),
		grace:   r.KillGrace,
		timeout: time.Duration(spec.Timeout),
	}
	if b.grace <= 0 {
		b.grace = DefaultKillGrace
	}

	// Register for SIGCHLD before the first child is started so that no
	// exit can be missed. Signals are merged, so each SIGCHLD is answered
	// by reaping until nothing is left.
	b.chld = make(chan os.Signal, 1)
	signal.Notify(b.chld, syscall.SIGCHLD)
	defer signal.Stop(b.chld)
	b.sigs = make(chan os.Signal, 4)
	signal.Notify(b.sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(b.sigs)

	if os.Getpid() != 1 {
		if restore, err := becomeSubreaper(); err != nil {
			fmt.Fprintf(stderr, "forgexec: cannot become a child subreaper, orphans will not be reaped: %v\n", err)
		} else {
			defer restore()
		}
	}

	out, err := openOutputs(orDefault(r.Stdout, os.Stdout), stderr)
	if err != nil {
		fmt.Fprintf(stderr, "forgexec: %v\n", err)
		return ExitInternal
	}
	// Runs after killAll below (defers run last-in first-out), so output
	// written by processes as they die is still copied.
	defer out.close()
	b.out, b.errOut = out.stdout, out.stderr

	if b.stdin, err = os.Open(os.DevNull); err != nil {
		fmt.Fprintf(b.errOut, "forgexec: open stdin: %v\n", err)
		return ExitInternal
	}
	defer b.stdin.Close()

	if err := os.MkdirAll(b.dir, 0o755); err != nil {
		fmt.Fprintf(b.errOut, "forgexec: create work directory: %v\n", err)
		return ExitInternal
	}

	if b.timeout > 0 {
		t := time.NewTimer(b.timeout)
		defer t.Stop()
		b.deadline = t.C
	}
	b.done = ctx.Done()

	defer b.killAll()
	for _, cmd := range append(append([]string(nil), spec.Setup...), spec.Commands...) {
		if b.checkStop() {
			return b.stopCode
		}
		fmt.Fprintf(b.out, "+ %s\n", cmd)
		code := b.runCommand(cmd)
		if b.stopCode != 0 {
			return b.stopCode
		}
		if code != 0 {
			return code
		}
	}
	return 0
}

func (r *Runner) shell() string {
	switch {
	case r.NoShell:
		return ""
	case r.Shell != "":
		return r.Shell
	case isExecutable("/bin/sh") == nil:
		return "/bin/sh"
	}
	return ""
}

// build is the state of one Run. All of it is used from Run's goroutine
// only: children are started and reaped there, which is what keeps the
// reaping loop from racing the start of a child.
type build struct {
	dir     string
	env     []string
	shell   string
	grace   time.Duration
	timeout time.Duration

	stdin, out, errOut *os.File

	chld     chan os.Signal // SIGCHLD
	sigs     chan os.Signal // SIGTERM, SIGINT
	deadline <-chan time.Time
	done     <-chan struct{} // ctx.Done(); nil once handled

	groups   []int // process group ids of the commands started so far
	stopCode int   // non-zero once the build is being stopped
}

// checkStop handles a stop request that arrived while no command ran and
// reports whether the build is stopping.
func (b *build) checkStop() bool {
	select {
	case s := <-b.sigs:
		b.onSignal(s.(syscall.Signal), 0)
	case <-b.done:
		b.onCancel(0)
	case <-b.deadline:
		b.onTimeout(0)
	default:
	}
	return b.stopCode != 0
}

func (b *build) onSignal(sig syscall.Signal, pgid int) bool {
	return b.stop(128+int(sig), fmt.Sprintf("received %v", sig), pgid, sig)
}

func (b *build) onCancel(pgid int) bool {
	b.done = nil // a closed channel would fire forever
	return b.stop(128+int(syscall.SIGTERM), "cancelled", pgid, syscall.SIGTERM)
}

func (b *build) onTimeout(pgid int) bool {
	b.deadline = nil
	return b.stop(ExitTimeout, fmt.Sprintf("timeout after %v", b.timeout), pgid, syscall.SIGTERM)
}

// stop records that the build stops with code, prints why, and sends sig to
// the process group pgid if there is one (pgid 0: no command is running).
// Only the first request counts; stop reports whether this was it.
func (b *build) stop(code int, why string, pgid int, sig syscall.Signal) bool {
	if b.stopCode != 0 {
		return false
	}
	b.stopCode = code
	fmt.Fprintf(b.errOut, "forgexec: %s, stopping\n", why)
	if pgid > 0 {
		_ = syscall.Kill(-pgid, sig)
	}
	return true
}

// runCommand starts one command and waits for it, handling signals, ctx and
// the timeout meanwhile. It returns the command's exit code; b.stopCode is
// set if the build was stopped.
func (b *build) runCommand(cmd string) int {
	path, argv, code := b.resolve(cmd)
	if code != 0 {
		return code
	}
	// Setpgid puts the command in its own process group so that signals
	// reach everything it started (pipelines, subshells) at once.
	// ForkExec returns only once the child has called exec (or failed to),
	// so the group exists when we signal it.
	pid, err := syscall.ForkExec(path, argv, &syscall.ProcAttr{
		Dir:   b.dir,
		Env:   b.env,
		Files: []uintptr{b.stdin.Fd(), b.out.Fd(), b.errOut.Fd()},
		Sys:   &syscall.SysProcAttr{Setpgid: true},
	})
	runtime.KeepAlive(b.stdin)
	runtime.KeepAlive(b.out)
	runtime.KeepAlive(b.errOut)
	if err != nil {
		fmt.Fprintf(b.errOut, "forgexec: %s: %v\n", argv[0], err)
		if errors.Is(err, syscall.ENOENT) {
			return ExitNotFound
		}
		return ExitCannotExecute
	}
	b.groups = append(b.groups, pid)
	return b.wait(pid)
}

// resolve turns a command into the program path and argv to execute. A
// non-zero code means the command cannot run; the reason has been printed.
func (b *build) resolve(cmd string) (path string, argv []string, code int) {
	if b.shell != "" {
		return b.shell, []string{b.shell, "-c", cmd}, 0
	}
	words, err := SplitWords(cmd)
	if err != nil {
		fmt.Fprintf(b.errOut, "forgexec: %q: %v\n", cmd, err)
		return "", nil, ExitUsage
	}
	path, code, err = lookPath(words[0], b.dir, lookupEnv(b.env, "PATH"))
	if err != nil {
		fmt.Fprintf(b.errOut, "forgexec: %v\n", err)
		return "", nil, code
	}
	// argv[0] stays as written, as a shell would pass it.
	return path, words, 0
}

// wait waits for the command pid (also its process group id) to exit,
// reaping every other child (orphans reparented to us) on the way.
func (b *build) wait(pid int) int {
	var (
		grace, abandon   <-chan time.Time
		graceT, abandonT *time.Timer
	)
	defer func() {
		if graceT != nil {
			graceT.Stop()
		}
		if abandonT != nil {
			abandonT.Stop()
		}
	}()
	startGrace := func() {
		graceT = time.NewTimer(b.grace)
		grace = graceT.C
	}
	for {
		select {
		case <-b.chld:
			if ws, ok := reap(pid); ok {
				if b.stopCode != 0 {
					return b.stopCode
				}
				return exitCode(ws)
			}
		case s := <-b.sigs:
			if b.onSignal(s.(syscall.Signal), pid) {
				startGrace()
			}
		case <-b.done:
			if b.onCancel(pid) {
				startGrace()
			}
		case <-b.deadline:
			if b.onTimeout(pid) {
				startGrace()
			}
		case <-grace:
			grace = nil
			fmt.Fprintf(b.errOut, "forgexec: command still running %v after SIGTERM, sending SIGKILL\n", b.grace)
			_ = syscall.Kill(-pid, syscall.SIGKILL)
			abandonT = time.NewTimer(reapWait)
			abandon = abandonT.C
		case <-abandon:
			fmt.Fprintf(b.errOut, "forgexec: process %d did not exit after SIGKILL, giving up on it\n", pid)
			return b.stopCode
		}
	}
}

// killAll sends SIGKILL to the process groups of every command of the build
// and waits briefly for them to be gone, reaping them. It runs once the
// build is over: daemons left behind would otherwise keep the container (or
// an output pipe) alive.
func (b *build) killAll() {
	alive := func() bool {
		for _, g := range b.groups {
			// kill(-g, 0) succeeds while the group has members,
			// zombies included, so this also waits for the reaping.
			if syscall.Kill(-g, 0) == nil {
				return true
			}
		}
		return false
	}
	if !alive() {
		reap(0)
		return
	}
	for _, g := range b.groups {
		_ = syscall.Kill(-g, syscall.SIGKILL)
	}
	t := time.NewTimer(reapWait)
	defer t.Stop()
	for alive() {
		select {
		case <-b.chld:
			reap(0)
		case <-t.C:
			reap(0)
			return
		}
	}
}

// reap collects every child that has exited without blocking, and returns
// the status of want if it was among them. Others (orphans reparented to us)
// are discarded: collecting them is the point.
func reap(want int) (status syscall.WaitStatus, found bool) {
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if err != nil || pid <= 0 { // ECHILD: no children; 0: none exited
			return status, found
		}
		if pid == want {
			status, found = ws, true
		}
	}
}

// exitCode maps a wait status to a shell-style exit code.
func exitCode(ws syscall.WaitStatus) int {
	switch {
	case ws.Exited():
		return ws.ExitStatus()
	case ws.Signaled():
		return 128 + int(ws.Signal())
	}
	return ExitInternal // stopped or continued: not requested, not expected
}

// becomeSubreaper marks the process as a child subreaper, so that orphaned
// descendants are reparented to it instead of to PID 1, and returns a
// function that restores the previous setting.
func becomeSubreaper() (restore func(), err error) {
	var prev int32
	if _, _, e := syscall.RawSyscall(syscall.SYS_PRCTL, prGetChildSubreaper, uintptr(unsafe.Pointer(&prev)), 0); e != 0 {
		return nil, fmt.Errorf("prctl(PR_GET_CHILD_SUBREAPER): %w", e)
	}
	if _, _, e := syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0); e != 0 {
		return nil, fmt.Errorf("prctl(PR_SET_CHILD_SUBREAPER): %w", e)
	}
	return func() {
		if prev == 0 {
			_, _, _ = syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 0, 0)
		}
	}, nil
}

// lookPath finds the program for name the way a shell does: a name with a
// slash is a path (relative to dir), anything else is searched in pathList.
// It returns the path, or an exit code (126 or 127) and an error to print.
func lookPath(name, dir, pathList string) (string, int, error) {
	if strings.Contains(name, "/") {
		p := name
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		if err := isExecutable(p); err != nil {
			if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
				return "", ExitNotFound, fmt.Errorf("%s: no such file or directory", name)
			}
			return "", ExitCannotExecute, fmt.Errorf("%s: %v", name, err)
		}
		return p, 0, nil
	}
	if pathList == "" {
		pathList = DefaultPath
	}
	var denied error
	for _, d := range filepath.SplitList(pathList) {
		if d == "" {
			d = "." // POSIX: an empty PATH entry is the current directory
		}
		if !filepath.IsAbs(d) {
			d = filepath.Join(dir, d)
		}
		p := filepath.Join(d, name)
		err := isExecutable(p)
		if err == nil {
			return p, 0, nil
		}
		// Like bash, keep looking after a file that cannot be executed,
		// and report it only if nothing better turns up.
		if errors.Is(err, fs.ErrPermission) && denied == nil {
			denied = fmt.Errorf("%s: %v", p, err)
		}
	}
	if denied != nil {
		return "", ExitCannotExecute, denied
	}
	return "", ExitNotFound, fmt.Errorf("%s: command not found", name)
}

var errIsDir = errors.New("is a directory")

// isExecutable reports why path cannot be executed, or nil. A regular file
// without any execute bit gives an fs.ErrPermission error.
func isExecutable(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return errIsDir
	}
	if fi.Mode()&0o111 == 0 {
		return fmt.Errorf("permission denied: %w", fs.ErrPermission)
	}
	return nil
}

// buildEnv overlays extra on base (KEY=value entries; a later duplicate in
// base replaces an earlier one, as os/exec does) and adds
// FORGE_ACTION and FORGE_BUILD_ID when they are not set by either.
func buildEnv(base []string, extra map[string]string, action, buildID string) []string {
	env := make([]string, 0, len(base)+len(extra)+2)
	index := make(map[string]int, len(base)+len(extra)+2)
	set := func(k, v string) {
		kv := k + "=" + v
		if i, ok := index[k]; ok {
			env[i] = kv
			return
		}
		index[k] = len(env)
		env = append(env, kv)
	}
	for _, kv := range base {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			continue
		}
		set(k, v)
	}
	keys := make([]string, 0, len(extra))
	for k := range extra {
		keys = append(keys, k)
	}
	sort.Strings(keys) // a stable order makes builds reproducible
	for _, k := range keys {
		set(k, extra[k])
	}
	for _, kv := range [][2]string{{"FORGE_ACTION", action}, {"FORGE_BUILD_ID", buildID}} {
		if _, ok := index[kv[0]]; !ok && kv[1] != "" {
			set(kv[0], kv[1])
		}
	}
	return env
}

// overlay is a copy of env with over's entries set on top; env itself
// when over is empty.
func overlay(env, over map[string]string) map[string]string {
	if len(over) == 0 {
		return env
	}
	out := make(map[string]string, len(env)+len(over))
	for k, v := range env {
		out[k] = v
	}
	for k, v := range over {
		out[k] = v
	}
	return out
}

// lookupEnv returns the value of key in env, "" if absent.
func lookupEnv(env []string, key string) string {
	for i := len(env) - 1; i >= 0; i-- {
		if k, v, ok := strings.Cut(env[i], "="); ok && k == key {
			return v
		}
	}
	return ""
}

func orDefault(w io.Writer, def *os.File) io.Writer {
	if w == nil {
		return def
	}
	return w
}

// outputs are the files the commands write to: the caller's own files, or
// pipes copied to the caller's writers.
type outputs struct {
	stdout, stderr *os.File
	writeEnds      []*os.File // pipe ends we hand to children; closed first
	readEnds       []*os.File
	wg             sync.WaitGroup // copy goroutines
}

func openOutputs(stdout, stderr io.Writer) (*outputs, error) {
	o := &outputs{}
	var err error
	if o.stdout, err = o.file(stdout); err != nil {
		return nil, err
	}
	if sameWriter(stdout, stderr) {
		o.stderr = o.stdout
	} else if o.stderr, err = o.file(stderr); err != nil {
		o.close()
		return nil, err
	}
	return o, nil
}

// file returns w itself if it is an *os.File, else the write end of a pipe
// whose contents a goroutine copies to w.
func (o *outputs) file(w io.Writer) (*os.File, error) {
	if f, ok := w.(*os.File); ok {
		return f, nil
	}
	rd, wr, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("create output pipe: %w", err)
	}
	o.readEnds = append(o.readEnds, rd)
	o.writeEnds = append(o.writeEnds, wr)
	o.wg.Add(1)
	go func() {
		defer o.wg.Done()
		_, _ = io.Copy(w, rd)
	}()
	return wr, nil
}

// close closes our write ends and waits for the copies to reach the end of
// the pipes, at most drainWait; after that it closes the read ends, which
// stops the copies. Every goroutine has returned when close returns.
func (o *outputs) close() {
	for _, f := range o.writeEnds {
		f.Close()
	}
	done := make(chan struct{})
	go func() { o.wg.Wait(); close(done) }()
	t := time.NewTimer(drainWait)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	}
	for _, f := range o.readEnds {
		f.Close()
	}
	<-done
}

// sameWriter reports whether a and b are the same writer, without panicking
// on writers of a type that cannot be compared.
func sameWriter(a, b io.Writer) bool {
	if reflect.TypeOf(a) != reflect.TypeOf(b) || !reflect.TypeOf(a).Comparable() {
		return false
	}
	return a == b
}
