package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/internal/buildsim"
	"github.com/forge-ci/forge/internal/testwait"
	"github.com/forge-ci/forge/wire"
)

// reasons records, per build, the Reason of every OnChange while queued.
type reasons struct {
	mu sync.Mutex
	m  map[string][]string
}

func (r *reasons) record(b *coordinator.Build) {
	if b.State != coordinator.Queued {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		r.m = map[string][]string{}
	}
	r.m[b.ID] = append(r.m[b.ID], b.Reason)
}

func (r *reasons) of(id string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.m[id])
}

// queueEnv is a runner whose OnChange also records the queued reasons,
// and counts the builds running at once: from their service's creation
// (running) to their end. A slot is given back as a build ends, before its
// service's removal.
func queueEnv(t *testing.T, tune func(c *Config)) (*runnerEnv, *reasons, func() int) {
	rs := &reasons{}
	var (
		mu            sync.Mutex
		running       = map[string]bool{}
		now, mostSeen int
	)
	e := newRunnerEnv(t, func(c *Config) {
		rec := c.OnChange
		c.OnChange = func(b *coordinator.Build) {
			rec(b)
			rs.record(b)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case b.State == coordinator.Running && !running[b.ID]:
				running[b.ID] = true
				now++
				mostSeen = max(mostSeen, now)
			case b.State.Final() && running[b.ID]:
				delete(running, b.ID)
				now--
			}
		}
		tune(c)
	})
	e.sw.Tasks = buildsim.LandsOn("node-a")
	return e, rs, func() int { mu.Lock(); defer mu.Unlock(); return mostSeen }
}

// With --max-builds 2, ten builds never run more than two at a time, start
// in the order they came, and each queued one is told its place as it
// moves, once per place.
func TestQueueMaxBuilds(t *testing.T) {
	e, rs, most := queueEnv(t, func(c *Config) { c.MaxBuilds = 2 })
	var ids []string
	for i := range 10 {
		ids = append(ids, e.submit(e.request(testSHA(byte('a'+i)), "")).ID)
	}
	for i, id := range ids {
		e.waitStored(id, "build "+id+" to start", func(b *coordinator.Build) bool { return !b.Started.IsZero() })
		testwait.Pause(t, 3*testPollInterval) // a third would have had time to be created
		for j := i + 2; j < len(ids); j++ {
			if e.sw.Service(ids[j]) != nil {
				t.Fatalf("when build %d started, build %d has a service", i, j)
			}
		}
		if i+2 < len(ids) { // its goroutine writes its place: soon
			e.waitStored(ids[i+2], fmt.Sprintf("build %d queued: 0 ahead", i+2), func(b *coordinator.Build) bool {
				return b.State == coordinator.Queued && b.Reason == "queued: 0 ahead"
			})
		}
		e.ag.Report(id, "ok\n", &wire.Exit{ExitCode: 0})
		if b := e.wait(id); b.State != coordinator.Success || b.Reason != "" {
			t.Fatalf("build %d: %s %q", i, b.State, b.Reason)
		}
	}
	if n := most(); n != 2 {
		t.Errorf("at most %d builds ran at once, want 2", n)
	}
	// The last one was told 7, 6, ... 0 ahead: each place once.
	var want []string
	for n := 7; n >= 0; n-- {
		want = append(want, fmt.Sprintf("queued: %d ahead", n))
	}
	if got := rs.of(ids[9]); !slices.Equal(got, append([]string{""}, want...)) {
		t.Errorf("reasons of the last build: %q", got)
	}
	if got := rs.of(ids[0]); !slices.Equal(got, []string{""}) {
		t.Errorf("the first build was told a place: %q", got)
	}
	if r, w := e.r.adm.counts(); r != 0 || w != 0 {
		t.Errorf("after all builds: %d slots held, %d waiting", r, w)
	}
}

