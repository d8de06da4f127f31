package deploy

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/api/types/volume"
	"github.com/docker/docker/client"

	"github.com/forge-ci/forge/internal/dockertest"
)

// The repository the fake GitHub serves, and the pull request the test
// sends: GitHub's own example payload (Codertocat/Hello-World #2,
// installation 1).
const (
	payloadFile = "../../shared/testdata/github-webhooks/pull_request.opened.json"
	headSHA     = "ec26c3e57ca3a959ca5aad62de7213c562f8c821" // the payload's
	slowSHA     = "5bd1e9d1a0f3bd1b0ad6a0e3a2c4d8f1e2b3c4d5" // a later push whose build runs until cancelled
	greeting    = "hello from a build of the deployed coordinator"
	appID       = 4242
	publicURL   = "http://forge.test"
)

// TestDeployMakeUp is the deployment end to end on this machine's engine:
// make up (stack, secrets, certificates, images), make up again (nothing
// changes), a pull request's build through the deployed coordinator (a
// signed webhook in, a fake GitHub Enterprise on the stack's network, the
// build on this node through the deployed agent, commit statuses out),
// then make down PURGE=1, after which nothing of it is left.
func TestDeployMakeUp(t *testing.T) {
	cli := dockertest.Client(t)
	dockertest.Swarm(t, cli)
	for _, tool := range []string{"make", "go", "git", "docker"} {
		if _, err := exec.LookPath(tool); err != nil {
			dockertest.Unavailable(t, "make up needs %s: %v", tool, err)
		}
	}
	payload, err := os.ReadFile(payloadFile)
	if err != nil {
		dockertest.Unavailable(t, "the example webhook payload: %v", err)
	}
	ctx := dockertest.Context(t, 9*time.Minute)
	info, err := cli.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	step := func(what string) {
		t.Logf("%6.1fs %s", time.Since(start).Seconds(), what)
	}
	busybox := dockertest.EnsureBusybox(t, cli)
	step("busybox image ready")

	id := dockertest.ID(t)
	d := &deployment{t: t, cli: cli, hc: &http.Client{Timeout: 10 * time.Second},
		stack: fmt.Sprintf("forgetest%d", os.Getpid()), dir: t.TempDir()}
	d.port = freePort(t)
	d.url = "http://127.0.0.1:" + strconv.Itoa(d.port)

	pub := d.configure()
	// Whatever happens, the stack, its secrets, volume and state go.
	t.Cleanup(d.purge)

	// The fake GitHub's image is built while make up runs.
	fakeImage := "forge-test/fakegithub:" + id
	built := make(chan error, 1)
	go func() {
		built <- buildFake(ctx, cli, fakeImage, d.dir, pub, busybox, "")
	}()
	t.Cleanup(func() {
		cli.ImageRemove(context.Background(), fakeImage, image.RemoveOptions{Force: true, PruneChildren: true})
	})

	out := d.make(ctx, 5*time.Minute, "up")
	step("make up")
	agents := d.waitAgent(ctx, info.Swarm.NodeID)
	step("this node's agent listed at /api/agents")
	if a := agents[info.Swarm.NodeID]; strings.HasPrefix(a.Address, "127.") {
		t.Errorf("the agent connected from %s: want its task's address on the overlay network", a.Address)
	}
	tasks := d.taskIDs(ctx)

	d.frontDoor(ctx, out, info.Swarm.NodeID)
	step("the admin token: made, needed, and enough for bin/forge; the secrets key in place")

	// make up again: nothing to create, nothing restarted.
	out = d.make(ctx, 2*time.Minute, "up")
	step("make up, second run")
	if strings.Contains(out, "created the Docker secret") || strings.Contains(out, "made a new CA") {
		t.Errorf("the second make up created things anew:\n%s", out)
	}
	if again := d.taskIDs(ctx); again != tasks {
		t.Errorf("the second make up replaced tasks: %s, then %s", tasks, again)
	}

	if err := <-built; err != nil {
		t.Fatal(err)
	}
	fake := d.startFake(ctx, fakeImage, id)
	step("fake GitHub running on the stack's network")

	// A pull request, signed with the webhook secret make up made.
	secret, err := os.ReadFile(filepath.Join(d.state, "webhook-secret"))
	if err != nil {
		t.Fatal(err)
	}
	d.secret = bytes.TrimSpace(secret)
	d.webhook(ctx, "deploy-test-"+id, payload)
	step("webhook accepted")

	b := d.waitBuild(ctx, fake, headSHA, "success", "failure", "error")
	step("build " + b.ID + " " + b.State)
	if b.State != "success" || b.NodeID != info.Swarm.NodeID || b.PullRequest != 2 || b.Owner != "Codertocat" {
		log, _ := d.api(ctx, "/api/builds/"+b.ID+"/log")
		t.Fatalf("build %+v; log:\n%s", b, log)
	}
	if log := d.get(ctx, "/api/builds/"+b.ID+"/log"); !strings.Contains(log, greeting) {
		t.Errorf("the build's log lacks %q:\n%s", greeting, log)
	}
	statuses := d.waitStatuses(ctx, fake, headSHA, `^(pending,)+success$`)
	step(fmt.Sprintf("%d commit statuses, pending to success", len(statuses)))
	for _, s := range statuses {
		if s.Owner != "Codertocat" || s.Repo != "Hello-World" || s.Context != "forge/execute" ||
			s.TargetURL != publicURL+"/builds/"+b.ID {
			t.Errorf("status %+v", s)
		}
	}

	// A new push to the pull request whose build does not end by itself:
	// make down PURGE=1 must cancel it (its record goes with the data),
	// and GitHub hears of it.
	var ev map[string]any
	if err := json.Unmarshal(payload, &ev); err != nil {
		t.Fatal(err)
	}
	ev["action"] = "synchronize"
	ev["pull_request"].(map[string]any)["head"].(map[string]any)["sha"] = slowSHA
	sync, _ := json.Marshal(ev)
	d.webhook(ctx, "deploy-test-sync-"+id, sync)
	slow := d.waitBuild(ctx, fake, slowSHA, "running")
	step("a second build " + slow.ID + " running")

	// make down PURGE=1 while it runs. The fake stays until the build's
	// error status has reached it, then leaves the network: make down
	// waits for the network to go, and a container still attached would
	// keep it.
	downDone := make(chan struct{})
	var downOut string
	var downErr error
	d.inFlight = downDone
	go func() {
		defer close(downDone)
		downOut, downErr = d.run(ctx, 2*time.Minute, "down", "PURGE=1")
	}()
	cancelled := d.waitStatuses(ctx, fake, slowSHA, `^(pending,)+error$`)
	step("the second build cancelled by make down PURGE=1: " + cancelled[len(cancelled)-1].Description)
	var reqs struct{ Refused []string }
	json.Unmarshal([]byte(d.fakeGet(ctx, fake, "/_fake/requests")), &reqs)
	if len(reqs.Refused) > 0 {
		t.Errorf("the fake GitHub refused: %q", reqs.Refused)
	}
	if err := dockertest.RemoveLabelled(ctx, cli, dockertest.LabelTest+"="+id); err != nil {
		t.Fatal(err)
	}
	<-downDone // bounded by run's timeout
	out = downOut
	if downErr != nil {
		t.Fatalf("make down PURGE=1: %v\n%s", downErr, out)
	}
	d.down = true
	t.Logf("make down PURGE=1:\n%s", out)
	step("make down PURGE=1")
	if !strings.Contains(out, "cancelling 1 build(s)") {
		t.Errorf("make down PURGE=1 did not say it cancelled the running build")
	}
	d.checkGone(ctx, b.Service, slow.Service)
}

