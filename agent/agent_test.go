package agent

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"

	"github.com/forge-ci/forge/wire"
)

func TestBackoff(t *testing.T) {
	b := backoff{min: 100 * time.Millisecond, max: time.Second}
	caps := []time.Duration{100, 200, 400, 800, 1000, 1000}
	for i, c := range caps {
		c *= time.Millisecond
		d := b.next()
		if d < c/2 || d > c {
			t.Errorf("attempt %d: wait %v outside [%v, %v]", i, d, c/2, c)
		}
	}
	b.reset()
	if d := b.next(); d > 100*time.Millisecond {
		t.Errorf("after reset: %v", d)
	}
}

// sent decodes the Log frames a logSender wrote.
func sent(t *testing.T, b *bytes.Buffer) []*wire.Log {
	t.Helper()
	var out []*wire.Log
	c := wire.NewCodec(&readWriter{r: b})
	for {
		m, err := c.Recv()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, m.(*wire.Log))
	}
}

type readWriter struct {
	r io.Reader
	w io.Writer
}

func (rw *readWriter) Read(p []byte) (int, error)  { return rw.r.Read(p) }
func (rw *readWriter) Write(p []byte) (int, error) { return rw.w.Write(p) }

// TestLogSenderResumes: output the coordinator has is skipped, a chunk
// that straddles its end is trimmed, and sequence numbers continue.
func TestLogSenderResumes(t *testing.T) {
	var buf bytes.Buffer
	w := &logSender{c: wire.NewCodec(&readWriter{w: &buf}), seq: 4,
		have: map[string]int64{wire.StreamStdout: 8, wire.StreamStderr: 0}}
	w.rewind()
	out, errw := w.stream(wire.StreamStdout), w.stream(wire.StreamStderr)
	out.Write([]byte("line 1\n"))                               // 0..7: had
	out.Write([]byte("line 2\n"))                               // 7..14: 1 byte had, "ine 2\n" new
	errw.Write([]byte("oops\n"))                                // stderr 0..5: new
	out.Write([]byte(strings.Repeat("x", wire.MaxLogChunk+10))) // split in two
	logs := sent(t, &buf)
	want := []struct {
		seq    uint64
		stream string
		off    int64
		data   string
	}{
		{5, "stdout", 8, "ine 2\n"},
		{6, "stderr", 0, "oops\n"},
		{7, "stdout", 14, strings.Repeat("x", wire.MaxLogChunk)},
		{8, "stdout", 14 + wire.MaxLogChunk, strings.Repeat("x", 10)},
	}
	if len(logs) != len(want) {
		t.Fatalf("%d frames, want %d", len(logs), len(want))
	}
	for i, w := range want {
		l := logs[i]
		if l.Seq != w.seq || l.Stream != w.stream || l.Offset != w.off || string(l.Data) != w.data {
			t.Errorf("frame %d: seq %d %s @%d %q, want seq %d %s @%d %q", i, l.Seq, l.Stream, l.Offset, trunc(l.Data), w.seq, w.stream, w.off, trunc([]byte(w.data)))
		}
	}
	// A second read of the engine's log from the start repeats nothing.
	buf.Reset()
	w.rewind()
	out.Write([]byte("line 1\nline 2\n"))
	if logs := sent(t, &buf); len(logs) != 0 {
		t.Errorf("re-read sent %d frames", len(logs))
	}
}

func trunc(b []byte) string {
	if len(b) > 20 {
		return string(b[:20]) + "..."
	}
	return string(b)
}

func inspect(labels map[string]string, status, started, errMsg string) container.InspectResponse {
	return container.InspectResponse{
		ContainerJSONBase: &container.ContainerJSONBase{ID: "c1", State: &container.State{Status: status, StartedAt: started, Error: errMsg, Running: status == "running"}},
		Config:            &container.Config{Labels: labels},
	}
}

func TestCheckLaunchable(t *testing.T) {
	failed := `starting container failed: exec: "/forgexec": stat /forgexec: no such file or directory`
	for _, tc := range []struct {
		name string
		c    container.InspectResponse
		want error
	}{
		{"ok", inspect(map[string]string{LabelBuild: "b1"}, "created", neverStarted, failed), nil},
		{"no label", inspect(map[string]string{"x": "y"}, "created", neverStarted, failed), ErrNotForge},
		{"other build", inspect(map[string]string{LabelBuild: "b2"}, "created", neverStarted, failed), ErrWrongBuild},
		{"running", inspect(map[string]string{LabelBuild: "b1"}, "running", "2026-11-29T10:00:00Z", ""), ErrAlreadyRan},
		{"exited", inspect(map[string]string{LabelBuild: "b1"}, "exited", "2026-11-29T10:00:00Z", ""), ErrAlreadyRan},
		{"swarm has not tried yet", inspect(map[string]string{LabelBuild: "b1"}, "created", neverStarted, ""), ErrNotFailedYet},
	} {
		err := CheckLaunchable(tc.c, "b1")
		if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
}
