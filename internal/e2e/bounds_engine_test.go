package e2e

import (
	"io"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/daemon"
	"github.com/forge-ci/forge/internal/dockertest"
)

// TestLogCutAtMaxSize: a build that prints far past --max-log-size (here
// 64 KiB) is cut there, goes on to its end, and its exit is recorded; the
// log ends with the cut line, once.
func TestLogCutAtMaxSize(t *testing.T) {
	const maxLog = 64 << 10
	e := newEnv(t)
	s := startServerWith(t, e, t.TempDir(), "", func(cfg *daemon.Config) { cfg.Bounds.MaxLogSize = maxLog })
	startAgent(t, e.pki, s.agents, nil, nil)
	id := dockertest.ID(t)
	dockertest.Cleanup(t, e.cli, id)
	// 4 MB in 100-byte lines (the engine's log of the container stays
	// small in entries), then one more line and exit 7.
	script := "yes 0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789 | head -c 4000000; echo after the cut; exit 7"
	b := s.submit(t, e, "image: "+e.image+"\nexecute: ['"+script+"']\n", id)
	final, err := s.srv.Builds.Wait(dockertest.Context(t, 3*time.Minute), b.ID)
	if err != nil {
		t.Fatal(err)
	}
	if final.State != coordinator.Failure || final.ExitCode == nil || *final.ExitCode != 7 {
		t.Fatalf("build %s (%s) exit %v, want failure with exit 7", final.State, final.Reason, final.ExitCode)
	}
	resp := admin(t, "GET", s.http+"/api/builds/"+b.ID+"/log")
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	log := string(raw)
	const cut = "forge: log cut at 64 KiB (--max-log-size); the build goes on\n"
	if n := strings.Count(log, cut); n != 1 || !strings.HasSuffix(log, cut) {
		t.Fatalf("log of %d bytes has the cut line %d times, ends %q", len(log), n, log[max(len(log)-200, 0):])
	}
	if body := len(log) - len(cut); body < maxLog || body > maxLog+1 {
		t.Errorf("log holds %d bytes before the cut line, want %d (and a newline at most)", body, maxLog)
	}
	// The shown command names it too; the line itself must not be there.
	if strings.Contains(log, "\nafter the cut\n") {
		t.Error("output after the cut was stored")
	}
	resp = admin(t, "GET", s.metrics+"/metrics")
	raw, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	var used int64
	for _, l := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(l, "forge_logs_bytes "); ok {
			used, _ = strconv.ParseInt(v, 10, 64)
		}
	}
	if used < maxLog || used > 2*maxLog {
		t.Errorf("forge_logs_bytes %d, want the cut log's size (about %d)", used, maxLog)
	}
}
