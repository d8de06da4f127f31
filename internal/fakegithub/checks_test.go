package fakegithub_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"github.com/bradleyfalzon/ghinstallation/v2"
	gh "github.com/google/go-github/v62/github"

	"github.com/forge-ci/forge/internal/fakegithub"
	"github.com/forge-ci/forge/internal/fakegithub/fakegithubtest"
)

const checkSHA = "0123456789abcdef0123456789abcdef01234567"

// A check run's life through go-github: made queued, then in_progress,
// then completed with an output and an annotation; the fake keeps each
// request, and answers in GitHub's shape.
func TestCheckRuns(t *testing.T) {
	f := fakegithubtest.New(t)
	f.SetInstallation("o/r", 7)
	f.GrantChecks(7)
	_, inst := clients(t, f, 7, fakegithubtest.AppKey(t))
	ctx := context.Background()

	cr, resp, err := inst.Checks.CreateCheckRun(ctx, "o", "r", gh.CreateCheckRunOptions{Name: "forge/execute", HeadSHA: checkSHA,
		DetailsURL: gh.String("http://forge.test/builds/b1"), ExternalID: gh.String("b1"), Status: gh.String("queued"),
		Output: &gh.CheckRunOutput{Title: gh.String("Queued"), Summary: gh.String("waits for a slot")}})
	if err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("create: %v %v", resp, err)
	}
	if cr.GetID() == 0 || cr.GetStatus() != "queued" || cr.Conclusion != nil || cr.GetHeadSHA() != checkSHA ||
		cr.GetApp().GetID() != fakegithub.AppID || cr.GetExternalID() != "b1" || cr.GetDetailsURL() != "http://forge.test/builds/b1" ||
		cr.GetOutput().GetTitle() != "Queued" || cr.GetName() != "forge/execute" || cr.StartedAt == nil || cr.CompletedAt != nil {
		t.Errorf("created %+v", cr)
	}
	if _, _, err := inst.Checks.UpdateCheckRun(ctx, "o", "r", cr.GetID(), gh.UpdateCheckRunOptions{Name: "forge/execute", Status: gh.String("in_progress")}); err != nil {
		t.Fatal(err)
	}
	done, _, err := inst.Checks.UpdateCheckRun(ctx, "o", "r", cr.GetID(), gh.UpdateCheckRunOptions{Name: "forge/execute",
		Status: gh.String("completed"), Conclusion: gh.String("failure"),
		Output: &gh.CheckRunOutput{Title: gh.String("Failed"), Summary: gh.String("exit code 2"), Text: gh.String("log"),
			Annotations: []*gh.CheckRunAnnotation{{Path: gh.String(".forge.yml"), StartLine: gh.Int(3), EndLine: gh.Int(3),
				AnnotationLevel: gh.String("failure"), Message: gh.String("bad")}}}})
	if err != nil {
		t.Fatal(err)
	}
	if done.GetStatus() != "completed" || done.GetConclusion() != "failure" || done.CompletedAt == nil || done.GetOutput().GetAnnotationsCount() != 1 {
		t.Errorf("completed %+v", done)
	}
	runs := f.CheckRuns()
	if len(runs) != 1 {
		t.Fatalf("check runs %+v", runs)
	}
	got := runs[0]
	wantReqs := []fakegithub.CheckRunRequest{{Method: "POST", Status: "queued", Title: "Queued"}, {Method: "PATCH", Status: "in_progress"},
		{Method: "PATCH", Status: "completed", Conclusion: "failure", Title: "Failed"}}
	if !reflect.DeepEqual(got.Requests, wantReqs) {
		t.Errorf("requests %+v\nwant %+v", got.Requests, wantReqs)
	}
	wantAnn := []fakegithub.Annotation{{Path: ".forge.yml", StartLine: 3, EndLine: 3, Level: "failure", Message: "bad"}}
	if got.Inst != 7 || got.Owner != "o" || got.Repo != "r" || got.Output.Text != "log" || !reflect.DeepEqual(got.Output.Annotations, wantAnn) {
		t.Errorf("kept %+v", got)
	}
	// Another process reads the same.
	r, err := http.Get(f.URL() + "/_fake/check-runs")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	var remote []fakegithub.CheckRun
	if err := json.NewDecoder(r.Body).Decode(&remote); err != nil || len(remote) != 1 || remote[0].Conclusion != "failure" {
		t.Errorf("/_fake/check-runs: %+v %v", remote, err)
	}
}

