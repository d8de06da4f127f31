package web

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/agents"
	"github.com/forge-ci/forge/coordinator/artifacts"
	"github.com/forge-ci/forge/coordinator/auth"
	"github.com/forge-ci/forge/coordinator/secrets"
	"github.com/forge-ci/forge/coordinator/store"
)

// fakeBuilds is the lifecycle, with function fields.
type fakeBuilds struct {
	cancel func(ctx context.Context, id, reason string) error
	wait   func(ctx context.Context, id string) (*coordinator.Build, error)
	// approve: nil refuses every build as not awaiting approval.
	approve func(ctx context.Context, id, who string) (*coordinator.Build, error)
}

func (f *fakeBuilds) Approve(ctx context.Context, id, who string) (*coordinator.Build, error) {
	if f.approve == nil {
		return nil, coordinator.ErrNotAwaiting
	}
	return f.approve(ctx, id, who)
}

func (f *fakeBuilds) Submit(context.Context, coordinator.Request) (*coordinator.Build, error) {
	return nil, errors.New("not in these tests")
}
func (f *fakeBuilds) Cancel(ctx context.Context, id, reason string) error {
	return f.cancel(ctx, id, reason)
}
func (f *fakeBuilds) CancelKey(context.Context, string, string) {}
func (f *fakeBuilds) Wait(ctx context.Context, id string) (*coordinator.Build, error) {
	return f.wait(ctx, id)
}

// fakeLogs serves fixed output per build; follow waits for ctx.
type fakeLogs map[string]string

func (f fakeLogs) Follow(ctx context.Context, id string, w io.Writer, follow bool) error {
	out, ok := f[id]
	if !ok {
		return fmt.Errorf("%w %s", coordinator.ErrUnknownBuild, id) // as logs.Store's
	}
	io.WriteString(w, out)
	if follow {
		<-ctx.Done()
		return ctx.Err()
	}
	return nil
}

type fakeAgents []agents.AgentInfo

func (f fakeAgents) Agents() []agents.AgentInfo { return f }

// fakeAgentAdmin is the hub's revocations, with function fields, and the
// calls that reached it ("revoke n1", "allow n1").
type fakeAgentAdmin struct {
	revoke func(ctx context.Context, node string) error
	allow  func(ctx context.Context, node string) (bool, error)
	mu     sync.Mutex
	calls  []string
}

func (f *fakeAgentAdmin) Revoke(ctx context.Context, node string) error {
	f.mu.Lock()
	f.calls = append(f.calls, "revoke "+node)
	revoke := f.revoke
	f.mu.Unlock()
	return revoke(ctx, node)
}

func (f *fakeAgentAdmin) Allow(ctx context.Context, node string) (bool, error) {
	f.mu.Lock()
	f.calls = append(f.calls, "allow "+node)
	allow := f.allow
	f.mu.Unlock()
	return allow(ctx, node)
}

// onRevoke replaces revoke while the server runs.
func (f *fakeAgentAdmin) onRevoke(revoke func(ctx context.Context, node string) error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.revoke = revoke
}

func (f *fakeAgentAdmin) called() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

// newFakeAgentAdmin keeps a set of revoked nodes.
func newFakeAgentAdmin() *fakeAgentAdmin {
	var mu sync.Mutex
	revoked := map[string]bool{}
	return &fakeAgentAdmin{
		revoke: func(ctx context.Context, node string) error {
			mu.Lock()
			defer mu.Unlock()
			revoked[node] = true
			return nil
		},
		allow: func(ctx context.Context, node string) (bool, error) {
			mu.Lock()
			defer mu.Unlock()
			was := revoked[node]
			delete(revoked, node)
			return was, nil
		},
	}
}

type apiEnv struct {
	t         *testing.T
	st        *store.Store
	gh        *fakeGitHub
	url       string
	metrics   string // the metrics listener's
	mu        sync.Mutex
	cancels   []string
	approvals []string
	agents    *fakeAgentAdmin
	logs      fakeLogs
	arts      *artifacts.Store // every build's: testArtifacts
	keeper    *secrets.Keeper
}

func newAPIEnv(t *testing.T, builds ...*coordinator.Build) *apiEnv {
	t.Helper()
	return newAPIEnvWith(t, nil, builds...)
}

