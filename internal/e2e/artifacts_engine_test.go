package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/artifacts/artifactstest"
	"github.com/forge-ci/forge/coordinator/config"
	"github.com/forge-ci/forge/coordinator/daemon"
	"github.com/forge-ci/forge/coordinator/web"
	"github.com/forge-ci/forge/internal/dockertest"
)

// The build of TestArtifactsEndToEnd: it writes files, a link to
// /etc/shadow (which it fills with a secret of its own) and one to /etc, a
// FIFO and a file far past the bound; blob.bin comes with the source.
const artifactsYML = `image: %s
execute:
  - mkdir -p out big /etc && echo root:SECRET-SHADOW > /etc/shadow
  - echo alpha > out/a.txt && echo bravo > out/b.txt && echo not a txt > out/c.log
  - busybox ln -s /etc/shadow leak && busybox ln -s /etc etcdir && busybox mkfifo fifo && echo after > after.txt
  - yes | head -c 8388608 > big/huge.bin
  - exit %d
artifacts:
  - 'out/*.txt'
  - blob.bin
  - leak
  - 'nothing/*.zip'
  - etcdir/shadow
  - fifo
  - big
  - after.txt
`

// TestArtifactsEndToEnd: on the engine, a build's artifacts travel from
// its stopped container through the agent to the coordinator and download
// byte for byte, one by one and all at once; a link to /etc/shadow yields
// nothing of it, a glob that matches nothing, a FIFO and the file cut at
// --max-artifacts-size are each a line in the log, which a follower sees,
// and the build keeps its result, pass or fail. Whoever may not read the
// build gets 404.
func TestArtifactsEndToEnd(t *testing.T) {
	const maxArtifacts = 4 << 20
	e := newEnv(t)
	data := t.TempDir()
	s := startServerWith(t, e, data, "", func(cfg *daemon.Config) { cfg.Bounds.MaxArtifactsSize = maxArtifacts })
	startAgent(t, e.pki, s.agents, nil, nil)
	id := dockertest.ID(t)
	dockertest.Cleanup(t, e.cli, id)
	blob := make([]byte, 3<<20)
	rand.Read(blob)

	for _, code := range []int{0, 3} {
		yml := strings.Replace(strings.Replace(artifactsYML, "%s", e.image, 1), "%d", map[int]string{0: "0", 3: "3"}[code], 1)
		b := submitWithSource(t, s, e, yml, id, map[string][]byte{"blob.bin": blob})
		followed := make(chan string, 1)
		go func() {
			resp := admin(t, "GET", s.http+"/api/builds/"+b.ID+"/log?follow=1")
			defer resp.Body.Close()
			out, _ := io.ReadAll(resp.Body)
			followed <- string(out)
		}()
		final, err := s.srv.Builds.Wait(dockertest.Context(t, 3*time.Minute), b.ID)
		if err != nil {
			t.Fatal(err)
		}
		want := map[int]coordinator.State{0: coordinator.Success, 3: coordinator.Failure}[code]
		if final.State != want {
			t.Fatalf("exit %d: build %s (%s), want %s", code, final.State, final.Reason, want)
		}

		log := buildLog(t, s, b.ID)
		for _, line := range []string{
			"forge: artifacts: leak: skipped: a symbolic link to /etc/shadow, outside the folder; links are not followed\n",
			"forge: artifacts: nothing/*.zip matches nothing\n",
			"forge: artifacts: fifo: skipped: a FIFO\n",
			"forge: artifacts: etcdir/shadow: skipped: /forge/src/etcdir is a symbolic link (to /etc); links are not followed\n",
			"forge: artifacts: big/huge.bin: cut at ",
			"forge: artifacts: after.txt: not looked for: the size bound (4MiB) is reached\n",
			"forge: artifacts: 4 files (",
			") stored, up to --max-artifacts-size 4MiB\n",
		} {
			if !strings.Contains(log, line) {
				t.Errorf("exit %d: the log lacks %q:\n%s", code, line, log)
			}
		}
		select {
		case f := <-followed:
			if !strings.HasSuffix(f, "stored, up to --max-artifacts-size 4MiB\n") {
				t.Errorf("exit %d: a follower of the log saw it end with %q", code, f[max(len(f)-200, 0):])
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("exit %d: the follower of the log did not end", code)
		}

		var list []web.ArtifactView
		if status := getJSON(t, s.http+"/api/builds/"+b.ID+"/artifacts", &list); status != 200 {
			t.Fatalf("list: %d", status)
		}
		got := map[string]web.ArtifactView{}
		for _, a := range list {
			got[a.Path] = a
		}
		if len(list) != 4 || got["blob.bin"].Size != 3<<20 || got["out/a.txt"].Size != 6 || got["big/huge.bin"].OriginalSize != 8<<20 {
			t.Fatalf("exit %d: listed %+v", code, list)
		}
		for name, body := range map[string][]byte{"blob.bin": blob, "out/a.txt": []byte("alpha\n"), "out/b.txt": []byte("bravo\n")} {
			if got := download(t, s, b.ID, name); !bytes.Equal(got, body) {
				t.Errorf("exit %d: %s: %d bytes differ from the build's %d", code, name, len(got), len(body))
			}
		}
		huge := download(t, s, b.ID, "big/huge.bin")
		if int64(len(huge)) != got["big/huge.bin"].Size || len(huge) < 512<<10 || !bytes.Equal(huge, bytes.Repeat([]byte("y\n"), len(huge)/2+1)[:len(huge)]) {
			t.Errorf("exit %d: the cut file: %d bytes, listed %d", code, len(huge), got["big/huge.bin"].Size)
		}
		resp := admin(t, "GET", s.http+"/api/builds/"+b.ID+"/artifacts/leak")
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("exit %d: GET of the link to /etc/shadow: %d", code, resp.StatusCode)
		}
		all := tarGz(t, s, b.ID)
		if len(all) != 4 || all["blob.bin"] != string(blob) || all["big/huge.bin"] != string(huge) {
			t.Errorf("exit %d: the tar.gz holds %d entries", code, len(all))
		}
		// Nothing of the secret anywhere the coordinator keeps or serves.
		filepath.Walk(filepath.Join(data, "artifacts"), func(p string, fi os.FileInfo, err error) error {
			if err == nil && fi.Mode()&os.ModeSymlink != 0 {
				t.Errorf("a link on the coordinator's disk: %s", p)
			}
			if err == nil && fi.Mode().IsRegular() {
				if raw, _ := os.ReadFile(p); bytes.Contains(raw, []byte("SECRET-SHADOW")) {
					t.Errorf("%s holds the container's /etc/shadow", p)
				}
			}
			return nil
		})

		// The build is private: without a credential, it does not exist.
		for _, path := range []string{"/artifacts", "/artifacts/blob.bin", "/artifacts.tar.gz"} {
			resp, err := http.Get(s.http + "/api/builds/" + b.ID + path)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusNotFound || bytes.Contains(body, blob[:64]) {
				t.Errorf("%s without a credential: %d", path, resp.StatusCode)
			}
		}
	}
}

