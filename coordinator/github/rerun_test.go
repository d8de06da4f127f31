package github

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/config"
	"github.com/forge-ci/forge/coordinator/store"
	"github.com/forge-ci/forge/internal/fakegithub"
)

// checkPayloadDir holds GitHub's check_run and check_suite payloads.
const checkPayloadDir = "testdata/github-webhooks"

// checkPayload is GitHub's payload file with the check run's (or suite's)
// app, id and head SHA set, on Codertocat/Hello-World, installation 1.
func checkPayload(t *testing.T, file string, app, id int64, sha string) []byte {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(checkPayloadDir, file))
	if err != nil {
		t.Fatal(err)
	}
	var p map[string]any
	if err := json.Unmarshal(raw, &p); err != nil {
		t.Fatal(err)
	}
	obj, _ := p["check_run"].(map[string]any)
	if obj == nil {
		obj = p["check_suite"].(map[string]any)
	}
	obj["app"].(map[string]any)["id"] = app
	obj["id"], obj["head_sha"] = id, sha
	r := p["repository"].(map[string]any)
	r["name"], r["full_name"] = "Hello-World", repo
	r["owner"].(map[string]any)["login"] = "Codertocat"
	p["installation"] = map[string]any{"id": 1}
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// GitHub's own check_run and check_suite payloads decode to re-runs
// only when "rerequested".
func TestDecodeCheckEvents(t *testing.T) {
	for _, c := range []struct {
		event, file string
		work        bool
		kind        Kind
		app, id     int64
		sha, sender string
	}{
		{"check_run", "check_run.rerequested.json", true, KindRerunCheckRun, 2, 4, "d6fde92930d4715a2b49857d24b940956b26d2d3", "octocat"},
		{"check_suite", "check_suite.rerequested.json", true, KindRerunCheckSuite, 29310, 0, prSHA, "octocoders-linter[bot]"},
		{"check_run", "check_run.created.json", false, "", 0, 0, "", ""},
		{"check_suite", "check_suite.requested.json", false, "", 0, 0, "", ""},
	} {
		raw, err := os.ReadFile(filepath.Join(checkPayloadDir, c.file))
		if err != nil {
			t.Fatal(err)
		}
		ev, work, note, err := Decode(c.event, raw)
		if err != nil || work != c.work {
			t.Errorf("%s: work %v, note %q, err %v", c.file, work, note, err)
			continue
		}
		if !work {
			if !strings.HasPrefix(note, "ignored: "+c.event+".") {
				t.Errorf("%s: note %q", c.file, note)
			}
			continue
		}
		if ev.Kind != c.kind || ev.App != c.app || ev.CheckRunID != c.id || ev.SHA != c.sha || ev.Sender != c.sender || ev.Installation == 0 {
			t.Errorf("%s: %+v", c.file, ev)
		}
	}
	// A re-run without what it needs is malformed.
	bad := checkPayload(t, "check_run.rerequested.json", 2, 0, prSHA)
	if _, _, _, err := Decode("check_run", bad); err == nil {
		t.Error("a check run without an id was taken")
	}
	bad = checkPayload(t, "check_run.rerequested.json", 2, 4, "main")
	if _, _, _, err := Decode("check_run", bad); err == nil {
		t.Error("a head sha that is not a commit id was taken")
	}
}

// rerunEnv is Forge with a real store of builds, the fake GitHub and a
// recording lifecycle.
type rerunEnv struct {
	*checksEnv
	f      *Forge
	builds *fakeBuilds
}

func newRerunEnv(t *testing.T, grant bool) *rerunEnv {
	e := newChecksEnv(t, grant, nil)
	builds := newFakeBuilds()
	return &rerunEnv{checksEnv: e, builds: builds, f: &Forge{App: e.app, Builds: builds, Reporter: e.r, Records: e.st}}
}

func (e *rerunEnv) record(b *coordinator.Build) {
	e.t.Helper()
	if err := e.st.CreateBuild(context.Background(), b); err != nil {
		e.t.Fatal(err)
	}
}

