package lifecycle

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/docker/go-units"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/config"
	"github.com/forge-ci/forge/internal/redact"
)

// ArtifactStore keeps what agents copy out of builds (artifacts.Store).
type ArtifactStore interface {
	// Put stores the untrusted tar read from r as the build's
	// artifacts, writing at most max bytes of files.
	Put(buildID string, r io.Reader, max int64) (coordinator.ArtifactsStored, error)
}

// DefaultMaxArtifactsSize bounds each build's artifacts when
// Config.MaxArtifactsSize is zero (--max-artifacts-size).
const DefaultMaxArtifactsSize = 1 << 30

// wanted is what await needs to collect a build's artifacts: the
// config's paths, relative to its work directory. No paths: none.
type wanted struct {
	paths   []string
	workdir string
}

func wantedOf(cfg *config.Config) wanted {
	if cfg == nil || len(cfg.Artifacts) == 0 {
		return wanted{}
	}
	w := wanted{paths: cfg.Artifacts, workdir: cfg.Workdir}
	if w.workdir == "" {
		w.workdir = config.DefaultWorkdir
	}
	return w
}

// collects reports whether the build's artifacts are to be collected.
func (r *Runner) collects(w wanted) bool { return len(w.paths) > 0 && r.cfg.Artifacts != nil }

// holdLog keeps the build's log open past its exit while its artifacts
// are to be collected, so that followers see their lines (logs.Store.Hold);
// the release it returns is idempotent.
func (r *Runner) holdLog(buildID string, w wanted) (release func()) {
	if !r.collects(w) {
		return func() {}
	}
	release, err := r.cfg.Logs.Hold(buildID)
	if err != nil {
		r.log.Warn("hold the log for the artifacts' lines", "build", buildID, "err", err)
		return func() {}
	}
	return release
}

// collect has the agent of the build's node copy its artifacts out of its
// stopped container (PROTOCOL.md §6.5) into the store. Every outcome is a
// line in the build's log ("forge: artifacts: ..."); none changes the
// build's result.
func (r *Runner) collect(ctx context.Context, b *coordinator.Build, w wanted) {
	var lines []string
	say := func(format string, args ...any) { lines = append(lines, fmt.Sprintf(format, args...)) }
	defer func() {
		for i, l := range lines {
			lines[i] = "artifacts: " + l
		}
		if err := r.cfg.Logs.Note(b.ID, strings.Join(lines, "\n")); err != nil {
			r.log.Warn("note artifacts in the log", "build", b.ID, "err", err)
		}
	}()
	max := r.cfg.MaxArtifactsSize
	actx, cancel := context.WithTimeout(ctx, r.cfg.AgentWait)
	err := r.cfg.Agents.WaitAgent(actx, b.NodeID)
	cancel()
	if err != nil {
		say("not collected: no agent on node %s within %v", b.NodeID, r.cfg.AgentWait)
		return
	}
	var stored coordinator.ArtifactsStored
	req := coordinator.ArtifactsRequest{BuildID: b.ID, ContainerID: b.ContainerID, Workdir: w.workdir, Paths: w.paths, MaxBytes: max}
	notes, err := r.cfg.Agents.Artifacts(ctx, b.NodeID, req, func(tar io.Reader) error {
		var err error
		stored, err = r.cfg.Artifacts.Put(b.ID, tar, max)
		return err
	})
	for _, n := range notes {
		say("%s", plain(n))
	}
	for _, n := range stored.Refused {
		say("%s: refused by the coordinator", plain(n))
	}
	switch {
	case err != nil && cancelReason(ctx) != "":
		say("not collected: %s", cancelReason(ctx))
	case err != nil:
		r.log.Warn("collect artifacts", "build", b.ID, "node", b.NodeID, "err", err)
		say("not collected: %s", redact.Error(err))
	case stored.Files == 0:
		say("none stored")
	default:
		say("%d %s (%s) stored, up to --max-artifacts-size %s", stored.Files, plural(stored.Files, "file"), sizeText(stored.Bytes), sizeText(max))
	}
}

// plain is a line from an agent as the log shows it: control characters
// quoted, so one note is one line.
func plain(s string) string {
	if strings.ContainsFunc(s, func(r rune) bool { return r < ' ' || r == 0x7f }) {
		return strconv.Quote(s)
	}
	return s
}

func plural(n int, word string) string {
	if n == 1 {
		return word
	}
	return word + "s"
}

// sizeText writes n bytes in binary units, as --max-artifacts-size takes them.
func sizeText(n int64) string { return units.BytesSize(float64(n)) }
