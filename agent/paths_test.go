package agent

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/docker/docker/api/types/container"

	"github.com/forge-ci/forge/internal/safetar"
)

// readPaths runs ReadPaths on fs with root /forge/src and returns the
// archive's entries, their bodies, and the result.
func readPaths(t *testing.T, fs *ctrFS, max int64, patterns ...string) (map[string]*tar.Header, map[string][]byte, PathsResult) {
	t.Helper()
	var out bytes.Buffer
	res, err := ReadPaths(context.Background(), fs, "c1", PathsRequest{Root: "/forge/src", Patterns: patterns,
		MaxBytes: max, ScanAllowance: 1 << 20}, &out)
	if err != nil {
		t.Fatalf("ReadPaths: %v", err)
	}
	if res.Size != int64(out.Len()) {
		t.Errorf("result says %d bytes, wrote %d", res.Size, out.Len())
	}
	if res.Size > max {
		t.Errorf("archive of %d bytes, over the bound %d", res.Size, max)
	}
	hdrs, bodies := untar(t, out.Bytes())
	return hdrs, bodies, res
}

// untar reads a whole archive, failing on any error: the archive an agent
// sends must be well formed.
func untar(t *testing.T, b []byte) (map[string]*tar.Header, map[string][]byte) {
	t.Helper()
	hdrs, bodies := map[string]*tar.Header{}, map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return hdrs, bodies
		}
		if err != nil {
			t.Fatalf("archive: %v", err)
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatalf("archive entry %s: %v", h.Name, err)
		}
		if _, dup := hdrs[h.Name]; dup {
			t.Errorf("entry %s twice", h.Name)
		}
		hdrs[h.Name], bodies[h.Name] = h, body
	}
}

func names(hdrs map[string]*tar.Header) string {
	var out []string
	for n := range hdrs {
		out = append(out, n)
	}
	slices.Sort(out)
	return fmt.Sprint(out)
}

// noted reports whether a note contains every part.
func noted(res PathsResult, parts ...string) bool {
	for _, n := range res.Notes {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(n, p)
		}
		if all {
			return true
		}
	}
	return false
}

const shadow = "root:$6$the-container-secret:19000:0:99999:7:::\n"

// buildFS is a work directory after a build, with the traps of DESIGN §5.
func buildFS() *ctrFS {
	fs := newCtrFS()
	fs.file("/etc/shadow", shadow)
	fs.file("/forge/src/report.xml", "<report/>\n")
	fs.file("/forge/src/out/a.txt", "alpha\n")
	fs.file("/forge/src/out/b.log", "bravo\n")
	fs.file("/forge/src/out/sub/c.txt", "charlie\n")
	fs.file("/forge/src/dist/app.bin", "\x00\x01\x02\xff binary\n")
	fs.symlink("/forge/src/dist/latest", "app.bin")           // stays inside
	fs.symlink("/forge/src/leak", "/etc/shadow")              // absolute: out
	fs.symlink("/forge/src/out/up", "../../../etc/shadow")    // climbs out
	fs.symlink("/forge/src/etcdir", "/etc")                   // a folder outside
	fs.symlink("/forge/src/inside", "out")                    // a folder inside, still a link
	fs.add("/forge/src/out/fifo", &fsNode{typ: tar.TypeFifo}) // not data
	fs.add("/forge/src/out/tty", &fsNode{typ: tar.TypeChar})  // a device
	fs.add("/forge/src/hard/a", &fsNode{typ: tar.TypeReg, body: []byte("same file\n"), inode: 7})
	fs.add("/forge/src/hard/b", &fsNode{typ: tar.TypeReg, body: []byte("same file\n"), inode: 7})
	return fs
}

