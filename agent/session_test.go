package agent

import (
	"context"
	"errors"
	"io"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/docker/docker/api/types/container"

	"github.com/forge-ci/forge/internal/dockertest"
	"github.com/forge-ci/forge/internal/fakedocker"
	"github.com/forge-ci/forge/wire"
	"github.com/forge-ci/forge/wire/wiretest"
)

// The tests of the session loop run the agent (Run) against a fake Docker
// and testCoord: real TLS and wire sessions on loopback, no engine.

func stdout(b *coordBuild) string { return string(b.out[wire.StreamStdout]) }

// TestLaunch: a Launch is answered LaunchReady, and Started once the
// executor, spec and source are in the container and it runs; the build's
// log stream follows, and its exit is reported once. The executor crosses
// the wire once. The engine's create event reaches the coordinator as
// Landed.
func TestLaunch(t *testing.T) {
	node := fakedocker.NewNode("n1")
	c, cs, _ := start(t, node.Docker())
	if len(cs.holding.Builds) != 0 {
		t.Fatalf("holding %+v, want none", cs.holding.Builds)
	}

	cid := node.Create("b1")
	if l := cs.waitLanded(t, cid); l.BuildID != "b1" {
		t.Errorf("landed %+v, want build b1", l)
	}
	src := tarOf(t, []dockertest.File{{Name: "README", Body: []byte("source file\n")}})
	started, needExe, err := cs.launch(t, "b1", cid, src)
	if err != nil {
		t.Fatalf("launch: %v", err)
	}
	if started.ContainerID != cid || started.StartedAt.IsZero() || !needExe {
		t.Errorf("started %+v, need executor %v; want %s, a start time, executor asked for", started, needExe, cid)
	}
	ctr, _ := node.Container(cid)
	if ctr.Status != fakedocker.StatusRunning || !slices.Equal(ctr.Calls, []string{fakedocker.CallCopy, fakedocker.CallStart}) || len(ctr.Archives) != 1 {
		t.Fatalf("container %s calls %v, %d archives; want running after one copy and a start", ctr.Status, ctr.Calls, len(ctr.Archives))
	}
	files, err := fakedocker.Files(ctr.Archives[0])
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{
		"forgexec": string(testExecutor), ".forge/build.json": `{"build_id":"b1"}`, "forge/src/README": "source file\n",
	} {
		if got, ok := files[name]; !ok || string(got) != want {
			t.Errorf("archive: %s is %q (present %v), want %q", name, got, ok, want)
		}
	}

	node.Output(cid, wire.StreamStdout, "hello\n")
	c.waitBuild(t, "b1", "output", func(b *coordBuild) bool { return stdout(b) == "hello\n" })
	node.Exit(cid, 0)
	b := c.waitExit(t, "b1")
	if len(b.exits) != 1 || b.exits[0].ExitCode != 0 || b.exits[0].LastSeq != 1 || b.attaches != 1 {
		t.Errorf("exits %+v after %d attaches, want one, code 0, last seq 1, one attach", b.exits, b.attaches)
	}

	// The executor is cached: the next build's Launch does not ask for it.
	cid2 := node.Create("b2")
	if _, needExe, err := cs.launch(t, "b2", cid2, nil); err != nil || needExe {
		t.Errorf("second launch: need executor %v, err %v; want cached, started", needExe, err)
	}
	node.Exit(cid2, 0)
	c.waitExit(t, "b2")
}

// TestLaunchRefused: a Launch into a container that is missing, not a
// forge container, of another build, or already ran is refused before any
// transfer, and the container is left untouched.
func TestLaunchRefused(t *testing.T) {
	node := fakedocker.NewNode("n1")
	_, cs, _ := start(t, node.Docker())

	other := node.Create("b-other")
	plain := node.Create("")
	ran := node.Create("b-ran")
	if err := node.Start(ran); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, build, container, code string
	}{
		{"missing", "b1", "c-missing", wire.RefusedNotFound},
		{"not forge", "b1", plain, wire.RefusedForbidden},
		{"other build", "b1", other, wire.RefusedForbidden},
		{"already ran", "b-ran", ran, wire.RefusedForbidden},
	} {
		_, needExe, err := cs.launch(t, tc.build, tc.container, []byte("not read"))
		if code := refusedCode(err); code != tc.code || needExe {
			t.Errorf("%s: %v (need executor %v), want refused %s before any transfer", tc.name, err, needExe, tc.code)
		}
	}
	for _, id := range []string{other, plain, ran} {
		if ctr, _ := node.Container(id); len(ctr.Calls) != 0 {
			t.Errorf("container %s was touched: %v", id, ctr.Calls)
		}
	}
}