// The access token says what the installation may do, as GitHub's does;
// a token without checks: write gets GitHub's 403 (which a correct client
// expects: not reported), and a token keeps the permissions it was made
// with.
func TestCheckRunPermissions(t *testing.T) {
	f := fakegithubtest.New(t)
	f.SetInstallation("o/r", 7)
	key := fakegithubtest.AppKey(t)
	atr := ghinstallation.NewAppsTransportFromPrivateKey(f.Client().Transport, fakegithub.AppID, key)
	atr.BaseURL = strings.TrimSuffix(f.APIBase(), "/")
	itr := ghinstallation.NewFromAppsTransport(atr, 7)
	itr.BaseURL = atr.BaseURL
	if _, err := itr.Token(context.Background()); err != nil {
		t.Fatal(err)
	}
	perms, err := itr.Permissions()
	if err != nil || perms.GetChecks() != "" || perms.GetStatuses() != "write" || perms.GetContents() != "read" {
		t.Errorf("default permissions %+v %v", perms, err)
	}
	_, inst := clients(t, f, 7, key)
	_, resp, err := inst.Checks.CreateCheckRun(context.Background(), "o", "r", gh.CreateCheckRunOptions{Name: "x", HeadSHA: checkSHA})
	var er *gh.ErrorResponse
	if !errors.As(err, &er) || resp.StatusCode != http.StatusForbidden || er.Message != "Resource not accessible by integration" {
		t.Errorf("create without checks: write: %v %v", resp, err)
	}

	f.SetPermissions(7, map[string]string{"checks": "write", "metadata": "read"})
	_, fresh := clients(t, f, 7, key)
	if _, _, err := fresh.Checks.CreateCheckRun(context.Background(), "o", "r", gh.CreateCheckRunOptions{Name: "x", HeadSHA: checkSHA}); err != nil {
		t.Errorf("create with checks: write: %v", err)
	}
	// Without statuses: write, a status is refused the same way; the
	// old token (made before) may still create none.
	if _, resp, _ := fresh.Repositories.CreateStatus(context.Background(), "o", "r", checkSHA, &gh.RepoStatus{State: gh.String("success")}); resp.StatusCode != http.StatusForbidden {
		t.Errorf("status without statuses: write: %d", resp.StatusCode)
	}
	if _, resp, _ := inst.Checks.CreateCheckRun(context.Background(), "o", "r", gh.CreateCheckRunOptions{Name: "x", HeadSHA: checkSHA}); resp.StatusCode != http.StatusForbidden {
		t.Errorf("an old token gained checks: write: %d", resp.StatusCode)
	}
}