// TestReadPathsSelects: plain paths, globs and folders bring exactly what
// they match, byte for byte; a path or glob that matches nothing is a
// note, not an error.
func TestReadPathsSelects(t *testing.T) {
	hdrs, bodies, res := readPaths(t, buildFS(), 1<<20, "report.xml", "out/*.txt", "dist", "nothing/*.zip", "missing.txt", "out/a.txt")
	want := map[string]string{
		"report.xml": "<report/>\n", "out/a.txt": "alpha\n", "dist/app.bin": "\x00\x01\x02\xff binary\n",
	}
	for name, body := range want {
		if h := hdrs[name]; h == nil || h.Typeflag != tar.TypeReg || string(bodies[name]) != body {
			t.Errorf("%s: %v %q, want a file %q", name, h, bodies[name], body)
		}
	}
	if h := hdrs["dist/latest"]; h == nil || h.Typeflag != tar.TypeSymlink || h.Linkname != "app.bin" {
		t.Errorf("dist/latest: %+v, want the link to app.bin kept as a link", h)
	}
	for _, name := range []string{"out/b.log", "out/sub/c.txt", "out/sub/", "leak", "etcdir"} {
		if hdrs[name] != nil {
			t.Errorf("%s is in the archive; no pattern matches it", name)
		}
	}
	if got := len(hdrs); got != 5 { // the three files, dist/ and its link
		t.Errorf("entries %s, want 5", names(hdrs))
	}
	for _, p := range []string{"nothing/*.zip", "missing.txt"} {
		if !noted(res, p, "matches nothing") {
			t.Errorf("no note that %s matches nothing: %q", p, res.Notes)
		}
	}
	if res.Files != 3 || res.Cut || len(res.Notes) != 2 {
		t.Errorf("result %+v, want 3 files (and the link), not cut, two notes", res)
	}
}

// TestReadPathsRefusesEscapes: no link that leaves the work directory
// yields what it points to, whether it is the artifact itself, inside a
// folder taken whole, or a folder on the way; each is a note.
func TestReadPathsRefusesEscapes(t *testing.T) {
	fs := buildFS()
	hdrs, bodies, res := readPaths(t, fs, 1<<20, "leak", "out", "etcdir/shadow", "etcdir/*", "inside/a.txt", "etcdir")
	for name, b := range bodies {
		if bytes.Contains(b, []byte("the-container-secret")) {
			t.Errorf("%s holds /etc/shadow's content", name)
		}
	}
	for _, name := range []string{"leak", "out/up", "etcdir", "etcdir/shadow", "shadow", "inside/a.txt"} {
		if hdrs[name] != nil {
			t.Errorf("%s is in the archive: %+v", name, hdrs[name])
		}
	}
	for _, want := range [][]string{
		{"leak", "symbolic link to /etc/shadow", "outside"},
		{"out/up", "symbolic link to ../../../etc/shadow"},
		{"etcdir/shadow", "/forge/src/etcdir is a symbolic link"},
		{"etcdir/*", "/forge/src/etcdir is a symbolic link"},
		{"inside/a.txt", "/forge/src/inside is a symbolic link"},
		{"etcdir: skipped", "symbolic link to /etc"},
		{"out/fifo", "a FIFO"},
		{"out/tty", "a device"},
	} {
		if !noted(res, want...) {
			t.Errorf("no note with %q in %q", want, res.Notes)
		}
	}
	if string(bodies["out/a.txt"]) != "alpha\n" || string(bodies["out/sub/c.txt"]) != "charlie\n" {
		t.Errorf("the folder's own files: %s", names(hdrs))
	}
	for _, g := range fs.gets {
		if strings.HasPrefix(g, "/forge/src/etcdir/") || strings.HasPrefix(g, "/forge/src/inside/") {
			t.Errorf("archived %s, through a link", g)
		}
	}

	// A work directory that is itself a link leads nowhere.
	moved := buildFS()
	moved.symlink("/forge/src", "/etc")
	moved.file("/etc/report.xml", "not the build's\n")
	hdrs, _, res = readPaths(t, moved, 1<<20, "report.xml", ".")
	if len(hdrs) != 0 || !noted(res, "report.xml", "/forge/src is a symbolic link") {
		t.Errorf("work directory is a link: entries %s, notes %q", names(hdrs), res.Notes)
	}
}

// TestReadPathsWholeRoot: "." is the work directory whole, by the same
// rules.
func TestReadPathsWholeRoot(t *testing.T) {
	hdrs, bodies, res := readPaths(t, buildFS(), 1<<20, ".")
	if string(bodies["report.xml"]) != "<report/>\n" || string(bodies["out/sub/c.txt"]) != "charlie\n" || hdrs["hard/b"].Typeflag != tar.TypeLink {
		t.Errorf("entries %s", names(hdrs))
	}
	for _, name := range []string{"src/report.xml", "leak", "etcdir"} {
		if hdrs[name] != nil {
			t.Errorf("%s in the archive", name)
		}
	}
	if h := hdrs["inside"]; h == nil || h.Typeflag != tar.TypeSymlink || h.Linkname != "out" {
		t.Errorf("inside: %+v, want the link to out kept as a link", h)
	}
	if !noted(res, "leak: skipped") || !noted(res, "etcdir: skipped") {
		t.Errorf("notes %q", res.Notes)
	}
}