// TestLaunchBusy: a second Launch into a container whose Launch is in
// progress is refused busy; the first goes on.
func TestLaunchBusy(t *testing.T) {
	node := fakedocker.NewNode("n1")
	docker := node.Docker()
	copying, release := make(chan struct{}), make(chan struct{})
	copyFn := docker.CopyToContainerFn
	docker.CopyToContainerFn = func(ctx context.Context, id, dst string, r io.Reader, o container.CopyToContainerOptions) error {
		close(copying)
		select {
		case <-release:
		case <-ctx.Done():
			return ctx.Err()
		}
		return copyFn(ctx, id, dst, r, o)
	}
	c, cs, _ := start(t, docker)
	cid := node.Create("b1")

	first := make(chan error, 1)
	go func() { _, _, err := cs.launch(t, "b1", cid, nil); first <- err }()
	<-copying
	if _, _, err := cs.launch(t, "b1", cid, nil); refusedCode(err) != wire.RefusedBusy {
		t.Errorf("second launch: %v, want refused busy", err)
	}
	close(release)
	if err := <-first; err != nil {
		t.Errorf("first launch: %v", err)
	}
	node.Exit(cid, 0)
	c.waitExit(t, "b1")
}

// TestCancel: Cancel stops the container with the grace period asked for
// and answers its exit code; the exit still comes on the log stream, once.
// A Cancel for another build's container, or a container without forge
// labels, is refused and stops nothing.
func TestCancel(t *testing.T) {
	node := fakedocker.NewNode("n1")
	c, cs, _ := start(t, node.Docker())
	cid := node.Create("b1")
	if _, _, err := cs.launch(t, "b1", cid, nil); err != nil {
		t.Fatal(err)
	}
	node.Output(cid, wire.StreamStdout, "working\n")
	c.waitBuild(t, "b1", "output", func(b *coordBuild) bool { return stdout(b) == "working\n" })

	plain := node.Create("")
	for _, tc := range []struct{ name, build, container, code string }{
		{"other build", "b2", cid, wire.RefusedForbidden},
		{"not forge", "b1", plain, wire.RefusedForbidden},
		{"missing", "b1", "c-missing", wire.RefusedNotFound},
	} {
		if _, err := cs.cancel(tc.build, tc.container, 3); refusedCode(err) != tc.code {
			t.Errorf("%s: %v, want refused %s", tc.name, err, tc.code)
		}
	}
	for _, id := range []string{cid, plain} {
		if ctr, _ := node.Container(id); slices.Contains(ctr.Calls, fakedocker.CallStop) {
			t.Errorf("refused cancels stopped %s", id)
		}
	}

	done, err := cs.cancel("b1", cid, 3)
	if err != nil {
		t.Fatalf("cancel: %v", err)
	}
	if done.ExitCode == nil || *done.ExitCode != fakedocker.StopExitCode {
		t.Errorf("cancelled with exit code %v, want %d", done.ExitCode, fakedocker.StopExitCode)
	}
	if ctr, _ := node.Container(cid); ctr.StopTimeout == nil || *ctr.StopTimeout != 3 {
		t.Errorf("stopped with timeout %v, want 3 s", ctr.StopTimeout)
	}
	b := c.waitExit(t, "b1")
	if len(b.exits) != 1 || b.exits[0].ExitCode != fakedocker.StopExitCode || stdout(b) != "working\n" {
		t.Errorf("exits %+v, stdout %q; want one, code %d, the output once", b.exits, stdout(b), fakedocker.StopExitCode)
	}
}

// TestSessionLostAndRegained: a build that runs on while the session is
// lost is reported in the next session's Holding; its log resumes where
// the coordinator's copy ends, nothing lost or repeated; its exit is
// reported once, and the session after that holds nothing. OnSession sees
// every session begin and end.
func TestSessionLostAndRegained(t *testing.T) {
	node := fakedocker.NewNode("n1")
	c, cs, r := start(t, node.Docker())
	cid := node.Create("b1")
	if _, _, err := cs.launch(t, "b1", cid, nil); err != nil {
		t.Fatal(err)
	}
	node.Output(cid, wire.StreamStdout, "part 1\n")
	c.waitBuild(t, "b1", "first part", func(b *coordBuild) bool { return stdout(b) == "part 1\n" })

	// The build goes on, and ends, while the agent has no session.
	release := c.hold()
	cs.ws.Close()
	if id := r.next(t); id != "" {
		t.Fatalf("OnSession(%q) after the session was lost, want \"\"", id)
	}
	node.Output(cid, wire.StreamStdout, "part 2\n")
	node.Output(cid, wire.StreamStderr, "warning\n")
	node.Exit(cid, 3)
	release()

	cs2 := c.next(t)
	if id := r.next(t); id != cs2.id {
		t.Fatalf("OnSession(%q), want %q", id, cs2.id)
	}
	if h := cs2.holding.Builds; len(h) != 1 || h[0].BuildID != "b1" || h[0].ContainerID != cid ||
		h[0].State != wire.StateExited || h[0].ExitCode == nil || *h[0].ExitCode != 3 {
		t.Fatalf("holding %+v, want b1 exited 3", h)
	}
	b := c.waitExit(t, "b1")
	if stdout(b) != "part 1\npart 2\n" || string(b.out[wire.StreamStderr]) != "warning\n" || b.repeats != 0 {
		t.Errorf("stdout %q, stderr %q, %d repeated frames; want each part once", stdout(b), b.out[wire.StreamStderr], b.repeats)
	}
	if len(b.exits) != 1 || b.exits[0].ExitCode != 3 || b.attaches != 2 {
		t.Errorf("exits %+v after %d attaches, want one exit, code 3, after two", b.exits, b.attaches)
	}

	cs2.ws.Close()
	r.next(t)
	cs3 := c.next(t)
	if len(cs3.holding.Builds) != 0 {
		t.Errorf("holding %+v after the exit was acknowledged, want none", cs3.holding.Builds)
	}
	if b := c.snapshot("b1"); len(b.exits) != 1 || b.attaches != 2 {
		t.Errorf("after the ack: %d exits, %d attaches; want 1 and 2", len(b.exits), b.attaches)
	}
}

