package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/config"
	"github.com/forge-ci/forge/coordinator/store"
	"github.com/forge-ci/forge/internal/dockertest"
)

// cacheScript reports what the build found in its cache, then leaves its
// own build id there, a file under the work directory, and a link to
// /etc/shadow that must not travel.
const cacheScript = `if [ -f /root/.cache/demo/stamp ]; then echo "restored: $(cat /root/.cache/demo/stamp) $(cat deps/lib)"; else echo "cache: cold"; fi; ` +
	`mkdir -p /root/.cache/demo deps; echo $FORGE_BUILD_ID > /root/.cache/demo/stamp; echo lib-of-$FORGE_BUILD_ID > deps/lib; ` +
	`/bin/busybox ln -sf /etc/shadow /root/.cache/demo/shadow`

// TestCacheFollowsTheRepository: on the engine, a push to main writes its
// cache (a path outside the work directory and one inside it), and the next
// builds get it restored into their containers: an untrusted pull request
// reads main's and writes nothing, a trusted one reads main's and writes
// its own scope, and main's next build still gets main's cache, unchanged
// by either pull request. The link to /etc/shadow is left out, and a path
// that is not there is a line in the log, not a failure.
func TestCacheFollowsTheRepository(t *testing.T) {
	e := newEnv(t)
	s := startServer(t, e, t.TempDir(), "")
	startAgent(t, e.pki, s.agents, nil, nil)
	id := dockertest.ID(t)
	dockertest.Cleanup(t, e.cli, id)
	yml := "image: " + e.image + "\ncache: [/root/.cache/demo, deps, /root/.not-there]\nexecute: ['" + cacheScript + "']\n"
	cfg, err := config.Parse(".forge.yml", []byte(yml))
	if err != nil {
		t.Fatal(err)
	}
	ctx := dockertest.Context(t, 5*time.Minute)
	run := func(subject coordinator.Subject) (*coordinator.Build, string) {
		t.Helper()
		subject.Owner, subject.Repo, subject.SHA, subject.Action, subject.Trigger = "acme", "widgets", "0123456789abcdef0123456789abcdef01234567", "execute", "api"
		b, err := s.srv.Builds.Submit(ctx, coordinator.Request{Subject: subject, Config: cfg, ConfigText: yml, Node: e.node,
			Labels: map[string]string{dockertest.LabelTest: id}})
		if err != nil {
			t.Fatal(err)
		}
		final, err := s.srv.Builds.Wait(ctx, b.ID)
		if err != nil {
			t.Fatal(err)
		}
		log := buildLog(t, s, b.ID)
		if final.State != coordinator.Success {
			t.Fatalf("build %s: %s (%s)\n%s", b.ID, final.State, final.Reason, log)
		}
		return final, log
	}
	mainDigest := func() string {
		es, err := s.srv.Store.Caches(ctx, "acme", "widgets")
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range es {
			if e.Scope == "branch/main" {
				return e.Digest
			}
		}
		return ""
	}

	b1, log := run(coordinator.Subject{Branch: "main", DefaultBranch: "main"})
	for _, want := range []string{"forge: cache: none yet for branch main", "cache: cold",
		"forge: cache: /root/.not-there does not exist in the container; not saved",
		"forge: cache: /root/.cache/demo: 1 entry left out (links that leave /root/.cache/demo: 1)",
		"forge: cache: saved "} {
		if !strings.Contains(log, want) {
			t.Errorf("first build's log lacks %q:\n%s", want, log)
		}
	}
	written := mainDigest()
	if written == "" {
		t.Fatal("main's cache was not stored")
	}

	_, log = run(coordinator.Subject{PullRequest: 5, Branch: "evil", BaseBranch: "main", DefaultBranch: "main", Fork: true, Untrusted: true})
	for _, want := range []string{"forge: cache: restoring ", "restored: " + b1.ID + " lib-of-" + b1.ID,
		"forge: cache: not saved after this build: untrusted builds never write caches"} {
		if !strings.Contains(log, want) {
			t.Errorf("untrusted pull request's log lacks %q:\n%s", want, log)
		}
	}
	b3, log := run(coordinator.Subject{PullRequest: 6, Branch: "feature", BaseBranch: "main", DefaultBranch: "main"})
	if !strings.Contains(log, "restored: "+b1.ID) || !strings.Contains(log, "forge: cache: saved ") || !strings.Contains(log, "as pull request #6") {
		t.Errorf("trusted pull request's log:\n%s", log)
	}
	if got := mainDigest(); got != written {
		t.Fatalf("a pull request changed main's cache: %s, was %s", got, written)
	}
	_, log = run(coordinator.Subject{Branch: "main", DefaultBranch: "main"})
	t.Logf("main's second build:\n%s", log)
	if !strings.Contains(log, "restored: "+b1.ID+" lib-of-"+b1.ID) || strings.Contains(log, b3.ID) {
		t.Errorf("main's next build should get main's cache, from %s:\n%s", b1.ID, log)
	}
	es, err := s.srv.Store.Caches(ctx, "acme", "widgets")
	if err != nil {
		t.Fatal(err)
	}
	scopes := map[string]bool{}
	for _, e := range es {
		scopes[e.Scope] = true
	}
	if len(es) != 2 || !scopes["branch/main"] || !scopes["pull/6"] {
		t.Errorf("entries %+v: want main's and pull request #6's", es)
	}
	checkNoBuildCaches(t, ctx, s.srv.Store)
}

