package github

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/config"
)

// What a check run says of a build (its output is Markdown, shown in the
// pull request's Checks tab).

const (
	// TailLines is how many of a finished build's last log lines its
	// check run shows.
	TailLines = 50
	// maxTail bounds those lines in bytes, well within GitHub's 65535
	// characters of output.text.
	maxTail = 48 << 10
	// maxSummary bounds a summary in characters (GitHub's limit is
	// 65535).
	maxSummary = 60000
)

// checkRunOf is the check run of b in its current state.
func (r *Reporter) checkRunOf(ctx context.Context, b *coordinator.Build) CheckRun {
	link := r.link(b)
	c := CheckRun{Name: statusContext(b.Action), HeadSHA: b.SHA, DetailsURL: link, ExternalID: b.ID, StartedAt: b.Started}
	build := "Build " + mdEscape(b.ID)
	if link != "" {
		build = "Build [" + mdEscape(b.ID) + "](" + link + ")"
	}
	switch {
	case b.AwaitingApproval():
		c.Status, c.Conclusion, c.CompletedAt = CheckCompleted, ConclusionActionRequired, time.Now()
		c.Title = "Awaiting approval"
		who := "an outside contributor"
		if b.Author != "" {
			who = mdEscape(b.Author) + ", an outside contributor,"
		}
		if b.Fork {
			who = "a fork"
			if b.Author != "" {
				who += " (by " + mdEscape(b.Author) + ")"
			}
		}
		c.Summary = fmt.Sprintf("This pull request comes from %s. Someone with write permission to the repository must read "+
			"its changes, then approve %s on Forge (`forge approve %s`) before it runs. It will run sandboxed, without secrets.",
			who, strings.ToLower(build[:1])+build[1:], b.ID)
		return c
	case b.State == coordinator.Queued:
		c.Status, c.Title = CheckQueued, "Queued"
		c.Summary = build + " is queued"
		if b.Reason != "" {
			c.Summary += ": " + mdEscape(b.Reason)
		}
		c.Summary += "."
		return c
	case b.State == coordinator.Running:
		c.Status, c.Title = CheckInProgress, "Running"
		if c.StartedAt.IsZero() {
			c.StartedAt = time.Now()
		}
		c.Summary = build + " is running" + imageNote(b) + "."
		return c
	}
	c.Status, c.CompletedAt = CheckCompleted, b.Finished
	if c.CompletedAt.IsZero() {
		c.CompletedAt = time.Now()
	}
	c.Conclusion, c.Title = conclusion(b)
	c.Summary = finalSummary(b, build)
	// Only a log whose exit is recorded is whole (and not held open by
	// reading it); a build that never started has none.
	if r.Logs != nil && !b.Started.IsZero() && b.ExitCode != nil {
		if tail := r.tail(ctx, b.ID); tail != "" {
			c.Text = fmt.Sprintf("The last lines of the log (all of it on [the build's page](%s)):\n\n%s", or(link, "#"), fence(tail))
			if link == "" {
				c.Text = "The last lines of the log:\n\n" + fence(tail)
			}
		}
	}
	return c
}

// conclusion is a final build's check-run conclusion and title. GitHub
// keeps the conclusion "stale" to itself (an app that sends it gets 422),
// so a superseded build is "cancelled", its title saying by what.
func conclusion(b *coordinator.Build) (string, string) {
	switch b.State {
	case coordinator.Success:
		return ConclusionSuccess, "Passed"
	case coordinator.Failure:
		if b.ExitCode != nil {
			return ConclusionFailure, "Failed: exit code " + strconv.Itoa(*b.ExitCode)
		}
		return ConclusionFailure, "Failed"
	}
	title := capitalize(cut(or(b.Reason, "error"), 80))
	switch b.Ending {
	case coordinator.EndCancelled, coordinator.EndSuperseded:
		return ConclusionCancelled, title
	case coordinator.EndTimedOut:
		return ConclusionTimedOut, title
	}
	return ConclusionFailure, "Error: " + cut(or(b.Reason, "see the build's page"), 80)
}

// finalSummary says what became of b: the reason, then its duration, exit
// code, node and image.
func finalSummary(b *coordinator.Build, build string) string {
	var s strings.Builder
	s.WriteString(build + " " + string(b.State))
	if b.Reason != "" {
		s.WriteString(": " + mdEscape(cut(b.Reason, 2000)))
	}
	s.WriteString(".\n\n| Duration | Exit code | Node | Image |\n| --- | --- | --- | --- |\n")
	dur := "did not start"
	if !b.Started.IsZero() && !b.Finished.IsZero() {
		dur = b.Finished.Sub(b.Started).Round(time.Second).String()
	}
	code := "none"
	if b.ExitCode != nil {
		code = strconv.Itoa(*b.ExitCode)
	}
	img := "unknown"
	if cfg, err := config.Parse(ConfigFile, []byte(b.Config)); err == nil {
		img = cfg.Image
	}
	fmt.Fprintf(&s, "| %s | %s | %s | %s |\n", dur, code, mdEscape(or(b.NodeID, "none")), mdEscape(img))
	if b.RerunOf != "" {
		fmt.Fprintf(&s, "\nA re-run of build %s", mdEscape(b.RerunOf))
		if b.RerunBy != "" {
			s.WriteString(", asked for by " + mdEscape(b.RerunBy))
		}
		s.WriteString(".\n")
	}
	return s.String()
}

func imageNote(b *coordinator.Build) string {
	if cfg, err := config.Parse(ConfigFile, []byte(b.Config)); err == nil {
		return " in " + mdEscape(cfg.Image)
	}
	return ""
}

