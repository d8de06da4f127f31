package bench

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"

	"github.com/forge-ci/forge/agent"
	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/agents"
	"github.com/forge-ci/forge/internal/fakedocker"
	"github.com/forge-ci/forge/wire"
	"github.com/forge-ci/forge/wire/wiretest"
)

// restoreFiles and restoreFileSize make the restored cache: 1600 files of
// 128 KiB, 200 MiB in all, like a build cache of many objects.
const (
	restoreFiles    = 1600
	restoreFileSize = 128 << 10
	restorePath     = "/root/.cache/go-build"
)

// BenchmarkCacheRestore restores a 200 MiB cache through the agent: the
// coordinator's agents.Hub launches a build whose LaunchRequest carries
// the cache archive (a file, as caches.Store keeps it) to a real
// agent.Agent over mTLS + yamux with the default SessionConfig; the agent
// checks every entry, writes the archive it puts into the container
// (executor, spec, cache) into the engine's PUT archive call, here a fake
// engine that reads it all (fakedocker.Idle), starts the container and
// answers Started. A restore is timed from the Launch call to its return.
// The baseline is the same bytes, read from the same file, sent over one
// plain TLS 1.3 connection with the same certificates and read to the
// end, timed to the receiver's one-byte acknowledgement. The two
// alternate; each reports the median of FORGE_BENCH_RESTORES (7) after
// one untimed restore.
func BenchmarkCacheRestore(b *testing.B) {
	reps := envInt("FORGE_BENCH_RESTORES", 7)
	p := wiretest.MustPKI(b)
	archive, size := restoreArchive(b)
	hub, node := startRestoreRig(b, p)
	exe, err := coordinator.NewExecutor(bytes.Repeat([]byte("x"), 256<<10))
	if err != nil {
		b.Fatal(err)
	}
	plain := plainPair(b, p, size)
	bare := yamuxPair(b, p, nil, size)

	var viaAgent, viaTLS, viaStream []float64
	var acpu, pcpu time.Duration
	for i := -1; i < reps; i++ {
		c0 := rusage()
		d := restore(b, hub, node, exe, archive, size, i)
		c1 := rusage()
		dp := fromFile(b, archive, size, plain.send)
		c2 := rusage()
		ds := fromFile(b, archive, size, bare.send)
		if i >= 0 {
			viaAgent = append(viaAgent, float64(size)/d.Seconds()/1e6)
			viaTLS = append(viaTLS, float64(size)/dp.Seconds()/1e6)
			viaStream = append(viaStream, float64(size)/ds.Seconds()/1e6)
			acpu += c1 - c0
			pcpu += c2 - c1
		}
	}
	a50, p50, s50 := Percentile(viaAgent, 0.5), Percentile(viaTLS, 0.5), Percentile(viaStream, 0.5)
	b.ReportMetric(a50, "agent-MB/s")
	b.ReportMetric(p50, "plain-MB/s")
	b.ReportMetric(a50/p50, "ratio")
	perMiB := func(d time.Duration) float64 {
		return float64(d) / float64(time.Millisecond) / float64(reps) / float64(size>>20)
	}
	record(b, map[string]any{
		"cache.restore_mib":              float64(size) / (1 << 20),
		"cache.restore_agent_mb_s":       a50,
		"cache.restore_plain_mb_s":       p50,
		"cache.restore_ratio":            a50 / p50,
		"cache.restore_stream_mb_s":      s50,
		"cache.restore_stream_ratio":     s50 / p50,
		"cache.restore_agent_cpu_ms_mib": perMiB(acpu),
		"cache.restore_plain_cpu_ms_mib": perMiB(pcpu),
	})
}

// restoreArchive writes the cache archive to a file, as caches.Store
// keeps one, and returns its path and size.
func restoreArchive(b *testing.B) (string, int64) {
	b.Helper()
	path := filepath.Join(b.TempDir(), "cache.tar")
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	tw := tar.NewWriter(f)
	body := make([]byte, restoreFileSize)
	tw.WriteHeader(&tar.Header{Name: restorePath[1:] + "/", Typeflag: tar.TypeDir, Mode: 0o755})
	for i := range restoreFiles {
		rand.Read(body)
		h := &tar.Header{Name: fmt.Sprintf("%s/%02x/%06d-d", restorePath[1:], i%256, i), Typeflag: tar.TypeReg, Mode: 0o644, Size: restoreFileSize}
		if err := tw.WriteHeader(h); err != nil {
			b.Fatal(err)
		}
		if _, err := tw.Write(body); err != nil {
			b.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		b.Fatal(err)
	}
	size, err := f.Seek(0, io.SeekCurrent)
	if err != nil {
		b.Fatal(err)
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	return path, size
}

// startRestoreRig runs an agents.Hub on loopback and one real agent on an
// Idle fake engine, and waits until the agent is bound.
func startRestoreRig(b *testing.B, p *wiretest.PKI) (*agents.Hub, string) {
	b.Helper()
	const node = "bench-cache-node"
	hub := agents.New(agents.Config{TLS: p.ServerTLS(), Verify: anyNode{}, Logs: doneLogs{}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	hdone, adone := make(chan error, 1), make(chan error, 1)
	go func() { hdone <- hub.Serve(ctx, ln) }()
	// The engine reads the archive as the baseline's receiver reads its
	// bytes: into a 32 KiB buffer, and no further.
	docker := fakedocker.Idle(node)
	docker.CopyToContainerFn = func(ctx context.Context, id, dst string, content io.Reader, opts container.CopyToContainerOptions) error {
		buf := make([]byte, 32<<10)
		for {
			if _, err := content.Read(buf); err == io.EOF {
				return nil
			} else if err != nil {
				return err
			}
		}
	}
	a, err := agent.New(agent.Config{Coordinator: ln.Addr().String(), TLS: p.MustAgentTLS(b, node), Docker: docker})
	if err != nil {
		b.Fatal(err)
	}
	go func() { adone <- a.Run(ctx) }()
	b.Cleanup(func() {
		cancel()
		for _, done := range []chan error{adone, hdone} {
			if err := <-done; err != nil {
				b.Error(err)
			}
		}
	})
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	defer wcancel()
	if err := hub.WaitAgent(wctx, node); err != nil {
		b.Fatal(err)
	}
	return hub, node
}

// restore launches build number i with the cache archive and returns how
// long the Launch took.
func restore(b *testing.B, hub *agents.Hub, node string, exe *coordinator.Executor, archive string, size int64, i int) time.Duration {
	b.Helper()
	f, err := os.Open(archive)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	id := fmt.Sprintf("cache-restore-%d", i+1)
	ctx, cancel := context.WithTimeout(context.Background(), wire.LaunchTimeout)
	defer cancel()
	start := time.Now()
	_, err = hub.Launch(ctx, node, coordinator.LaunchRequest{BuildID: id, ContainerID: fakedocker.IdleContainerID(id),
		Executor: exe, Spec: []byte(`{"build_id":"` + id + `"}`), Workdir: "/forge/src",
		Cache: &coordinator.CacheLaunch{Paths: []string{restorePath}, Archive: f, Size: size}})
	d := time.Since(start)
	if err != nil {
		b.Fatalf("launch with a cache: %v", err)
	}
	return d
}

// fromFile times send of the archive's bytes, read from its file.
func fromFile(b *testing.B, archive string, size int64, send func(b *testing.B, r io.Reader, size int64) time.Duration) time.Duration {
	b.Helper()
	f, err := os.Open(archive)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	return send(b, f, size)
}
