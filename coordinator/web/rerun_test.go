package web

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/store"
)

// buildCount is how many builds the store holds.
func (e *apiEnv) buildCount() int {
	e.t.Helper()
	bs, err := e.st.ListBuilds(context.Background(), store.ListOptions{Limit: 500})
	if err != nil {
		e.t.Fatal(err)
	}
	return len(bs)
}

// A re-run: a reader may not (nothing is re-run or stored), a writer may,
// by the API or the page's button, which a final build from GitHub shows
// writers; the builds link both ways. A build not from GitHub cannot be
// re-run, which a 422 says.
func TestRerun(t *testing.T) {
	done := privateBuild("done")
	done.State, done.InstallationID, done.Finished = coordinator.Failure, 1, time.Now()
	running := privateBuild("running")
	running.InstallationID = 1
	local := privateBuild("local")
	local.State = coordinator.Success
	e := newAPIEnv(t, done, running, local)
	e.gh.set("alice", "acme/secret", coordinator.Read)
	e.gh.set("bob", "acme/secret", coordinator.Write)
	alice, bob := e.signIn("alice"), e.signIn("bob")

	if _, _, page := e.call(alice, "GET", "/builds/done", ""); strings.Contains(page, `id="rerun"`) {
		t.Errorf("alice's page has a re-run button")
	}
	if _, _, page := e.call(bob, "GET", "/builds/running", ""); strings.Contains(page, `id="rerun"`) {
		t.Errorf("a running build's page has a re-run button")
	}
	if _, _, page := e.call(bob, "GET", "/builds/done", ""); !strings.Contains(page, `action="/builds/done/rerun"`) {
		t.Errorf("bob's page has no re-run button:\n%s", page)
	}
	for _, path := range []string{"/api/builds/done/rerun", "/builds/done/rerun"} {
		if status, _, body := e.call(alice, "POST", path, ""); status != http.StatusForbidden {
			t.Errorf("alice re-runs by %s: %d %.200s", path, status, body)
		}
	}
	if status, _, _ := e.call(nobody, "POST", "/api/builds/done/rerun", ""); status != http.StatusNotFound {
		t.Errorf("nobody re-runs a private build: %d", status)
	}
	if len(e.reruns) != 0 || e.buildCount() != 3 {
		t.Fatalf("refused re-runs left %v, %d builds", e.reruns, e.buildCount())
	}

	status, _, body := e.call(bob, "POST", "/api/builds/done/rerun", "")
	var nb BuildView
	if status != http.StatusCreated || json.Unmarshal([]byte(body), &nb) != nil || nb.RerunOf != "done" || nb.RerunBy != "bob" || nb.SHA != done.SHA {
		t.Fatalf("bob re-runs: %d %s", status, body)
	}
	status, hdr, _ := e.call(bob, "POST", "/builds/done/rerun", "")
	if status != http.StatusSeeOther || hdr.Get("Location") != "/builds/done-rerun2" {
		t.Errorf("the button: %d to %q", status, hdr.Get("Location"))
	}
	_, _, body = e.call(bob, "GET", "/api/builds/done", "")
	var old BuildView
	if json.Unmarshal([]byte(body), &old) != nil || strings.Join(old.Reruns, ",") != nb.ID+",done-rerun2" {
		t.Errorf("the re-run build lists %v", old.Reruns)
	}
	if _, _, page := e.call(bob, "GET", "/builds/done", ""); !strings.Contains(page, `Re-run as <a href="/builds/`+nb.ID+`">`) {
		t.Errorf("the page does not link the re-runs:\n%s", page)
	}
	if _, _, page := e.call(bob, "GET", "/builds/"+nb.ID, ""); !strings.Contains(page, `A re-run of build <a href="/builds/done">done</a>, asked for by bob.`) {
		t.Errorf("the re-run's page does not link its build:\n%s", page)
	}

	status, _, body = e.call(bob, "POST", "/api/builds/local/rerun", "")
	if status != http.StatusUnprocessableEntity || !strings.Contains(body, "did not come from GitHub") {
		t.Errorf("re-run of a local build: %d %s", status, body)
	}
}

// Without a GitHub App there is nothing to re-run from: 501.
func TestRerunWithoutGitHub(t *testing.T) {
	done := privateBuild("done")
	done.State, done.InstallationID = coordinator.Success, 1
	e := newAPIEnv(t, done)
	api, err := New(Config{Builds: &fakeBuilds{}, Store: e.st, Logs: fakeLogs{}, Agents: fakeAgents{}, Auth: mustAuth(t, e)})
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("POST", "/api/builds/done/rerun", nil)
	req.Header.Set("Authorization", "Bearer "+adminToken)
	w := httptest.NewRecorder()
	api.Handler().ServeHTTP(w, req)
	if w.Code != http.StatusNotImplemented || !strings.Contains(w.Body.String(), "no GitHub App") {
		t.Errorf("%d %s", w.Code, w.Body.String())
	}
	if e.buildCount() != 1 {
		t.Error("a build was stored")
	}
}
