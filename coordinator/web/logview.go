package web

import (
	"bytes"
	"strings"

	"github.com/forge-ci/forge/coordinator/config"
)

// What the build page renders of a log on the server, for readers
// without script and as the start of the live page: at most the last
// pageLogLines lines and pageLogBytes bytes. A longer log says where the
// whole of it is.
const (
	pageLogLines = 10000
	pageLogBytes = 1 << 20
	// maxPendingBytes bounds one line while it is read; the rest of a
	// longer line is counted, not kept.
	maxPendingBytes = 256 << 10
)

// logLine is one rendered line: its number, its runs, and how much of it
// was too long to show.
type logLine struct {
	N    int
	Segs []segment
	Cut  int
}

// logView is the part of a build's log the page shows.
type logView struct {
	Lines  []logLine
	Hidden int    // lines before the first shown
	Offset int64  // bytes of the log the page holds: the live page follows from there
	Style  string // the style the next line starts in (sgr.encode)
	Note   string
}

// step is one command of the build as forgexec runs it: forgexec prints
// "+ <command>" before each (forgexec/run.go), which marks where it
// starts in the log.
type step struct {
	Cmd    string
	First  string // the command's first line
	More   bool   // the command has more lines
	Marker string // the first line of "+ <command>"
	Setup  bool
	Line   int    // the marker's line; 0 until it ran
	State  string // pending, running, done, failed, skipped
}

// stepsOf lists the commands a build of action runs: cfg's setup
// commands, then the action's.
func stepsOf(cfg *config.Config, action string) []step {
	var out []step
	add := func(cmds []string, setup bool) {
		for _, c := range cmds {
			first, rest, _ := strings.Cut(c, "\n")
			out = append(out, step{Cmd: c, First: first, More: strings.TrimSpace(rest) != "", Marker: "+ " + first, Setup: setup, State: "pending"})
		}
	}
	add(cfg.Setup, true)
	add(cfg.Actions[action], false)
	return out
}

// logScanner reads a log as it is written (an io.Writer for Logs.Follow):
// it counts lines, finds the steps' markers in order, and keeps the tail
// the page renders.
type logScanner struct {
	steps []step
	next  int // the step whose marker comes next

	lines      int   // complete lines
	total      int64 // bytes
	pending    []byte
	pendingRaw int64 // bytes of the unfinished line, kept or not
	tail       []rawLine
	tailBytes  int
}

// rawLine is a line as stored; cut: its end was not kept.
type rawLine struct {
	data []byte
	cut  bool
}

func (s *logScanner) Write(p []byte) (int, error) {
	n := len(p)
	s.total += int64(n)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			s.add(p)
			break
		}
		s.add(p[:i])
		s.endLine()
		p = p[i+1:]
	}
	return n, nil
}

func (s *logScanner) add(p []byte) {
	s.pendingRaw += int64(len(p))
	if room := maxPendingBytes - len(s.pending); room > 0 {
		s.pending = append(s.pending, p[:min(room, len(p))]...)
	}
}

func (s *logScanner) endLine() {
	s.lines++
	line := bytes.TrimRight(s.pending, "\r")
	if s.next < len(s.steps) && string(line) == s.steps[s.next].Marker {
		s.steps[s.next].Line = s.lines
		s.next++
	}
	keep := rawLine{data: bytes.Clone(s.pending), cut: s.pendingRaw > int64(len(s.pending))}
	s.tail = append(s.tail, keep)
	s.tailBytes += len(keep.data)
	for len(s.tail) > 1 && (len(s.tail) > pageLogLines || s.tailBytes > pageLogBytes) {
		s.tailBytes -= len(s.tail[0].data)
		s.tail[0] = rawLine{}
		s.tail = s.tail[1:]
	}
	s.pending, s.pendingRaw = s.pending[:0], 0
}

// view renders the tail. The unfinished last line is shown only when the
// build is over (final): while it runs, the live page reads it whole.
func (s *logScanner) view(final bool) logView {
	v := logView{Hidden: s.lines - len(s.tail), Offset: s.total - s.pendingRaw}
	lines := s.tail
	if final && s.pendingRaw > 0 {
		last := rawLine{data: s.pending, cut: s.pendingRaw > int64(len(s.pending))}
		lines = append(lines[:len(lines):len(lines)], last)
		v.Offset = s.total
	}
	st := plainStyle
	for i, raw := range lines {
		l := logLine{N: v.Hidden + i + 1}
		l.Segs, st, l.Cut = renderLine(raw.data, st)
		if raw.cut {
			l.Cut++
		}
		v.Lines = append(v.Lines, l)
	}
	v.Style = st.encode()
	return v
}

// stepStates sets each step's state once the log is read: those before
// the last that started are done; the last is running, or done or failed
// as the build ended; those that never started are pending, or skipped
// once the build is over.
func stepStates(steps []step, started int, final, success bool) {
	for i := range steps {
		switch {
		case i < started-1:
			steps[i].State = "done"
		case i == started-1 && !final:
			steps[i].State = "running"
		case i == started-1 && success:
			steps[i].State = "done"
		case i == started-1:
			steps[i].State = "failed"
		case final:
			steps[i].State = "skipped"
		default:
			steps[i].State = "pending"
		}
	}
}
