package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/forge-ci/forge/coordinator"
)

func openTemp(t testing.TB) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "forge.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

func intp(i int) *int { return &i }

// fullBuild has every field set, times with nanoseconds and not in UTC.
func fullBuild(id string) *Build {
	zone := time.FixedZone("CET", 3600)
	return &Build{
		ID: id,
		Subject: coordinator.Subject{
			Owner:          "forge-ci",
			Repo:           "forge",
			PullRequest:    42,
			Branch:         "feature/x",
			SHA:            "3f9a2c0d3f9a2c0d3f9a2c0d3f9a2c0d3f9a2c0d",
			Ref:            "refs/pull/42/head",
			Action:         "execute",
			CommitCount:    3,
			Fork:           true,
			Trigger:        "pull_request",
			Key:            "forge-ci/forge#42",
			InstallationID: 1234567890123,
			Author:         "octocat",
			Untrusted:      true,
			NeedsApproval:  true,
			RerunOf:        "20261129T120000-aaaaaa",
			RerunBy:        "maintainer",
			BaseBranch:     "main",
			DefaultBranch:  "trunk",
		},
		Ending:      coordinator.EndTimedOut,
		ApprovedBy:  "maintainer",
		Approved:    time.Date(2026, 11, 29, 13, 53, 3, 7, zone),
		Config:      "image: golang:1.22\nexecute:\n  - go test ./...\n",
		State:       Failure,
		Reason:      "exit code 2 — ünïcode",
		ExitCode:    intp(2),
		NodeID:      "node-1",
		ContainerID: "c0ffee",
		ServiceID:   "svc-1",
		ServiceName: "forge-forge-ci-forge-42-20261129t135301",
		Created:     time.Date(2026, 11, 29, 13, 53, 1, 123456789, zone),
		Started:     time.Date(2026, 11, 29, 13, 53, 5, 1, zone),
		Finished:    time.Date(2026, 11, 29, 13, 58, 0, 999999999, zone),
	}
}

// equalBuild compares builds field by field, times with Equal, and also
// checks that non-zero times came back in UTC.
func equalBuild(t *testing.T, got, want *Build) {
	t.Helper()
	for _, tm := range []time.Time{got.Created, got.Started, got.Finished} {
		if !tm.IsZero() && tm.Location() != time.UTC {
			t.Errorf("time %v not in UTC", tm)
		}
	}
	g, w := *got, *want
	if !g.Created.Equal(w.Created) || !g.Started.Equal(w.Started) || !g.Finished.Equal(w.Finished) {
		t.Errorf("times differ:\n got %v %v %v\nwant %v %v %v", g.Created, g.Started, g.Finished, w.Created, w.Started, w.Finished)
	}
	if g.Started.IsZero() != w.Started.IsZero() || g.Finished.IsZero() != w.Finished.IsZero() {
		t.Errorf("zero times differ")
	}
	if !g.Approved.Equal(w.Approved) || (!g.Approved.IsZero() && g.Approved.Location() != time.UTC) {
		t.Errorf("approved %v, want %v in UTC", g.Approved, w.Approved)
	}
	g.Created, g.Started, g.Finished, g.Approved = time.Time{}, time.Time{}, time.Time{}, time.Time{}
	w.Created, w.Started, w.Finished, w.Approved = time.Time{}, time.Time{}, time.Time{}, time.Time{}
	if !reflect.DeepEqual(g, w) {
		t.Errorf("builds differ:\n got %+v\nwant %+v", g, w)
	}
}