// TestReadPathsHardLinks: a hard link to a file kept before it stays a
// link; one to a file no pattern matches is read as a file of its own.
func TestReadPathsHardLinks(t *testing.T) {
	hdrs, bodies, _ := readPaths(t, buildFS(), 1<<20, "hard")
	if h := hdrs["hard/b"]; h == nil || h.Typeflag != tar.TypeLink || h.Linkname != "hard/a" || string(bodies["hard/a"]) != "same file\n" {
		t.Errorf("hard/b: %+v, want a hard link to hard/a", h)
	}
	fs := buildFS()
	hdrs, bodies, res := readPaths(t, fs, 1<<20, "hard/b*")
	if h := hdrs["hard/b"]; h == nil || h.Typeflag != tar.TypeReg || string(bodies["hard/b"]) != "same file\n" || hdrs["hard/a"] != nil {
		t.Errorf("hard/b alone: %s %+v, want it as a file", names(hdrs), h)
	}
	if res.Files != 1 || fs.gets[len(fs.gets)-1] != "/forge/src/hard/b" {
		t.Errorf("files %d, archives read %q", res.Files, fs.gets)
	}
}

// TestReadPathsUntrustedArchive: names and links the engine should never
// send are refused, entry by entry, and what is sound is kept.
func TestReadPathsUntrustedArchive(t *testing.T) {
	fs := buildFS()
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	for _, h := range []*tar.Header{
		{Name: "out/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "out/ok.txt", Typeflag: tar.TypeReg, Size: 3, Mode: 0o4755},
		{Name: "out/../../../etc/cron.d/x", Typeflag: tar.TypeReg, Size: 3},
		{Name: "/etc/passwd", Typeflag: tar.TypeReg, Size: 3},
		{Name: "out/hard", Typeflag: tar.TypeLink, Linkname: "/etc/shadow"},
		{Name: "out/hard2", Typeflag: tar.TypeLink, Linkname: "../etc/shadow"},
		{Name: "out/ok.txt", Typeflag: tar.TypeReg, Size: 3},
		{Name: "out/ok.txt/under", Typeflag: tar.TypeReg, Size: 3},
		{Name: "out/blk", Typeflag: tar.TypeBlock},
	} {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte("abc")[:h.Size])
	}
	tw.Close()
	fs.raw["/forge/src/out"] = raw.Bytes()
	hdrs, bodies, res := readPaths(t, fs, 1<<20, "out")
	if names(hdrs) != "[out/ out/ok.txt]" || string(bodies["out/ok.txt"]) != "abc" {
		t.Errorf("entries %s, want out/ and out/ok.txt only", names(hdrs))
	}
	if m := hdrs["out/ok.txt"].Mode; m != 0o755 {
		t.Errorf("mode %o, want the permission bits only (755)", m)
	}
	for _, want := range []string{"climbs out", "is absolute", "a hard link", "not a folder", "a device"} {
		if !noted(res, want) {
			t.Errorf("no note with %q: %q", want, res.Notes)
		}
	}
}

// TestReadPathsCut: the file that passes the bound is cut there, marked,
// and noted; nothing is read after it; what came before is whole.
func TestReadPathsCut(t *testing.T) {
	fs := buildFS()
	fs.add("/forge/src/big/huge.bin", &fsNode{typ: tar.TypeReg, size: 2 << 20})
	const max = 1 << 20
	hdrs, bodies, res := readPaths(t, fs, max, "report.xml", "big", "out")
	h := hdrs["big/huge.bin"]
	if h == nil || h.PAXRecords[safetar.CutRecord] != strconv.Itoa(2<<20) || int64(len(bodies["big/huge.bin"])) != h.Size {
		t.Fatalf("big/huge.bin: %+v", h)
	}
	if h.Size < max-8<<10 || !res.Cut {
		t.Errorf("cut at %d bytes (bound %d), result %+v", h.Size, max, res)
	}
	if string(bodies["report.xml"]) != "<report/>\n" || hdrs["out/a.txt"] != nil {
		t.Errorf("entries %s: want report.xml whole, nothing of out", names(hdrs))
	}
	if !noted(res, "big/huge.bin: cut at", "of 2MiB") || !noted(res, "out: not looked for", "size bound (1MiB)") {
		t.Errorf("notes %q", res.Notes)
	}
	if fs.read > max+(256<<10) {
		t.Errorf("read %d bytes out of the container for a bound of %d", fs.read, max)
	}
}