// submitWithSource submits yml for acme/widgets with files as its source.
func submitWithSource(t *testing.T, s *server, e *env, yml, testID string, files map[string][]byte) *coordinator.Build {
	t.Helper()
	cfg, err := config.Parse(".forge.yml", []byte(yml))
	if err != nil {
		t.Fatal(err)
	}
	var src bytes.Buffer
	tw := tar.NewWriter(&src)
	for name, body := range files {
		tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(body))})
		tw.Write(body)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := s.srv.Builds.Submit(dockertest.Context(t, 30*time.Second), coordinator.Request{
		Subject: coordinator.Subject{Owner: "acme", Repo: "widgets", Branch: "main", SHA: "0123456789abcdef0123456789abcdef01234567", Action: "execute", Trigger: "api"},
		Config:  cfg, ConfigText: yml, Node: e.node, Labels: map[string]string{dockertest.LabelTest: testID},
		Source: func(context.Context) (io.ReadCloser, int64, error) {
			return io.NopCloser(bytes.NewReader(src.Bytes())), int64(src.Len()), nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func download(t *testing.T, s *server, id, name string) []byte {
	t.Helper()
	resp := admin(t, "GET", s.http+"/api/builds/"+id+"/artifacts/"+name)
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/octet-stream" {
		t.Errorf("GET %s: %d %s", name, resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	return body
}

func tarGz(t *testing.T, s *server, id string) map[string]string {
	t.Helper()
	resp := admin(t, "GET", s.http+"/api/builds/"+id+"/artifacts.tar.gz")
	defer resp.Body.Close()
	return artifactstest.Unpack(t, resp.Body)
}

// TestArtifactsAfterRestart: a build that ends while its coordinator is
// away has its artifacts collected by the next coordinator on the same
// data, from the node the record says it was launched on.
func TestArtifactsAfterRestart(t *testing.T) {
	e := newEnv(t)
	data := t.TempDir()
	s1 := startServer(t, e, data, "")
	startAgent(t, e.pki, s1.agents, nil, nil)
	id := dockertest.ID(t)
	dockertest.Cleanup(t, e.cli, id)
	yml := "image: " + e.image + "\nexecute: ['sleep 2; echo made after the restart > out.txt']\nartifacts: [out.txt]\n"
	b := s1.submit(t, e, yml, id)
	waitStarted(t, s1, b.ID)
	s1.stop()

	s2 := startServer(t, e, data, s1.agents)
	final, err := s2.srv.Builds.Wait(dockertest.Context(t, 2*time.Minute), b.ID)
	if err != nil {
		t.Fatal(err)
	}
	if final.State != coordinator.Success {
		t.Fatalf("after the restart: %s (%s)", final.State, final.Reason)
	}
	if got := download(t, s2, b.ID, "out.txt"); string(got) != "made after the restart\n" {
		t.Errorf("out.txt: %q", got)
	}
	if log := buildLog(t, s2, b.ID); !strings.Contains(log, "forge: artifacts: 1 file (23B) stored") {
		t.Errorf("log:\n%s", log)
	}
}
