package local

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/docker/docker/client"
)

// TestRunNeedsSwarm: against an engine that is not in swarm mode, forge
// run says how to turn it on. The engine is an httptest server answering
// the few Engine API calls made before that point, reached by a real
// Docker client.
func TestRunNeedsSwarm(t *testing.T) {
	engine := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Api-Version", "1.41")
		switch {
		case r.URL.Path == "/_ping":
			w.Write([]byte("OK"))
		case strings.HasSuffix(r.URL.Path, "/info"):
			w.Header().Set("Content-Type", "application/json")
			w.Write([]byte(`{"Name":"box","ServerVersion":"20.10.24","Swarm":{"LocalNodeState":"inactive","ControlAvailable":false}}`))
		default:
			http.Error(w, "not in this test", http.StatusNotImplemented)
		}
	}))
	defer engine.Close()
	cli, err := client.NewClientWithOpts(client.WithHost("tcp://"+strings.TrimPrefix(engine.URL, "http://")), client.WithAPIVersionNegotiation())
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, ".forge.yml"), []byte("image: x\nexecute: [echo hi]\n"), 0o644)
	var out bytes.Buffer
	code, err := Run(context.Background(), Options{Dir: dir, Docker: cli, Executor: []byte("exe"), Stdout: &out, Stderr: &out})
	if code != 1 || err == nil || !strings.Contains(err.Error(), "docker swarm init") {
		t.Fatalf("code %d, err %v; want 1 and how to enable swarm mode", code, err)
	}
}

func TestRunUnknownAction(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, ".forge.yml"), []byte("image: x\nexecute: [echo hi]\ndeploy: [echo d]\n"), 0o644)
	_, err := Run(context.Background(), Options{Dir: dir, Action: "release"})
	if err == nil || !strings.Contains(err.Error(), "--action release") || !strings.Contains(err.Error(), "deploy, execute") {
		t.Fatalf("err %v", err)
	}
}

// forge run refuses an action that needs secrets, naming them: only a
// coordinator has them. Another action runs on.
func TestRunNeedsSecrets(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, ".forge.yml"), []byte("image: x\nexecute: [echo hi]\ndeploy: [echo d]\nsecrets: {deploy: [DEPLOY_TOKEN]}\n"), 0o644)
	_, err := Run(context.Background(), Options{Dir: dir, Action: "deploy"})
	if err == nil || !strings.Contains(err.Error(), "action deploy needs secrets (DEPLOY_TOKEN)") || !strings.Contains(err.Error(), "forge secrets set") {
		t.Fatalf("err %v", err)
	}
}

func TestPackSource(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, ".git", "objects"), 0o755)
	os.WriteFile(filepath.Join(dir, ".git", "HEAD"), []byte("ref"), 0o644)
	os.MkdirAll(filepath.Join(dir, "src"), 0o755)
	os.WriteFile(filepath.Join(dir, "src", "a.go"), []byte("package a"), 0o644)
	os.Symlink("src/a.go", filepath.Join(dir, "link"))
	s, err := packSource(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.remove()
	rc, size, err := s.open(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	names := tarNames(t, rc)
	if got := strings.Join(names, ","); got != "link,src/,src/a.go" {
		t.Errorf("entries %s (size %d)", got, size)
	}
	again, err := packSource(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer again.remove()
	if again.sha != s.sha || len(s.sha) != 40 {
		t.Errorf("digest not stable: %s %s", s.sha, again.sha)
	}
}