// newAPIEnvWith serves builds with the front door set by cfg (nil: the
// defaults, the admin token adminToken, dave a Forge admin).
func newAPIEnvWith(t *testing.T, tune func(*auth.Config), builds ...*coordinator.Build) *apiEnv {
	t.Helper()
	st, err := store.Open(":memory:")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	e := &apiEnv{t: t, st: st, arts: &artifacts.Store{Dir: t.TempDir()}}
	for _, b := range builds {
		if err := st.CreateBuild(context.Background(), b); err != nil {
			t.Fatal(err)
		}
		if _, err := e.arts.Put(b.ID, bytes.NewReader(testArtifacts(t, b.ID)), 1<<20); err != nil {
			t.Fatal(err)
		}
	}
	fb := &fakeBuilds{
		cancel: func(ctx context.Context, id, reason string) error {
			b, err := st.Build(ctx, id)
			if err != nil {
				return err
			}
			if b.State.Final() {
				return fmt.Errorf("%w: %s", coordinator.ErrNotRunning, id)
			}
			e.mu.Lock()
			e.cancels = append(e.cancels, id+"|"+reason)
			e.mu.Unlock()
			return nil
		},
		wait: func(ctx context.Context, id string) (*coordinator.Build, error) {
			<-ctx.Done()
			return nil, ctx.Err()
		},
		// As the lifecycle's: only a build awaiting approval is approved.
		approve: func(ctx context.Context, id, who string) (*coordinator.Build, error) {
			b, err := st.UpdateBuild(ctx, id, func(x *coordinator.Build) error {
				if !x.AwaitingApproval() {
					return coordinator.ErrNotAwaiting
				}
				x.ApprovedBy, x.Approved = who, time.Now()
				return nil
			})
			if err != nil {
				return nil, err
			}
			e.mu.Lock()
			e.approvals = append(e.approvals, id+"|"+who)
			e.mu.Unlock()
			return b, nil
		},
	}
	lg := fakeLogs{}
	for _, b := range builds {
		lg[b.ID] = "output of " + b.ID + "\n<b>not html</b>\n"
	}
	ag := fakeAgents{{NodeID: "n1", Hostname: "h1", AgentVersion: "v", EngineVersion: "20.10", Address: "10.0.0.1:1234",
		ConnectedSince: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), CertSerial: "0a1b2c",
		CertExpires: time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC)}}
	e.agents = newFakeAgentAdmin()
	webhook := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusAccepted) })
	e.gh = newFakeGitHub()
	ac := auth.Config{Store: st, GitHub: e.gh, PublicURL: "http://forge.test", Key: bytes.Repeat([]byte{7}, 32),
		AdminToken: adminToken, Admins: []string{"dave"}}
	if tune != nil {
		tune(&ac)
	}
	front, err := auth.New(ac)
	if err != nil {
		t.Fatal(err)
	}
	m := NewMetrics(st, ag)
	e.keeper = newKeeper(t, st)
	api, err := New(Config{Builds: fb, Store: st, Logs: lg, Agents: ag, AgentAdmin: e.agents, Webhook: webhook, Auth: front, Metrics: m.Handler(),
		Retain: 90 * 24 * time.Hour, Artifacts: e.arts, Secrets: e.keeper})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(api.Handler())
	t.Cleanup(srv.Close)
	metrics := httptest.NewServer(m.Handler())
	t.Cleanup(metrics.Close)
	e.url, e.metrics, e.logs = srv.URL, metrics.URL, lg
	return e
}

// do asks as nobody.
func (e *apiEnv) do(method, path string) (int, http.Header, string) {
	e.t.Helper()
	return e.call(nobody, method, path, "")
}

// admin asks with the admin token.
func (e *apiEnv) admin(method, path string) (int, http.Header, string) {
	e.t.Helper()
	return e.call(&caller{name: "admin token", bearer: adminToken}, method, path, "")
}

// build is a public repository's build.
func build(id string, st coordinator.State, created time.Time) *coordinator.Build {
	return &coordinator.Build{ID: id, State: st, Created: created,
		Subject: coordinator.Subject{Owner: "acme", Repo: "widgets", SHA: "0123456789abcdef0123456789abcdef01234567", Action: "execute", Trigger: "api", Public: true}}
}