// TestHeldBuilds: an agent that starts on a node with build containers it
// started before (one running, others exited) reports them in Holding and
// pumps their logs from where the coordinator's copy ends; a container
// that never ran is not held. Builds the coordinator answers done or
// unknown are forgotten, like those whose exit it acknowledged: the next
// session holds none of them.
func TestHeldBuilds(t *testing.T) {
	node := fakedocker.NewNode("n1")
	started := func(build, out string) string {
		id := node.Create(build)
		if err := node.Start(id); err != nil {
			t.Fatal(err)
		}
		node.Output(id, wire.StreamStdout, out)
		return id
	}
	running := started("b-running", "r1\nr2\n")
	exited := started("b-exited", "e1\n")
	node.Exit(exited, 2)
	for _, b := range []string{"b-done", "b-unknown"} {
		node.Exit(started(b, "x\n"), 0)
	}
	node.Create("b-never")
	node.Create("") // not forge's

	c := startCoord(t)
	c.seed("b-running", "r1\n", 2) // the coordinator has the first line
	var unknownAttaches atomic.Int32
	c.answerAttach(func(at *wire.Attach, b *coordBuild) wire.Message {
		switch at.BuildID {
		case "b-done":
			return &wire.Attached{NextSeq: 1, Done: true}
		case "b-unknown":
			unknownAttaches.Add(1)
			return wire.NewRefused(wire.RefusedNotFound, "no build %s", at.BuildID)
		}
		return nil
	})
	r := runAgent(t, c, node.Docker())
	cs := c.next(t)
	want := map[string]string{"b-running": wire.StateRunning, "b-exited": wire.StateExited, "b-done": wire.StateExited, "b-unknown": wire.StateExited}
	got := map[string]string{}
	for _, h := range cs.holding.Builds {
		got[h.BuildID] = h.State
		if h.BuildID == "b-exited" && (h.ExitCode == nil || *h.ExitCode != 2) {
			t.Errorf("b-exited held with exit code %v, want 2", h.ExitCode)
		}
	}
	if len(got) != len(want) || len(cs.holding.Builds) != len(want) {
		t.Fatalf("holding %v, want %v", got, want)
	}
	for id, state := range want {
		if got[id] != state {
			t.Errorf("holding %s as %q, want %q", id, got[id], state)
		}
	}

	if b := c.waitExit(t, "b-exited"); stdout(b) != "e1\n" || b.exits[0].ExitCode != 2 {
		t.Errorf("b-exited: stdout %q, exit %+v", stdout(b), b.exits)
	}
	c.waitBuild(t, "b-running", "resumed output", func(b *coordBuild) bool { return stdout(b) == "r1\nr2\n" })
	node.Output(running, wire.StreamStdout, "r3\n")
	node.Exit(running, 0)
	b := c.waitExit(t, "b-running")
	if stdout(b) != "r1\nr2\nr3\n" || b.repeats != 0 || b.exits[0].LastSeq != 3 {
		t.Errorf("b-running: stdout %q, %d repeats, exit %+v; want the rest once, last seq 3", stdout(b), b.repeats, b.exits)
	}
	for _, id := range []string{"b-done", "b-unknown"} {
		c.waitBuild(t, id, "answered attach", func(b *coordBuild) bool { return b.ended > 0 })
	}

	cs.ws.Close()
	r.next(t)
	r.next(t)
	cs2 := c.next(t)
	if len(cs2.holding.Builds) != 0 {
		t.Errorf("next session holds %+v, want none", cs2.holding.Builds)
	}
	if n := unknownAttaches.Load(); n != 1 {
		t.Errorf("the unknown build was attached %d times, want once", n)
	}
}

