package bench

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/client"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/config"
	"github.com/forge-ci/forge/coordinator/daemon"
	"github.com/forge-ci/forge/internal/dockertest"
	"github.com/forge-ci/forge/wire/wiretest"
)

// warmModule is the module built: small, with tests and no requirements,
// taken from this machine's module cache (no registry or proxy is
// reachable from here).
const warmModule = "github.com/dustin/go-humanize@v1.1.0"

// warmConfig builds and tests it with the Go build cache as the build's
// cache, keyed by go.mod; the module cache is empty and never asked
// (GOPROXY=off): the module has no requirements.
const warmConfig = `image: %s
environment:
  PATH: /usr/local/go/bin
  HOME: /root
  GOCACHE: /root/.cache/go-build
  GOPATH: /root/go
  GOPROXY: "off"
  GOTOOLCHAIN: local
  GOFLAGS: -mod=mod
  CGO_ENABLED: "0"
timeout: 20m
execute:
  - go build ./...
  - go test ./...
cache:
  paths: [/root/.cache/go-build]
  key: 'go-{{ hashFiles "go.mod" }}'
`

// BenchmarkCacheWarm runs a real Go build and test (warmModule, in an
// image made FROM scratch of this machine's Go toolchain) through a whole
// coordinator and agent on the engine, cold and then with its cache, in
// FORGE_BENCH_WARM_PAIRS (2) pairs; each pair is a repository of its own,
// so its first build finds no cache. A build is timed from Submit to its
// final state (cache restored and saved included), and the executor's own
// run (started to finished) is reported too.
func BenchmarkCacheWarm(b *testing.B) {
	pairs := envInt("FORGE_BENCH_WARM_PAIRS", 2)
	cli := dockertest.Client(b)
	dockertest.Swarm(b, cli)
	info, err := cli.Info(dockertest.Context(b, 10*time.Second))
	if err != nil {
		b.Fatal(err)
	}
	node := info.Swarm.NodeID
	runID := dockertest.ID(b)
	dockertest.Cleanup(b, cli, runID)
	image := ensureGoImage(b, cli)
	src := moduleSource(b)
	yml := fmt.Sprintf(warmConfig, image)
	cfg, err := config.Parse(".forge.yml", []byte(yml))
	if err != nil {
		b.Fatal(err)
	}
	srv, _ := startForge(b, wiretest.MustPKI(b), cli, node, cli, daemon.Config{Executor: dockertest.Forgexec(b)})

	var cold, warm, coldRun, warmRun []float64
	var cacheMiB float64
	for i := range pairs {
		for _, kind := range []string{"cold", "warm"} {
			began := time.Now()
			id := runWarmBuild(b, srv, node, runID, fmt.Sprintf("warm-%d", i), cfg, yml, src)
			took := time.Since(began).Seconds()
			final, err := srv.Store.Build(context.Background(), id)
			if err != nil {
				b.Fatal(err)
			}
			run := final.Finished.Sub(final.Started).Seconds()
			if kind == "cold" {
				cold, coldRun = append(cold, took), append(coldRun, run)
			} else {
				warm, warmRun = append(warm, took), append(warmRun, run)
			}
			b.Logf("pair %d %s: %.1f s (executor %.1f s)", i, kind, took, run)
		}
		es, err := srv.Store.Caches(context.Background(), "bench", fmt.Sprintf("warm-%d", i))
		if err != nil || len(es) != 1 {
			b.Fatalf("caches of pair %d: %+v, %v", i, es, err)
		}
		cacheMiB = float64(es[0].Size) / (1 << 20)
	}
	c50, w50 := Percentile(cold, 0.5), Percentile(warm, 0.5)
	b.ReportMetric(c50, "cold-s")
	b.ReportMetric(w50, "warm-s")
	b.ReportMetric(w50/c50, "ratio")
	record(b, map[string]any{
		"cache.warm_cold_s":     c50,
		"cache.warm_s":          w50,
		"cache.warm_ratio":      w50 / c50,
		"cache.warm_cold_run_s": Percentile(coldRun, 0.5),
		"cache.warm_run_s":      Percentile(warmRun, 0.5),
		"cache.warm_cache_mib":  cacheMiB,
		"cache.warm_pairs":      float64(pairs),
	})
}