// A deep queue moves with every build that ends: a build 10 or more
// places back writes its place at most once per noteEvery, and the last ten
// places exactly, each once.
func TestQueueDeepPlacesThrottled(t *testing.T) {
	var (
		mu    sync.Mutex
		notes []time.Time
		last  string
	)
	e, rs, _ := queueEnv(t, func(c *Config) {
		c.MaxBuilds = 1
		rec := c.OnChange
		c.OnChange = func(b *coordinator.Build) {
			rec(b)
			mu.Lock()
			defer mu.Unlock()
			if b.ID == last && b.State == coordinator.Queued && b.Reason != "" {
				notes = append(notes, time.Now())
			}
		}
	})
	var ids []string
	for i := range 30 {
		id := e.submit(e.request(testSHA(byte(i)), "")).ID
		ids = append(ids, id)
		if i == 29 {
			mu.Lock()
			last = id
			mu.Unlock()
		}
	}
	for _, id := range ids {
		e.waitStored(id, "build "+id+" to start", func(b *coordinator.Build) bool { return !b.Started.IsZero() })
		e.ag.Report(id, "ok\n", &wire.Exit{ExitCode: 0})
		if b := e.wait(id); b.State != coordinator.Success {
			t.Fatalf("build %s: %s %q", id, b.State, b.Reason)
		}
	}
	got := rs.of(ids[29])
	var deep []int
	for i, r := range got {
		var n int
		if _, err := fmt.Sscanf(r, "queued: %d ahead", &n); err == nil && n >= exactPlaces {
			deep = append(deep, i)
		}
	}
	var want []string
	for n := exactPlaces - 1; n >= 0; n-- {
		want = append(want, fmt.Sprintf("queued: %d ahead", n))
	}
	if tail := got[len(got)-len(want):]; !slices.Equal(tail, want) {
		t.Errorf("the last ten places: %q, want %q", tail, want)
	}
	mu.Lock()
	defer mu.Unlock()
	for k := 1; k < len(deep); k++ {
		// notes has the reasons without the first, empty one.
		if gap := notes[deep[k]-1].Sub(notes[deep[k-1]-1]); gap < noteEvery-50*time.Millisecond {
			t.Errorf("places %q and %q written %v apart, want at least %v", got[deep[k-1]], got[deep[k]], gap, noteEvery)
		}
	}
	t.Logf("the last build wrote %d places 10 or more back, of 19 moves: %q", len(deep), got)
}

// Cancel and supersede take a queued build out of the queue at once:
// it ends without a service, and the builds behind it move up.
func TestQueueCancelAndSupersede(t *testing.T) {
	e, rs, _ := queueEnv(t, func(c *Config) { c.MaxBuilds = 1 })
	first := e.submit(e.request(testSHA('a'), ""))
	e.waitStored(first.ID, "the first build to start", func(b *coordinator.Build) bool { return !b.Started.IsZero() })
	old := e.submit(e.request(testSHA('b'), "octo/hello#7"))
	other := e.submit(e.request(testSHA('c'), ""))
	e.waitStored(other.ID, "its place", func(b *coordinator.Build) bool { return b.Reason == "queued: 1 ahead" })

	if err := e.r.Cancel(context.Background(), other.ID, "cancelled by alice"); err != nil {
		t.Fatal(err)
	}
	checkBuild(t, e.wait(other.ID), want{state: coordinator.Error, reason: "cancelled by alice"})
	newer := e.submit(e.request(testSHA('d'), "octo/hello#7"))
	checkBuild(t, e.wait(old.ID), want{state: coordinator.Error, reason: "superseded by ddddddd"})
	e.waitStored(newer.ID, "its place", func(b *coordinator.Build) bool { return b.Reason == "queued: 0 ahead" })
	for _, id := range []string{old.ID, other.ID} {
		if e.sw.Service(id) != nil {
			t.Errorf("build %s left the queue with a service", id)
		}
	}
	if _, w := e.r.adm.counts(); w != 1 {
		t.Errorf("%d builds waiting, want 1", w)
	}
	e.ag.Report(first.ID, "", &wire.Exit{ExitCode: 0})
	e.waitStored(newer.ID, "the newer build to start", func(b *coordinator.Build) bool { return !b.Started.IsZero() })
	e.ag.Report(newer.ID, "", &wire.Exit{ExitCode: 0})
	if b := e.wait(newer.ID); b.State != coordinator.Success {
		t.Errorf("newer build %s %q", b.State, b.Reason)
	}
	// The superseded build may still have been ahead when it came.
	if got := rs.of(newer.ID); !slices.Equal(got, []string{"", "queued: 0 ahead"}) && !slices.Equal(got, []string{"", "queued: 1 ahead", "queued: 0 ahead"}) {
		t.Errorf("reasons of the newer build: %q", got)
	}
}

// --max-builds-per-repo holds back a repository's second build, and not
// another repository's.
func TestQueuePerRepo(t *testing.T) {
	e, _, _ := queueEnv(t, func(c *Config) { c.MaxBuildsPerRepo = 1 })
	a1 := e.submit(e.request(testSHA('a'), ""))
	a2 := e.submit(e.request(testSHA('b'), ""))
	req := e.request(testSHA('c'), "")
	req.Subject.Repo = "other"
	b1 := e.submit(req)
	for _, id := range []string{a1.ID, b1.ID} {
		e.waitStored(id, "build "+id+" to start", func(b *coordinator.Build) bool { return !b.Started.IsZero() })
	}
	if b := e.stored(a2.ID); b.State != coordinator.Queued || b.Reason != "queued: 0 ahead" || e.sw.Service(a2.ID) != nil {
		t.Errorf("second build of octo/hello: %s %q", b.State, b.Reason)
	}
	e.ag.Report(a1.ID, "", &wire.Exit{ExitCode: 0})
	e.waitStored(a2.ID, "the second build to start", func(b *coordinator.Build) bool { return !b.Started.IsZero() })
	for _, id := range []string{a2.ID, b1.ID} {
		e.ag.Report(id, "", &wire.Exit{ExitCode: 0})
		if b := e.wait(id); b.State != coordinator.Success {
			t.Errorf("%s: %s %q", id, b.State, b.Reason)
		}
	}
}