// frontDoor checks the admin token of make up (whose output was out):
// a file of the state folder, 0600; the coordinator refuses /api/agents
// without it; and the README's command line lists the agents with it.
func (d *deployment) frontDoor(ctx context.Context, out, node string) {
	d.t.Helper()
	file := filepath.Join(d.state, "admin-token")
	if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != 0o600 {
		d.t.Fatalf("%s: %v, %v; want mode 0600", file, fi, err)
	}
	if token := d.adminToken(); !strings.HasPrefix(token, "forge_admin_") {
		d.t.Errorf("admin token %q: want it prefixed forge_admin_", token)
	}
	if !strings.Contains(out, "admin token     "+file) {
		d.t.Errorf("make up did not say where the admin token is:\n%s", out)
	}
	status, body, err := d.request(ctx, d.url+"/api/agents", "")
	if err != nil || (status != http.StatusUnauthorized && status != http.StatusForbidden) {
		d.t.Errorf("GET /api/agents without a credential: %d %s %v; want 401 or 403", status, body, err)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", "-c", `FORGE_TOKEN=$(cat "$STATE/admin-token") ../bin/forge agents`)
	cmd.Env = append(os.Environ(), "FORGE_SERVER="+d.url, "STATE="+d.state)
	if got, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(got), node) {
		d.t.Errorf("FORGE_TOKEN=$(cat .../admin-token) bin/forge agents: %v\n%s", err, got)
	}
	// The coordinator has the secrets key make up made: a secret can be
	// set, and is listed.
	cmd = exec.CommandContext(ctx, "sh", "-c", `echo smoke-value | ../bin/forge secrets set --admin-token-file "$STATE/admin-token" Codertocat/Hello-World SMOKE_TEST &&
		../bin/forge secrets ls --admin-token-file "$STATE/admin-token" Codertocat/Hello-World`)
	cmd.Env = append(os.Environ(), "FORGE_SERVER="+d.url, "STATE="+d.state)
	if got, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(got), "set SMOKE_TEST of Codertocat/Hello-World") ||
		strings.Count(string(got), "SMOKE_TEST") != 2 || strings.Contains(string(got), "smoke-value") {
		d.t.Errorf("bin/forge secrets set and ls on the deployed coordinator: %v\n%s", err, got)
	}
}