// TestLogStreamReopened: a log stream that fails while the session lives
// (the coordinator refuses the Attach, the engine's log breaks) is opened
// again in the same session, and the build is reported once.
func TestLogStreamReopened(t *testing.T) {
	node := fakedocker.NewNode("n1")
	docker := node.Docker()
	var logCalls atomic.Int32
	logsFn := docker.ContainerLogsFn
	docker.ContainerLogsFn = func(ctx context.Context, id string, o container.LogsOptions) (io.ReadCloser, error) {
		if logCalls.Add(1) == 1 {
			return nil, errors.New("the engine's log broke")
		}
		return logsFn(ctx, id, o)
	}
	c := startCoord(t)
	c.answerAttach(func(at *wire.Attach, b *coordBuild) wire.Message {
		if b.attaches == 1 {
			return wire.NewRefused(wire.RefusedInternal, "disk full")
		}
		return nil
	})
	r := runAgent(t, c, docker)
	cs := c.next(t)
	r.next(t)
	cid := node.Create("b1")
	if _, _, err := cs.launch(t, "b1", cid, nil); err != nil {
		t.Fatal(err)
	}
	node.Output(cid, wire.StreamStdout, "out\n")
	node.Exit(cid, 0)
	b := c.waitExit(t, "b1")
	if stdout(b) != "out\n" || len(b.exits) != 1 || b.attaches != 3 || logCalls.Load() != 2 {
		t.Errorf("stdout %q, %d exits, %d attaches, %d log reads; want the output and one exit after 3 attaches and 2 reads",
			stdout(b), len(b.exits), b.attaches, logCalls.Load())
	}
	select {
	case id := <-r.ids:
		t.Errorf("OnSession(%q): the session changed", id)
	default:
	}
}

// TestRunStops: Run returns soon after its context ends, while a build's
// log is being followed and a Launch waits on the engine.
func TestRunStops(t *testing.T) {
	node := fakedocker.NewNode("n1")
	docker := node.Docker()
	copying := make(chan struct{})
	docker.CopyToContainerFn = func(ctx context.Context, id, dst string, r io.Reader, o container.CopyToContainerOptions) error {
		close(copying)
		<-ctx.Done()
		return ctx.Err()
	}
	c, cs, r := start(t, docker)

	// A build started before this agent, whose log it follows.
	running := node.Create("b-running")
	if err := node.Start(running); err != nil {
		t.Fatal(err)
	}
	cs.ws.Close()
	cs = c.next(t)
	c.waitBuild(t, "b-running", "attach", func(b *coordBuild) bool { return b.attaches == 1 })
	launched := make(chan error, 1)
	go func() { _, _, err := cs.launch(t, "b1", node.Create("b1"), nil); launched <- err }()
	<-copying

	r.stop()
	if err := <-launched; err == nil {
		t.Error("the launch in progress succeeded after Run returned")
	}
}

// TestRequestRefusals: a request the agent cannot serve is answered with a
// refused bad_request rather than a closed stream (PROTOCOL.md §4.3), and
// a source whose paths leave the work directory is the coordinator's
// fault, not the node's; neither starts the container.
func TestRequestRefusals(t *testing.T) {
	node := fakedocker.NewNode("n1")
	_, cs, _ := start(t, node.Docker())
	for name, frame := range map[string]string{
		"unknown type": `{"type":"format_disk"}`,
		"malformed":    `{"type":"launch","build_id":`,
		"invalid":      `{"type":"cancel","build_id":"","container_id":""}`,
	} {
		ctx, cancel := context.WithTimeout(context.Background(), wiretest.Timeout)
		st, err := cs.ws.Open(ctx)
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		if err := wire.WriteFrame(st, []byte(frame)); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		_, err = wire.Expect[*wire.Started](wire.NewCodec(st))
		if code := refusedCode(err); code != wire.RefusedBadRequest {
			t.Errorf("%s: %v, want refused %s", name, err, wire.RefusedBadRequest)
		}
		st.Close()
		cancel()
	}

	cid := node.Create("b1")
	src := tarOf(t, []dockertest.File{{Name: "../../etc/cron.d/evil", Body: []byte("* * * * * root sh\n")}})
	_, _, err := cs.launch(t, "b1", cid, src)
	if code := refusedCode(err); code != wire.RefusedBadRequest || !strings.Contains(err.Error(), "leaves the work directory") {
		t.Errorf("unsafe source: %v, want refused %s naming the path", err, wire.RefusedBadRequest)
	}
	if ctr, _ := node.Container(cid); ctr.Status == fakedocker.StatusRunning || slices.Contains(ctr.Calls, fakedocker.CallStart) {
		t.Errorf("container started after an unsafe source: %s %v", ctr.Status, ctr.Calls)
	}
}