func untrustedRequest(e *runnerEnv, sha, key string) coordinator.Request {
	req := e.request(sha, key)
	req.Subject.Fork, req.Subject.Untrusted, req.Subject.NeedsApproval, req.Subject.Author = true, true, true, "stranger"
	return req
}

// A build that needs approval waits, without a service, until approved;
// then it runs, with who approved it recorded. Approving it again, or a
// build that needs none, is refused and changes nothing.
func TestApprovalThenRuns(t *testing.T) {
	e, rs, _ := queueEnv(t, func(*Config) {})
	e.ag.SetLaunch(e.ag.ExitAfterLaunch(wire.Exit{ExitCode: 0}))
	q := e.submit(untrustedRequest(e, testSHA('a'), "octo/hello#7"))
	if q.Reason != coordinator.ReasonAwaitingApproval {
		t.Errorf("submitted: reason %q", q.Reason)
	}
	testwait.Pause(t, 5*testPollInterval)
	if b := e.stored(q.ID); !b.AwaitingApproval() || b.Reason != coordinator.ReasonAwaitingApproval || len(e.sw.Created()) != 0 {
		t.Fatalf("awaiting build: %s %q, %d services", b.State, b.Reason, len(e.sw.Created()))
	}
	ctx := context.Background()
	before := time.Now()
	ab, err := e.r.Approve(ctx, q.ID, "bob")
	if err != nil {
		t.Fatal(err)
	}
	if ab.ApprovedBy != "bob" || ab.Approved.Before(before) || ab.AwaitingApproval() {
		t.Errorf("approved: %+v", ab)
	}
	b := e.wait(q.ID)
	if b.State != coordinator.Success || b.ApprovedBy != "bob" || b.Approved.IsZero() || !b.Untrusted {
		t.Errorf("after approval: %s %q by %q at %v", b.State, b.Reason, b.ApprovedBy, b.Approved)
	}
	if got := rs.of(q.ID); !slices.Equal(got, []string{coordinator.ReasonAwaitingApproval, "approved by bob"}) {
		t.Errorf("queued reasons %q", got)
	}
	if _, err := e.r.Approve(ctx, q.ID, "carol"); !errors.Is(err, coordinator.ErrNotAwaiting) || !strings.Contains(err.Error(), "success already") {
		t.Errorf("approve a finished build: %v", err)
	}
	plain := e.submit(e.request(testSHA('b'), ""))
	if _, err := e.r.Approve(ctx, plain.ID, "carol"); !errors.Is(err, coordinator.ErrNotAwaiting) {
		t.Errorf("approve a build that needs none: %v", err)
	}
	if b := e.stored(plain.ID); b.ApprovedBy != "" {
		t.Errorf("a refused approval was recorded: %q", b.ApprovedBy)
	}
}

// An awaiting build is not in the queue: it holds no slot and is not
// counted ahead of others. Cancel and a new push (supersede) end it
// without a service; the new build waits again.
func TestApprovalCancelAndSupersede(t *testing.T) {
	e, _, _ := queueEnv(t, func(c *Config) { c.MaxBuilds = 1 })
	a := e.submit(untrustedRequest(e, testSHA('a'), "octo/hello#7"))
	c := e.submit(untrustedRequest(e, testSHA('c'), "octo/hello#8"))
	trusted := e.submit(e.request(testSHA('t'), ""))
	e.waitStored(trusted.ID, "the trusted build to start", func(b *coordinator.Build) bool { return !b.Started.IsZero() })
	if r, w := e.r.adm.counts(); r != 1 || w != 0 {
		t.Errorf("queue: %d running, %d waiting; awaiting builds must not be in it", r, w)
	}
	if err := e.r.Cancel(context.Background(), c.ID, "cancelled by alice"); err != nil {
		t.Fatal(err)
	}
	checkBuild(t, e.wait(c.ID), want{state: coordinator.Error, reason: "cancelled by alice"})
	b := e.submit(untrustedRequest(e, testSHA('b'), "octo/hello#7"))
	checkBuild(t, e.wait(a.ID), want{state: coordinator.Error, reason: "superseded by bbbbbbb"})
	if nb := e.stored(b.ID); !nb.AwaitingApproval() {
		t.Errorf("the new push: %s %q, want awaiting approval", nb.State, nb.Reason)
	}
	for _, id := range []string{a.ID, b.ID, c.ID} {
		if e.sw.Service(id) != nil {
			t.Errorf("build %s has a service", id)
		}
	}
	// Approved while the slot is taken: it queues, then runs.
	if _, err := e.r.Approve(context.Background(), b.ID, "bob"); err != nil {
		t.Fatal(err)
	}
	e.waitStored(b.ID, "its place", func(x *coordinator.Build) bool { return x.Reason == "queued: 0 ahead" })
	e.ag.Report(trusted.ID, "", &wire.Exit{ExitCode: 0})
	e.waitStored(b.ID, "the approved build to start", func(x *coordinator.Build) bool { return !x.Started.IsZero() })
	e.ag.Report(b.ID, "", &wire.Exit{ExitCode: 0})
	if x := e.wait(b.ID); x.State != coordinator.Success {
		t.Errorf("approved build: %s %q", x.State, x.Reason)
	}
}