// configure makes the deployment's GitHub App key (the private half for
// make up) and sets the settings make up and make down run with, plus
// extra (KEY=value). It returns the key's public half, PEM, for the fake.
func (d *deployment) configure(extra ...string) []byte {
	d.t.Helper()
	d.state = filepath.Join(d.dir, "state")
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		d.t.Fatal(err)
	}
	keyFile := filepath.Join(d.dir, "app.private-key.pem")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600); err != nil {
		d.t.Fatal(err)
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		d.t.Fatal(err)
	}
	d.env = append([]string{
		"FORGE_STACK=" + d.stack, "FORGE_STATE_DIR=" + d.state, "FORGE_HTTP_PORT=" + strconv.Itoa(d.port),
		"FORGE_GITHUB_APP_ID=" + strconv.Itoa(appID), "FORGE_GITHUB_KEY_FILE=" + keyFile,
		"FORGE_GITHUB_API=http://fakegithub:8080/api/v3/", "FORGE_PUBLIC_URL=" + publicURL,
		"FORGE_GITHUB_CLIENT_ID=", "FORGE_GITHUB_CLIENT_SECRET_FILE=", "FORGE_GITHUB_WEB=",
		"FORGE_REGISTRY=", "FORGE_USER=", "FORGE_AGENT_USER=", "FORGE_UP_TIMEOUT=120", "FORGE_DOWN_TIMEOUT=90",
	}, extra...)
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub})
}

// webhook posts a pull_request event, signed, and wants 202.
func (d *deployment) webhook(ctx context.Context, delivery string, body []byte) {
	d.t.Helper()
	mac := hmac.New(sha256.New, d.secret)
	mac.Write(body)
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, d.url+"/webhook", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-GitHub-Event", "pull_request")
	req.Header.Set("X-GitHub-Delivery", delivery)
	req.Header.Set("X-Hub-Signature-256", "sha256="+hex.EncodeToString(mac.Sum(nil)))
	resp, err := d.hc.Do(req)
	if err != nil {
		d.t.Fatal(err)
	}
	answer, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		d.t.Fatalf("webhook %s: %s %s", delivery, resp.Status, answer)
	}
}

type deployment struct {
	t        *testing.T
	cli      client.APIClient // the manager's engine
	hc       *http.Client     // reaches the coordinator's published port
	netns    string           // where make runs (a cluster node's network namespace), or "" for this one
	stack    string
	dir      string
	state    string
	port     int
	url      string
	env      []string
	secret   []byte        // the webhook secret
	inFlight chan struct{} // closed when the test's own make down has returned
	down     bool          // make down PURGE=1 has succeeded
}