// runWarmBuild builds the module as a push to main of bench/repo and
// returns the build's id once it has succeeded.
func runWarmBuild(b *testing.B, srv *daemon.Coordinator, node, runID, repo string, cfg *config.Config, yml, src string) string {
	b.Helper()
	ctx := dockertest.Context(b, 25*time.Minute)
	bd, err := srv.Builds.Submit(ctx, coordinator.Request{
		Subject: coordinator.Subject{Owner: "bench", Repo: repo, Branch: "main", DefaultBranch: "main", SHA: benchSHA,
			Action: "execute", Trigger: "api"},
		Config: cfg, ConfigText: yml, Node: node, Labels: map[string]string{dockertest.LabelTest: runID},
		Source: func(context.Context) (io.ReadCloser, int64, error) {
			f, err := os.Open(src)
			if err != nil {
				return nil, 0, err
			}
			fi, err := f.Stat()
			if err != nil {
				f.Close()
				return nil, 0, err
			}
			return f, fi.Size(), nil
		},
	})
	if err != nil {
		b.Fatal(err)
	}
	final, err := srv.Builds.Wait(ctx, bd.ID)
	if err != nil {
		b.Fatal(err)
	}
	if final.State != coordinator.Success {
		var log strings.Builder
		srv.Logs.Follow(ctx, bd.ID, &log, false)
		b.Fatalf("build %s: %s (%s)\n%s", bd.ID, final.State, final.Reason, log.String())
	}
	return bd.ID
}

// moduleSource packs warmModule out of the module cache as a source tar,
// in a file (a key that hashes files reads the source, then sends it).
func moduleSource(b *testing.B) string {
	b.Helper()
	out, err := exec.Command("go", "env", "GOMODCACHE").Output()
	if err != nil {
		b.Fatalf("go env GOMODCACHE: %v", err)
	}
	dir := filepath.Join(strings.TrimSpace(string(out)), warmModule)
	if _, err := os.Stat(filepath.Join(dir, "go.mod")); err != nil {
		dockertest.Unavailable(b, "the module %s is not in this machine's module cache: %v", warmModule, err)
	}
	path := filepath.Join(b.TempDir(), "source.tar")
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := tarTree(f, dir, func(rel string, d fs.DirEntry) bool { return true }, ""); err != nil {
		b.Fatal(err)
	}
	return path
}

// ensureGoImage builds an image FROM scratch holding this machine's Go
// toolchain (/usr/local/go: the go command, compile, link, asm, vet, the
// standard library's sources, no tests), and /tmp.
func ensureGoImage(b *testing.B, cli client.APIClient) string {
	b.Helper()
	goroot := runtime.GOROOT()
	if goroot == "" {
		goroot = "/usr/local/go"
	}
	version, err := os.ReadFile(filepath.Join(goroot, "VERSION"))
	if err != nil {
		dockertest.Unavailable(b, "no Go toolchain at %s: %v", goroot, err)
	}
	tag := "forge-bench/go:" + strings.TrimSpace(strings.SplitN(string(version), "\n", 2)[0])
	tool := filepath.Join("pkg", "tool", runtime.GOOS+"_"+runtime.GOARCH)
	keep := func(rel string, d fs.DirEntry) bool {
		switch {
		case rel == "VERSION", rel == "go.env", rel == filepath.Join("bin", "go"):
			return true
		case strings.HasPrefix(rel, tool+string(filepath.Separator)):
			switch filepath.Base(rel) {
			case "compile", "link", "asm", "vet":
				return true
			}
			return false
		case strings.HasPrefix(rel, filepath.Join("pkg", "include")):
			return true
		case strings.HasPrefix(rel, "src"+string(filepath.Separator)):
			return !strings.HasPrefix(rel, filepath.Join("src", "cmd")+string(filepath.Separator)) &&
				!strings.HasSuffix(rel, "_test.go") && !strings.Contains(rel, string(filepath.Separator)+"testdata"+string(filepath.Separator))
		}
		return false
	}
	var files []dockertest.File
	err = filepath.WalkDir(goroot, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(goroot, p)
		if !keep(rel, d) || !d.Type().IsRegular() {
			return nil
		}
		body, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		files = append(files, dockertest.File{Name: "usr/local/go/" + filepath.ToSlash(rel), Mode: int64(info.Mode().Perm()), Body: body})
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	files = append(files, dockertest.File{Name: "tmp/.keep"})
	dockertest.EnsureImage(b, cli, tag, files)
	return tag
}

// tarTree writes the regular files and folders under dir that keep takes
// as a tar, names relative to dir under prefix.
func tarTree(w io.Writer, dir string, keep func(rel string, d fs.DirEntry) bool, prefix string) error {
	tw := tar.NewWriter(w)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil || rel == "." || !keep(rel, d) {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if !info.IsDir() && !info.Mode().IsRegular() {
			return nil
		}
		h, err := tar.FileInfoHeader(info, "")
		if err != nil {
			return err
		}
		h.Name = prefix + filepath.ToSlash(rel)
		if info.IsDir() {
			h.Name += "/"
		}
		// The module cache's files are read-only: the build may write.
		h.Mode |= 0o200
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if info.Mode().IsRegular() {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			_, err = io.Copy(tw, f)
			f.Close()
			return err
		}
		return nil
	})
	if err != nil {
		return err
	}
	return tw.Close()
}
