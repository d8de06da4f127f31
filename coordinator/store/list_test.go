package store

import (
	"context"
	"reflect"
	"testing"
	"time"

	"github.com/forge-ci/forge/coordinator"
)

// TestListBuildsByRef: the build list's filters by branch, pull request,
// pushes only and a set of states, alone, together and with the cursor.
func TestListBuildsByRef(t *testing.T) {
	s, _ := openTemp(t)
	ctx := context.Background()
	t0 := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	for i, b := range []struct {
		id, branch string
		pr         int
		st         State
	}{
		{"p0", "main", 0, Success},
		{"p1", "main", 0, Failure},
		{"r2", "main", 7, Success}, // a pull request whose head branch is main (a fork's)
		{"p3", "main", 0, Running},
		{"r4", "feature", 7, Error},
		{"r5", "feature", 8, Queued},
		{"p6", "dev", 0, Success},
	} {
		if err := s.CreateBuild(ctx, &Build{ID: b.id, State: b.st, Created: t0.Add(time.Duration(i) * time.Second),
			Subject: coordinator.Subject{Owner: "acme", Repo: "web", Branch: b.branch, PullRequest: b.pr}}); err != nil {
			t.Fatal(err)
		}
	}
	check := func(name string, o ListOptions, want ...string) { t.Helper(); checkList(t, s, name, o, want...) }
	check("branch", ListOptions{Branch: "main"}, "p3", "r2", "p1", "p0")
	check("pull request", ListOptions{PullRequest: 7}, "r4", "r2")
	check("branch and pull request", ListOptions{Branch: "feature", PullRequest: 7}, "r4")
	check("no pull request", ListOptions{NoPullRequest: true}, "p6", "p3", "p1", "p0")
	check("states", ListOptions{States: []State{Success, Error}}, "p6", "r4", "r2", "p0")
	// What a branch's badge asks: its newest passed or failed build of no
	// pull request.
	check("badge", ListOptions{Owner: "acme", Repo: "web", Branch: "main", NoPullRequest: true, States: []State{Success, Failure}, Limit: 1}, "p1")
	check("state and states", ListOptions{States: []State{Success, Failure}, State: Running})
	check("cursor", ListOptions{Branch: "main", Before: "r2"}, "p1", "p0")
	check("unknown branch", ListOptions{Branch: "nope"})

	for name, o := range map[string]ListOptions{
		"negative pull request":         {PullRequest: -1},
		"pull request and none at once": {PullRequest: 7, NoPullRequest: true},
		"unknown state in states":       {States: []State{Success, "done"}},
	} {
		if got, err := s.ListBuilds(ctx, o); err == nil {
			t.Errorf("%s: no error, %v", name, ids(got))
		}
	}
}

// checkList fails t unless listing o gives the builds want, in order.
func checkList(t *testing.T, s *Store, name string, o ListOptions, want ...string) {
	t.Helper()
	got, err := s.ListBuilds(context.Background(), o)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if g := ids(got); len(g) != len(want) || (len(g) > 0 && !reflect.DeepEqual(g, want)) {
		t.Errorf("%s:\n got %v\nwant %v", name, g, want)
	}
}