// What GitHub refuses with 422, the fake refuses and reports (only a
// client bug sends it); a failure asked for is given once.
func TestCheckRunRefusals(t *testing.T) {
	rec := &recorder{TB: t}
	f := fakegithubtest.New(rec)
	f.SetInstallation("o/r", 7)
	f.SetInstallation("o/other", 8)
	f.GrantChecks(7)
	_, inst := clients(t, f, 7, fakegithubtest.AppKey(t))
	ctx := context.Background()
	cr, _, err := inst.Checks.CreateCheckRun(ctx, "o", "r", gh.CreateCheckRunOptions{Name: "n", HeadSHA: checkSHA,
		Conclusion: gh.String("success"), Output: &gh.CheckRunOutput{Title: gh.String("t"), Summary: gh.String("s")}})
	if err != nil || cr.GetStatus() != "completed" {
		t.Fatalf("a conclusion completes the check run: %+v %v", cr, err)
	}
	long := strings.Repeat("x", fakegithub.MaxCheckText+1)
	ann := func(level string, start, end int) *gh.CheckRunAnnotation {
		return &gh.CheckRunAnnotation{Path: gh.String(".forge.yml"), StartLine: gh.Int(start), EndLine: gh.Int(end),
			AnnotationLevel: gh.String(level), Message: gh.String("m")}
	}
	many := make([]*gh.CheckRunAnnotation, fakegithub.MaxAnnotations+1)
	for i := range many {
		many[i] = ann("notice", 1, 1)
	}
	out := func(text string, anns ...*gh.CheckRunAnnotation) *gh.CheckRunOutput {
		return &gh.CheckRunOutput{Title: gh.String("t"), Summary: gh.String("s"), Text: gh.String(text), Annotations: anns}
	}
	for _, c := range []struct {
		name string
		opts gh.CreateCheckRunOptions
		want string
	}{
		{"stale", gh.CreateCheckRunOptions{Name: "n", HeadSHA: checkSHA, Conclusion: gh.String("stale")}, "only GitHub"},
		{"no name", gh.CreateCheckRunOptions{HeadSHA: checkSHA}, "name is required"},
		{"bad sha", gh.CreateCheckRunOptions{Name: "n", HeadSHA: "main"}, "head_sha"},
		{"completed without conclusion", gh.CreateCheckRunOptions{Name: "n", HeadSHA: checkSHA, Status: gh.String("completed")}, "conclusion is required"},
		{"waiting", gh.CreateCheckRunOptions{Name: "n", HeadSHA: checkSHA, Status: gh.String("waiting")}, `status "waiting"`},
		{"details_url", gh.CreateCheckRunOptions{Name: "n", HeadSHA: checkSHA, DetailsURL: gh.String("/builds/1")}, "details_url"},
		{"no summary", gh.CreateCheckRunOptions{Name: "n", HeadSHA: checkSHA, Output: &gh.CheckRunOutput{Title: gh.String("t")}}, "title and a summary"},
		{"long text", gh.CreateCheckRunOptions{Name: "n", HeadSHA: checkSHA, Output: out(long)}, "output.text is 65536"},
		{"51 annotations", gh.CreateCheckRunOptions{Name: "n", HeadSHA: checkSHA, Output: out("", many...)}, "51 annotations"},
		{"level", gh.CreateCheckRunOptions{Name: "n", HeadSHA: checkSHA, Output: out("", ann("error", 1, 1))}, "annotation 0"},
		{"lines", gh.CreateCheckRunOptions{Name: "n", HeadSHA: checkSHA, Output: out("", ann("notice", 0, 0))}, "annotation 0"},
	} {
		_, resp, err := inst.Checks.CreateCheckRun(ctx, "o", "r", c.opts)
		if resp == nil || resp.StatusCode != http.StatusUnprocessableEntity || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v %v", c.name, resp, err)
		}
	}
	// A completed check run is not made queued again.
	if _, resp, _ := inst.Checks.UpdateCheckRun(ctx, "o", "r", cr.GetID(), gh.UpdateCheckRunOptions{Name: "n", Status: gh.String("queued")}); resp.StatusCode != http.StatusUnprocessableEntity {
		t.Errorf("reopened: %d", resp.StatusCode)
	}
	// Unknown, or on another repository.
	if _, resp, _ := inst.Checks.UpdateCheckRun(ctx, "o", "r", 999, gh.UpdateCheckRunOptions{Name: "n"}); resp.StatusCode != http.StatusNotFound {
		t.Errorf("unknown check run: %d", resp.StatusCode)
	}
	if _, resp, _ := inst.Checks.UpdateCheckRun(ctx, "o", "other", cr.GetID(), gh.UpdateCheckRunOptions{Name: "n"}); resp.StatusCode != http.StatusNotFound {
		t.Errorf("another installation's repository: %d", resp.StatusCode)
	}
	f.FailCheckRuns(1, "502")
	if _, resp, _ := inst.Checks.UpdateCheckRun(ctx, "o", "r", cr.GetID(), gh.UpdateCheckRunOptions{Name: "n"}); resp.StatusCode != http.StatusBadGateway {
		t.Errorf("failure asked for: %d", resp.StatusCode)
	}
	if _, _, err := inst.Checks.UpdateCheckRun(ctx, "o", "r", cr.GetID(), gh.UpdateCheckRunOptions{Name: "renamed"}); err != nil {
		t.Errorf("after the failure: %v", err)
	}
	if runs := f.CheckRuns(); len(runs) != 1 || runs[0].Name != "renamed" || runs[0].Status != "completed" || len(runs[0].Requests) != 2 {
		t.Errorf("refused requests changed the check runs: %+v", runs)
	}
	all := rec.all()
	for _, w := range []string{"only GitHub", "completed: the fake refuses", "no such check run"} {
		if !strings.Contains(all, w) {
			t.Errorf("not reported: %q in %q", w, all)
		}
	}
}
