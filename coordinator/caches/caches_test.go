package caches

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/config"
	"github.com/forge-ci/forge/coordinator/store"
)

// notes records the lines each build's log got.
type notes struct {
	mu sync.Mutex
	m  map[string][]string
}

func (n *notes) Note(id, line string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.m == nil {
		n.m = map[string][]string{}
	}
	n.m[id] = append(n.m[id], line)
	return nil
}

func (n *notes) of(id string) string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return strings.Join(n.m[id], "\n")
}

type rig struct {
	t     *testing.T
	s     *Store
	db    *store.Store
	dir   string
	notes *notes
	clock time.Time
}

func newRig(t *testing.T, max int64) *rig {
	t.Helper()
	db, err := store.Open(":memory:")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	r := &rig{t: t, db: db, dir: t.TempDir(), notes: &notes{}, clock: time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)}
	r.s = r.open(max)
	return r
}

func (r *rig) open(max int64) *Store {
	r.t.Helper()
	s, err := Open(context.Background(), r.dir, max, r.db, r.notes, nil)
	if err != nil {
		r.t.Fatal(err)
	}
	s.now = func() time.Time { r.clock = r.clock.Add(time.Second); return r.clock }
	return s
}

const goConfig = "image: golang\nexecute: [go test ./...]\ncache:\n  paths: [/root/.cache/go-build]\n"

func cfgOf(t *testing.T, yml string) *config.Config {
	t.Helper()
	cfg, err := config.Parse(".forge.yml", []byte(yml))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// cacheTar is a cache archive of /root/.cache/go-build holding one file.
func cacheTar(t *testing.T, body string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "root/.cache/go-build/", Typeflag: tar.TypeDir, Mode: 0o755})
	tw.WriteHeader(&tar.Header{Name: "root/.cache/go-build/obj", Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(body))})
	io.WriteString(tw, body)
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// build runs a build's cache life: Prepare, then, when it may save and
// saved is not nil, Accept and Store of saved. It returns what Prepare
// restored.
func (r *rig) build(id string, s coordinator.Subject, yml string, src []byte, saved []byte) (restored []byte, cl *coordinator.CacheLaunch) {
	r.t.Helper()
	s.Owner, s.Repo = "acme", "widgets"
	b := &coordinator.Build{ID: id, Subject: s}
	var srcR io.ReadSeeker
	if src != nil {
		srcR = bytes.NewReader(src)
	}
	cl, err := r.s.Prepare(context.Background(), b, cfgOf(r.t, yml), srcR)
	if err != nil {
		r.t.Fatalf("%s: prepare: %v", id, err)
	}
	if cl.Archive != nil {
		restored, _ = io.ReadAll(cl.Archive)
		cl.Archive.Close()
		if int64(len(restored)) != cl.Size {
			r.t.Fatalf("%s: restored %d bytes, announced %d", id, len(restored), cl.Size)
		}
	}
	if cl.Save && saved != nil {
		up, err := r.s.Accept(context.Background(), id, int64(len(saved)), nil)
		if err != nil {
			r.t.Fatalf("%s: accept: %v", id, err)
		}
		if _, err := up.Store(context.Background(), bytes.NewReader(saved)); err != nil {
			r.t.Fatalf("%s: store: %v", id, err)
		}
	}
	r.s.Forget(context.Background(), id)
	return restored, cl
}

// blobs lists the archives on disk, by digest.
func (r *rig) blobs() map[string][]byte {
	r.t.Helper()
	out := map[string][]byte{}
	files, err := os.ReadDir(filepath.Join(r.dir, "sha256"))
	if err != nil {
		r.t.Fatal(err)
	}
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(r.dir, "sha256", f.Name()))
		if err != nil {
			r.t.Fatal(err)
		}
		out["sha256:"+f.Name()] = b
	}
	return out
}

func (r *rig) entries() map[string]store.CacheEntry {
	r.t.Helper()
	es, err := r.db.Caches(context.Background(), "acme", "widgets")
	if err != nil {
		r.t.Fatal(err)
	}
	out := map[string]store.CacheEntry{}
	for _, e := range es {
		out[e.Scope+"|"+e.Key] = e
	}
	return out
}

func digest(b []byte) string { h := sha256.Sum256(b); return "sha256:" + hex.EncodeToString(h[:]) }