// make runs make TARGET in the repository with the deployment's settings,
// and returns its output; a failure fails the test.
func (d *deployment) make(ctx context.Context, timeout time.Duration, args ...string) string {
	d.t.Helper()
	out, err := d.run(ctx, timeout, args...)
	if err != nil {
		d.t.Fatalf("make %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	d.t.Logf("make %s:\n%s", strings.Join(args, " "), out)
	return out
}

func (d *deployment) run(ctx context.Context, timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	argv := append([]string{"make", "-C", "..", "--no-print-directory"}, args...)
	if d.netns != "" {
		// make up checks the coordinator at 127.0.0.1: the manager's own.
		argv = append([]string{"nsenter", "--net=/run/netns/" + d.netns, "--"}, argv...)
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), d.env...)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("%w (after %v)", ctx.Err(), timeout)
	}
	return string(out), err
}

// purge is the safety net: make down PURGE=1 when the test did not get
// there. (The fake GitHub's container, which would hold the network, is
// removed before: its cleanup was registered later.)
func (d *deployment) purge() {
	if d.inFlight != nil {
		<-d.inFlight // the test's make down, bounded by its timeout
	}
	if d.down {
		return
	}
	out, err := d.run(context.Background(), 2*time.Minute, "down", "PURGE=1")
	if err != nil {
		d.t.Errorf("cleanup: make down PURGE=1: %v\n%s", err, out)
	}
}

// get GETs path of the coordinator's API with the admin token; a failure
// fails the test.
func (d *deployment) get(ctx context.Context, path string) string {
	d.t.Helper()
	body, err := d.api(ctx, path)
	if err != nil {
		d.t.Fatal(err)
	}
	return body
}

// api GETs path of the coordinator's API with the admin token make up
// made: the agents, and builds of private repositories, need it.
func (d *deployment) api(ctx context.Context, path string) (string, error) {
	return d.fetch(ctx, d.url+path, d.adminToken())
}

// httpGet GETs url without a credential (the fake GitHub).
func (d *deployment) httpGet(ctx context.Context, url string) (string, error) {
	return d.fetch(ctx, url, "")
}

// fetch GETs url and wants 200.
func (d *deployment) fetch(ctx context.Context, url, token string) (string, error) {
	status, body, err := d.request(ctx, url, token)
	if err == nil && status != http.StatusOK {
		err = fmt.Errorf("GET %s: %d %s", url, status, body)
	}
	return body, err
}

