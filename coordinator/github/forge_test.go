package github

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/internal/fakegithub/fakegithubtest"
)

// fakeBuilds records what Forge asks of the build manager.
type fakeBuilds struct {
	mu      sync.Mutex
	submits []coordinator.Request
	cancels []string // "key|reason"
	done    chan struct{}
}

func newFakeBuilds() *fakeBuilds { return &fakeBuilds{done: make(chan struct{}, 100)} }

func (f *fakeBuilds) Submit(ctx context.Context, req coordinator.Request) (*coordinator.Build, error) {
	f.mu.Lock()
	f.submits = append(f.submits, req)
	f.mu.Unlock()
	b := coordinator.Build{Subject: req.Subject}
	b.ID, b.State = "20260101T000000-abcdef", coordinator.Queued
	f.done <- struct{}{}
	return &b, nil
}

func (f *fakeBuilds) CancelKey(ctx context.Context, key, reason string) {
	f.mu.Lock()
	f.cancels = append(f.cancels, key+"|"+reason)
	f.mu.Unlock()
	f.done <- struct{}{}
}

func (f *fakeBuilds) get() ([]coordinator.Request, []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]coordinator.Request(nil), f.submits...), append([]string(nil), f.cancels...)
}

const validConfig = `image: golang:1.22
execute:
  - go test ./...
deploy:
  - ./release.sh
on:
  push:
    master: deploy
`

// badConfig has an unknown key on line 3.
const badConfig = `image: golang:1.22
execute: [go test ./...]
timeot: 30m
`

func newForge(t *testing.T) (*Forge, *fakegithubtest.Server, *fakeBuilds) {
	fake := fakegithubtest.New(t)
	builds := newFakeBuilds()
	app := newTestApp(t, fake)
	return &Forge{App: app, Builds: builds, Reporter: &Reporter{App: app, PublicURL: "https://forge.example.com/"}}, fake, builds
}

// pending counts the statuses queued and not yet taken by a sender.
func (r *Reporter) pending() int {
	n := 0
	for _, s := range r.senders {
		n += s.waiting()
	}
	return n
}

// run starts f.Run until the test ends.
func run(t *testing.T, f *Forge) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { f.Run(ctx); close(done) }()
	sent := make(chan struct{})
	go func() { f.Reporter.Run(ctx); close(sent) }()
	t.Cleanup(func() { cancel(); <-done; <-sent })
}

func prEvent(file string, t *testing.T) Event {
	ev, work, _, err := Decode("pull_request", readPayload(t, file))
	if err != nil || !work {
		t.Fatalf("Decode %s: %v", file, err)
	}
	ev.Delivery = "d"
	return ev
}

func pushEvent(t *testing.T) Event {
	ev, work, _, err := Decode("push", readPayload(t, "push.with-new-branch.json"))
	if err != nil || !work {
		t.Fatalf("Decode push: %v", err)
	}
	return ev
}