var (
	pushMain = coordinator.Subject{Branch: "main", DefaultBranch: "main"}
	pr7      = coordinator.Subject{PullRequest: 7, Branch: "feature", BaseBranch: "main", DefaultBranch: "main"}
	fork8    = coordinator.Subject{PullRequest: 8, Branch: "main", BaseBranch: "main", DefaultBranch: "main", Fork: true, Untrusted: true}
)

// TestScopedCaches: the default branch's build writes its cache; a pull
// request restores it, byte for byte, and writes its own scope; the
// default branch's cache is unchanged on disk and in the index; the pull
// request's next build restores its own; an untrusted build restores the
// base branch's and writes nothing.
func TestScopedCaches(t *testing.T) {
	r := newRig(t, 1<<20)
	mainTar := cacheTar(t, "main's objects")
	if restored, cl := r.build("b1", pushMain, goConfig, nil, mainTar); restored != nil || !cl.Save ||
		!slices.Equal(cl.Paths, []string{"/root/.cache/go-build"}) || cl.MaxBytes != 1<<20 {
		t.Fatalf("first build: restored %q, launch %+v", restored, cl)
	}
	if n := r.notes.of("b1"); !strings.Contains(n, "cache: none yet for branch main") || !strings.Contains(n, "cache: saved 2.5KiB as branch main") {
		t.Errorf("b1's log: %q", n)
	}
	mainEntry := r.entries()["branch/main|"]
	if mainEntry.Digest != digest(mainTar) || !bytes.Equal(r.blobs()[digest(mainTar)], mainTar) {
		t.Fatalf("main's entry %+v", mainEntry)
	}

	prTar := cacheTar(t, "the pull request's objects, poisoned")
	restored, _ := r.build("b2", pr7, goConfig, nil, prTar)
	if !bytes.Equal(restored, mainTar) {
		t.Fatalf("the pull request restored %q, want main's cache", restored)
	}
	es := r.entries()
	if got := es["branch/main|"]; got.Digest != mainEntry.Digest || got.Size != mainEntry.Size || !got.Created.Equal(mainEntry.Created) {
		t.Errorf("the pull request changed main's entry: %+v, was %+v", got, mainEntry)
	}
	if !bytes.Equal(r.blobs()[digest(mainTar)], mainTar) {
		t.Error("main's archive changed on disk")
	}
	if es["pull/7|"].Digest != digest(prTar) {
		t.Errorf("the pull request's own entry: %+v", es["pull/7|"])
	}
	if restored, _ := r.build("b3", pr7, goConfig, nil, nil); !bytes.Equal(restored, prTar) {
		t.Errorf("the pull request's next build restored %q, want its own", restored)
	}

	before, beforeBlobs := r.entries(), r.blobs()
	restored, cl := r.build("b4", fork8, goConfig, nil, cacheTar(t, "fork"))
	if !bytes.Equal(restored, mainTar) || cl.Save {
		t.Errorf("untrusted build: restored %q, save %v; want main's cache, no save", restored, cl.Save)
	}
	if !strings.Contains(r.notes.of("b4"), "untrusted builds never write caches") {
		t.Errorf("b4's log: %q", r.notes.of("b4"))
	}
	// Its agent sends a cache anyway: refused, nothing stored.
	if _, err := r.s.Accept(context.Background(), "b4", 1536, []string{"cache: hello"}); !errors.Is(err, coordinator.ErrCacheRefused) {
		t.Errorf("untrusted build's cache: %v, want ErrCacheRefused", err)
	}
	if after := r.entries(); len(after) != len(before) || after["branch/main|"].Digest != before["branch/main|"].Digest ||
		!after["branch/main|"].Created.Equal(before["branch/main|"].Created) {
		t.Errorf("entries changed: %+v, were %+v", after, before)
	}
	if len(r.blobs()) != len(beforeBlobs) {
		t.Errorf("archives: %d, were %d", len(r.blobs()), len(beforeBlobs))
	}
}

