package lifecycle

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/swarm"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/artifacts"
	"github.com/forge-ci/forge/internal/buildsim"
	"github.com/forge-ci/forge/wire"
)

const artifactsConfig = testConfigText + "artifacts: [coverage.out, 'dist/*']\n"

// artifactsEnv is a runnerEnv with an artifacts store, whose builds land
// on node-a in container c-a.
func artifactsEnv(t *testing.T, opts ...func(*Config)) (*runnerEnv, *artifacts.Store) {
	store := &artifacts.Store{Dir: filepath.Join(t.TempDir(), "artifacts")}
	e := newRunnerEnv(t, append([]func(*Config){func(c *Config) { c.Artifacts, c.MaxArtifactsSize = store, 64<<10 }}, opts...)...)
	e.sw.Tasks = func(*buildsim.Service, int) []swarm.Task { return []swarm.Task{buildsim.TaskAssigned("node-a")} }
	e.sw.OnCreate = func(s *buildsim.Service) {
		e.ag.Landed("node-a", wire.Landed{BuildID: s.BuildID, ContainerID: "c-a", Created: time.Now()})
	}
	return e, store
}

func tarOf(t *testing.T, files map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, name := range slices.Sorted(func(yield func(string) bool) {
		for k := range files {
			if !yield(k) {
				return
			}
		}
	}) {
		tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(files[name]))})
		tw.Write([]byte(files[name]))
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestArtifactsPassOrFail: after the action, whether it passed or failed,
// the lifecycle asks the agent of the build's node, for its container,
// before the service is removed, and stores what comes; the agent's notes
// and a summary are lines in the log, which its followers see before it
// ends; the result is the action's.
func TestArtifactsPassOrFail(t *testing.T) {
	for _, code := range []int{0, 3} {
		e, store := artifactsEnv(t)
		var mu sync.Mutex
		removedAtCall := -1
		e.ag.ArtifactsFunc = func(ctx context.Context, node string, req coordinator.ArtifactsRequest, put func(io.Reader) error) ([]string, error) {
			mu.Lock()
			removedAtCall = e.sw.Removals(e.sw.Service(req.BuildID).ID)
			mu.Unlock()
			return []string{"dist/* matches nothing"}, put(bytes.NewReader(tarOf(t, map[string]string{"coverage.out": "mode: set\n"})))
		}
		e.ag.SetLaunch(e.ag.ExitAfterLaunch(wire.Exit{ExitCode: code}))
		q := e.submit(e.requestWith(testSHA('a'), "", artifactsConfig))
		var followed bytes.Buffer
		followDone := make(chan error, 1)
		go func() { followDone <- e.logs.Follow(context.Background(), q.ID, &followed, true) }()
		b := e.wait(q.ID)
		if want := map[int]coordinator.State{0: coordinator.Success, 3: coordinator.Failure}[code]; b.State != want {
			t.Errorf("exit %d: %s (%s), want %s", code, b.State, b.Reason, want)
		}
		calls := e.ag.ArtifactsCalls()
		if len(calls) != 1 {
			t.Fatalf("exit %d: %d artifacts requests, want 1", code, len(calls))
		}
		c := calls[0]
		if c.Node != "node-a" || c.Req.BuildID != q.ID || c.Req.ContainerID != "c-a" || c.Req.Workdir != "/work/src" ||
			!slices.Equal(c.Req.Paths, []string{"coverage.out", "dist/*"}) || c.Req.MaxBytes != 64<<10 {
			t.Errorf("request to %s: %+v", c.Node, c.Req)
		}
		mu.Lock()
		if removedAtCall != 0 {
			t.Errorf("the service was removed %d times before the artifacts were asked for", removedAtCall)
		}
		mu.Unlock()
		if list, err := store.List(q.ID); err != nil || len(list) != 1 || list[0].Path != "coverage.out" || list[0].Size != 10 {
			t.Errorf("stored %+v, %v", list, err)
		}
		log := e.logText(q.ID)
		for _, want := range []string{"hello\nforge: artifacts: dist/* matches nothing\n", "forge: artifacts: 1 file (10B) stored, up to --max-artifacts-size 64KiB\n"} {
			if !strings.Contains(log, want) {
				t.Errorf("log %q lacks %q", log, want)
			}
		}
		select {
		case err := <-followDone:
			if err != nil || followed.String() != log {
				t.Errorf("follower: %q, %v; want the whole log %q", followed.String(), err, log)
			}
		case <-time.After(testWait):
			t.Fatal("the follower did not end")
		}
	}
}

