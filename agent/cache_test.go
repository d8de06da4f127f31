package agent

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"

	"github.com/forge-ci/forge/internal/dockertest"
	"github.com/forge-ci/forge/internal/fakedocker"
	"github.com/forge-ci/forge/wire"
)

// entry is one tar entry a test writes: any header, and a body for files.
type entry struct {
	h    tar.Header
	body string
}

func tarOfEntries(t testing.TB, es []entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range es {
		h := e.h
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		io.WriteString(tw, e.body)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// names lists a tar's entry names in order, with each file's body.
func entriesOf(t *testing.T, b []byte) ([]string, map[string]*tar.Header, map[string]string) {
	t.Helper()
	var order []string
	hdrs, bodies := map[string]*tar.Header{}, map[string]string{}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return order, hdrs, bodies
		}
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(tr)
		order, hdrs[h.Name], bodies[h.Name] = append(order, h.Name), h, string(body)
	}
}

var testCachePaths = []string{"/root/.cache/go-build", "/forge/src/node_modules"}

// TestWriteArchiveCache: the cache's entries go into the archive after the
// spec and before the source (a source file wins over a cached one of the
// same name), with plain headers (no set-id bits, no extended
// attributes); whatever follows the cache's tar end is read, so the
// source is read from where it starts.
func TestWriteArchiveCache(t *testing.T) {
	cache := tarOfEntries(t, []entry{
		{h: tar.Header{Name: "root/.cache/go-build/", Typeflag: tar.TypeDir, Mode: 0o755}},
		{h: tar.Header{Name: "root/.cache/go-build/ab-d", Typeflag: tar.TypeReg, Mode: 0o4755, Uid: 1000,
			PAXRecords: map[string]string{"SCHILY.xattr.security.capability": "\x01"}}, body: "compiled"},
		{h: tar.Header{Name: "forge/src/node_modules/x", Typeflag: tar.TypeReg}, body: "old x"},
	})
	cache = append(cache, make([]byte, 10240)...) // a record's padding, as some writers add
	src := tarOf(t, []dockertest.File{{Name: "node_modules/x", Body: []byte("new x")}, {Name: "main.go", Body: []byte("package main")}})
	cr := &io.LimitedReader{R: bytes.NewReader(append(slices.Clone(cache), src...)), N: int64(len(cache))}
	var out bytes.Buffer
	err := WriteArchive(&out, Payload{Executor: strings.NewReader("exe"), ExecutorSize: 3, Spec: []byte("{}"), Workdir: "/forge/src",
		Cache: cr, CachePaths: testCachePaths, Source: io.MultiReader(cr.R)})
	if err != nil {
		t.Fatal(err)
	}
	if cr.N != 0 {
		t.Errorf("%d bytes of the cache left unread", cr.N)
	}
	order, hdrs, bodies := entriesOf(t, out.Bytes())
	at := func(n string) int { return slices.Index(order, n) }
	if at(".forge/build.json") > at("root/.cache/go-build/ab-d") || at("forge/src/node_modules/x") < at("root/.cache/go-build/ab-d") {
		t.Errorf("order %q: want spec, cache, source", order)
	}
	if n := strings.Count(strings.Join(order, "\n"), "forge/src/node_modules/x"); n != 2 || order[len(order)-2] != "forge/src/node_modules/x" || bodies["forge/src/node_modules/x"] != "new x" {
		t.Errorf("the source's node_modules/x should come last and win: %q, body %q", order, bodies["forge/src/node_modules/x"])
	}
	h := hdrs["root/.cache/go-build/ab-d"]
	if h == nil || h.Mode != 0o755 || h.Uid != 1000 || len(h.PAXRecords) != 0 || bodies[h.Name] != "compiled" {
		t.Errorf("cached file: %+v, body %q; want mode 0755, uid 1000, no xattrs", h, bodies["root/.cache/go-build/ab-d"])
	}
}

// TestWriteArchiveCacheRefusesUnsafe: a cache tar with an entry outside
// the cache's paths, climbing out, or a link leaving fails the archive
// with wire.ErrUnsafeEntry, which the launch answers bad_request.
func TestWriteArchiveCacheRefusesUnsafe(t *testing.T) {
	for _, e := range []entry{
		{h: tar.Header{Name: "etc/passwd", Typeflag: tar.TypeReg}, body: "root::0:0"},
		{h: tar.Header{Name: "root/.cache/go-build/../../../etc/passwd", Typeflag: tar.TypeReg}, body: "x"},
		{h: tar.Header{Name: "/root/.cache/go-build/x", Typeflag: tar.TypeReg}, body: "x"},
		{h: tar.Header{Name: "root/.cache/go-build/s", Typeflag: tar.TypeSymlink, Linkname: "/etc"}},
		{h: tar.Header{Name: "root/.cache/go-build/d", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3}},
	} {
		cache := tarOfEntries(t, []entry{e})
		err := WriteArchive(io.Discard, Payload{Executor: strings.NewReader("exe"), ExecutorSize: 3, Spec: []byte("{}"),
			Workdir: "/forge/src", Cache: bytes.NewReader(cache), CachePaths: testCachePaths})
		if !errors.Is(err, wire.ErrUnsafeEntry) || refusal(err).Code != wire.RefusedBadRequest {
			t.Errorf("%s: %v, want ErrUnsafeEntry (bad_request)", e.h.Name, err)
		}
	}
}