// TestPullRequestCannotOverwriteDefaultBranch: whatever a pull request's
// agent sends goes to the pull request's scope; a build whose Prepare did
// not allow a save, or that is over (forgotten), has its cache refused.
func TestPullRequestCannotOverwriteDefaultBranch(t *testing.T) {
	r := newRig(t, 1<<20)
	mainTar := cacheTar(t, "main")
	r.build("b1", pushMain, goConfig, nil, mainTar)
	// A pull request whose head branch is called main still writes pull/9.
	prMain := coordinator.Subject{PullRequest: 9, Branch: "main", BaseBranch: "main", DefaultBranch: "main"}
	r.build("b2", prMain, goConfig, nil, cacheTar(t, "poison"))
	if got := r.entries()["branch/main|"]; got.Digest != digest(mainTar) {
		t.Fatalf("main's entry now %s, want %s", got.Digest, digest(mainTar))
	}
	if _, ok := r.entries()["pull/9|"]; !ok {
		t.Error("no entry of pull/9")
	}
	// Forgotten (the build ended): a late cache is refused.
	if _, err := r.s.Accept(context.Background(), "b2", 1536, nil); !errors.Is(err, coordinator.ErrCacheRefused) {
		t.Errorf("late cache: %v", err)
	}
	if !bytes.Equal(r.blobs()[digest(mainTar)], mainTar) {
		t.Error("main's archive changed")
	}
}

// TestKeyedCache: with a key, an exact hit in the build's own scope is not
// saved again (as GitHub Actions); a new key (go.sum changed) restores the
// newest cache of the scope and saves under the new key.
func TestKeyedCache(t *testing.T) {
	r := newRig(t, 1<<20)
	yml := goConfig + "  key: 'go-{{ hashFiles \"**/go.sum\" }}'\n"
	src1 := srcTar(t, map[string]string{"go.sum": "v1", "main.go": "package main"})
	src2 := srcTar(t, map[string]string{"go.sum": "v2", "main.go": "package main"})
	t1 := cacheTar(t, "objects for v1")
	r.build("b1", pushMain, yml, src1, t1)
	if restored, cl := r.build("b2", pushMain, yml, src1, cacheTar(t, "again")); !bytes.Equal(restored, t1) || cl.Save {
		t.Errorf("same key: restored %q, save %v; want the cache, no save", restored, cl.Save)
	}
	if !strings.Contains(r.notes.of("b2"), "is stored already") {
		t.Errorf("b2's log %q", r.notes.of("b2"))
	}
	t2 := cacheTar(t, "objects for v2")
	if restored, cl := r.build("b3", pushMain, yml, src2, t2); !bytes.Equal(restored, t1) || !cl.Save {
		t.Errorf("new key: restored %q, save %v; want the older key's cache, and a save", restored, cl.Save)
	}
	if !strings.Contains(r.notes.of("b3"), "(no cache has key") {
		t.Errorf("b3's log %q", r.notes.of("b3"))
	}
	es := r.entries()
	if len(es) != 2 {
		t.Errorf("entries %v, want one per key", es)
	}
	for k, e := range es {
		if !strings.HasPrefix(k, "branch/main|go-") || len(e.Key) != len("go-")+64 {
			t.Errorf("entry %s: key %q", k, e.Key)
		}
	}
	// A key whose files the build cannot read: no cache, a note, an error
	// for the coordinator's log; the build itself goes on (lifecycle).
	_, err := r.s.Prepare(context.Background(), &coordinator.Build{ID: "b4", Subject: pushMain}, cfgOf(t, yml), nil)
	if err == nil || !strings.Contains(r.notes.of("b4"), "cache: none: the key hashes the source's files") {
		t.Errorf("no source: %v, log %q", err, r.notes.of("b4"))
	}
}

func srcTar(t *testing.T, files map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	var names []string
	for n := range files {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		tw.WriteHeader(&tar.Header{Name: n, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(files[n]))})
		io.WriteString(tw, files[n])
	}
	tw.Close()
	return buf.Bytes()
}