// request GETs url, with token as a bearer token unless it is empty.
func (d *deployment) request(ctx context.Context, url, token string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := d.hc.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// adminToken is the admin token make up made in the state folder.
func (d *deployment) adminToken() string {
	d.t.Helper()
	b, err := os.ReadFile(filepath.Join(d.state, "admin-token"))
	if err != nil {
		d.t.Fatalf("the admin token make up makes: %v", err)
	}
	return strings.TrimRight(string(b), " \t\r\n")
}

// poll calls check every interval until it reports done, or fails the
// test when the deadline passes, with the last word of check.
func poll(t *testing.T, ctx context.Context, deadline time.Duration, what string, check func() (done bool, last string)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, deadline)
	defer cancel()
	for {
		done, last := check()
		if done {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: not within %v; last: %s", what, deadline, last)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

type agentView struct {
	NodeID   string `json:"node_id"`
	Hostname string `json:"hostname"`
	Address  string `json:"address"`
}

// waitAgent waits until /api/agents lists an agent on each of nodes.
func (d *deployment) waitAgent(ctx context.Context, nodes ...string) map[string]agentView {
	d.t.Helper()
	agents := map[string]agentView{}
	poll(d.t, ctx, 30*time.Second, fmt.Sprintf("agents on %v at /api/agents", nodes), func() (bool, string) {
		body, err := d.api(ctx, "/api/agents")
		if err != nil {
			return false, err.Error()
		}
		var list []agentView
		if err := json.Unmarshal([]byte(body), &list); err != nil {
			return false, err.Error()
		}
		for _, a := range list {
			agents[a.NodeID] = a
		}
		for _, n := range nodes {
			if _, ok := agents[n]; !ok {
				return false, body
			}
		}
		return true, body
	})
	return agents
}

// taskIDs names the stack's running tasks.
func (d *deployment) taskIDs(ctx context.Context) string {
	d.t.Helper()
	tasks, err := d.cli.TaskList(ctx, swarm.TaskListOptions{Filters: filters.NewArgs(
		filters.Arg("label", "com.docker.stack.namespace="+d.stack), filters.Arg("desired-state", "running"))})
	if err != nil {
		d.t.Fatal(err)
	}
	var ids []string
	for _, task := range tasks {
		ids = append(ids, task.ID)
	}
	return strings.Join(ids, ",")
}

// buildFake builds the fake GitHub (internal/deploytest/fakegithub, static)
// into a FROM scratch image with the repository it serves, whose
// .forge.yml ends with extra.
func buildFake(ctx context.Context, cli client.APIClient, tag, dir string, pubKey []byte, buildImage, extra string) error {
	bin := filepath.Join(dir, "fakegithub")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin, "github.com/forge-ci/forge/internal/deploytest/fakegithub")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build fakegithub: %v\n%s", err, out)
	}
	exe, err := os.ReadFile(bin)
	if err != nil {
		return err
	}
	forgeYML := "image: " + buildImage + "\n" +
		"execute:\n" +
		"  - cat hello.txt\n" +
		"  - test \"$FORGE_PULL_REQUEST\" = 2\n" +
		"  - test \"$FORGE_OWNER/$FORGE_REPO\" = Codertocat/Hello-World\n" +
		"  - test \"$FORGE_SHA\" = " + headSHA + " || sleep 300\n" + extra
	return dockertest.BuildImage(ctx, cli, tag, []dockertest.File{
		{Name: "fakegithub", Mode: 0o755, Body: exe},
		{Name: "app-key.pub.pem", Body: pubKey},
		{Name: "repo/.forge.yml", Body: []byte(forgeYML)},
		{Name: "repo/hello.txt", Body: []byte(greeting + "\n")},
	})
}

// startFake runs the fake GitHub as a container on the stack's overlay
// network (attachable), under the name the coordinator was given
// (fakegithub), with its port published on loopback for the test. It
// returns the fake's URL on loopback.
func (d *deployment) startFake(ctx context.Context, tag, id string) string {
	d.t.Helper()
	// ExposedPorts and PortBindings are types of docker/go-connections,
	// which this module does not require directly: set them as JSON.
	var cfg container.Config
	var host container.HostConfig
	if err := json.Unmarshal([]byte(`{"ExposedPorts": {"8080/tcp": {}}}`), &cfg); err != nil {
		d.t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(`{"PortBindings": {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}}`), &host); err != nil {
		d.t.Fatal(err)
	}
	cfg.Image, cfg.Cmd, cfg.Labels = tag, []string{"/fakegithub", "-listen", ":8080", "-app-id", strconv.Itoa(appID)}, map[string]string{dockertest.LabelTest: id}
	nets := &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{
		d.stack + "_forge": {Aliases: []string{"fakegithub"}}}}
	c, err := d.cli.ContainerCreate(ctx, &cfg, &host, nets, nil, "fakegithub-"+id)
	if err != nil {
		d.t.Fatalf("create the fake GitHub: %v", err)
	}
	dockertest.Cleanup(d.t, d.cli, id)
	if err := d.cli.ContainerStart(ctx, c.ID, container.StartOptions{}); err != nil {
		d.t.Fatalf("start the fake GitHub: %v", err)
	}
	var url string
	poll(d.t, ctx, 30*time.Second, "the fake GitHub to answer", func() (bool, string) {
		ci, err := d.cli.ContainerInspect(ctx, c.ID)
		if err != nil {
			return false, err.Error()
		}
		if ci.NetworkSettings == nil || len(ci.NetworkSettings.Ports["8080/tcp"]) == 0 {
			return false, "no published port yet"
		}
		url = "http://127.0.0.1:" + ci.NetworkSettings.Ports["8080/tcp"][0].HostPort
		_, err = d.httpGet(ctx, url+"/_fake/statuses")
		if err != nil {
			return false, err.Error()
		}
		return true, ""
	})
	return url
}

func (d *deployment) fakeGet(ctx context.Context, fake, path string) string {
	d.t.Helper()
	body, err := d.httpGet(ctx, fake+path)
	if err != nil {
		d.t.Fatal(err)
	}
	return body
}

type buildView struct {
	ID          string `json:"id"`
	Owner       string `json:"owner"`
	Repo        string `json:"repo"`
	PullRequest int    `json:"pull_request"`
	SHA         string `json:"sha"`
	State       string `json:"state"`
	Reason      string `json:"reason"`
	NodeID      string `json:"node_id"`
	Service     string `json:"service"`
}

