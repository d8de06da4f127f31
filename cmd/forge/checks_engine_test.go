package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/forge-ci/forge/coordinator/web"
	"github.com/forge-ci/forge/internal/fakegithub"
)

// GitHub check runs and re-runs, through the real programs (the rig of
// github_test.go) with the fake GitHub granting the installation
// checks: write.

// checkPayloadDir holds GitHub's check_run and check_suite payloads.
const checkPayloadDir = "../../coordinator/github/testdata/github-webhooks"

// checkRuns are the check runs on sha, oldest first.
func (r *ghRig) checkRuns(sha string) []fakegithub.CheckRun {
	var out []fakegithub.CheckRun
	for _, cr := range r.fake.CheckRuns() {
		if cr.HeadSHA == sha {
			if (cr.Owner != r.owner || cr.Repo != r.repo || cr.Inst != r.inst) && !r.misplaced {
				r.misplaced = true
				r.t.Errorf("check run made on %s/%s with installation %d's token: %+v", cr.Owner, cr.Repo, cr.Inst, cr)
			}
			out = append(out, cr)
		}
	}
	return out
}

// waitCheckRun waits until sha has n check runs and the newest is
// completed, and returns them.
func (r *ghRig) waitCheckRun(sha string, n int, what string) []fakegithub.CheckRun {
	r.t.Helper()
	var got []fakegithub.CheckRun
	ghUntil(r.t, ghWait, fmt.Sprintf("%s: check run %d on %s completed", what, n, sha[:7]), func() bool {
		got = r.checkRuns(sha)
		return len(got) == n && got[n-1].Status == "completed"
	})
	return got
}

// buildOf is the build id a check run links to.
func (r *ghRig) buildOf(cr fakegithub.CheckRun) string {
	r.t.Helper()
	id, ok := strings.CutPrefix(cr.DetailsURL, ghPublicURL+"/builds/")
	if !ok || id == "" || cr.ExternalID != id {
		r.t.Fatalf("check run %d: details_url %q, external_id %q; want %s/builds/<id> and the id", cr.ID, cr.DetailsURL, cr.ExternalID, ghPublicURL)
	}
	return id
}

// rerequested is GitHub's check_run "rerequested" payload (GitHub's
// Re-run button) for check run id on sha of this rig's repository.
func (r *ghRig) rerequested(id int64, sha string) map[string]any {
	r.t.Helper()
	b, err := os.ReadFile(filepath.Join(checkPayloadDir, "check_run.rerequested.json"))
	if err != nil {
		r.t.Fatal(err)
	}
	var p map[string]any
	if err := json.Unmarshal(b, &p); err != nil {
		r.t.Fatal(err)
	}
	r.setRepo(p)
	cr := obj(r.t, p, "check_run")
	cr["id"], cr["head_sha"] = id, sha
	obj(r.t, cr, "app")["id"] = fakegithub.AppID
	p["installation"] = map[string]any{"id": r.inst}
	return p
}

// requests are a check run's requests as "METHOD status/conclusion".
func requests(cr fakegithub.CheckRun) []string {
	var out []string
	for _, q := range cr.Requests {
		out = append(out, q.Method+" "+q.Status+"/"+q.Conclusion)
	}
	return out
}