// TestHashFiles: hashFiles is GitHub Actions' hash of the matching files'
// hashes, in name order: it changes with any matching file, not with the
// others, nor with the order files come in the tar.
func TestHashFiles(t *testing.T) {
	sum := func(files map[string]string, patterns ...string) string {
		t.Helper()
		src := srcTar(t, files)
		h, err := HashFiles(bytes.NewReader(src), patterns)
		if err != nil {
			t.Fatal(err)
		}
		return h.Sum(patterns)
	}
	base := map[string]string{"go.sum": "a", "sub/go.sum": "b", "README": "x"}
	want := func(contents ...string) string {
		h := sha256.New()
		for _, c := range contents {
			d := sha256.Sum256([]byte(c))
			h.Write(d[:])
		}
		return hex.EncodeToString(h.Sum(nil))
	}
	if got := sum(base, "go.sum"); got != want("a") {
		t.Errorf("go.sum: %s, want %s", got, want("a"))
	}
	if got := sum(base, "**/go.sum"); got != want("a", "b") {
		t.Errorf("**/go.sum: %s, want %s", got, want("a", "b"))
	}
	if got := sum(base, "sub/go.sum", "go.sum"); got != want("a", "b") {
		t.Errorf("two patterns: %s", got)
	}
	other := map[string]string{"go.sum": "a", "sub/go.sum": "b", "README": "changed"}
	if sum(other, "**/go.sum") != sum(base, "**/go.sum") {
		t.Error("a file no pattern matches changed the hash")
	}
	changed := map[string]string{"go.sum": "a", "sub/go.sum": "c"}
	if sum(changed, "**/go.sum") == sum(base, "**/go.sum") {
		t.Error("a matching file changed, the hash did not")
	}
	if got := sum(base, "*.lock"); got != "" {
		t.Errorf("no match: %q, want empty", got)
	}
	// A tar in another order hashes the same.
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range []string{"sub/go.sum", "go.sum"} {
		tw.WriteHeader(&tar.Header{Name: n, Typeflag: tar.TypeReg, Mode: 0o644, Size: 1})
		io.WriteString(tw, base[n])
	}
	tw.Close()
	h, err := HashFiles(&buf, []string{"**/go.sum"})
	if err != nil || h.Sum([]string{"**/go.sum"}) != want("a", "b") {
		t.Errorf("reordered: %v, %v", h, err)
	}
}

// TestEvictLeastRecentlyUsed: past the bound the least recently used
// entry goes, with its archive; one restored since stays; an archive two
// entries share stays until both are gone.
func TestEvictLeastRecentlyUsed(t *testing.T) {
	// Each archive is 10 KiB: two fit in 24 KiB, three do not.
	tarOf := func(s string) []byte { return cacheTar(t, strings.Repeat(s, 8<<10)) }
	r := newRig(t, 24<<10)
	a, b, c := tarOf("a"), tarOf("b"), tarOf("c")
	if len(a) != 10<<10 {
		t.Fatalf("archive of %d bytes", len(a))
	}
	r.build("b1", coordinator.Subject{Branch: "a"}, goConfig, nil, a)
	r.build("b2", coordinator.Subject{Branch: "b"}, goConfig, nil, b)
	// Branch a's cache is used again (restored, nothing saved: untrusted).
	if restored, _ := r.build("b3", coordinator.Subject{PullRequest: 1, BaseBranch: "a", Untrusted: true}, goConfig, nil, nil); !bytes.Equal(restored, a) {
		t.Fatal("a not restored")
	}
	r.build("b4", coordinator.Subject{Branch: "c"}, goConfig, nil, c)
	es, blobs := r.entries(), r.blobs()
	if _, ok := es["branch/b|"]; ok || blobs[digest(b)] != nil {
		t.Errorf("b, the least recently used, is still there: %v", es)
	}
	if es["branch/a|"].Digest != digest(a) || es["branch/c|"].Digest != digest(c) || len(blobs) != 2 {
		t.Errorf("entries %v, %d archives; want a and c", es, len(blobs))
	}
	if u, err := r.s.Usage(context.Background()); err != nil || u != int64(len(a)+len(c)) {
		t.Errorf("usage %d, %v", u, err)
	}

	// d's bytes are c's: one archive for two entries.
	r.build("b5", coordinator.Subject{Branch: "d"}, goConfig, nil, c)
	if len(r.blobs()) != 2 || len(r.entries()) != 3 {
		t.Fatalf("shared archive: %d archives, %d entries", len(r.blobs()), len(r.entries()))
	}
	// e pushes out a, then c's entry (older than d's): the shared archive
	// stays for d.
	r.build("b6", coordinator.Subject{Branch: "e"}, goConfig, nil, tarOf("e"))
	es, blobs = r.entries(), r.blobs()
	if _, ok := es["branch/a|"]; ok || es["branch/d|"].Digest != digest(c) || blobs[digest(c)] == nil || blobs[digest(a)] != nil {
		t.Errorf("after e: entries %v, %d archives", es, len(blobs))
	}

	// A smaller bound at the next start evicts at once.
	r.s = r.open(12 << 10)
	if es := r.entries(); len(es) != 1 || len(r.blobs()) != 1 {
		t.Errorf("after a restart with 12 KiB: %v, %d archives", es, len(r.blobs()))
	}
}

