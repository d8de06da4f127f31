package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/stdcopy"

	"github.com/forge-ci/forge/forgexec"
	"github.com/forge-ci/forge/internal/dockertest"
)

func buildSpec(t *testing.T, buildID string, commands ...string) []byte {
	t.Helper()
	b, err := json.Marshal(map[string]any{
		"version":  1,
		"build_id": buildID,
		"action":   "execute",
		"commands": commands,
		"workdir":  "/forge/src",
		"timeout":  "1m",
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestInjectIntoSwarmTask proves DESIGN §2's mechanism on this engine: a
// swarm task whose command is missing fails to start and stays created;
// one archive (executor, spec, source) put into it and a start through the
// local API run the build to its real exit code, with or without a shell in
// the image.
func TestInjectIntoSwarmTask(t *testing.T) {
	cli := dockertest.Client(t)
	dockertest.Swarm(t, cli)
	exe := dockertest.Forgexec(t)
	busybox := dockertest.EnsureBusybox(t, cli)
	scratch := dockertest.EnsureScratch(t, cli)
	bb, err := os.ReadFile(dockertest.BusyboxPath)
	if err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name     string
		image    string
		commands []string
		wantCode int
		wantOut  []string
	}{
		{"shell-pass", busybox, []string{"echo hello from $FORGE_ACTION", "cat README"}, 0,
			[]string{"+ echo hello from $FORGE_ACTION", "hello from execute", "source file"}},
		{"shell-fail", busybox, []string{"echo one", "exit 3", "echo never"}, 3,
			[]string{"+ echo one", "one", "+ exit 3"}},
		// No shell in the image: commands are split into words and run
		// directly; the program comes with the source tree.
		{"scratch-pass", scratch, []string{`/forge/src/bin/busybox echo 'hello  world' "a b"`}, 0,
			[]string{"hello  world a b"}},
		{"scratch-fail", scratch, []string{"/forge/src/bin/busybox true", "/forge/src/bin/busybox false", "/forge/src/bin/busybox echo never"}, 1,
			[]string{"+ /forge/src/bin/busybox false"}},
		{"scratch-missing", scratch, []string{"/no/such/program"}, 127, []string{"forgexec: /no/such/program:"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id := dockertest.ID(t)
			dockertest.Cleanup(t, cli, id)
			ctx := dockertest.Context(t, 2*time.Minute)
			buildID := "b-" + id
			svc := dockertest.BuildService(t, cli, tc.image, buildID, id)
			task, err := dockertest.TaskContainer(ctx, cli, svc)
			if err != nil {
				t.Fatal(err)
			}
			cid := task.Status.ContainerStatus.ContainerID
			src := tarOf(t, []dockertest.File{
				{Name: "README", Body: []byte("source file\n")},
				{Name: "sub/dir/x.txt", Body: []byte("x\n")},
				{Name: "bin/busybox", Mode: 0o755, Body: bb},
			})
			err = Inject(ctx, cli, cid, buildID, Payload{
				Executor: bytes.NewReader(exe), ExecutorSize: int64(len(exe)),
				Spec: buildSpec(t, buildID, tc.commands...), Workdir: "/forge/src", Source: bytes.NewReader(src),
			})
			if err != nil {
				t.Fatalf("inject: %v", err)
			}
			code, out := runToExit(ctx, t, cli, cid)
			t.Logf("exit %d, output:\n%s", code, out.String())
			if int(code) != tc.wantCode {
				t.Errorf("exit code %d, want %d", code, tc.wantCode)
			}
			for _, w := range tc.wantOut {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q", w)
				}
			}
			if strings.Contains(out.String(), "\nnever") {
				t.Errorf("a command after the failing one ran")
			}
			// Swarm leaves the task as it was: it never sees our start.
			tk, _, err := cli.TaskInspectWithRaw(ctx, task.ID)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("swarm task state after the build: %s (%s)", tk.Status.State, tk.Status.Err)
		})
	}
}

// TestSIGTERMStopsBuild: a command that ignores SIGTERM must not keep a
// build container alive; the executor, PID 1, kills its process group
// after a grace period and exits 143.
func TestSIGTERMStopsBuild(t *testing.T) {
	cli := dockertest.Client(t)
	dockertest.Swarm(t, cli)
	exe := dockertest.Forgexec(t)
	image := dockertest.EnsureBusybox(t, cli)
	id := dockertest.ID(t)
	dockertest.Cleanup(t, cli, id)
	ctx := dockertest.Context(t, 2*time.Minute)
	buildID := "b-" + id
	task, err := dockertest.TaskContainer(ctx, cli, dockertest.BuildService(t, cli, image, buildID, id))
	if err != nil {
		t.Fatal(err)
	}
	cid := task.Status.ContainerStatus.ContainerID
	err = Inject(ctx, cli, cid, buildID, Payload{Executor: bytes.NewReader(exe), ExecutorSize: int64(len(exe)),
		Spec: buildSpec(t, buildID, "trap '' TERM; echo ready; sleep 60"), Workdir: "/forge/src"})
	if err != nil {
		t.Fatal(err)
	}
	// Wait for the command to be running before signalling.
	logs, err := cli.ContainerLogs(ctx, cid, container.LogsOptions{ShowStdout: true, Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	defer logs.Close()
	var seen bytes.Buffer
	buf := make([]byte, 4096)
	for !strings.Contains(seen.String(), "ready") {
		n, err := logs.Read(buf)
		if err != nil {
			t.Fatalf("logs ended before the command was ready: %v (%q)", err, seen.String())
		}
		seen.Write(buf[:n])
	}
	waitC, errC := cli.ContainerWait(ctx, cid, container.WaitConditionNotRunning)
	start := time.Now()
	if err := cli.ContainerKill(ctx, cid, "SIGTERM"); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-waitC:
		t.Logf("SIGTERM -> container exited %d in %v", r.StatusCode, time.Since(start))
		if r.StatusCode != 143 {
			t.Errorf("exit code %d, want 143 (128+SIGTERM)", r.StatusCode)
		}
	case err := <-errC:
		t.Fatalf("wait: %v", err)
	}
}

// TestInjectSecrets: secrets put in with the archive reach the commands
// as environment variables, whether the image runs as root, as a user
// given by number or as one given by name; the file is gone before the
// first command, and the container's configuration never holds a value.
// A user the image does not have fails the Inject, naming it.
func TestInjectSecrets(t *testing.T) {
	cli := dockertest.Client(t)
	dockertest.Swarm(t, cli)
	exe := dockertest.Forgexec(t)
	busybox := dockertest.EnsureBusybox(t, cli)
	users := dockertest.EnsureBusyboxUsers(t, cli)
	linked := dockertest.EnsureBusyboxLinkedUsers(t, cli)
	value := "v4lue-" + dockertest.ID(t)
	file, err := forgexec.EncodeSecrets(map[string][]byte{"DEPLOY_TOKEN": []byte(value)})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		image, user, want string // want: "uid:gid", or "" when Inject must fail
	}{
		{busybox, "", "0:0"},
		{busybox, "1000:1000", "1000:1000"},
		{users, "builder", "1234:1234"},
		{users, "builder:staff", "1234:50"},
		{users, "ghost", ""},
		{linked, "builder:staff", "1234:50"}, // account files behind links
	} {
		t.Run(tc.image+"/user="+tc.user, func(t *testing.T) {
			id := dockertest.ID(t)
			dockertest.Cleanup(t, cli, id)
			ctx := dockertest.Context(t, 2*time.Minute)
			buildID := "b-" + id
			svc := dockertest.BuildServiceWith(t, cli, tc.image, buildID, id, func(c *swarm.ContainerSpec) { c.User = tc.user })
			task, err := dockertest.TaskContainer(ctx, cli, svc)
			if err != nil {
				t.Fatal(err)
			}
			cid := task.Status.ContainerStatus.ContainerID
			err = Inject(ctx, cli, cid, buildID, Payload{
				Executor: bytes.NewReader(exe), ExecutorSize: int64(len(exe)), Workdir: "/tmp/src",
				Spec:    buildSpecIn(t, buildID, "/tmp/src", `echo "got [$DEPLOY_TOKEN] as $(id -u):$(id -g)"`, "test ! -e /.forge/secrets.json"),
				Secrets: file,
			})
			if tc.want == "" {
				if !errors.Is(err, ErrUnknownUser) || !strings.Contains(err.Error(), `"ghost"`) {
					t.Fatalf("inject as a user the image lacks: %v, want ErrUnknownUser naming it", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("inject: %v", err)
			}
			code, out := runToExit(ctx, t, cli, cid)
			if code != 0 || !strings.Contains(out.String(), "got ["+value+"] as "+tc.want) {
				t.Errorf("exit %d, output:\n%s", code, out.String())
			}
			_, raw, err := cli.ContainerInspectWithRaw(ctx, cid, false)
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Contains(raw, []byte(value)) {
				t.Errorf("docker inspect shows the secret:\n%s", raw)
			}
		})
	}
}

// buildSpecIn is buildSpec with another work directory (a user other
// than root may not make /forge).
func buildSpecIn(t *testing.T, buildID, workdir string, commands ...string) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(buildSpec(t, buildID, commands...), &m); err != nil {
		t.Fatal(err)
	}
	m["workdir"] = workdir
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// runToExit waits for the container to stop and returns its exit code and
// output.
func runToExit(ctx context.Context, t *testing.T, cli *client.Client, cid string) (int64, *bytes.Buffer) {
	t.Helper()
	waitC, errC := cli.ContainerWait(ctx, cid, container.WaitConditionNotRunning)
	var code int64
	select {
	case r := <-waitC:
		code = r.StatusCode
	case err := <-errC:
		t.Fatalf("wait: %v", err)
	}
	logs, err := cli.ContainerLogs(ctx, cid, container.LogsOptions{ShowStdout: true, ShowStderr: true})
	if err != nil {
		t.Fatal(err)
	}
	defer logs.Close()
	var out bytes.Buffer
	stdcopy.StdCopy(&out, &out, logs)
	return code, &out
}