// containerFiles fakes GET /containers/{id}/archive: each path's tar as
// the engine writes it (entries named after the path's last element).
func containerFiles(archives map[string][]byte, links map[string]string) func(ctx context.Context, id, p string) (io.ReadCloser, container.PathStat, error) {
	return func(ctx context.Context, id, p string) (io.ReadCloser, container.PathStat, error) {
		if target, ok := links[p]; ok {
			return io.NopCloser(strings.NewReader("")), container.PathStat{Name: p, Mode: os.ModeSymlink | 0o777, LinkTarget: target}, nil
		}
		b, ok := archives[p]
		if !ok {
			return nil, container.PathStat{}, errdefs.ErrNotFound.WithMessage("Could not find the file " + p + " in container " + id)
		}
		return io.NopCloser(bytes.NewReader(b)), container.PathStat{Name: p, Mode: os.ModeDir | 0o755}, nil
	}
}

// TestCollectCache: the agent reads each cache path out of the container
// and keeps files, folders and links that stay inside; a symbolic link to
// /etc/shadow, a hard link out, a device, a FIFO and a climbing name are
// left out with a note that counts them; a path that is missing, or is a
// link itself, gets a note and is no failure.
func TestCollectCache(t *testing.T) {
	gobuild := tarOfEntries(t, []entry{
		{h: tar.Header{Name: "go-build/", Typeflag: tar.TypeDir, Mode: 0o755}},
		{h: tar.Header{Name: "go-build/ab/", Typeflag: tar.TypeDir, Mode: 0o755}},
		{h: tar.Header{Name: "go-build/ab/cd-d", Typeflag: tar.TypeReg, Mode: 0o6755}, body: "object"},
		{h: tar.Header{Name: "go-build/ab/same", Typeflag: tar.TypeLink, Linkname: "go-build/ab/cd-d"}},
		{h: tar.Header{Name: "go-build/latest", Typeflag: tar.TypeSymlink, Linkname: "ab/cd-d"}},
		{h: tar.Header{Name: "go-build/shadow", Typeflag: tar.TypeSymlink, Linkname: "/etc/shadow"}},
		{h: tar.Header{Name: "go-build/up", Typeflag: tar.TypeSymlink, Linkname: "../../.ssh/id_rsa"}},
		{h: tar.Header{Name: "go-build/passwd", Typeflag: tar.TypeLink, Linkname: "etc/passwd"}},
		{h: tar.Header{Name: "go-build/null", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3}},
		{h: tar.Header{Name: "go-build/fifo", Typeflag: tar.TypeFifo}},
		{h: tar.Header{Name: "go-build/../../escape", Typeflag: tar.TypeReg}, body: "x"},
	})
	d := &fakedocker.Docker{CopyFromContainerFn: containerFiles(
		map[string][]byte{"/root/.cache/go-build": gobuild},
		map[string]string{"/root/.npm": "/etc"})}
	paths := []string{"/root/.cache/go-build", "/forge/src/node_modules", "/root/.npm"}
	var out bytes.Buffer
	size, notes, err := collectCache(context.Background(), d, "c1", paths, 1<<20, &out)
	if err != nil {
		t.Fatal(err)
	}
	if size != int64(out.Len()) {
		t.Errorf("size %d, wrote %d", size, out.Len())
	}
	order, hdrs, bodies := entriesOf(t, out.Bytes())
	want := []string{"root/.cache/go-build/", "root/.cache/go-build/ab/", "root/.cache/go-build/ab/cd-d",
		"root/.cache/go-build/ab/same", "root/.cache/go-build/latest"}
	if !slices.Equal(order, want) {
		t.Errorf("entries %q, want %q", order, want)
	}
	if h := hdrs["root/.cache/go-build/ab/cd-d"]; h == nil || h.Mode != 0o755 || bodies[h.Name] != "object" {
		t.Errorf("file %+v", h)
	}
	if h := hdrs["root/.cache/go-build/ab/same"]; h == nil || h.Linkname != "root/.cache/go-build/ab/cd-d" {
		t.Errorf("hard link %+v", h)
	}
	for _, h := range hdrs {
		if _, err := wire.CheckCacheEntry(paths, h); err != nil {
			t.Errorf("kept an entry the coordinator refuses: %v", err)
		}
	}
	all := strings.Join(notes, "\n")
	for _, want := range []string{
		"/forge/src/node_modules does not exist in the container; not saved",
		"/root/.npm is a symbolic link (to /etc); not saved",
		"/root/.cache/go-build: 6 entries left out (devices, FIFOs and sockets: 2, entries with unsafe names: 1, links that leave /root/.cache/go-build: 3)",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("notes %q: want %q", notes, want)
		}
	}
}

