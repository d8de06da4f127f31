package main

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/swarm"

	"github.com/forge-ci/forge/internal/dockertest"
	"github.com/forge-ci/forge/internal/fakegithub"
	"github.com/forge-ci/forge/internal/testwait"
)

// forkPayload is a pull request whose head is in a fork, by an author
// who is not a member.
func (r *ghRig) forkPayload(file string, number int, sha string) map[string]any {
	p := r.prPayload(file, number, sha, "patch")
	pr := obj(r.t, p, "pull_request")
	obj(r.t, pr, "head", "repo")["full_name"] = "stranger/" + r.repo
	pr["author_association"] = "NONE"
	obj(r.t, pr, "user")["login"] = "stranger"
	return p
}

// approve is forge approve ID with the admin token.
func (r *ghRig) approve(id string) (string, error) {
	return run(r.t, "approve", "--server", r.base, "--token", r.admin, id)
}

// awaiting waits for sha's pending "awaiting approval" status, checks
// that nothing of its build is in swarm for a while, and returns the id.
func (r *ghRig) awaiting(sha string) string {
	r.t.Helper()
	got := r.waitStatus(sha, "forge/execute", `pending "awaiting approval"`, func(s fakegithub.Status) bool {
		return s.State == "pending" && s.Description == "awaiting approval"
	})
	id, ok := strings.CutPrefix(got[len(got)-1].TargetURL, ghPublicURL+"/builds/")
	if !ok || id == "" {
		r.t.Fatalf("awaiting status %+v has no build link", got[len(got)-1])
	}
	b := r.build(id)
	if b.State != "queued" || b.Reason != "awaiting approval" || !b.AwaitingApproval || !b.Untrusted || b.Author != "stranger" {
		r.t.Fatalf("awaiting build %+v", b)
	}
	testwait.Pause(r.t, time.Second)
	svcs, err := r.cli.ServiceList(dockertest.Context(r.t, 10*time.Second), swarm.ServiceListOptions{
		Filters: filters.NewArgs(filters.Arg("label", "forge.build="+id))})
	if err != nil || len(svcs) != 0 {
		r.t.Fatalf("services of an awaiting build: %d %v", len(svcs), err)
	}
	return id
}

// A fork's pull request waits for approval with nothing in swarm; the
// admin approves it with forge approve and it runs; a new push waits
// again, and approving the old build once more is refused.
func TestGitHubForkAwaitsApproval(t *testing.T) {
	r := startGHRig(t, true)
	first, second := randSHA(t), randSHA(t)
	r.commit(first, r.config([]string{"cat hello.txt"}), "from a fork\n")
	r.commit(second, r.config([]string{"cat hello.txt"}), "pushed again\n")
	r.deliver("pull_request", r.forkPayload("pull_request.opened.json", 12, first), http.StatusAccepted)
	id1 := r.awaiting(first)

	out, err := r.approve(id1)
	if err != nil || !strings.Contains(out, "approved "+id1) {
		t.Fatalf("forge approve: %q %v", out, err)
	}
	last, id := r.final(first, "forge/execute")
	if id != id1 || last.State != "success" {
		t.Fatalf("approved build's final status %+v (build %s)", last, id)
	}
	if b := r.build(id1); b.ApprovedBy == "" || b.Approved == nil || b.State != "success" {
		t.Errorf("approved build %+v", b)
	}
	r.log(id1, "from a fork")
	if _, err := r.approve(id1); err == nil || !strings.Contains(err.Error(), "not awaiting approval") {
		t.Errorf("approve a finished build: %v", err)
	}

	r.deliver("pull_request", r.forkPayload("pull_request.synchronize.json", 12, second), http.StatusAccepted)
	id2 := r.awaiting(second)
	if id2 == id1 {
		t.Fatal("the new push reused the approved build")
	}
	// Closed unapproved: it ends without ever having had a service.
	r.deliver("pull_request", r.forkPayload("pull_request.closed.json", 12, second), http.StatusAccepted)
	last2 := r.waitStatus(second, "forge/execute", "the final status", func(s fakegithub.Status) bool { return s.State != "pending" })
	if s := last2[len(last2)-1]; s.State != "error" || s.Description != "pull request closed" {
		t.Errorf("closed unapproved build: %+v", s)
	}
	r.done()
}
