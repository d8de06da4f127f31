package agents

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/caches"
	"github.com/forge-ci/forge/coordinator/config"
	"github.com/forge-ci/forge/coordinator/logs"
	"github.com/forge-ci/forge/coordinator/store"
	"github.com/forge-ci/forge/wire"
	"github.com/forge-ci/forge/wire/wiretest"
)

// TestCacheBoundToNode: a cache is taken only from the agent of the node
// the build was launched on, for its container, while the build runs, and
// only when the build may save one; an archive with an entry outside the
// build's cache paths is refused after its bytes. Each refusal stores
// nothing and writes nothing into the build's log.
func TestCacheBoundToNode(t *testing.T) {
	ctx := context.Background()
	db, err := store.Open(":memory:")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	lg := &logs.Store{Dir: t.TempDir()}
	cs, err := caches.Open(ctx, t.TempDir(), 1<<20, db, lg, nil)
	if err != nil {
		t.Fatal(err)
	}
	builds := map[string]*coordinator.Build{
		"onB":       {ID: "onB", Subject: coordinator.Subject{Owner: "acme", Repo: "w", Branch: "main"}},
		"untrusted": {ID: "untrusted", Subject: coordinator.Subject{Owner: "acme", Repo: "w", PullRequest: 3, BaseBranch: "main", Untrusted: true}},
	}
	cfg, err := config.Parse(".forge.yml", []byte("image: x\nexecute: [y]\ncache: [/root/.m2]\n"))
	if err != nil {
		t.Fatal(err)
	}
	for id, b := range builds {
		b.State, b.NodeID, b.ContainerID, b.Started = coordinator.Running, "nodeB", "c-"+id, time.Now()
		if err := lg.Create(id); err != nil {
			t.Fatal(err)
		}
		if _, err := cs.Prepare(ctx, b, cfg, nil); err != nil {
			t.Fatal(err)
		}
	}
	p := wiretest.MustPKI(t)
	_, addr, out := serveHub(t, Config{TLS: p.ServerTLS(), Logs: lg, Caches: cs,
		Verify: verifyFunc(func(string, net.Addr) error { return nil }),
		Builds: buildsFunc(func(id string) (*coordinator.Build, error) {
			if b := builds[id]; b != nil {
				return b, nil
			}
			return nil, store.ErrNotFound
		})})
	a, _, err := rawAgent(t, p, addr, hello("nodeA"))
	if err != nil {
		t.Fatal(err)
	}
	hb := hello("nodeB")
	hb.Features = []string{wire.FeatureCache}
	bs, _, err := rawAgent(t, p, addr, hb)
	if err != nil {
		t.Fatal(err)
	}
	good := m2Tar(t, "root/.m2/repo/lib.jar")
	send := func(ys *wire.Session, m wire.CacheSave, body []byte) (*wire.CacheSaved, error) {
		st, err := ys.Open(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		st.SetDeadline(time.Now().Add(10 * time.Second))
		c := wire.NewCodec(st)
		m.Size = int64(len(body))
		if err := c.Send(&m); err != nil {
			return nil, err
		}
		if _, err := wire.Expect[*wire.CacheReady](c); err != nil {
			return nil, err
		}
		if err := c.SendBlob(bytes.NewReader(body), m.Size); err != nil {
			return nil, err
		}
		return wire.Expect[*wire.CacheSaved](c)
	}
	noted := func(id string) string {
		var b bytes.Buffer
		lg.Follow(ctx, id, &b, false)
		return b.String()
	}
	for _, tc := range []struct {
		name string
		from *wire.Session
		m    wire.CacheSave
		body []byte
		code string
		text string
	}{
		{"another node's build", a, wire.CacheSave{BuildID: "onB", ContainerID: "c-onB", Notes: []string{"cache: from A"}}, good, wire.RefusedForbidden, "runs on node nodeB, not nodeA"},
		{"its build, another container", bs, wire.CacheSave{BuildID: "onB", ContainerID: "other", Notes: []string{"cache: other"}}, good, wire.RefusedForbidden, "runs in container c-onB, not other"},
		{"an unknown build", bs, wire.CacheSave{BuildID: "ghost", ContainerID: "c"}, good, wire.RefusedNotFound, "unknown build"},
		{"an untrusted build", bs, wire.CacheSave{BuildID: "untrusted", ContainerID: "c-untrusted"}, good, wire.RefusedForbidden, "may not save a cache"},
		{"an entry outside the paths", bs, wire.CacheSave{BuildID: "onB", ContainerID: "c-onB"}, m2Tar(t, "etc/profile.d/x.sh"), wire.RefusedBadRequest, "outside the cache's paths"},
	} {
		_, err := send(tc.from, tc.m, tc.body)
		wantRefused(t, tc.name, err, tc.code, tc.text)
	}
	if es, _ := db.Caches(ctx, "acme", "w"); len(es) != 0 {
		t.Fatalf("stored after refusals: %+v", es)
	}
	if l := noted("onB"); strings.Contains(l, "from A") || strings.Contains(l, "cache: other") {
		t.Errorf("another node's or container's notes reached the build's log: %q", l)
	}

	// Until it is saved, an attach repeats the launch's save (an agent
	// that restarted has forgotten it); an untrusted build's never has one.
	attached := func(id string) *wire.LaunchCache {
		st, err := bs.Open(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		st.SetDeadline(time.Now().Add(10 * time.Second))
		c := wire.NewCodec(st)
		if err := c.Send(&wire.Attach{BuildID: id, ContainerID: "c-" + id}); err != nil {
			t.Fatal(err)
		}
		at, err := wire.Expect[*wire.Attached](c)
		if err != nil {
			t.Fatalf("attach %s: %v", id, err)
		}
		return at.Cache
	}
	if got := attached("onB"); got == nil || !slices.Equal(got.Paths, []string{"/root/.m2"}) || !got.Save || got.Size != 0 || got.MaxBytes != 1<<20 {
		t.Errorf("attached's cache before the save: %+v", got)
	}
	if got := attached("untrusted"); got != nil {
		t.Errorf("an untrusted build's attached asks for a cache: %+v", got)
	}

	saved, err := send(bs, wire.CacheSave{BuildID: "onB", ContainerID: "c-onB", Notes: []string{"cache: /root/.gradle does not exist"}}, good)
	if err != nil {
		t.Fatal(err)
	}
	if got := attached("onB"); got != nil {
		t.Errorf("attached after the save asks for it again: %+v", got)
	}
	es, _ := db.Caches(ctx, "acme", "w")
	if len(es) != 1 || es[0].Digest != saved.Digest || es[0].Scope != "branch/main" || saved.Size != int64(len(good)) {
		t.Fatalf("saved %+v, entries %+v", saved, es)
	}
	if l := noted("onB"); !strings.Contains(l, "forge: cache: /root/.gradle does not exist\n") || !strings.Contains(l, "forge: cache: saved") {
		t.Errorf("build log %q", l)
	}
	// Once the exit is recorded, the build's own agent is refused too.
	if err := lg.Exit(ctx, "onB", &wire.Exit{ExitCode: 0}); err != nil {
		t.Fatal(err)
	}
	_, err = send(bs, wire.CacheSave{BuildID: "onB", ContainerID: "c-onB"}, m2Tar(t, "root/.m2/late"))
	wantRefused(t, "after the exit", err, wire.RefusedForbidden, "is over")
	if es2, _ := db.Caches(ctx, "acme", "w"); len(es2) != 1 || es2[0].Digest != saved.Digest {
		t.Errorf("entries after a late cache: %+v", es2)
	}
	if !strings.Contains(out.String(), "cache refused") {
		t.Errorf("the hub's log has no refusals:\n%s", out.String())
	}
}

func m2Tar(t *testing.T, name string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: 3})
	io.WriteString(tw, "jar")
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}