// A pull request gets a check run through its whole life, and no commit
// status; GitHub's Re-run of it builds the same commit again under a new
// check run; a Re-run of a check run Forge did not make builds nothing;
// an invalid .forge.yml gets a failed check run annotated at its line.
func TestGitHubCheckRuns(t *testing.T) {
	r := startGHRig(t, true)
	r.fake.GrantChecks(r.inst)
	sha := randSHA(t)
	r.commit(sha, r.config([]string{"for i in $(seq 1 70); do echo line-$i; done", "sleep 1", "cat hello.txt", `printf '\033[32mgreen\033[0m\n'`}), "hello checks\n")
	r.deliver("pull_request", r.prPayload("pull_request.opened.json", 21, sha, "feature"), http.StatusAccepted)

	cr := r.waitCheckRun(sha, 1, "the build")[0]
	id := r.buildOf(cr)
	b := r.build(id)
	if want := []string{"POST queued/", "PATCH in_progress/", "PATCH completed/success"}; !slices.Equal(requests(cr), want) {
		t.Errorf("check run requests %v, want %v", requests(cr), want)
	}
	if cr.Name != "forge/execute" || cr.Conclusion != "success" || cr.Output.Title != "Passed" || b.State != "success" {
		t.Errorf("check run %+v of build %+v", cr, b)
	}
	for _, w := range []string{" | 0 | ", b.NodeID, r.image} {
		if !strings.Contains(strings.ReplaceAll(cr.Output.Summary, `\`, ""), w) {
			t.Errorf("summary lacks %q:\n%s", w, cr.Output.Summary)
		}
	}
	text := cr.Output.Text
	if !strings.Contains(text, "line-70\n") || !strings.Contains(text, "hello checks") || !strings.Contains(text, "\ngreen\n") ||
		strings.Contains(text, "line-9\n") || strings.Contains(text, "\x1b") {
		t.Errorf("the check run's log tail:\n%s", text)
	}
	if s := r.statuses(sha, "forge/execute"); len(s) != 0 {
		t.Errorf("commit statuses set too: %+v", s)
	}

	// GitHub's Re-run: the same commit and action, built again.
	r.deliver("check_run", r.rerequested(cr.ID, sha), http.StatusAccepted)
	runs := r.waitCheckRun(sha, 2, "the re-run")
	id2 := r.buildOf(runs[1])
	b2 := r.build(id2)
	if id2 == id || b2.SHA != sha || b2.Action != "execute" || b2.RerunOf != id || b2.RerunBy != "octocat" || b2.State != "success" ||
		runs[1].Conclusion != "success" || runs[0].Conclusion != "success" {
		t.Errorf("re-run %+v, check runs %+v", b2, runs)
	}
	r.log(id2, "hello checks")
	if old := r.build(id); !slices.Equal(old.Reruns, []string{id2}) {
		t.Errorf("the re-run build lists re-runs %v", old.Reruns)
	}
	if n := countGH(r, "GET /api/v3/repos/"+r.full+"/tarball/"+sha); n != 2 {
		t.Errorf("%d source downloads, want 2: the re-run fetched the commit again", n)
	}

	// A Re-run of a check run Forge did not make: 200, nothing built.
	if code, body := r.post("check_run", randHex(t, 16), r.rerequested(cr.ID+1000, sha)); code != http.StatusOK || !strings.Contains(body, "did not make") {
		t.Errorf("re-run of a check run Forge did not make: %d %q", code, body)
	}

	// An invalid .forge.yml: a failed check run, annotated at its line.
	bad := randSHA(t)
	r.commit(bad, r.config([]string{"true"}, "timeot: 5m"), "x\n")
	r.deliver("pull_request", r.prPayload("pull_request.opened.json", 22, bad, "broken"), http.StatusAccepted)
	badRun := r.waitCheckRun(bad, 1, "the invalid config")[0]
	line := len(strings.Split(strings.TrimSuffix(r.config([]string{"true"}), "\n"), "\n")) + 1
	want := fakegithub.Annotation{Path: ".forge.yml", StartLine: line, EndLine: line, Level: "failure", Message: `unknown key "timeot"`}
	if badRun.Conclusion != "failure" || badRun.Output.Title != "Invalid .forge.yml" || len(badRun.Output.Annotations) != 1 || badRun.Output.Annotations[0] != want {
		t.Errorf("invalid config's check run %+v, want the annotation %+v", badRun, want)
	}
	if bs := r.builds(); len(bs) != 2 {
		t.Errorf("%d builds, want 2 (the build and its re-run)", len(bs))
	}
	r.done()
}

func countGH(r *ghRig, prefix string) int {
	n := 0
	for _, q := range r.fake.Requests() {
		if strings.HasPrefix(q, prefix) {
			n++
		}
	}
	return n
}

// An untrusted pull request's check run asks for action while it awaits
// approval; approved, it runs under a new check run. Its re-run (forge
// rerun) waits for approval again, with nothing in swarm; once the commit
// has no .forge.yml, a re-run builds nothing and says why, to the person
// and on GitHub.
func TestGitHubRerunUntrusted(t *testing.T) {
	r := startGHRig(t, true)
	r.fake.GrantChecks(r.inst)
	sha := randSHA(t)
	r.commit(sha, r.config([]string{"cat hello.txt"}), "from a fork\n")
	r.deliver("pull_request", r.forkPayload("pull_request.opened.json", 31, sha), http.StatusAccepted)
	waiting := r.waitCheckRun(sha, 1, "awaiting approval")[0]
	id := r.buildOf(waiting)
	if waiting.Conclusion != "action_required" || waiting.Output.Title != "Awaiting approval" || !r.build(id).AwaitingApproval {
		t.Fatalf("awaiting approval: %+v", waiting)
	}
	if out, err := r.approve(id); err != nil {
		t.Fatalf("forge approve: %q %v", out, err)
	}
	ran := r.waitCheckRun(sha, 2, "the approved build")
	if r.buildOf(ran[1]) != id || ran[1].Conclusion != "success" || !slices.Equal(requests(ran[0]), []string{"POST completed/action_required"}) {
		t.Errorf("approved: %+v", ran)
	}

	out, err := run(t, "rerun", "--server", r.base, "--token", r.admin, id)
	if err != nil || !strings.Contains(out, "re-running "+id+" as ") || !strings.Contains(out, "awaiting approval") {
		t.Fatalf("forge rerun: %q %v", out, err)
	}
	again := r.waitCheckRun(sha, 3, "the re-run")[2]
	id2 := r.buildOf(again)
	if again.Conclusion != "action_required" || id2 == id {
		t.Errorf("the re-run's check run %+v", again)
	}
	if b := r.awaitingBuild(id2); b.RerunOf != id || b.RerunBy != "admin token" || b.SHA != sha {
		t.Errorf("re-run %+v", b)
	}

	r.fake.RemoveFile(r.full, sha)
	_, err = run(t, "rerun", "--server", r.base, "--token", r.admin, id)
	if err == nil || !strings.Contains(err.Error(), "no .forge.yml at "+sha[:7]) {
		t.Errorf("forge rerun without .forge.yml: %v", err)
	}
	gone := r.waitCheckRun(sha, 4, "the refused re-run")[3]
	if gone.Conclusion != "failure" || gone.Output.Title != "No .forge.yml" || gone.ExternalID != "" {
		t.Errorf("refused re-run's check run %+v", gone)
	}
	if bs := r.builds(); len(bs) != 2 {
		t.Errorf("%d builds, want 2", len(bs))
	}
	if _, err := run(t, "cancel", "--server", r.base, "--token", r.admin, id2); err != nil {
		t.Fatal(err)
	}
	var cancelled []fakegithub.CheckRun
	ghUntil(t, ghWait, "the cancelled re-run's check run", func() bool {
		cancelled = r.checkRuns(sha)
		return cancelled[2].Conclusion == "cancelled"
	})
	if cancelled[2].Output.Title != "Cancelled by admin token" {
		t.Errorf("cancelled: %+v", cancelled[2].Output)
	}
	r.done()
}

// awaitingBuild checks that build id awaits approval with nothing in
// swarm, and returns it.
func (r *ghRig) awaitingBuild(id string) web.BuildView {
	r.t.Helper()
	b := r.build(id)
	if b.State != "queued" || !b.AwaitingApproval || !b.Untrusted {
		r.t.Fatalf("build %s does not await approval: %+v", id, b)
	}
	r.noServices("forge.build=" + id)
	return b
}