// waitBuild waits until the build of sha is in one of the states.
func (d *deployment) waitBuild(ctx context.Context, fake, sha string, states ...string) buildView {
	d.t.Helper()
	var b buildView
	poll(d.t, ctx, 90*time.Second, "the build of "+sha[:7]+" to be "+strings.Join(states, " or "), func() (bool, string) {
		body, err := d.api(ctx, "/api/builds?repo=Hello-World")
		if err != nil {
			return false, err.Error()
		}
		var list []buildView
		if err := json.Unmarshal([]byte(body), &list); err != nil {
			return false, err.Error()
		}
		for _, x := range list {
			if x.SHA == sha {
				b = x
				return slices.Contains(states, b.State), body
			}
		}
		reqs, _ := d.httpGet(ctx, fake+"/_fake/requests")
		return false, "no build yet; the fake GitHub saw " + reqs
	})
	return b
}

type status struct {
	Owner, Repo, SHA, State, Context, Description string
	TargetURL                                     string `json:"target_url"`
}

// waitStatuses waits until the states of the commit statuses of sha, in
// order and joined by commas, match want (queued and running are both
// pending; Forge may leave out one it has replaced).
func (d *deployment) waitStatuses(ctx context.Context, fake, sha, want string) []status {
	d.t.Helper()
	var list []status
	poll(d.t, ctx, 60*time.Second, "commit statuses of "+sha[:7]+" matching "+want, func() (bool, string) {
		body, err := d.httpGet(ctx, fake+"/_fake/statuses")
		if err != nil {
			return false, err.Error()
		}
		var all []status
		if err := json.Unmarshal([]byte(body), &all); err != nil {
			return false, err.Error()
		}
		list = nil
		var states []string
		for _, s := range all {
			if s.SHA == sha {
				list = append(list, s)
				states = append(states, s.State)
			}
		}
		return regexp.MustCompile(want).MatchString(strings.Join(states, ",")), body
	})
	return list
}

// checkGone: after make down PURGE=1 nothing of the deployment is left.
func (d *deployment) checkGone(ctx context.Context, buildServices ...string) {
	d.t.Helper()
	ns := filters.NewArgs(filters.Arg("label", "com.docker.stack.namespace="+d.stack))
	var left []string
	svcs, err := d.cli.ServiceList(ctx, swarm.ServiceListOptions{Filters: ns})
	left = append(left, leftover(err, len(svcs), "services")...)
	cs, err := d.cli.ContainerList(ctx, container.ListOptions{All: true, Filters: ns})
	left = append(left, leftover(err, len(cs), "containers")...)
	nets, err := d.cli.NetworkList(ctx, network.ListOptions{Filters: ns})
	left = append(left, leftover(err, len(nets), "networks")...)
	vols, err := d.cli.VolumeList(ctx, volume.ListOptions{Filters: ns})
	left = append(left, leftover(err, len(vols.Volumes), "volumes")...)
	secrets, err := d.cli.SecretList(ctx, swarm.SecretListOptions{Filters: filters.NewArgs(filters.Arg("label", "forge.stack="+d.stack))})
	left = append(left, leftover(err, len(secrets), "secrets")...)
	for _, name := range buildServices {
		if name == "" {
			continue
		}
		if _, _, err := d.cli.ServiceInspectWithRaw(ctx, name, swarm.ServiceInspectOptions{}); err == nil {
			left = append(left, "the build's service "+name)
		} else if !client.IsErrNotFound(err) {
			left = append(left, err.Error())
		}
	}
	if _, err := os.Stat(d.state); !errors.Is(err, os.ErrNotExist) {
		left = append(left, "the state folder "+d.state)
	}
	if len(left) > 0 {
		d.t.Errorf("left after make down PURGE=1: %s", strings.Join(left, "; "))
	}
}

func leftover(err error, n int, what string) []string {
	if err != nil {
		return []string{what + ": " + err.Error()}
	}
	if n > 0 {
		return []string{fmt.Sprintf("%d %s", n, what)}
	}
	return nil
}

// freePort finds a TCP port free on this machine for the coordinator's
// published HTTP port.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
