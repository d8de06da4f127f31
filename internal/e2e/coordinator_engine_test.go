package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/config"
	"github.com/forge-ci/forge/coordinator/daemon"
	"github.com/forge-ci/forge/coordinator/web"
	"github.com/forge-ci/forge/internal/dockertest"
)

// server is a whole coordinator (daemon.Coordinator) on loopback.
type server struct {
	srv     *daemon.Coordinator
	http    string
	agents  string
	metrics string
	cancel  context.CancelFunc
	done    chan error
	mu      sync.Mutex
	finals  map[string]int // final states recorded, by build
}

// adminToken is every test coordinator's admin token.
const adminToken = "forge_admin_e2e_0123456789abcdef"

// startServer starts a coordinator; onDispatch, when set, is told of
// every build's dispatch time.
func startServer(t testing.TB, e *env, data, agentAddr string, onDispatch ...func(time.Duration)) *server {
	t.Helper()
	return startServerWith(t, e, data, agentAddr, func(cfg *daemon.Config) {
		for _, f := range onDispatch {
			cfg.OnDispatch = f
		}
	})
}

// startServerWith starts a coordinator whose config tune may change; its
// HTTP listener is open before, so cfg.Access.PublicURL can name it.
func startServerWith(t testing.TB, e *env, data, agentAddr string, tune func(cfg *daemon.Config)) *server {
	t.Helper()
	ctx := dockertest.Context(t, 30*time.Second)
	s := &server{finals: map[string]int{}}
	httpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.http = "http://" + httpLn.Addr().String()
	cfg := daemon.Config{TLS: e.pki.ServerTLS(), Session: fastSession, DataDir: data,
		Executor: e.exe.Bytes, Logger: testLogger(t, "coordinator"), AgentWait: 20 * time.Second,
		Access: daemon.Access{AdminToken: adminToken, PublicURL: s.http},
		OnChange: func(b *coordinator.Build) {
			if b.State.Final() {
				s.mu.Lock()
				s.finals[b.ID]++
				s.mu.Unlock()
			}
		}}
	tune(&cfg)
	srv, err := daemon.New(ctx, cfg, e.cli)
	if err != nil {
		httpLn.Close()
		t.Fatal(err)
	}
	s.srv = srv
	if agentAddr == "" {
		agentAddr = "127.0.0.1:0"
	}
	agentLn, err := net.Listen("tcp", agentAddr)
	if err != nil {
		t.Fatal(err)
	}
	metricsLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.agents, s.metrics = agentLn.Addr().String(), "http://"+metricsLn.Addr().String()
	sctx, cancel := context.WithCancel(context.Background())
	s.cancel, s.done = cancel, make(chan error, 1)
	go func() { s.done <- srv.Serve(sctx, daemon.Listeners{HTTP: httpLn, Agents: agentLn, Metrics: metricsLn}) }()
	t.Cleanup(s.stop)
	return s
}

// stop ends the coordinator the way a restart does: builds stay in swarm.
func (s *server) stop() {
	if s.cancel == nil {
		return
	}
	s.cancel()
	<-s.done
	s.cancel = nil
}

func (s *server) submit(t testing.TB, e *env, yml string, testID string) *coordinator.Build {
	t.Helper()
	return s.submitAs(t, e, coordinator.Subject{Owner: "acme", Repo: "widgets", Branch: "main", SHA: "0123456789abcdef0123456789abcdef01234567", Action: "execute", Trigger: "api"}, yml, testID)
}