func TestPullRequestBuild(t *testing.T) {
	f, fake, builds := newForge(t)
	fake.SetFile(repo, prSHA, validConfig)
	fake.SetTarball(repo, prSHA, fakegithubtest.TarballEntries(t, goodTree...))
	if err := f.HandleEvent(context.Background(), prEvent("pull_request.opened.json", t)); err != nil {
		t.Fatal(err)
	}
	subs, _ := builds.get()
	if len(subs) != 1 {
		t.Fatalf("%d submits, want 1", len(subs))
	}
	req := subs[0]
	want := coordinator.Subject{Owner: "Codertocat", Repo: "Hello-World", PullRequest: 2, Branch: "changes", SHA: prSHA,
		Ref: "refs/pull/2/head", Action: "execute", CommitCount: 1, Trigger: "pull_request",
		Key: "Codertocat/Hello-World#2", InstallationID: 1, Public: true, Author: "Codertocat",
		BaseBranch: "master", DefaultBranch: "master"}
	if req.Subject != want {
		t.Errorf("build\n got %+v\nwant %+v", req.Subject, want)
	}
	if req.Config == nil || req.Config.Image != "golang:1.22" || req.ConfigText != validConfig {
		t.Errorf("config %+v / %q", req.Config, req.ConfigText)
	}
	if f.Reporter.pending() != 0 {
		t.Errorf("a status was queued for a submitted build (the manager's OnChange does that)")
	}

	// The source is fetched only when asked for, as a plain tar without
	// the top folder, in a file that goes away on Close.
	if n := countRequests(fake, "GET /api/v3/repos/Codertocat/Hello-World/tarball/"); n != 0 {
		t.Errorf("the tarball was fetched before the build asked for it")
	}
	rc, size, err := req.Source(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	name := rc.(*tempFile).Name()
	got := readTar(t, rc)
	if err := rc.Close(); err != nil {
		t.Fatal(err)
	}
	if size <= 0 || got[".forge.yml"] == "" || got["src/main.go"] != "package main\n" {
		t.Errorf("source %d bytes: %v", size, got)
	}
	if _, err := os.Stat(name); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the source file is still there after Close: %v", err)
	}
}