// TestRefusedArchives: a cache over the bound is refused before its bytes,
// and one with an entry outside the build's cache paths, or a link out,
// or a device, is refused after them; nothing is stored either way, no
// file is left behind, and the build's log says why.
func TestRefusedArchives(t *testing.T) {
	r := newRig(t, 64<<10)
	ctx := context.Background()
	b := &coordinator.Build{ID: "b1", Subject: pushMain}
	b.Owner, b.Repo = "acme", "widgets"
	if _, err := r.s.Prepare(ctx, b, cfgOf(t, goConfig), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := r.s.Accept(ctx, "b1", 65<<10, []string{"cache: a note from the agent"}); !errors.Is(err, coordinator.ErrCacheTooLarge) {
		t.Errorf("over the bound: %v", err)
	}
	log := r.notes.of("b1")
	if !strings.Contains(log, "cache: a note from the agent") || !strings.Contains(log, "cache: not saved: 65KiB is over the bound of 64KiB (--cache-size)") {
		t.Errorf("log %q", log)
	}
	for _, h := range []tar.Header{
		{Name: "etc/cron.d/evil", Typeflag: tar.TypeReg, Size: 0},
		{Name: "root/.cache/go-build/../../../etc/passwd", Typeflag: tar.TypeReg},
		{Name: "root/.cache/go-build/s", Typeflag: tar.TypeSymlink, Linkname: "/etc/shadow"},
		{Name: "root/.cache/go-build/null", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3},
	} {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		tw.WriteHeader(&tar.Header{Name: "root/.cache/go-build/ok", Typeflag: tar.TypeReg, Size: 2, Mode: 0o644})
		io.WriteString(tw, "ok")
		tw.WriteHeader(&h)
		tw.Close()
		up, err := r.s.Accept(ctx, "b1", int64(buf.Len()), nil)
		if err != nil {
			t.Fatal(err)
		}
		rd := bytes.NewReader(buf.Bytes())
		if _, err := up.Store(ctx, rd); !errors.Is(err, coordinator.ErrUnsafeArchive) || rd.Len() != 0 {
			t.Errorf("%s: %v (%d bytes left unread), want ErrUnsafeArchive after reading it all", h.Name, err, rd.Len())
		}
	}
	// Short: the agent announced more than it sent.
	up, _ := r.s.Accept(ctx, "b1", 4096, nil)
	if _, err := up.Store(ctx, bytes.NewReader(cacheTar(t, "x")[:1024])); err == nil {
		t.Error("a short archive was stored")
	}
	if len(r.entries()) != 0 || len(r.blobs()) != 0 {
		t.Errorf("stored: %v, %d archives", r.entries(), len(r.blobs()))
	}
	if tmp, _ := os.ReadDir(filepath.Join(r.dir, "tmp")); len(tmp) != 0 {
		t.Errorf("left in tmp: %v", tmp)
	}
	if !strings.Contains(r.notes.of("b1"), "cache: not saved: unsafe archive") {
		t.Errorf("log %q", r.notes.of("b1"))
	}
}

// TestOpenCleansUp: what a crash leaves (a partial upload, an archive no
// entry names) is removed when the caches are opened.
func TestOpenCleansUp(t *testing.T) {
	r := newRig(t, 1<<20)
	r.build("b1", pushMain, goConfig, nil, cacheTar(t, "kept"))
	stray := filepath.Join(r.dir, "sha256", strings.Repeat("ab", 32))
	partial := filepath.Join(r.dir, "tmp", "cache-123")
	for _, p := range []string{stray, partial} {
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	r.s = r.open(1 << 20)
	for _, p := range []string{stray, partial} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s is still there: %v", p, err)
		}
	}
	if len(r.blobs()) != 1 {
		t.Errorf("%d archives, want the one kept", len(r.blobs()))
	}
}
