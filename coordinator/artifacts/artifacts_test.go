package artifacts

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/forge-ci/forge/coordinator/artifacts/artifactstest"
	"github.com/forge-ci/forge/internal/safetar"
)

// entry is one entry of a test archive.
type entry struct {
	h    tar.Header
	body string
}

func archive(t testing.TB, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.h
		if h.Typeflag == tar.TypeReg && h.Size == 0 {
			h.Size = int64(len(e.body))
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(e.body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func file(name, body string) entry {
	return entry{h: tar.Header{Name: name, Typeflag: tar.TypeReg}, body: body}
}

func read(t *testing.T, s *Store, id, name string) (string, Entry, error) {
	t.Helper()
	f, e, err := s.Open(id, name)
	if err != nil {
		return "", e, err
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	return string(b), e, err
}

const shadow = "root:$6$secret\n"

// hostile is an archive with every kind of entry an agent must not send,
// between sound ones.
func hostile(t testing.TB) []byte {
	return archive(t,
		entry{h: tar.Header{Name: "dist/", Typeflag: tar.TypeDir, Mode: 0o755}},
		entry{h: tar.Header{Name: "dist/app", Typeflag: tar.TypeReg, Mode: 0o4755}, body: "\x7fELF app"},
		entry{h: tar.Header{Name: "dist/latest", Typeflag: tar.TypeSymlink, Linkname: "app"}},
		entry{h: tar.Header{Name: "dist/chain", Typeflag: tar.TypeSymlink, Linkname: "latest"}},
		entry{h: tar.Header{Name: "leak", Typeflag: tar.TypeSymlink, Linkname: "/etc/shadow"}},
		entry{h: tar.Header{Name: "dist/up", Typeflag: tar.TypeSymlink, Linkname: "../../etc/shadow"}},
		entry{h: tar.Header{Name: "leak/x", Typeflag: tar.TypeReg}, body: "through the link"},
		entry{h: tar.Header{Name: "/etc/cron.d/evil", Typeflag: tar.TypeReg}, body: "* * * * * root sh"},
		entry{h: tar.Header{Name: "dist/../../evil", Typeflag: tar.TypeReg}, body: "up"},
		entry{h: tar.Header{Name: "dist/same", Typeflag: tar.TypeLink, Linkname: "dist/app"}},
		entry{h: tar.Header{Name: "shadow", Typeflag: tar.TypeLink, Linkname: "/etc/shadow"}},
		entry{h: tar.Header{Name: "tty", Typeflag: tar.TypeChar, Devmajor: 4}},
		entry{h: tar.Header{Name: "fifo", Typeflag: tar.TypeFifo}},
		entry{h: tar.Header{Name: "big.bin", Typeflag: tar.TypeReg, PAXRecords: map[string]string{safetar.CutRecord: "2147483648"}}, body: "cut here"},
	)
}

// TestPutKeepsOnlyWhatIsSafe: the store keeps files, folders, links that
// stay inside (as records) and hard links; it refuses, and names, what is
// absolute, climbs out, leaves through a link, or is a device or a FIFO;
// nothing lands outside the build's folder and no link is made on disk.
func TestPutKeepsOnlyWhatIsSafe(t *testing.T) {
	dir := t.TempDir()
	s := &Store{Dir: filepath.Join(dir, "artifacts")}
	res, err := s.Put("b1", bytes.NewReader(hostile(t)), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if res.Files != 3 || res.Bytes != int64(2*len("\x7fELF app")+len("cut here")) {
		t.Errorf("stored %+v", res)
	}
	for _, want := range []string{"leak: a symbolic link to /etc/shadow", "dist/up: a symbolic link", "leak/x: its parent leak is not a folder",
		"/etc/cron.d/evil: unsafe archive entry", "dist/../../evil: unsafe", "shadow: a hard link", "tty: a device", "fifo: a FIFO"} {
		found := false
		for _, r := range res.Refused {
			found = found || strings.HasPrefix(r, want)
		}
		if !found {
			t.Errorf("no refusal %q in %q", want, res.Refused)
		}
	}
	list, err := s.List("b1")
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, e := range list {
		paths = append(paths, e.Path)
	}
	if got := strings.Join(paths, " "); got != "big.bin dist/app dist/chain dist/latest dist/same" {
		t.Errorf("listed %s", got)
	}
	if list[0].OriginalSize != 2<<30 || list[0].Size != 8 || list[1].Mode != 0o755 || list[3].Link != "app" {
		t.Errorf("entries %+v", list)
	}
	for _, name := range []string{"dist/app", "dist/latest", "dist/chain", "dist/same"} {
		if got, _, err := read(t, s, "b1", name); err != nil || got != "\x7fELF app" {
			t.Errorf("%s: %q, %v", name, got, err)
		}
	}
	for _, name := range []string{"leak", "dist/up", "shadow", "tty", "../artifacts/b1/index.json", "/etc/shadow", "dist", ".", "", "dist/"} {
		if got, _, err := read(t, s, "b1", name); !errors.Is(err, ErrNotFound) {
			t.Errorf("%s: %q, %v; want not found", name, got, err)
		}
	}
	// Nothing but the store's folder, and no link anywhere in it.
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if d != nil && d.Type()&fs.ModeSymlink != 0 {
			t.Errorf("a link on disk: %s", p)
		}
		return nil
	})
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("the store wrote beside its folder: %v", entries)
	}
}

// TestOpenRefusesLinksOnDisk: even a link planted in the store's folder
// (not by Put, which makes none) does not lead out of it.
func TestOpenRefusesLinksOnDisk(t *testing.T) {
	s := &Store{Dir: t.TempDir()}
	if _, err := s.Put("b1", bytes.NewReader(archive(t, file("planted", "placeholder"))), 1<<20); err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(t.TempDir(), "shadow")
	os.WriteFile(secret, []byte(shadow), 0o600)
	p := filepath.Join(s.Dir, "b1", "files", "planted")
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(secret, p); err != nil {
		t.Fatal(err)
	}
	if got, _, err := read(t, s, "b1", "planted"); err == nil || strings.Contains(got, "secret") {
		t.Errorf("planted link: %q, %v", got, err)
	}
}

// TestPutReplaces: new artifacts of a build replace the old ones whole; a
// broken archive stores nothing and keeps what was there.
func TestPutReplaces(t *testing.T) {
	s := &Store{Dir: t.TempDir()}
	if _, err := s.Put("b1", bytes.NewReader(archive(t, file("a", "1"), file("b", "2"))), 1<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put("b1", bytes.NewReader(archive(t, file("c", "3"))), 1<<20); err != nil {
		t.Fatal(err)
	}
	if list, _ := s.List("b1"); len(list) != 1 || list[0].Path != "c" {
		t.Fatalf("after a second put: %+v", list)
	}
	broken := archive(t, file("d", strings.Repeat("4", 4096)))
	if _, err := s.Put("b1", bytes.NewReader(broken[:1500]), 1<<20); err == nil {
		t.Fatal("a truncated archive was taken")
	}
	if list, _ := s.List("b1"); len(list) != 1 || list[0].Path != "c" {
		t.Fatalf("after a broken put: %+v", list)
	}
	if left, _ := os.ReadDir(filepath.Join(s.Dir, incoming)); len(left) != 0 {
		t.Errorf("left in %s: %v", incoming, left)
	}
	if _, err := s.Put("b1", bytes.NewReader(archive(t, file("e", "12345"), file("f", "678"))), 7); err == nil {
		t.Error("files past the bound were taken")
	}
	if list, _ := s.List("b1"); len(list) != 1 || list[0].Path != "c" {
		t.Fatalf("after a put past the bound: %+v", list)
	}
	if _, err := s.Put("../b2", bytes.NewReader(archive(t, file("x", "y"))), 1<<20); err == nil {
		t.Error("a bad build id was taken")
	}
	if list, err := s.List("none"); err != nil || len(list) != 0 {
		t.Errorf("a build without artifacts: %v, %v", list, err)
	}
}

// TestWriteTarGz: all of a build's artifacts at once, byte for byte, links
// as links.
func TestWriteTarGz(t *testing.T) {
	s := &Store{Dir: t.TempDir()}
	if _, err := s.Put("b1", bytes.NewReader(hostile(t)), 1<<20); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := s.WriteTarGz("b1", &buf); err != nil {
		t.Fatal(err)
	}
	got := artifactstest.Unpack(t, &buf)
	want := map[string]string{"big.bin": "cut here", "dist/app": "\x7fELF app", "dist/same": "\x7fELF app",
		"dist/latest": "-> app", "dist/chain": "-> latest"}
	if len(got) != len(want) {
		t.Errorf("archive %q, want %q", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %q, want %q", k, got[k], v)
		}
	}
}

// TestPrune deletes the artifacts of old builds that are over, keeps the
// others, and clears what interrupted transfers left.
func TestPrune(t *testing.T) {
	ctx := context.Background()
	s := &Store{Dir: t.TempDir()}
	for _, id := range []string{"old", "notover", "recent"} {
		if _, err := s.Put(id, bytes.NewReader(archive(t, file("f", id))), 1<<20); err != nil {
			t.Fatal(err)
		}
	}
	long := time.Now().Add(-100 * 24 * time.Hour)
	for _, id := range []string{"old", "notover"} {
		os.Chtimes(filepath.Join(s.Dir, id, "index.json"), long, long)
	}
	stale := filepath.Join(s.Dir, incoming, "gone-1234")
	os.MkdirAll(stale, 0o755)
	os.Chtimes(stale, long, long)
	var asked []string
	n, err := s.Prune(ctx, time.Now().Add(-90*24*time.Hour), func(_ context.Context, id string) (bool, error) {
		asked = append(asked, id)
		return id != "notover", nil
	})
	if err != nil || n != 1 {
		t.Fatalf("prune: %d, %v; want 1", n, err)
	}
	if strings.Join(asked, " ") != "notover old" {
		t.Errorf("asked about %q, want the old ones", asked)
	}
	if list, _ := s.List("old"); len(list) != 0 {
		t.Errorf("old build's artifacts: %+v", list)
	}
	for _, id := range []string{"notover", "recent"} {
		if got, _, err := read(t, s, id, "f"); got != id || err != nil {
			t.Errorf("%s: %q, %v", id, got, err)
		}
	}
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale transfer kept: %v", err)
	}
	if _, err := s.Prune(ctx, time.Now().Add(time.Hour), func(context.Context, string) (bool, error) { return false, errors.New("db down") }); err == nil {
		t.Error("prune hid the database's error")
	}
	if n, err := (&Store{Dir: filepath.Join(s.Dir, "none")}).Prune(ctx, time.Now(), nil); n != 0 || err != nil {
		t.Errorf("no folder: %d, %v", n, err)
	}
}

// FuzzPut: whatever the archive, Put neither panics nor writes outside
// its folder, nor makes a link, and what it lists opens or is refused.
func FuzzPut(f *testing.F) {
	f.Add(hostile(f))
	f.Add(archive(f, file("a", "b")))
	f.Add([]byte("not a tar"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		dir := t.TempDir()
		s := &Store{Dir: filepath.Join(dir, "a")}
		if _, err := s.Put("b1", bytes.NewReader(raw), 1<<20); err != nil {
			return
		}
		filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if d != nil && d.Type()&fs.ModeSymlink != 0 {
				t.Errorf("a link on disk: %s", p)
			}
			if rel, _ := filepath.Rel(s.Dir, p); p != dir && strings.HasPrefix(rel, "..") {
				t.Errorf("written outside: %s", p)
			}
			return nil
		})
		list, err := s.List("b1")
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range list {
			if f, _, err := s.Open("b1", e.Path); err == nil {
				f.Close()
			} else if e.Link == "" {
				t.Errorf("listed file %s does not open: %v", e.Path, err)
			}
		}
	})
}
