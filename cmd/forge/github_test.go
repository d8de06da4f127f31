package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/client"

	"github.com/forge-ci/forge/coordinator/agents"
	"github.com/forge-ci/forge/coordinator/github"
	"github.com/forge-ci/forge/coordinator/web"
	"github.com/forge-ci/forge/internal/dockertest"
	"github.com/forge-ci/forge/internal/fakegithub"
	"github.com/forge-ci/forge/internal/fakegithub/fakegithubtest"
	"github.com/forge-ci/forge/internal/syncbuf"
	"github.com/forge-ci/forge/internal/testwait"
)

// The whole GitHub flow through the real programs: a fake GitHub (App
// tokens, .forge.yml, tarballs, commit statuses), the real `forge
// coordinator` and `forge agent` started in this process on port 0, and
// the real engine in swarm mode running the builds. Webhooks are real
// GitHub payloads with the fields of each flow set, signed with the
// coordinator's secret.

const (
	ghPayloadDir = "../../../shared/testdata/github-webhooks"
	ghPublicURL  = "http://forge.test"
	ghOwner      = "forge-test"
	// ghWait bounds every wait for a build's outcome: image, service,
	// landing, launch and run, under -race on a busy machine.
	ghWait = 3 * time.Minute
)

// ghProgram runs `forge args...` in this process until stop.
type ghProgram struct {
	name   string
	out    *syncbuf.Buffer
	cancel context.CancelFunc
	done   chan error
}

func startGHProgram(t *testing.T, name string, args ...string) *ghProgram {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	p := &ghProgram{name: name, out: &syncbuf.Buffer{}, cancel: cancel, done: make(chan error, 1)}
	app := newApp()
	app.Writer, app.ErrWriter = p.out, p.out
	go func() { p.done <- app.RunContext(ctx, append([]string{"forge"}, args...)) }()
	t.Cleanup(func() { p.stop(t) })
	return p
}

// stop cancels the program's context and waits for it to return.
func (p *ghProgram) stop(t *testing.T) {
	t.Helper()
	if p.done == nil {
		return
	}
	p.cancel()
	select {
	case err := <-p.done:
		if err != nil {
			t.Errorf("forge %s returned %v", p.name, err)
		}
	case <-time.After(60 * time.Second):
		t.Errorf("forge %s did not return within 60s of its context's end", p.name)
	}
	p.done = nil
}

// exited reports whether the program returned already (and with what).
func (p *ghProgram) exited() (bool, error) {
	select {
	case err := <-p.done:
		p.done <- err // keep it for stop
		return true, err
	default:
		return false, nil
	}
}

// ghRig is a coordinator and an agent on the real engine, a fake GitHub,
// and a repository of its own: forge-test/<unique name>, so that test
// processes running at once never share services.
type ghRig struct {
	t      *testing.T
	cli    *client.Client
	fake   *fakegithubtest.Server
	image  string
	owner  string
	repo   string
	full   string // owner/repo
	inst   int64
	secret []byte
	admin  string // the admin token, sent with every API request
	base   string // http://127.0.0.1:PORT of the coordinator's --listen
	hc     *http.Client
	coord  *ghProgram
	agent  *ghProgram
	// agentAddr is the coordinator's agent listener; certs holds the CA
	// and the join token (issueCerts); data is the coordinator's --data.
	agentAddr, certs, data string

	misplaced bool // a status went to another repository or installation
}