// TestReadPathsCutTwoGiB: an artifact of 2 GiB under the default bound of
// 1 GiB is cut at the bound, and the archive is whole and within it.
func TestReadPathsCutTwoGiB(t *testing.T) {
	if testing.Short() {
		t.Skip("moves a GiB")
	}
	fs := newCtrFS()
	fs.file("/forge/src/first.txt", "kept whole\n")
	fs.add("/forge/src/huge.bin", &fsNode{typ: tar.TypeReg, size: 2 << 30})
	const max = 1 << 30
	cw := &countWriter{w: io.Discard}
	res, err := ReadPaths(context.Background(), fs, "c1", PathsRequest{Root: "/forge/src", Patterns: []string{"first.txt", "huge.bin"},
		MaxBytes: max, ScanAllowance: 1 << 30}, cw)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Cut || res.Size != cw.n || res.Size > max || res.Bytes < max-(16<<10) || res.Files != 2 {
		t.Errorf("result %+v, %d bytes written; want cut near %d", res, cw.n, max)
	}
	if !noted(res, "huge.bin: cut at", "of 2GiB") {
		t.Errorf("notes %q", res.Notes)
	}
}

// TestReadPathsScanBound: a glob over a tree of things it does not match
// stops after the scan allowance, with a note, and the archive is whole.
func TestReadPathsScanBound(t *testing.T) {
	fs := buildFS()
	fs.add("/forge/src/node_modules/blob", &fsNode{typ: tar.TypeReg, size: 8 << 20})
	fs.file("/forge/src/zz.txt", "after the blob\n")
	hdrs, _, res := readPaths(t, fs, 64<<10, "*.txt", "report.xml")
	if !noted(res, "*.txt: stopped", "while looking for matches") || !noted(res, "report.xml: not looked for") {
		t.Errorf("notes %q", res.Notes)
	}
	if hdrs["zz.txt"] != nil {
		t.Error("zz.txt kept after the scan bound")
	}
	if fs.read > 64<<10+1<<20+64<<10 {
		t.Errorf("read %d bytes out of the container", fs.read)
	}
}

// TestReadPathsBadPatterns: patterns that are absolute, climb out or are
// not globs are notes, and the others are still served.
func TestReadPathsBadPatterns(t *testing.T) {
	hdrs, _, res := readPaths(t, buildFS(), 1<<20, "/etc/shadow", "../x", "out/[", "report.xml")
	if names(hdrs) != "[report.xml]" {
		t.Errorf("entries %s", names(hdrs))
	}
	for _, want := range []string{"/etc/shadow: skipped", "../x: skipped", "out/[: skipped"} {
		if !noted(res, want) {
			t.Errorf("no note %q: %q", want, res.Notes)
		}
	}
}

// TestReadPathsNotesBounded: a tree of hundreds of FIFOs gives at most
// wire's number of notes, the last saying how many more there were.
func TestReadPathsNotesBounded(t *testing.T) {
	fs := newCtrFS()
	for i := range 250 {
		fs.add(fmt.Sprintf("/forge/src/fifos/%03d", i), &fsNode{typ: tar.TypeFifo})
	}
	_, _, res := readPaths(t, fs, 1<<20, "fifos")
	if len(res.Notes) != 100 || res.Notes[99] != "and 151 more lines like these" {
		t.Errorf("%d notes, last %q", len(res.Notes), res.Notes[len(res.Notes)-1])
	}
}

// TestReadPathsEngineFails: an engine that fails is an error, not a note.
func TestReadPathsEngineFails(t *testing.T) {
	_, err := ReadPaths(context.Background(), failingEngine{}, "c1", PathsRequest{Root: "/forge/src", Patterns: []string{"a"}, MaxBytes: 1 << 20}, io.Discard)
	if !errors.Is(err, errEngineDown) {
		t.Errorf("got %v", err)
	}
}

var errEngineDown = errors.New("engine down")

type failingEngine struct{}

func (failingEngine) ContainerStatPath(context.Context, string, string) (container.PathStat, error) {
	return container.PathStat{}, errEngineDown
}

func (failingEngine) CopyFromContainer(context.Context, string, string) (io.ReadCloser, container.PathStat, error) {
	return nil, container.PathStat{}, errEngineDown
}
