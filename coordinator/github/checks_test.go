package github

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/store"
	"github.com/forge-ci/forge/internal/fakegithub"
	"github.com/forge-ci/forge/internal/fakegithub/fakegithubtest"
)

// textLogs is a build's log as text, for the check run's tail.
type textLogs map[string]string

func (l textLogs) Follow(ctx context.Context, id string, w io.Writer, follow bool) error {
	text, ok := l[id]
	if !ok {
		return fmt.Errorf("no log of %s", id)
	}
	_, err := io.WriteString(w, text)
	return err
}

// checksEnv is a Reporter on the fake with a real store, installation 1
// allowed to write checks, running until the test ends.
type checksEnv struct {
	t    *testing.T
	fake *fakegithubtest.Server
	st   *store.Store
	r    *Reporter
	app  *App
}

func newChecksEnv(t *testing.T, grant bool, logs textLogs) *checksEnv {
	t.Helper()
	fake := fakegithubtest.New(t)
	if grant {
		fake.GrantChecks(1)
	}
	st, err := store.Open(":memory:")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	app := newTestApp(t, fake)
	e := &checksEnv{t: t, fake: fake, st: st, app: app,
		r: &Reporter{App: app, PublicURL: "https://forge.example.com", Checks: st, Logs: logs}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { e.r.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return e
}

// waitRuns waits until the fake's check runs pass ok.
func (e *checksEnv) waitRuns(what string, ok func([]fakegithub.CheckRun) bool) []fakegithub.CheckRun {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		runs := e.fake.CheckRuns()
		if ok(runs) {
			return runs
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("waited 10s for %s; check runs: %+v", what, runs)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// last is the newest check run's latest request, as seen by ok.
func lastIs(n int, status, conclusion string) func([]fakegithub.CheckRun) bool {
	return func(runs []fakegithub.CheckRun) bool {
		return len(runs) == n && runs[n-1].Status == status && runs[n-1].Conclusion == conclusion
	}
}

func checkBuild(id string, st coordinator.State) *coordinator.Build {
	return &coordinator.Build{ID: id, State: st, Config: validConfig, Created: time.Now().UTC(),
		Subject: coordinator.Subject{Owner: "Codertocat", Repo: "Hello-World", SHA: prSHA, Action: "execute", InstallationID: 1,
			PullRequest: 2, Key: "Codertocat/Hello-World#2"}}
}

// A build's check run through its whole life: queued, in_progress, then
// completed with its summary and the last lines of its log, all on one
// check run, recorded with its build; no commit status is set.
func TestCheckRunLife(t *testing.T) {
	log := "line 1\n\x1b[31mred\x1b[0m and \x1b[2Kerased\r\nprogress 10%\rprogress 100%\n" + strings.Repeat("filler\n", 60) +
		"```\nlast line with ``` fences and <b>html</b>\n"
	e := newChecksEnv(t, true, textLogs{"b1": log})
	e.fake.FailCheckRuns(2, "502") // the first request needs three tries
	b := checkBuild("b1", coordinator.Queued)
	if err := e.st.CreateBuild(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	e.r.BuildChanged(b)
	e.waitRuns("a queued check run", lastIs(1, "queued", ""))
	b.State, b.Started = coordinator.Running, time.Now().UTC()
	e.r.BuildChanged(b)
	e.waitRuns("in_progress", lastIs(1, "in_progress", ""))
	code := 0
	b.State, b.ExitCode, b.NodeID, b.Finished = coordinator.Success, &code, "node-7", b.Started.Add(83*time.Second)
	e.r.BuildChanged(b)
	cr := e.waitRuns("completed", lastIs(1, "completed", "success"))[0]

	want := []fakegithub.CheckRunRequest{{Method: "POST", Status: "queued", Title: "Queued"},
		{Method: "PATCH", Status: "in_progress", Title: "Running"}, {Method: "PATCH", Status: "completed", Conclusion: "success", Title: "Passed"}}
	if !slices.Equal(cr.Requests, want) {
		t.Errorf("requests %+v\nwant %+v", cr.Requests, want)
	}
	if cr.Name != "forge/execute" || cr.HeadSHA != prSHA || cr.ExternalID != "b1" || cr.DetailsURL != "https://forge.example.com/builds/b1" || cr.Inst != 1 {
		t.Errorf("check run %+v", cr)
	}
	for _, w := range []string{"| 1m23s | 0 | node\\-7 | golang:1\\.22 |", "[b1](https://forge.example.com/builds/b1)", "success"} {
		if !strings.Contains(cr.Output.Summary, w) {
			t.Errorf("summary lacks %q:\n%s", w, cr.Output.Summary)
		}
	}
	text := cr.Output.Text
	if !strings.Contains(text, "````text\n") || !strings.HasSuffix(text, "\n````") || !strings.Contains(text, "last line with ``` fences and <b>html</b>") {
		t.Errorf("the log is not fenced beyond its own fences:\n%s", text)
	}
	if strings.Contains(text, "line 1") || strings.Count(text, "filler") > TailLines {
		t.Errorf("more than the last %d lines:\n%s", TailLines, text)
	}
	// Recorded once GitHub took it: wait for the sender's write.
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, _ := e.st.LatestCheckRun(context.Background(), "b1")
		if got != nil && got.ID == cr.ID && got.Status == "completed" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("recorded %+v", got)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if s := e.fake.Statuses(); len(s) != 0 {
		t.Errorf("commit statuses set too: %+v", s)
	}
}

// The last lines of a log are shown as text: no escape sequences, a
// progress line as it ended, no control characters, valid UTF-8.
func TestLastLines(t *testing.T) {
	out := []byte("a\n\x1b[1;32mgreen\x1b[0m\x1b]0;title\x07 \x1b[2J\x1b[H\nbar 1%\rbar 99%\rbar 100%\r\n\xff\xfebad\x00\x07bell\tok\n")
	got := lastLines(out, 3, 1000)
	want := "green \nbar 100%\n\uFFFDbadbell\tok"
	if got != want {
		t.Errorf("lastLines = %q, want %q", got, want)
	}
	long := []byte(strings.Repeat("x", 100) + "\n" + strings.Repeat("y", 100) + "\n")
	if got := lastLines(long, 10, 150); got != strings.Repeat("y", 100) {
		t.Errorf("byte bound: %q", got)
	}
}

// How each end of a build is concluded. GitHub refuses "stale" from an
// app, so a superseded build is cancelled, saying by what.
func TestConclusions(t *testing.T) {
	code := 3
	for _, c := range []struct {
		state       coordinator.State
		ending      coordinator.Ending
		reason      string
		code        *int
		conc, title string
	}{
		{coordinator.Success, "", "", nil, "success", "Passed"},
		{coordinator.Failure, "", "exit code 3", &code, "failure", "Failed: exit code 3"},
		{coordinator.Error, coordinator.EndCancelled, "cancelled by alice", nil, "cancelled", "Cancelled by alice"},
		{coordinator.Error, coordinator.EndCancelled, "pull request closed", nil, "cancelled", "Pull request closed"},
		{coordinator.Error, coordinator.EndSuperseded, "superseded by abc1234", nil, "cancelled", "Superseded by abc1234"},
		{coordinator.Error, coordinator.EndTimedOut, "timed out after 30m0s", nil, "timed_out", "Timed out after 30m0s"},
		{coordinator.Error, "", "swarm rejected the task: no such image", nil, "failure", "Error: swarm rejected the task: no such image"},
	} {
		b := checkBuild("x", c.state)
		b.Ending, b.Reason, b.ExitCode = c.ending, c.reason, c.code
		if conc, title := conclusion(b); conc != c.conc || title != c.title {
			t.Errorf("%s %q %q: %s %q, want %s %q", c.state, c.ending, c.reason, conc, title, c.conc, c.title)
		}
	}
}

// A build awaiting approval has a completed action_required check run;
// approved, it runs under a new check run (a completed one is never
// reopened); a superseded build's check run is cancelled, saying so.
func TestCheckRunApprovalAndSupersede(t *testing.T) {
	e := newChecksEnv(t, true, textLogs{})
	b := checkBuild("b1", coordinator.Queued)
	b.Untrusted, b.NeedsApproval, b.Author, b.Fork, b.Reason = true, true, "stranger", true, coordinator.ReasonAwaitingApproval
	if err := e.st.CreateBuild(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	e.r.BuildChanged(b)
	runs := e.waitRuns("action_required", lastIs(1, "completed", "action_required"))
	if s := runs[0].Output.Summary; runs[0].Output.Title != "Awaiting approval" || !strings.Contains(s, "a fork (by stranger)") ||
		!strings.Contains(s, "forge approve b1") || !strings.Contains(s, "without secrets") {
		t.Errorf("awaiting approval: %+v", runs[0].Output)
	}
	b.ApprovedBy, b.Reason = "maintainer", "approved by maintainer"
	e.r.BuildChanged(b)
	runs = e.waitRuns("a second check run, queued", lastIs(2, "queued", ""))
	if runs[0].Conclusion != "action_required" || len(runs[0].Requests) != 1 || !strings.Contains(runs[1].Output.Summary, "approved by maintainer") {
		t.Errorf("after approval: %+v", runs)
	}
	b.State, b.Ending, b.Reason, b.Finished = coordinator.Error, coordinator.EndSuperseded, "superseded by bbbbbbb", time.Now()
	e.r.BuildChanged(b)
	runs = e.waitRuns("cancelled", lastIs(2, "completed", "cancelled"))
	if runs[1].Output.Title != "Superseded by bbbbbbb" || !strings.Contains(runs[1].Output.Summary, "| did not start | none | none | golang:1\\.22 |") {
		t.Errorf("superseded: %+v", runs[1].Output)
	}
	if got, _ := e.st.LatestCheckRun(context.Background(), "b1"); got == nil || got.ID != runs[1].ID {
		t.Errorf("the build's check run is %+v, want %d", got, runs[1].ID)
	}
}

// Without checks: write, or with --github-statuses, builds get commit
// statuses and no check run; the token tells which.
func TestStatusesWithoutChecks(t *testing.T) {
	for _, c := range []struct {
		name            string
		grant, statuses bool
	}{{"no permission", false, false}, {"--github-statuses", true, true}} {
		t.Run(c.name, func(t *testing.T) {
			e := newChecksEnv(t, c.grant, nil)
			e.r.Statuses = c.statuses
			if ok, err := e.app.ChecksAllowed(context.Background(), 1); err != nil || ok != c.grant {
				t.Errorf("ChecksAllowed = %v, %v", ok, err)
			}
			b := checkBuild("b1", coordinator.Running)
			e.r.BuildChanged(b)
			if s := e.fake.NextStatus(t, 10*time.Second); s.State != "pending" || s.Description != "running" || s.Context != "forge/execute" {
				t.Errorf("status %+v", s)
			}
			if runs := e.fake.CheckRuns(); len(runs) != 0 {
				t.Errorf("check runs %+v", runs)
			}
		})
	}
}

// checksSayYes says the installation may write checks whatever its token
// says: how a permission revoked after the token was made looks.
type checksSayYes struct{ *App }

func (checksSayYes) ChecksAllowed(context.Context, int64) (bool, error) { return true, nil }

// GitHub's 403 for a check run is ErrNoChecksPermission, and the build
// is reported with statuses instead, to its end.
func TestCheckRunForbiddenFallsBack(t *testing.T) {
	e := newChecksEnv(t, false, nil)
	_, err := e.app.CreateCheckRun(context.Background(), 1, "Codertocat", "Hello-World", CheckRun{Name: "n", HeadSHA: prSHA})
	if !errors.Is(err, ErrNoChecksPermission) {
		t.Fatalf("403: %v", err)
	}
	e.r.App = checksSayYes{e.app}
	b := checkBuild("b1", coordinator.Queued)
	e.r.BuildChanged(b)
	if s := e.fake.NextStatus(t, 10*time.Second); s.State != "pending" || s.Description != "queued" {
		t.Errorf("status %+v", s)
	}
	b.State = coordinator.Failure
	e.r.BuildChanged(b)
	if s := e.fake.NextStatus(t, 10*time.Second); s.State != "failure" {
		t.Errorf("status %+v", s)
	}
	if n := countRequests(e.fake, "POST /api/v3/repos/Codertocat/Hello-World/check-runs"); n != 2 {
		t.Errorf("%d check-run creations tried, want 2 (this test's and the first report's)", n)
	}
}

// An invalid .forge.yml gets a failed check run with an annotation on
// each line at fault, and no build.
func TestInvalidConfigAnnotates(t *testing.T) {
	e := newChecksEnv(t, true, nil)
	builds := newFakeBuilds()
	f := &Forge{App: e.app, Builds: builds, Reporter: e.r}
	e.fake.SetFile(repo, prSHA, badConfig+"resources: {cpus: lots}\n")
	if err := f.HandleEvent(context.Background(), prEvent("pull_request.opened.json", t)); err != nil {
		t.Fatal(err)
	}
	cr := e.waitRuns("a failed check run", lastIs(1, "completed", "failure"))[0]
	want := []fakegithub.Annotation{
		{Path: ".forge.yml", StartLine: 3, EndLine: 3, Level: "failure", Message: `unknown key "timeot"`},
		{Path: ".forge.yml", StartLine: 4, EndLine: 4, Level: "failure"},
	}
	if len(cr.Output.Annotations) != 2 || cr.Output.Annotations[0] != want[0] || cr.Output.Annotations[1].StartLine != 4 ||
		!strings.Contains(cr.Output.Annotations[1].Message, "resources.cpus") {
		t.Errorf("annotations %+v, want %+v", cr.Output.Annotations, want)
	}
	if cr.Output.Title != "Invalid .forge.yml" || cr.Name != "forge/execute" || !strings.Contains(cr.Output.Summary, `- \.forge\.yml:3:1: unknown key "timeot"`) {
		t.Errorf("check run %+v", cr)
	}
	if subs, _ := builds.get(); len(subs) != 0 {
		t.Errorf("submitted %+v", subs)
	}
}