// startGHRig starts `forge coordinator` with a GitHub App on the fake
// (withApp) or without one, and, with the App, `forge agent`, and waits
// until the agent of this node is connected. extra are more flags of the
// coordinator.
func startGHRig(t *testing.T, withApp bool, extra ...string) *ghRig {
	t.Helper()
	cli := dockertest.Client(t)
	dockertest.Swarm(t, cli)
	r := &ghRig{t: t, cli: cli, owner: ghOwner, repo: dockertest.ID(t), inst: 4000 + int64(os.Getpid()%1000),
		secret: []byte(randHex(t, 16)), admin: "forge_admin_" + randHex(t, 16), hc: &http.Client{Timeout: 30 * time.Second}}
	r.full = r.owner + "/" + r.repo
	// Safety net, run last: whatever a failed test left behind.
	t.Cleanup(func() {
		if err := dockertest.RemoveLabelled(context.Background(), cli, "forge.repo="+r.full); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	r.image = dockertest.EnsureBusybox(t, cli)
	r.fake = fakegithubtest.New(t)
	r.fake.SetInstallation(r.full, r.inst)

	dir := t.TempDir()
	certs := issueCerts(t, dir, "127.0.0.1")
	r.certs = certs
	secretFile := writeGHFile(t, dir, "webhook-secret", r.secret, 0o600)
	adminFile := writeGHFile(t, dir, "admin-token", []byte(r.admin), 0o600)
	exe := writeGHFile(t, dir, "forgexec", dockertest.Forgexec(t), 0o755)
	r.data = filepath.Join(dir, "data")
	args := []string{"coordinator", "--listen", "127.0.0.1:0", "--agent-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
		"--data", r.data, "--forgexec", exe, "--webhook-secret-file", secretFile, "--admin-token-file", adminFile,
		"--public-url", ghPublicURL,
		"--tls-ca", filepath.Join(certs, "ca.pem"), "--tls-cert", filepath.Join(certs, "coordinator.pem"),
		"--tls-key", filepath.Join(certs, "coordinator-key.pem")}
	args = append(append(args, joinFlags(certs)...), extra...)
	if withApp {
		keyFile := writeGHFile(t, dir, "app-key.pem", fakegithubtest.AppKeyPEM(t), 0o600)
		args = append(args, "--github-app-id", strconv.Itoa(fakegithub.AppID), "--github-key-file", keyFile,
			"--github-api", r.fake.APIBase())
	}
	// Registered before the programs start, so it runs after they stop.
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range []*ghProgram{r.coord, r.agent} {
				if p != nil {
					t.Logf("forge %s said:\n%s", p.name, p.out.String())
				}
			}
			t.Logf("fake GitHub requests:\n%s", strings.Join(r.fake.Requests(), "\n"))
		}
	})
	r.coord = startGHProgram(t, "coordinator", args...)

	var agentAddr, httpAddr string
	ghUntil(t, 60*time.Second, "the coordinator's \"coordinator serving\" line", func() bool {
		if ok, err := r.coord.exited(); ok {
			t.Fatalf("forge coordinator returned before serving: %v\n%s", err, r.coord.out.String())
		}
		m := servingLine.FindStringSubmatch(r.coord.out.String())
		if m == nil {
			return false
		}
		agentAddr, httpAddr = m[1], m[2]
		return true
	})
	r.base, r.agentAddr = "http://"+httpAddr, agentAddr
	if !withApp {
		return r
	}
	r.agent = startGHProgram(t, "agent", append([]string{"agent", "--coordinator", agentAddr},
		agentJoinFlags(certs, filepath.Join(dir, "agent-state"))...)...)
	info, err := cli.Info(dockertest.Context(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	ghUntil(t, 60*time.Second, "the agent of node "+info.Swarm.NodeID+" at /api/agents", func() bool {
		if ok, err := r.agent.exited(); ok {
			t.Fatalf("forge agent returned: %v", err)
		}
		var agents []agents.AgentInfo
		if code, body := r.get("/api/agents"); code != http.StatusOK || json.Unmarshal([]byte(body), &agents) != nil {
			return false
		}
		for _, a := range agents {
			if a.NodeID == info.Swarm.NodeID {
				return true
			}
		}
		return false
	})
	return r
}

// issueCerts makes a CA under dir/certs with `forge certs`, a
// coordinator certificate for host and the join token agents get their
// own certificates with, and returns the folder.
func issueCerts(t *testing.T, dir, host string) string {
	t.Helper()
	certs := filepath.Join(dir, "certs")
	for _, args := range [][]string{
		{"certs", "init", "--dir", certs},
		{"certs", "issue", "--dir", certs, "--role", "coordinator", "--name", "coordinator", "--host", host},
		{"certs", "join-token", "--dir", certs},
	} {
		if out, err := run(t, args...); err != nil {
			t.Fatalf("forge %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	return certs
}

// joinFlags let a coordinator sign the certificates of agents that join
// with the token in certs.
func joinFlags(certs string) []string {
	return []string{"--tls-ca-key", filepath.Join(certs, "ca-key.pem"), "--join-token-file", filepath.Join(certs, "join-token")}
}

// agentJoinFlags are an agent's: the CA, the join token, and a folder of
// its own for the key and certificate it gets.
func agentJoinFlags(certs, state string) []string {
	return []string{"--tls-ca", filepath.Join(certs, "ca.pem"), "--join-token-file", filepath.Join(certs, "join-token"), "--state-dir", state}
}

// servingLine is the coordinator's log line once it listens, with the
// agent listener's and the HTTP listener's addresses.
var servingLine = regexp.MustCompile(`msg="coordinator serving".*\bagents=(\S+).*\bhttp=(\S+)`)

func writeGHFile(t *testing.T, dir, name string, data []byte, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

func randHex(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// randSHA is a new commit id.
func randSHA(t *testing.T) string { return randHex(t, 20) }

// ghUntil polls cond until it holds, failing the test after d.
func ghUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline.C:
			t.Fatalf("waited %v for %s", d, what)
		case <-tick.C:
		}
	}
}

func (r *ghRig) get(path string) (int, string) {
	r.t.Helper()
	req, err := http.NewRequest(http.MethodGet, r.base+path, nil)
	if err != nil {
		r.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+r.admin)
	resp, err := r.hc.Do(req)
	if err != nil {
		r.t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		r.t.Fatalf("GET %s: %v", path, err)
	}
	return resp.StatusCode, string(b)
}

// post delivers a webhook as GitHub does, signed with the coordinator's
// secret, and returns the answer.
func (r *ghRig) post(event, delivery string, payload map[string]any) (int, string) {
	r.t.Helper()
	body, err := json.Marshal(payload)
	if err != nil {
		r.t.Fatal(err)
	}
	req, err := http.NewRequest(http.MethodPost, r.base+"/webhook", bytes.NewReader(body))
	if err != nil {
		r.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "GitHub-Hookshot/forge-test")
	req.Header.Set("X-GitHub-Event", event)
	req.Header.Set("X-GitHub-Delivery", delivery)
	req.Header.Set("X-Hub-Signature-256", github.Sign(r.secret, body))
	resp, err := r.hc.Do(req)
	if err != nil {
		r.t.Fatalf("POST /webhook: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// deliver posts with a new delivery id and expects code.
func (r *ghRig) deliver(event string, payload map[string]any, code int) {
	r.t.Helper()
	if got, body := r.post(event, randHex(r.t, 16), payload); got != code {
		r.t.Fatalf("POST /webhook (%s): %d %q, want %d", event, got, body, code)
	}
}

// payload reads a real GitHub payload.
func ghPayload(t *testing.T, name string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(ghPayloadDir, name))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return m
}

// obj is the object at key in m, failing the test when there is none.
func obj(t *testing.T, m map[string]any, keys ...string) map[string]any {
	t.Helper()
	for _, k := range keys {
		next, ok := m[k].(map[string]any)
		if !ok {
			t.Fatalf("payload has no object %q", strings.Join(keys, "."))
		}
		m = next
	}
	return m
}

// setRepo makes the payload's repository this rig's.
func (r *ghRig) setRepo(p map[string]any) {
	repo := obj(r.t, p, "repository")
	repo["name"], repo["full_name"] = r.repo, r.full
	owner := obj(r.t, repo, "owner")
	owner["login"] = r.owner
	if _, ok := owner["name"]; ok {
		owner["name"] = r.owner
	}
}

// prPayload is file (pull_request.ACTION.json) for pull request number
// of this rig's repository, its head at sha on branch.
func (r *ghRig) prPayload(file string, number int, sha, branch string) map[string]any {
	r.t.Helper()
	p := ghPayload(r.t, file)
	r.setRepo(p)
	p["number"] = number
	p["installation"] = map[string]any{"id": r.inst}
	pr := obj(r.t, p, "pull_request")
	pr["number"] = number
	head := obj(r.t, pr, "head")
	head["sha"], head["ref"] = sha, branch
	obj(r.t, head, "repo")["full_name"] = r.full
	obj(r.t, pr, "base", "repo")["full_name"] = r.full
	return p
}

// pushPayload is a push of sha to branch (push.json, a tag deletion,
// turned into a branch push with one commit). The payload carries this
// rig's installation when withInstallation; without, the coordinator
// looks it up as the app.
func (r *ghRig) pushPayload(branch, sha string, withInstallation bool) map[string]any {
	r.t.Helper()
	p := ghPayload(r.t, "push.json")
	r.setRepo(p)
	commit := map[string]any{"id": sha, "tree_id": randSHA(r.t), "distinct": true, "message": "change",
		"timestamp": "2026-01-01T00:00:00Z", "url": "https://github.com/" + r.full + "/commit/" + sha,
		"author":    map[string]any{"name": "Codertocat", "email": "21031067+Codertocat@users.noreply.github.com", "username": "Codertocat"},
		"committer": map[string]any{"name": "GitHub", "email": "noreply@github.com", "username": "web-flow"},
		"added":     []any{}, "removed": []any{}, "modified": []any{"hello.txt"}}
	p["ref"], p["before"], p["after"] = "refs/heads/"+branch, randSHA(r.t), sha
	p["created"], p["deleted"], p["forced"], p["base_ref"] = false, false, false, nil
	p["commits"], p["head_commit"] = []any{commit}, commit
	if withInstallation {
		p["installation"] = map[string]any{"id": r.inst}
	} else {
		delete(p, "installation")
	}
	return p
}

// config is a .forge.yml in the busybox image running commands as
// action (execute unless given), plus extra lines.
func (r *ghRig) config(commands []string, extra ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "image: %q\nexecute:\n", r.image)
	for _, c := range commands {
		fmt.Fprintf(&b, "  - %q\n", c)
	}
	for _, e := range extra {
		b.WriteString(e + "\n")
	}
	return b.String()
}

// commit gives sha a .forge.yml and a source tree with hello.txt.
func (r *ghRig) commit(sha, forgeYML, hello string) {
	r.fake.SetFile(r.full, sha, forgeYML)
	r.fake.SetTarball(r.full, sha, fakegithubtest.Tarball(r.t, r.owner+"-"+r.repo+"-"+sha[:7],
		map[string]string{".forge.yml": forgeYML, "hello.txt": hello, "src/README": "a subfolder\n"}))
}

// statuses are the statuses set on sha in statusContext, in order.
func (r *ghRig) statuses(sha, statusContext string) []fakegithub.Status {
	var out []fakegithub.Status
	for _, s := range r.fake.Statuses() {
		if s.SHA == sha && s.Context == statusContext {
			if (s.Owner != r.owner || s.Repo != r.repo || s.Inst != r.inst) && !r.misplaced {
				r.misplaced = true // once, not at every poll
				r.t.Errorf("status set on %s/%s with installation %d's token: %+v", s.Owner, s.Repo, s.Inst, s)
			}
			out = append(out, s)
		}
	}
	return out
}

// waitStatus waits for a status on sha in statusContext that ok accepts
// and returns the statuses up to and including it.
func (r *ghRig) waitStatus(sha, statusContext, what string, ok func(fakegithub.Status) bool) []fakegithub.Status {
	r.t.Helper()
	var got []fakegithub.Status
	ghUntil(r.t, ghWait, fmt.Sprintf("%s on %s (%s)", what, sha[:7], statusContext), func() bool {
		all := r.statuses(sha, statusContext)
		for i, s := range all {
			if ok(s) {
				got = all[:i+1]
				return true
			}
		}
		return false
	})
	return got
}

// final waits for the build of sha to end and checks the statuses it got:
// pending ones (queued, running) then one final state, all on one build.
// It returns the final status and the build's id.
func (r *ghRig) final(sha, statusContext string) (fakegithub.Status, string) {
	r.t.Helper()
	got := r.waitStatus(sha, statusContext, "a final status", func(s fakegithub.Status) bool { return s.State != "pending" })
	last := got[len(got)-1]
	id, ok := strings.CutPrefix(last.TargetURL, ghPublicURL+"/builds/")
	if !ok || id == "" {
		r.t.Fatalf("target_url %q, want %s/builds/<id>", last.TargetURL, ghPublicURL)
	}
	if len(got) < 2 {
		r.t.Errorf("statuses on %s: %+v; want pending before %s", sha[:7], got, last.State)
	}
	for _, s := range got[:len(got)-1] {
		if s.State != "pending" || s.TargetURL != last.TargetURL {
			r.t.Errorf("status %+v before the final one; want pending with target_url %s", s, last.TargetURL)
		}
	}
	return last, id
}

// build is GET /api/builds/<id>.
func (r *ghRig) build(id string) web.BuildView {
	r.t.Helper()
	code, body := r.get("/api/builds/" + id)
	var b web.BuildView
	if code != http.StatusOK || json.Unmarshal([]byte(body), &b) != nil {
		r.t.Fatalf("GET /api/builds/%s: %d %s", id, code, body)
	}
	return b
}

// builds is GET /api/builds of this rig's repository.
func (r *ghRig) builds() []web.BuildView {
	r.t.Helper()
	code, body := r.get("/api/builds?owner=" + r.owner + "&repo=" + r.repo)
	var bs []web.BuildView
	if code != http.StatusOK || json.Unmarshal([]byte(body), &bs) != nil {
		r.t.Fatalf("GET /api/builds: %d %s", code, body)
	}
	return bs
}

// log waits until the build's log holds every one of want.
func (r *ghRig) log(id string, want ...string) string {
	r.t.Helper()
	var text string
	ghUntil(r.t, ghWait, fmt.Sprintf("the log of %s to show %q", id, want), func() bool {
		code, body := r.get("/api/builds/" + id + "/log")
		if code != http.StatusOK {
			return false
		}
		text = body
		for _, w := range want {
			if !strings.Contains(body, w) {
				return false
			}
		}
		return true
	})
	return text
}

// noServices waits until no service carries label (k=v).
func (r *ghRig) noServices(label string) {
	r.t.Helper()
	f := filters.NewArgs(filters.Arg("label", label))
	var left []string
	deadline := time.Now().Add(60 * time.Second)
	for {
		svcs, err := r.cli.ServiceList(dockertest.Context(r.t, 10*time.Second), swarm.ServiceListOptions{Filters: f})
		if err != nil {
			r.t.Fatalf("list services: %v", err)
		}
		left = left[:0]
		for _, s := range svcs {
			left = append(left, s.Spec.Name)
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("services labelled %s still there after 60s: %v", label, left)
		}
		testwait.Pause(r.t, 100*time.Millisecond)
	}
}

// done checks that the coordinator removed every service of the
// repository's builds.
func (r *ghRig) done() {
	r.t.Helper()
	r.noServices("forge.repo=" + r.full)
}

// running waits until the build of sha runs its commands: its pending
// "running" status is set and its log shows marker. It returns the id.
func (r *ghRig) running(sha, marker string) string {
	r.t.Helper()
	got := r.waitStatus(sha, "forge/execute", "pending \"running\"", func(s fakegithub.Status) bool {
		return s.State == "pending" && s.Description == "running"
	})
	id := strings.TrimPrefix(got[len(got)-1].TargetURL, ghPublicURL+"/builds/")
	r.log(id, marker)
	if b := r.build(id); b.State != "running" || b.Started == nil {
		r.t.Fatalf("build %s is %s (started %v), want running", id, b.State, b.Started)
	}
	return id
}

func TestGitHubPullRequestSuccess(t *testing.T) {
	r := startGHRig(t, true)
	sha := randSHA(t)
	hello := "hello from the tarball of " + r.repo
	r.commit(sha, r.config([]string{"cat hello.txt", `echo "pr=$FORGE_PULL_REQUEST"`, "test -f src/README"}), hello+"\n")
	r.deliver("pull_request", r.prPayload("pull_request.opened.json", 7, sha, "feature"), http.StatusAccepted)

	last, id := r.final(sha, "forge/execute")
	if last.State != "success" || last.Description != "passed" {
		t.Fatalf("final status %+v, want success", last)
	}
	b := r.build(id)
	if b.State != "success" || b.PullRequest != 7 || b.SHA != sha || b.Owner != r.owner || b.Repo != r.repo ||
		b.Action != "execute" || b.ExitCode == nil || *b.ExitCode != 0 {
		t.Errorf("build %+v", b)
	}
	// The source went GitHub -> coordinator -> agent -> container.
	text := r.log(id, hello, "pr=7")
	t.Logf("build log:\n%s", text)
	tarball := fmt.Sprintf("GET /api/v3/repos/%s/tarball/%s", r.full, sha)
	n := 0
	for _, req := range r.fake.Requests() {
		if strings.HasPrefix(req, tarball) {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d tarball requests, want 1", n)
	}
	r.peopleCommands(id, hello)
	r.done()
}

// peopleCommands runs forge builds, logs, cancel and agents against the
// coordinator, with finished build id whose log holds hello.
func (r *ghRig) peopleCommands(id, hello string) {
	t := r.t
	t.Helper()
	server := []string{"--server", r.base, "--token", r.admin}
	branch := r.build(id).Branch
	if branch == "" {
		t.Fatalf("build %s has no branch", id)
	}
	for _, c := range []struct {
		args   []string
		want   []string // in the output, or in the error when fails is set
		absent []string // not in the output
		fails  bool
	}{
		{args: []string{"builds", "--repo", r.full}, want: []string{"ID", id, "success", r.full, "#7", "execute"}},
		{args: []string{"builds", "--repo", r.full, "--state", "running"}, want: []string{"STATE"}, absent: []string{id}},
		{args: []string{"builds", "--pr", "7"}, want: []string{id}},
		{args: []string{"builds", "--pr", "8"}, want: []string{"STATE"}, absent: []string{id}},
		{args: []string{"builds", "--branch", branch, "--repo", r.full}, want: []string{id}},
		{args: []string{"builds", "--branch", branch + "-not"}, want: []string{"STATE"}, absent: []string{id}},
		{args: []string{"builds", "--before", id}, want: []string{"STATE"}, absent: []string{id}},
		{args: []string{"builds", "--pr", "-1"}, want: []string{"--pr -1"}, fails: true},
		{args: []string{"logs", id}, want: []string{hello, "pr=7"}},
		{args: []string{"logs", "-f", id}, want: []string{hello}},
		{args: []string{"agents"}, want: []string{"NODE", "HOSTNAME"}},
		{args: []string{"cancel", id}, want: []string{"cancel " + id, "success already"}, fails: true},
		{args: []string{"logs", "20260101T000000-000000"}, want: []string{"no build"}, fails: true},
		{args: []string{"builds", "--state", "bogus"}, want: []string{"list builds", "bogus"}, fails: true},
		{args: []string{"cancel", "--token", "forge_pat_wrong", id}, want: []string{"refused", "FORGE_TOKEN"}, fails: true},
	} {
		out, err := run(t, append(append([]string{c.args[0]}, server...), c.args[1:]...)...)
		text := out
		if c.fails {
			if err == nil {
				t.Errorf("forge %s succeeded:\n%s", strings.Join(c.args, " "), out)
				continue
			}
			text = err.Error()
		} else if err != nil {
			t.Errorf("forge %s: %v\n%s", strings.Join(c.args, " "), err, out)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(text, w) {
				t.Errorf("forge %s: %q lacks %q", strings.Join(c.args, " "), text, w)
			}
		}
		for _, a := range c.absent {
			if strings.Contains(text, a) {
				t.Errorf("forge %s: %q holds %q", strings.Join(c.args, " "), text, a)
			}
		}
	}
}

func TestGitHubSynchronizeSupersedes(t *testing.T) {
	r := startGHRig(t, true)
	first, second := randSHA(t), randSHA(t)
	r.commit(first, r.config([]string{"echo long-build-started", "sleep 60"}), "one\n")
	r.commit(second, r.config([]string{"cat hello.txt"}), "two\n")
	r.deliver("pull_request", r.prPayload("pull_request.opened.json", 8, first, "feature"), http.StatusAccepted)
	id1 := r.running(first, "long-build-started")

	r.deliver("pull_request", r.prPayload("pull_request.synchronize.json", 8, second, "feature"), http.StatusAccepted)
	last, id := r.final(first, "forge/execute")
	if id != id1 || last.State != "error" || last.Description != "superseded by "+second[:7] {
		t.Errorf("first commit's final status %+v, want error \"superseded by %s\" on build %s", last, second[:7], id1)
	}
	last2, id2 := r.final(second, "forge/execute")
	if last2.State != "success" {
		t.Errorf("second commit's final status %+v, want success", last2)
	}
	r.noServices("forge.build=" + id1)
	if b := r.build(id1); b.State != "error" || !strings.Contains(b.Reason, "superseded") {
		t.Errorf("first build %+v", b)
	}
	if b := r.build(id2); b.State != "success" || b.SHA != second {
		t.Errorf("second build %+v", b)
	}
	r.log(id2, "two")
	r.done()
}

func TestGitHubFailingBuild(t *testing.T) {
	r := startGHRig(t, true)
	sha := randSHA(t)
	r.commit(sha, r.config([]string{"echo about to fail", "exit 3"}), "x\n")
	r.deliver("pull_request", r.prPayload("pull_request.opened.json", 9, sha, "broken"), http.StatusAccepted)
	last, id := r.final(sha, "forge/execute")
	if last.State != "failure" || !strings.Contains(last.Description, "exit code 3") {
		t.Errorf("final status %+v, want failure naming exit code 3", last)
	}
	if b := r.build(id); b.State != "failure" || b.ExitCode == nil || *b.ExitCode != 3 {
		t.Errorf("build %+v", b)
	}
	r.log(id, "about to fail")
	r.done()
}

func TestGitHubInvalidConfig(t *testing.T) {
	r := startGHRig(t, true)
	sha := randSHA(t)
	cfg := r.config([]string{"true"}, "timeout: soon")
	line := strings.Count(cfg, "\n") // the last line
	r.commit(sha, cfg, "x\n")
	r.deliver("pull_request", r.prPayload("pull_request.opened.json", 10, sha, "bad-config"), http.StatusAccepted)
	got := r.waitStatus(sha, "forge/execute", "an error status", func(s fakegithub.Status) bool { return s.State == "error" })
	s := got[len(got)-1]
	if len(got) != 1 || !strings.Contains(s.Description, ".forge.yml:"+strconv.Itoa(line)) || !strings.Contains(s.Description, "timeout") {
		t.Errorf("statuses %+v; want one error naming .forge.yml:%d and timeout", got, line)
	}
	if bs := r.builds(); len(bs) != 0 {
		t.Errorf("an invalid config made builds: %+v", bs)
	}
	for _, req := range r.fake.Requests() {
		if strings.Contains(req, "/tarball/") {
			t.Errorf("the source of an invalid config was fetched: %s", req)
		}
	}
	r.done()
}

func TestGitHubClosedCancels(t *testing.T) {
	r := startGHRig(t, true)
	sha := randSHA(t)
	r.commit(sha, r.config([]string{"echo long-build-started", "sleep 60"}), "x\n")
	r.deliver("pull_request", r.prPayload("pull_request.opened.json", 11, sha, "feature"), http.StatusAccepted)
	id := r.running(sha, "long-build-started")
	r.deliver("pull_request", r.prPayload("pull_request.closed.json", 11, sha, "feature"), http.StatusAccepted)
	last, fid := r.final(sha, "forge/execute")
	if fid != id || last.State != "error" || !strings.Contains(last.Description, "closed") {
		t.Errorf("final status %+v, want error about the closed pull request on build %s", last, id)
	}
	if b := r.build(id); b.State != "error" || !strings.Contains(b.Reason, "pull request closed") {
		t.Errorf("build %+v", b)
	}
	r.noServices("forge.build=" + id)
	r.done()
}

func TestGitHubPush(t *testing.T) {
	r := startGHRig(t, true)
	cfg := r.config([]string{"false"}, "deploy:", `  - echo "deploying $FORGE_REF"`, "  - cat hello.txt", "on:", "  push:", "    main: deploy")
	other, mainSHA := randSHA(t), randSHA(t)
	r.commit(other, cfg, "feature branch\n")
	r.commit(mainSHA, cfg, "main branch\n")

	// A branch .forge.yml does not map: read, nothing built.
	r.deliver("push", r.pushPayload("feature", other, true), http.StatusAccepted)
	read := fmt.Sprintf("GET /api/v3/repos/%s/contents/.forge.yml?ref=%s", r.full, other)
	ghUntil(t, ghWait, "the coordinator to read .forge.yml at the feature branch's commit", func() bool {
		for _, req := range r.fake.Requests() {
			if req == read {
				return true
			}
		}
		return false
	})

	// main runs deploy; this payload has no installation: the
	// coordinator looks it up as the app.
	r.deliver("push", r.pushPayload("main", mainSHA, false), http.StatusAccepted)
	last, id := r.final(mainSHA, "forge/deploy")
	if last.State != "success" {
		t.Fatalf("final status %+v, want success", last)
	}
	r.log(id, "deploying refs/heads/main", "main branch")
	bs := r.builds()
	if len(bs) != 1 || bs[0].ID != id || bs[0].Action != "deploy" || bs[0].Branch != "main" || bs[0].Trigger != "push" || bs[0].PullRequest != 0 {
		t.Errorf("builds %+v; want the one deploy of main", bs)
	}
	for _, s := range r.fake.Statuses() {
		if s.SHA == other || (s.SHA == mainSHA && s.Context != "forge/deploy") {
			t.Errorf("status %+v", s)
		}
	}
	r.done()
}

func TestGitHubRedelivery(t *testing.T) {
	r := startGHRig(t, true)
	sha := randSHA(t)
	r.commit(sha, r.config([]string{"cat hello.txt"}), "once\n")
	p := r.prPayload("pull_request.opened.json", 12, sha, "feature")
	delivery := randHex(t, 16)
	if code, body := r.post("pull_request", delivery, p); code != http.StatusAccepted {
		t.Fatalf("first delivery: %d %q", code, body)
	}
	if code, body := r.post("pull_request", delivery, p); code != http.StatusOK || !strings.Contains(body, "duplicate delivery") {
		t.Errorf("redelivery: %d %q, want 200 duplicate delivery", code, body)
	}
	last, id := r.final(sha, "forge/execute")
	if last.State != "success" {
		t.Fatalf("final status %+v", last)
	}
	if bs := r.builds(); len(bs) != 1 || bs[0].ID != id {
		t.Errorf("builds %+v; want one", bs)
	}
	n := 0
	for _, s := range r.statuses(sha, "forge/execute") {
		if s.State == "success" {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d success statuses, want 1", n)
	}
	r.done()
}

// TestGitHubNoApp: a coordinator without App credentials serves, but
// answers webhooks 503 naming the flags it lacks.
func TestGitHubNoApp(t *testing.T) {
	r := startGHRig(t, false)
	code, body := r.post("pull_request", randHex(t, 16), r.prPayload("pull_request.opened.json", 1, randSHA(t), "x"))
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "--github-app-id") || !strings.Contains(body, "--github-key-file") {
		t.Errorf("POST /webhook: %d %q; want 503 naming --github-app-id and --github-key-file", code, body)
	}
	if code, body := r.get("/healthz"); code != http.StatusOK || strings.TrimSpace(body) != "ok" {
		t.Errorf("GET /healthz: %d %q", code, body)
	}
	if len(r.fake.Requests()) != 0 {
		t.Errorf("GitHub was called: %q", r.fake.Requests())
	}
	if out := r.coord.out.String(); !strings.Contains(out, "no GitHub App configured") {
		t.Errorf("the coordinator did not warn about the missing App:\n%s", out)
	}
}

// TestCoordinatorRefusals: `forge coordinator` refuses to start without
// what it needs, naming the flag. No engine is reached.
func TestCoordinatorRefusals(t *testing.T) {
	dir := t.TempDir()
	secret := writeGHFile(t, dir, "secret", []byte("s3cret\n"), 0o600)
	empty := writeGHFile(t, dir, "empty", []byte(" \n"), 0o600)
	key := writeGHFile(t, dir, "secrets-key", []byte(strings.Repeat("ab", 32)+"\n"), 0o600)
	tls := []string{"--tls-ca", filepath.Join(dir, "ca.pem"), "--tls-cert", filepath.Join(dir, "c.pem"), "--tls-key", filepath.Join(dir, "c-key.pem")}
	base := []string{"coordinator", "--listen", "127.0.0.1:0", "--agent-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--data", filepath.Join(dir, "data")}
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"no webhook secret", append(append([]string{}, base...), tls...), "--webhook-secret-file"},
		{"empty webhook secret", append(append([]string{}, base...), append(tls, "--webhook-secret-file", empty)...), "--webhook-secret-file"},
		{"no tls-ca", append(append([]string{}, base...), "--webhook-secret-file", secret, "--tls-cert", "c.pem", "--tls-key", "k.pem"), "tls-ca"},
		{"app id without key", append(append([]string{}, base...), append(tls, "--webhook-secret-file", secret, "--github-app-id", "4242")...), "--github-key-file"},
		{"client id without secret", append(append([]string{}, base...), append(tls, "--webhook-secret-file", secret, "--github-client-id", "Iv1.x", "--public-url", "https://f.example")...), "--github-client-secret-file"},
		{"client secret without id", append(append([]string{}, base...), append(tls, "--webhook-secret-file", secret, "--github-client-secret-file", secret, "--public-url", "https://f.example")...), "--github-client-id"},
		{"sign-in without public url", append(append([]string{}, base...), append(tls, "--webhook-secret-file", secret, "--github-client-id", "Iv1.x", "--github-client-secret-file", secret)...), "--public-url"},
		{"short admin token", append(append([]string{}, base...), append(tls, "--webhook-secret-file", secret, "--admin-token-file", secret)...), "--admin-token-file"},
		{"empty admin token", append(append([]string{}, base...), append(tls, "--webhook-secret-file", secret, "--admin-token-file", empty)...), "--admin-token-file"},
		{"bad session key", append(append([]string{}, base...), append(tls, "--webhook-secret-file", secret, "--session-key-file", secret)...), "--session-key-file"},
		{"bad secrets key", append(append([]string{}, base...), append(tls, "--webhook-secret-file", secret, "--secrets-key-file", secret)...), "--secrets-key-file " + secret + ": want 64 hex characters"},
		{"missing secrets key", append(append([]string{}, base...), append(tls, "--webhook-secret-file", secret, "--secrets-key-file", filepath.Join(dir, "nope"))...), "--secrets-key-file"},
		{"bad previous secrets key", append(append([]string{}, base...), append(tls, "--webhook-secret-file", secret, "--secrets-key-file", key, "--secrets-previous-key-file", secret)...), "--secrets-previous-key-file " + secret + ": want 64 hex characters"},
		{"previous secrets key alone", append(append([]string{}, base...), append(tls, "--webhook-secret-file", secret, "--secrets-previous-key-file", key)...), "--secrets-previous-key-file needs --secrets-key-file"},
	} {
		t.Run(c.name, func(t *testing.T) {
			out, err := run(t, c.args...)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("forge %s: %v, want an error naming %s\n%s", strings.Join(c.args, " "), err, c.want, out)
			}
			if _, serr := os.Stat(filepath.Join(dir, "data")); serr == nil {
				t.Errorf("a refused start made its data folder")
			}
		})
	}
}

// holdConfig holds the coordinator's read of .forge.yml at sha.
func (r *ghRig) holdConfig(sha string) *fakegithub.Hold {
	return r.fake.Hold(fmt.Sprintf("GET /api/v3/repos/%s/contents/.forge.yml?ref=%s", r.full, sha))
}

func (r *ghRig) arrived(h *fakegithub.Hold, what string) {
	r.t.Helper()
	select {
	case <-h.Arrived():
	case <-time.After(ghWait):
		r.t.Fatalf("waited %v for %s", ghWait, what)
	}
}

// waitBuild waits until /api/builds lists a build of sha and returns it.
func (r *ghRig) waitBuild(sha string) web.BuildView {
	r.t.Helper()
	var b web.BuildView
	ghUntil(r.t, ghWait, "a build of "+sha[:7], func() bool {
		for _, x := range r.builds() {
			if x.SHA == sha {
				b = x
				return true
			}
		}
		return false
	})
	return b
}

// TestGitHubQuickSynchronize: two heads of one pull request submitted in
// the same second. The service name is
// forge-{owner}-{repo}-{pr}-{YYYYmmddTHHMMSS}, so both builds would get
// the same one while the superseded first one's service still exists; the
// manager tries again with a suffix when swarm says the name is taken
// (DESIGN §2.4: names stay unique), and the newest head passes.
func TestGitHubQuickSynchronize(t *testing.T) {
	r := startGHRig(t, true)
	first, second := randSHA(t), randSHA(t)
	r.commit(first, r.config([]string{"echo first", "sleep 60"}), "one\n")
	r.commit(second, r.config([]string{"echo second"}), "two\n")
	h1 := r.holdConfig(first)
	r.deliver("pull_request", r.prPayload("pull_request.opened.json", 31, first, "feature"), http.StatusAccepted)
	r.arrived(h1, "the read of the first head's .forge.yml")
	r.deliver("pull_request", r.prPayload("pull_request.synchronize.json", 31, second, "feature"), http.StatusAccepted)
	// Both submits in one second: the second event follows the first at
	// once (events of one pull request are handled in order), so release
	// the first just after a second begins.
	testwait.Pause(t, time.Until(time.Now().Truncate(time.Second).Add(time.Second+10*time.Millisecond)))
	h1.Release()
	b1 := r.waitBuild(first)
	b2 := r.waitBuild(second)
	if !b1.Created.Truncate(time.Second).Equal(b2.Created.Truncate(time.Second)) {
		t.Skipf("could not submit both builds in one second (%v, %v)", b1.Created, b2.Created)
	}
	last, _ := r.final(second, "forge/execute")
	if last.State != "success" {
		t.Errorf("the newest head's final status %+v, want success", last)
	}
	if l1, _ := r.final(first, "forge/execute"); l1.State != "error" || l1.Description != "superseded by "+second[:7] {
		t.Errorf("the first head's final status %+v, want superseded", l1)
	}
	r.done()
}

// TestGitHubClosedWhileOpening: the pull request is closed while the
// coordinator still reads the .forge.yml of its opened event (GitHub
// takes hundreds of milliseconds per call). The closed event needs no
// GitHub call, but events of one pull request are handled in delivery
// order, so its cancel comes after the opened event's build is submitted
// and cancels it.
func TestGitHubClosedWhileOpening(t *testing.T) {
	r := startGHRig(t, true)
	sha := randSHA(t)
	r.commit(sha, r.config([]string{"echo built-after-close"}), "x\n")
	h := r.holdConfig(sha)
	r.deliver("pull_request", r.prPayload("pull_request.opened.json", 32, sha, "feature"), http.StatusAccepted)
	r.arrived(h, "the read of .forge.yml")
	r.deliver("pull_request", r.prPayload("pull_request.closed.json", 32, sha, "feature"), http.StatusAccepted)
	// The closed event needs no GitHub call: a worker handles it at once.
	// Nothing shows when it is done; give it a moment (a slow machine
	// only hides the bug).
	testwait.Pause(t, 500*time.Millisecond)
	h.Release()
	last, _ := r.final(sha, "forge/execute")
	if last.State == "success" {
		t.Errorf("final status %+v: the build of a closed pull request ran", last)
	}
	r.done()
}

// TestGitHubEventsInOrder: the older head's event is delivered first but
// its .forge.yml read is slow (a GitHub retry, say). Events of one pull
// request are handled in delivery order, so the newer head's event waits
// for it, and the newer head supersedes the older one rather than the
// other way round.
func TestGitHubEventsInOrder(t *testing.T) {
	r := startGHRig(t, true)
	older, newer := randSHA(t), randSHA(t)
	r.commit(older, r.config([]string{"echo older", "sleep 60"}), "old\n")
	r.commit(newer, r.config([]string{"echo newer"}), "new\n")
	h := r.holdConfig(older)
	r.deliver("pull_request", r.prPayload("pull_request.opened.json", 33, older, "feature"), http.StatusAccepted)
	r.arrived(h, "the read of the older head's .forge.yml")
	r.deliver("pull_request", r.prPayload("pull_request.synchronize.json", 33, newer, "feature"), http.StatusAccepted)
	// While the older event is held, the newer one must not be handled.
	select {
	case <-time.After(300 * time.Millisecond):
	}
	for _, req := range r.fake.Requests() {
		if strings.Contains(req, "ref="+newer) {
			t.Fatalf("the newer head's event was handled before the older one's: %s", req)
		}
	}
	h.Release()
	if last, _ := r.final(newer, "forge/execute"); last.State != "success" {
		t.Errorf("the newer head's final status %+v, want success", last)
	}
	if l1, _ := r.final(older, "forge/execute"); l1.State != "error" || l1.Description != "superseded by "+newer[:7] {
		t.Errorf("the older head's final status %+v, want superseded by %s", l1, newer[:7])
	}
	r.done()
}
