package agent

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/forge-ci/forge/internal/fakedocker"
	"github.com/forge-ci/forge/internal/testwait"
	"github.com/forge-ci/forge/wire"
	"github.com/forge-ci/forge/wire/wiretest"
)

// artifacts asks for artifacts (§6.5) and returns the header and the tar.
func (cs *coordSession) artifacts(req *wire.ArtifactsRequest) (*wire.ArtifactsHeader, []byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), wiretest.Timeout)
	defer cancel()
	st, err := cs.ws.Open(ctx)
	if err != nil {
		return nil, nil, err
	}
	defer st.Close()
	c := wire.NewCodec(st)
	if err := c.Send(req); err != nil {
		return nil, nil, err
	}
	h, err := wire.Expect[*wire.ArtifactsHeader](c)
	if err != nil {
		return nil, nil, err
	}
	var tar bytes.Buffer
	if err := c.RecvBlob(&tar, h.Size); err != nil {
		return h, nil, err
	}
	return h, tar.Bytes(), nil
}

// TestArtifacts: the agent serves the artifacts of a build's stopped
// container, with its notes, over the session, and leaves no temporary
// file; it refuses a running container, a container that never ran,
// another build's and one without forge labels, and reads nothing of
// them.
func TestArtifacts(t *testing.T) {
	node := fakedocker.NewNode("n1")
	docker := node.Docker()
	fs := buildFS()
	docker.ContainerStatPathFn, docker.CopyFromContainerFn = fs.ContainerStatPath, fs.CopyFromContainer
	tmp := t.TempDir()
	c := startCoord(t)
	runAgentWith(t, c, docker, func(cfg *Config) {
		cfg.TLS, cfg.TempDir = c.pki.MustAgentTLS(t, nodeOf(t, docker)), tmp
	})
	cs := c.next(t)
	cid := node.Create("b1")
	if _, _, err := cs.launch(t, "b1", cid, nil); err != nil {
		t.Fatal(err)
	}
	req := func(build, container string) *wire.ArtifactsRequest {
		return &wire.ArtifactsRequest{BuildID: build, ContainerID: container, Workdir: "/forge/src",
			Paths: []string{"report.xml", "leak", "nothing/*"}, MaxBytes: 1 << 20}
	}
	if _, _, err := cs.artifacts(req("b1", cid)); refusedCode(err) != wire.RefusedForbidden {
		t.Errorf("running container: %v, want refused %s", err, wire.RefusedForbidden)
	}
	fresh := node.Create("b2")
	plain := node.Create("")
	for _, tc := range []struct{ name, build, container, code string }{
		{"never ran", "b2", fresh, wire.RefusedForbidden},
		{"other build", "b2", cid, wire.RefusedForbidden},
		{"not forge", "b1", plain, wire.RefusedForbidden},
		{"missing", "b1", "c-missing", wire.RefusedNotFound},
	} {
		if _, _, err := cs.artifacts(req(tc.build, tc.container)); refusedCode(err) != tc.code {
			t.Errorf("%s: %v, want refused %s", tc.name, err, tc.code)
		}
	}
	if len(fs.gets) != 0 {
		t.Fatalf("refused requests read %q", fs.gets)
	}

	node.Exit(cid, 3)
	c.waitExit(t, "b1")
	h, tarball, err := cs.artifacts(req("b1", cid))
	if err != nil {
		t.Fatal(err)
	}
	hdrs, bodies := untar(t, tarball)
	if names(hdrs) != "[report.xml]" || string(bodies["report.xml"]) != "<report/>\n" || h.Size != int64(len(tarball)) {
		t.Errorf("artifacts %s (header size %d, %d bytes)", names(hdrs), h.Size, len(tarball))
	}
	if !noted(PathsResult{Notes: h.Notes}, "leak", "/etc/shadow") || !noted(PathsResult{Notes: h.Notes}, "nothing/* matches nothing") {
		t.Errorf("notes %q", h.Notes)
	}
	// The agent removes its file once the last byte is sent.
	for deadline := time.Now().Add(wiretest.Timeout); ; testwait.Pause(t, 10*time.Millisecond) {
		left, _ := filepath.Glob(filepath.Join(tmp, "*"))
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("temporary files left: %q", left)
		}
	}
}