func TestBuildRoundTrip(t *testing.T) {
	s, _ := openTemp(t)
	ctx := context.Background()

	full := fullBuild("20261129T135301-3f9a2c")
	if err := s.CreateBuild(ctx, full); err != nil {
		t.Fatal(err)
	}
	got, err := s.Build(ctx, full.ID)
	if err != nil {
		t.Fatal(err)
	}
	equalBuild(t, got, fullBuild(full.ID))

	// Only an id: the defaults are filled in and written back, every other
	// field comes back zero (no exit code, zero Started/Finished).
	before := time.Now()
	zero := &Build{ID: "zero"}
	if err := s.CreateBuild(ctx, zero); err != nil {
		t.Fatal(err)
	}
	if zero.State != Queued || zero.Created.Before(before.Add(-time.Second)) || !zero.Finished.IsZero() {
		t.Fatalf("defaults: %+v", zero)
	}
	got, err = s.Build(ctx, "zero")
	if err != nil {
		t.Fatal(err)
	}
	equalBuild(t, got, &Build{ID: "zero", State: Queued, Created: zero.Created})
	if got.ExitCode != nil || !got.Started.IsZero() || !got.Finished.IsZero() {
		t.Fatalf("zero build came back with %+v", got)
	}

	// Exit code 0 is not "no exit code".
	z := fullBuild("exit0")
	z.ExitCode = intp(0)
	if err := s.CreateBuild(ctx, z); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Build(ctx, "exit0"); got.ExitCode == nil || *got.ExitCode != 0 {
		t.Fatalf("exit code 0 lost: %v", got.ExitCode)
	}
}

func TestCreateBuildErrors(t *testing.T) {
	s, _ := openTemp(t)
	ctx := context.Background()
	if err := s.CreateBuild(ctx, fullBuild("a")); err != nil {
		t.Fatal(err)
	}
	b := fullBuild("a")
	b.Reason = "second"
	err := s.CreateBuild(ctx, b)
	if !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), "a") {
		t.Fatalf("duplicate id: %v", err)
	}
	if got, _ := s.Build(ctx, "a"); got.Reason == "second" {
		t.Fatal("duplicate overwrote the stored build")
	}
	if err := s.CreateBuild(ctx, &Build{}); err == nil {
		t.Fatal("empty id accepted")
	}
	if err := s.CreateBuild(ctx, &Build{ID: "x", State: "bogus"}); err == nil {
		t.Fatal("unknown state accepted")
	}
	if err := s.CreateBuild(ctx, &Build{ID: "y", Started: time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC)}); err == nil {
		t.Fatal("time out of range accepted")
	}
	_, err = s.Build(ctx, "nope")
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "nope") {
		t.Fatalf("missing build: %v", err)
	}
}