// TestArtifactsFailuresAreLines: a refusal, a broken transfer, or no agent
// is a line in the log, and the build keeps its result; nothing is stored.
func TestArtifactsFailuresAreLines(t *testing.T) {
	for name, tc := range map[string]struct {
		fn   func(ctx context.Context, node string, req coordinator.ArtifactsRequest, put func(io.Reader) error) ([]string, error)
		gone bool // no agent after the launch
		want string
	}{
		"refused": {fn: func(context.Context, string, coordinator.ArtifactsRequest, func(io.Reader) error) ([]string, error) {
			return nil, &wire.RefusedError{Want: wire.TypeArtifactsHeader, Code: wire.RefusedForbidden, Message: "container has not run and stopped"}
		}, want: "forge: artifacts: not collected: want artifacts_header, got refused: container has not run and stopped (code forbidden)\n"},
		"broken": {fn: func(_ context.Context, _ string, _ coordinator.ArtifactsRequest, put func(io.Reader) error) ([]string, error) {
			whole := tarOf(t, map[string]string{"coverage.out": strings.Repeat("x", 4096)})
			return nil, put(bytes.NewReader(whole[:1000]))
		}, want: "forge: artifacts: not collected: artifacts of"},
		"no agent": {gone: true, want: "forge: artifacts: not collected: no agent on node node-a within"},
	} {
		t.Run(name, func(t *testing.T) {
			e, store := artifactsEnv(t)
			e.ag.ArtifactsFunc = tc.fn
			if tc.gone {
				var launched bool
				var mu sync.Mutex
				e.ag.WaitAgentFunc = func(ctx context.Context, node string) error {
					mu.Lock()
					defer mu.Unlock()
					if launched {
						return errors.New("gone")
					}
					launched = true
					return nil
				}
			}
			e.ag.SetLaunch(e.ag.ExitAfterLaunch(wire.Exit{ExitCode: 0}))
			q := e.submit(e.requestWith(testSHA('a'), "", artifactsConfig))
			b := e.wait(q.ID)
			if b.State != coordinator.Success {
				t.Errorf("%s (%s), want success", b.State, b.Reason)
			}
			if log := e.logText(q.ID); !strings.Contains(log, tc.want) {
				t.Errorf("log %q lacks %q", log, tc.want)
			}
			if list, _ := store.List(q.ID); len(list) != 0 {
				t.Errorf("stored %+v", list)
			}
		})
	}
}

// TestArtifactsOnlyWhenAsked: a config without artifacts asks for none;
// nor does a build cancelled before its exit.
func TestArtifactsOnlyWhenAsked(t *testing.T) {
	e, _ := artifactsEnv(t)
	e.ag.SetLaunch(e.ag.ExitAfterLaunch(wire.Exit{ExitCode: 0}))
	q := e.submit(e.request(testSHA('a'), ""))
	if b := e.wait(q.ID); b.State != coordinator.Success {
		t.Fatalf("%s (%s)", b.State, b.Reason)
	}
	e.ag.SetLaunch(nil) // started, never exits by itself
	q = e.submit(e.requestWith(testSHA('b'), "", artifactsConfig))
	e.waitStored(q.ID, "started", func(b *coordinator.Build) bool { return !b.Started.IsZero() })
	if err := e.r.Cancel(context.Background(), q.ID, "cancelled by test"); err != nil {
		t.Fatal(err)
	}
	if b := e.wait(q.ID); b.State != coordinator.Error || b.Reason != "cancelled by test" {
		t.Fatalf("%s (%s)", b.State, b.Reason)
	}
	if calls := e.ag.ArtifactsCalls(); len(calls) != 0 {
		t.Errorf("artifacts asked of %+v", calls)
	}
	if log := e.logText(q.ID); strings.Contains(log, "artifacts") {
		t.Errorf("log %q", log)
	}
}