// checkNoBuildCaches: every build is over, so none may still save.
func checkNoBuildCaches(t *testing.T, ctx context.Context, st *store.Store) {
	t.Helper()
	var n int
	if err := st.DB().QueryRowContext(ctx, `SELECT COUNT(*) FROM build_caches`).Scan(&n); err != nil || n != 0 {
		t.Errorf("%d builds may still save a cache (%v)", n, err)
	}
}

// TestCacheSavedAfterAgentRestart: the node's agent is killed while a
// build that saves a cache runs; the agent that starts in its place is
// told the save again when it attaches, and the build's cache is saved
// before its exit, as without the restart.
func TestCacheSavedAfterAgentRestart(t *testing.T) {
	e := newEnv(t)
	s := startServer(t, e, t.TempDir(), "")
	first := startAgent(t, e.pki, s.agents, nil, nil)
	id := dockertest.ID(t)
	dockertest.Cleanup(t, e.cli, id)
	yml := "image: " + e.image + "\ncache: [/root/.cache/demo]\nexecute: ['echo started; sleep 3; mkdir -p /root/.cache/demo; echo $FORGE_BUILD_ID > /root/.cache/demo/stamp']\n"
	b := s.submitAs(t, e, coordinator.Subject{Owner: "acme", Repo: "widgets", Branch: "main", DefaultBranch: "main",
		SHA: "0123456789abcdef0123456789abcdef01234567", Action: "execute", Trigger: "api"}, yml, id)
	waitStarted(t, s, b.ID)
	first.stop()
	startAgent(t, e.pki, s.agents, nil, nil)

	ctx := dockertest.Context(t, 2*time.Minute)
	final, err := s.srv.Builds.Wait(ctx, b.ID)
	if err != nil {
		t.Fatal(err)
	}
	log := buildLog(t, s, b.ID)
	if final.State != coordinator.Success || !strings.Contains(log, "forge: cache: saved ") {
		t.Fatalf("build %s: %s (%s), log:\n%s", b.ID, final.State, final.Reason, log)
	}
	es, err := s.srv.Store.Caches(ctx, "acme", "widgets")
	if err != nil || len(es) != 1 || es[0].Scope != "branch/main" {
		t.Errorf("caches after the restart: %+v %v", es, err)
	}
}