func TestUpdateBuild(t *testing.T) {
	s, _ := openTemp(t)
	ctx := context.Background()
	if err := s.CreateBuild(ctx, &Build{ID: "b", Subject: coordinator.Subject{Owner: "o", Repo: "r", Key: "k"}}); err != nil {
		t.Fatal(err)
	}

	started := time.Date(2026, 1, 2, 3, 4, 5, 6, time.Local)
	got, err := s.UpdateBuild(ctx, "b", func(b *Build) error {
		b.State = Running
		b.NodeID, b.ContainerID = "n1", "c1"
		b.Started = started
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	stored, _ := s.Build(ctx, "b")
	equalBuild(t, got, stored)
	if stored.State != Running || stored.NodeID != "n1" || !stored.Started.Equal(started) {
		t.Fatalf("not persisted: %+v", stored)
	}

	// fn's error aborts and is returned.
	boom := errors.New("boom")
	_, err = s.UpdateBuild(ctx, "b", func(b *Build) error {
		b.Reason = "should not stick"
		b.State = Error
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("fn error: %v", err)
	}
	if b, _ := s.Build(ctx, "b"); b.Reason != "" || b.State != Running {
		t.Fatalf("aborted update persisted: %+v", b)
	}

	// The id cannot change.
	if _, err := s.UpdateBuild(ctx, "b", func(b *Build) error { b.ID = "other"; return nil }); err == nil {
		t.Fatal("id change accepted")
	}

	// Missing build.
	if _, err := s.UpdateBuild(ctx, "nope", func(*Build) error { return nil }); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing: %v", err)
	}

	// Becoming final fills Finished.
	got, err = s.UpdateBuild(ctx, "b", func(b *Build) error {
		b.State, b.ExitCode = Success, intp(0)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got.Finished.IsZero() {
		t.Fatal("Finished not set on becoming final")
	}
	final := got

	// Once final: no way back, no other outcome, no other exit code or end.
	for name, fn := range map[string]func(*Build) error{
		"back to running": func(b *Build) error { b.State = Running; return nil },
		"other final":     func(b *Build) error { b.State = Failure; return nil },
		"exit code":       func(b *Build) error { b.ExitCode = intp(1); return nil },
		"no exit code":    func(b *Build) error { b.ExitCode = nil; return nil },
		"finished":        func(b *Build) error { b.Finished = b.Finished.Add(time.Second); return nil },
	} {
		_, err := s.UpdateBuild(ctx, "b", fn)
		if !errors.Is(err, ErrFinal) {
			t.Errorf("%s: got %v, want ErrFinal", name, err)
		}
	}
	stored, _ = s.Build(ctx, "b")
	equalBuild(t, stored, final)

	// Other fields of a final build may still be filled in.
	got, err = s.UpdateBuild(ctx, "b", func(b *Build) error { b.Reason = "artifacts copied"; return nil })
	if err != nil || got.Reason != "artifacts copied" || got.State != Success {
		t.Fatalf("reason on final build: %+v %v", got, err)
	}
}

func TestUpdateBuildConcurrent(t *testing.T) {
	s, _ := openTemp(t)
	ctx := context.Background()
	if err := s.CreateBuild(ctx, &Build{ID: "c"}); err != nil {
		t.Fatal(err)
	}
	const goroutines, each = 20, 10
	var wg sync.WaitGroup
	errs := make(chan error, goroutines*each)
	for range goroutines {
		wg.Go(func() {
			for range each {
				if _, err := s.UpdateBuild(ctx, "c", func(b *Build) error {
					b.CommitCount++
					return nil
				}); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	b, err := s.Build(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	if b.CommitCount != goroutines*each {
		t.Fatalf("CommitCount = %d, want %d (lost updates)", b.CommitCount, goroutines*each)
	}
}

func ids(bs []*Build) []string {
	out := make([]string, 0, len(bs))
	for _, b := range bs {
		out = append(out, b.ID)
	}
	return out
}

func TestListBuilds(t *testing.T) {
	s, _ := openTemp(t)
	ctx := context.Background()
	t0 := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	// b00..b09, one second apart, plus two with the same Created as b05 to
	// exercise the id tie-break.
	mk := func(id string, at time.Time, owner, repo string, st State, key string) {
		t.Helper()
		if err := s.CreateBuild(ctx, &Build{ID: id, Subject: coordinator.Subject{Owner: owner, Repo: repo, Key: key}, State: st, Created: at}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 10 {
		owner, repo := "acme", "web"
		if i%2 == 1 {
			repo = "api"
		}
		if i == 9 {
			owner = "other"
		}
		st := []State{Success, Failure, Error, Queued, Running}[i%5]
		mk(fmt.Sprintf("b%02d", i), t0.Add(time.Duration(i)*time.Second), owner, repo, st, fmt.Sprintf("key%d", i%3))
	}
	mk("b05a", t0.Add(5*time.Second), "acme", "web", Queued, "key0")
	mk("b05b", t0.Add(5*time.Second), "acme", "web", Success, "")

	all, err := s.ListBuilds(ctx, ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"b09", "b08", "b07", "b06", "b05b", "b05a", "b05", "b04", "b03", "b02", "b01", "b00"}
	if got := ids(all); !reflect.DeepEqual(got, want) {
		t.Fatalf("order:\n got %v\nwant %v", got, want)
	}

	check := func(name string, o ListOptions, want ...string) { t.Helper(); checkList(t, s, name, o, want...) }
	check("limit", ListOptions{Limit: 3}, "b09", "b08", "b07")
	check("owner", ListOptions{Owner: "other"}, "b09")
	check("repo", ListOptions{Owner: "acme", Repo: "api"}, "b07", "b05", "b03", "b01")
	check("state", ListOptions{State: Queued}, "b08", "b05a", "b03")
	check("before", ListOptions{Before: "b06", Limit: 2}, "b05b", "b05a")
	check("before tie", ListOptions{Before: "b05a", Limit: 2}, "b05", "b04")
	check("before+filter", ListOptions{Before: "b05b", Owner: "acme", Repo: "web", State: Queued}, "b05a")
	check("before last", ListOptions{Before: "b00"})

	// Paging with the cursor visits every build once, in order.
	var paged []string
	o := ListOptions{Limit: 5}
	for {
		page, err := s.ListBuilds(ctx, o)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		paged = append(paged, ids(page)...)
		o.Before = page[len(page)-1].ID
	}
	if !reflect.DeepEqual(paged, want) {
		t.Fatalf("paging:\n got %v\nwant %v", paged, want)
	}

	if _, err := s.ListBuilds(ctx, ListOptions{Before: "nope"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("bad cursor: %v", err)
	}
	if _, err := s.ListBuilds(ctx, ListOptions{State: "bogus"}); err == nil {
		t.Fatal("unknown state accepted")
	}

	active, err := s.Active(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := ids(active), []string{"b03", "b04", "b05a", "b08", "b09"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("active:\n got %v\nwant %v", got, want)
	}
	byKey, err := s.ActiveByKey(ctx, "key0")
	if err != nil {
		t.Fatal(err)
	}
	// key0: b00 (success), b03 (queued), b06 (success), b09 (running), b05a (queued)
	if got, want := ids(byKey), []string{"b03", "b05a", "b09"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("active by key:\n got %v\nwant %v", got, want)
	}
	if byKey, err := s.ActiveByKey(ctx, ""); err != nil || len(byKey) != 0 {
		t.Fatalf("empty key matched %v, %v", ids(byKey), err)
	}

	counts, err := s.CountByState(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wantCounts := map[State]int{Success: 3, Failure: 2, Error: 2, Queued: 3, Running: 2}
	if !reflect.DeepEqual(counts, wantCounts) {
		t.Fatalf("counts: got %v want %v", counts, wantCounts)
	}
}

func TestListLimitBounds(t *testing.T) {
	s, _ := openTemp(t)
	ctx := context.Background()
	t0 := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	for i := range 520 {
		if err := s.CreateBuild(ctx, &Build{ID: fmt.Sprintf("b%04d", i), Created: t0.Add(time.Duration(i))}); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct{ limit, want int }{{0, 50}, {-1, 50}, {7, 7}, {500, 500}, {10000, 500}} {
		got, err := s.ListBuilds(ctx, ListOptions{Limit: c.limit})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != c.want {
			t.Errorf("limit %d: got %d builds, want %d", c.limit, len(got), c.want)
		}
	}
	counts, _ := s.CountByState(ctx)
	if counts[Queued] != 520 || counts[Running] != 0 || len(counts) != len(States) {
		t.Fatalf("counts: %v", counts)
	}
}

func TestDeliveries(t *testing.T) {
	s, _ := openTemp(t)
	ctx := context.Background()
	t0 := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)

	first, err := s.RecordDelivery(ctx, "d1", "pull_request", t0)
	if err != nil || !first {
		t.Fatalf("first delivery: %v %v", first, err)
	}
	first, err = s.RecordDelivery(ctx, "d1", "pull_request", t0.Add(time.Minute))
	if err != nil || first {
		t.Fatalf("redelivery: %v %v", first, err)
	}
	if _, err := s.RecordDelivery(ctx, "", "push", t0); err == nil {
		t.Fatal("empty id accepted")
	}

	// 50 concurrent deliveries of one id: exactly one first.
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		firsts int
	)
	for range 50 {
		wg.Go(func() {
			f, err := s.RecordDelivery(ctx, "d2", "push", t0.Add(time.Hour))
			if err != nil {
				t.Error(err)
				return
			}
			if f {
				mu.Lock()
				firsts++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if firsts != 1 {
		t.Fatalf("%d concurrent deliveries were first, want 1", firsts)
	}

	// Prune: d1 (t0) goes, d2 (t0+1h) stays; a pruned id is new again.
	n, err := s.PruneDeliveries(ctx, t0.Add(30*time.Minute))
	if err != nil || n != 1 {
		t.Fatalf("prune: %d %v", n, err)
	}
	if n, err := s.PruneDeliveries(ctx, time.Time{}); err != nil || n != 0 {
		t.Fatalf("prune zero time: %d %v", n, err)
	}
	if f, _ := s.RecordDelivery(ctx, "d2", "push", t0); f {
		t.Fatal("d2 pruned")
	}
	if f, _ := s.RecordDelivery(ctx, "d1", "push", t0); !f {
		t.Fatal("d1 not pruned")
	}
}

func TestAgents(t *testing.T) {
	s, _ := openTemp(t)
	ctx := context.Background()
	t0 := time.Date(2026, 3, 1, 0, 0, 0, 5, time.UTC)

	if err := s.AgentConnected(ctx, AgentSeen{NodeID: "n1", Hostname: "h1", AgentVersion: "v1",
		EngineVersion: "28.0", Address: "10.0.0.1:1", FirstSeen: t0, LastSeen: t0}); err != nil {
		t.Fatal(err)
	}
	if err := s.AgentConnected(ctx, AgentSeen{NodeID: "n2", Hostname: "h2", LastSeen: t0.Add(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	// n1 reconnects after an upgrade: FirstSeen is kept, the rest replaced.
	later := t0.Add(time.Hour)
	if err := s.AgentConnected(ctx, AgentSeen{NodeID: "n1", Hostname: "h1b", AgentVersion: "v2",
		EngineVersion: "28.1", Address: "10.0.0.2:2", FirstSeen: later, LastSeen: later}); err != nil {
		t.Fatal(err)
	}
	got, err := s.AgentsSeen(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("agents: %+v", got)
	}
	a := got[0]
	if a.NodeID != "n1" || a.Hostname != "h1b" || a.AgentVersion != "v2" || a.EngineVersion != "28.1" ||
		a.Address != "10.0.0.2:2" || !a.FirstSeen.Equal(t0) || !a.LastSeen.Equal(later) {
		t.Fatalf("n1 after reconnect: %+v", a)
	}
	if b := got[1]; b.NodeID != "n2" || !b.FirstSeen.Equal(t0.Add(time.Minute)) {
		t.Fatalf("n2: %+v (zero FirstSeen should become LastSeen)", b)
	}
	if err := s.AgentConnected(ctx, AgentSeen{}); err == nil {
		t.Fatal("empty node id accepted")
	}
}

func TestReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data", "forge.db") // folder created by Open
	ctx := context.Background()
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	full := fullBuild("full")
	if err := s.CreateBuild(ctx, full); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateBuild(ctx, &Build{ID: "running", Subject: coordinator.Subject{Key: "k"}, State: Running}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RecordDelivery(ctx, "d", "push", time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := s.AgentConnected(ctx, AgentSeen{NodeID: "n"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("database file: %v %v", fi, err)
	}

	s, err = Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, err := s.Build(ctx, "full")
	if err != nil {
		t.Fatal(err)
	}
	equalBuild(t, got, fullBuild("full"))
	active, err := s.Active(ctx)
	if err != nil || len(active) != 1 || active[0].ID != "running" {
		t.Fatalf("active after reopen: %v %v", ids(active), err)
	}
	if first, err := s.RecordDelivery(ctx, "d", "push", time.Now()); err != nil || first {
		t.Fatalf("delivery forgotten across restart: %v %v", first, err)
	}
	if agents, err := s.AgentsSeen(ctx); err != nil || len(agents) != 1 {
		t.Fatalf("agents after reopen: %v %v", agents, err)
	}
	var v int
	if err := s.db.QueryRow("PRAGMA user_version").Scan(&v); err != nil || v != len(migrations) {
		t.Fatalf("user_version %d %v", v, err)
	}
}

func TestPragmas(t *testing.T) {
	s, _ := openTemp(t)
	for pragma, want := range map[string]string{"journal_mode": "wal", "foreign_keys": "1", "busy_timeout": "5000"} {
		var got string
		if err := s.db.QueryRow("PRAGMA " + pragma).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("%s = %q, want %q", pragma, got, want)
		}
	}
}

func TestOpenNewerSchema(t *testing.T) {
	s, path := openTemp(t)
	if _, err := s.db.Exec(fmt.Sprintf("PRAGMA user_version = %d", len(migrations)+1)); err != nil {
		t.Fatal(err)
	}
	s.Close()
	_, err := Open(path)
	if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "newer") {
		t.Fatalf("newer schema: %v", err)
	}
}

func TestOpenUnwritable(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "plainfile")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for name, path := range map[string]string{
		// Under a regular file: fails even for root.
		"under a file": filepath.Join(file, "data", "forge.db"),
		// A folder where the database file should be.
		"a folder": dir,
	} {
		s, err := Open(path)
		if err == nil {
			s.Close()
			t.Errorf("%s: Open(%s) succeeded", name, path)
			continue
		}
		if !strings.Contains(err.Error(), path) {
			t.Errorf("%s: error %q does not name %s", name, err, path)
		}
	}
	if os.Geteuid() != 0 {
		ro := filepath.Join(dir, "ro")
		if err := os.Mkdir(ro, 0o500); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(ro, "forge.db")
		if _, err := Open(path); err == nil || !strings.Contains(err.Error(), path) {
			t.Errorf("read-only folder: %v", err)
		}
	}
	if _, err := Open(""); err == nil {
		t.Error("empty path accepted")
	}
}

func TestMemory(t *testing.T) {
	s, err := Open(":memory:")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	if err := s.CreateBuild(ctx, &Build{ID: "m"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Build(ctx, "m"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(":memory:"); err == nil {
		t.Fatal(`Open(":memory:") created a file`)
	}
}

func TestClosed(t *testing.T) {
	s, _ := openTemp(t)
	s.Close()
	if _, err := s.Build(context.Background(), "x"); err == nil || errors.Is(err, ErrNotFound) {
		t.Fatalf("after Close: %v", err)
	}
}

func BenchmarkCreateBuild(b *testing.B) {
	s, _ := openTemp(b)
	ctx := context.Background()
	base := fullBuild("")
	i := 0
	for b.Loop() {
		bb := base.Clone()
		bb.ID = fmt.Sprintf("bench-%d", i)
		i++
		if err := s.CreateBuild(ctx, bb); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkUpdateBuild(b *testing.B) {
	s, _ := openTemp(b)
	ctx := context.Background()
	bb := fullBuild("u")
	bb.State, bb.ExitCode, bb.Finished = Running, nil, time.Time{}
	if err := s.CreateBuild(ctx, bb); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := s.UpdateBuild(ctx, "u", func(b *Build) error {
			b.CommitCount++
			return nil
		}); err != nil {
			b.Fatal(err)
		}
	}
}

// Deliveries are told apart by id and by body: a new id with a known body
// is a replay, recorded nowhere; concurrent replays give one first.
func TestDeliveryBodies(t *testing.T) {
	s, _ := openTemp(t)
	ctx := context.Background()
	t0 := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	rows := func() int {
		var n int
		if err := s.db.QueryRow(`SELECT count(*) FROM deliveries`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	for _, c := range []struct {
		id, body string
		want     Seen
	}{
		{"d1", "aa", SeenFirst},
		{"d1", "aa", SeenID},   // GitHub's redelivery
		{"d2", "aa", SeenBody}, // the body again under a new id
		{"d1", "bb", SeenID},   // an id is never taken twice
		{"d3", "bb", SeenFirst},
	} {
		got, err := s.RecordDeliveryBody(ctx, c.id, "push", c.body, t0)
		if err != nil || got != c.want {
			t.Fatalf("%s %s: %v %v, want %v", c.id, c.body, got, err, c.want)
		}
	}
	if n := rows(); n != 2 {
		t.Fatalf("%d deliveries recorded, want 2 (d1, d3)", n)
	}
	if _, err := s.RecordDeliveryBody(ctx, "d4", "push", "", t0); err == nil {
		t.Fatal("empty body hash accepted")
	}
	// Deliveries recorded by id alone (before migration 4) do not clash.
	for _, id := range []string{"old1", "old2"} {
		if f, err := s.RecordDelivery(ctx, id, "push", t0); err != nil || !f {
			t.Fatalf("id-only delivery %s: %v %v", id, f, err)
		}
	}

	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		firsts int
	)
	for i := range 50 {
		wg.Go(func() {
			got, err := s.RecordDeliveryBody(ctx, fmt.Sprintf("r%d", i), "push", "cc", t0.Add(time.Hour))
			if err != nil {
				t.Error(err)
				return
			}
			if got == SeenFirst {
				mu.Lock()
				firsts++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if firsts != 1 {
		t.Fatalf("%d of 50 replays of one body were first, want 1", firsts)
	}
	// Pruning forgets the body with its delivery: after 7 days it is new.
	if _, err := s.PruneDeliveries(ctx, t0.Add(30*time.Minute)); err != nil {
		t.Fatal(err)
	}
	if got, err := s.RecordDeliveryBody(ctx, "d9", "push", "aa", t0.Add(2*time.Hour)); err != nil || got != SeenFirst {
		t.Fatalf("a pruned body: %v %v, want first", got, err)
	}
}
