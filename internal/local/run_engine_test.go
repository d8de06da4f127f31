package local

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/forge-ci/forge/internal/syncbuf"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/client"

	"github.com/forge-ci/forge/internal/dockertest"
)

type file struct {
	body string
	mode os.FileMode
}

type result struct {
	code           int
	err            error
	stdout, stderr string
}

// forgeRun runs `forge run` on a folder holding yml (and files), the way
// the command does, and checks that no service or container is left.
func forgeRun(t *testing.T, cli *client.Client, ctx context.Context, yml string, files map[string]file, started func(string)) result {
	t.Helper()
	dir := t.TempDir()
	if yml != "" {
		os.WriteFile(filepath.Join(dir, ".forge.yml"), []byte(yml), 0o644)
	}
	for name, f := range files {
		os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o755)
		os.WriteFile(filepath.Join(dir, name), []byte(f.body), max(f.mode, 0o644))
	}
	id := dockertest.ID(t)
	dockertest.Cleanup(t, cli, id)
	var out, errOut syncbuf.Buffer
	code, err := Run(ctx, Options{Dir: dir, Docker: cli, Executor: dockertest.Forgexec(t), Stdout: &out, Stderr: &errOut,
		Labels: map[string]string{dockertest.LabelTest: id}, Started: started, Logger: testLogger(t)})
	r := result{code: code, err: err, stdout: out.String(), stderr: errOut.String()}
	t.Logf("exit %d, err %v\nstdout:\n%s\nstderr:\n%s", code, err, r.stdout, r.stderr)
	noneLeft(t, cli, id)
	return r
}

// noneLeft checks that the run removed its service; swarm removes the
// container shortly after, which is waited for.
func noneLeft(t *testing.T, cli *client.Client, id string) {
	t.Helper()
	ctx := dockertest.Context(t, 30*time.Second)
	f := filters.NewArgs(filters.Arg("label", dockertest.LabelTest+"="+id))
	svcs, err := cli.ServiceList(ctx, swarm.ServiceListOptions{Filters: f})
	if err != nil {
		t.Fatal(err)
	}
	if len(svcs) > 0 {
		t.Errorf("forge run left service %s behind", svcs[0].Spec.Name)
	}
	for {
		cs, err := cli.ContainerList(ctx, container.ListOptions{All: true, Filters: f})
		if err != nil {
			t.Fatal(err)
		}
		if len(cs) == 0 {
			return
		}
		select {
		case <-ctx.Done():
			t.Errorf("container %s left behind", cs[0].ID[:12])
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func TestForgeRun(t *testing.T) {
	cli := dockertest.Client(t)
	dockertest.Swarm(t, cli)
	busybox := dockertest.EnsureBusybox(t, cli)
	scratch := dockertest.EnsureScratch(t, cli)
	bb, err := os.ReadFile(dockertest.BusyboxPath)
	if err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name     string
		yml      string
		files    map[string]file
		code     int
		stdout   []string
		stderr   []string
		errorMsg string // a Run error
	}{
		{name: "pass", yml: "image: " + busybox + "\nsetup: [echo set up]\nexecute:\n  - cat hello.txt\n  - echo \"$FORGE_ACTION $CI\"\n",
			files: map[string]file{"hello.txt": {body: "hello from the source\n"}}, code: 0,
			stdout: []string{"+ echo set up\nset up\n", "hello from the source", "execute true"}, stderr: []string{"passed"}},
		{name: "fail", yml: "image: " + busybox + "\nexecute: [echo one, exit 3, echo never]\n", code: 3,
			stdout: []string{"one\n"}, stderr: []string{"failed: exit code 3"}},
		{name: "no-shell image", yml: "image: " + scratch + "\nexecute: [\"/forge/src/busybox echo 'no  shell' here\"]\n",
			files: map[string]file{"busybox": {body: string(bb), mode: 0o755}}, code: 0, stdout: []string{"no  shell here"}},
		{name: "timeout", yml: "image: " + busybox + "\ntimeout: 1s\nexecute: ['echo start; sleep 30']\n", code: 124,
			stdout: []string{"start"}, stderr: []string{"timed out after 1s"}},
		{name: "missing image", yml: "image: forge-test/no-such-image:latest\nexecute: [echo hi]\n", code: 1,
			stderr: []string{"swarm rejected the task", "No such image"}},
		{name: "unsatisfiable constraint", yml: "image: " + busybox + "\nconstraints: [node.labels.forge-test-none==true]\nexecute: [echo hi]\n", code: 1,
			stderr: []string{"swarm cannot place the task", "constraints"}},
		{name: "invalid config", yml: "image: " + busybox + "\nexecute: [echo hi]\ntimeout: soon\n", code: 1,
			errorMsg: ".forge.yml:3:10: timeout"},
		{name: "no config", code: 1, errorMsg: "no .forge.yml in"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := forgeRun(t, cli, dockertest.Context(t, 2*time.Minute), tc.yml, tc.files, nil)
			if tc.errorMsg != "" {
				if r.err == nil || !strings.Contains(r.err.Error(), tc.errorMsg) {
					t.Fatalf("err %v, want one with %q", r.err, tc.errorMsg)
				}
				return
			}
			if r.err != nil {
				t.Fatal(r.err)
			}
			if r.code != tc.code {
				t.Errorf("exit code %d, want %d", r.code, tc.code)
			}
			for _, s := range tc.stdout {
				if !strings.Contains(r.stdout, s) {
					t.Errorf("stdout lacks %q", s)
				}
			}
			for _, s := range tc.stderr {
				if !strings.Contains(r.stderr, s) {
					t.Errorf("stderr lacks %q", s)
				}
			}
			if strings.Contains(r.stdout, "never") {
				t.Errorf("a command after the failing one ran")
			}
		})
	}
}

// TestForgeRunCancel: Ctrl-C (the context ends) cancels the build, removes
// its service and exits 130.
func TestForgeRunCancel(t *testing.T) {
	cli := dockertest.Client(t)
	dockertest.Swarm(t, cli)
	busybox := dockertest.EnsureBusybox(t, cli)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var once sync.Once
	started := func(string) {
		// Interrupt once the build's first line is out.
		go func() {
			select {
			case <-time.After(1500 * time.Millisecond):
			case <-ctx.Done():
			}
			once.Do(cancel)
		}()
	}
	r := forgeRun(t, cli, ctx, "image: "+busybox+"\nexecute: ['echo started; sleep 60; echo never']\n", nil, started)
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.code != ExitInterrupted || !strings.Contains(r.stderr, "cancelled") {
		t.Errorf("exit %d, stderr %q; want %d and cancelled", r.code, r.stderr, ExitInterrupted)
	}
}