func TestAPIBuilds(t *testing.T) {
	t0 := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	code := 2
	failed := build("b1", coordinator.Failure, t0)
	failed.ExitCode, failed.Reason = &code, "exit code 2"
	e := newAPIEnv(t, failed, build("b2", coordinator.Running, t0.Add(time.Second)), build("b3", coordinator.Queued, t0.Add(2*time.Second)))

	status, hdr, body := e.do("GET", "/api/builds")
	var list []BuildView
	if status != 200 || hdr.Get("Content-Type") != "application/json" || json.Unmarshal([]byte(body), &list) != nil {
		t.Fatalf("list: %d %s %s", status, hdr.Get("Content-Type"), body)
	}
	if len(list) != 3 || list[0].ID != "b3" || list[2].ID != "b1" {
		t.Fatalf("list not newest first: %+v", list)
	}
	if list[2].State != "failure" || list[2].ExitCode == nil || *list[2].ExitCode != 2 || list[2].Reason != "exit code 2" {
		t.Errorf("failed build shown as %+v", list[2])
	}
	status, _, body = e.do("GET", "/api/builds?state=running")
	if status != 200 || !strings.Contains(body, `"b2"`) || strings.Contains(body, `"b1"`) {
		t.Errorf("state filter: %d %s", status, body)
	}
	status, _, body = e.do("GET", "/api/builds?limit=1&before=b3")
	if status != 200 || json.Unmarshal([]byte(body), &list) != nil || len(list) != 1 || list[0].ID != "b2" {
		t.Errorf("limit and before: %d %s", status, body)
	}
	for q, want := range map[string]string{"limit=0": "limit", "limit=x": "limit", "before=nope": "no such build"} {
		status, _, body = e.do("GET", "/api/builds?"+q)
		if status != 400 || !strings.Contains(body, want) || !strings.Contains(body, `"message"`) {
			t.Errorf("?%s: %d %s", q, status, body)
		}
	}

	status, _, body = e.do("GET", "/api/builds/b1")
	var v BuildView
	if status != 200 || json.Unmarshal([]byte(body), &v) != nil || v.ID != "b1" || v.Owner != "acme" || v.Started != nil {
		t.Errorf("one build: %d %s", status, body)
	}
	status, _, body = e.do("GET", "/api/builds/nope")
	if status != 404 || !strings.Contains(body, "no build") {
		t.Errorf("unknown build: %d %s", status, body)
	}
}

func TestAPILog(t *testing.T) {
	e := newAPIEnv(t, build("b1", coordinator.Success, time.Now()))
	status, hdr, body := e.do("GET", "/api/builds/b1/log")
	if status != 200 || !strings.HasPrefix(hdr.Get("Content-Type"), "text/plain") || hdr.Get("X-Content-Type-Options") != "nosniff" {
		t.Fatalf("log: %d %v", status, hdr)
	}
	if body != "output of b1\n<b>not html</b>\n" {
		t.Errorf("log body %q", body)
	}
	// A finished build's log is not followed, even when asked to.
	status, _, body = e.do("GET", "/api/builds/b1/log?follow=1")
	if status != 200 || body != "output of b1\n<b>not html</b>\n" {
		t.Errorf("follow of a finished build: %d %q", status, body)
	}
	if status, _, _ := e.do("GET", "/api/builds/nope/log"); status != 404 {
		t.Errorf("log of an unknown build: %d", status)
	}
}

// A log that retention deleted says so, and a build that ended with no
// log says that, rather than "unknown build".
func TestAPILogGone(t *testing.T) {
	old, recent := build("old", coordinator.Success, time.Now().Add(-100*24*time.Hour)), build("recent", coordinator.Error, time.Now())
	old.Finished, recent.Finished = time.Now().Add(-91*24*time.Hour), time.Now()
	recent.Reason = "cancelled by alice before it started"
	e := newAPIEnv(t, old, recent)
	delete(e.logs, "old")
	delete(e.logs, "recent")
	for id, want := range map[string]string{
		"old":    "[forge: this build's log was deleted by retention: logs are kept 90 days after a build ends (--retain)]\n",
		"recent": "[forge: no log was recorded for this build, which ended as error: cancelled by alice before it started]\n",
	} {
		if status, _, body := e.do("GET", "/api/builds/"+id+"/log"); status != 200 || body != want {
			t.Errorf("log of %s: %d %q, want %q", id, status, body, want)
		}
	}
}

func TestAPICancel(t *testing.T) {
	e := newAPIEnv(t, build("run", coordinator.Running, time.Now()), build("done", coordinator.Success, time.Now()))
	status, _, body := e.admin("POST", "/api/builds/run/cancel")
	if status != 202 || !strings.Contains(body, "cancelling") {
		t.Errorf("cancel: %d %s", status, body)
	}
	status, _, body = e.admin("POST", "/api/builds/done/cancel")
	if status != 409 || !strings.Contains(body, "success already") {
		t.Errorf("cancel of a finished build: %d %s", status, body)
	}
	if status, _, _ := e.admin("POST", "/api/builds/nope/cancel"); status != 404 {
		t.Errorf("cancel of an unknown build: %d", status)
	}
	if status, _, _ := e.admin("GET", "/api/builds/run/cancel"); status != 405 {
		t.Errorf("GET of cancel: %d", status)
	}
	if len(e.cancels) != 1 || e.cancels[0] != "run|cancelled by admin token" {
		t.Errorf("cancels reaching the lifecycle: %v", e.cancels)
	}
}

