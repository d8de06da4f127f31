package lifecycle

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/swarm"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/secrets"
	"github.com/forge-ci/forge/coordinator/store"
	"github.com/forge-ci/forge/internal/buildsim"
	"github.com/forge-ci/forge/wire"
)

const testSecret = "tok3n-Value-ab12cd34"

// newKeeper is a secrets.Keeper on a store of its own, holding
// octo/hello's DEPLOY_TOKEN.
func newKeeper(t *testing.T) *secrets.Keeper {
	t.Helper()
	st, err := store.Open(":memory:")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	k, err := secrets.New(bytes.Repeat([]byte{1}, secrets.KeySize), st)
	if err != nil {
		t.Fatal(err)
	}
	if err := k.Set(context.Background(), "octo", "hello", "DEPLOY_TOKEN", []byte(testSecret), "alice"); err != nil {
		t.Fatal(err)
	}
	return k
}

func withSecrets(s coordinator.Secrets) func(*Config) {
	return func(c *Config) { c.Secrets = s }
}

// landAt makes every build's task land on node-a in container c-<id>.
func (e *runnerEnv) landAt() {
	e.sw.Tasks = func(s *buildsim.Service, _ int) []swarm.Task {
		return []swarm.Task{buildsim.TaskFailedStart("node-a", "c-"+s.ID)}
	}
}

// printing is a LaunchFunc: the build prints out and exits 0.
func (e *runnerEnv) printing(out string) {
	e.ag.SetLaunch(func(_ context.Context, _ string, req coordinator.LaunchRequest) (*coordinator.LaunchResult, error) {
		e.ag.Report(req.BuildID, out, &wire.Exit{ExitCode: 0})
		return &coordinator.LaunchResult{Started: wire.Started{ContainerID: req.ContainerID, StartedAt: time.Now()}}, nil
	})
}

const secretsConfig = testConfigText + "secrets: [DEPLOY_TOKEN]\n"

// A trusted build gets its secret with the Launch, never in its service's
// spec, and its log shows *** for it.
func TestSecretsGivenToTrustedBuild(t *testing.T) {
	e := newRunnerEnv(t, withSecrets(newKeeper(t)))
	e.landAt()
	e.printing("token=" + testSecret + "\n")
	q := e.submit(e.requestWith(testSHA('a'), "", secretsConfig))
	if b := e.wait(q.ID); b.State != coordinator.Success {
		t.Fatalf("build %s %q", b.State, b.Reason)
	}
	ls := e.ag.LaunchCalls()
	if len(ls) != 1 || string(ls[0].Req.Secrets["DEPLOY_TOKEN"]) != testSecret || len(ls[0].Req.Secrets) != 1 {
		t.Fatalf("launch secrets %v", ls)
	}
	spec, _ := json.Marshal(e.sw.Created())
	if bytes.Contains(spec, []byte(testSecret)) || !bytes.Contains(spec, []byte("FORGE_BUILD_ID")) {
		t.Errorf("the service spec holds the secret (or is not the spec): %s", spec)
	}
	if got := e.logText(q.ID); got != "token=***\n" {
		t.Errorf("log %q", got)
	}
}

// An untrusted build (a fork's, approved) runs without its secrets, and
// its log names them.
func TestSecretsWithheldFromUntrustedBuild(t *testing.T) {
	e := newRunnerEnv(t, withSecrets(newKeeper(t)))
	e.landAt()
	e.printing("token=[]\n")
	req := e.requestWith(testSHA('a'), "", testConfigText+"secrets: [DEPLOY_TOKEN, NOT_SET]\n")
	req.Subject.Untrusted, req.Subject.Fork = true, true
	q := e.submit(req)
	if b := e.wait(q.ID); b.State != coordinator.Success {
		t.Fatalf("build %s %q", b.State, b.Reason)
	}
	if ls := e.ag.LaunchCalls(); len(ls) != 1 || ls[0].Req.Secrets != nil {
		t.Fatalf("launch to an untrusted build: %+v", ls)
	}
	want := "forge: secrets withheld from this untrusted build (a fork's or an outside contributor's pull request): DEPLOY_TOKEN, NOT_SET\ntoken=[]\n"
	if got := e.logText(q.ID); got != want {
		t.Errorf("log %q\nwant %q", got, want)
	}
}