// submitAs submits a build of subj, pinned to this engine's node.
func (s *server) submitAs(t testing.TB, e *env, subj coordinator.Subject, yml string, testID string) *coordinator.Build {
	t.Helper()
	cfg, err := config.Parse(".forge.yml", []byte(yml))
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.srv.Builds.Submit(dockertest.Context(t, 30*time.Second), coordinator.Request{
		Subject: subj, Config: cfg, ConfigText: yml, Node: e.node, Labels: map[string]string{dockertest.LabelTest: testID},
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// admin asks with the admin token.
func admin(t testing.TB, method, url string) *http.Response {
	t.Helper()
	return adminBody(t, method, url, nil)
}

// adminBody asks with the admin token, sending body.
func adminBody(t testing.TB, method, url string, body io.Reader) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+adminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// getJSON is GET url with the admin token.
func getJSON(t testing.TB, url string, v any) int {
	t.Helper()
	resp := admin(t, http.MethodGet, url)
	defer resp.Body.Close()
	if v != nil {
		json.NewDecoder(resp.Body).Decode(v)
	}
	return resp.StatusCode
}

// waitState polls the API until the build reaches one of states.
func waitStarted(t testing.TB, s *server, id string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		var v web.BuildView
		getJSON(t, s.http+"/api/builds/"+id, &v)
		if v.Started != nil {
			return
		}
		if v.State != "running" && v.State != "queued" {
			t.Fatalf("build %s is %s (%s) before it started", id, v.State, v.Reason)
		}
		select {
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("build %s did not start", id)
}

// TestCoordinatorRestartMidBuild: the coordinator goes away while a build
// runs and a new one starts on the same data; the agent reconnects, the
// build finishes normally with every line once, and is recorded once.
func TestCoordinatorRestartMidBuild(t *testing.T) {
	e := newEnv(t)
	data := t.TempDir()
	s1 := startServer(t, e, data, "")
	startAgent(t, e.pki, s1.agents, nil, nil)
	id := dockertest.ID(t)
	dockertest.Cleanup(t, e.cli, id)
	const n = 120
	b := s1.submit(t, e, "image: "+e.image+"\nexecute: ['"+lineScript(n, 5)+"']\n", id)
	waitStarted(t, s1, b.ID)
	s1.stop()

	s2 := startServer(t, e, data, s1.agents)
	ctx := dockertest.Context(t, 2*time.Minute)
	final, err := s2.srv.Builds.Wait(ctx, b.ID)
	if err != nil {
		t.Fatal(err)
	}
	if final.State != coordinator.Failure || final.ExitCode == nil || *final.ExitCode != 5 {
		t.Fatalf("after the restart: %s (%s) exit %v, want failure 5", final.State, final.Reason, final.ExitCode)
	}
	resp := admin(t, "GET", s2.http+"/api/builds/"+b.ID+"/log")
	log, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	checkLines(t, string(log), n)
	s2.mu.Lock()
	if s1.finals[b.ID]+s2.finals[b.ID] != 1 {
		t.Errorf("final state recorded %d+%d times", s1.finals[b.ID], s2.finals[b.ID])
	}
	s2.mu.Unlock()
}

// TestHTTPAPI: the build API, a live log, cancel, metrics and the pages,
// against a real build.
func TestHTTPAPI(t *testing.T) {
	e := newEnv(t)
	s := startServer(t, e, t.TempDir(), "")
	startAgent(t, e.pki, s.agents, nil, nil)
	id := dockertest.ID(t)
	dockertest.Cleanup(t, e.cli, id)

	if code := getJSON(t, s.http+"/api/builds/nope", nil); code != http.StatusNotFound {
		t.Errorf("unknown build: %d", code)
	}
	b := s.submit(t, e, "image: "+e.image+"\nexecute: ['echo first; sleep 60; echo never']\n", id)
	waitStarted(t, s, b.ID)

	// Follow the log live: the first line arrives while the build runs.
	resp := admin(t, "GET", s.http+"/api/builds/"+b.ID+"/log?follow=1")
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("log content type %q", ct)
	}
	lines := make(chan string, 16)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	for got := ""; got != "first"; {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("log ended before the first line")
			}
			got = l
		case <-time.After(30 * time.Second):
			t.Fatal("no live log")
		}
	}
	var list []web.BuildView
	if code := getJSON(t, s.http+"/api/builds?limit=5", &list); code != 200 || len(list) == 0 || list[0].ID != b.ID || list[0].State != "running" {
		t.Fatalf("list: %d %+v", code, list)
	}
	r := admin(t, "POST", s.http+"/api/builds/"+b.ID+"/cancel")
	r.Body.Close()
	if r.StatusCode != http.StatusAccepted {
		t.Errorf("cancel: %d", r.StatusCode)
	}
	// The follower ends with the build.
	for range lines {
	}
	final, err := s.srv.Builds.Wait(dockertest.Context(t, time.Minute), b.ID)
	if err != nil {
		t.Fatal(err)
	}
	if final.State != coordinator.Error || !strings.Contains(final.Reason, "cancelled") {
		t.Errorf("after cancel: %s (%s)", final.State, final.Reason)
	}
	r = admin(t, "POST", s.http+"/api/builds/"+b.ID+"/cancel")
	r.Body.Close()
	if r.StatusCode != http.StatusConflict {
		t.Errorf("second cancel: %d, want 409", r.StatusCode)
	}
	for url, want := range map[string]string{
		s.metrics + "/metrics":     `forge_builds{state="error"} 1`,
		s.http + "/builds/" + b.ID: "Build " + b.ID,
		s.http + "/":               b.ID,
		s.http + "/healthz":        "ok",
		s.http + "/api/agents":     e.node,
	} {
		resp := admin(t, "GET", url)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(body), want) {
			t.Errorf("GET %s: %d, body lacks %q", url, resp.StatusCode, want)
		}
	}
	// On the public port, the metrics and the private build are closed
	// to whoever brings no credential.
	for path, want := range map[string]int{"/metrics": 401, "/api/agents": 401, "/api/builds/" + b.ID: 404, "/api/builds/" + b.ID + "/log": 404} {
		resp, err := http.Get(s.http + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET %s without a credential: %d, want %d", path, resp.StatusCode, want)
		}
	}
}