func TestAPIAgentsHealthMetricsWebhook(t *testing.T) {
	e := newAPIEnv(t, build("b1", coordinator.Queued, time.Now()))
	status, hdr, body := e.admin("GET", "/api/agents")
	var got []map[string]any
	if status != 200 || hdr.Get("Content-Type") != "application/json" || json.Unmarshal([]byte(body), &got) != nil || len(got) != 1 {
		t.Fatalf("agents: %d %s", status, body)
	}
	for _, k := range []string{"node_id", "hostname", "agent_version", "engine_version", "address", "connected_since", "cert_serial", "cert_expires"} {
		if got[0][k] == nil || got[0][k] == "" {
			t.Errorf("agent lacks %s: %v", k, got[0])
		}
	}
	if status, _, body := e.do("GET", "/healthz"); status != 200 || body != "ok\n" {
		t.Errorf("healthz: %d %q", status, body)
	}
	resp, err := http.Get(e.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if body := string(raw); resp.StatusCode != 200 || !strings.Contains(body, `forge_builds{state="queued"} 1`) ||
		!strings.Contains(body, "forge_agents_connected 1") || !strings.Contains(body, "forge_dispatch_seconds") ||
		!strings.Contains(body, `forge_agent_cert_expiry_seconds{node="n1"} 1.767312e+09`) {
		t.Errorf("metrics: %d %s", resp.StatusCode, body)
	}
	if status, _, _ := e.do("GET", "/metrics"); status != 401 {
		t.Errorf("/metrics on the public port without a credential: %d, want 401", status)
	}
	if status, _, body := e.admin("GET", "/metrics"); status != 200 || !strings.Contains(body, "forge_agents_connected 1") {
		t.Errorf("/metrics on the public port with the admin token: %d", status)
	}
	if status, _, _ := e.do("POST", "/webhook"); status != 202 {
		t.Errorf("webhook: %d", status)
	}
}

// The CA's and the coordinator's certificates' expiry, read when scraped.
func TestMetricsCertificates(t *testing.T) {
	st, err := store.Open(":memory:")
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	m := NewMetrics(st, fakeAgents{})
	var mu sync.Mutex
	coord := &x509.Certificate{NotAfter: time.Unix(1800000000, 0)}
	ca := &x509.Certificate{NotAfter: time.Unix(2000000000, 0)}
	if err := m.Certificates(func() *x509.Certificate { return ca }, func() *x509.Certificate {
		mu.Lock()
		defer mu.Unlock()
		return coord
	}); err != nil {
		t.Fatal(err)
	}
	scrape := func() string {
		rec := httptest.NewRecorder()
		m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		return rec.Body.String()
	}
	if body := scrape(); !strings.Contains(body, "forge_ca_cert_expiry_seconds 2e+09") ||
		!strings.Contains(body, "forge_coordinator_cert_expiry_seconds 1.8e+09") || strings.Contains(body, "forge_agent_cert_expiry_seconds{") {
		t.Errorf("metrics:\n%s", body)
	}
	mu.Lock()
	coord = &x509.Certificate{NotAfter: time.Unix(1900000000, 0)}
	mu.Unlock()
	if body := scrape(); !strings.Contains(body, "forge_coordinator_cert_expiry_seconds 1.9e+09") {
		t.Errorf("a replaced certificate is not what is reported:\n%s", body)
	}
	if err := m.Certificates(func() *x509.Certificate { return ca }, func() *x509.Certificate { return ca }); err == nil {
		t.Error("Certificates registered twice")
	}
}

func TestPages(t *testing.T) {
	b := build("b1", coordinator.Running, time.Now())
	b.Owner = "<script>alert(1)</script>"
	e := newAPIEnv(t, b)
	status, hdr, body := e.do("GET", "/")
	if status != 200 || !strings.HasPrefix(hdr.Get("Content-Type"), "text/html") || !strings.Contains(body, `href="/builds/b1"`) {
		t.Errorf("index: %d %s", status, body)
	}
	if strings.Contains(body, "<script>alert(1)") {
		t.Error("the index page renders a repository owner as HTML")
	}
	status, _, body = e.do("GET", "/builds/b1")
	if status != 200 || !strings.Contains(body, "Build b1") || !strings.Contains(body, `data-build="b1"`) || !strings.Contains(body, `<script src="/static/build.js">`) {
		t.Errorf("build page: %d %s", status, body)
	}
	if status, _, _ := e.do("GET", "/builds/nope"); status != 404 {
		t.Errorf("page of an unknown build: %d", status)
	}
}