// A secret that is not set, or a coordinator without a key, ends the
// build as error naming it, with nothing created in swarm.
func TestSecretsMissing(t *testing.T) {
	for _, tc := range []struct {
		name    string
		secrets coordinator.Secrets
		config  string
		reason  string
	}{
		{"not set", newKeeper(t), testConfigText + "secrets: [DEPLOY_TOKEN, NPM_TOKEN, OTHER]\n",
			"secrets NPM_TOKEN, OTHER are not set for octo/hello (forge secrets set octo/hello NAME)"},
		{"no key", nil, secretsConfig,
			"the build needs secrets (DEPLOY_TOKEN), but this coordinator has no secrets key (--secrets-key-file)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newRunnerEnv(t, withSecrets(tc.secrets))
			e.landAt()
			q := e.submit(e.requestWith(testSHA('a'), "", tc.config))
			checkBuild(t, e.wait(q.ID), want{state: coordinator.Error, reason: tc.reason})
			if n := len(e.sw.Created()); n != 0 {
				t.Errorf("%d services created", n)
			}
			if n := len(e.ag.LaunchCalls()); n != 0 {
				t.Errorf("%d launches", n)
			}
		})
	}
}

// A per-action secret goes to that action only.
func TestSecretsPerAction(t *testing.T) {
	e := newRunnerEnv(t, withSecrets(newKeeper(t)))
	e.landAt()
	e.printing("ok\n")
	cfg := testConfigText + "deploy: [./release.sh]\nsecrets:\n  deploy: [DEPLOY_TOKEN]\n"
	exec := e.submit(e.requestWith(testSHA('a'), "", cfg))
	e.wait(exec.ID)
	req := e.requestWith(testSHA('b'), "", cfg)
	req.Subject.Action, req.Subject.PullRequest = "deploy", 0
	dep := e.submit(req)
	e.wait(dep.ID)
	for _, l := range e.ag.LaunchCalls() {
		got := string(l.Req.Secrets["DEPLOY_TOKEN"])
		if l.Req.BuildID == exec.ID && got != "" || l.Req.BuildID == dep.ID && got != testSecret {
			t.Errorf("build %s got %q", l.Req.BuildID, got)
		}
	}
}

// After a restart, a running build's log is masked again before its
// agent can attach; without the key to open its secrets, the build is
// stopped and its log refuses more output.
func TestSecretsAfterRestart(t *testing.T) {
	k := newKeeper(t)
	for _, tc := range []struct {
		name  string
		after coordinator.Secrets
	}{{"masked again", k}, {"no key", nil}} {
		t.Run(tc.name, func(t *testing.T) {
			e := newRunnerEnv(t, withSecrets(k))
			ctx := context.Background()
			b := &coordinator.Build{ID: "20260101T000000-5ec7e7",
				Subject: coordinator.Subject{Owner: "octo", Repo: "hello", PullRequest: 7, SHA: testSHA('f'), Action: "execute"},
				Config:  secretsConfig, State: coordinator.Running, Created: time.Now().Add(-time.Minute),
				Started: time.Now().Add(-30 * time.Second), NodeID: "node-a", ContainerID: "c-1"}
			if err := e.st.CreateBuild(ctx, b); err != nil {
				t.Fatal(err)
			}
			if err := e.logs.Create(b.ID); err != nil {
				t.Fatal(err)
			}
			e.sw.Add(testInstance, "svc-1", b.ID)
			e.opts = append(e.opts, withSecrets(tc.after))
			r := e.newRunner()
			if err := r.Recover(ctx); err != nil {
				t.Fatal(err)
			}
			if tc.after == nil {
				got := waitRunner(t, r, b.ID)
				if got.State != coordinator.Error || !strings.Contains(got.Reason, "cannot mask the build's secrets") || e.sw.Removals("svc-1") != 1 {
					t.Fatalf("build %s %q, service removed %d times", got.State, got.Reason, e.sw.Removals("svc-1"))
				}
				err := e.logs.Log(ctx, b.ID, &wire.Log{Seq: 1, Stream: wire.StreamStdout, Data: []byte(testSecret)})
				if err == nil {
					t.Error("output of a build stopped for its secrets was taken")
				}
				if strings.Contains(e.logText(b.ID), testSecret) {
					t.Error("the log holds the secret")
				}
				return
			}
			e.ag.Report(b.ID, "again "+testSecret+"\n", &wire.Exit{ExitCode: 0})
			if got := waitRunner(t, r, b.ID); got.State != coordinator.Success {
				t.Fatalf("build %s %q", got.State, got.Reason)
			}
			if got := e.logText(b.ID); got != "again ***\n" {
				t.Errorf("log %q", got)
			}
		})
	}
}