// A re-run builds the same SHA and action again, linked to its build,
// with .forge.yml read again; an untrusted build's re-run waits for
// approval again.
func TestRerun(t *testing.T) {
	e := newRerunEnv(t, false)
	e.fake.SetFile(repo, prSHA, validConfig)
	old := checkBuild("old", coordinator.Failure)
	old.Untrusted, old.Author, old.Fork, old.ApprovedBy = true, "stranger", true, "maintainer"
	old.Config = "stale text"
	e.record(old)
	if _, err := e.f.Rerun(context.Background(), old, "alice"); err != nil {
		t.Fatal(err)
	}
	subs, _ := e.builds.get()
	if len(subs) != 1 {
		t.Fatalf("%d submits", len(subs))
	}
	s := subs[0].Subject
	want := old.Subject
	want.RerunOf, want.RerunBy, want.NeedsApproval = "old", "alice", true
	if s != want {
		t.Errorf("re-run\n got %+v\nwant %+v", s, want)
	}
	if subs[0].ConfigText != validConfig || subs[0].Config == nil || subs[0].Source == nil {
		t.Errorf("request %+v", subs[0])
	}

	// --require-approval none: a trusted-or-not re-run runs at once.
	e.f.RequireApproval = coordinator.ApproveNone
	if _, err := e.f.Rerun(context.Background(), old, "alice"); err != nil {
		t.Fatal(err)
	}
	if subs, _ = e.builds.get(); subs[1].Subject.NeedsApproval {
		t.Error("a re-run waits for approval under --require-approval none")
	}

	// Not from GitHub: nothing to fetch.
	local := checkBuild("local", coordinator.Success)
	local.InstallationID = 0
	if _, err := e.f.Rerun(context.Background(), local, "alice"); !errors.Is(err, ErrNotFromGitHub) || !errors.Is(err, coordinator.ErrNotRerunnable) {
		t.Errorf("re-run of a local build: %v", err)
	}
}

// Re-running an older commit of a pull request must not supersede the
// build of its newer head: the re-run keeps the key only while its
// commit is the newest built under it.
func TestRerunKey(t *testing.T) {
	e := newRerunEnv(t, false)
	e.fake.SetFile(repo, prSHA, validConfig)
	old := checkBuild("a", coordinator.Success)
	e.record(old)
	if _, err := e.f.Rerun(context.Background(), old, "alice"); err != nil {
		t.Fatal(err)
	}
	newer := checkBuild("b", coordinator.Running)
	newer.SHA, newer.Created = pushSHA, old.Created.Add(time.Second)
	e.record(newer)
	if _, err := e.f.Rerun(context.Background(), old, "alice"); err != nil {
		t.Fatal(err)
	}
	subs, _ := e.builds.get()
	if subs[0].Subject.Key != old.Key || subs[1].Subject.Key != "" {
		t.Errorf("keys %q then %q, want %q then none", subs[0].Subject.Key, subs[1].Subject.Key, old.Key)
	}
}

// A re-run of a commit whose .forge.yml is gone, invalid, or without the
// action any more builds nothing and tells GitHub why: an error status,
// or a failed check run.
func TestRerunWithoutConfig(t *testing.T) {
	e := newRerunEnv(t, false)
	old := checkBuild("old", coordinator.Success)
	e.record(old)
	_, err := e.f.Rerun(context.Background(), old, "alice")
	if !errors.Is(err, ErrNoConfig) || !errors.Is(err, coordinator.ErrNotRerunnable) || !strings.Contains(err.Error(), "no .forge.yml at ec26c3e") {
		t.Errorf("no .forge.yml: %v", err)
	}
	if s := e.fake.NextStatus(t, 10*time.Second); s.State != "error" || s.Context != "forge/execute" ||
		s.Description != "nothing to re-run: the repository has no .forge.yml at ec26c3e" {
		t.Errorf("status %+v", s)
	}
	e.fake.SetFile(repo, prSHA, badConfig)
	var cerr *config.Error
	if _, err := e.f.Rerun(context.Background(), old, "alice"); !errors.As(err, &cerr) || cerr.Line != 3 || !errors.Is(err, coordinator.ErrNotRerunnable) {
		t.Errorf("invalid .forge.yml: %v", err)
	}
	if s := e.fake.NextStatus(t, 10*time.Second); s.State != "error" || !strings.Contains(s.Description, "timeot") {
		t.Errorf("status %+v", s)
	}
	e.fake.SetFile(repo, prSHA, "image: x\nexecute: [\"true\"]\n")
	old.Action = "deploy"
	if _, err := e.f.Rerun(context.Background(), old, "alice"); !errors.Is(err, ErrNoAction) {
		t.Errorf("no such action: %v", err)
	}
	if s := e.fake.NextStatus(t, 10*time.Second); s.State != "error" || s.Context != "forge/deploy" || !strings.Contains(s.Description, `no action "deploy"`) {
		t.Errorf("status %+v", s)
	}
	if subs, _ := e.builds.get(); len(subs) != 0 {
		t.Errorf("submitted %+v", subs)
	}

	// With checks: write, a failed check run says it.
	c := newRerunEnv(t, true)
	c.record(checkBuild("old", coordinator.Success))
	if _, err := c.f.Rerun(context.Background(), checkBuild("old", coordinator.Success), "alice"); !errors.Is(err, ErrNoConfig) {
		t.Fatal(err)
	}
	cr := c.waitRuns("a failed check run", lastIs(1, "completed", "failure"))[0]
	if cr.Output.Title != "No .forge.yml" || !strings.Contains(cr.Output.Summary, "no `.forge.yml` at ec26c3e") {
		t.Errorf("check run %+v", cr.Output)
	}
}