// problemCheckRun is the failed check run of a commit that got no build.
func problemCheckRun(u report) CheckRun {
	p := u.problem
	c := CheckRun{Name: statusContext(u.action), HeadSHA: u.sha, Status: CheckCompleted, Conclusion: ConclusionFailure,
		CompletedAt: time.Now(), Title: p.title, Summary: cutRunes(p.summary, maxSummary)}
	for _, e := range config.Errors(p.err) {
		if len(c.Annotations) == MaxAnnotations {
			break
		}
		msg := e.Msg
		if e.Key != "" {
			msg = e.Key + ": " + msg
		}
		c.Annotations = append(c.Annotations, Annotation{Path: ConfigFile, Line: e.Line, Level: "failure", Message: msg})
	}
	return c
}

// MaxAnnotations is how many annotations one request may carry (GitHub's
// limit).
const MaxAnnotations = 50

// invalidConfig is the problem of a .forge.yml that does not parse: each
// error on its line.
func invalidConfig(err error) problem {
	var s strings.Builder
	s.WriteString("Forge cannot build this commit: its `" + ConfigFile + "` is invalid.\n\n")
	errs := config.Errors(err)
	if len(errs) == 0 {
		s.WriteString("- " + mdEscape(err.Error()) + "\n")
	}
	for _, e := range errs {
		s.WriteString("- " + mdEscape(e.Error()) + "\n")
	}
	return problem{desc: config.Summary(err, MaxDescription), title: "Invalid " + ConfigFile, summary: s.String(), err: err}
}

// notQueued is the problem of a build the lifecycle refused.
var notQueued = problem{desc: "Forge could not queue the build; see the coordinator's log",
	title: "Not queued", summary: "Forge could not queue the build. The coordinator's log says why."}

// noConfig is the problem of a re-run of a commit that has no .forge.yml
// (any more).
func noConfig(sha string) problem {
	msg := fmt.Sprintf("nothing to re-run: the repository has no %s at %s", ConfigFile, short(sha))
	return problem{desc: msg, title: "No " + ConfigFile,
		summary: "Forge cannot re-run this commit: the repository has no `" + ConfigFile + "` at " + short(sha) + " (any more)."}
}

func short(sha string) string {
	if len(sha) > 7 {
		return sha[:7]
	}
	return sha
}

// tail is the last lines of the build's log, made safe to show: text
// only, no escape sequences, progress lines ending in \r reduced to what
// they ended showing.
func (r *Reporter) tail(ctx context.Context, id string) string {
	t := &tailWriter{max: maxTail * 2}
	if err := r.Logs.Follow(ctx, id, t, false); err != nil {
		r.Log.Debug("no log for the check run", "build", id, "err", err)
		return ""
	}
	return lastLines(t.bytes(), TailLines, maxTail)
}

// tailWriter keeps the last max bytes written to it (at most 2·max in
// memory).
type tailWriter struct {
	max int
	buf []byte
}

func (t *tailWriter) Write(p []byte) (int, error) {
	t.buf = append(t.buf, p...)
	if len(t.buf) > 2*t.max {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailWriter) bytes() []byte {
	if len(t.buf) > t.max {
		return t.buf[len(t.buf)-t.max:]
	}
	return t.buf
}

// escapeRE matches terminal escape sequences: CSI (colours, cursor
// moves), OSC (titles, links) and two-byte ones.
var escapeRE = regexp.MustCompile(`\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)?|[@-Z\\-_])`)

// lastLines is the last n lines of out within maxBytes, cleaned.
func lastLines(out []byte, n, maxBytes int) string {
	text := strings.ToValidUTF8(string(out), "\uFFFD")
	text = escapeRE.ReplaceAllString(text, "")
	text = strings.TrimRight(strings.ReplaceAll(text, "\r\n", "\n"), "\n")
	lines := strings.Split(text, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	for i, l := range lines {
		if j := strings.LastIndexByte(strings.TrimRight(l, "\r"), '\r'); j >= 0 {
			l = l[j+1:] // a progress line shows what it was last redrawn to
		}
		lines[i] = strings.Map(func(r rune) rune {
			if r == '\t' || !unicode.IsControl(r) {
				return r
			}
			return -1
		}, l)
	}
	size := len(lines) - 1 // the newlines between them
	for _, l := range lines {
		size += len(l)
	}
	for len(lines) > 0 && size > maxBytes {
		size -= len(lines[0]) + 1
		lines = lines[1:]
	}
	return strings.Join(lines, "\n")
}

// fence puts text in a Markdown code block whose fence no line of the text
// can close.
func fence(text string) string {
	longest := 0
	for run, i := 0, 0; i < len(text); i++ {
		if text[i] == '`' {
			run++
			longest = max(longest, run)
		} else {
			run = 0
		}
	}
	f := strings.Repeat("`", max(3, longest+1))
	return f + "text\n" + text + "\n" + f
}

// mdEscape makes s literal text in Markdown, on one line.
func mdEscape(s string) string {
	var b strings.Builder
	for _, r := range strings.Join(strings.Fields(s), " ") {
		if r < utf8.RuneSelf && strings.ContainsRune("\\`*_{}[]()<>#+-.!|~&", r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

func capitalize(s string) string {
	r, n := utf8.DecodeRuneInString(s)
	if n == 0 {
		return s
	}
	return string(unicode.ToUpper(r)) + s[n:]
}

// cutRunes cuts s to max characters.
func cutRunes(s string, max int) string {
	if utf8.RuneCountInString(s) <= max {
		return s
	}
	return string([]rune(s)[:max-1]) + "…"
}