// TestCollectCacheOverBound: a cache over the bound is not sent, and the
// error says the bound.
func TestCollectCacheOverBound(t *testing.T) {
	big := tarOfEntries(t, []entry{{h: tar.Header{Name: "go-build/big", Typeflag: tar.TypeReg}, body: strings.Repeat("x", 64<<10)}})
	d := &fakedocker.Docker{CopyFromContainerFn: containerFiles(map[string][]byte{"/root/.cache/go-build": big}, nil)}
	_, _, err := collectCache(context.Background(), d, "c1", []string{"/root/.cache/go-build"}, 32<<10, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "over the bound of 32KiB (--cache-size)") {
		t.Errorf("got %v, want an error naming the 32 KiB bound", err)
	}
	// The engine failing is an error too, not a note.
	d.CopyFromContainerFn = func(context.Context, string, string) (io.ReadCloser, container.PathStat, error) {
		return nil, container.PathStat{}, errors.New("engine down")
	}
	if _, _, err := collectCache(context.Background(), d, "c1", []string{"/root/.cache/go-build"}, 32<<10, io.Discard); err == nil || !strings.Contains(err.Error(), "engine down") {
		t.Errorf("engine error: %v", err)
	}
}

// TestLaunchWithCache: a Launch with a cache part puts the cache's tar
// into the container before the source; once the container exits with
// code 0 the agent sends the cache paths back on a cache stream, before
// the build's exit, with its notes. A build that fails sends nothing, and
// nor does one whose Launch did not ask.
func TestLaunchWithCache(t *testing.T) {
	node := fakedocker.NewNode("n1")
	docker := node.Docker()
	saved := tarOfEntries(t, []entry{
		{h: tar.Header{Name: "go-build/", Typeflag: tar.TypeDir, Mode: 0o755}},
		{h: tar.Header{Name: "go-build/new", Typeflag: tar.TypeReg}, body: "fresh object"},
	})
	var mu sync.Mutex
	var asked []string
	files := containerFiles(map[string][]byte{"/root/.cache/go-build": saved}, nil)
	docker.CopyFromContainerFn = func(ctx context.Context, id, p string) (io.ReadCloser, container.PathStat, error) {
		mu.Lock()
		asked = append(asked, id+":"+p)
		mu.Unlock()
		return files(ctx, id, p)
	}
	c, cs, _ := start(t, docker)
	restore := tarOfEntries(t, []entry{{h: tar.Header{Name: "root/.cache/go-build/old", Typeflag: tar.TypeReg}, body: "old object"}})
	paths := []string{"/root/.cache/go-build", "/forge/src/node_modules"}

	cid := node.Create("b1")
	cache := &wire.LaunchCache{Paths: paths, Size: int64(len(restore)), Save: true, MaxBytes: 1 << 20}
	if _, _, err := cs.launchCache(t, "b1", cid, tarOf(t, []dockertest.File{{Name: "go.mod", Body: []byte("module x")}}), cache, restore); err != nil {
		t.Fatal(err)
	}
	ctr, _ := node.Container(cid)
	got, err := fakedocker.Files(ctr.Archives[0])
	if err != nil || string(got["root/.cache/go-build/old"]) != "old object" || string(got["forge/src/go.mod"]) != "module x" {
		t.Fatalf("archive: cache %q, source %q, %v", got["root/.cache/go-build/old"], got["forge/src/go.mod"], err)
	}
	node.Exit(cid, 0)
	b := c.waitExit(t, "b1")
	if len(b.caches) != 1 || b.caches[0].exitsBefore != 0 {
		t.Fatalf("caches %+v: want one, before the exit", b.caches)
	}
	s := b.caches[0]
	order, _, bodies := entriesOf(t, s.tar)
	if s.save.ContainerID != cid || s.save.Size != int64(len(s.tar)) || !slices.Equal(order, []string{"root/.cache/go-build/", "root/.cache/go-build/new"}) || bodies["root/.cache/go-build/new"] != "fresh object" {
		t.Errorf("cache save %+v: entries %q", s.save, order)
	}
	if !slices.Equal(s.save.Notes, []string{"cache: /forge/src/node_modules does not exist in the container; not saved"}) {
		t.Errorf("notes %q", s.save.Notes)
	}
	mu.Lock()
	if !slices.Equal(asked, []string{cid + ":/root/.cache/go-build", cid + ":/forge/src/node_modules"}) {
		t.Errorf("read out of the container: %q", asked)
	}
	mu.Unlock()

	// A failed build saves nothing; a launch without save neither.
	cid2 := node.Create("b2")
	if _, _, err := cs.launchCache(t, "b2", cid2, nil, &wire.LaunchCache{Paths: paths, Save: true, MaxBytes: 1 << 20}, nil); err != nil {
		t.Fatal(err)
	}
	node.Exit(cid2, 1)
	cid3 := node.Create("b3")
	if _, _, err := cs.launchCache(t, "b3", cid3, nil, &wire.LaunchCache{Paths: paths, Size: int64(len(restore))}, restore); err != nil {
		t.Fatal(err)
	}
	node.Exit(cid3, 0)
	for _, id := range []string{"b2", "b3"} {
		if b := c.waitExit(t, id); len(b.caches) != 0 {
			t.Errorf("%s sent a cache: %+v", id, b.caches)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(asked) != 2 {
		t.Errorf("containers read after builds that save nothing: %q", asked)
	}
}

// TestLaunchCacheRefused: a cache tar with an entry outside the cache's
// paths fails the launch bad_request, and the container is not started.
func TestLaunchCacheRefused(t *testing.T) {
	node := fakedocker.NewNode("n1")
	_, cs, _ := start(t, node.Docker())
	bad := tarOfEntries(t, []entry{{h: tar.Header{Name: "etc/cron.d/x", Typeflag: tar.TypeReg}, body: "* * * * * root sh"}})
	cid := node.Create("b1")
	_, _, err := cs.launchCache(t, "b1", cid, []byte("source after the cache"), &wire.LaunchCache{Paths: []string{"/root/.m2"}, Size: int64(len(bad))}, bad)
	if code := refusedCode(err); code != wire.RefusedBadRequest {
		t.Fatalf("launch: %v, want refused %s", err, wire.RefusedBadRequest)
	}
	if ctr, _ := node.Container(cid); ctr.Status == fakedocker.StatusRunning || slices.Contains(ctr.Calls, fakedocker.CallStart) {
		t.Errorf("container %s: %s after %v", cid, ctr.Status, ctr.Calls)
	}
}

// TestRestartedAgentSavesCache: an agent restarted while a build runs has
// forgotten the launch's save; the coordinator's attached repeats it, and
// the new agent sends the cache before the exit. Without it in attached
// (a build whose save is no longer awaited), nothing is sent.
func TestRestartedAgentSavesCache(t *testing.T) {
	node := fakedocker.NewNode("n1")
	docker := node.Docker()
	saved := tarOfEntries(t, []entry{{h: tar.Header{Name: "go-build/obj", Typeflag: tar.TypeReg}, body: "kept across the restart"}})
	docker.CopyFromContainerFn = containerFiles(map[string][]byte{"/root/.cache/go-build": saved}, nil)
	c, cs, r := start(t, docker)
	paths := []string{"/root/.cache/go-build"}
	cids := map[string]string{}
	for _, id := range []string{"b1", "b2"} {
		cids[id] = node.Create(id)
		if _, _, err := cs.launchCache(t, id, cids[id], nil, &wire.LaunchCache{Paths: paths, Save: true, MaxBytes: 1 << 20}, nil); err != nil {
			t.Fatal(err)
		}
	}
	c.wait(t, "both builds attached", func() bool { return c.build("b1").attaches == 1 && c.build("b2").attaches == 1 })
	r.stop()

	c.answerAttach(func(at *wire.Attach, b *coordBuild) wire.Message {
		if at.BuildID != "b1" {
			return nil
		}
		return &wire.Attached{NextSeq: b.nextSeq, Cache: &wire.LaunchCache{Paths: paths, Save: true, MaxBytes: 1 << 20}}
	})
	runAgent(t, c, docker)
	c.wait(t, "both builds attached again", func() bool { return c.build("b1").attaches == 2 && c.build("b2").attaches == 2 })
	for _, id := range []string{"b1", "b2"} {
		node.Exit(cids[id], 0)
	}
	b1, b2 := c.waitExit(t, "b1"), c.waitExit(t, "b2")
	if len(b1.caches) != 1 || b1.caches[0].exitsBefore != 0 || b1.caches[0].save.ContainerID != cids["b1"] {
		t.Fatalf("b1's caches after the restart %+v: want one, before the exit", b1.caches)
	}
	if _, _, bodies := entriesOf(t, b1.caches[0].tar); bodies["root/.cache/go-build/obj"] != "kept across the restart" {
		t.Errorf("b1's cache: %q", bodies)
	}
	if len(b2.caches) != 0 {
		t.Errorf("b2, whose attached did not ask, sent a cache: %+v", b2.caches)
	}
}