// The webhook takes a re-run only of Forge's own check runs and commits:
// another app's, one Forge did not make, or a commit it never built, are
// answered 200 and queue nothing; Forge's own is queued, and the worker
// re-runs that build (a check run) or the newest build of each action (a
// suite).
func TestRerunEvents(t *testing.T) {
	e := newRerunEnv(t, true)
	e.fake.SetFile(repo, prSHA, validConfig)
	ex := checkBuild("ex", coordinator.Success)
	dep := checkBuild("dep-old", coordinator.Success)
	dep.Action = "deploy"
	dep2 := checkBuild("dep-new", coordinator.Failure)
	dep2.Action, dep2.Created = "deploy", dep.Created.Add(time.Second)
	for _, b := range []*coordinator.Build{ex, dep, dep2} {
		e.record(b)
	}
	if err := e.st.AddCheckRun(context.Background(), coordinator.CheckRun{ID: 77, BuildID: "ex", Owner: "Codertocat", Repo: "Hello-World", Status: "completed"}); err != nil {
		t.Fatal(err)
	}
	h := &Webhook{Secret: testSecret, Deliveries: &memDeliveries{}, Queue: NewQueue(8), AppID: fakegithub.AppID, Records: e.st}
	for _, c := range []struct {
		name, event string
		body        []byte
		code        int
		note        string
	}{
		{"another app's", "check_run", checkPayload(t, "check_run.rerequested.json", 2, 77, prSHA), 200, "another GitHub App (2)"},
		{"not Forge's", "check_run", checkPayload(t, "check_run.rerequested.json", fakegithub.AppID, 78, prSHA), 200, "Forge did not make check run 78"},
		{"never built", "check_suite", checkPayload(t, "check_suite.rerequested.json", fakegithub.AppID, 5, pushSHA), 200, "Forge never built " + pushSHA},
		{"suite of another app", "check_suite", checkPayload(t, "check_suite.rerequested.json", 29310, 5, prSHA), 200, "another GitHub App"},
		{"Forge's check run", "check_run", checkPayload(t, "check_run.rerequested.json", fakegithub.AppID, 77, prSHA), 202, "queued"},
		{"Forge's suite", "check_suite", checkPayload(t, "check_suite.rerequested.json", fakegithub.AppID, 5, prSHA), 202, "queued"},
	} {
		queued := h.Queue.Len()
		w := post(h, c.event, c.body, "")
		if w.Code != c.code || !strings.Contains(w.Body.String(), c.note) {
			t.Errorf("%s: %d %q, want %d %q", c.name, w.Code, w.Body.String(), c.code, c.note)
		}
		if want := queued + map[bool]int{true: 1}[c.code == http.StatusAccepted]; h.Queue.Len() != want {
			t.Errorf("%s: %d queued, want %d", c.name, h.Queue.Len(), want)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for range 2 {
		ev, ok := h.Queue.take(ctx)
		if !ok {
			t.Fatal("fewer than 2 events queued")
		}
		if err := e.f.HandleEvent(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	subs, _ := e.builds.get()
	var got []string
	for _, s := range subs {
		got = append(got, s.Subject.RerunOf+"/"+s.Subject.Action+"/"+s.Subject.RerunBy)
	}
	// The suite's: the newest build of each action, newest first.
	want := []string{"ex/execute/octocat", "dep-new/deploy/octocoders-linter[bot]", "ex/execute/octocoders-linter[bot]"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("re-runs %v, want %v", got, want)
	}
	// Records that fail are a 500: GitHub redelivers.
	broken, err := store.Open(":memory:")
	if err != nil {
		t.Fatal(err)
	}
	broken.Close()
	h.Records = broken
	if w := post(h, "check_run", checkPayload(t, "check_run.rerequested.json", fakegithub.AppID, 77, prSHA), ""); w.Code != http.StatusInternalServerError {
		t.Errorf("records unavailable: %d %s", w.Code, w.Body.String())
	}
}