func TestPullRequestWithoutInstallation(t *testing.T) {
	f, fake, builds := newForge(t)
	fake.SetFile(repo, prSHA, validConfig)
	ev := prEvent("pull_request.ready_for_review.json", t)
	if ev.Installation != 0 {
		t.Fatal("the payload has an installation")
	}
	if err := f.HandleEvent(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	subs, _ := builds.get()
	if len(subs) != 1 || subs[0].Subject.InstallationID != 1 {
		t.Fatalf("submits %+v; want one with installation 1 (looked up)", subs)
	}
}

func TestInvalidConfig(t *testing.T) {
	f, fake, builds := newForge(t)
	fake.SetFile(repo, prSHA, badConfig)
	if err := f.HandleEvent(context.Background(), prEvent("pull_request.synchronize.json", t)); err != nil {
		t.Fatal(err)
	}
	if subs, _ := builds.get(); len(subs) != 0 {
		t.Fatalf("an invalid config was submitted")
	}
	run(t, f)
	s := fake.NextStatus(t, 10*time.Second)
	if s.State != "error" || s.Context != "forge/execute" || s.SHA != prSHA {
		t.Errorf("status %+v", s)
	}
	if !strings.Contains(s.Description, ".forge.yml:3") || !strings.Contains(s.Description, "timeot") ||
		utf8.RuneCountInString(s.Description) > MaxDescription {
		t.Errorf("description %q should name the file, line and key in at most 140 characters", s.Description)
	}
}

func TestNoConfigNoNothing(t *testing.T) {
	f, fake, builds := newForge(t)
	for _, ev := range []Event{prEvent("pull_request.opened.json", t), pushEvent(t)} {
		if err := f.HandleEvent(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
	}
	subs, cancels := builds.get()
	if len(subs)+len(cancels) != 0 || f.Reporter.pending() != 0 {
		t.Errorf("a repository without .forge.yml got submits %d, cancels %d, statuses %d", len(subs), len(cancels), f.Reporter.pending())
	}
	if n := countRequests(fake, "POST /api/v3/repos/"); n != 0 {
		t.Errorf("%d writes to GitHub", n)
	}
}

func TestClosedCancels(t *testing.T) {
	f, fake, builds := newForge(t)
	if err := f.HandleEvent(context.Background(), prEvent("pull_request.closed.json", t)); err != nil {
		t.Fatal(err)
	}
	subs, cancels := builds.get()
	if len(subs) != 0 || len(cancels) != 1 || cancels[0] != "Codertocat/Hello-World#2|pull request closed" {
		t.Errorf("submits %d, cancels %v", len(subs), cancels)
	}
	if n := len(fake.Requests()); n != 0 {
		t.Errorf("closing needed %d GitHub requests", n)
	}
}

func TestPushBuilds(t *testing.T) {
	f, fake, builds := newForge(t)
	fake.SetFile(repo, pushSHA, validConfig)
	if err := f.HandleEvent(context.Background(), pushEvent(t)); err != nil {
		t.Fatal(err)
	}
	subs, _ := builds.get()
	if len(subs) != 1 {
		t.Fatalf("%d submits, want 1", len(subs))
	}
	want := coordinator.Subject{Owner: "Codertocat", Repo: "Hello-World", Branch: "master", SHA: pushSHA,
		Ref: "refs/heads/master", Action: "deploy", CommitCount: 1, Trigger: "push",
		Key: "Codertocat/Hello-World@master", InstallationID: 1, Public: true, DefaultBranch: "master"}
	if subs[0].Subject != want {
		t.Errorf("build\n got %+v\nwant %+v", subs[0].Subject, want)
	}
}

func TestPushNothingToBuild(t *testing.T) {
	f, fake, builds := newForge(t)
	fake.SetFile(repo, pushSHA, strings.Replace(validConfig, "master: deploy", "main: deploy", 1))
	if err := f.HandleEvent(context.Background(), pushEvent(t)); err != nil {
		t.Fatal(err)
	}
	// Tags and deleted refs never become events; an event without a
	// branch does nothing either.
	for _, file := range []string{"push.json", "push.1.json", "push.with-installation.json", "push.with-organization.json"} {
		if _, work, _, err := Decode("push", readPayload(t, file)); work || err != nil {
			t.Errorf("%s: work=%v err=%v", file, work, err)
		}
	}
	if err := f.HandleEvent(context.Background(), Event{Kind: KindPush, Owner: "Codertocat", Repo: "Hello-World", SHA: pushSHA}); err != nil {
		t.Fatal(err)
	}
	if subs, _ := builds.get(); len(subs) != 0 || f.Reporter.pending() != 0 {
		t.Errorf("an unmapped branch got %d submits and %d statuses", len(subs), f.Reporter.pending())
	}
}

func TestBuildChangedStatuses(t *testing.T) {
	f, fake, _ := newForge(t)
	fake.FailStatuses(2, "502") // the first status needs three tries
	run(t, f)
	b := &coordinator.Build{
		ID:      "20260101T000000-abcdef",
		Subject: coordinator.Subject{Owner: "Codertocat", Repo: "Hello-World", SHA: prSHA, Action: "execute", InstallationID: 1},
		State:   coordinator.Queued,
	}
	code := 0
	// One change at a time: statuses of one commit and context waiting
	// together collapse into the latest (TestStatusQueueKeepsTheLatest).
	for _, step := range []struct {
		change      func()
		state, desc string
	}{
		{func() {}, "pending", "queued"},
		{func() { b.State = coordinator.Running }, "pending", "running"},
		{func() { b.State, b.ExitCode = coordinator.Success, &code }, "success", "passed"},
		{func() { b.State, b.ExitCode, b.Reason = coordinator.Queued, nil, coordinator.ReasonAwaitingApproval }, "pending", "awaiting approval"},
		{func() { b.Reason = "queued: 3 ahead" }, "pending", "queued: 3 ahead"},
	} {
		step.change()
		f.Reporter.BuildChanged(b)
		s := fake.NextStatus(t, 10*time.Second)
		if s.State != step.state || s.Description != step.desc || s.Context != "forge/execute" ||
			s.TargetURL != "https://forge.example.com/builds/20260101T000000-abcdef" || s.SHA != prSHA {
			t.Errorf("status %+v, want %s %q", s, step.state, step.desc)
		}
	}

	// Failure and error carry the reason, on the action's context.
	d := &coordinator.Build{
		ID:      "x2",
		Subject: coordinator.Subject{Owner: "Codertocat", Repo: "Hello-World", SHA: pushSHA, Action: "deploy", InstallationID: 1},
		State:   coordinator.Failure,
		Reason:  "exit code 2",
	}
	f.Reporter.BuildChanged(d)
	if s := fake.NextStatus(t, 10*time.Second); s.State != "failure" || s.Description != "exit code 2" || s.Context != "forge/deploy" {
		t.Errorf("failure status %+v", s)
	}
	d.State, d.Reason = coordinator.Error, "superseded by abc1234"
	f.Reporter.BuildChanged(d)
	if s := fake.NextStatus(t, 10*time.Second); s.State != "error" || s.Description != "superseded by abc1234" {
		t.Errorf("error status %+v", s)
	}
	if n := fake.TokenCount(1); n != 1 {
		t.Errorf("%d token requests for 5 statuses, want 1", n)
	}
}

func TestBuildChangedSkipsLocalBuilds(t *testing.T) {
	f, _, _ := newForge(t)
	f.Reporter.BuildChanged(&coordinator.Build{ID: "r", Subject: coordinator.Subject{Owner: "local", Repo: "dir", SHA: prSHA, Trigger: "run"}, State: coordinator.Queued})
	f.Reporter.BuildChanged(nil)
	if f.Reporter.pending() != 0 {
		t.Errorf("a build without an installation got a status")
	}
}

func TestStatusQueueNeverBlocks(t *testing.T) {
	f, _, _ := newForge(t)
	f.Reporter.StatusQueue, f.Reporter.StatusSenders = 2, 1
	for i := range 10 { // ten commits; no Run: nothing drains the queue
		f.Reporter.BuildChanged(&coordinator.Build{ID: "x", Subject: coordinator.Subject{Owner: "Codertocat", Repo: "Hello-World",
			SHA: fmt.Sprintf("%040d", i), InstallationID: 1}, State: coordinator.Queued})
	}
	if f.Reporter.pending() != 2 {
		t.Errorf("%d statuses queued, want the queue's size, 2", f.Reporter.pending())
	}
}

// A long build queue changes a waiting build's place often: only the
// latest status of a commit and context waits, so its final status is
// never dropped behind a pile of "queued: N ahead".
func TestStatusQueueKeepsTheLatest(t *testing.T) {
	f, _, _ := newForge(t)
	f.Reporter.StatusQueue, f.Reporter.StatusSenders = 2, 1
	b := &coordinator.Build{ID: "x", Subject: coordinator.Subject{Owner: "Codertocat", Repo: "Hello-World", SHA: prSHA, InstallationID: 1}, State: coordinator.Queued}
	for i := range 200 {
		b.Reason = fmt.Sprintf("queued: %d ahead", 200-i)
		f.Reporter.BuildChanged(b)
	}
	b.State, b.Reason = coordinator.Success, ""
	f.Reporter.BuildChanged(b)
	if n := f.Reporter.pending(); n != 1 {
		t.Fatalf("%d statuses wait, want 1", n)
	}
	if u, _ := f.Reporter.senders[0].pop(); u.build == nil || u.build.State != coordinator.Success {
		t.Errorf("the report waiting is %+v, want the build's success", u.build)
	}
}

// TestEndToEnd: a signed pull_request delivery through the handler, the
// queue and a worker, to a Submit.
func TestEndToEnd(t *testing.T) {
	f, fake, builds := newForge(t)
	fake.SetFile(repo, prSHA, validConfig)
	q := NewQueue(8)
	f.Queue = q
	run(t, f)
	h := &Webhook{Secret: testSecret, Deliveries: &memDeliveries{}, Queue: q}
	if w := post(h, "pull_request", readPayload(t, "pull_request.opened.json"), ""); w.Code != 202 {
		t.Fatalf("code %d", w.Code)
	}
	select {
	case <-builds.done:
	case <-time.After(10 * time.Second):
		t.Fatal("no Submit")
	}
	subs, _ := builds.get()
	if len(subs) != 1 || subs[0].Subject.Key != "Codertocat/Hello-World#2" {
		t.Errorf("submits %+v", subs)
	}
}

// A pull request is untrusted from a fork, or by an author who is not an
// owner, member or collaborator; pushes never are. --require-approval
// says which wait.
func TestPullRequestTrust(t *testing.T) {
	for _, tc := range []struct {
		name                 string
		push                 bool
		fork                 bool
		assoc                string
		mode                 coordinator.ApprovalMode
		untrusted, needsAppr bool
	}{
		{name: "owner", assoc: "OWNER"},
		{name: "member", assoc: "MEMBER"},
		{name: "collaborator", assoc: "COLLABORATOR"},
		{name: "contributor", assoc: "CONTRIBUTOR", untrusted: true, needsAppr: true},
		{name: "first timer", assoc: "FIRST_TIME_CONTRIBUTOR", untrusted: true, needsAppr: true},
		{name: "none", assoc: "NONE", untrusted: true, needsAppr: true},
		{name: "no association", assoc: "", untrusted: true, needsAppr: true},
		{name: "owner from a fork", fork: true, assoc: "OWNER", untrusted: true, needsAppr: true},
		{name: "member, mode all", assoc: "MEMBER", mode: coordinator.ApproveAll, needsAppr: true},
		{name: "fork, mode none", fork: true, assoc: "NONE", mode: coordinator.ApproveNone, untrusted: true},
		{name: "push, mode all", push: true, mode: coordinator.ApproveAll},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, fake, builds := newForge(t)
			f.RequireApproval = tc.mode
			var ev Event
			if tc.push {
				ev = pushEvent(t)
				fake.SetFile(repo, pushSHA, validConfig)
			} else {
				ev = prEvent("pull_request.opened.json", t)
				ev.Fork, ev.Association = tc.fork, tc.assoc
				fake.SetFile(repo, prSHA, validConfig)
			}
			if err := f.HandleEvent(context.Background(), ev); err != nil {
				t.Fatal(err)
			}
			subs, _ := builds.get()
			if len(subs) != 1 {
				t.Fatalf("%d submits", len(subs))
			}
			s := subs[0].Subject
			if s.Untrusted != tc.untrusted || s.NeedsApproval != tc.needsAppr {
				t.Errorf("untrusted %v, needs approval %v; want %v, %v", s.Untrusted, s.NeedsApproval, tc.untrusted, tc.needsAppr)
			}
			if !tc.push && s.Author != "Codertocat" {
				t.Errorf("author %q", s.Author)
			}
		})
	}
}