// A restart keeps an awaiting build awaiting (not failed); approved on
// the new coordinator, it runs with its Request made again by Resume.
// Without Resume it ends as error with a reason that says why.
func TestApprovalSurvivesRestart(t *testing.T) {
	resumed := make(chan string, 2)
	var e *runnerEnv
	e, _, _ = queueEnv(t, func(c *Config) {
		c.Resume = func(ctx context.Context, b *coordinator.Build) (coordinator.Request, error) {
			resumed <- b.ID
			return e.request(b.SHA, b.Key), nil
		}
	})
	e.ag.SetLaunch(e.ag.ExitAfterLaunch(wire.Exit{ExitCode: 0}))
	q := e.submit(untrustedRequest(e, testSHA('a'), "octo/hello#7"))
	lost := e.submit(untrustedRequest(e, testSHA('b'), "octo/hello#9"))
	e.r.Close()
	for _, id := range []string{q.ID, lost.ID} {
		if b := e.stored(id); !b.AwaitingApproval() || b.Reason != coordinator.ReasonAwaitingApproval {
			t.Fatalf("after Close: %s %q", b.State, b.Reason)
		}
	}

	r2 := e.newRunner()
	if err := r2.Recover(context.Background()); err != nil {
		t.Fatal(err)
	}
	testwait.Pause(t, 5*testPollInterval)
	if b := e.stored(q.ID); !b.AwaitingApproval() || len(e.sw.Created()) != 0 || len(resumed) != 0 {
		t.Fatalf("after Recover: %s %q, %d services, resumed %d", b.State, b.Reason, len(e.sw.Created()), len(resumed))
	}
	if _, err := r2.Approve(context.Background(), q.ID, "bob"); err != nil {
		t.Fatal(err)
	}
	if b := waitRunner(t, r2, q.ID); b.State != coordinator.Success || b.ApprovedBy != "bob" {
		t.Errorf("approved after the restart: %s %q by %q", b.State, b.Reason, b.ApprovedBy)
	}
	if id := <-resumed; id != q.ID {
		t.Errorf("resumed %s", id)
	}

	// A coordinator that cannot make the Request again.
	r2.Close()
	e.opts = append(e.opts, func(c *Config) { c.Resume = nil })
	r3 := e.newRunner()
	if err := r3.Recover(context.Background()); err != nil {
		t.Fatal(err)
	}
	if b := e.stored(lost.ID); !b.AwaitingApproval() {
		t.Fatalf("after Recover without Resume: %s %q", b.State, b.Reason)
	}
	if _, err := r3.Approve(context.Background(), lost.ID, "bob"); err != nil {
		t.Fatal(err)
	}
	b := waitRunner(t, r3, lost.ID)
	if b.State != coordinator.Error || !strings.Contains(b.Reason, "cannot fetch its source again") {
		t.Errorf("approved without Resume: %s %q", b.State, b.Reason)
	}
	if e.sw.Service(lost.ID) != nil {
		t.Error("a build that cannot resume got a service")
	}
}

// A build waiting in the queue when the coordinator stops stays queued
// (not failed), and leaves the queue.
func TestQueueClose(t *testing.T) {
	e, _, _ := queueEnv(t, func(c *Config) { c.MaxBuilds = 1 })
	first := e.submit(e.request(testSHA('a'), ""))
	e.waitStored(first.ID, "the first build to start", func(b *coordinator.Build) bool { return !b.Started.IsZero() })
	second := e.submit(e.request(testSHA('b'), ""))
	e.waitStored(second.ID, "its place", func(b *coordinator.Build) bool { return b.Reason == "queued: 0 ahead" })
	e.r.Close()
	if b := e.stored(second.ID); b.State != coordinator.Queued {
		t.Errorf("after Close: %s %q", b.State, b.Reason)
	}
	if r, w := e.r.adm.counts(); r != 0 || w != 0 {
		t.Errorf("after Close: %d slots held, %d waiting", r, w)
	}
}
