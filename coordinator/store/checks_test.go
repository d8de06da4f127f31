package store

import (
	"context"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/forge-ci/forge/coordinator"
)

func TestCheckRuns(t *testing.T) {
	s, path := openTemp(t)
	ctx := context.Background()
	for _, b := range []*Build{{ID: "b1", Subject: coordinator.Subject{Owner: "o", Repo: "r"}}, {ID: "b2"}} {
		if err := s.CreateBuild(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.LatestCheckRun(ctx, "b1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("no check run yet: %v", err)
	}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, cr := range []coordinator.CheckRun{
		{ID: 7, BuildID: "b1", Owner: "o", Repo: "r", Status: "completed", Created: t0},
		{ID: 9, BuildID: "b1", Owner: "o", Repo: "r", Status: "queued", Created: t0.Add(time.Second)},
		{ID: 8, BuildID: "b2", Owner: "o", Repo: "other", Status: "queued", Created: t0},
	} {
		if err := s.AddCheckRun(ctx, cr); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.AddCheckRun(ctx, coordinator.CheckRun{ID: 7, BuildID: "b2", Status: "queued"}); err == nil {
		t.Error("a check run id recorded twice")
	}
	for _, bad := range []coordinator.CheckRun{{ID: 0, BuildID: "b1"}, {ID: 3}} {
		if err := s.AddCheckRun(ctx, bad); err == nil {
			t.Errorf("AddCheckRun(%+v) took it", bad)
		}
	}
	if err := s.SetCheckRunStatus(ctx, 9, "in_progress"); err != nil {
		t.Fatal(err)
	}
	if err := s.SetCheckRunStatus(ctx, 99, "in_progress"); !errors.Is(err, ErrNotFound) {
		t.Errorf("status of an unknown check run: %v", err)
	}
	s.Close()
	s, err := Open(path) // what was written is kept
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, err := s.LatestCheckRun(ctx, "b1")
	want := &coordinator.CheckRun{ID: 9, BuildID: "b1", Owner: "o", Repo: "r", Status: "in_progress", Created: t0.Add(time.Second)}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("latest of b1: %+v %v, want %+v", got, err, want)
	}
	// Found by id only on its own repository (names in any case).
	if cr, err := s.CheckRun(ctx, "O", "R", 7); err != nil || cr.BuildID != "b1" {
		t.Errorf("check run 7: %+v %v", cr, err)
	}
	for _, k := range []struct {
		owner, repo string
		id          int64
	}{{"o", "other", 7}, {"o", "r", 8}, {"o", "r", 1234}} {
		if cr, err := s.CheckRun(ctx, k.owner, k.repo, k.id); !errors.Is(err, ErrNotFound) {
			t.Errorf("check run %d of %s/%s: %+v %v, want not found", k.id, k.owner, k.repo, cr, err)
		}
	}
}

func TestCommitBuildsAndReruns(t *testing.T) {
	s, _ := openTemp(t)
	ctx := context.Background()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	mk := func(id, sha, key, rerunOf string, at int) {
		b := &Build{ID: id, Created: t0.Add(time.Duration(at) * time.Second),
			Subject: coordinator.Subject{Owner: "o", Repo: "r", SHA: sha, Key: key, RerunOf: rerunOf}}
		if err := s.CreateBuild(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	mk("a", "s1", "o/r#1", "", 0)
	mk("b", "s2", "o/r#1", "", 1)
	mk("c", "s1", "o/r#1", "a", 2)
	mk("d", "s1", "", "a", 3)
	mk("e", "s1", "o/r#2", "", 4)

	bs, err := s.CommitBuilds(ctx, "o", "r", "s1")
	var ids []string
	for _, b := range bs {
		ids = append(ids, b.ID)
	}
	if err != nil || !reflect.DeepEqual(ids, []string{"e", "d", "c", "a"}) {
		t.Errorf("builds of s1: %v %v", ids, err)
	}
	if bs, err := s.CommitBuilds(ctx, "o", "other", "s1"); err != nil || len(bs) != 0 {
		t.Errorf("builds of s1 in another repository: %v %v", bs, err)
	}
	if b, err := s.LatestByKey(ctx, "o/r#1"); err != nil || b.ID != "c" {
		t.Errorf("latest of o/r#1: %+v %v", b, err)
	}
	for _, k := range []string{"", "o/r#9"} {
		if b, err := s.LatestByKey(ctx, k); !errors.Is(err, ErrNotFound) {
			t.Errorf("latest of %q: %+v %v", k, b, err)
		}
	}
	if rs, err := s.Reruns(ctx, "a"); err != nil || !reflect.DeepEqual(rs, []string{"c", "d"}) {
		t.Errorf("re-runs of a: %v %v", rs, err)
	}
	if rs, err := s.Reruns(ctx, ""); err != nil || len(rs) != 0 {
		t.Errorf("re-runs of nothing: %v %v", rs, err)
	}
}