// Resume makes the Request of a recorded build again: its config from
// the record, its source fetched at its SHA when asked.
func TestResume(t *testing.T) {
	f, fake, _ := newForge(t)
	fake.SetTarball(repo, prSHA, fakegithubtest.TarballEntries(t, goodTree...))
	b := &coordinator.Build{ID: "b1", Config: validConfig, Subject: coordinator.Subject{Owner: "Codertocat", Repo: "Hello-World",
		SHA: prSHA, PullRequest: 2, InstallationID: 1, Untrusted: true, NeedsApproval: true}}
	req, err := f.Resume(context.Background(), b)
	if err != nil {
		t.Fatal(err)
	}
	if req.Subject != b.Subject || req.ConfigText != validConfig || req.Config == nil || req.Config.Image != "golang:1.22" {
		t.Errorf("request %+v", req)
	}
	rc, _, err := req.Source(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	rc.Close()
	b.Config = badConfig
	if _, err := f.Resume(context.Background(), b); err == nil || !strings.Contains(err.Error(), "timeot") {
		t.Errorf("resume with a bad config: %v", err)
	}
	b.Config, b.InstallationID = validConfig, 0
	if _, err := f.Resume(context.Background(), b); err == nil || !strings.Contains(err.Error(), "no GitHub installation") {
		t.Errorf("resume without an installation: %v", err)
	}
}
