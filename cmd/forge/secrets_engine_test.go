package main

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/swarm"

	"github.com/forge-ci/forge/internal/dockertest"
)

// TestGitHubSecrets: secrets end to end on the engine, through the real
// programs. The admin sets a secret with forge secrets set; a trusted
// pull request's build gets it as an environment variable; its log,
// stored and streamed, shows *** for it, also when it is printed in two
// pieces; neither docker service inspect, the task history, docker
// inspect of the container, nor any file of the coordinator's --data
// (the SQLite database and its WAL, the logs) holds it. A fork's pull
// request, approved, runs without it and its log names it; a secret
// named but not set ends a build as error before anything is in swarm.
func TestGitHubSecrets(t *testing.T) {
	keyFile := writeGHFile(t, t.TempDir(), "secrets-key", []byte(randHex(t, 32)+"\n"), 0o600)
	r := startGHRig(t, true, "--secrets-key-file", keyFile)
	value := "s3cr3t-" + randHex(t, 8) + "-" + randHex(t, 8)
	forms := []string{value, base64.StdEncoding.EncodeToString([]byte(value)), hex.EncodeToString([]byte(value))}

	out, err := runIn(t, value+"\n", "secrets", "set", "--server", r.base, "--token", r.admin, r.full, "DEPLOY_TOKEN")
	if err != nil || !strings.Contains(out, "set DEPLOY_TOKEN of "+r.full) {
		t.Fatalf("forge secrets set: %q %v", out, err)
	}
	if out, err := runIn(t, "", "secrets", "ls", "--server", r.base, "--token", r.admin, r.full); err != nil ||
		!strings.Contains(out, "DEPLOY_TOKEN") || strings.Contains(out, value) {
		t.Fatalf("forge secrets ls: %q %v", out, err)
	}

	// A trusted pull request: the value whole, then in two pieces a
	// second apart (two chunks of output), the file gone; then it waits
	// for /tmp/forge-go while the test looks at swarm and the container.
	sha := randSHA(t)
	r.commit(sha, r.config([]string{
		`echo "token=$DEPLOY_TOKEN"`,
		`printf 'split=%s' "${DEPLOY_TOKEN%-*}"; sleep 1; printf -- '-%s\n' "${DEPLOY_TOKEN##*-}"`,
		`test ! -e /.forge/secrets.json && echo "secrets file gone"`,
		`while [ ! -e /tmp/forge-go ]; do sleep 0.1; done`,
	}, "secrets: [DEPLOY_TOKEN]"), "hello\n")
	r.deliver("pull_request", r.prPayload("pull_request.opened.json", 21, sha, "feature"), http.StatusAccepted)
	id := r.running(sha, "secrets file gone")

	ctx := dockertest.Context(t, ghWait)
	streamed := make(chan string, 1)
	go func() { streamed <- r.follow(ctx, id) }()
	b := r.build(id)
	_, raw, err := r.cli.ServiceInspectWithRaw(ctx, b.Service, swarm.ServiceInspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	noSecret(t, "docker service inspect", raw, forms)
	tasks, err := r.cli.TaskList(ctx, swarm.TaskListOptions{Filters: filters.NewArgs(filters.Arg("service", b.Service))})
	if err != nil || len(tasks) == 0 {
		t.Fatalf("tasks: %v %v", tasks, err)
	}
	rawTasks, _ := json.Marshal(tasks)
	noSecret(t, "swarm's task history", rawTasks, forms)
	_, raw, err = r.cli.ContainerInspectWithRaw(ctx, b.ContainerID, false)
	if err != nil {
		t.Fatal(err)
	}
	noSecret(t, "docker inspect of the container", raw, forms)
	var release bytes.Buffer
	tw := tar.NewWriter(&release)
	tw.WriteHeader(&tar.Header{Name: "forge-go", Mode: 0o644, Typeflag: tar.TypeReg})
	tw.Close()
	if err := r.cli.CopyToContainer(ctx, b.ContainerID, "/tmp", &release, container.CopyToContainerOptions{}); err != nil {
		t.Fatal(err)
	}

	last, fid := r.final(sha, "forge/execute")
	if last.State != "success" || fid != id {
		t.Fatalf("final status %+v of %s", last, fid)
	}
	stored := r.log(id, "token=***\n", "split=***\n", "secrets file gone")
	t.Logf("the build's log:\n%s", stored)
	noSecret(t, "the stored log", []byte(stored), forms)
	var live string
	select {
	case live = <-streamed:
	case <-ctx.Done():
		t.Fatal("the followed log did not end with the build")
	}
	if !strings.Contains(live, "token=***\n") || !strings.Contains(live, "split=***\n") {
		t.Errorf("streamed log:\n%s", live)
	}
	noSecret(t, "the streamed log", []byte(live), forms)
	r.noSecretInData(forms)

	// A fork's pull request, approved: it runs without the secret, and
	// its log says so.
	fork := randSHA(t)
	r.commit(fork, r.config([]string{`echo "token=[$DEPLOY_TOKEN]"`, `test ! -e /.forge/secrets.json`}, "secrets: [DEPLOY_TOKEN]"), "from a fork\n")
	r.deliver("pull_request", r.forkPayload("pull_request.opened.json", 22, fork), http.StatusAccepted)
	forkID := r.awaiting(fork)
	if _, err := r.approve(forkID); err != nil {
		t.Fatal(err)
	}
	if last, _ := r.final(fork, "forge/execute"); last.State != "success" {
		t.Fatalf("approved fork build: %+v", last)
	}
	r.log(forkID, "forge: secrets withheld from this untrusted build", ": DEPLOY_TOKEN\n", "token=[]\n")

	// A secret named but not set: error, naming it, nothing in swarm.
	unset := randSHA(t)
	r.commit(unset, r.config([]string{"true"}, "secrets: [DEPLOY_TOKEN, NOT_SET_HERE]"), "x\n")
	r.deliver("pull_request", r.prPayload("pull_request.opened.json", 23, unset, "other"), http.StatusAccepted)
	last, uid := r.final(unset, "forge/execute")
	if ub := r.build(uid); last.State != "error" || !strings.Contains(last.Description, "NOT_SET_HERE") ||
		ub.Service != "" || ub.NodeID != "" || !strings.Contains(ub.Reason, "secret NOT_SET_HERE is not set for "+r.full) {
		t.Errorf("a build naming a secret that is not set: status %+v, build %+v", last, ub)
	}
	r.noSecretInData(forms)
	r.done()
}

// follow reads the build's log as it is streamed (?follow=1), until the
// build ends.
func (r *ghRig) follow(ctx context.Context, id string) string {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.base+"/api/builds/"+id+"/log?follow=1", nil)
	if err != nil {
		return err.Error()
	}
	req.Header.Set("Authorization", "Bearer "+r.admin)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// noSecretInData checks every file of the coordinator's --data: the
// database, its WAL and shared memory, the logs.
func (r *ghRig) noSecretInData(forms []string) {
	r.t.Helper()
	n := 0
	err := filepath.WalkDir(r.data, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		raw, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		n++
		noSecret(r.t, path, raw, forms)
		return nil
	})
	if err != nil || n == 0 {
		r.t.Fatalf("read %s: %d files, %v", r.data, n, err)
	}
	if _, err := os.Stat(filepath.Join(r.data, "forge.db")); err != nil {
		r.t.Fatalf("no database in %s: %v", r.data, err)
	}
}

func noSecret(t *testing.T, what string, raw []byte, forms []string) {
	t.Helper()
	for _, f := range forms {
		if bytes.Contains(raw, []byte(f)) {
			t.Errorf("%s holds the secret (as %q)", what, f)
		}
	}
}
