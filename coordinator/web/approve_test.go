package web

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/forge-ci/forge/coordinator"
)

// A build awaiting approval: a reader may not approve it (nothing is
// recorded), a writer may, once; approving it again, or a build that needs
// no approval, is a 409 that says why.
func TestApprove(t *testing.T) {
	waiting := privateBuild("fork")
	waiting.State, waiting.Reason = coordinator.Queued, coordinator.ReasonAwaitingApproval
	waiting.Untrusted, waiting.NeedsApproval, waiting.Author, waiting.PullRequest = true, true, "stranger", 9
	e := newAPIEnv(t, waiting, privateBuild("run"))
	e.gh.set("alice", "acme/secret", coordinator.Read)
	e.gh.set("bob", "acme/secret", coordinator.Write)
	alice, bob := e.signIn("alice"), e.signIn("bob")

	// The page offers the button to bob only.
	if _, _, page := e.call(alice, "GET", "/builds/fork", ""); strings.Contains(page, `id="approve"`) || !strings.Contains(page, "Untrusted (by stranger)") {
		t.Errorf("alice's page: approve button shown, or the build not said untrusted:\n%s", page)
	}
	if _, _, page := e.call(bob, "GET", "/builds/fork", ""); !strings.Contains(page, `action="/builds/fork/approve"`) {
		t.Errorf("bob's page has no approve button:\n%s", page)
	}

	if status, _, body := e.call(alice, "POST", "/api/builds/fork/approve", ""); status != http.StatusForbidden {
		t.Errorf("alice approves: %d %s", status, body)
	}
	if b, _ := e.st.Build(context.Background(), "fork"); b.ApprovedBy != "" || len(e.approvals) != 0 {
		t.Fatalf("a refused approval was recorded: %q %v", b.ApprovedBy, e.approvals)
	}
	status, _, body := e.call(bob, "POST", "/api/builds/fork/approve", "")
	if status != http.StatusOK || !strings.Contains(body, `"approved_by": "bob"`) || !strings.Contains(body, `"awaiting_approval": false`) {
		t.Errorf("bob approves: %d %s", status, body)
	}
	status, _, body = e.call(bob, "POST", "/api/builds/fork/approve", "")
	if status != http.StatusConflict || !strings.Contains(body, "build fork is not awaiting approval: bob approved it already") {
		t.Errorf("approved twice: %d %s", status, body)
	}
	status, _, body = e.call(bob, "POST", "/api/builds/run/approve", "")
	if status != http.StatusConflict || !strings.Contains(body, "build run is not awaiting approval: it needs none (it is running)") {
		t.Errorf("approve a build that needs none: %d %s", status, body)
	}
	status, _, body = e.call(bob, "POST", "/builds/run/approve", "")
	if status != http.StatusConflict || !strings.Contains(body, "needs none") {
		t.Errorf("approve button of a build that needs none: %d %.300s", status, body)
	}
	if len(e.approvals) != 1 {
		t.Errorf("approvals reaching the lifecycle: %v", e.approvals)
	}
}
